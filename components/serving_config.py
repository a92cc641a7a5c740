"""What real TF Serving needs beside a pushed version: warmup records, and a model
config file that follows the registry's aliases.

Warmup records (TFX InfraValidator's `assets.extra/tf_serving_warmup_requests`): a
TFRecord file (uncompressed) of serialized `PredictionLog` protos, each a
`predict_log.request` (`PredictRequest`: the signature's name in `model_spec`, one
string tensor input). TF Serving replays them when it loads a version, before the
version takes traffic, so the first real request does not pay for tracing and kernel
set-up. infra_validate writes them (one request per serving signature, a small batch of
its probe's inputs) into its InfraBlessing when the probe passed; push copies them into
the version at `VERSION_WARMUP`; `read_warmup` gives them back to a local server.

The model config (`ModelServerConfig` text proto, for `tensorflow_model_server
--model_config_file`): one `config` per model, serving every version an alias points at
and the newest one, with the aliases as `version_labels`.

Only the proto classes are imported at module level where they do not pull in
TensorFlow: the model config's do not, the warmup records' (`PredictRequest` holds a
`TensorProto`) import TensorFlow inside the functions that need them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from components import fileio, tfrecord
from components.errors import ConfigError

# Where TF Serving looks for warmup records inside a version folder (its fixed path,
# `tensorflow_serving/servables/tensorflow/saved_model_warmup_util`). The registry
# version's layout, not an artifact's: the InfraBlessing names its own copy.
VERSION_WARMUP = "assets.extra/tf_serving_warmup_requests"
# How many of the probe's inputs one warmup request carries: enough to trace the batch
# dimension as a batch, few enough to keep a version's load quick.
WARMUP_BATCH = 8
# TF Serving replays at most this many warmup records (kMaxNumRecordsWarmup).
MAX_WARMUP_RECORDS = 1000

# (signature name, input key, inputs): one warmup request.
Request = tuple[str, str, list[bytes]]


# --- warmup records -------------------------------------------------------------------


def prediction_logs(requests: Iterable[Request], batch: int = WARMUP_BATCH) -> list:
    """One `PredictionLog` per request: a `PredictRequest` for the signature, its input
    a string tensor of the first `batch` inputs. Requests without inputs are left out."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    logs = []
    for signature, key, inputs in requests:
        inputs = [bytes(x) for x in inputs[:batch]]
        if not inputs:
            continue
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = signature
        request.inputs[key].CopyFrom(tf.make_tensor_proto(inputs, dtype=tf.string))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(logs)} warmup records; TF Serving replays at most "
                         f"{MAX_WARMUP_RECORDS}")
    return logs


def write_warmup(path: str, requests: Iterable[Request], batch: int = WARMUP_BATCH) -> int:
    """Writes the warmup records of `requests` to `path` (local or gs://), as one
    uncompressed TFRecord file (what TF Serving reads). Returns the number of records."""
    logs = prediction_logs(requests, batch)
    fileio.write_bytes(path, tfrecord.frame(log.SerializeToString() for log in logs))
    return len(logs)


def _records(data: bytes, path: str) -> list[bytes]:
    """The records of an uncompressed TFRecord file, each frame's CRCs checked."""
    records, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise ValueError(f"{path}: truncated TFRecord frame at byte {pos}")
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        end = pos + 12 + length + 4
        if end > len(data):
            raise ValueError(f"{path}: truncated TFRecord frame at byte {pos}")
        record = data[pos + 12:pos + 12 + length]
        if data[pos:end] != tfrecord.frame([record]):
            raise ValueError(f"{path}: TFRecord frame at byte {pos} fails its CRC check")
        records.append(record)
        pos = end
    return records


def read_warmup(path: str) -> list[Request]:
    """(signature name, input key, inputs) for each input of each PredictRequest in a
    warmup file, in file order: what a local server feeds a freshly loaded model.
    Other logs (classify, regress, ...) are skipped; a damaged file or an input that is
    not a string tensor is a ValueError naming the file."""
    from tensorflow_serving.apis import prediction_log_pb2

    out: list[Request] = []
    for index, record in enumerate(_records(fileio.read_bytes(path), path)):
        try:
            log = prediction_log_pb2.PredictionLog.FromString(record)
        except Exception as exc:            # protobuf's DecodeError
            raise ValueError(f"{path}: record {index} is not a PredictionLog ({exc})") from exc
        if log.WhichOneof("log_type") != "predict_log":
            continue
        request = log.predict_log.request
        for key in sorted(request.inputs):
            tensor = request.inputs[key]
            if tensor.dtype != _DT_STRING:
                raise ValueError(f"{path}: record {index} input {key!r} is not a string "
                                 "tensor")
            out.append((request.model_spec.signature_name or "serving_default", key,
                        list(tensor.string_val)))
    return out


_DT_STRING = 7      # tensorflow.DataType.DT_STRING (types.proto)


# --- the model config file ----------------------------------------------------------


@dataclass
class ServingConfig:
    """A `ModelServerConfig` for a registry, and the warning lines for what it left out
    (dangling aliases, models without versions, links out of the root)."""

    config: object                        # model_server_config_pb2.ModelServerConfig
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        from google.protobuf import text_format

        return text_format.MessageToString(self.config)

    def models(self) -> list[dict]:
        """Per model: name, base_path, versions, labels (the --json form)."""
        return [{"name": c.name, "base_path": c.base_path,
                 "versions": list(c.model_version_policy.specific.versions),
                 "labels": dict(sorted(c.version_labels.items(), key=lambda kv: kv[0]))}
                for c in self.config.model_config_list.config]


def model_server_config(registry, names: Sequence[str] = ()) -> ServingConfig:
    """TF Serving's model config for the models of `registry` (a components.registry
    Registry), or the models `names`: per model its folder as `base_path`, the
    versions every alias points at plus the newest as a `specific` version policy, the
    aliases as `version_labels`. An alias whose version folder is gone is left out
    (with a warning); a model with no versions is left out (a warning), unless named,
    then a ConfigError, as is a name the registry does not hold or an empty registry."""
    from tensorflow_serving.config import model_server_config_pb2

    known = registry.models()
    for name in names:
        if name not in known:
            raise ConfigError(f"model {name!r} is not in the registry {registry.root} "
                              f"(models there: {', '.join(known) or 'none'}).")
    if not known:
        raise ConfigError(f"no pushed models under {registry.root}: nothing for TF Serving "
                          "to serve (push one with `imgpipe run CONFIG`).")
    out = ServingConfig(model_server_config_pb2.ModelServerConfig())
    for link, real in registry.links_outside():
        out.warnings.append(f"skipped {link}: a link to {real}, outside the registry "
                            f"{registry.root}; remove the link.")
    for name in names or known:
        versions = [v.version for v in registry.versions(name)]
        if not versions:
            if names:
                raise ConfigError(f"model {name!r} has no pushed versions in {registry.root}; "
                                  "TF Serving would have nothing to load.")
            out.warnings.append(f"skipped model {name!r}: it has no pushed versions.")
            continue
        dangling = registry.dangling(name)
        for alias, number in sorted(dangling.items()):
            out.warnings.append(
                f"left out {name}@{alias}: it points at version {number}, whose folder is "
                f"gone; point it at a version that is there with `imgpipe models promote "
                f"{name}:N --to {alias}`.")
        labels = {alias: number for alias, number in registry.aliases(name).items()
                  if alias not in dangling}
        config = out.config.model_config_list.config.add()
        config.name = name
        config.base_path = fileio.join(registry.root, name)
        config.model_platform = "tensorflow"
        config.model_version_policy.specific.versions.extend(
            sorted(set(labels.values()) | {versions[-1]}))
        for alias in sorted(labels):
            config.version_labels[alias] = labels[alias]
    if not out.config.model_config_list.config:
        raise ConfigError(f"no model under {registry.root} has a pushed version: nothing for "
                          "TF Serving to serve.")
    return out
