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
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from components.config.data import AUTO, BUILTIN_PREFIX, DATA_SHAPE_KEYS, DataConfig
from components.config.beam import BeamConfig
from components.config.evaluate import EvaluateConfig
from components.config.ingest import IngestConfig
from components.config.infer import InferConfig
from components.config.infra_validate import InfraValidateConfig
from components.config.model import ModelConfig
from components.config.push import PushConfig, vertex_alias_problem
from components.config.base import Section, expand_path, identifier, image_reference
from components.config.train import TrainConfig, decision_line
from components.config.transform import TransformConfig
from components.config.tune import TuneConfig, apply_values
from components.config.validate import ValidateConfig
from components.errors import ConfigError



# Beam options naming the image Dataflow workers run (the second is its older name).
DATAFLOW_IMAGE_OPTIONS = ("sdk_container_image", "worker_harness_container_image")
# Where the compiled pipeline runs (kfp.backend): Vertex AI Pipelines, or Kubeflow
# Pipelines open source on a Kubernetes cluster.
VERTEX, KUBEFLOW = "vertex", "kubeflow"
# Vertex AI's NVIDIA accelerator names (aiplatform_v1 AcceleratorType). On GKE each is a
# node label value, `cloud.google.com/gke-accelerator: nvidia-tesla-t4` (the Compute
# Engine accelerator type: the name in lower case, '-' for '_').
NVIDIA_ACCELERATORS = ("NVIDIA_TESLA_K80", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_V100",
                       "NVIDIA_TESLA_P4", "NVIDIA_TESLA_T4", "NVIDIA_TESLA_A100",
                       "NVIDIA_A100_80GB", "NVIDIA_L4", "NVIDIA_H100_80GB",
                       "NVIDIA_H100_MEGA_80GB", "NVIDIA_H200_141GB", "NVIDIA_B200",
                       "NVIDIA_GB200", "NVIDIA_RTX_PRO_6000")


class VertexJobConfig(Section):
    """Run a step as a Vertex AI custom job (Vertex AI Pipelines only), for what a
    pipeline task cannot ask for: several replicas (multi-worker training; Vertex sets
    TF_CONFIG) or a machine type with a TPU topology."""

    machine_type: str = Field("n1-standard-8", description="e.g. ct5lp-hightpu-4t for TPU v5e")
    replica_count: int = Field(1, ge=1, description="Workers (the first is the chief).")
    tpu_topology: Optional[str] = Field(None, description="e.g. 2x2 (with a TPU accelerator).")


# The Kubernetes quantities KFP's set_cpu_*/set_memory_* accept (kfp.dsl.PipelineTask
# _validate_cpu_request_limit / _validate_memory_request_limit): CPUs as a number or
# millicores, memory as whole bytes with an optional decimal or binary suffix.
CPU_QUANTITY = re.compile(r"([0-9]*[.])?[0-9]+m?")
MEMORY_QUANTITY = re.compile(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?")


class KfpStepConfig(Section):
    """Resources and behaviour of one step on Kubeflow / Vertex AI Pipelines."""

    cpu_request: Optional[str] = Field(None, description="CPUs: a number or millicores, "
                                                         "e.g. '2', '1.5', '500m'")
    cpu_limit: Optional[str] = Field(None, description="e.g. '4'")
    memory_request: Optional[str] = Field(None, description="Bytes with an optional suffix "
                                                            "(K, M, G, T, P, E or Ki ... Ei), "
                                                            "e.g. '4G', '512Mi'")
    memory_limit: Optional[str] = Field(None, description="e.g. '8G'")
    accelerator_type: Optional[str] = Field(None, description="e.g. NVIDIA_TESLA_T4, "
                                                              "TPU_V5_LITEPOD")
    accelerator_count: int = Field(1, ge=1)
    caching: bool = True
    retries: int = Field(0, ge=0)
    image: Optional[str] = Field(None, description="This step's image (default kfp.image), "
                                                   "e.g. a TPU image for train only.")
    vertex_job: Optional[VertexJobConfig] = None

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit",
                     mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        """`cpu_request: 2` in YAML is a number: the quantity '2'."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value:g}" if isinstance(value, float) else str(value)
        return value

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _cpu_quantity(cls, value: Optional[str], info) -> Optional[str]:
        if value is not None and not CPU_QUANTITY.fullmatch(value):
            raise ValueError(f"{info.field_name} {value!r} is not a CPU quantity; write a "
                             "number of CPUs or millicores, e.g. '2', '1.5' or '500m'")
        return value

    @field_validator("memory_request", "memory_limit")
    @classmethod
    def _memory_quantity(cls, value: Optional[str], info) -> Optional[str]:
        if value is not None and not MEMORY_QUANTITY.fullmatch(value):
            raise ValueError(f"{info.field_name} {value!r} is not a memory quantity; write "
                             "whole bytes with an optional suffix K, M, G, T, P, E or Ki, "
                             "Mi, Gi, Ti, Pi, Ei, e.g. '4G' or '512Mi'")
        return value

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: Optional[str]) -> Optional[str]:
        return image_reference(value, "image")

    @property
    def gpu(self) -> bool:
        """Whether the step asks for an NVIDIA GPU (Vertex AI's names: NVIDIA_TESLA_T4 ...)."""
        return (self.accelerator_type or "").upper().startswith("NVIDIA_")


DEFAULT_KFP_STEPS = {"ingest": {"retries": 2}, "transform": {"retries": 2},
                     "train": {"memory_request": "8G"}, "evaluate": {"retries": 1}}


class KfpConfig(Section):
    """Kubeflow Pipelines / Vertex AI Pipelines: images and per-step resources. Only
    read when compiling: a compiled pipeline carries them."""

    backend: Literal["vertex", "kubeflow"] = Field(
        VERTEX, description="Where the compiled pipeline runs: vertex (Vertex AI Pipelines) "
                            "or kubeflow (Kubeflow Pipelines open source: GPUs as "
                            "nvidia.com/gpu with a GKE node selector; no TPUs, no vertex_job).")
    image: str = Field("us-docker.pkg.dev/my-project/imgpipe/imgpipe:0.1.0",
                       description="The image steps run in (deploy/Dockerfile), unless a "
                                   "step names its own. The default is a placeholder no "
                                   "registry holds: compile, submit and schedule refuse "
                                   "it unset.")
    service_account: Optional[str] = Field(
        None, description="The account the pipeline and its jobs run as: on vertex a "
                          "service account email (the pipeline run, a vertex_job custom job, "
                          "Dataflow workers), on kubeflow a Kubernetes service account (the "
                          "run's pods). submit/schedule --service-account defaults to it.")
    gpu_image: Optional[str] = Field(
        None, description="The image of a step that asks for a GPU (accelerator_type "
                          "NVIDIA_*) and names no image of its own (deploy/Dockerfile.gpu); "
                          "compile refuses such a step without it.")
    steps: dict[str, KfpStepConfig] = Field(
        default_factory=lambda: {name: KfpStepConfig(**values)
                                 for name, values in DEFAULT_KFP_STEPS.items()},
        description="Per step (ingest, validate, transform, train, evaluate, infra_validate, "
                    "push, report, resolve); merged key by key into the defaults "
                    f"{DEFAULT_KFP_STEPS}.")

    @field_validator("image", "gpu_image")
    @classmethod
    def _image_reference(cls, value: Optional[str], info) -> Optional[str]:
        return image_reference(value, info.field_name)

    @field_validator("steps", mode="before")
    @classmethod
    def _merge_defaults(cls, value: Any) -> Any:
        """`--set kfp.steps.train.accelerator_type=X` keeps train's memory request."""
        if not isinstance(value, dict):
            return value
        merged = {name: dict(values) for name, values in DEFAULT_KFP_STEPS.items()}
        for name, values in value.items():
            if isinstance(values, KfpStepConfig):
                values = values.model_dump(exclude_unset=True)
            if not isinstance(values, dict):
                return value      # let validation say what is wrong
            merged.setdefault(name, {}).update(values)
        return merged

    def step(self, name: str) -> KfpStepConfig:
        return self.steps.get(name, KfpStepConfig())

    def image_for(self, name: str) -> str:
        """The step's own image, else kfp.gpu_image for a step that asks for a GPU, else
        kfp.image. A GPU step with neither is refused: in the CPU image TensorFlow has no
        CUDA and would train on the CPU of the GPU machine."""
        step = self.step(name)
        if step.image:
            return step.image
        if not step.gpu:
            return self.image
        if not self.gpu_image:
            raise ConfigError(f"kfp.steps.{name}.accelerator_type {step.accelerator_type} asks "
                              f"for a GPU, but the step names no image and kfp.gpu_image is "
                              f"unset, so it would run in kfp.image {self.image} (no CUDA: it "
                              "would train on the CPU); build deploy/Dockerfile.gpu and set "
                              f"kfp.gpu_image (or kfp.steps.{name}.image) to its tag.")
        return self.gpu_image


# The defaults for 3-channel photos (data.channels: 3), under the keys a config gives:
# trained from scratch (no ImageNet weights are needed), an Xception-style net with
# augmentation (train.augment auto), a cosine schedule with warmup and label smoothing.
# Measured by bench/accuracy.py (configs/photos.yaml). The course's models keep their
# exact architectures and training as explicit kinds: a config naming model.kind gets
# neither PHOTO_MODEL nor PHOTO_TRAIN.
PHOTO_MODEL = {"kind": "xception"}
PHOTO_TRAIN = {"epochs": 30, "batch_size": 32, "label_smoothing": 0.1,
               "optimizer": {"learning_rate": 0.002, "schedule": "cosine", "warmup_epochs": 2}}


def data_and_defaults(tree: Any) -> Any:
    """The config tree with `auto` data keys decided from the data (recorded in
    data.decided), the photo defaults applied where they apply, and which defaults
    filled the model and train keys, and why, recorded in train.defaults. A tree that
    carries its records (a config as a run recorded it) keeps them: its values are all
    set by then, and deciding again would read its model.kind as named."""
    data = tree.get("data", {}) if isinstance(tree, dict) else None
    if isinstance(data, DataConfig):
        data = data.model_dump(mode="python", by_alias=True, exclude_unset=True)
    if not isinstance(data, dict):
        return tree
    auto = [key for key in DATA_SHAPE_KEYS if data.get(key, AUTO) == AUTO]
    if auto:
        try:
            checked = DataConfig.model_validate({**data, "decided": None})
        except ValidationError:
            return tree             # the section's own check says what is wrong, and where
        from components.data import data_shape

        shape = data_shape.decide(checked, None if "channels" in auto else checked.channels)
        values = {"channels": shape.channels, "image_size": list(shape.image_size)}
        data = {**data, **{key: values[key] for key in auto}}
        data["decided"] = {"keys": auto, "basis": shape.basis, "unread": shape.unread}
    tree = {**tree, "data": data}
    train = tree.get("train", {})
    if isinstance(train, dict) and train.get("defaults") is not None:
        return tree
    regime = _regime(tree)
    tree = photo_defaults(tree)
    if isinstance(tree.get("train", {}), dict):
        tree["train"] = {**tree.get("train", {}), "defaults": regime}
    return tree


def _regime(tree: dict[str, Any]) -> dict[str, Any]:
    """train.defaults for a tree before the photo defaults: which defaults fill the keys
    PHOTO_MODEL and PHOTO_TRAIN name that the tree does not set, their values, and why."""
    after = photo_defaults(tree)
    model = tree.get("model", {})
    kind = model.get("kind") if isinstance(model, dict) else None
    photo = after is not tree
    given = flatten({"model": tree.get("model", {}), "train": tree.get("train", {})})
    if photo:
        filled = flatten({"model": after.get("model", {}), "train": after.get("train", {})})
        why = "3 channels, no model.kind named"
    else:
        filled = flatten({"model": ModelConfig().model_dump(mode="json"),
                          "train": TrainConfig().model_dump(mode="json")})
        why = (f"model.kind {kind} is named" if tree["data"].get("channels") == 3 else
               "1 channel: they are for 3-channel photos")
    keys = {key: filled[key] for key in flatten({"model": PHOTO_MODEL, "train": PHOTO_TRAIN})
            if key not in given and key in filled}
    return {"applied": "photo" if photo else "course", "why": why, "keys": keys}


def photo_defaults(tree: Any) -> Any:
    """For 3-channel data whose config names no model.kind: PHOTO_MODEL under its model
    keys and PHOTO_TRAIN under its train keys; other trees as they are."""
    data = tree.get("data") if isinstance(tree, dict) else None
    if not isinstance(data, dict) or data.get("channels") != 3:
        return tree
    model = tree.get("model", {})
    if not isinstance(model, dict) or "kind" in model:
        return tree
    tree = {**tree, "model": {**PHOTO_MODEL, **model}}
    train = tree.get("train", {})
    if isinstance(train, dict):
        optimizer = train.get("optimizer", {})
        # another optimizer keeps its own rate and schedule, not the photos' adam ones
        if isinstance(optimizer, dict) and optimizer.get("name", "adam") == "adam":
            optimizer = {**PHOTO_TRAIN["optimizer"], **optimizer}
        tree["train"] = {**PHOTO_TRAIN, **train, "optimizer": optimizer}
    return tree


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


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}: dotted keys for diffs."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section; "
                              f"use --set {'.'.join(keys[:keys.index(key) + 1])}=VALUE.")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` -> (dotted key, YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not re.match(r"^[A-Za-z_][\w.]*$", key.strip()):
        raise ConfigError(f"--set {text!r} is not KEY=VALUE; write e.g. "
                          "--set train.epochs=5 or --set data.image_size=[28,28].")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except DuplicateKey as exc:
        raise ConfigError(f"--set {text!r}: {exc}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc.problem}).") from exc
    _check_size(value, f"--set {key.strip()}")
    return key.strip(), value


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
        tree = _read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        if not isinstance(tree, dict):
            break
        _set_dotted(tree, key, value)
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


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000


class DuplicateKey(yaml.YAMLError):
    """A mapping names a key twice: YAML would keep the second value and drop the first."""


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the
    last and silently drops the first, a whole section with it). Checked on the
    composed nodes, before construction flattens `<<` merges, whose keys may be
    overridden: that is what a merge is for."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            self._check_duplicates(node, [], set())
        return node

    def _check_duplicates(self, node: yaml.Node, path: list[str], seen: set[int]) -> None:
        if id(node) in seen:                 # an alias: its node was checked where defined
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_duplicates(item, [*path[:-1], f"{path[-1]}[{index}]"]
                                       if path else [f"[{index}]"], seen)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or \
                    not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node.start_mark)
            except TypeError:                # an unhashable key: construction says so
                continue
            if earlier is not key_node.start_mark:
                raise DuplicateKey(f"key '{'.'.join([*path, str(key)])}' is given twice, at "
                                   f"{_place(earlier, key_node.start_mark)}; YAML would keep "
                                   "only the second, silently dropping the first (and every "
                                   "key under it): merge the two into one")
            self._check_duplicates(value_node, [*path, str(key)], seen)


def _place(first: yaml.Mark, second: yaml.Mark) -> str:
    """'line 2 and line 9', or with columns when both are on one line."""
    if first.line == second.line:
        return f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
    return f"line {first.line + 1} and line {second.line + 1}"


def _load_yaml(text: str) -> Any:
    """YAML text as Python values: safe (no objects), and no key given twice."""
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: str) -> Any:
    """A config file's YAML, loaded safely: no Python objects, at most 1 MiB, and at most
    100,000 values once YAML aliases are expanded (an alias bomb stops here instead of
    growing memory without bound in whatever walks the tree next)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found; pass the path of a YAML "
                          "config, e.g. configs/fonts.yaml.")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES // 1024} KiB; a pipeline config "
                          "is a few lines of YAML: check that this is the right file.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8.") from exc
    try:
        tree = _load_yaml(text) or {}
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())   # one line
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}; fix the syntax.") from exc
    _check_size(tree, path)
    return tree


def _check_size(tree: Any, where: str) -> None:
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_CONFIG_VALUES:,} values "
                              "(YAML aliases that repeat each other?); write the config out "
                              "without them.")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


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
