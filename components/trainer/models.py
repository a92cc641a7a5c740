"""Model builders: the course's architectures in Keras 3. They take shapes and widths
and return an uncompiled model; they know nothing of distribution or data."""

from __future__ import annotations

from typing import Any

from components.config.model import ModelConfig
from components.errors import ConfigError
from components.trainer.bases import BASES      # model.base -> the Keras application

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
    # The modern convnets, from scratch (hidden_units: the stem's and the blocks' widths,
    # one block per width). Sized for a few thousand 64x64x3 photos on 2 CPU cores: a
    # 2,000-image epoch at batch 32 took 8-15 s here (deep_cnn: 2 s), on 10 classes
    # 124,506 / 49,994 / 308,826 trainable parameters.
    "squeezenet": {"hidden_units": [32, 64, 128, 256], "activation": "relu"},
    "xception": {"hidden_units": [16, 32, 64, 128], "activation": "relu"},
    "resnet": {"hidden_units": [16, 32, 64, 128], "activation": "relu"},
}
# Kinds that end in global average pooling over their last block, for any input size: a
# 3x3 stem convolution of the first width (batch norm, activation, a 3x3 stride-2 max
# pool), then one block per width in hidden_units (squeezenet: a fire module, squeeze
# 1x1 -> expand 1x1 + 3x3 concatenated; xception: two depthwise-separable 3x3
# convolutions with a 1x1 shortcut; resnet: two 3x3 convolutions with a shortcut), each
# block after the first halving height and width (max pool, or stride 2 with a strided
# 1x1 shortcut). Halving stops once height or width is 1, so any size builds.
GAP_KINDS = ("squeezenet", "xception", "resnet")
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
    if cfg.kind in GAP_KINDS:
        units = _units(cfg)
        smallest = 2 if cfg.kind == "squeezenet" else 1
        if not units or min(units) < smallest:
            raise ConfigError(
                f"model.kind {cfg.kind} takes model.hidden_units as its stem's and blocks' "
                f"widths, one block per width, each at least {smallest}; got {units}. e.g. "
                f"hidden_units: {DEFAULTS[cfg.kind]['hidden_units']}")
        return              # global pooling: no dense layer grows with the image
    if cfg.kind == "transfer":
        if _own_base(cfg):
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
    units = _units(cfg)
    weights = features * (units[0] if units else 2)
    if weights > MAX_DENSE_WEIGHTS:
        instead = "transfer with pooling: avg" if poolings else "cnn, deep_cnn or transfer"
        raise ConfigError(f"model.kind {cfg.kind} on {height}x{width}x{channels} images would "
                          f"have {weights:,} weights in its first dense layer (over "
                          f"{MAX_DENSE_WEIGHTS:,}, about 3 GB to train); use a smaller "
                          f"data.image_size or model.kind {instead}")


def _own_base(cfg: ModelConfig) -> bool:
    """A transfer base cut from a model this pipeline trained (a reference or .keras in
    model.weights), not a Keras application's."""
    return bool(cfg.weights) and cfg.weights != "imagenet" and not cfg.weights.endswith(".h5")


def _units(cfg: ModelConfig) -> list[int]:
    return list(cfg.hidden_units if cfg.hidden_units is not None
                else DEFAULTS[cfg.kind]["hidden_units"])


def architecture(cfg: ModelConfig) -> dict[str, Any]:
    """What decides the shapes of a model's layers besides its input and its classes:
    the kind and its dense widths, or a transfer model's base and pooling."""
    if cfg.kind == "transfer":
        return {"kind": cfg.kind, "base": OWN_BASE if _own_base(cfg) else cfg.base,
                "pooling": cfg.pooling}
    return {"kind": cfg.kind, "hidden_units": _units(cfg)}


# A transfer model's base when model.weights named a model this pipeline trained.
OWN_BASE = "a model this pipeline trained (model.weights)"
# The architecture keys as the config names them (model.KEY).
ARCHITECTURE_KEYS = ("kind", "hidden_units", "base", "pooling")


def recorded_architecture(card: dict[str, Any]) -> dict[str, Any]:
    """The architecture a model card (or a Model artifact's properties, as a card) says
    its model has: `model.architecture` as train records it, else (older cards) the
    recorded model config with the tuned values applied, else only `model.kind`."""
    from components.artifacts import card_field
    from components.config.tune import apply_values

    recorded = card_field(card, "model.architecture")
    if isinstance(recorded, dict):
        return recorded
    config = card_field(card, "config.model")
    if isinstance(config, dict):
        try:
            cfg = ModelConfig.model_validate(config)
            best = {k: v for k, v in (card_field(card, "hyperparameters.best") or {}).items()
                    if k.startswith("model.")}
            return architecture(apply_values({"model": cfg}, best)["model"] if best else cfg)
        except ValueError:
            pass
    kind = card_field(card, "model.kind")
    return {"kind": kind} if kind else {}


def _shape_text(shape) -> str:
    return "x".join(str(n) for n in shape)


def warm_start_problem(cfg: ModelConfig, input_shape: tuple[int, int, int],
                       num_classes: int | None, card: dict[str, Any], what: str,
                       unknown: frozenset[str] | set[str] = frozenset()) -> str | None:
    """Why the model a card describes cannot start `cfg`'s model (one line: what differs
    and how to fix it), or None. `what` names the source in the message (`train.warm_start
    photos@production (photos:7)`); `num_classes` None: not known yet; `unknown`: model
    keys a search sets later (checked when train copies the layers)."""
    from components.artifacts import card_field

    recorded, mine = recorded_architecture(card), architecture(cfg)
    kind = recorded.get("kind")
    if kind and "kind" not in unknown and kind != cfg.kind:
        return (f"{what} is a {kind} model and model.kind is {cfg.kind}; set model.kind: "
                f"{kind}, or warm start from a {cfg.kind} model.")
    shape = card_field(card, "model.image_shape")
    if shape and tuple(shape) != tuple(input_shape):
        height, width, channels = shape
        return (f"{what} was trained on {_shape_text(shape)} images and this config feeds "
                f"{_shape_text(input_shape)}; set data.image_size: [{height}, {width}] and "
                f"data.channels: {channels}, or warm start from a model of "
                f"{_shape_text(input_shape)} images.")
    if kind == cfg.kind and not {"kind"} & set(unknown):
        for key in ARCHITECTURE_KEYS[1:]:
            if key in recorded and key in mine and key not in unknown \
                    and recorded[key] != mine[key]:
                return (f"{what} has model.{key} {recorded[key]} and this config builds "
                        f"{mine[key]}; set model.{key}: {recorded[key]}, or warm start from a "
                        f"model with {mine[key]}.")
    classes = card_field(card, "label_vocabulary")
    if num_classes is not None and classes and len(classes) != num_classes:
        return (f"{what} has {len(classes)} classes ({', '.join(map(str, classes))}) and "
                f"this data has {num_classes}; warm start from a model of the same classes "
                "or drop train.warm_start to train from scratch.")
    return None


# What a Keras 3 `.keras` file holds (a zip): the model's config and its weights (h5, or
# the npz Keras also reads).
KERAS_MEMBERS = (("config.json",), ("model.weights.h5", "model.weights.npz"))


def keras_file_problem(path: str) -> str | None:
    """Why the `.keras` file at `path` cannot be loaded (missing, not a zip: truncated
    or overwritten, a zip without the model's config or weights), or None. Reads the
    zip's directory only (no Keras, no TensorFlow), so the checks before a run can
    afford it."""
    import zipfile

    from components.io import fileio

    if not fileio.exists(path):
        return f"{path} is missing"
    try:
        with fileio.open_file(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        reason = "truncated or not a Keras model" if isinstance(exc, zipfile.BadZipFile) \
            else str(exc)
        return f"{path} is damaged: not a readable .keras zip ({reason})"
    lacking = [" or ".join(member) for member in KERAS_MEMBERS if not names & set(member)]
    if lacking:
        return f"{path} is damaged: the .keras zip holds no {' and no '.join(lacking)}"
    return None


def load_keras(path: str, what: str, fix: str):
    """The Keras model saved at `path` (compile=False); a damaged or unreadable file is
    one ConfigError naming `what` (the config key and value that chose it), the problem
    and `fix`, not Keras' own "File not found" traceback."""
    import keras

    problem = keras_file_problem(path)
    if problem is None:
        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as exc:      # a zip whose members Keras cannot read
            problem = f"{path} cannot be loaded ({type(exc).__name__}: " \
                      f"{' '.join(str(exc).split())[:200]})"
    raise ConfigError(f"{what}: {problem}; {fix}")


WARM_START_FIX = ("push a model again (imgpipe run) or warm start from another version "
                  "(train.warm_start: NAME:VERSION), or drop train.warm_start.")


def warm_start(net, keras_file: str, cfg: ModelConfig, input_shape: tuple[int, int, int],
               num_classes: int, what: str) -> int:
    """Copies the weights of the Keras model in `keras_file` into `net` (built from
    `cfg`) layer by layer; returns how many weights were copied. Only the weights: the
    optimizer and compile settings stay `net`'s. ConfigError naming the first layer
    whose shapes differ (another kind, other widths, input or classes)."""
    own = load_keras(keras_file, what, WARM_START_FIX)
    card = {"model": {"kind": own.name, "image_shape": list(own.input_shape[1:])}}
    problem = warm_start_problem(cfg, input_shape, None, card, what) \
        if own.name in DEFAULTS else None
    if problem is None and own.output_shape[-1] != num_classes:
        problem = (f"{what} has {own.output_shape[-1]} classes and this data has "
                   f"{num_classes}; warm start from a model of the same classes or drop "
                   "train.warm_start to train from scratch.")
    if problem:
        raise ConfigError(problem)
    theirs = [layer for layer in own.layers if layer.weights]
    mine = [layer for layer in net.layers if layer.weights]
    if len(theirs) != len(mine):
        raise ConfigError(f"{what} has {len(theirs)} layers with weights and model.kind "
                          f"{cfg.kind} here has {len(mine)}; set model.hidden_units (and the "
                          "other model keys) as that model was trained, or drop "
                          "train.warm_start.")
    copied = 0
    for index, (source, target) in enumerate(zip(theirs, mine)):
        values = source.get_weights()
        shapes = [tuple(v.shape) for v in values]
        wanted = [tuple(w.shape) for w in target.weights]
        if type(source) is not type(target) or shapes != wanted:
            raise ConfigError(
                f"{what}: its layer {index + 1} ({type(source).__name__} {shapes}) does not "
                f"fit layer {index + 1} here ({type(target).__name__} {wanted}); set "
                "model.hidden_units (and the other model keys) as that model was trained, "
                "or drop train.warm_start.")
        target.set_weights(values)
        copied += sum(int(v.size) for v in values)
    return copied


def _dense_stack(x, units: list[int], activation: str, initializer: str, dropout: float | None):
    import keras

    for width in units:
        x = keras.layers.Dense(width, activation=activation, kernel_initializer=initializer)(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    return x


def _halves(x) -> bool:
    """Whether a stride-2 step still halves x: its height and width are both at least 2."""
    return min(x.shape[1], x.shape[2]) >= 2


def _norm(x, activation: str | None):
    import keras

    # momentum 0.9, not Keras' 0.99: a daily drop of a few hundred photos trains for a
    # few hundred steps, and the slower moving statistics lagged the weights so far that
    # the model served at chance (tests/trainer/test_model_kinds.py measures it)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    return keras.layers.Activation(activation)(x) if activation else x


def _conv(x, filters: int, size: int, init: str, strides: int = 1):
    import keras

    return keras.layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False,
                               kernel_initializer=init)(x)


def _shortcut(x, width: int, downsample: bool, init: str):
    """The identity, or a (strided) 1x1 convolution with batch norm where the block
    changes the width or halves the size."""
    if not downsample and x.shape[-1] == width:
        return x
    return _norm(_conv(x, width, 1, init, strides=2 if downsample else 1), None)


def _fire(x, width: int, downsample: bool, activation: str, init: str):
    """SqueezeNet's fire module of `width` output channels: a 1x1 squeeze to width/4,
    expanded by 1x1 and 3x3 convolutions (width/2 each) concatenated; max pool first
    when it halves."""
    import keras

    if downsample:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    squeeze = _norm(_conv(x, max(1, width // 4), 1, init), activation)
    expand = keras.layers.Concatenate()([_conv(squeeze, width // 2, 1, init),
                                         _conv(squeeze, width - width // 2, 3, init)])
    return _norm(expand, activation)


def _separable_block(x, width: int, downsample: bool, activation: str, init: str):
    """Xception's block: activation, two 3x3 depthwise-separable convolutions with batch
    norm (activation between), a 3x3 stride-2 max pool when it halves; plus the shortcut."""
    import keras

    def separable(y):
        return keras.layers.SeparableConv2D(width, 3, padding="same", use_bias=False,
                                            depthwise_initializer=init,
                                            pointwise_initializer=init)(y)

    y = keras.layers.Activation(activation)(x)
    y = _norm(separable(_norm(separable(y), activation)), None)
    if downsample:
        y = keras.layers.MaxPooling2D(3, strides=2, padding="same")(y)
    return keras.layers.Add()([y, _shortcut(x, width, downsample, init)])


def _residual_block(x, width: int, downsample: bool, activation: str, init: str):
    """ResNet's basic block: 3x3 convolution (stride 2 when it halves), batch norm,
    activation, 3x3 convolution, batch norm, plus the shortcut, then the activation."""
    import keras

    y = _norm(_conv(x, width, 3, init, strides=2 if downsample else 1), activation)
    y = _norm(_conv(y, width, 3, init), None)
    y = keras.layers.Add()([y, _shortcut(x, width, downsample, init)])
    return keras.layers.Activation(activation)(y)


BLOCKS = {"squeezenet": _fire, "xception": _separable_block, "resnet": _residual_block}


def _gap_net(x, kind: str, units: list[int], activation: str, init: str):
    """The stem, one block per width, and the global average pooling (GAP_KINDS)."""
    import keras

    x = _norm(_conv(x, units[0], 3, init), activation)
    if _halves(x):
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for index, width in enumerate(units):
        x = BLOCKS[kind](x, width, index > 0 and _halves(x), activation, init)
    if kind == "xception":
        x = keras.layers.Activation(activation)(x)    # its blocks end before the activation
    # transfer_base cuts a model of these kinds here: the pooled vector is the base
    return keras.layers.GlobalAveragePooling2D(name="features")(x)


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int,
          base_weights: str | None = None, pixels: tuple[float, float] | None = None):
    """The Keras model for `cfg.kind`; softmax output of `num_classes` probabilities.
    `base_weights` (default `cfg.weights`): 'imagenet' (Keras' download) or a local
    weights file for the transfer base. `pixels`: (scale, offset) of the transform's
    normalization (normalized = pixel * scale + offset; default pixels / 255): a Keras
    application base gets its own preprocessing of the pixels 0-255 from them."""
    import keras

    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}.")
    check_input(cfg, input_shape)
    defaults = DEFAULTS[cfg.kind]
    units = _units(cfg)
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
    elif cfg.kind in GAP_KINDS:
        x = _gap_net(x, cfg.kind, units, activation, init)
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout)(x)
    elif cfg.kind == "transfer":
        weights = base_weights or cfg.weights
        base = transfer_base(cfg, input_shape, weights)
        base.trainable = False
        if not (weights and weights.endswith(".keras")):
            # a Keras application: fed as its preprocess_input feeds it (a model this
            # pipeline trained takes the pipeline's normalized pixels as they are)
            from components.trainer import bases

            x = bases.preprocess(x, cfg.base, *(pixels or (1 / 255.0, 0.0)))
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
        own = load_keras(weights, f"model.weights {cfg.weights or weights}",
                         "point model.weights at a model that loads, or retrain it.")
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
    from components.trainer import bases

    application = getattr(keras.applications, BASES[cfg.base])
    base = application(input_shape=input_shape, include_top=False, weights=None)
    if weights == "imagenet":
        # the file Keras would fetch, found or fetched by imgpipe (one line when neither)
        weights = bases.imagenet_weights(cfg.base, input_shape)
    if weights:
        try:
            base.load_weights(weights)
        except Exception as exc:       # another base's file, a truncated one
            raise ConfigError(
                f"model.weights {cfg.weights or weights}: {weights} does not load into "
                f"model.base {cfg.base} ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:160]}); give that base's weights file "
                "(include_top=False), or set model.base to the file's base") from None
    return keras.Model(base.inputs, base.output, name="base")


def fine_tuning(cfg: ModelConfig, weights: str | None, epochs: int,
                base_layers: int) -> tuple[int, int]:
    """(base layers to unfreeze, epochs) of a transfer model's fine-tuning phase, as
    configured, else the course's (TensorFlow's transfer-learning tutorial unfreezes
    MobileNetV2's top 54 of 154 layers for as many epochs again, at a tenth of the
    rate): a third of the base's layers when the base starts from pretrained weights
    (imagenet, a weights file), none from a model this pipeline trained or from
    random initialisation; train.`epochs` again. (0, 0) for the other kinds."""
    if cfg.kind != "transfer":
        return 0, 0
    pretrained = bool(weights) and not weights.endswith(".keras")
    layers = cfg.fine_tune_layers if cfg.fine_tune_layers is not None \
        else (base_layers // 3 if pretrained else 0)
    rounds = cfg.fine_tune_epochs if cfg.fine_tune_epochs is not None else epochs
    return (layers, rounds) if layers and rounds else (0, 0)


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
