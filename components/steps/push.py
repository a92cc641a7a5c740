"""Push: a blessed model that passed infra validation becomes the next numbered version
in the registry (TF Serving layout, `components/registry/versions.py`), with a model card.

A model that is not blessed, or failed infra validation, is never pushed: under the
pipeline push does not run then (it is behind evaluate's and infra validation's gates,
on every engine: recorded as not run, with why); called directly it checks both again
and records why. Either way the run ends with exit 0 and says nothing was pushed
(`imgpipe run --require-push` turns it into exit 4 for CI). Pushing is idempotent: a model whose
SavedModel is already a version of this name is not pushed twice.

Optional: the same version also goes to Vertex AI Model Registry (`push.vertex`,
`components/integrations/vertex.py`): untested against the live service. That upload is idempotent
and retried too: every push of a version that has no Vertex record (vertex.json) yet
uploads it, after asking Vertex whether an earlier, failed attempt already did. With
`push.vertex.endpoint`, a `promote_to` that moves the endpoint alias deploys the version
there with all the traffic (`vertex.sync_endpoint`, as idempotent).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from components import artifacts, runtime
from components.io import fileio
from components.integrations import vertex
from components.config.push import PushConfig
from components.config.train import decisions
from components.contract import Delivery, In, Out, RecordedConfig, Where, step
from components.errors import ConfigError
from components.registry.paths import not_a_folder
from components.registry.versions import Registry


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=__file__.rsplit("/", 2)[0])
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def model_card(trained_model: artifacts.Artifact, blessing: artifacts.Artifact,
               infra_blessing: artifacts.Artifact, evaluation: artifacts.Artifact,
               statistics: artifacts.Artifact, recorded_config: dict[str, Any] | None,
               producer: dict[str, Any] | None) -> artifacts.ModelCard:
    metrics = artifacts.ModelEvaluation.read(evaluation)
    verdict = artifacts.ModelBlessing.read(blessing)
    stats = artifacts.ExampleStatistics.read(statistics)
    infra = artifacts.InfraBlessing.read(infra_blessing)
    return artifacts.ModelCard(**{
        "model": {"kind": trained_model.properties.get("kind"),
                  "trainable_params": trained_model.properties.get("trainable_params"),
                  "image_shape": trained_model.properties.get("image_shape"),
                  "epochs": trained_model.properties.get("epochs"),
                  # the epoch whose weights were kept (early stopping restores the best
                  # on the validation split) and how that split was carved
                  "kept_epoch": trained_model.properties.get("kept_epoch"),
                  "validation": trained_model.properties.get("validation"),
                  "augmentation": trained_model.properties.get("augmentation"),
                  "fingerprint": trained_model.fingerprint,
                  # what a later warm start checks, and where this one started from
                  "architecture": trained_model.properties.get("architecture"),
                  "warm_start": trained_model.properties.get("warm_start")},
        "hyperparameters": trained_model.properties.get("hyperparameters"),
        "label_vocabulary": trained_model.properties.get("label_vocabulary"),
        "metrics": metrics["metrics"]["slices"].get("overall", {}),
        "per_class": metrics["metrics"]["per_class"],
        "comparison": metrics.get("comparison"),
        "blessing": {"blessed": verdict["blessed"], "reason": verdict["reason"],
                     "baseline": verdict["baseline"], "gate": verdict["gate"],
                     "checks": verdict["checks"]},
        "infra_validation": {"passed": infra["passed"], "reason": infra["reason"]},
        "data": {"fingerprint": stats.get("content_digest") or statistics.fingerprint,
                 "examples": stats.get("num_examples"), "counts": stats.get("counts"),
                 "classes": stats.get("class_names"),
                 "quarantined": stats.get("num_quarantined"),
                 "quarantine_reasons": stats.get("quarantine_reasons"),
                 # what served traffic is compared with (`imgpipe monitor`): image sizes
                 # and channels seen at ingest, per-class brightness and contrast
                 "sizes": stats.get("sizes"), "channels": stats.get("channels"),
                 "pixels": stats.get("pixels"),
                 # a window of data drops: the spans trained on, and those evaluated on
                 "spans": [s["span"] for s in stats.get("spans") or []] or None,
                 "evaluated_on": ([s["span"] for s in stats["spans"]][-1:]
                                  if stats.get("eval_spans", "newest") == "newest"
                                  else [s["span"] for s in stats["spans"]])
                 if stats.get("spans") else None,
                 # channels and size set or decided from the data, the defaults applied
                 "decided": decisions(recorded_config)},
        "config": recorded_config,
        "package_version": runtime.package_version(),
        "git_commit": git_commit(),
        "run_id": (producer or {}).get("run_id"),
        "pipeline": (producer or {}).get("pipeline"),
        "artifacts": {"model": trained_model.uri, "evaluation": evaluation.uri,
                      "statistics": statistics.uri},
        "created": runtime.utc_now(),
    })


def _to_vertex(push: PushConfig, version, trained_model: artifacts.Artifact,
               promoted: bool) -> tuple[dict[str, str], str]:
    """The version in Vertex AI Model Registry: uploaded when it has no Vertex record
    yet (`vertex.upload_version`, which finds an upload a failed attempt made), else its
    record, with `push.promote_to` moved there too when the registry's alias moved to
    it (`promoted`). (record, the line saying which)."""
    aliases = [push.promote_to] if push.promote_to and promoted else []
    record = vertex.read_record(version.path)
    if record is None:
        record = vertex.upload_version(push.vertex, version,
                                       trained_model.properties.get("tensorflow_version"),
                                       aliases)
        return record, (f"uploaded to Vertex AI Model Registry: {record['model']} version "
                        f"{record['version_id']}")
    if aliases:
        vertex.VertexModelRegistry(record["project"], record["region"]).move_aliases(
            record, aliases)
    return record, (f"already in Vertex AI Model Registry: {record['model']} version "
                    f"{record['version_id']}")


def check(push: PushConfig, where: Where) -> list[str]:
    """What push would find out only after training, refused before a run starts: a
    destination the steps cannot write (a file, a folder without write access; from a
    pipeline's containers, anything outside a bucket) and a Vertex serving image that
    does not match the project and region."""
    if push.vertex is not None:
        vertex.serving_image(push.vertex.serving_image, push.vertex.project,
                             push.vertex.region)     # a mismatched image stops here
    destination = push.destination
    if not where.reaches(destination):
        return [f"push.destination {destination!r} would be lost with each container (and "
                "every run would find no baseline); use gs://BUCKET/serving."]
    if where.remote or fileio.is_remote(destination):
        return []
    problem = not_a_folder(destination)
    if problem and os.path.exists(destination):
        return [f"push.destination {destination!r} {problem}: fix push.destination."]
    existing = os.path.abspath(destination)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        return [f"push.destination {destination!r} cannot be written ({existing} is not a "
                "writable folder); fix push.destination or its permissions."]
    return []


class Pushed(Delivery, total=False):
    """What push did (the run's outcome), with the registry it went to and the Vertex
    AI record when `push.vertex` is set."""

    registry: str
    vertex: dict


# Delivers the run's model: the run's outcome is what it did. Under the pipeline it runs
# only behind evaluate's and infra validation's open gates; it checks them again for a
# direct call. The model card records the config that made the model; pushing has
# effects outside its artifact (the registry), so it is never reused from a cache.
@step(delivers=True, check=check, record=("data", "transform", "model", "train", "evaluate"),
      cache=False)
def run(trained_model: In[artifacts.Model], blessing: In[artifacts.ModelBlessing],
        infra_blessing: In[artifacts.InfraBlessing], evaluation: In[artifacts.ModelEvaluation],
        statistics: In[artifacts.ExampleStatistics], push: PushConfig,
        pushed_model: Out[artifacts.PushedModel], recorded_config: RecordedConfig = None
        ) -> Pushed:
    """Pushes a blessed model that passed infra validation as the next version of
    `push.model_name` (the runner fills it in from the pipeline name when unset)."""
    name = push.model_name
    producer = pushed_model.producer
    if not name:
        raise ConfigError("push.model_name is not set; the runner fills it from the "
                          "pipeline name: run the step through the pipeline.")
    registry = Registry(push.destination)
    blessed = bool(blessing.properties.get("blessed"))
    infra_ok = bool(infra_blessing.properties.get("passed"))
    record: dict[str, Any] = {"pushed": False, "registry": registry.root, "model_name": name}
    if not blessed or not infra_ok:
        why = []
        if not blessed:
            why.append(f"not blessed: {blessing.properties.get('reason')}")
        if not infra_ok:
            why.append(f"infra validation failed: {infra_blessing.properties.get('reason')}")
        record["reason"] = "; ".join(why)
        lines = [f"NOTHING PUSHED ({record['reason']})"]
    else:
        card = model_card(trained_model, blessing, infra_blessing, evaluation, statistics,
                          recorded_config, producer)
        keras_file = trained_model.path(artifacts.Model.KERAS_FILE)
        extra_files = {artifacts.Model.KERAS_FILE: keras_file} if fileio.exists(keras_file) else {}
        # TF Serving replays these when it loads the version (an older InfraBlessing
        # has none: the version is pushed without them)
        warmup = artifacts.InfraBlessing.warmup(infra_blessing)
        if warmup is not None:
            extra_files[artifacts.PushedModel.WARMUP] = warmup
        # A stop (Ctrl-C, SIGTERM) during the publish waits until the version, its
        # alias and this step's record are written: the run then says what was pushed.
        with runtime.deferred_stop():
            # Already pushed (by an earlier run, or by a run of the same config right now)?
            # Decided by the registry under its lock, when the version would be published.
            version, already = registry.push_once(
                name, trained_model.path(artifacts.Model.SAVED_MODEL), card, extra_files,
                fingerprint=trained_model.fingerprint)
            if already:
                record.update(pushed=True, version=version.version, path=version.path,
                              already=True, reason="this model was already pushed")
                lines = [f"already pushed as {version.ref} ({version.path})"]
            else:
                record.update(pushed=True, version=version.version, path=version.path,
                              reason="blessed and served in infra validation")
                lines = [f"pushed {version.ref} to {version.path}"]
            if push.promote_to:
                # forward only: a rerun, resume or backfill of older spans never moves
                # the alias back from a version trained on newer data
                moved = registry.set_alias(
                    version.ref, push.promote_to, who="pipeline", forward_only=True,
                    reason=f"auto-promoted by run {(producer or {}).get('run_id')}")
                record["alias"] = push.promote_to
                record["promotion"] = {"alias": push.promote_to, "from": moved["from"],
                                       "moved": not moved.get("unchanged"),
                                       "behind": moved.get("behind")}
                lines.append(
                    f"{name}@{push.promote_to} stays on version {moved['from']}: "
                    f"{moved['behind']}" if moved.get("behind") else
                    f"{name}@{push.promote_to} already points at version {version.version}"
                    if moved.get("unchanged") else
                    f"{name}@{push.promote_to}: version {moved['from'] or '(none)'} -> "
                    f"{version.version}")
            if push.vertex is not None:
                # Also for a version pushed before: an attempt that failed after publishing
                # it (upload refused, task killed) left it without its Vertex record.
                record["vertex"], line = _to_vertex(
                    push, version, trained_model,
                    not (record.get("promotion") or {}).get("behind"))
                lines.append(line)
                # push.vertex.endpoint: the endpoint serves what the endpoint alias holds
                lines += vertex.serve_pushed(push, registry, version)
    artifacts.PushedModel.write(pushed_model, record)
    pushed_model.properties = record
    return Pushed(**record, lines=lines)
