"""Invocation: the one place a DAG step + config + input artifacts becomes a call.

The local runner and the KFP components are peers that both call steps through here:

1. `StepSections`: the config a step reads, typed (its sections, the `beam` section for
   Beam steps, the sections it records), as configured: a reference stays a reference.
   The local runner takes them from the loaded config (`StepSections.of`); a KFP task
   from its config parameter (`step_config` -> JSON -> `StepSections.from_json`), the
   only place the JSON round trip is needed.
2. `Context` (`pipeline/roles.py`): what resolving references needs (the model name,
   the registry root and baseline alias, the local metadata store when there is one).
3. `resolve(node, sections, context)`: the values of the roles the step's signature
   declares (`components.contract.RESOLVABLE`: the registry baseline, the start weights
   `model.weights` names, the warm-start model, tuned values of an earlier search),
   each through one table (`pipeline.roles.ROLES`), with an identity for the cache key.
   Sections are never rewritten. The KFP resolve task pins the same roles
   (`pin_outside_inputs`, `pinned_parameters`).
4. `call(node, resolved, inputs, outputs, producer, scratch)`: the step function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from components import artifacts, contract
from components.io import fileio
from components.config.base import Section
from components.errors import ConfigError
from pipeline import config as config_lib
from pipeline.dag import Node
from pipeline.roles import (ROLES, WARM_START, Context, RoleResolver, names_reference,
                            resolve_hyperparameters, warm_start_source)

BEAM = "beam"
RECORD = "record"
# In a task's config JSON: config key -> the registry version the KFP resolve task pinned
# that reference to (`apply_pinned_refs`); the section itself keeps the reference.
PINNED = "pinned"


# --- 1. the config a step reads ------------------------------------------------------


def step_config(node: Node, config: config_lib.PipelineConfig) -> dict[str, Any]:
    """{section: {...}} for every section the step reads (plus `beam` for Beam steps
    and `record` for the sections it only records), as `config.section` gives them
    (`push.model_name` filled in from the pipeline name)."""
    spec = node.spec
    out: dict[str, Any] = {}
    for name in spec.config:
        out[name] = config.section(name).model_dump(mode="json", by_alias=True)
    if spec.beam:
        out[BEAM] = config.beam.model_dump(mode="json")
    if spec.record:
        out[RECORD] = {name: config.section(name).model_dump(mode="json", by_alias=True)
                       for name in spec.record}
    return out


def recorded_config(config: config_lib.PipelineConfig,
                    steps: tuple[Node, ...] | None = None) -> dict[str, Any]:
    """{section: values} of the sections the steps record with a model (the push step's
    model card), as the run report shows them."""
    from pipeline import dag

    names = dict.fromkeys(s for node in (steps or dag.STEPS) for s in node.spec.record)
    return {name: config.section(name).model_dump(mode="json", by_alias=True)
            for name in names}


@dataclass(frozen=True)
class StepSections:
    """What a step reads of the config, typed: its sections as configured, the Beam
    section of a Beam step, the sections it records (as JSON, the model card's), and
    `pinned`: config key -> the exact version the KFP resolve task pinned its
    reference to ('' for none found; empty on the local engine, which resolves now)."""

    sections: Mapping[str, Section]
    beam: Section | None = None
    record: dict[str, Any] | None = None
    pinned: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, node: Node, config: config_lib.PipelineConfig) -> "StepSections":
        """From the loaded config, with no JSON round trip (the local engine). Copies: a
        step that changed its section could not change another step's."""
        spec = node.spec
        return cls({name: config.section(name).model_copy(deep=True) for name in spec.config},
                   config.beam.model_copy(deep=True) if spec.beam else None,
                   {name: config.section(name).model_dump(mode="json", by_alias=True)
                    for name in spec.record} if spec.record else None)

    @classmethod
    def from_json(cls, node: Node, step_cfg: dict[str, Any]) -> "StepSections":
        """From a task's config (`step_config`, run-time parameters and pins applied):
        where a process boundary carried the config as JSON."""
        spec = node.spec
        types = config_lib.section_types()
        return cls({name: types[name].model_validate(step_cfg[name]) for name in spec.config},
                   types[BEAM].model_validate(step_cfg[BEAM]) if spec.beam else None,
                   step_cfg.get(RECORD), dict(step_cfg.get(PINNED) or {}))

    def value(self, key: str) -> Any:
        """A dotted config key's value as configured (`model.weights`), None when the step
        does not read that section."""
        section, name = key.split(".", 1)
        return getattr(self.sections[section], name) if section in self.sections else None


def keyed_config(node: Node, step_cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a step's config that decides its output (the cache key): its
    sections and only the declared `beam` keys (worker counts do not change results)."""
    out = {name: step_cfg[name] for name in node.spec.config}
    if node.spec.beam:
        out[BEAM] = {key: step_cfg[BEAM].get(key) for key in node.spec.beam}
    return out


# --- 2, 3. resolution (Context and the role table: pipeline/roles.py) ----------------


@dataclass
class Resolved:
    """A step's typed sections and the values of the roles it declares, with identities
    for the key."""

    sections: dict[str, Section]
    values: dict[str, Any]                  # parameter -> value (e.g. baseline dir or None)
    identities: dict[str, Any]              # what the key records for each resolution
    beam: Section | None = None
    record: dict[str, Any] | None = None


def _roles(node: Node) -> list[tuple[str, str, RoleResolver]]:
    """(parameter, config key or '', resolver) of each role the step declares."""
    return [(param, contract.RESOLVABLE[role], ROLES[role])
            for param, role in node.spec.resolved.items()]


def needs_context(node: Node, step_cfg: dict[str, Any]) -> bool:
    """Whether resolving the step's roles needs a Context (`step_cfg`: its config as
    JSON): it asks for the baseline, a warm start, or its start weights or tuned values
    name a registry version or a run. An uncached step records where it ran (push's
    model card) and gets one too."""
    def configured(key: str) -> Any:
        section, name = key.split(".", 1)
        return (step_cfg.get(section) or {}).get(name)

    return any(resolver.needs_context(configured(key) if key else None)
               for _, key, resolver in _roles(node)) or not node.spec.cache


def resolve(node: Node, given: StepSections, context: Context | None,
            pinned: dict[str, str] | None = None) -> Resolved:
    """The step's sections (as configured) and the value of each role it declares,
    through `ROLES`; `context` may be None only when the step needs none
    (`needs_context`). A role that reads a config key takes the version the KFP
    resolve task pinned it to from `given.pinned`; one that reads none (the baseline)
    from `pinned` (parameter -> a registry reference, '' for none), so that the task's
    inputs name the version it compares with. Identities are keyed by the config key
    (`train.warm_start`), or the parameter for the baseline."""
    spec = node.spec
    values: dict[str, Any] = {}
    identities: dict[str, Any] = {}
    for param, key, resolver in _roles(node):
        configured = given.value(key) if key else None
        if context is None and resolver.needs_context(configured):
            raise ConfigError(f"step {spec.name} resolves {key or param} (a registry version "
                              "or a run) but was given no context.")
        pin = given.pinned.get(key) if key else (pinned or {}).get(param)
        values[param], identity = resolver.resolve(configured, pin, context)
        if key and identity is None:
            continue        # nothing read beyond the config (unset, imagenet): keyed there
        identities[key or param] = identity
    return Resolved(dict(given.sections), values, identities, given.beam, given.record)


def check_warm_start(config: config_lib.PipelineConfig,
                     context: Context) -> contract.WarmStart | None:
    """`train.warm_start` against the config before any step runs (the local runner's
    preflight, `imgpipe compile`): the referenced model's kind, architecture and image
    shape from its card, its classes when `data.classes` fixes them. A mismatch is a
    ConfigError naming it and the fix; the number of classes otherwise, and model keys
    a search sets, are checked by train when it copies the layers."""
    from components.config.tune import apply_values
    from components.trainer import models
    from components.trainer.tuned import read_best

    train = config.train
    if not train.warm_start:
        return None
    source = warm_start_source(train.warm_start, context)
    if source.start.version is None:
        return None                 # the first push: train starts from scratch
    model = config.model
    if train.hyperparameters:
        best = read_best(resolve_hyperparameters(train.hyperparameters, context))
        try:
            model = apply_values({"model": model, "train": train}, best)["model"]
        except ValueError:
            pass                    # train says so, with the values
    searched = {key.split(".", 1)[1] for key in config.tune.space if key.startswith("model.")}
    classes = len(config.data.classes) if config.data.classes else None
    problem = models.warm_start_problem(
        model, (*config.data.image_size, config.data.channels), classes, source.card,
        f"{WARM_START} {source.start.describe()}", unknown=searched)
    if problem:
        raise ConfigError(problem)
    return source.start


def external_fingerprints(node: Node, resolved: Resolved) -> dict[str, str]:
    """Fingerprints of what the step reads that no step produces (its `external`)."""
    if node.spec.external is None:
        return {}
    return node.spec.external(**resolved.sections)


def pinned_parameters(node: Node) -> list[str]:
    """The step's resolved parameters the KFP resolve task pins one by one, each a task
    input of its own: the roles that read no config key (the baseline, by the alias).
    Those that do are pinned together in the step's outside-inputs pin."""
    return [param for param, key, _ in _roles(node) if not key]


def pin_parameter(node: Node, param: str, context: Context) -> str:
    """What the resolve task pins for one of `pinned_parameters` now: the reference the
    step's task resolves ('' for none: no baseline)."""
    return ROLES[node.spec.resolved[param]].pin(None, context)[0]


def reads_outside_inputs(node: Node) -> bool:
    """Whether the step's result depends on something no step of the run produces:
    files it declares `external` (the data source, a schema file) or a role that
    resolves a config key (start weights, a warm start, tuned values)."""
    return node.spec.external is not None or any(key for _, key, _ in _roles(node))


def pin_outside_inputs(node: Node, step_cfg: dict[str, Any], context: Context,
                       now: Any = None) -> dict[str, Any]:
    """What the KFP resolve task pins for a step that `reads_outside_inputs`:

    - `refs`: each registry reference a declared role reads, as the exact version it
      names now (`photos@production` -> `photos:7`; '' for a warm start with nothing
      pushed yet); the step's task resolves that version, not the alias again;
    - `refs["data.spans"]`: a window of data drops given relative to the schedule
      (`data.spans: {scheduled: -1d}`) as the concrete spans it names at `now` (the
      run's schedule time), so the ingest task's inputs name the drops it reads;
    - `fingerprint`: a hash of those versions' identities (ref + model card hash), of
      the files the roles name directly (their content), and of the step's `external`
      fingerprints (the data source: object listings in a bucket; a schema file's
      content), computed with the referenced keys left out: a pushed version is
      identified by its card, its files are not read.

    The same inputs give the same pin byte for byte, so the step's task is cached
    exactly until one of them changes."""
    cfg = json.loads(json.dumps(step_cfg))
    refs: dict[str, Any] = {}
    identity: dict[str, Any] = {}
    for _, key, resolver in _roles(node):
        if not key:
            continue                    # pinned on its own (`pinned_parameters`)
        section, name = key.split(".")
        value = (cfg.get(section) or {}).get(name)
        if not value or value == "imagenet" or value.startswith("run:"):
            continue
        if fileio.exists(value):
            identity[key] = fileio.hash_file(value)       # a file named directly
            continue
        if not names_reference(value):
            continue                    # the step's task says what is wrong with it
        refs[key], identity[key] = resolver.pin(value, context)
        cfg[section][name] = None
    if "data" in node.spec.config and (cfg.get("data") or {}).get("spans") is not None:
        from components.data import ingest_window

        # a run-time parameter arrives as JSON text ('{"scheduled": "-1d"}'): read the
        # window as the section reads it, not by its Python type
        data = config_lib.section_types()["data"].model_validate(cfg["data"])
        if ingest_window.is_scheduled(data):
            cfg["data"]["spans"] = refs["data.spans"] = ingest_window.scheduled_spans(data, now)
    if node.spec.external is not None:
        types = config_lib.section_types()
        identity.update(node.spec.external(**{
            name: types[name].model_validate(cfg[name]) for name in node.spec.config}))
    return {"refs": refs, "fingerprint": artifacts.fingerprint_json(identity)}


def apply_pinned_refs(step_cfg: dict[str, Any], pin: dict[str, Any]) -> dict[str, Any]:
    """The step's config with what the resolve task pinned (`refs`): a role's reference
    goes under PINNED (its section keeps the reference as configured: the step records
    it), the concrete spans of a scheduled window into `data.spans`."""
    role_keys = set(contract.RESOLVABLE.values())
    for key, ref in (pin.get("refs") or {}).items():
        section, name = key.split(".")
        if section not in step_cfg:
            continue
        if key in role_keys:
            step_cfg.setdefault(PINNED, {})[key] = ref
        else:
            step_cfg[section][name] = ref
    return step_cfg


# --- 4. the call ------------------------------------------------------------------------


def call(node: Node, resolved: Resolved, inputs: dict[str, artifacts.Artifact | None],
         outputs: dict[str, str], producer: dict[str, Any], scratch: str | None = None,
         shared: str | None = None) -> Any:
    """Calls the step function with exactly the parameters its signature declares.
    Each output is handed over as an open writer of its type with `producer` set; when
    the function returns, every writer it did not commit or discard is committed, and
    its scratch folder (which survives a failed attempt) is removed; when it raises,
    every uncommitted writer is aborted and the scratch folder kept for the retry
    (`components.contract.step` does both)."""
    spec = node.spec
    kwargs: dict[str, Any] = {param: inputs.get(param) for param in spec.inputs}
    missing = [p for p in spec.inputs if kwargs[p] is None and not spec.is_optional(p)]
    if missing:
        raise ConfigError(f"step {spec.name} lacks its input(s) {', '.join(missing)}.")
    kwargs.update(resolved.sections)
    kwargs.update(resolved.values)
    writers = {name: artifacts.ArtifactWriter(uri, spec.outputs[name], producer)
               for name, uri in outputs.items()}
    kwargs.update(writers)
    if spec.beam:
        kwargs[BEAM] = beam_for_outputs(resolved.beam, outputs)
    if spec.recorded_param:
        kwargs[spec.recorded_param] = resolved.record
    if spec.scratch:
        kwargs[spec.scratch] = scratch
    if spec.shared:
        kwargs[spec.shared] = shared
    return spec.fn(**kwargs)     # commits the writers, or aborts them when it raises


BEAM_TEMP = "beam-temp"


# Set by compile on the tasks of a pipeline with DataflowRunner and kfp.service_account
# (Vertex): the account the task runs as, which its Dataflow workers run as too.
SERVICE_ACCOUNT_ENV = "IMGPIPE_SERVICE_ACCOUNT"


def beam_for_outputs(beam: Section, outputs: dict[str, str]) -> Section:
    """The Beam section a step runs with: a remote runner without
    `beam.options.temp_location` gets a folder under the pipeline root, next to the
    step's outputs (`{root}/.../{task}/beam-temp`; Dataflow stages there too, and
    tensorflow-transform's temp dir goes under it), so every path its workers are given
    is under the pipeline root. DataflowRunner without `service_account_email` gets the
    task's account (SERVICE_ACCOUNT_ENV), else Dataflow would start the workers as the
    Compute Engine default service account. Not part of any cache key (only
    `beam.runner` is)."""
    import os

    if not beam.remote or not outputs:
        return beam
    options = dict(beam.options)
    account = os.environ.get(SERVICE_ACCOUNT_ENV)
    if beam.runner == "DataflowRunner" and account and not options.get("service_account_email"):
        options["service_account_email"] = account
    if not options.get("temp_location"):
        first = sorted(outputs.values())[0]
        if not fileio.is_remote(first):
            raise ConfigError(f"beam.runner {beam.runner} runs workers elsewhere, which cannot "
                              f"write this step's outputs ({first}); use a pipeline root in a "
                              "bucket (gs://...) and set beam.options.temp_location there.")
        options["temp_location"] = fileio.join(first.rstrip("/").rsplit("/", 1)[0], BEAM_TEMP)
    return beam if options == beam.options else beam.model_copy(update={"options": options})


SHARED = "imgpipe-shared"


def shared_folder(root: str, node: Node, code: str) -> str:
    """A step's `Shared` folder under `root`: `{root}/{step}/{code}`. Keyed by the step's
    code fingerprint, so what an older version of the step wrote there is not reused.
    Locally `root` is the runs directory's `shared/`; on KFP `shared_root(registry)`."""
    return fileio.join(root, node.name, code)


def shared_root(registry_root: str) -> str:
    """Where KFP tasks keep `Shared` folders: beside the registry, in its bucket
    (`gs://b/serving` -> `gs://b/imgpipe-shared`), the one lasting location every run
    of the pipeline knows."""
    parent = registry_root.rstrip("/").rsplit("/", 1)[0]
    return fileio.join(parent if "/" in registry_root.rstrip("/").split("://", 1)[-1]
                       else registry_root.rstrip("/"), SHARED)
