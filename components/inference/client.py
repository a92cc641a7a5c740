"""The one client of an exported model's serving signatures: load, check, call.

`serving_images` (encoded images) and `serving_default` (serialized tf.Examples), as
components/trainer/export.py writes them: loads a pushed or trained SavedModel, checks it
has the signature its caller calls, and calls it. `imgpipe predict`, the infer step
(through predict and the Beam handler) and `imgpipe serve` build on it, so a model that
does not load or lacks the signature is refused by each of them with the same
NotServable line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components import features
from components.artifacts import SAVED_MODEL_PB
from components.errors import ConfigError
from components.io import fileio

IMAGES = features.IMAGES_SIGNATURE
EXAMPLES = features.EXAMPLES_SIGNATURE


class NotServable(ConfigError):
    """A model that does not load as a SavedModel, or lacks the serving signature its
    client calls."""


def _refused(what: str, problem: str) -> NotServable:
    return NotServable(f"{what} {problem}; use a model imgpipe's trainer exported (a pushed "
                       "version or a run's trained model), or push it again.")


@dataclass(frozen=True)
class Signature:
    """One serving signature that takes a batch of strings under one input key."""

    name: str
    input_key: str        # the one string input it takes ("images", "examples")
    function: Any         # the ConcreteFunction
    outputs: tuple[str, ...]
    metadata: dict[str, Any]   # TF Serving's signature_def as JSON (`/metadata`)

    def call(self, inputs: list[bytes]) -> dict[str, Any]:
        """The signature on a batch of string inputs -> {output: numpy array}."""
        import tensorflow as tf

        out = self.function(**{self.input_key: tf.constant(inputs, dtype=tf.string)})
        return {key: value.numpy() for key, value in out.items()}


@dataclass(eq=False)
class ServingModel:
    """A loaded SavedModel: its string-input signatures and its class names (the label
    vocabulary asset, in id order; None when the export has none)."""

    path: str
    module: Any
    signatures: dict[str, Signature]
    vocabulary: list[str] | None

    def call(self, signature: str, inputs: list[bytes]) -> dict[str, Any]:
        """`signature` on a batch of string inputs -> {output: numpy array}."""
        return self.signatures[signature].call(inputs)


def check(saved_model: str, what: str | None = None, signature: str = IMAGES) -> None:
    """NotServable unless `saved_model` is a SavedModel with `signature`, read from its
    saved_model.pb without loading the model (before a Beam job starts, so the mistake
    is one line, not a worker's traceback). `what`: how messages name it (the path)."""
    what = what or saved_model
    pb = fileio.join(saved_model, SAVED_MODEL_PB)
    if not fileio.exists(pb):
        raise _refused(what, f"is not a SavedModel (it holds no {SAVED_MODEL_PB})")
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(fileio.read_bytes(pb))
    except Exception as exc:      # a damaged file: protobuf's DecodeError, or worse
        raise _refused(what, f"does not load as a SavedModel ({pb}: "
                             f"{type(exc).__name__})") from None
    found = sorted({name for graph in proto.meta_graphs for name in graph.signature_def
                    if not name.startswith("__")})      # not TF's own __saved_model_init_op
    if signature not in found:
        raise _refused(what, _lacks(signature, found))


def load(saved_model: str, what: str | None = None, signature: str = IMAGES) -> ServingModel:
    """The SavedModel at `saved_model`, loaded, with `signature` among its string-input
    signatures; NotServable when it does not load or lacks it. `what`: how messages
    name it (the path; `imgpipe serve` gives the version too)."""
    import tensorflow as tf

    what = what or saved_model
    if not fileio.exists(fileio.join(saved_model, SAVED_MODEL_PB)):
        raise _refused(what, f"is not a SavedModel (it holds no {SAVED_MODEL_PB})")
    try:
        module = tf.saved_model.load(fileio.tf_path(saved_model))
    except Exception as exc:       # damaged variables, a missing op, an unreadable proto
        detail = " ".join(str(exc).split())[:200]
        raise _refused(what, f"does not load as a SavedModel ({type(exc).__name__}: "
                             f"{detail})") from exc
    signatures = _signatures(module)
    if signature not in signatures:
        raise _refused(what, _lacks(signature, sorted(module.signatures)))
    vocab = fileio.join(saved_model, "assets", features.LABEL_VOCABULARY)
    vocabulary = fileio.read_text(vocab).splitlines() if fileio.exists(vocab) else None
    return ServingModel(saved_model, module, signatures, vocabulary)


def answers(model: ServingModel, images: list[bytes], top_k: int = 3) -> list[dict[str, Any]]:
    """class, probability and top-k of each encoded image, through the model's
    serving_images signature in one call."""
    import numpy as np

    out = model.call(IMAGES, images)
    probs, classes, names = out["probabilities"], out["class_name"], model.vocabulary
    rows = []
    for j in range(len(images)):
        order = np.argsort(-probs[j])[:top_k]
        rows.append({"class": classes[j].decode(), "probability": float(probs[j].max()),
                     "top_k": [[names[k] if names else int(k), float(probs[j][k])]
                               for k in order]})
    return rows


def _lacks(signature: str, found: list[str]) -> str:
    return f"has no {signature} signature (it has {', '.join(found) or 'none'})"


def _tensor_json(spec: Any) -> dict[str, Any]:
    shape = spec.shape
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in
            (shape.as_list() if shape.rank is not None else [])]
    from tensorflow.core.framework import types_pb2

    # TensorFlow's own names, as TF Serving writes them: DT_FLOAT, DT_INT32, DT_STRING
    return {"dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum),
            "tensor_shape": {"dim": dims, "unknown_rank": shape.rank is None},
            "name": getattr(spec, "name", "") or ""}


def _signatures(module: Any) -> dict[str, Signature]:
    """The module's signatures that take one string input (what REST and batch
    prediction can feed), with TF Serving's signature_def as JSON."""
    found = {}
    for name, function in module.signatures.items():
        _, kwargs = function.structured_input_signature
        if len(kwargs) != 1:
            continue           # not a one-input signature: not served over REST here
        (key, spec), = kwargs.items()
        if spec.dtype.name != "string":
            continue
        outputs = function.structured_outputs
        found[name] = Signature(
            name, key, function, tuple(sorted(outputs)),
            {"inputs": {key: _tensor_json(spec)},
             "outputs": {k: _tensor_json(v) for k, v in sorted(outputs.items())},
             "method_name": "tensorflow/serving/predict"})
    return found
