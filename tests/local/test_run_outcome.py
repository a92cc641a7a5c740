"""Runs say what they did: `imgpipe run`'s last line, `runs list` (and --json), `backfill`
and the report name the same outcome (pushed NAME:V, already pushed, not blessed (why),
infra validation failed, stopped, failed at STEP), a failed run gets a report, and the
training curves name the validation split. The fake evaluate and push
(tests/fake_steps.py) keep it fast."""

from __future__ import annotations

import html
import json
import os
import re

import pytest

from pipeline import cli, dag
from pipeline.local.runner import LocalRunner
from tests import fake_steps
from tests.fixtures import file_tree, torn_writes

STEPS = (dag.node(fake_steps.judge), dag.node(fake_steps.serve),
         dag.node(fake_steps.publish, blessing="evaluate.blessing", after=("infra_validate",)))
DAG = "tests.local.test_run_outcome:STEPS"
NOT_BLESSED = "not blessed (accuracy 0.41 (needs >= 0.5))"
FAILED = "failed at evaluate: no eval examples under"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: tiny\ndata: {{source: {tmp_path / 'src'}}}\n"
                    f"push: {{destination: {tmp_path / 'serving'}}}\n")
    return str(path)


def _run(config, runs, capsys, monkeypatch, story, *extra, code=0):
    monkeypatch.setenv(fake_steps.VERDICT, story)     # not in the key: run every step
    assert cli.main(["run", config, "--dag", DAG, "--runs-dir", str(runs), "--no-cache",
                     *extra]) == code
    return capsys.readouterr()


def _report(runs, run_id) -> str:
    return (runs / run_id / "report.html").read_text(encoding="utf-8")


def _h1(page: str) -> str:
    return re.search(r"<h1>(.*?)</h1>", page)[1]


def test_the_last_line_of_a_run_says_what_it_did(tmp_path, config, capsys, monkeypatch):
    runs = tmp_path / "runs"
    out = _run(config, runs, capsys, monkeypatch, "blessed").out
    assert out.splitlines()[-1] == \
        f"pushed tiny:3 at {tmp_path / 'serving' / 'tiny' / '3'} (accuracy 0.930)"
    assert "succeeded" not in out
    assert _run(config, runs, capsys, monkeypatch, "not-blessed").out.splitlines()[-1] == \
        NOT_BLESSED
    assert _run(config, runs, capsys, monkeypatch, "already").out.splitlines()[-1] == \
        f"already pushed tiny:2 at {tmp_path / 'serving' / 'tiny' / '2'} (accuracy 0.930)"
    assert _run(config, runs, capsys, monkeypatch, "infra").out.splitlines()[-1] == \
        "infra validation failed (the model did not load)"
    assert _run(config, runs, capsys, monkeypatch, "blessed", "--until", "evaluate"
                ).out.splitlines()[-1] == "stopped after evaluate (no push)"

    # --json: the same outcome, beside the keys it always had
    result = json.loads(_run(config, runs, capsys, monkeypatch, "not-blessed", "--json").out)
    assert result["verdict"] == "not blessed" and result["outcome"] == NOT_BLESSED
    assert result["accuracy"] == 0.41 and result["model"] is None
    assert result["blessed"] is False and result["pushed"] is None
    assert result["reason"] == "not blessed: accuracy 0.41 (needs >= 0.5)"
    result = json.loads(_run(config, runs, capsys, monkeypatch, "blessed", "--json").out)
    assert (result["verdict"], result["outcome"], result["model"]) == \
        ("pushed", "pushed tiny:3", "tiny:3")
    assert result["pushed"]["version"] == 3


def test_a_closed_gate_leaves_push_not_run_and_says_nothing_was_pushed(
        tmp_path, config, capsys, monkeypatch):
    """evaluate did not bless: push does not run on the local engine either (as under
    KFP's dsl.If and kfp.local), and every view still says nothing was pushed and why."""
    runs = tmp_path / "runs"
    printed = _run(config, runs, capsys, monkeypatch, "not-blessed", "--json")
    result = json.loads(printed.out)
    push = next(s for s in result["steps"] if s["step"] == "push")
    reason = "not blessed: accuracy 0.41 (needs >= 0.5)"
    assert push["status"] == "skipped" and push["outputs"] == {}
    assert push["decision"] == f"not run: its gate is closed ({reason})"
    assert push["lines"] == [f"NOTHING PUSHED ({reason})"]
    assert f"push       skipped  (not run: its gate is closed ({reason}))" in printed.err
    assert (result["verdict"], result["pushed"], result["reason"]) == \
        ("not blessed", None, reason)
    assert not (tmp_path / "serving").exists()              # publish never ran
    page = _report(runs, result["run_id"])
    assert "Nothing pushed: " + html.escape(reason) in page
    assert _h1(page).endswith(html.escape(NOT_BLESSED, quote=False))
    # --require-push: the run that pushed nothing exits 4 (NotBlessed's code)
    assert _run(config, runs, capsys, monkeypatch, "not-blessed", "--require-push",
                code=4).out.splitlines()[-1] == NOT_BLESSED
    # infra validation's gate closes push the same way, in its own words
    result = json.loads(_run(config, runs, capsys, monkeypatch, "infra", "--json").out)
    assert result["blessed"] is True and result["verdict"] == "infra failed"
    assert next(s for s in result["steps"] if s["step"] == "push")["decision"] == \
        "not run: its gate is closed (infra validation failed: the model did not load)"


def test_runs_list_shows_verdict_accuracy_pushed_version_and_duration(
        tmp_path, config, capsys, monkeypatch):
    runs = tmp_path / "runs"
    for story in ("blessed", "not-blessed", "already"):
        _run(config, runs, capsys, monkeypatch, story)
    _run(config, runs, capsys, monkeypatch, "fails", code=2)

    assert cli.main(["runs", "list", "--runs-dir", str(runs)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()[:5]
    for column in ("DURATION", "ACCURACY", "PUSHED", "VERDICT"):
        assert column in header.split(), column
    failed, already, not_blessed, pushed = rows                 # newest first
    assert FAILED in failed and "0.930" not in failed
    assert "already pushed tiny:2" in already and " tiny:2 " in already
    assert NOT_BLESSED in not_blessed and "0.410" in not_blessed
    assert "pushed tiny:3" in pushed and "0.930" in pushed and " tiny:3 " in pushed
    assert all(re.search(r" \d+s ", row) for row in rows), rows     # the duration

    assert cli.main(["runs", "list", "--runs-dir", str(runs), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["verdict"], r["model"], r["accuracy"]) for r in listed] == [
        ("failed", None, None), ("already pushed", "tiny:2", 0.93),
        ("not blessed", None, 0.41), ("pushed", "tiny:3", 0.93)]
    assert listed[2]["outcome"] == NOT_BLESSED and listed[0]["outcome"].startswith(FAILED)
    assert all(isinstance(r["seconds"], float) and r["seconds"] >= 0 for r in listed)

    assert cli.main(["runs", "show", listed[2]["id"], "--runs-dir", str(runs)]) == 0
    assert f"  {NOT_BLESSED}" in capsys.readouterr().out.splitlines()


def test_the_report_header_says_what_the_run_did(tmp_path, config, capsys, monkeypatch):
    runs = tmp_path / "runs"
    for story, header in (("blessed", "pushed tiny:3"), ("not-blessed", NOT_BLESSED),
                          ("already", "already pushed tiny:2")):
        result = json.loads(_run(config, runs, capsys, monkeypatch, story, "--json").out)
        page = _report(runs, result["run_id"])
        assert _h1(page) == f"Run {result['run_id']}: {header}".replace(">", "&gt;")
        assert "succeeded" not in _h1(page)


def test_a_failed_run_gets_a_report_naming_the_failed_step(tmp_path, config, capsys,
                                                            monkeypatch):
    """evaluate fails first, with no step's outputs before it: the report is still
    written where a successful run's is, and `imgpipe run` prints where."""
    runs = tmp_path / "runs"
    printed = _run(config, runs, capsys, monkeypatch, "fails", code=2)
    run_id = next(line.split()[1] for line in printed.out.splitlines()
                  if line.startswith("run "))
    path = runs / run_id / "report.html"
    assert path.is_file()
    assert f"report: {path}" in printed.out
    assert f"run {run_id} failed at evaluate" in printed.out
    assert printed.err.startswith("imgpipe: error: no eval examples under")
    page = path.read_text(encoding="utf-8")
    assert _h1(page).startswith(f"Run {run_id}: {FAILED}")
    assert re.search(r"<td>evaluate</td><td>failed</td>.*error: no eval examples", page)

    result = json.loads(_run(config, runs, capsys, monkeypatch, "fails", "--json",
                             code=2).out)
    assert result["verdict"] == "failed" and result["outcome"].startswith(FAILED)
    assert result["report"] == str(runs / result["run_id"] / "report.html")


def test_a_step_that_crashes_gets_a_report_too(tmp_path, make_config, monkeypatch):
    """A bug in a step (not an ImgpipeError) ends the run with its exception, reported."""
    monkeypatch.setenv("FAKE_CONSUME_FAILS", "1")
    steps = (dag.node(fake_steps.produce),
             dag.node(fake_steps.consume, examples="produce.examples"))
    logged = []
    with pytest.raises(RuntimeError):
        LocalRunner(make_config(data={"source": "a"}), str(tmp_path), log=logged.append,
                    steps=steps).run()
    [run_id] = [d for d in os.listdir(tmp_path) if (tmp_path / d / "report.html").is_file()]
    page = _report(tmp_path, run_id)
    assert _h1(page) == f"Run {run_id}: failed at consume: RuntimeError: consume crashed"
    assert any(line.startswith("  report ") for line in logged)


def test_backfill_says_what_each_span_s_run_did(tmp_path, capsys, monkeypatch):
    from pipeline.local import runner as local

    for day in ("2026-11-28", "2026-11-29", "2026-11-30"):
        (tmp_path / "drops" / day).mkdir(parents=True)
    path = tmp_path / "c.yaml"
    path.write_text(f"name: tiny\ndata: {{source: '{tmp_path / 'drops'}/{{YYYY}}-{{MM}}-"
                    f"{{DD}}/'}}\npush: {{destination: {tmp_path / 'serving'}}}\n")
    stories = ["blessed", "not-blessed", "fails"]

    def run_pipeline(cfg, runs_dir, config_path, log):
        monkeypatch.setenv(fake_steps.VERDICT, stories.pop(0))
        return LocalRunner(cfg, runs_dir, config_path, log=log, steps=STEPS).run()

    monkeypatch.setattr(local, "run_pipeline", run_pipeline)
    assert cli.main(["backfill", str(path), "--spans", "2026-11-28..2026-11-30",
                     "--runs-dir", str(tmp_path / "runs")]) == 2
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("2026-")]
    assert re.fullmatch(r"2026-11-28: run \S+ pushed tiny:3", lines[0]), lines
    assert re.fullmatch(rf"2026-11-29: run \S+ {re.escape(NOT_BLESSED)}", lines[1]), lines
    assert re.match(rf"2026-11-30: run \S+ {FAILED}", lines[2]), lines
    assert "stopped at 2026-11-30" in out


def test_training_curves_name_the_validation_split(tmp_path, monkeypatch):
    """The epoch log's val_ series is the validation split (held out of train during
    fit), drawn and explained as such; the eval split is evaluate's."""
    import matplotlib.axes

    from pipeline.report import html as report, plots as report_plots

    history = {"loss": [0.9, 0.5], "val_loss": [1.0, 0.7],
               "accuracy": [0.6, 0.8], "val_accuracy": [0.5, 0.7]}
    assert {key: [label for label, _ in series]
            for key, series in report_plots.curve_series(history).items()} == \
        {"loss": ["train", "validation"], "accuracy": ["train", "validation"]}
    labels = []
    real_plot = matplotlib.axes.Axes.plot

    def plot(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    assert report_plots._draw_curves(history).startswith(b"\x89PNG")
    assert labels == ["train", "validation", "train", "validation"]
    note = report._curves_note(history)
    assert "validation: the part held out" in note and "eval split" in note
    assert report._curves_note({"loss": [0.9]}) == ""          # no validation split


def test_outcome_words_each_ending():
    """The one function every view calls, on records as the metadata store keeps them:
    each with what its step declares (a gate, the delivery, the fields shown), so no
    step is named (`results.record`)."""
    from types import SimpleNamespace as Step

    from pipeline.results import outcome, record

    specs = {node.name: node.spec for node in STEPS}

    def ran(step, **summary):
        return Step(step=step, status="succeeded", summary=record(specs[step], summary),
                    error=None)

    evaluate = ran("evaluate", blessed=True, accuracy=0.9)
    pushed = ran("push", pushed=True, model_name="m", version=4,
                 promotion={"alias": "production", "from": 5, "moved": False,
                            "behind": "version 5 was trained on a newer span"})
    assert outcome("succeeded", [evaluate, pushed])["text"] == \
        "pushed m:4 (m@production stays on version 5: version 5 was trained on a newer span)"
    pushed.summary["promotion"] = {"alias": "production", "from": 3, "moved": True,
                                   "behind": None}
    assert outcome("succeeded", [evaluate, pushed])["text"] == "pushed m:4"
    died = outcome("died", [evaluate], "its process (12) ended without recording an end")
    assert died["verdict"] == "failed" and died["text"].startswith("died: its process")
    crash = Step(step="train", status="failed", summary=None,
                 error="Traceback (most recent call last):\n  File x\nValueError: bad shape\n")
    assert outcome("failed", [crash])["text"] == "failed at train: ValueError: bad shape"
    assert outcome("running", [evaluate])["verdict"] == "running"
    other = ran("push", pushed=False, reason="the registry is read-only")
    assert outcome("succeeded", [evaluate, other])["text"] == \
        "nothing to push (the registry is read-only)"
    # a gate that closed says why nothing was pushed, in its step's words
    infra = ran("infra_validate", passed=False, reason="the model did not load")
    assert outcome("succeeded", [evaluate, infra])["verdict"] == "infra failed"
    assert outcome("succeeded", [evaluate, infra])["text"] == \
        "infra validation failed (the model did not load)"
    # records read back without the code that made them: the step's name says nothing
    renamed = Step(step="ship", status="succeeded", summary=pushed.summary, error=None)
    assert outcome("succeeded", [evaluate, renamed])["model"] == "m:4"
    # a record from before records carried it: the built-in step of that name declares it
    older = [Step(step="evaluate", status="succeeded", error=None,
                  summary={"blessed": False, "reason": "accuracy 0.2", "accuracy": 0.2}),
             Step(step="push", status="skipped", error=None, summary={"pushed": False})]
    assert outcome("succeeded", older) == {"verdict": "not blessed", "accuracy": 0.2,
                                           "text": "not blessed (accuracy 0.2)", "model": None}


def test_a_failed_report_write_keeps_the_old_report(tmp_path, monkeypatch):
    from pipeline import config as config_lib
    from pipeline.report import html as report
    from pipeline.local.runner import LocalRunner
    from tests.local.fake_dags import STEPS

    cfg = config_lib.from_dict({"name": "r", "data": {"source": "a"}})
    result = LocalRunner(cfg, str(tmp_path), log=lambda _: None, steps=STEPS).run()
    before = file_tree(result.run_dir)
    assert before["report.html"].startswith(b"<!doctype html>")
    with torn_writes(monkeypatch, result.run_dir), pytest.raises(OSError):
        report.write(result.run_dir, result.run_id, "succeeded", result.steps)
    assert file_tree(result.run_dir) == before        # the old report whole, no temporary file
