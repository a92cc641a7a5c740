"""The predict protocol's own rules, apart from the routes: what a refusal is, how a
body's JSON and a path's version number are read, why the model could not read an
input, and what an answer holds.

- A body is JSON nested at most `MAX_DEPTH` levels (a predict body needs 4): deeper is
  the client's 400, never the server's 500, whatever Python's parser makes of it.
- A version in a path is a whole number as TF Serving reads one (surrounding spaces, a
  `+` and leading zeros allowed: `/versions/01` is version 1), from 1 to int64's
  largest; anything else is a 400 that says so.
- An input the header checks let through but the model cannot decode is named: which
  instance, and why (the image decoded in full, as ingest decodes it).
- An answer carries, beside each prediction's `probabilities`, the class names in the
  vector's order (`classes`): the model's label vocabulary, which is the transform's
  order, not the sorted one `models show` prints.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import numpy as np

from components.data import imaging
from components.features import EXAMPLES_SIGNATURE, IMAGE

MAX_DEPTH = 32                 # nesting of arrays and objects in a predict body
MAX_VERSION = 2 ** 63 - 1      # TF Serving's versions are int64
PREDICT_BODY = '{"instances": [{"b64": "<base64 image>"}, ...]}'


class Refused(Exception):
    """A request this server will not answer: status, message, metrics reason."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.reason = status, reason


# --- the body ------------------------------------------------------------------------


def parse_json(body: bytes) -> Any:
    """The body's JSON document; Refused(400) when it is not JSON or nests arrays and
    objects deeper than MAX_DEPTH (Python's parser gives up with a RecursionError at
    about a thousand levels: that, too, is the body's fault)."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"the body is not JSON ({exc}); send {PREDICT_BODY}",
                      "bad_json") from None
    if _deeper_than(document, MAX_DEPTH):
        raise _too_deep()
    return document


def _too_deep() -> Refused:
    return Refused(400, f"the body nests arrays or objects more than {MAX_DEPTH} levels deep "
                        f"(the limit); a predict body needs 4: {PREDICT_BODY}", "bad_json")


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether `document` nests lists and dicts more than `limit` levels (walked
    without recursion, stopping at the first path that is too deep)."""
    stack = [(document, 1)] if isinstance(document, (list, dict)) else []
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (list, dict)))
    return False


# --- the path ------------------------------------------------------------------------

_WHOLE = re.compile(r"[+]?[0-9]+")


def parse_version(raw: str, name: str) -> int:
    """A path's version as TF Serving reads it (a whole number: spaces around it, a
    `+` and leading zeros allowed); Refused(400) for anything that is no version
    number (negative, zero, over int64, not a whole number)."""
    text = raw.strip()
    number = int(text) if _WHOLE.fullmatch(text) else None
    if number is None or not 1 <= number <= MAX_VERSION:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise Refused(400, f"version {shown!r} of {name} is no version number: versions are "
                           f"whole numbers from 1 (1, 2, 3, ...); `imgpipe models show {name}` "
                           "lists them, or ask /v1/models/NAME/labels/ALIAS by alias",
                      "bad_version")
    return number


# --- why the model could not read a request --------------------------------------------


def explain(inputs: list[bytes], signature: str, max_pixels: int,
            call: Callable[[list[bytes]], Any], fallback: str) -> tuple[int | None, str]:
    """(the first instance the model cannot read, why) for a request the model refused
    as a whole: each image decoded in full as ingest decodes it (a truncated or
    damaged body the header check let through says what is wrong with it); when every
    image decodes, the model is asked instance by instance and its own reason given.
    (None, `fallback`) when no single instance fails."""
    for index, data in enumerate(inputs):
        image = _image_of(data) if signature == EXAMPLES_SIGNATURE else data
        if image is None:
            return index, f"the tf.Example has no '{IMAGE}' bytes feature"
        try:
            imaging.check_image(image, max_pixels)
        except imaging.BadImage as exc:
            return index, str(exc)
    for index, data in enumerate(inputs):
        try:
            call([data])
        except Exception as exc:
            return index, model_reason(exc)
    return None, fallback


def _image_of(example: bytes) -> bytes | None:
    from tensorflow.core.example import example_pb2

    try:
        feature = example_pb2.Example.FromString(example).features.feature.get(IMAGE)
    except Exception:
        return None
    if feature is None or len(feature.bytes_list.value) != 1:
        return None
    return feature.bytes_list.value[0]


def model_reason(exc: Exception) -> str:
    """TensorFlow's reason for refusing an input, without its preamble ("Graph
    execution error:", where the op was defined, `{{function_node ...}}`) and node
    names: "Invalid PNG data, size 61", "jpeg::Uncompress failed. Invalid JPEG data or
    crop window."."""
    text = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in text.splitlines()]
    reasons = [line for line in lines
               if line and not line.startswith(("Graph execution error", "Detected at node",
                                                "File ", "[[", "[Op:"))
               and not line.endswith("defined at (most recent call last):")]
    found = reasons[-1] if reasons else (lines[0] if lines and lines[0] else type(exc).__name__)
    found = re.sub(r"\{\{[^}]*\}\}|\s*\[\[.*$|\s*\[Op:.*$", "", found).strip()
    return found[:300] or type(exc).__name__


# --- the answer --------------------------------------------------------------------------


def _value(array: np.ndarray) -> Any:
    if array.dtype.kind in ("S", "O"):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                for v in array.tolist()] if array.ndim else array.item().decode()
    return array.tolist()


def answer(outputs: dict[str, np.ndarray], columnar: bool,
           classes: list[str] | None = None) -> dict[str, Any]:
    """TF Serving's answer: `predictions` (one object per instance) or, for a columnar
    request, `outputs` (one list per output); with `classes` (the class names in the
    order of the probability vector) beside `probabilities` when the model names them."""
    values = {key: _value(array) for key, array in sorted(outputs.items())}
    count = len(next(iter(values.values())))
    probabilities = outputs.get("probabilities")
    if (classes and probabilities is not None and probabilities.ndim == 2
            and probabilities.shape[1] == len(classes)):
        values["classes"] = [list(classes)] * count
    if columnar:
        return {"outputs": values}
    return {"predictions": [{key: values[key][i] for key in values} for i in range(count)]}
