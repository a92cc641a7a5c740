"""The trainer's machinery, shared by every step that fits a model (train, and a
tuning step's trials): the tf.data input pipeline over the transformed examples, the
optimizer, and the export with the transform inside (the tf.distribute strategy:
components.trainer.distribute).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from components import artifacts, features, runtime
from components.io import fileio
from components.config.train import AUGMENT_LAYERS, CACHE_BYTES_PER_EXAMPLE, TrainConfig
from components.trainer.distribute import is_chief, is_tpu
from components.errors import TrainingError

# The per-epoch log a training attempt keeps in its work folder (resumed after a kill).
EPOCH_LOG = "epochs.jsonl"


# --- how a strategy trains -----


@dataclass(frozen=True)
class Plan:
    """How this strategy trains: precision policy, batches per call, static shapes."""

    policy: str
    steps_per_execution: int
    static: bool          # full batches everywhere (TPU, several replicas)
    notes: str


def plan_for(train: TrainConfig, strategy) -> Plan:
    """The defaults under `auto` on a TPU (bfloat16, 32 steps per call, static shapes),
    float32 and one step per call elsewhere; explicit config values win."""
    tpu = is_tpu(strategy)
    policy = train.mixed_precision
    if policy == "auto":
        policy = "mixed_bfloat16" if tpu else "float32"
    elif policy == "none":
        policy = "float32"
    # Several batches per tf.function call: the per-call Python overhead dominated small
    # models (Fashion-MNIST's dense net trained 2.6x faster at 8 than at 1, same batches).
    # Not under MirroredStrategy: Keras 3.15's multi-step loop fails there ("You must
    # feed a value for placeholder tensor ... while/cond/Placeholder").
    replicas = strategy.num_replicas_in_sync
    steps = train.steps_per_execution or (32 if tpu else 8 if replicas == 1 else 1)
    static = tpu or strategy.num_replicas_in_sync > 1
    notes = (f"precision {policy}, {steps} step(s) per execution"
             + (", static batch shapes (eval padded with weight-0 examples)" if static else ""))
    return Plan(policy, steps, static, notes)


def compile_model(net, train: TrainConfig, plan: Plan, loss: str,
                  rate: float | None = None, steps_per_epoch: int | None = None,
                  epochs: int | None = None) -> None:
    """Compiles with the config's optimizer (at `rate` when given: a constant rate, as a
    fine-tuning phase has; else `train.optimizer.schedule` over `epochs` of
    `steps_per_epoch`) and metrics, and `train.label_smoothing` on the categorical loss.
    Padded eval batches carry weights: metrics must use them."""
    import keras

    metric_args = ({"weighted_metrics": list(train.metrics)} if plan.static
                   else {"metrics": list(train.metrics)})
    if train.label_smoothing and loss == "categorical_crossentropy":
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing)
    schedule = None if rate is not None else \
        learning_rate_schedule(train, steps_per_epoch, epochs or train.epochs)
    net.compile(optimizer=optimizer(train, rate if schedule is None else schedule), loss=loss,
                steps_per_execution=plan.steps_per_execution, **metric_args)


def learning_rate_schedule(train: TrainConfig, steps_per_epoch: int | None, epochs: int):
    """The Keras schedule `train.optimizer.schedule` names, over `epochs` of
    `steps_per_epoch` optimizer steps; None for a constant rate (or when the steps are
    not known: a caller that cannot count them trains at the constant rate)."""
    import keras

    opt = train.optimizer
    if opt.schedule == "constant" or not steps_per_epoch:
        return None
    total = max(1, steps_per_epoch * epochs)
    rate = opt.learning_rate
    schedules = keras.optimizers.schedules
    if opt.schedule == "exponential":
        return schedules.ExponentialDecay(rate, decay_steps=steps_per_epoch,
                                          decay_rate=opt.decay_rate)
    if opt.schedule == "one_cycle":
        warmup = int(opt.warmup_epochs * steps_per_epoch) if opt.warmup_epochs \
            else int(0.3 * total)
        start = rate / 25
    else:                                    # cosine
        warmup, start = int(opt.warmup_epochs * steps_per_epoch), 0.0
    warmup = min(warmup, total - 1)
    if not warmup:
        return schedules.CosineDecay(rate, decay_steps=total)
    return schedules.CosineDecay(start, decay_steps=total - warmup, warmup_target=rate,
                                 warmup_steps=warmup)



# --- input pipeline ----------------------------------------------------------------


def cache_bytes(count: int, shape: list[int]) -> int:
    """What caching `count` decoded examples of `shape` costs in memory."""
    return count * (math.prod(shape) + CACHE_BYTES_PER_EXAMPLE)


def make_dataset(graph: artifacts.Artifact, examples: artifacts.Artifact, split: str,
                 batch_size: int, cfg: TrainConfig, training: bool, sparse: bool,
                 static: bool = False, holdout: "Holdout | None" = None,
                 part: str | None = None):
    """(image, label) batches from the transformed TFRecords, or from the raw ones
    through the transform layer when the examples were not materialized. `static`
    (TPUs, several replicas): every batch is full; eval batches are then padded with
    examples of weight 0 ((image, label, weight) batches), so a small eval split under
    many replicas still gives whole batches and exact weighted metrics.
    `holdout` and `part` (FIT or VALIDATION): that part of the train split (a used
    holdout; see `holdout`). `training`: shuffled, full batches, and `train.augment`
    applied (on pixels 0-255, before the normalization; never on other batches)."""
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
    augment = _augmenter(augmentation(cfg.augment, shape[-1])[0], cfg.seed) if training \
        else None

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


def augmentation(augment, channels: int) -> tuple[list[tuple[str, Any]], str]:
    """([(layer, factor)], what the summary says) for `train.augment` on images of
    `channels`: auto is off for 1-channel data (glyphs and digits, where a mirrored or
    turned glyph is another class or none) and AUGMENT_AUTO's layers for 3 channels."""
    if augment == "off":
        return [], "augmentation: off (train.augment: off)"
    if augment == "auto":
        if channels == 1:
            return [], ("augmentation: off (train.augment auto, 1-channel data: glyphs and "
                        "digits are not flipped or turned)")
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


# --- export ------------------------------------------------------------------------


def export(model, graph: artifacts.Artifact, path: str) -> None:
    """SavedModel with `serving_default` (serialized raw tf.Example), `serving_images`
    (encoded JPEG/PNG bytes) and `transform_features` (raw examples -> features)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(fileio.tf_path(graph.uri))
    vocabulary = graph.properties["label_vocabulary"]

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.tft_layer = output.transform_features_layer()
            self.class_names = tf.constant(vocabulary)

        def _predict(self, raw_features):
            transformed = self.tft_layer(raw_features)
            probabilities = self.model(transformed[features.TRANSFORMED_IMAGE], training=False)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return {"probabilities": probabilities, "class_id": class_id,
                    "class_name": tf.gather(self.class_names, class_id)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, examples):
            spec = {features.IMAGE: features.raw_feature_spec()[features.IMAGE]}
            return self._predict(tf.io.parse_example(examples, spec))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve_images(self, images):
            return self._predict({features.IMAGE: images})

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def transform_features(self, examples):
            raw = tf.io.parse_example(examples, features.raw_feature_spec())
            return self.tft_layer(raw)

    module = Serving()
    tf.saved_model.save(module, fileio.tf_path(path), signatures={
        features.EXAMPLES_SIGNATURE: module.serve_examples,
        features.IMAGES_SIGNATURE: module.serve_images,
        "transform_features": module.transform_features})


def describe_schedule(train: TrainConfig) -> list[str]:
    """A summary line for a schedule or label smoothing other than the defaults."""
    opt, parts = train.optimizer, []
    if opt.schedule != "constant":
        warm = f", warmup {opt.warmup_epochs:g} epoch(s)" if opt.warmup_epochs else ""
        every = f" x{opt.decay_rate:g} per epoch" if opt.schedule == "exponential" else ""
        parts.append(f"learning rate: {opt.schedule} from {opt.learning_rate:g}{every}{warm}")
    if train.label_smoothing:
        parts.append(f"label smoothing {train.label_smoothing:g}")
    return ["; ".join(parts)] if parts else []


def optimizer(cfg: TrainConfig, learning_rate: Any = None):
    """The configured optimizer at `learning_rate` (a number or a Keras schedule;
    default train.optimizer.learning_rate)."""
    import keras

    opt = cfg.optimizer
    rate = opt.learning_rate if learning_rate is None else learning_rate
    if opt.name == "adam":
        return keras.optimizers.Adam(rate, beta_1=opt.beta_1, beta_2=opt.beta_2)
    if opt.name == "sgd":
        return keras.optimizers.SGD(rate, momentum=opt.momentum)
    return keras.optimizers.RMSprop(rate, momentum=opt.momentum)


class EpochLog:
    """A Keras callback that appends each finished epoch's metrics to a JSON-lines file
    (synced), so the history of a run killed and resumed by BackupAndRestore is whole.
    Built on first use so importing this module does not import Keras."""

    def __new__(cls, path: str, phase: int = 1):
        import keras

        class _EpochLog(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                line = json.dumps({"epoch": int(epoch), "phase": phase,
                                   **{k: float(v) for k, v in (logs or {}).items()}})
                fileio.append_text(path, line + "\n")   # a local or gs:// scratch folder

        return _EpochLog()


def format_duration(seconds: float) -> str:
    """A time left as a person reads it: 42s, 12m 5s, 3h 4m, 3d 4h; above 99 days
    (an epoch count no run finishes) only >99d."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60}s"
    if total < 86400:
        return f"{total // 3600}h {total % 3600 // 60}m"
    if total < 100 * 86400:
        return f"{total // 86400}d {total % 86400 // 3600}h"
    return ">99d"


class Progress:
    """A Keras callback that reports training as it goes: one line per epoch (metrics,
    seconds, ETA) on a pipe or log file; on a terminal also a live line of batches
    within the epoch. `total`: the last epoch number (Keras counts epochs across a
    resume and a fine-tuning phase, so the numbers run on)."""

    def __new__(cls, total: int, stream=None):
        import sys
        import time

        import keras

        out = stream or sys.stdout
        live = hasattr(out, "isatty") and out.isatty()
        pad = runtime.DETAIL_INDENT      # under the runner's step line

        class _Progress(keras.callbacks.Callback):
            done, spent = 0, 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch
                self.started = self.shown = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                if live and now - self.shown > 0.2:
                    self.shown = now
                    steps = self.params.get("steps")
                    loss = (logs or {}).get("loss")
                    out.write(f"\r{pad}epoch {self.epoch + 1}/{total}  batch {batch + 1}"
                              + (f"/{steps}" if steps else "")
                              + (f"  loss {float(loss):.4f}" if loss is not None else "")
                              + "\033[K")
                    out.flush()

            def on_epoch_end(self, epoch, logs=None):
                seconds = time.perf_counter() - self.started
                self.done += 1
                self.spent += seconds
                left = total - (epoch + 1)
                metrics = "  ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items()
                                    if k != "learning_rate")
                eta = (f"  ETA {format_duration(left * self.spent / self.done)}"
                       if left > 0 else "")
                out.write(("\r" if live else "") + f"{pad}epoch {epoch + 1}/{total}  "
                          f"{metrics}  {seconds:.1f}s{eta}" + ("\033[K" if live else "") + "\n")
                out.flush()

        return _Progress()


def read_epoch_log(path: str) -> dict[str, list[float]]:
    """{metric: [value per epoch]} from an EpochLog file; an epoch logged twice (its
    checkpoint was not written before a kill, so it ran again) counts once, the later."""
    try:
        text = fileio.read_text(path)      # a local or gs:// scratch folder
    except OSError:                        # no epoch finished yet
        return {}
    epochs: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        if line.strip():
            try:
                entry = json.loads(line)
            except ValueError:
                continue   # a line torn by a kill
            epochs[entry.pop("epoch")] = entry
    history: dict[str, list[float]] = {}
    for epoch in sorted(epochs):
        for key, value in epochs[epoch].items():
            history.setdefault(key, []).append(float(value))
    return history


# --- training under MultiWorkerMirroredStrategy ----------------------------------------


def evaluate_multi_worker(net, ds, strategy, sparse: bool) -> dict[str, float]:
    """{loss, accuracy} of `net` over (weighted, padded) batches under
    MultiWorkerMirroredStrategy, where Keras' evaluate does not run either. Every worker
    calls it (collective)."""
    import keras
    import tensorflow as tf

    with strategy.scope():
        losses = (keras.losses.SparseCategoricalCrossentropy if sparse
                  else keras.losses.CategoricalCrossentropy)(reduction=None)

    step = _weighted_sums_step(net, strategy, losses, sparse)
    sums = [0.0, 0.0, 0.0]
    for batch in strategy.experimental_distribute_dataset(ds):
        sums = [s + float(v) for s, v in zip(sums, step(batch))]
    return {"loss": sums[0] / max(sums[2], 1.0), "accuracy": sums[1] / max(sums[2], 1.0)}


def _weighted_sums_step(net, strategy, losses, sparse: bool):
    """A distributed step over (images, labels, weights) batches: the summed weighted
    loss, the weighted count of correct predictions, and the summed weights."""
    import tensorflow as tf

    @tf.function
    def step(batch):
        def replica(images, labels, weights):
            probs = net(images, training=False)
            correct = tf.cast(tf.equal(tf.argmax(probs, -1), labels if sparse else
                                       tf.argmax(labels, -1)), tf.float32)
            return (tf.reduce_sum(losses(labels, probs) * weights),
                    tf.reduce_sum(correct * weights), tf.reduce_sum(weights))
        parts = strategy.run(replica, args=batch)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, p, axis=None) for p in parts]

    return step


def fit_multi_worker(net, optimizer_, train_ds, eval_ds, strategy, sparse: bool,
                     global_batch: int, first_epoch: int, epochs: int, work: str,
                     phase: int) -> None:
    """Keras 3's `fit` does not run under MultiWorkerMirroredStrategy (keras-team/keras
    issue 20585); this loop does what the trainer needs of it: per-epoch loss and
    accuracy on train and (weighted, padded) validation batches (`eval_ds`: the
    validation part of the train split, or None) appended to the epoch log,
    and a checkpoint per epoch in `work` that a restarted attempt resumes from. Every
    worker runs it (the collective ops need all); only the chief's files are kept."""
    import keras
    import tensorflow as tf

    chief = is_chief(strategy)
    with strategy.scope():
        losses = (keras.losses.SparseCategoricalCrossentropy if sparse
                  else keras.losses.CategoricalCrossentropy)(reduction=None)
        accuracy = (keras.metrics.SparseCategoricalAccuracy if sparse
                    else keras.metrics.CategoricalAccuracy)()
        epoch_done = tf.Variable(first_epoch, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=net, optimizer=optimizer_, epoch=epoch_done)
    folder = os.path.join(work, f"loop-phase{phase}") if chief else os.path.join(
        work, f"loop-phase{phase}-worker{strategy.cluster_resolver.task_id}")
    manager = tf.train.CheckpointManager(checkpoint, folder, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)

    @tf.function
    def train_step(batch):
        def replica(images, labels):
            with tf.GradientTape() as tape:
                probs = net(images, training=True)
                loss = tf.reduce_sum(losses(labels, probs)) / global_batch
            grads = tape.gradient(loss, net.trainable_variables)
            optimizer_.apply_gradients(zip(grads, net.trainable_variables))
            accuracy.update_state(labels, probs)
            return loss
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica, args=batch),
                               axis=None)

    eval_step = _weighted_sums_step(net, strategy, losses, sparse)

    train_dist = strategy.experimental_distribute_dataset(train_ds)
    eval_dist = None if eval_ds is None else strategy.experimental_distribute_dataset(eval_ds)
    log = EpochLog(os.path.join(work, EPOCH_LOG), phase=phase) if chief else None
    for epoch in range(int(epoch_done.numpy()), epochs):
        accuracy.reset_state()
        total, steps = 0.0, 0
        for batch in train_dist:
            total += float(train_step(batch))
            steps += 1
        logs = {"loss": total / max(steps, 1), "accuracy": float(accuracy.result())}
        if eval_dist is not None:
            sums = [0.0, 0.0, 0.0]
            for batch in eval_dist:
                sums = [s + float(v) for s, v in zip(sums, eval_step(batch))]
            logs.update({"val_loss": sums[0] / max(sums[2], 1.0),
                         "val_accuracy": sums[1] / max(sums[2], 1.0)})
        epoch_done.assign(epoch + 1)
        manager.save()          # every worker saves (collective); the chief's is kept
        if log is not None:
            log.on_epoch_end(epoch, logs)
