"""The DAG of `pipeline/dag.py` as a Kubeflow Pipelines v2 pipeline.

Every step becomes a lightweight KFP component generated from its `dag.Step` (no second
definition of the steps): typed inputs and outputs (`Dataset` for examples, `Model`
for models, `Artifact` for the rest, plus `Metrics` / `ClassificationMetrics` from
the evaluator and an `HTML` report), the config as one JSON parameter, and a body
that only calls `run_step`, which resolves the inputs and calls the step function in
`components/`. All components run in one image (`kfp.image`); per-step resources,
caching and retries come from `kfp.steps`. The push runs only under `dsl.If` on the
evaluator's blessing and the infra validator's verdict; the baseline is resolved from
the registry at run time.
"""


import importlib
import json
import linecache
import os
from types import SimpleNamespace
from typing import Any, Callable

from pipeline import dag
from pipeline.config import PipelineConfig

# Artifact type -> KFP artifact class name.
KFP_TYPES = {"Examples": "Dataset", "Model": "Model", "PushedModel": "Model"}
GATES = ("evaluate", "infra_validate")   # steps whose bool output gates the push


def kfp_type(artifact_type: str) -> str:
    return KFP_TYPES.get(artifact_type, "Artifact")


def _component_source(step: dag.Step) -> str:
    """The Python source of the step's component: a typed signature and one call."""
    params = ["config_json: str", "run_id: str"]
    inputs = {}
    for param, ref in step.inputs.items():
        producer, output = ref.split(".")
        inputs[param] = kfp_type(dag.get(producer).outputs[output])
        params.append(f"{param}: Input[{inputs[param]}]")
    outputs = {name: kfp_type(t) for name, t in step.outputs.items()}
    params += [f"{name}: Output[{t}]" for name, t in outputs.items()]
    if step.name == "evaluate":
        params += ["metrics: Output[Metrics]", "confusion: Output[ClassificationMetrics]"]
    args = ", ".join(f"{p!r}: {p}" for p in [*inputs, *outputs])
    extras = "{'metrics': metrics, 'confusion': confusion}" if step.name == "evaluate" else "{}"
    return (f"def {step.name}({', '.join(params)}) -> bool:\n"
            f"    from pipeline.kfp import run_step\n"
            f"    return run_step({step.name!r}, config_json, run_id, {{{args}}}, {extras})\n")


REPORT_SOURCE = """def report(config_json: str, run_id: str, statistics: Input[Artifact],
           anomalies: Input[Artifact], trained_model: Input[Model],
           evaluation: Input[Artifact], blessing: Input[Artifact],
           infra_blessing: Input[Artifact], report: Output[HTML]):
    from pipeline.kfp import write_report
    write_report(run_id, {'ingest.statistics': statistics, 'validate.anomalies': anomalies,
                          'train.trained_model': trained_model,
                          'evaluate.evaluation': evaluation, 'evaluate.blessing': blessing,
                          'infra_validate.infra_blessing': infra_blessing}, report)
"""


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
    comps = {step.name: _make_component(step.name, _component_source(step), config.kfp.image)
             for step in dag.STEPS}
    comps["report"] = _make_component("report", REPORT_SOURCE, config.kfp.image)
    return comps


def _configure(task, config: PipelineConfig, name: str):
    step = config.kfp.step(name)
    task.set_display_name(name)
    task.set_caching_options(step.caching)
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


def build_pipeline(config: PipelineConfig) -> Callable:
    """The `@dsl.pipeline` function for this config (its JSON is the default parameter)."""
    from kfp import dsl

    comps = components(config)
    config_json = json.dumps(config.to_dict(), sort_keys=True)

    @dsl.pipeline(name=config.name, description=f"imgpipe: {config.name} "
                  f"({config.model.kind} on {config.data.source})")
    def pipeline(config_json: str = config_json):
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        tasks: dict[str, Any] = {}

        def add(step: dag.Step):
            kwargs = {}
            for param, ref in step.inputs.items():
                producer, output = ref.split(".")
                kwargs[param] = tasks[producer].outputs[output]
            task = comps[step.name](config_json=config_json, run_id=run_id, **kwargs)
            tasks[step.name] = _configure(task, config, step.name)

        for step in dag.STEPS:
            if step.name != "push":
                add(step)
        _configure(comps["report"](
            config_json=config_json, run_id=run_id,
            statistics=tasks["ingest"].outputs["statistics"],
            anomalies=tasks["validate"].outputs["anomalies"],
            trained_model=tasks["train"].outputs["trained_model"],
            evaluation=tasks["evaluate"].outputs["evaluation"],
            blessing=tasks["evaluate"].outputs["blessing"],
            infra_blessing=tasks["infra_validate"].outputs["infra_blessing"]), config, "report")
        with dsl.If(tasks["evaluate"].outputs["Output"] == True, name="blessed"):  # noqa: E712
            with dsl.If(tasks["infra_validate"].outputs["Output"] == True, name="infra-ok"):  # noqa: E712
                add(dag.get("push"))

    return pipeline


def compile_pipeline(config: PipelineConfig, output: str) -> str:
    from kfp import compiler

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config), output)
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


def run_step(name: str, config_json: str, run_id: str, artifacts_in: dict[str, Any],
             extras: dict[str, Any]) -> bool:
    """The body of every step component: KFP artifacts -> our artifacts, the step
    function from `components/`, properties back onto the KFP artifacts' metadata.
    Returns the gate value (blessed / infra passed; True for other steps)."""
    from components import artifacts, fileio

    _exit_without_teardown()
    from pipeline import config as config_lib
    from pipeline.local import baseline_version, call_step, resolved_section

    config = config_lib.from_dict(json.loads(config_json))
    step = dag.get(name)
    module = importlib.import_module(step.module)
    inputs = {p: artifacts.read(_location(artifacts_in[p])) for p in step.inputs}
    outputs = {o: _location(artifacts_in[o]) for o in step.outputs}
    for path in outputs.values():
        # A retried task writes to the same URIs as the attempt that failed: start clean.
        fileio.rmtree(path)
    extra: dict[str, Any] = {}
    for param, alias in step.baseline.items():
        version = baseline_version(config, alias)
        extra[param] = version.path if version else None
    if step.config:
        extra["pipeline_config"] = config.to_dict()

    def section(section_name: str):
        return resolved_section(config, section_name, store=None)

    summary = call_step(module, step, config, section, inputs, outputs,
                        {"run_id": run_id, "step": name, "pipeline": config.name,
                         "engine": "kfp"}, extra) or {}
    for output in step.outputs:
        written = artifacts.read(outputs[output])
        artifacts_in[output].metadata.update(_jsonable(written.properties))
    for line in summary.get("lines", []):
        print(f"{name}: {line}")
    if name == "evaluate":
        metrics = json.loads(fileio.read_text(fileio.join(outputs["evaluation"],
                                                          "metrics.json")))
        overall = metrics["metrics"]["slices"].get("overall", {})
        for key, value in overall.items():
            if isinstance(value, (int, float)):
                extras["metrics"].log_metric(key, value)
        extras["confusion"].log_confusion_matrix(metrics["label_vocabulary"],
                                                 metrics["metrics"]["confusion"])
        return bool(summary.get("blessed"))
    if name == "infra_validate":
        return bool(summary.get("passed"))
    return True


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
