"""A `--dag` module written against the module names before the package layout
(`from components import fileio`, `from pipeline.local import run_pipeline`, ...) keeps
working for one release: it runs and compiles, with a FutureWarning naming each new
module (components/_moved.py). The hook is installed where a `--dag` module is loaded,
never by a step: no step's code key holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from components import _moved
from pipeline import cache, dag
from tests import ROOT

OLD_DAG = '''"""A --dag module of before the package layout."""
from __future__ import annotations

from components import artifacts, fileio, registry_store, training
from components.config import TrainConfig
from components.contract import In, Out, step
from components.fileio import join
from components.registry import Registry
from components.steps import train
from pipeline import dag
from pipeline.local import run_pipeline
from tests import fake_steps


@step(name="listing")
def listing(examples: In[artifacts.Examples], train: TrainConfig,
            statistics: Out[artifacts.ExampleStatistics]):
    """The file names of its input, through the old module's helpers."""
    names = sorted(os.path.basename(p) for p in fileio.glob(join(examples.uri, "*")))
    artifacts.ExampleStatistics.write(statistics, {"files": names, "epochs": train.epochs})
    return {"lines": [", ".join(names)]}


import os  # noqa: E402  (after the step: the hook is for imports anywhere in the file)

# produce -> listing: no TensorFlow, no Beam
STEPS = (dag.node(fake_steps.produce), dag.node(listing, examples="produce.examples"))
# the built-in steps and this one, for the compiler
BUILTIN = (*dag.STEPS, dag.node(listing, examples="ingest.examples"))
'''
OLD_NAMES = {"components.fileio": "components.io.fileio",
             "components.registry_store": "components.registry.store",
             "components.training": "components.trainer.training",
             "components.config.TrainConfig": "components.config.train.TrainConfig",
             "components.registry.Registry": "components.registry.versions.Registry",
             "pipeline.local.run_pipeline": "pipeline.local.runner.run_pipeline"}


def _write_dag(tmp_path) -> None:
    package = tmp_path / "olddag"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "steps.py").write_text(OLD_DAG)
    (tmp_path / "c.yaml").write_text("name: old\ndata: {source: a}\n")


def _imgpipe(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def _warned(stderr: str) -> dict[str, str]:
    """old -> new of the FutureWarnings in `stderr`, each naming the DAG's line."""
    out = {}
    for line in stderr.splitlines():
        if "FutureWarning: " in line:
            assert "olddag/steps.py:" in line, line          # the user's import line
            old, _, rest = line.split("FutureWarning: ", 1)[1].partition(" moved to ")
            out[old] = rest.split(";")[0]
    return out


def test_a_dag_written_against_the_old_names_runs_and_compiles_with_a_warning(tmp_path):
    _write_dag(tmp_path)
    first = _imgpipe(tmp_path, "run", "c.yaml", "--dag", "olddag.steps:STEPS",
                     "--runs-dir", "runs", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _warned(first.stderr) == OLD_NAMES
    result = json.loads(first.stdout)
    assert [(s["step"], s["status"]) for s in result["steps"]] == \
        [("produce", "ran"), ("listing", "ran")]
    assert result["steps"][1]["lines"] == ["artifact.json, data.json"]

    again = _imgpipe(tmp_path, "run", "c.yaml", "--dag", "olddag.steps:STEPS",
                     "--runs-dir", "runs", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [s["status"] for s in json.loads(again.stdout)["steps"]] == ["cached", "cached"]

    compiled = _imgpipe(tmp_path, "compile", os.path.join(ROOT, "deploy", "example.yaml"),
                        "--dag", "olddag.steps:BUILTIN", "-o", "p.yaml")
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert _warned(compiled.stderr) == OLD_NAMES
    assert "listing" in (tmp_path / "p.yaml").read_text()


def test_an_old_name_in_a_step_keys_on_the_module_it_moved_to(tmp_path, monkeypatch):
    """The code key of a step written against the old names still covers the helpers
    it uses (read from the sources: nothing is imported, no hook is needed)."""
    _write_dag(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cache._package_dir.cache_clear()
    try:
        modules = cache.code_modules("olddag.steps")
    finally:
        cache._package_dir.cache_clear()
    assert {"components.io.fileio", "components.registry.store",
            "components.registry.versions", "components.trainer.training",
            "pipeline.local.runner"} <= set(modules)
    assert "components.fileio" not in modules and "components.training" not in modules


def test_the_hook_is_in_no_step_key_and_every_old_name_is_gone_or_a_package():
    for node in dag.STEPS:
        assert "components._moved" not in cache.code_modules(node.spec.module), node.name
    for old, new in _moved.MOVED.items():
        assert cache._is_module(new), f"{old} -> {new}: no such module"
        # an old name is no module now, or a package holding its new module
        assert not cache._is_module(old) or new.startswith(old + "."), old
