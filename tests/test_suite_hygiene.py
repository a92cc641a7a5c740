"""The suite's own leak check (tests/conftest.py): it runs under a temporary folder of its
own, so other programs writing to the shared /tmp never fail `make test`, while a file
the suite leaves there, or in a TMPDIR a test gives a child process, still fails the run
and is named. Each test runs a small generated test file through pytest in a child
process, with the real conftest as its plugin. Also the suite's own layout: no test
module imports from another one, and the package's license as setuptools wants it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytest(tmp_path, source: str, *args: str, system_tmp=None) -> subprocess.CompletedProcess:
    """pytest on `source` (a generated test file) with tests/conftest.py, in a child
    process whose system TMPDIR is `system_tmp` (standing in for the shared /tmp)."""
    folder = tmp_path / "slice"
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_slice.py").write_text(textwrap.dedent(source))
    system_tmp = system_tmp or tmp_path / "system-tmp"
    system_tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "IMGPIPE_SUITE"))}
    env.update(TMPDIR=str(system_tmp), PYTEST_DEBUG_TEMPROOT=str(system_tmp))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(folder), "-c", str(folder / "pytest.ini"), *args,
         str(folder / "test_slice.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _suite_folders(system_tmp) -> list[str]:
    return [e for e in os.listdir(system_tmp) if e.startswith("imgpipe-tests-")]


BUSY = """
import os, tempfile, time

def test_passes_while_another_program_fills_tmp():
    busy = os.environ["BUSY_TMP"]
    with tempfile.TemporaryDirectory() as folder:           # cleaned up: no leak
        open(os.path.join(folder, "x"), "w").close()
    # wait until the other program has written to /tmp during this session
    before = set(os.listdir(busy))
    deadline = time.monotonic() + 20
    while not {e for e in os.listdir(busy) if e.startswith("foreign-")} - before:
        assert time.monotonic() < deadline, "no foreign entry appeared"
        time.sleep(0.01)
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_other_programs_entries_in_tmp_do_not_fail_the_suite(tmp_path, monkeypatch, workers):
    busy = tmp_path / "system-tmp"
    busy.mkdir()
    monkeypatch.setenv("BUSY_TMP", str(busy))
    stop = threading.Event()

    def other_program():
        n = 0
        while not stop.is_set():
            (busy / f"foreign-{n}").write_text("not the suite's")
            n += 1
            stop.wait(0.02)

    writer = threading.Thread(target=other_program, daemon=True)
    writer.start()
    try:
        args = ["-p", "no:xdist"] if not workers else workers
        done = _pytest(tmp_path, BUSY, *args, system_tmp=busy)
    finally:
        stop.set()
        writer.join()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "foreign-" not in done.stdout
    assert _suite_folders(busy) == []                   # the suite's folder is removed


LEAKS = """
import os, subprocess, sys, tempfile

def test_leaves_a_file():
    handle, _ = tempfile.mkstemp(prefix="leaked-by-a-test-")
    os.close(handle)

def test_a_child_process_leaves_a_folder():
    subprocess.run([sys.executable, "-c",
                    "import tempfile; tempfile.mkdtemp(prefix='leaked-by-a-child-')"],
                   check=True)

def test_cleans_up():
    with tempfile.TemporaryDirectory():
        pass
"""


@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_leak_into_the_suites_tmpdir_fails_the_run_by_name(tmp_path, workers):
    done = _pytest(tmp_path, LEAKS, *workers)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "3 passed" in out, out               # the tests pass; the run fails on the leak
    assert "the test suite left 2 entries" in out, out
    assert "leaked-by-a-test-" in out and "leaked-by-a-child-" in out, out
    assert _suite_folders(tmp_path / "system-tmp") == []     # removed, leaks and all


REDIRECTED = """
import os, subprocess, sys

def _child(tmp_path, code):
    (tmp_path / "tmp").mkdir()
    subprocess.run([sys.executable, "-c", code], check=True,
                   env=dict(os.environ, TMPDIR=str(tmp_path / "tmp")))

def test_a_child_with_its_own_tmpdir_leaves_its_folder(tmp_path):
    _child(tmp_path, "import tempfile; tempfile.mkdtemp(prefix='imgpipe-tmp-')")

def test_a_child_with_its_own_tmpdir_cleans_up(tmp_path):
    _child(tmp_path, "import tempfile; tempfile.TemporaryDirectory(prefix='imgpipe-tmp-').cleanup()")
"""


def test_a_leak_into_a_redirected_tmpdir_fails_that_test_by_name(tmp_path):
    done = _pytest(tmp_path, REDIRECTED, "-p", "no:xdist")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "2 passed, 1 error" in out, out
    assert "ERROR" in out and "test_a_child_with_its_own_tmpdir_leaves_its_folder" in out, out
    assert "left temporary entries" in out and "imgpipe-tmp-" in out, out


def test_the_license_is_an_spdx_expression_setuptools_builds_without_warnings():
    """`make` on a fresh machine: setuptools >= 77 warns for pages about a
    `project.license` table, and refuses an SPDX string beside a `License ::`
    classifier; the string form needs setuptools >= 77 in the build's requirements."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        pyproject = tomllib.load(handle)
    project = pyproject["project"]
    assert project["license"] == "Apache-2.0"
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    [setuptools] = [r for r in pyproject["build-system"]["requires"]
                    if re.match(r"setuptools\b", r)]
    minimum = re.search(r">=\s*(\d+)", setuptools)
    assert minimum and int(minimum.group(1)) >= 77, setuptools


# --- no test module imports from another ---------------------------------------------------
# Fixtures live in conftest.py files (tests/conftest.py for those several folders use, a
# folder's own for that folder's), helpers in modules that are not test modules
# (tests/fixtures.py, tests/fake_vertex.py, tests/local/fake_dags.py, ...). A test module
# importing a fixture from another gets that module imported (and its module-scoped
# state shared) by accident, and hides where the helper lives; a child process's code
# string counts too.

_FROM_A_TEST_MODULE = re.compile(r"(?:from|import)\s+tests\.[\w.]*\btest_\w*")


def _imports_from_test_modules(folder) -> list[str]:
    found = []
    for directory, _, files in os.walk(folder):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if _FROM_A_TEST_MODULE.search(line):
                        found.append(f"{os.path.relpath(path, folder)}:{number}: {line.strip()}")
    return found


def test_no_test_module_imports_a_fixture_or_helper_from_another():
    found = _imports_from_test_modules(os.path.join(ROOT, "tests"))
    assert found == [], ("move what these import into a conftest.py (a fixture) or a "
                         "helper module that is not a test module (tests/fixtures.py):\n"
                         + "\n".join(found))


def test_the_import_check_finds_each_form(tmp_path):
    (tmp_path / "a").mkdir()
    test = "test_"        # split, so that this file does not hold what it looks for
    (tmp_path / "a" / "test_x.py").write_text(
        "from tests import fixtures\n"
        "from tests.fixtures import card, fake_saved_model\n"
        f"from tests.steps.{test}train import graph  # noqa: F401\n"
        f"import tests.io.{test}gcs\n"
        f"    from tests.{test}suite_hygiene import ROOT\n"
        f"code = 'import sys; from tests.local.{test}local_runner import STEPS; run()'\n")
    (tmp_path / "a" / "helpers.py").write_text("from tests.local.fake_dags import STEPS\n")
    assert [line.split(":")[1] for line in _imports_from_test_modules(tmp_path)] == \
        ["3", "4", "5", "6"]
