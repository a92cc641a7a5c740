"""Cache keys follow the code a step imports; reuse verifies the artifact's content."""

from __future__ import annotations

import os
import sys
import time

import pytest

from components import artifacts
from components.io import fileio
from pipeline import cache, dag
from pipeline.local.runner import LocalRunner
from tests import fake_steps

PACKAGE = {
    "__init__.py": "",
    "helper_a.py": "VALUE = 1\n",
    "helper_b.py": "VALUE = 2\n",
    "shared.py": "def f():\n    return 0\n",
    "step_a.py": ("from fakeproj import shared\n\n\ndef run():\n"
                  "    from fakeproj.helper_a import VALUE  # imported where it is used\n"
                  "    return VALUE + shared.f()\n"),
    "step_b.py": "import fakeproj.helper_b\nfrom fakeproj import shared\n",
}


@pytest.fixture
def fakeproj(tmp_path, monkeypatch):
    root = tmp_path / "src"
    (root / "fakeproj").mkdir(parents=True)
    for name, text in PACKAGE.items():
        (root / "fakeproj" / name).write_text(text)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(cache, "PROJECT_PACKAGES", ("fakeproj",))
    cache._package_dir.cache_clear()       # another test's fakeproj lived elsewhere
    yield root / "fakeproj"
    cache._package_dir.cache_clear()
    for name in [m for m in sys.modules if m.startswith("fakeproj")]:
        del sys.modules[name]


def _touch_edit(path, text):
    path.write_text(text)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_code_fingerprint_follows_imports(fakeproj):
    assert cache.code_modules("fakeproj.step_a") == [
        "fakeproj", "fakeproj.helper_a", "fakeproj.shared", "fakeproj.step_a"]
    a, b = cache.code_fingerprint("fakeproj.step_a"), cache.code_fingerprint("fakeproj.step_b")
    _touch_edit(fakeproj / "helper_a.py", "VALUE = 10\n")    # only step_a uses it
    a2, b2 = cache.code_fingerprint("fakeproj.step_a"), cache.code_fingerprint("fakeproj.step_b")
    assert a2["source"] != a["source"] and b2["source"] == b["source"]
    assert a2["modules"]["fakeproj.helper_a"] != a["modules"]["fakeproj.helper_a"]
    _touch_edit(fakeproj / "shared.py", "def f():\n    return 1\n")   # both use it
    assert cache.code_fingerprint("fakeproj.step_a")["source"] != a2["source"]
    assert cache.code_fingerprint("fakeproj.step_b")["source"] != b2["source"]


def test_parsed_sources_are_kept_between_processes(fakeproj, tmp_path, monkeypatch):
    """The index in the runs folder spares a later process the parsing; an edited file
    is parsed again; a new helper module is found though its importer is unchanged."""
    import ast

    index = str(tmp_path / "index.json")
    monkeypatch.setattr(cache, "_INDEX", {})
    cache.use_index(index)
    first = cache.code_fingerprint("fakeproj.step_a")
    cache.save_index()
    monkeypatch.setattr(cache, "_INDEX", {})                  # a new process
    cache.use_index(index)

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed a file the index knows")

    monkeypatch.setattr(ast, "parse", no_parsing)
    assert cache.code_fingerprint("fakeproj.step_a") == first
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(fakeproj.parent))
    monkeypatch.setattr(cache, "PROJECT_PACKAGES", ("fakeproj",))
    monkeypatch.setattr(cache, "_INDEX", {})
    cache.use_index(index)
    _touch_edit(fakeproj / "helper_a.py", "VALUE = 10\n")
    assert cache.code_fingerprint("fakeproj.step_a")["source"] != first["source"]
    (fakeproj / "step_c.py").write_text("from fakeproj import later\n")
    assert "fakeproj.later" not in cache.code_modules("fakeproj.step_c")
    (fakeproj / "later.py").write_text("X = 1\n")
    assert "fakeproj.later" in cache.code_modules("fakeproj.step_c")


def test_real_steps_key_on_the_helpers_they_use():
    ingest = cache.code_modules(dag.get("ingest").spec.module)
    train = cache.code_modules(dag.get("train").spec.module)
    # ingest encodes every example with components.features (the old hand-kept list
    # missed it); train never reads sources
    assert {"components.features", "components.data.sources", "components.data.imaging"} <= set(ingest)
    assert "components.data.sources" not in train and "components.trainer.training" in train


def test_a_miss_names_the_module_that_changed():
    from types import SimpleNamespace

    parts = {"code": {"modules": {"components.evaluation.scoring": "aaa", "components.evaluation.gate": "bbb"},
                      "source": "x"}, "config": {"evaluate": {"top_k": 3}}}
    previous = SimpleNamespace(id=5, run_id="r1", key_parts={
        "code": {"modules": {"components.evaluation.scoring": "ccc", "components.evaluation.gate": "bbb"},
                 "source": "y"}, "config": {"evaluate": {"top_k": 3}}})
    assert cache.explain_miss(parts, previous) == \
        "changed since run r1: code.modules.components.evaluation.scoring: 'ccc' -> 'aaa'"
    # a part that was absent reads as such, not as a Python None
    previous.key_parts["inputs"] = {"baseline_statistics": None}
    parts["inputs"] = {"baseline_statistics": "f" * 64}
    assert cache.explain_miss(parts, previous).endswith(
        "; inputs.baseline_statistics: (none) -> ffffffffffff")


# a Model artifact's SavedModel graph and a variables file, relative to the artifact
GRAPH = f"{artifacts.Model.SAVED_MODEL}/{artifacts.SAVED_MODEL_PB}"
VARIABLES = f"{artifacts.Model.SAVED_MODEL}/variables/variables.data"


def _artifact(tmp_path):
    with artifacts.writing(str(tmp_path / "a"), "Model") as writer:
        os.makedirs(writer.file(artifacts.Model.SAVED_MODEL, "variables"))
        for rel, data in ((GRAPH, b"graph"), (VARIABLES, b"weights" * 100)):
            with open(writer.file(rel), "wb") as handle:
                handle.write(data)
        return writer.commit()


def test_verify_notices_missing_truncated_and_altered_files(tmp_path):
    art = _artifact(tmp_path)
    assert set(art.files) == {GRAPH, VARIABLES}
    problems, verified = artifacts.verify(art)
    assert problems == [] and set(verified) == set(art.files)
    data = tmp_path / "a" / artifacts.Model.SAVED_MODEL / "variables" / "variables.data"
    data.write_bytes(b"weights" * 100 + b"!")
    assert artifacts.verify(art)[0] == [
        f"{VARIABLES} changed size since it was written (700 -> 701 bytes)"]
    data.write_bytes(b"WEIGHTS" * 100)
    assert "content differs" in artifacts.verify(art)[0][0]
    data.unlink()
    assert artifacts.verify(art)[0] == [f"{VARIABLES} is missing"]


def test_verify_does_not_reread_unchanged_files(tmp_path, monkeypatch):
    art = _artifact(tmp_path)
    _, known = artifacts.verify(art)
    reads = []
    real = fileio.hash_file
    monkeypatch.setattr(fileio, "hash_file", lambda path, *a: reads.append(path) or real(path))
    assert artifacts.verify(art, known) == ([], known)
    assert reads == []
    time.sleep(0.01)
    (tmp_path / "a" / GRAPH).write_bytes(b"graph")  # same bytes
    problems, again = artifacts.verify(art, known)
    assert problems == [] and reads == [str(tmp_path / "a" / GRAPH)]
    assert again != known


def test_a_damaged_cached_output_reruns_and_says_why(tmp_path, make_config):
    steps = (dag.node(fake_steps.produce), dag.node(fake_steps.consume, examples="produce.examples"))
    cfg = make_config(data={"source": "a"})

    def run():
        return LocalRunner(cfg, str(tmp_path), log=lambda _: None, steps=steps).run()

    first = run()
    stats = first.steps[1].outputs["statistics"]
    with open(os.path.join(stats, artifacts.ExampleStatistics.FILE), "a") as handle:
        handle.write(" ")
    fake_steps.CALLS.clear()
    second = run()
    assert [s.status for s in second.steps] == ["cached", "ran"]
    assert fake_steps.CALLS == ["consume"]
    assert (f"no longer verifies: statistics: {artifacts.ExampleStatistics.FILE} changed size"
            in second.steps[1].decision)
    third = run()
    assert [s.status for s in third.steps] == ["cached", "cached"]
    assert third.steps[1].outputs == second.steps[1].outputs
