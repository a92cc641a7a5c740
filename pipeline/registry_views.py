"""Registry views for the CLI: versions with their key metrics, a version's card and
lineage, and a side-by-side diff. Storage, aliases and the audit log live in
`components/registry/versions.py` (the push step writes through it too)."""

from __future__ import annotations

import os
from typing import Any

from components import runtime
from components.artifacts import card_field
from components.config.push import PushConfig
from components.registry.versions import Registry, Version
from pipeline.config_yaml import flatten

DEFAULT_ROOT = PushConfig.model_fields["destination"].default


def registry_root(explicit: str | None, config_path: str | None = None) -> str:
    """--registry, else the config's push destination, else ./serving."""
    if explicit:
        return explicit
    if config_path:
        from pipeline import config as config_lib

        return config_lib.load(config_path).push.destination
    return DEFAULT_ROOT


def _age(iso: str | None) -> str:
    if not iso:
        return "?"
    seconds = runtime.seconds_since(iso)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def version_row(version: Version, aliases: dict[str, int]) -> dict[str, Any]:
    card = version.card
    return {"ref": version.ref, "version": version.version,
            "accuracy": card_field(card, "metrics.accuracy"),
            "top_k_accuracy": card_field(card, "metrics.top_k_accuracy"),
            "examples": card_field(card, "metrics.example_count"),
            "blessed": card_field(card, "blessing.blessed"),
            "infra": card_field(card, "infra_validation.passed"),
            "aliases": sorted(a for a, v in aliases.items() if v == version.version),
            "kind": card_field(card, "model.kind"), "run_id": card.get("run_id"),
            "pushed": card.get("pushed"), "age": _age(card.get("pushed"))}


def list_versions(registry: Registry, name: str | None = None) -> list[dict[str, Any]]:
    """One row per version; a version whose card is damaged is listed with the error
    (so the listing still shows what is there)."""
    from components.errors import RegistryError

    rows = []
    for model in ([name] if name else registry.models()):
        try:
            aliases = registry.aliases(model)
        except RegistryError as exc:
            if name:       # the one model asked for: its error is the answer
                raise
            # one model's damaged ledger must not hide the others
            rows.append({"ref": f"{model}:*", "version": None, "error": str(exc), "aliases": []})
            continue
        for version in registry.versions(model):
            try:
                rows.append(version_row(version, aliases))
            except RegistryError as exc:
                rows.append({"ref": version.ref, "version": version.version, "error": str(exc),
                             "aliases": sorted(a for a, v in aliases.items()
                                               if v == version.version)})
    return rows


def show(registry: Registry, ref: str, runs_dir: str) -> dict[str, Any]:
    """A version's card, aliases, audit entries and (when the metadata store is at
    hand) the lineage of the run that produced it."""
    version = registry.resolve(ref)
    card = version.card
    info = {"ref": version.ref, "path": version.path,
            "aliases": sorted(a for a, v in registry.aliases(version.name).items()
                              if v == version.version),
            "card": card,
            "audit": [e for e in registry.audit(version.name) if e["to"] == version.version]}
    from pipeline.metadata import METADATA_FILE, MetadataStore

    store_path = os.path.join(runs_dir, METADATA_FILE)
    model_uri = card.get("artifacts", {}).get("model")
    if model_uri and os.path.isfile(store_path):
        info["lineage"] = MetadataStore(store_path).lineage(model_uri)
    return info


def diff(registry: Registry, left: str, right: str) -> dict[str, Any]:
    """Metrics and per-class metrics of two versions side by side."""
    a, b = registry.resolve(left), registry.resolve(right)
    ca, cb = a.card, b.card
    metrics = {}
    for key in sorted(set(ca.get("metrics", {})) | set(cb.get("metrics", {}))):
        va, vb = ca.get("metrics", {}).get(key), cb.get("metrics", {}).get(key)
        metrics[key] = {"left": va, "right": vb,
                        "change": None if va is None or vb is None else vb - va}
    per_class = {}
    classes = sorted(set(ca.get("per_class", {})) | set(cb.get("per_class", {})))
    for name in classes:
        pa, pb = ca.get("per_class", {}).get(name, {}), cb.get("per_class", {}).get(name, {})
        per_class[name] = {m: {"left": pa.get(m), "right": pb.get(m),
                               "change": None if pa.get(m) is None or pb.get(m) is None
                               else pb.get(m) - pa.get(m)}
                           for m in ("precision", "recall", "f1_score", "auc")}
    config_changes = {}
    flat_a, flat_b = flatten(ca.get("config") or {}), flatten(cb.get("config") or {})
    for key in sorted(set(flat_a) | set(flat_b)):
        if flat_a.get(key) != flat_b.get(key):
            config_changes[key] = {"left": flat_a.get(key), "right": flat_b.get(key)}
    return {"left": a.ref, "right": b.ref, "metrics": metrics, "per_class": per_class,
            "config_changes": config_changes,
            "data": {"left": card_field(ca, "data.fingerprint"),
                     "right": card_field(cb, "data.fingerprint")},
            "eval_examples": {"left": card_field(ca, "metrics.example_count"),
                              "right": card_field(cb, "metrics.example_count")},
            "hyperparameters": {"left": card_field(ca, "hyperparameters.best"),
                                "right": card_field(cb, "hyperparameters.best")}}

