"""Vertex AI Model Registry, kept in step with our registry: each pushed version is
uploaded as a new version of one Vertex model, and moving an alias here (promote,
rollback, delete) moves it there. With `push.vertex.endpoint`, promotion also reaches
traffic on a Vertex AI endpoint (`sync_endpoint`): the version holding
`push.vertex.endpoint_alias` serves there, and a canary (`models promote --canary N`)
takes N% of it. Untested against the live service (not reachable from where this was
built); every call is unit-tested against the real client library's signatures with a
recording fake.

Serving image: a model is served by TensorFlow Serving of the pipeline's TensorFlow
version (or of the model's, if newer): TF Serving loads SavedModels of its own or an
older TensorFlow, so one serving image covers the CPU/GPU images' models (2.21) and the
TPU image's (2.20). Vertex's prebuilt TF containers stop at 2.15 (2026-11), so the
default is a TF Serving image of that exact version mirrored into the project's
Artifact Registry (deploy/Dockerfile.serving), started with TF Serving's own REST
routes on the version's own copy: Vertex copies a model's `artifact_uri` to
`AIP_STORAGE_URI` for its container, and that copy is all its default identity may
read, so a version is uploaded with a single-version TF Serving folder of its own
(`SERVING_COPY`) and TF Serving serves `$(AIP_STORAGE_URI)`, read once, never the
registry. A deployment runs as `push.vertex.service_account` when one is set.
"""

from __future__ import annotations

import json
import re
from typing import Any

from components import artifacts
from components.io import fileio
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


def serving_spec(image: str, name: str) -> dict[str, Any]:
    """Model.upload's container arguments. A prebuilt image reads the artifact itself;
    TF Serving serves the one version in `$(AIP_STORAGE_URI)` (Vertex expands the
    variable in the arguments), which is the upload's `artifact_uri` (`serving_copy`)
    copied by Vertex: readable by the container's default identity, never the registry.
    The folder is listed once at start (`--file_system_poll_wait_seconds=0`): a
    deployed model is one fixed version, so no replica polls storage while it serves."""
    if PREBUILT.search(image):
        return {"serving_container_image_uri": image}
    return {
        "serving_container_image_uri": image,
        "serving_container_command": ["tensorflow_model_server"],
        "serving_container_args": [f"--rest_api_port={REST_PORT}", f"--model_name={name}",
                                   "--model_base_path=$(AIP_STORAGE_URI)",
                                   "--file_system_poll_wait_seconds=0"],
        "serving_container_ports": [REST_PORT],
        "serving_container_predict_route": f"/v1/models/{name}:predict",
        "serving_container_health_route": f"/v1/models/{name}",
    }


# The version's own TF Serving folder, inside the version: `{version}/SERVING_COPY/N/`
# holds a copy of its SavedModel (TF Serving wants numbered version folders under its
# base path, and the version folder is the SavedModel itself). What TF Serving images
# upload as `artifact_uri`, so Vertex's copy of it is exactly this one version.
SERVING_COPY = "tf_serving"
# A SavedModel's parts (tf.saved_model's layout, warmup records in assets.extra/), the
# graph last: TF Serving takes a version folder with saved_model.pb as complete.
SAVED_MODEL_PARTS = ("variables", "assets", "assets.extra", "fingerprint.pb",
                     "saved_model.pbtxt", artifacts.SAVED_MODEL_PB)


def serving_copy(version: Any) -> str:
    """Writes `{version.path}/SERVING_COPY/{N}/`, a copy of the registry version's
    SavedModel (its card, records and other files left out), and returns the folder to
    upload. Safe to repeat: a retried upload writes the same files again."""
    base = fileio.join(version.path, SERVING_COPY)
    target = fileio.join(base, str(version.version))
    for part in SAVED_MODEL_PARTS:
        src = fileio.join(version.path, part)
        if fileio.isdir(src):
            prefix = src.rstrip("/") + "/"
            for path in fileio.walk_files(src):
                fileio.copy(path, fileio.join(target, part, path[len(prefix):]))
        elif fileio.exists(src):
            fileio.copy(src, fileio.join(target, part))
    return base


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


def upload_version(cfg: Any, version: Any, tf_version: str | None,
                   aliases: list[str], aiplatform: Any = None) -> dict[str, str]:
    """A pushed registry version (`registry.Version`) as a version of the Vertex model
    of the same name (`cfg`: push.vertex), served by a TF Serving of the TensorFlow
    version that built it (`tf_version`); where it went is recorded next to the version
    (vertex.json), for promotions to move Vertex aliases too. Safe to repeat after a
    failure anywhere on the way (`VertexModelRegistry.upload` finds an earlier upload)."""
    image = serving_image(cfg.serving_image, cfg.project, cfg.region, tf_version)
    container = serving_spec(image, version.name)
    # a prebuilt image serves the SavedModel at AIP_STORAGE_URI itself; TF Serving needs
    # the version under a numbered folder (serving_spec)
    artifact = version.path if PREBUILT.search(image) else serving_copy(version)
    record = VertexModelRegistry(cfg.project, cfg.region, aiplatform).upload(
        version.name, artifact, {VERSION_LABEL: str(version.version)}, aliases, container)
    settings = endpoint_settings(cfg)
    if settings:                   # for the CLI's promotions later: where traffic goes
        record["endpoint"] = settings
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


# --- endpoints: promotion reaches traffic ---------------------------------------------
#
# What the endpoint should serve is decided from the registry's ledger alone (the
# version holding the endpoint alias, and at most one canary: the newest entry that
# gave another alias a `traffic` share after the endpoint alias last moved), then the
# endpoint is brought to that state: deploy what is missing (looked up in
# list_models() first, so a retry never deploys twice), set the traffic split,
# undeploy the versions of this model nothing names any more. Every step can fail and
# be run again.


def endpoint_settings(cfg: Any) -> dict[str, Any] | None:
    """What vertex.json records of push.vertex's endpoint (None: no endpoint set); the
    service account only when one is set (records without it deploy as Vertex's
    default identity)."""
    if cfg is None or not getattr(cfg, "endpoint", None):
        return None
    account = getattr(cfg, "service_account", None)
    return {"endpoint": cfg.endpoint, "alias": cfg.endpoint_alias,
            "machine_type": cfg.machine_type, "min_replica_count": cfg.min_replica_count,
            "max_replica_count": cfg.max_replica_count,
            **({"service_account": account} if account else {})}


def configured_endpoint(cfg: Any) -> dict[str, Any] | None:
    """push.vertex's endpoint settings with its project and region (as `model_endpoint`
    gives them), or None."""
    settings = endpoint_settings(cfg)
    return dict(settings, project=cfg.project, region=cfg.region) if settings else None


def record_endpoint(version_path: str, cfg: Any) -> dict[str, str] | None:
    """Writes push.vertex's endpoint settings (or their absence) into the version's
    Vertex record, when it has one and they changed; returns the record."""
    record, settings = read_record(version_path), endpoint_settings(cfg)
    if record is None or record.get("endpoint") == settings:
        return record
    record = {k: v for k, v in record.items() if k != "endpoint"}
    if settings:
        record["endpoint"] = settings
    fileio.write_text(fileio.join(version_path, RECORD), json.dumps(record, indent=2))
    return record


def model_endpoint(registry: Any, name: str) -> dict[str, Any] | None:
    """The model's endpoint settings (with the Vertex project and region): those the
    newest version on Vertex recorded at its upload; None when it recorded none."""
    for version in reversed(registry.versions(name)):
        record = read_record(version.path)
        if record is not None:
            settings = record.get("endpoint")
            return dict(settings, project=record["project"], region=record["region"]) \
                if settings else None
    return None


def endpoint_plan(entries: list[dict[str, Any]], endpoint_alias: str
                  ) -> tuple[int | None, tuple[str, int, int] | None]:
    """From the ledger: (the version the endpoint serves, i.e. the endpoint alias's
    holder, or None; the canary as (alias, version, percent), or None). A canary is an
    alias whose latest entry gave it `traffic` > 0, written after the endpoint alias
    last moved (moving it gives its holder all the traffic), on a version other than
    the served one; a later rollback, delete or plain promotion of that alias ends it."""
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, entry in enumerate(entries):
        last[entry["alias"]] = (index, entry)
    held = last.get(endpoint_alias)
    if held is None or held[1].get("action") == "delete" or held[1]["to"] is None:
        return None, None
    since, serving = held[0], int(held[1]["to"])
    canary, newest = None, -1
    for alias, (index, entry) in last.items():
        percent = entry.get("traffic") or 0
        if (alias != endpoint_alias and index > since and percent > 0 and index > newest
                and entry.get("action") != "delete" and entry["to"] not in (None, serving)):
            canary, newest = (alias, int(entry["to"]), int(percent)), index
    return serving, canary


def touches_endpoint(entries: list[dict[str, Any]], alias: str, endpoint_alias: str) -> bool:
    """Whether a change of `alias` can change what the endpoint serves: it is the
    endpoint alias, or it held (or holds) a canary."""
    return alias == endpoint_alias or any(
        e["alias"] == alias and "traffic" in e for e in entries)


def check_canary(registry: Any, version: Any, alias: str, percent: int) -> None:
    """Refuses `models promote VERSION --to ALIAS --canary PERCENT` before anything
    moves, when the endpoint could not take it."""
    settings = model_endpoint(registry, version.name)
    if settings is None:
        raise ConfigError(
            f"--canary shares a Vertex AI endpoint's traffic, and {version.name} has no "
            f"endpoint: its newest version on Vertex AI was uploaded without "
            "push.vertex.endpoint (`imgpipe models sync-vertex NAME:N --config CONFIG` "
            "records the config's endpoint).")
    if alias == settings["alias"]:
        raise ConfigError(
            f"@{alias} is the alias the endpoint {settings['endpoint']} serves with all its "
            f"traffic; promote to it without --canary, or canary through another alias "
            f"(--to staging --canary {percent}).")
    if percent == 0:
        return
    serving, canary = endpoint_plan(registry.audit(version.name), settings["alias"])
    if serving is None:
        raise ConfigError(
            f"nothing holds {version.name}@{settings['alias']}, so nothing serves on the "
            f"endpoint {settings['endpoint']} to share traffic with; promote a version to "
            f"{settings['alias']} first.")
    if serving == version.version:
        raise ConfigError(f"{version.ref} already serves all the traffic on the endpoint "
                          f"{settings['endpoint']} (it holds @{settings['alias']}).")
    if canary and canary[0] != alias:
        raise ConfigError(
            f"{version.name}@{canary[0]} is already a canary on the endpoint "
            f"({version.name}:{canary[1]}, {canary[2]}%); end it first with `imgpipe models "
            f"promote {version.name}:{canary[1]} --to {canary[0]} --canary 0`.")


def sync_endpoint(registry: Any, name: str, alias: str | None = None,
                  settings: dict[str, Any] | None = None,
                  aiplatform: Any = None) -> dict[str, Any] | None:
    """Brings the model's endpoint to what the ledger says it serves (`endpoint_plan`),
    when the model has one (`settings`, default `model_endpoint`) and `alias` (None:
    any) can change it. None when nothing was to do; else what it serves now
    (`VertexEndpoint.serve`), or a `warning` when a version it should serve is not on
    Vertex AI (the endpoint is then left as it is)."""
    settings = settings or model_endpoint(registry, name)
    if settings is None:
        return None
    entries = registry.audit(name)
    if alias is not None and not touches_endpoint(entries, alias, settings["alias"]):
        return None
    serving, canary = endpoint_plan(entries, settings["alias"])
    where = settings["endpoint"]
    if serving is None:
        return {"endpoint": where, "traffic": {}, "deployed": [], "undeployed": [],
                "line": f"nothing holds {name}@{settings['alias']}: endpoint {where} left as "
                        "it is"}
    wanted = [(serving, 100 - (canary[2] if canary else 0))] + \
        ([(canary[1], canary[2])] if canary else [])
    serve = []
    for number, percent in wanted:
        record = read_record(registry.get(name, number).path)
        if record is None:
            warning = (f"{name}:{number} should serve {percent}% on the endpoint {where}, but "
                       f"it is not in Vertex AI Model Registry (no {RECORD}), so the endpoint "
                       f"was left as it is; `imgpipe models sync-vertex {name}:{number} "
                       "--config CONFIG` uploads it and moves the traffic.")
            return {"endpoint": where, "warning": warning, "line": f"warning: {warning}"}
        serve.append((f"{name}:{number}", record, percent))
    result = VertexEndpoint(settings["project"], settings["region"], aiplatform).serve(
        where, serve, settings)
    return dict(result, line=endpoint_line(result))


def endpoint_line(result: dict[str, Any]) -> str:
    traffic = ", ".join(f"{label} {percent}%" for label, percent in result["traffic"].items())
    did = [f"deployed {', '.join(result['deployed'])}"] if result["deployed"] else []
    did += [f"undeployed {', '.join(result['undeployed'])}"] if result["undeployed"] else []
    return (f"endpoint {result['endpoint']}: {traffic}"
            + (f" ({'; '.join(did)})" if did else
               "" if result.get("changed") else " (already so)"))


def serve_pushed(push: Any, registry: Any, version: Any, aiplatform: Any = None) -> list[str]:
    """After push's upload: the version's record takes push.vertex's endpoint settings,
    and, when push.promote_to moved the endpoint alias (or ended a canary), the
    endpoint follows. The lines saying what it serves."""
    record_endpoint(version.path, push.vertex)
    if not push.promote_to:
        return []
    result = sync_endpoint(registry, version.name, push.promote_to, aiplatform=aiplatform)
    return [result["line"]] if result else []


def _model_id(resource: str) -> str:
    """projects/P/locations/L/models/ID@VERSION -> ID (P may be a number or a name)."""
    return resource.split("@")[0].rsplit("/", 1)[-1]


def _deployed_key(deployed: Any) -> tuple[str, str]:
    """(model id, version id) of a DeployedModel: `model_version_id` (output only), else
    the version its `model` names (`models/ID@VERSION`)."""
    version = getattr(deployed, "model_version_id", "") or \
        (deployed.model.split("@", 1)[1] if "@" in deployed.model else "")
    return _model_id(deployed.model), str(version)


class VertexEndpoint:
    """One Vertex AI endpoint through `aiplatform.Endpoint`: found by display name
    (`Endpoint.list`, created when missing) or taken by resource name, then brought to a
    wanted traffic split over versions of Vertex models."""

    def __init__(self, project: str, region: str, aiplatform: Any = None):
        aiplatform = aiplatform or client_module
        if aiplatform is None:
            from google.cloud import aiplatform  # only when an endpoint is configured
        self.ai = aiplatform
        self.project, self.region = project, region

    def endpoint(self, where: str):
        """The endpoint `where` names: a resource name, or a display name (created on
        first use; an earlier attempt's endpoint is found, not created again)."""
        ai = self.ai
        ai.init(project=self.project, location=self.region)
        if where.startswith("projects/"):
            return ai.Endpoint(endpoint_name=where)
        found = ai.Endpoint.list(filter=f'display_name="{where}"')
        if len(found) > 1:
            raise ConfigError(
                f"{len(found)} Vertex AI endpoints are named {where!r} in {self.project}/"
                f"{self.region} ({', '.join(e.resource_name for e in found)}); set "
                "push.vertex.endpoint to the resource name of the one to serve on.")
        return found[0] if found else ai.Endpoint.create(display_name=where)

    def serve(self, where: str, wanted: list[tuple[str, dict[str, str], int]],
              resources: dict[str, Any]) -> dict[str, Any]:
        """`wanted`: (label, Vertex record, percent), the fully served version first.
        Deploys each one that is not deployed yet (the first on an empty endpoint with
        all the traffic, else with its percent: Vertex scales the others down), sets the
        traffic split when it differs, then undeploys the other deployed versions of
        the same Vertex models (models of others deployed there keep their deployment
        and get no traffic)."""
        endpoint = self.endpoint(where)
        models = {_model_id(record["model"]) for _, record, _ in wanted}
        key = {label: (_model_id(record["model"]), str(record["version_id"]))
               for label, record, _ in wanted}

        def ours() -> dict[tuple[str, str], Any]:
            return {_deployed_key(d): d for d in endpoint.list_models()
                    if _model_id(d.model) in models}

        deployed, done, changed = ours(), [], False
        for label, record, percent in wanted:
            if key[label] in deployed:
                continue
            live = sum(endpoint.traffic_split.values())
            endpoint.deploy(
                model=self.ai.Model(record["model"], version=str(record["version_id"])),
                deployed_model_display_name=label[:128],
                traffic_percentage=percent if live else 100,
                machine_type=resources["machine_type"],
                min_replica_count=resources["min_replica_count"],
                max_replica_count=resources["max_replica_count"],
                # the container's identity; None: Vertex's default, which reads only
                # the model's AIP_STORAGE_URI copy (what serving_spec serves from)
                service_account=resources.get("service_account"), sync=True)
            done.append(label)
            deployed = ours()
        split = {deployed[key[label]].id: percent for label, _, percent in wanted if percent}
        if {k: v for k, v in endpoint.traffic_split.items() if v} != split:
            endpoint.update(traffic_split=split)
            changed = True
        gone = []
        for found, deployment in deployed.items():
            if found not in key.values():
                endpoint.undeploy(deployed_model_id=deployment.id)
                gone.append(deployment.display_name or f"{found[0]}@{found[1]}")
        return {"endpoint": endpoint.resource_name,
                "traffic": {label: percent for label, _, percent in wanted},
                "deployed": done, "undeployed": gone, "changed": changed or bool(done or gone)}
