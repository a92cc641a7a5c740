"""The DAG of `pipeline/dag.py` as a Kubeflow Pipelines v2 pipeline.

Every step becomes a lightweight KFP component generated from its declared contract
(no second definition of the steps): typed inputs and outputs (`Dataset` for
examples, `Model` for models, `Artifact` for the rest, plus `Metrics` /
`ClassificationMetrics` from the evaluator and an `HTML` report), the config the step
reads as a JSON parameter, and a body that only calls `run_step`, which goes through
`pipeline/invoke.py` like the local runner. Components run in `kfp.image` unless a step
names its own (`kfp.steps.STEP.image`); per-step resources, caching and retries come
from `kfp.steps`. A step that consumes the output of a gating step (the push) runs only
under `dsl.If` on each gate (the evaluator's blessing, the infra validator's verdict).
A never-cached resolve task pins, per run, what cached tasks compare with or read from
outside the run (the baseline, the previous statistics, the data source, the schema,
referenced registry versions), so each task's inputs change exactly when its result
should.
"""

from __future__ import annotations


import contextlib
import json
import linecache
import os
import re
from types import SimpleNamespace
from typing import Any, Callable, Iterator

from components import runtime
from pipeline import dag, invoke
from pipeline.config import PipelineConfig
from pipeline.results import StepResult, detail_line, step_line

# Artifact type -> KFP artifact class name.
KFP_TYPES = {"Examples": "Dataset", "Model": "Model", "PushedModel": "Model"}
# Extra KFP outputs for the pipeline UI: step -> (parameter, KFP type).
UI_OUTPUTS = {"evaluate": (("metrics", "Metrics"), ("confusion", "ClassificationMetrics"))}
# What the run report shows, as "step.output".
REPORT_INPUTS = ("ingest.statistics", "validate.anomalies", "train.trained_model",
                 "evaluate.evaluation", "evaluate.blessing", "infra_validate.infra_blessing")
# Pipeline parameters a schedule can change without recompiling: name -> config key.
# Each task receives those of the sections it reads (`invoke.step_config`).
RUNTIME_PARAMETERS = {
    "data_source": "data.source",
    "train_epochs": "train.epochs",
    "train_batch_size": "train.batch_size",
    "learning_rate": "train.optimizer.learning_rate",
    "model_kind": "model.kind",
    "accuracy_min": "evaluate.thresholds.accuracy.min",
    "accuracy_max_drop": "evaluate.thresholds.accuracy.max_drop",
    "promote_to": "push.promote_to",
    "baseline_alias": "push.baseline_alias",
}
# Optional keys: '' / an absent threshold mean "not set".
_OPTIONAL = ("push.promote_to",)
RESOLVE = "resolve"
# The pin of what a step reads from outside the run (invoke.pin_outside_inputs).
EXTERNAL = "external"
# Folders of this repository that deploy/Dockerfile copies into the image.
IMAGE_FOLDERS = ("schemas/", "configs/")
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kfp_type(artifact_type: str) -> str:
    return KFP_TYPES.get(artifact_type, "Artifact")


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def runtime_parameters(config: PipelineConfig) -> dict[str, Any]:
    """The pipeline parameters with this config's values: every key in
    RUNTIME_PARAMETERS that the config sets (an unset threshold is not a parameter)."""
    tree = config.to_dict()
    out = {}
    for name, key in RUNTIME_PARAMETERS.items():
        value = _get(tree, key)
        if value is None and key in _OPTIONAL:
            value = ""
        if value is not None:
            out[name] = value
    return out


def _parameters_for(sections: tuple[str, ...], available: dict[str, Any]) -> list[str]:
    return [name for name in available
            if RUNTIME_PARAMETERS[name].split(".")[0] in sections]


def _param_type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float"}.get(type(value), "str")


def _component_source(node: dag.Node, params: dict[str, Any]) -> str:
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
    for output in spec.outputs:
        signature.append(f"{output}: Output[{kfp_type(spec.output_type(output))}]")
        names.append(output)
    extras = UI_OUTPUTS.get(node.name, ())
    signature += [f"{param}: Output[{kind}]" for param, kind in extras]
    args = ", ".join(f"{p!r}: {p}" for p in names)
    extra_args = ", ".join(f"{p!r}: {p}" for p, _ in extras)
    pin_args = ", ".join(f"{p!r}: pin_{p}" for p in pins)
    overrides = ", ".join(f"{RUNTIME_PARAMETERS[n]!r}: p_{n}" for n in mine)
    run_id = "run_id" if not spec.cache else "''"
    return (f"def {node.name}({', '.join(signature)}) -> bool:\n"
            f"    from pipeline.kfp import run_step\n"
            f"    return run_step({node.name!r}, config_json, context_json, {run_id}, "
            f"{{{args}}}, {{{extra_args}}}, {{{pin_args}}}, {{{overrides}}})\n")


def _resolve_source(params: dict[str, Any]) -> str:
    """The resolve task (never cached): pins what this run compares with and what its
    steps read from outside the run, so that the inputs of each task change exactly
    when its result should: the baseline version (evaluate), the previous statistics
    (validate), and for the steps that read outside inputs (`invoke.reads_outside_inputs`:
    ingest, validate, tune, train) the registry versions their references name and a
    fingerprint of their external files. It takes those steps' configs and run-time
    parameters (it is never cached, so they cost no cache hits)."""
    outputs = ", ".join(f"({name!r}, str)" for name in _pins())
    alias = "p_baseline_alias" if "baseline_alias" in params else "''"
    mine = _resolve_parameters(params)
    signature = ", ".join(["context_json: str", "configs_json: str"]
                          + [f"p_{name}: {_param_type(params[name])}" for name in mine])
    overrides = ", ".join(f"{RUNTIME_PARAMETERS[n]!r}: p_{n}" for n in mine
                          if n != "baseline_alias")
    return (f"def {RESOLVE}({signature}) -> NamedTuple('Pins', [{outputs}]):\n"
            f"    from pipeline.kfp import resolve_pins\n"
            f"    return resolve_pins(context_json, {alias}, configs_json, {{{overrides}}})\n")


def _outside_readers() -> list[dag.Node]:
    return [node for node in dag.STEPS if invoke.reads_outside_inputs(node)]


def _resolve_parameters(params: dict[str, Any]) -> list[str]:
    """The run-time parameters the resolve task takes: the baseline alias, and those of
    the sections the steps with outside inputs read."""
    sections = {s for node in _outside_readers() for s in node.spec.config}
    return [name for name in params
            if name == "baseline_alias" or RUNTIME_PARAMETERS[name].split(".")[0] in sections]


def resolve_configs(config: PipelineConfig) -> str:
    """The resolve task's `configs_json`: the compiled config of each step with outside
    inputs (without the run-time keys, which arrive as parameters)."""
    return json.dumps({node.name: without_runtime_keys(invoke.step_config(node, config))
                       for node in _outside_readers()}, sort_keys=True)


def _pin_params(node: dag.Node) -> list[str]:
    """A step task's pinned inputs: previous-run inputs, resolved values (the baseline)
    and, for a step with outside inputs, EXTERNAL."""
    return [*node.previous, *node.spec.resolved,
            *([EXTERNAL] if invoke.reads_outside_inputs(node) else [])]


def _pins() -> list[str]:
    """Output names of the resolve task: `STEP__PIN` for each pinned input of each step."""
    return [f"{node.name}__{param}" for node in dag.STEPS for param in _pin_params(node)]


def _report_source(params: dict[str, Any]) -> str:
    """The report task: the run's artifacts, and the config the model card records
    (`config_json`, with the run-time parameters of its sections applied)."""
    inputs = ", ".join(f"{ref.split('.')[1]}: Input[{kfp_type(_output_type(ref))}]"
                       for ref in REPORT_INPUTS)
    mapping = ", ".join(f"{ref!r}: {ref.split('.')[1]}" for ref in REPORT_INPUTS)
    mine = _report_parameters(params)
    values = "".join(f"p_{name}: {_param_type(params[name])}, " for name in mine)
    overrides = ", ".join(f"{RUNTIME_PARAMETERS[n]!r}: p_{n}" for n in mine)
    return (f"def report(context_json: str, config_json: str, run_id: str, {values}{inputs}, "
            f"report: Output[HTML]):\n"
            f"    from pipeline.kfp import write_report\n"
            f"    write_report(context_json, run_id, {{{mapping}}}, report, config_json, "
            f"{{{overrides}}})\n")


def _report_parameters(params: dict[str, Any]) -> list[str]:
    recorded = {s for node in dag.STEPS for s in node.spec.record}
    return _parameters_for(tuple(recorded), params)


def report_config(config: PipelineConfig) -> str:
    """The report task's `config_json`: the recorded sections, without the run-time
    keys (they arrive as parameters)."""
    return json.dumps(without_runtime_keys({invoke.RECORD: invoke.recorded_config(config)}),
                      sort_keys=True)


def _output_type(ref: str) -> str:
    step, output = ref.split(".")
    return dag.get(step).spec.output_type(output)


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


def components(config: PipelineConfig) -> dict[str, Any]:
    params = runtime_parameters(config)
    comps = {node.name: _make_component(node.name, _component_source(node, params),
                                        config.kfp.image_for(node.name))
             for node in dag.STEPS}
    comps["report"] = _make_component("report", _report_source(params),
                                      config.kfp.image_for("report"))
    comps[RESOLVE] = _make_component(RESOLVE, _resolve_source(params),
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

    from components.training import ACCELERATOR_ENV

    accelerator = {"accelerator_type": step.accelerator_type,
                   "accelerator_count": step.accelerator_count} if step.accelerator_type else {}
    wrapped = create_custom_training_job_from_component(
        component, display_name=f"{config.name}-{name}", replica_count=job.replica_count,
        machine_type=job.machine_type,
        env=[{"name": ACCELERATOR_ENV, "value": step.accelerator_type}]
        if step.accelerator_type else None, **accelerator)
    if job.tpu_topology:
        for pool in wrapped.component_spec.inputs["worker_pool_specs"].default:
            pool["machine_spec"]["tpu_topology"] = job.tpu_topology
    return wrapped


def _configure(task, config: PipelineConfig, name: str, cacheable: bool = True):
    step = config.kfp.step(name)
    task.set_display_name(name)
    task.set_caching_options(step.caching and cacheable)
    if step.vertex_job is not None:
        if step.retries:
            task.set_retry(step.retries)
        return task            # resources are the custom job's machine spec
    if step.cpu_request:
        task.set_cpu_request(step.cpu_request)
    if step.cpu_limit:
        task.set_cpu_limit(step.cpu_limit)
    if step.memory_request:
        task.set_memory_request(step.memory_request)
    if step.memory_limit:
        task.set_memory_limit(step.memory_limit)
    if step.accelerator_type:
        task.set_accelerator_type(step.accelerator_type)
        task.set_accelerator_limit(step.accelerator_count)
        # The trainer fails loudly when the TPU it was given does not resolve.
        from components.training import ACCELERATOR_ENV

        task.set_env_variable(ACCELERATOR_ENV, step.accelerator_type)
    if step.retries:
        task.set_retry(step.retries)
    return task


def gates_of(node: dag.Node, steps: tuple[dag.Node, ...] = dag.STEPS) -> list[str]:
    """The gating steps whose outputs `node` consumes, directly or through others: it
    runs only when each of their gates passed (the push: blessed and served)."""
    found: list[str] = []
    frontier = [ref.split(".")[0] for ref in node.inputs.values()]
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
    return [n.name for n in steps if n.name in found]


def build_pipeline(config: PipelineConfig) -> Callable:
    """The `@dsl.pipeline` function for this config: typed parameters (RUNTIME_PARAMETERS,
    defaults from the config), one task per step with only the config it reads, a
    resolve task pinning the baseline and the previous statistics, the push under the
    gates, and the report."""
    from kfp import dsl

    comps = components(config)
    context = invoke.Context.from_config(config).to_json()
    params = runtime_parameters(config)

    def assemble(values: dict[str, Any]) -> None:
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        resolve_args = {f"p_{name}": values[name] for name in _resolve_parameters(params)}
        pins = _configure(comps[RESOLVE](context_json=context,
                                         configs_json=resolve_configs(config),
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
            component = vertex_job(comps[node.name], config, node.name)
            task = component(
                config_json=json.dumps(without_runtime_keys(step_cfg), sort_keys=True),
                context_json=context if invoke.needs_context(node, step_cfg) else "",
                **kwargs)
            tasks[node.name] = _configure(task, config, node.name, node.spec.cache)

        def add_gated(node: dag.Node, gates: list[str]):
            if not gates:
                add(node)
                return
            gate = gates[0]
            with dsl.If(tasks[gate].outputs["Output"] == True,  # noqa: E712
                        name=f"{gate.replace('_', '-')}-passed"):
                add_gated(node, gates[1:])

        for node in dag.STEPS:
            add_gated(node, gates_of(node))
        _configure(comps["report"](
            context_json=context, config_json=report_config(config), run_id=run_id,
            **{f"p_{name}": values[name] for name in _report_parameters(params)},
            **{ref.split(".")[1]: tasks[ref.split(".")[0]].outputs[ref.split(".")[1]]
               for ref in REPORT_INPUTS}), config, "report", cacheable=False)

    signature = ", ".join(f"{name}: {_param_type(value)} = {value!r}"
                          for name, value in params.items())
    source = (f"def pipeline({signature}):\n"
              f"    assemble({{{', '.join(f'{n!r}: {n}' for n in params)}}})\n")
    fn = _make_function("pipeline", source, {"assemble": assemble})
    return dsl.pipeline(name=config.name, description=f"imgpipe: {config.name} "
                        f"({config.model.kind} on {config.data.source})")(fn)


def _in_image_folders(path: str) -> bool:
    """Whether a relative path under IMAGE_FOLDERS names a file that the image will hold:
    one in this project (deploy/Dockerfile builds from its root), or in the current
    folder (compiling from a checkout of the project)."""
    return any(os.path.isfile(os.path.join(base, path)) for base in (PROJECT_ROOT, os.getcwd()))


def _in_bucket(path: str | None) -> bool:
    """gs:// (or another object store), or Vertex's /gcs/ mount of the buckets."""
    return bool(path) and ("://" in path or path.startswith("/gcs/"))


def check_remote(config: PipelineConfig) -> None:
    """What a compiled pipeline cannot reach from its containers: paths on this
    machine. One ConfigError naming the key and the fix."""
    from components.config import BUILTIN_PREFIX
    from components.errors import ConfigError
    from components.registry import is_reference

    source = config.data.source
    if not (source.startswith(BUILTIN_PREFIX) or _in_bucket(source)):
        raise ConfigError(f"data.source {source!r} is a path on this machine, which the "
                          "pipeline's containers cannot read; copy the data to a bucket and "
                          "use gs://BUCKET/... (or a built-in dataset).")
    if not _in_bucket(config.push.destination):
        raise ConfigError(f"push.destination {config.push.destination!r} would be lost with "
                          "each container (and every run would find no baseline); use "
                          "gs://BUCKET/serving.")
    schema = config.validate_.schema_path
    if schema and not _in_bucket(schema) and (os.path.isabs(schema) or not any(
            schema.startswith(folder) for folder in IMAGE_FOLDERS)):
        raise ConfigError(f"validate.schema {schema!r} is not in the image (it holds "
                          f"{', '.join(IMAGE_FOLDERS)} of this repository) nor in a bucket; "
                          "commit it under schemas/ or copy it to gs://.")
    if schema and not _in_bucket(schema) and not _in_image_folders(schema):
        raise ConfigError(f"validate.schema {schema!r} does not exist in this project (the "
                          f"image copies {', '.join(IMAGE_FOLDERS)} from {PROJECT_ROOT}); fix "
                          "the path or add the file there before building the image.")
    if config.push.vertex is not None:
        from components import vertex

        vertex.serving_image(config.push.vertex.serving_image, config.push.vertex.project,
                             config.push.vertex.region)
    weights = config.model.weights
    if weights and weights != "imagenet" and not is_reference(weights) and \
            not _in_bucket(weights):
        raise ConfigError(f"model.weights {weights!r} is not reachable from the pipeline "
                          "(run:ID needs the local metadata store, a file must be in a "
                          "bucket); use a pushed model (NAME@ALIAS) or gs://.")


def package_parameters(package: str) -> set[str] | None:
    """The run-time parameters a compiled pipeline declares (its root's inputs); None
    for a template on a web address (Vertex's Artifact Registry), not read here."""
    import yaml

    if package.startswith(("https://", "http://")):
        return None

    from components import fileio
    from components.errors import ConfigError

    try:
        spec = yaml.safe_load(fileio.read_text(package))
        return set(spec["root"].get("inputDefinitions", {}).get("parameters", {}))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError,
            AttributeError) as exc:
        raise ConfigError(f"--package {package!r} is not a readable compiled pipeline "
                          f"({type(exc).__name__}); compile one with `imgpipe compile`.") from exc


def compile_pipeline(config: PipelineConfig, output: str) -> str:
    from kfp import compiler

    from components import fileio

    fileio.prepare_output(output, "-o")
    partial = f"{output}.partial-{os.getpid()}.yaml"
    try:
        compiler.Compiler().compile(build_pipeline(config), partial)
        os.replace(partial, output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return output


# --- inside a component ------------------------------------------------------------


def _location(artifact: Any) -> str:
    """Where a KFP artifact lives for our steps: its gs:// URI on Vertex / KFP on GCP
    (Beam workers on Dataflow see no /gcs/ mount; our artifacts write the manifest last
    there), its local path under kfp.local."""
    uri = getattr(artifact, "uri", "") or ""
    return uri if "://" in uri and not uri.startswith("file://") else artifact.path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _exit_without_teardown() -> None:
    """TensorFlow, TFT and pyarrow can segfault while the interpreter tears down their
    native state, which would fail a finished task (exit 139). The KFP executor writes
    its outputs before exiting, so at exit leave at once, with 1 if an exception
    escaped and 0 otherwise."""
    import atexit
    import sys

    failed = []
    previous_hook = sys.excepthook

    def hook(*exc_info):
        failed.append(True)
        previous_hook(*exc_info)

    def leave():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if failed else 0)

    sys.excepthook = hook
    atexit.register(leave)


def _leave_as_replica() -> None:
    """A non-chief replica leaves before the KFP executor writes the task's output
    metadata: every replica shares that file, and only the chief's is the task's."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_step(name: str, config_json: str, context_json: str, run_id: str,
             artifacts_in: dict[str, Any], extras: dict[str, Any], pins: dict[str, str],
             overrides: dict[str, Any]) -> bool:
    """The body of every step component: run-time parameters into the step's config,
    KFP artifacts -> our artifacts (pinned references for previous-run inputs and the
    baseline), the step through `pipeline.invoke`, properties back onto the KFP
    artifacts' metadata. Returns the step's gate value (True for steps without one)."""
    from components import artifacts, fileio
    from components.training import is_chief_task

    _exit_without_teardown()
    node = dag.get(name)
    step_cfg = apply_overrides(json.loads(config_json), overrides)
    if pins.get(EXTERNAL):
        # the registry versions the resolve task found, not the aliases again
        step_cfg = invoke.apply_pinned_refs(step_cfg, json.loads(pins[EXTERNAL]))
    context = invoke.Context.from_json(context_json) if context_json else None
    resolved = invoke.resolve(node, step_cfg, context,
                              pinned={p: pins[p] for p in node.spec.resolved})
    inputs = {p: artifacts.read(_location(artifacts_in[p]), node.spec.input_type(p))
              for p in node.inputs}
    for param in node.previous:
        inputs[param] = (artifacts.read(pins[param], node.spec.input_type(param))
                         if pins.get(param) and artifacts.is_committed(pins[param]) else None)
    outputs = {o: _location(artifacts_in[o]) for o in node.spec.outputs}
    # One replica of a multi-replica Vertex job (TF_CONFIG) is the chief, which writes the
    # outputs; the others share the same output URIs and only train in step with it.
    chief = is_chief_task()
    if chief:
        for path in outputs.values():
            # A retried task writes to the same URIs as the attempt that failed: start clean.
            fileio.rmtree(path)
    producer = {"run_id": run_id or None, "step": name, "engine": "kfp",
                "pipeline": context.pipeline if context else None}
    summary = invoke.call(node, resolved, inputs, outputs, producer) or {}
    for line in summary.get("lines", []):
        print(f"{name}: {line}")
    if not chief:
        _leave_as_replica()
        return True
    for output in node.spec.outputs:
        written = artifacts.read(outputs[output])
        # KFP knows these as Dataset / Model / Artifact; the metadata names the TFX type.
        artifacts_in[output].metadata.update(_jsonable(written.properties),
                                             artifact_type=written.type)
    if name in UI_OUTPUTS:        # the run page's metrics, from the step's Evaluation
        _log_ui_metrics(outputs["evaluation"], extras)
    return invoke.gate_value(node, summary)


def without_runtime_keys(step_cfg: dict[str, Any]) -> dict[str, Any]:
    """A step's compiled config without the keys that arrive as pipeline parameters:
    two compiles that differ only in such a key give identical task specs."""
    out = json.loads(json.dumps(step_cfg))
    for key in RUNTIME_PARAMETERS.values():
        section, *path = key.split(".")
        for tree in (out.get(section), out.get(invoke.RECORD, {}).get(section)):
            for part in path[:-1]:
                tree = tree.get(part) if isinstance(tree, dict) else None
            if isinstance(tree, dict):
                tree.pop(path[-1], None)
    return out


def apply_overrides(step_cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Run-time pipeline parameters into a step's config (its sections, and the
    sections it records). '' for an optional key means unset."""
    for key, value in overrides.items():
        section, *path = key.split(".")
        for tree in (step_cfg.get(section), step_cfg.get(invoke.RECORD, {}).get(section)):
            if tree is None:
                continue
            for part in path[:-1]:
                tree = tree.setdefault(part, {})
            tree[path[-1]] = None if value == "" and key in _OPTIONAL else value
    return step_cfg


def resolve_pins(context_json: str, baseline_alias: str = "", configs_json: str = "",
                 overrides: dict[str, Any] | None = None):
    """The resolve task's body: the registry version holding the baseline alias now,
    the artifacts the last completed run recorded for previous-run inputs, and for each
    step with outside inputs (`configs_json`: its compiled config; `overrides`: the
    run-time parameters) the pin of those inputs (`invoke.pin_outside_inputs`)."""
    from collections import namedtuple

    from components.errors import ConfigError
    from components.registry import Registry

    _exit_without_teardown()
    context = invoke.Context.from_json(context_json)
    if baseline_alias:
        context = invoke.Context(context.model_name, context.registry_root, baseline_alias,
                                 context.pipeline)
    registry = Registry(context.registry_root)
    state = registry.pipeline_state(context.model_name)
    configs = json.loads(configs_json) if configs_json else {}
    values = {}
    for node in dag.STEPS:
        for param, ref in node.previous.items():
            values[f"{node.name}__{param}"] = state.get(ref, "")
        for param in node.spec.resolved:
            version = invoke.baseline_version(context)
            values[f"{node.name}__{param}"] = version.ref if version else ""
        if invoke.reads_outside_inputs(node):
            if node.name not in configs:
                raise ConfigError(f"the compiled pipeline gives the resolve task no config "
                                  f"for {node.name}; recompile it with this imgpipe version.")
            step_cfg = apply_overrides(configs[node.name], dict(overrides or {}))
            values[f"{node.name}__{EXTERNAL}"] = json.dumps(
                invoke.pin_outside_inputs(node, step_cfg, context), sort_keys=True)
    for key, value in values.items():
        print(f"resolve: {key} = {value or '(none)'}")
    return namedtuple("Pins", list(values))(**values)


def _log_ui_metrics(evaluation: str, extras: dict[str, Any]) -> None:
    """Overall metrics and the confusion matrix for the KFP / Vertex run page."""
    from components import fileio

    metrics = json.loads(fileio.read_text(fileio.join(evaluation, "metrics.json")))
    overall = metrics["metrics"]["slices"].get("overall", {})
    for key, value in overall.items():
        if isinstance(value, (int, float)):
            extras["metrics"].log_metric(key, value)
    extras["confusion"].log_confusion_matrix(metrics["label_vocabulary"],
                                             metrics["metrics"]["confusion"])


def write_report(context_json: str, run_id: str, artifacts_in: dict[str, Any],
                 html_out: Any, config_json: str = "",
                 overrides: dict[str, Any] | None = None) -> None:
    """The report task: the run's report, and the pipeline state the next run reads
    (its statistics, for the drift check)."""
    from components.registry import Registry
    from pipeline import report

    _exit_without_teardown()
    steps = [SimpleNamespace(step=ref.split(".")[0], status="ran", seconds=0.0, decision="kfp",
                             outputs={ref.split(".")[1]: _location(art)})
             for ref, art in artifacts_in.items()]
    run_dir = os.path.dirname(html_out.path)
    recorded = (apply_overrides(json.loads(config_json), dict(overrides or {})).get(
        invoke.RECORD) if config_json else None)
    report.write(run_dir, run_id, "succeeded", steps, path=html_out.path, config=recorded)
    context = invoke.Context.from_json(context_json)
    previous_refs = {ref for node in dag.STEPS for ref in node.previous.values()}
    Registry(context.registry_root).record_pipeline_state(
        context.model_name, {ref: _location(art) for ref, art in artifacts_in.items()
                             if ref in previous_refs})


# --- local run of the compiled pipeline ----------------------------------------------

ENGINE_LOCAL = "kfp-local"
# kfp.local's console: its own log lines, and each task's output indented by 4 spaces.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TASK_START = re.compile(r" - INFO - Executing task '([^']+)'$")
_TASK_END = re.compile(r" - (?:INFO|ERROR) - Task '([^']+)' finished with status (\w+)$")
_TASK_INDENT = " " * 4
# A step's own progress lines (epochs, trials) are indented as the local runner
# indents them; kfp.local's JSON dumps are indented by multiples of 4.
_STEP_LINE = re.compile("^" + runtime.DETAIL_INDENT + r"\S")
_ERROR_LINE = re.compile(r"^components\.errors\.(\w+): (.+)$")
# TensorFlow's native log lines (I0000 00:00:... file.cc:N] ...): never the error.
_NATIVE_LOG = re.compile(r"^[IWEF]\d{4} ")
# What a closed gate means for the steps behind it, as the push step words it.
_CLOSED_GATE = {"blessed": "not blessed", "passed": "infra validation failed"}


def task_step(task: str) -> dag.Node | None:
    """The DAG step a kfp.local task runs (KFP names `infra_validate` infra-validate);
    None for the resolve and report tasks."""
    for node in dag.STEPS:
        if node.name.replace("_", "-") == task or node.name == task:
            return node
    return None


class _TaskLog:
    """kfp.local's console output, read line by line. Task starts and ends go to
    `recorder`; the lines a step prints for the user (its summary, which `run_step`
    prints as 'STEP: line', and its progress lines) go with them. Everything else (the
    executor input, KFP's INFO lines, library notices) is kept per task only for the
    error of a failed one, and echoed as it came with -v."""

    def __init__(self, recorder: "_Recorder", echo: Any = None):
        self.recorder, self.echo = recorder, echo
        self.partial = ""
        self.task: str | None = None
        self.lines: list[str] = []
        self.tail: list[str] = []

    def write(self, text: str) -> int:
        if self.echo is not None:
            self.echo.write(text)
        self.partial += text
        *complete, self.partial = self.partial.split("\n")
        for line in complete:
            self._line(_ANSI.sub("", line).rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, line: str) -> None:
        started = _TASK_START.search(line)
        if started:
            self.task, self.lines, self.tail = started[1], [], []
            self.recorder.start(self.task)
            return
        ended = _TASK_END.search(line)
        if ended:
            self.recorder.end(ended[1], ended[2], self.lines, self.tail)
            self.task = None
            return
        if self.task is None:
            return
        node = task_step(self.task)         # None: the resolve or report task
        text = line[len(_TASK_INDENT):] if line.startswith(_TASK_INDENT) else line
        if node is not None and text.startswith(f"{node.name}: "):
            self.lines.append(text[len(node.name) + 2:])
        elif node is not None and _STEP_LINE.match(text):
            self.recorder.log(text.rstrip())
        elif text.strip() and not text.startswith("[KFP Executor") \
                and not _NATIVE_LOG.match(text):
            self.tail = (self.tail + [text.rstrip()])[-40:]


class _Recorder:
    """A kfp.local run in the metadata store as its tasks start and end: one execution
    per step (inputs, outputs with their fingerprints, summary lines), the step lines
    the local runner prints, and the steps' results."""

    def __init__(self, store: Any, run_id: str, run_root: str, log: Callable[[str], None]):
        self.store, self.run_id, self.run_root, self.log = store, run_id, run_root, log
        self.results: list[Any] = []
        self.running: dict[str, tuple[int, float]] = {}

    def _uri(self, node: dag.Node, output: str) -> str:
        return os.path.join(self.run_root, node.name.replace("_", "-"), output)

    def start(self, task: str) -> None:
        import time

        from components import artifacts
        from pipeline.metadata import UNKEYED

        node = task_step(task)
        if node is None:
            return
        execution = self.store.start_execution(self.run_id, node.name, UNKEYED, {},
                                               DECISION_LOCAL)
        uris = {param: self._uri(dag.get(ref.split(".")[0]), ref.split(".")[1])
                for param, ref in node.inputs.items()}
        self.store.record_artifacts(execution, "input", {
            param: artifacts.read(uri) for param, uri in uris.items()
            if artifacts.is_committed(uri)})
        self.running[node.name] = (execution, time.perf_counter())
        self.log(step_line(node.name, "running", f"({DECISION_LOCAL})"))

    def end(self, task: str, status: str, lines: list[str], tail: list[str]) -> None:
        import time

        from components import artifacts

        node = task_step(task)
        if node is None or node.name not in self.running:
            return
        execution, began = self.running.pop(node.name)
        seconds = time.perf_counter() - began
        if status != "SUCCESS":
            error = "\n".join(tail) or f"the task ended with status {status}"
            self.store.finish_execution(execution, "failed", error=error)
            self.results.append(StepResult(node.name, "failed", DECISION_LOCAL, seconds,
                                           error=error))
            self.log(step_line(node.name, "FAILED", f"{seconds:.1f}s"))
            return
        outputs = {o: artifacts.read(self._uri(node, o), node.spec.output_type(o))
                   for o in node.spec.outputs}
        self.store.record_artifacts(execution, "output", outputs)
        summary: dict[str, Any] = {}
        for art in outputs.values():
            if art.type == "PushedModel":
                summary.update(art.properties)        # pushed, version, path or reason
            elif node.spec.gate in art.properties:
                summary[node.spec.gate] = art.properties[node.spec.gate]
                summary["reason"] = art.properties.get("reason")
        summary["lines"] = list(lines)
        self.store.finish_execution(execution, "succeeded", summary=summary)
        self.results.append(StepResult(node.name, "ran", DECISION_LOCAL, seconds,
                                       {o: a.uri for o, a in outputs.items()}, summary))
        self.log(step_line(node.name, "done", f"{seconds:.1f}s"))
        for line in lines:
            self.log(detail_line(line))

    def fail_running(self, tail: list[str]) -> None:
        """The task kfp.local stopped the run on (it raises before logging its end)."""
        for name in list(self.running):
            self.end(name, "FAILURE", [], tail)

    def skipped(self) -> None:
        """Steps that did not run because a gate before them closed: recorded as
        skipped with the reason, and for the push the verdict (nothing pushed)."""
        from pipeline.metadata import UNKEYED

        done = {r.step: r for r in self.results}
        for node in dag.STEPS:
            if node.name in done:
                continue
            closed = [done[g] for g in gates_of(node)
                      if g in done and not (done[g].summary or {}).get(dag.get(g).spec.gate)]
            if not closed:
                continue
            reason = "; ".join(
                f"{_CLOSED_GATE.get(dag.get(r.step).spec.gate, r.step + ' gate closed')}: "
                f"{(r.summary or {}).get('reason')}" for r in closed)
            decision = f"not run: its gate is closed ({reason})"
            pushes = "PushedModel" in [node.spec.output_type(o) for o in node.spec.outputs]
            summary = {"lines": [f"NOTHING PUSHED ({reason})" if pushes else
                                 f"not run ({reason})"], "reason": reason}
            if pushes:
                summary["pushed"] = False
            execution = self.store.start_execution(self.run_id, node.name, UNKEYED, {},
                                                   decision)
            self.store.finish_execution(execution, "skipped", summary=summary)
            self.results.append(StepResult(node.name, "skipped", decision, summary=summary))
            self.log(step_line(node.name, "skipped", f"({decision})"))
            for line in summary["lines"]:
                self.log(detail_line(line))


DECISION_LOCAL = "kfp.local runs every task; no cache"


@contextlib.contextmanager
def _named_run(run_id: str) -> Iterator[None]:
    """kfp.local names a run PIPELINE-TIMESTAMP; name it with the metadata store's run
    id, so its artifacts lie under RUNS_DIR/RUN_ID/ as a local run's do and the run id
    that push records in the model card is the one `imgpipe runs show` knows."""
    from kfp.local import executor_input_utils

    original = executor_input_utils.get_local_pipeline_resource_name
    executor_input_utils.get_local_pipeline_resource_name = lambda name: run_id
    try:
        yield
    finally:
        executor_input_utils.get_local_pipeline_resource_name = original


def _task_error(tail: list[str], task: str | None) -> Any:
    """The error a failed task raised, as the CLI's error (our own exception class
    when the task's traceback names one), or an ImgpipeError with its last lines."""
    from components import errors

    for line in reversed(tail):
        found = _ERROR_LINE.match(line.strip())
        if found and isinstance(getattr(errors, found[1], None), type):
            return getattr(errors, found[1])(found[2])
    last = [line.strip() for line in tail if line.strip()
             and not line.lstrip().startswith(("{", "}", '"', "[", "]"))][-3:]
    return errors.ImgpipeError(f"the kfp.local task {task or '?'} failed: "
                               + (" | ".join(last) or "it ended without an error message "
                                  "(killed?)") + "; rerun with -v for its whole log.")


def run_local(config: PipelineConfig, runs_dir: str = "runs", config_path: str | None = None,
              log: Callable[[str], None] | None = None, verbose: bool = False) -> Any:
    """Runs the compiled KFP pipeline with `kfp.local` (a subprocess per task, in this
    environment) and records it as the local runner records a run: in the runs folder's
    metadata store (engine kfp-local), artifacts under RUNS_DIR/RUN_ID/TASK/, a
    report.html; prints the local runner's step lines (-v: kfp.local's own output)."""
    import sys
    import warnings

    from kfp import local

    from pipeline import report
    from pipeline.metadata import METADATA_FILE, MetadataStore
    from pipeline.results import RunResult

    if log is None:
        # not print(): kfp.local replaces it while it streams a task's output
        out = sys.stdout

        def log(line: str) -> None:
            out.write(line + "\n")
            out.flush()

    runs_dir = os.path.abspath(runs_dir)
    store = MetadataStore(os.path.join(runs_dir, METADATA_FILE))
    run_id = store.start_run(config.name, config.to_dict(), config_path, engine=ENGINE_LOCAL)
    log(f"run {run_id}  (pipeline {config.name}, runs dir {runs_dir}, engine {ENGINE_LOCAL})")
    recorder = _Recorder(store, run_id, os.path.join(runs_dir, run_id), log)
    task_log = _TaskLog(recorder, echo=sys.stdout if verbose else None)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=runs_dir,
               raise_on_error=True)
    error = None
    try:
        with warnings.catch_warnings(), _named_run(run_id), \
                contextlib.redirect_stdout(task_log):
            if not verbose:   # the base-image and ignored-resource notices, per task
                warnings.filterwarnings("ignore", module="kfp")
            build_pipeline(config)()
    except RuntimeError as exc:       # kfp.local: a task ended with FAILURE
        failed = task_log.task        # kfp.local raises before it logs the task's end
        if failed is None:            # not a task's failure: kfp.local's own error
            store.end_run(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        tail = task_log.tail
        recorder.fail_running(tail)
        error = _task_error(tail, failed)
        error.__cause__ = exc
    except BaseException as exc:     # a bug, Ctrl-C, SIGTERM: the run still ends on record
        recorder.fail_running([f"interrupted ({type(exc).__name__})"])
        store.end_run(run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    if error is None:
        recorder.skipped()
    status = "failed" if error is not None else "succeeded"
    store.end_run(run_id, status, None if error is None else str(error))
    runtime.release_memory()
    report.write_for_run(runs_dir, run_id, status, recorder.results,
                         None if error is None else str(error),
                         invoke.recorded_config(config), log)
    return RunResult(run_id, runs_dir, status, recorder.results, error, engine=ENGINE_LOCAL)
