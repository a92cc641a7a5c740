"""`imgpipe models canary`'s rules: a candidate and a baseline version serving the same
traffic side by side (the server answers each request from one arm and, on sampled
requests, asks the other arm too: the entry's "shadow"), and the decision: promote,
revert or undecided.

Two models of ~72% accuracy disagree on more than a tenth of any images whatever their
quality, so label-free numbers are judged against what the same two models did on
labelled data: the candidate's evaluation scored both on its eval split (its model
card's `comparison.agreement`: agreement, each one's mean confidence and class shares).
Traffic agreement may fall below the eval agreement by its sampling noise only; the
candidate's confidence may fall, relative to the baseline's, by at most a limit beyond
what eval showed; the two arms' class shares may part by a limit beyond eval's. Without
that reference (the candidate was evaluated against another version) fixed limits
apply, and the decision says so. Labels on traffic (the request's `labels`, or a file
joined by request id) decide by the paired accuracy difference instead, as evaluate's
gate does. Error rate and latency are judged the same either way.

No TensorFlow: the log's entries and the card are all it reads.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipeline.serve.monitoring import confidences, described, is_error, mean
from components.data.schema import linf_distance

PROMOTE, REVERT, UNDECIDED, NOTHING = "promote", "revert", "undecided", "nothing to decide"
# One-sided 99% normal quantile: traffic agreement below the eval agreement by more than
# this many standard errors of the two shares is a change, not sampling noise.
AGREEMENT_Z = 2.326


@dataclass(frozen=True)
class CanaryRules:
    """`imgpipe models canary`'s rules (each a flag of the command)."""

    min_requests: int = 200
    min_images: int = 20
    min_agreement: float = 0.9           # fixed limit: only without an eval reference
    max_confidence_drop: float = 0.05
    max_share_shift: float = 0.1
    max_error_rate_increase: float = 0.01
    max_latency_ratio: float = 1.5
    min_labelled: int = 30
    confidence: float = 0.95             # labelled traffic: the paired interval's


def reference(card: dict[str, Any], name: str, baseline: int) -> dict[str, Any] | None:
    """The candidate's card's eval comparison of the two models (`gate.agreement_reference`)
    when it was evaluated against `baseline`; else None."""
    comparison = card.get("comparison") or {}
    found = comparison.get("agreement")
    if comparison.get("baseline") != f"{name}:{baseline}" or not isinstance(found, dict):
        return None
    return dict(found, baseline=comparison["baseline"])


# The latency rule's tail: the highest quantile, up to p99, that the smaller arm has at
# least TAIL_REQUESTS requests beyond (p95 at 200 requests, p99 from 1,000). A p99 of a
# few hundred requests is its two or three slowest, and which arm those land on is
# chance: a healthy canary of the sign-language photos (three 3024x3024 photos among
# 2,062, each ~200 ms to decode) was reverted at x7.1 "p99" from 260 vs 240 requests.
TAIL_REQUESTS = 10


def tail_quantile(requests: int) -> float:
    """The quantile the latency rule compares for arms of at least `requests` each."""
    share = 1.0 - TAIL_REQUESTS / max(requests, TAIL_REQUESTS * 2)
    return min(0.99, math.floor(share * 100 + 1e-9) / 100)       # whole percents


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _latencies(entries: list[dict[str, Any]]) -> list[float]:
    return [float(e["latency_ms"]) for e in entries
            if isinstance(e.get("latency_ms"), (int, float))]


def _arm(entries: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = _latencies(entries)
    errors = sum(1 for e in entries if is_error(e))
    own = [i for e in entries for i in described(e)]
    return {"requests": len(entries), "errors": errors,
            "error_rate": errors / len(entries) if entries else None,
            "p50_ms": _percentile(latencies, 0.5), "p99_ms": _percentile(latencies, 0.99),
            "sampled_images": len(own), "mean_confidence": mean(confidences(own))}


@dataclass(frozen=True)
class Pair:
    """One sampled image answered by both versions, and its true class when known."""

    candidate: str
    candidate_confidence: float
    baseline: str
    baseline_confidence: float
    truth: str | None = None


def _pairs(entries: list[dict[str, Any]], other: int, own_is_candidate: bool,
           truths: dict[tuple[str, int], str]) -> list[Pair]:
    """The pairs of the entries whose shadow holds the other arm's (version `other`)
    answers; the truth from the image (a request's `labels`) or from `truths` (a label
    file: (request id, image index) -> class)."""
    out = []
    for entry in entries:
        shadow = entry.get("shadow")
        if not isinstance(shadow, dict) or shadow.get("version") != other:
            continue
        classes, scores = shadow.get("classes") or [], shadow.get("confidences") or []
        for index, (image, label, confidence) in enumerate(
                zip(entry.get("images") or [], classes, scores)):
            if not isinstance(image, dict) or "class" not in image:
                continue
            mine = (str(image["class"]), float(image.get("confidence") or 0.0))
            theirs = (str(label), float(confidence or 0.0))
            truth = image.get("truth") or truths.get((str(entry.get("id")), index))
            out.append(Pair(*(mine + theirs if own_is_candidate else theirs + mine),
                            truth=None if truth is None else str(truth)))
    return out


def _class_shares(classes: list[str]) -> dict[str, float]:
    return {name: n / len(classes) for name, n in Counter(classes).items()}


def canary(entries: list[dict[str, Any]], candidate: int, baseline: int,
           rules: CanaryRules = CanaryRules(), expected: dict[str, Any] | None = None,
           truths: dict[tuple[str, int], str] | None = None) -> dict[str, Any]:
    """The canary's numbers and decision from the log entries of one model: the
    candidate arm is the entries with arm "candidate" served by version `candidate`,
    the baseline arm those with arm "baseline" served by `baseline`. `expected`: the
    two models on the eval split (`reference`); `truths`: labels joined by request id.
    Returns {decision, decided_by, reason, arms: {candidate, baseline}, agreement,
    pairs, labelled, confidence: {candidate, baseline}, confidence_drop,
    error_rate_increase, latency_ratio: {p50, tail}, tail_quantile, reference,
    rules: [{rule, value, limit, passed, line}], needed}."""
    cand = [e for e in entries if e.get("arm") == "candidate" and e.get("version") == candidate]
    base = [e for e in entries if e.get("arm") == "baseline" and e.get("version") == baseline]
    arms = {"candidate": _arm(cand), "baseline": _arm(base)}
    truths = truths or {}
    pairs = _pairs(cand, baseline, True, truths) + _pairs(base, candidate, False, truths)
    result: dict[str, Any] = {
        "candidate_version": candidate, "baseline_version": baseline, "arms": arms,
        "pairs": len(pairs), "labelled": sum(p.truth is not None for p in pairs),
        "agreement": None, "confidence": None, "confidence_drop": None,
        "error_rate_increase": None, "latency_ratio": {"p50": None, "tail": None},
        "tail_quantile": None, "reference": expected,
        "rules": [], "needed": {}, "decided_by": None}
    needed = {arm: max(0, rules.min_requests - arms[arm]["requests"]) for arm in arms}
    if any(needed.values()):
        result.update(decision=UNDECIDED, needed=needed, reason=(
            f"not enough requests yet: candidate {arms['candidate']['requests']}, baseline "
            f"{arms['baseline']['requests']} (--min-requests {rules.min_requests}); "
            + ", ".join(f"{n} more on the {arm} arm" for arm, n in needed.items() if n)))
        return result
    if len(pairs) < rules.min_images:
        result.update(decision=UNDECIDED, needed={"images": rules.min_images - len(pairs)},
                      reason=(f"{len(pairs)} sampled image(s) answered by both versions "
                              f"(--min-images {rules.min_images}): "
                              f"{rules.min_images - len(pairs)} more needed; the server "
                              "records the other arm's answers (\"shadow\") on sampled "
                              "requests in a canary"))
        return result
    increase = arms["candidate"]["error_rate"] - arms["baseline"]["error_rate"]
    checks = [("error rate", increase, rules.max_error_rate_increase,
               increase <= rules.max_error_rate_increase,
               f"error rate +{increase:.4f} (candidate {arms['candidate']['error_rate']:.4f}, "
               f"baseline {arms['baseline']['error_rate']:.4f}; at most "
               f"+{rules.max_error_rate_increase:g})")]
    labelled = [p for p in pairs if p.truth is not None]
    model_checks = _model_checks(pairs, rules, expected, result)
    if len(labelled) >= rules.min_labelled:
        # labels say which answers are right: they decide, the label-free rules inform
        checks.append(_labelled_check(labelled, rules, result))
        result["informative"] = [_rule(*c) for c in model_checks]
    else:
        checks += model_checks
    checks.append(_latency_check(cand, base, arms, rules, result))
    result["rules"] = [_rule(*c) for c in checks]
    failed = [c for c in checks if not c[3]]
    counts = (f"{arms['candidate']['requests']} candidate / {arms['baseline']['requests']} "
              "baseline requests")
    judged = "" if expected else "; fixed limits: the candidate's card has no eval " \
                                 "comparison with this baseline"
    if failed:
        result.update(decision=REVERT, decided_by=failed[0][0], reason=(
            f"canary failed: {'; '.join(c[4] for c in failed)} ({counts}{judged})"))
    else:
        decided = "labelled accuracy" if len(labelled) >= rules.min_labelled else "all rules"
        result.update(decision=PROMOTE, decided_by=decided, reason=(
            f"canary passed: {'; '.join(c[4] for c in checks)} ({counts}{judged})"))
    return result


def _rule(rule: str, value: float, limit: float, passed: bool, line: str) -> dict[str, Any]:
    return {"rule": rule, "value": value, "limit": limit, "passed": passed, "line": line}


def _model_checks(pairs: list[Pair], rules: CanaryRules, expected: dict[str, Any] | None,
                  result: dict[str, Any]) -> list[tuple]:
    """Agreement, confidence and class shares of the two arms on the same images,
    against the eval reference when there is one."""
    n = len(pairs)
    agreement = sum(p.candidate == p.baseline for p in pairs) / n
    conf_c = sum(p.candidate_confidence for p in pairs) / n
    conf_b = sum(p.baseline_confidence for p in pairs) / n
    result.update(agreement=agreement, confidence={"candidate": conf_c, "baseline": conf_b})
    if expected is None:
        drop = conf_b - conf_c
        result["confidence_drop"] = drop
        return [
            ("agreement", agreement, rules.min_agreement, agreement >= rules.min_agreement,
             f"agreement {agreement:.3f} on {n} images answered by both (at least "
             f"{rules.min_agreement:g}, a fixed limit)"),
            ("confidence", drop, rules.max_confidence_drop, drop <= rules.max_confidence_drop,
             f"confidence: the candidate's {conf_c:.3f} is {drop:+.3f} below the "
             f"baseline's {conf_b:.3f} on the same images (at most "
             f"{rules.max_confidence_drop:g})")]
    eval_n, eval_agree = expected["examples"], expected["agreement"]
    spread = eval_agree * (1 - eval_agree)
    margin = AGREEMENT_Z * math.sqrt(spread / n + spread / eval_n)
    ref_c, ref_b = expected.get("candidate_confidence"), expected.get("baseline_confidence")
    # how much more the candidate's confidence fell since eval than the baseline's
    drop = (ref_c - ref_b) - (conf_c - conf_b) if None not in (ref_c, ref_b) else conf_b - conf_c
    result["confidence_drop"] = drop
    shift, label = linf_distance(_class_shares([p.candidate for p in pairs]),
                                 _class_shares([p.baseline for p in pairs]))
    eval_shift, _ = linf_distance(expected.get("candidate_shares") or {},
                                  expected.get("baseline_shares") or {})
    moved = ("" if None in (ref_c, ref_b) else
             f"; since eval the candidate's moved {conf_c - ref_c:+.3f}, the baseline's "
             f"{conf_b - ref_b:+.3f}")
    return [
        ("agreement", agreement, eval_agree - margin, agreement >= eval_agree - margin,
         f"agreement {agreement:.3f} on {n} images answered by both, {eval_agree:.3f} on "
         f"{eval_n} eval examples (at least {eval_agree - margin:.3f}: eval's less its "
         "sampling noise)"),
        ("confidence", drop, rules.max_confidence_drop, drop <= rules.max_confidence_drop,
         f"confidence: candidate {conf_c:.3f} vs baseline {conf_b:.3f} on traffic, "
         f"{ref_c:.3f} vs {ref_b:.3f} on eval{moved}: the candidate fell {drop:+.3f} more "
         f"(at most {rules.max_confidence_drop:g})" if None not in (ref_c, ref_b) else
         f"confidence: the candidate's {conf_c:.3f} is {drop:+.3f} below the baseline's "
         f"{conf_b:.3f} (at most {rules.max_confidence_drop:g})"),
        ("class shares", shift - eval_shift, rules.max_share_shift,
         shift - eval_shift <= rules.max_share_shift,
         f"class shares: the arms' answers part by {shift:.3f} (class {label}) on traffic, "
         f"{eval_shift:.3f} on eval (at most {rules.max_share_shift:g} more)")]


def _labelled_check(labelled: list[Pair], rules: CanaryRules, result: dict[str, Any]
                    ) -> tuple:
    """Labelled traffic: the paired accuracy difference, refused only when its interval
    lies wholly below zero (evaluate's paired gate)."""
    import numpy as np

    from components.evaluation.gate import paired_comparison

    cand_ok = np.array([p.candidate == p.truth for p in labelled], bool)
    base_ok = np.array([p.baseline == p.truth for p in labelled], bool)
    found = paired_comparison(cand_ok, base_ok, 1000, rules.confidence)
    result["labelled_comparison"] = found
    return ("labelled accuracy", found["ci_high"], 0.0, found["ci_high"] >= 0.0,
            f"labelled accuracy: candidate {found['candidate_accuracy']:.3f} vs baseline "
            f"{found['baseline_accuracy']:.3f} on {found['examples']} labelled images "
            f"(difference {found['difference']:+.3f}, {rules.confidence:.0%} CI "
            f"[{found['ci_low']:+.3f}, {found['ci_high']:+.3f}]; refused only when the whole "
            "interval is below 0)")


def _latency_check(cand: list[dict[str, Any]], base: list[dict[str, Any]],
                   arms: dict[str, Any], rules: CanaryRules, result: dict[str, Any]) -> tuple:
    q = tail_quantile(min(arm["requests"] for arm in arms.values()))
    tail = f"p{q * 100:g}"
    for arm, chosen in (("candidate", cand), ("baseline", base)):
        arms[arm]["tail_ms"] = _percentile(_latencies(chosen), q)
    ratios = {"p50": _ratio(arms["candidate"]["p50_ms"], arms["baseline"]["p50_ms"]),
              "tail": _ratio(arms["candidate"]["tail_ms"], arms["baseline"]["tail_ms"])}
    worst = max(ratios, key=lambda key: ratios[key])
    result.update(latency_ratio=ratios, tail_quantile=q)
    return ("latency", ratios[worst], rules.max_latency_ratio,
            ratios[worst] <= rules.max_latency_ratio,
            f"latency x{ratios['p50']:.2f} at p50, x{ratios['tail']:.2f} at {tail} (candidate "
            f"{_ms(arms['candidate'])} vs baseline {_ms(arms['baseline'])} ms p50/{tail}; at "
            f"most x{rules.max_latency_ratio:g}"
            + ("" if q >= 0.99 else f"; {tail}, not p99: the slowest {TAIL_REQUESTS} of the "
               f"smaller arm's requests, p99 from {math.ceil(TAIL_REQUESTS / 0.01):,}") + ")")


def _ms(arm: dict[str, Any]) -> str:
    return "/".join("-" if arm[k] is None else f"{arm[k]:.1f}" for k in ("p50_ms", "tail_ms"))


def _ratio(candidate: float | None, baseline: float | None) -> float:
    if candidate is None or baseline is None:
        return 1.0
    if baseline <= 0:
        return 1.0 if candidate <= 0 else math.inf
    return candidate / baseline
