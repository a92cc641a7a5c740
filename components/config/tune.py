"""The `tune` section: the hyperparameter search space, and applying its values."""

from __future__ import annotations

from typing import Any, Literal, Optional
from pydantic import Field, field_validator, model_validator

from components.config.base import Section


# Sections and keys a search may vary: what the trial's model and training read.
TUNABLE_SECTIONS = ("model", "train")
UNTUNABLE = {"train.strategy", "train.hyperparameters", "train.seed", "train.metrics",
             "train.epochs", "model.weights", "train.cache_memory_mb"}


class SearchDimension(Section):
    """One key's range: exactly one of choice, uniform, log_uniform, int_uniform."""

    choice: Optional[list[Any]] = Field(None, description="Values to pick from.")
    uniform: Optional[tuple[float, float]] = Field(None, description="[low, high], linear.")
    log_uniform: Optional[tuple[float, float]] = Field(None, description="[low, high] > 0, "
                                                                         "log scale.")
    int_uniform: Optional[tuple[int, int]] = Field(None, description="[low, high] integers, "
                                                                     "both included.")

    @model_validator(mode="after")
    def _one_range(self) -> "SearchDimension":
        given = [k for k in ("choice", "uniform", "log_uniform", "int_uniform")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, log_uniform, int_uniform "
                             f"(got {given or 'none'})")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice is empty; list at least one value")
            if len({repr(v) for v in self.choice}) != len(self.choice):
                raise ValueError(f"choice repeats a value: {self.choice}")
            return self
        low, high = getattr(self, kind)
        if not low < high:
            raise ValueError(f"{kind} [{low}, {high}] is an empty range; low must be below high")
        if kind == "log_uniform" and low <= 0:
            raise ValueError(f"log_uniform needs low > 0, got {low}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "uniform", "log_uniform", "int_uniform")
                    if getattr(self, k) is not None)

    def endpoints(self) -> list[Any]:
        """The values a key must accept: every choice, or both ends of a range."""
        return list(self.choice) if self.kind == "choice" else list(getattr(self, self.kind))


class TuneConfig(Section):
    """A hyperparameter search (KerasTuner) before train; no space: no search, train uses
    its config as written."""

    space: dict[str, SearchDimension] = Field(
        default_factory=dict,
        description="Dotted config key -> range, e.g. train.optimizer.learning_rate: "
                    "{log_uniform: [1e-4, 1e-2]}, model.kind: {choice: [cnn, deep_cnn]}.")
    algorithm: Literal["random", "bayesian", "hyperband"] = "random"
    max_trials: int = Field(10, gt=0, description="Trials to run (hyperband: its epoch "
                                                  "budget decides instead).")
    epochs: int = Field(5, gt=0, description="Epochs per trial (hyperband: the most a "
                                             "trial gets).")
    objective: str = Field("val_accuracy", description="A metric train records: loss, "
                                                       "val_loss, or val_/train.metrics.")
    seed: int = 42

    @field_validator("space")
    @classmethod
    def _tunable_keys(cls, value: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        for key in value:
            if key.split(".")[0] not in TUNABLE_SECTIONS or key in UNTUNABLE or "." not in key:
                raise ValueError(f"{key!r} cannot be searched; search keys of "
                                 f"{' and '.join(TUNABLE_SECTIONS)} (not "
                                 f"{', '.join(sorted(UNTUNABLE))}), e.g. "
                                 "train.optimizer.learning_rate")
        return value

    def direction(self) -> str:
        return "min" if self.objective.endswith("loss") else "max"


def apply_values(sections: dict[str, Section], values: dict[str, Any]) -> dict[str, Section]:
    """The sections with dotted `values` set (e.g. {'train.optimizer.learning_rate':
    0.01}), validated again: a value a key does not accept raises ValueError."""
    trees = {name: section.model_dump(mode="json", by_alias=True)
             for name, section in sections.items()}
    for key, value in values.items():
        name, *path = key.split(".")
        node = trees[name]
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"{key}: {'.'.join([name, *path[:path.index(part) + 1]])} "
                                 "is not a section")
            node = node[part]
        if path[-1] not in node:
            raise ValueError(f"{key}: no such key (keys of {'.'.join([name, *path[:-1]])}: "
                             f"{', '.join(sorted(node))})")
        node[path[-1]] = value
    return {name: type(sections[name]).model_validate(trees[name]) for name in sections}


def describe_values(values: dict[str, Any]) -> str:
    """'train.optimizer.learning_rate=0.002, model.kind=cnn' (4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items()) or "no values"
