"""The one serving-signature client (components/inference/client.py): a folder that is
no SavedModel, a damaged one and one without serving_images are refused with one
NotServable line, in the same words by batch prediction (`predict.run_inference`, the
infer step's and `imgpipe predict`'s path) and by `imgpipe serve` (`load_version`)."""

from __future__ import annotations

import os

import pytest

from components.errors import ConfigError
from components.inference import client, predict
from components.registry.versions import Version


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp")


def _examples_only(path: str) -> None:
    """A SavedModel whose one signature is serving_default (no serving_images)."""
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            return {"probabilities": tf.zeros([tf.shape(examples)[0], 2])}

    module = Module()
    tf.saved_model.save(module, path, signatures={client.EXAMPLES: module.serve})


def _refusals(path: str) -> list[str]:
    """What check, load, batch prediction and serve say about the model at `path`."""
    from pipeline.serve import loaded

    said = []
    for attempt in (lambda: client.check(path), lambda: client.load(path),
                    lambda: predict.run_inference(path, ["x.png"]),
                    lambda: loaded.load_version(Version("m", 1, path))):
        with pytest.raises(client.NotServable) as info:
            attempt()
        assert isinstance(info.value, ConfigError)         # the CLI's one line, exit 2
        said.append(str(info.value))
    return said


def test_a_model_without_serving_images_is_refused_in_one_line_everywhere(tmp_path):
    path = str(tmp_path / "model")
    _examples_only(path)
    check, load, batch, serve = _refusals(path)
    assert check == load == batch == (
        f"{path} has no serving_images signature (it has serving_default); use a model "
        "imgpipe's trainer exported (a pushed version or a run's trained model), or push "
        "it again.")
    assert serve == check.replace(path, f"m:1 ({path})", 1)
    loaded_ok = client.load(path, signature=client.EXAMPLES)    # the signature it has
    assert set(loaded_ok.signatures) == {client.EXAMPLES}
    assert loaded_ok.signatures[client.EXAMPLES].input_key == "examples"


@pytest.mark.parametrize("damage, says", [
    ("missing", "is not a SavedModel (it holds no saved_model.pb)"),
    ("damaged", "does not load as a SavedModel ("),
])
def test_a_folder_that_is_no_saved_model_is_refused_alike(tmp_path, damage, says):
    path = str(tmp_path / "model")
    os.makedirs(path)
    if damage == "damaged":
        with open(os.path.join(path, "saved_model.pb"), "wb") as handle:
            handle.write(b"\x08\x96\x01not a protocol buffer")
    for message in _refusals(path):
        assert says in message and "\n" not in message, message
        assert message.endswith("or push it again.")
