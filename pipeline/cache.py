"""Cache keys of the local runner, and why a key missed.

A step's key covers its code, the config it reads, the Beam options that change its
output, the fingerprints of its input artifacts and of the files it reads that no step
produces, and what the runner resolved for it (the baseline's identity). The code part
is derived from the modules the step imports inside the project, transitively (found
by reading their import statements, also those inside functions), plus the versions of
the libraries that compute the results: a change to any helper a step uses changes
its key, and nothing else does. An import of a module's old name (a `--dag` step written
before the package layout: components/_moved.py) counts as the module it moved to.

A compiled KFP task's `code` input (`task_code`) adds what the task's container runs
between its inputs and the step (ADAPTER_MODULES) and the library versions of the step
images: the platform's cache key holds the image tag, not what the image contains.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import re
from typing import Any

from components import _moved, artifacts, runtime
from components.io import fileio

PROJECT_PACKAGES = ("components", "pipeline")
# Libraries whose versions change what a step computes.
LIBRARIES = ("tensorflow", "keras", "tensorflow-transform", "tensorflow-model-analysis",
             "apache-beam", "numpy", "pillow")
# What a KFP task's container runs between its inputs and the step, hashed by their own
# sources in every cached task's `code`: the entrypoint (run-time parameters and pins
# into the config), invoke and its role table (pipeline.roles) and the registry's
# references, ledger and path checks (the exact files the step reads: weights, warm
# start, hyperparameters), the DAG and the root config (the sections and wiring; its
# defaults, kfp section and YAML reading).
# Not their imports: those are the steps' code, which each task covers for its own
# step, so a helper only ingest uses still reruns only ingest. The local runner keys on
# what these produce instead (the step's config, the resolved identities, the input
# fingerprints): it runs them before it computes the key.
ADAPTER_MODULES = ("pipeline.kfp.entrypoint", "pipeline.kfp.shared", "pipeline.invoke",
                   "pipeline.roles", "pipeline.dag", "pipeline.config",
                   "pipeline.config_defaults", "pipeline.config_kfp", "pipeline.config_yaml",
                   "components.registry.versions", "components.registry.refs",
                   "components.registry.ledger", "components.registry.paths")
# The lock deploy/Dockerfile* install the package under, beside the project's packages.
LOCK_FILE = "requirements.lock"


# --- code fingerprint -------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _package_dir(top: str) -> str | None:
    spec = importlib.util.find_spec(top)   # a top-level name: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _origin(module: str) -> str | None:
    """The source file of a project module, found on disk without importing anything
    (importing would run module code just to compute a key)."""
    top, *rest = module.split(".")
    base = _package_dir(top)
    if base is None:
        return None
    path = os.path.join(base, *rest)
    for candidate in (os.path.join(path, "__init__.py"), path + ".py"):
        if os.path.isfile(candidate):
            return candidate
    return None


def _is_module(name: str) -> bool:
    return _origin(name) is not None


# Parsed files: path -> [stat signature, content hash, project names it imports], kept
# in the runs folder between processes (`use_index`): a fully cached rerun does not
# parse the project's sources again. The signature (fileio.stat_signature: size, times,
# inode) tells whether the file changed since.
_INDEX: dict[str, list[Any]] = {}
_INDEX_STATE = {"path": None, "dirty": False}


def use_index(path: str) -> None:
    """Loads (and later `save_index` writes) the parsed-files index at `path`."""
    import json

    _INDEX_STATE.update(path=path, dirty=False)
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = json.load(handle)
        if isinstance(loaded, dict):
            _INDEX.update(loaded)
    except (OSError, ValueError):
        pass            # no index yet, or a damaged one: parse again


def save_index() -> None:
    """Writes the index when this process parsed anything new (never fails a run)."""
    import json

    path = _INDEX_STATE["path"]
    if not path or not _INDEX_STATE["dirty"]:
        return
    for file in list(_INDEX):      # keep only files that still are as they were parsed
        if not _entry_current(file, fileio.stat_signature(file)):
            del _INDEX[file]
    try:
        fileio.write_text_atomic(path, json.dumps(_INDEX, sort_keys=True))
        _INDEX_STATE["dirty"] = False
    except OSError:
        pass


def _entry_current(path: str, signature: str | None) -> bool:
    entry = _INDEX.get(path)
    return signature is not None and isinstance(entry, list) and len(entry) == 3 \
        and entry[0] == signature


def _parse(path: str) -> tuple[str, tuple[str, ...]]:
    """(content hash, project modules imported anywhere in the file). Kept per file
    version (`_INDEX`), so an edited file is read again."""
    signature = fileio.stat_signature(path)
    if not _entry_current(path, signature):
        with open(path, "rb") as handle:
            source = handle.read()
        found = set()
        for item in ast.walk(ast.parse(source, path)):
            if isinstance(item, ast.Import):
                found.update(alias.name for alias in item.names)
            elif isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
                found.add(item.module)
                # `from components import features` imports the module components.features
                found.update(f"{item.module}.{alias.name}" for alias in item.names)
        _INDEX[path] = [signature, hashlib.sha256(source).hexdigest(),
                        sorted(name for name in found if name.split(".")[0] in PROJECT_PACKAGES)]
        _INDEX_STATE["dirty"] = True
    _, digest, names = _INDEX[path]
    # which names are modules is decided now: a module added later is found
    found = (name if _is_module(name) else _moved.moved_to(name) for name in names)
    return digest, tuple(sorted({name for name in found if name and _is_module(name)}))


def _file_info(module: str) -> tuple[str, tuple[str, ...]]:
    path = _origin(module)
    if path is None:
        return f"{module}:missing", ()
    return _parse(path)


def code_modules(module: str) -> list[str]:
    """The project modules `module` depends on through imports (itself included),
    with their parent packages (whose __init__ runs on import)."""
    seen: set[str] = set()
    frontier = [module]
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        frontier.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        frontier.extend(_file_info(name)[1])
    return sorted(seen)


def code_fingerprint(module: str) -> dict[str, Any]:
    """The code part of a step's key: a hash over its modules' sources, the package
    and library versions, and the module list (so a miss can name what changed)."""
    modules = code_modules(module)
    digest = hashlib.sha256()
    for name in modules:
        digest.update(f"{name}\0{_file_info(name)[0]}\0".encode())
    return {"source": digest.hexdigest(), "version": runtime.package_version(),
            "libraries": library_versions(),
            "modules": {name: _file_info(name)[0][:12] for name in modules}}


def adapter_fingerprint() -> str:
    """A hash over the sources of ADAPTER_MODULES."""
    digest = hashlib.sha256()
    for name in ADAPTER_MODULES:
        digest.update(f"{name}\0{_file_info(name)[0]}\0".encode())
    return digest.hexdigest()


def task_code(module: str) -> str:
    """A compiled task's `code` input: its step's modules' sources and the package
    version (the local key's code part), the sources of ADAPTER_MODULES, and the
    versions of LIBRARIES in the step images (`image_libraries`). KFP and Vertex reuse
    a cached task while its inputs are unchanged and the image tag stays the same, so a
    task whose code, resolution or libraries changed must see a changed input."""
    found = code_fingerprint(module)
    return artifacts.fingerprint_json({"source": found["source"],
                                       "adapter": adapter_fingerprint(),
                                       "version": found["version"],
                                       "libraries": image_libraries()})[:16]


def _normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): tensorflow_model_analysis
    is tensorflow-model-analysis."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=1)
def image_libraries() -> dict[str, str]:
    """The versions of LIBRARIES the step images hold: the pins of the project's
    requirements.lock, which deploy/Dockerfile* install under (the image is built from
    the commit that compiles); the installed versions where no lock is beside the
    sources (an installed package, itself installed under the lock)."""
    root = os.path.dirname(_package_dir("pipeline") or "")
    pins = {}
    try:
        with open(os.path.join(root, LOCK_FILE), encoding="utf-8") as handle:
            for line in handle:
                name, pinned, version = line.split("#")[0].partition("==")
                if pinned:
                    pins[_normalized(name.strip())] = version.strip()
    except OSError:
        return library_versions()
    return {name: pins.get(_normalized(name), "absent") for name in LIBRARIES}


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


# --- keys and misses ----------------------------------------------------------------------


def key(parts: dict[str, Any]) -> str:
    return artifacts.fingerprint_json(parts)


def _short(value: Any) -> str:
    if value is None:
        return "(none)"  # the part is new or gone, e.g. the first previous statistics
    text = repr(value)
    if isinstance(value, str) and len(value) == 64:
        text = value[:12]  # a hash: the prefix is enough to tell them apart
    return text if len(text) <= 60 else text[:57] + "..."


def explain_miss(parts: dict[str, Any], previous: Any) -> str:
    """Why a step has to run: which parts of its key differ from its last execution
    (`previous`: an Execution with `key_parts`, `id` and `run_id`, or None)."""
    from pipeline.config_yaml import flatten

    if previous is None:
        return "no earlier execution of this step"
    old, new = flatten(previous.key_parts), flatten(parts)
    if not any(name.startswith("code.modules.") for name in old):
        # An execution recorded before module-level code keys: its hash is not comparable.
        old = {k: v for k, v in old.items() if not k.startswith("code.")}
        new = {k: v for k, v in new.items() if not k.startswith("code.")}
        if old == new:
            return f"the code key of run {previous.run_id} predates per-module hashes"
    changes = []
    for name in sorted(set(old) | set(new)):
        if name == "code.source":
            continue  # the module entries name what changed
        if old.get(name) != new.get(name):
            changes.append(f"{name}: {_short(old.get(name))} -> {_short(new.get(name))}")
    if not changes:
        return f"outputs of execution {previous.id} (run {previous.run_id}) no longer verify"
    return f"changed since run {previous.run_id}: " + "; ".join(changes)
