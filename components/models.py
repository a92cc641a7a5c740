"""Model builders: the course's architectures in Keras 3. They take shapes and widths
and return an uncompiled model; they know nothing of distribution or data."""

from __future__ import annotations

from typing import Any

from components.config import ModelConfig
from components.errors import ConfigError

# Course defaults per kind: hidden widths and activation.
DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic": {"hidden_units": [], "activation": None},
    "dense": {"hidden_units": [128], "activation": "relu"},
    "mlp": {"hidden_units": [128, 128, 128], "activation": "relu"},
    "hidden1": {"hidden_units": [128], "activation": "sigmoid"},
    "dnn": {"hidden_units": [128, 32], "activation": "sigmoid"},
    "cnn": {"hidden_units": [32], "activation": "relu"},
    "deep_cnn": {"hidden_units": [32], "activation": "relu"},
    "transfer": {"hidden_units": [], "activation": None},
}
BASES = {"mobilenet_v2": "MobileNetV2", "efficientnet_b0": "EfficientNetB0",
         "resnet50": "ResNet50"}


def _dense_stack(x, units: list[int], activation: str, initializer: str, dropout: float | None):
    import keras

    for width in units:
        x = keras.layers.Dense(width, activation=activation, kernel_initializer=initializer)(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    return x


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int,
          base_weights: str | None = None):
    """The Keras model for `cfg.kind`; softmax output of `num_classes` probabilities.
    `base_weights` (default `cfg.weights`): 'imagenet' (Keras' download) or a local
    weights file for the transfer base."""
    import keras

    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}.")
    defaults = DEFAULTS[cfg.kind]
    units = cfg.hidden_units if cfg.hidden_units is not None else defaults["hidden_units"]
    activation = cfg.activation or defaults["activation"]
    init = cfg.initializer
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if cfg.kind in ("logistic", "dense", "hidden1", "dnn"):
        x = keras.layers.Flatten()(x)
        x = _dense_stack(x, units, activation, init, None)
    elif cfg.kind == "mlp":
        x = keras.layers.Flatten()(x)
        x = _dense_stack(x, units, activation, init, cfg.dropout)
    elif cfg.kind == "cnn":
        x = keras.layers.Conv2D(4, 5, padding="same", activation="relu", kernel_initializer=init)(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        x = _dense_stack(x, units, activation, init, cfg.dropout)
    elif cfg.kind == "deep_cnn":
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init)(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer=init)(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        x = _dense_stack(x, units, activation, init, cfg.dropout)
    elif cfg.kind == "transfer":
        if input_shape[-1] != 3:
            raise ConfigError(f"model.kind transfer needs 3-channel input, got {input_shape}; "
                              "set data.channels: 3.")
        base_weights = base_weights or cfg.weights
        application = getattr(keras.applications, BASES[cfg.base])
        weights = "imagenet" if base_weights == "imagenet" else None
        base = application(input_shape=input_shape, include_top=False, weights=weights)
        if base_weights and base_weights != "imagenet":
            base.load_weights(base_weights)
        base.trainable = False
        x = base(x, training=False)
        pool = {"flatten": keras.layers.Flatten(), "avg": keras.layers.GlobalAveragePooling2D(),
                "max": keras.layers.GlobalMaxPooling2D()}[cfg.pooling]
        x = pool(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init,
                                 name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=cfg.kind)


def trainable_params(model) -> int:
    return int(sum(int(w.numpy().size) for w in model.trainable_weights))
