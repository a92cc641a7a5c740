"""Adding a step takes one module and one `node(...)` line (tests/toy_step.py): it runs
with the built-in steps under both engines, as a user runs them (`--dag`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from components import artifacts
from components.errors import ConfigError
from pipeline import cli, dag
from tests import toy_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAG = "tests.toy_step:STEPS"
CONFIG = """name: toy
data: {source: builtin:digits, image_size: [8, 8], channels: 1}
model: {kind: logistic}
train: {epochs: 1}
evaluate: {thresholds: {accuracy: {min: 0.1}}}
push: {destination: ./serving}
"""


def _shares(uri: str) -> dict:
    shares = toy_step.ClassShares.read(artifacts.read(uri, toy_step.ClassShares))
    assert shares["source"] == "builtin:digits" and len(shares["shares"]) == 10
    assert abs(sum(shares["shares"].values()) - 1) < 0.01
    return shares


def test_a_toy_step_runs_with_the_built_in_steps_under_both_engines(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG)
    # local engine: the new step's output, its lineage, its own cache entry
    assert cli.main(["run", "c.yaml", "--dag", DAG, "--until", "class_shares",
                     "--runs-dir", "runs"]) == 0
    out = capsys.readouterr().out
    assert "  class_shares done " in out and "10 classes, largest share" in out
    uri = next(line.split(": ", 1)[1] for line in out.splitlines()
               if line.startswith("  class_shares.shares: "))
    local = _shares(uri)
    assert cli.main(["run", "c.yaml", "--dag", DAG, "--until", "class_shares",
                     "--runs-dir", "runs"]) == 0
    assert "  class_shares cached " in capsys.readouterr().out

    # kfp-local: the same module compiled into the KFP pipeline, every task in its own
    # process (which finds the step through the compiled --dag)
    env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp_path))
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "imgpipe"), "run",
                           "c.yaml", "--dag", DAG, "--engine", "kfp-local",
                           "--runs-dir", "kruns"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  class_shares done " in done.stdout and "  push       done " in done.stdout
    uri = next(line.split(": ", 1)[1] for line in done.stdout.splitlines()
               if line.startswith("  class_shares.shares: "))
    assert _shares(uri) == local


def test_a_dag_that_cannot_load_is_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(CONFIG)
    for location, message in (("tests.nosuch:STEPS", "No module named 'tests.nosuch'"),
                              ("tests.toy_step:NOSUCH", "has no attribute 'NOSUCH'")):
        assert cli.main(["run", str(tmp_path / "c.yaml"), "--dag", location,
                         "--runs-dir", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    broken = (dag.STEPS[0], dag.node(toy_step.run, examples="ingest.statistics"))
    toy_step.BROKEN = broken
    try:
        with pytest.raises(ConfigError, match="examples expects Examples"):
            dag.load("tests.toy_step:BROKEN")
    finally:
        del toy_step.BROKEN


def test_the_toy_dag_compiles_with_its_step_and_the_built_in_spec_is_unchanged(tmp_path):
    import yaml

    from pipeline import config as config_lib
    from pipeline.kfp import compile as kfp_compile

    cfg = config_lib.load(os.path.join(ROOT, "deploy", "example.yaml"), resolve_paths=False)
    spec = yaml.safe_load(open(kfp_compile.compile_pipeline(cfg, str(tmp_path / "p.yaml"), DAG)))
    tasks = spec["root"]["dag"]["tasks"]
    assert "class-shares" in tasks
    source = "".join(spec["deploymentSpec"]["executors"]["exec-class-shares"]["container"]
                     ["command"])
    assert f"dag_location={DAG!r}" in source
    builtin = open(kfp_compile.compile_pipeline(cfg, str(tmp_path / "b.yaml"))).read()
    assert "dag_location" not in builtin
