"""The local runner: runs the DAG in order, reuses cached executions, records lineage.

A step is reused when an earlier successful execution had the same cache key (step
code, its config sections, the runtime options that matter, and the fingerprints of
its inputs) and its outputs still verify. Every decision is recorded with its reason;
on a miss the reason names what changed since the step last ran.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import importlib.util
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from components import artifacts, fileio, runtime
from components.errors import ArtifactError, ConfigError, ImgpipeError
from pipeline import dag
from pipeline.config import PipelineConfig
from pipeline.metadata import Execution, MetadataStore

METADATA_FILE = "metadata.sqlite"


def source_hash(modules: tuple[str, ...]) -> str:
    """Hash of the modules' source text, found without importing them (fast)."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            digest.update(f"{name}:missing".encode())
            continue
        with open(spec.origin, "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read() + b"\0")
    return digest.hexdigest()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _short(value: Any) -> str:
    text = repr(value)
    if isinstance(value, str) and len(value) == 64:
        text = value[:12]  # a hash: the prefix is enough to tell them apart
    return text if len(text) <= 60 else text[:57] + "..."


def explain_miss(parts: dict[str, Any], previous: Execution | None) -> str:
    """Why a step has to run: which parts of its key differ from its last execution."""
    if previous is None:
        return "no earlier execution of this step"
    old, new = flatten(previous.key_parts), flatten(parts)
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {_short(old.get(key))} -> {_short(new.get(key))}")
    if not changes:
        return f"outputs of execution {previous.id} (run {previous.run_id}) no longer verify"
    return f"changed since run {previous.run_id}: " + "; ".join(changes)


@dataclass
class StepResult:
    step: str
    status: str                     # ran | cached | failed | skipped
    decision: str
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class RunResult:
    run_id: str
    runs_dir: str
    status: str
    steps: list[StepResult]
    error: ImgpipeError | None = None

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.run_id)


class LocalRunner:
    """Runs the pipeline in this process, with caching and a metadata store."""

    def __init__(self, config: PipelineConfig, runs_dir: str = "runs",
                 config_path: str | None = None, use_cache: bool = True,
                 log: Callable[[str], None] = print, steps: tuple[dag.Step, ...] = dag.STEPS):
        self.config = config
        self.steps = steps
        self.runs_dir = os.path.abspath(runs_dir)
        self.config_path = config_path
        self.use_cache = use_cache
        self.log = log
        self.store = MetadataStore(os.path.join(self.runs_dir, METADATA_FILE))

    # --- config references ---------------------------------------------------------

    def section(self, name: str):
        """A config section with references resolved (see `resolved_section`)."""
        return resolved_section(self.config, name, self.store)

    # --- cache key -----------------------------------------------------------------

    def key_parts(self, step: dag.Step, module: Any,
                  inputs: dict[str, artifacts.Artifact]) -> dict[str, Any]:
        sections = {name: self.section(name).model_dump(mode="json", by_alias=True)
                    for name in step.sections}
        beam = self.config.beam.model_dump(mode="json")
        runtime_options = {key: beam.get(key) for key in step.runtime}
        input_prints = {name: art.fingerprint for name, art in sorted(inputs.items())}
        external = getattr(module, "external_inputs", None)
        if external is not None:
            input_prints.update(external(**{name: self.section(name)
                                            for name in step.sections}))
        return {
            "code": {"version": runtime.package_version(), "source": source_hash(step.code)},
            "config": sections,
            "runtime": runtime_options,
            "inputs": input_prints,
        }

    def _verified_outputs(self, execution: Execution) -> dict[str, artifacts.Artifact] | None:
        outputs = {}
        for row in self.store.artifacts_of(execution.id, "output"):
            try:
                art = artifacts.read(row["uri"], row["type"])
            except ArtifactError:
                return None
            if art.fingerprint != row["fingerprint"]:
                return None
            outputs[row["name"]] = art
        return outputs or None

    # --- running -------------------------------------------------------------------

    def run(self, until: str | None = None) -> RunResult:
        names = [step.name for step in self.steps]
        if until is not None and until not in names:
            raise ConfigError(f"--until {until!r} is not a step; steps are {', '.join(names)}.")
        run_id = self.store.start_run(self.config.name, self.config.to_dict(), self.config_path)
        self.log(f"run {run_id}  (pipeline {self.config.name}, runs dir {self.runs_dir})")
        produced: dict[str, artifacts.Artifact] = {}
        results: list[StepResult] = []
        last = names.index(until) if until else len(names) - 1
        for step in self.steps[: last + 1]:
            try:
                result = self._run_step(run_id, step, produced)
            except ImgpipeError as exc:
                results.append(StepResult(step.name, "failed", "", error=str(exc)))
                self.store.end_run(run_id, "failed", str(exc))
                self.log(f"  {step.name:<10} FAILED: {exc}")
                self._report(run_id, "failed", results, str(exc))
                return RunResult(run_id, self.runs_dir, "failed", results, exc)
            results.append(result)
        self.store.end_run(run_id, "succeeded")
        self._report(run_id, "succeeded", results)
        return RunResult(run_id, self.runs_dir, "succeeded", results)

    def _report(self, run_id: str, status: str, results: list[StepResult],
                error: str | None = None) -> None:
        if not any(r.outputs for r in results):
            return
        from pipeline import report  # matplotlib: only once there is something to show

        try:
            path = report.write(os.path.join(self.runs_dir, run_id), run_id, status, results,
                                error)
        except Exception as exc:  # a report must never fail the run it describes
            self.log(f"  (report not written: {type(exc).__name__}: {exc})")
            return
        self.log(f"  report   {path}")

    def _run_step(self, run_id: str, step: dag.Step,
                  produced: dict[str, artifacts.Artifact]) -> StepResult:
        module = importlib.import_module(step.module)
        inputs = {param: produced[ref] for param, ref in step.inputs.items()}
        for param, ref in step.previous.items():
            record = self.store.previous_output(self.config.name, *ref.split("."), run_id)
            if record is not None and artifacts.is_committed(record.uri):
                inputs[param] = artifacts.read(record.uri, record.type)
        extra: dict[str, Any] = {}
        baseline_prints = {}
        for param, alias in step.baseline.items():
            version = baseline_version(self.config, alias)
            extra[param] = version.path if version else None
            baseline_prints[param] = (f"{version.ref} {artifacts.fingerprint_json(version.card)}"
                                      if version else None)
        parts = self.key_parts(step, module, inputs)
        if baseline_prints:
            parts["inputs"].update(baseline_prints)
        cache_key = artifacts.fingerprint_json(parts)

        if self.use_cache and step.cache:
            for candidate in self.store.find_cached(step.name, cache_key):
                outputs = self._verified_outputs(candidate)
                if outputs is None:
                    continue
                decision = (f"reused execution {candidate.id} of run {candidate.run_id}: "
                            "same code, config, runtime and input fingerprints")
                self.store.record_cached(run_id, step.name, candidate, decision)
                for name, art in outputs.items():
                    produced[f"{step.name}.{name}"] = art
                self.log(f"  {step.name:<10} cached   {decision}")
                return StepResult(step.name, "cached", decision,
                                  outputs={n: a.uri for n, a in outputs.items()},
                                  summary=candidate.summary)
            # Only on a miss: which parts of the key changed since the last execution.
            decision = explain_miss(parts, self.store.last_execution(self.config.name,
                                                                     step.name))
        elif not step.cache:
            decision = "always runs (effects outside its artifacts; idempotent)"
        else:
            decision = "cache disabled (--no-cache)"

        execution_id = self.store.start_execution(run_id, step.name, cache_key, parts, decision)
        for param, art in inputs.items():
            self.store.record_artifact(execution_id, "input", param, art.uri, art.type,
                                       art.fingerprint, art.properties, art.created)
        step_dir = os.path.join(self.runs_dir, run_id, step.name)
        out_uris = {name: os.path.join(step_dir, name) for name in step.outputs}
        self.log(f"  {step.name:<10} running  ({decision})")
        if step.config:
            extra["pipeline_config"] = self.config.to_dict()
        if "scratch" in inspect.signature(module.run).parameters:
            # Stable across reruns of the same key: a killed step resumes from it.
            extra["scratch"] = os.path.join(self.runs_dir, "scratch", step.name, cache_key[:16])
        started = time.perf_counter()
        try:
            summary = call_step(module, step, self.config, self.section, inputs, out_uris,
                                {"run_id": run_id, "step": step.name,
                                 "execution_id": execution_id, "pipeline": self.config.name},
                                extra)
            outputs = {name: artifacts.read(uri, step.outputs[name])
                       for name, uri in out_uris.items()}
        except ImgpipeError as exc:
            self.store.finish_execution(execution_id, "failed", error=str(exc))
            raise
        except Exception:  # a bug or library failure: keep the traceback on record
            self.store.finish_execution(execution_id, "failed", error=traceback.format_exc())
            raise
        seconds = time.perf_counter() - started
        runtime.release_memory()
        for name, art in outputs.items():
            self.store.record_artifact(execution_id, "output", name, art.uri, art.type,
                                       art.fingerprint, art.properties, art.created)
            produced[f"{step.name}.{name}"] = art
        self.store.finish_execution(execution_id, "succeeded", summary=summary)
        self.log(f"  {step.name:<10} done     {seconds:.1f}s")
        for line in (summary or {}).get("lines", []):
            self.log(f"             {line}")
        return StepResult(step.name, "ran", decision, seconds,
                          {n: a.uri for n, a in outputs.items()}, summary)


def call_step(module: Any, step: dag.Step, config: PipelineConfig, section: Callable,
              inputs: dict[str, Any], outputs: dict[str, str], producer: dict[str, Any],
              extra: dict[str, Any]) -> Any:
    """`components.<step>.run(...)` with its inputs, config sections, output URIs and
    extras; the local runner and the KFP components both call steps through this."""
    return module.run(
        **extra,
        **inputs,
        **{name: section(name) for name in step.sections},
        # Beam steps get the whole beam section; only step.runtime keys are in the key.
        **({"beam": config.beam} if step.runtime else {}),
        **outputs,
        producer=producer,
    )


def resolved_section(config: PipelineConfig, name: str, store: MetadataStore | None):
    """A config section with references resolved: `model.weights: run:RUN_ID` or
    `MODEL@ALIAS` / `MODEL:VERSION` becomes the path of that model's Keras file. The
    local runner and the KFP components both read sections through this."""
    section = config.section(name)
    if name == "model" and section.weights:
        path = resolve_weights(section.weights, store, config.push.destination)
        if path != section.weights:
            section = section.model_copy(update={"weights": path})
    return section


def baseline_version(config: PipelineConfig, alias: str):
    """The registry version holding `alias` ("default": `push.baseline_alias`) for this
    pipeline's model, or None."""
    from components.registry import Registry

    alias = config.push.baseline_alias if alias == "default" else alias
    return Registry(config.push.destination).holder(config.model_name, alias)


def resolve_weights(weights: str, store: MetadataStore | None, registry_root: str) -> str:
    """`run:RUN_ID` -> that run's trained Keras model (needs the local metadata store);
    `NAME@ALIAS` / `NAME:VERSION` -> the pushed version's; anything else (imagenet, a
    file) is returned as is."""
    if weights.startswith("run:"):
        run_id = weights[4:]
        if store is None:
            raise ConfigError(f"model.weights {weights} needs the local metadata store; "
                              "on Kubeflow/Vertex use a pushed model (NAME@ALIAS).")
        record = store.run_output(run_id, "train", "trained_model")
        if record is None:
            raise ConfigError(f"model.weights {weights}: no unique run {run_id!r} with a trained "
                              f"model in {store.path}; list runs with `imgpipe runs list`.")
        return fileio.join(record.uri, "model.keras")
    if weights == "imagenet" or fileio.exists(weights):
        return weights
    from components import registry  # only when a registry reference is used

    if registry.is_reference(weights):
        return fileio.join(registry.Registry(registry_root).resolve(weights).path, "model.keras")
    raise ConfigError(f"model.weights {weights!r} is not a file, 'imagenet', run:RUN_ID or a "
                      "pushed model reference (NAME@ALIAS, NAME:VERSION).")


def run_pipeline(config: PipelineConfig, runs_dir: str = "runs", config_path: str | None = None,
                 until: str | None = None, use_cache: bool = True,
                 log: Callable[[str], None] = print) -> RunResult:
    """Runs the pipeline locally; see LocalRunner."""
    runner = LocalRunner(config, runs_dir, config_path, use_cache, log)
    return runner.run(until)


def describe_run(store: MetadataStore, run_id: str) -> dict[str, Any]:
    """A run with its executions, decisions and artifacts (for `imgpipe runs show`)."""
    run = store.get_run(run_id)
    if run is None:
        matches = [r for r in store.list_runs(limit=100000) if r["id"].startswith(run_id)]
        if len(matches) != 1:
            raise ConfigError(f"no run {run_id!r} in {store.path}; list runs with "
                              "`imgpipe runs list`.")
        run = matches[0]
    steps = []
    for execution in store.executions(run["id"]):
        steps.append({
            "step": execution.step,
            "status": execution.status,
            "decision": execution.decision,
            "cached_from": execution.cached_from,
            "started": execution.started,
            "ended": execution.ended,
            "error": execution.error,
            "summary": execution.summary,
            "inputs": {a["name"]: a["uri"] for a in store.artifacts_of(execution.id, "input")},
            "outputs": {a["name"]: {"uri": a["uri"], "type": a["type"],
                                    "fingerprint": a["fingerprint"]}
                        for a in store.artifacts_of(execution.id, "output")},
        })
    run = {k: v for k, v in run.items() if k != "config"} | {"config": run["config"]}
    run["steps"] = steps
    return run
