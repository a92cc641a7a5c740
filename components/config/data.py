"""The `data` section: where the images come from and what shape the model sees."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union
from pydantic import Field, field_validator, model_validator

from components.config.base import PATH_HELP, PathText, Section


BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = ("fonts", "digits", "fashion_mnist", "shapes")
# Each built-in dataset's training images (before ingest's split), known without loading
# it: train's pre-run check reads them here, so its code key holds no dataset loader
# (components/data/datasets.py computes the fonts count and a test holds the two equal).
BUILTIN_TRAIN_IMAGES = {"fonts": 2790, "digits": 1797, "fashion_mnist": 60000, "shapes": 2000}
# Image files accepted from folders and manifests (ingest) and found in folders (predict).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp")
# Decompression-bomb guard for ingest and predict alike.
MAX_PIXELS = 50_000_000


# data.channels and data.image_size left `auto` (the default) are decided from the data
# when the pipeline config loads (pipeline/config_defaults.py,
# components/data/data_shape.py). A DataConfig built on its own (a step called directly)
# has no data to decide from and takes the course's values, the grayscale glyphs every
# course model is built for.
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
        description="builtin:fonts|digits|fashion_mnist|shapes, a folder of class folders, "
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
                          "dates (components/data/spans.py).")
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
        return checked_pattern(value)

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

    def for_span(self, path: str) -> "DataConfig":
        """This section for one data drop alone (a span `components.data.spans` found
        at `path`): its concrete path as the source and no `spans`, so the plain-source
        ingest code reads it unchanged."""
        tree = self.model_dump(mode="python")
        tree.update(source=path, spans=None)
        return type(self).model_validate(tree)

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


def checked_pattern(value: str) -> str:
    """A source with a span pattern ({SPAN}, {YYYY}...) that parses; pydantic adds the key
    and value to the problem (data.source, infer.source)."""
    if "{" in value:                  # spans.py loads only for a pattern
        from components.data import spans

        if spans.has_pattern(value):
            try:
                spans.Pattern.parse(value)
            except spans.PatternError as exc:
                raise ValueError(exc.problem) from None
    return value


def _checked_spans(value: Any, source: str) -> Any:
    """data.spans in canonical form, checked against data.source's pattern."""
    if value is None:
        return value
    from components.data import spans
    from components.errors import ConfigError

    if not spans.has_pattern(source):
        raise ValueError(f"given, but data.source {source!r} has no span pattern; "
                         "name the drops in data.source with {SPAN} (e.g. data/span-{SPAN}/) "
                         "or {YYYY}-{MM}-{DD}, or remove data.spans")
    try:
        return spans.check_spans(value, spans.Pattern.parse(source).kind)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
