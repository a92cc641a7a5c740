"""What a run of the pipeline returns, whichever engine ran it (the local runner or
kfp.local): each step's status, cache decision, outputs and summary, and the run's
verdict as the CLI prints it (`imgpipe run`, and `--json`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

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

    def to_json(self) -> dict[str, Any]:
        """The run as one JSON object (`imgpipe run --json`): steps with status,
        decision, seconds, outputs and the gate they returned; the verdict and the
        pushed version."""
        push = self.push_outcome()
        evaluate = self.step("evaluate")
        report = os.path.join(self.run_dir, "report.html")
        return {
            "run_id": self.run_id,
            "engine": self.engine,
            "status": self.status,
            "error": None if self.error is None else str(self.error),
            "verdict": verdict(push),
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


def verdict(push: dict[str, Any] | None) -> str | None:
    """'pushed' or 'nothing pushed'; None when the run ended before the push step."""
    if push is None:
        return None
    return "pushed" if push.get("pushed") else "nothing pushed"
