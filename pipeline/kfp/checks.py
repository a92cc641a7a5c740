"""What compile, submit and schedule check before a package is made: each step's own
declared check for a pipeline's containers, what they cannot reach (paths on this
machine, a source whose shape could not be decided here), the registry version
`train.warm_start` names where the registry can be read from here (else a line saying
it was not checked), and the step image (the placeholder default refused). One
ConfigError each, naming the key and the fix.
"""

from __future__ import annotations

import os

from pipeline import dag, invoke
from pipeline.config import PipelineConfig

# Folders of this repository that deploy/Dockerfile copies into the image.
IMAGE_FOLDERS = ("schemas/", "configs/")
# pipeline/kfp/checks.py -> the repository root
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _in_image_folders(path: str) -> bool:
    """Whether a relative path under IMAGE_FOLDERS names a file that the image will hold:
    one in this project (deploy/Dockerfile builds from its root), or in the current
    folder (compiling from a checkout of the project)."""
    return any(os.path.isfile(os.path.join(base, path)) for base in (PROJECT_ROOT, os.getcwd()))


def _in_bucket(path: str | None) -> bool:
    """gs:// (or another object store), or Vertex's /gcs/ mount of the buckets."""
    return bool(path) and ("://" in path or path.startswith("/gcs/"))


def check_remote(config: PipelineConfig, location: str = "") -> list[str]:
    """What a compiled pipeline cannot reach from its containers: each step's own
    declared check for a pipeline (`Where(remote=True)` with the accelerator each task
    asks for: a source or destination outside a bucket, a TPU search), then the paths
    on this machine no step declares (the schema, start weights). One ConfigError
    naming the key and the fix. Returns what could not be checked from here (one line
    each; `check_warm_start`), for the command to say. `location`: a user's DAG."""
    from components.contract import Where
    from components.errors import ConfigError
    from components.registry.refs import is_reference

    steps = dag.active(dag.load(location), config)
    dag.check_before_run(steps, config, Where(remote=True, accelerators={
        node.name: config.kfp.step(node.name).accelerator_type for node in steps}))
    schema = config.validate_.schema_path
    if schema and not _in_bucket(schema) and (os.path.isabs(schema) or not any(
            schema.startswith(folder) for folder in IMAGE_FOLDERS)):
        raise ConfigError(f"validate.schema {schema!r} is not in the image (it holds "
                          f"{', '.join(IMAGE_FOLDERS)} of this repository) nor in a bucket; "
                          "commit it under schemas/ or copy it to gs://.")
    if schema and not _in_bucket(schema) and not _in_image_folders(schema):
        raise ConfigError(f"validate.schema {schema!r} does not exist in this project (the "
                          f"image copies {', '.join(IMAGE_FOLDERS)} from {PROJECT_ROOT}); fix "
                          "the path or add the file there before building the image.")
    weights = config.model.weights
    if weights and weights != "imagenet" and not is_reference(weights) and \
            not _in_bucket(weights):
        raise ConfigError(f"model.weights {weights!r} is not reachable from the pipeline "
                          "(run:ID needs the local metadata store, a file must be in a "
                          "bucket); use a pushed model (NAME@ALIAS) or gs://.")
    unchecked = check_warm_start(config)
    _check_decided(config)
    return [unchecked] if unchecked else []


def _check_decided(config: PipelineConfig) -> None:
    """`auto` data keys are decided from the data when the config loads, here where the
    pipeline compiles (the tasks get the values): a source this machine cannot read
    would compile the course's values for any data, so it is refused."""
    from components.errors import ConfigError

    decided = config.data.decided
    if decided is None or not decided.keys or not decided.unread:
        return
    keys = " and ".join(f"data.{key}" for key in decided.keys)
    raise ConfigError(f"{keys} {'are' if len(decided.keys) > 1 else 'is'} auto, decided "
                      f"from the data when the pipeline compiles, but data.source "
                      f"{config.data.source!r} could not be read here ({decided.unread}); "
                      f"set {keys} in the config (photos: channels: 3, image_size: [64, 64]; "
                      "glyphs and digits: channels: 1, image_size: [36, 36]), or give this "
                      "machine read access (gcloud auth application-default login).")


def check_warm_start(config: PipelineConfig) -> str | None:
    """`train.warm_start` names a pushed model, and where the registry can be read from
    here, one whose card fits the config (`invoke.check_warm_start`). Without access (no
    credentials, denied, no network) it is not refused: the resolve task pins the
    version and train checks it when the pipeline runs, and the line returned says so
    (compiling in CI needs no credentials). None when checked or nothing to check."""
    from components.errors import AccessError, ConfigError, ImgpipeError
    from components.registry.refs import is_reference

    warm = config.train.warm_start
    if not warm:
        return None
    if not is_reference(warm):
        raise ConfigError(f"train.warm_start {warm!r} is not reachable from the pipeline "
                          "(run:ID needs the local metadata store); use a pushed model "
                          f"({config.model_name}@production or NAME:VERSION).")
    try:
        invoke.check_warm_start(config, invoke.Context.from_config(config))
        return None
    except AccessError as exc:
        why = exc.reason
    except ImgpipeError:
        raise
    except Exception as exc:    # the registry cannot be reached from here (network)
        why = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:120]}"
    return (f"not checked: train.warm_start {warm} against the registry "
            f"{config.push.destination} ({why}); the resolve task pins the version and "
            "train checks it when the pipeline runs (compile with read access to check it "
            "now).")


def check_image(config: PipelineConfig, location: str = "") -> None:
    """kfp.image is set where a task runs in it: its default is a placeholder no
    registry holds, which the service would fail to pull at the first task. What
    `imgpipe compile` writes is for a service (`submit`/`schedule --package`; the
    kfp-local and kfp-docker engines compile their own, unchecked), so compile refuses
    it as submit and schedule do. A config that names an image, even the placeholder
    (deploy/example.yaml, a template), is taken as written."""
    from components.errors import ConfigError
    from pipeline.kfp.compile import RESOLVE

    kfp = config.kfp
    if "image" in kfp.model_fields_set:
        return
    tasks = [node.name for node in dag.active(dag.load(location), config)] + ["report", RESOLVE]
    users = [name for name in tasks if not kfp.step(name).image and not kfp.step(name).gpu]
    if not users:
        return
    who = "every task" if len(users) == len(tasks) else ", ".join(users)
    raise ConfigError(f"kfp.image is unset, so {who} would run in the placeholder image "
                      f"{kfp.image}, which no registry holds; build and push the step image "
                      "(`make image IMAGE=REGION-docker.pkg.dev/PROJECT/imgpipe/imgpipe:0.1.0`, "
                      "then `docker push` it: deploy/README.md, 1. Images) and set kfp.image "
                      "to its tag.")
