"""One step of the DAG as a KFP task: its component, generated from the step's contract
(a typed signature: `Dataset` for examples, `Model` for models, `Artifact` for the rest,
plus the step's run-page outputs; the config it reads as a JSON parameter; one call of
`run_step`, `pipeline/kfp/entrypoint.py`), the image it runs in, and from `kfp.steps` its
resources, accelerator, caching and retries, or a Vertex AI custom job when it asks for
replicas or a TPU topology."""

from __future__ import annotations

import linecache
from typing import Any

from pipeline import dag, invoke
from pipeline.config import PipelineConfig
from pipeline.config_kfp import KUBEFLOW, VERTEX
from pipeline.kfp.parameters import param_type, parameters_for
from pipeline.kfp.shared import EXTERNAL, RUNTIME_PARAMETERS

# Artifact type -> KFP artifact class name.
KFP_TYPES = {"Examples": "Dataset", "Model": "Model", "PushedModel": "Model"}
RESOLVE = "resolve"
# Set on the resolve task: the kfp.backend the package was compiled for.
BACKEND_ENV = "IMGPIPE_KFP_BACKEND"
# Kubeflow Pipelines: a GPU is this Kubernetes resource, its model a GKE node label.
K8S_GPU_RESOURCE = "nvidia.com/gpu"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"


def kfp_type(artifact_type: str) -> str:
    return KFP_TYPES.get(artifact_type, "Artifact")


def dag_arg(location: str) -> str:
    """The generated call's DAG argument: none for the built-in DAG (so its compiled
    spec does not change), else where the container finds the user's steps."""
    return f", dag_location={location!r}" if location else ""


def pin_params(node: dag.Node) -> list[str]:
    """A step task's pinned inputs: previous-run inputs, resolved values pinned on their
    own (the baseline: `invoke.pinned_parameters`) and, for a step with outside inputs
    (start weights, a warm start, tuned values, external files), EXTERNAL."""
    return [*node.previous, *invoke.pinned_parameters(node),
            *([EXTERNAL] if invoke.reads_outside_inputs(node) else [])]


def component_source(node: dag.Node, params: dict[str, Any], location: str = "") -> str:
    """The Python source of the step's component: a typed signature and one call.
    Inputs wired to an earlier run (`previous`) and the registry baseline arrive as
    references pinned by the resolve task. Only push and the report, which are never
    cached, take the job name (for the model card and the report's title)."""
    spec = node.spec
    signature = ["config_json: str", "context_json: str"]
    names = []
    for param in node.inputs:
        signature.append(f"{param}: Input[{kfp_type(spec.input_type(param))}]")
        names.append(param)
    pins = pin_params(node)
    signature += [f"pin_{p}: str" for p in pins]
    mine = parameters_for((*spec.config, *spec.record), params)
    signature += [f"p_{name}: {param_type(params[name])}" for name in mine]
    if not spec.cache:
        signature.append("run_id: str")
    else:
        signature.append("code: str")      # only in the cache key (pipeline.cache.task_code)
    for output in spec.outputs:
        signature.append(f"{output}: Output[{kfp_type(spec.output_type(output))}]")
        names.append(output)
    extras = node.spec.ui_outputs
    signature += [f"{param}: Output[{kind}]" for param, kind in extras]
    args = ", ".join(f"{p!r}: {p}" for p in names)
    extra_args = ", ".join(f"{p!r}: {p}" for p, _ in extras)
    pin_args = ", ".join(f"{p!r}: pin_{p}" for p in pins)
    overrides = ", ".join(f"{RUNTIME_PARAMETERS[n]!r}: p_{n}" for n in mine)
    run_id = "run_id" if not spec.cache else "''"
    return (f"def {node.name}({', '.join(signature)}) -> bool:\n"
            f"    from pipeline.kfp.entrypoint import run_step\n"
            f"    return run_step({node.name!r}, config_json, context_json, {run_id}, "
            f"{{{args}}}, {{{extra_args}}}, {{{pin_args}}}, {{{overrides}}}"
            f"{', code=code' if spec.shared else ''}{dag_arg(location)})\n")


def make_function(name: str, source: str, namespace: dict[str, Any]):
    """A function from generated source (registered with linecache so KFP can read its
    source back, as it does for a function in a file)."""
    filename = f"<imgpipe-{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # dont_inherit: this module's `from __future__ import annotations` would turn the
    # annotations into strings, which KFP cannot read as types.
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - our own generated code
    return namespace[name]


def make_component(name: str, source: str, image: str):
    from typing import NamedTuple

    from kfp import dsl

    namespace = {k: getattr(dsl, k) for k in ("Input", "Output", "Dataset", "Model", "Artifact",
                                              "Metrics", "ClassificationMetrics", "HTML")}
    namespace["NamedTuple"] = NamedTuple
    return dsl.component(make_function(name, source, namespace), base_image=image,
                         install_kfp_package=False)


def vertex_job(component, config: PipelineConfig, name: str):
    """The component itself, or wrapped as a Vertex AI custom job when the step asks
    for replicas or a TPU topology (google-cloud-pipeline-components; the accelerator
    then goes to the job's machine spec instead of the task)."""
    step = config.kfp.step(name)
    job = step.vertex_job
    if job is None:
        return component
    from google_cloud_pipeline_components.v1.custom_job import \
        create_custom_training_job_from_component

    from components.trainer.distribute import ACCELERATOR_ENV

    accelerator = {"accelerator_type": step.accelerator_type,
                   "accelerator_count": step.accelerator_count} if step.accelerator_type else {}
    env = [{"name": ACCELERATOR_ENV, "value": step.accelerator_type}] \
        if step.accelerator_type else []
    env += [{"name": n, "value": v} for n, v in identity_env(config).items()]
    # The job runs as the pipeline's account (GCPC's default is Vertex AI's Custom Code
    # Service Agent, which cannot read the pipeline root or the registry bucket).
    wrapped = create_custom_training_job_from_component(
        component, display_name=f"{config.name}-{name}", replica_count=job.replica_count,
        machine_type=job.machine_type, service_account=config.kfp.service_account or "",
        env=env or None, **accelerator)
    if job.tpu_topology:
        for pool in wrapped.component_spec.inputs["worker_pool_specs"].default:
            pool["machine_spec"]["tpu_topology"] = job.tpu_topology
    return wrapped


def resource_limits(step, backend: str = VERTEX) -> dict[str, str | None]:
    """The task's CPU and memory limits: on Vertex each configured limit, else its
    request. Vertex AI Pipelines sizes a task's machine from the limits alone and ignores
    requests (its "Specify the machine configuration for a pipeline step" page;
    `set_memory_request` "is not available/applicable for Vertex AI",
    kubeflow/pipelines#8038), so a request without a limit would run on the default
    e2-standard-4. On Kubeflow the pod gets what is configured: a request schedules it,
    and a limit nobody asked for would cap (OOM-kill) a step that bursts past it."""
    if backend == KUBEFLOW:
        return {"cpu": step.cpu_limit, "memory": step.memory_limit}
    return {"cpu": step.cpu_limit or step.cpu_request,
            "memory": step.memory_limit or step.memory_request}


def set_resources(task, step, backend: str = VERTEX) -> None:
    """Limits (what Vertex honours) and the requests that are given (Kubeflow Pipelines
    sets both on the pod)."""
    limits = resource_limits(step, backend)
    if step.cpu_request:
        task.set_cpu_request(step.cpu_request)
    if limits["cpu"]:
        task.set_cpu_limit(limits["cpu"])
    if step.memory_request:
        task.set_memory_request(step.memory_request)
    if limits["memory"]:
        task.set_memory_limit(limits["memory"])


def configure(task, config: PipelineConfig, name: str, cacheable: bool = True):
    step = config.kfp.step(name)
    task.set_display_name(name)
    task.set_caching_options(step.caching and cacheable)
    if step.vertex_job is not None:
        if step.retries:
            task.set_retry(step.retries)
        return task            # resources are the custom job's machine spec
    backend = config.kfp.backend
    set_resources(task, step, backend)
    if step.accelerator_type:
        set_accelerator(task, step, backend)
        # The trainer fails loudly when the TPU or GPU it asked for is not there.
        from components.trainer.distribute import ACCELERATOR_ENV

        task.set_env_variable(ACCELERATOR_ENV, step.accelerator_type)
    if name == RESOLVE:        # which service the package is for (`package_backend`)
        task.set_env_variable(BACKEND_ENV, backend)
    for env_name, value in identity_env(config).items():
        task.set_env_variable(env_name, value)
    if step.retries:
        task.set_retry(step.retries)
    return task


def identity_env(config: PipelineConfig) -> dict[str, str]:
    """With DataflowRunner on Vertex, the account the tasks run as (kfp.service_account),
    for `invoke.beam_for_outputs` to start the Dataflow workers as it. On Kubeflow the
    account is a Kubernetes one, which Dataflow cannot use."""
    account = config.kfp.service_account
    if config.beam.runner != "DataflowRunner" or not account or config.kfp.backend != VERTEX:
        return {}
    return {invoke.SERVICE_ACCOUNT_ENV: account}


def gke_accelerator(accelerator_type: str) -> str:
    """Vertex AI's GPU name as GKE's node label value: NVIDIA_TESLA_T4 -> nvidia-tesla-t4
    (the Compute Engine accelerator type)."""
    return accelerator_type.lower().replace("_", "-")


def set_accelerator(task, step, backend: str) -> None:
    """Vertex AI takes its accelerator names (NVIDIA_TESLA_T4, TPU_V5_LITEPOD). Kubeflow
    Pipelines puts the accelerator type into the pod's resource limits as a Kubernetes
    resource name (its driver: `res.Limits[acceleratorType] = count`), so there the type
    is `nvidia.com/gpu` and the GPU model is a node selector on GKE's accelerator label,
    as kfp-kubernetes' `add_node_selector` writes it (without depending on that package)."""
    if backend != KUBEFLOW:
        task.set_accelerator_type(step.accelerator_type)
        task.set_accelerator_limit(step.accelerator_count)
        return
    task.set_accelerator_type(K8S_GPU_RESOURCE)
    task.set_accelerator_limit(step.accelerator_count)
    kubernetes = task.platform_config.setdefault("kubernetes", {})
    kubernetes.setdefault("nodeSelector", {}).setdefault("labels", {})[GKE_ACCELERATOR_LABEL] = \
        gke_accelerator(step.accelerator_type)
