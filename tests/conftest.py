import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

from pipeline import config as config_lib  # noqa: E402


@pytest.fixture
def make_config():
    """Builds a PipelineConfig from keyword sections, e.g. make_config(data={...})."""

    def build(**sections):
        tree = {"name": sections.pop("name", "test")}
        tree.update(sections)
        return config_lib.from_dict(tree)

    return build
