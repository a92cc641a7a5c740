"""The versions `imgpipe serve` holds in memory, and the thread that keeps them in step
with the registry.

A model's *routes* are one immutable snapshot: the loaded versions, which version
each alias names, the version an unlabeled request gets (the default alias, else the
newest version) and the canary's candidate. The follower builds a new snapshot off the
request path (loading and warming a new version first) and swaps it in with one
assignment; a request that already picked a version keeps it until it is answered, so
a promotion, rollback or new push never fails a request nor answers one from a
half-loaded model. A version no route names any more is dropped from the next
snapshot and freed once its last request is answered.

What is served, per model: every version an alias points at, and the newest version
(TF Serving's `specific` version policy with the aliases as version labels). A version
is loaded through the serving-signature client (`components/inference/client.py`).
"""

from __future__ import annotations

import io
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from components.artifacts import SAVED_MODEL_PB
from components.config.push import LATEST_ALIAS
from components.errors import ImgpipeError
from components.inference import client, serving_config
from components.io import fileio
from components.registry.versions import Registry, Version


@dataclass(eq=False)
class LoadedVersion:
    """A SavedModel in memory: its signatures and where it came from."""

    name: str
    version: int
    path: str
    module: Any
    signatures: dict[str, client.Signature]
    loaded_at: float
    load_seconds: float
    identity: str = ""
    batchers: dict[str, Any] = field(default_factory=dict)   # signature -> Batcher
    classes: list[str] | None = None     # the label vocabulary: probabilities' order

    def call(self, signature: str, inputs: list[bytes]) -> dict[str, Any]:
        """The signature on a batch of string inputs -> {output: numpy array}."""
        return self.signatures[signature].call(inputs)


def _synthetic_image() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def warmup_inputs(path: str) -> list[tuple[str, list[bytes]]]:
    """(signature, inputs) from the version's warmup records (the PredictionLogs push
    copies from infra validation to where TF Serving reads them); [] when there are
    none. Damaged records are not warmup: the synthetic image serves instead."""
    warmup = fileio.join(path, serving_config.VERSION_WARMUP)
    if not fileio.exists(warmup):
        return []
    try:
        return [(signature or client.EXAMPLES, inputs)
                for signature, _, inputs in serving_config.read_warmup(warmup)]
    except ValueError:
        return []


def load_version(version: Version) -> LoadedVersion:
    """Loads a pushed version through the serving-signature client (NotServable when it
    does not load or lacks serving_images) and runs it once per signature (its warmup
    records, else a synthetic image) so its first real request does not pay for
    tracing."""
    started = time.perf_counter()
    model = client.load(version.path, f"{version.ref} ({version.path})")
    loaded = LoadedVersion(version.name, version.version, version.path, model.module,
                           model.signatures, time.time(), 0.0, classes=model.vocabulary)
    warmed = set()
    for signature, inputs in warmup_inputs(version.path):
        if signature in loaded.signatures and inputs:
            loaded.call(signature, inputs)
            warmed.add(signature)
    if client.IMAGES not in warmed:
        loaded.call(client.IMAGES, [_synthetic_image()])
    loaded.load_seconds = time.perf_counter() - started
    return loaded


@dataclass(frozen=True)
class Routes:
    """One model's routing snapshot (never changed once built)."""

    name: str
    versions: dict[int, LoadedVersion]
    labels: dict[str, int]                 # alias -> version (served ones only)
    default: int | None                    # what an unlabeled request gets
    default_label: str | None              # the alias that chose it (None: newest)
    candidate: int | None = None           # the canary's version (None: no canary)
    weight: float = 0.0                    # its share of unlabeled requests, percent
    missing: dict[str, str] = field(default_factory=dict)   # alias -> why not served
    gone: tuple[int, ...] = ()             # served from memory, their folders gone

    def aliases_by_version(self) -> dict[int, list[str]]:
        """version -> the aliases serving it, sorted (versions no alias holds absent)."""
        found: dict[int, list[str]] = {}
        for alias, number in sorted(self.labels.items()):
            found.setdefault(number, []).append(alias)
        return found


@dataclass
class Canary:
    alias: str
    weight: float          # percent of unlabeled requests


class Follower:
    """Keeps `routes` (model -> Routes) in step with the registry, polling it every
    `poll` seconds in a daemon thread. `models`: the names to serve (None: every
    model of the registry, including ones pushed later)."""

    def __init__(self, root: str, models: list[str] | None = None, poll: float = 2.0,
                 default_alias: str = "production", canary: Canary | None = None,
                 loader: Callable[[Version], LoadedVersion] = load_version,
                 log: Callable[[str], None] | None = None,
                 on_change: Callable[[str, Routes | None, Routes], None] | None = None):
        self.registry = Registry(root)
        self.names = models
        self.poll = poll
        self.default_alias = default_alias
        self.canary = canary
        self.loader = loader
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.on_change = on_change
        self.routes: dict[str, Routes] = {}
        self.failed: dict[tuple[str, int], str] = {}   # versions that would not load
        self.registry_gone: str | None = None   # why the registry is not there (said once)
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the loop -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="imgpipe-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.refresh()
            except Exception as exc:        # the registry is unreadable for a moment
                self.log(f"serve: could not read the registry ({type(exc).__name__}: {exc}); "
                         "still serving what was loaded")

    # --- one pass ---------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return list(self.names) if self.names is not None else self.registry.models()

    def refresh(self) -> dict[str, Routes]:
        """Reads the registry once and swaps in new routes for each model whose served
        set changed (loading new versions first). Returns the routes now served. While
        the registry's folder is gone (moved, deleted) nothing changes: what was loaded
        is served, and that is said once."""
        current = dict(self.routes)
        if not self._registry_there():
            self.refreshes += 1
            return self.routes
        names = self.model_names()
        # a served model whose folder went away is no longer listed: still looked at
        for name in names + sorted(set(current) - set(names)):
            try:
                routes = self._routes_for(name, current.get(name))
            except ImgpipeError as exc:
                self.log(f"serve: {name}: {exc}")
                continue
            if routes is not None:
                old = current.get(name)
                current[name] = routes
                self.routes = dict(current)      # one assignment: the swap
                if old is not None:
                    self._say_changes(old, routes)
                if self.on_change is not None:
                    self.on_change(name, old, routes)
        self.refreshes += 1
        return self.routes

    def _registry_there(self) -> bool:
        """Whether the registry's folder is there; a change is said once."""
        there = fileio.isdir(self.registry.root)
        if there and self.registry_gone is not None:
            self.registry_gone = None
            self.log(f"serve: the registry {self.registry.root} is back; following it again")
        elif not there and self.registry_gone is None:
            served = ", ".join(f"{n}:{v}" for n, r in sorted(self.routes.items())
                               for v in sorted(r.versions)) or "nothing"
            self.registry_gone = f"the registry {self.registry.root} is gone (moved or deleted)"
            self.log(f"serve: {self.registry_gone}; still serving what was loaded ({served}), "
                     "and writing no request log until it is back; put it back, or restart "
                     "serve with --registry where it is now")
        return there

    def _say_changes(self, old: Routes, new: Routes) -> None:
        """One line for versions whose folders went away (or came back), and one for
        each alias that newly cannot be served as the registry says."""
        name, by_version = new.name, new.aliases_by_version()
        gone = sorted(set(new.gone) - set(old.gone))
        if gone:
            what = ", ".join(f"{name}:{n}" + (f" ({', '.join(by_version[n])})"
                                              if n in by_version else "") for n in gone)
            self.log(f"serve: {what} gone from the registry (the folder was deleted or moved "
                     f"out of {fileio.join(self.registry.root, name)}); still serving the "
                     "copy loaded before. Put it back, or point the alias at a version that "
                     f"is there: imgpipe models promote {name}:N --to ALIAS")
        back = sorted(set(old.gone) - set(new.gone))
        if back:
            self.log(f"serve: {', '.join(f'{name}:{n}' for n in back)} back in the registry")
        for alias, why in sorted(new.missing.items()):
            if old.missing.get(alias) != why and new.labels.get(alias) not in new.gone:
                self.log(f"serve: {why}")

    def _routes_for(self, name: str, old: Routes | None) -> Routes | None:
        versions = {v.version: v for v in self.registry.versions(name)}
        if not versions:      # none pushed yet, or the model's folder went away
            if old is None:
                return None
            routes = replace(old, gone=tuple(sorted(old.versions)))
            return None if _same(old, routes) else routes
        aliases = self.registry.aliases(name)
        wanted: dict[int, Version] = {max(versions): versions[max(versions)]}
        missing = {}
        for alias, number in aliases.items():
            if number in versions:
                wanted[number] = versions[number]
            else:
                missing[alias] = f"{name}@{alias} points at version {number}, which is not in " \
                                 "the registry"
        have = dict(old.versions) if old else {}
        loaded: dict[int, LoadedVersion] = {}
        for number, version in sorted(wanted.items()):
            identity = _identity(version)
            previous = have.get(number)
            if previous is not None and previous.identity == identity:
                loaded[number] = previous
                continue
            if self.failed.get((name, number)) == identity:
                continue
            try:
                fresh = self.loader(version)
            except Exception as exc:
                self.failed[(name, number)] = identity
                self.log(f"serve: {version.ref} did not load ({type(exc).__name__}: "
                         f"{str(exc)[:300]}); not served")
                continue
            fresh.identity = identity
            loaded[number] = fresh
            self.log(f"serve: loaded {version.ref} in {fresh.load_seconds:.1f}s")
        labels = {alias: n for alias, n in aliases.items() if n in loaded}
        if loaded and max(versions) in loaded:
            labels[LATEST_ALIAS] = max(versions)     # NAME@latest, as the registry reads it
        for alias, number in aliases.items():
            if number in loaded:
                labels[alias] = number
                continue
            kept = old.labels.get(alias) if old else None
            if kept is not None and kept in have:
                # the alias moved to a version that does not load or is not there, or
                # its version's folder went away: it keeps serving what it served (TF
                # Serving refuses a label on an unavailable version), never another one
                loaded[kept], labels[alias] = have[kept], kept
                if kept == number:
                    missing[alias] = (f"{name}@{alias}: version {number}'s folder is gone "
                                      "from the registry; still serving the copy loaded "
                                      "before")
                else:
                    why = "which did not load" if number in versions else \
                        "which is not in the registry"
                    missing[alias] = (f"{name}@{alias} points at version {number}, {why}; "
                                      f"still serving version {kept}")
            elif number in versions:
                missing[alias] = f"{name}@{alias} (version {number}) did not load"
        if self.default_alias in labels:
            default, default_label = labels[self.default_alias], self.default_alias
        else:
            default, default_label = (max(loaded), None) if loaded else (None, None)
        candidate, weight = None, 0.0
        if self.canary is not None and self.canary.alias in labels:
            if labels[self.canary.alias] != default:
                candidate, weight = labels[self.canary.alias], self.canary.weight
        gone = tuple(sorted(n for n in loaded if n not in versions))
        routes = Routes(name, loaded, labels, default, default_label, candidate, weight,
                        missing, gone)
        if old is not None and _same(old, routes):
            return None
        return routes

    def get(self, name: str) -> Routes | None:
        return self.routes.get(name)


class RegistryCollector:
    """What the follower finds missing in the registry, as Prometheus gauges read at
    each scrape (register it on the server's metrics registry)."""

    def __init__(self, follower: Follower):
        self.follower = follower

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        gone = GaugeMetricFamily(
            "imgpipe_serve_versions_gone", "Versions still served from memory whose folder "
            "is gone from the registry (deleted or moved)", labels=["model"])
        for name, routes in sorted(self.follower.routes.items()):
            gone.add_metric([name], len(routes.gone))
        yield gone
        yield GaugeMetricFamily(
            "imgpipe_serve_registry_missing", "1 while the registry's folder is gone (moved "
            "or deleted): what was loaded is served, no request log is written",
            value=float(self.follower.registry_gone is not None))


def _identity(version: Version) -> str:
    """What changes when a version folder is replaced (a push into a number that was
    deleted): the SavedModel's file signature locally, its object generation on gs://."""
    path = fileio.join(version.path, SAVED_MODEL_PB)
    return fileio.stat_signature(path) or fileio.identities([path]).get(path) or ""


def _same(old: Routes, new: Routes) -> bool:
    return (old.labels == new.labels and old.default == new.default
            and old.default_label == new.default_label and old.candidate == new.candidate
            and old.weight == new.weight and old.missing == new.missing
            and old.gone == new.gone
            and {n: id(v) for n, v in old.versions.items()}
            == {n: id(v) for n, v in new.versions.items()})
