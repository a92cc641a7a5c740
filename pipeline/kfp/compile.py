"""The DAG of `pipeline/dag.py` as a Kubeflow Pipelines v2 pipeline.

Every step becomes a lightweight KFP component generated from its declared contract
(no second definition of the steps): typed inputs and outputs (`Dataset` for
examples, `Model` for models, `Artifact` for the rest, plus `Metrics` /
`ClassificationMetrics` from the evaluator and an `HTML` report), the config the step
reads as a JSON parameter, and a body that only calls `run_step`
(`pipeline/kfp/entrypoint.py`), which goes through `pipeline/invoke.py` like the local
runner. Components run in `kfp.image` unless a step
names its own (`kfp.steps.STEP.image`); per-step resources, caching and retries come
from `kfp.steps`. A step that consumes the output of a gating step (the push) runs only
under `dsl.If` on each gate (the evaluator's blessing, the infra validator's verdict).
A never-cached resolve task pins, per run, what cached tasks compare with or read from
outside the run (the baseline, the previous statistics, the data source, the schema,
referenced registry versions), so each task's inputs change exactly when its result
should.
"""

from __future__ import annotations

import json
import linecache
import os
from typing import Any, Callable

from pipeline import cache, dag, invoke
from pipeline.config import PipelineConfig
from pipeline.config_kfp import KUBEFLOW, VERTEX
from pipeline.kfp.shared import EXTERNAL, OPTIONAL, RUNTIME_PARAMETERS

# Artifact type -> KFP artifact class name.
KFP_TYPES = {"Examples": "Dataset", "Model": "Model", "PushedModel": "Model"}
# The step outputs the report task shows (checked against the DAG at import).
REPORT_INPUTS = tuple(dag.ref(step, output) for step, output in (
    ("ingest", "statistics"), ("validate", "anomalies"), ("train", "trained_model"),
    ("evaluate", "evaluation"), ("evaluate", "blessing"), ("infra_validate", "infra_blessing")))
RESOLVE = "resolve"
# Set on the resolve task: the kfp.backend the package was compiled for.
BACKEND_ENV = "IMGPIPE_KFP_BACKEND"
# Kubeflow Pipelines: a GPU is this Kubernetes resource, its model a GKE node label.
K8S_GPU_RESOURCE = "nvidia.com/gpu"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"


def kfp_type(artifact_type: str) -> str:
    return KFP_TYPES.get(artifact_type, "Artifact")


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _compiled_in(data: Any) -> tuple[str, ...]:
    """The RUNTIME_PARAMETERS keys a config compiles in instead: data.source when
    data.channels or data.image_size was decided from it (`auto`), since another source
    at run time would keep the shape, and the photo defaults, decided from this one."""
    decided = data.get("decided") if isinstance(data, dict) else None
    return ("data.source",) if decided and decided.get("keys") else ()


def runtime_parameters(config: PipelineConfig) -> dict[str, Any]:
    """The pipeline parameters with this config's values: every key in
    RUNTIME_PARAMETERS that the config sets (an unset threshold is not a parameter),
    but data.source when the data's shape was decided from it (`_compiled_in`)."""
    tree = config.to_dict()
    out = {}
    for name, key in RUNTIME_PARAMETERS.items():
        if key in _compiled_in(tree["data"]):
            continue
        value = _get(tree, key)
        if key == "data.spans":
            from components.data import spans

            if not spans.has_pattern(config.data.source):      # a plain source: no window
                continue
            value = json.dumps("latest" if value is None else value, sort_keys=True)
        if value is None and key in OPTIONAL:
            value = ""
        if value is not None:
            out[name] = value
    return out


def without_runtime_keys(step_cfg: dict[str, Any]) -> dict[str, Any]:
    """A step's compiled config without the keys that arrive as pipeline parameters:
    two compiles that differ only in such a key give identical task specs."""
    out = json.loads(json.dumps(step_cfg))
    fixed = _compiled_in(out.get("data") or out.get(invoke.RECORD, {}).get("data"))
    for key in RUNTIME_PARAMETERS.values():
        if key in fixed:
            continue
        section, *path = key.split(".")
        for tree in (out.get(section), out.get(invoke.RECORD, {}).get(section)):
            for part in path[:-1]:
                tree = tree.get(part) if isinstance(tree, dict) else None
            if isinstance(tree, dict):
                tree.pop(path[-1], None)
    return out


def _parameters_for(sections: tuple[str, ...], available: dict[str, Any]) -> list[str]:
    return [name for name in available
            if RUNTIME_PARAMETERS[name].split(".")[0] in sections]


def _param_type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float"}.get(type(value), "str")


def _dag_arg(location: str) -> str:
    """The generated call's DAG argument: none for the built-in DAG (so its compiled
    spec does not change), else where the container finds the user's steps."""
    return f", dag_location={location!r}" if location else ""


def _component_source(node: dag.Node, params: dict[str, Any], location: str = "") -> str:
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
    pins = _pin_params(node)
    signature += [f"pin_{p}: str" for p in pins]
    mine = _parameters_for((*spec.config, *spec.record), params)
    signature += [f"p_{name}: {_param_type(params[name])}" for name in mine]
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
            f"{', code=code' if spec.shared else ''}{_dag_arg(location)})\n")


def _resolve_source(params: dict[str, Any], location: str = "",
                    config: PipelineConfig | None = None) -> str:
    """The resolve task (never cached): pins what this run compares with and what its
    steps read from outside the run, so that the inputs of each task change exactly
    when its result should: the baseline version (evaluate), the previous statistics
    (validate), and for the steps that read outside inputs (`invoke.reads_outside_inputs`:
    ingest, validate, tune, train) the registry versions their references name and a
    fingerprint of their external files. It takes those steps' configs and run-time
    parameters (it is never cached, so they cost no cache hits)."""
    outputs = ", ".join(f"({name!r}, str)" for name in _pins(location, config))
    alias = "p_baseline_alias" if "baseline_alias" in params else "''"
    mine = _resolve_parameters(params, location, config)
    scheduled = "data_spans" in params
    signature = ", ".join(["context_json: str", "configs_json: str"]
                          + [f"p_{name}: {_param_type(params[name])}" for name in mine]
                          + (["schedule_time: str"] if scheduled else []))
    overrides = ", ".join(f"{RUNTIME_PARAMETERS[n]!r}: p_{n}" for n in mine
                          if n != "baseline_alias")
    return (f"def {RESOLVE}({signature}) -> NamedTuple('Pins', [{outputs}]):\n"
            f"    from pipeline.kfp.entrypoint import resolve_pins\n"
            f"    return resolve_pins(context_json, {alias}, configs_json, {{{overrides}}}"
            f"{_dag_arg(location)}{', schedule_time=schedule_time' if scheduled else ''})\n")


def _steps(location: str = "", config: PipelineConfig | None = None) -> tuple[dag.Node, ...]:
    """The DAG's steps; with a config, those a run of it has (`dag.active`: an optional
    step it does not configure is no task, no pin, no component)."""
    steps = dag.load(location)
    return steps if config is None else dag.active(steps, config)


def _outside_readers(location: str = "", config: PipelineConfig | None = None
                     ) -> list[dag.Node]:
    return [node for node in _steps(location, config) if invoke.reads_outside_inputs(node)]


def _resolve_parameters(params: dict[str, Any], location: str = "",
                        config: PipelineConfig | None = None) -> list[str]:
    """The run-time parameters the resolve task takes: the baseline alias, and those of
    the sections the steps with outside inputs read."""
    sections = {s for node in _outside_readers(location, config) for s in node.spec.config}
    return [name for name in params
            if name == "baseline_alias" or RUNTIME_PARAMETERS[name].split(".")[0] in sections]


def resolve_configs(config: PipelineConfig, location: str = "") -> str:
    """The resolve task's `configs_json`: the compiled config of each step with outside
    inputs (without the run-time keys, which arrive as parameters)."""
    return json.dumps({node.name: without_runtime_keys(invoke.step_config(node, config))
                       for node in _outside_readers(location, config)}, sort_keys=True)


def _pin_params(node: dag.Node) -> list[str]:
    """A step task's pinned inputs: previous-run inputs, resolved values pinned on their
    own (the baseline: `invoke.pinned_parameters`) and, for a step with outside inputs
    (start weights, a warm start, tuned values, external files), EXTERNAL."""
    return [*node.previous, *invoke.pinned_parameters(node),
            *([EXTERNAL] if invoke.reads_outside_inputs(node) else [])]


def _pins(location: str = "", config: PipelineConfig | None = None) -> list[str]:
    """Output names of the resolve task: `STEP__PIN` for each pinned input of each step."""
    return [f"{node.name}__{param}" for node in _steps(location, config)
            for param in _pin_params(node)]


def _report_source(params: dict[str, Any], location: str = "") -> str:
    """The report task: the run's artifacts, and the config the model card records
    (`config_json`, with the run-time parameters of its sections applied)."""
    inputs = ", ".join(f"{ref.output}: Input[{kfp_type(ref.type)}]" for ref in REPORT_INPUTS)
    mapping = ", ".join(f"{str(ref)!r}: {ref.output}" for ref in REPORT_INPUTS)
    mine = _report_parameters(params, location)
    values = "".join(f"p_{name}: {_param_type(params[name])}, " for name in mine)
    overrides = ", ".join(f"{RUNTIME_PARAMETERS[n]!r}: p_{n}" for n in mine)
    return (f"def report(context_json: str, config_json: str, run_id: str, {values}{inputs}, "
            f"report: Output[HTML]):\n"
            f"    from pipeline.kfp.entrypoint import write_report\n"
            f"    write_report(context_json, run_id, {{{mapping}}}, report, config_json, "
            f"{{{overrides}}}{_dag_arg(location)})\n")


def _report_parameters(params: dict[str, Any], location: str = "") -> list[str]:
    recorded = {s for node in dag.load(location) for s in node.spec.record}
    return _parameters_for(tuple(recorded), params)


def report_config(config: PipelineConfig, location: str = "") -> str:
    """The report task's `config_json`: the recorded sections, without the run-time
    keys (they arrive as parameters)."""
    recorded = invoke.recorded_config(config, dag.load(location))
    return json.dumps(without_runtime_keys({invoke.RECORD: recorded}), sort_keys=True)


def _make_function(name: str, source: str, namespace: dict[str, Any]):
    """A function from generated source (registered with linecache so KFP can read its
    source back, as it does for a function in a file)."""
    filename = f"<imgpipe-{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # dont_inherit: this module's `from __future__ import annotations` would turn the
    # annotations into strings, which KFP cannot read as types.
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - our own generated code
    return namespace[name]


def _make_component(name: str, source: str, image: str):
    from typing import NamedTuple

    from kfp import dsl

    namespace = {k: getattr(dsl, k) for k in ("Input", "Output", "Dataset", "Model", "Artifact",
                                              "Metrics", "ClassificationMetrics", "HTML")}
    namespace["NamedTuple"] = NamedTuple
    return dsl.component(_make_function(name, source, namespace), base_image=image,
                         install_kfp_package=False)


def components(config: PipelineConfig, location: str = "") -> dict[str, Any]:
    params = runtime_parameters(config)
    comps = {node.name: _make_component(node.name, _component_source(node, params, location),
                                        config.kfp.image_for(node.name))
             for node in _steps(location, config)}
    comps["report"] = _make_component("report", _report_source(params, location),
                                      config.kfp.image_for("report"))
    comps[RESOLVE] = _make_component(RESOLVE, _resolve_source(params, location, config),
                                     config.kfp.image_for(RESOLVE))
    return comps


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
    env += [{"name": n, "value": v} for n, v in _identity_env(config).items()]
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


def _set_resources(task, step, backend: str = VERTEX) -> None:
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


def _configure(task, config: PipelineConfig, name: str, cacheable: bool = True):
    step = config.kfp.step(name)
    task.set_display_name(name)
    task.set_caching_options(step.caching and cacheable)
    if step.vertex_job is not None:
        if step.retries:
            task.set_retry(step.retries)
        return task            # resources are the custom job's machine spec
    backend = config.kfp.backend
    _set_resources(task, step, backend)
    if step.accelerator_type:
        _set_accelerator(task, step, backend)
        # The trainer fails loudly when the TPU or GPU it asked for is not there.
        from components.trainer.distribute import ACCELERATOR_ENV

        task.set_env_variable(ACCELERATOR_ENV, step.accelerator_type)
    if name == RESOLVE:        # which service the package is for (`package_backend`)
        task.set_env_variable(BACKEND_ENV, backend)
    for env_name, value in _identity_env(config).items():
        task.set_env_variable(env_name, value)
    if step.retries:
        task.set_retry(step.retries)
    return task


def _identity_env(config: PipelineConfig) -> dict[str, str]:
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


def _set_accelerator(task, step, backend: str) -> None:
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


def package_backend(package: str) -> str | None:
    """The kfp.backend a package was compiled for (the resolve task's BACKEND_ENV); None
    when it does not say (a template on a web address, or compiled before it was
    recorded)."""
    import yaml

    if package.startswith(("https://", "http://")):
        return None
    from components.io import fileio

    try:
        spec = next(yaml.safe_load_all(fileio.read_text(package)))
        env = spec["deploymentSpec"]["executors"][f"exec-{RESOLVE}"]["container"].get("env", [])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, StopIteration):
        return None
    return next((item.get("value") for item in env if item.get("name") == BACKEND_ENV), None)


def gates_of(node: dag.Node, steps: tuple[dag.Node, ...] = dag.STEPS) -> list[str]:
    """The gating steps whose outputs `node` consumes, directly or through others: it
    runs only when each of their gates passed (the push: blessed and served)."""
    found: list[str] = []
    frontier = [ref.split(".")[0] for ref in node.inputs.values()] + list(node.after)
    seen: set[str] = set()
    while frontier:
        name = frontier.pop(0)
        if name in seen:
            continue
        seen.add(name)
        upstream = dag.get(name, steps)
        if upstream.spec.gate is not None:
            found.append(name)
        frontier.extend(ref.split(".")[0] for ref in upstream.inputs.values())
        frontier.extend(upstream.after)
    return [n.name for n in steps if n.name in found]


def build_pipeline(config: PipelineConfig, location: str = "", scheduled: bool = True,
                   schedule_time: str = "") -> Callable:
    """The `@dsl.pipeline` function for this config: typed parameters (RUNTIME_PARAMETERS,
    defaults from the config), one task per step with only the config it reads, a
    resolve task pinning the baseline and the previous statistics, the push under the
    gates, and the report. `location`: a user's DAG (`dag.load`), '' for the built-in.
    `scheduled`: False for kfp.local, which has no schedules (nor their placeholder):
    the resolve task then places a scheduled window at `schedule_time` (ISO 8601, as a
    schedule passes it; `imgpipe run --schedule-time`), else at the time it runs."""
    from kfp import dsl

    check_step_names(config, dag.load(location))
    steps = _steps(location, config)
    comps = components(config, location)
    context = invoke.Context.from_config(config).to_json()
    params = runtime_parameters(config)

    def assemble(values: dict[str, Any]) -> None:
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        resolve_args = {f"p_{name}": values[name]
                        for name in _resolve_parameters(params, location, config)}
        if "data_spans" in params:      # only the resolve task sees the schedule time
            resolve_args["schedule_time"] = \
                dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if scheduled else schedule_time
        pins = _configure(comps[RESOLVE](context_json=context,
                                         configs_json=resolve_configs(config, location),
                                         **resolve_args), config, RESOLVE, cacheable=False)
        tasks: dict[str, Any] = {}

        def add(node: dag.Node):
            step_cfg = invoke.step_config(node, config)
            kwargs = {param: tasks[ref.split(".")[0]].outputs[ref.split(".")[1]]
                      for param, ref in node.inputs.items()}
            kwargs.update({f"pin_{p}": pins.outputs[f"{node.name}__{p}"]
                           for p in _pin_params(node)})
            kwargs.update({f"p_{n}": values[n]
                           for n in _parameters_for((*node.spec.config, *node.spec.record),
                                                    params)})
            if not node.spec.cache:
                kwargs["run_id"] = run_id
            else:
                kwargs["code"] = cache.task_code(node.spec.module)
            component = vertex_job(comps[node.name], config, node.name)
            task = component(
                config_json=json.dumps(without_runtime_keys(step_cfg), sort_keys=True),
                # a Shared folder lives beside the registry the context names
                context_json=context if invoke.needs_context(node, step_cfg)
                or node.spec.shared else "",
                **kwargs)
            for name in node.after:       # an order (and a stop), not an input
                task.after(tasks[name])
            tasks[node.name] = _configure(task, config, node.name, node.spec.cache)

        def add_gated(nodes: list[dag.Node], gates: list[str]):
            if not gates:
                for node in nodes:
                    add(node)
                return
            gate = gates[0]
            with dsl.If(tasks[gate].outputs["Output"] == True,  # noqa: E712
                        name=f"{gate.replace('_', '-')}-passed"):
                add_gated(nodes, gates[1:])

        # Consecutive steps under the same gates share one dsl.If context: KFP refuses a
        # task that reads an output of a task inside another If (infer after push).
        groups: list[tuple[list[str], list[dag.Node]]] = []
        for node in steps:
            gates = gates_of(node, steps)
            if groups and groups[-1][0] == gates:
                groups[-1][1].append(node)
            else:
                groups.append((gates, [node]))
        for gates, nodes in groups:
            add_gated(nodes, gates)
        _configure(comps["report"](
            context_json=context, config_json=report_config(config, location), run_id=run_id,
            **{f"p_{name}": values[name] for name in _report_parameters(params, location)},
            **{ref.output: tasks[ref.step].outputs[ref.output] for ref in REPORT_INPUTS}),
        config, "report", cacheable=False)

    signature = ", ".join(f"{name}: {_param_type(value)} = {value!r}"
                          for name, value in params.items())
    source = (f"def pipeline({signature}):\n"
              f"    assemble({{{', '.join(f'{n!r}: {n}' for n in params)}}})\n")
    fn = _make_function("pipeline", source, {"assemble": assemble})
    return dsl.pipeline(name=config.name, description=f"imgpipe: {config.name} "
                        f"({config.model.kind} on {config.data.source})")(fn)


def check_step_names(config: PipelineConfig, steps: tuple[dag.Node, ...]) -> None:
    """Every kfp.steps key names a task of this pipeline (its DAG's steps, the report
    and resolve): a misspelt one would compile with its resources silently unused."""
    from components.errors import ConfigError
    from pipeline.config_kfp import DEFAULT_KFP_STEPS

    tasks = [node.name for node in steps] + ["report", RESOLVE]
    known = set(tasks) | set(DEFAULT_KFP_STEPS)     # a default for a step a DAG leaves out
    unknown = sorted(set(config.kfp.steps) - known)
    if unknown:
        raise ConfigError(f"kfp.steps.{unknown[0]}: this pipeline has no step "
                          f"{unknown[0]!r}; its steps are {', '.join(tasks)}. Fix the name "
                          "or remove it.")


def package_parameters(package: str) -> set[str] | None:
    """The run-time parameters a compiled pipeline declares (its root's inputs); None
    for a template on a web address (Vertex's Artifact Registry), not read here."""
    import yaml

    if package.startswith(("https://", "http://")):
        return None

    from components.io import fileio
    from components.errors import ConfigError

    try:
        spec = next(yaml.safe_load_all(fileio.read_text(package)))   # then a platform spec
        return set(spec["root"].get("inputDefinitions", {}).get("parameters", {}))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError,
            AttributeError, StopIteration) as exc:
        raise ConfigError(f"--package {package!r} is not a readable compiled pipeline "
                          f"({type(exc).__name__}); compile one with `imgpipe compile`.") from exc


def compile_pipeline(config: PipelineConfig, output: str, location: str = "") -> str:
    from kfp import compiler

    from components.io import fileio

    fileio.prepare_output(output, "-o")
    partial = f"{output}.partial-{os.getpid()}.yaml"
    try:
        compiler.Compiler().compile(build_pipeline(config, location), partial)
        os.replace(partial, output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return output
