"""The TFMD schema of raw image examples: inferred from ingest statistics, written as
a text proto, loaded back, and read (class domain, integer bounds) by validation."""

from __future__ import annotations

from typing import Any

from components import features
from components.io import fileio
from components.errors import ConfigError


def infer_schema(stats: dict[str, Any]):
    """A TFMD Schema for raw image examples, from ingest statistics."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    label_domain = schema.string_domain.add(name=features.LABEL)
    label_domain.value.extend(stats["class_names"])
    format_domain = schema.string_domain.add(name=features.FORMAT)
    format_domain.value.extend(["jpeg", "png"])
    sizes = [tuple(int(v) for v in key.split("x")) for key in stats["sizes"]]
    channels = [int(c) for c in stats["channels"]]
    for name, kind in ((features.IMAGE, schema_pb2.BYTES), (features.ID, schema_pb2.BYTES),
                       (features.SOURCE, schema_pb2.BYTES), (features.LABEL, schema_pb2.BYTES),
                       (features.FORMAT, schema_pb2.BYTES), (features.HEIGHT, schema_pb2.INT),
                       (features.WIDTH, schema_pb2.INT), (features.CHANNELS, schema_pb2.INT)):
        feature = schema.feature.add(name=name, type=kind)
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.value_count.min = feature.value_count.max = 1
        if name in (features.LABEL, features.FORMAT):
            feature.domain = name
    bounds = {features.HEIGHT: [h for h, _ in sizes], features.WIDTH: [w for _, w in sizes],
              features.CHANNELS: channels}
    for feature in schema.feature:
        if feature.name in bounds and bounds[feature.name]:
            feature.int_domain.min = min(bounds[feature.name])
            feature.int_domain.max = max(bounds[feature.name])
    return schema


def schema_to_text(schema) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(schema)


def load_schema(path: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    if not fileio.exists(path):
        raise ConfigError(f"validate.schema {path!r} not found; write one with "
                          "`imgpipe schema infer CONFIG -o PATH` or remove the key to infer it.")
    try:
        return text_format.Parse(fileio.read_text(path), schema_pb2.Schema())
    except text_format.ParseError as exc:
        raise ConfigError(f"validate.schema {path}: not a TFMD Schema text proto ({exc}).") from exc


def domain(schema, name: str) -> list[str] | None:
    for domain in schema.string_domain:
        if domain.name == name:
            return list(domain.value)
    return None


def int_bounds(schema, name: str) -> tuple[int | None, int | None]:
    for feature in schema.feature:
        if feature.name == name and feature.HasField("int_domain"):
            domain = feature.int_domain
            return (domain.min if domain.HasField("min") else None,
                    domain.max if domain.HasField("max") else None)
    return None, None


def linf_distance(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
    """L-infinity distance of two categorical distributions and the class attaining it."""
    worst, label = 0.0, ""
    for key in sorted(set(a) | set(b)):
        diff = abs(a.get(key, 0.0) - b.get(key, 0.0))
        if diff > worst:
            worst, label = diff, key
    return worst, label
