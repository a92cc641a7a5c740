"""Transfer learning from a Keras application base (issue 35).

What a user relies on: the ImageNet weights are checked before any work, and on a
machine that cannot fetch them the run stops with one line naming the file Keras needs,
where it looks (KERAS_HOME) and `model.weights: PATH` as the offline way; each base is
fed its own preprocessing (keras.applications.<base>.preprocess_input) inside the
exported model, from the pipeline's normalized pixels; and a base with pretrained
weights is fine-tuned after the frozen phase, as the course does. No ImageNet weights
can be fetched here: the tests make a weights file from a randomly initialised base,
in the legacy HDF5 layout Keras' own ImageNet files have."""

from __future__ import annotations

import os

import numpy as np
import pytest

from components.config.model import ModelConfig
from components.errors import ConfigError
from components.trainer import bases, models
from tests.fixtures import cli_config, make_class_folders, run_cli


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp")


def _save_base_weights(base: str, shape, path: str) -> None:
    """`base` from random initialisation, its weights written as Keras' ImageNet files
    are (legacy HDF5, include_top=False)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    net = getattr(keras.applications, bases.BASES[base])(input_shape=shape, include_top=False,
                                                         weights=None)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, net)


def test_the_weights_files_are_the_ones_keras_fetches():
    from keras.src.applications import efficientnet, mobilenet_v2, resnet

    for size in (96, 160, 224):
        name, url = bases.weights_file("mobilenet_v2", (size, size, 3))
        assert name == f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5"
        assert url == mobilenet_v2.BASE_WEIGHT_PATH + name
    # Keras takes the 224 weights for a size it has none of
    assert bases.weights_file("mobilenet_v2", (64, 64, 3))[0].endswith("_224_no_top.h5")
    name, url = bases.weights_file("efficientnet_b0", (64, 64, 3))
    assert (name, url) == ("efficientnetb0_notop.h5", efficientnet.BASE_WEIGHTS_PATH + name)
    name, url = bases.weights_file("resnet50", (64, 64, 3))
    assert name == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert url == resnet.BASE_WEIGHTS_PATH + name


@pytest.mark.parametrize("base,module", [("mobilenet_v2", "mobilenet_v2"),
                                         ("efficientnet_b0", "efficientnet"),
                                         ("resnet50", "resnet50")])
@pytest.mark.parametrize("scale,offset", [(1 / 255.0, 0.0),                      # scale
                                          (1 / (255.0 * 0.27), -0.46 / 0.27)])   # standardize
def test_each_base_gets_its_own_preprocess_input(base, module, scale, offset):
    import keras

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (4, 8, 8, 3)).astype("float32")
    inputs = keras.Input((8, 8, 3))
    net = keras.Model(inputs, bases.preprocess(inputs, base, scale, offset))
    fed = net.predict(pixels * scale + offset, verbose=0)
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    np.testing.assert_allclose(fed, expected, rtol=1e-4, atol=2e-3)


def test_the_transfer_model_feeds_the_base_through_its_preprocessing():
    net = models.build(ModelConfig(kind="transfer", base="mobilenet_v2", pooling="avg"),
                       (32, 32, 3), 3, pixels=(1 / 255.0, 0.0))
    names = [layer.name for layer in net.layers]
    assert names.index("preprocess") < names.index("base")
    assert not net.get_layer("preprocess").trainable


def test_offline_imagenet_stops_before_any_work_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(bases, "_KERAS_APPS", "http://127.0.0.1:9/")   # nothing listens
    make_class_folders(str(tmp_path / "photos"), per_class=10, size=32, channels=3)
    config = cli_config(tmp_path, data={"source": str(tmp_path / "photos"),
                                        "image_size": [32, 32], "channels": 3},
                        model={"kind": "transfer", "weights": "imagenet", "hidden_units": None})
    runs = tmp_path / "runs"
    code, out, err = run_cli(capsys, "run", config, "--runs-dir", str(runs))
    assert code == 2, out + err
    [line] = err.strip().splitlines()
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert line.startswith(f"imgpipe: error: model.weights imagenet: Keras needs {name} "
                           f"for model.base mobilenet_v2 in {tmp_path / 'keras' / 'models'}")
    assert "KERAS_HOME" in line and "model.weights: PATH" in line
    assert "ingest" not in out and not (tmp_path / "serving").exists()
    assert not os.listdir(tmp_path / "keras" / "models")       # no partial file left
    with pytest.raises(ConfigError, match="could not be downloaded"):
        bases.imagenet_weights("mobilenet_v2", (32, 32, 3))


def test_transfer_from_cached_imagenet_weights_trains_fine_tunes_and_serves(
        tmp_path, capsys, monkeypatch):
    """Keras' cached file is used as is (no download), the base is fed its own
    preprocessing in the exported model, and a third of the base is fine-tuned after
    the frozen phase."""
    import tensorflow as tf

    from components import artifacts
    from tests.fixtures import class_pattern, png_bytes

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(bases, "_KERAS_APPS", "http://127.0.0.1:9/")   # must not be needed
    name, _ = bases.weights_file("mobilenet_v2", (32, 32, 3))
    _save_base_weights("mobilenet_v2", (32, 32, 3), str(tmp_path / "keras" / "models" / name))
    make_class_folders(str(tmp_path / "photos"), per_class=20, size=32, channels=3)
    config = cli_config(tmp_path, data={"source": str(tmp_path / "photos"),
                                        "image_size": [32, 32], "channels": 3,
                                        "eval_fraction": 0.3},
                        validate={"max_near_duplicate_fraction": 1.0},
                        model={"kind": "transfer", "weights": "imagenet", "pooling": "avg",
                               "hidden_units": None},
                        train={"epochs": 1, "batch_size": 8},
                        evaluate={"thresholds": {"accuracy": {"min": 0.0}}})
    code, out, err = run_cli(capsys, "run", config, "--runs-dir", str(tmp_path / "runs"),
                             "--until", "train")
    assert code == 0, out[-3000:] + err[-3000:]
    # MobileNetV2's 154 layers: the top 51 after the frozen epoch, for train.epochs again
    assert "fine-tuning the top 51 base layers for 1 epoch(s) after the frozen phase" in out
    assert "epoch 2/2" in out
    model = artifacts.read(out.split("train.trained_model: ")[1].split()[0], "Model")
    loaded = tf.saved_model.load(model.path(artifacts.Model.SAVED_MODEL))
    image = tf.constant([png_bytes(class_pattern(1, 3, 32, 3))])
    probabilities = loaded.signatures["serving_images"](images=image)["probabilities"].numpy()
    assert probabilities.shape == (1, 3) and np.isclose(probabilities.sum(), 1.0, atol=1e-4)


def test_a_weights_file_of_another_base_is_one_line(tmp_path):
    path = str(tmp_path / "mobilenet.h5")
    _save_base_weights("mobilenet_v2", (32, 32, 3), path)
    with pytest.raises(ConfigError) as caught:
        models.build(ModelConfig(kind="transfer", base="efficientnet_b0", weights=path,
                                 pooling="avg"), (32, 32, 3), 3)
    message = str(caught.value)
    assert message.startswith(f"model.weights {path}: {path} does not load into model.base "
                              "efficientnet_b0 (") and "\n" not in message
    assert message.endswith("give that base's weights file (include_top=False), or set "
                            "model.base to the file's base")
