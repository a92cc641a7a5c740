"""The `kfp` section: images and per-step resources of a compiled pipeline."""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from components.config.base import Section, image_reference
from components.errors import ConfigError

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
