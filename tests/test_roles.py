"""What the runner resolves from outside the DAG is a role declared in the step's
signature (`components.contract.RESOLVABLE`): the baseline, start weights, a warm-start
model, tuned values. `pipeline.invoke.resolve` serves roles through one table, for any
step that declares them and for no step that does not; config sections stay as
configured; the local runner resolves each step once, for its key and its call."""

import importlib.util
import json
import textwrap
import typing

import pytest

from components import artifacts, contract
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from components.contract import Out, StartWeights, TunedValues, WarmStartModel, step
from components.io import fileio
from components.registry.versions import Registry
from components.steps import train, tune
from pipeline import dag, invoke

NAME = "base"


def _import(tmp_path, source: str):
    """Imports a module of that source, as a user's DAG module would be imported."""
    path = tmp_path / "my_step.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location("my_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_declaring_an_unknown_role_is_a_type_error_at_import(tmp_path):
    with pytest.raises(TypeError, match=r"step mystery \(my_step\): 'start' asks the runner to "
                                        r"resolve unknown 'nonsense' \(known: baseline_model, "
                                        r"start_weights, warm_start, tuned_values\)"):
        _import(tmp_path, """
            from typing import Annotated, Optional
            from components import artifacts
            from components.contract import Out, _Role, step

            @step(name="mystery")
            def run(out: Out[artifacts.ExampleStatistics],
                    start: Annotated[Optional[str], _Role("resolved", "nonsense")] = None):
                return {}
            """)


def test_a_role_needs_the_section_it_resolves_and_a_default_of_none():
    with pytest.raises(TypeError, match="'weights' resolves model.weights, so the step takes "
                                        "the 'model' section too"):
        @step(name="no_section")
        def run(out: Out[artifacts.ExampleStatistics], weights: StartWeights = None):
            return {}

    with pytest.raises(TypeError, match="resolved 'weights' needs a default of None"):
        @step(name="no_default")
        def run2(model: ModelConfig, out: Out[artifacts.ExampleStatistics],
                 weights: StartWeights = "imagenet"):
            return {}


def test_train_and_tune_name_their_roles_in_their_signatures():
    assert train.run.spec.resolved == {"weights": contract.START_WEIGHTS,
                                       "warm_start": contract.WARM_START_MODEL}
    assert tune.run.spec.resolved == {"weights": contract.START_WEIGHTS,
                                      "earlier_search": contract.TUNED_VALUES}
    hints = typing.get_type_hints(train.run.__wrapped__, include_extras=True)
    assert hints["warm_start"] == WarmStartModel and hints["weights"] == StartWeights
    assert typing.get_type_hints(tune.run.__wrapped__,
                                 include_extras=True)["earlier_search"] == TunedValues
    # nothing is smuggled beside the config: a section has no private resolved state
    assert not TrainConfig.__private_attributes__
    # train reads its start weights as a role, not as a file it declares external
    assert train.run.spec.external is None


@step(name="start_from")
def start_from(model: ModelConfig, out: Out[artifacts.ExampleStatistics],
               weights: StartWeights = None) -> dict:
    """A step of its own (not train) that starts from the weights model.weights names."""
    artifacts.ExampleStatistics.write(out, {"weights": weights})
    out.properties = {}
    return {"weights": weights, "configured": model.weights, "lines": []}


@step(name="train")
def named_train(model: ModelConfig, train: TrainConfig,
                out: Out[artifacts.ExampleStatistics]) -> dict:
    """Named train and reading train's sections, but declaring no role."""
    return {}


@pytest.fixture
def registry(tmp_path):
    """base:1 and base:2, each a SavedModel with a Keras file of its own; base@production
    -> 1."""
    registry = Registry(str(tmp_path / "serving"))
    for number in (1, 2):
        model = tmp_path / f"model{number}"
        model.mkdir()
        (model / artifacts.SAVED_MODEL_PB).write_text("graph")
        (model / artifacts.Model.KERAS_FILE).write_text(f"weights {number}")
        registry.push(NAME, str(model), {"blessing": {"blessed": True, "reason": "ok"},
                                         "model": {"number": number}})
    registry.set_alias(f"{NAME}:1", "production")
    return registry


def _config(make_config, registry, weights=f"{NAME}@production"):
    return make_config(name="photos", model={"kind": "transfer", "weights": weights},
                       data={"channels": 3, "image_size": [96, 96]},
                       push={"destination": registry.root})


def _keras(registry, number):
    return fileio.join(registry.get(NAME, number).path, artifacts.Model.KERAS_FILE)


def test_resolve_serves_a_role_to_any_step_that_declares_it(registry, make_config):
    """No case keyed on a step's or a section's name: a step of its own declaring
    StartWeights gets them; a step named train that declares no role gets nothing."""
    cfg = _config(make_config, registry)
    context = invoke.Context.from_config(cfg)
    node = dag.node(start_from)
    resolved = invoke.resolve(node, invoke.StepSections.of(node, cfg), context)
    assert resolved.values == {"weights": _keras(registry, 1)}
    assert resolved.identities["model.weights"] == (
        f"{NAME}@production {fileio.hash_file(_keras(registry, 1))}")
    assert resolved.sections["model"].weights == f"{NAME}@production"      # as configured
    assert invoke.needs_context(node, invoke.step_config(node, cfg))

    plain = dag.node(named_train)
    nothing = invoke.resolve(plain, invoke.StepSections.of(plain, cfg), None)
    assert nothing.values == {} and nothing.identities == {}
    assert nothing.sections["model"].weights == f"{NAME}@production"
    assert not invoke.needs_context(plain, invoke.step_config(plain, cfg))
    assert not invoke.reads_outside_inputs(plain)

    # imagenet and no weights resolve to themselves and key nothing beyond the config
    for weights in ("imagenet", None):
        cfg = _config(make_config, registry, weights)
        resolved = invoke.resolve(node, invoke.StepSections.of(node, cfg), None)
        assert resolved.values == {"weights": weights} and resolved.identities == {}


def test_a_kfp_task_resolves_the_version_its_pin_names(registry, make_config):
    """The resolve task pins the role's reference for the step that declares it; the
    step's task (its config as JSON) resolves that version, not the alias again, and
    its section keeps the reference."""
    cfg = _config(make_config, registry)
    context = invoke.Context.from_config(cfg)
    node = dag.node(start_from)
    assert invoke.reads_outside_inputs(node) and invoke.pinned_parameters(node) == []
    pin = invoke.pin_outside_inputs(node, invoke.step_config(node, cfg), context)
    assert pin["refs"] == {"model.weights": f"{NAME}:1"}
    registry.set_alias(f"{NAME}:2", "production", force=True)
    assert invoke.pin_outside_inputs(node, invoke.step_config(node, cfg),
                                     context)["fingerprint"] != pin["fingerprint"]
    step_cfg = invoke.apply_pinned_refs(json.loads(json.dumps(invoke.step_config(node, cfg))),
                                        pin)
    assert step_cfg["model"]["weights"] == f"{NAME}@production"
    resolved = invoke.resolve(node, invoke.StepSections.from_json(node, step_cfg),
                              invoke.Context.from_json(context.to_json()))
    assert resolved.values == {"weights": _keras(registry, 1)}       # the pinned base:1
    assert resolved.sections["model"].weights == f"{NAME}@production"


def test_the_local_runner_resolves_each_step_once(tmp_path, registry, make_config,
                                                  monkeypatch):
    """Once per step for its cache key and its call (the registry is read once), with
    the sections the config holds (no JSON round trip), and the step gets the file."""
    from pipeline.local.runner import LocalRunner

    calls = []
    real = invoke.resolve

    def counted(node, given, context, pinned=None):
        calls.append((node.name, type(given)))
        return real(node, given, context, pinned)

    monkeypatch.setattr(invoke, "resolve", counted)
    cfg = _config(make_config, registry)
    runner = LocalRunner(cfg, str(tmp_path / "runs"), log=lambda _: None,
                         steps=(dag.node(start_from),))
    result = runner.run()
    assert result.status == "succeeded", result.error
    assert calls == [("start_from", invoke.StepSections)]
    summary = result.steps[0].summary
    assert summary["weights"] == _keras(registry, 1)
    assert summary["configured"] == f"{NAME}@production"
    # a retrained base (another version under the alias) reruns the step
    again = LocalRunner(cfg, str(tmp_path / "runs"), log=lambda _: None,
                        steps=(dag.node(start_from),)).run()
    assert [s.status for s in again.steps] == ["cached"]
    registry.set_alias(f"{NAME}:2", "production", force=True)
    moved = LocalRunner(cfg, str(tmp_path / "runs"), log=lambda _: None,
                        steps=(dag.node(start_from),)).run()
    assert [s.status for s in moved.steps] == ["ran"]
    assert moved.steps[0].summary["weights"] == _keras(registry, 2)


def test_tuned_values_are_the_file_an_earlier_search_wrote(tmp_path, registry, make_config):
    """train.hyperparameters -> the file of best values, for tune (which declares the
    role); its identity is the reference and the values' content."""
    best = tmp_path / artifacts.HyperParameters.FILE
    best.write_text(json.dumps({"best": {"model.kind": "cnn"}}))
    cfg = make_config(train={"hyperparameters": str(best)},
                      push={"destination": registry.root})
    node = dag.get("tune")
    resolved = invoke.resolve(node, invoke.StepSections.of(node, cfg), None)
    assert resolved.values == {"weights": None, "earlier_search": str(best)}
    assert resolved.identities == {
        "train.hyperparameters": f"{best} {fileio.hash_file(str(best))}"}
    # train takes the search's result from tune's artifact, not the file
    train_node = dag.get("train")
    assert "train.hyperparameters" not in invoke.resolve(
        train_node, invoke.StepSections.of(train_node, cfg), None).identities


def test_a_warm_start_value_is_small_and_typed():
    start = contract.WarmStart("photos@production", "photos:7", "/r/photos/7/model.keras")
    assert start.record == {"ref": "photos@production", "version": "photos:7"}
    assert start.describe() == "photos:7 (photos@production)"
    with pytest.raises(Exception):
        start.path = "/elsewhere"             # frozen: what the runner resolved stays so
