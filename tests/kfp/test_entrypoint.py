"""The code each KFP task runs (`pipeline/kfp/entrypoint.py`): only the chief replica
wipes and reads the shared outputs, the resolve task pins what a step reads from
outside the run (run 1's statistics for run 2's validate, the baseline a promotion
moved), and the report task shows the recorded config with the run-time values."""

import json

import pytest

from pipeline import config as config_lib
from pipeline.kfp import compile as kfp_compile
from pipeline.kfp import builder as kfp_builder
from pipeline.kfp import step_builder as kfp_step_builder
from pipeline.kfp import entrypoint as kfp_entry
from tests.fixtures import registry_with_versions


def test_only_the_chief_replica_wipes_and_reads_the_shared_outputs(tmp_path, monkeypatch):
    """Every replica of a multi-replica Vertex job runs the task body with the same
    output URIs: a worker (TF_CONFIG with a chief) neither wipes them at start nor reads
    them at the end, and leaves before the executor writes the task's outputs."""
    from types import SimpleNamespace

    from components import artifacts
    from pipeline import dag, invoke

    monkeypatch.setattr(kfp_entry, "_exit_without_teardown", lambda: None)
    left = []
    monkeypatch.setattr(kfp_entry, "_leave_as_replica", lambda: left.append(True))

    def committing_call(node, resolved, inputs, outputs, producer):
        for output, uri in outputs.items():
            with artifacts.writing(uri, node.spec.output_type(output)) as writer:
                open(writer.file("x.txt"), "w").write(output)
                writer.properties = {"made_by": output}
                writer.commit()
        return {"lines": ["done"]}

    calls = []
    monkeypatch.setattr(invoke, "call", lambda *a: calls.append(a) or {"lines": ["in step"]})
    folders = {name: tmp_path / name for name in ("examples", "statistics")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "theirs.txt").write_text("the chief's")
    kfp_artifacts = {name: SimpleNamespace(path=str(f), uri=str(f), metadata={})
                     for name, f in folders.items()}
    step_cfg = json.dumps(invoke.step_config(dag.get("ingest"), config_lib.load(None)))
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 0}}))
    assert kfp_entry.run_step("ingest", step_cfg, "", "", kfp_artifacts, {}, {}, {}) is True
    assert len(calls) == 1 and left == [True]
    assert all((f / "theirs.txt").exists() for f in folders.values())          # not wiped
    assert all(a.metadata == {} for a in kfp_artifacts.values())               # not read

    monkeypatch.setattr(invoke, "call", committing_call)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "chief", "index": 0}}))
    assert kfp_entry.run_step("ingest", step_cfg, "", "", kfp_artifacts, {}, {}, {}) is True
    assert left == [True]                                   # the chief stays for the executor
    assert not any((f / "theirs.txt").exists() for f in folders.values())      # started clean
    assert kfp_artifacts["examples"].metadata == {"made_by": "examples",
                                                  "artifact_type": "Examples"}
    assert kfp_artifacts["statistics"].metadata["artifact_type"] == "ExampleStatistics"


def test_drift_on_kfp_a_second_run_validates_against_the_first_runs_statistics(
        tmp_path, monkeypatch):
    """The report task of run 1 records its statistics in the registry; run 2's resolve
    task pins them and run 2's validate task (run_step) compares with them: a class
    share that moved past validate.max_class_drift stops the run, as locally."""
    import copy
    from types import SimpleNamespace

    from components.errors import ValidationFailed
    from pipeline import dag, invoke
    from pipeline.report import html as report_lib
    from tests.fixtures import STATISTICS as BASE
    from tests.fixtures import stats_artifact

    monkeypatch.setattr(kfp_entry, "_exit_without_teardown", lambda: None)
    monkeypatch.setattr(report_lib, "write", lambda *args, **kwargs: None)   # not under test
    cfg = config_lib.load(None, ["name=photos", f"push.destination={tmp_path / 'serving'}"])
    context = invoke.Context.from_config(cfg).to_json()
    root = tmp_path / "pipeline-root"

    def kfp_artifact(path):
        return SimpleNamespace(path=str(path), uri=str(path), metadata={})

    def resolve():
        params = kfp_compile.runtime_parameters(cfg)
        overrides = {kfp_compile.RUNTIME_PARAMETERS[n]: params[n]
                     for n in kfp_builder.resolve_parameters(params) if n != "baseline_alias"}
        return kfp_entry.resolve_pins(context, params["baseline_alias"],
                                      kfp_compile.resolve_configs(cfg), overrides)._asdict()

    def validate(run, stats):
        pins = resolve()
        outputs = {o: kfp_artifact(root / run / "validate" / o) for o in ("anomalies", "schema")}
        node = dag.get("validate")
        step_cfg = kfp_compile.without_runtime_keys(invoke.step_config(node, cfg))
        return pins, kfp_entry.run_step(
            "validate", json.dumps(step_cfg), "", "",
            {"statistics": kfp_artifact(stats.uri), **outputs}, {},
            {p: pins[f"validate__{p}"] for p in kfp_step_builder.pin_params(node)}, {})

    first = stats_artifact(root / "run-1" / "ingest", "statistics", BASE)
    pins, gate = validate("run-1", first)
    assert pins["validate__baseline_statistics"] == "" and gate is True    # nothing before
    others = {str(ref): kfp_artifact(root / "run-1" / ref.step / ref.output)
              for ref in kfp_builder.report_inputs() if str(ref) != "ingest.statistics"}
    kfp_entry.write_report(context, "run-1", {"ingest.statistics": kfp_artifact(first.uri),
                                              **others},
                           kfp_artifact(root / "run-1" / "report" / "report"))

    shifted = copy.deepcopy(BASE)
    shifted["counts"]["train"] = {"cat": 70, "dog": 20}        # 0.5 -> 0.78 of train
    second = stats_artifact(root / "run-2" / "ingest", "statistics", shifted)
    with pytest.raises(ValidationFailed, match="L-inf 0.278"):
        validate("run-2", second)
    pins = resolve()
    assert pins["validate__baseline_statistics"] == first.uri        # from the registry
    # an unchanged distribution passes the same gate
    same = stats_artifact(root / "run-3" / "ingest", "statistics", BASE)
    assert validate("run-3", same)[1] is True


def test_the_report_task_shows_the_recorded_config_with_run_time_values(tmp_path, monkeypatch):
    """On KFP / Vertex the report shows the config the model card records, with the
    run's pipeline parameters applied (a schedule's train_epochs, not the compiled one)."""
    from types import SimpleNamespace

    from pipeline import invoke

    monkeypatch.setattr(kfp_entry, "_exit_without_teardown", lambda: None)
    cfg = config_lib.load(None, ["name=photos", f"push.destination={tmp_path / 'serving'}"])
    compiled = json.loads(kfp_compile.report_config(cfg))
    assert "epochs" not in compiled["record"]["train"]                # a run-time parameter
    assert "kind" not in compiled["record"]["model"] and "dropout" in compiled["record"]["model"]
    arts = {str(ref): SimpleNamespace(path=str(tmp_path / str(ref)), uri=str(tmp_path / str(ref)),
                                      metadata={})
            for ref in kfp_builder.report_inputs()}
    html_out = SimpleNamespace(path=str(tmp_path / "report" / "report"))
    kfp_entry.write_report(invoke.Context.from_config(cfg).to_json(), "run-1", arts,
                           html_out, kfp_compile.report_config(cfg), {"train.epochs": 7})
    page = open(html_out.path).read()
    assert "<caption>train</caption>" in page and "<td>epochs</td><td>7</td>" in page
    assert "<caption>data</caption>" in page and "<caption>evaluate</caption>" in page


def test_models_promote_changes_the_evaluate_baseline_the_resolve_task_pins(tmp_path,
                                                                            monkeypatch, capsys):
    """On KFP the platform reuses evaluate while its inputs are unchanged; the baseline
    it compares against is the resolve task's `evaluate__baseline` output, wired into
    the evaluate task. `imgpipe models promote` must change that pin (and so evaluate's
    cache key), or a cached evaluate would keep blessing against the old production."""
    import yaml

    from pipeline import cli, invoke
    from pipeline import config as config_lib
    from pipeline.kfp import compile as kfp_compile
    from pipeline.kfp import entrypoint as kfp_entry

    monkeypatch.setattr(kfp_entry, "_exit_without_teardown", lambda: None)
    reg = registry_with_versions(tmp_path, 2, [1])
    cfg = config_lib.load(None, ["name=m", f"push.destination={reg.root}"],
                          resolve_paths=False)
    spec = yaml.safe_load(open(kfp_compile.compile_pipeline(cfg, str(tmp_path / "p.yaml"))))
    evaluate_inputs = spec["root"]["dag"]["tasks"]["evaluate"]["inputs"]["parameters"]
    wired = [source["taskOutputParameter"]["outputParameterKey"]
             for source in evaluate_inputs.values() if "taskOutputParameter" in source
             and source["taskOutputParameter"]["producerTask"] == "resolve"]
    assert "evaluate__baseline" in wired, evaluate_inputs

    def pins():
        params = kfp_compile.runtime_parameters(cfg)
        overrides = {kfp_compile.RUNTIME_PARAMETERS[n]: params[n]
                     for n in kfp_builder.resolve_parameters(params) if n != "baseline_alias"}
        return kfp_entry.resolve_pins(invoke.Context.from_config(cfg).to_json(),
                                      params["baseline_alias"],
                                      kfp_compile.resolve_configs(cfg), overrides)._asdict()

    before = pins()
    assert before["evaluate__baseline"] == "m:1"
    assert cli.main(["models", "promote", "m:2", "--to", "production", "--registry",
                     reg.root]) == 0
    after = pins()
    assert after["evaluate__baseline"] == "m:2"
    assert cli.main(["models", "rollback", "m", "--alias", "production", "--registry",
                     reg.root]) == 0
    assert pins()["evaluate__baseline"] == "m:1"
    capsys.readouterr()
