"""Feature keys of raw image examples, and their encoding as `tf.train.Example`.

Every step that reads or writes raw examples uses these names. The encoder writes
the protobuf wire format directly so that ingest workers need no TensorFlow import
(3 s per process); tests parse its output with `tf.io.parse_example`.
"""

from __future__ import annotations

import struct

# The exported model's serving signatures (components/trainer/export.py writes them): a batch
# of serialized tf.Examples (TF Serving's default) and a batch of encoded images.
EXAMPLES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"

IMAGE = "image/encoded"
FORMAT = "image/format"
LABEL = "label"
HEIGHT = "height"
WIDTH = "width"
CHANNELS = "channels"
ID = "id"
SOURCE = "source"


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if 0 <= value < 16384:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
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


def _feature(value: int | float) -> bytes:
    """A tf.train.Feature holding one number: Feature.float_list (field 2, packed
    float32) or int64_list (field 3), each a list whose field 1 holds the value(s).
    Bytes and strings go through `_bytes_entry`."""
    if isinstance(value, float):
        inner = b"\x0a\x04" + struct.pack("<f", value)
        return b"\x12" + _SMALL[len(inner)] + inner
    packed = _varint(value)
    inner = b"\x0a" + _varint(len(packed)) + packed
    return b"\x1a" + _varint(len(inner)) + inner


_KEY_FIELDS: dict[str, bytes] = {}


def _bytes_entry(key: str, value: bytes | str) -> bytes:
    """`_entry` for a bytes value, joined once (the per-image entries: id, image, source)."""
    key_field = _KEY_FIELDS.get(key)
    if key_field is None:
        key_field = _KEY_FIELDS[key] = _field(1, key.encode("utf-8"))
    # surrogateescape: a file name that is not UTF-8 keeps its bytes
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    size = _varint(len(data))
    list_size = 1 + len(size) + len(data)                       # BytesList
    list_head = _varint(list_size)
    feature_size = 1 + len(list_head) + list_size               # Feature.bytes_list
    feature_head = _varint(feature_size)
    entry_size = len(key_field) + 1 + len(feature_head) + feature_size
    return b"".join((b"\x0a", _varint(entry_size), key_field, b"\x12", feature_head,
                     b"\x0a", list_head, b"\x0a", size, data))


def _entry(key: str, value: bytes | str | int | float) -> bytes:
    """One map entry of Features.feature: the key (field 1), the Feature (field 2)."""
    if isinstance(value, (bytes, str)):
        return _bytes_entry(key, value)
    feature = _feature(value)
    entry = _field(1, key.encode("utf-8")) + b"\x12" + _varint(len(feature)) + feature
    return b"\x0a" + _varint(len(entry)) + entry


# Entries that repeat across a dataset (label, format, sizes) are encoded once.
_REPEATED = frozenset({LABEL, FORMAT, HEIGHT, WIDTH, CHANNELS})
_ENTRIES: dict[tuple[str, type, bytes | str | int | float], bytes] = {}
_MAX_CACHED = 1 << 16


def encode_example(features: dict[str, bytes | str | int | float]) -> bytes:
    """Serialized `tf.train.Example` with one value per feature (bytes, str, int or
    float, the last as float32)."""
    parts = []
    for key in sorted(features):
        value = features[key]
        if key in _REPEATED:
            entry = _ENTRIES.get((key, type(value), value))
            if entry is None:
                entry = _entry(key, value)
                if len(_ENTRIES) < _MAX_CACHED:
                    _ENTRIES[key, type(value), value] = entry
        else:
            entry = _entry(key, value)
        parts.append(entry)
    entries = b"".join(parts)
    return b"\x0a" + _varint(len(entries)) + entries                    # Example.features


# --- transformed features and the preprocessing_fn -----------------------------------

TRANSFORMED_IMAGE = "image"        # float32 [H, W, C]: PIXELS * PIXEL_SCALE + PIXEL_OFFSET
PIXELS = "pixels"                  # the resized pixels, whole numbers 0-255
PIXEL_SCALE = "pixel_scale"        # the normalization, per example (full-pass constants)
PIXEL_OFFSET = "pixel_offset"
LABEL_ID = "label_id"
LABEL_ONEHOT = "label_onehot"
LABEL_VOCABULARY = "label"          # tft vocabulary file name (an asset of the graph)
# What a materialized transform writes per example: the pixels as uint8 bytes (1 byte
# per value, not a float list), the label id and the normalization; the trainer
# applies `pixels * scale + offset`, the same arithmetic as the served graph.
PIXEL_BYTES = "pixels_uint8"


def raw_feature_spec() -> dict:
    """The raw features the transform reads (the rest of the example is metadata)."""
    import tensorflow as tf

    return {IMAGE: tf.io.FixedLenFeature([], tf.string),
            LABEL: tf.io.FixedLenFeature([], tf.string)}


def decode_and_resize(encoded, image_size: tuple[int, int], channels: int,
                      keep_aspect_ratio: bool):
    """Encoded JPEG/PNG bytes [N] -> float32 [N, H, W, C] whole pixel values in 0-255
    (rounded after the resize, so that they are exactly what uint8 stores)."""
    import tensorflow as tf

    height, width = image_size

    def one(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image = tf.cast(image, tf.float32)
        image.set_shape([None, None, channels])
        if keep_aspect_ratio:
            image = tf.image.resize_with_pad(image, height, width, method="bilinear")
        else:
            image = tf.image.resize(image, [height, width], method="bilinear")
        return tf.clip_by_value(tf.round(image), 0.0, 255.0)

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec(
        [height, width, channels], tf.float32))


def make_preprocessing_fn(image_size: tuple[int, int], channels: int, normalize: str,
                          num_classes: int, keep_aspect_ratio: bool = False):
    """The tensorflow-transform preprocessing_fn: decode, resize, normalize, label ids.

    `scale` divides by 255 (the course's normalization); `standardize` subtracts the
    full-pass mean and divides by the standard deviation of all training pixels. The
    label vocabulary is computed by `tft.vocabulary` in fingerprint order, which does
    not depend on class frequencies, so ids stay stable when the data changes.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    def preprocessing_fn(inputs):
        pixels = decode_and_resize(tf.reshape(inputs[IMAGE], [-1]), image_size, channels,
                                   keep_aspect_ratio)
        scale, offset = tf.constant(1 / 255.0), tf.constant(0.0)
        if normalize == "standardize":
            mean = tft.mean(pixels / 255.0)
            std = tf.maximum(tf.sqrt(tft.var(pixels / 255.0)), 1e-6)
            scale, offset = scale / std, -mean / std
        batch = tf.shape(pixels)[0]
        label_id = tft.compute_and_apply_vocabulary(
            tf.reshape(inputs[LABEL], [-1]), default_value=-1, vocab_filename=LABEL_VOCABULARY,
            fingerprint_shuffle=True)
        return {
            TRANSFORMED_IMAGE: pixels * scale + offset,
            PIXELS: pixels,
            PIXEL_SCALE: tf.fill([batch], scale),
            PIXEL_OFFSET: tf.fill([batch], offset),
            LABEL_ID: label_id,
            LABEL_ONEHOT: tf.one_hot(label_id, num_classes, dtype=tf.float32),
        }

    return preprocessing_fn


# --- reading raw examples back (evaluate, infra validation, tests) -------------------

_KEPT = (LABEL, ID, SOURCE, IMAGE)


def split_files(examples, split: str) -> list[str]:
    """The TFRecord files of one split of an Examples artifact; an error if none."""
    from components import artifacts
    from components.errors import ArtifactError

    files = artifacts.Examples.shards(examples, split)
    if not files:
        raise ArtifactError(f"no {split} examples under {examples.uri}; the ingest step wrote "
                            "none (check data.eval_fraction or the source's splits).")
    return files


def labeled_image_spec() -> dict:
    """Parse spec for reading examples back: image, label, and id/source when present."""
    import tensorflow as tf

    return {LABEL: tf.io.FixedLenFeature([], tf.string),
            ID: tf.io.FixedLenFeature([], tf.string, default_value=b""),
            SOURCE: tf.io.FixedLenFeature([], tf.string, default_value=b""),
            IMAGE: tf.io.FixedLenFeature([], tf.string)}


def read_raw_examples(files: list[str], limit: int | None = None
                      ) -> tuple[list[bytes], dict[str, list]]:
    """(serialized examples, columns label/id/source as str and image/encoded as bytes);
    the first `limit` examples only when given."""
    import tensorflow as tf

    from components.io import fileio

    records = tf.data.TFRecordDataset([fileio.tf_path(f) for f in files],
                                      compression_type="GZIP")
    if limit is not None:
        records = records.take(limit)
    serialized = [r.numpy() for r in records]
    if not serialized:
        return serialized, {k: [] for k in _KEPT}
    parsed = tf.io.parse_example(tf.constant(serialized), labeled_image_spec())
    return serialized, {k: [v if k == IMAGE else v.decode("utf-8", "surrogateescape")
                            for v in parsed[k].numpy()] for k in _KEPT}
