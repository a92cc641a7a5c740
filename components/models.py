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
# 2x2 max-pooling layers per convolutional kind: each halves height and width
POOLINGS = {"cnn": 1, "deep_cnn": 2}
CONV_FILTERS = 4     # the last convolution's filters in both convolutional kinds
# Weights of the first dense layer past which a model cannot train on this kind of
# machine (4 bytes each, three copies with Adam): 250 million, 3 GB.
MAX_DENSE_WEIGHTS = 250_000_000


def check_input(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> None:
    """What the builder would reject or could never fit in memory, found without
    building (no TensorFlow): ConfigError saying what to change."""
    height, width, channels = input_shape
    if cfg.kind == "transfer":
        if cfg.weights and cfg.weights != "imagenet" and not cfg.weights.endswith(".h5"):
            return          # our own model (a reference or .keras): checked when it loads
        if channels != 3:
            raise ConfigError(f"model.kind transfer needs 3-channel input, got {input_shape}; "
                              "set data.channels: 3")
        if min(height, width) < MIN_BASE_SIZE:
            raise ConfigError(f"model.base {cfg.base} needs images of at least {MIN_BASE_SIZE}"
                              f"x{MIN_BASE_SIZE}, got {height}x{width}; set data.image_size to "
                              "[96, 96] or more (the course uses 192)")
        return
    poolings = POOLINGS.get(cfg.kind, 0)
    if min(height, width) < 2 ** poolings:
        raise ConfigError(f"model.kind {cfg.kind} pools {poolings} time(s) by 2, so it needs "
                          f"images of at least {2 ** poolings}x{2 ** poolings}, got "
                          f"{height}x{width}; raise data.image_size")
    if poolings:
        features = (height >> poolings) * (width >> poolings) * CONV_FILTERS
    else:
        features = height * width * channels
    units = cfg.hidden_units if cfg.hidden_units is not None else \
        DEFAULTS[cfg.kind]["hidden_units"]
    weights = features * (units[0] if units else 2)
    if weights > MAX_DENSE_WEIGHTS:
        instead = "transfer with pooling: avg" if poolings else "cnn, deep_cnn or transfer"
        raise ConfigError(f"model.kind {cfg.kind} on {height}x{width}x{channels} images would "
                          f"have {weights:,} weights in its first dense layer (over "
                          f"{MAX_DENSE_WEIGHTS:,}, about 3 GB to train); use a smaller "
                          f"data.image_size or model.kind {instead}")


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
    check_input(cfg, input_shape)
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
    # channels and size were checked by build (check_input)
    application = getattr(keras.applications, BASES[cfg.base])
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
