"""Train: a Keras model on the transformed examples, exported with the transform inside.

The trainer owns the tf.distribute strategy (TPU, Mirrored, MultiWorkerMirrored or
the default, chosen by `train.strategy`), the tf.data input pipeline (parallel reads
and parsing, an in-memory cache when the data fits `train.cache_memory_mb`, seeded
shuffle, static batch shapes, prefetch), per-epoch checkpoints with
`BackupAndRestore` (a killed run resumes from its last epoch when the step reruns),
and the export: a SavedModel whose signatures take raw examples or raw image bytes.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from components import artifacts, fileio, models
from components.config import ModelConfig, TrainConfig
from components.contract import step
from components.errors import ConfigError, TrainingError
from components.training import choose_strategy, export, make_dataset, optimizer

log = logging.getLogger("imgpipe.train")


def external_inputs(model: ModelConfig, train: TrainConfig) -> dict[str, str]:
    """Starting weights are an input the DAG does not produce: their content is in the
    cache key (a retrained base model reruns this step)."""
    if not model.weights or model.weights == "imagenet":
        return {}
    if not fileio.exists(model.weights):
        raise ConfigError(f"model.weights file {model.weights} does not exist.")
    return {"weights": fileio.hash_file(model.weights)}


# --- the step ----------------------------------------------------------------------


@step(name="train",
      # The raw examples are read when the transform was not materialized.
      inputs={"transform_graph": artifacts.TransformGraph, "examples": artifacts.Examples},
      outputs={"trained_model": artifacts.Model}, config=("model", "train"), scratch=True,
      external=external_inputs)
def run(transform_graph: artifacts.Artifact, examples: artifacts.Artifact, model: ModelConfig,
        train: TrainConfig, trained_model: str, scratch: str | None = None,
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
    train_ds = make_dataset(transform_graph, examples, "train", global_batch, train, True, sparse,
                            replicas)
    eval_ds = make_dataset(transform_graph, examples, "eval", global_batch, train, False, sparse,
                           replicas)
    shape = tuple(transform_graph.properties["image_shape"])
    num_classes = transform_graph.properties["num_classes"]
    with strategy.scope():
        net = models.build(model, shape, num_classes)
        net.compile(optimizer=optimizer(train), loss=loss, metrics=list(train.metrics),
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
                net.compile(optimizer=optimizer(train, model.fine_tune_learning_rate),
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
