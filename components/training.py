"""The trainer's machinery, shared by every step that fits a model (train, and a
tuning step's trials): the tf.distribute strategy, the tf.data input pipeline over
the transformed examples, the optimizer, and the export with the transform inside.
"""

from __future__ import annotations

import json
import math
import os

from components import artifacts, features, fileio
from components.config import TrainConfig
from components.errors import TrainingError


def choose_strategy(name: str):
    """(strategy, reason). `auto`: TPU if a cluster resolves, Mirrored on several GPUs,
    MultiWorkerMirrored when TF_CONFIG names several workers, else the default."""
    import tensorflow as tf

    if name in ("tpu", "auto"):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver), f"TPU cluster {resolver.master()}"
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            if name == "tpu":
                raise TrainingError(f"train.strategy is tpu but no TPU resolves ({exc}); run "
                                    "on a TPU VM / Colab TPU or use strategy: auto.") from exc
    workers = len(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get(
        "worker", []))
    if name == "multi_worker" or (name == "auto" and workers > 1):
        return tf.distribute.MultiWorkerMirroredStrategy(), f"TF_CONFIG names {workers} workers"
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices), f"mirrored over {len(devices)} devices"
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"{len(gpus)} GPUs"
    where = "1 GPU" if gpus else "CPU"
    return tf.distribute.get_strategy(), f"default strategy on {where}"


# --- input pipeline ----------------------------------------------------------------


def make_dataset(graph: artifacts.Artifact, examples: artifacts.Artifact, split: str,
                 batch_size: int, cfg: TrainConfig, training: bool, sparse: bool,
                 replicas: int = 1):
    """(image, label) batches from the transformed TFRecords, or from the raw ones
    through the transform layer when the examples were not materialized."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(graph.uri)
    label_key = features.LABEL_ID if sparse else features.LABEL_ONEHOT
    if graph.properties.get("materialized", True):
        files = fileio.glob(graph.path("examples", split, "*.tfrecord.gz"))
        spec = output.transformed_feature_spec()
        spec = {features.TRANSFORMED_IMAGE: spec[features.TRANSFORMED_IMAGE],
                label_key: spec[label_key]}
        to_pair = lambda batch: (batch[features.TRANSFORMED_IMAGE], batch[label_key])  # noqa
        parse = lambda raw: to_pair(tf.io.parse_example(raw, spec))  # noqa: E731
    else:
        files = fileio.glob(examples.path(split, "*.tfrecord.gz"))
        layer = output.transform_features_layer()
        raw_spec = features.raw_feature_spec()

        def parse(raw):
            out = layer(tf.io.parse_example(raw, raw_spec))
            keep = out[features.LABEL_ID] >= 0
            return (tf.boolean_mask(out[features.TRANSFORMED_IMAGE], keep),
                    tf.boolean_mask(out[label_key], keep))
    if not files:
        raise TrainingError(f"no {split} examples under {graph.uri}; rerun the transform step.")
    count = graph.properties["counts"].get(split, 0)
    image_bytes = 4 * math.prod(graph.properties["image_shape"])
    fits = count * image_bytes <= cfg.cache_memory_mb * 2 ** 20
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                       cycle_length=min(len(files), 4), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    if fits and graph.properties.get("materialized", True):
        ds = ds.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch().cache()
        if training:
            ds = ds.shuffle(min(count, 100_000) or 1, seed=cfg.seed, reshuffle_each_iteration=True)
    else:
        if training:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed)
        ds = ds.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    # Static shapes for TPUs and steps_per_execution: every training batch is full; with
    # several replicas eval batches are full too (a replica with an empty shard fails
    # the cross-replica sum). The evaluate step scores every eval example anyway.
    full = training or replicas > 1
    return ds.batch(batch_size, drop_remainder=full).prefetch(tf.data.AUTOTUNE)


# --- export ------------------------------------------------------------------------


def export(model, graph: artifacts.Artifact, path: str) -> None:
    """SavedModel with `serving_default` (serialized raw tf.Example), `serving_images`
    (encoded JPEG/PNG bytes) and `transform_features` (raw examples -> features)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(graph.uri)
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
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.serve_examples, "serving_images": module.serve_images,
        "transform_features": module.transform_features})


def optimizer(cfg: TrainConfig, learning_rate: float | None = None):
    import keras

    opt = cfg.optimizer
    rate = learning_rate or opt.learning_rate
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
                os.makedirs(os.path.dirname(path), exist_ok=True)
                line = json.dumps({"epoch": int(epoch), "phase": phase,
                                   **{k: float(v) for k, v in (logs or {}).items()}})
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())

        return _EpochLog()


def read_epoch_log(path: str) -> dict[str, list[float]]:
    """{metric: [value per epoch]} from an EpochLog file; an epoch logged twice (its
    checkpoint was not written before a kill, so it ran again) counts once, the later."""
    if not os.path.isfile(path):
        return {}
    epochs: dict[int, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
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
