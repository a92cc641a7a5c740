"""The module names before the package layout (issue 33), and the import hook that
keeps a `--dag` file written against them working for one release.

`MOVED` maps each old module to the one that holds most of its names now. A user's DAG
module that imports an old name (`from components import fileio, training`,
`from components.registry_store import CARD`, `from pipeline.local import run_pipeline`)
gets the new module's names, with a FutureWarning naming where to import them from.
A name the new module no longer holds is looked up in the modules beside it (a module
split after the move: `components.trainer.training`'s input pipeline in its own file).

Importing this module installs nothing: `install()` does, and only `pipeline.dag.load`
calls it, for a user's DAG. No step imports this module, so it widens no code key.
(`components.config`'s old names are its own package's: components/config/__init__.py.)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import pkgutil
import sys
import types
import warnings
from typing import Any

# old module -> new module (tools' move of issue 33). The old names that are packages
# now (components.registry, components.inference, pipeline.local, pipeline.report) are
# real packages: their old names resolve through the package (`_package_fallback`).
MOVED = {
    "components.sources": "components.data.sources",
    "components.datasets": "components.data.datasets",
    "components.imaging": "components.data.imaging",
    "components.neardup": "components.data.neardup",
    "components.spans": "components.data.spans",
    "components.ingest_checks": "components.data.ingest_checks",
    "components.ingest_graph": "components.data.ingest_graph",
    "components.ingest_stats": "components.data.ingest_stats",
    "components.ingest_window": "components.data.ingest_window",
    "components.data_shape": "components.data.data_shape",
    "components.schema": "components.data.schema",
    "components.models": "components.trainer.models",
    "components.distribute": "components.trainer.distribute",
    "components.training": "components.trainer.training",
    "components.scoring": "components.evaluation.scoring",
    "components.gate": "components.evaluation.gate",
    "components.inference": "components.inference.handler",
    "components.predict": "components.inference.predict",
    "components.serving_config": "components.inference.serving_config",
    "components.registry": "components.registry.versions",
    "components.registry_store": "components.registry.store",
    "components.fileio": "components.io.fileio",
    "components.gcs": "components.io.gcs",
    "components.beamio": "components.io.beamio",
    "components.tfrecord": "components.io.tfrecord",
    "components.vertex": "components.integrations.vertex",
    "components.request_log": "pipeline.serve.request_log",
    "components.monitoring": "pipeline.serve.monitoring",
    "components.canary": "pipeline.serve.canary",
    "pipeline.local": "pipeline.local.runner",
    "pipeline.submit": "pipeline.kfp.submit",
    "pipeline.report": "pipeline.report.html",
    "pipeline.report_plots": "pipeline.report.plots",
    "pipeline.registry": "pipeline.registry_views",
}
WHEN = "the old name goes in the next release"


def moved_to(name: str) -> str | None:
    """Where the code of an imported old name is now: `components.fileio` and
    `components.fileio.read_text` -> `components.io.fileio`; None for a name that did
    not move. Asks nothing of the disk (a cache key reads it without importing): call
    it for names that are no module now."""
    for candidate in (name, name.rpartition(".")[0]):
        if candidate in MOVED:
            return MOVED[candidate]
    return None


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _internal(frame: types.FrameType) -> bool:
    """A frame of the import system, which warnings.warn's stacklevel skips."""
    name = frame.f_code.co_filename
    return "importlib" in name and "_bootstrap" in name


def _caller_level() -> int:
    """The stacklevel that names the first frame outside the import system and this
    module (the user's import line), counted as warnings.warn counts."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename == __file__ or _internal(frame)):
        frame = frame.f_back
        while frame is not None and _internal(frame):
            frame = frame.f_back
        level += 1
    return level


def _lookup(new: str, name: str) -> Any:
    """`name` of module `new`, or of a module beside it (`new` was split since)."""
    module = importlib.import_module(new)
    if name in vars(module):
        return getattr(module, name)
    package = new.rpartition(".")[0]
    for info in pkgutil.iter_modules(sys.modules[package].__path__, package + "."):
        if info.name != new and not info.ispkg:
            beside = importlib.import_module(info.name)
            if name in vars(beside):
                return getattr(beside, name)
    raise AttributeError(name)


def _proxy(old: str, new: str) -> types.ModuleType:
    """A module standing for `old`: its names are `new`'s (or a neighbour's)."""
    proxy = types.ModuleType(old, f"Moved to {new} (imgpipe's package layout).")

    def __getattr__(name: str) -> Any:
        if name == "__all__":              # `from old import *`: the new module's names
            module = importlib.import_module(new)
            return getattr(module, "__all__",
                           [key for key in vars(module) if not key.startswith("_")])
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return _lookup(new, name)
        except AttributeError:
            raise AttributeError(f"module {old!r} (now {new}) has no attribute {name!r}") \
                from None

    proxy.__getattr__ = __getattr__            # PEP 562, also for `from old import name`
    proxy.__moved_to__ = new
    return proxy


class _Loader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        importlib.import_module(self.new)   # a broken new module fails here, by its name
        warnings.warn(f"{spec.name} moved to {self.new}; import it from there ({WHEN}).",
                      FutureWarning, stacklevel=_caller_level())
        return _proxy(spec.name, self.new)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds an old module name that no longer exists (after every other finder, so it
    never hides a real module)."""

    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(MOVED[fullname]))


def _package_fallback(package: str, new: str) -> None:
    """An old module that is a package of the same name now (`components.registry`):
    a name the package lacks comes from `new`, with the warning. Submodules and names
    the package has are untouched."""
    module = importlib.import_module(package)
    if "__getattr__" in vars(module):
        return                       # the package has its own (or this one, installed)

    def __getattr__(name: str) -> Any:
        if name.startswith("__") or _exists(f"{package}.{name}"):
            raise AttributeError(name)           # a submodule: the import system loads it
        try:
            value = _lookup(new, name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        warnings.warn(f"{package}.{name} moved to {new}.{name}; import it from there "
                      f"({WHEN}).", FutureWarning, stacklevel=_caller_level())
        return value

    module.__getattr__ = __getattr__


def install() -> None:
    """Lets the old module names import (idempotent)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
    for old, new in MOVED.items():
        if new.startswith(old + "."):
            _package_fallback(old, new)
