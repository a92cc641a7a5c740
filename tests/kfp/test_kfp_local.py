"""`imgpipe run --engine kfp-local`: the compiled pipeline under kfp.local matches the
local runner, is printed and recorded like a local run, a failed task is one line and
on record (the real kfp.local names the resolve task's own error), and drift stops a
second compiled run at validate."""

import json
import os
import re

import pytest

from pipeline import cli
from pipeline import config as config_lib
from pipeline.kfp import local as kfp_local
from pipeline.metadata import METADATA_FILE, MetadataStore
from tests.fixtures import cli_config, run_cli

from tests import ROOT  # noqa: E402


TINY = """
name: tiny
data: {source: builtin:digits, image_size: [8, 8], eval_fraction: 0.2}
model: {kind: cnn, hidden_units: [64], dropout: 0.25}
train: {epochs: 4, batch_size: 32, optimizer: {learning_rate: 0.01}}
evaluate: {thresholds: {accuracy: {min: 0.5}}, bootstrap_samples: 200}
push: {destination: SERVING}
"""


@pytest.mark.slow
def test_kfp_local_run_matches_the_local_runner(tmp_path, capsys):
    """`imgpipe run configs/digits.yaml --engine kfp-local` as a user runs it: under 60
    lines in all, the local engine's step lines and verdict, the run in `runs list` /
    `runs show` with its engine, report.html; its artifacts match a local run's."""
    import subprocess
    import sys

    from components import artifacts
    from components.registry.versions import Registry
    from pipeline.local.runner import run_pipeline

    serving = f"push.destination={tmp_path / 'serving'}"
    config_path = os.path.join(ROOT, "configs", "digits.yaml")
    runs = str(tmp_path / "kfpruns")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    for name in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES"):    # as in a user's shell
        env.pop(name, None)
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "imgpipe"), "run",
                           config_path, "--set", serving, "--engine", "kfp-local",
                           "--runs-dir", runs], capture_output=True, text=True, env=env)
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(lines) < 60, "\n".join(lines)
    assert done.stderr == "" and "\x1b[" not in done.stdout
    for noise in ("KFP Executor", "executor_input", "base image", "warnings.warn", "cuda"):
        assert noise not in done.stdout, noise
    for step in ("ingest", "validate", "transform", "tune", "train", "evaluate"):
        assert f"  {step:<10} done " in done.stdout, step
    assert "             BLESSED" in done.stdout and "             epoch 8/8 " in done.stdout
    run_id = lines[0].split()[1]
    assert f"pushed digits-cnn:1 at {tmp_path / 'serving'}" in done.stdout
    assert os.path.isfile(os.path.join(runs, run_id, "report.html"))
    assert cli.main(["runs", "show", run_id, "--runs-dir", runs]) == 0
    shown = capsys.readouterr().out
    assert "engine kfp-local  status succeeded" in shown and "[push] succeeded" in shown
    card = Registry(str(tmp_path / "serving")).versions("digits-cnn")[0].card
    assert card["run_id"] == run_id and card["pipeline"] == "digits-cnn"

    def kfp_artifact(task, name):
        return artifacts.read(os.path.join(runs, run_id, task, name))

    local = run_pipeline(config_lib.load(config_path, [serving]), str(tmp_path / "runs"),
                         log=lambda _: None)
    outs = {f"{s.step}.{n}": artifacts.read(u) for s in local.steps for n, u in s.outputs.items()}
    assert kfp_artifact("ingest", "examples").properties["counts"] == \
        outs["ingest.examples"].properties["counts"]
    assert kfp_artifact("transform", "transform_graph").properties["label_vocabulary"] == \
        outs["transform.transform_graph"].properties["label_vocabulary"]
    kfp_accuracy = kfp_artifact("evaluate", "evaluation").properties["accuracy"]
    local_accuracy = outs["evaluate.evaluation"].properties["accuracy"]
    assert kfp_accuracy > 0.9 and abs(kfp_accuracy - local_accuracy) < 0.03


def _fake_kfp_local(blessed=True, fail_at=None):
    """A stand-in for the compiled pipeline under kfp.local: prints what kfp.local
    prints (its coloured INFO lines, each task's executor input and indented output)
    and commits each step's outputs where kfp.local puts them."""
    import sys

    from kfp.local import logging_utils

    from components import artifacts
    from pipeline import dag

    def run():
        from kfp.local import executor_input_utils

        root = os.path.join(os.environ["FAKE_KFP_ROOT"],
                            executor_input_utils.get_local_pipeline_resource_name("tiny"))
        out = sys.stdout

        def task(name, lines=(), status="SUCCESS"):
            out.write(f"08:00:00.000 - INFO - Executing task \x1b[96m'{name}'\x1b[0m\n")
            out.write("08:00:00.001 - INFO - Streamed logs:\n\n")
            with logging_utils.indented_print():     # as kfp.local streams a task's output
                for line in ["[KFP Executor 2026-11-30 08:00:00,000 INFO]: Got executor_input:",
                             "{", '    "inputs": {', '        "parameterValues": {}', "    }",
                             "}", "I0000 00:00:1796026510.352781    1792 cudart_stub.cc:31] "
                             "Could not find cuda drivers on your machine, GPU will not be used.",
                             *lines]:
                    print(line)
            if status != "SUCCESS":
                # kfp.local 2.17 logs the failed task's end, then raises
                # (pipeline_orchestrator.log_and_maybe_raise_for_failure)
                out.write(f"08:00:01.000 - ERROR - Task \x1b[96m'{name}'\x1b[0m finished "
                          f"with status \x1b[91mFAILURE\x1b[0m\n")
                raise RuntimeError(f"Pipeline \x1b[95m'tiny'\x1b[0m finished with status "
                                   f"\x1b[91mFAILURE\x1b[0m. Inner task failed: "
                                   f"\x1b[96m'{name}'\x1b[0m.")
            out.write(f"08:00:01.000 - INFO - Task \x1b[96m'{name}'\x1b[0m finished with "
                      f"status \x1b[92m{status}\x1b[0m\n")
            out.write("-" * 80 + "\n")

        failure = ["Traceback (most recent call last):", '  File "x.py", line 1',
                   "    run(x)", "    ^^^^^^",
                   "components.errors.DataError: the source has no images; add some."]
        out.write("08:00:00.000 - INFO - Running pipeline: \x1b[95m'tiny'\x1b[0m\n")
        task("resolve", ["resolve: evaluate__baseline = (none)"]
             + (failure if fail_at == "resolve" else []),
             status="FAILURE" if fail_at == "resolve" else "SUCCESS")
        for node in dag.STEPS:
            if node.name == "push" and not blessed:
                continue
            folder = node.name.replace("_", "-")
            if node.name == fail_at:
                task(folder, failure, status="FAILURE")
            for output in node.spec.outputs:
                with artifacts.writing(os.path.join(root, folder, output),
                                       node.spec.output_type(output)) as writer:
                    open(writer.file("x.json"), "w").write("{}")
                    if output == "blessing":
                        writer.properties = {"blessed": blessed, "reason": "accuracy 0.41 "
                                             "below its bound 0.5" if not blessed else "ok"}
                    elif output == "infra_blessing":
                        writer.properties = {"passed": True, "reason": "served"}
                    elif output == "pushed_model":
                        writer.properties = {"pushed": True, "model_name": "tiny",
                                             "version": 1, "path": "/s/tiny/1"}
                    writer.commit()
            progress = ["             epoch 1/2  loss 0.5000  2.0s  ETA 2s",
                        "             epoch 2/2  loss 0.4000  2.0s"] \
                if node.name == "train" else []
            task(folder, progress + [f"{node.name}: {node.name} said something"])
        task("report")
        out.write("08:00:09.000 - INFO - Pipeline 'tiny' finished with status SUCCESS\n")

    return lambda config, *args, **kwargs: run


@pytest.mark.parametrize("blessed", [True, False])
def test_kfp_local_is_recorded_and_printed_like_a_local_run(tmp_path, capsys, monkeypatch,
                                                            blessed):
    """kfp.local's output becomes the local runner's step lines (no executor input, no
    INFO lines, no colours); the run, its executions and artifacts are in the runs
    folder's metadata store (engine kfp-local) under RUNS/RUN_ID like a local run's,
    with report.html; a gate that closed skips the push and says not blessed, and
    --require-push exits 4."""
    from pipeline.local.runner import describe_run
    from pipeline.metadata import MetadataStore

    runs = tmp_path / "runs"
    monkeypatch.setenv("FAKE_KFP_ROOT", str(runs))
    monkeypatch.setattr(kfp_local, "build_pipeline", _fake_kfp_local(blessed))
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("SERVING", str(tmp_path / "serving")))
    code = cli.main(["run", str(config), "--engine", "kfp-local", "--runs-dir", str(runs),
                     "--require-push"])
    out, err = capsys.readouterr()
    assert code == (0 if blessed else 4), out + err
    assert err == "" and "\x1b" not in out
    assert "KFP Executor" not in out and "INFO" not in out and "cuda" not in out
    assert "  ingest     running  (kfp.local runs every task; no cache)" in out
    assert "             epoch 1/2  loss 0.5000" in out
    assert "             epoch 2/2  loss 0.4000" in out     # each progress line, not every other
    assert "  train      done" in out and "             train said something" in out
    run_id = next(line.split()[1] for line in out.splitlines() if line.startswith("run "))
    assert (runs / run_id / "report.html").is_file()
    if blessed:
        assert out.splitlines()[-1] == "pushed tiny:1 at /s/tiny/1"
    else:
        assert ("  push       skipped  (not run: its gate is closed (not blessed: accuracy "
                "0.41 below its bound 0.5))") in out
        assert out.splitlines()[-1] == "not blessed (accuracy 0.41 below its bound 0.5)"
    assert len(out.splitlines()) < 60

    store = MetadataStore(str(runs / "metadata.sqlite"), read_only=True)
    [run] = store.list_runs()
    assert run["id"] == run_id and run["engine"] == "kfp-local" and run["status"] == "succeeded"
    info = describe_run(store, run_id)
    steps = {s["step"]: s for s in info["steps"]}
    assert steps["push"]["status"] == ("succeeded" if blessed else "skipped")
    assert steps["train"]["inputs"]["examples"] == str(runs / run_id / "ingest" / "examples")
    assert steps["infra_validate"]["outputs"]["infra_blessing"]["type"] == "InfraBlessing"
    assert steps["evaluate"]["summary"]["blessed"] is blessed
    assert cli.main(["runs", "list", "--runs-dir", str(runs)]) == 0
    listing = capsys.readouterr().out
    assert run_id in listing and "kfp-local" in listing
    assert ("push-" in listing) is not blessed

    monkeypatch.setattr(kfp_local, "build_pipeline", _fake_kfp_local(blessed))
    assert cli.main(["run", str(config), "--engine", "kfp-local", "--runs-dir", str(runs),
                     "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["engine"] == "kfp-local" and result["blessed"] is blessed
    assert result["verdict"] == ("pushed" if blessed else "not blessed")
    assert result["pushed"] == ({"model_name": "tiny", "version": 1, "path": "/s/tiny/1",
                                 "alias": None} if blessed else None)
    assert "  ingest     running" in captured.err


@pytest.mark.parametrize("task", ["transform", "resolve"])
def test_a_failed_kfp_local_task_is_one_line_and_on_record(tmp_path, capsys, monkeypatch, task):
    """A step's or the resolve task's failure ends the CLI with the task's own error in
    one line (exit 2 for a DataError), and the run is on record as failed."""
    from pipeline.local.runner import describe_run
    from pipeline.metadata import MetadataStore

    runs = tmp_path / "runs"
    monkeypatch.setenv("FAKE_KFP_ROOT", str(runs))
    monkeypatch.setattr(kfp_local, "build_pipeline", _fake_kfp_local(fail_at=task))
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("SERVING", str(tmp_path / "serving")))
    assert cli.main(["run", str(config), "--engine", "kfp-local", "--runs-dir",
                     str(runs)]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == "imgpipe: error: the source has no images; add some."
    store = MetadataStore(str(runs / "metadata.sqlite"), read_only=True)
    [run] = store.list_runs()
    assert run["status"] == "failed" and "no images" in run["error"]
    assert (runs / run["id"] / "report.html").is_file()     # a failed run's report too
    assert f"run {run['id']} failed" in out and "report.html" in out
    steps = {s["step"]: s for s in describe_run(store, run["id"])["steps"]}
    if task == "resolve":
        assert steps == {}
        return
    # the step line names the task's own error; no traceback markers, no escape codes
    assert re.search(r"  transform  FAILED +[\d.]+s: the source has no images; add some\.", out)
    assert "^^^" not in out and "\x1b" not in out
    assert steps["transform"]["status"] == "failed"
    assert steps["transform"]["error"] == "the source has no images; add some."
    assert "\x1b" not in run["error"]
    assert steps["validate"]["status"] == "succeeded" and "train" not in steps


@pytest.mark.slow
def test_drift_stops_the_second_compiled_run_at_validate_under_kfp_local(tmp_path):
    """The compiled pipeline, twice through `imgpipe run --engine kfp-local` (about a
    minute together): run 1 succeeds and its report task records its statistics in the
    registry; after a drop that moves the class shares, run 2's resolve task pins run
    1's statistics, its validate task finds the drift and the run stops there, exit 3
    (ValidationFailed), with nothing trained or pushed."""
    import subprocess
    import sys

    from components import artifacts
    from components.registry.versions import Registry
    from tests import fixtures

    data = tmp_path / "data"
    fixtures.make_class_folders(str(data), per_class=30, size=8)
    config = tmp_path / "c.yaml"
    config.write_text(
        "name: drifting\n"
        f"data: {{source: {str(data)!r}, image_size: [8, 8], channels: 1, eval_fraction: 0.25}}\n"
        "model: {kind: logistic}\ntrain: {epochs: 1, batch_size: 16}\n"
        "evaluate: {thresholds: {accuracy: {min: 0.1}}, bootstrap_samples: 50}\n"
        f"push: {{destination: {str(tmp_path / 'serving')!r}}}\n")
    runs = tmp_path / "runs"

    def run():
        done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "imgpipe"), "run",
                               str(config), "--engine", "kfp-local", "--runs-dir", str(runs)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300,
                              env=dict(os.environ, TMPDIR=str(tmp_path)))
        return done.returncode, done.stdout + done.stderr, done.stdout.split()[1]

    code, out, first = run()
    assert code == 0, out
    assert [v.version for v in Registry(str(tmp_path / "serving")).versions("drifting")] == [1]

    fixtures.make_class_folders(str(data), classes=("cat",), per_class=60, size=8, first=30)
    code, out, second = run()
    assert code == 3, out                                   # ValidationFailed.exit_code
    assert "  validate   FAILED" in out and "anomalies stop the run" in out
    for later in ("transform", "train", "evaluate", "push"):
        assert f"  {later:<10} done" not in out, later
    anomalies = artifacts.ExampleAnomalies.read(str(runs / second / "validate" / "anomalies"))
    assert anomalies["baseline"] == str(runs / first / "ingest" / "statistics")
    assert [a["kind"] for a in anomalies["anomalies"]] == ["class_drift"]
    assert "vs the previous run" in anomalies["anomalies"][0]["description"]
    assert [v.version for v in Registry(str(tmp_path / "serving")).versions("drifting")] == [1]


def test_kfp_local_names_the_resolve_tasks_error_in_one_line(tmp_path, capsys):
    """The real kfp.local (a subprocess per task): a missing source fails the resolve
    task, and the CLI says why, as the local engine does (it printed kfp's traceback
    ending "Inner task failed: 'resolve'")."""
    path = cli_config(tmp_path, data={"source": str(tmp_path / "nonexistent")})
    runs = tmp_path / "runs"
    code, out, err = run_cli(capsys, "run", path, "--engine", "kfp-local", "--runs-dir", str(runs))
    assert code == 2, out + err
    assert err.strip().splitlines() == [
        f"imgpipe: error: data.source {str(tmp_path / 'nonexistent')!r} does not exist; give "
        "a folder of class folders, a .csv/.jsonl manifest, an .npz file, IDX files or "
        "builtin:fonts."]
    [run] = MetadataStore(str(runs / METADATA_FILE)).list_runs()
    assert run["status"] == "failed" and "does not exist" in run["error"]
    assert "\x1b" not in run["error"]
