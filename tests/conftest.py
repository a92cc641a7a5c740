import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import re
import shutil
import subprocess
import tempfile

import pytest


@pytest.fixture
def make_config():
    """Builds a PipelineConfig from keyword sections, e.g. make_config(data={...})."""
    from pipeline import config as config_lib

    def build(**sections):
        tree = {"name": sections.pop("name", "test")}
        tree.update(sections)
        return config_lib.from_dict(tree)

    return build


# --- the suite's own temporary folder ----------------------------------------------------
# The controlling process makes a fresh folder in the system's TMPDIR and points
# `tempfile` and TMPDIR at it; pytest-xdist's workers and every child process inherit it
# through the environment. At the end whatever is left in it is a leak of the suite (the
# run fails and names it) and the folder is removed. Other programs' entries in the
# shared /tmp are never counted. pytest's own tmp_path folders stay where they were
# (PYTEST_DEBUG_TEMPROOT: the system's TMPDIR), kept for a look after a failure.

SUITE_TMPDIR = "IMGPIPE_SUITE_TMPDIR"      # the folder, for workers and child processes


def _use_tempdir(path: str) -> None:
    os.environ["TMPDIR"] = path
    tempfile.tempdir = path


def pytest_configure(config):
    if hasattr(config, "workerinput"):      # an xdist worker: the controller's folder
        path = os.environ.get(SUITE_TMPDIR)
        if path and os.path.isdir(path):
            _use_tempdir(path)
        return
    system = tempfile.gettempdir()
    path = tempfile.mkdtemp(prefix="imgpipe-tests-", dir=system)
    config._suite_tmp = (path, os.environ.get("TMPDIR"), tempfile.tempdir)
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", system)
    os.environ[SUITE_TMPDIR] = path
    _use_tempdir(path)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session, exitstatus):
    # a wrapper: its second half runs after pytest-xdist has stopped its workers
    result = yield
    config = session.config
    if hasattr(config, "workerinput") or not hasattr(config, "_suite_tmp"):
        return result
    path = config._suite_tmp[0]
    try:
        left = sorted(os.listdir(path))
    except OSError:
        left = []
    # TensorFlow's autograph cache files stay inside this folder, which is removed below;
    # they are said, with the tests after which they appeared, not failed on (a test of
    # issue 34 leaves two; not yet found which)
    autograph = [name for name in left if name.startswith(_AUTOGRAPH)]
    left = [name for name in left if name not in autograph and name != _AUTOGRAPH_SEEN]
    if autograph:
        try:
            with open(os.path.join(path, _AUTOGRAPH_SEEN)) as seen:
                after = sorted(set(seen.read().split()))
        except OSError:
            after = []
        print(f"\nnote: {len(autograph)} TensorFlow autograph files left in {path}; they "
              f"appeared after: {', '.join(after) or 'no test (a fixture or the session)'}")
    if left:
        print(f"\nthe test suite left {len(left)} entries in its temporary folder "
              f"{path}: {left[:20]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _remove_suite_tmp(config)
    return result


def pytest_unconfigure(config):
    _remove_suite_tmp(config)      # a run that ended before its session did (--help)


def _remove_suite_tmp(config) -> None:
    if hasattr(config, "workerinput") or not hasattr(config, "_suite_tmp"):
        return
    path, saved_env, saved_tempdir = config._suite_tmp
    del config._suite_tmp
    shutil.rmtree(path, ignore_errors=True)
    tempfile.tempdir = saved_tempdir
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env
    os.environ.pop(SUITE_TMPDIR, None)


# --- child processes whose TMPDIR a test redirected ---------------------------------------
# A test that gives a child process a TMPDIR of its own (kfp-local, the faults CLI) hides
# that process's temporary files from the check above; each such folder is looked at
# when the test ends, and an imgpipe process's private temporary folder (runtime's
# `imgpipe-tmp-*`, where everything the process makes in TMPDIR lives) that appeared in
# it and is still there fails the test by name. Other entries are not judged there: the
# folder is often the test's tmp_path, holding its outputs, and TensorFlow's autograph
# modules from a KFP task that exits without teardown (test_tpu_image) are known.

_TEMP_NAME = re.compile(r"imgpipe-tmp-")


def _inside(path: str, folder: str | None) -> bool:
    if not folder:
        return False
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def _listing(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


_AUTOGRAPH = "__autograph_generated_file"
# where each test after which TensorFlow autograph files appeared in the suite's folder is
# written (xdist workers share the folder: a test of the other worker may be the one)
_AUTOGRAPH_SEEN = "autograph-seen-after.txt"


@pytest.fixture(autouse=True)
def _redirected_tmpdirs_are_left_clean(request):
    watched: dict[str, set[str]] = {}
    suite = os.environ.get(SUITE_TMPDIR)
    autograph = {e for e in _listing(suite) if e.startswith(_AUTOGRAPH)} if suite else set()
    original = subprocess.Popen.__init__

    def init(self, *args, **kwargs):
        env = kwargs.get("env")
        folder = (os.environ if env is None else env).get("TMPDIR")
        if folder and folder not in watched and not _inside(folder, suite):
            watched[folder] = _listing(folder)
        original(self, *args, **kwargs)

    subprocess.Popen.__init__ = init
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original
    if suite and {e for e in _listing(suite) if e.startswith(_AUTOGRAPH)} - autograph:
        with open(os.path.join(suite, _AUTOGRAPH_SEEN), "a") as seen:
            seen.write(request.node.nodeid + "\n")
    left = {folder: sorted(e for e in _listing(folder) - before if _TEMP_NAME.match(e))
            for folder, before in watched.items()}
    left = {folder: entries for folder, entries in left.items() if entries}
    if left:
        pytest.fail("child processes left temporary entries in the TMPDIR the test gave "
                    f"them: {left}", pytrace=False)


# --- fixtures the tests of several folders share --------------------------------------------


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """A transform graph and the Examples it was made from (12x12x1 images, 3 classes, 20
    a class): what train takes."""
    from components import artifacts
    from components.config.beam import BeamConfig
    from components.config.data import DataConfig
    from components.config.transform import TransformConfig
    from components.steps import transform
    from tests import fixtures

    tmp = tmp_path_factory.mktemp("train")
    examples, _ = fixtures.examples_artifact(tmp, per_class=20)
    uri = str(tmp / "tg")
    transform.run(examples, DataConfig(image_size=(12, 12)), TransformConfig(), BeamConfig(),
                  transform_graph=uri)
    return artifacts.read(uri), examples


@pytest.fixture(scope="module")
def fake_gcs():
    """fake-gcs-server on 127.0.0.1 (tests/gcs_server.py), its URL; skips without it."""
    from tests import gcs_server

    proc, url = gcs_server.started("fake-gcs-server")
    yield url
    gcs_server.stop(proc)


@pytest.fixture
def on_fake(fake_gcs, monkeypatch):
    """gs:// pointed at the fake GCS server for this test: its bucket's gs:// root."""
    from components.io import gcs
    from tests import gcs_server

    yield gcs_server.point_at(fake_gcs, monkeypatch)
    gcs._client_for.cache_clear()       # no client for a server that is going away


@pytest.fixture
def fake_vertex(monkeypatch):
    """Vertex AI Model Registry replaced by the stateful fake of tests/fake_vertex.py."""
    from components.integrations import vertex
    from tests.fake_vertex import FakeVertex

    fake = FakeVertex()
    monkeypatch.setattr(vertex, "client_module", fake.module())
    monkeypatch.setattr(vertex, "tensorflow_version", lambda: "2.21.0")
    return fake


# --- TensorFlow outside a step: its autograph files kept in a private folder ------------------


@pytest.fixture
def private_tmp():
    """A test that calls Keras or TensorFlow directly (not through a step or the CLI,
    which have a private temporary folder of their own): its autograph files stay in a
    folder removed after it. Modules take it with `pytestmark = usefixtures(...)`."""
    from components import runtime

    with runtime.private_tempdir():
        yield


@pytest.fixture(scope="module")
def private_tmp_module():
    """`private_tmp` for a whole module (its module-scoped fixtures save models too)."""
    from components import runtime

    with runtime.private_tempdir():
        yield
