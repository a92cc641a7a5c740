"""Feature keys of raw image examples, and their encoding as `tf.train.Example`.

Every step that reads or writes raw examples uses these names. The encoder writes
the protobuf wire format directly so that ingest workers need no TensorFlow import
(3 s per process); tests parse its output with `tf.io.parse_example`.
"""

from __future__ import annotations

IMAGE = "image/encoded"
FORMAT = "image/format"
LABEL = "label"
HEIGHT = "height"
WIDTH = "width"
CHANNELS = "channels"
ID = "id"
SOURCE = "source"

BYTES_FEATURES = (IMAGE, FORMAT, LABEL, ID, SOURCE)
INT_FEATURES = (HEIGHT, WIDTH, CHANNELS)


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _feature(value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        packed = _varint(value)
        return _field(3, _field(1, packed))           # Feature.int64_list (packed values)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _field(1, _field(1, data))                 # Feature.bytes_list.value


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _KEYS[key] = _field(1, key.encode("utf-8"))
    return encoded


def encode_example(features: dict[str, bytes | str | int]) -> bytes:
    """Serialized `tf.train.Example` with one value per feature (bytes, str or int)."""
    entries = b"".join(_field(1, _key(key) + _field(2, _feature(value)))
                       for key, value in sorted(features.items()))
    return _field(1, entries)                         # Example.features.feature map
