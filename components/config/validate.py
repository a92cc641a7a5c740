"""The `validate` section: schema, anomalies and drift checks."""

from __future__ import annotations

from typing import ClassVar, Optional
from pydantic import ConfigDict, Field

from components.config.base import PATH_HELP, PathText, Section


class ValidateConfig(Section):
    """Schema enforcement and drift limits."""

    schema_path: Optional[PathText] = Field(
        None, alias="schema",
        description="TFMD schema (text proto) to enforce; default: inferred from this run. "
                    "A local file must exist when the config loads." + PATH_HELP)
    max_class_drift: float = Field(0.1, ge=0.0, le=1.0,
                                   description="L-infinity distance of class shares vs the "
                                               "previous run above which drift is an error.")
    max_near_duplicate_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="Eval images with a near-duplicate in train "
                                          "(ingest.near_duplicate_rms), as a share of eval, "
                                          "above which validation fails.")
    max_brightness_drift: float = Field(0.1, ge=0.0,
                                        description="Per-class mean brightness change (0-1 "
                                                    "scale) vs the previous run that warns.")
    max_bad_fraction_warning: float = Field(0.01, ge=0.0, le=1.0,
                                            description="Decode-failure rate that warns.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    _moved: ClassVar[dict[str, str]] = {
        "near_duplicate_bits": "near_duplicate_bits is gone: near-duplicates are now decided "
                               "in pixel space, set by ingest: {near_duplicate_rms: ...}"}
