"""Typed config sections, one per step. The root model and YAML loading live in
`pipeline/config.py`; steps import only the section they receive.

Defaults are the course's values, so a config that names only its data source works.
"""

from __future__ import annotations

import math
import os
import re
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, field_validator,
                      model_validator)

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = ("fonts", "digits", "fashion_mnist")
# Image files accepted from folders and manifests (ingest) and found in folders (predict).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp")
# Decompression-bomb guard for ingest and predict alike.
MAX_PIXELS = 50_000_000
# The trainer's in-memory cache budget by default: larger training data streams, so memory
# stays flat as data grows. bench/scale.py: at 240,000 28x28 images the cache held 354 MB
# (1.5 KB an example, with tf.data's per-element overhead); streaming kept the trainer's
# peak RSS at 1.10 GB against 1.45 GB.
CACHE_MEMORY_MB = 256
# What tf.data's cache holds per example besides the pixels (tensors, shapes, refcounts).
CACHE_BYTES_PER_EXAMPLE = 700
MODEL_KINDS = ("logistic", "dense", "mlp", "hidden1", "dnn", "cnn", "deep_cnn", "transfer",
               "squeezenet", "xception", "resnet")
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
# evaluate.thresholds: the metrics evaluate computes (components/steps/evaluate.py's
# TOP_LEVEL and top_k_accuracy) -> the range of their values.
EVALUATE_METRICS = {"accuracy": (0.0, 1.0), "top_k_accuracy": (0.0, 1.0),
                    "example_count": (0.0, math.inf)}


# Beam's runner names (apache_beam.runners.runner._RUNNER_MAP; a test holds them
# together); any other runner is given as a dotted class path.
BEAM_RUNNERS = ("DataflowRunner", "DirectRunner", "BundleBasedDirectRunner",
                "SwitchingDirectRunner", "InteractiveRunner", "FlinkRunner", "FnApiRunner",
                "KafkaStreamsRunner", "PortableRunner", "PrismRunner", "SparkRunner",
                "TestDirectRunner", "TestDataflowRunner", "PythonRPCDirectRunner")
# Runners that execute in this process or on this machine: every other runner's
# workers see none of the container's files.
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner",
                 "SwitchingDirectRunner", "InteractiveRunner", "PrismRunner", "TestDirectRunner")
# The alias every model has: its newest version (never set, never a baseline).
LATEST_ALIAS = "latest"
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# Vertex AI Model Registry's version aliases (aiplatform Model.version_aliases: "The
# format is [a-z][a-zA-Z0-9-]{0,126}[a-z0-9] to distinguish from version_id"; its
# alias page: non-numeric). imgpipe's own aliases allow more ('_', '.', a digit first).
VERTEX_ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]")


def vertex_alias_problem(alias: str) -> Optional[str]:
    """Why Vertex AI would refuse `alias` as a version alias (one clause with the rule
    and, where one exists, the nearest name it accepts), or None."""
    if VERTEX_ALIAS.fullmatch(alias):
        return None
    near = re.sub(r"[^a-zA-Z0-9-]+", "-", alias).strip("-")
    near = near[:1].lower() + near[1:]
    hint = f"e.g. {near!r}" if VERTEX_ALIAS.fullmatch(near) else "e.g. 'production' or 'v2'"
    return (f"Vertex AI version aliases start with a lower-case letter, then letters, digits "
            f"or '-', and end in a lower-case letter or digit, 2 to 128 characters; use "
            f"{hint}")


def identifier(value: Optional[str], what: str) -> Optional[str]:
    """Names that become folders or aliases: letters, digits, '_', '.', '-', no '..'."""
    if value is not None and (not IDENTIFIER.fullmatch(value) or ".." in value):
        raise ValueError(f"{what} must be letters, digits, '_', '.' or '-', starting with a "
                         f"letter or digit, got {value!r}")
    return value


# $NAME and ${NAME} in a path field: a variable of the environment the config loads in.
ENV_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
PATH_HELP = " $VAR, ${VAR} and a leading ~ expand when the config loads (an unset variable "\
            "is an error)."


def expand_path(value: Any) -> Any:
    """A path field's value with $VAR / ${VAR} from the environment and a leading ~
    expanded; ValueError naming an unset (or malformed) variable. Anything not a
    string goes on to the field's own type check."""
    if not isinstance(value, str):
        return value

    def variable(match: re.Match) -> str:
        name = match[1] if match[1] is not None else match[2]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{match[0]!r} is not an environment variable reference; write "
                             "$NAME or ${NAME}")
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set; export {name}=... "
                             "before running, or write the path out")
        return os.environ[name]

    expanded = ENV_VARIABLE.sub(variable, value)
    return os.path.expanduser(expanded) if expanded.startswith("~") else expanded



# A path field: $VAR / ${VAR} and a leading ~ expanded before the type check.
PathText = Annotated[str, BeforeValidator(expand_path)]


# A container image reference (distribution/reference's grammar: [HOST[:PORT]/]PATH
# [:TAG][@DIGEST], each path component lower-case letters and digits with . _ __ - between).
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*)"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


def image_reference(value: Optional[str], what: str) -> Optional[str]:
    """A container image reference Docker and Kubernetes accept, or ValueError. As
    Docker reads one, a first component without '.' or ':' (and not localhost) is part
    of the path, so lower case like the rest."""
    match = IMAGE_REFERENCE.fullmatch(value) if value is not None else None
    first = value.split("/", 1)[0] if "/" in (value or "") else ""
    host = "." in first or ":" in first or first == "localhost"
    if value is not None and (match is None or len(match["name"]) > 255
                              or (first and not host and first != first.lower())):
        raise ValueError(f"{what} {value!r} is not a container image reference; write "
                         "[HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST] with a lower-case path, e.g. "
                         "us-docker.pkg.dev/my-project/imgpipe/imgpipe:0.1.0")
    return value


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment, and
    a boolean is never taken for a number (YAML's `epochs: true` is a mistake, not 1)."""

    # allow_inf_nan: YAML's .inf and .nan pass every bound pydantic checks (inf > 0), then
    # fail (or train nothing) steps later; no setting takes them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              allow_inf_nan=False)
    # keys a section no longer has -> what to write instead (an error that says so)
    _moved: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, message in cls._moved.items():
                if key in value:
                    raise ValueError(message)
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info) -> Any:
        if _bool_for_number(cls.model_fields[info.field_name].annotation, value):
            raise ValueError("expected a number, got a boolean" if isinstance(value, bool)
                             else "expected numbers, got a boolean among them")
        return value


def _wants_number(annotation: Any) -> bool:
    """A number type: int, float or a Literal of numbers, through Optional/Union."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return bool(args) and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                  for a in args)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_wants_number(a) for a in args if a is not type(None))
    return False


def _bool_for_number(annotation: Any, value: Any) -> bool:
    """A boolean where the type wants a number, also inside a list or tuple
    (`image_size: [true, 36]`, `hidden_units: [true]`; Python's True == 1)."""
    if isinstance(value, bool):
        return _wants_number(annotation)
    if not isinstance(value, (list, tuple)):
        return False
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_bool_for_number(a, value) for a in args)
    return any(isinstance(item, bool) for item in value) and any(_wants_number(a) for a in args)


# data.channels and data.image_size left `auto` (the default) are decided from the data
# when the pipeline config loads (pipeline/config.py, components/data_shape.py). A
# DataConfig built on its own (a step called directly) has no data to decide from and
# takes the course's values, the grayscale glyphs every course model is built for.
AUTO = "auto"
COURSE_CHANNELS = 1
COURSE_IMAGE_SIZE = (36, 36)
DATA_SHAPE_KEYS = ("channels", "image_size")


class DataDecision(Section):
    """How `auto` data keys were decided: written when the pipeline config loads, never
    by hand (a config written out by `imgpipe config show` loads back with it)."""

    keys: list[Literal["channels", "image_size"]] = Field(
        default_factory=list, description="The data keys decided from the data (auto); "
                                          "the others were set in the config.")
    basis: str = Field("", description="What the data showed, e.g. '198 of 200 sampled files "
                                       "are RGB; median 100x100 ...'.")
    unread: Optional[str] = Field(None, description="Why data.source could not be read when "
                                                    "the config loaded; the decided keys "
                                                    "then hold the course values.")


class DataConfig(Section):
    """Where the images come from and what shape the model sees."""

    source: PathText = Field(
        "builtin:fonts",
        description="builtin:fonts|digits|fashion_mnist, a folder of class folders, "
                    "a CSV/JSONL manifest, an NPZ file, or MNIST IDX files; with {SPAN} "
                    "or {YYYY}{MM}{DD} (and {VERSION}) in it, many data drops (data.spans)."
                    + PATH_HELP)
    image_size: Union[Literal["auto"], tuple[int, int]] = Field(
        AUTO, description="[height, width] after transform. auto (the default): decided from "
                          "the data when the config loads: 36x36 for 1 channel (the course's "
                          "size); for 3 channels square, the median shorter side of the "
                          "sampled images held to 32-64.")
    channels: Union[Literal["auto"], Literal[1, 3]] = Field(
        AUTO, description="1 (grayscale) or 3 (RGB) after transform. auto (the default): what "
                          "most of up to 200 of the data's files are, read from their headers "
                          "when the config loads (built-in datasets: 1; a span pattern: the "
                          "window's newest span); 3 with no model.kind brings the photo "
                          "defaults.")
    decided: Optional[DataDecision] = Field(
        None, description="Written when the config loads, not by hand: which of channels and "
                          "image_size were decided from the data, and from what.")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                 description="Share of images hashed into the eval split when "
                                             "the source does not name splits.")
    validation_fraction: float = Field(
        0.1, ge=0.0, lt=1.0,
        description="Share of the TRAINING images train and tune hold out as the validation "
                    "split (chosen by a hash of each image's pixels, so train and validation "
                    "never share an image): early stopping and tune.objective score on it, "
                    "never on the eval split evaluate blesses on. 0: no validation split "
                    "(early stopping watches the training loss).")
    classes: Optional[list[str]] = Field(
        None, description="Allowed class names; images with other labels are quarantined. "
                          "Default: every label found.")
    spans: Optional[Union[Literal["latest"], dict[str, Any], list[Union[int, str]]]] = Field(
        None, description="Which data drops of a pattern source (data.source with {SPAN}, "
                          "or {YYYY}, {MM} and {DD}; with {VERSION} the highest version of "
                          "a span wins) to read: latest (the default), {rolling: N} (the "
                          "newest N), {range: [A, B]} (both included), a list, or "
                          "{scheduled: -1d} (the day before the run's schedule time; date "
                          "patterns). Spans are whole numbers for {SPAN}, YYYY-MM-DD for "
                          "dates (components/spans.py).")
    on_missing: Literal["fail", "skip"] = Field(
        "fail", description="A span data.spans asks for that does not exist: fail (never "
                            "quietly train on old data) or skip it with a warning.")
    eval_spans: Literal["auto", "newest", "all"] = Field(
        "auto", description="Whose eval split a window of spans evaluates on: the newest "
                            "span's, every span's, or auto: the newest span's when it holds "
                            "at least min_eval_examples, else every span's (a drop's eval "
                            "split of ~90 images cannot tell a retrain from noise).")
    min_eval_examples: int = Field(
        200, gt=0, description="eval_spans auto: the newest span's eval split is enough on "
                               "its own from this many examples.")

    @field_validator("source")
    @classmethod
    def _source_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source is empty; name a folder, a manifest, an .npz or IDX "
                             "file, or builtin:fonts")
        return value

    @field_validator("source")
    @classmethod
    def _source_pattern(cls, value: str) -> str:
        if "{" in value:                  # spans.py loads only for a pattern
            from components import spans
            from components.errors import ConfigError

            if spans.has_pattern(value):
                try:
                    spans.Pattern.parse(value)
                except ConfigError as exc:
                    raise ValueError(str(exc).removeprefix(f"data.source {value!r} ")
                                     .rstrip(".")) from None
        return value

    @field_validator("spans", mode="before")
    @classmethod
    def _spans_shape(cls, value: Any, info) -> Any:
        if isinstance(value, str) and value.strip()[:1] in ("{", "[", '"'):
            import json           # a KFP run-time parameter arrives as JSON text

            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"{value!r} is not JSON (a window given as a pipeline "
                                 "parameter, e.g. {\"rolling\": 7})") from None
        source = info.data.get("source")
        return value if source is None else _checked_spans(value, source)

    @model_validator(mode="after")
    def _spans_follow_source(self) -> "DataConfig":
        try:                                            # after data.source is reassigned
            _checked_spans(self.spans, self.source)
        except ValueError as exc:
            raise ValueError(f"data.spans: {exc}") from None
        return self

    @model_validator(mode="after")
    def _auto_without_a_pipeline(self) -> "DataConfig":
        """A pipeline config replaces `auto` with what the data shows before this section
        is built; a section built on its own has no data to decide from."""
        if self.channels == AUTO:
            self.__dict__["channels"] = COURSE_CHANNELS        # not an assignment: no re-check
        if self.image_size == AUTO:
            self.__dict__["image_size"] = COURSE_IMAGE_SIZE
        return self

    def decided_from_data(self, key: str) -> bool:
        """Whether `key` (channels, image_size) was decided from the data, not set."""
        return self.decided is not None and key in self.decided.keys

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: Any) -> Any:
        if value != AUTO and min(value) <= 0:
            raise ValueError(f"image_size must be [height, width] > 0, got {list(value)}; "
                             "e.g. image_size: [36, 36]")
        return value

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("classes must be a non-empty list of distinct names")
        return value


def _checked_spans(value: Any, source: str) -> Any:
    """data.spans in canonical form, checked against data.source's pattern."""
    if value is None:
        return value
    from components import spans
    from components.errors import ConfigError

    if not spans.has_pattern(source):
        raise ValueError(f"given, but data.source {source!r} has no span pattern; "
                         "name the drops in data.source with {SPAN} (e.g. data/span-{SPAN}/) "
                         "or {YYYY}-{MM}-{DD}, or remove data.spans")
    try:
        return spans.check_spans(value, spans.Pattern.parse(source).kind)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


class IngestConfig(Section):
    """Ingest limits: what counts as bad input and how much of it is tolerated."""

    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0,
                                    description="Fail when quarantined / total exceeds this.")
    max_pixels: int = Field(MAX_PIXELS, gt=0,
                            description="Images with more pixels are quarantined "
                                        "(decompression-bomb guard).")
    near_duplicate_rms: float = Field(
        6.0, gt=0.0, le=255.0,
        description="Images whose 16x16 grayscale thumbnails differ by at most this RMS "
                    "(0-255) are near-duplicates: a hash split keeps them in one split, and "
                    "validation counts eval images with one in train as leaks. 6 separates "
                    "JPEG re-encodes (<= 5.3) from distinct images (>= 7.9) on Fashion-MNIST.")
    extensions: list[str] = Field(list(IMAGE_EXTENSIONS),
                                  description="Image file extensions accepted from folders "
                                              "and manifests; other files are quarantined.")


class ValidateConfig(Section):
    """Schema enforcement and drift limits."""

    schema_path: Optional[PathText] = Field(
        None, alias="schema",
        description="TFMD schema (text proto) to enforce; default: inferred from this run. "
                    "A local file must exist when the config loads." + PATH_HELP)
    max_class_drift: float = Field(0.1, ge=0.0, le=1.0,
                                   description="L-infinity distance of class shares vs the "
                                               "previous run above which drift is an error.")
    max_near_duplicate_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="Eval images with a near-duplicate in train "
                                          "(ingest.near_duplicate_rms), as a share of eval, "
                                          "above which validation fails.")
    max_brightness_drift: float = Field(0.1, ge=0.0,
                                        description="Per-class mean brightness change (0-1 "
                                                    "scale) vs the previous run that warns.")
    max_bad_fraction_warning: float = Field(0.01, ge=0.0, le=1.0,
                                            description="Decode-failure rate that warns.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    _moved: ClassVar[dict[str, str]] = {
        "near_duplicate_bits": "near_duplicate_bits is gone: near-duplicates are now decided "
                               "in pixel space, set by ingest: {near_duplicate_rms: ...}"}


class TransformConfig(Section):
    """tensorflow-transform preprocessing."""

    # standardize by default: measured on 2026-11-30 it trained the convolutional models
    # 2-5 points better in the same epochs (fonts deep CNN 0.904 vs 0.872 over four
    # seeds, sign-language photos 0.87 vs 0.83), for one more pass over the pixels.
    normalize: Literal["scale", "standardize"] = Field(
        "standardize", description="standardize: (pixel - mean) / std with the training "
                                   "split's full-pass mean and std; scale: pixels / 255.")
    keep_aspect_ratio: bool = Field(False, description="Pad instead of stretching.")
    materialize: Union[Literal["auto"], bool] = Field(
        "auto", description="true: write the transformed pixels (uint8) once; false: the "
        "trainer applies the graph in tf.data (and caches in memory what fits "
        "train.cache_memory_mb). auto: write them when all examples' pixels exceed 1 GiB.")


ModelKind = Literal[MODEL_KINDS]


class ModelConfig(Section):
    """Which architecture; widths and activations default to the course's."""

    kind: ModelKind = "deep_cnn"
    hidden_units: Optional[list[int]] = Field(None, description="Dense widths; default per kind.")
    activation: Optional[str] = Field(None, description="Hidden activation; default per kind.")
    initializer: Literal["glorot_uniform", "glorot_normal", "he_uniform", "he_normal"] = \
        "glorot_uniform"
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    base: Literal["mobilenet_v2", "efficientnet_b0", "resnet50"] = "mobilenet_v2"
    weights: Optional[PathText] = Field(None, description="Transfer base weights: imagenet, a "
                                                     "weights file, run:RUN_ID, or MODEL@ALIAS."
                                                     + PATH_HELP)
    pooling: Literal["flatten", "avg", "max"] = "flatten"
    fine_tune_layers: int = Field(0, ge=0, description="Unfreeze the top N base layers in a "
                                                       "second phase.")
    fine_tune_epochs: int = Field(0, ge=0)
    fine_tune_learning_rate: float = Field(1e-5, gt=0.0)

    @field_validator("hidden_units")
    @classmethod
    def _positive_units(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is not None and any(units <= 0 for units in value):
            raise ValueError(f"hidden_units are layer widths and must be > 0, got {value}; "
                             "e.g. hidden_units: [128, 32], or [] for no hidden layer")
        return value


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
                            f"{AUGMENT_AUTO}; off for 1-channel data (glyphs and digits: a "
                            "mirrored glyph is another class or none). off, a list of layer "
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

    # Where the runner resolved `warm_start` (now the Keras file) from: {ref, version}
    # (`pipeline.invoke.resolve`). Not config: never dumped, validated or keyed.
    _warm_start_source: Optional[dict[str, str]] = None


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


# Sections and keys a search may vary: what the trial's model and training read.
TUNABLE_SECTIONS = ("model", "train")
UNTUNABLE = {"train.strategy", "train.hyperparameters", "train.seed", "train.metrics",
             "train.epochs", "model.weights", "train.cache_memory_mb"}


class SearchDimension(Section):
    """One key's range: exactly one of choice, uniform, log_uniform, int_uniform."""

    choice: Optional[list[Any]] = Field(None, description="Values to pick from.")
    uniform: Optional[tuple[float, float]] = Field(None, description="[low, high], linear.")
    log_uniform: Optional[tuple[float, float]] = Field(None, description="[low, high] > 0, "
                                                                         "log scale.")
    int_uniform: Optional[tuple[int, int]] = Field(None, description="[low, high] integers, "
                                                                     "both included.")

    @model_validator(mode="after")
    def _one_range(self) -> "SearchDimension":
        given = [k for k in ("choice", "uniform", "log_uniform", "int_uniform")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, log_uniform, int_uniform "
                             f"(got {given or 'none'})")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice is empty; list at least one value")
            if len({repr(v) for v in self.choice}) != len(self.choice):
                raise ValueError(f"choice repeats a value: {self.choice}")
            return self
        low, high = getattr(self, kind)
        if not low < high:
            raise ValueError(f"{kind} [{low}, {high}] is an empty range; low must be below high")
        if kind == "log_uniform" and low <= 0:
            raise ValueError(f"log_uniform needs low > 0, got {low}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "uniform", "log_uniform", "int_uniform")
                    if getattr(self, k) is not None)

    def endpoints(self) -> list[Any]:
        """The values a key must accept: every choice, or both ends of a range."""
        return list(self.choice) if self.kind == "choice" else list(getattr(self, self.kind))


class TuneConfig(Section):
    """A hyperparameter search (KerasTuner) before train; no space: no search, train uses
    its config as written."""

    space: dict[str, SearchDimension] = Field(
        default_factory=dict,
        description="Dotted config key -> range, e.g. train.optimizer.learning_rate: "
                    "{log_uniform: [1e-4, 1e-2]}, model.kind: {choice: [cnn, deep_cnn]}.")
    algorithm: Literal["random", "bayesian", "hyperband"] = "random"
    max_trials: int = Field(10, gt=0, description="Trials to run (hyperband: its epoch "
                                                  "budget decides instead).")
    epochs: int = Field(5, gt=0, description="Epochs per trial (hyperband: the most a "
                                             "trial gets).")
    objective: str = Field("val_accuracy", description="A metric train records: loss, "
                                                       "val_loss, or val_/train.metrics.")
    seed: int = 42

    @field_validator("space")
    @classmethod
    def _tunable_keys(cls, value: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        for key in value:
            if key.split(".")[0] not in TUNABLE_SECTIONS or key in UNTUNABLE or "." not in key:
                raise ValueError(f"{key!r} cannot be searched; search keys of "
                                 f"{' and '.join(TUNABLE_SECTIONS)} (not "
                                 f"{', '.join(sorted(UNTUNABLE))}), e.g. "
                                 "train.optimizer.learning_rate")
        return value

    def direction(self) -> str:
        return "min" if self.objective.endswith("loss") else "max"


def apply_values(sections: dict[str, Section], values: dict[str, Any]) -> dict[str, Section]:
    """The sections with dotted `values` set (e.g. {'train.optimizer.learning_rate':
    0.01}), validated again: a value a key does not accept raises ValueError."""
    trees = {name: section.model_dump(mode="json", by_alias=True)
             for name, section in sections.items()}
    for key, value in values.items():
        name, *path = key.split(".")
        node = trees[name]
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"{key}: {'.'.join([name, *path[:path.index(part) + 1]])} "
                                 "is not a section")
            node = node[part]
        if path[-1] not in node:
            raise ValueError(f"{key}: no such key (keys of {'.'.join([name, *path[:-1]])}: "
                             f"{', '.join(sorted(node))})")
        node[path[-1]] = value
    return {name: type(sections[name]).model_validate(trees[name]) for name in sections}


def describe_values(values: dict[str, Any]) -> str:
    """'train.optimizer.learning_rate=0.002, model.kind=cnn' (4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items()) or "no values"


class ThresholdConfig(Section):
    min: Optional[float] = Field(None, description="Absolute lower bound.")
    max: Optional[float] = Field(None, description="Absolute upper bound.")
    max_drop: Optional[float] = Field(None, ge=0.0, description="Allowed drop vs the baseline.")
    slices: Optional[list[str]] = Field(None, description="Also check these slices, e.g. "
                                                          "['label']; default: overall only.")


class EvaluateConfig(Section):
    """TFMA metrics, thresholds and the statistical gate against the baseline."""

    thresholds: dict[str, ThresholdConfig] = Field(
        {"accuracy": ThresholdConfig(min=0.5)},
        description=f"Metric -> bounds; metrics: {', '.join(EVALUATE_METRICS)} (accuracy and "
                    "top_k_accuracy are shares, in [0, 1]).")
    top_k: int = Field(3, gt=0)
    slice_features: list[str] = Field([], description="Raw features to slice by, e.g. source.")
    gate: Literal["paired", "point", "lower_bound"] = Field(
        "paired", description="How 'not worse than the baseline' is decided on the same eval "
                              "examples. paired: refused only when the upper bound of the "
                              "accuracy difference's bootstrap confidence interval is below "
                              "-max_drop (significantly worse by more than the tolerance); a "
                              "difference within noise is blessed. point: the estimated "
                              "difference must be at least -max_drop. lower_bound: the "
                              "interval's lower bound must be.")
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    bootstrap_samples: int = Field(1000, gt=0)
    min_class_recall: Optional[float] = Field(None, ge=0.0, le=1.0)

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict[str, ThresholdConfig]
                          ) -> dict[str, ThresholdConfig]:
        unknown = sorted(set(value) - set(EVALUATE_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; thresholds apply to the metrics "
                             f"evaluate computes: {', '.join(EVALUATE_METRICS)}")
        for name, threshold in value.items():
            low, high = EVALUATE_METRICS[name]
            within = f"in [{low:g}, {high:g}]" if high < math.inf else f">= {low:g}"
            for key in ("min", "max"):
                bound = getattr(threshold, key)
                if bound is not None and not low <= bound <= high:
                    example = f"; e.g. {key}: 0.8" if high == 1.0 else ""
                    raise ValueError(f"{name}.{key} {bound:g} is outside the values {name} "
                                     f"takes ({within}){example}")
            if threshold.max_drop is not None and threshold.max_drop > high - low:
                raise ValueError(f"{name}.max_drop {threshold.max_drop:g} is more than {name} "
                                 f"can drop ({within}); e.g. max_drop: 0.02")
            if threshold.min is not None and threshold.max is not None \
                    and threshold.min > threshold.max:
                raise ValueError(f"{name}.min {threshold.min:g} is above {name}.max "
                                 f"{threshold.max:g}: no value passes")
        return value

    _moved: ClassVar[dict[str, str]] = {
        "latency_budget_ms": "latency_budget_ms moved to its own section: write "
                             "infra_validate: {latency_budget_ms: ...}"}


class InfraValidateConfig(Section):
    """The serving probe before a push: load the SavedModel in a fresh process, call
    both signatures on a few eval examples."""

    latency_budget_ms: float = Field(2000.0, gt=0.0, description="Budget for one batch of "
                                                                 "probe examples per signature.")


class VertexPushConfig(Section):
    """Also upload each pushed version to Vertex AI Model Registry (untested live)."""

    project: str
    region: str = "us-central1"
    serving_image: Optional[str] = Field(
        None, description="Serving container; default: TF Serving of the TensorFlow version "
                          "that built the model (Vertex's prebuilt tf2 image up to 2.15, else "
                          "REGION-docker.pkg.dev/PROJECT/imgpipe/tensorflow-serving:VERSION, "
                          "see deploy/Dockerfile.serving). A prebuilt image of another "
                          "TensorFlow version is refused.")
    endpoint: Optional[str] = Field(
        None, description="Vertex AI endpoint where the endpoint_alias's version serves, with "
                          "all the traffic (`models promote --canary N` gives another alias's "
                          "version N%): a display name (created when missing) or "
                          "projects/P/locations/REGION/endpoints/ID. Unset: nothing is deployed.")
    endpoint_alias: str = Field("production", description="The alias the endpoint serves.")
    machine_type: str = Field("n1-standard-2", description="Each deployed version's machine.")
    min_replica_count: int = Field(1, ge=1)
    max_replica_count: int = Field(1, ge=1)
    service_account: Optional[str] = Field(
        None, description="The service account each deployed version's container runs as "
                          "(Endpoint.deploy's service_account); default: kfp.service_account "
                          "with kfp.backend vertex. Unset: Vertex AI's default identity, which "
                          "reads only the version's own copy (AIP_STORAGE_URI), what the TF "
                          "Serving container serves from.")

    @model_validator(mode="after")
    def _endpoint(self) -> "VertexPushConfig":
        where = self.endpoint
        if where is not None and (not where.strip() or '"' in where or (
                where.startswith("projects/") and not re.fullmatch(
                    rf"projects/[^/]+/locations/{re.escape(self.region)}/endpoints/[^/]+", where))):
            raise ValueError(f"endpoint {where!r}: give a display name (no '\"') or "
                             f"projects/P/locations/{self.region}/endpoints/ID (the region's)")
        problem = vertex_alias_problem(self.endpoint_alias)
        if problem or self.endpoint_alias == LATEST_ALIAS:
            raise ValueError(f"endpoint_alias {self.endpoint_alias!r}: "
                             + (problem or "'latest' is not an alias"))
        if self.max_replica_count < self.min_replica_count:
            raise ValueError("max_replica_count is below min_replica_count")
        if self.service_account is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+",
                                                                 self.service_account):
            raise ValueError(f"service_account {self.service_account!r} is not a service "
                             "account email; use e.g. serving@PROJECT.iam.gserviceaccount.com")
        return self


class PushConfig(Section):
    """Where blessed models go (TF Serving layout) and which alias moves with them."""

    destination: PathText = Field("./serving", description="Local folder or gs:// path (TF Serving "
                                                      "layout); also the registry root."
                                                      + PATH_HELP)
    model_name: Optional[str] = Field(None, description="Registry name; default: the "
                                                        "pipeline name.")
    promote_to: Optional[str] = Field(None, description="Alias to move to each pushed version, "
                                                        "e.g. staging.")
    baseline_alias: str = Field("production", description="The evaluator's baseline: the "
                                                          "version holding this alias.")
    vertex: Optional[VertexPushConfig] = None

    @field_validator("model_name", "promote_to", "baseline_alias")
    @classmethod
    def _identifiers(cls, value: Optional[str], info) -> Optional[str]:
        if info.field_name != "model_name" and value == LATEST_ALIAS:
            raise ValueError(f"'{LATEST_ALIAS}' always means the newest version and cannot be "
                             "moved or compared against; use an alias such as staging or "
                             "production")
        return identifier(value, info.field_name)

    @field_validator("destination")
    @classmethod
    def _destination_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("destination is empty; give a folder or gs:// path")
        return value


class InferConfig(Section):
    """Batch inference after push (TFX's BulkInferrer): the infer step scores unlabeled
    images with the model the run just pushed. Without `source` the step is not part
    of the run."""

    source: Optional[PathText] = Field(
        None, description="Images to score: a folder (searched recursively), a CSV/JSONL "
                          "manifest with a 'path' column, or a pattern with {SPAN} or "
                          "{YYYY}{MM}{DD} (and {VERSION}), of which the newest drop is "
                          "scored. Unset: no infer step." + PATH_HELP)
    batch_size: int = Field(64, ge=1, description="Images per model call.")
    top_k: int = Field(3, ge=1, description="Classes listed per image, most likely first.")

    @field_validator("source")
    @classmethod
    def _source(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("source is empty; name a folder, a manifest or a {SPAN} "
                             "pattern, or leave infer.source out (no infer step)")
        if "{" in value:                  # spans.py loads only for a pattern
            from components import spans
            from components.errors import ConfigError

            if spans.has_pattern(value):
                try:
                    spans.Pattern.parse(value)
                except ConfigError as exc:   # its words name data.source
                    raise ValueError(str(exc).removeprefix(f"data.source {value!r} ")
                                     .rstrip(".")) from None
        return value


class BeamConfig(Section):
    """Beam runner for the data-parallel steps; options pass through to PipelineOptions."""

    runner: str = Field(
        "DirectRunner", description="DirectRunner (in-process, on Beam's FnApiRunner), "
                                    "DataflowRunner, or any Beam runner name.")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, value: str) -> str:
        if value not in BEAM_RUNNERS and "." not in value:
            raise ValueError(f"unknown Beam runner {value!r}; use one of "
                             f"{', '.join(BEAM_RUNNERS[:4])} ... or a class path "
                             "(package.module.MyRunner)")
        return value

    @property
    def remote(self) -> bool:
        """Whether the runner's workers run elsewhere (Dataflow, Flink, Spark ...)."""
        return self.runner not in LOCAL_RUNNERS

    def pipeline_args(self) -> list[str]:
        """The options as `--key=value` flags for `PipelineOptions`. DirectRunner maps to
        the FnApiRunner it would pick anyway: Beam 2.77's DirectRunner first tries to
        download and start the Prism runner binary, which costs time offline and, online,
        would run the steps on a different engine than the one measured here."""
        runner = "FnApiRunner" if self.runner == "DirectRunner" else self.runner
        args = [f"--runner={runner}"]
        for key, value in sorted(self.options.items()):
            if isinstance(value, bool):
                if value:
                    args.append(f"--{key}")
            elif isinstance(value, (list, tuple)):
                args.extend(f"--{key}={item}" for item in value)
            else:
                args.append(f"--{key}={value}")
        return args
