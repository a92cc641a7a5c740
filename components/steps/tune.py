"""Tune: a KerasTuner search over config keys before train (TFX's Tuner component).

`tune.space` maps dotted config keys of `model` and `train` to ranges. Every trial is
the model train would build: the config with the trial's values applied, the
trainer's own input pipeline (`inputs.make_dataset`), model builder
(`models.build`) and compile. The result is a HyperParameters artifact whose best
values train applies to its config. With no space the step searches nothing (train
uses its config as written); with `train.hyperparameters` it copies an earlier
search's best values instead (`TunedValues`: the runner resolves the reference to the
file holding them).

The search keeps its state in the step's scratch folder: a killed search resumes from
its completed trials when the step runs again.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

from components import artifacts, runtime
from components.config.data import DataConfig
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from components.config.tune import TuneConfig, apply_values, describe_values
from components.contract import (In, Out, Scratch, StartWeights, TunedValues, Where,
                                 step)
from components.errors import ConfigError, TrainingError
from components.trainer.tuned import read_best

log = logging.getLogger("imgpipe.tune")


def _declare(hp, key: str, dimension) -> Any:
    """The trial's value of `key`, declared on KerasTuner's HyperParameters."""
    kind = dimension.kind
    if kind == "choice":
        # KerasTuner's Choice takes scalars of one type; lists and mixed choices are
        # chosen by index and mapped back.
        values = dimension.choice
        plain = all(isinstance(v, (int, float, str, bool)) for v in values) and \
            len({type(v) for v in values}) == 1
        if plain:
            return hp.Choice(key, values)
        return values[hp.Choice(f"{key}#index", list(range(len(values))))]
    if kind == "int_uniform":
        low, high = dimension.int_uniform
        return hp.Int(key, low, high)
    low, high = getattr(dimension, kind)
    return hp.Float(key, low, high, sampling="log" if kind == "log_uniform" else "linear")


def trial_values(space: dict[str, Any], hp) -> dict[str, Any]:
    return {key: _declare(hp, key, dimension) for key, dimension in space.items()}


class _HyperModel:
    """KerasTuner's HyperModel over the trainer's machinery (a class built lazily so
    that importing this module needs no keras_tuner)."""

    @staticmethod
    def make(tune: TuneConfig, model: ModelConfig, train: TrainConfig,
             transform_graph: artifacts.Artifact, examples: artifacts.Artifact,
             held: Any, weights: str | None = None):
        """`held`: the validation part of the train split (inputs.Holdout) every trial
        is scored on; when it is not used, trials are scored on the training metric
        (`tune.objective` without val_), never on the eval split. `weights`: the start
        weights `model.weights` resolved to (a transfer base's)."""
        import keras_tuner as kt

        from components.trainer import distribute, inputs, models, training

        strategy = distribute.choose_strategy(train.strategy)[0]
        plan = training.plan_for(train, strategy)
        shape = tuple(transform_graph.properties["image_shape"])
        classes = transform_graph.properties["num_classes"]
        scored_on = _scored_metric(tune.objective, held.used)

        @functools.cache
        def pixels() -> tuple[float, float]:
            """The normalization constants a transfer base's own preprocessing is built
            from: read once, for the first transfer trial, never for other kinds."""
            return inputs.normalization(transform_graph, examples)

        class HyperModel(kt.HyperModel):
            def configs(self, hp) -> tuple[ModelConfig, TrainConfig]:
                values = trial_values(tune.space, hp)
                sections = apply_values({"model": model, "train": train}, values)
                return sections["model"], sections["train"]

            def build(self, hp):
                trial_model, trial_train = self.configs(hp)
                loss = _loss(trial_train)
                with strategy.scope():
                    net = models.build(trial_model, shape, classes, weights,
                                       pixels() if trial_model.kind == "transfer" else None)
                    training.compile_model(
                        net, trial_train, plan, loss, epochs=tune.epochs,
                        steps_per_epoch=held.fit_count // (trial_train.batch_size *
                                                           strategy.num_replicas_in_sync))
                return net

            def fit(self, hp, net, *args, **kwargs):
                trial_model, trial_train = self.configs(hp)
                sparse = _loss(trial_train).startswith("sparse")
                batch = trial_train.batch_size * strategy.num_replicas_in_sync
                if held.used:
                    train_ds, val_ds = (inputs.make_dataset(
                        transform_graph, examples, "train", batch, trial_train,
                        part == inputs.FIT, sparse, plan.static, held, part,
                        kind=trial_model.kind)
                        for part in (inputs.FIT, inputs.VALIDATION))
                else:
                    train_ds = inputs.make_dataset(transform_graph, examples, "train", batch,
                                                   trial_train, True, sparse, plan.static,
                                                   kind=trial_model.kind)
                    val_ds = None
                started = time.perf_counter()
                kwargs.setdefault("verbose", 0)
                kwargs.pop("validation_data", None)     # never the eval split
                history = net.fit(train_ds, validation_data=val_ds, **kwargs)
                scores = [v for v in history.history.get(scored_on, [])
                          if math.isfinite(v)]
                if not scores:
                    # a diverged trial: the worst score, so the search moves on
                    scores = [math.inf if tune.direction() == "min" else -math.inf]
                best = min(scores) if tune.direction() == "min" else max(scores)
                self.trials = getattr(self, "trials", 0) + 1
                number = _trial_number(kwargs.get("callbacks"), self.trials)
                print(f"{runtime.DETAIL_INDENT}trial {number}: {scored_on} {best:.4f}  "
                      f"{describe_values(trial_values(tune.space, hp))}  "
                      f"{time.perf_counter() - started:.0f}s", flush=True)
                return {tune.objective: best, "seconds": time.perf_counter() - started,
                        "epochs": float(len(history.history.get("loss", [])))}

        return HyperModel()


def _trial_number(callbacks: Any, fallback: int) -> int:
    """The trial's number as the summary and the report call it: KerasTuner's trial id
    counted from 1 (its ids count from 0; a resumed search goes on counting), read from
    the callback KerasTuner passes each fit; `fallback` where there is none."""
    trial = next((getattr(c, "trial", None) for c in callbacks or ()
                  if getattr(c, "trial", None) is not None), None)
    try:
        return int(trial.trial_id) + 1
    except (AttributeError, TypeError, ValueError):
        return fallback


def _scored_metric(objective: str, validation: bool) -> str:
    """The history key a trial is scored by: `objective` on the validation split, or
    the same metric on the training batches when there is no validation split."""
    return objective if validation else objective.removeprefix("val_")


def _loss(train: TrainConfig) -> str:
    return "sparse_categorical_crossentropy" \
        if train.loss == "sparse_categorical_crossentropy" else "categorical_crossentropy"


def _tuner(tune: TuneConfig, hypermodel, directory: str):
    import keras_tuner as kt

    objective = kt.Objective(tune.objective, direction=tune.direction())
    common = {"objective": objective, "seed": tune.seed, "directory": directory,
              "project_name": "search", "overwrite": False}
    if tune.algorithm == "random":
        return kt.RandomSearch(hypermodel, max_trials=tune.max_trials, **common)
    if tune.algorithm == "bayesian":
        return kt.BayesianOptimization(hypermodel, max_trials=tune.max_trials, **common)
    return kt.Hyperband(hypermodel, max_epochs=tune.epochs, factor=3, **common)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _trials(tuner, space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every completed trial in order: the config values it used, score, seconds."""
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id)):
        if trial.status != "COMPLETED":
            continue
        values = trial_values(space, trial.hyperparameters)
        metrics = trial.metrics
        seconds = metrics.get_best_value("seconds") if metrics.exists("seconds") else None
        rows.append({"trial": int(trial.trial_id) + 1, "values": {k: _plain(v) for k, v in
                                                              values.items()},
                     "score": None if trial.score is None or not math.isfinite(trial.score)
                     else float(trial.score),
                     "seconds": None if seconds is None else round(float(seconds), 2)})
    return rows


def _search(tune: TuneConfig, model: ModelConfig, train: TrainConfig,
            transform_graph: artifacts.Artifact, examples: artifacts.Artifact,
            directory: str, held: Any, weights: str | None = None) -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(tune.seed)
    hypermodel = _HyperModel.make(tune, model, train, transform_graph, examples, held,
                                  weights)
    tuner = _tuner(tune, hypermodel, directory)
    done = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    if done:
        log.info("resuming the search after %d completed trial(s)", done)
    started = time.perf_counter()
    search_args = {"verbose": 0} if tune.algorithm == "hyperband" else {"epochs": tune.epochs,
                                                                      "verbose": 0}
    try:
        tuner.search(**search_args)
    except RuntimeError as exc:            # KerasTuner gives up after failing trials
        raise TrainingError(f"the search stopped: {exc} (the trials' errors are printed "
                            "above); completed trials are kept and resume on the next "
                            "run.") from exc
    trials = _trials(tuner, tune.space)
    scored = [t for t in trials if t["score"] is not None]
    if not scored:
        raise TrainingError(f"no trial of the search produced a finite {tune.objective}; "
                            "narrow tune.space (e.g. lower learning rates).")
    pick = min if tune.direction() == "min" else max
    best = pick(scored, key=lambda t: t["score"])
    return {"searched": True, "algorithm": tune.algorithm, "objective": tune.objective,
            "direction": tune.direction(), "best": best["values"], "best_score": best["score"],
            "best_trial": best["trial"], "trials": trials,
            "resumed_after_trials": done,
            "space": {k: v.model_dump(exclude_none=True) for k, v in tune.space.items()},
            "epochs_per_trial": tune.epochs, "seed": tune.seed,
            "scored_on": {"metric": _scored_metric(tune.objective, held.used),
                          "validation_images": held.validation_count, "note": held.note},
            "seconds": round(time.perf_counter() - started, 1)}


def check(tune: TuneConfig, train: TrainConfig, where: Where) -> list[str]:
    """A TPU trainer with a search, in a pipeline: the tune task's trials build the
    trainer's model under its strategy, but the task runs in its own image with no TPU
    (only train asks for one), so `strategy: tpu` fails there and a TPU accelerator's
    plan (bfloat16, static shapes) is searched on CPU. Refused unless kfp.steps.tune
    asks for a TPU too."""
    if not where.remote or not tune.space or where.has_tpu("tune"):
        return []
    tpu = (["train.strategy tpu"] if train.strategy == "tpu" else []) + \
        ([f"kfp.steps.train.accelerator_type {where.accelerators.get('train')}"]
         if where.has_tpu("train") else [])
    if not tpu:
        return []
    return [f"{' and '.join(tpu)} with a tune.space: the tune task runs its trials without "
            "a TPU (in kfp.image), where the TPU trainer fails; search on CPU first with a "
            "smaller model (a run with tune.space, train.strategy auto and no TPU), then pass "
            "its result as train.hyperparameters (NAME@ALIAS of its pushed model, or "
            "gs://.../hyperparameters.json) with tune.space {} here."]


@step(check=check)
def run(transform_graph: In[artifacts.TransformGraph], examples: In[artifacts.Examples],
        tune: TuneConfig, model: ModelConfig, train: TrainConfig,
        hyperparameters: Out[artifacts.HyperParameters], scratch: Scratch = None,
        data: DataConfig = None, weights: StartWeights = None,
        earlier_search: TunedValues = None) -> dict[str, Any]:
    """Writes a HyperParameters artifact: a search's result, an earlier one's best
    values, or no values. `earlier_search`: the file holding the best values
    `train.hyperparameters` names; `weights`: the start weights `model.weights` names (a
    trial's transfer base); both resolved by the runner. Trials fit on the train split
    less its validation part (`data.validation_fraction`) and are scored on that part,
    never on the eval split evaluate blesses on."""
    if train.hyperparameters and not earlier_search:
        raise ConfigError(f"train.hyperparameters {train.hyperparameters} was not resolved to "
                          "a file of best values; run the step through the pipeline (imgpipe "
                          "run), which resolves run:RUN_ID, NAME@ALIAS and NAME:VERSION.")
    if earlier_search:
        best = read_best(earlier_search)
        apply_values({"model": model, "train": train}, best)      # still valid keys?
        record = {"searched": False, "source": earlier_search, "best": best}
        named = train.hyperparameters
        lines = [f"reused the best values of {named}"
                 + (f" ({earlier_search})" if named and named != earlier_search else "")
                 + f": {describe_values(best)}"]
    elif not tune.space:
        record = {"searched": False, "source": None, "best": {}}
        lines = ["no tune.space: train uses its config as written"]
    else:
        import tempfile

        from components.trainer import inputs

        directory = scratch or tempfile.mkdtemp(prefix="search-")   # inside the step's tmp
        held = inputs.holdout(transform_graph, examples,
                              (data or DataConfig()).validation_fraction)
        record = _search(tune, model, train, transform_graph, examples, directory, held,
                         weights)
        scored = record["scored_on"]["metric"]
        lines = [f"{len(record['trials'])} trial(s), {tune.algorithm} search, "
                 f"{tune.epochs} epoch(s) each, {record['seconds']:.0f} s"
                 + (f" (resumed after {record['resumed_after_trials']})"
                    if record["resumed_after_trials"] else ""),
                 f"best {scored} {record['best_score']:.4f} (trial "
                 f"{record['best_trial']}): {describe_values(record['best'])}",
                 held.note if held.used else
                 f"{held.note}; trials are scored on {scored} (training batches)"]
    artifacts.HyperParameters.write(hyperparameters, record)
    hyperparameters.properties = {"best": record["best"], "searched": record["searched"],
                                  "source": record.get("source")}
    return {"best": record["best"], "searched": record["searched"], "lines": lines}
