"""Continuous training on data drops (spans): each span ingested once and reused by
later windows, the window read by reference, the newest drop validated against the
rest, scheduled windows on KFP, backfill, and the lineage in `runs list`."""

from __future__ import annotations

import json
import os
import tests

import pytest
import yaml

from components import artifacts
from pipeline import cli
from pipeline import config as config_lib
from tests.fixtures import make_class_folders

CLASSES = ("cat", "dog", "fox")


def drop(root, day: str, per_class=16, shares=None) -> None:
    """One day's folder of class folders, unique images per day."""
    first = int(day.replace("-", "")) % 100000 * 40
    for index, label in enumerate(CLASSES):
        count = per_class if shares is None else shares[index]
        make_class_folders(str(root / day), classes=(label,), per_class=count, first=first)
        first += 1000


def config(tmp_path, spans, **data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "daily",
        "data": {"source": str(tmp_path / "drops") + "/{YYYY}-{MM}-{DD}/",
                 "image_size": [12, 12], "channels": 1, "eval_fraction": 0.4,
                 "spans": spans, **data},
        "validate": {"max_near_duplicate_fraction": 1.0},
        "model": {"kind": "logistic"}, "train": {"epochs": 1, "batch_size": 16},
        "evaluate": {"thresholds": {"accuracy": {"min": 0.0}}},
        "push": {"destination": str(tmp_path / "serving")}}))
    return str(path)


def run(path, capsys, *extra) -> tuple[int, str]:
    code = cli.main(["run", path, "--runs-dir", str(os.path.dirname(path) + "/runs"), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def ingest_summary(out: str) -> str:
    return next(line for line in out.splitlines() if "span(s) " in line and ": ingested" in line)


def test_a_rolling_window_ingests_only_the_new_span_and_reads_the_rest_by_reference(
        tmp_path, capsys):
    for day in ("2026-11-28", "2026-11-29", "2026-11-30"):
        drop(tmp_path / "drops", day)
    # each drop's eval split (~19 images) counts as enough here: eval_spans auto then
    # evaluates on the newest span's alone
    path = config(tmp_path, {"rolling": 2}, min_eval_examples=10)
    code, out = run(path, capsys, "--until", "validate")
    assert code == 0, out
    assert "2 span(s) 2026-11-29..2026-11-30: ingested 2" in ingest_summary(out)

    drop(tmp_path / "drops", "2026-12-01")        # the next day's drop lands
    code, out = run(path, capsys, "--until", "transform")
    assert code == 0, out
    assert "2 span(s) 2026-11-30..2026-12-01: ingested 1 (2026-12-01), reused 1 " \
        "(2026-11-30)" in ingest_summary(out)
    uri = next(line.split(": ", 1)[1] for line in out.splitlines()
               if line.startswith("  ingest.examples: "))
    examples = artifacts.read(uri, artifacts.Examples)
    assert examples.properties["spans"] == ["2026-11-30", "2026-12-01"]
    parts = examples.properties["parts"]
    # by reference: the window's artifact holds no records of its own
    assert not any(f.endswith(".tfrecord.gz") for f in examples.files)
    assert all(part["uri"].startswith(str(tmp_path / "runs" / "shared")) for part in parts)
    # eval is the newest span's eval split; the older span's eval images train too
    eval_files = artifacts.Examples.shards(examples, "eval")
    assert eval_files and all(f.startswith(parts[-1]["uri"]) for f in eval_files)
    train_files = artifacts.Examples.shards(examples, "train")
    assert any(f.startswith(os.path.join(parts[0]["uri"], "eval")) for f in train_files)
    counts = examples.properties["counts"]
    assert sum(counts["train"].values()) + sum(counts["eval"].values()) == 2 * 3 * 16
    transformed = next(line.split(": ", 1)[1] for line in out.splitlines()
                       if line.startswith("  transform.transform_graph: "))
    graph = artifacts.read(transformed, artifacts.TransformGraph)
    assert sorted(graph.properties["label_vocabulary"]) == list(CLASSES)

    # the runs list shows each run's window
    assert cli.main(["runs", "list", "--runs-dir", str(tmp_path / "runs")]) == 0
    listed = capsys.readouterr().out
    assert "2026-11-30..2026-12-01 (2)" in listed and "2026-11-29..2026-11-30 (2)" in listed
    # ... and `runs show` which spans the run ingested anew and which it reused
    run_id = next(line.split()[1] for line in out.splitlines() if line.startswith("run "))
    assert cli.main(["runs", "show", run_id, "--runs-dir", str(tmp_path / "runs")]) == 0
    shown = capsys.readouterr().out
    assert "ingested 1 (2026-12-01), reused 1 (2026-11-30)" in shown
    assert cli.main(["runs", "show", run_id, "--runs-dir", str(tmp_path / "runs"),
                     "--json"]) == 0
    ingest = next(step for step in json.loads(capsys.readouterr().out)["steps"]
                  if step["step"] == "ingest")
    assert (ingest["summary"]["ingested"], ingest["summary"]["reused"]) == \
        (["2026-12-01"], ["2026-11-30"])


def test_a_newest_drop_too_small_to_decide_evaluates_on_every_span(tmp_path, capsys):
    """eval_spans auto (the default): ~19 eval images in the newest drop is under
    data.min_eval_examples, so the window evaluates on every span's eval split (and
    says so); eval images then never train."""
    for day in ("2026-11-29", "2026-11-30"):
        drop(tmp_path / "drops", day)
    code, out = run(config(tmp_path, {"rolling": 2}), capsys, "--until", "ingest")
    assert code == 0, out
    assert "fewer than data.min_eval_examples 200: every span's eval split is evaluated " \
        "on" in out
    uri = next(line.split(": ", 1)[1] for line in out.splitlines()
               if line.startswith("  ingest.examples: "))
    examples = artifacts.read(uri, artifacts.Examples)
    assert examples.properties["eval_spans"] == "all"
    parts = examples.properties["parts"]
    eval_files = artifacts.Examples.shards(examples, "eval")
    assert {part["uri"] for part in parts} == {
        next(p["uri"] for p in parts if f.startswith(p["uri"])) for f in eval_files}
    assert not any("/eval/" in f for f in artifacts.Examples.shards(examples, "train"))


def test_a_drifted_drop_stops_at_validate_and_the_window_trains_on(tmp_path, capsys):
    for day in ("2026-11-28", "2026-11-29", "2026-11-30"):
        drop(tmp_path / "drops", day)
    drop(tmp_path / "drops", "2026-12-01", shares=(20, 2, 2))      # planted class drift
    path = config(tmp_path, {"rolling": 4})
    code, out = run(path, capsys, "--until", "validate")
    assert code == 3, out
    assert "class shares moved by L-inf" in out and "the window's other 3 span(s)" in out
    # the same window without the drifted day passes
    path = config(tmp_path, {"range": ["2026-11-28", "2026-11-30"]})
    code, out = run(path, capsys, "--until", "validate")
    assert code == 0, out


def test_a_missing_span_fails_unless_told_to_skip(tmp_path, capsys):
    for day in ("2026-11-28", "2026-11-30"):
        drop(tmp_path / "drops", day)
    path = config(tmp_path, ["2026-11-28", "2026-11-29", "2026-11-30"])
    code, out = run(path, capsys, "--until", "ingest")
    assert code == 2 and "2026-11-29" in out, out
    path = config(tmp_path, ["2026-11-28", "2026-11-29", "2026-11-30"], on_missing="skip")
    code, out = run(path, capsys, "--until", "ingest")
    assert code == 0 and "2 span(s) 2026-11-28..2026-11-30" in ingest_summary(out), out


def test_backfill_runs_each_span_in_order_and_stops_at_the_first_failure(tmp_path, capsys):
    for day in ("2026-11-28", "2026-11-29", "2026-11-30"):
        drop(tmp_path / "drops", day)
    drop(tmp_path / "drops", "2026-12-01", shares=(20, 2, 2))
    drop(tmp_path / "drops", "2026-12-02")
    path = config(tmp_path, {"rolling": 3})
    code = cli.main(["backfill", path, "--spans", "2026-11-29..2026-12-02", "--runs-dir",
                     str(tmp_path / "runs"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 3 and result["stopped"]
    assert [r["span"] for r in result["runs"]] == ["2026-11-29", "2026-11-30", "2026-12-01"]
    assert [r["status"] for r in result["runs"]] == ["succeeded", "succeeded", "failed"]
    assert result["runs"][1]["window"] == ["2026-11-28", "2026-11-29", "2026-11-30"]


def test_a_resumed_or_repeated_backfill_never_moves_production_back(tmp_path, capsys):
    """promote_to moves an alias forward in span order only: a backfill stopped after
    its 2nd span and run again, then a repeat of older spans after the full backfill,
    leave production on the version trained through the newest span, with no backward
    entry in the audit log; the summary says which versions were pushed earlier."""
    from components.registry.versions import Registry

    for day in ("2026-11-28", "2026-11-29", "2026-11-30"):
        drop(tmp_path / "drops", day)
    path = config(tmp_path, {"rolling": 2})
    tree = yaml.safe_load(open(path))
    tree["push"]["promote_to"] = "production"
    tree["evaluate"] = {"thresholds": {"accuracy": {"min": 0.0, "max_drop": 1.0}},
                        "gate": "point"}           # every retrain blessed: the alias decides
    open(path, "w").write(yaml.safe_dump(tree))

    def backfill(spans: str) -> list[dict]:
        code = cli.main(["backfill", path, "--spans", spans, "--runs-dir",
                         str(tmp_path / "runs"), "--json"])
        result = json.loads(capsys.readouterr().out)
        assert code == 0, result
        return result["runs"]

    registry = Registry(str(tmp_path / "serving"))
    backfill("2026-11-28..2026-11-29")                 # "stopped" during the 3rd span
    assert registry.aliases("daily")["production"] == 2
    resumed = backfill("2026-11-28..2026-11-30")
    assert registry.aliases("daily")["production"] == 3
    assert [r["verdict"] for r in resumed] == ["already pushed", "already pushed", "pushed"]
    repeated = backfill("2026-11-28..2026-11-29")
    assert registry.aliases("daily")["production"] == 3
    assert all(r["verdict"] == "already pushed" for r in repeated)
    moves = [(e["from"], e["to"]) for e in registry.audit("daily")
             if e["alias"] == "production"]
    assert moves == [(None, 1), (1, 2), (2, 3)]
    # the run log says why production stayed
    code = cli.main(["backfill", path, "--spans", "2026-11-29..2026-11-29", "--runs-dir",
                     str(tmp_path / "runs")])
    out = capsys.readouterr()
    assert code == 0
    assert "daily@production stays on version 3: version 3 was trained through " \
        "2026-11-30, newer than 2's 2026-11-29" in out.out + out.err


def _compiled(tmp_path, spans) -> dict:
    from pipeline.kfp import compile as kfp_compile

    cfg = config_lib.load(None, ["data.source=gs://b/drops/{YYYY}-{MM}-{DD}/",
                                 f"data.spans={json.dumps(spans)}",
                                 "push.destination=gs://b/serving"], resolve_paths=False)
    out = str(tmp_path / f"p{abs(hash(json.dumps(spans)))}.yaml")
    kfp_compile.compile_pipeline(cfg, out)
    return yaml.safe_load(open(out))


def test_the_compiled_window_is_a_run_time_parameter_and_the_schedule_time_only_resolves(
        tmp_path):
    rolling, scheduled = _compiled(tmp_path, {"rolling": 7}), _compiled(tmp_path,
                                                                       {"scheduled": "-1d"})
    params = rolling["root"]["inputDefinitions"]["parameters"]
    assert json.loads(params["data_spans"]["defaultValue"]) == {"rolling": 7}
    tasks = rolling["root"]["dag"]["tasks"]
    # the ingest task takes the window as a parameter, not compiled into its config
    assert tasks["ingest"]["inputs"]["parameters"]["p_data_spans"] == {
        "componentInputParameter": "data_spans"}
    assert "spans" not in json.loads(tasks["ingest"]["inputs"]["parameters"]["config_json"]
                                     ["runtimeValue"]["constant"])["data"]
    # the schedule time reaches the resolve task only
    text = yaml.safe_dump(scheduled["root"])
    assert text.count("pipeline_job_schedule_time_utc") == 1
    assert "pipeline_job_schedule_time_utc" in yaml.safe_dump(
        scheduled["root"]["dag"]["tasks"]["resolve"])
    # two windows: the same ingest task spec, only the parameter's default differs
    assert rolling["root"]["dag"]["tasks"]["ingest"] == scheduled["root"]["dag"]["tasks"]["ingest"]
    assert rolling["components"]["comp-ingest"] == scheduled["components"]["comp-ingest"]


def test_the_resolve_task_pins_a_scheduled_window_as_the_spans_it_names(tmp_path):
    import datetime

    from pipeline import dag, invoke

    for day in ("2026-11-29", "2026-11-30", "2026-12-01"):
        drop(tmp_path / "drops", day, per_class=2)
    cfg = config_lib.load(config(tmp_path, {"scheduled": "-1d"}))
    node = dag.get("ingest")
    pin = invoke.pin_outside_inputs(node, invoke.step_config(node, cfg),
                                    invoke.Context.from_config(cfg),
                                    datetime.datetime(2026, 12, 1, 3, 0))
    assert pin["refs"]["data.spans"] == ["2026-11-30"]
    later = invoke.pin_outside_inputs(node, invoke.step_config(node, cfg),
                                      invoke.Context.from_config(cfg),
                                      datetime.datetime(2026, 12, 2, 3, 0))
    assert later["refs"]["data.spans"] == ["2026-12-01"]
    assert later["fingerprint"] != pin["fingerprint"]


def test_the_resolve_task_pins_the_window_from_the_string_parameter_and_schedule_time(
        tmp_path, monkeypatch):
    """What the KFP backend really hands the resolve task: `data_spans` as a JSON
    string run-time parameter and the schedule time as KFP's placeholder resolves it
    (RFC 3339, UTC). The window is pinned to the schedule's day, not to the day the
    task happens to run (a queued, retried or caught-up run)."""
    from pipeline import invoke
    from pipeline.kfp import compile as kfp_compile
    from pipeline.kfp import builder as kfp_builder
    from pipeline.kfp import entrypoint as kfp_entry

    monkeypatch.setattr(kfp_entry, "_exit_without_teardown", lambda: None)
    for day in ("2026-11-29", "2026-11-30", "2026-12-01"):
        drop(tmp_path / "drops", day, per_class=2)
    cfg = config_lib.load(config(tmp_path, {"scheduled": "-1d"}))
    params = kfp_compile.runtime_parameters(cfg)
    assert isinstance(params["data_spans"], str)        # a JSON string, as KFP passes it
    overrides = {kfp_compile.RUNTIME_PARAMETERS[name]: params[name]
                 for name in kfp_builder.resolve_parameters(params)}
    pins = kfp_entry.resolve_pins(invoke.Context.from_config(cfg).to_json(),
                                  params["baseline_alias"], kfp_compile.resolve_configs(cfg),
                                  overrides, schedule_time="2026-12-01T03:00:00Z")
    assert json.loads(pins.ingest__external)["refs"]["data.spans"] == ["2026-11-30"]
    later = kfp_entry.resolve_pins(invoke.Context.from_config(cfg).to_json(),
                                   params["baseline_alias"], kfp_compile.resolve_configs(cfg),
                                   overrides, schedule_time="2026-12-02T03:00:00.420710Z")
    # (the KFP backend's form, 2026-01-09T13:00:00Z, above; kfp.local's has microseconds)
    assert json.loads(later.ingest__external)["refs"]["data.spans"] == ["2026-12-01"]
    # a day whose drop is absent stops in resolve, before any training
    with pytest.raises(Exception, match="2026-12-05"):
        kfp_entry.resolve_pins(invoke.Context.from_config(cfg).to_json(),
                               params["baseline_alias"], kfp_compile.resolve_configs(cfg),
                               overrides, schedule_time="2026-12-06T03:00:00Z")


def test_run_with_a_schedule_time_trains_on_the_day_it_names(tmp_path, capsys):
    """`imgpipe run CONFIG --schedule-time T` (local engine): a {scheduled: -1d} window
    reads the day before T, whatever today is; a T whose day has no drop stops before
    any step; a T that is no time is one line, exit 2."""
    for day in ("2026-11-29", "2026-11-30"):
        drop(tmp_path / "drops", day)
    path = config(tmp_path, {"scheduled": "-1d"})
    code, out = run(path, capsys, "--until", "ingest", "--schedule-time", "2026-11-30T02:00:00Z")
    assert code == 0, out
    assert "data.spans {'scheduled': '-1d'} -> ['2026-11-29']" in out
    assert "1 span(s) 2026-11-29..2026-11-29" in ingest_summary(out)
    code, out = run(path, capsys, "--until", "ingest", "--schedule-time", "2026-12-04T02:00:00")
    assert code == 2 and "2026-12-03" in out and "ingest     done" not in out
    code, out = run(path, capsys, "--schedule-time", "yesterday")
    assert code == 2 and "is not an ISO 8601 time" in out


@pytest.mark.slow
def test_a_two_span_window_runs_under_kfp_local(tmp_path):
    import subprocess
    import sys

    for day in ("2026-11-30", "2026-12-01"):
        drop(tmp_path / "drops", day)
    path = config(tmp_path, {"rolling": 2})
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "imgpipe"), "run",
                           path, "--engine", "kfp-local", "--runs-dir", str(tmp_path / "k")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 span(s) 2026-11-30..2026-12-01: ingested 2" in done.stdout
    assert "  push       done " in done.stdout
    # the spans were kept beside the registry, for the next scheduled run
    assert os.path.isdir(tmp_path / "imgpipe-shared" / "ingest")


def test_the_model_card_records_the_spans_and_models_show_prints_them(tmp_path, capsys):
    for day in ("2026-11-29", "2026-11-30"):
        drop(tmp_path / "drops", day)
    path = config(tmp_path, {"rolling": 2})
    code, out = run(path, capsys)
    assert code == 0 and "pushed daily:1" in out, out
    from components.registry.versions import Registry

    card = Registry(str(tmp_path / "serving")).versions("daily")[0].card
    assert card["data"]["spans"] == ["2026-11-29", "2026-11-30"]
    # ~19 eval images a drop, under data.min_eval_examples: eval_spans auto took both
    assert card["data"]["evaluated_on"] == ["2026-11-29", "2026-11-30"]
    assert cli.main(["models", "show", "daily:1", "--registry", str(tmp_path / "serving")]) == 0
    assert "spans: trained on 2026-11-29, 2026-11-30; evaluated on 2026-11-29, 2026-11-30" \
        in capsys.readouterr().out


def test_the_spans_example_runs_as_the_readme_says(tmp_path, capsys, monkeypatch):
    """README: `imgpipe datasets export digits drops --drops 7`, then `imgpipe run
    configs/spans.yaml` in that folder: the newest 3 days ingested, blessed on the
    newest day's eval split, pushed."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["datasets", "export", "digits", "drops", "--drops", "7"]) == 0
    example = os.path.join(tests.ROOT, "configs", "spans.yaml")
    code = cli.main(["run", example, "--runs-dir", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 0, out
    assert ": ingested 3 (" in ingest_summary(out)
    assert "\n             BLESSED" in out
    assert os.path.isdir(tmp_path / "serving" / "digits-daily" / "1")


def test_a_spans_own_warnings_reach_the_windows_summary(tmp_path, capsys):
    """A drop whose class folder has a trailing space: the window's ingest says so,
    naming the span (a span's own summary lines used to be dropped)."""
    drop(tmp_path / "drops", "2026-11-30")
    drop(tmp_path / "drops", "2026-12-01")
    day = tmp_path / "drops" / "2026-12-01"
    os.rename(day / "cat", day / "cat ")
    code, out = run(config(tmp_path, {"rolling": 2}), capsys, "--until", "ingest")
    assert code == 0, out
    assert "2026-12-01: warning: 16 label(s) had surrounding spaces, stripped: 'cat ' -> 'cat'" in out
