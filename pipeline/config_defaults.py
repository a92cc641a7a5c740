"""`auto` data keys decided from the data, and the photo or course model/train defaults."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from components.config.data import AUTO, DATA_SHAPE_KEYS, DataConfig
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from pipeline.config_yaml import flatten


# The defaults for 3-channel photos (data.channels: 3), under the keys a config gives:
# trained from scratch (no ImageNet weights are needed), an Xception-style net with
# augmentation (train.augment auto), a cosine schedule with warmup and label smoothing.
# Measured by bench/accuracy.py (configs/photos.yaml, --matrix). The course's models
# keep their exact architectures and training as explicit kinds: a config naming
# model.kind gets neither PHOTO_MODEL nor PHOTO_TRAIN. Widths 24-192 and 40 epochs
# (2026-12-08, seed 42): the shared sign-language photos 0.979 in 314 s (widths 16-128
# and 30 epochs: 0.961 in 187 s), builtin:shapes 1.000 (0.986): the photos' run left
# two thirds of the 15 minutes unused, and a set twice its size still fits them.
PHOTO_MODEL = {"kind": "xception", "hidden_units": [24, 48, 96, 192]}
PHOTO_TRAIN = {"epochs": 40, "batch_size": 32, "label_smoothing": 0.1,
               "optimizer": {"learning_rate": 0.002, "schedule": "cosine", "warmup_epochs": 2}}


def data_and_defaults(tree: Any) -> Any:
    """The config tree with `auto` data keys decided from the data (recorded in
    data.decided), the photo defaults applied where they apply, and which defaults
    filled the model and train keys, and why, recorded in train.defaults. A tree that
    carries its records (a config as a run recorded it) keeps them: its values are all
    set by then, and deciding again would read its model.kind as named."""
    data = tree.get("data", {}) if isinstance(tree, dict) else None
    if isinstance(data, DataConfig):
        data = data.model_dump(mode="python", by_alias=True, exclude_unset=True)
    if not isinstance(data, dict):
        return tree
    auto = [key for key in DATA_SHAPE_KEYS if data.get(key, AUTO) == AUTO]
    if auto:
        try:
            checked = DataConfig.model_validate({**data, "decided": None})
        except ValidationError:
            return tree             # the section's own check says what is wrong, and where
        from components.data import data_shape

        shape = data_shape.decide(checked, None if "channels" in auto else checked.channels)
        values = {"channels": shape.channels, "image_size": list(shape.image_size)}
        data = {**data, **{key: values[key] for key in auto}}
        data["decided"] = {"keys": auto, "basis": shape.basis, "unread": shape.unread}
    tree = {**tree, "data": data}
    train = tree.get("train", {})
    if isinstance(train, dict) and train.get("defaults") is not None:
        return tree
    regime = _regime(tree)
    tree = photo_defaults(tree)
    if isinstance(tree.get("train", {}), dict):
        tree["train"] = {**tree.get("train", {}), "defaults": regime}
    return tree


def _regime(tree: dict[str, Any]) -> dict[str, Any]:
    """train.defaults for a tree before the photo defaults: which defaults fill the keys
    PHOTO_MODEL and PHOTO_TRAIN name that the tree does not set, their values, and why."""
    after = photo_defaults(tree)
    model = tree.get("model", {})
    kind = model.get("kind") if isinstance(model, dict) else None
    photo = after is not tree
    given = flatten({"model": tree.get("model", {}), "train": tree.get("train", {})})
    if photo:
        filled = flatten({"model": after.get("model", {}), "train": after.get("train", {})})
        why = "3 channels, no model.kind named"
    else:
        filled = flatten({"model": ModelConfig().model_dump(mode="json"),
                          "train": TrainConfig().model_dump(mode="json")})
        why = (f"model.kind {kind} is named" if tree["data"].get("channels") == 3 else
               "1 channel: they are for 3-channel photos")
    keys = {key: filled[key] for key in flatten({"model": PHOTO_MODEL, "train": PHOTO_TRAIN})
            if key not in given and filled.get(key) is not None}   # None: the kind's own
    return {"applied": "photo" if photo else "course", "why": why, "keys": keys}


def photo_defaults(tree: Any) -> Any:
    """For 3-channel data whose config names no model.kind: PHOTO_MODEL under its model
    keys and PHOTO_TRAIN under its train keys; other trees as they are."""
    data = tree.get("data") if isinstance(tree, dict) else None
    if not isinstance(data, dict) or data.get("channels") != 3:
        return tree
    model = tree.get("model", {})
    if not isinstance(model, dict) or "kind" in model:
        return tree
    tree = {**tree, "model": {**PHOTO_MODEL, **model}}
    train = tree.get("train", {})
    if isinstance(train, dict):
        optimizer = train.get("optimizer", {})
        # another optimizer keeps its own rate and schedule, not the photos' adam ones
        if isinstance(optimizer, dict) and optimizer.get("name", "adam") == "adam":
            optimizer = {**PHOTO_TRAIN["optimizer"], **optimizer}
        tree["train"] = {**PHOTO_TRAIN, **train, "optimizer": optimizer}
    return tree
