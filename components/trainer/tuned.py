"""The best values of an earlier search, as `train.hyperparameters` names them: a tune
step's hyperparameters.json or the model card of a tuned model. Read by the tune step
(which reuses them instead of searching) and by the check before a run."""

from __future__ import annotations

import json
from typing import Any

from components.errors import ConfigError
from components.io import fileio


def read_best(path: str) -> dict[str, Any]:
    """The best values in a hyperparameters.json (a tune output) or a model card."""
    try:
        record = json.loads(fileio.read_text(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"train.hyperparameters: cannot read {path}: {exc}") from exc
    if isinstance(record, dict) and "hyperparameters" in record and "best" not in record:
        record = record["hyperparameters"] or {}                   # a model card
    best = record.get("best") if isinstance(record, dict) else None
    if not isinstance(best, dict):
        raise ConfigError(f"train.hyperparameters: {path} holds no best values (a tune "
                          "step's hyperparameters.json or a model card of a tuned model).")
    return best
