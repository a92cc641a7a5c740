"""The KFP v2 pipeline: compiled IR, the committed spec, a kfp.local run matching the
local runner, submit/schedule adapters, and the step image's install line."""

import inspect
import json
import os
import re

import pytest
import yaml

from pipeline import cli
from pipeline.kfp import submit
from pipeline import config as config_lib
from pipeline.kfp import checks as kfp_checks
from pipeline.kfp import compile as kfp_compile
from pipeline.kfp import entrypoint as kfp_entry
from pipeline.kfp import local as kfp_local
from tests.registry.test_cloud_state import fake_vertex  # noqa: F401  (a fixture: stateful Vertex)

from tests import ROOT  # noqa: E402
EXAMPLE = os.path.join(ROOT, "deploy", "example.yaml")


def compiled(tmp_path):
    out = str(tmp_path / "p.yaml")
    cfg = config_lib.load(EXAMPLE, resolve_paths=False)
    kfp_compile.compile_pipeline(cfg, out)
    return out, yaml.safe_load(open(out))


def test_compiled_ir_has_the_dag_the_gate_and_resources(tmp_path):
    from kfp import components

    path, spec = compiled(tmp_path)
    loaded = components.load_component_from_file(path)     # valid IR for the SDK
    assert loaded.name == "fonts-deep-cnn"
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"resolve", "ingest", "validate", "transform", "tune", "train",
                         "evaluate", "infra-validate", "report", "condition-1"}
    deps = {name: set(task.get("dependentTasks", [])) for name, task in root.items()}
    # resolve pins what a step reads from outside the run (data, schema, references)
    assert deps["ingest"] == {"resolve"}
    assert deps["transform"] == {"ingest", "validate"}
    assert deps["tune"] == {"ingest", "transform", "resolve"}
    assert deps["train"] == {"ingest", "transform", "tune", "resolve"}
    assert deps["evaluate"] == {"ingest", "train", "resolve"}
    assert deps["validate"] == {"ingest", "resolve"}
    # the push sits under two conditions: the blessing, then the infra verdict
    outer = root["condition-1"]
    assert "evaluate-Output" in outer["triggerPolicy"]["condition"]
    inner_component = spec["components"][outer["componentRef"]["name"]]["dag"]["tasks"]
    inner = next(iter(inner_component.values()))
    assert "infra-validate-Output" in inner["triggerPolicy"]["condition"]
    push_tasks = spec["components"][inner["componentRef"]["name"]]["dag"]["tasks"]
    assert list(push_tasks) == ["push"] and push_tasks["push"]["cachingOptions"] == {}
    # typed artifacts
    train_outputs = spec["components"]["comp-train"]["outputDefinitions"]["artifacts"]
    assert train_outputs["trained_model"]["artifactType"]["schemaTitle"] == "system.Model"
    ingest_outputs = spec["components"]["comp-ingest"]["outputDefinitions"]["artifacts"]
    assert ingest_outputs["examples"]["artifactType"]["schemaTitle"] == "system.Dataset"
    evaluate_outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert evaluate_outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert evaluate_outputs["confusion"]["artifactType"]["schemaTitle"] == \
        "system.ClassificationMetrics"
    report_outputs = spec["components"]["comp-report"]["outputDefinitions"]["artifacts"]
    assert report_outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    # resources, retries, one image
    executors = spec["deploymentSpec"]["executors"]
    train = executors["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert train["resources"]["resourceMemoryRequest"] == "16G"
    assert root["ingest"]["retryPolicy"]["maxRetryCount"] == 2
    assert {e["container"]["image"] for n, e in executors.items() if n != "exec-train"} == {
        "us-docker.pkg.dev/my-project/imgpipe/imgpipe:0.1.0"}     # train: kfp.gpu_image
    # each component body only calls the step through pipeline.kfp.entrypoint
    assert "run_step('train'" in " ".join(train["command"])
    assert "from pipeline.kfp.entrypoint import run_step" in " ".join(train["command"])


def _task_inputs(spec):
    """task name -> its input parameters, over the root DAG and every condition."""
    out = {}
    for component in [spec["root"], *spec["components"].values()]:
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            out[name] = task
    return out


def test_kfp_caching_is_correct_across_runs(tmp_path):
    """A scheduled run reuses a task exactly when its result would not change: no task
    that may be cached takes anything derived from the job; each takes only the config
    it reads; push, resolve and report are never cached; evaluate and validate take the
    baseline and previous statistics the resolve task pinned."""
    def compile_with(*overrides):
        out = str(tmp_path / f"p{len(overrides)}.yaml")
        cfg = config_lib.load(EXAMPLE, list(overrides), resolve_paths=False)
        kfp_compile.compile_pipeline(cfg, out)
        return yaml.safe_load(open(out))

    base, longer = compile_with(), compile_with("train.epochs=3", "model.dropout=0.2")
    for step in ("ingest", "validate", "transform"):
        for key in (f"comp-{step}", ):
            assert base["components"][key] == longer["components"][key], step
        assert base["deploymentSpec"]["executors"][f"exec-{step}"] == \
            longer["deploymentSpec"]["executors"][f"exec-{step}"], step
        assert _task_inputs(base)[step] == _task_inputs(longer)[step], step
    assert _task_inputs(base)["train"] != _task_inputs(longer)["train"]   # dropout is compiled
    assert base["root"]["inputDefinitions"]["parameters"]["train_epochs"]["defaultValue"] == 40
    assert longer["root"]["inputDefinitions"]["parameters"]["train_epochs"]["defaultValue"] == 3

    tasks = _task_inputs(base)
    for name, task in tasks.items():
        if name.startswith("condition"):
            continue
        text = json.dumps(task.get("inputs", {}))
        cached = task.get("cachingOptions") == {"enableCache": True}
        assert cached == (name not in ("push", "resolve", "report")), name
        if cached:
            assert "pipeline_job" not in text and "PIPELINE_JOB" not in text, name
    evaluate = tasks["evaluate"]["inputs"]["parameters"]
    assert evaluate["pin_baseline"]["taskOutputParameter"] == {
        "outputParameterKey": "evaluate__baseline", "producerTask": "resolve"}
    validate = tasks["validate"]["inputs"]["parameters"]
    assert validate["pin_baseline_statistics"]["taskOutputParameter"]["producerTask"] == "resolve"
    # each task's config holds only the sections it reads
    ingest_cfg = json.loads(tasks["ingest"]["inputs"]["parameters"]["config_json"]["runtimeValue"]
                            ["constant"])
    assert set(ingest_cfg) == {"data", "ingest", "beam"} and "source" not in ingest_cfg["data"]


def test_runtime_parameters_are_typed_with_the_config_defaults(tmp_path):
    _, spec = compiled(tmp_path)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {name: (p["parameterType"], p["defaultValue"]) for name, p in params.items()} == {
        "data_source": ("STRING", "builtin:fonts"), "train_epochs": ("NUMBER_INTEGER", 40),
        "train_batch_size": ("NUMBER_INTEGER", 64), "learning_rate": ("NUMBER_DOUBLE", 0.001),
        "model_kind": ("STRING", "deep_cnn"), "accuracy_min": ("NUMBER_DOUBLE", 0.8),
        "accuracy_max_drop": ("NUMBER_DOUBLE", 0.01), "promote_to": ("STRING", "staging"),
        "baseline_alias": ("STRING", "production")}
    # a task receives the parameters of the sections it reads, and applies them
    tasks = _task_inputs(spec)
    assert set(tasks["train"]["inputs"]["parameters"]) >= {
        "p_train_epochs", "p_train_batch_size", "p_learning_rate", "p_model_kind"}
    assert not any(k.startswith("p_") for k in tasks["validate"]["inputs"]["parameters"])
    step_cfg = {"train": {"epochs": 40, "optimizer": {"name": "adam"}},
                "record": {"evaluate": {"thresholds": {}}}}
    kfp_entry.apply_overrides(step_cfg, {"train.epochs": 3,
                                         "evaluate.thresholds.accuracy.min": 0.9,
                                         "train.optimizer.learning_rate": 0.01})
    assert step_cfg == {"train": {"epochs": 3, "optimizer": {"name": "adam",
                                                             "learning_rate": 0.01}},
                        "record": {"evaluate": {"thresholds": {"accuracy": {"min": 0.9}}}}}


def test_partial_kfp_step_settings_merge_into_the_defaults():
    cfg = config_lib.load(None, ["kfp.steps.train.accelerator_type=TPU_V5_LITEPOD",
                                 "kfp.steps.push.caching=false"])
    train = cfg.kfp.step("train")
    assert train.accelerator_type == "TPU_V5_LITEPOD" and train.memory_request == "8G"
    assert cfg.kfp.step("ingest").retries == 2 and cfg.kfp.step("push").caching is False


@pytest.mark.parametrize("override,expected", [
    ("data.source=/home/me/photos", "data.source"),
    ("push.destination=./serving", "push.destination"),
    ("validate.schema=/home/me/schema.pbtxt", "validate.schema"),
    ("validate.schema=schemas/nope.pbtxt", "does not exist in this project"),
    ("model.weights=/home/me/base.keras", "model.weights"),
    ("model.weights=run:20261101-aaaa", "model.weights"),
])
def test_compile_refuses_what_containers_cannot_reach(tmp_path, capsys, override, expected):
    args = ["compile", EXAMPLE, "--set", override, "-o", str(tmp_path / "p.yaml")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.yaml").exists()


DATAFLOW = ["beam.runner=DataflowRunner", "beam.options.sdk_container_image=IMAGE"]


@pytest.mark.parametrize("overrides,says", [
    (["data.source=/data/photos"], "cannot read data.source '/data/photos'"),
    (["data.source=gs://b/photos", "beam.options.temp_location=/tmp/beam"],
     "cannot reach beam.options.temp_location '/tmp/beam'"),
    (["data.source=gs://b/photos", "beam.options.sdk_container_image="],
     "DataflowRunner needs beam.options.sdk_container_image"),
])
def test_remote_beam_runner_with_local_paths_is_refused_by_the_cli(tmp_path, capsys, overrides,
                                                                   says):
    args = ["compile", EXAMPLE, *[a for o in [*DATAFLOW, *overrides] for a in ("--set", o)],
            "-o", str(tmp_path / "p.yaml")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "p.yaml").exists()


def test_remote_beam_temp_defaults_under_the_pipeline_root():
    """Without temp_location, a remote runner's temp (and Dataflow's staging, and
    tensorflow-transform's temp dir under it) is next to the step's outputs, under the
    pipeline root; a set one is kept; local outputs cannot serve remote workers."""
    from components.errors import ConfigError
    from pipeline import invoke

    cfg = config_lib.load(None, [*DATAFLOW, "data.source=gs://b/photos"])
    assert cfg.beam.remote and "temp_location" not in cfg.beam.options
    outputs = {"statistics": "gs://b/root/123/job-7/ingest/statistics",
               "examples": "gs://b/root/123/job-7/ingest/examples"}
    beam = invoke.beam_for_outputs(cfg.beam, outputs)
    assert beam.options["temp_location"] == "gs://b/root/123/job-7/ingest/beam-temp"
    assert beam.options["sdk_container_image"] == "IMAGE" and "temp_location" not in \
        cfg.beam.options                                   # the config is not changed
    assert "--temp_location=gs://b/root/123/job-7/ingest/beam-temp" in beam.pipeline_args()
    kept = config_lib.load(None, [*DATAFLOW, "data.source=gs://b/photos",
                                  "beam.options.temp_location=gs://b/tmp"]).beam
    assert invoke.beam_for_outputs(kept, outputs).options["temp_location"] == "gs://b/tmp"
    with pytest.raises(ConfigError, match="cannot write this step's outputs"):
        invoke.beam_for_outputs(cfg.beam, {"examples": "/runs/r/ingest/examples"})
    local = config_lib.load(None).beam
    assert invoke.beam_for_outputs(local, {"examples": "/runs/r/x"}) is local


def test_submit_with_a_package_takes_only_runtime_overrides(tmp_path, capsys, monkeypatch):
    """--set of a run-time key reaches the adapter as the package's parameter, without
    recompiling; a key compiled into the package, or one the package declares no
    parameter for, is one line and exit 2."""
    package = str(tmp_path / "p.yaml")
    lean = str(tmp_path / "lean.yaml")             # compiled without accuracy_max_drop
    assert cli.main(["compile", EXAMPLE, "-o", package]) == 0
    assert cli.main(["compile", EXAMPLE, "-o", lean,
                     "--set", "evaluate.thresholds.accuracy.max_drop=null"]) == 0
    capsys.readouterr()
    calls = []

    class Adapter:
        def submit(self, name, package, parameters):
            calls.append(("submit", package, parameters))
            return "job-1"

        def schedule(self, name, package, parameters, cron):
            calls.append(("schedule", package, parameters, cron))
            return "schedule-1"

    def no_compiling(*args, **kwargs):
        raise AssertionError("recompiled although --package was given")

    monkeypatch.setattr(cli.run, "_adapter", lambda args: Adapter())
    monkeypatch.setattr(kfp_compile, "compile_pipeline", no_compiling)
    target = ["--vertex", "--project", "p", "--region", "r", "--pipeline-root", "gs://b/r"]
    assert cli.main(["submit", EXAMPLE, "--package", package, *target,
                     "--set", "train.epochs=5", "--set", "data.source=gs://b/photos"]) == 0
    assert cli.main(["schedule", EXAMPLE, "--package", package, *target, "--cron",
                     "0 3 * * *", "--set", "evaluate.thresholds.accuracy.max_drop=0.02"]) == 0
    (_, sent_to, params), (_, scheduled, sparams, cron) = calls
    assert sent_to == scheduled == package and cron == "0 3 * * *"
    assert params["train_epochs"] == 5 and params["data_source"] == "gs://b/photos"
    assert sparams["accuracy_max_drop"] == 0.02 and sparams["train_epochs"] == 40
    assert set(params) == kfp_compile.package_parameters(package)
    capsys.readouterr()

    for extra, says in ((["--set", "model.dropout=0.2"], "compiled into"),
                        (["--set", "evaluate.thresholds.accuracy.max_drop=0.02"],
                         "declares no parameter")):
        assert cli.main(["submit", EXAMPLE, "--package", lean, *target, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
    # without --set, only the parameters the package declares are sent
    assert cli.main(["submit", EXAMPLE, "--package", lean, *target]) == 0
    assert "accuracy_max_drop" not in calls[-1][2] and calls[-1][2]["accuracy_min"] == 0.8


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


def _without_code(text: str) -> str:
    """A compiled spec with each task's code fingerprint blanked (it follows every edit
    of the sources; the spec's shape is what the committed copy must keep)."""
    return re.sub(r"(\n( *)code:\n\2  runtimeValue:\n\2    constant: )\w+", r"\1-", text)


def test_committed_pipeline_spec_is_current(tmp_path):
    path, _ = compiled(tmp_path)
    committed = open(os.path.join(ROOT, "deploy", "pipeline.yaml")).read()
    assert _without_code(open(path).read()) == _without_code(committed), (
        "deploy/pipeline.yaml is stale: run `imgpipe compile deploy/example.yaml -o "
        "deploy/pipeline.yaml`")


def test_every_cached_task_carries_its_code_fingerprint(tmp_path, monkeypatch):
    """KFP / Vertex reuse a task while its inputs are unchanged, and the image tag does
    not change with the code: each cached task's inputs carry the fingerprint of the
    modules its step imports (as the local cache key does), so editing a helper reruns
    exactly the tasks whose steps use it."""
    from pipeline import cache, dag

    from tests.fixtures import task_codes

    def codes(path):
        return task_codes(yaml.safe_load(open(path)))

    path, _ = compiled(tmp_path)
    first = codes(path)
    # the config sets no infer.source: the optional infer step is not compiled
    steps = [n for n in dag.STEPS if n.name.replace("_", "-") in first]
    assert {n.name for n in dag.STEPS} - {n.name for n in steps} == {"infer"}
    for node in steps:
        expected = cache.task_code(node.spec.module) if node.spec.cache else None
        assert first[node.name.replace("_", "-")] == expected, node.name
    assert first["resolve"] is None and first["report"] is None      # never cached
    assert _without_code(open(path).read()).count("constant: -") == \
        sum(1 for n in steps if n.spec.cache)
    # a helper only ingest imports changes only ingest's code input
    real = cache._file_info

    def edited(module):
        source, imports = real(module)
        return (source + "# edited" if module == "components.data.ingest_checks" else source,
                imports)

    monkeypatch.setattr(cache, "_file_info", edited)
    (tmp_path / "again").mkdir()
    second = codes(compiled(tmp_path / "again")[0])
    changed = sorted(name for name in first if first[name] != second[name])
    assert changed == ["ingest"]


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


class Recorder:
    """A fake client module: records calls and checks them against the real signatures."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def check(self, name, target, *args, **kwargs):
        inspect.signature(target).bind(*args, **kwargs)      # the real API accepts it
        self.calls.append((name, args, kwargs))


def test_vertex_adapter_calls():
    from google.cloud import aiplatform as real

    rec = Recorder(real)

    class Job:
        resource_name = "projects/p/locations/r/pipelineJobs/1"

        def __init__(self, **kwargs):
            rec.check("PipelineJob", real.PipelineJob.__init__, None, **kwargs)

        def submit(self, **kwargs):
            rec.check("submit", real.PipelineJob.submit, None, **kwargs)

    class Schedule:
        resource_name = "projects/p/locations/r/schedules/2"

        def __init__(self, **kwargs):
            rec.check("PipelineJobSchedule", real.PipelineJobSchedule.__init__, None, **kwargs)

        def create(self, **kwargs):
            rec.check("create", real.PipelineJobSchedule.create, None, **kwargs)

    fake = type("ai", (), {"init": staticmethod(lambda **kw: rec.check("init", real.init, **kw)),
                           "PipelineJob": Job, "PipelineJobSchedule": Schedule})
    adapter = submit.VertexAdapter(submit.VertexTarget("p", "europe-west4", "gs://b/root",
                                                       "sa@p.iam"), aiplatform=fake)
    params = kfp_compile.runtime_parameters(config_lib.load(EXAMPLE, ["train.epochs=3"],
                                                            resolve_paths=False))
    assert adapter.submit("fonts", "p.yaml", params).endswith("pipelineJobs/1")
    assert adapter.schedule("fonts", "p.yaml", params, "0 3 * * *").endswith("schedules/2")
    calls = {name: kwargs for name, _, kwargs in rec.calls}
    assert calls["init"] == {"project": "p", "location": "europe-west4"}
    assert calls["PipelineJob"]["template_path"] == "p.yaml"
    assert calls["PipelineJob"]["pipeline_root"] == "gs://b/root"
    assert calls["PipelineJob"]["parameter_values"]["train_epochs"] == 3
    assert calls["submit"] == {"service_account": "sa@p.iam"}
    assert calls["create"]["cron"] == "0 3 * * *"


def test_kfp_adapter_calls():
    import kfp

    rec = Recorder(kfp)
    ids = type("R", (), {"run_id": "run-1", "experiment_id": "exp-1",
                         "recurring_run_id": "rr-1"})

    class Client:
        def create_run_from_pipeline_package(self, *args, **kwargs):
            rec.check("run", kfp.Client.create_run_from_pipeline_package, None, *args, **kwargs)
            return ids

        def create_experiment(self, *args, **kwargs):
            rec.check("experiment", kfp.Client.create_experiment, None, *args, **kwargs)
            return ids

        def create_recurring_run(self, *args, **kwargs):
            rec.check("recurring", kfp.Client.create_recurring_run, None, *args, **kwargs)
            return ids

    adapter = submit.KfpAdapter("https://kfp.example", client=Client(), experiment="nightly")
    assert adapter.submit("fonts", "p.yaml", {"epochs": 3}) == "run-1"
    assert adapter.schedule("fonts", "p.yaml", {"epochs": 3}, "0 3 * * *") == "rr-1"
    calls = {name: (args, kwargs) for name, args, kwargs in rec.calls}
    assert calls["run"][0] == (None, "p.yaml") and calls["run"][1]["experiment_name"] == "nightly"
    assert calls["recurring"][1]["cron_expression"] == "0 0 3 * * *"   # KFP cron has seconds
    assert calls["recurring"][1]["experiment_id"] == "exp-1"
    assert calls["recurring"][1]["pipeline_package_path"] == "p.yaml"


def test_submit_needs_a_target(capsys):
    assert cli.main(["submit", EXAMPLE]) == 2
    assert "--vertex" in capsys.readouterr().err
    assert cli.main(["submit", EXAMPLE, "--vertex", "--project", "p"]) == 2


def test_dockerfiles_install_the_package_from_pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:            # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from packaging.specifiers import SpecifierSet

    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    # a wheel holds the subpackages too: the containers import pipeline.kfp.entrypoint
    from setuptools import find_packages

    found = find_packages(ROOT, include=project["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {"components", "components.steps", "pipeline", "pipeline.kfp", "pipeline.cli"} <= set(found)
    assert not [p for p in found if p.startswith("tests")]
    supported = SpecifierSet(project["project"]["requires-python"])
    # the range the pinned stack's wheels declare (see pyproject.toml)
    assert [v for v in ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14") if v in supported] == \
        ["3.10", "3.11", "3.12", "3.13"]
    lock = open(os.path.join(ROOT, "requirements.lock")).read()
    tf_version = re.search(r"^tensorflow==([\d.]+)$", lock, re.MULTILINE)[1]
    for name in ("Dockerfile", "Dockerfile.gpu", "Dockerfile.tpu"):
        text = open(os.path.join(ROOT, "deploy", name)).read()
        assert re.search(r"^COPY pyproject.toml requirements.lock", text, re.MULTILINE)
        for package in ("components", "pipeline"):
            assert re.search(rf"^COPY {package} \./{package}$", text, re.MULTILINE), (name, package)
        assert re.search(r"^RUN pip install -c requirements.lock \.$", text, re.MULTILINE), name
        base = re.search(r"^FROM (\S+)", text, re.MULTILINE)[1]
        if name == "Dockerfile.gpu":
            assert base == f"tensorflow/tensorflow:{tf_version}-gpu"
        else:
            # the images run the Python the suite and the lock are made on
            assert base.startswith("python:3.11") and "3.11" in supported
        for folder in kfp_checks.IMAGE_FOLDERS:       # what compile lets configs refer to
            assert re.search(rf"^COPY {folder.rstrip('/')} \./{folder.rstrip('/')}$", text,
                             re.MULTILINE), (name, folder)
    tpu = open(os.path.join(ROOT, "deploy", "Dockerfile.tpu")).read()
    assert re.search(r"pip uninstall -y tensorflow .*tensorflow-tpu==2\.20\.0", tpu, re.S)
    # tensorflow-tpu 2.20.0 declares libtpu~=0.0.14, which admits any later 0.0.x: exact pin
    assert re.search(r"\slibtpu==0\.0\.14(\s|$)", tpu) and "libtpu~=" not in tpu.split("RUN")[-1]
    serving = open(os.path.join(ROOT, "deploy", "Dockerfile.serving")).read()
    assert re.search(r"^FROM (\S+)", serving, re.MULTILINE)[1] == f"tensorflow/serving:{tf_version}"


def _fake_aiplatform(rec, models=("fonts",), labelled=()):
    """google.cloud.aiplatform as far as the uploader uses it, with `filter` honoured as
    the real Model.list / ModelRegistry.list_versions honour it: `display_name="X"`
    finds the Vertex model only when X is one of `models` (models/7), and
    `labels.imgpipe_version="N"` finds a version of it only when N is in `labelled`
    (an upload an earlier attempt made). Any other filter fails the test."""
    from google.cloud import aiplatform as real

    def match(text, pattern):
        found = re.fullmatch(pattern, text or "")
        assert found, f"the fake does not know the filter {text!r}"
        return found[1]

    parent = type("M", (), {"resource_name": "projects/p/locations/r/models/7"})

    class Model:
        @staticmethod
        def list(**kwargs):
            rec.check("list", real.Model.list, **kwargs)
            return [parent] if match(kwargs.get("filter"), r'display_name="([^"]*)"') in \
                models else []

        @staticmethod
        def upload(**kwargs):
            rec.check("upload", real.Model.upload, **kwargs)
            return type("U", (), {"resource_name": "projects/p/locations/r/models/7",
                                  "version_id": "2"})

    class ModelRegistry:
        def __init__(self, model):
            rec.check("ModelRegistry", real.models.ModelRegistry.__init__, None, model)
            self.model = model

        def list_versions(self, *args, **kwargs):
            rec.check("list_versions", real.models.ModelRegistry.list_versions, None, *args,
                      **kwargs)
            wanted = match(kwargs.get("filter"), r'labels\.imgpipe_version="([^"]*)"')
            return [real.models.VersionInfo(
                version_id=f"v{wanted}", version_create_time=None, version_update_time=None,
                model_display_name="fonts", model_resource_name=self.model,
                version_aliases=[])] if wanted in labelled else []

        def add_version_aliases(self, *args, **kwargs):
            rec.check("add_version_aliases", real.models.ModelRegistry.add_version_aliases,
                      None, *args, **kwargs)

        def remove_version_aliases(self, *args, **kwargs):
            rec.check("remove_version_aliases",
                      real.models.ModelRegistry.remove_version_aliases, None, *args, **kwargs)

    models_module = type("models", (), {"ModelRegistry": ModelRegistry})
    return type("ai", (), {"init": staticmethod(lambda **kw: rec.check("init", real.init, **kw)),
                           "Model": Model, "models": models_module})


def test_vertex_model_registry_upload_calls():
    from google.cloud import aiplatform as real

    from components.integrations import vertex

    rec = Recorder(real)
    registry = vertex.VertexModelRegistry("p", "us-central1", aiplatform=_fake_aiplatform(rec))
    image = vertex.serving_image(None, "p", "us-central1", "2.21.0")
    assert image == "us-central1-docker.pkg.dev/p/imgpipe/tensorflow-serving:2.21.0"
    container = vertex.serving_spec(image, "fonts")
    record = registry.upload("fonts", "gs://b/serving/fonts/2/tf_serving",
                             {"imgpipe_version": "2"}, ["staging"], container)
    assert record == {"project": "p", "region": "us-central1",
                      "model": "projects/p/locations/r/models/7", "version_id": "2"}
    upload = {n: k for n, _, k in rec.calls}["upload"]
    assert upload["parent_model"] == "projects/p/locations/r/models/7"   # a new version
    assert upload["artifact_uri"] == "gs://b/serving/fonts/2/tf_serving"
    assert upload["version_aliases"] == ["staging"]
    assert upload["serving_container_image_uri"] == image
    assert upload["serving_container_predict_route"] == "/v1/models/fonts:predict"
    # TF Serving serves Vertex's copy of the artifact, read once (issue 32)
    assert upload["serving_container_args"] == [
        "--rest_api_port=8501", "--model_name=fonts", "--model_base_path=$(AIP_STORAGE_URI)",
        "--file_system_poll_wait_seconds=0"]
    lookups = [kw["filter"] for name, _, kw in rec.calls if name in ("list", "list_versions")]
    assert lookups == ['display_name="fonts"', 'labels.imgpipe_version="2"']

    # a model Vertex does not hold yet: the first upload makes it (no parent model)
    rec.calls.clear()
    registry.upload("digits", "gs://b/serving/digits/1", {"imgpipe_version": "1"}, [],
                    container)
    upload = {n: k for n, _, k in rec.calls}["upload"]
    assert upload["parent_model"] is None and upload["display_name"] == "digits"
    assert upload["version_aliases"] is None
    assert "list_versions" not in [n for n, _, _ in rec.calls]

    # a version an earlier attempt uploaded (found by its label): not uploaded again,
    # its aliases moved instead
    rec = Recorder(real)
    registry = vertex.VertexModelRegistry("p", "us-central1",
                                          aiplatform=_fake_aiplatform(rec, labelled=("3",)))
    record = registry.upload("fonts", "gs://b/serving/fonts/3", {"imgpipe_version": "3"},
                             ["staging"], container)
    assert record["version_id"] == "v3" and "upload" not in [n for n, _, _ in rec.calls]
    assert [a for n, a, _ in rec.calls if n == "add_version_aliases"] == [(None, ["staging"], "v3")]
    # a model from the TPU image (tensorflow-tpu 2.20) is served by the one TF Serving
    # image the deploy builds (the pipeline's 2.21), which loads older SavedModels
    assert vertex.serving_version("2.20.0", "2.21.0") == "2.21.0"
    assert vertex.serving_image(None, "p", "us-central1", "2.20.0", "2.21.0") == image
    assert vertex.serving_image(None, "p", "us-central1", "2.20.0") == image    # installed TF
    assert vertex.serving_version("2.22.1", "2.21.0") == "2.22.1"        # never an older one
    tag = re.search(r"^# .*tensorflow-serving:(\S+) \.$", open(os.path.join(
        ROOT, "deploy", "Dockerfile.serving")).read(), re.MULTILINE)[1]
    assert image.endswith(f":{tag}")                  # the tag deploy/README builds
    # up to TF 2.15 Vertex's own prebuilt image; never one older than the model
    assert vertex.serving_image(None, "p", "europe-west4", "2.15.1", "2.15.1") == \
        "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
    with pytest.raises(Exception, match="serves TensorFlow 2.15, the models are built with 2.21"):
        vertex.serving_image("us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest",
                             "p", "us-central1", "2.21.0")


def test_promotion_and_rollback_move_the_vertex_aliases_too(tmp_path, capsys, fake_vertex):
    """Two versions pushed by the push step with push.vertex (the stateful fake of
    tests.registry.test_cloud_state, which honours `filter`): each is uploaded as a version of
    one Vertex model and recorded; promote and rollback then move the Vertex alias
    with the registry's, onto the version each push recorded."""
    from components import artifacts
    from components.config.push import PushConfig, VertexPushConfig
    from components.registry.versions import Registry
    from components.steps import push
    from tests.registry.test_cloud_state import _push_inputs

    serving = str(tmp_path / "serving")
    cfg = PushConfig(destination=serving, model_name="m", vertex=VertexPushConfig(project="p"))
    for number, seed in ((1, "a"), (2, "b")):
        summary = push.run(*_push_inputs(tmp_path, seed), cfg, artifacts.ArtifactWriter(
            str(tmp_path / f"pushed-{seed}"), artifacts.PushedModel, {"run_id": seed}), {})
        assert summary["version"] == number
        assert summary["lines"][-1] == ("uploaded to Vertex AI Model Registry: "
                                        f"projects/p/locations/r/models/1 version {number}")
    uploads = fake_vertex.uploads()
    assert [u["parent_model"] for u in uploads] == [None, "projects/p/locations/r/models/1"]
    assert fake_vertex.versions() == [("1", {"imgpipe_version": "1"}, []),
                                      ("2", {"imgpipe_version": "2"}, [])]
    root = ["--registry", serving]
    assert cli.main(["models", "promote", "m:1", "--to", "production", *root]) == 0
    assert cli.main(["models", "promote", "m:2", "--to", "production", *root]) == 0
    assert "also on Vertex AI" in capsys.readouterr().out
    assert [aliases for _, _, aliases in fake_vertex.versions()] == [[], ["production"]]
    assert cli.main(["models", "rollback", "m", "--alias", "production", *root]) == 0
    assert Registry(serving).aliases("m") == {"production": 1}
    assert [aliases for _, _, aliases in fake_vertex.versions()] == [["production"], []]
    moves = [args for name, args, _ in fake_vertex.rec.calls if name == "add_version_aliases"]
    assert moves == [(None, ["production"], "1"), (None, ["production"], "2"),
                     (None, ["production"], "1")]


def test_training_replicas_and_tpu_topology_as_a_vertex_custom_job(tmp_path):
    cfg = config_lib.load(EXAMPLE, [
        "kfp.steps.train={accelerator_type: TPU_V5_LITEPOD, accelerator_count: 4, "
        "vertex_job: {machine_type: ct5lp-hightpu-4t, replica_count: 2, tpu_topology: 2x2}}"],
        resolve_paths=False)
    out = str(tmp_path / "job.yaml")
    kfp_compile.compile_pipeline(cfg, out)
    spec = yaml.safe_load(open(out))
    train_component = spec["components"][spec["root"]["dag"]["tasks"]["train"]["componentRef"]
                                         ["name"]]
    pools = train_component["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
    assert len(pools) == 2 and pools[1]["replica_count"] == 1          # chief + 1 worker
    assert pools[0]["machine_spec"] == {"machine_type": "ct5lp-hightpu-4t",
                                        "accelerator_type": "TPU_V5_LITEPOD",
                                        "accelerator_count": 4, "tpu_topology": "2x2"}
    assert {"name": "IMGPIPE_ACCELERATOR", "value": "TPU_V5_LITEPOD"} in \
        pools[0]["container_spec"]["env"]
    assert "run_step('train'" in " ".join(pools[0]["container_spec"]["command"])


TPU_IMAGE = "us-docker.pkg.dev/p/imgpipe/imgpipe:0.1.0-tpu"
DEFAULT_IMAGE = "us-docker.pkg.dev/my-project/imgpipe/imgpipe:0.1.0"


@pytest.mark.parametrize("custom_job", [False, True])
def test_tpu_request_and_image_only_on_the_train_task(tmp_path, custom_job):
    """The deploy walkthrough's TPU trainer: the accelerator, its count, the machine
    type and topology, IMGPIPE_ACCELERATOR and the TPU image appear on the train task
    (its container, or its Vertex custom job's worker pool) and nowhere else; every
    other task runs the default image with no accelerator."""
    job = ", vertex_job: {machine_type: ct5lp-hightpu-4t, tpu_topology: 2x2}" if custom_job \
        else ""
    cfg = config_lib.load(EXAMPLE, [f"kfp.steps.train={{image: {TPU_IMAGE}, accelerator_type: "
                                    f"TPU_V5_LITEPOD, accelerator_count: 4{job}}}"],
                          resolve_paths=False)
    out = str(tmp_path / "tpu.yaml")
    kfp_compile.compile_pipeline(cfg, out)
    spec = yaml.safe_load(open(out))
    markers = [TPU_IMAGE, "TPU_V5_LITEPOD", "IMGPIPE_ACCELERATOR"] + \
        (["ct5lp-hightpu-4t", "2x2"] if custom_job else [])
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        text = json.dumps(executor)
        if name == "exec-train" and not custom_job:
            container = executor["container"]
            assert container["image"] == TPU_IMAGE
            assert container["resources"]["accelerator"]["resourceType"] == "TPU_V5_LITEPOD"
            assert str(container["resources"]["accelerator"]["resourceCount"]) == "4"
            assert {"name": "IMGPIPE_ACCELERATOR", "value": "TPU_V5_LITEPOD"} in container["env"]
            continue
        assert not any(m in text for m in markers), name
        assert "accelerator" not in executor["container"].get("resources", {}), name
        if name != "exec-train":           # (a custom job's launcher runs GCPC's image)
            assert executor["container"]["image"] == DEFAULT_IMAGE, name
    for name, component in spec["components"].items():
        if name != "comp-train":
            assert not any(m in json.dumps(component) for m in markers), name
    tasks = _task_inputs(spec)
    assert not any(m in json.dumps(task) for name, task in tasks.items() if name != "train"
                   for m in markers)
    if custom_job:
        pools = spec["components"]["comp-train"]["inputDefinitions"]["parameters"][
            "worker_pool_specs"]["defaultValue"]
        assert [p["container_spec"]["image_uri"] for p in pools] == [TPU_IMAGE]
        assert pools[0]["machine_spec"] == {"machine_type": "ct5lp-hightpu-4t",
                                            "accelerator_type": "TPU_V5_LITEPOD",
                                            "accelerator_count": 4, "tpu_topology": "2x2"}


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
    from tests.steps.test_validate import BASE, stats_artifact

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
                     for n in kfp_compile._resolve_parameters(params) if n != "baseline_alias"}
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
            {p: pins[f"validate__{p}"] for p in kfp_compile._pin_params(node)}, {})

    first = stats_artifact(root / "run-1" / "ingest", "statistics", BASE)
    pins, gate = validate("run-1", first)
    assert pins["validate__baseline_statistics"] == "" and gate is True    # nothing before
    others = {str(ref): kfp_artifact(root / "run-1" / ref.step / ref.output)
              for ref in kfp_compile.REPORT_INPUTS if str(ref) != "ingest.statistics"}
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
            for ref in kfp_compile.REPORT_INPUTS}
    html_out = SimpleNamespace(path=str(tmp_path / "report" / "report"))
    kfp_entry.write_report(invoke.Context.from_config(cfg).to_json(), "run-1", arts,
                           html_out, kfp_compile.report_config(cfg), {"train.epochs": 7})
    page = open(html_out.path).read()
    assert "<caption>train</caption>" in page and "<td>epochs</td><td>7</td>" in page
    assert "<caption>data</caption>" in page and "<caption>evaluate</caption>" in page


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
