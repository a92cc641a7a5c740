"""What the request log (`pipeline.serve.request_log`) says about a served model.

`monitor`: the traffic one version served in a window against the training data its
model card records (card["data"]: counts, sizes, channels, pixels): image sizes and
channels never (or rarely) seen in training, brightness and contrast drift (0-1
units, validate's conventions), predicted-class shares against the training class
shares (L-infinity, like validate's class-share check), the confidence against the
version's own earliest traffic, and the error rate. Each check has a threshold and a
verdict; too few sampled images is "not enough traffic", never drift.

The canary's rules, on the same log, are in `pipeline.serve.canary`.

No TensorFlow: the log's entries and the card are all it reads.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from components.config.validate import ValidateConfig
from components.errors import ConfigError
from components.data.schema import linf_distance

OK, FAIL, SKIPPED, LOW = "ok", "FAIL", "skipped", "not enough traffic"
HEALTHY, DRIFT, NOT_ENOUGH = "healthy", "drift", "not enough traffic"
# A size or channel count that under this share of the training images had is "not
# seen in training"; a size whose scale (sqrt(height * width)) is this many times the
# training median's (or its inverse) is off-scale.
RARE_SHARE = 0.01
SCALE_RATIO = 2.0
# The sizes at least RARE_SHARE of the training images had must cover this much of the
# training data for the exact sizes to mean something (a fixed-size dataset); a photo
# dataset of many sizes is checked on the scale alone.
FIXED_SIZES = 0.9
REFERENCE_SHARE = 0.25       # the default confidence reference: the earliest quarter


def _default(section: Any, field: str) -> float:
    return section.model_fields[field].default


@dataclass(frozen=True)
class Thresholds:
    """`imgpipe monitor`'s limits (each a flag of the command)."""

    min_images: int = 100
    min_requests: int = 100
    max_size_shift: float = 0.1
    max_channel_shift: float = 0.05
    max_brightness_drift: float = _default(ValidateConfig, "max_brightness_drift")
    max_contrast_drift: float = _default(ValidateConfig, "max_brightness_drift")  # validate: the same
    max_class_drift: float = _default(ValidateConfig, "max_class_drift")
    max_confidence_drop: float = 0.05
    max_error_rate: float = 0.01


# --- times -----------------------------------------------------------------------------

_AGO = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str | None, now: _dt.datetime | None = None,
               what: str = "--since") -> _dt.datetime | None:
    """'1h', '24h', '7d', '30m' (that long before now) or an ISO 8601 time (UTC when
    it names no zone) -> an aware UTC datetime; None for None or ''. A ConfigError
    for anything else, and for a time outside the calendar (years 1 to 9999 UTC)."""
    if not text:
        return None
    now = now or _dt.datetime.now(_dt.timezone.utc)
    match = _AGO.fullmatch(text.strip())
    try:
        if match:
            return now - _dt.timedelta(seconds=float(match["n"]) * _UNITS[match["unit"]])
        value = _dt.datetime.fromisoformat(text.strip())
        if value.tzinfo is None:
            return value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc)
    except OverflowError:
        raise ConfigError(f"{what} {text!r} lies outside the calendar (years 1 to 9999 UTC); "
                          "give a span back from now such as 24h, 30d or 52w, or a time "
                          "such as 2026-12-01T08:00:00Z.") from None
    except ValueError:
        raise ConfigError(f"{what} {text!r} is neither a time such as 2026-12-01T08:00:00Z "
                          "nor a span back from now such as 1h, 24h or 7d.") from None


def iso(value: _dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(_dt.timezone.utc).isoformat(
        timespec="seconds")


def entry_time(entry: dict[str, Any]) -> _dt.datetime:
    from pipeline.serve.request_log import parse_time

    return parse_time(entry.get("time")) or _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


def damage_lines(entries: Any) -> list[str]:
    """What a read of the request log skipped (`request_log.Entries`: damaged lines,
    paths that are not what their names say), a line each."""
    lines = []
    if entries.damaged:
        lines.append(f"{entries.damaged} damaged line(s) in the request log skipped (the "
                     f"first: {entries.first_damage})")
    shown = entries.skipped[:5]
    lines += [f"skipped in the request log: {path}" for path in shown]
    if len(entries.skipped) > len(shown):
        lines.append(f"... and {len(entries.skipped) - len(shown)} more path(s) skipped")
    return lines


# --- what the entries hold -------------------------------------------------------------


def is_error(entry: dict[str, Any]) -> bool:
    """A server-side failure (status 5xx); a 4xx is the client's."""
    status = entry.get("status")
    return isinstance(status, int) and status >= 500


def described(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The entry's sampled images that decoded (those with a size)."""
    return [image for image in entry.get("images") or []
            if isinstance(image, dict) and isinstance(image.get("height"), int)]


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _shares(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {key: n / total for key, n in counts.items()} if total else {}


def _weighted_median(pairs: list[tuple[float, float]]) -> float:
    pairs = sorted(pairs)
    total, seen = sum(w for _, w in pairs), 0.0
    for value, weight in pairs:
        seen += weight
        if seen >= total / 2:
            return value
    return pairs[-1][0]


def _size(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+)x(\d+)", str(text))
    return (int(match[1]), int(match[2])) if match else None


def _check(name: str, value: float | None, threshold: float | None, verdict: str,
           detail: str, direction: str = "max") -> dict[str, Any]:
    return {"check": name, "value": value, "threshold": threshold, "direction": direction,
            "verdict": verdict, "detail": detail}


def _verdict(value: float, threshold: float, direction: str = "max") -> str:
    return FAIL if (value > threshold if direction == "max" else value < threshold) else OK


# --- monitor ---------------------------------------------------------------------------


def reference_entries(entries: list[dict[str, Any]], since: _dt.datetime | None = None,
                      until: _dt.datetime | None = None) -> tuple[list[dict[str, Any]], str]:
    """The confidence reference among a version's entries (all of its traffic, oldest
    first) and a line saying what it is: those between since and until when either is
    given, else the earliest REFERENCE_SHARE of its sampled entries."""
    if since or until:
        chosen = [e for e in entries if (not since or entry_time(e) >= since)
                  and (not until or entry_time(e) <= until)]
        return chosen, (f"the version's traffic from {iso(since) or 'its start'} to "
                        f"{iso(until) or 'now'} (--reference-since/--reference-until)")
    sampled = sorted((e for e in entries if described(e)), key=entry_time)
    chosen = sampled[:math.ceil(len(sampled) * REFERENCE_SHARE)]
    if not chosen:
        return [], "the earliest 25% of the version's sampled requests (there are none)"
    return chosen, (f"the earliest {REFERENCE_SHARE:.0%} of the version's sampled requests "
                    f"({len(chosen)} of {len(sampled)}, {iso(entry_time(chosen[0]))} to "
                    f"{iso(entry_time(chosen[-1]))})")


def monitor(card: dict[str, Any], window: list[dict[str, Any]],
            reference: list[dict[str, Any]], reference_line: str,
            thresholds: Thresholds = Thresholds()) -> dict[str, Any]:
    """The checks of one version's traffic in a window (`window`: the entries it served
    there) against its model card and its reference traffic. Returns {status, requests,
    sampled_requests, images, reference, checks: [{check, value, threshold, direction,
    verdict, detail}]}: status "drift" when a check failed, else "healthy" when every
    check had enough traffic, else "not enough traffic"."""
    data = card.get("data") or {}
    images = [image for entry in window for image in described(entry)]
    t = thresholds
    enough = len(images) >= t.min_images
    low = (f"{len(images)} sampled image(s) in the window, under --min-images "
           f"{t.min_images}: not enough traffic to judge")
    checks = [_size_check(data, images, t, enough, low),
              _channel_check(data, images, t, enough, low),
              *_pixel_checks(data, images, t, enough, low),
              _class_check(data, images, t, enough, low, card.get("per_class")),
              _confidence_check(images, reference, reference_line, t, enough, low),
              _error_check(window, t)]
    verdicts = {c["verdict"] for c in checks}
    status = DRIFT if FAIL in verdicts else (NOT_ENOUGH if LOW in verdicts else HEALTHY)
    return {"status": status, "requests": len(window),
            "sampled_requests": sum(1 for e in window if e.get("images")),
            "images": len(images), "undecoded_images": sum(
                len(e.get("images") or []) for e in window) - len(images),
            "reference": {"what": reference_line, "requests": len(reference),
                          "images": sum(len(described(e)) for e in reference)},
            "checks": checks}


def _size_check(data, images, t: Thresholds, enough: bool, low: str) -> dict[str, Any]:
    name = "size shift"
    sizes = {key: n for key, n in (data.get("sizes") or {}).items() if _size(key)}
    if not sizes:
        return _check(name, None, t.max_size_shift, SKIPPED,
                      "the model card records no image sizes (pushed before cards kept them; "
                      "a version pushed now has them)")
    if not enough:
        return _check(name, None, t.max_size_shift, LOW, low)
    shares = _shares(sizes)
    common = {key for key, share in shares.items() if share >= RARE_SHARE}
    fixed = sum(shares[key] for key in common) >= FIXED_SIZES
    median = _weighted_median([(math.sqrt(h * w), n) for (h, w), n in
                               ((_size(k), n) for k, n in sizes.items())])
    unseen = off_scale = 0
    for image in images:
        scale = math.sqrt(image["height"] * image["width"])
        if not median or not 1 / SCALE_RATIO <= scale / median <= SCALE_RATIO:
            off_scale += 1
        elif fixed and f"{image['height']}x{image['width']}" not in common:
            unseen += 1
    value = (unseen + off_scale) / len(images)
    top = max(sizes, key=sizes.get)
    how = (f"{unseen} of a size under {RARE_SHARE:.0%} of training's, " if fixed else
           "training's sizes vary, so only the scale counts; ")
    return _check(name, value, t.max_size_shift, _verdict(value, t.max_size_shift),
                  f"share of served images off training's sizes: {how}{off_scale} over "
                  f"{SCALE_RATIO:g}x from training's median scale {median:.0f}px "
                  f"(training: mostly {top}, {shares[top]:.0%})")


def _channel_check(data, images, t: Thresholds, enough: bool, low: str) -> dict[str, Any]:
    name = "channel shift"
    channels = {str(k): n for k, n in (data.get("channels") or {}).items()}
    if not sum(channels.values()):
        return _check(name, None, t.max_channel_shift, SKIPPED,
                      "the model card records no channel counts (pushed before cards kept "
                      "them; a version pushed now has them)")
    if not enough:
        return _check(name, None, t.max_channel_shift, LOW, low)
    shares = _shares(channels)
    odd = sum(1 for image in images if shares.get(str(image.get("channels")), 0.0) < RARE_SHARE)
    value = odd / len(images)
    served = _shares({str(c): sum(1 for i in images if i.get("channels") == c) for c in (1, 3)})
    return _check(name, value, t.max_channel_shift, _verdict(value, t.max_channel_shift),
                  "share of served images with a channel count under "
                  f"{RARE_SHARE:.0%} of training's (training {_share_text(shares)}; served "
                  f"{_share_text(served)})")


def _share_text(shares: dict[str, float]) -> str:
    names = {"1": "gray", "3": "RGB"}
    return ", ".join(f"{names.get(k, k)} {v:.0%}" for k, v in sorted(shares.items()) if v) or "-"


def _training_pixels(data) -> tuple[dict[str, dict[str, float]], dict[str, int], str]:
    """Per-class pixel stats and counts of the training split (every split when the
    card has no train split)."""
    pixels, counts = data.get("pixels") or {}, data.get("counts") or {}
    splits = ["train"] if pixels.get("train") else sorted(pixels)
    stats: dict[str, dict[str, float]] = {}
    weights: dict[str, int] = {}
    for split in splits:
        for label, values in (pixels.get(split) or {}).items():
            key = f"{split}/{label}"
            stats[key] = values
            weights[key] = int((counts.get(split) or {}).get(label) or 0)
    return stats, weights, "+".join(splits) or "-"


def _pixel_checks(data, images, t: Thresholds, enough: bool, low: str) -> list[dict[str, Any]]:
    stats, weights, split = _training_pixels(data)
    out = []
    for name, key, field, threshold in (
            ("brightness drift", "brightness", "brightness_mean", t.max_brightness_drift),
            ("contrast drift", "contrast", "contrast_mean", t.max_contrast_drift)):
        pairs = [(v[field], weights[k]) for k, v in stats.items()
                 if isinstance(v, dict) and isinstance(v.get(field), (int, float))
                 and weights[k] > 0]
        if not pairs:
            out.append(_check(name, None, threshold, SKIPPED,
                              "the model card records no per-class brightness/contrast "
                              "(pushed before cards kept them; a version pushed now has them)"))
            continue
        if not enough:
            out.append(_check(name, None, threshold, LOW, low))
            continue
        trained = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
        values = [float(i[key]) for i in images if isinstance(i.get(key), (int, float))]
        if not values:
            out.append(_check(name, None, threshold, SKIPPED,
                              f"the sampled images carry no {key}"))
            continue
        served = sum(values) / len(values)
        change = served - trained
        out.append(_check(name, abs(change), threshold, _verdict(abs(change), threshold),
                          f"served mean {key} {served:.3f} vs training's {trained:.3f} "
                          f"({split} split; {change:+.3f}, 0-1 scale)"))
    return out


def eval_predicted_shares(data: dict[str, Any], per_class: Any) -> dict[str, float] | None:
    """The shares of each class among the model's own predictions on its eval split,
    from the card: eval count x recall / precision per class (predicted = true positives
    / precision). A class the model never got right (recall 0) says nothing of how
    often it was predicted: such classes share what the others leave of the eval count.
    None when the card cannot say (no per-class metrics or eval counts)."""
    counts = (data.get("counts") or {}).get("eval") or {}
    if not counts or not isinstance(per_class, dict):
        return None
    predicted, unknown = {}, []
    for label, n in counts.items():
        metrics = per_class.get(label) or {}
        recall, precision = metrics.get("recall"), metrics.get("precision")
        if not isinstance(recall, (int, float)) or not isinstance(precision, (int, float)):
            return None
        if recall <= 0 or precision <= 0:
            unknown.append(label)
        else:
            predicted[label] = n * recall / precision
    left = max(sum(counts.values()) - sum(predicted.values()), 0.0)
    for label in unknown:
        predicted[label] = left / len(unknown)
    return _shares(predicted) if sum(predicted.values()) else None


def _class_check(data, images, t: Thresholds, enough: bool, low: str,
                 per_class: Any = None) -> dict[str, Any]:
    name = "class shares"
    counts = data.get("counts") or {}
    own = eval_predicted_shares(data, per_class)
    trained = counts.get("train") or {}
    if not trained:
        trained = {}
        for split_counts in counts.values():
            for label, n in (split_counts or {}).items():
                trained[label] = trained.get(label, 0) + n
    if not sum(trained.values()):
        return _check(name, None, t.max_class_drift, SKIPPED,
                      "the model card records no class counts")
    if not enough:
        return _check(name, None, t.max_class_drift, LOW, low)
    predicted: dict[str, int] = {}
    for image in images:
        label = str(image.get("class"))
        predicted[label] = predicted.get(label, 0) + 1
    # The reference is what this model predicted on its own eval split when the card
    # can tell (a model that over-predicts a class on healthy data is not drift), else
    # the training data's class shares.
    served = _shares(predicted)
    shares = own if own is not None else _shares(trained)
    where = ("its own predictions on the eval split" if own is not None
             else "the training data's classes")
    distance, label = linf_distance(served, shares)
    return _check(name, distance, t.max_class_drift, _verdict(distance, t.max_class_drift),
                  f"L-inf distance of predicted-class shares from {where}"
                  + (f"; most off: {label!r} {served.get(label, 0.0):.1%} served vs "
                     f"{shares.get(label, 0.0):.1%} there" if label else ""))


def confidences(images: Iterable[dict[str, Any]]) -> list[float]:
    return [float(i["confidence"]) for i in images
            if isinstance(i.get("confidence"), (int, float))]


def _confidence_check(images, reference, reference_line: str, t: Thresholds, enough: bool,
                      low: str) -> dict[str, Any]:
    name = "confidence drop"
    if not enough:
        return _check(name, None, t.max_confidence_drop, LOW, low)
    ref_images = [image for entry in reference for image in described(entry)]
    ref, now = confidences(ref_images), confidences(images)
    if len(ref) < t.min_images:
        return _check(name, None, t.max_confidence_drop, LOW,
                      f"the reference ({reference_line}) holds {len(ref)} sampled image(s), "
                      f"under --min-images {t.min_images}")
    if not now:
        return _check(name, None, t.max_confidence_drop, SKIPPED,
                      "the sampled images carry no confidence")
    before, after = sum(ref) / len(ref), sum(now) / len(now)
    drop = before - after
    return _check(name, drop, t.max_confidence_drop, _verdict(drop, t.max_confidence_drop),
                  f"mean confidence {after:.3f} in the window vs {before:.3f} in the "
                  f"reference ({len(ref)} images)")


def _error_check(window, t: Thresholds) -> dict[str, Any]:
    name = "error rate"
    if len(window) < t.min_requests:
        return _check(name, None, t.max_error_rate, LOW,
                      f"{len(window)} request(s) in the window, under --min-requests "
                      f"{t.min_requests}")
    errors = sum(1 for e in window if is_error(e))
    client = sum(1 for e in window if isinstance(e.get("status"), int)
                 and 400 <= e["status"] < 500)
    value = errors / len(window)
    return _check(name, value, t.max_error_rate, _verdict(value, t.max_error_rate),
                  f"{errors} of {len(window)} requests failed (status 5xx); {client} refused "
                  "as the client's mistake (4xx, not counted)")
