"""The `evaluate` section: thresholds and the blessing gate."""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Optional
from pydantic import Field, field_validator

from components.config.base import Section


# evaluate.thresholds: the metrics evaluate computes (components/steps/evaluate.py's
# TOP_LEVEL and top_k_accuracy) -> the range of their values.
EVALUATE_METRICS = {"accuracy": (0.0, 1.0), "top_k_accuracy": (0.0, 1.0),
                    "example_count": (0.0, math.inf)}


class ThresholdConfig(Section):
    min: Optional[float] = Field(None, description="Absolute lower bound.")
    max: Optional[float] = Field(None, description="Absolute upper bound.")
    max_drop: Optional[float] = Field(None, ge=0.0, description="Allowed drop vs the baseline.")
    slices: Optional[list[str]] = Field(None, description="Also check these slices, e.g. "
                                                          "['label']; default: overall only.")


class EvaluateConfig(Section):
    """TFMA metrics, thresholds and the statistical gate against the baseline."""

    thresholds: dict[str, ThresholdConfig] = Field(
        {"accuracy": ThresholdConfig(min=0.5)},
        description=f"Metric -> bounds; metrics: {', '.join(EVALUATE_METRICS)} (accuracy and "
                    "top_k_accuracy are shares, in [0, 1]).")
    top_k: int = Field(3, gt=0)
    slice_features: list[str] = Field([], description="Raw features to slice by, e.g. source.")
    gate: Literal["paired", "point", "lower_bound"] = Field(
        "paired", description="How 'not worse than the baseline' is decided on the same eval "
                              "examples. paired: refused only when the upper bound of the "
                              "accuracy difference's bootstrap confidence interval is below "
                              "-max_drop (significantly worse by more than the tolerance); a "
                              "difference within noise is blessed. point: the estimated "
                              "difference must be at least -max_drop. lower_bound: the "
                              "interval's lower bound must be.")
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    bootstrap_samples: int = Field(1000, gt=0)
    min_class_recall: Optional[float] = Field(None, ge=0.0, le=1.0)

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict[str, ThresholdConfig]
                          ) -> dict[str, ThresholdConfig]:
        unknown = sorted(set(value) - set(EVALUATE_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; thresholds apply to the metrics "
                             f"evaluate computes: {', '.join(EVALUATE_METRICS)}")
        for name, threshold in value.items():
            low, high = EVALUATE_METRICS[name]
            within = f"in [{low:g}, {high:g}]" if high < math.inf else f">= {low:g}"
            for key in ("min", "max"):
                bound = getattr(threshold, key)
                if bound is not None and not low <= bound <= high:
                    example = f"; e.g. {key}: 0.8" if high == 1.0 else ""
                    raise ValueError(f"{name}.{key} {bound:g} is outside the values {name} "
                                     f"takes ({within}){example}")
            if threshold.max_drop is not None and threshold.max_drop > high - low:
                raise ValueError(f"{name}.max_drop {threshold.max_drop:g} is more than {name} "
                                 f"can drop ({within}); e.g. max_drop: 0.02")
            if threshold.min is not None and threshold.max is not None \
                    and threshold.min > threshold.max:
                raise ValueError(f"{name}.min {threshold.min:g} is above {name}.max "
                                 f"{threshold.max:g}: no value passes")
        return value

    _moved: ClassVar[dict[str, str]] = {
        "latency_budget_ms": "latency_budget_ms moved to its own section: write "
                             "infra_validate: {latency_budget_ms: ...}"}
