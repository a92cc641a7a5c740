"""The typed config: one module per section (`components/config/train.py` holds
`TrainConfig`), `base.py` what they share. A step imports only the sections it reads,
so an edit to one section's module changes the cache key of that section's readers
alone. The root model and YAML loading live in `pipeline/config.py`.

Names once imported from `components.config` itself still resolve for one release,
with a warning (`from components.config import TrainConfig` in a `--dag` file).
"""

from __future__ import annotations

import importlib
import warnings

_SECTION_MODULES = ("base", "data", "ingest", "validate", "transform", "model", "train",
                    "tune", "evaluate", "infra_validate", "push", "infer", "beam")


def __getattr__(name: str):
    for section in _SECTION_MODULES:
        module = importlib.import_module(f"{__name__}.{section}")
        if name in vars(module) and not name.startswith("__"):
            warnings.warn(f"components.config.{name} moved to components.config.{section}."
                          f"{name}; import it from there (the old name goes in the next "
                          "release).", FutureWarning, stacklevel=2)
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
