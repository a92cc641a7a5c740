"""`imgpipe monitor` and `imgpipe models canary` on request logs written through
RequestLog into a registry whose versions have cards but no training behind them."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from components import artifacts
from pipeline.serve import canary as canary_rules
from components.evaluation import gate
from pipeline.serve import monitoring, request_log
from components.registry.versions import Registry
from pipeline.serve.request_log import RequestLog
from pipeline import cli
from tests.fixtures import card as blessed_card
from tests.fixtures import fake_saved_model

CLASSES = ("cat", "dog", "fox")
TRAIN = {"cat": 300, "dog": 300, "fox": 400}
PIXELS = {"cat": (0.40, 0.05, 0.20), "dog": (0.45, 0.05, 0.25), "fox": (0.50, 0.05, 0.30)}


def data_card(new: bool = True) -> dict:
    """A model card's data section as push writes it (`new`: with sizes, channels, pixels,
    as cards pushed since monitoring have)."""
    data = {"counts": {"train": TRAIN, "eval": {c: n // 10 for c, n in TRAIN.items()}},
            "classes": list(CLASSES), "examples": 1100}
    if new:
        data.update(sizes={"28x28": 1100}, channels={"1": 1100}, pixels={"train": {
            c: {"brightness_mean": b, "brightness_std": s, "contrast_mean": k}
            for c, (b, s, k) in PIXELS.items()}})
    return dict(blessed_card(), data=data)


@pytest.fixture
def registry(tmp_path):
    """m:1 (production) with a new card, m:2 (staging) with a new card, m:3 with an old
    one (no sizes or pixels)."""
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    reg.push("m", src, data_card())
    reg.push("m", src, data_card())
    reg.push("m", src, data_card(new=False))
    reg.set_alias("m:1", "production", "first")
    reg.set_alias("m:2", "staging", "next")
    reg.set_alias("m:3", "old", "before sizes")
    return reg


# The traffic: from two hours ago, given explicit times (the windows too). The log is
# read from a day before a version's push on (clock skew between machines).
START = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=2)


def _at(seconds: float) -> str:
    return (START + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _window(first: float, last: float) -> list[str]:
    return ["--since", _at(first), "--until", _at(last)]


def traffic(n: int, seed: int = 0, *, start: float = 0, version: int = 1,
            label: str | None = "production", arm: str | None = None, per: int = 3,
            brightness: float = 0.0, channels: int = 1, size: tuple[int, int] = (28, 28),
            shares: dict[str, float] | None = None, confidence: float = 0.9,
            errors: float = 0.0, latency: float = 20.0, shadow: dict | None = None
            ) -> list[dict]:
    """`n` sampled requests of `per` images each, drawn to match the card's statistics
    (class shares, per-class brightness and contrast, size, channels), with the shifts
    given. `shadow`: {version, agree (share), confidence} of the other arm's answers."""
    rng = np.random.default_rng(seed)
    weights = shares or {c: n_ / sum(TRAIN.values()) for c, n_ in TRAIN.items()}
    entries = []
    for i in range(n):
        failed = rng.random() < errors
        labels = rng.choice(list(weights), size=per, p=list(weights.values()))
        images = [{"sha256": f"{seed}-{i}-{k}", "bytes": 700, "height": size[0],
                   "width": size[1], "channels": channels,
                   "brightness": float(np.clip(rng.normal(PIXELS[c][0], PIXELS[c][1])
                                               + brightness, 0, 1)),
                   "contrast": float(PIXELS[c][2] + rng.normal(0, 0.01)),
                   "class": str(c),
                   "confidence": float(np.clip(rng.normal(confidence, 0.02), 0, 1))}
                  for k, c in enumerate(labels)]
        entry = request_log.make_entry(
            model="m", version=version, label=label, arm=arm, status=500 if failed else 200,
            error="boom" if failed else None,
            latency_ms=float(rng.lognormal(np.log(latency), 0.1)), instances=per,
            id=f"{seed}-{i}", time=_at(start + i), images=None if failed else images)
        if shadow and not failed:
            other = [c if rng.random() < shadow["agree"] else
                     next(x for x in CLASSES if x != c) for c in labels]
            entry["shadow"] = {"version": shadow["version"], "classes": [str(c) for c in other],
                               "confidences": [float(np.clip(rng.normal(shadow["confidence"],
                                                                        0.02), 0, 1))
                                               for _ in other]}
        entries.append(entry)
    return entries


def write(registry, *batches: list[dict]) -> None:
    with RequestLog(registry.root, flush_seconds=3600, max_lines=200) as log:
        for batch in batches:
            for entry in batch:
                log.record("m", entry)
    assert log.failures == 0


def monitor(capsys, registry, *args: str) -> tuple[int, str, dict]:
    argv = ["monitor", *args, "--registry", registry.root]
    code = cli.main(argv)
    text = capsys.readouterr().out
    assert cli.main([*argv, "--json"]) == code
    return code, text, json.loads(capsys.readouterr().out)


def _verdicts(report: dict) -> dict[str, str]:
    return {c["check"]: c["verdict"] for c in report["checks"]}


# --- monitor ---------------------------------------------------------------------------


def test_healthy_traffic_passes_every_check(registry, capsys):
    write(registry, traffic(200))
    code, text, report = monitor(capsys, registry, "m@production", *_window(0, 300))
    assert code == 0, text
    assert report["status"] == "healthy" and report["version"] == 1
    assert report["requests"] == 200 and report["images"] == 600
    assert set(_verdicts(report).values()) == {"ok"}, report["checks"]
    assert list(_verdicts(report)) == ["size shift", "channel shift", "brightness drift",
                                       "contrast drift", "class shares", "confidence drop",
                                       "error rate"]
    lines = text.splitlines()
    assert lines[1].split() == ["CHECK", "VALUE", "THRESHOLD", "VERDICT"]
    assert lines[2].split()[:2] == ["size", "shift"] and lines[2].split()[-1] == "ok"
    assert "<= 0.1" in lines[4]                               # brightness' threshold
    assert "healthy: every check within its threshold" in text
    assert "confidence reference: the earliest 25% of the version's sampled requests (50 of " \
           "200" in text


@pytest.mark.parametrize("shift, failed", [
    ({"brightness": 0.2}, "brightness drift"),
    ({"channels": 3}, "channel shift"),
    ({"size": (96, 96)}, "size shift"),
    ({"size": (28, 30)}, "size shift"),                 # never seen, same scale
    ({"shares": {"cat": 0.8, "dog": 0.1, "fox": 0.1}}, "class shares"),
    ({"errors": 0.1}, "error rate"),
], ids=["brightness", "channels", "scale", "unseen-size", "class-shares", "errors"])
def test_a_planted_shift_fails_its_check_with_exit_3(registry, capsys, shift, failed):
    write(registry, traffic(200, **shift))
    code, text, report = monitor(capsys, registry, "m@production", *_window(0, 300))
    assert code == 3, text
    assert report["status"] == "drift"
    assert [c for c, v in _verdicts(report).items() if v == "FAIL"] == [failed]
    assert f"drift: {failed} over the threshold (exit 3)" in text
    detail = next(c["detail"] for c in report["checks"] if c["check"] == failed)
    assert detail in text


def test_the_shift_passes_with_its_threshold_raised(registry, capsys):
    write(registry, traffic(200, brightness=0.2))
    code, _, report = monitor(capsys, registry, "m@production", *_window(0, 300),
                              "--max-brightness-drift", "0.3")
    assert code == 0 and _verdicts(report)["brightness drift"] == "ok"
    check = next(c for c in report["checks"] if c["check"] == "brightness drift")
    assert check["threshold"] == 0.3 and 0.15 < check["value"] < 0.25


def test_a_confidence_drop_against_the_versions_earliest_traffic(registry, capsys):
    # the first 100 requests at 0.9, then 300 at 0.75; the window: the last 200
    write(registry, traffic(100, 1), traffic(300, 2, start=100, confidence=0.75))
    code, text, report = monitor(capsys, registry, "m@production", *_window(200, 500))
    assert code == 3, text
    assert [c for c, v in _verdicts(report).items() if v == "FAIL"] == ["confidence drop"]
    check = next(c for c in report["checks"] if c["check"] == "confidence drop")
    assert check["value"] == pytest.approx(0.15, abs=0.02)
    assert report["reference"]["requests"] == 100       # the earliest 25% of 400
    assert "the earliest 25% of the version's sampled requests (100 of 400" in text
    # an explicit reference: the later traffic itself, so no drop
    code, text, report = monitor(capsys, registry, "m@production", *_window(200, 500),
                                 "--reference-since", _at(100), "--reference-until", _at(400))
    assert code == 0 and _verdicts(report)["confidence drop"] == "ok"
    assert "(--reference-since/--reference-until)" in text


def test_too_little_traffic_is_not_drift(registry, capsys):
    write(registry, traffic(20, brightness=0.4))        # 60 images, all far too bright
    code, text, report = monitor(capsys, registry, "m@production", *_window(0, 300))
    assert code == 0, text
    assert report["status"] == "not enough traffic"
    assert set(_verdicts(report).values()) == {"not enough traffic"}
    assert "not enough traffic to judge size shift, channel shift" in text
    assert "60 sampled image(s) in the window, under --min-images 100" in text
    assert "nothing judged as drift" in text and "the other" not in text


def test_a_short_confidence_reference_leaves_only_that_check_unjudged(registry, capsys):
    # 100 requests, 300 images: enough for every check but the confidence drop, whose
    # reference (the earliest 25%: 75 images) is under --min-images 100
    write(registry, traffic(100))
    code, text, report = monitor(capsys, registry, "m@production", *_window(0, 300))
    assert code == 0, text
    assert report["status"] == "not enough traffic"
    verdicts = _verdicts(report)
    assert verdicts.pop("confidence drop") == "not enough traffic"
    assert set(verdicts.values()) == {"ok"}
    assert "not enough traffic to judge confidence drop (why: above); the other 6 check(s) " \
        "within their thresholds; nothing judged as drift" in text
    assert "the reference (the earliest 25% of the version's sampled requests (25 of 100" in text
    assert "holds 75 sampled image(s), under --min-images 100" in text


def test_only_the_versions_own_traffic_in_the_window_counts(registry, capsys):
    # version 2's traffic is all RGB, and version 1's outside the window is too
    write(registry, traffic(200, 1), traffic(200, 2, version=2, label="staging", channels=3),
          traffic(50, 3, start=1000, channels=3))
    code, _, report = monitor(capsys, registry, "m@production", *_window(0, 300))
    assert code == 0 and report["requests"] == 200
    code, _, report = monitor(capsys, registry, "m@staging", *_window(0, 300))
    assert code == 3 and report["version"] == 2 and _verdicts(report)["channel shift"] == "FAIL"


def test_a_card_pushed_before_sizes_and_pixels_skips_those_checks(registry, capsys):
    write(registry, traffic(200, version=3, label="old", brightness=0.3, channels=3))
    code, text, report = monitor(capsys, registry, "m@old", *_window(0, 300))
    assert code == 0, text
    verdicts = _verdicts(report)
    assert [c for c, v in verdicts.items() if v == "skipped"] == [
        "size shift", "channel shift", "brightness drift", "contrast drift"]
    assert verdicts["class shares"] == verdicts["confidence drop"] == "ok"
    assert "size shift: the model card records no image sizes (pushed before cards kept " \
           "them" in text


def test_a_damaged_log_line_is_skipped_and_said(registry, capsys, tmp_path):
    import os

    write(registry, traffic(200))
    folder = request_log.folder(registry.root, "m")
    day = sorted(os.listdir(folder))[0]
    path = os.path.join(folder, day, sorted(os.listdir(os.path.join(folder, day)))[0])
    with open(path, "a") as handle:
        handle.write('{"time": "2026-')                 # torn
    code, text, report = monitor(capsys, registry, "m@production", *_window(0, 300))
    assert code == 0 and report["damaged_lines"] == 1
    assert "1 damaged line(s) in the request log skipped" in text


@pytest.mark.parametrize("args, message", [
    (["m@production", "--since", "yesterday"], "--since 'yesterday' is neither a time"),
    (["m@prod"], "has no alias 'prod'"),
    (["nope@production"], "model 'nope' has no pushed versions"),
    (["m@production", "--since", "1h", "--until", "2h"], "is after the end of its window"),
])
def test_user_mistakes_exit_2(registry, capsys, args, message):
    assert cli.main(["monitor", *args, "--registry", registry.root]) == 2
    assert message in capsys.readouterr().err


def test_a_threshold_outside_0_1_is_a_usage_error(registry, capsys):
    assert cli.main(["monitor", "m@production", "--max-error-rate", "2",
                     "--registry", registry.root]) == 2
    assert "must be between 0 and 1" in capsys.readouterr().err


def test_spans_back_from_now():
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.timezone.utc)
    assert monitoring.parse_when("1h", now) == now - dt.timedelta(hours=1)
    assert monitoring.parse_when("7d", now) == now - dt.timedelta(days=7)
    assert monitoring.parse_when("2026-12-01T08:00:00", now) == dt.datetime(
        2026, 12, 1, 8, tzinfo=dt.timezone.utc)
    assert monitoring.parse_when("2026-12-01T08:00:00Z", now).tzinfo is not None


# --- canary ----------------------------------------------------------------------------


def canary_traffic(n: int, agree: float = 0.98, candidate_confidence: float = 0.9,
                   candidate_errors: float = 0.0, candidate_latency: float = 20.0) -> list:
    """`n` requests per arm: staging's version 2 as the candidate, production's 1 as the
    baseline, each sampled request with the other arm's answers."""
    return (traffic(n, 11, version=2, label=None, arm="candidate",
                    confidence=candidate_confidence, errors=candidate_errors,
                    latency=candidate_latency,
                    shadow={"version": 1, "agree": agree, "confidence": 0.9})
            + traffic(n, 12, start=0.5, version=1, label=None, arm="baseline",
                      shadow={"version": 2, "agree": agree,
                              "confidence": candidate_confidence}))


def canary(capsys, registry, *args: str) -> tuple[int, str]:
    code = cli.main(["models", "canary", "m", "--candidate", "staging", "--baseline",
                     "production", *args, "--registry", registry.root])
    return code, capsys.readouterr().out


def test_canary_promotes_a_candidate_that_agrees(registry, capsys):
    write(registry, canary_traffic(250))
    before = len(registry.audit("m"))
    code, text = canary(capsys, registry, "--dry-run")
    assert code == 0 and "decision: promote (every rule passed)" in text
    assert "dry run: m@production would move from version 1 to version 2" in text
    assert len(registry.audit("m")) == before               # nothing written
    code, text = canary(capsys, registry)
    assert code == 0, text
    header, cand, base = text.splitlines()[1:4]
    assert header.split()[:4] == ["ARM", "VERSION", "REQUESTS", "ERRORS"]
    assert cand.split()[:3] == ["candidate", "2", "250"] and base.split()[:3] == [
        "baseline", "1", "250"]
    assert "m@production: version 1 -> version 2 (canary-promote" in text
    assert registry.aliases("m") == {"production": 2, "staging": 2, "old": 3}
    last = registry.audit("m")[-1]
    assert (last["action"], last["alias"], last["from"], last["to"]) == (
        "canary-promote", "production", 1, 2)
    assert last["reason"].startswith("canary passed: error rate +0.0000") and \
        "agreement 0.9" in last["reason"] and "250 candidate / 250 baseline requests" in \
        last["reason"]
    # the new action is a promotion to the ledger: a rollback walks back over it
    registry.rollback("m", "production")
    assert registry.aliases("m")["production"] == 1
    # once both aliases hold the same version there is nothing to decide
    registry.set_alias("m:2", "production")
    code, text = canary(capsys, registry)
    assert code == 0 and "both point at version 2: no canary running" in text


@pytest.mark.parametrize("traffic_args, rule", [
    ({"agree": 0.6}, "agreement"),
    ({"candidate_errors": 0.1}, "error rate"),
    ({"candidate_confidence": 0.7}, "confidence"),
    ({"candidate_latency": 60.0}, "latency"),
], ids=["agreement", "errors", "confidence", "latency"])
def test_canary_reverts_a_candidate_that_fails_a_rule(registry, capsys, traffic_args, rule):
    write(registry, canary_traffic(250, **traffic_args))
    code, text = canary(capsys, registry)
    assert code == 3, text
    assert f"decision: revert (decided by the {rule} rule)" in text
    assert "m@staging: version 2 -> version 1 (canary-revert" in text
    assert registry.aliases("m") == {"production": 1, "staging": 1, "old": 3}
    last = registry.audit("m")[-1]
    assert (last["action"], last["alias"], last["from"], last["to"]) == (
        "canary-revert", "staging", 2, 1)
    assert last["reason"].startswith(f"canary failed: {rule}")
    failed = [line.split("  ")[0] for line in text.splitlines() if line.endswith("  FAIL")]
    assert failed == [rule]


@pytest.mark.parametrize("slow, decision", [(3, "promote"), (25, "revert")],
                         ids=["three-heavy-images", "a-slow-tail"])
def test_the_latency_tail_is_judged_where_each_arm_has_enough_requests(registry, capsys,
                                                                       slow, decision):
    # 250 requests a side, the candidate's `slow` of them at 200 ms (a few large photos to
    # decode, or a real slow tail): p99 would be its 3 slowest; the rule judges p96
    entries = canary_traffic(250)
    for entry in [e for e in entries if e["arm"] == "candidate"][:slow]:
        entry["latency_ms"] = 200.0
    write(registry, entries)
    code, text = canary(capsys, registry, "--dry-run")
    assert f"decision: {decision}" in text, text
    assert code == (0 if decision == "promote" else 3)
    assert "at p96 (candidate" in text and "ms p50/p96" in text
    assert "p96, not p99: the slowest 10 of the smaller arm's requests, p99 from 1,000" in text


def test_the_tail_quantile_has_ten_requests_beyond_it_up_to_p99():
    assert [canary_rules.tail_quantile(n) for n in (20, 200, 250, 300, 999, 1000, 50000)] == \
        [0.5, 0.95, 0.96, 0.96, 0.98, 0.99, 0.99]


def test_canary_json_has_the_arms_and_the_numbers(registry, capsys):
    write(registry, canary_traffic(250, agree=0.6))
    code = cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 3 and result["decision"] == "revert" and result["decided_by"] == "agreement"
    assert result["change"] is None and result["dry_run"] is True
    assert result["arms"]["candidate"]["requests"] == result["arms"]["baseline"]["requests"] \
        == 250
    assert 0.5 < result["agreement"] < 0.7 and result["pairs"] > 1000
    assert {r["rule"] for r in result["rules"]} == {"error rate", "agreement", "confidence",
                                                    "latency"}
    assert registry.aliases("m")["staging"] == 2


def test_canary_below_min_requests_is_undecided_and_changes_nothing(registry, capsys):
    write(registry, canary_traffic(150, agree=0.5))
    before = registry.audit("m")
    code, text = canary(capsys, registry)
    assert code == 0, text
    assert "decision: undecided: not enough requests yet: candidate 150, baseline 150 " \
           "(--min-requests 200); 50 more on the candidate arm, 50 more on the baseline arm" \
           in text and "nothing changed" in text
    assert registry.audit("m") == before
    assert registry.aliases("m") == {"production": 1, "staging": 2, "old": 3}
    code, text = canary(capsys, registry, "--min-requests", "100")
    assert code == 3 and registry.aliases("m")["staging"] == 1


def test_canary_counts_only_the_versions_the_aliases_hold_now(registry, capsys):
    # an earlier canary's traffic (version 3 as the candidate) does not count
    old = traffic(300, 21, version=3, label=None, arm="candidate",
                  shadow={"version": 1, "agree": 0.2, "confidence": 0.9})
    write(registry, old, canary_traffic(250))
    code, text = canary(capsys, registry)
    assert code == 0 and "decision: promote" in text


@pytest.mark.parametrize("args, message", [
    (["--candidate", "nope"], "has no alias 'nope' (the --candidate"),
    (["--candidate", "production"], "--candidate and --baseline are both 'production'"),
    (["--since", "soon"], "--since 'soon' is neither"),
])
def test_canary_user_mistakes_exit_2(registry, capsys, args, message):
    assert cli.main(["models", "canary", "m", *args, "--registry", registry.root]) == 2
    assert message in capsys.readouterr().err


def test_class_shares_are_compared_with_the_models_own_eval_predictions():
    """A model that over-predicts a class on its own eval split does so on healthy
    traffic too: that is not drift. The card's eval counts, recall and precision give
    the shares it predicted there (true positives / precision)."""
    data = {"counts": {"train": {"a": 50, "b": 50}, "eval": {"a": 10, "b": 10}}}
    # a: 9 of 10 found, precision 0.6 -> 15 predicted; b: 5 of 10 found, precision 1 -> 5
    per_class = {"a": {"recall": 0.9, "precision": 0.6}, "b": {"recall": 0.5, "precision": 1.0}}
    assert monitoring.eval_predicted_shares(data, per_class) == pytest.approx(
        {"a": 0.75, "b": 0.25})
    images = [{"class": "a"}] * 74 + [{"class": "b"}] * 26
    thresholds = monitoring.Thresholds()
    own = monitoring._class_check(data, images, thresholds, True, "", per_class)
    assert own["verdict"] == "ok" and "its own predictions" in own["detail"]
    # against the training shares (50/50) the same traffic is 0.24 off
    plain = monitoring._class_check(data, images, thresholds, True, "", None)
    assert plain["verdict"] == "FAIL" and "training data's classes" in plain["detail"]
    # a class never predicted right: it takes what the others leave of the 20
    assert monitoring.eval_predicted_shares(
        data, {"a": {"recall": 0.0, "precision": 0.0}, "b": per_class["b"]}) == pytest.approx(
        {"a": 0.75, "b": 0.25})
    assert monitoring.eval_predicted_shares(data, None) is None


# --- canary against the eval reference and labels (issue 31) ---------------------------


def two_models(n: int, seed: int, candidate_right: float = 0.835,
               baseline_right: float = 0.77) -> list[dict]:
    """`n` images answered by two weak models (both < 0.8 accurate on the whole), the
    candidate the better: each image's true class, and each model's class and
    confidence. Their mistakes are partly shared, as two retrains' are."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        truth = str(rng.choice(CLASSES))
        shared = rng.random()
        own = rng.random() if rng.random() < 0.5 else shared
        wrong = [c for c in CLASSES if c != truth]
        base = truth if shared < baseline_right else str(rng.choice(wrong))
        cand = truth if own < candidate_right else str(rng.choice(wrong))
        rows.append({"label": truth, "predicted": cand, "baseline_predicted": base,
                     "probability": float(np.clip(rng.normal(0.70, 0.1), 0.34, 1)),
                     "baseline_probability": float(np.clip(rng.normal(0.76, 0.1), 0.34, 1))})
    return rows


def served(rows: list[dict], candidate: int, baseline: int, labels: bool = False,
           per: int = 3) -> list[dict]:
    """The rows as canary traffic: alternate requests on each arm, every one sampled
    with the other arm's answers; `labels`: each image carries its true class, as a
    request's "labels" puts it in the log."""
    entries = []
    for i in range(0, len(rows) - per + 1, per):
        chunk, arm = rows[i:i + per], ("candidate", "baseline")[(i // per) % 2]
        own, other = ("predicted", "baseline_predicted") if arm == "candidate" else \
            ("baseline_predicted", "predicted")
        own_p, other_p = ("probability", "baseline_probability") if arm == "candidate" else \
            ("baseline_probability", "probability")
        images = [{"sha256": f"{i}-{k}", "bytes": 700, "height": 28, "width": 28,
                   "channels": 1, "brightness": 0.45, "contrast": 0.25, "class": r[own],
                   "confidence": r[own_p], **({"truth": r["label"]} if labels else {})}
                  for k, r in enumerate(chunk)]
        entry = request_log.make_entry(
            model="m", version=candidate if arm == "candidate" else baseline, label=None,
            arm=arm, status=200, latency_ms=20.0, instances=per, id=f"r{i}", time=_at(i),
            images=images)
        entry["shadow"] = {"version": baseline if arm == "candidate" else candidate,
                           "classes": [r[other] for r in chunk],
                           "confidences": [r[other_p] for r in chunk]}
        entries.append(entry)
    return entries


def with_reference(registry, eval_rows: list[dict] | None, baseline: str = "m:1") -> None:
    """m:2's card as evaluate leaves it: the paired comparison with `baseline` on the
    eval split, the two models' agreement on it included."""
    import os

    path = os.path.join(registry.get("m", 2).path, artifacts.PushedModel.CARD)
    card = json.load(open(path))
    card["comparison"] = {"baseline": baseline, "examples": len(eval_rows or []),
                          "agreement": gate.agreement_reference(eval_rows or [])}
    open(path, "w").write(json.dumps(card))


def test_a_better_weak_candidate_is_promoted_against_its_eval_reference(registry, capsys):
    """The issue's canary: two ~75% models disagree on a fifth of the images; the
    candidate is the more accurate. Judged against how the same two models agreed on
    the eval split it is promoted; the old fixed limits (agreement 0.9) reverted it."""
    eval_rows, traffic_rows = two_models(90, 1), two_models(1500, 2)
    with_reference(registry, eval_rows)
    write(registry, served(traffic_rows, 2, 1))
    code = cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--json"])
    result = json.loads(capsys.readouterr().out)
    assert 0.7 < result["agreement"] < 0.85 and result["reference"]["examples"] == 90
    assert code == 0 and result["decision"] == "promote", result["reason"]
    rules = {r["rule"]: r for r in result["rules"]}
    assert set(rules) == {"error rate", "agreement", "confidence", "class shares", "latency"}
    assert "on 90 eval examples (at least" in rules["agreement"]["line"]
    assert "candidate 0.70" in rules["confidence"]["line"] and "since eval the " \
        "candidate's moved" in rules["confidence"]["line"]
    # the old rule on the same traffic: fixed limits
    old = canary_rules.canary(served(traffic_rows, 2, 1), 2, 1)
    assert old["decision"] == "revert" and old["decided_by"] == "agreement"
    # the text names the reference
    assert cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "judged against: version 2's eval split, where it and version 1 agreed on" in text


def test_a_candidate_that_parts_from_its_eval_reference_is_reverted(registry, capsys):
    """Against the reference, a candidate answering traffic unlike it answered eval
    (agreement 0.4 where eval had ~0.8) is reverted by the agreement rule."""
    with_reference(registry, two_models(90, 1))
    broken = two_models(1500, 3, candidate_right=0.2)
    write(registry, served(broken, 2, 1))
    code = cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 3 and result["decided_by"] == "agreement", result["reason"]


def test_a_reference_against_another_baseline_falls_back_to_fixed_limits(registry, capsys):
    with_reference(registry, two_models(90, 1), baseline="m:3")
    write(registry, served(two_models(1500, 2), 2, 1))
    code = cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run"])
    text = capsys.readouterr().out
    assert code == 3 and "judged against: fixed limits (version 2's card has no eval " \
        "comparison with version 1)" in text
    assert "fixed limits: the candidate's card has no eval comparison" in text


@pytest.mark.parametrize("candidate_right, decision", [(0.835, "promote"), (0.45, "revert")],
                         ids=["better", "worse"])
def test_labelled_traffic_decides_by_accuracy(registry, capsys, candidate_right, decision):
    """Labels on traffic (a request's "labels") decide by the paired accuracy
    difference; agreement and confidence only inform (no eval reference here, whose
    fixed limits alone would revert the better candidate)."""
    write(registry, served(two_models(1500, 4, candidate_right=candidate_right), 2, 1,
                           labels=True))
    code = cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == decision and result["labelled"] == 1500, result["reason"]
    assert code == (0 if decision == "promote" else 3)
    assert result["decided_by"] == "labelled accuracy"
    assert {r["rule"] for r in result["rules"]} == {"error rate", "labelled accuracy", "latency"}
    assert {r["rule"] for r in result["informative"]} == {"agreement", "confidence"}


def test_a_label_file_joins_by_request_id(registry, capsys, tmp_path):
    rows = two_models(1500, 5)
    entries = served(rows, 2, 1)
    write(registry, entries)
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,index,label\n" + "".join(
        f"{e['id']},{k},{rows[int(e['id'][1:]) + k]['label']}\n"
        for e in entries for k in range(3)))
    code = cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--labels", str(labels), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["decided_by"] == "labelled accuracy", result["reason"]
    assert result["labelled"] == 1500
    bad = tmp_path / "bad.csv"
    bad.write_text("id,class\nr0,cat\n")
    assert cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--labels", str(bad)]) == 2
    assert "each row needs request_id and label" in capsys.readouterr().err


# --- a damaged request log (issue 34) ------------------------------------------------------

GOOD_IMAGE = {"sha256": "x", "bytes": 700, "height": 28, "width": 28, "channels": 1,
              "brightness": 0.45, "contrast": 0.25, "class": "dog", "confidence": 0.9}
# lines that are valid JSON but not an entry: each crashed monitor or canary before
WRONG_SHAPES = {
    "images a number": {"images": 5},
    "an image a list": {"images": [[28, 28]]},
    "confidence in words": {"images": [dict(GOOD_IMAGE, confidence="high")]},
    "width in text": {"images": [dict(GOOD_IMAGE, width="8")]},
    "height without width": {"images": [{k: v for k, v in GOOD_IMAGE.items() if k != "width"}]},
    "height past a float": {"images": [dict(GOOD_IMAGE, height=10**400)]},
    "confidence not finite": {"images": [dict(GOOD_IMAGE, confidence=float("nan"))]},
    "shadow classes a number": {"shadow": {"version": 2, "classes": 5, "confidences": [0.9]}},
    "shadow confidences text": {"shadow": {"version": 2, "classes": ["dog"],
                                           "confidences": ["high"]}},
    "shadow a list": {"shadow": [2, "dog"]},
    "status in text": {"status": "500"},
    "latency in text": {"latency_ms": "slow"},
    "id a number": {"id": 7},
}


def _plant_line(registry, line: str, when: dt.datetime = START) -> str:
    """A batch file of one raw line in the day folder of `when`, as another writer's."""
    import os

    day = os.path.join(request_log.folder(registry.root, "m"), when.strftime("%Y-%m-%d"))
    os.makedirs(day, exist_ok=True)
    path = os.path.join(day, f"{when.strftime('%H%M%S')}-elsewhere-1-1.jsonl")
    with open(path, "w") as handle:
        handle.write(line + "\n")
    return path


@pytest.mark.parametrize("damage", [*WRONG_SHAPES.values(), "deep"],
                         ids=[*WRONG_SHAPES, "nested past the recursion limit"])
def test_a_line_of_the_wrong_shape_is_skipped_and_counted_by_monitor_and_canary(
        registry, capsys, damage):
    write(registry, traffic(200), canary_traffic(250))
    # a baseline entry of the canary, served by production: both commands read it
    entry = traffic(1, 99, start=60.25, label=None, arm="baseline",
                    shadow={"version": 2, "agree": 1.0, "confidence": 0.9})[0]
    line = "[" * 100_000 if damage == "deep" else json.dumps(dict(entry, **damage))
    path = _plant_line(registry, line)
    code, text, report = monitor(capsys, registry, "m@production", *_window(0, 300))
    assert code == 0 and report["status"] == "healthy", text
    assert report["damaged_lines"] == 1 and report["first_damage"].startswith(f"{path} line 1")
    assert f"1 damaged line(s) in the request log skipped (the first: {path} line 1: " in text
    assert cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "promote" and result["damaged_lines"] == 1
    assert result["arms"]["baseline"]["requests"] == 250


def test_what_a_reader_says_of_each_wrong_shape():
    good = traffic(1, 5, label=None, arm="baseline",
                   shadow={"version": 2, "agree": 1.0, "confidence": 0.9})[0]
    assert request_log.problem(good) is None
    assert request_log.problem(dict(good, images=None, shadow=None, label=None)) is None
    said = {name: request_log.problem(dict(good, **damage))
            for name, damage in WRONG_SHAPES.items()}
    assert said["images a number"] == "'images' is not a list"
    assert said["confidence in words"] == "images[0] 'confidence' is not a number from 0 to 1"
    assert said["shadow classes a number"] == "'shadow' 'classes' is not a list of class names"
    assert all(said.values()), said


@pytest.mark.parametrize("plant", ["a file named like a day's folder",
                                   "a folder named like a batch file"])
def test_a_path_that_is_not_what_its_name_says_is_skipped_and_named(registry, capsys, plant):
    import os

    write(registry, traffic(200), canary_traffic(250))
    base = request_log.folder(registry.root, "m")
    window = _window(0, 300)
    if plant.startswith("a file"):
        # a day that is read and holds no traffic whatever the hour: tomorrow, with a
        # window that runs into it (the days before can hold the traffic, which starts
        # at START, two hours before the push and the test, whichever day that was)
        day = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
        window = _window(0, (day - START).total_seconds() + 60)
        path = os.path.join(base, day.strftime("%Y-%m-%d"))
        with open(path, "w") as handle:
            handle.write("x\n")
        why = "a file where a day's folder of batch files belongs"
    else:
        path = os.path.join(base, START.strftime("%Y-%m-%d"), "000000-h-1-1.jsonl")
        os.makedirs(path)
        why = "a folder where a batch file belongs"
    code, text, report = monitor(capsys, registry, "m@production", *window)
    assert code == 0 and report["status"] == "healthy", text
    assert report["skipped_paths"] == [f"{path} ({why})"]
    assert f"skipped in the request log: {path} ({why})" in text
    assert cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--json", *window]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "promote" and result["skipped_paths"] == [f"{path} ({why})"]


@pytest.mark.parametrize("value", ["999999999d", "9" * 400 + "s", "0001-01-01T00:00:00+05:00"],
                         ids=["days", "a 400-digit span", "before year 1 in UTC"])
@pytest.mark.parametrize("command", [
    ["monitor", "m@production", "--since"], ["monitor", "m@production", "--until"],
    ["monitor", "m@production", "--reference-since"],
    ["monitor", "m@production", "--reference-until"],
    ["models", "canary", "m", "--since"], ["models", "canary", "m", "--until"]],
    ids=lambda c: f"{c[0]} {c[-1]}")
def test_a_time_outside_the_calendar_is_one_line_and_exit_2(registry, capsys, command,
                                                            value):
    assert cli.main([*command, value, "--registry", registry.root]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{command[-1]} {value!r} lies outside the calendar (years 1 to 9999 UTC)" in err


def test_canary_counts_no_traffic_dated_after_now_unless_until_says(registry, capsys):
    # failing candidate traffic stamped an hour ahead (a skewed clock, a bad writer)
    ahead = traffic(300, 31, start=3 * 3600, version=2, label=None, arm="candidate",
                    errors=1.0)
    write(registry, canary_traffic(250), ahead)
    assert cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "promote"
    assert result["arms"]["candidate"]["requests"] == 250
    until = dt.datetime.fromisoformat(result["window"]["until"])
    assert abs((until - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 600
    # asked for: the window reaches them
    code = cli.main(["models", "canary", "m", "--registry", registry.root, "--dry-run",
                     "--json", "--until", _at(4 * 3600)])
    result = json.loads(capsys.readouterr().out)
    assert code == 3 and result["arms"]["candidate"]["requests"] == 550
    assert result["decided_by"] == "error rate"
