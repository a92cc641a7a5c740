"""Vertex AI Model Registry, kept in step with our registry: each pushed version is
uploaded as a new version of one Vertex model, and moving an alias here (promote,
rollback, delete) moves it there. Untested against the live service (not reachable
from where this was built); every call is unit-tested against the real client
library's signatures with a recording fake.

Serving image: a model is served by TensorFlow Serving of the pipeline's TensorFlow
version (or of the model's, if newer): TF Serving loads SavedModels of its own or an
older TensorFlow, so one serving image covers the CPU/GPU images' models (2.21) and the
TPU image's (2.20). Vertex's prebuilt TF containers stop at 2.15 (2026-11), so the
default is a TF Serving image of that exact version mirrored into the project's
Artifact Registry (deploy/Dockerfile.serving), started with TF Serving's own REST
routes and a model config that serves exactly this version from the registry.
"""

from __future__ import annotations

import json
import re
from typing import Any

from components import fileio
from components.errors import ConfigError

RECORD = "vertex.json"     # next to a pushed version: where it went in Vertex
# The label each Vertex version carries: the imgpipe registry version it is. An upload
# looks for it first, so a version is never uploaded twice.
VERSION_LABEL = "imgpipe_version"
# The client library module to use instead of google.cloud.aiplatform (tests).
client_module: Any = None
PREBUILT = re.compile(r"/vertex-ai/prediction/tf2-(cpu|gpu)\.2-(\d+):")
NEWEST_PREBUILT_MINOR = 15
REST_PORT = 8501


def tensorflow_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("tensorflow")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def serving_version(model_tf: str | None, pipeline_tf: str | None = None) -> str:
    """The TensorFlow Serving version for a model built with `model_tf`: the pipeline's
    own TensorFlow (`pipeline_tf`, default the installed one: what deploy/Dockerfile.serving
    mirrors and what infra_validate loaded the model with), or the model's when that
    is newer. TF Serving loads SavedModels written by its own or an older TensorFlow, so
    a model trained in the TPU image (tensorflow-tpu 2.20) is served by the 2.21 image
    the deploy builds, never by a 2.20 image nobody built."""
    pipeline_tf = pipeline_tf or tensorflow_version()
    return max(model_tf or pipeline_tf, pipeline_tf, key=_version_key)


def serving_image(configured: str | None, project: str, region: str,
                  tf_version: str | None = None, pipeline_tf: str | None = None) -> str:
    """The serving image for a model built with `tf_version` (default: the installed
    TensorFlow), served by TF Serving `serving_version(...)`. A Vertex prebuilt image of
    an older TensorFlow than the model's is refused."""
    tf_version = tf_version or pipeline_tf or tensorflow_version()
    if configured:
        match = PREBUILT.search(configured)
        if match and int(match[2]) < _version_key(tf_version)[1]:
            raise ConfigError(
                f"push.vertex.serving_image {configured} serves TensorFlow 2.{match[2]}, the "
                f"models are built with {tf_version}; use a TF Serving {tf_version} image "
                "(deploy/Dockerfile.serving) or leave serving_image unset.")
        return configured
    serving = serving_version(tf_version, pipeline_tf)
    minor = _version_key(serving)[1]
    if minor <= NEWEST_PREBUILT_MINOR:
        return f"{region.split('-')[0]}-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-{minor}:latest"
    return f"{region}-docker.pkg.dev/{project}/imgpipe/tensorflow-serving:{serving}"


def serving_spec(image: str, registry_root: str, name: str, version: int) -> dict[str, Any]:
    """Model.upload's container arguments. A prebuilt image reads the artifact itself;
    TF Serving is told to serve exactly `version` from the registry's model folder
    (its layout is TF Serving's) through a model config written next to the version."""
    if PREBUILT.search(image):
        return {"serving_container_image_uri": image}
    return {
        "serving_container_image_uri": image,
        "serving_container_command": ["tensorflow_model_server"],
        "serving_container_args": [f"--rest_api_port={REST_PORT}",
                                   f"--model_config_file={model_config_path(registry_root, name, version)}"],
        "serving_container_ports": [REST_PORT],
        "serving_container_predict_route": f"/v1/models/{name}:predict",
        "serving_container_health_route": f"/v1/models/{name}",
    }


def model_config_path(registry_root: str, name: str, version: int) -> str:
    return fileio.join(registry_root, name, str(version), "serving.config")


def model_config(registry_root: str, name: str, version: int) -> str:
    """TF Serving's model config (text proto) serving one version of the model folder."""
    return (f'model_config_list {{ config {{ name: "{name}" '
            f'base_path: "{fileio.join(registry_root, name)}" model_platform: "tensorflow" '
            f"model_version_policy {{ specific {{ versions: {version} }} }} }} }}\n")


class VertexModelRegistry:
    """`aiplatform.Model.upload(parent_model=...)` for each pushed version, and the
    version aliases through `aiplatform.models.ModelRegistry`."""

    def __init__(self, project: str, region: str, aiplatform: Any = None):
        aiplatform = aiplatform or client_module
        if aiplatform is None:
            from google.cloud import aiplatform  # only when Vertex is configured
        self.ai = aiplatform
        self.project, self.region = project, region

    def upload(self, display_name: str, artifact_uri: str, labels: dict[str, str],
               aliases: list[str], container: dict[str, Any]) -> dict[str, str]:
        """A new version of the Vertex model `display_name` (the model itself on the
        first upload), or, when Vertex already holds a version with the same
        `VERSION_LABEL` (an earlier attempt uploaded it and failed before recording
        it), that version, with `aliases` moved onto it: never a second upload."""
        ai = self.ai
        ai.init(project=self.project, location=self.region)
        existing = ai.Model.list(filter=f'display_name="{display_name}"')
        parent = existing[0].resource_name if existing else None
        found = self.find_version(parent, labels.get(VERSION_LABEL)) if parent else None
        if found is not None:
            record = self._record(found.model_resource_name, found.version_id)
            if aliases:
                self.move_aliases(record, list(aliases))
            return record
        model = ai.Model.upload(
            display_name=display_name, artifact_uri=artifact_uri, parent_model=parent,
            is_default_version=True, version_aliases=list(aliases) or None, labels=labels,
            **container)
        return self._record(model.resource_name, model.version_id)

    def find_version(self, model: str, imgpipe_version: str | None):
        """The version of the Vertex `model` labelled `VERSION_LABEL=imgpipe_version`
        (`ModelRegistry.list_versions`' VersionInfo), or None."""
        if not imgpipe_version:
            return None
        versions = self.ai.models.ModelRegistry(model).list_versions(
            filter=f'labels.{VERSION_LABEL}="{imgpipe_version}"')
        return versions[0] if versions else None

    def _record(self, model: str, version_id: Any) -> dict[str, str]:
        return {"project": self.project, "region": self.region,
                "model": model.split("@")[0], "version_id": str(version_id)}

    def move_aliases(self, record: dict[str, str], aliases: list[str]) -> None:
        """Points `aliases` at the recorded version (Vertex moves them off others)."""
        self._registry(record).add_version_aliases(aliases, record["version_id"])

    def move_alias(self, record: dict[str, str], alias: str) -> None:
        """Points `alias` at the recorded version (Vertex moves it off another one)."""
        self.move_aliases(record, [alias])

    def remove_alias(self, record: dict[str, str], alias: str) -> None:
        self._registry(record).remove_version_aliases([alias], record["version_id"])

    def _registry(self, record: dict[str, str]):
        self.ai.init(project=record["project"], location=record["region"])
        return self.ai.models.ModelRegistry(record["model"].split("@")[0])


def upload_version(cfg: Any, registry_root: str, version: Any, tf_version: str | None,
                   aliases: list[str], aiplatform: Any = None) -> dict[str, str]:
    """A pushed registry version (`registry.Version`) as a version of the Vertex model
    of the same name (`cfg`: push.vertex), served by a TF Serving of the TensorFlow
    version that built it (`tf_version`); where it went is recorded next to the version
    (vertex.json), for promotions to move Vertex aliases too. Safe to repeat after a
    failure anywhere on the way (`VertexModelRegistry.upload` finds an earlier upload)."""
    image = serving_image(cfg.serving_image, cfg.project, cfg.region, tf_version)
    container = serving_spec(image, registry_root, version.name, version.version)
    if "serving_container_args" in container:
        fileio.write_text(model_config_path(registry_root, version.name, version.version),
                          model_config(registry_root, version.name, version.version))
    record = VertexModelRegistry(cfg.project, cfg.region, aiplatform).upload(
        version.name, version.path, {VERSION_LABEL: str(version.version)}, aliases, container)
    fileio.write_text(fileio.join(version.path, RECORD), json.dumps(record, indent=2))
    return record


def read_record(version_path: str) -> dict[str, str] | None:
    path = fileio.join(version_path, RECORD)
    return json.loads(fileio.read_text(path)) if fileio.exists(path) else None


def sync_alias(version_path: str, alias: str, removed: bool = False,
               aiplatform: Any = None) -> str | None:
    """Mirrors an alias change onto Vertex when the version was uploaded there;
    returns the Vertex model it touched (None when the version is not on Vertex)."""
    record = read_record(version_path)
    if record is None:
        return None
    registry = VertexModelRegistry(record["project"], record["region"], aiplatform)
    if removed:
        registry.remove_alias(record, alias)
    else:
        registry.move_alias(record, alias)
    return record["model"]
