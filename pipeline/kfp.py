"""The DAG of `pipeline/dag.py` as a Kubeflow Pipelines v2 pipeline.

Every step becomes a lightweight KFP component generated from its declared contract
(no second definition of the steps): typed inputs and outputs (`Dataset` for
examples, `Model` for models, `Artifact` for the rest, plus `Metrics` /
`ClassificationMetrics` from the evaluator and an `HTML` report), the config the step
reads as a JSON parameter, and a body that only calls `run_step`, which goes through
`pipeline/invoke.py` like the local runner. All components run in one image
(`kfp.image`); per-step resources, caching and retries come from `kfp.steps`. A step
that consumes the output of a gating step (the push) runs only under `dsl.If` on each
gate (the evaluator's blessing, the infra validator's verdict); the baseline is
resolved from the registry at run time.
"""

from __future__ import annotations


import json
import linecache
import os
from types import SimpleNamespace
from typing import Any, Callable

from pipeline import dag, invoke
from pipeline.config import PipelineConfig

# Artifact type -> KFP artifact class name.
KFP_TYPES = {"Examples": "Dataset", "Model": "Model", "PushedModel": "Model"}
# Extra KFP outputs for the pipeline UI: step -> (parameter, KFP type).
UI_OUTPUTS = {"evaluate": (("metrics", "Metrics"), ("confusion", "ClassificationMetrics"))}
# What the run report shows, as "step.output".
REPORT_INPUTS = ("ingest.statistics", "validate.anomalies", "train.trained_model",
                 "evaluate.evaluation", "evaluate.blessing", "infra_validate.infra_blessing")


def kfp_type(artifact_type: str) -> str:
    return KFP_TYPES.get(artifact_type, "Artifact")


def _component_source(node: dag.Node) -> str:
    """The Python source of the step's component: a typed signature and one call.
    Inputs wired to an earlier run (`previous`) have no KFP edge and are not passed."""
    spec = node.spec
    params = ["config_json: str", "context_json: str", "pipeline_name: str", "run_id: str"]
    names = []
    for param in node.inputs:
        params.append(f"{param}: Input[{kfp_type(spec.input_type(param))}]")
        names.append(param)
    for output in spec.outputs:
        params.append(f"{output}: Output[{kfp_type(spec.output_type(output))}]")
        names.append(output)
    extras = UI_OUTPUTS.get(node.name, ())
    params += [f"{param}: Output[{kind}]" for param, kind in extras]
    args = ", ".join(f"{p!r}: {p}" for p in names)
    extra_args = ", ".join(f"{p!r}: {p}" for p, _ in extras)
    return (f"def {node.name}({', '.join(params)}) -> bool:\n"
            f"    from pipeline.kfp import run_step\n"
            f"    return run_step({node.name!r}, config_json, context_json, pipeline_name, run_id, "
            f"{{{args}}}, {{{extra_args}}})\n")


def _report_source() -> str:
    params = ", ".join(f"{ref.split('.')[1]}: Input[{kfp_type(_output_type(ref))}]"
                       for ref in REPORT_INPUTS)
    mapping = ", ".join(f"{ref!r}: {ref.split('.')[1]}" for ref in REPORT_INPUTS)
    return (f"def report(run_id: str, {params}, report: Output[HTML]):\n"
            f"    from pipeline.kfp import write_report\n"
            f"    write_report(run_id, {{{mapping}}}, report)\n")


def _output_type(ref: str) -> str:
    step, output = ref.split(".")
    return dag.get(step).spec.output_type(output)


def _make_component(name: str, source: str, image: str):
    """A `dsl.component` from generated source (registered with linecache so KFP can
    read the function's source back, as it does for a function in a file)."""
    from kfp import dsl

    filename = f"<imgpipe-component-{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {k: getattr(dsl, k) for k in ("Input", "Output", "Dataset", "Model", "Artifact",
                                              "Metrics", "ClassificationMetrics", "HTML")}
    # dont_inherit: this module's `from __future__ import annotations` would turn the
    # annotations into strings, which KFP cannot read as types.
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - our own generated code
    return dsl.component(namespace[name], base_image=image, install_kfp_package=False)


def components(config: PipelineConfig) -> dict[str, Any]:
    comps = {node.name: _make_component(node.name, _component_source(node), config.kfp.image)
             for node in dag.STEPS}
    comps["report"] = _make_component("report", _report_source(), config.kfp.image)
    return comps


def _configure(task, config: PipelineConfig, name: str, cacheable: bool = True):
    step = config.kfp.step(name)
    task.set_display_name(name)
    task.set_caching_options(step.caching and cacheable)
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
    """The `@dsl.pipeline` function for this config. Each task receives only the config
    its step reads (`invoke.step_config`) and, when it resolves references, the context
    for that (registry root, model name, baseline alias)."""
    from kfp import dsl

    comps = components(config)
    context = invoke.Context.from_config(config)

    @dsl.pipeline(name=config.name, description=f"imgpipe: {config.name} "
                  f"({config.model.kind} on {config.data.source})")
    def pipeline():
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        tasks: dict[str, Any] = {}

        def add(node: dag.Node):
            step_cfg = invoke.step_config(node, config)
            kwargs = {param: tasks[ref.split(".")[0]].outputs[ref.split(".")[1]]
                      for param, ref in node.inputs.items()}
            task = comps[node.name](
                config_json=json.dumps(step_cfg, sort_keys=True),
                context_json=context.to_json() if invoke.needs_context(node, step_cfg) else "",
                pipeline_name=config.name, run_id=run_id, **kwargs)
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
            run_id=run_id, **{ref.split(".")[1]: tasks[ref.split(".")[0]].outputs[
                ref.split(".")[1]] for ref in REPORT_INPUTS}), config, "report")

    return pipeline


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


def run_step(name: str, config_json: str, context_json: str, pipeline_name: str, run_id: str,
             artifacts_in: dict[str, Any], extras: dict[str, Any]) -> bool:
    """The body of every step component: KFP artifacts -> our artifacts, the step
    through `pipeline.invoke`, properties back onto the KFP artifacts' metadata.
    Returns the step's gate value (True for steps without a gate)."""
    from components import artifacts, fileio

    _exit_without_teardown()
    node = dag.get(name)
    step_cfg = json.loads(config_json)
    context = invoke.Context.from_json(context_json) if context_json else None
    resolved = invoke.resolve(node, step_cfg, context)
    inputs = {p: artifacts.read(_location(artifacts_in[p]), node.spec.input_type(p))
              for p in node.inputs}
    outputs = {o: _location(artifacts_in[o]) for o in node.spec.outputs}
    for path in outputs.values():
        # A retried task writes to the same URIs as the attempt that failed: start clean.
        fileio.rmtree(path)
    producer = {"run_id": run_id, "step": name, "engine": "kfp", "pipeline": pipeline_name}
    summary = invoke.call(node, resolved, inputs, outputs, producer) or {}
    for output in node.spec.outputs:
        written = artifacts.read(outputs[output])
        artifacts_in[output].metadata.update(_jsonable(written.properties))
    for line in summary.get("lines", []):
        print(f"{name}: {line}")
    if name == "evaluate":
        _log_ui_metrics(outputs["evaluation"], extras)
    return invoke.gate_value(node, summary)


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


def write_report(run_id: str, artifacts_in: dict[str, Any], html_out: Any) -> None:
    from pipeline import report

    _exit_without_teardown()
    steps = [SimpleNamespace(step=ref.split(".")[0], status="ran", seconds=0.0, decision="kfp",
                             outputs={ref.split(".")[1]: _location(art)})
             for ref, art in artifacts_in.items()]
    run_dir = os.path.dirname(html_out.path)
    report.write(run_dir, run_id, "succeeded", steps, path=html_out.path)


# --- local run of the compiled pipeline ----------------------------------------------


def run_local(config: PipelineConfig, pipeline_root: str) -> dict[str, Any]:
    """Runs the KFP pipeline with `kfp.local` (subprocesses in this environment)."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=os.path.abspath(pipeline_root), raise_on_error=True)
    task = build_pipeline(config)()
    return {"pipeline_root": os.path.abspath(pipeline_root), "task": task}
