"""Reruns of the real pipeline (issue 24, item 21): a fully cached rerun imports neither
TensorFlow nor Beam, `imgpipe run` killed mid-train resumes from its checkpoint and
reuses the steps before train, and a step that resumes an interrupted attempt says so."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest

from tests import ROOT


_HEAVY = ("tensorflow", "apache_beam", "keras", "tensorflow_transform",
          "tensorflow_model_analysis")


_RERUN = """
import json, sys
sys.path.insert(0, {root!r})
from pipeline import cli
code = cli.main(["run", {config!r}, "--runs-dir", {runs!r}, "--json"])
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print("\\nCHECK " + json.dumps({{"code": code, "heavy": heavy}}), flush=True)
"""


def _digits_config(tmp_path, epochs=1, **extra) -> str:
    config = tmp_path / "digits.yaml"
    config.write_text(
        "name: quick\n"
        "data: {source: 'builtin:digits', image_size: [8, 8], eval_fraction: 0.2}\n"
        f"model: {{kind: logistic}}\ntrain: {{epochs: {epochs}, batch_size: 32}}\n"
        "evaluate: {thresholds: {accuracy: {min: 0.1}}, bootstrap_samples: 50}\n"
        f"push: {{destination: {str(tmp_path / 'serving')!r}}}\n"
        + "".join(f"{key}: {value}\n" for key, value in extra.items()))
    return str(config)


@pytest.mark.slow
def test_a_fully_cached_rerun_imports_neither_tensorflow_nor_beam(tmp_path, capsys):
    """The third run of an unchanged config (the second reruns validate against the
    first run's statistics) reuses every step and pushes nothing new, in a fresh
    process that never imports TensorFlow, Keras, TFT, TFMA or Beam."""
    from pipeline import cli

    config, runs = _digits_config(tmp_path), str(tmp_path / "runs")
    for _ in range(2):
        assert cli.main(["run", config, "--runs-dir", runs]) == 0
    capsys.readouterr()
    done = subprocess.run([sys.executable, "-c", _RERUN.format(
        root=ROOT, config=config, runs=runs, heavy=_HEAVY)], capture_output=True, text=True,
        timeout=300, env=dict(os.environ, TMPDIR=str(tmp_path)))
    check = json.loads(done.stdout.split("\nCHECK ")[-1])
    result = json.loads(done.stdout.split("\nCHECK ")[0])
    assert check["code"] == 0, done.stderr[-3000:]
    statuses = {s["step"]: s["status"] for s in result["steps"]}
    assert statuses.pop("push") == "ran" and set(statuses.values()) == {"cached"}, \
        [(s["step"], s["decision"]) for s in result["steps"] if s["status"] != "cached"]
    assert result["pushed"]["version"] == 1              # the same model, already pushed
    assert check["heavy"] == [], check


@pytest.mark.slow
def test_imgpipe_run_killed_mid_train_resumes_from_its_checkpoint_and_reuses_earlier_steps(
        tmp_path):
    """SIGKILL of `imgpipe run` once train has checkpointed an epoch into the runner's
    scratch folder; the rerun reuses ingest, transform and tune (the first unfinished
    step is train), resumes training after the saved epoch instead of from scratch,
    keeps every epoch in the history, and removes the scratch folder."""
    import signal

    from components import artifacts

    epochs = 12
    config, runs = _digits_config(tmp_path, epochs=epochs), tmp_path / "runs"
    config_text = open(config).read().replace("batch_size: 32", "batch_size: 4")
    open(config, "w").write(config_text)                 # slower epochs: time to kill one
    command = [os.path.join(os.path.dirname(sys.executable), "imgpipe"), "run", config,
               "--runs-dir", str(runs), "--until", "train"]
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=tmp_path)
    saved, deadline = None, time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for state in (runs / "scratch").rglob("training_metadata.json"):
                with contextlib.suppress(ValueError, OSError):
                    if json.loads(state.read_text()).get("epoch", -1) >= 1:
                        saved = state
            if saved:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished (or failed) before it could be killed"
        assert saved is not None, "no checkpoint within the deadline"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last_saved = json.loads(saved.read_text())["epoch"]

    done = subprocess.run(command + ["--json"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    statuses = {s["step"]: s["status"] for s in result["steps"]}
    assert [statuses[s] for s in ("ingest", "transform", "tune")] == ["cached"] * 3, statuses
    assert statuses["train"] == "ran"
    model = artifacts.read(next(s for s in result["steps"]
                                if s["step"] == "train")["outputs"]["trained_model"])
    # resumed after the saved epoch (0-based; one later if the kill hit after the next
    # checkpoint), not from scratch; the history holds every epoch
    assert last_saved <= model.properties["resumed_after_epochs"] <= last_saved + 2
    assert model.properties["resumed_after_epochs"] >= 1
    history = json.load(open(model.path(artifacts.Model.FILE)))
    assert len(history["loss"]) == epochs
    assert not list((runs / "scratch").rglob("training_metadata.json"))


def test_a_step_that_resumes_an_interrupted_attempt_says_so(tmp_path):
    """A rerun after a killed train resumes from the scratch checkpoint: its decision
    says so (it said "no earlier execution of this step")."""
    import json

    from components.trainer import training
    from pipeline.local.runner import _resuming

    scratch = tmp_path / "scratch" / "train" / "0123456789abcdef"
    assert _resuming("no earlier execution of this step", str(scratch)) == \
        "no earlier execution of this step"
    scratch.mkdir(parents=True)
    (scratch / training.EPOCH_LOG).write_text("".join(
        json.dumps({"epoch": epoch, "phase": 1, "loss": 1.0 / (epoch + 1)}) + "\n"
        for epoch in (0, 1, 1, 2)))              # epoch 1 logged twice: ran again after a kill
    assert _resuming("no earlier execution of this step", str(scratch)) == (
        f"no earlier execution of this step; resumes an interrupted attempt after its epoch 3 "
        f"(kept in {scratch})")
