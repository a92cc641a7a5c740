"""The `infra_validate` section: loading the candidate in a fresh process."""

from __future__ import annotations

from pydantic import Field

from components.config.base import Section


class InfraValidateConfig(Section):
    """The serving probe before a push: load the SavedModel in a fresh process, call
    both signatures on a few eval examples."""

    latency_budget_ms: float = Field(2000.0, gt=0.0, description="Budget for one batch of "
                                                                 "probe examples per signature.")
