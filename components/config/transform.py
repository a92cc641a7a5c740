"""The `transform` section: the tensorflow-transform preprocessing."""

from __future__ import annotations

from typing import Literal, Union
from pydantic import Field

from components.config.base import Section


class TransformConfig(Section):
    """tensorflow-transform preprocessing."""

    # standardize by default: measured on 2026-11-30 it trained the convolutional models
    # 2-5 points better in the same epochs (fonts deep CNN 0.904 vs 0.872 over four
    # seeds, sign-language photos 0.87 vs 0.83), for one more pass over the pixels.
    normalize: Literal["scale", "standardize"] = Field(
        "standardize", description="standardize: (pixel - mean) / std with the training "
                                   "split's full-pass mean and std; scale: pixels / 255.")
    keep_aspect_ratio: bool = Field(False, description="Pad instead of stretching.")
    materialize: Union[Literal["auto"], bool] = Field(
        "auto", description="true: write the transformed pixels (uint8) once; false: the "
        "trainer applies the graph in tf.data (and caches in memory what fits "
        "train.cache_memory_mb). auto: write them when all examples' pixels exceed 1 GiB.")
