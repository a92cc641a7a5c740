"""Honest selection (issue 25.3): early stopping and tune score on a validation split
carved from TRAIN (data.validation_fraction, by a hash of each image's pixels), never on
the eval split evaluate blesses on.

What a user relies on: the validation and fit parts never share an image and together
are the train split, the same in every run; poisoning the eval split changes nothing
that is selected (the epochs' val_ metrics, the kept epoch, tune's trial scores and its
choice), only the eval accuracy reported after training; early stopping keeps the best
epoch's weights; data too small for a validation split trains anyway and says so."""

from __future__ import annotations

import numpy as np
import pytest

from components import artifacts, features
from components.trainer import inputs
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from components.config.transform import TransformConfig
from components.config.tune import TuneConfig
from components.steps import train, transform, tune
from pipeline import config as config_lib
from tests import fixtures

HOLD = DataConfig(validation_fraction=0.3)


def _noise_records(count: int, seed: int, labels=fixtures.CLASSES, prefix="n"):
    """Records of random-noise images with random labels (nothing to learn: a model
    that fits them memorizes, and its validation loss rises)."""
    rng = np.random.default_rng(seed)
    return [features.encode_example({
        features.IMAGE: fixtures.png_bytes(rng.integers(0, 256, (12, 12), dtype=np.uint8)),
        features.FORMAT: "png", features.LABEL: labels[rng.integers(len(labels))],
        features.ID: f"{prefix}{seed}-{i}"}) for i in range(count)]


def _poison(count: int = 30):
    """Eval records of class images labelled as the NEXT class."""
    return [features.encode_example({
        features.IMAGE: fixtures.png_bytes(fixtures.class_pattern(li, 500 + v)),
        features.FORMAT: "png", features.LABEL: fixtures.CLASSES[(li + 1) % 3],
        features.ID: f"poison{li}-{v}"}) for li in range(3) for v in range(count // 3)]


def _graph(tmp, name, **kwargs):
    examples, _ = fixtures.examples_artifact(tmp, name=name, **kwargs)
    uri = str(tmp / f"{name}-tg")
    transform.run(examples, DataConfig(image_size=(12, 12)), TransformConfig(), BeamConfig(),
                  transform_graph=uri)
    return artifacts.read(uri), examples


@pytest.fixture(scope="module")
def clean_and_poisoned(tmp_path_factory):
    """The same train split (20 class images a class, some label noise so the validation
    loss moves), and an eval split that is clean in one and mostly mislabelled in the
    other."""
    tmp = tmp_path_factory.mktemp("poison")
    noise = _noise_records(15, 1)
    clean = _graph(tmp, "clean", per_class=21, extra_train=noise)
    poisoned = _graph(tmp, "poisoned", per_class=21, extra_train=noise, extra_eval=_poison())
    return clean, poisoned


def _pixels(graph, examples, held, part):
    ds = inputs.make_dataset(graph, examples, "train", 4, TrainConfig(), False, True,
                             holdout=held, part=part)
    return {image.numpy().tobytes() for images, _ in ds for image in images}


def test_validation_is_carved_from_train_by_content_and_never_shares_an_image(
        clean_and_poisoned):
    graph, examples = clean_and_poisoned[0]
    held = inputs.holdout(graph, examples, 0.3)
    assert held.used, held.note
    total = graph.properties["counts"]["train"]
    assert held.fit_count + held.validation_count == total
    assert 0.15 * total < held.validation_count < 0.45 * total
    fit, validation = (_pixels(graph, examples, held, part)
                       for part in (inputs.FIT, inputs.VALIDATION))
    assert len(validation) == held.validation_count and len(fit) == held.fit_count
    assert not fit & validation
    ds = inputs.make_dataset(graph, examples, "train", 4, TrainConfig(), False, True)
    everything = {image.numpy().tobytes() for images, _ in ds for image in images}
    assert fit | validation == everything
    # the eval split is in neither part
    ds = inputs.make_dataset(graph, examples, "eval", 4, TrainConfig(), False, True)
    assert not {image.numpy().tobytes() for images, _ in ds for image in images} & everything
    # the same carve in every run
    assert inputs.holdout(graph, examples, 0.3) == held
    assert _pixels(graph, examples, held, inputs.VALIDATION) == validation


def test_a_poisoned_eval_split_changes_nothing_train_selects(tmp_path, clean_and_poisoned):
    runs = {}
    for name, graph in zip(("clean", "poisoned"), clean_and_poisoned):
        cfg = TrainConfig(epochs=8, batch_size=8, early_stopping_patience=2,
                          optimizer={"learning_rate": 0.02})
        summary = train.run(*graph, ModelConfig(kind="dense", hidden_units=[32]), cfg,
                            trained_model=str(tmp_path / name), data=HOLD)
        model = artifacts.read(str(tmp_path / name), "Model")
        runs[name] = (summary, model, artifacts.Model.read(model))
    (clean, clean_model, clean_hist), (poisoned, poisoned_model, poisoned_hist) = \
        runs["clean"], runs["poisoned"]
    # the poison took effect on what is reported ...
    assert poisoned["final"]["eval_accuracy"] < clean["final"]["eval_accuracy"] - 0.3
    # ... and on nothing that is selected: the epochs' validation scores, the kept epoch
    assert len(clean_hist["val_loss"]) == len(poisoned_hist["val_loss"])
    assert np.allclose(clean_hist["val_loss"], poisoned_hist["val_loss"], atol=1e-5)
    assert clean_model.properties["kept_epoch"] == poisoned_model.properties["kept_epoch"]
    assert clean_model.properties["epochs"] == poisoned_model.properties["epochs"]
    validation = clean_model.properties["validation"]
    assert validation["used"] and validation["images"] > 0
    assert any(line.startswith("validation split: ") for line in clean["lines"])
    assert any("eval accuracy" in line and "validation accuracy" in line
               for line in clean["lines"])


def test_a_poisoned_eval_split_changes_no_trial_score_or_choice(tmp_path, clean_and_poisoned):
    space = {"train.optimizer.learning_rate": {"log_uniform": [1e-3, 3e-2]},
             "model.hidden_units": {"choice": [[4], [32]]}}
    records = []
    for name, graph in zip(("clean", "poisoned"), clean_and_poisoned):
        tune.run(*graph, TuneConfig(space=space, max_trials=3, epochs=2, seed=4),
                 ModelConfig(kind="dense"), TrainConfig(batch_size=8),
                 hyperparameters=str(tmp_path / name), scratch=str(tmp_path / f"s-{name}"),
                 data=HOLD)
        records.append(artifacts.HyperParameters.read(str(tmp_path / name)))
    clean, poisoned = records
    assert clean["scored_on"]["metric"] == "val_accuracy"
    assert clean["scored_on"]["validation_images"] > 0
    assert [t["score"] for t in clean["trials"]] == [t["score"] for t in poisoned["trials"]]
    assert clean["best_trial"] == poisoned["best_trial"] and clean["best"] == poisoned["best"]


def test_early_stopping_keeps_the_best_epoch_of_a_planted_overfit(tmp_path):
    """Pure noise with random labels: a wide dense net memorizes the fit part and its
    validation loss rises after the first epochs. The model kept is the best epoch's,
    as the validation loss of the written model shows."""
    import keras

    examples, _ = fixtures.examples_artifact(tmp_path, per_class=2,
                                             extra_train=_noise_records(120, 2))
    transform.run(examples, DataConfig(image_size=(12, 12)), TransformConfig(), BeamConfig(),
                  transform_graph=str(tmp_path / "tg"))
    graph = artifacts.read(str(tmp_path / "tg"))
    cfg = TrainConfig(epochs=12, batch_size=8, early_stopping_patience=12,
                      optimizer={"learning_rate": 0.01})
    summary = train.run(graph, examples, ModelConfig(kind="dense", hidden_units=[256]), cfg,
                        trained_model=str(tmp_path / "m"), data=HOLD)
    model = artifacts.read(str(tmp_path / "m"), "Model")
    history = artifacts.Model.read(model)
    losses = history["val_loss"]
    best = int(np.argmin(losses)) + 1
    assert len(losses) == 12 and best < 12 and losses[-1] > losses[best - 1] + 0.05, losses
    assert model.properties["kept_epoch"] == best
    assert summary["final"]["val_loss"] == pytest.approx(losses[best - 1])
    assert any(line.startswith(f"kept epoch {best} of 12 (early stopping restored")
               for line in summary["lines"]), summary["lines"]
    net = keras.models.load_model(model.path(artifacts.Model.KERAS_FILE))
    held = inputs.holdout(graph, examples, HOLD.validation_fraction)
    ds = inputs.make_dataset(graph, examples, "train", 8, cfg, False, False, holdout=held,
                             part=inputs.VALIDATION)
    kept = net.evaluate(ds, return_dict=True, verbose=0)["loss"]
    assert kept == pytest.approx(losses[best - 1], abs=1e-4)
    assert abs(kept - losses[-1]) > 0.05


def test_too_little_data_for_a_validation_split_falls_back_and_says_so(tmp_path):
    examples, _ = fixtures.examples_artifact(tmp_path, per_class=4)      # 3 train a class
    transform.run(examples, DataConfig(image_size=(12, 12)), TransformConfig(), BeamConfig(),
                  transform_graph=str(tmp_path / "tg"))
    graph = artifacts.read(str(tmp_path / "tg"))
    held = inputs.holdout(graph, examples, 0.05)
    assert not held.used and held.fit_count == 9
    summary = train.run(graph, examples, ModelConfig(kind="logistic"),
                        TrainConfig(epochs=3, batch_size=3, early_stopping_patience=1),
                        trained_model=str(tmp_path / "m"), data=DataConfig(validation_fraction=0.05))
    note = next(line for line in summary["lines"] if line.startswith("no validation split"))
    assert "early stopping watches the training loss" in note
    model = artifacts.read(str(tmp_path / "m"), "Model")
    assert model.properties["validation"]["used"] is False
    assert "val_loss" not in artifacts.Model.read(model)
    assert "eval_accuracy" in summary["final"]
    # and a search on it scores its trials on the training metric, not on eval
    hp = tune.run(graph, examples, TuneConfig(space={"model.kind": {"choice": ["logistic"]}},
                                              max_trials=1, epochs=1),
                  ModelConfig(), TrainConfig(batch_size=3), hyperparameters=str(tmp_path / "hp"),
                  data=DataConfig(validation_fraction=0.05))
    record = artifacts.HyperParameters.read(str(tmp_path / "hp"))
    assert record["scored_on"]["metric"] == "accuracy"
    assert any("trials are scored on accuracy" in line for line in hp["lines"])


def test_validation_fraction_out_of_range_is_a_one_line_config_error(tmp_path):
    from components.errors import ConfigError

    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="data.validation_fraction") as info:
            config_lib.from_dict({"data": {"validation_fraction": bad}})
        assert "\n" not in str(info.value)
    assert config_lib.from_dict({}).data.validation_fraction == 0.1
