"""What runs inside a step's container: the one module the generated component code
imports (`from pipeline.kfp.entrypoint import run_step`, `resolve_pins`,
`write_report`), so it must stay importable in the image without the compile-time code
or kfp.local. `run_step` is the body of every step component: run-time parameters into
the step's config, KFP artifacts to ours, the step through `pipeline/invoke.py` like the
local runner, properties back onto the KFP artifacts; `resolve_pins` is the resolve
task's body, `write_report` the report task's."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

from pipeline import dag, invoke
from pipeline.kfp.shared import EXTERNAL, OPTIONAL


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
             overrides: dict[str, Any], dag_location: str = "", code: str = "") -> bool:
    """The body of every step component: run-time parameters into the step's config,
    KFP artifacts -> our artifacts (pinned references for previous-run inputs and the
    baseline), the step through `pipeline.invoke`, properties back onto the KFP
    artifacts' metadata. Returns the step's gate value (True for steps without one).
    `dag_location`: a user's DAG (`dag.load`), '' for the built-in one."""
    from components import artifacts
    from components.io import fileio
    from components.trainer.distribute import is_chief_task

    _exit_without_teardown()
    node = dag.get(name, dag.load(dag_location))
    step_cfg = apply_overrides(json.loads(config_json), overrides)
    if pins.get(EXTERNAL):
        # the registry versions the resolve task found, not the aliases again
        step_cfg = invoke.apply_pinned_refs(step_cfg, json.loads(pins[EXTERNAL]))
    context = invoke.Context.from_json(context_json) if context_json else None
    resolved = invoke.resolve(node, invoke.StepSections.from_json(node, step_cfg), context,
                              pinned={p: pins[p] for p in invoke.pinned_parameters(node)})
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
    # A step with a Scratch parameter (train's checkpoints, tune's trials) resumes a
    # retried attempt from there, as under the local runner.
    scratch = {"scratch": scratch_folder(outputs)} if node.spec.scratch else {}
    # A step with a Shared folder (ingest's per-span artifacts) keeps it beside the
    # registry, keyed by its code (`code`: the task's code fingerprint).
    if node.spec.shared and context is not None:
        scratch["shared"] = invoke.shared_folder(invoke.shared_root(context.registry_root),
                                                 node, code)
    summary = invoke.call(node, resolved, inputs, outputs, producer, **scratch) or {}
    stop = node.spec.stop_error(summary)
    if stop is not None:
        # a verdict that ends the run (validate's errors), its outputs committed: the
        # task fails with it, as the local runner fails the run
        raise stop
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
    if node.spec.ui_outputs:      # the run page's metrics, from the step's Evaluation
        evaluation = next(o for o, t in node.spec.outputs.items()
                          if t is artifacts.ModelEvaluation)
        _log_ui_metrics(outputs[evaluation], extras)
    return node.spec.gate_open(summary)


# Not an identifier, so never the name of an output beside it.
SCRATCH = "task-scratch"


def scratch_folder(outputs: dict[str, str]) -> str | None:
    """The task's scratch folder: in the task's folder under the pipeline root, beside
    its outputs (`{root}/.../{task}/task-scratch`). A retry of the task is given
    the same output URIs, so the same folder, which unlike the outputs is not wiped when
    an attempt starts; another run's task has a folder of its own. None for a step
    without outputs (it then works in a private temporary folder)."""
    if not outputs:
        return None
    first = outputs[sorted(outputs)[0]].rstrip("/")
    return first.rsplit("/", 1)[0] + "/" + SCRATCH


def _schedule_time(text: str) -> Any:
    """The run's schedule time (UTC), or now for a run that no schedule started (the
    placeholder then arrives empty or unresolved)."""
    import datetime

    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return datetime.datetime.now(datetime.timezone.utc)


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
            tree[path[-1]] = None if value == "" and key in OPTIONAL else value
    return step_cfg


def resolve_pins(context_json: str, baseline_alias: str = "", configs_json: str = "",
                 overrides: dict[str, Any] | None = None, dag_location: str = "",
                 schedule_time: str = ""):
    """The resolve task's body: the registry version holding the baseline alias now,
    the artifacts the last completed run recorded for previous-run inputs, and for each
    step with outside inputs (`configs_json`: its compiled config; `overrides`: the
    run-time parameters) the pin of those inputs (`invoke.pin_outside_inputs`)."""
    from collections import namedtuple

    from components.errors import ConfigError
    from components.registry.versions import Registry

    _exit_without_teardown()
    context = invoke.Context.from_json(context_json)
    if baseline_alias:
        context = invoke.Context(context.model_name, context.registry_root, baseline_alias,
                                 context.pipeline)
    registry = Registry(context.registry_root)
    state = registry.pipeline_state(context.model_name)
    configs = json.loads(configs_json) if configs_json else {}
    values = {}
    for node in dag.load(dag_location):
        for param, ref in node.previous.items():
            values[f"{node.name}__{param}"] = state.get(ref, "")
        for param in invoke.pinned_parameters(node):
            values[f"{node.name}__{param}"] = invoke.pin_parameter(node, param, context)
        if invoke.reads_outside_inputs(node):
            if node.name not in configs and node.enabled is not None:
                continue          # an optional step the pipeline was compiled without
            if node.name not in configs:
                raise ConfigError(f"the compiled pipeline gives the resolve task no config "
                                  f"for {node.name}; recompile it with this imgpipe version.")
            step_cfg = apply_overrides(configs[node.name], dict(overrides or {}))
            values[f"{node.name}__{EXTERNAL}"] = json.dumps(
                invoke.pin_outside_inputs(node, step_cfg, context, _schedule_time(schedule_time)),
                sort_keys=True)
    for key, value in values.items():
        print(f"resolve: {key} = {value or '(none)'}")
    return namedtuple("Pins", list(values))(**values)


def _log_ui_metrics(evaluation: str, extras: dict[str, Any]) -> None:
    """Overall metrics and the confusion matrix for the KFP / Vertex run page."""
    from components import artifacts

    metrics = artifacts.ModelEvaluation.read(evaluation)
    overall = metrics["metrics"]["slices"].get("overall", {})
    for key, value in overall.items():
        if isinstance(value, (int, float)):
            extras["metrics"].log_metric(key, value)
    extras["confusion"].log_confusion_matrix(metrics["label_vocabulary"],
                                             metrics["metrics"]["confusion"])


def write_report(context_json: str, run_id: str, artifacts_in: dict[str, Any],
                 html_out: Any, config_json: str = "",
                 overrides: dict[str, Any] | None = None, dag_location: str = "") -> None:
    """The report task: the run's report, and the pipeline state the next run reads
    (its statistics, for the drift check)."""
    from components.registry.versions import Registry
    from pipeline.report import html as report

    _exit_without_teardown()
    steps = [SimpleNamespace(step=ref.split(".")[0], status="ran", seconds=0.0, decision="kfp",
                             outputs={ref.split(".")[1]: _location(art)})
             for ref, art in artifacts_in.items()]
    run_dir = os.path.dirname(html_out.path)
    recorded = (apply_overrides(json.loads(config_json), dict(overrides or {})).get(
        invoke.RECORD) if config_json else None)
    report.write(run_dir, run_id, "succeeded", steps, path=html_out.path, config=recorded)
    context = invoke.Context.from_json(context_json)
    previous_refs = {ref for node in dag.load(dag_location) for ref in node.previous.values()}
    Registry(context.registry_root).record_pipeline_state(
        context.model_name, {ref: _location(art) for ref, art in artifacts_in.items()
                             if ref in previous_refs})
