"""The roles the runner resolves for a step from outside the DAG
(`components.contract.RESOLVABLE`), one entry each in `ROLES`: how to resolve it now
(its value and the identity its cache key records) and what the KFP resolve task pins
for it. `Context` is what resolving needs: the registry (the baseline, NAME@ALIAS and
NAME:VERSION references) and, for the local runner, the metadata store (run:ID).
`pipeline/invoke.py` serves the roles a step declares through this table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from components import artifacts, contract
from components.errors import ConfigError
from components.io import fileio
from components.registry.versions import CARD, Registry, Version
from pipeline import config as config_lib


@dataclass(frozen=True)
class Context:
    """Where references resolve: the registry (baselines, NAME@ALIAS weights) and, for
    the local runner, the metadata store (run:ID weights, previous runs)."""

    model_name: str
    registry_root: str
    baseline_alias: str
    pipeline: str = ""
    store: Any = field(default=None, compare=False)

    @classmethod
    def from_config(cls, config: config_lib.PipelineConfig, store: Any = None) -> "Context":
        return cls(config.model_name, config.push.destination, config.push.baseline_alias,
                   config.name, store)

    def to_json(self) -> str:
        return json.dumps({"model_name": self.model_name, "registry_root": self.registry_root,
                           "baseline_alias": self.baseline_alias, "pipeline": self.pipeline},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Context":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RoleResolver:
    """How the runner serves one role of `contract.RESOLVABLE`.

    resolve(configured, pinned, context) -> (value, identity): `configured` is the role's
    config key as written (None when unset or the role reads none: the baseline);
    `pinned` what the KFP resolve task fixed before the step ran (an exact version, ''
    for none), None where nothing was pinned (the local engine resolves now). The
    identity goes into the cache key: the configured reference with the resolved file's
    hash or the version's card hash, so a moved alias or a retrained model reruns the
    step and the same one keeps it cached.
    pin(configured, context) -> (pinned, identity): what the resolve task fixes now."""

    resolve: Callable[[str | None, str | None, "Context | None"], tuple[Any, Any]]
    pin: Callable[[str | None, "Context"], tuple[str, Any]]
    # whether the role needs a Context for this configured value (the registry or store)
    needs_context: Callable[[str | None], bool]


def names_reference(value: str | None) -> bool:
    """Whether a config value names a registry version or a run (needs a Context)."""
    from components.registry.refs import is_reference

    return bool(value) and (value.startswith("run:") or is_reference(value))


def _version_identity(version: Version) -> str:
    return f"{version.ref} {artifacts.fingerprint_json(version.card)}"


def _resolve_baseline(_: str | None, pinned: str | None, context: Context | None
                      ) -> tuple[str | None, str | None]:
    version = pinned_version(context, pinned) if pinned is not None \
        else baseline_version(context)
    # The baseline's identity, not its path: a new production model reruns the
    # evaluation, the same one keeps it cached.
    return (version.path, _version_identity(version)) if version else (None, None)


def _pin_baseline(_: str | None, context: Context) -> tuple[str, str | None]:
    version = baseline_version(context)
    return (version.ref, _version_identity(version)) if version else ("", None)


def _resolve_weights(configured: str | None, pinned: str | None, context: Context | None
                     ) -> tuple[str | None, str | None]:
    if not configured or configured == "imagenet":
        return configured, None
    path = resolve_weights(pinned or configured, context)
    # the content, not the path: a retrained base model reruns the step
    return path, f"{configured} {fileio.hash_file(path)}"


def _resolve_tuned_values(configured: str | None, pinned: str | None, context: Context | None
                          ) -> tuple[str | None, str | None]:
    if not configured:
        return None, None
    path = resolve_hyperparameters(pinned or configured, context)
    # the values' content, not their path: a rerun of that search reruns this
    return path, f"{configured} {fileio.hash_file(path)}"


def _resolve_warm_start(configured: str | None, pinned: str | None, context: Context | None
                        ) -> tuple[contract.WarmStart | None, str | None]:
    if not configured:
        return None, None
    source = warm_start_source(configured, context, pinned)
    # the version's identity (ref + card hash): a moved alias reruns train
    return source.start, source.identity


def _pin_reference(configured: str | None, context: Context) -> tuple[str, str]:
    from components.registry.versions import Registry

    version = Registry(context.registry_root).resolve(configured)
    return version.ref, _version_identity(version)


def _pin_warm_start(configured: str | None, context: Context) -> tuple[str, str]:
    from components.registry.versions import Registry

    registry = Registry(context.registry_root)
    if registry.nothing_pushed(configured):
        return "", ""                           # the first push: train from scratch
    version = warm_start_version(registry, configured)
    return version.ref, _version_identity(version)


# Role -> how it is resolved: the one table `resolve` and the KFP pins read.
ROLES: dict[str, RoleResolver] = {
    contract.BASELINE_MODEL: RoleResolver(_resolve_baseline, _pin_baseline, lambda _: True),
    contract.START_WEIGHTS: RoleResolver(_resolve_weights, _pin_reference, names_reference),
    contract.WARM_START_MODEL: RoleResolver(_resolve_warm_start, _pin_warm_start, bool),
    contract.TUNED_VALUES: RoleResolver(_resolve_tuned_values, _pin_reference,
                                        names_reference),
}
if set(ROLES) != set(contract.RESOLVABLE):
    raise TypeError(f"pipeline.invoke resolves roles {sorted(ROLES)}, and the contract declares "
                    f"{sorted(contract.RESOLVABLE)}: give each role a RoleResolver.")


def baseline_version(context: Context):
    """The registry version holding the baseline alias for the pipeline's model, or None."""
    from components.registry.versions import Registry

    return Registry(context.registry_root).holder(context.model_name, context.baseline_alias)


def pinned_version(context: Context, ref: str):
    """The version a pinned reference names ('' = no baseline)."""
    from components.registry.versions import Registry

    return Registry(context.registry_root).resolve(ref) if ref else None


def resolve_weights(weights: str, context: Context | None) -> str:
    """`run:RUN_ID` -> that run's trained Keras model (needs the local metadata store);
    `NAME@ALIAS` / `NAME:VERSION` -> the pushed version's; anything else (imagenet, a
    file) is returned as is."""
    if weights == "imagenet":
        return weights
    return _resolve_reference(
        weights, context, "model.weights", ("train", "trained_model", "a trained model"),
        artifacts.Model.KERAS_FILE, artifacts.Model.KERAS_FILE,
        "is not a file, 'imagenet', run:RUN_ID or a pushed model reference (NAME@ALIAS, "
        "NAME:VERSION).")


def resolve_hyperparameters(ref: str, context: Context | None) -> str:
    """`train.hyperparameters` -> a file holding best values: `run:RUN_ID` -> that run's
    tune output (needs the local metadata store); `NAME@ALIAS` / `NAME:VERSION` -> the
    pushed version's model card; a file as is."""
    return _resolve_reference(
        ref, context, "train.hyperparameters", ("tune", "hyperparameters", "a tune step"),
        artifacts.HyperParameters.FILE, CARD,
        "is not run:RUN_ID, a pushed model reference (NAME@ALIAS, NAME:VERSION) or a "
        "hyperparameters.json file.")


WARM_START = "train.warm_start"


@dataclass(frozen=True)
class WarmStartSource:
    """A resolved `train.warm_start`: what the step is given (`start`: its Keras file,
    the reference, the exact version), the identity the cache key records (ref + model
    card hash; a run's model fingerprint) and the card the checks before a run read (a
    run's model: its Model artifact's properties, as a card)."""

    start: contract.WarmStart
    identity: str
    card: dict[str, Any]

    @classmethod
    def first(cls, ref: str) -> "WarmStartSource":
        """`NAME@ALIAS` before any version of NAME is pushed: a schedule's first run
        trains from random initialisation (and says so) instead of failing."""
        return cls(contract.WarmStart(ref, None, None), f"{ref} (nothing pushed)", {})


def warm_start_source(configured: str, context: Context | None,
                      pinned: str | None = None) -> WarmStartSource:
    """`train.warm_start` -> the model to start from: `NAME@ALIAS` / `NAME:VERSION` (or
    models:/...) -> that pushed version's Keras file; `run:RUN_ID` -> that run's trained
    model (the local metadata store). `pinned`: the version the KFP resolve task pinned
    the reference to ('' when it found nothing pushed under the name). `NAME@ALIAS`
    while no version of NAME exists is the first run of a schedule:
    `WarmStartSource.first` (train from scratch); once one exists, a missing alias is an
    error."""
    from components.registry.refs import is_reference
    from components.registry.versions import Registry

    if pinned == "":
        return WarmStartSource.first(configured)
    value = pinned or configured
    if value.startswith("run:"):
        path = _resolve_reference(value, context, WARM_START,
                                  ("train", "trained_model", "a trained model"),
                                  artifacts.Model.KERAS_FILE, artifacts.Model.KERAS_FILE, "")
        model = artifacts.read(path[: -len(artifacts.Model.KERAS_FILE)].rstrip("/"),
                               artifacts.Model)
        _check_keras_file(path, f"{WARM_START} {configured}")
        run = f"run:{model.producer.get('run_id') or value[4:]}"
        card = {"model": {key: model.properties.get(key)
                          for key in ("kind", "image_shape", "architecture")},
                "label_vocabulary": model.properties.get("label_vocabulary")}
        return WarmStartSource(contract.WarmStart(configured, run, path),
                               f"{run} {model.fingerprint}", card)
    if not is_reference(value) or context is None:
        raise ConfigError(f"{WARM_START} {value!r} is not a pushed model reference (NAME@ALIAS, "
                          "NAME:VERSION) or run:RUN_ID; name the model to start from, e.g. "
                          f"{WARM_START}: {context.model_name if context else 'NAME'}@production.")
    registry = Registry(context.registry_root)
    if registry.nothing_pushed(value):
        return WarmStartSource.first(configured)
    version = warm_start_version(registry, value)
    path = fileio.join(version.path, artifacts.Model.KERAS_FILE)
    if not fileio.exists(path):
        raise ConfigError(f"{WARM_START} {configured}: {version.ref} has no Keras model to start "
                          f"from ({path} is missing: it was pushed without one); warm start from "
                          "a version pushed by this imgpipe, or drop train.warm_start.")
    _check_keras_file(path, f"{WARM_START} {configured} ({version.ref})")
    return WarmStartSource(contract.WarmStart(configured, version.ref, path),
                           _version_identity(version), version.card)


def _check_keras_file(path: str, what: str) -> None:
    """A damaged `model.keras` (truncated, a zip without weights) stops the run before
    any step, in one line, as a missing one or a damaged card does."""
    from components.trainer.models import WARM_START_FIX, keras_file_problem

    problem = keras_file_problem(path)
    if problem:
        raise ConfigError(f"{what}: {problem}; {WARM_START_FIX}")


def warm_start_version(registry: Registry, ref: str) -> Version:
    """The pushed version `train.warm_start` names, once the model has versions. An
    alias that names none is an error saying what to do: it stays missing on every
    scheduled run while the pushes promote to another alias."""
    from components.registry.refs import LATEST, REF, normalize_reference

    match = REF.fullmatch(normalize_reference(ref))
    if match and match["alias"] and match["alias"] != LATEST:
        name, alias = match["name"], match["alias"]
        aliases = sorted(registry.aliases(name))
        if alias not in aliases:
            other = f"warm start from {name}@{aliases[0]}, " if aliases else ""
            raise ConfigError(
                f"{WARM_START} {ref}: {name} has pushed versions but no alias {alias!r} "
                f"(aliases: {', '.join(aliases) or 'none'}), and a push moves only the "
                f"alias push.promote_to names; set push.promote_to: {alias} (as "
                f"configs/photos-daily.yaml does), {other}or promote a version: imgpipe "
                f"models promote {name}:N --to {alias}.")
    return registry.resolve(ref)


def _resolve_reference(value: str, context: Context | None, key: str,
                       run_output: tuple[str, str, str], run_file: str, version_file: str,
                       invalid: str) -> str:
    """A config value naming a file by reference: `run:RUN_ID` -> `run_file` in that
    run's (step, output) artifact (the local metadata store); an existing file as is;
    `NAME@ALIAS` / `NAME:VERSION` (or models:/...) -> `version_file` of the pushed
    version. `run_output`: (step, output, what it is called in messages)."""
    if value.startswith("run:"):
        run_id = value[4:]
        store = context.store if context else None
        if store is None:
            raise ConfigError(f"{key} {value} needs the local metadata store; on "
                              "Kubeflow/Vertex use a pushed model (NAME@ALIAS).")
        step, output, what = run_output
        record = store.run_output(run_id, step, output)
        if record is None:
            raise ConfigError(f"{key} {value}: no unique run {run_id!r} with {what} in "
                              f"{store.path}; list runs with `imgpipe runs list`.")
        return fileio.join(record.uri, run_file)
    if fileio.exists(value):
        return value
    from components.registry.refs import is_reference
    from components.registry.versions import Registry

    if is_reference(value) and context is not None:
        return fileio.join(Registry(context.registry_root).resolve(value).path, version_file)
    raise ConfigError(f"{key} {value!r} {invalid}")
