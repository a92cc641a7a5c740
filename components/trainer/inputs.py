"""The trainer's tf.data input pipeline: batches, augmentation, the validation carve.

Over the transformed examples: cached and shuffled, augmented (training batches only),
eval batches padded for static shapes, and the validation part carved from the train
split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from components import artifacts, features
from components.config.train import AUGMENT_LAYERS, CACHE_BYTES_PER_EXAMPLE, TrainConfig
from components.errors import TrainingError
from components.io import fileio


def cache_bytes(count: int, shape: list[int]) -> int:
    """What caching `count` decoded examples of `shape` costs in memory."""
    return count * (math.prod(shape) + CACHE_BYTES_PER_EXAMPLE)


def make_dataset(graph: artifacts.Artifact, examples: artifacts.Artifact, split: str,
                 batch_size: int, cfg: TrainConfig, training: bool, sparse: bool,
                 static: bool = False, holdout: "Holdout | None" = None,
                 part: str | None = None, kind: str | None = None):
    """(image, label) batches from the transformed TFRecords, or from the raw ones
    through the transform layer when the examples were not materialized. `static`
    (TPUs, several replicas): every batch is full; eval batches are then padded with
    examples of weight 0 ((image, label, weight) batches), so a small eval split under
    many replicas still gives whole batches and exact weighted metrics.
    `holdout` and `part` (FIT or VALIDATION): that part of the train split (a used
    holdout; see `holdout`). `training`: shuffled, full batches, and `train.augment`
    applied (on pixels 0-255, before the normalization; never on other batches; `kind`:
    the model's, which `auto` decides by, see `augmentation`)."""
    import tensorflow as tf

    files, parse = _record_parser(graph, examples, split)
    if not files:
        raise TrainingError(f"no {split} examples under {graph.uri}; rerun the transform step.")
    shape = graph.properties["image_shape"]
    num_classes = graph.properties["num_classes"]
    count = graph.properties["counts"].get(split, 0)
    if part is not None:
        if split != "train" or holdout is None or not holdout.used or part not in (FIT,
                                                                                  VALIDATION):
            raise TrainingError(f"no {part} part of the {split} split: {holdout and holdout.note}")
        parse = _carved(parse, holdout.fraction, part == VALIDATION)
        count = holdout.validation_count if part == VALIDATION else holdout.fit_count
    augment = _augmenter(augmentation(cfg.augment, shape[-1], kind)[0], cfg.seed) \
        if training else None

    def to_model(pixels, label_id, scale, offset):       # one example or a batch
        per_image = tf.concat([tf.shape(scale), tf.ones([3], tf.int32)], 0)
        image = tf.cast(pixels, tf.float32) * tf.reshape(scale, per_image) \
            + tf.reshape(offset, per_image)
        label = label_id if sparse else tf.one_hot(label_id, num_classes, dtype=tf.float32)
        return image, label

    fits = cache_bytes(count, shape) <= cfg.cache_memory_mb * 2 ** 20
    ds = _examples(files, parse, count, fits, training, cfg)
    if fits:
        # Past the in-memory cache the work is light (shuffle, batch, scale), and tf.data's
        # autotuner only competes with training for the cores: measured on 2 cores, the
        # Fashion-MNIST dense net's epochs took 2.5-5.2 s with it, 2.6-3.2 s without.
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.with_options(options)
    # The scaling and one-hot run per batch: per element they cost more than a dense
    # model's training step.
    if training:
        # Full batches: static shapes for TPUs and steps_per_execution. Augmentation
        # runs here, per batch on the CPU, on the uint8 pixels as floats 0-255 (the range
        # its contrast and brightness layers are given), then the normalization.
        def augmented(pixels, label_id, scale, offset):
            return to_model(augment(tf.cast(pixels, tf.float32)), label_id, scale, offset)

        return ds.batch(batch_size, drop_remainder=True).map(
            augmented if augment else to_model,
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    if not static:
        return ds.batch(batch_size).map(to_model, num_parallel_calls=tf.data.AUTOTUNE) \
            .prefetch(tf.data.AUTOTUNE)
    return _padded_batches(ds.map(to_model, num_parallel_calls=tf.data.AUTOTUNE), batch_size,
                           shape, num_classes, sparse)


def normalization(graph: artifacts.Artifact, examples: artifacts.Artifact) -> tuple[float, float]:
    """(scale, offset) of the transform's normalization (normalized = pixel * scale +
    offset: the full-pass constants, the same for every example), read from the first
    training example."""
    import tensorflow as tf

    files, parse = _record_parser(graph, examples, "train")
    if not files:
        raise TrainingError(f"no train examples under {graph.uri}; rerun the transform step.")
    ds = tf.data.TFRecordDataset([fileio.tf_path(f) for f in files],
                                 compression_type="GZIP").batch(64).map(parse)
    for _, _, scale, offset in ds:
        if int(tf.size(scale)):
            return float(scale[0]), float(offset[0])
    raise TrainingError(f"no train examples under {graph.uri}; rerun the transform step.")


def _record_parser(graph: artifacts.Artifact, examples: artifacts.Artifact, split: str):
    """(the split's TFRecord files, a function from a batch of serialized records to
    (uint8 pixels, label id, scale, offset)). Both paths yield uint8 pixels: what is
    cached is a quarter of the float32 images, and the scaling runs after the cache."""
    import tensorflow as tf
    import tensorflow_transform as tft

    shape = graph.properties["image_shape"]
    if graph.properties.get("materialized", True):
        spec = {features.PIXEL_BYTES: tf.io.FixedLenFeature([], tf.string),
                features.LABEL_ID: tf.io.FixedLenFeature([], tf.int64),
                features.PIXEL_SCALE: tf.io.FixedLenFeature([], tf.float32),
                features.PIXEL_OFFSET: tf.io.FixedLenFeature([], tf.float32)}

        def parse(raw):
            batch = tf.io.parse_example(raw, spec)
            pixels = tf.reshape(tf.io.decode_raw(batch[features.PIXEL_BYTES], tf.uint8),
                                [-1, *shape])
            return (pixels, batch[features.LABEL_ID], batch[features.PIXEL_SCALE],
                    batch[features.PIXEL_OFFSET])

        return artifacts.TransformGraph.shards(graph, split), parse
    layer = tft.TFTransformOutput(fileio.tf_path(graph.uri)).transform_features_layer()
    raw_spec = features.raw_feature_spec()

    def parse_raw(raw):
        out = layer(tf.io.parse_example(raw, raw_spec))
        keep = out[features.LABEL_ID] >= 0
        pixels, label_id, scale, offset = (tf.boolean_mask(out[key], keep) for key in (
            features.PIXELS, features.LABEL_ID, features.PIXEL_SCALE, features.PIXEL_OFFSET))
        return tf.cast(pixels, tf.uint8), label_id, scale, offset

    return artifacts.Examples.shards(examples, split), parse_raw


# --- augmentation (training batches only) ----------------------------------------------


# The kinds `train.augment: auto` augments on 3-channel data: the modern convnets from
# scratch (batch norm, global pooling, the capacity to overfit a few thousand photos;
# the photo defaults' kind among them). The course's kinds (dense heads over flattened
# pixels or feature maps, dropout 0.5 on a narrow layer) and transfer (a head over a
# frozen base) train unaugmented: they underfit, and augmentation made them worse
# (bench/accuracy.py --matrix, 2026-12-08, eval accuracy augmented vs not: the course
# cnn on the shared photos 0.224 vs 0.637 in 10 epochs, deep_cnn on builtin:shapes
# 0.760 vs 0.811 in 40, transfer from a base trained on shapes to the photos 0.311 vs
# 0.537 in 10). With model.dropout 0, rotation alone helped the cnn (0.674 vs 0.624).
AUTO_AUGMENTED_KINDS = ("squeezenet", "xception", "resnet")


def augmentation(augment, channels: int, kind: str | None = None
                 ) -> tuple[list[tuple[str, Any]], str]:
    """([(layer, factor)], what the summary says) for `train.augment` on images of
    `channels` for a model of `kind`: auto is off for 1-channel data (glyphs and digits,
    where a mirrored or turned glyph is another class or none) and for the course's
    kinds and transfer (see AUTO_AUGMENTED_KINDS), and AUGMENT_AUTO's layers for the
    modern convnets on 3 channels (`kind` None: decided by the channels only)."""
    if augment == "off":
        return [], "augmentation: off (train.augment: off)"
    if augment == "auto":
        if channels == 1:
            return [], ("augmentation: off (train.augment auto, 1-channel data: glyphs and "
                        "digits are not flipped or turned)")
        if kind is not None and kind not in AUTO_AUGMENTED_KINDS:
            return [], (f"augmentation: off (train.augment auto, model.kind {kind}: "
                        + ("a head over a frozen base" if kind == "transfer" else
                           "the course's models train as the course wrote them")
                        + " underfits, and augmentation made it worse. Set train.augment "
                        "to a list of layers to augment anyway)")
        layers = [(name, AUGMENT_LAYERS[name]) for name in
                  ("flip", "rotation", "zoom", "translation", "contrast")]
        how = "train.augment auto, 3-channel data"
    else:
        layers, how = list(augment.items()), "train.augment"
    return layers, ("augmentation: " + ", ".join(f"{name} {factor:g}" if not isinstance(
        factor, str) else f"{name} {factor}" for name, factor in layers)
        + f" ({how}; training batches only, pixels 0-255 before the normalization)")


def _augmenter(layers: list[tuple[str, Any]], seed: int):
    """A function from a batch of float pixels 0-255 to the same, randomly augmented
    (Keras preprocessing layers run in tf.data, seeded: the same run augments alike),
    or None when there is nothing to apply."""
    if not layers:
        return None
    import keras

    value_range = (0.0, 255.0)
    build = {
        "flip": lambda f, s: keras.layers.RandomFlip(f, seed=s),
        "rotation": lambda f, s: keras.layers.RandomRotation(f, fill_mode="nearest", seed=s),
        "zoom": lambda f, s: keras.layers.RandomZoom(f, fill_mode="nearest", seed=s),
        "translation": lambda f, s: keras.layers.RandomTranslation(f, f, fill_mode="nearest",
                                                                   seed=s),
        "contrast": lambda f, s: keras.layers.RandomContrast(f, value_range=value_range,
                                                             seed=s),
        "brightness": lambda f, s: keras.layers.RandomBrightness(f, value_range=value_range,
                                                                 seed=s)}
    built = [build[name](factor, seed + k) for k, (name, factor) in enumerate(layers)]

    def augment(pixels):
        for layer in built:
            pixels = layer(pixels, training=True)
        return pixels

    return augment


# --- the validation split, carved from train -------------------------------------------

FIT, VALIDATION = "fit", "validation"


@dataclass(frozen=True)
class Holdout:
    """The validation split carved from the train split: `used` when both parts hold
    every training class (else training keeps every image and `note` says why)."""

    fraction: float
    used: bool
    fit_count: int
    validation_count: int
    note: str


def _in_validation(pixels, fraction: float):
    """Which images of a uint8 batch belong to the validation part: a fingerprint of
    each image's pixels (the same on every platform, and for the materialized and the
    raw path), so an image and its exact copies fall on the same side in every run. Not
    ingest's eval hash of the id (that would correlate with the eval split)."""
    import tensorflow as tf

    digest = tf.cast(tf.fingerprint(pixels)[:, :4], tf.int64)
    value = digest[:, 0] + digest[:, 1] * 256 + digest[:, 2] * 65536 + digest[:, 3] * 16777216
    return tf.cast(value, tf.float64) < fraction * 2.0 ** 32


def _carved(parse, fraction: float, validation: bool):
    import tensorflow as tf

    def parse_part(raw):
        parsed = parse(raw)
        chosen = _in_validation(parsed[0], fraction)
        chosen = chosen if validation else tf.logical_not(chosen)
        return tuple(tf.boolean_mask(t, chosen) for t in parsed)

    return parse_part


def holdout(graph: artifacts.Artifact, examples: artifacts.Artifact, fraction: float,
            min_fit: int = 1) -> Holdout:
    """Counts both parts of the train split (one read of its records) and decides
    whether the validation part is used: not when `fraction` is 0, the part is empty,
    a training class would be missing from either part, or fewer than `min_fit` images
    (one full batch) would be left to fit on."""
    import numpy as np
    import tensorflow as tf

    files, parse = _record_parser(graph, examples, "train")
    vocabulary = graph.properties["label_vocabulary"]
    classes = len(vocabulary)
    held = np.zeros(classes, np.int64)
    kept = np.zeros(classes, np.int64)
    if files and fraction > 0:
        ds = tf.data.TFRecordDataset([fileio.tf_path(f) for f in files],
                                     compression_type="GZIP").batch(1024)

        def sides(raw):
            parsed = parse(raw)
            return _in_validation(parsed[0], fraction), parsed[1]

        for chosen, label in ds.map(sides).as_numpy_iterator():
            held += np.bincount(label[chosen], minlength=classes)[:classes]
            kept += np.bincount(label[~chosen], minlength=classes)[:classes]
    total = int(held.sum() + kept.sum())
    present = (held + kept) > 0
    where = f"data.validation_fraction {fraction:g} of {total} training images"
    fallback = ("; training fits on every training image, early stopping watches the "
                "training loss, and nothing is selected on the eval split")
    if fraction == 0:
        total = graph.properties["counts"].get("train", 0)
        return Holdout(0.0, False, total, 0, "no validation split (data.validation_fraction "
                       "0)" + fallback)
    missing = [vocabulary[i] for i in np.flatnonzero(present & (held == 0))]
    lost = [vocabulary[i] for i in np.flatnonzero(present & (kept == 0))]
    why = ("no image" if held.sum() == 0 else
           f"no image of {', '.join(map(repr, missing[:5]))}" if missing else
           f"no image of {', '.join(map(repr, lost[:5]))} to fit on" if lost else
           f"{int(kept.sum())} images to fit on, under one batch of {min_fit}"
           if kept.sum() < min_fit else None)
    if why:
        return Holdout(fraction, False, total, 0,
                       f"no validation split: {where} would hold out {why}" + fallback)
    return Holdout(fraction, True, int(kept.sum()), int(held.sum()),
                   f"validation split: {int(held.sum())} of {total} training images "
                   f"(data.validation_fraction {fraction:g}, by a hash of the pixels); "
                   "val_ metrics and early stopping score on it, not on the eval split")


def _examples(files: list[str], parse, count: int, fits: bool, training: bool,
              cfg: TrainConfig):
    """Parsed examples, one at a time: read in parallel, cached in memory when they fit
    `train.cache_memory_mb`, shuffled (seeded) for training."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices([fileio.tf_path(f) for f in files])
    # Several workers each take every n-th example: sharding by file would leave a
    # worker without data when there are fewer files than workers.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                       cycle_length=min(len(files), 4), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    if fits:
        ds = ds.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch().cache()
        if training:
            ds = ds.shuffle(min(count, 100_000) or 1, seed=cfg.seed, reshuffle_each_iteration=True)
        return ds
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed)
    return ds.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _padded_batches(ds, batch_size: int, shape: list[int], num_classes: int, sparse: bool):
    """(image, label, weight) full batches: a replica with an empty shard fails the
    cross-replica sum, and TPUs need static shapes, so the last batch is completed with
    weight-0 examples (batch_size - 1 of them always suffice; the unused ones are
    dropped, whatever the split's size)."""
    import tensorflow as tf

    blank = (tf.zeros(shape, tf.float32),
             tf.zeros([], tf.int64) if sparse else tf.zeros([num_classes], tf.float32),
             tf.zeros([]))
    weighted = ds.map(lambda image, label: (image, label, tf.ones([])))
    pad = tf.data.Dataset.from_tensors(blank).repeat(batch_size - 1)
    return weighted.concatenate(pad).batch(batch_size, drop_remainder=True).prefetch(
        tf.data.AUTOTUNE)
