"""What a run of the pipeline returns, whichever engine ran it (the local runner or
kfp.local): each step's status, cache decision, outputs and summary, and what the run
did (`outcome`: pushed, not blessed, failed ...), which `imgpipe run`, `runs list`,
`backfill` and the report all say the same way.

No step is named here: a step's record carries what its declaration tells the run's
outcome (`record`: its gate and how a closed one is worded, whether it delivers the
run's model, the fields the summary shows), so a record read back from the metadata
store says the same without the code that made it. A step behind a closed gate is
recorded the same way on every engine (`not_run`)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from components.errors import ImgpipeError
from components.runtime import DETAIL_INDENT


def step_line(step: str, state: str, text: str = "") -> str:
    """The line a runner prints as a step changes state (running, cached, done,
    skipped ...), the same for every engine: '  NAME       STATE    TEXT'."""
    return f"  {step:<10} {state:<8} {text}".rstrip()


def detail_line(line: str) -> str:
    """One of a step's summary lines, under its step line."""
    return DETAIL_INDENT + line


# The key of a recorded result holding what the step's declaration tells the run's
# outcome: {gate, says, verdict} for a gate, {delivers: true}, {shows: [fields]}; {} for
# a step that declares none of them. A record without it predates it (`_declared`).
DECLARED = "declared"


def record(spec: Any, summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The result a runner records for a step (`spec`: its StepSpec): the step's own,
    with what its declaration tells the run's outcome under DECLARED. A gate that stops
    the run when it closes (validate) tells nothing: the run fails instead."""
    if summary is None:
        return None
    declared: dict[str, Any] = {}
    if spec.gate is not None and spec.stop is None:
        closed = spec.closed_words()
        declared.update(gate=spec.gate, says=closed.says, verdict=closed.word)
    if spec.delivers:
        declared["delivers"] = True
    if spec.shows:
        declared["shows"] = list(spec.shows)
    out = {key: value for key, value in summary.items() if key != DECLARED}
    return {**out, DECLARED: declared}


def summary_from_artifacts(spec: Any, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """A step's result as its committed outputs tell it, where the engine kept none
    (kfp.local and the KFP report task see only the artifacts): the delivering step's
    record (its outputs' properties), the gate's field and reason, the fields the run's
    summary shows; recorded as `record` does."""
    summary: dict[str, Any] = {}
    for art in outputs.values():
        properties = getattr(art, "properties", None) or {}
        if spec.delivers:
            summary.update(properties)
        if spec.gate is not None and spec.gate in properties:
            summary[spec.gate] = properties[spec.gate]
            summary["reason"] = properties.get("reason")
        summary.update({key: properties[key] for key in spec.shows if key in properties})
    return record(spec, summary) or {}


def not_run(spec: Any, closed: list[tuple[Any, Mapping[str, Any] | None]]) -> "StepResult":
    """The record of a step behind closed gates (`closed`: each gating step's spec and
    recorded result), the same on every engine: not run and why, and for the step that
    delivers the run's model, that nothing was delivered."""
    reason = "; ".join(f"{gate.closed_words().says}: {(summary or {}).get('reason')}"
                       for gate, summary in closed)
    decision = f"not run: its gate is closed ({reason})"
    summary: dict[str, Any] = {"lines": [f"NOTHING PUSHED ({reason})" if spec.delivers
                                         else f"not run ({reason})"], "reason": reason}
    if spec.delivers:
        summary["pushed"] = False
    return StepResult(spec.name, "skipped", decision, summary=record(spec, summary))


def _declared(step: Any) -> dict[str, Any]:
    summary = getattr(step, "summary", None)
    if not summary:
        return {}
    if DECLARED in summary:
        return summary[DECLARED] or {}
    return _declared_by_name(step.step)


@functools.lru_cache(maxsize=None)
def _declared_by_name(name: str) -> dict[str, Any]:
    """What the built-in DAG's step of that name declares: for a record written before
    records carried it (an older run in the metadata store)."""
    from pipeline import dag

    node = next((n for n in dag.STEPS if n.name == name), None)
    return (record(node.spec, {}) or {}).get(DECLARED, {}) if node else {}


def delivery(steps: Iterable[Any]) -> dict[str, Any] | None:
    """The record of the step that delivers the run's model (pushed, model_name,
    version, path, or the reason nothing was pushed); None when the run has none (it
    stopped before, or its DAG delivers nothing)."""
    return next((step.summary for step in steps if _declared(step).get("delivers")), None)


def gates(steps: Iterable[Any]) -> dict[str, Any]:
    """{gate field: its value} of the run's gating steps (blessed: True ...)."""
    return {_declared(step)["gate"]: step.summary.get(_declared(step)["gate"])
            for step in steps if _declared(step).get("gate")}


def outputs_by_ref(steps: list[Any]) -> dict[str, str]:
    """{"step.output": uri} of a run's steps, as `dag.ref(...).uri(...)` looks them up."""
    return {f"{s.step}.{name}": uri for s in steps for name, uri in s.outputs.items()}


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
    engine: str = "local"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.run_id)

    @property
    def outputs(self) -> dict[str, str]:
        return outputs_by_ref(self.steps)

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.step == name), None)

    def push_outcome(self) -> dict[str, Any] | None:
        """The delivering step's record (`delivery`: pushed, model_name, version, path,
        or the reason nothing was pushed); None when the run stopped before it."""
        return delivery(self.steps)

    def outcome(self) -> dict[str, Any]:
        """What the run did (see `outcome`)."""
        return outcome(self.status, self.steps, None if self.error is None else str(self.error))

    def to_json(self) -> dict[str, Any]:
        """The run as one JSON object (`imgpipe run --json`): steps with status,
        decision, seconds, outputs and the gate they returned; what the run did
        (verdict, outcome, accuracy, model) and the pushed version."""
        push = self.push_outcome()
        report = os.path.join(self.run_dir, "report.html")
        did = self.outcome()
        return {
            "run_id": self.run_id,
            "engine": self.engine,
            "status": self.status,
            "error": None if self.error is None else str(self.error),
            "verdict": did["verdict"],
            "outcome": did["text"],
            "accuracy": did["accuracy"],
            "model": did["model"],
            "blessed": gates(self.steps).get("blessed"),
            "pushed": ({k: push.get(k) for k in ("model_name", "version", "path", "alias")}
                       if push and push.get("pushed") else None),
            "reason": push.get("reason") if push else None,
            "report": report if os.path.isfile(report) else None,
            "runs_dir": self.runs_dir,
            "steps": [{"step": s.step, "status": s.status, "decision": s.decision,
                       "seconds": round(s.seconds, 3), "outputs": s.outputs,
                       "lines": (s.summary or {}).get("lines", []), "error": s.error}
                      for s in self.steps],
        }


# What a run did, one word each (`outcome(...)["verdict"]`), beside the verdict a step
# declares for its gate closing (`@step(closed=...)`: not blessed, infra failed).
PUSHED = "pushed"
ALREADY_PUSHED = "already pushed"          # the model was a registry version already
NOTHING_TO_PUSH = "nothing to push"        # push ran and pushed nothing, for another reason
STOPPED = "stopped before push"            # --until, or a DAG without push
FAILED = "failed"
RUNNING = "running"


def outcome(status: str, steps: Iterable[Any], error: str | None = None) -> dict[str, Any]:
    """What a run did, from its status and its steps' records (`StepResult`s, or the
    metadata store's executions: each with step, status, summary, error):
    {verdict: PUSHED | ALREADY_PUSHED | a closed gate's (not blessed, infra failed) |
    NOTHING_TO_PUSH | STOPPED | FAILED | RUNNING, text: one line, e.g. 'pushed digits:3',
    'not blessed (accuracy 0.41 ...)', 'failed at train: ...', accuracy: the one the
    steps show, model: 'NAME:VERSION' pushed (or already there), else None}."""
    steps = list(steps)
    push = delivery(steps) or {}
    shown: dict[str, Any] = {}
    for step in steps:
        for key in _declared(step).get("shows", []):
            shown.setdefault(key, step.summary.get(key))
    model = (f"{push.get('model_name')}:{push.get('version')}"
             if push.get("pushed") and push.get("version") is not None else None)
    did = {"accuracy": shown.get("accuracy"), "model": model}
    failed = next((s for s in steps if s.status == "failed"), None)
    if failed is not None or status not in ("succeeded", RUNNING):
        where = f" at {failed.step}" if failed is not None else ""
        line = one_line((failed.error if failed is not None else None) or error or status)
        word = "failed" if status in ("failed", "succeeded", RUNNING) else status   # died
        after = f" (after push: {model})" if model else ""
        return did | {"verdict": FAILED, "text": f"{word}{where}: {line}{after}"}
    if status == RUNNING:
        last = steps[-1].step if steps else None
        return did | {"verdict": RUNNING, "text": f"running ({last})" if last else "running"}
    if model:
        verdict = ALREADY_PUSHED if push.get("already") else PUSHED
        return did | {"verdict": verdict, "text": f"{verdict} {model}" + _promotion(push)}
    for step in steps:          # the first gate that closed says why nothing was pushed
        gate = _declared(step).get("gate")
        if gate and gate in step.summary and not step.summary[gate]:
            declared, why = _declared(step), step.summary.get("reason")
            return did | {"verdict": declared["verdict"],
                          "text": f"{declared['says']} ({why})" if why else declared["says"]}
    if "pushed" in push:
        reason = push.get("reason") or ""
        return did | {"verdict": NOTHING_TO_PUSH,
                      "text": f"{NOTHING_TO_PUSH} ({reason})" if reason else NOTHING_TO_PUSH}
    last = steps[-1].step if steps else "no step"
    return did | {"verdict": STOPPED, "text": f"stopped after {last} (no push)"}


def _promotion(push: dict[str, Any]) -> str:
    """' (NAME@ALIAS stays on version V: why)' when push left its alias behind (an older
    span's model: the alias moves forward only), else ''."""
    note = push.get("promotion")
    if not isinstance(note, dict) or not note.get("behind"):
        return ""
    return (f" ({push.get('model_name')}@{note.get('alias')} stays on version "
            f"{note.get('from')}: {one_line(str(note['behind']))})")


def one_line(error: str) -> str:
    """An error as one line: a traceback's last line (the exception), else the first."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def duration(seconds: float | None) -> str:
    """'42s', '3m05s', '1h02m'; '-' when unknown."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
