"""The `infer` section: batch scoring of a new drop after push."""

from __future__ import annotations

from typing import Optional
from pydantic import Field, field_validator

from components.config.base import PATH_HELP, PathText, Section
from components.config.data import checked_pattern


class InferConfig(Section):
    """Batch inference after push (TFX's BulkInferrer): the infer step scores unlabeled
    images with the model the run just pushed. Without `source` the step is not part
    of the run."""

    source: Optional[PathText] = Field(
        None, description="Images to score: a folder (searched recursively), a CSV/JSONL "
                          "manifest with a 'path' column, or a pattern with {SPAN} or "
                          "{YYYY}{MM}{DD} (and {VERSION}), of which the newest drop is "
                          "scored. Unset: no infer step." + PATH_HELP)
    batch_size: int = Field(64, ge=1, description="Images per model call.")
    top_k: int = Field(3, ge=1, description="Classes listed per image, most likely first.")

    @field_validator("source")
    @classmethod
    def _source(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("source is empty; name a folder, a manifest or a {SPAN} "
                             "pattern, or leave infer.source out (no infer step)")
        return checked_pattern(value)
