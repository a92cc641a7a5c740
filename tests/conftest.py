import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest

from pipeline import config as config_lib


@pytest.fixture
def make_config():
    """Builds a PipelineConfig from keyword sections, e.g. make_config(data={...})."""

    def build(**sections):
        tree = {"name": sections.pop("name", "test")}
        tree.update(sections)
        return config_lib.from_dict(tree)

    return build


# --- the whole suite leaves TMPDIR as it found it ----------------------------------------
# Checked once, in the controlling process (with pytest-xdist the workers' live private
# folders would otherwise look like leaks to each other).

def _temp_entries() -> set[str]:
    import tempfile

    return {e for e in os.listdir(tempfile.gettempdir()) if not e.startswith("pytest-of-")}


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        config._temp_before = _temp_entries()


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput") or not hasattr(config, "_temp_before"):
        return
    left = sorted(_temp_entries() - config._temp_before)
    if left:
        import tempfile

        print(f"\nthe test suite left {len(left)} entries in {tempfile.gettempdir()}: "
              f"{left[:10]}")
        session.exitstatus = 1
