"""train.augment: random augmentation of the training batches only (issue 25.1).

What a user relies on: `auto` never flips glyphs (1-channel data trains on exactly the
images it has), it does augment 3-channel photos, augmentation never reaches the eval
or validation batches nor the exported model (serving is deterministic, the SavedModel
holds no augmentation layer), brightness/contrast work on pixels 0-255 before the
normalization (augmented images stay in the normalized range), and the summary says
which augmentation ran.

train.optimizer.schedule and train.label_smoothing (issue 25.3): the learning rate at
given steps, what the trained model's optimizer was compiled with, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from components import artifacts
from components.trainer import inputs, training
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from components.config.transform import TransformConfig
from components.steps import train, transform
from pipeline import config as config_lib
from tests import fixtures


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp")


HEAVY = {"flip": "horizontal_and_vertical", "rotation": 0.2, "brightness": 0.5,
         "contrast": 0.5}


def _graph(tmp, channels):
    examples, _ = fixtures.examples_artifact(tmp, per_class=6, channels=channels)
    uri = str(tmp / "tg")
    transform.run(examples, DataConfig(image_size=(12, 12), channels=channels),
                  TransformConfig(normalize="scale"), BeamConfig(), transform_graph=uri)
    return artifacts.read(uri), examples


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    return _graph(tmp_path_factory.mktemp("gray"), 1)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return _graph(tmp_path_factory.mktemp("rgb"), 3)


def _images(graph, examples, augment, split="train", fitting=True):
    """Every image of one epoch of `split` as float arrays, in one batch of all 15 train
    images (5 a class), sorted by content so the shuffle's order does not matter."""
    count = graph.properties["counts"][split]
    cfg = TrainConfig(augment=augment, batch_size=count)
    ds = inputs.make_dataset(graph, examples, split, count, cfg, fitting, sparse=True)
    images = np.concatenate([image.numpy() for image, _ in ds])
    return images[np.lexsort(images.reshape(len(images), -1).T)]


def test_auto_is_off_for_one_channel_and_on_for_three(gray, rgb):
    assert inputs.augmentation("auto", 1)[0] == []
    layers = dict(inputs.augmentation("auto", 3)[0])
    assert layers["flip"] == "horizontal" and {"rotation", "zoom", "translation",
                                               "contrast"} <= set(layers)
    # 1-channel glyphs: auto trains on exactly the images there are, unflipped
    assert np.array_equal(_images(*gray, "auto"), _images(*gray, "off"))
    # 3-channel photos: auto changes the training images
    assert not np.allclose(_images(*rgb, "auto"), _images(*rgb, "off"))
    # an explicit list still applies to 1-channel data (the user asked for it)
    assert not np.allclose(_images(*gray, ["rotation"]), _images(*gray, "off"))


def test_eval_and_validation_batches_are_never_augmented(rgb):
    graph, examples = rgb
    plain = _images(graph, examples, "off", split="eval", fitting=False)
    assert np.array_equal(_images(graph, examples, HEAVY, split="eval", fitting=False), plain)
    held = inputs.holdout(graph, examples, 0.5)
    assert held.used, held.note

    def validation(augment):
        cfg = TrainConfig(augment=augment)
        ds = inputs.make_dataset(graph, examples, "train", 4, cfg, False, True,
                                 holdout=held, part=inputs.VALIDATION)
        return np.concatenate([image.numpy() for image, _ in ds])

    assert np.array_equal(validation(HEAVY), validation("off"))


def test_brightness_and_contrast_work_on_pixels_before_the_normalization(rgb):
    """`transform.normalize: scale` maps pixels 0-255 to 0-1: augmented images stay in
    that range (brightness 0.5 applied after the normalization, with the 0-255 range
    its layer is given, would move them by up to 127), and do change."""
    graph, examples = rgb
    plain = _images(graph, examples, "off")
    for augment in ({"brightness": 0.5}, {"contrast": 0.5}):
        images = _images(graph, examples, augment)
        assert images.min() >= 0.0 and images.max() <= 1.0 + 1e-6, augment
        assert 0.005 < np.abs(images.mean() - plain.mean()) + np.abs(images - plain).mean() \
            and np.abs(images - plain).mean() < 0.5, augment


def test_augmentation_is_absent_from_the_exported_model(tmp_path, rgb):
    import keras
    import tensorflow as tf

    summary = train.run(*rgb, ModelConfig(kind="logistic"),
                        TrainConfig(epochs=1, batch_size=5, augment=HEAVY),
                        trained_model=str(tmp_path / "m"))
    assert any(line.startswith("augmentation: flip horizontal_and_vertical, rotation 0.2, "
                               "brightness 0.5, contrast 0.5 (train.augment")
               for line in summary["lines"]), summary["lines"]
    model = artifacts.read(str(tmp_path / "m"), "Model")
    assert model.properties["augmentation"].startswith("augmentation: flip")
    net = keras.models.load_model(model.path(artifacts.Model.KERAS_FILE))
    assert not [layer.name for layer in net._flatten_layers()
                if type(layer).__name__.startswith("Random")]
    saved = model.path(artifacts.Model.SAVED_MODEL)
    graph_bytes = open(f"{saved}/{artifacts.SAVED_MODEL_PB}", "rb").read().lower()
    for name in (b"random_flip", b"random_rotation", b"random_brightness", b"random_contrast"):
        assert name not in graph_bytes
    loaded = tf.saved_model.load(saved)
    image = tf.constant([fixtures.png_bytes(fixtures.class_pattern(1, 77, 12, 3))] * 4)
    first = loaded.signatures["serving_images"](images=image)["probabilities"].numpy()
    again = loaded.signatures["serving_images"](images=image)["probabilities"].numpy()
    assert np.array_equal(first, again) and np.allclose(first, first[0])


def test_summary_says_augmentation_is_off_for_glyphs(tmp_path, gray):
    summary = train.run(*gray, ModelConfig(kind="logistic"), TrainConfig(epochs=1, batch_size=5),
                        trained_model=str(tmp_path / "m"))
    assert any(line.startswith("augmentation: off (train.augment auto, 1-channel")
               for line in summary["lines"]), summary["lines"]


@pytest.mark.parametrize("augment, expected", [
    ({"flip": "diagonal"}, "augment.flip 'diagonal'"),
    ({"rotation": 0.9}, "augment.rotation 0.9"),
    ({"shear": 0.1}, "unknown layer 'shear'"),
    (["flip", "blur"], "give distinct layer names"),
    ("sometimes", "augment 'sometimes'"),
])
def test_bad_augment_is_a_one_line_config_error(augment, expected, tmp_path):
    import yaml

    from components.errors import ConfigError
    from pipeline import cli

    with pytest.raises(ConfigError, match=expected) as info:
        config_lib.from_dict({"train": {"augment": augment}})
    assert "\n" not in str(info.value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"augment": augment}}))
    assert cli.main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2


def test_yaml_off_and_lists_load():
    cfg = config_lib.from_dict({"train": {"augment": False}})          # YAML's bare off
    assert cfg.train.augment == "off"
    cfg = config_lib.from_dict({"train": {"augment": ["flip", "zoom"]}})
    assert cfg.train.augment == {"flip": "horizontal", "zoom": 0.1}


# --- learning-rate schedules and label smoothing -------------------------------------------


@pytest.mark.parametrize("schedule, extra, expected", [
    # 4 epochs of 10 steps from 0.01
    ("cosine", {}, {0: 0.01, 20: 0.005, 40: 0.0}),
    ("cosine", {"warmup_epochs": 1}, {0: 0.0, 5: 0.005, 10: 0.01, 25: 0.005, 40: 0.0}),
    ("exponential", {"decay_rate": 0.5}, {0: 0.01, 10: 0.005, 20: 0.0025, 30: 0.00125}),
    # up from 0.01/25 over 30% of the 40 steps, then a cosine down
    ("one_cycle", {}, {0: 0.0004, 12: 0.01, 26: 0.005, 40: 0.0}),
    ("one_cycle", {"warmup_epochs": 2}, {0: 0.0004, 20: 0.01, 30: 0.005}),
])
def test_schedule_values_at_given_steps(schedule, extra, expected):
    cfg = TrainConfig(epochs=4, optimizer={"learning_rate": 0.01, "schedule": schedule, **extra})
    rate = training.learning_rate_schedule(cfg, steps_per_epoch=10, epochs=4)
    for step, value in expected.items():
        assert float(rate(step)) == pytest.approx(value, abs=1e-6), (step, float(rate(step)))


def test_constant_is_todays_behaviour():
    assert training.learning_rate_schedule(TrainConfig(), 10, 4) is None
    assert training.describe_schedule(TrainConfig()) == []


def test_training_follows_the_schedule_and_smooths_labels(gray, tmp_path):
    """The model train writes was compiled with the schedule over its real step count
    (cosine: 0 after the last step) and the smoothed categorical loss."""
    import keras

    graph, examples = gray
    cfg = TrainConfig(epochs=2, batch_size=4, label_smoothing=0.1,
                      optimizer={"learning_rate": 0.01, "schedule": "cosine"})
    summary = train.run(graph, examples, ModelConfig(kind="logistic"), cfg,
                        trained_model=str(tmp_path / "m"))
    assert "learning rate: cosine from 0.01; label smoothing 0.1" in summary["lines"]
    model = artifacts.read(str(tmp_path / "m"))
    net = keras.saving.load_model(model.path(artifacts.Model.KERAS_FILE))
    rate = net.optimizer.learning_rate
    steps = int(net.optimizer.iterations.numpy())
    assert steps == model.properties["optimizer_steps"] > 0
    # after the last step the cosine is at its end (0), not at the configured 0.01
    assert float(rate) == pytest.approx(0.0, abs=1e-6)
    assert net.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


@pytest.mark.parametrize("section, message", [
    ({"optimizer": {"warmup_epochs": 1}},
     "warmup is for schedule cosine or one_cycle"),
    ({"optimizer": {"schedule": "exponential", "warmup_epochs": 1}},
     "warmup is for schedule cosine or one_cycle"),
    ({"optimizer": {"schedule": "step"}}, "schedule"),
    ({"optimizer": {"schedule": "cosine", "decay_rate": 1.5}}, "decay_rate"),
    ({"label_smoothing": 0.1, "loss": "sparse_categorical_crossentropy"},
     "smooths one-hot targets"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_schedule_and_smoothing_mistakes_are_one_line(tmp_path, capsys, section, message):
    import yaml

    from pipeline import cli

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "builtin:digits"}, "train": section}))
    assert cli.main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("imgpipe: error: ") and message in line, line
