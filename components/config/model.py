"""The `model` section: which classifier to build, and its widths."""

from __future__ import annotations

from typing import Literal, Optional
from pydantic import Field, field_validator

from components.config.base import PATH_HELP, PathText, Section


MODEL_KINDS = ("logistic", "dense", "mlp", "hidden1", "dnn", "cnn", "deep_cnn", "transfer",
               "squeezenet", "xception", "resnet")


ModelKind = Literal[MODEL_KINDS]


class ModelConfig(Section):
    """Which architecture; widths and activations default to the course's."""

    kind: ModelKind = "deep_cnn"
    hidden_units: Optional[list[int]] = Field(None, description="Dense widths; default per kind.")
    activation: Optional[str] = Field(None, description="Hidden activation; default per kind.")
    initializer: Literal["glorot_uniform", "glorot_normal", "he_uniform", "he_normal"] = \
        "glorot_uniform"
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    base: Literal["mobilenet_v2", "efficientnet_b0", "resnet50"] = "mobilenet_v2"
    weights: Optional[PathText] = Field(None, description="Transfer base weights: imagenet, a "
                                                     "weights file, run:RUN_ID, or MODEL@ALIAS."
                                                     + PATH_HELP)
    pooling: Literal["flatten", "avg", "max"] = "flatten"
    fine_tune_layers: Optional[int] = Field(
        None, ge=0, description="Unfreeze the top N base layers in a second phase, after the "
                                "frozen one (BatchNormalization stays frozen). Unset: a third "
                                "of the base's layers when it starts from pretrained weights "
                                "(imagenet or a weights file), as the course fine-tunes; "
                                "none for other starts. 0: no fine-tuning.")
    fine_tune_epochs: Optional[int] = Field(
        None, ge=0, description="Epochs of the fine-tuning phase; unset: train.epochs again "
                                "when there is one.")
    fine_tune_learning_rate: float = Field(1e-5, gt=0.0)

    @field_validator("hidden_units")
    @classmethod
    def _positive_units(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is not None and any(units <= 0 for units in value):
            raise ValueError(f"hidden_units are layer widths and must be > 0, got {value}; "
                             "e.g. hidden_units: [128, 32], or [] for no hidden layer")
        return value
