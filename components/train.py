"""Train: a Keras model on the transformed examples, exported with the transform inside.

The trainer owns the tf.distribute strategy (TPU, Mirrored, MultiWorkerMirrored or
the default, chosen by `train.strategy`), the tf.data input pipeline (parallel reads
and parsing, an in-memory cache when the data fits `train.cache_memory_mb`, seeded
shuffle, static batch shapes, prefetch), per-epoch checkpoints with
`BackupAndRestore` (a killed run resumes from its last epoch when the step reruns),
and the export: a SavedModel whose signatures take raw examples or raw image bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any

from components import artifacts, features, fileio, models
from components.config import ModelConfig, TrainConfig
from components.errors import ConfigError, TrainingError

log = logging.getLogger("imgpipe.train")


def external_inputs(model: ModelConfig, train: TrainConfig) -> dict[str, str]:
    """Starting weights are an input the DAG does not produce: their content is in the
    cache key (a retrained base model reruns this step)."""
    if not model.weights or model.weights == "imagenet":
        return {}
    if not fileio.exists(model.weights):
        raise ConfigError(f"model.weights file {model.weights} does not exist.")
    with fileio.open_file(model.weights, "rb") as handle:
        return {"weights": hashlib.sha256(handle.read()).hexdigest()}


# --- distribution ------------------------------------------------------------------


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


def make_dataset(graph: artifacts.Artifact, split: str, batch_size: int, cfg: TrainConfig,
                 training: bool, sparse: bool, replicas: int = 1):
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
        files = fileio.glob(fileio.join(graph.properties["examples"], split, "*.tfrecord.gz"))
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


# --- the step ----------------------------------------------------------------------


def _optimizer(cfg: TrainConfig, learning_rate: float | None = None):
    import keras

    opt = cfg.optimizer
    rate = learning_rate or opt.learning_rate
    if opt.name == "adam":
        return keras.optimizers.Adam(rate, beta_1=opt.beta_1, beta_2=opt.beta_2)
    if opt.name == "sgd":
        return keras.optimizers.SGD(rate, momentum=opt.momentum)
    return keras.optimizers.RMSprop(rate, momentum=opt.momentum)


def run(transform_graph: artifacts.Artifact, model: ModelConfig, train: TrainConfig,
        trained_model: str, scratch: str | None = None,
        producer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains `model.kind` and writes a Model artifact (SavedModel, history, logs)."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(train.seed)
    strategy, reason = choose_strategy(train.strategy)
    log.info("strategy: %s (%s)", type(strategy).__name__, reason)
    if train.mixed_precision != "none":
        policy = train.mixed_precision
        if policy == "auto":
            policy = ("mixed_bfloat16" if "TPU" in type(strategy).__name__ else
                      "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32")
        keras.mixed_precision.set_global_policy(policy)
    sparse = train.loss == "sparse_categorical_crossentropy"
    loss = "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy"
    global_batch = train.batch_size * strategy.num_replicas_in_sync
    replicas = strategy.num_replicas_in_sync
    train_ds = make_dataset(transform_graph, "train", global_batch, train, True, sparse, replicas)
    eval_ds = make_dataset(transform_graph, "eval", global_batch, train, False, sparse, replicas)
    shape = tuple(transform_graph.properties["image_shape"])
    num_classes = transform_graph.properties["num_classes"]
    with strategy.scope():
        net = models.build(model, shape, num_classes)
        net.compile(optimizer=_optimizer(train), loss=loss, metrics=list(train.metrics),
                    steps_per_execution=train.steps_per_execution)

    with artifacts.writing(trained_model, artifacts.Model, producer) as writer:
        backup = scratch or writer.file("backup")
        # Two checkpoints: a process killed while writing the latest one resumes from
        # the one before instead of failing on a half-written file.
        callbacks = [keras.callbacks.BackupAndRestore(backup_dir=backup, double_checkpoint=True),
                     keras.callbacks.TerminateOnNaN(),
                     keras.callbacks.TensorBoard(log_dir=writer.file("logs"))]
        if train.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=train.early_stopping_patience,
                restore_best_weights=True))
        history = net.fit(train_ds, validation_data=eval_ds, epochs=train.epochs,
                          callbacks=callbacks, verbose=0)
        hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        if model.kind == "transfer" and model.fine_tune_layers and model.fine_tune_epochs:
            # Second phase: the top of the base learns at a lower rate (recompiling
            # resets the optimizer, as the course does).
            with strategy.scope():
                unfrozen = models.unfreeze_top(net, model.fine_tune_layers)
                net.compile(optimizer=_optimizer(train, model.fine_tune_learning_rate),
                            loss=loss, metrics=list(train.metrics),
                            steps_per_execution=train.steps_per_execution)
            log.info("fine-tuning the top %d base layers (%d more trainable weights)",
                     model.fine_tune_layers, unfrozen)
            done = len(hist.get("loss", []))
            callbacks[0] = keras.callbacks.BackupAndRestore(
                backup_dir=os.path.join(backup, "fine_tune"), double_checkpoint=True)
            tuned = net.fit(train_ds, validation_data=eval_ds, initial_epoch=done,
                            epochs=done + model.fine_tune_epochs, callbacks=callbacks,
                            verbose=0)
            for k, vals in tuned.history.items():
                hist.setdefault(k, []).extend(float(v) for v in vals)
            hist["phase"] = [1.0] * done + [2.0] * (len(hist["loss"]) - done)
        losses = hist.get("loss", [])
        if any(not np.isfinite(v) for v in losses):
            raise TrainingError(
                f"training diverged: loss became NaN/inf at epoch {len(losses)}; lower "
                "train.optimizer.learning_rate or check the input normalization.")
        export(net, transform_graph, writer.file("saved_model"))
        if not fileio.exists(writer.file("saved_model", "saved_model.pb")):
            raise TrainingError(f"the trainer wrote no SavedModel under {writer.path}.")
        # The Keras model too: a later run can start from it (model.weights: run:ID).
        net.save(writer.file("model.keras"))
        fileio.write_text(writer.file("history.json"), json.dumps(hist, indent=2))
        final = {k: vals[-1] for k, vals in hist.items() if vals and k != "phase"}
        writer.properties = {"kind": model.kind, "trainable_params": models.trainable_params(net),
                             "strategy": type(strategy).__name__, "strategy_reason": reason,
                             "epochs": len(losses), "final": final,
                             "label_vocabulary": transform_graph.properties["label_vocabulary"],
                             "image_shape": list(shape)}
        writer.commit()
    if scratch:
        fileio.rmtree(scratch)  # the backup served its purpose once the model is committed
    accuracy = final.get("val_accuracy")
    return {"final": final, "lines": [
        f"{model.kind}: {models.trainable_params(net):,} trainable params, {len(losses)} epochs, "
        f"{type(strategy).__name__} ({reason})",
        f"train accuracy {final.get('accuracy', float('nan')):.3f}, eval accuracy "
        f"{accuracy if accuracy is not None else float('nan'):.3f}"]}
