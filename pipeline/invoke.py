"""Invocation: the one place a DAG step + config + input artifacts becomes a call.

The local runner and the KFP components are peers that both call steps through here:

1. `step_config(node, config)`: the config a step reads, as plain JSON (its sections,
   the `beam` section for Beam steps, the sections it records). This is all a step
   ever sees of the config; on KFP it is the task's config parameter.
2. `Context`: what resolving references needs (the model name, the registry root and
   baseline alias, the local metadata store when there is one).
3. `resolve(node, step_cfg, context)`: typed sections with references resolved
   (`model.weights: run:ID | NAME@ALIAS | NAME:VERSION` -> that model's Keras file)
   and the values the runner resolves for the step (the registry baseline), each
   with an identity that goes into the cache key.
4. `call(node, resolved, inputs, outputs, producer, scratch)`: the step function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from components import artifacts, contract
from components.io import fileio
from components.config.base import Section
from components.errors import ConfigError
from components.registry.versions import CARD, Registry, Version
from pipeline import config as config_lib
from pipeline.dag import Node

BEAM = "beam"
RECORD = "record"


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


def keyed_config(node: Node, step_cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a step's config that decides its output (the cache key): its
    sections and only the declared `beam` keys (worker counts do not change results)."""
    out = {name: step_cfg[name] for name in node.spec.config}
    if node.spec.beam:
        out[BEAM] = {key: step_cfg[BEAM].get(key) for key in node.spec.beam}
    return out


# --- 2. what resolution needs ---------------------------------------------------------


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


# --- 3. resolution ----------------------------------------------------------------------


@dataclass
class Resolved:
    """A step's typed sections and runner-resolved values, with identities for the key."""

    sections: dict[str, Section]
    values: dict[str, Any]                  # parameter -> value (e.g. baseline dir or None)
    identities: dict[str, Any]              # what the key records for each resolution
    beam: Section | None = None
    record: dict[str, Any] | None = None


def needs_context(node: Node, step_cfg: dict[str, Any]) -> bool:
    """Whether resolving the step's references needs a Context: it asks for the
    baseline, or its model weights name a registry version or a run."""
    from components.registry.refs import is_reference

    refs = [step_cfg.get("model", {}).get("weights") or "",
            step_cfg.get("train", {}).get("hyperparameters") or "",
            step_cfg.get("train", {}).get("warm_start") or ""]
    return bool(node.spec.resolved) or any(ref.startswith("run:") or is_reference(ref)
                                           for ref in refs) \
        or not node.spec.cache     # an uncached step records where it ran (push: the card)


def resolve(node: Node, step_cfg: dict[str, Any], context: Context | None,
            pinned: dict[str, str] | None = None) -> Resolved:
    """Typed sections and resolved values; `context` may be None only when the step
    needs none (`needs_context`). `pinned`: parameter -> a registry reference fixed
    before the step ran ('' for none), as the KFP pipeline's resolve task decides it,
    so that the task's inputs name the version it compares with."""
    spec = node.spec
    if context is None and needs_context(node, step_cfg):
        raise ConfigError(f"step {spec.name} resolves references (the registry baseline or "
                          "model.weights) but was given no context.")
    types = config_lib.section_types()
    sections: dict[str, Section] = {}
    identities: dict[str, Any] = {}
    for name in spec.config:
        section = types[name].model_validate(step_cfg[name])
        if name == "model" and section.weights:
            path = resolve_weights(section.weights, context)
            if path != section.weights:
                identities["model.weights"] = section.weights
                section = section.model_copy(update={"weights": path})
        if name == "train" and section.hyperparameters:
            path = resolve_hyperparameters(section.hyperparameters, context)
            # the values' content, not their path: a rerun of that search reruns this
            identities["train.hyperparameters"] = \
                f"{section.hyperparameters} {fileio.hash_file(path)}"
            section = section.model_copy(update={"hyperparameters": path})
        configured = (step_cfg.get(PINNED_FROM) or {}).get(WARM_START)
        if name == "train" and (section.warm_start or configured) \
                and reads_key(node, WARM_START):
            source = warm_start_source(section.warm_start or "", context, configured)
            # the version's identity (ref + card hash): a moved alias reruns train
            identities[WARM_START] = source.identity
            section = section.model_copy(update={"warm_start": source.path})
            section._warm_start_source = source.record
        sections[name] = section
    values: dict[str, Any] = {}
    for param, what in spec.resolved.items():
        if what == contract.BASELINE_MODEL:
            if pinned is not None and param in pinned:
                version = pinned_version(context, pinned[param])
            else:
                version = baseline_version(context)
            values[param] = version.path if version else None
            # The baseline's identity, not its path: a new production model reruns the
            # evaluation, the same one keeps it cached.
            identities[param] = (f"{version.ref} {artifacts.fingerprint_json(version.card)}"
                                 if version else None)
    beam = types[BEAM].model_validate(step_cfg[BEAM]) if spec.beam else None
    return Resolved(sections, values, identities, beam, step_cfg.get(RECORD))


def baseline_version(context: Context):
    """The registry version holding the baseline alias for the pipeline's model, or None."""
    from components.registry.versions import Registry

    return Registry(context.registry_root).holder(context.model_name, context.baseline_alias)


def pinned_version(context: Context, ref: str):
    """The version a pinned reference names ('' = no baseline)."""
    from components.registry.versions import Registry

    return Registry(context.registry_root).resolve(ref) if ref else None


def resolve_weights(weights: str, context: Context) -> str:
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
class WarmStart:
    """The model `train.warm_start` names: the reference as configured, the exact
    version (`photos:7`, or `run:ID` for a local run's model), its Keras file, its
    identity for the cache key (ref + model card hash; a run's model fingerprint) and
    its card (a run's model: its Model artifact's properties, as a card)."""

    ref: str
    version: str | None         # None: nothing is pushed under the name yet (first run)
    path: str | None
    identity: str
    card: dict[str, Any]

    @classmethod
    def first(cls, ref: str) -> "WarmStart":
        """`NAME@ALIAS` before any version of NAME is pushed: a schedule's first run
        trains from random initialisation (and says so) instead of failing."""
        return cls(ref, None, None, f"{ref} (nothing pushed)", {})

    @property
    def record(self) -> dict[str, str | None]:
        """What the trained model records of its start: {ref, version}."""
        return {"ref": self.ref, "version": self.version}

    def describe(self) -> str:
        return (self.version or "") + (f" ({self.ref})" if self.ref != self.version else "")


def warm_start_source(value: str, context: Context | None,
                      configured: str | None = None) -> WarmStart:
    """`train.warm_start` -> the model to start from: `NAME@ALIAS` / `NAME:VERSION` (or
    models:/...) -> that pushed version's Keras file; `run:RUN_ID` -> that run's trained
    model (the local metadata store). `configured`: the reference as written, when
    `value` is the version the KFP resolve task pinned it to ('' when it found nothing
    pushed under the name). `NAME@ALIAS` while no version of NAME exists is the first
    run of a schedule: `WarmStart.first` (train from scratch); once one exists, a
    missing alias is an error."""
    from components.registry.refs import is_reference
    from components.registry.versions import Registry

    ref = configured or value
    if not value and configured:
        return WarmStart.first(configured)
    if value.startswith("run:"):
        path = _resolve_reference(value, context, WARM_START,
                                  ("train", "trained_model", "a trained model"),
                                  artifacts.Model.KERAS_FILE, artifacts.Model.KERAS_FILE, "")
        model = artifacts.read(path[: -len(artifacts.Model.KERAS_FILE)].rstrip("/"),
                               artifacts.Model)
        run = f"run:{model.producer.get('run_id') or value[4:]}"
        card = {"model": {key: model.properties.get(key)
                          for key in ("kind", "image_shape", "architecture")},
                "label_vocabulary": model.properties.get("label_vocabulary")}
        return WarmStart(ref, run, path, f"{run} {model.fingerprint}", card)
    if not is_reference(value) or context is None:
        raise ConfigError(f"{WARM_START} {value!r} is not a pushed model reference (NAME@ALIAS, "
                          "NAME:VERSION) or run:RUN_ID; name the model to start from, e.g. "
                          f"{WARM_START}: {context.model_name if context else 'NAME'}@production.")
    registry = Registry(context.registry_root)
    if registry.nothing_pushed(value):
        return WarmStart.first(ref)
    version = warm_start_version(registry, value)
    path = fileio.join(version.path, artifacts.Model.KERAS_FILE)
    if not fileio.exists(path):
        raise ConfigError(f"{WARM_START} {ref}: {version.ref} has no Keras model to start from "
                          f"({path} is missing: it was pushed without one); warm start from a "
                          "version pushed by this imgpipe, or drop train.warm_start.")
    card = version.card
    return WarmStart(ref, version.ref, path,
                     f"{version.ref} {artifacts.fingerprint_json(card)}", card)


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


def check_warm_start(config: config_lib.PipelineConfig, context: Context) -> WarmStart | None:
    """`train.warm_start` against the config before any step runs (the local runner's
    preflight, `imgpipe compile`): the referenced model's kind, architecture and image
    shape from its card, its classes when `data.classes` fixes them. A mismatch is a
    ConfigError naming it and the fix; the number of classes otherwise, and model keys
    a search sets, are checked by train when it copies the layers."""
    from components.trainer import models
    from components.config.tune import apply_values

    train = config.train
    if not train.warm_start:
        return None
    source = warm_start_source(train.warm_start, context)
    if source.version is None:
        return None                 # the first push: train starts from scratch
    model = config.model
    if train.hyperparameters:
        from components.steps.tune import read_best

        best = read_best(resolve_hyperparameters(train.hyperparameters, context))
        try:
            model = apply_values({"model": model, "train": train}, best)["model"]
        except ValueError:
            pass                    # train says so, with the values
    searched = {key.split(".", 1)[1] for key in config.tune.space if key.startswith("model.")}
    classes = len(config.data.classes) if config.data.classes else None
    problem = models.warm_start_problem(
        model, (*config.data.image_size, config.data.channels), classes, source.card,
        f"{WARM_START} {source.describe()}", unknown=searched)
    if problem:
        raise ConfigError(problem)
    return source


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


def external_fingerprints(node: Node, resolved: Resolved) -> dict[str, str]:
    """Fingerprints of what the step reads that no step produces (its `external`)."""
    if node.spec.external is None:
        return {}
    return node.spec.external(**resolved.sections)


# Config keys that may name a registry version (NAME@ALIAS, NAME:VERSION).
REFERENCE_KEYS = ("model.weights", "train.hyperparameters", WARM_START)
# What `apply_pinned_refs` keeps of a pinned key's value as configured (`photos@production`
# for `photos:7`), for the step to say where its start came from.
PINNED_FROM = "pinned_from"


def reads_key(node: Node, key: str) -> bool:
    """Whether the step reads the REFERENCE_KEYS key: one of its sections holds it, and
    `train.warm_start` only for the step that writes a Model (train; tune's trials start
    from scratch, so a moved alias does not rerun the search)."""
    return key.split(".")[0] in node.spec.config and (
        key != WARM_START or artifacts.Model in node.spec.outputs.values())


def reads_outside_inputs(node: Node) -> bool:
    """Whether the step's result depends on something no step of the run produces:
    files it declares `external` (the data source, a schema file, start weights) or a
    registry version one of its config keys may name (REFERENCE_KEYS)."""
    return node.spec.external is not None or any(
        key.split(".")[0] in node.spec.config for key in REFERENCE_KEYS)


def pin_outside_inputs(node: Node, step_cfg: dict[str, Any], context: Context,
                       now: Any = None) -> dict[str, Any]:
    """What the KFP resolve task pins for a step that `reads_outside_inputs`:

    - `refs`: each registry reference in REFERENCE_KEYS as the exact version it names
      now (`photos@production` -> `photos:7`); the step's task resolves that version,
      not the alias again;
    - `refs["data.spans"]`: a window of data drops given relative to the schedule
      (`data.spans: {scheduled: -1d}`) as the concrete spans it names at `now` (the
      run's schedule time), so the ingest task's inputs name the drops it reads;
    - `fingerprint`: a hash of those versions' identities (ref + model card hash) and of
      the step's `external` fingerprints (the data source: object listings in a bucket;
      a schema file's content), computed with the referenced keys left out: a pushed
      version is identified by its card, its files are not read.

    The same inputs give the same pin byte for byte, so the step's task is cached
    exactly until one of them changes."""
    from components.registry.refs import is_reference
    from components.registry.versions import Registry

    cfg = json.loads(json.dumps(step_cfg))
    refs: dict[str, Any] = {}
    identity: dict[str, Any] = {}
    for key in REFERENCE_KEYS:
        section, name = key.split(".")
        value = (cfg.get(section) or {}).get(name) if reads_key(node, key) else None
        if not value or value.startswith("run:") or not is_reference(value) \
                or fileio.exists(value):
            continue
        registry = Registry(context.registry_root)
        if key == WARM_START and registry.nothing_pushed(value):
            refs[key] = identity[key] = ""      # the first push: train from scratch
            cfg[section][name] = None
            continue
        version = warm_start_version(registry, value) if key == WARM_START \
            else registry.resolve(value)
        refs[key] = version.ref
        identity[key] = f"{version.ref} {artifacts.fingerprint_json(version.card)}"
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
    """The step's config with the references the resolve task pinned (`refs`)."""
    for key, ref in (pin.get("refs") or {}).items():
        section, name = key.split(".")
        if section in step_cfg:
            if step_cfg[section].get(name) != ref:
                step_cfg.setdefault(PINNED_FROM, {})[key] = step_cfg[section].get(name)
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


def gate_value(node: Node, summary: dict[str, Any] | None) -> bool:
    """The step's gate (blessed, passed); True for steps without one."""
    if node.spec.gate is None:
        return True
    return bool((summary or {}).get(node.spec.gate))
