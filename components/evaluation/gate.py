"""The statistical gate against the baseline: both models' per-example correctness on
the same eval examples gives a paired bootstrap interval for the accuracy difference
and McNemar's exact test; `gate_check` turns them into the blessing's check."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from components.config.evaluate import EvaluateConfig


def paired_comparison(candidate_ok: np.ndarray, baseline_ok: np.ndarray, samples: int,
                      confidence: float, seed: int = 0) -> dict[str, Any]:
    """Accuracy difference (candidate - baseline) with a paired bootstrap interval and
    McNemar's exact two-sided p-value on the discordant pairs."""
    n = len(candidate_ok)
    diff = candidate_ok.astype(np.float64) - baseline_ok.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 256):  # chunks keep memory flat on large eval sets
        idx = rng.integers(0, n, size=(min(256, samples - start), n))
        means[start:start + len(idx)] = diff[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    b = int(np.sum(candidate_ok & ~baseline_ok))   # candidate right, baseline wrong
    c = int(np.sum(~candidate_ok & baseline_ok))
    k, m = min(b, c), b + c
    p = 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m)
    return {"examples": n, "candidate_accuracy": float(candidate_ok.mean()),
            "baseline_accuracy": float(baseline_ok.mean()), "difference": float(diff.mean()),
            "ci_low": float(low), "ci_high": float(high), "confidence": confidence,
            "bootstrap_samples": samples, "candidate_only_correct": b,
            "baseline_only_correct": c, "mcnemar_p": p}


def compare(rows: list[dict[str, Any]], cfg: EvaluateConfig, base_ref: str | None
            ) -> dict[str, Any]:
    """The paired comparison of candidate and baseline on the same examples (evaluate's
    scored rows: label, predicted, baseline_predicted, their probabilities), with the
    per-class recall of each and `agreement` (`agreement_reference`)."""
    labels = [row["label"] for row in rows]
    predicted = [row["predicted"] for row in rows]
    base_predicted = [row["baseline_predicted"] for row in rows]
    candidate_ok = np.array([p == t for p, t in zip(predicted, labels)], dtype=bool)
    base_ok = np.array([p == t for p, t in zip(base_predicted, labels)], dtype=bool)
    comparison = paired_comparison(candidate_ok, base_ok, cfg.bootstrap_samples, cfg.confidence)
    recalls = class_recalls(labels, predicted)
    comparison["baseline"] = base_ref
    comparison["class_recall"] = {name: {"candidate": recalls[name], "baseline": value}
                                  for name, value in class_recalls(labels, base_predicted).items()}
    comparison["agreement"] = agreement_reference(rows)
    return comparison


def agreement_reference(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How the two models answer the same labelled images, with no label needed to
    compare again on traffic (`imgpipe models canary`): the share both give the same
    class, each one's mean confidence and predicted-class shares."""
    def shares(key: str) -> dict[str, float]:
        counts = Counter(row[key] for row in rows)
        return {name: count / len(rows) for name, count in sorted(counts.items())}

    def mean(key: str) -> float | None:
        values = [row[key] for row in rows if key in row]
        return sum(values) / len(values) if values else None

    if not rows:
        return None
    return {"examples": len(rows),
            "agreement": sum(r["predicted"] == r["baseline_predicted"] for r in rows) / len(rows),
            "candidate_confidence": mean("probability"),
            "baseline_confidence": mean("baseline_probability"),
            "candidate_shares": shares("predicted"),
            "baseline_shares": shares("baseline_predicted")}


def decides_change(cfg: EvaluateConfig, metric: str) -> bool:
    """Whether the paired gate, not TFMA's point change threshold, judges `metric`'s
    `max_drop` (accuracy under `gate: paired`, the one metric with a paired test)."""
    return cfg.gate == "paired" and metric == "accuracy"


def gate_check(comparison: dict[str, Any], cfg: EvaluateConfig, base_ref: str
               ) -> dict[str, Any]:
    """'Not worse than the baseline', with the accuracy threshold's `max_drop` (0 when
    none is set) as the tolerance. `paired` (the default) refuses only on evidence: the
    upper bound of the paired bootstrap interval below -max_drop, i.e. the candidate
    is worse by more than the tolerance at the configured confidence; `point` asks the
    estimated difference to be at least -max_drop, `lower_bound` the interval's lower
    bound. The check's `rule` says what decided, in words, with the numbers."""
    accuracy = cfg.thresholds.get("accuracy")
    drop = (accuracy.max_drop if accuracy else None) or 0.0
    floor = -drop if drop else 0.0             # not -0.0 in the lines
    diff, low, high = comparison["difference"], comparison["ci_low"], comparison["ci_high"]
    interval = f"{cfg.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]"
    measured, how = {
        "paired": (high, f"upper bound of the {cfg.confidence:.0%} CI"),
        "point": (diff, "point estimate"),
        "lower_bound": (low, f"lower bound of the {cfg.confidence:.0%} CI")}[cfg.gate]
    passed = measured >= floor
    tolerance = f"a drop of {drop:g}" if drop else "no drop"
    if cfg.gate != "paired":
        rule = (f"{cfg.gate} gate: {how} {measured:+.4f} "
                f"{'>=' if passed else '<'} {floor:+.4f} (allows {tolerance})")
    elif not passed:
        rule = (f"paired gate: significantly worse: the whole {interval} is below "
                f"{floor:+.4f} (allows {tolerance})")
    elif low > 0:
        rule = f"paired gate: significantly better ({interval})"
    else:
        rule = (f"paired gate: within noise ({interval} reaches {floor:+.4f} or above; "
                f"allows {tolerance})")
    return {"check": f"accuracy not worse than {base_ref} ({how})",
            "source": "paired bootstrap", "value": measured, "bound": {"min": floor},
            "verdict": "pass" if passed else "fail", "rule": rule,
            "detail": f"difference {diff:+.4f} on {comparison['examples']} examples, "
                      f"{interval}, McNemar p={comparison['mcnemar_p']:.3g}"}


def resolution_note(comparison: dict[str, Any]) -> str | None:
    """A note when the eval split is too small for the gate to tell much: the
    interval's half width over 0.05 (with ~20% of answers differing, under ~300
    examples)."""
    half = (comparison["ci_high"] - comparison["ci_low"]) / 2
    if half <= 0.05:
        return None
    return (f"note: {comparison['examples']} eval examples decide differences of about "
            f"±{half:.2f} only; a larger eval split (data.eval_fraction, data.eval_spans: "
            "all) lets the gate see smaller drops")


def class_recalls(labels: list[str], predicted: list[str]) -> dict[str, float]:
    out = {}
    for name in sorted(set(labels)):
        idx = [i for i, label in enumerate(labels) if label == name]
        out[name] = sum(predicted[i] == name for i in idx) / len(idx)
    return out


def bound_words(bound: dict[str, Any] | None) -> str:
    """A check's bound as a reader says it: {'min': 0.8} -> '>= 0.8';
    {'min': 0.1, 'max': 0.9} -> '>= 0.1, <= 0.9'."""
    if not bound:
        return ""
    signs = {"min": ">=", "max": "<="}
    return ", ".join(f"{signs.get(k, k)} {v:.4g}" if isinstance(v, (int, float)) else
                     f"{k} {v}" for k, v in bound.items())


def pr_points(positive: Any, negative: Any) -> tuple[Any, Any, float] | None:
    """(recalls, precisions, average precision) of one class against the rest, from the
    same per-bin counts as `roc_points` (thresholds from high to low, from the first
    one that predicts anything); None without a positive example. The average precision
    is the sum of precision times each step in recall (scikit-learn's definition, on
    the bins' thresholds)."""
    tp = np.cumsum(np.asarray(positive)[::-1])
    fp = np.cumsum(np.asarray(negative)[::-1])
    if not len(tp) or not tp[-1]:
        return None
    predicted = tp + fp
    keep = predicted > 0
    recall, precision = tp[keep] / tp[-1], tp[keep] / predicted[keep]
    average = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]), average


def roc_points(positive: Any, negative: Any) -> tuple[Any, Any] | None:
    """(false positive rates, true positive rates) of one class against the rest, from
    per-bin counts of its positive and negative examples (thresholds from high to
    low); None without both kinds of example."""
    tp = np.concatenate([[0], np.cumsum(np.asarray(positive)[::-1])])
    fp = np.concatenate([[0], np.cumsum(np.asarray(negative)[::-1])])
    if not tp[-1] or not fp[-1]:
        return None
    return fp / fp[-1], tp / tp[-1]
