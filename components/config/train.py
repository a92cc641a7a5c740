"""The `train` section: epochs, batch, optimizer, augmentation, metrics; and the decisions the config made from the data."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union
from pydantic import Field, field_validator, model_validator

from components.config.base import PATH_HELP, PathText, Section
from components.config.data import AUTO


# The trainer's in-memory cache budget by default: larger training data streams, so memory
# stays flat as data grows. bench/scale.py: at 240,000 28x28 images the cache held 354 MB
# (1.5 KB an example, with tf.data's per-element overhead); streaming kept the trainer's
# peak RSS at 1.10 GB against 1.45 GB.
CACHE_MEMORY_MB = 256
# What tf.data's cache holds per example besides the pixels (tensors, shapes, refcounts).
CACHE_BYTES_PER_EXAMPLE = 700
# train.metrics: the Keras 3 metric names that compile without arguments and fit on the
# classifier's softmax output -> the labels they need ("sparse": integer labels, train.loss
# sparse_categorical_crossentropy; "one_hot": any other loss; None: either, Keras picks).
TRAIN_METRICS = {"accuracy": None, "acc": None,
                 "categorical_accuracy": "one_hot", "categorical_crossentropy": "one_hot",
                 "top_k_categorical_accuracy": "one_hot", "auc": "one_hot",
                 "precision": "one_hot", "recall": "one_hot",
                 "sparse_categorical_accuracy": "sparse",
                 "sparse_categorical_crossentropy": "sparse",
                 "sparse_top_k_categorical_accuracy": "sparse"}


class OptimizerConfig(Section):
    name: Literal["adam", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(0.001, gt=0.0)
    beta_1: float = Field(0.9, ge=0.0, lt=1.0)
    beta_2: float = Field(0.999, ge=0.0, lt=1.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    schedule: Literal["constant", "cosine", "exponential", "one_cycle"] = Field(
        "constant", description="The learning rate over training: constant; cosine (decays "
                                "to 0 by the last step, after warmup_epochs of linear "
                                "warmup); exponential (x decay_rate each epoch); one_cycle "
                                "(from learning_rate/25 up to learning_rate over the first "
                                "30% of the steps, or warmup_epochs, then cosine down).")
    warmup_epochs: float = Field(0.0, ge=0.0, description="Linear warmup (cosine, one_cycle).")
    decay_rate: float = Field(0.9, gt=0.0, lt=1.0,
                              description="The exponential schedule's factor per epoch.")

    @model_validator(mode="after")
    def _warmup_has_a_schedule(self) -> "OptimizerConfig":
        if self.warmup_epochs and self.schedule in ("constant", "exponential"):
            raise ValueError(f"warmup_epochs {self.warmup_epochs:g} with schedule "
                             f"{self.schedule}: warmup is for schedule cosine or one_cycle; "
                             "set one of those, or drop warmup_epochs")
        return self


# train.augment: each layer's default factor (a list of names takes these) and its bounds.
AUGMENT_LAYERS = {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1, "translation": 0.1,
                  "contrast": 0.2, "brightness": 0.2}
AUGMENT_FLIPS = ("horizontal", "vertical", "horizontal_and_vertical")
AUGMENT_AUTO = "flip horizontal, rotation 0.05, zoom 0.1, translation 0.1, contrast 0.2"


def _checked_augment(value: Any) -> Any:
    """train.augment in canonical form: auto, off, or {layer: factor} (YAML's bare
    `off`/`no` arrive as False, `on`/`yes` as True = auto)."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    if isinstance(value, str) and value not in ("auto", "off"):
        raise ValueError(f"augment {value!r}: use auto, off, a list of layers "
                         f"({', '.join(AUGMENT_LAYERS)}) or a mapping of layers to factors")
    if isinstance(value, (list, tuple)):
        unknown = [v for v in value if not isinstance(v, str) or v not in AUGMENT_LAYERS]
        if unknown or not value or len(set(value)) != len(value):
            raise ValueError(f"augment list {list(value)}: give distinct layer names from "
                             f"{', '.join(AUGMENT_LAYERS)}, e.g. [flip, rotation]")
        value = {name: AUGMENT_LAYERS[name] for name in value}
    if not isinstance(value, dict):
        return value
    if not value:
        raise ValueError("augment {} names no layer; write augment: off")
    out: dict[str, Any] = {}
    for name, factor in value.items():
        if name not in AUGMENT_LAYERS:
            raise ValueError(f"augment: unknown layer {name!r}; use "
                             f"{', '.join(AUGMENT_LAYERS)}")
        if name == "flip":
            factor = AUGMENT_LAYERS["flip"] if factor is True else factor
            if factor not in AUGMENT_FLIPS:
                raise ValueError(f"augment.flip {factor!r}: use {', '.join(AUGMENT_FLIPS)}")
        else:
            top = 0.5 if name == "rotation" else 1.0
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
                    or not 0 < factor <= top or factor != factor:
                raise ValueError(f"augment.{name} {factor!r}: a factor > 0 and <= {top:g}, "
                                 f"e.g. {name}: {AUGMENT_LAYERS[name]}")
            factor = float(factor)
        out[name] = factor
    return out


class TrainDefaults(Section):
    """Which defaults filled the model and train keys a config does not set, and why:
    the photo defaults (3 channels and no model.kind named) or the course's. Written when
    the pipeline config loads, never by hand."""

    applied: Literal["photo", "course"] = "course"
    why: str = ""
    keys: dict[str, Any] = Field(default_factory=dict,
                                 description="Dotted key -> the value the defaults gave it "
                                             "(of the keys the photo defaults set).")


class TrainConfig(Section):
    """Training loop, distribution and input pipeline."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0, description="Per-replica batch size.")
    optimizer: OptimizerConfig = OptimizerConfig()
    loss: Literal["auto", "categorical_crossentropy", "sparse_categorical_crossentropy"] = "auto"
    metrics: list[str] = Field(
        ["accuracy"], description="Keras metrics train records (and tune.objective may name): "
                                  f"{', '.join(TRAIN_METRICS)}; sparse_* with train.loss "
                                  "sparse_categorical_crossentropy only, the other "
                                  "categorical ones, auc, precision and recall without it.")
    strategy: Literal["auto", "tpu", "mirrored", "multi_worker", "default"] = "auto"
    steps_per_execution: Optional[int] = Field(
        None, gt=0, description="Batches per tf.function call; default 32 on a TPU (where "
                                "each call has a high fixed cost), 8 on one CPU or GPU (small "
                                "models spend most of a step in Python otherwise), 1 under "
                                "MirroredStrategy.")
    mixed_precision: Literal["none", "auto", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="auto: bfloat16 on a TPU, float32 elsewhere (float16 on GPUs "
                            "only when asked for: mixed_float16).")
    augment: Union[Literal["auto", "off"], dict[str, Union[float, str]]] = Field(
        "auto", description="Random augmentation of the training batches only (in tf.data, "
                            "never in the exported model or on eval/validation batches), on "
                            "pixels 0-255 before the normalization. auto: for 3-channel data "
                            f"and the modern convnets {AUGMENT_AUTO}; off for 1-channel data "
                            "(glyphs and digits: a mirrored glyph is another class or none), "
                            "the course's kinds and transfer (models that underfit, which "
                            "augmentation made worse). off, a list of layer "
                            f"names ({', '.join(AUGMENT_LAYERS)}), or a mapping of names "
                            "to factors: {flip: horizontal|vertical|horizontal_and_vertical, "
                            "rotation: 0.05 (of a full turn), zoom: 0.1, translation: 0.1 "
                            "(of the size), contrast: 0.2, brightness: 0.2 (of the 0-255 range)}.")
    early_stopping_patience: Optional[int] = Field(
        None, gt=0, description="Stop after this many epochs without a lower val_loss on the "
                                "validation split (data.validation_fraction of the training "
                                "images; the training loss when there is none) and keep the "
                                "best epoch's weights.")
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="Softens the one-hot targets (e.g. 0.1): the "
                                         "categorical loss only.")
    seed: int = 42
    cache_memory_mb: int = Field(
        CACHE_MEMORY_MB, ge=0, description="Cache the decoded training data in memory when it "
                                           "fits this budget (pixels plus about "
                                           f"{CACHE_BYTES_PER_EXAMPLE} bytes an example); "
                                           "larger data streams from disk every epoch.")
    shuffle_buffer: int = Field(10_000, gt=0)
    hyperparameters: Optional[PathText] = Field(
        None, description="Reuse an earlier search instead of tuning: run:RUN_ID (a run "
                          "with a tune step), a pushed model (NAME@ALIAS, NAME:VERSION) or "
                          "a hyperparameters.json file." + PATH_HELP)
    warm_start: Optional[str] = Field(
        None, description="Start training from the weights of a model this pipeline trained "
                          "(scheduled retrains): a pushed model (NAME@ALIAS, NAME:VERSION) "
                          "or run:RUN_ID. Its architecture, input shape and classes must "
                          "match this config's; the optimizer and compile settings stay "
                          "this config's. Not with model.weights.")
    defaults: Optional[TrainDefaults] = Field(
        None, description="Written when the config loads, not by hand: whether the photo "
                          "defaults or the course's filled the model and train keys the "
                          "config does not set, and why.")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_layers(cls, value: Any) -> Any:
        return _checked_augment(value)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in TRAIN_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; use "
                             f"{', '.join(TRAIN_METRICS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"metrics repeats a name: {value}")
        return value

    @model_validator(mode="after")
    def _metrics_fit_the_labels(self) -> "TrainConfig":
        labels = "sparse" if self.loss == "sparse_categorical_crossentropy" else "one_hot"
        wrong = [name for name in self.metrics if TRAIN_METRICS[name] not in (None, labels)]
        if wrong:
            instead = ("set train.loss: sparse_categorical_crossentropy" if labels == "one_hot"
                       else "drop train.loss (one-hot labels)")
            raise ValueError(f"train.metrics {', '.join(wrong)} need "
                             f"{'integer' if labels == 'one_hot' else 'one-hot'} labels, and "
                             f"train.loss {self.loss} trains on {labels.replace('_', '-')} "
                             f"labels; use accuracy (either labels), or "
                             f"{instead}")
        if self.label_smoothing and self.loss == "sparse_categorical_crossentropy":
            raise ValueError(f"train.label_smoothing {self.label_smoothing:g} smooths one-hot "
                             "targets and train.loss sparse_categorical_crossentropy trains on "
                             "integer labels; drop train.loss, or label_smoothing")
        return self


def decision_line(data: dict[str, Any], train: dict[str, Any]) -> Optional[str]:
    """The one line a run prints at its start and its report shows: data.channels and
    data.image_size, set in the config or decided from the data (from what), then which
    defaults filled the model and train keys and why. From the sections as JSON (a
    config's, a recorded config's); None without the shape."""
    channels, size = data.get("channels"), data.get("image_size")
    if channels in (None, AUTO) or size in (None, AUTO):
        return None
    decided = data.get("decided") or {}
    keys = decided.get("keys") or []
    shown = {"channels": f"{channels} channel{'' if channels == 1 else 's'}",
             "image_size": f"{size[0]}x{size[1]}"}
    if decided.get("unread") and keys:
        why = (f"auto, but data.source could not be read when the config loaded "
               f"({decided['unread']}): the course values")
    elif keys:
        why = f"decided from the data: {decided.get('basis')}"
    else:
        why = "set in the config"
    if 0 < len(keys) < len(shown):
        text = ", ".join(f"{value} (set in the config)" if key not in keys else value
                         for key, value in shown.items())
    else:
        text = ", ".join(shown.values())
    line = f"data: {text} ({why})"
    defaults = train.get("defaults")
    if defaults:
        given = ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                          for key, value in defaults["keys"].items())
        if defaults["applied"] == "photo":
            line += (f"; photo defaults applied ({defaults['why']}): "
                     f"{given or 'the config sets every key they give'}")
        else:
            line += (f"; photo defaults not applied ({defaults['why']}); course defaults: "
                     f"{given or 'the config sets every key the photo defaults give'}")
    return line


def decisions(recorded: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """What a model card records of the decisions a config's load made (from the sections
    push records): the data keys decided and from what, the defaults applied, the line."""
    data = (recorded or {}).get("data") or {}
    train = (recorded or {}).get("train") or {}
    line = decision_line(data, train)
    if line is None:
        return None
    return {**(data.get("decided") or {"keys": []}), "defaults": train.get("defaults"),
            "line": line}
