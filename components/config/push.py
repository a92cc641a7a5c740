"""The `push` section: the registry, aliases, the Vertex AI upload."""

from __future__ import annotations

import re
from typing import Optional
from pydantic import Field, field_validator, model_validator

from components.config.base import PATH_HELP, PathText, Section, identifier


# The alias every model has: its newest version (never set, never a baseline).
LATEST_ALIAS = "latest"


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
