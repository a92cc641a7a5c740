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
and the newest one, with the aliases as `version_labels`. A running server refuses a
config whose label names a version it has not loaded, so `rollout` splits a label move
into two configs (the new versions first, the labels once they are AVAILABLE), and
`wait_available` asks the server's REST status in between.

Only the proto classes are imported at module level where they do not pull in
TensorFlow: the model config's do not, the warmup records' (`PredictRequest` holds a
`TensorProto`) import TensorFlow inside the functions that need them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from components import artifacts
from components.io import fileio, tfrecord
from components.errors import ConfigError

# Where TF Serving looks for warmup records inside a version folder (its fixed path,
# `tensorflow_serving/servables/tensorflow/saved_model_warmup_util`): a pushed
# version's layout, named by PushedModel; the InfraBlessing names its own copy.
VERSION_WARMUP = artifacts.PushedModel.WARMUP
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
    """TF Serving's model config for the models of `registry` (a components.registry.versions
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


# --- moving labels in two phases ----------------------------------------------------
#
# TF Serving checks a reloaded config's labels before it loads the config's new
# versions (server_core.cc, `UpdateModelVersionLabelMap`, called ahead of the new
# sources on every config but the first): a label may name only a version that is
# AVAILABLE now. A config that adds version N+1 and moves `staging` onto it in one step
# is refused whole, N+1 is never loaded, and a server polling the file refuses it again
# on every poll. Its serving_config.md: "first submit a config containing N and N+1,
# then move the label". So a label move is two configs: the new versions with every
# label still on a loaded version, then, once they are AVAILABLE, the labels moved.
# (The first config a server starts with is different: TF Serving waits for its
# versions to load before it applies its labels, so it can be written whole.)


@dataclass
class Rollout:
    """The configs to hand a server, in order: `now` (safe with what it has AVAILABLE),
    then `final` (what the registry asks for) once the versions in `waiting` are
    AVAILABLE. `held`: per label kept back in `now`, a line saying why. Not staged
    (`now` is `final`) when no label moves onto a version the server lacks."""

    now: ServingConfig
    final: ServingConfig
    waiting: dict[str, list[int]] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)

    @property
    def staged(self) -> bool:
        return bool(self.waiting)

    def waiting_refs(self) -> str:
        return ", ".join(f"{name}:{v}" for name, versions in self.waiting.items()
                         for v in versions)


def read_model_config(text: str) -> dict[str, tuple[list[int], dict[str, int]]]:
    """Per model of a `ModelServerConfig` text proto: (the `specific` versions, the
    version labels). A text that does not parse is a ValueError."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise ValueError(str(exc)) from exc
    return {c.name: (sorted(c.model_version_policy.specific.versions), dict(c.version_labels))
            for c in parsed.model_config_list.config}


def rollout(target: ServingConfig, available: dict[str, set[int]] | None,
            labels: dict[str, dict[str, int]] | None = None) -> Rollout:
    """The safe way from what a server has to `target`. `available`: per model, the
    versions the server has AVAILABLE (its REST status, or the versions of the config
    it was last given once it loaded them); None for a server that starts with this
    config (whole `target` then). `labels`: per model, the labels it serves now (the
    previous config's). A label whose version is not AVAILABLE stays on its previous
    version while that one is (kept loaded), else is left out until the second
    config; the versions it waits for are `waiting`."""
    if available is None:
        return Rollout(target, target)
    from tensorflow_serving.config import model_server_config_pb2

    labels = labels or {}
    now = ServingConfig(model_server_config_pb2.ModelServerConfig(), list(target.warnings))
    out = Rollout(now, target)
    for wanted in target.config.model_config_list.config:
        name = wanted.name
        have = set(available.get(name, ()))
        before = labels.get(name, {})
        config = now.config.model_config_list.config.add()
        config.CopyFrom(wanted)
        config.ClearField("version_labels")
        versions = set(wanted.model_version_policy.specific.versions)
        for alias in sorted(wanted.version_labels):
            number = wanted.version_labels[alias]
            if number in have:
                config.version_labels[alias] = number
                continue
            out.waiting.setdefault(name, [])
            if number not in out.waiting[name]:
                out.waiting[name].append(number)
            old = before.get(alias)
            if old is not None and old in have:
                config.version_labels[alias] = old
                versions.add(old)
                out.held.append(f"{name}@{alias} stays on {old} until {name}:{number} is "
                                "AVAILABLE")
            else:
                out.held.append(f"{name}@{alias} is left out until {name}:{number} is "
                                "AVAILABLE")
        config.model_version_policy.specific.ClearField("versions")
        config.model_version_policy.specific.versions.extend(sorted(versions))
        if name in out.waiting:
            out.waiting[name].sort()
    return out if out.waiting else Rollout(target, target)


# What TF Serving's REST status says of a version it serves (ManagerState's names).
AVAILABLE = "AVAILABLE"
# How often to ask a server whether the waited-for versions are AVAILABLE, in seconds.
POLL_SECONDS = 1.0


def server_states(server: str, name: str, timeout: float = 10.0) -> dict[int, tuple[str, str]]:
    """version -> (state, error message) of the model `name` on the TF Serving at
    `server` (`GET {server}/v1/models/{name}`); {} when it does not serve the model (404).
    An unreachable server or an answer that is not its status is a ConnectionError
    naming the URL."""
    import json
    import urllib.error
    import urllib.request

    url = f"{server.rstrip('/')}/v1/models/{name}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise ConnectionError(f"GET {url} answered HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"GET {url} failed ({exc})") from exc
    try:
        return {int(entry["version"]): (str(entry.get("state", "")),
                                        str((entry.get("status") or {}).get("error_message", "")))
                for entry in body.get("model_version_status", [])}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConnectionError(f"GET {url} did not answer TF Serving's model status "
                              f"({exc!r})") from exc


def available_on(server: str, names: Iterable[str]) -> dict[str, set[int]]:
    """Per model, the versions the TF Serving at `server` has AVAILABLE."""
    return {name: {v for v, (state, _) in server_states(server, name).items()
                   if state == AVAILABLE} for name in names}


def wait_available(server: str, waiting: dict[str, list[int]], timeout: float
                   ) -> list[tuple[str, str, str]]:
    """Asks the TF Serving at `server` every POLL_SECONDS until every version of
    `waiting` is AVAILABLE, or one failed to load (its state END with an error), or
    `timeout` seconds passed. A server that does not answer (restarting) is asked again
    until then. Returns what is not AVAILABLE at the end as (NAME:VERSION, state, error
    message): empty when all are."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for name, versions in waiting.items():
            try:
                states = server_states(server, name)
            except ConnectionError as exc:
                states = {number: ("unreachable", str(exc)) for number in versions}
            for number in versions:
                state, error = states.get(number, ("not listed", ""))
                if state != AVAILABLE:
                    missing.append((f"{name}:{number}", state, error))
        if not missing or any(state == "END" and error for _, state, error in missing) \
                or time.monotonic() >= deadline:
            return missing
        time.sleep(POLL_SECONDS)
