"""The Keras application bases a transfer model starts from: their ImageNet weights
(the file Keras needs and where it looks for it, found or fetched before any work,
one line when neither can be) and each base's own input preprocessing, built into
the model so the exported model feeds the base what it was trained on.

No TensorFlow at import: the checks before a run use `imagenet_weights` alone."""

from __future__ import annotations

import os
from typing import Any

from components.errors import ConfigError

# model.base -> the keras.applications class
BASES = {"mobilenet_v2": "MobileNetV2", "efficientnet_b0": "EfficientNetB0",
         "resnet50": "ResNet50"}
# The ImageNet weights without the classifier (include_top=False), as Keras 3's
# applications name and fetch them (keras/src/applications/{mobilenet_v2,efficientnet,
# resnet}.py; tests/trainer/test_transfer_bases.py holds these equal to Keras' own).
_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)
# each base's preprocess_input (keras.applications.<module>.preprocess_input): "tf"
# scales 0-255 to [-1, 1]; "caffe" reorders RGB to BGR and subtracts ImageNet's mean
# per channel; "none": the base rescales and normalizes inside (EfficientNet).
PREPROCESSING = {"mobilenet_v2": "tf", "efficientnet_b0": "none", "resnet50": "caffe"}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
DOWNLOAD_TIMEOUT_S = 30


def weights_file(base: str, input_shape: tuple[int, int, int]) -> tuple[str, str]:
    """(file name, URL) of `base`'s ImageNet weights for inputs of `input_shape`."""
    if base == "mobilenet_v2":
        rows = input_shape[0] if input_shape[0] == input_shape[1] \
            and input_shape[0] in MOBILENET_V2_ROWS else 224     # as Keras picks them
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
        return name, f"{_KERAS_APPS}mobilenet_v2/{name}"
    if base == "efficientnet_b0":
        name = "efficientnetb0_notop.h5"
        return name, f"https://storage.googleapis.com/keras-applications/{name}"
    if base == "resnet50":
        name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return name, f"{_KERAS_APPS}resnet/{name}"
    raise ConfigError(f"model.base {base!r}: use one of {', '.join(BASES)}")


def keras_models_dir() -> str:
    """Where Keras keeps (and first looks for) downloaded weights: KERAS_HOME/models,
    KERAS_HOME defaulting to ~/.keras (/tmp/.keras where the home is not writable)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(home, "models")


def imagenet_weights(base: str, input_shape: tuple[int, int, int],
                     log=None) -> str:
    """The local path of `base`'s ImageNet weights: Keras' cached file, else downloaded
    there now (before any step's work, so an offline machine fails at once). Neither:
    one ConfigError naming the file, where Keras looks for it and the offline way."""
    import urllib.error
    import urllib.request

    name, url = weights_file(base, input_shape)
    folder = keras_models_dir()
    path = os.path.join(folder, name)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return path
    if log:
        log(f"downloading {base}'s ImageNet weights {name} into {folder}")
    partial = f"{path}.part-{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(partial, path)
        return path
    except (OSError, urllib.error.URLError, ValueError) as exc:
        if os.path.exists(partial):
            os.remove(partial)
        reason = " ".join(str(getattr(exc, "reason", exc)).split())[:160]
        raise ConfigError(
            f"model.weights imagenet: Keras needs {name} for model.base {base} in {folder} "
            f"(KERAS_HOME/models; KERAS_HOME is {'set' if os.environ.get('KERAS_HOME') else 'unset: ~/.keras'}) "
            f"and it could not be downloaded from {url} ({reason}); copy that file there, "
            f"or set model.weights: PATH to a local {base} weights file (.h5)") from None


def preprocessing_weights(base: str, scale: float, offset: float) -> tuple[Any, Any]:
    """(kernel [1, 1, 3, 3], bias [3]) of the 1x1 convolution that maps the pipeline's
    normalized pixels (pixel * scale + offset, the transform's full-pass constants) to
    what `base`'s own preprocess_input gives for the pixels 0-255."""
    import numpy as np

    undo = np.eye(3) / scale                   # normalized -> 0-255: (x - offset) / scale
    shift = np.full(3, -offset / scale)
    mode = PREPROCESSING[base]
    if mode == "tf":                           # x / 127.5 - 1
        kernel, bias = undo / 127.5, shift / 127.5 - 1.0
    elif mode == "caffe":                      # RGB -> BGR, minus the mean per channel
        reverse = np.eye(3)[:, ::-1]           # input channel k -> output channel 2 - k
        kernel = undo @ reverse
        bias = shift[::-1] - np.asarray(CAFFE_MEAN_BGR)
    else:
        kernel, bias = undo, shift
    return kernel.reshape(1, 1, 3, 3).astype("float32"), bias.astype("float32")


def preprocess(x, base: str, scale: float, offset: float):
    """`x` (normalized pixels) through a frozen 1x1 convolution named `preprocess`
    holding `preprocessing_weights` (float32 under any mixed-precision policy)."""
    import keras

    layer = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False, dtype="float32")
    y = layer(x)
    layer.set_weights(list(preprocessing_weights(base, scale, offset)))
    return y
