"""The compiled KFP v2 pipeline (`pipeline/kfp/compile.py`): the IR's DAG, gate,
resources and typed artifacts, the run-time parameters, what compile refuses, the
committed spec, each cached task's code fingerprint, and a trainer's replicas, TPU
request and image on the train task only."""

import json
import os
import re

import pytest
import yaml

from pipeline import cli
from pipeline import config as config_lib
from pipeline.kfp import compile as kfp_compile
from pipeline.kfp import entrypoint as kfp_entry
from tests.fixtures import task_inputs

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
    tasks = task_inputs(spec)
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
    tasks = task_inputs(spec)
    assert not any(m in json.dumps(task) for name, task in tasks.items() if name != "train"
                   for m in markers)
    if custom_job:
        pools = spec["components"]["comp-train"]["inputDefinitions"]["parameters"][
            "worker_pool_specs"]["defaultValue"]
        assert [p["container_spec"]["image_uri"] for p in pools] == [TPU_IMAGE]
        assert pools[0]["machine_spec"] == {"machine_type": "ct5lp-hightpu-4t",
                                            "accelerator_type": "TPU_V5_LITEPOD",
                                            "accelerator_count": 4, "tpu_topology": "2x2"}
