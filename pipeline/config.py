"""The one typed pipeline config: loaded from YAML once, overridden with --set, checked.

Every mistake becomes a ConfigError whose message is one line: which file and key,
what was given, and how to fix it.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from typing import Any, Union

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from components.config.beam import BeamConfig
from components.config.base import Section, expand_path, identifier
from components.config.data import BUILTIN_PREFIX, DataConfig
from components.config.evaluate import EvaluateConfig
from components.config.infer import InferConfig
from components.config.infra_validate import InfraValidateConfig
from components.config.ingest import IngestConfig
from components.config.model import ModelConfig
from components.config.push import PushConfig, vertex_alias_problem
from components.config.train import TrainConfig, decision_line
from components.config.transform import TransformConfig
from components.config.tune import TuneConfig, apply_values
from components.config.validate import ValidateConfig
from components.errors import ConfigError
from pipeline.config_defaults import data_and_defaults
from pipeline.config_kfp import KUBEFLOW, NVIDIA_ACCELERATORS, VERTEX, KfpConfig
from pipeline.config_yaml import parse_override, read_yaml, set_dotted

# Beam options naming the image Dataflow workers run (the second is its older name).
DATAFLOW_IMAGE_OPTIONS = ("sdk_container_image", "worker_harness_container_image")


class PipelineConfig(Section):
    """A whole pipeline: one section per step."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              title="imgpipe pipeline config")

    name: str = Field("imgpipe", description="Pipeline name; also the model name in the registry.")
    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    transform: TransformConfig = TransformConfig()
    model: ModelConfig = ModelConfig()
    tune: TuneConfig = TuneConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    infra_validate: InfraValidateConfig = InfraValidateConfig()
    push: PushConfig = PushConfig()
    infer: InferConfig = InferConfig()
    beam: BeamConfig = BeamConfig()
    kfp: KfpConfig = KfpConfig()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return identifier(value, "name (it names the model in the registry)")

    @model_validator(mode="before")
    @classmethod
    def _data_and_defaults(cls, tree: Any) -> Any:
        return data_and_defaults(tree)

    @model_validator(mode="after")
    def _remote_workers_reach_their_paths(self) -> "PipelineConfig":
        """A remote Beam runner's workers see none of this machine's (or container's)
        files: what they read and their temp location must be on shared storage."""
        if not self.beam.remote:
            return self
        source = self.data.source
        if not (source.startswith(BUILTIN_PREFIX) or "://" in source):
            raise ValueError(f"beam.runner {self.beam.runner} runs workers elsewhere, which "
                             f"cannot read data.source {source!r}; put the data in a bucket "
                             "(gs://...)")
        infer = self.infer.source
        if infer is not None and "://" not in infer:
            raise ValueError(f"beam.runner {self.beam.runner} runs workers elsewhere, which "
                             f"cannot read infer.source {infer!r}; put the images in a bucket "
                             "(gs://...)")
        # Unset, the temp location is a folder under the pipeline root next to each
        # step's outputs (pipeline/invoke.py: beam_for_outputs).
        temp = self.beam.options.get("temp_location")
        if temp is not None and "://" not in str(temp):
            raise ValueError(f"beam.runner {self.beam.runner} runs workers elsewhere, which "
                             f"cannot reach beam.options.temp_location {temp!r}; use shared "
                             "storage (gs://BUCKET/tmp) or leave it unset (then it is under "
                             "the pipeline root)")
        if self.beam.runner == "DataflowRunner" and not any(
                self.beam.options.get(key) for key in DATAFLOW_IMAGE_OPTIONS):
            raise ValueError("beam.runner DataflowRunner needs beam.options.sdk_container_image "
                             "(the step image, deploy/Dockerfile): Dataflow's default workers "
                             "lack imgpipe and its pinned libraries")
        return self

    @model_validator(mode="after")
    def _kfp_steps_fit_the_backend(self) -> "PipelineConfig":
        """Kubeflow Pipelines open source schedules pods: a GPU is a Kubernetes resource
        on a node with that GPU, and there is no Vertex TPU or custom job to ask for."""
        if self.kfp.backend != KUBEFLOW:
            return self
        for name, step in sorted(self.kfp.steps.items()):
            kind = (step.accelerator_type or "").upper()
            if kind.startswith("TPU"):
                raise ValueError(f"kfp.steps.{name}.accelerator_type {step.accelerator_type} is "
                                 "a Vertex AI TPU, which kfp.backend kubeflow cannot request; "
                                 "use kfp.backend vertex, or a GPU (e.g. NVIDIA_TESLA_T4)")
            if kind and kind not in NVIDIA_ACCELERATORS:
                raise ValueError(f"kfp.steps.{name}.accelerator_type {step.accelerator_type} is "
                                 "not a GPU kfp.backend kubeflow can select nodes for; use one "
                                 f"of {', '.join(NVIDIA_ACCELERATORS)}")
            if step.vertex_job is not None:
                raise ValueError(f"kfp.steps.{name}.vertex_job runs the step as a Vertex AI "
                                 "custom job, which kfp.backend kubeflow does not launch; drop "
                                 f"kfp.steps.{name}.vertex_job (one pod) or use kfp.backend "
                                 "vertex")
        return self

    @model_validator(mode="after")
    def _service_account_fits_the_backend(self) -> "PipelineConfig":
        """Vertex runs pipelines and jobs as a Google service account (an email); KFP
        as a Kubernetes service account (a DNS name, never with '@')."""
        account = self.kfp.service_account
        if account is None:
            return self
        if self.kfp.backend == VERTEX and "@" not in account:
            raise ValueError(f"kfp.service_account {account!r} is not a service account email, "
                             "which Vertex AI runs pipelines and jobs as; use e.g. "
                             "runner@PROJECT.iam.gserviceaccount.com")
        if self.kfp.backend == KUBEFLOW and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?",
                                                              account):
            raise ValueError(f"kfp.service_account {account!r} is not a Kubernetes service "
                             "account name, which kfp.backend kubeflow runs pods as; use e.g. "
                             "pipeline-runner (bound to a Google service account through "
                             "Workload Identity)")
        return self

    @model_validator(mode="after")
    def _vertex_deploys_as_the_pipeline(self) -> "PipelineConfig":
        """push.vertex.service_account defaults to the account the pipeline runs as on
        Vertex: the deployed containers then read what the pipeline wrote."""
        vertex = self.push.vertex
        if vertex is not None and vertex.service_account is None and \
                self.kfp.backend == VERTEX and self.kfp.service_account:
            vertex.service_account = self.kfp.service_account
        return self

    @model_validator(mode="after")
    def _aliases_fit_vertex(self) -> "PipelineConfig":
        """With push.vertex every alias the pipeline moves or reads is also a Vertex AI
        version alias: one Vertex refuses would fail the push after the model is
        uploaded, or the promotion after the registry moved."""
        if self.push.vertex is None:
            return self
        for key in ("promote_to", "baseline_alias"):
            alias = getattr(self.push, key)
            problem = alias and vertex_alias_problem(alias)
            if problem:
                raise ValueError(f"push.{key} {alias!r} is not an alias Vertex AI accepts, and "
                                 f"push.vertex moves the aliases there too: {problem}")
        return self

    @model_validator(mode="after")
    def _search_space_fits_the_config(self) -> "PipelineConfig":
        """Every searched key exists, its range draws values of the key's type, and the
        whole config (every cross-section rule too) accepts each choice and each end of
        each range, the objective is a metric train records: a mistake stops the run
        before any trial."""
        tune = self.tune
        if tune.space and self.train.hyperparameters:
            raise ValueError("tune.space and train.hyperparameters both given: search "
                             "(tune.space) or reuse an earlier search "
                             "(train.hyperparameters), not both")
        sections = {"model": self.model, "train": self.train}
        base = self.model_dump(mode="json", by_alias=True)
        base["tune"]["space"] = {}                  # each value alone, without recursing
        for key, dimension in tune.space.items():
            _range_fits_the_type(key, dimension.kind, dimension.endpoints())
            for value in dimension.endpoints():
                try:
                    trial = apply_values(sections, {key: value})
                    PipelineConfig.model_validate(
                        {**base, **{name: section.model_dump(mode="json", by_alias=True)
                                    for name, section in trial.items()}})
                except ValidationError as exc:
                    first = exc.errors()[0]
                    raise ValueError(f"tune.space.{key}: {value!r} is not a valid value: "
                                     f"{first['msg'].removeprefix('Value error, ')}") from None
        if tune.space:
            recorded = {"loss", *self.train.metrics}
            allowed = sorted(recorded | {f"val_{name}" for name in recorded})
            if tune.objective not in allowed:
                raise ValueError(f"tune.objective {tune.objective!r} is not a metric train "
                                 f"records; use one of {', '.join(allowed)}")
        return self

    @model_validator(mode="after")
    def _one_start(self) -> "PipelineConfig":
        """A warm start copies every layer, a transfer base's too: no model.weights."""
        if self.train.warm_start and self.model.weights:
            raise ValueError(f"model.weights {self.model.weights!r} and train.warm_start "
                             f"{self.train.warm_start!r} both given: the warm start copies "
                             "every layer, a transfer base's too; drop model.weights")
        return self

    @model_validator(mode="after")
    def _image_fits_max_pixels(self) -> "PipelineConfig":
        height, width = self.data.image_size
        if height * width > self.ingest.max_pixels:
            raise ValueError(f"data.image_size {height}x{width} is {height * width:,} pixels, "
                             f"over ingest.max_pixels {self.ingest.max_pixels:,}; the transform "
                             "would materialize images larger than any input may be. Use a "
                             "smaller image_size")
        return self

    @model_validator(mode="after")
    def _model_fits_the_images(self) -> "PipelineConfig":
        """A model kind that cannot take (or cannot fit in memory at) this image size
        stops here, not after ingest and transform."""
        from components.trainer import models

        try:
            models.check_input(self.model, (*self.data.image_size, self.data.channels))
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def model_name(self) -> str:
        """The model's name in the registry: `push.model_name`, else the pipeline name."""
        return self.push.model_name or self.name

    def decision_line(self) -> str:
        """The one line a run starts with: the data's shape (set, or decided from the data
        and from what) and which defaults filled the model and train keys, and why."""
        return decision_line(self.data.model_dump(mode="json"),
                             self.train.model_dump(mode="json")) or ""

    def section(self, name: str) -> Section:
        """A section by its YAML key (`validate` included), as a step reads it: `push`
        with `model_name` filled in (`model_name`, the one fallback)."""
        if name == "push":
            return self.push.model_copy(update={"model_name": self.model_name})
        return getattr(self, "validate_" if name == "validate" else name)

    def to_dict(self) -> dict[str, Any]:
        """The full config with defaults, as YAML keys."""
        return self.model_dump(mode="json", by_alias=True)


def _key_type(key: str) -> Any:
    """The annotation of a dotted config key (`train.optimizer.learning_rate` -> float)."""
    annotation: Any = PipelineConfig
    for part in key.split("."):
        fields = getattr(annotation, "model_fields", None)
        if not isinstance(annotation, type) or fields is None or part not in fields:
            return None                    # apply_values says which key does not exist
        annotation = fields[part].annotation
    return annotation


def is_section(key: str) -> bool:
    """Whether a dotted key (YAML names: `validate`, not `validate_`) names a section, a
    mapping of typed keys that `--set KEY={...}` merges into (`config_yaml.set_dotted`);
    a free-form mapping such as beam.options or data.spans is one value."""
    annotation: Any = PipelineConfig
    for part in key.split("."):
        fields = getattr(annotation, "model_fields", None)
        if fields is None:
            return False
        field = next((f for name, f in fields.items() if (f.alias or name) == part), None)
        if field is None:
            return False
        annotation = field.annotation
        if typing.get_origin(annotation) in (Union, types.UnionType):
            annotation = next((a for a in typing.get_args(annotation)
                               if isinstance(a, type) and issubclass(a, Section)), None)
    return isinstance(annotation, type) and issubclass(annotation, Section)


def _range_fits_the_type(key: str, kind: str, ends: list[Any]) -> None:
    """A range draws numbers: floats (uniform, log_uniform) only for a float key, whole
    numbers (int_uniform) for an int or float key; anything else is searched by choice."""
    if kind == "choice":
        return
    annotation = _key_type(key)
    if annotation is None:
        return
    args = [a for a in typing.get_args(annotation) if a is not type(None)] \
        if typing.get_origin(annotation) in (Union, types.UnionType) else [annotation]
    if float in args:
        return
    span = ", ".join(str(round(end)) for end in ends)
    if int in args:
        if kind != "int_uniform":
            raise ValueError(f"tune.space.{key}: {kind} draws fractional numbers and {key} "
                             f"takes whole numbers; use int_uniform: [{span}] or a choice "
                             "of integers")
        return
    raise ValueError(f"tune.space.{key}: {key} is not a number, so no {kind} range fits it; "
                     "list the values to try as choice: [...]")


PipelineConfig.model_config["populate_by_name"] = True
PipelineConfig.model_rebuild(force=True)


def section_types() -> dict[str, type]:
    """YAML section name -> its class (the step contract checks annotations with it)."""
    return {field.alias or name: field.annotation
            for name, field in PipelineConfig.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section)}


def _describe(error: dict[str, Any], where: str) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = error["loc"][:-1]
        allowed = _allowed_keys(parent)
        return (f"{where}: unknown key '{loc}'; valid keys here: {', '.join(allowed)}. "
                "Fix the spelling or remove it.")
    given = error.get("input")
    msg = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:             # a check across sections: its message says where
        return f"{where}: {msg}."
    return (f"{where}: {loc}: {msg} (got {json.dumps(given, default=str)}). "
            f"Fix '{loc}' in the config or pass --set {loc}=VALUE.")


def _allowed_keys(parent: tuple) -> list[str]:
    schema = PipelineConfig.model_json_schema(by_alias=True)
    node = schema
    for part in parent:
        props = node.get("properties", {})
        node = props.get(str(part), {})
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        elif "allOf" in node:
            node = schema["$defs"][node["allOf"][0]["$ref"].rsplit("/", 1)[-1]]
    return sorted(node.get("properties", {}))


def from_dict(tree: dict[str, Any], where: str = "config") -> PipelineConfig:
    """Validates a config tree; raises ConfigError naming the first bad key."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections "
                          f"(name, data, ingest, ...), got {type(tree).__name__}.")
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], where)) from exc


def load(path: str | None, overrides: list[str] = (), resolve_paths: bool = True
         ) -> PipelineConfig:
    """Loads a YAML config (or only defaults when `path` is None) and applies --set."""
    tree: dict[str, Any] = {}
    where = path or "defaults"
    if path is not None:
        tree = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        if not isinstance(tree, dict):
            break
        set_dotted(tree, key, value, is_section)
    where = where if not overrides else f"{where} (with --set)"
    if resolve_paths and path is not None:
        # before validation: `auto` data keys are decided from the files it names
        _resolve_source(tree, os.path.dirname(os.path.abspath(path)))
    config = from_dict(tree, where)
    # Compiling for a container keeps relative paths relative (to the image's WORKDIR),
    # and its files are the container's: only a config that runs here is checked for them.
    if resolve_paths:
        if path is not None:
            _resolve_paths(config, os.path.dirname(os.path.abspath(path)))
        _check_local_files(config, where)
    return config


def _check_local_files(config: PipelineConfig, where: str) -> None:
    """A local schema file that does not exist stops the run here, not after ingest (a
    bucket path is read where the step runs)."""
    schema = config.validate_.schema_path
    if schema and "://" not in schema and not os.path.isfile(schema):
        looked = "" if os.path.isabs(schema) else \
            f" (looked in {os.getcwd()} and beside the config)"
        raise ConfigError(f"{where}: validate.schema {schema!r} is not a file{looked}; give "
                          "the path of a TFMD schema text proto (e.g. one `imgpipe runs "
                          "show` lists under validate.schema), a gs:// path, or drop "
                          "validate.schema to infer the schema from the data.")


def _resolved(value: str | None, config_dir: str) -> str | None:
    """A relative path as found from the current directory, else from the config file's
    folder or its parent (so `imgpipe run /repo/configs/x.yaml` works anywhere)."""
    if not value or os.path.isabs(value) or "://" in value or ":" in value.split("/")[0]:
        return value
    # a span pattern (drops/{YYYY}-{MM}-{DD}/): the folder before its first part
    fixed = value.split("{", 1)[0].rsplit("/", 1)[0] if "{" in value else value
    if not fixed or os.path.exists(fixed):
        return value
    for base in (config_dir, os.path.dirname(config_dir)):
        if os.path.exists(os.path.join(base, fixed)):
            return os.path.join(base, value)
    return value


def _resolve_source(tree: Any, config_dir: str) -> None:
    """data.source in the YAML tree, variables expanded and resolved as `_resolve_paths`
    does (a value that does not expand is left for validation to name)."""
    data = tree.get("data") if isinstance(tree, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("source"), str):
        return
    try:
        data["source"] = _resolved(expand_path(data["source"]), config_dir)
    except ValueError:
        return


def _resolve_paths(config: PipelineConfig, config_dir: str) -> None:
    """Relative paths resolve against the current directory, else against the config
    file's folder or its parent (`_resolved`)."""
    config.data.source = _resolved(config.data.source, config_dir)
    config.validate_.schema_path = _resolved(config.validate_.schema_path, config_dir)


def json_schema() -> dict[str, Any]:
    """The JSON schema of the config file, as published in schemas/config.schema.json."""
    return PipelineConfig.model_json_schema(by_alias=True, mode="validation")
