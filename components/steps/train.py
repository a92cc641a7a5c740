"""Train: a Keras model on the transformed examples, exported with the transform inside.

The trainer owns the tf.distribute strategy (TPU, Mirrored, MultiWorkerMirrored or
the default, chosen by `train.strategy`), the tf.data input pipeline (parallel reads
and parsing, an in-memory cache when the data fits `train.cache_memory_mb`, seeded
shuffle, static batch shapes, prefetch), per-epoch checkpoints with
`BackupAndRestore` (a killed run resumes from its last epoch when the step reruns),
and the export: a SavedModel whose signatures take raw examples or raw image bytes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from components import artifacts, runtime
from components.trainer import distribute, inputs, models, training
from components.io import fileio
from components.config.data import DataConfig
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from components.config.tune import apply_values, describe_values
from components.contract import (In, Out, Scratch, StartWeights, WarmStart, WarmStartModel,
                                 Where, step)
from components.errors import ConfigError, TrainingError
from components.trainer.distribute import choose_strategy
from components.trainer.export import export
from components.trainer.inputs import make_dataset
from components.trainer.training import Plan, compile_model

log = logging.getLogger("imgpipe.train")


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


# --- the step ----------------------------------------------------------------------


@dataclass
class Fitting:
    """What fitting needs besides the config: the compiled model, the input pipelines
    (`train_ds` the fit part of the train split, `val_ds` its validation part or None,
    `eval_ds` the eval split, scored once after fitting and never selected on), the
    strategy (and why it was chosen) and how it trains. `kept_epoch`: the epoch whose
    weights the model keeps (1-based), set by the fit."""

    net: Any
    train_ds: Any
    eval_ds: Any
    strategy: Any
    reason: str
    plan: Plan
    loss: str
    val_ds: Any = None
    holdout: inputs.Holdout | None = None
    augmentation: str = ""
    kept_epoch: int | None = None


def _fit_multi_worker(fitting: Fitting, model: ModelConfig, train: TrainConfig,
                      work: str) -> dict[str, list[float]]:
    """The same phases through the multi-worker loop (no TensorBoard or early stopping
    there: their callbacks need Keras' fit)."""
    net, strategy = fitting.net, fitting.strategy
    sparse = fitting.loss.startswith("sparse")
    batch = train.batch_size * strategy.num_replicas_in_sync
    training.fit_multi_worker(net, net.optimizer, fitting.train_ds, fitting.val_ds, strategy,
                              sparse, batch, 0, train.epochs, work, phase=1)
    if model.kind == "transfer" and model.fine_tune_layers and model.fine_tune_epochs:
        with strategy.scope():
            models.unfreeze_top(net, model.fine_tune_layers)
            compile_model(net, train, fitting.plan, fitting.loss, model.fine_tune_learning_rate)
        training.fit_multi_worker(net, net.optimizer, fitting.train_ds, fitting.val_ds,
                                  strategy, sparse, batch, train.epochs,
                                  train.epochs + model.fine_tune_epochs, work, phase=2)
    return training.read_epoch_log(os.path.join(work, training.EPOCH_LOG))


def _fit(fitting: Fitting, model: ModelConfig, train: TrainConfig, work: str,
         logs: str) -> dict[str, list[float]]:
    """Fits one or two phases (transfer fine-tuning) and returns the whole history.
    `work` keeps the checkpoints (BackupAndRestore, which deletes its folder when a
    phase ends) and an epoch log appended as each epoch ends, so a resumed run
    reports the epochs before the restart too."""
    import keras

    epoch_log = os.path.join(work, training.EPOCH_LOG)
    if distribute.is_multi_worker(fitting.strategy):
        return _fit_multi_worker(fitting, model, train, work)
    net = fitting.net
    total = train.epochs + (model.fine_tune_epochs if model.kind == "transfer"
                            and model.fine_tune_layers else 0)
    callbacks = [
        # The epoch is logged before its checkpoint: a kill between the two reruns an
        # epoch that is logged twice (read_epoch_log keeps the later), never one that
        # is checkpointed but missing from the history.
        training.EpochLog(epoch_log, phase=1),
        # Two checkpoints: a process killed while writing the latest one resumes from
        # the one before instead of failing on a half-written file.
        keras.callbacks.BackupAndRestore(backup_dir=os.path.join(work, "backup"),
                                         double_checkpoint=True),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.TensorBoard(log_dir=logs),
        training.Progress(total)]
    stopping = None
    if train.early_stopping_patience:
        # On the validation part of the train split (the training loss without one),
        # never on the eval split evaluate blesses on; the best epoch's weights are kept.
        stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss" if fitting.val_ds is not None else "loss",
            patience=train.early_stopping_patience, restore_best_weights=True)
        callbacks.append(stopping)
    net.fit(fitting.train_ds, validation_data=fitting.val_ds, epochs=train.epochs,
            callbacks=callbacks, verbose=0)
    if model.kind == "transfer" and model.fine_tune_layers and model.fine_tune_epochs:
        # Second phase: the top of the base learns at a lower rate (recompiling resets
        # the optimizer, as the course does).
        with fitting.strategy.scope():
            unfrozen = models.unfreeze_top(net, model.fine_tune_layers)
            compile_model(net, train, fitting.plan, fitting.loss, model.fine_tune_learning_rate)
        log.info("fine-tuning the top %d base layers (%d more trainable weights)",
                 model.fine_tune_layers, unfrozen)
        done = len(training.read_epoch_log(epoch_log).get("loss", []))
        callbacks[1] = keras.callbacks.BackupAndRestore(
            backup_dir=os.path.join(work, "fine_tune"), double_checkpoint=True)
        callbacks[0] = training.EpochLog(epoch_log, phase=2)
        net.fit(fitting.train_ds, validation_data=fitting.val_ds, initial_epoch=done,
                epochs=done + model.fine_tune_epochs, callbacks=callbacks, verbose=0)
    history = training.read_epoch_log(epoch_log)
    # Keras counts epochs across a resume and the fine-tuning phase, as the log does.
    if stopping is not None and stopping.best_weights is not None:
        fitting.kept_epoch = int(stopping.best_epoch) + 1
    return history


def _train_as_worker(fitting: Fitting, model: ModelConfig, train: TrainConfig,
                     transform_graph: artifacts.Artifact) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="imgpipe-worker-") as work:
        _fit(fitting, model, train, work, os.path.join(work, artifacts.Model.LOGS))
        _score_eval(fitting)            # collective, as on the chief
        # Saving under MultiWorkerMirroredStrategy is collective too: every worker saves,
        # only the chief's copy is kept.
        export(fitting.net, transform_graph, os.path.join(work, artifacts.Model.SAVED_MODEL))
    resolver = fitting.strategy.cluster_resolver
    return {"final": {}, "lines": [f"worker {resolver.task_type} {resolver.task_id}: trained "
                                   "with the chief, which writes the model"]}


def check(train: TrainConfig, data: DataConfig, model: ModelConfig, where: Where) -> None:
    """A built-in dataset whose training images do not fill one batch (`check_batch_fits`),
    refused before a run starts rather than after ingest; and a transfer base's ImageNet
    weights, found in Keras' cache or fetched there now on this machine, one line when
    neither can be (the file, where Keras looks, the offline way). A pipeline's
    containers fetch them where they run (the step checks again there)."""
    from components.config.data import AUTO, BUILTIN_PREFIX
    from components.config.data import BUILTIN_TRAIN_IMAGES

    source = data.source
    known = BUILTIN_TRAIN_IMAGES.get(source[len(BUILTIN_PREFIX):]) \
        if source.startswith(BUILTIN_PREFIX) else None
    if known is not None:
        check_batch_fits(train.batch_size, known, what=f"{source}'s {known} training images")
    if model.kind == "transfer" and model.weights == "imagenet" and not where.remote:
        from components.trainer import bases

        size = data.image_size if data.image_size != AUTO else (224, 224)
        bases.imagenet_weights(model.base, (*size, 3), log=log.info)


@step(check=check)
def run(transform_graph: In[artifacts.TransformGraph], examples: In[artifacts.Examples],
        model: ModelConfig, train: TrainConfig, trained_model: Out[artifacts.Model],
        hyperparameters: In[artifacts.HyperParameters] | None = None,
        scratch: Scratch = None, data: DataConfig = None, weights: StartWeights = None,
        warm_start: WarmStartModel = None) -> dict[str, Any]:
    """Trains `model.kind` and writes a Model artifact (SavedModel, history, logs).
    The raw examples are read when the transform was not materialized. The model is
    fitted on the train split less its validation part (`data.validation_fraction`),
    which the epochs' val_ metrics and early stopping score on; the eval split is
    scored once, after fitting (eval_ metrics), and selects nothing.
    The tune step's best values (`hyperparameters`; the DAG always passes it, with no
    values when nothing was searched) are applied to the config first. `scratch`:
    where checkpoints survive a killed attempt (resumed by the next one). The runner
    resolves `weights` (what `model.weights` names: a transfer base's start) and
    `warm_start` (the model `train.warm_start` names, whose weights the model starts
    from); the sections keep the references as configured."""
    import keras

    source = _checked_start(model, train, weights, warm_start)
    model, train, tuned = _with_tuned_values(hyperparameters, model, train)
    keras.utils.set_random_seed(train.seed)
    strategy, reason = choose_strategy(train.strategy)
    plan = training.plan_for(train, strategy)
    log.info("strategy: %s (%s); %s", distribute.strategy_name(strategy), reason, plan.notes)
    keras.mixed_precision.set_global_policy(plan.policy)
    sparse = train.loss == "sparse_categorical_crossentropy"
    loss = "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy"
    global_batch = train.batch_size * strategy.num_replicas_in_sync
    check_batch_fits(global_batch, transform_graph.properties["counts"].get("train", 0),
                     strategy.num_replicas_in_sync)
    held = inputs.holdout(transform_graph, examples, (data or DataConfig()).validation_fraction,
                          min_fit=global_batch)
    train_ds, val_ds = training_datasets(transform_graph, examples, global_batch, train, sparse,
                                         plan.static, held, model.kind)
    eval_ds = make_dataset(transform_graph, examples, "eval", global_batch, train, False, sparse,
                           plan.static)
    shape = tuple(transform_graph.properties["image_shape"])
    num_classes = transform_graph.properties["num_classes"]
    # a transfer base's own preprocessing is built from the normalization constants
    pixels = inputs.normalization(transform_graph, examples) if model.kind == "transfer" \
        else None
    with strategy.scope():
        net = models.build(model, shape, num_classes, weights, pixels)
        if source is not None and source.version is not None:
            # the configured model, then the referenced model's weights layer by layer
            # (not that model itself: the optimizer and compile settings stay this config's)
            models.warm_start(net, source.path, model, shape, num_classes,
                              f"train.warm_start {source.describe()}")
        compile_model(net, train, plan, loss, steps_per_epoch=held.fit_count // global_batch)
    if model.kind == "transfer":
        # the fine-tuning phase as configured or the course's, recorded as it runs
        layers, rounds = models.fine_tuning(model, weights, train.epochs,
                                            len(net.get_layer("base").layers))
        model = model.model_copy(update={"fine_tune_layers": layers,
                                         "fine_tune_epochs": rounds})
    fitting = Fitting(net, train_ds, eval_ds, strategy, reason, plan, loss, val_ds, held,
                      inputs.augmentation(train.augment, shape[-1], model.kind)[1])
    log.info("%s; %s", fitting.augmentation, held.note)

    if not distribute.is_chief(strategy):
        # A non-chief worker of a multi-worker run trains in step with the chief (the
        # collective ops need it) and writes nothing that outlives it.
        trained_model.discard()
        return _train_as_worker(fitting, model, train, transform_graph)
    final, epochs, resumed = _fit_and_write(fitting, model, train, tuned, transform_graph,
                                            trained_model, scratch, source)
    started = []
    if source is not None and source.version is not None:
        started.append(f"warm start from {source.describe()}")
    elif source is not None:
        started.append(f"no warm start: nothing is pushed as {source.ref} yet (the first "
                       "run trains from random initialisation)")
    started += training.describe_schedule(train)
    return {"final": final, "tuned": tuned["best"],
            "warm_start": source.record if source else None,
            "lines": started + _lines(fitting, model, tuned["best"], epochs, resumed, final,
                                      trained_model.uri)}


def training_datasets(graph: artifacts.Artifact, examples: artifacts.Artifact, batch: int,
                      train: TrainConfig, sparse: bool, static: bool,
                      held: inputs.Holdout, kind: str | None = None) -> tuple[Any, Any]:
    """(the batches to fit on, the validation batches or None): the train split's two
    parts when the holdout is used, else the whole train split and no validation.
    `kind`: the model's (train.augment auto decides by it)."""
    if not held.used:
        return make_dataset(graph, examples, "train", batch, train, True, sparse, static,
                            kind=kind), None
    return (make_dataset(graph, examples, "train", batch, train, True, sparse, static,
                         held, inputs.FIT, kind=kind),
            make_dataset(graph, examples, "train", batch, train, False, sparse, static,
                         held, inputs.VALIDATION))


def _score_eval(fitting: Fitting) -> dict[str, float]:
    """{eval_loss, eval_<metric>...} of the kept weights on the eval split: reported,
    never selected on."""
    if distribute.is_multi_worker(fitting.strategy):
        scores = training.evaluate_multi_worker(fitting.net, fitting.eval_ds, fitting.strategy,
                                                fitting.loss.startswith("sparse"))
    else:
        scores = fitting.net.evaluate(fitting.eval_ds, return_dict=True, verbose=0)
    return {f"eval_{k}": float(v) for k, v in scores.items()}


def check_batch_fits(global_batch: int, examples: int, replicas: int = 1,
                     what: str | None = None) -> None:
    """Training batches are full (static shapes), so a batch larger than the training
    split gives no batch at all: no optimizer step, a model of random weights. Refused
    before anything trains (`what`: the examples' name, default the training split)."""
    if examples >= global_batch:
        return
    per_replica = f" x {replicas} replicas = {global_batch}" if replicas > 1 else ""
    raise ConfigError(
        f"train.batch_size {global_batch // replicas}{per_replica} is larger than "
        f"{what or f'the training split ({examples} examples)'}: not one full batch, so no "
        f"optimizer step would run; set train.batch_size to at most "
        f"{max(1, examples // replicas)} (e.g. 32).")


def _checked_start(model: ModelConfig, train: TrainConfig, weights: str | None,
                   warm_start: WarmStart | None) -> WarmStart | None:
    """The warm start, once the start the config asks for is the one given: a reference
    in model.weights or train.warm_start the runner did not resolve is refused (a direct
    call passes what the runner would), and so is a warm start with start weights (the
    warm start copies every layer, a transfer base's too)."""
    unresolved = [f"{key} {value}" for key, value, given in (
        ("model.weights", model.weights, weights), ("train.warm_start", train.warm_start,
                                                     warm_start)) if value and not given]
    if unresolved:
        raise ConfigError(f"{' and '.join(unresolved)} not resolved by the runner; run the "
                          "step through the pipeline (imgpipe run), which resolves NAME@ALIAS, "
                          "NAME:VERSION and run:RUN_ID (a direct call passes what it would: "
                          "weights=, warm_start=).")
    if warm_start is not None and weights:
        raise ConfigError(f"model.weights {model.weights or weights} and train.warm_start "
                          f"{train.warm_start or warm_start.ref} both given: the warm start "
                          "copies every layer, a transfer base's too; drop model.weights.")
    return warm_start


def _with_tuned_values(hyperparameters: artifacts.Artifact | None, model: ModelConfig,
                       train: TrainConfig) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The config with the tune step's best values applied, and {best, source}: the
    values and where they came from (an earlier search via train.hyperparameters, or
    this run's)."""
    best = (hyperparameters.properties.get("best") if hyperparameters else None) or {}
    if not best:
        return model, train, {"best": {}, "source": None}
    try:
        applied = apply_values({"model": model, "train": train}, best)
    except ValueError as exc:
        raise ConfigError(f"the tuned values {best} do not fit this config: {exc}") from exc
    source = hyperparameters.properties.get("source") or hyperparameters.uri
    return applied["model"], applied["train"], {"best": best, "source": source}


def _fit_and_write(fitting: Fitting, model: ModelConfig, train: TrainConfig,
                   tuned: dict[str, Any], transform_graph: artifacts.Artifact,
                   writer: artifacts.ArtifactWriter, scratch: str | None,
                   source: WarmStart | None = None) -> tuple[dict[str, float], int, int]:
    """Trains and writes the Model artifact (SavedModel with the transform inside, the
    Keras model, history, logs); returns (final metrics, epochs, epochs resumed after)."""
    import numpy as np

    net, strategy = fitting.net, fitting.strategy

    work = scratch or writer.file("work")
    # Epochs an earlier, killed attempt finished (BackupAndRestore resumes after them).
    resumed = len(training.read_epoch_log(os.path.join(work, training.EPOCH_LOG)).get("loss", []))
    # TensorBoard reads the logs while training runs: under the scratch folder,
    # whose path stays put (the artifact's is a staging name until the commit).
    logs = fileio.join(work, artifacts.Model.LOGS) if scratch else writer.file(artifacts.Model.LOGS)
    kept = fileio.join(writer.uri, artifacts.Model.LOGS)
    print(f"{runtime.DETAIL_INDENT}TensorBoard: tensorboard --logdir {logs}"
          + (f" (while it trains; then in {kept})" if logs != kept else ""), flush=True)
    hist = _fit(fitting, model, train, work, logs)
    scored = _score_eval(fitting)
    if scratch:
        for path in fileio.walk_files(logs):
            fileio.copy(path, writer.file(artifacts.Model.LOGS, path[len(logs):].lstrip("/")))
    losses = hist.get("loss", [])
    steps = int(net.optimizer.iterations.numpy())
    if steps == 0:
        raise TrainingError("training took no optimizer step (no full batch in any epoch); "
                            "lower train.batch_size, or add training images.")
    if any(not np.isfinite(v) for v in losses):
        raise TrainingError(
            f"training diverged: loss became NaN/inf at epoch {len(losses)}; lower "
            "train.optimizer.learning_rate or check the input normalization.")
    export(net, transform_graph, writer.file(artifacts.Model.SAVED_MODEL))
    if not fileio.exists(writer.file(artifacts.Model.SAVED_MODEL, artifacts.SAVED_MODEL_PB)):
        raise TrainingError(f"the trainer wrote no SavedModel under {writer.path}.")
    # The Keras model too: a later run can start from it (model.weights: run:ID).
    net.save(writer.file(artifacts.Model.KERAS_FILE))
    if not scratch:
        fileio.rmtree(work)
    artifacts.Model.write(writer, hist)
    # The kept epoch's metrics (early stopping restores the best epoch's weights), and
    # the eval split's score of those weights.
    kept = min(fitting.kept_epoch or len(losses), len(losses))
    final = {k: vals[kept - 1] for k, vals in hist.items() if len(vals) >= kept and k != "phase"}
    final.update(scored)
    writer.properties = {"kind": model.kind, "trainable_params": models.trainable_params(net),
                         "strategy": distribute.strategy_name(strategy),
                         "strategy_reason": fitting.reason,
                         "training_plan": fitting.plan.notes,
                         "tensorflow_version": _tf_version(),
                         "epochs": len(losses), "final": final, "optimizer_steps": steps,
                         "kept_epoch": kept,
                         "validation": {"used": fitting.holdout.used,
                                        "fraction": fitting.holdout.fraction,
                                        "images": fitting.holdout.validation_count,
                                        "fit_images": fitting.holdout.fit_count,
                                        "note": fitting.holdout.note},
                         "augmentation": fitting.augmentation,
                         "resumed_after_epochs": resumed,
                         "hyperparameters": tuned,
                         # what the model is (a later warm start checks it) and what it
                         # started from: {ref, version}, None when from scratch
                         "architecture": models.architecture(model),
                         "warm_start": source.record if source else None,
                         "label_vocabulary": transform_graph.properties["label_vocabulary"],
                         "image_shape": list(transform_graph.properties["image_shape"])}
    fitting.kept_epoch = kept
    return final, len(losses), resumed


def _lines(fitting: Fitting, model: ModelConfig, tuned: dict[str, Any], epochs: int,
           resumed: int, final: dict[str, float], trained_model: str) -> list[str]:
    def value(key: str) -> str:
        return f"{final[key]:.3f}" if key in final else "n/a"

    tuned_line = [f"tuned values: {describe_values(tuned)}"] if tuned else []
    kept = fitting.kept_epoch or epochs
    if model.kind == "transfer":
        tuned_line.append(
            f"fine-tuning the top {model.fine_tune_layers} base layers for "
            f"{model.fine_tune_epochs} epoch(s) after the frozen phase, at learning rate "
            f"{model.fine_tune_learning_rate:g}" if model.fine_tune_layers else
            "no fine-tuning: the base stays frozen (model.fine_tune_layers 0, or a base "
            "that does not start from pretrained weights)")
    return tuned_line + [
        f"{model.kind}: {models.trainable_params(fitting.net):,} trainable params, {epochs} "
        f"epochs{f' (resumed after epoch {resumed})' if resumed else ''}, "
        f"{distribute.strategy_name(fitting.strategy)} ({fitting.reason})",
        fitting.augmentation, fitting.holdout.note,
        f"kept epoch {kept} of {epochs}" + (" (early stopping restored its weights)"
                                             if kept != epochs else "")
        + f": train accuracy {value('accuracy')}, validation accuracy "
        f"{value('val_accuracy')}; eval accuracy {value('eval_accuracy')} (eval split, "
        "scored after training)",
        f"TensorBoard: tensorboard --logdir {fileio.join(trained_model, artifacts.Model.LOGS)}"]
