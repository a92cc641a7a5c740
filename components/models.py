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
MIN_BASE_SIZE = 32   # the smallest input the Keras application bases accept


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
        base = transfer_base(cfg, input_shape, base_weights or cfg.weights)
        base.trainable = False
        x = base(x, training=False)
        if len(x.shape) == 4:
            pool = {"flatten": keras.layers.Flatten(),
                    "avg": keras.layers.GlobalAveragePooling2D(),
                    "max": keras.layers.GlobalMaxPooling2D()}[cfg.pooling]
            x = pool(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init,
                                 name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=cfg.kind)


def transfer_base(cfg: ModelConfig, input_shape: tuple[int, int, int], weights: str | None):
    """The frozen feature extractor. `weights`: 'imagenet' (Keras' download), a weights
    file for `cfg.base` (.h5 / .weights.h5), or a Keras model this pipeline trained
    (`model.keras`, resolved from `run:RUN_ID` / `MODEL@ALIAS` by the runner): its
    layers up to the last Flatten/pooling become the base (else all but the head)."""
    import keras

    if weights and weights.endswith(".keras"):
        own = keras.saving.load_model(weights, compile=False)
        if tuple(own.input_shape[1:]) != tuple(input_shape):
            raise ConfigError(
                f"model.weights {weights} was trained on input {tuple(own.input_shape[1:])}, "
                f"this run feeds {tuple(input_shape)}; set data.image_size/channels to match.")
        # The features the old head saw are too specific to its classes; cut at the
        # last Flatten/pooling (the convolutional features) when there is one.
        cut = next((layer for layer in reversed(own.layers) if isinstance(
            layer, (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D,
                    keras.layers.GlobalMaxPooling2D))), own.layers[-2])
        return keras.Model(own.inputs, cut.output, name="base")
    if input_shape[-1] != 3:
        raise ConfigError(f"model.kind transfer needs 3-channel input, got {input_shape}; "
                          "set data.channels: 3.")
    application = getattr(keras.applications, BASES[cfg.base])
    if min(input_shape[:2]) < MIN_BASE_SIZE:
        raise ConfigError(f"model.base {cfg.base} needs images of at least {MIN_BASE_SIZE}x"
                          f"{MIN_BASE_SIZE}, got {input_shape[0]}x{input_shape[1]}; set "
                          "data.image_size to [96, 96] or more (the course uses 192).")
    base = application(input_shape=input_shape, include_top=False,
                       weights="imagenet" if weights == "imagenet" else None)
    if weights and weights != "imagenet":
        base.load_weights(weights)
    return keras.Model(base.inputs, base.output, name="base")


def unfreeze_top(model, layers: int) -> int:
    """Makes the top `layers` layers of the transfer base trainable (BatchNorm layers
    stay in inference mode); returns how many weights became trainable."""
    base = model.get_layer("base")
    before = trainable_params(model)
    base.trainable = True
    for layer in base.layers[:-layers]:
        layer.trainable = False
    for layer in base.layers[-layers:]:
        if layer.__class__.__name__ == "BatchNormalization":
            layer.trainable = False
    return trainable_params(model) - before


def trainable_params(model) -> int:
    return int(sum(int(w.numpy().size) for w in model.trainable_weights))
