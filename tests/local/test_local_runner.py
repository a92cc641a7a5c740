"""The local runner: cache hits, misses that name what changed, resume after failure."""

import pytest

from pipeline import dag
from pipeline.local.runner import LocalRunner, run_pipeline
from pipeline.metadata import MetadataStore
from tests import fake_steps
from tests.local.fake_dags import STEPS

@pytest.fixture(autouse=True)
def clear_calls():
    fake_steps.CALLS.clear()


def run(cfg, runs_dir, until=None, **kwargs):
    return LocalRunner(cfg, str(runs_dir), log=lambda line: None, steps=STEPS, **kwargs).run(until)


def test_second_run_is_fully_cached(tmp_path, make_config):
    cfg = make_config(data={"source": "a"})
    first = run(cfg, tmp_path)
    second = run(cfg, tmp_path)
    assert [s.status for s in first.steps] == ["ran", "ran"]
    assert [s.status for s in second.steps] == ["cached", "cached"]
    assert fake_steps.CALLS == ["produce", "consume"]
    assert second.steps[1].outputs == first.steps[1].outputs
    assert "reused execution" in second.steps[0].decision


def test_changed_section_reruns_only_what_depends_on_it(tmp_path, make_config):
    run(make_config(data={"source": "a"}, train={"epochs": 1}), tmp_path)
    fake_steps.CALLS.clear()
    result = run(make_config(data={"source": "a"}, train={"epochs": 2}), tmp_path)
    assert [s.status for s in result.steps] == ["cached", "ran"]
    assert "config.train.epochs: 1 -> 2" in result.steps[1].decision
    assert fake_steps.CALLS == ["consume"]

    fake_steps.CALLS.clear()
    result = run(make_config(data={"source": "b"}, train={"epochs": 2}), tmp_path)
    assert [s.status for s in result.steps] == ["ran", "ran"]
    assert "config.data.source: 'a' -> 'b'" in result.steps[0].decision
    assert "inputs.examples" in result.steps[1].decision  # upstream content changed


def test_no_cache_forces_every_step(tmp_path, make_config):
    cfg = make_config(data={"source": "a"})
    run(cfg, tmp_path)
    result = run(cfg, tmp_path, use_cache=False)
    assert [s.status for s in result.steps] == ["ran", "ran"]
    assert result.steps[0].decision == "cache disabled (--no-cache)"


def test_failed_run_resumes_from_first_unfinished_step(tmp_path, make_config, monkeypatch):
    cfg = make_config(data={"source": "a"})
    monkeypatch.setenv("FAKE_CONSUME_FAILS", "1")
    with pytest.raises(RuntimeError):
        run(cfg, tmp_path)
    store = MetadataStore(str(tmp_path / "metadata.sqlite"))
    failed_run = store.list_runs()[0]
    assert [e.status for e in store.executions(failed_run["id"])] == ["succeeded", "failed"]

    monkeypatch.delenv("FAKE_CONSUME_FAILS")
    fake_steps.CALLS.clear()
    result = run(cfg, tmp_path)
    assert [s.status for s in result.steps] == ["cached", "ran"]
    assert fake_steps.CALLS == ["consume"]


def test_deleted_output_is_not_reused(tmp_path, make_config):
    import shutil

    cfg = make_config(data={"source": "a"})
    first = run(cfg, tmp_path)
    shutil.rmtree(first.steps[1].outputs["statistics"])
    result = run(cfg, tmp_path)
    assert [s.status for s in result.steps] == ["cached", "ran"]
    assert "no longer verifies: statistics: " in result.steps[1].decision
    assert "was deleted" in result.steps[1].decision


def test_until_stops_after_step(tmp_path, make_config):
    result = run(make_config(data={"source": "a"}), tmp_path, until="produce")
    assert [s.step for s in result.steps] == ["produce"]


def test_lineage_query_walks_back_to_inputs(tmp_path, make_config):
    result = run(make_config(data={"source": "a"}), tmp_path)
    store = MetadataStore(str(tmp_path / "metadata.sqlite"))
    stats_uri = result.steps[1].outputs["statistics"]
    lineage = store.lineage(stats_uri)
    assert [(item["consumed_by"], item["name"]) for item in lineage] == [("consume", "examples")]
    assert lineage[0]["uri"] == result.steps[0].outputs["examples"]
    producer = store.producer_of(stats_uri)
    assert producer.step == "consume" and producer.run_id == result.run_id
    consumers = store.consumers_of(result.steps[0].outputs["examples"])
    assert [c.step for c in consumers] == ["consume"]


def test_concurrent_runs_record_everything(tmp_path):
    """Two processes run pipelines into the same store at once; both are recorded."""
    import subprocess
    import sys

    script = (
        "import sys; sys.path.insert(0, '.');"
        "from pipeline import config; from tests.local.fake_dags import STEPS;"
        "from pipeline.local.runner import LocalRunner;"
        f"cfg = config.from_dict({{'name': 'c', 'data': {{'source': sys.argv[1]}}}});"
        f"r = LocalRunner(cfg, {str(tmp_path)!r}, log=lambda l: None, steps=STEPS).run();"
        "print(r.status)")
    procs = [subprocess.Popen([sys.executable, "-c", script, f"src{i}"], stdout=subprocess.PIPE,
                              text=True) for i in range(4)]
    outs = [p.communicate()[0].strip() for p in procs]
    assert outs == ["succeeded"] * 4
    store = MetadataStore(str(tmp_path / "metadata.sqlite"))
    runs = store.list_runs("c")
    assert len(runs) == 4 and len({r["id"] for r in runs}) == 4
    assert all([e.status for e in store.executions(r["id"])] == ["succeeded"] * 2 for r in runs)


def test_run_pipeline_uses_the_real_dag(make_config, tmp_path):
    """--until with an unknown step is a clean error naming the steps."""
    from components.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a step; steps are ingest"):
        run_pipeline(make_config(), str(tmp_path), until="bogus", log=lambda line: None)


def test_same_config_at_once_runs_each_step_once_with_private_scratch(tmp_path):
    """Two processes, same config, same runs dir: the second waits for the first's
    execution of a step with the same key and reuses it; no scratch is shared."""
    import subprocess
    import sys

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    script = (
        "import os, sys, time; sys.path.insert(0, '.');"
        "from pipeline import config; from tests.local.fake_dags import SLOW;"
        "from pipeline.local.runner import LocalRunner;"
        "cfg = config.from_dict({'name': 'c', 'data': {'source': 'same'}});"
        # a barrier: both processes are ready before either starts its run
        f"open(os.path.join({str(barrier)!r}, sys.argv[1]), 'w').close();"
        f"[time.sleep(0.01) for _ in range(3000) if len(os.listdir({str(barrier)!r})) < 2];"
        f"r = LocalRunner(cfg, {str(tmp_path / 'runs')!r}, log=lambda l: None, steps=SLOW).run();"
        "print(r.status, [s.status for s in r.steps])")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    statuses = sorted(out.strip() for out, _ in outs)
    assert statuses[0].startswith("succeeded") and statuses[1].startswith("succeeded")
    store = MetadataStore(str(tmp_path / "runs" / "metadata.sqlite"))
    slow = [e for r in store.list_runs("c") for e in store.executions(r["id"])
            if e.step == "slow"]
    assert sorted(e.status for e in slow) == ["cached", "succeeded"]


def test_an_exception_ends_the_run_on_record(tmp_path, make_config, monkeypatch):
    monkeypatch.setenv("FAKE_CONSUME_FAILS", "1")
    with pytest.raises(RuntimeError):
        run(make_config(data={"source": "a"}), tmp_path)
    [record] = MetadataStore(str(tmp_path / "metadata.sqlite")).list_runs()
    assert record["status"] == "failed" and record["error"] == "RuntimeError: consume crashed"


def test_a_run_whose_process_is_gone_shows_as_died(tmp_path):
    import sqlite3

    store = MetadataStore(str(tmp_path / "metadata.sqlite"))
    run_id = store.start_run("p", {}, None)
    assert store.get_run(run_id)["status"] == "running"      # this process: alive
    with sqlite3.connect(store.path) as conn:
        host = store.get_run(run_id)["process"].split(":")[0]
        conn.execute("UPDATE runs SET process=? WHERE id=?", (f"{host}:999999:1", run_id))
    record = store.get_run(run_id)
    assert record["status"] == "died" and "ended without recording an end" in record["error"]


def test_runs_recorded_with_the_old_type_names_are_reused(tmp_path, make_config):
    """A runs folder from before TFX's type names (manifests and metadata rows saying
    Statistics) still serves its cached outputs, now typed ExampleStatistics."""
    import json
    import os
    import sqlite3

    from components import artifacts

    cfg = make_config(data={"source": "a"})
    first = run(cfg, tmp_path)
    stats_uri = first.steps[1].outputs["statistics"]
    manifest_path = os.path.join(stats_uri, artifacts.MANIFEST_NAME)
    manifest = json.load(open(manifest_path))
    manifest["type"] = "Statistics"
    json.dump(manifest, open(manifest_path, "w"))
    with sqlite3.connect(tmp_path / "metadata.sqlite") as conn:
        conn.execute("UPDATE artifacts SET type='Statistics' WHERE uri=?", (stats_uri,))
    second = run(cfg, tmp_path)
    assert [s.status for s in second.steps] == ["cached", "cached"]
    assert second.steps[1].outputs == first.steps[1].outputs


SIDE_BY_SIDE = (dag.node(fake_steps.produce),
                dag.node(fake_steps.meet, examples="produce.examples"),
                dag.node(fake_steps.probe, examples="produce.examples"),
                dag.node(fake_steps.consume, examples="produce.examples"))


def test_an_isolated_step_runs_beside_the_next_ones(tmp_path, make_config, monkeypatch):
    """`probe` is declared isolated and comes after `meet` in the DAG, but both need only
    `produce`: probe starts as soon as produce is done; meet waits for a file probe writes.
    Results and records stay in DAG order; a failure beside ends the run on record."""
    monkeypatch.setenv(fake_steps.RENDEZVOUS, str(tmp_path / "marker"))
    lines = []
    result = LocalRunner(make_config(data={"source": "a"}), str(tmp_path / "runs"),
                         log=lines.append, steps=SIDE_BY_SIDE).run()
    assert result.status == "succeeded"
    assert [s.step for s in result.steps] == ["produce", "meet", "probe", "consume"]
    assert all(s.status == "ran" for s in result.steps)
    assert lines.index(next(line for line in lines if line.startswith("  probe ") and
                            "running" in line)) < \
        lines.index(next(line for line in lines if line.startswith("  meet ") and "done" in line))
    (tmp_path / "marker").unlink()
    monkeypatch.setenv("FAKE_PROBE_FAILS", "1")
    failed = LocalRunner(make_config(data={"source": "a"}), str(tmp_path / "runs"),
                         log=lambda line: None, steps=SIDE_BY_SIDE, use_cache=False).run()
    assert failed.status == "failed" and failed.steps[-1].step == "probe"
    assert "model broken" in failed.steps[-1].error
    [newest, _] = MetadataStore(str(tmp_path / "runs" / "metadata.sqlite")).list_runs()
    assert newest["status"] == "failed" and "model broken" in newest["error"]


def test_while_a_step_beside_runs_the_runner_draws_the_report_plots(tmp_path, make_config,
                                                                   monkeypatch):
    """Waiting for a step beside it that has not finished, the main thread draws the
    report's plots of the steps done so far (off the run's critical path); a drawing
    that fails costs the run nothing (the report draws what is missing)."""
    from pipeline.local import runner as runner_module
    from pipeline.report import html as report

    monkeypatch.setenv(fake_steps.RENDEZVOUS, str(tmp_path / "marker"))
    monkeypatch.setattr(runner_module._Beside, "done", lambda self, name: False)
    calls = []
    monkeypatch.setattr(report, "draw_plots", lambda runs_dir, run_id, steps: calls.append(
        (run_id, [s.step for s in steps])))
    result = LocalRunner(make_config(data={"source": "a"}), str(tmp_path / "runs"),
                         log=lambda line: None, steps=SIDE_BY_SIDE).run()
    assert result.status == "succeeded"
    assert calls and calls[0][0] == result.run_id
    assert calls[0][1] == ["produce", "meet"]        # what was done when it waited
    monkeypatch.undo()
    report.draw_plots(str(tmp_path / "runs"), "no-such-run", [object()])   # never raises


def test_a_declared_check_stops_the_run_before_any_step(tmp_path, make_config):
    """`checked` declares a check of the sections it reads (and where it runs): its
    problem ends the run before any step, `produce` included, and before a run is
    recorded."""
    from components.errors import ConfigError

    steps = (dag.node(fake_steps.produce),
             dag.node(fake_steps.checked, examples="produce.examples"))
    runner = LocalRunner(make_config(data={"source": "refused"}), str(tmp_path / "runs"),
                         log=lambda line: None, steps=steps)
    with pytest.raises(ConfigError, match="data.source refused") as raised:
        runner.run()
    assert str(tmp_path / "runs") in str(raised.value)
    assert fake_steps.CALLS == []
    assert MetadataStore(str(tmp_path / "runs" / "metadata.sqlite")).list_runs() == []
    # only a step of the run is checked: --until produce leaves `checked` out
    assert runner.run(until="produce").status == "succeeded"


def test_a_stop_gate_ends_the_run_after_committing_its_outputs(tmp_path, make_config,
                                                              monkeypatch):
    """`verify` (gate passed, stop=ValidationFailed, as validate): closed, the run fails at
    it with its reason, its outputs committed and on record, and the steps after it do
    not run; an open gate lets them run."""
    from components import artifacts
    from components.errors import ValidationFailed

    steps = (dag.node(fake_steps.produce),
             dag.node(fake_steps.verify, examples="produce.examples"),
             dag.node(fake_steps.consume, examples="produce.examples", after=("verify",)))
    monkeypatch.setenv("FAKE_VERIFY_FAILS", "1")
    lines = []
    cfg = make_config(data={"source": "a"})
    failed = LocalRunner(cfg, str(tmp_path), log=lines.append, steps=steps).run()
    assert failed.status == "failed" and isinstance(failed.error, ValidationFailed)
    assert [(s.step, s.status) for s in failed.steps] == [("produce", "ran"),
                                                         ("verify", "failed")]
    assert str(failed.error).startswith("1 anomaly stops the run (details in ")
    assert any(line.startswith("  verify     FAILED: 1 anomaly stops the run") for line in lines)
    store = MetadataStore(str(tmp_path / "metadata.sqlite"))
    [execution] = [e for e in store.executions(failed.run_id) if e.step == "verify"]
    [anomalies] = store.artifacts_of(execution.id, "output")
    assert execution.status == "failed" and artifacts.is_committed(anomalies["uri"])
    assert "consume" not in fake_steps.CALLS
    monkeypatch.delenv("FAKE_VERIFY_FAILS")
    passed = LocalRunner(cfg, str(tmp_path), log=lambda line: None, steps=steps).run()
    assert [s.status for s in passed.steps] == ["cached", "ran", "ran"]   # verify reran
