"""Trainer: exact architectures, training, NaN handling, export served in a fresh process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from components import artifacts
from components.trainer import models
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from components.errors import TrainingError
from components.steps import train
from pipeline import cli
from tests import fixtures

COURSE = {  # kind: (input shape, classes, trainable params in the course material)
    "logistic": ((36, 36, 1), 5, 6485),
    "dense": ((28, 28, 1), 10, 101770),
    "mlp": ((28, 28, 1), 10, 134794),
    "hidden1": ((36, 36, 1), 5, 166661),
    "dnn": ((36, 36, 1), 5, 170309),
    "cnn": ((36, 36, 1), 5, 41773),
    "deep_cnn": ((36, 36, 1), 5, 11305),
    "transfer": ((192, 192, 3), 5, 230405),
}


@pytest.mark.parametrize("kind", sorted(COURSE))
def test_architectures_match_the_course(kind):
    shape, classes, params = COURSE[kind]
    model = models.build(ModelConfig(kind=kind), shape, classes)
    assert models.trainable_params(model) == params
    assert model.output_shape == (None, classes)


def test_summary_command(capsys):
    assert cli.main(["summary", "--model", "cnn", "--input-shape", "36,36,1",
                     "--classes", "5"]) == 0
    out = capsys.readouterr().out
    # Keras' own table, whose count line is printed once (it was printed twice)
    assert "conv2d" in out.lower() and out.count("Trainable params: 41,773") == 1
    assert cli.main(["summary", "--model", "cnn", "--input-shape", "36x36",
                     "--classes", "5"]) == 2


def test_transfer_loads_local_weights(tmp_path):
    import keras

    base = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False,
                                          weights=None)
    path = str(tmp_path / "base.weights.h5")
    base.save_weights(path)
    model = models.build(ModelConfig(kind="transfer", weights=path, pooling="avg"), (96, 96, 3), 3)
    def kernel(m):
        return [w for w in m.weights if w.path.endswith("Conv1/kernel")][0].numpy()

    assert np.array_equal(kernel(model), kernel(base))
    assert models.trainable_params(model) == 1280 * 3 + 3


def test_trains_and_exports_model(tmp_path, graph):
    summary = train.run(*graph, ModelConfig(kind="cnn"), TrainConfig(epochs=8, batch_size=8),
                        trained_model=str(tmp_path / "m"))
    model = artifacts.read(str(tmp_path / "m"), "Model")
    history = artifacts.Model.read(model)
    assert len(history["loss"]) == 8 and history["loss"][-1] < history["loss"][0]
    assert summary["final"]["accuracy"] > 0.6  # the stripe pattern is easy to learn
    assert model.properties["trainable_params"] == models.trainable_params(
        models.build(ModelConfig(kind="cnn"), (12, 12, 1), 3))
    assert os.path.isdir(model.path("logs"))


def test_nan_loss_is_a_clear_error(tmp_path, graph):
    cfg = TrainConfig(epochs=3, batch_size=8, optimizer={"name": "sgd", "learning_rate": 1e30})
    with pytest.raises(TrainingError, match="diverged"):
        train.run(*graph, ModelConfig(kind="dense"), cfg, trained_model=str(tmp_path / "m"))
    assert not artifacts.is_committed(str(tmp_path / "m"))


SERVE = """
import json, sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = [open(p, "rb").read() for p in sys.argv[2:]]
out = loaded.signatures["serving_images"](images=tf.constant(images))
print(json.dumps({"class_name": [c.decode() for c in out["class_name"].numpy()],
                  "probabilities": out["probabilities"].numpy().tolist()}))
"""


def test_export_serves_png_bytes_in_a_fresh_process(tmp_path, graph):
    import tensorflow as tf

    train.run(*graph, ModelConfig(kind="logistic"), TrainConfig(epochs=3, batch_size=8),
              trained_model=str(tmp_path / "m"))
    saved = str(tmp_path / "m" / artifacts.Model.SAVED_MODEL)
    paths = []
    for li in range(3):
        path = tmp_path / f"{li}.png"
        path.write_bytes(fixtures.png_bytes(fixtures.class_pattern(li, 500)))
        paths.append(str(path))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", SERVE, saved, *paths], capture_output=True,
                          text=True, env=env, check=True)
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = tf.saved_model.load(saved)
    here = loaded.signatures["serving_images"](
        images=tf.constant([open(p, "rb").read() for p in paths]))
    assert fresh["class_name"] == [c.decode() for c in here["class_name"].numpy()]
    assert np.allclose(fresh["probabilities"], here["probabilities"].numpy(), atol=1e-6)
    assert np.allclose(np.sum(fresh["probabilities"], axis=1), 1.0, atol=1e-5)
    # serving_default takes serialized raw examples and agrees with serving_images
    from components import features
    examples = [features.encode_example({features.IMAGE: open(p, "rb").read()}) for p in paths]
    by_example = loaded.signatures["serving_default"](examples=tf.constant(examples))
    assert np.allclose(by_example["probabilities"].numpy(), here["probabilities"].numpy())
    labeled = [features.encode_example({features.IMAGE: open(p, "rb").read(),
                                        features.LABEL: label})
               for p, label in zip(paths, fixtures.CLASSES)]
    transformed = loaded.signatures["transform_features"](examples=tf.constant(labeled))
    assert transformed["image"].shape == (3, 12, 12, 1)
    vocabulary = graph[0].properties["label_vocabulary"]
    assert [vocabulary[i] for i in transformed["label_id"].numpy()] == list(fixtures.CLASSES)


def test_transfer_from_our_own_model_then_fine_tune(tmp_path, graph):
    train.run(*graph, ModelConfig(kind="cnn"), TrainConfig(epochs=3, batch_size=8),
              trained_model=str(tmp_path / "first"))
    own = str(tmp_path / "first" / artifacts.Model.KERAS_FILE)
    cfg = ModelConfig(kind="transfer", weights=own, fine_tune_layers=2, fine_tune_epochs=2)
    model = models.build(cfg, (12, 12, 1), 3)
    # the first model's conv layers are the frozen base; only the new head trains
    assert models.trainable_params(model) == 6 * 6 * 4 * 3 + 3   # head on the conv features
    # the runner passes the start weights model.weights names (a file: that file)
    train.run(*graph, cfg, TrainConfig(epochs=2, batch_size=8), trained_model=str(tmp_path / "m"),
              weights=own)
    tuned = artifacts.read(str(tmp_path / "m"), "Model")
    history = artifacts.Model.read(tuned)
    assert history["phase"] == [1.0, 1.0, 2.0, 2.0] and len(history["loss"]) == 4
    assert tuned.properties["epochs"] == 4
    with pytest.raises(Exception, match="trained on input"):
        models.build(cfg, (16, 16, 1), 3)


def test_early_stopping_ends_training_when_eval_loss_stalls(tmp_path, graph):
    cfg = TrainConfig(epochs=30, batch_size=8, early_stopping_patience=1,
                      optimizer={"name": "sgd", "learning_rate": 1e-12})
    train.run(*graph, ModelConfig(kind="logistic"), cfg, trained_model=str(tmp_path / "m"))
    assert artifacts.read(str(tmp_path / "m"), "Model").properties["epochs"] < 30


def test_weights_reference_to_an_earlier_run(tmp_path):
    from pipeline.roles import Context, resolve_weights
    from pipeline.metadata import MetadataStore

    store = MetadataStore(str(tmp_path / "m.sqlite"))
    run_id = store.start_run("p", {}, None)
    execution = store.start_execution(run_id, "train", "k", {}, "d")
    store.record_artifact(execution, "output", "trained_model", "/models/abc", "Model", "f", {},
                          "now")
    store.finish_execution(execution, "succeeded")
    context = Context("p", str(tmp_path), "production", store=store)
    assert resolve_weights(f"run:{run_id[:8]}", context) == "/models/abc/model.keras"
    with pytest.raises(Exception, match="no unique run"):
        resolve_weights("run:nope", context)
    with pytest.raises(Exception, match="not a file"):
        resolve_weights("missing.h5", context)
