"""The trainer's fit machinery, shared by every step that fits a model (train, and a
tuning step's trials): how a strategy trains, the optimizer and its schedule, the
progress and epoch-log callbacks, and the loop under MultiWorkerMirroredStrategy (the
input pipeline: components.trainer.inputs; the export: components.trainer.export; the
tf.distribute strategy: components.trainer.distribute).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from components import runtime
from components.config.train import TrainConfig
from components.io import fileio
from components.trainer.distribute import is_chief, is_tpu

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
