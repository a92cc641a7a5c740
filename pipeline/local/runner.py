"""The local runner: runs the DAG in order, reuses cached executions, records lineage.

A step is reused when an earlier successful execution had the same cache key (see
`pipeline/cache.py`) and its outputs still verify: every file the manifest lists is
there with the size and content it had when it was committed (files whose size,
times and inode are unchanged since they were last checked are not read again).
Every decision is recorded with its reason; on a miss the reason names what changed
since the step last ran, or which file of the cached output is damaged.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from components import artifacts, runtime
from components.io import fileio
from components.errors import ArtifactError, ConfigError, ImgpipeError
from pipeline import cache, dag, invoke
from pipeline.config import PipelineConfig
from pipeline.metadata import METADATA_FILE, Execution, MetadataStore
from pipeline.results import RunResult, StepResult, detail_line, not_run, record, step_line

CODE_INDEX_FILE = ".code-index.json"     # pipeline/cache.py: parsed sources, by file version


@dataclass
class _Prepared:
    """A step ready to run or be reused: its resolved call and its cache key."""

    node: dag.Node
    resolved: invoke.Resolved
    inputs: dict[str, artifacts.Artifact | None]
    parts: dict[str, Any]
    key: str


class LocalRunner:
    """Runs the pipeline in this process, with caching and a metadata store."""

    def __init__(self, config: PipelineConfig, runs_dir: str = "runs",
                 config_path: str | None = None, use_cache: bool = True,
                 log: Callable[[str], None] = print, steps: tuple[dag.Node, ...] = dag.STEPS):
        self.config = config
        self.declared = steps
        self.steps = dag.active(steps, config)      # optional steps only when configured
        self.runs_dir = os.path.abspath(runs_dir)
        self.config_path = config_path
        self.use_cache = use_cache
        self.log = log
        self.store = MetadataStore(os.path.join(self.runs_dir, METADATA_FILE))
        cache.use_index(os.path.join(self.runs_dir, CODE_INDEX_FILE))
        self.context = invoke.Context.from_config(config, self.store)
        # step -> (its config as the cache key has it, its resolved call): once per runner
        self._resolutions: dict[str, tuple[dict[str, Any], invoke.Resolved]] = {}

    def run(self, until: str | None = None) -> RunResult:
        names = dag.names(self.steps)
        if until is not None and until not in names and until in dag.names(self.declared):
            raise ConfigError(f"--until {until!r}: this config leaves out that optional step "
                              "(it runs only when its section enables it); steps are "
                              f"{', '.join(names)}.")
        if until is not None and until not in names:
            raise ConfigError(f"--until {until!r} is not a step; steps are {', '.join(names)}.")
        last = names.index(until) if until else len(names) - 1
        preflight(self.config, self.runs_dir, self.steps[: last + 1], self.context)
        for node in self.steps[: last + 1]:
            # The roles steps declare (the baseline, start weights, a warm start, tuned
            # values) resolve now, once: a wrong reference or a damaged registry file
            # stops the run before it starts, and each step runs with what was resolved.
            self._resolve(node)
        run_id = self.store.start_run(self.config.name, self.config.to_dict(), self.config_path)
        self.log(f"run {run_id}  (pipeline {self.config.name}, runs dir {self.runs_dir})")
        self.log(f"  {self.config.decision_line()}")     # the data's shape, the defaults
        # One temporary folder for the run: steps running side by side share it (a step
        # of its own would point the process-wide TMPDIR elsewhere under the other).
        try:
            with runtime.private_tempdir(), _Beside() as beside:
                return self._run_steps(run_id, self.steps[: last + 1], beside)
        finally:
            runtime.thaw()      # what the memory release after each step froze

    def _run_steps(self, run_id: str, steps: tuple[dag.Node, ...], beside: "_Beside"
                   ) -> RunResult:
        """The steps in DAG order. A step declared `isolated` (its work runs in a child
        process) starts beside the others as soon as its inputs exist, and is waited
        for when a later step reads its outputs (infra validation's fresh TensorFlow
        process loads the model while evaluate scores it). A step behind a gate that
        closed does not run (`dag.closed_gates`): it is recorded as not run, with why."""
        produced: dict[str, artifacts.Artifact] = {}
        results: dict[str, StepResult] = {}
        order = [node.name for node in steps]
        for node in steps:
            current = node.name              # the step whose failure would end the run
            try:
                for later in steps:
                    if later.spec.isolated and later.name not in results and \
                            not beside.started(later.name) and \
                            _upstream(later) <= set(results) and \
                            not self._closed(later, results):
                        beside.start(later.name, self._run_step, run_id, later, produced)
                for name in sorted(_upstream(node) | ({node.name} & beside.names()),
                                   key=order.index):
                    if beside.started(name) and name not in results:
                        current = name
                        if not beside.done(name):
                            self._while_waiting(run_id, [results[n] for n in order
                                                         if n in results])
                        results[name] = beside.result(name)
                current = node.name
                closed = self._closed(node, results)
                if closed and node.name not in results:
                    results[node.name] = self._not_run(run_id, node, closed)
                elif node.name not in results:
                    results[node.name] = self._run_step(run_id, node, produced)
                cache.save_index()        # sources parsed for the keys, for the next run
            except ImgpipeError as exc:
                done = [results[n] for n in order if n in results]
                done.append(StepResult(current, "failed", "", error=str(exc)))
                beside.wait()
                self.store.end_run(run_id, "failed", str(exc))
                self.log(f"  {current:<10} FAILED: {exc}")
                self._report(run_id, "failed", done, str(exc))
                return RunResult(run_id, self.runs_dir, "failed", done, exc)
            except BaseException as exc:
                # A bug, a library failure, Ctrl-C or SIGTERM: the run still ends on record.
                reason = failure_reason(exc)
                self.store.end_run(run_id, "failed", reason)
                if isinstance(exc, Exception):   # not after a stop: that should stop now
                    done = [results[n] for n in order if n in results]
                    self._report(run_id, "failed",
                                 done + [StepResult(current, "failed", "", error=reason)],
                                 reason)
                raise
        ordered = [results[n] for n in order]
        self.store.end_run(run_id, "succeeded")
        self._report(run_id, "succeeded", ordered)
        return RunResult(run_id, self.runs_dir, "succeeded", ordered)

    def _closed(self, node: dag.Node, results: dict[str, StepResult]
                ) -> list[tuple[Any, dict[str, Any] | None]]:
        """The gates before `node` that this run closed, with their recorded results."""
        summaries = {name: result.summary for name, result in results.items()}
        return [(gate.spec, summaries[gate.name])
                for gate in dag.closed_gates(node, self.steps, summaries)]

    def _not_run(self, run_id: str, node: dag.Node,
                 closed: list[tuple[Any, dict[str, Any] | None]]) -> StepResult:
        """A step behind a closed gate, on record as kfp.local records one."""
        from pipeline.metadata import UNKEYED

        result = not_run(node.spec, closed)
        execution = self.store.start_execution(run_id, node.name, UNKEYED, {}, result.decision)
        self.store.finish_execution(execution, "skipped", summary=result.summary)
        self.log(step_line(node.name, "skipped", f"({result.decision})"))
        for line in (result.summary or {}).get("lines", []):
            self.log(detail_line(line))
        return result

    def cached_output(self, step: str, output: str
                      ) -> tuple[tuple[artifacts.Artifact, Execution] | None, str]:
        """`step.output` of the earlier execution a run would reuse now (same code,
        config and inputs; outputs verify) with that execution, without starting a run;
        or None and why not. Only for a step without upstream inputs (ingest)."""
        node = dag.get(step, self.steps)
        if node.inputs or node.previous:
            raise ValueError(f"{step} has upstream inputs; run the pipeline instead")
        prepared = self._prepare("", node, {})
        damaged = None
        for candidate in self.store.find_cached(step, prepared.key):
            outputs, problem = self._verified_outputs(candidate)
            if outputs is not None:
                return (outputs[output], candidate), "cached"
            damaged = damaged or (f"the output of execution {candidate.id} (run "
                                  f"{candidate.run_id}) no longer verifies: {problem}")
        return None, damaged or cache.explain_miss(
            prepared.parts, self.store.last_execution(self.config.name, step))

    def _while_waiting(self, run_id: str, done: list[StepResult]) -> None:
        """Work for the main thread while a step beside it finishes: the report's plots
        of the steps done so far (the report then finds them drawn, in the plot cache)."""
        from pipeline.report import html as report

        report.draw_plots(self.runs_dir, run_id, done)

    def _report(self, run_id: str, status: str, results: list[StepResult],
                error: str | None = None) -> None:
        from pipeline.report import html as report

        report.write_for_run(self.runs_dir, run_id, status, results, error,
                             invoke.recorded_config(self.config, self.steps), self.log)

    # --- one step ---------------------------------------------------------------------

    def _run_step(self, run_id: str, node: dag.Node,
                  produced: dict[str, artifacts.Artifact]) -> StepResult:
        prepared = self._prepare(run_id, node, produced)
        if not node.spec.cache:
            decision = "always runs (effects outside its artifacts; idempotent)"
            return self._execute(run_id, prepared, decision, produced, scratch=None)
        # One execution of a (step, key) at a time: a concurrent run of the same config
        # waits here, then reuses the result instead of sharing checkpoints.
        scratch = os.path.join(self.runs_dir, "scratch", node.name, prepared.key[:16])
        with self._key_lock(scratch, run_id, node.name):
            if self.use_cache:
                reused, decision = self._reuse(run_id, prepared, produced)
                if reused is not None:
                    return reused
            else:
                decision = "cache disabled (--no-cache)"
            return self._execute(run_id, prepared, _resuming(decision, scratch), produced,
                                 scratch)

    @contextlib.contextmanager
    def _key_lock(self, scratch: str, run_id: str, step: str) -> Iterator[None]:
        """Held while a step with this key is looked up and executed. Its scratch folder
        (checkpoints) can then only be an earlier *failed* execution's, never a live one."""
        import fcntl

        os.makedirs(os.path.dirname(scratch), exist_ok=True)
        with open(f"{scratch}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another run"
                self.log(f"  {step:<10} waiting  (run {holder} is executing this step with "
                         "the same inputs)")
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(run_id)
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare(self, run_id: str, node: dag.Node,
                 produced: dict[str, artifacts.Artifact]) -> _Prepared:
        """Inputs, resolved config and the cache key of a step."""
        inputs: dict[str, artifacts.Artifact | None] = {
            param: produced[ref] for param, ref in node.inputs.items()}
        for param, ref in node.previous.items():
            record = self.store.previous_output(self.config.name, *ref.split("."), run_id)
            inputs[param] = (artifacts.read(record.uri, record.type)
                             if record is not None and artifacts.is_committed(record.uri)
                             else None)
        keyed, resolved = self._resolve(node)
        fingerprints = {name: art.fingerprint if art else None
                        for name, art in sorted(inputs.items())}
        fingerprints.update(invoke.external_fingerprints(node, resolved))
        fingerprints.update(resolved.identities)
        parts = {"code": cache.code_fingerprint(node.spec.module),
                 "config": keyed,
                 "inputs": fingerprints}
        return _Prepared(node, resolved, inputs, parts, cache.key(parts))

    def _resolve(self, node: dag.Node) -> tuple[dict[str, Any], invoke.Resolved]:
        """The step's config as its cache key has it (JSON) and its resolved call: the
        typed sections straight from the loaded config (no JSON round trip in this
        process) and its roles resolved, once per runner, for both the key and the call."""
        if node.name not in self._resolutions:
            keyed = invoke.keyed_config(node, invoke.step_config(node, self.config))
            resolved = invoke.resolve(node, invoke.StepSections.of(node, self.config),
                                      self.context)
            self._resolutions[node.name] = (keyed, resolved)
        return self._resolutions[node.name]

    def _reuse(self, run_id: str, prepared: _Prepared, produced: dict[str, artifacts.Artifact]
               ) -> tuple[StepResult | None, str]:
        """A cached result whose outputs verify, or None and why the step must run."""
        name = prepared.node.name
        damaged = None
        for candidate in self.store.find_cached(name, prepared.key):
            outputs, problem = self._verified_outputs(candidate)
            if outputs is None:
                damaged = damaged or (candidate, problem)
                continue
            decision = (f"reused execution {candidate.id} of run {candidate.run_id}: "
                        "same code, config and inputs; outputs verified")
            self.store.record_cached(run_id, name, candidate, decision)
            for output, art in outputs.items():
                produced[f"{name}.{output}"] = art
            self.log(step_line(name, "cached", decision))
            return StepResult(name, "cached", decision,
                              outputs={n: a.uri for n, a in outputs.items()},
                              summary=record(prepared.node.spec, candidate.summary)), decision
        if damaged is not None:
            candidate, problem = damaged
            return None, (f"the output of execution {candidate.id} (run {candidate.run_id}) "
                          f"no longer verifies: {problem}")
        # Only on a miss: which parts of the key changed since the last execution.
        return None, cache.explain_miss(prepared.parts,
                                        self.store.last_execution(self.config.name, name))

    def _verified_outputs(self, execution: Execution
                          ) -> tuple[dict[str, artifacts.Artifact] | None, str | None]:
        outputs = {}
        for row in self.store.artifacts_of(execution.id, "output"):
            if not fileio.exists(row["uri"]):
                return None, f"{row['name']}: {row['uri']} was deleted"
            try:
                art = artifacts.read(row["uri"], row["type"])
            except ArtifactError as exc:
                return None, f"{row['name']}: {exc}"
            if art.fingerprint != row["fingerprint"]:
                return None, f"{row['name']}: its manifest was rewritten ({row['uri']})"
            known = self.store.file_signatures(art.uri)
            problems, verified = artifacts.verify(art, known)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                return None, f"{row['name']}: {problems[0]}{more}"
            if verified != known:
                self.store.save_signatures(art.uri, verified)
            outputs[row["name"]] = art
        if not outputs:
            return None, "it recorded no outputs"
        return outputs, None

    def _execute(self, run_id: str, prepared: _Prepared, decision: str,
                 produced: dict[str, artifacts.Artifact], scratch: str | None) -> StepResult:
        node, name = prepared.node, prepared.node.name
        execution_id = self.store.start_execution(run_id, name, prepared.key, prepared.parts,
                                                  decision)
        self.store.record_artifacts(execution_id, "input", prepared.inputs)
        step_dir = os.path.join(self.runs_dir, run_id, name)
        out_uris = {output: os.path.join(step_dir, output) for output in node.spec.outputs}
        producer = {"run_id": run_id, "step": name, "execution_id": execution_id,
                    "pipeline": self.config.name}
        self.log(step_line(name, "running", f"({decision})"))
        started = time.perf_counter()
        try:
            shared = invoke.shared_folder(os.path.join(self.runs_dir, "shared"), node,
                                          prepared.parts["code"]["source"][:16]) \
                if node.spec.shared else None
            summary = invoke.call(node, prepared.resolved, prepared.inputs, out_uris, producer,
                                  scratch, shared)
            outputs = {output: artifacts.read(uri, node.spec.output_type(output))
                       for output, uri in out_uris.items()}
        except ImgpipeError as exc:
            self.store.finish_execution(execution_id, "failed", error=str(exc))
            raise
        except Exception:  # a bug or library failure: keep the traceback on record
            self.store.finish_execution(execution_id, "failed", error=traceback.format_exc())
            raise
        except BaseException as exc:  # Ctrl-C, SIGTERM
            self.store.finish_execution(execution_id, "failed", error=failure_reason(exc))
            raise
        seconds = time.perf_counter() - started
        runtime.release_memory(freeze=True)
        summary = record(node.spec, summary)
        self.store.record_artifacts(execution_id, "output", outputs)
        for output, art in outputs.items():
            # Hashed at commit a moment ago: remember the files as verified.
            self.store.save_signatures(art.uri, {
                rel: sig for rel in art.files
                if (sig := fileio.stat_signature(fileio.join(art.uri, rel))) is not None})
            produced[f"{name}.{output}"] = art
        stop = node.spec.stop_error(summary)
        if stop is not None:
            # a verdict that ends the run (validate's errors): its outputs are committed
            # and on record, for the message to point at; the run fails with it
            self.store.finish_execution(execution_id, "failed", error=str(stop), summary=summary)
            raise stop
        self.store.finish_execution(execution_id, "succeeded", summary=summary)
        self.log(step_line(name, "done", f"{seconds:.1f}s"))
        for line in (summary or {}).get("lines", []):
            self.log(detail_line(line))
        runtime.raise_deferred_stop()      # a stop the step held back (push): now on record
        return StepResult(name, "ran", decision, seconds,
                          {n: a.uri for n, a in outputs.items()}, summary)


def _resuming(decision: str, scratch: str) -> str:
    """The decision, and that the step resumes an interrupted attempt when one left its
    scratch folder (train: the epochs it finished, resumed from their checkpoint)."""
    if not os.path.isdir(scratch) or not os.listdir(scratch):
        return decision
    from components.trainer.training import EPOCH_LOG, read_epoch_log

    done = len(read_epoch_log(os.path.join(scratch, EPOCH_LOG)).get("loss", []))
    after = f" after its epoch {done}" if done else ""
    return f"{decision}; resumes an interrupted attempt{after} (kept in {scratch})"


def _upstream(node: dag.Node) -> set[str]:
    """The steps of the same run whose outputs `node` reads, or that it runs after."""
    return {ref.split(".", 1)[0] for ref in node.inputs.values()} | set(node.after)


class _Beside:
    """Steps running in a background thread beside the main one (one at a time)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgpipe-step")
        self._futures: dict[str, Any] = {}

    def __enter__(self) -> "_Beside":
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        # after a failure or an interrupt, do not wait for a step beside (its child
        # process ends with ours); otherwise it has been waited for already
        self._pool.shutdown(wait=kind is None, cancel_futures=True)

    def start(self, name: str, fn: Callable[..., StepResult], *args: Any) -> None:
        self._futures[name] = self._pool.submit(fn, *args)

    def started(self, name: str) -> bool:
        return name in self._futures

    def done(self, name: str) -> bool:
        return self._futures[name].done()

    def names(self) -> set[str]:
        return set(self._futures)

    def result(self, name: str) -> StepResult:
        """The step's result; its exception if it failed (raised here, in the caller)."""
        return self._futures[name].result()

    def wait(self) -> None:
        """Lets steps still running beside finish (their records end cleanly)."""
        for future in self._futures.values():
            future.exception()


def preflight(config: PipelineConfig, runs_dir: str, steps: tuple[dag.Node, ...],
              context: invoke.Context | None = None) -> None:
    """Mistakes that would otherwise surface only after the expensive steps: the warm
    start a step resolves against this config, a remote Beam runner, and each step's
    own declared check (`@step(check=...)`: a source, a destination, a batch size),
    run here before any step. `context`: where references resolve (default: the
    config's registry, the runs folder's store)."""
    from components.contract import WARM_START_MODEL, Where

    if config.train.warm_start and any(WARM_START_MODEL in node.spec.resolved.values()
                                       for node in steps):
        # a model that cannot start this config's stops the run before ingest
        invoke.check_warm_start(config, context or invoke.Context.from_config(
            config, MetadataStore(os.path.join(runs_dir, METADATA_FILE))))
    if config.beam.remote:
        raise ConfigError(f"beam.runner {config.beam.runner}: its workers cannot write the "
                          f"artifacts of a local run under {runs_dir}; run the pipeline on "
                          "Vertex AI / Kubeflow (imgpipe submit), where they go to the "
                          "pipeline root in a bucket, or use DirectRunner here.")
    dag.check_before_run(steps, config, Where(remote=False, runs_dir=runs_dir))


def failure_reason(exc: BaseException) -> str:
    """How a run or execution ended, in one line."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    if isinstance(exc, runtime.Stopped):
        return f"interrupted ({exc.signal_name})"
    if runtime.stop_signal():     # a library turned the stop into its own exception
        return f"interrupted ({runtime.stop_signal()})"
    return f"{type(exc).__name__}: {exc}"


def run_pipeline(config: PipelineConfig, runs_dir: str = "runs", config_path: str | None = None,
                 until: str | None = None, use_cache: bool = True,
                 log: Callable[[str], None] = print, dag_location: str = "") -> RunResult:
    """Runs the pipeline locally; see LocalRunner. `dag_location`: a user's DAG
    (`dag.load`), '' for the built-in one."""
    runner = LocalRunner(config, runs_dir, config_path, use_cache, log,
                         dag.load(dag_location))
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
