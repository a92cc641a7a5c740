"""The `ingest` section: how ingest splits, checks and writes examples."""

from __future__ import annotations

from pydantic import Field

from components.config.base import Section
from components.config.data import IMAGE_EXTENSIONS, MAX_PIXELS


class IngestConfig(Section):
    """Ingest limits: what counts as bad input and how much of it is tolerated."""

    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0,
                                    description="Fail when quarantined / total exceeds this.")
    max_pixels: int = Field(MAX_PIXELS, gt=0,
                            description="Images with more pixels are quarantined "
                                        "(decompression-bomb guard).")
    near_duplicate_rms: float = Field(
        6.0, gt=0.0, le=255.0,
        description="Images whose 16x16 grayscale thumbnails differ by at most this RMS "
                    "(0-255) are near-duplicates: a hash split keeps them in one split, and "
                    "validation counts eval images with one in train as leaks. 6 separates "
                    "JPEG re-encodes (<= 5.3) from distinct images (>= 7.9) on Fashion-MNIST.")
    extensions: list[str] = Field(list(IMAGE_EXTENSIONS),
                                  description="Image file extensions accepted from folders "
                                              "and manifests; other files are quarantined.")
