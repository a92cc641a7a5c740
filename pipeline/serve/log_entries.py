"""The request log's entries (`pipeline.serve.request_log` has the schema): their
times, and the shape a reader accepts. A field may be absent or null (a reader takes
it as unknown), but one that is there must have its type; a line that is not such an
entry is damaged: the reader skips and counts it (`problem` says why), so no value
written by a damaged or foreign writer reaches `monitor` or `models canary`."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any


def utc(value: _dt.datetime) -> _dt.datetime:
    """An aware UTC datetime (a naive one is taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=_dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc)


def parse_time(text: Any) -> _dt.datetime | None:
    """An entry's "time" as an aware UTC datetime; None when it is not an ISO time."""
    if not isinstance(text, str):
        return None
    try:
        return utc(_dt.datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        return None


# --- an entry's shape -----------------------------------------------------------------

_TEXT_FIELDS = ("id", "model", "label", "arm", "signature", "error")
_IMAGE_TEXT = ("sha256", "error", "class", "truth")
_LARGEST = 1 << 31                 # a count or a side in pixels, at most


def _integer(value: Any, low: int = 0, high: int = _LARGEST) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any, low: float = 0.0, high: float = math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and low <= value <= high)


def _image_problem(image: Any) -> str | None:
    if not isinstance(image, dict):
        return "is not an object"
    for key in _IMAGE_TEXT:
        if image.get(key) is not None and not isinstance(image[key], str):
            return f"{key!r} is not text"
    for key, low in (("height", 1), ("width", 1), ("channels", 1), ("bytes", 0)):
        if image.get(key) is not None and not _integer(image[key], low):
            return f"{key!r} is not a whole number from {low} to {_LARGEST:,}"
    if (image.get("height") is None) != (image.get("width") is None):
        return "has a height without a width or the other way round"
    for key in ("brightness", "contrast", "confidence"):
        if image.get(key) is not None and not _number(image[key], 0.0, 1.0):
            return f"{key!r} is not a number from 0 to 1"
    return None


def _shadow_problem(shadow: Any) -> str | None:
    if not isinstance(shadow, dict):
        return "is not an object"
    if shadow.get("version") is not None and not _integer(shadow["version"], 0, 1 << 63):
        return "'version' is not a whole number"
    if shadow.get("error") is not None and not isinstance(shadow["error"], str):
        return "'error' is not text"
    classes, scores = shadow.get("classes"), shadow.get("confidences")
    if classes is not None and not (isinstance(classes, list)
                                    and all(isinstance(c, str) for c in classes)):
        return "'classes' is not a list of class names"
    if scores is not None and not (isinstance(scores, list) and all(
            s is None or _number(s, 0.0, 1.0) for s in scores)):
        return "'confidences' is not a list of numbers from 0 to 1"
    return None


def problem(entry: Any) -> str | None:
    """What keeps a line of the log from being an entry of the schema above, or None.
    A field may be absent or null (a reader takes it as unknown), but one that is
    there must have its type: a wrong type, a number that is not finite, or a count
    out of range makes the line damaged (skipped and counted by `read`)."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    if parse_time(entry.get("time")) is None:
        return "no ISO 8601 'time'"
    for key in _TEXT_FIELDS:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            return f"{key!r} is not text"
    checks = (("version", lambda v: _integer(v, 0, 1 << 63), "a whole number"),
              ("status", lambda v: _integer(v, 100, 599), "an HTTP status"),
              ("instances", _integer, "a whole number"),
              ("latency_ms", _number, "a number of milliseconds"))
    for key, check, what in checks:
        if entry.get(key) is not None and not check(entry[key]):
            return f"{key!r} is not {what}"
    images = entry.get("images")
    if images is not None:
        if not isinstance(images, list):
            return "'images' is not a list"
        for index, image in enumerate(images):
            why = _image_problem(image)
            if why:
                return f"images[{index}] {why}"
    if entry.get("shadow") is not None:
        why = _shadow_problem(entry["shadow"])
        if why:
            return f"'shadow' {why}"
    return None
