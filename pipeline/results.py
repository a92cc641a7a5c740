"""What a run of the pipeline returns, whichever engine ran it (the local runner or
kfp.local): each step's status, cache decision, outputs and summary, and what the run
did (`outcome`: pushed, not blessed, failed ...), which `imgpipe run`, `runs list`,
`backfill` and the report all say the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from components.errors import ImgpipeError
from components.runtime import DETAIL_INDENT


def step_line(step: str, state: str, text: str = "") -> str:
    """The line a runner prints as a step changes state (running, cached, done,
    skipped ...), the same for every engine: '  NAME       STATE    TEXT'."""
    return f"  {step:<10} {state:<8} {text}".rstrip()


def detail_line(line: str) -> str:
    """One of a step's summary lines, under its step line."""
    return DETAIL_INDENT + line


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
        """The push step's record (pushed, model_name, version, path, or the reason
        nothing was pushed); None when the run stopped before push."""
        push = self.step("push")
        return None if push is None or push.summary is None else push.summary

    def outcome(self) -> dict[str, Any]:
        """What the run did (see `outcome`)."""
        return outcome(self.status, self.steps, None if self.error is None else str(self.error))

    def to_json(self) -> dict[str, Any]:
        """The run as one JSON object (`imgpipe run --json`): steps with status,
        decision, seconds, outputs and the gate they returned; what the run did
        (verdict, outcome, accuracy, model) and the pushed version."""
        push = self.push_outcome()
        evaluate = self.step("evaluate")
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
            "blessed": (evaluate.summary or {}).get("blessed") if evaluate else None,
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


# What a run did, one word each (`outcome(...)["verdict"]`).
PUSHED = "pushed"
ALREADY_PUSHED = "already pushed"          # the model was a registry version already
NOT_BLESSED = "not blessed"
INFRA_FAILED = "infra failed"              # blessed, but infra validation failed
NOTHING_TO_PUSH = "nothing to push"        # push ran and pushed nothing, for another reason
STOPPED = "stopped before push"            # --until, or a DAG without push
FAILED = "failed"
RUNNING = "running"
# How push (and kfp-local's closed gate) word why nothing was pushed.
_NOT_BLESSED_PREFIX = "not blessed: "
_INFRA_PREFIX = "infra validation failed: "


def outcome(status: str, steps: Iterable[Any], error: str | None = None) -> dict[str, Any]:
    """What a run did, from its status and its steps' records (`StepResult`s, or the
    metadata store's executions: each with step, status, summary, error):
    {verdict: PUSHED | ALREADY_PUSHED | NOT_BLESSED | INFRA_FAILED | NOTHING_TO_PUSH |
    STOPPED | FAILED | RUNNING, text: one line, e.g. 'pushed digits:3', 'not blessed
    (accuracy 0.41 ...)', 'failed at train: ...', accuracy: evaluate's, model:
    'NAME:VERSION' pushed (or already there), else None}."""
    steps = list(steps)
    summaries = {s.step: getattr(s, "summary", None) or {} for s in steps}
    push, evaluate = summaries.get("push", {}), summaries.get("evaluate", {})
    model = (f"{push.get('model_name')}:{push.get('version')}"
             if push.get("pushed") and push.get("version") is not None else None)
    did = {"accuracy": evaluate.get("accuracy"), "model": model}
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
    reason = push.get("reason") or evaluate.get("reason") or ""
    if "pushed" in push or evaluate.get("blessed") is False:
        if reason.startswith(_NOT_BLESSED_PREFIX) or evaluate.get("blessed") is False:
            why = reason[len(_NOT_BLESSED_PREFIX):] if reason.startswith(
                _NOT_BLESSED_PREFIX) else reason
            return did | {"verdict": NOT_BLESSED,
                          "text": f"{NOT_BLESSED} ({why})" if why else NOT_BLESSED}
        if reason.startswith(_INFRA_PREFIX):
            return did | {"verdict": INFRA_FAILED, "text": "infra validation failed "
                                                           f"({reason[len(_INFRA_PREFIX):]})"}
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
