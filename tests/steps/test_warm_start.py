"""Warm start (`train.warm_start: NAME@ALIAS | NAME:VERSION | run:ID`): train starts from
the referenced model's weights, copied layer by layer into the configured model; a
model that cannot start it is refused in one line, before ingest where its card tells,
at train where only the data does; the version's identity keys train's cache and is
pinned on KFP; the model card and `imgpipe models show` say where a model started."""

import json
import re
import types

import numpy as np
import pytest

from components import artifacts
from components.contract import WarmStart
from components.trainer import models, training
from components.config.model import ModelConfig
from components.config.push import PushConfig
from components.config.train import TrainConfig
from components.errors import ConfigError
from components.registry.versions import Registry
from components.steps import push, train
from pipeline import cli, dag, invoke, roles
from pipeline import config as config_lib
from tests.fixtures import committed_artifact

NAME = "photos"


def _push(tmp, model: artifacts.Artifact, root: str, recorded: dict | None = None,
          promote_to: str | None = None, tag: str = "p") -> int:
    """Pushes a trained Model artifact through the push step (blessed, served)."""
    blessing = committed_artifact(tmp / f"{tag}-blessing", artifacts.ModelBlessing, {
        artifacts.ModelBlessing.FILE: json.dumps({"blessed": True, "reason": "ok",
                                                  "baseline": None, "gate": "point",
                                                  "checks": []})}, {"blessed": True})
    infra = committed_artifact(tmp / f"{tag}-infra", artifacts.InfraBlessing, {
        artifacts.InfraBlessing.FILE: json.dumps({"passed": True, "reason": "served"})},
        {"passed": True})
    evaluation = committed_artifact(tmp / f"{tag}-evaluation", artifacts.ModelEvaluation, {
        artifacts.ModelEvaluation.FILE: json.dumps(
            {"metrics": {"slices": {"overall": {"accuracy": 0.9}}, "per_class": {}}})})
    statistics = committed_artifact(tmp / f"{tag}-statistics", artifacts.ExampleStatistics,
                            {artifacts.ExampleStatistics.FILE: json.dumps({"num_examples": 36})})
    cfg = PushConfig(destination=root, model_name=NAME, promote_to=promote_to)
    summary = push.run(model, blessing, infra, evaluation, statistics, cfg,
                       artifacts.ArtifactWriter(str(tmp / f"{tag}-pushed"), artifacts.PushedModel,
                                                {"run_id": tag}), recorded or {})
    return summary["version"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, graph):
    """photos:1 and photos:2, two cnn models of 12x12x1 images and 3 classes (another
    seed each); photos@production -> 1."""
    tmp = tmp_path_factory.mktemp("registry")
    root = str(tmp / "serving")
    for seed in (1, 2):
        uri = str(tmp / f"model{seed}")
        train.run(*graph, ModelConfig(kind="cnn"), TrainConfig(epochs=1, batch_size=8, seed=seed),
                  trained_model=uri)
        _push(tmp, artifacts.read(uri), root,
              {"model": ModelConfig(kind="cnn").model_dump(mode="json")},
              promote_to="production" if seed == 1 else None, tag=f"v{seed}")
    return Registry(root)


def _config(registry, **sections):
    tree = {"name": NAME, "data": {"source": "builtin:digits", "image_size": [12, 12]},
            "model": {"kind": "cnn"}, "train": {"warm_start": f"{NAME}@production"},
            "push": {"destination": registry.root}}
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    return config_lib.from_dict(tree)


def _context(registry, store=None):
    return invoke.Context(NAME, registry.root, "production", NAME, store)


def _resolved_train(cfg, context, pin=None):
    """Train resolved as the local runner does (typed sections from the config), or with
    a KFP pin as its task does (the config as JSON, the pinned refs applied)."""
    node = dag.get("train")
    if pin is None:
        return node, invoke.resolve(node, invoke.StepSections.of(node, cfg), context)
    step_cfg = invoke.apply_pinned_refs(invoke.step_config(node, cfg), pin)
    return node, invoke.resolve(node, invoke.StepSections.from_json(node, step_cfg), context)


def _keras_weights(path):
    import keras

    return keras.saving.load_model(path, compile=False).get_weights()


def test_training_starts_from_the_referenced_models_weights(tmp_path, graph, registry,
                                                           monkeypatch, capsys):
    """The weights as the first training step sees them are photos:1's, exactly; the
    summary, the Model artifact, the pushed card and `models show` say so."""
    import keras

    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.setdefault("weights", self.model.get_weights())

    # train's progress callback, in the place of which this one sees the first step
    def progress(total, stream=None):
        return Capture()

    monkeypatch.setattr(training, "Progress", progress)
    node, resolved = _resolved_train(_config(registry, train={"epochs": 2, "batch_size": 8}),
                                     _context(registry))
    transform_graph, examples = graph
    uri = str(tmp_path / "warm")
    summary = invoke.call(node, resolved, {"transform_graph": transform_graph,
                                           "examples": examples, "hyperparameters": None},
                          {"trained_model": uri}, {"run_id": "warm"})
    source = registry.resolve(f"{NAME}:1")
    expected = _keras_weights(f"{source.path}/{artifacts.Model.KERAS_FILE}")
    assert len(seen["weights"]) == len(expected) == 6      # conv, dense, head: kernel + bias
    for got, want in zip(seen["weights"], expected):
        assert np.array_equal(got, want)
    # ... and a model built from the config alone starts elsewhere (the seed's init)
    fresh = models.build(ModelConfig(kind="cnn"), (12, 12, 1), 3).get_weights()
    assert not np.array_equal(fresh[0], expected[0])
    assert summary["lines"][0] == f"warm start from {NAME}:1 ({NAME}@production)"
    model = artifacts.read(uri, artifacts.Model)
    assert model.properties["warm_start"] == {"ref": f"{NAME}@production",
                                              "version": f"{NAME}:1"}
    assert model.properties["architecture"] == {"kind": "cnn", "hidden_units": [32]}
    # the trained weights moved on from the start (the config's optimizer trained them)
    assert not np.array_equal(_keras_weights(model.path(artifacts.Model.KERAS_FILE))[0],
                              expected[0])

    version = _push(tmp_path, model, registry.root, tag="warm")
    card = registry.get(NAME, version).card
    assert card["model"]["warm_start"] == {"ref": f"{NAME}@production", "version": f"{NAME}:1"}
    # ... and which epoch's weights were kept, on which validation split
    assert card["model"]["kept_epoch"] == model.properties["kept_epoch"] in (1, 2)
    assert card["model"]["validation"] == model.properties["validation"]
    capsys.readouterr()
    assert cli.main(["models", "show", f"{NAME}:{version}", "--registry", registry.root]) == 0
    assert f"warm start: from {NAME}:1 ({NAME}@production)" in capsys.readouterr().out


@pytest.mark.parametrize("sections, message", [
    ({"model": {"kind": "dense"}}, "is a cnn model and model.kind is dense; set model.kind: cnn"),
    ({"model": {"hidden_units": [8]}},
     "has model.hidden_units [32] and this config builds [8]; set model.hidden_units: [32]"),
    ({"data": {"image_size": [16, 16]}},
     "was trained on 12x12x1 images and this config feeds 16x16x1; set data.image_size: "
     "[12, 12] and data.channels: 1"),
    ({"data": {"channels": 3}}, "this config feeds 12x12x3"),
    ({"data": {"classes": ["cat", "dog"]}},
     "has 3 classes (cat, dog, fox) and this data has 2; warm start from a model of the same "
     "classes"),
])
def test_a_model_that_cannot_start_this_one_is_refused_before_ingest(registry, sections,
                                                                     message):
    import re

    with pytest.raises(ConfigError, match=re.escape("train.warm_start photos:1 "
                                                    "(photos@production) ") + ".*"
                       + re.escape(message)):
        invoke.check_warm_start(_config(registry, **sections), _context(registry))


def test_the_local_run_stops_before_ingest_with_one_line(tmp_path, registry, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": NAME, "data": {"source": "builtin:digits",
                                                      "image_size": [12, 12]},
                               "model": {"kind": "dense"},
                               "train": {"warm_start": f"{NAME}@production"},
                               "push": {"destination": registry.root}}))
    runs = tmp_path / "runs"
    assert cli.main(["run", str(cfg), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["imgpipe: error: train.warm_start photos:1 (photos@production) is a cnn "
                   "model and model.kind is dense; set model.kind: cnn, or warm start from a "
                   "dense model."]
    from pipeline.metadata import METADATA_FILE, MetadataStore

    assert MetadataStore(str(runs / METADATA_FILE)).list_runs() == []     # no run started


def test_a_search_over_the_architecture_is_checked_at_train(registry):
    """Keys tune.space varies are not known before the search: not refused up front."""
    cfg = _config(registry, model={"hidden_units": [8]},
                  tune={"space": {"model.hidden_units": {"choice": [[8], [32]]}}})
    assert invoke.check_warm_start(cfg, _context(registry)).version == f"{NAME}:1"


def _saved(tmp_path, cfg, classes, shape=(12, 12, 1)):
    path = tmp_path / "other" / artifacts.Model.KERAS_FILE
    path.parent.mkdir(exist_ok=True)
    models.build(cfg, shape, classes).save(str(path))
    return str(path)


def _start(path):
    """What the runner passes train for a warm start from the pushed photos:1."""
    return WarmStart(f"{NAME}@production", f"{NAME}:1", path)


def _warm(**values):
    return TrainConfig(epochs=1, batch_size=8, warm_start=f"{NAME}@production", **values)


def test_other_classes_are_refused_at_train(tmp_path, graph):
    start = _saved(tmp_path, ModelConfig(kind="cnn"), 4)
    with pytest.raises(ConfigError, match=r"has 4 classes and this data has 3; warm start from"):
        train.run(*graph, ModelConfig(kind="cnn"), _warm(), trained_model=str(tmp_path / "m"),
                  warm_start=_start(start))
    assert not artifacts.is_committed(str(tmp_path / "m"))


def test_other_layer_shapes_are_refused_at_train(tmp_path, graph):
    """What a search chose (here hidden units) is compared layer by layer."""
    start = _saved(tmp_path, ModelConfig(kind="cnn", hidden_units=[8]), 3)
    with pytest.raises(ConfigError, match=r"its layer 2 \(Dense \[\(144, 8\), \(8,\)\]\) does "
                                          r"not fit layer 2 here \(Dense \[\(144, 32\), \(32,\)\]\)"):
        train.run(*graph, ModelConfig(kind="cnn"), _warm(), trained_model=str(tmp_path / "m"),
                  warm_start=_start(start))
    start = _saved(tmp_path, ModelConfig(kind="dense"), 3)
    with pytest.raises(ConfigError, match="is a dense model and model.kind is cnn"):
        train.run(*graph, ModelConfig(kind="cnn"), _warm(), trained_model=str(tmp_path / "m"),
                  warm_start=_start(start))


def test_model_weights_and_warm_start_together_are_refused(tmp_path, graph, registry):
    with pytest.raises(ConfigError, match="model.weights 'imagenet' and train.warm_start "
                                          "'photos@production' both given: .*drop model.weights"):
        _config(registry, model={"kind": "transfer", "weights": "imagenet"})
    start = _saved(tmp_path, ModelConfig(kind="cnn"), 3)
    with pytest.raises(ConfigError, match=f"model.weights {start} and train.warm_start "
                                          f"{NAME}@production both given"):
        train.run(*graph, ModelConfig(kind="cnn", weights=start), _warm(),
                  trained_model=str(tmp_path / "m"), weights=start, warm_start=_start(start))


def test_an_unresolved_or_unknown_reference_is_one_line(tmp_path, graph, registry):
    with pytest.raises(ConfigError, match="train.warm_start x@y not resolved by the runner; run "
                                          "the step through the pipeline"):
        train.run(*graph, ModelConfig(kind="cnn"), TrainConfig(epochs=1, warm_start="x@y"),
                  trained_model=str(tmp_path / "m"))
    with pytest.raises(ConfigError, match="model.weights run:abc not resolved"):
        train.run(*graph, ModelConfig(kind="transfer", weights="run:abc"), TrainConfig(epochs=1),
                  trained_model=str(tmp_path / "m"))
    with pytest.raises(ConfigError, match="is not a pushed model reference .* or run:RUN_ID"):
        roles.warm_start_source(str(tmp_path), _context(registry))
    with pytest.raises(ConfigError, match="no alias 'staging'"):
        invoke.check_warm_start(_config(registry, train={"warm_start": f"{NAME}@staging"}),
                                _context(registry))


def _train_key(tmp_path, cfg):
    """Train's local cache key in a new run (a runner resolves once), over stand-ins for
    its upstream artifacts."""
    from pipeline.local.runner import LocalRunner

    runner = LocalRunner(cfg, str(tmp_path / "runs"), log=lambda _: None)
    upstream = types.SimpleNamespace(fingerprint="same")
    produced = {ref: upstream for ref in dag.get("train").inputs.values()}
    return runner._prepare("run", dag.get("train"), produced).key


def test_the_cache_key_follows_the_version_the_alias_names(tmp_path, registry):
    cfg = _config(registry)
    first = _train_key(tmp_path, cfg)
    assert _train_key(tmp_path, cfg) == first
    registry.set_alias(f"{NAME}:2", "production", force=True)
    try:
        moved = _train_key(tmp_path, cfg)
        assert moved != first
        # tune's trials do not warm start (it declares no warm-start role): its inputs stay
        tune = dag.get("tune")
        assert roles.WARM_START not in invoke.resolve(
            tune, invoke.StepSections.of(tune, cfg), _context(registry)).identities
    finally:
        registry.set_alias(f"{NAME}:1", "production", force=True)
    assert _train_key(tmp_path, cfg) == first


def test_the_kfp_pin_names_the_exact_version(registry):
    cfg = _config(registry)
    train_node, tune_node = dag.get("train"), dag.get("tune")
    assert invoke.reads_outside_inputs(train_node)
    pin = invoke.pin_outside_inputs(train_node, invoke.step_config(train_node, cfg),
                                    _context(registry))
    assert pin["refs"] == {"train.warm_start": f"{NAME}:1"}
    assert "train.warm_start" not in invoke.pin_outside_inputs(
        tune_node, invoke.step_config(tune_node, cfg), _context(registry))["refs"]
    registry.set_alias(f"{NAME}:2", "production", force=True)
    try:
        moved = invoke.pin_outside_inputs(train_node, invoke.step_config(train_node, cfg),
                                          _context(registry))
        assert moved["refs"] == {"train.warm_start": f"{NAME}:2"}
        assert moved["fingerprint"] != pin["fingerprint"]
        # the task resolves the pinned version (not the alias, which may move again) and
        # still says which alias it was
        registry.set_alias(f"{NAME}:1", "production", force=True)
        _, resolved = _resolved_train(cfg, _context(registry), pin=moved)
        assert resolved.values["warm_start"] == WarmStart(
            f"{NAME}@production", f"{NAME}:2",
            f"{registry.get(NAME, 2).path}/{artifacts.Model.KERAS_FILE}")
        # the section stays as configured: the reference, never a rewritten path
        assert resolved.sections["train"].warm_start == f"{NAME}@production"
    finally:
        registry.set_alias(f"{NAME}:1", "production", force=True)


def test_compile_checks_the_card_where_the_registry_is_reachable(registry, monkeypatch):
    from components.errors import AccessError
    from pipeline.kfp import checks

    with pytest.raises(ConfigError, match="is a cnn model and model.kind is dense"):
        checks.check_warm_start(_config(registry, model={"kind": "dense"}))
    with pytest.raises(ConfigError, match="run:ID needs the local metadata store"):
        checks.check_warm_start(_config(registry, train={"warm_start": "run:abc"}))
    assert checks.check_warm_start(_config(registry)) is None           # checked: it fits

    # unreachable from here: not refused (train checks), and the line says what was not
    # checked and why
    for failure, why in ((OSError("network is unreachable"), "OSError: network is unreachable"),
                         (AccessError("gs://b/serving: no usable ... (long)", "no credentials"),
                          "no credentials")):
        def unreachable(*_, failure=failure):
            raise failure

        monkeypatch.setattr(invoke, "check_warm_start", unreachable)
        assert checks.check_warm_start(_config(registry, model={"kind": "dense"})) == (
            f"not checked: train.warm_start {NAME}@production against the registry "
            f"{registry.root} ({why}); the resolve task pins the version and train checks "
            "it when the pipeline runs (compile with read access to check it now).")


def test_warm_start_from_an_earlier_local_run(tmp_path, graph, registry):
    """run:ID: that run's trained model, checked from its Model artifact's properties."""
    from pipeline.metadata import MetadataStore

    source = registry.resolve(f"{NAME}:1")
    model = artifacts.read(source.card["artifacts"]["model"], artifacts.Model)
    store = MetadataStore(str(tmp_path / "m.sqlite"))
    run_id = store.start_run(NAME, {}, None)
    execution = store.start_execution(run_id, "train", "k", {}, "d")
    store.record_artifact(execution, "output", "trained_model", model.uri, "Model",
                          model.fingerprint, model.properties, "now")
    store.finish_execution(execution, "succeeded")
    context = _context(registry, store)
    found = roles.warm_start_source(f"run:{run_id[:8]}", context)
    assert found.start.path == model.path(artifacts.Model.KERAS_FILE)
    assert found.identity.endswith(f" {model.fingerprint}")
    with pytest.raises(ConfigError, match=f"train.warm_start run:{run_id[:8]}.* is a cnn model "
                                          "and model.kind is dense"):
        invoke.check_warm_start(_config(registry, model={"kind": "dense"},
                                        train={"warm_start": f"run:{run_id[:8]}"}), context)


def test_a_schedules_first_run_trains_from_scratch_and_says_so(tmp_path, graph, registry,
                                                               capsys):
    """`NAME@ALIAS` while nothing is pushed under NAME (a new schedule's first run):
    train starts from random initialisation, its summary and card say so, and the KFP
    pin records no version; once a version exists, a missing alias is still refused."""
    empty = Registry(str(tmp_path / "empty-serving"))
    cfg = _config(empty, train={"epochs": 1, "batch_size": 8})
    context = invoke.Context(NAME, empty.root, "production", NAME, None)
    assert invoke.check_warm_start(cfg, context) is None
    node, resolved = _resolved_train(cfg, context)
    assert resolved.values["warm_start"] == WarmStart(f"{NAME}@production", None, None)
    assert resolved.sections["train"].warm_start == f"{NAME}@production"
    uri = str(tmp_path / "first")
    summary = invoke.call(node, resolved, {"transform_graph": graph[0], "examples": graph[1],
                                           "hyperparameters": None},
                          {"trained_model": uri}, {"run_id": "first"})
    assert summary["lines"][0] == (f"no warm start: nothing is pushed as {NAME}@production "
                                   "yet (the first run trains from random initialisation)")
    model = artifacts.read(uri, artifacts.Model)
    assert model.properties["warm_start"] == {"ref": f"{NAME}@production", "version": None}

    # on KFP the resolve task pins "" (nothing to start from) and train trains cold
    pin = invoke.pin_outside_inputs(node, invoke.step_config(node, cfg), context)
    assert pin["refs"] == {"train.warm_start": ""}
    _, pinned = _resolved_train(cfg, context, pin=pin)
    assert pinned.values["warm_start"] == WarmStart(f"{NAME}@production", None, None)
    version = _push(tmp_path, model, empty.root, tag="first")
    capsys.readouterr()
    assert cli.main(["models", "show", f"{NAME}:{version}", "--registry", empty.root]) == 0
    assert (f"warm start: none ({NAME}@production named no pushed version yet)"
            in capsys.readouterr().out)
    # photos:1 now exists and has no alias 'production': an error, not a cold start
    with pytest.raises(ConfigError, match="no alias 'production'"):
        invoke.check_warm_start(cfg, context)
    # a schedule that promotes to staging never moves production: each run's check and
    # its resolve task's pin say what to do, in one line
    _push(tmp_path, model, empty.root, promote_to="staging", tag="staged")
    for attempt in (lambda: invoke.check_warm_start(cfg, context),
                    lambda: invoke.pin_outside_inputs(node, invoke.step_config(node, cfg),
                                                      context)):
        with pytest.raises(ConfigError) as error:
            attempt()
        assert str(error.value) == (
            f"train.warm_start {NAME}@production: {NAME} has pushed versions but no alias "
            "'production' (aliases: staging), and a push moves only the alias "
            "push.promote_to names; set push.promote_to: production (as "
            f"configs/photos-daily.yaml does), warm start from {NAME}@staging, or promote a "
            f"version: imgpipe models promote {NAME}:N --to production.")


def _damage(path: str, how: str) -> None:
    """Damages a `model.keras` as a full disk, a bad copy or a hand edit leaves it."""
    import zipfile

    data = open(path, "rb").read()
    if how == "truncated":
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "not a zip":
        open(path, "wb").write(b"not a keras model\n")
    else:                                       # a zip without the weights
        with zipfile.ZipFile(path) as archive:
            kept = {n: archive.read(n) for n in archive.namelist() if n != "model.weights.h5"}
        with zipfile.ZipFile(path, "w") as archive:
            for name, member in kept.items():
                archive.writestr(name, member)


DAMAGE = [("truncated", "not a readable .keras zip"), ("not a zip", "not a readable .keras zip"),
          ("without weights", "holds no model.weights.h5")]


@pytest.mark.parametrize("how,problem", DAMAGE)
def test_a_damaged_keras_file_is_one_line_before_any_step(tmp_path, registry, capsys, how,
                                                          problem):
    """photos:1's model.keras damaged (its card intact): `imgpipe run` stops before
    ingest with one line naming the file and what is wrong, exit 2, as for a missing
    file or a damaged card (issue 34, item 10)."""
    import shutil

    root = tmp_path / "serving"
    shutil.copytree(registry.root, root)
    keras_file = root / NAME / "1" / artifacts.Model.KERAS_FILE
    _damage(str(keras_file), how)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": NAME, "data": {"source": "builtin:digits",
                                                      "image_size": [12, 12]},
                               "model": {"kind": "cnn"},
                               "train": {"warm_start": f"{NAME}@production"},
                               "push": {"destination": str(root)}}))
    runs = tmp_path / "runs"
    assert cli.main(["run", str(cfg), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"imgpipe: error: train.warm_start {NAME}@production ({NAME}:1): {keras_file} is "
        "damaged: "), err
    assert problem in err[0] and "drop train.warm_start" in err[0]
    from pipeline.metadata import METADATA_FILE, MetadataStore

    assert MetadataStore(str(runs / METADATA_FILE)).list_runs() == []     # no run started


@pytest.mark.parametrize("how,problem", DAMAGE)
def test_a_keras_file_damaged_after_the_checks_is_refused_at_train(tmp_path, graph, how,
                                                                   problem):
    """Damaged between the checks and train (or given straight to the step): train's
    ConfigError, not Keras' "File not found" for a file that exists."""
    start = _saved(tmp_path, ModelConfig(kind="cnn"), 3)
    _damage(start, how)
    with pytest.raises(ConfigError, match=re.escape(f"{start} is damaged: ") + ".*"
                       + re.escape(problem)):
        train.run(*graph, ModelConfig(kind="cnn"), _warm(), trained_model=str(tmp_path / "m"),
                  warm_start=_start(start))
    assert not artifacts.is_committed(str(tmp_path / "m"))


@pytest.mark.parametrize("how,problem", DAMAGE)
def test_a_damaged_keras_file_as_model_weights_is_refused_at_train(tmp_path, graph, how,
                                                                   problem):
    """model.weights naming a damaged model.keras (a transfer base cut from our own
    model): one ConfigError naming model.weights and the file."""
    start = _saved(tmp_path, ModelConfig(kind="cnn"), 3)
    _damage(start, how)
    with pytest.raises(ConfigError, match=re.escape(f"model.weights {start}: {start} is "
                                                    "damaged: ") + ".*" + re.escape(problem)):
        train.run(*graph, ModelConfig(kind="transfer", weights=start),
                  TrainConfig(epochs=1, batch_size=8), trained_model=str(tmp_path / "m"),
                  weights=start)
    assert not artifacts.is_committed(str(tmp_path / "m"))
