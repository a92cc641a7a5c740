"""The compiled path against what the services expect: the step image as a Dataflow
worker, GPU images, resources Vertex honours, Kubeflow Pipelines open source as a
second backend, the identities runs and jobs use, Vertex alias names, and TPU training
with a search. IR-level tests compile to a temporary file and read the YAML."""

import json
import os
import re

import pytest
import yaml

from pipeline import cli
from pipeline import config as config_lib
from pipeline.kfp import compile as kfp_compile

from tests import ROOT  # noqa: E402
EXAMPLE = os.path.join(ROOT, "deploy", "example.yaml")


def _compile(tmp_path, overrides=(), name="p.yaml"):
    """(path, the pipeline spec, the platform spec or {}) of the example with overrides."""
    out = str(tmp_path / name)
    cfg = config_lib.load(EXAMPLE, list(overrides), resolve_paths=False)
    kfp_compile.compile_pipeline(cfg, out)
    docs = list(yaml.safe_load_all(open(out)))
    return out, docs[0], (docs[1] if len(docs) > 1 else {})


def _one_line_error(capsys, args, says):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(s in err for s in
                                              ([says] if isinstance(says, str) else says)), err
    return err


# 1. The step image is also the Dataflow worker image --------------------------------

def _dockerfile(name):
    return open(os.path.join(ROOT, "deploy", name)).read()


def _python_minor(text):
    """The Python the image runs: python:X.Y's tag, else the version the build asserts."""
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)[1]
    tagged = re.match(r"python:(\d+\.\d+)", base)
    if tagged:
        return tagged[1]
    checked = re.search(r"^RUN python -c .*sys\.version_info\[:2\] == \((\d+), (\d+)\)", text,
                        re.MULTILINE)
    assert checked, f"{base}: the Dockerfile neither names nor checks its Python"
    return f"{checked[1]}.{checked[2]}"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_step_images_carry_the_beam_boot_program_of_the_locked_beam(name):
    """Dataflow starts a custom container through /opt/apache/beam/boot, its ENTRYPOINT;
    the boot program comes from Beam's image of the locked apache-beam and the image's
    Python. The GPU image installs from the lock like the CPU one."""
    lock = open(os.path.join(ROOT, "requirements.lock")).read()
    beam = re.search(r"^apache-beam==([\d.]+)$", lock, re.MULTILINE)[1]
    text = _dockerfile(name)
    copied = re.findall(r"^COPY --from=apache/beam_python(\d+\.\d+)_sdk:(\S+) /opt/apache/beam "
                        r"/opt/apache/beam$", text, re.MULTILINE)
    assert copied == [(_python_minor(text), beam)], copied
    entrypoints = re.findall(r"^ENTRYPOINT (.+)$", text, re.MULTILINE)
    assert [json.loads(e) for e in entrypoints] == [["/opt/apache/beam/boot"]]
    # the boot program is copied after the install (a Beam upgrade rebuilds only it)
    assert text.index("RUN pip install -c requirements.lock .") < text.index("COPY --from=")
    assert re.search(r"^RUN pip install -c requirements.lock \.$", text, re.MULTILINE)


# 3. Vertex sizes a task's machine from its limits -----------------------------------

def _resources(spec, task):
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"].get("resources", {})


def test_limits_carry_the_requested_resources_and_requests_stay(tmp_path):
    """Vertex AI reads only the limits (a request alone ran on its default machine): a
    step with only requests gets them as limits too; a configured limit is kept; the
    requests are still there for Kubeflow Pipelines."""
    _, spec, _ = _compile(tmp_path, ["kfp.steps.transform.memory_limit=6G"])
    train = _resources(spec, "train")      # example: cpu_request 4, memory_request 16G
    assert (train["resourceCpuLimit"], train["resourceMemoryLimit"]) == ("4", "16G")
    assert (train["resourceCpuRequest"], train["resourceMemoryRequest"]) == ("4", "16G")
    transform = _resources(spec, "transform")  # cpu_request 2, memory_request 4G
    assert transform["resourceCpuLimit"] == "2" and transform["resourceMemoryLimit"] == "6G"
    assert transform["resourceMemoryRequest"] == "4G"
    assert _resources(spec, "evaluate")["resourceMemoryLimit"] == "8G"
    assert "resourceCpuLimit" not in _resources(spec, "evaluate")   # nothing asked
    assert _resources(spec, "validate") == {}


# 2. A GPU step runs in the GPU image ------------------------------------------------

GPU_IMAGE = "us-docker.pkg.dev/my-project/imgpipe/imgpipe:0.1.0-gpu"
CPU_IMAGE = "us-docker.pkg.dev/my-project/imgpipe/imgpipe:0.1.0"


def _images(spec):
    return {name.removeprefix("exec-"): executor["container"]["image"]
            for name, executor in spec["deploymentSpec"]["executors"].items()}


def test_a_gpu_step_runs_in_the_gpu_image(tmp_path):
    """The example's T4 trainer runs in kfp.gpu_image and everything else in kfp.image;
    a step's own image still wins."""
    _, spec, _ = _compile(tmp_path)
    images = _images(spec)
    assert images.pop("train") == GPU_IMAGE
    assert set(images.values()) == {CPU_IMAGE}
    _, own, _ = _compile(tmp_path, ["kfp.steps.train.image=image:own",
                                    "kfp.steps.evaluate.accelerator_type=NVIDIA_L4"], "own.yaml")
    assert _images(own)["train"] == "image:own" and _images(own)["evaluate"] == GPU_IMAGE


def test_a_gpu_step_without_a_gpu_image_is_refused_at_compile(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    _one_line_error(capsys, ["compile", EXAMPLE, "--set", "kfp.gpu_image=null", "-o", str(out)],
                    ["kfp.steps.train.accelerator_type NVIDIA_TESLA_T4", "kfp.gpu_image",
                     "deploy/Dockerfile.gpu"])
    assert not out.exists()
    # a TPU or no accelerator needs no GPU image
    assert cli.main(["compile", EXAMPLE, "--set", "kfp.gpu_image=null", "--set",
                     "kfp.steps.train.accelerator_type=null", "-o", str(out)]) == 0


# 4. Kubeflow Pipelines open source --------------------------------------------------

KUBEFLOW = ["kfp.backend=kubeflow"]


def test_kubeflow_gets_gpus_as_kubernetes_resources_on_gpu_nodes(tmp_path):
    """KFP's driver puts the accelerator type into the pod's limits as a resource name:
    on kubeflow the T4 is `nvidia.com/gpu` plus GKE's node label for the model; the
    trainer still learns the GPU model it asked for; on Vertex nothing changes."""
    from kfp import components

    path, spec, platform = _compile(tmp_path, KUBEFLOW)
    assert components.load_component_from_file(path).name == "fonts-deep-cnn"
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert str(container["resources"]["accelerator"]["resourceCount"]) == "1"
    assert {"name": "IMGPIPE_ACCELERATOR", "value": "NVIDIA_TESLA_T4"} in container["env"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors == {"exec-train": {"nodeSelector": {"labels": {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}}}}
    # on Kubernetes a limit nobody configured would cap the pod: only requests here
    assert "resourceMemoryLimit" not in container["resources"]
    assert container["resources"]["resourceMemoryRequest"] == "16G"
    assert kfp_compile.package_backend(path) == "kubeflow"
    assert "train_epochs" in kfp_compile.package_parameters(path)      # two YAML documents
    vertex_path, vertex, none = _compile(tmp_path, [], "vertex.yaml")
    assert none == {} and kfp_compile.package_backend(vertex_path) == "vertex"
    assert vertex["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"][
        "accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert kfp_compile.gke_accelerator("NVIDIA_H100_MEGA_80GB") == "nvidia-h100-mega-80gb"


@pytest.mark.parametrize("override,says", [
    ("kfp.steps.train.accelerator_type=TPU_V5_LITEPOD", ["is a Vertex AI TPU",
                                                         "use kfp.backend vertex"]),
    ("kfp.steps.train.accelerator_type=NVIDIA_TESLA_T5", ["not a GPU kfp.backend kubeflow",
                                                          "NVIDIA_TESLA_T4"]),
    ("kfp.steps.train.vertex_job={replica_count: 2}", ["custom job", "use kfp.backend vertex"]),
])
def test_kubeflow_refuses_what_only_vertex_has(tmp_path, capsys, override, says):
    _one_line_error(capsys, ["compile", EXAMPLE, "--set", KUBEFLOW[0], "--set", override,
                             "-o", str(tmp_path / "p.yaml")], says)
    assert not (tmp_path / "p.yaml").exists()


def test_kfp_adapter_passes_the_pipeline_root_and_service_account():
    """The run and the recurring run get them, with kfp.Client's own keyword names."""
    import inspect

    import kfp

    from pipeline.kfp import submit

    calls = {}

    class Client:
        def _record(self, name, method, *args, **kwargs):
            inspect.signature(method).bind(self, *args, **kwargs)     # the real signature
            calls[name] = kwargs
            return type("R", (), {"run_id": "run-1", "experiment_id": "exp-1",
                                  "recurring_run_id": "rr-1"})

        def create_run_from_pipeline_package(self, *args, **kwargs):
            return self._record("run", kfp.Client.create_run_from_pipeline_package, *args,
                                **kwargs)

        def create_experiment(self, *args, **kwargs):
            return self._record("experiment", kfp.Client.create_experiment, *args, **kwargs)

        def create_recurring_run(self, *args, **kwargs):
            return self._record("recurring", kfp.Client.create_recurring_run, *args, **kwargs)

    adapter = submit.KfpAdapter("https://kfp.example", client=Client(),
                                pipeline_root="gs://b/root", service_account="pipeline-runner")
    assert adapter.submit("fonts", "p.yaml", {}) == "run-1"
    assert adapter.schedule("fonts", "p.yaml", {}, "0 3 * * *") == "rr-1"
    for name in ("run", "recurring"):
        assert calls[name]["pipeline_root"] == "gs://b/root", name
        assert calls[name]["service_account"] == "pipeline-runner", name


class _Adapter:
    def __init__(self, calls):
        self.calls = calls

    def submit(self, name, package, parameters):
        self.calls.append(("submit", package))
        return "job-1"

    def schedule(self, name, package, parameters, cron):
        self.calls.append(("schedule", package))
        return "schedule-1"


def test_kubeflow_submit_needs_a_bucket_root_and_a_package_for_its_backend(tmp_path, capsys,
                                                                         monkeypatch):
    kubeflow, vertex = str(tmp_path / "kf.yaml"), str(tmp_path / "vx.yaml")
    assert cli.main(["compile", EXAMPLE, "--set", KUBEFLOW[0], "-o", kubeflow]) == 0
    assert cli.main(["compile", EXAMPLE, "-o", vertex]) == 0
    capsys.readouterr()
    seen, calls = [], []

    def adapter(args):
        seen.append((args.pipeline_root, args.service_account))
        return _Adapter(calls)

    monkeypatch.setattr(cli.run, "_adapter", adapter)
    host = ["--kfp-host", "http://127.0.0.1:9"]
    vertex_target = ["--vertex", "--project", "p", "--region", "r", "--pipeline-root", "gs://b/r"]
    _one_line_error(capsys, ["submit", EXAMPLE, "--package", kubeflow, *host],
                    ["--kfp-host needs --pipeline-root gs://", "minio://"])
    _one_line_error(capsys, ["schedule", EXAMPLE, "--package", kubeflow, *host, "--cron",
                             "0 3 * * *", "--pipeline-root", "minio://mlpipeline/v2"],
                    "got 'minio://mlpipeline/v2'")
    _one_line_error(capsys, ["submit", EXAMPLE, "--package", vertex, *host, "--pipeline-root",
                             "gs://b/r"], ["compiled for kfp.backend vertex", "--kfp-host"])
    _one_line_error(capsys, ["submit", EXAMPLE, "--package", kubeflow, *vertex_target],
                    ["compiled for kfp.backend kubeflow", "--set kfp.backend=vertex"])
    # compiling now: the config's backend is the package's
    _one_line_error(capsys, ["submit", EXAMPLE, "--set", KUBEFLOW[0], *vertex_target],
                    "compiled for kfp.backend kubeflow")
    assert calls == []
    assert cli.main(["submit", EXAMPLE, "--package", kubeflow, *host, "--pipeline-root",
                     "gs://b/r", "--service-account", "pipeline-runner"]) == 0
    assert cli.main(["submit", EXAMPLE, "--package", vertex, *vertex_target]) == 0
    assert calls == [("submit", kubeflow), ("submit", vertex)]
    assert seen[0] == ("gs://b/r", "pipeline-runner")
    # a package that does not say (compiled before the backend was recorded) is not refused
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text(open(vertex).read().replace("IMGPIPE_KFP_BACKEND", "SOMETHING_ELSE"))
    assert kfp_compile.package_backend(str(legacy)) is None
    assert cli.main(["submit", EXAMPLE, "--package", str(legacy), *host, "--pipeline-root",
                     "gs://b/r"]) == 0


# 5. The identity the pipeline and its jobs run as -----------------------------------

RUNNER = "runner@my-project.iam.gserviceaccount.com"
DATAFLOW = ["beam.runner=DataflowRunner", "beam.options.sdk_container_image=IMAGE",
            "data.source=gs://b/photos"]


def test_the_custom_job_and_the_dataflow_workers_run_as_the_pipeline_account(tmp_path):
    """GCPC's custom job defaults to Vertex AI's Custom Code Service Agent and Dataflow's
    workers to the Compute Engine default account: both get kfp.service_account."""
    _, spec, _ = _compile(tmp_path, [f"kfp.service_account={RUNNER}", *DATAFLOW,
                                     "kfp.steps.train.vertex_job={replica_count: 2}"])
    train = spec["components"]["comp-train"]["inputDefinitions"]["parameters"]
    assert train["service_account"]["defaultValue"] == RUNNER
    pools = train["worker_pool_specs"]["defaultValue"]
    account_env = {"name": "IMGPIPE_SERVICE_ACCOUNT", "value": RUNNER}
    assert all(account_env in pool["container_spec"]["env"] for pool in pools)
    ingest = spec["deploymentSpec"]["executors"]["exec-ingest"]["container"]
    assert account_env in ingest["env"]
    # without an account, or with a local runner, nothing is set
    _, plain, _ = _compile(tmp_path, ["kfp.steps.train.vertex_job={replica_count: 2}"], "q.yaml")
    assert plain["components"]["comp-train"]["inputDefinitions"]["parameters"][
        "service_account"]["defaultValue"] == ""
    assert "IMGPIPE_SERVICE_ACCOUNT" not in json.dumps(plain)


def test_dataflow_options_get_the_task_account(monkeypatch):
    from pipeline import invoke

    outputs = {"examples": "gs://b/root/1/ingest/examples"}
    cfg = config_lib.load(None, DATAFLOW)
    assert "service_account_email" not in invoke.beam_for_outputs(cfg.beam, outputs).options
    monkeypatch.setenv(invoke.SERVICE_ACCOUNT_ENV, RUNNER)
    beam = invoke.beam_for_outputs(cfg.beam, outputs)
    assert beam.options["service_account_email"] == RUNNER
    assert f"--service_account_email={RUNNER}" in beam.pipeline_args()
    assert beam.options["temp_location"] == "gs://b/root/1/ingest/beam-temp"
    assert "service_account_email" not in cfg.beam.options          # the config is unchanged
    # an explicit worker account (and temp location) is kept; other runners get none
    own = config_lib.load(None, [*DATAFLOW, "beam.options.service_account_email=w@p.iam",
                                 "beam.options.temp_location=gs://b/tmp"]).beam
    assert invoke.beam_for_outputs(own, outputs).options["service_account_email"] == "w@p.iam"
    flink = config_lib.load(None, ["beam.runner=FlinkRunner", "data.source=gs://b/photos"]).beam
    assert "service_account_email" not in invoke.beam_for_outputs(flink, outputs).options


def test_submit_defaults_to_the_pipeline_account_and_refuses_another(tmp_path, capsys,
                                                                   monkeypatch):
    config = tmp_path / "runner.yaml"
    config.write_text(open(EXAMPLE).read().replace("\nkfp:\n", f"\nkfp:\n  service_account: "
                                                               f"{RUNNER}\n"))
    package = str(tmp_path / "p.yaml")
    assert cli.main(["compile", str(config), "-o", package]) == 0
    capsys.readouterr()
    seen = []

    def adapter(args):
        seen.append(args.service_account)
        return _Adapter([])

    monkeypatch.setattr(cli.run, "_adapter", adapter)
    vertex = ["--vertex", "--project", "p", "--region", "r", "--pipeline-root", "gs://b/r"]
    assert cli.main(["submit", str(config), "--package", package, *vertex]) == 0
    assert cli.main(["schedule", str(config), "--package", package, *vertex, "--cron",
                     "0 3 * * *", "--service-account", RUNNER]) == 0
    assert seen == [RUNNER, RUNNER]
    _one_line_error(capsys, ["submit", str(config), "--package", package, *vertex,
                             "--service-account", "other@p.iam.gserviceaccount.com"],
                    ["--service-account other@p.iam.gserviceaccount.com",
                     f"kfp.service_account {RUNNER}"])
    assert len(seen) == 2
    # without kfp.service_account the flag is what is sent (or nothing)
    assert cli.main(["submit", EXAMPLE, "--package", package, *vertex]) == 0
    assert cli.main(["submit", EXAMPLE, "--package", package, *vertex,
                     "--service-account", "other@p.iam.gserviceaccount.com"]) == 0
    assert seen[2:] == [None, "other@p.iam.gserviceaccount.com"]


@pytest.mark.parametrize("overrides,says", [
    (["kfp.service_account=runner"], "not a service account email"),
    ([*KUBEFLOW, f"kfp.service_account={RUNNER}"], "not a Kubernetes service account name"),
])
def test_a_service_account_of_the_other_kind_is_refused(tmp_path, capsys, overrides, says):
    _one_line_error(capsys, ["compile", EXAMPLE, *[a for o in overrides for a in ("--set", o)],
                             "-o", str(tmp_path / "p.yaml")], says)


# 11. Aliases Vertex AI Model Registry accepts ---------------------------------------

VERTEX_PUSH = "push.vertex={project: p, region: us-central1}"


@pytest.mark.parametrize("key,alias,hint", [
    ("promote_to", "prod_1", "'prod-1'"), ("promote_to", "Staging", "'staging'"),
    ("baseline_alias", "2024", "'production'"), ("baseline_alias", "x", "'production'"),
    ("promote_to", "canary-", "'canary'"),
])
def test_aliases_vertex_refuses_are_refused_at_load_with_push_vertex(capsys, key, alias, hint):
    """Vertex's rule ([a-z][a-zA-Z0-9-]{0,126}[a-z0-9], never numeric) is checked only
    when push.vertex moves aliases there; imgpipe's own registry takes them."""
    value = f"'{alias}'" if alias.isdigit() else alias          # a string, not YAML's int
    _one_line_error(capsys, ["config", "show", EXAMPLE, "--set", VERTEX_PUSH, "--set",
                             f"push.{key}={value}"],
                    [f"push.{key} '{alias}' is not an alias Vertex AI accepts", f"e.g. {hint}"])
    assert getattr(config_lib.load(EXAMPLE, [f"push.{key}={value}"]).push, key) == alias
    for fine in ("staging", "prod-1", "v2", "blue-Green2"):
        config_lib.load(EXAMPLE, [VERTEX_PUSH, f"push.{key}={fine}"])


def test_promoting_to_an_alias_vertex_refuses_is_refused_for_a_model_on_vertex(tmp_path,
                                                                                capsys):
    from components.registry.versions import Registry

    registry = Registry(str(tmp_path / "serving"))
    for number in (1, 2):
        folder = tmp_path / f"sm{number}"
        folder.mkdir()
        (folder / "saved_model.pb").write_text("graph")
        registry.push("m", str(folder), {"blessing": {"blessed": True}})
    root = ["--registry", str(tmp_path / "serving")]
    # not on Vertex: imgpipe's alias rules only
    assert cli.main(["models", "promote", "m:1", "--to", "prod_1", "--create", *root]) == 0
    (tmp_path / "serving" / "m" / "1" / "vertex.json").write_text(json.dumps(
        {"project": "p", "region": "r", "model": "projects/p/locations/r/models/7",
         "version_id": "1"}))
    capsys.readouterr()
    _one_line_error(capsys, ["models", "promote", "m:2", "--to", "prod_2", "--create", *root],
                    ["alias 'prod_2' cannot move on Vertex AI", "e.g. 'prod-2'"])
    assert "prod_2" not in registry.aliases("m")            # refused before the registry moved


# 13. A TPU trainer with a search ----------------------------------------------------

SPACE = "tune.space={train.optimizer.learning_rate: {log_uniform: [0.0001, 0.01]}}"
TPU_TRAIN = ("kfp.steps.train={image: image:tpu, accelerator_type: TPU_V5_LITEPOD, "
             "accelerator_count: 4}")


@pytest.mark.parametrize("overrides,says", [
    (["train.strategy=tpu", SPACE], "train.strategy tpu with a tune.space"),
    ([TPU_TRAIN, SPACE], "kfp.steps.train.accelerator_type TPU_V5_LITEPOD with a tune.space"),
])
def test_a_tpu_trainer_with_a_search_is_refused_at_compile(tmp_path, capsys, overrides, says):
    """The tune task has no TPU (train's TPU request is train's): its trials would fail
    under strategy tpu, or search a CPU plan for a TPU run. Refused with the way out."""
    out = tmp_path / "p.yaml"
    _one_line_error(capsys, ["compile", EXAMPLE, *[a for o in overrides for a in ("--set", o)],
                             "-o", str(out)],
                    [says, "search on CPU first with a smaller model", "train.hyperparameters"])
    assert not out.exists()


def test_a_tpu_trainer_without_a_search_or_with_a_tpu_tune_compiles(tmp_path):
    tpu_tune = TPU_TRAIN.replace("kfp.steps.train", "kfp.steps.tune")
    for overrides in (["train.strategy=tpu", TPU_TRAIN], [SPACE],
                      ["train.strategy=tpu", TPU_TRAIN, tpu_tune, SPACE]):  # tune has a TPU
        assert cli.main(["compile", EXAMPLE, *[a for o in overrides for a in ("--set", o)],
                         "-o", str(tmp_path / "p.yaml")]) == 0, overrides


# 2 (runtime). A task that asked for a GPU and has none fails ------------------------

def test_a_gpu_request_without_a_gpu_fails_instead_of_training_on_cpu(monkeypatch):
    """As the TPU rule: IMGPIPE_ACCELERATOR naming an NVIDIA type and no GPU visible to
    TensorFlow (this CPU machine) is one line and exit 2, not 'default strategy on CPU'."""
    import tensorflow as tf

    from components.trainer import distribute
    from components.errors import TrainingError

    assert TrainingError.exit_code == 2
    monkeypatch.delenv(distribute.ACCELERATOR_ENV, raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(distribute, "_tpu_hardware_visible", lambda: False)
    real = tf.config.list_physical_devices
    if real("GPU"):
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: [] if kind == "GPU" else real(kind))
    assert distribute.choose_strategy("auto")[1] == "default strategy on CPU"   # nothing asked
    monkeypatch.setenv(distribute.ACCELERATOR_ENV, "NVIDIA_TESLA_T4")
    with pytest.raises(TrainingError) as raised:
        distribute.choose_strategy("auto")
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert "IMGPIPE_ACCELERATOR=NVIDIA_TESLA_T4 asked for a GPU" in message
    assert "kfp.gpu_image" in message
    # with a GPU in sight the request is met (here a stand-in device list)
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["GPU:0"] if kind == "GPU" else real(kind))
    assert distribute.choose_strategy("auto")[0] is not None
