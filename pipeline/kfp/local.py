"""Runs the compiled pipeline with `kfp.local` on this machine (`imgpipe run --engine
kfp-local`): builds it with `pipeline/kfp/compile.py`, reads kfp.local's console output
task by task, and records the run as the local runner records one (the runs folder's
metadata store, engine kfp-local; the local runner's step lines; report.html)."""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Callable, Iterator

from components import runtime
from pipeline import dag, invoke
from pipeline.config import PipelineConfig
from pipeline.kfp import docker as kfp_docker
from pipeline.kfp.compile import build_pipeline
from pipeline.kfp.docker import ENGINE_DOCKER
from pipeline.results import StepResult, detail_line, not_run, step_line, summary_from_artifacts

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
# A traceback's markers under the failing expression (^^^^^^): never the error.
_CARETS = re.compile(r"^[\s~^]+$")
# kfp.local asking for an output a finished task did not write.
_NO_OUTPUT = re.compile(r"Tried to get output '[^']+' from task '([^']+)'")


def task_step(task: str, steps: tuple[dag.Node, ...] = dag.STEPS) -> dag.Node | None:
    """The DAG step a kfp.local task runs (KFP names `infra_validate` infra-validate);
    None for the resolve and report tasks."""
    for node in steps:
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
        # the task that ended with FAILURE and its last lines: kfp.local logs the end
        # of a failed task, then raises
        self.failed: tuple[str, list[str]] | None = None

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
            if ended[2] != "SUCCESS":
                self.failed = (ended[1], self.tail)
            self.task = None
            return
        if self.task is None:
            return
        node = task_step(self.task, self.recorder.steps)   # None: resolve or report
        text = line[len(_TASK_INDENT):] if line.startswith(_TASK_INDENT) else line
        if node is not None and text.startswith(f"{node.name}: "):
            self.lines.append(text[len(node.name) + 2:])
        elif node is not None and _STEP_LINE.match(text) and not _CARETS.match(text):
            self.recorder.log(text.rstrip())
        elif text.strip() and not text.startswith("[KFP Executor") \
                and not _NATIVE_LOG.match(text) and not _CARETS.match(text):
            self.tail = (self.tail + [text.rstrip()])[-40:]


class _Recorder:
    """A kfp.local run in the metadata store as its tasks start and end: one execution
    per step (inputs, outputs with their fingerprints, summary lines), the step lines
    the local runner prints, and the steps' results."""

    def __init__(self, store: Any, run_id: str, run_root: str, log: Callable[[str], None],
                 steps: tuple[dag.Node, ...] = dag.STEPS):
        self.store, self.run_id, self.run_root, self.log = store, run_id, run_root, log
        self.steps = steps
        self.results: list[Any] = []
        self.running: dict[str, tuple[int, float]] = {}
        # (task, error line) of tasks kfp.local took for successes that wrote nothing
        self.failed: list[tuple[str, str]] = []

    def _uri(self, node: dag.Node, output: str) -> str:
        return os.path.join(self.run_root, node.name.replace("_", "-"), output)

    def start(self, task: str) -> None:
        import time

        from components import artifacts
        from pipeline.metadata import UNKEYED

        node = task_step(task, self.steps)
        if node is None:
            return
        execution = self.store.start_execution(self.run_id, node.name, UNKEYED, {},
                                               DECISION_LOCAL)
        uris = {param: self._uri(dag.get(ref.split(".")[0], self.steps), ref.split(".")[1])
                for param, ref in node.inputs.items()}
        self.store.record_artifacts(execution, "input", {
            param: artifacts.read(uri) for param, uri in uris.items()
            if artifacts.is_committed(uri)})
        self.running[node.name] = (execution, time.perf_counter())
        self.log(step_line(node.name, "running", f"({DECISION_LOCAL})"))

    def end(self, task: str, status: str, lines: list[str], tail: list[str]) -> None:
        import time

        from components import artifacts

        node = task_step(task, self.steps)
        if node is None or node.name not in self.running:
            return
        execution, began = self.running.pop(node.name)
        seconds = time.perf_counter() - began
        missing = [o for o in node.spec.outputs if not artifacts.is_committed(self._uri(node, o))]
        if status == "SUCCESS" and missing:
            # kfp.local counts a container that ran nothing (the image's ENTRYPOINT given
            # the task's command as arguments), or one it could not wait for, as success
            status, tail = "FAILURE", [_ran_nothing(task, missing)]
            self.failed.append((task, tail[0]))
        if status != "SUCCESS":
            # the task's own error, one line, as the local runner records it
            error = str(_task_error(tail, task, hint=False))
            self.store.finish_execution(execution, "failed", error=error)
            self.results.append(StepResult(node.name, "failed", DECISION_LOCAL, seconds,
                                           error=error))
            self.log(step_line(node.name, "FAILED", f"{seconds:.1f}s: {error}"))
            return
        outputs = {o: artifacts.read(self._uri(node, o), node.spec.output_type(o))
                   for o in node.spec.outputs}
        self.store.record_artifacts(execution, "output", outputs)
        # kfp.local prints the steps' lines, not their results: what the run's outcome
        # reads comes from the artifacts (the gate, the delivery, the fields shown)
        summary = summary_from_artifacts(node.spec, outputs)
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
        """Steps that did not run because a gate before them closed (`dag.closed_gates`,
        as the local runner finds them): recorded as not run with the reason, and for
        the delivering step that nothing was pushed (`results.not_run`)."""
        from pipeline.metadata import UNKEYED

        summaries = {r.step: r.summary for r in self.results}
        for node in self.steps:
            if node.name in summaries:
                continue
            closed = dag.closed_gates(node, self.steps, summaries)
            if not closed:
                continue
            result = not_run(node.spec, [(gate.spec, summaries[gate.name]) for gate in closed])
            execution = self.store.start_execution(self.run_id, node.name, UNKEYED, {},
                                                   result.decision)
            self.store.finish_execution(execution, "skipped", summary=result.summary)
            self.results.append(result)
            summaries[node.name] = result.summary
            self.log(step_line(node.name, "skipped", f"({result.decision})"))
            for line in (result.summary or {}).get("lines", []):
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


def _ran_nothing(task: str, missing: list[str] | None = None) -> str:
    """The error line of a task kfp.local took for a success that wrote no outputs (its
    `missing` ones when known): a container whose ENTRYPOINT ran instead of the task's
    command, or one kfp.local could not wait for."""
    named = f" ({', '.join(missing)})" if missing else ""
    return (f"components.errors.ImgpipeError: the task {task} ended as a success but wrote "
            f"no outputs{named}: its step did not run (in a container, an image ENTRYPOINT "
            "in front of the task's command does that)")


def _task_error(tail: list[str], task: str | None, hint: bool = True) -> Any:
    """The error a failed task raised, as the CLI's error (our own exception class
    when the task's traceback names one), or an ImgpipeError with its last lines."""
    from components import errors

    for index in range(len(tail) - 1, -1, -1):
        found = _ERROR_LINE.match(tail[index].strip())
        if found and isinstance(getattr(errors, found[1], None), type):
            # a message of several lines (validate's anomalies) goes on below it
            rest = [line.rstrip() for line in tail[index + 1:] if line.strip()]
            return getattr(errors, found[1])("\n".join([found[2], *rest]))
    last = [line.strip() for line in tail if line.strip() and not _CARETS.match(line)
            and not line.lstrip().startswith(("{", "}", '"', "[", "]", "File ", "Traceback"))]
    return errors.ImgpipeError(f"the kfp.local task {task or '?'} failed: "
                               + (" | ".join(last[-2:]) or "it ended without an error "
                                  "message (killed?)")
                               + ("; rerun with -v for its whole log." if hint else ""))


def run_local(config: PipelineConfig, runs_dir: str = "runs", config_path: str | None = None,
              log: Callable[[str], None] | None = None, verbose: bool = False,
              dag_location: str = "", engine: str = ENGINE_LOCAL,
              schedule_time: str = "") -> Any:
    """Runs the compiled KFP pipeline with `kfp.local` (engine kfp-local: a subprocess per
    task, in this environment; kfp-docker: a container of the task's image per task,
    `pipeline.kfp.docker`) and records it as the local runner records a run: in the runs
    folder's metadata store, artifacts under RUNS_DIR/RUN_ID/TASK/, a report.html;
    prints the local runner's step lines (-v: kfp.local's own output)."""
    import sys
    import warnings

    from kfp import local

    from pipeline.report import html as report
    from pipeline.metadata import METADATA_FILE, MetadataStore
    from pipeline.results import RunResult

    if log is None:
        # not print(): kfp.local replaces it while it streams a task's output
        out = sys.stdout

        def log(line: str) -> None:
            out.write(line + "\n")
            out.flush()

    runs_dir = os.path.abspath(runs_dir)
    steps = dag.active(dag.load(dag_location), config)
    containers: Any = contextlib.nullcontext()
    runner = local.SubprocessRunner(use_venv=False)
    if engine == ENGINE_DOCKER:
        config = kfp_docker.prepare(config, steps)     # Docker and the images are there
        runner, containers = kfp_docker.runner(config), kfp_docker.task_containers(config)
    store = MetadataStore(os.path.join(runs_dir, METADATA_FILE))
    run_id = store.start_run(config.name, config.to_dict(), config_path, engine=engine)
    log(f"run {run_id}  (pipeline {config.name}, runs dir {runs_dir}, engine {engine})")
    log(f"  {config.decision_line()}")        # the data's shape, the defaults that followed
    recorder = _Recorder(store, run_id, os.path.join(runs_dir, run_id), log, steps)
    task_log = _TaskLog(recorder, echo=sys.stdout if verbose else None)
    local.init(runner=runner, pipeline_root=runs_dir, raise_on_error=True)
    def finish(status: str, error: str | None) -> None:
        """The run's end on record and its report (also when it failed)."""
        store.end_run(run_id, status, error)
        runtime.release_memory()
        report.write_for_run(runs_dir, run_id, status, recorder.results, error,
                             invoke.recorded_config(config, steps), log)

    error = None
    try:
        with warnings.catch_warnings(), _named_run(run_id), containers, \
                contextlib.redirect_stdout(task_log):
            if not verbose:   # the base-image and ignored-resource notices, per task
                warnings.filterwarnings("ignore", module="kfp")
            build_pipeline(config, dag_location, scheduled=False, schedule_time=schedule_time)()
    except RuntimeError as exc:       # kfp.local: a task ended with FAILURE
        failed, tail = task_log.failed or (task_log.task, task_log.tail)
        if failed is None:            # not a task's failure: kfp.local's own error
            finish("failed", _ANSI.sub("", f"{type(exc).__name__}: {exc}"))
            raise
        recorder.fail_running(tail)
        error = _task_error(tail, failed)
        error.__cause__ = exc
    except ValueError as exc:
        # kfp.local reading the outputs of a task it took for a success that wrote none
        # (a container whose ENTRYPOINT ran instead of the task's command)
        empty = _NO_OUTPUT.search(str(exc))
        if empty is None:
            recorder.fail_running([f"interrupted ({type(exc).__name__})"])
            finish("failed", f"{type(exc).__name__}: {exc}")
            raise
        line = _ran_nothing(empty[1])
        recorder.fail_running([line])
        error = _task_error([line], empty[1])
        error.__cause__ = exc
    except BaseException as exc:     # a bug, Ctrl-C, SIGTERM: the run still ends on record
        recorder.fail_running([f"interrupted ({type(exc).__name__})"])
        if not isinstance(exc, Exception):    # a stop: no report, it should stop now
            store.end_run(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    if error is None and recorder.failed:      # a task that ran nothing, taken for a success
        task, line = recorder.failed[0]
        error = _task_error([line], task)
    if error is None:
        recorder.skipped()
    status = "failed" if error is not None else "succeeded"
    finish(status, None if error is None else str(error))
    return RunResult(run_id, runs_dir, status, recorder.results, error, engine=engine)
