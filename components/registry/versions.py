"""The model registry: pushed versions in the TF Serving layout, with aliases and an
audit ledger stored next to them (a serving system or another team sees them without
the pipeline's metadata store).

    ROOT/NAME/1/            saved_model.pb, variables/, assets/  (what TF Serving loads)
    ROOT/NAME/1/model_card.json, model.keras                     (ours; Serving ignores them)
    ROOT/NAME/1/tf_serving/1/   with push.vertex and a TF Serving image: the SavedModel
                            again, uploaded as the Vertex version's artifact_uri
                            (components/integrations/vertex.py, `serving_copy`)
    ROOT/NAME/audit.jsonl   the ledger: one line per alias change (who, when, action,
                            alias, from, to, reason, force), written before anything else
    ROOT/NAME/aliases.json  {"production": 3, "staging": 5}: the ledger's current state,
                            rewritten after each change for readers that want one file

A version is written under a hidden temporary name and published by renaming it to
the next integer: the rename fails if another push took that number first, and the
push retries with the next one, so concurrent pushes get distinct versions and TF
Serving never sees a partial version. Only a directory holding `saved_model.pb` is a
version. A push that fails removes its hidden copy; one that was killed leaves a copy
whose lock nobody holds, and the next push removes it.

The ledger is the write-ahead record: an alias change is appended (and synced) to it
first, then aliases.json is rewritten; aliases are always read by replaying the ledger.
A process killed in between leaves a ledger line whose change readers already see (the
view is repaired by the next change or `imgpipe models repair`); one killed while
appending leaves a torn last line, which is no change at all and is cut off by the next
writer. Every change decides what it changes under one lock per model on local roots,
and by compare-and-swap on the ledger's object generation on gs://.

`Registry` decides (versions, aliases, promotion rules, whether a model is already
pushed); the two storage protocols are `LocalStore` and `BucketStore` in
`components.registry.store`, one of them chosen from the root. The reference grammar
is `components.registry.refs`, the ledger's lines and replay `components.registry.ledger`,
what a link takes out of the root `components.registry.paths`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from components import runtime
from components.artifacts import SAVED_MODEL_PB, card_field
from components.errors import ConfigError, ImgpipeError, RegistryError
from components.io import fileio
from components.registry import ledger, paths
from components.registry.refs import LATEST, NAME, REF, check_name, normalize_reference
from components.registry.store import CARD, BucketStore, LocalStore, Push, Store

ALIASES = "aliases.json"
PIPELINE_STATE = "pipeline_state.json"


class PromotionRefused(ImgpipeError):
    """A version that is not blessed (or failed infra validation) was to be promoted."""

    exit_code = 4


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    path: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def card(self) -> dict[str, Any]:
        """The model card; RegistryError naming the file and the repair when damaged."""
        card_path = fileio.join(self.path, CARD)
        if not fileio.exists(card_path):
            return {}
        try:
            card = json.loads(fileio.read_text(card_path))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryError(
                f"{card_path} is damaged ({type(exc).__name__}: {exc}); restore it from the run "
                f"that pushed {self.ref} (its model card is rebuilt by pushing that run's model "
                f"again) or move the folder {self.path} out of the registry.") from exc
        if not isinstance(card, dict):
            raise RegistryError(f"{card_path} is not a JSON object; restore it or move "
                                f"{self.path} out of the registry.")
        problem = _card_problem(card)
        if problem:
            raise RegistryError(
                f"{card_path} is damaged ({problem}); restore it from the run that pushed "
                f"{self.ref} (its model card is rebuilt by pushing that run's model again) or "
                f"move the folder {self.path} out of the registry.")
        return card

    @property
    def blessed(self) -> bool:
        card = self.card
        return bool(card_field(card, "blessing.blessed")) and \
            bool(card_field(card, "infra_validation.passed", True))


class Registry:
    """Versions, aliases and the audit ledger under one root (local folder or gs://)."""

    def __init__(self, root: str):
        self.root = root if fileio.is_remote(root) else os.path.abspath(root)
        self._store: Store = BucketStore() if fileio.is_remote(root) else LocalStore()

    def _model_dir(self, name: str) -> str:
        path = fileio.join(self.root, check_name(name))
        paths.refuse_outside(self.root, path)
        return path

    # --- links out of the root -------------------------------------------------------

    def links_outside(self, name: str | None = None) -> list[tuple[str, str]]:
        """(link, real path) for each model folder (or, for `name`, version folder) that
        a symbolic link takes out of the root: what `models` and `versions` skip."""
        return paths.links_outside(self.root, name)

    # --- reading -------------------------------------------------------------------

    def models(self) -> list[str]:
        """Model folders in the root (not those a link takes out of it)."""
        if not fileio.isdir(self.root):
            return []
        return sorted(n for n in fileio.listdir(self.root)
                      if NAME.fullmatch(n) and fileio.isdir(fileio.join(self.root, n))
                      and paths.outside(self.root, fileio.join(self.root, n)) is None)

    def versions(self, name: str) -> list[Version]:
        """Complete versions only: integer folders holding saved_model.pb (a stray file
        or an empty folder named 7 is not a version, nor is a link out of the root)."""
        base = self._model_dir(name)
        if not fileio.isdir(base):
            return []
        numbers = sorted(int(n) for n in fileio.listdir(base)
                         if n.isdigit() and fileio.exists(fileio.join(base, n, SAVED_MODEL_PB))
                         and paths.outside(self.root, fileio.join(base, n)) is None)
        return [Version(name, n, fileio.join(base, str(n))) for n in numbers]

    def audit(self, name: str) -> list[dict[str, Any]]:
        """The ledger's entries. A torn last line (a writer killed mid-append) is not an
        entry; a damaged line before it is a RegistryError naming the line."""
        path = fileio.join(self._model_dir(name), ledger.AUDIT)
        if not fileio.exists(path):
            return []
        return ledger.parse(path, name, fileio.read_bytes(path))

    def aliases(self, name: str) -> dict[str, int]:
        """alias -> version, from the ledger (aliases.json is a view of it)."""
        return ledger.replay(self.audit(name))

    def get(self, name: str, version: int) -> Version:
        for candidate in self.versions(name):
            if candidate.version == version:
                return candidate
        paths.refuse_outside(self.root, fileio.join(self._model_dir(name), str(version)))
        known = ", ".join(str(v.version) for v in self.versions(name)) or "none"
        raise ConfigError(f"no version {version} of model {name!r} in {self.root} "
                          f"(versions: {known}).")

    def _held_by(self, name: str, alias: str, number: int) -> Version:
        """The version `name@alias` points at; when its folder is gone, an error naming
        the alias, the folder and how to point the alias elsewhere."""
        for candidate in self.versions(name):
            if candidate.version == number:
                return candidate
        path = fileio.join(self._model_dir(name), str(number))
        paths.refuse_outside(self.root, path)
        raise ConfigError(
            f"{name}@{alias} points at version {number}, but {paths.gone(path)}; point the "
            f"alias at a version that is there with `imgpipe models promote {name}:N --to "
            f"{alias}` (versions: "
            f"{', '.join(str(v.version) for v in self.versions(name)) or 'none'}), "
            f"or remove it with `imgpipe models alias delete {name} {alias}`.")

    def dangling(self, name: str) -> dict[str, int]:
        """alias -> version for the aliases whose version folder is gone (deleted,
        moved, half-made): `models list` shows them as missing."""
        present = {v.version for v in self.versions(name)}
        return {alias: n for alias, n in self.aliases(name).items() if n not in present}

    def resolve(self, ref: str) -> Version:
        """NAME@ALIAS, NAME@latest or NAME:VERSION (or MLflow's models:/NAME@ALIAS,
        models:/NAME/VERSION) -> a Version."""
        match = REF.fullmatch(normalize_reference(ref))
        if not match:
            raise ConfigError(f"{ref!r} is not a model reference; use NAME@ALIAS, NAME@latest, "
                              "NAME:VERSION, models:/NAME@ALIAS or models:/NAME/VERSION.")
        name = match["name"]
        if match["version"]:
            return self.get(name, int(match["version"]))
        versions = self.versions(name)
        if not versions:
            raise ConfigError(f"model {name!r} has no pushed versions in {self.root}; list "
                              "them with `imgpipe models list --registry DIR`.")
        if match["alias"] == LATEST:
            return versions[-1]
        aliases = self.aliases(name)
        if match["alias"] not in aliases:
            raise ConfigError(f"model {name!r} has no alias {match['alias']!r} in {self.root} "
                              f"(aliases: {', '.join(sorted(aliases)) or 'none'}); set one with "
                              f"`imgpipe models promote {name}:N --to {match['alias']}`.")
        return self._held_by(name, match["alias"], aliases[match["alias"]])

    def nothing_pushed(self, ref: str) -> bool:
        """`ref` is NAME@ALIAS (not NAME@latest or NAME:VERSION) and no version of NAME
        is pushed yet: what a scheduled retrain's first run finds."""
        match = REF.fullmatch(normalize_reference(ref))
        return bool(match and match["alias"] and match["alias"] != LATEST
                    and not self.versions(match["name"]))

    def holder(self, name: str, alias: str) -> Version | None:
        aliases = self.aliases(name)
        return self._held_by(name, alias, aliases[alias]) if alias in aliases else None

    # --- pushing -------------------------------------------------------------------

    def push(self, name: str, saved_model: str, card: dict[str, Any],
             extra_files: dict[str, str] | None = None) -> Version:
        """Copies a SavedModel (+ card and extra files) in as the next version. A failed
        push removes its copy before the error propagates."""
        return self.push_once(name, saved_model, card, extra_files)[0]

    def push_once(self, name: str, saved_model: str, card: dict[str, Any],
                  extra_files: dict[str, str] | None = None,
                  fingerprint: str | None = None) -> tuple[Version, bool]:
        """(version, already): pushes like `push`, unless a version whose card holds the
        model `fingerprint` exists, decided under the model's lock when the version is
        published, so two runs pushing the same model at once make one version."""
        base = self._model_dir(name)
        found = self.pushed(name, fingerprint)
        if found is not None:
            return found, True
        files = _files_of(saved_model, "") + [
            entry for rel, src in (extra_files or {}).items() for entry in _files_of(src, rel)]

        def stamped(number: int) -> str:
            return json.dumps(dict(card, name=name, version=number, pushed=runtime.utc_now()),
                              indent=2, default=str)

        def pushed_now() -> tuple[int, str] | None:
            found = self.pushed(name, fingerprint)
            return None if found is None else (found.version, found.path)

        def newest() -> int:
            versions = self.versions(name)
            return versions[-1].version if versions else 0

        number, path, already = self._store.publish(
            Push(base, files, saved_model, stamped, pushed_now, newest))
        return Version(name, number, path), already

    def pushed(self, name: str, fingerprint: str | None) -> Version | None:
        """The newest version whose card records the model `fingerprint` (None when no
        fingerprint is given or none matches; a damaged card matches nothing)."""
        if not fingerprint:
            return None
        for version in reversed(self.versions(name)):
            try:
                if version.card.get("model", {}).get("fingerprint") == fingerprint:
                    return version
            except RegistryError:
                continue
        return None

    # --- state the next scheduled run reads -----------------------------------------

    def pipeline_state(self, name: str) -> dict[str, str]:
        """What the last completed pipeline run of this model recorded (e.g. the URI of
        its statistics, the baseline the next run's drift check compares with)."""
        path = fileio.join(self._model_dir(name), PIPELINE_STATE)
        if not fileio.exists(path):
            return {}
        try:
            state = json.loads(fileio.read_text(path))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path} is damaged ({exc}); delete it: the next completed "
                                "run writes it again (one run without a drift check).") from exc
        return state if isinstance(state, dict) else {}

    def record_pipeline_state(self, name: str, values: dict[str, str]) -> None:
        base = self._model_dir(name)
        fileio.makedirs(base)
        state = self.pipeline_state(name)
        state.update(values)
        fileio.write_text_atomic(fileio.join(base, PIPELINE_STATE),
                                 json.dumps(state, indent=2, sort_keys=True))

    # --- aliases -------------------------------------------------------------------

    def set_alias(self, ref: str, alias: str, reason: str = "", force: bool = False,
                  action: str = "promote", who: str | None = None,
                  traffic: int | None = None, forward_only: bool = False) -> dict[str, Any]:
        """Points `alias` at the version `ref` names; refuses a version that is not
        blessed or failed infra validation unless `force` (recorded in the ledger). A
        change that changes nothing is not recorded: the entry says `unchanged`.
        `traffic`: the endpoint share the alias's version gets (a canary,
        `components.integrations.vertex`), recorded in the entry; a new share is a change.
        `forward_only` (a pipeline's `promote_to`): the alias stays where it is when its
        version was trained on newer data (`newer`), so a rerun or backfill of older
        spans never moves it back; the entry then says `unchanged` and `behind` why."""
        check_name(alias, "alias")
        if alias == LATEST:
            raise ConfigError(f"'{LATEST}' always means the newest version; pick another alias.")
        version = self.resolve(ref)
        if not force:
            _require_blessed(version)

        def decide(entries: list[dict[str, Any]]) -> dict[str, Any]:
            current = ledger.replay(entries).get(alias)
            entry = ledger.entry(action, alias, current, version.version, reason, force, who)
            if traffic is not None:
                entry["traffic"] = traffic
            same = current == version.version and (
                traffic is None or traffic == ledger.traffic(entries, alias))
            behind = forward_only and not same and current is not None and \
                self._newer(version.name, current, version)
            if behind:
                return dict(entry, unchanged=True, behind=behind)
            return dict(entry, unchanged=True) if same else entry

        return self._change(version.name, decide)

    def _newer(self, name: str, current: int, version: Version) -> str | None:
        """Why version `current` (an alias's holder) is newer than `version`: trained
        through a later span, or, with the same or no spans, a higher version number.
        None when it is not (or is no longer there)."""
        try:
            mine, theirs = _newest_span(version.card), _newest_span(self.get(name, current).card)
        except ImgpipeError:
            return None
        if mine and theirs and mine[0] != theirs[0]:
            return None if mine[0] > theirs[0] else (
                f"version {current} was trained through {theirs[1]}, newer than "
                f"{version.version}'s {mine[1]}")
        return None if version.version > current else \
            f"version {current} is newer than {version.version}"

    def delete_alias(self, name: str, alias: str, reason: str = "",
                     who: str | None = None) -> dict[str, Any]:
        def decide(entries: list[dict[str, Any]]) -> dict[str, Any]:
            aliases = ledger.replay(entries)
            if alias not in aliases:
                raise ConfigError(f"model {name!r} has no alias {alias!r} to delete (aliases: "
                                  f"{', '.join(sorted(aliases)) or 'none'}).")
            return ledger.entry("delete", alias, aliases[alias], None, reason, False, who)

        return self._change(name, decide)

    def rollback(self, name: str, alias: str, reason: str = "",
                 who: str | None = None) -> dict[str, Any]:
        """Moves `alias` back to the version that held it before the current holder;
        repeated rollbacks walk further back. Decided on the ledger as it is when the
        change is written (under the lock, or retried on a changed ledger), so two
        concurrent rollbacks move it back twice, never skip or repeat a version."""
        def decide(entries: list[dict[str, Any]]) -> dict[str, Any]:
            current = ledger.replay(entries).get(alias)
            if current is None:
                raise ConfigError(f"model {name!r} has no alias {alias!r} to roll back.")
            holders = ledger.holders(entries, alias)
            if len(holders) < 2:
                raise ConfigError(f"{name}@{alias} (version {current}) has no earlier holder to "
                                  "roll back to; promote a version explicitly instead.")
            if holders[-2] not in {v.version for v in self.versions(name)}:
                path = fileio.join(self._model_dir(name), str(holders[-2]))
                paths.refuse_outside(self.root, path)
                raise ConfigError(f"cannot roll {name}@{alias} back to version {holders[-2]}: "
                                  f"{paths.gone(path)}; promote a version that is there "
                                  f"instead with `imgpipe models promote {name}:N --to "
                                  f"{alias}`.")
            # Not forced: rollback takes no --force, and the ledger records only what the
            # user asked for (the earlier holder passed its own promotion).
            return ledger.entry("rollback", alias, current, holders[-2],
                                reason or f"rollback from {current}", False, who)

        return self._change(name, decide)

    def repair(self, name: str) -> dict[str, Any]:
        """Rewrites aliases.json from the ledger (and cuts a torn last ledger line)."""
        before = self._read_view(name)
        self._change(name, lambda entries: None)     # cuts a torn tail, writes the view
        return {"before": before, "after": self.aliases(name)}

    def _change(self, name: str, decide) -> dict[str, Any]:
        """Appends the entry `decide(entries)` returns to the ledger, then rewrites the
        view. Local roots: under the model's lock. Object stores: compare-and-swap on
        the ledger's generation, retried (and decided again) when another writer was
        first. An entry marked `unchanged` (or None) is not recorded."""
        audit = fileio.join(self._model_dir(name), ledger.AUDIT)

        def decided(whole: bytes) -> tuple[dict[str, Any] | None, bytes]:
            entry = decide(ledger.parse(audit, name, whole))
            if entry is None or entry.get("unchanged"):
                return entry, b""
            return entry, json.dumps(entry, sort_keys=True).encode() + b"\n"

        def view(whole: bytes | None) -> None:
            self._write_view(name, self.aliases(name) if whole is None
                             else ledger.replay(ledger.parse(audit, name, whole)))

        return self._store.change(audit, decided, view)

    def _read_view(self, name: str) -> Any:
        path = fileio.join(self._model_dir(name), ALIASES)
        try:
            return json.loads(fileio.read_text(path)) if fileio.exists(path) else {}
        except (ValueError, UnicodeDecodeError):
            return "(damaged)"

    def _write_view(self, name: str, aliases: dict[str, int]) -> None:
        fileio.write_text_atomic(fileio.join(self._model_dir(name), ALIASES),
                                 json.dumps(aliases, indent=2, sort_keys=True))


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _card_problem(card: dict[str, Any]) -> str | None:
    """What makes a card's metrics unreadable (`"accuracy": "high"`), or None: listings,
    diffs and the evaluator's baseline compare them as numbers."""
    for key in ("metrics", "per_class"):
        if key in card and not isinstance(card[key], dict):
            return f"{key} is {card[key]!r}, not an object"
    for metric, value in card.get("metrics", {}).items():
        if not _is_number(value):
            return f"metrics.{metric} is {value!r}, not a number"
    for label, values in card.get("per_class", {}).items():
        if not isinstance(values, dict):
            return f"per_class.{label} is {values!r}, not an object"
        for metric, value in values.items():
            if not _is_number(value):
                return f"per_class.{label}.{metric} is {value!r}, not a number"
    if card.get("pushed") is not None and not _is_time(card["pushed"]):
        return f"pushed is {card['pushed']!r}, not a time such as 2025-01-31T12:00:00+00:00"
    return None


def _is_time(value: Any) -> bool:
    """An ISO 8601 time with a zone, as `runtime.utc_now` writes it (listings age it)."""
    import datetime

    try:
        return datetime.datetime.fromisoformat(value).tzinfo is not None
    except (TypeError, ValueError):
        return False


def _files_of(src: str, rel: str) -> list[tuple[str, str]]:
    """(source file, relative destination) for a file or every file under a folder."""
    if not fileio.isdir(src):
        return [(src, rel)]
    prefix = src.rstrip("/") + "/"
    return [(path, fileio.join(rel, path[len(prefix):]) if rel else path[len(prefix):])
            for path in fileio.walk_files(src)]


def _newest_span(card: dict[str, Any]) -> tuple[tuple[int, ...], str] | None:
    """(order, label) of the newest span a card's model trained on ("2026-12-01" ->
    (2026, 12, 1), "span 7" -> (7,)); None without spans."""
    spans = (card.get("data") or {}).get("spans") or []
    digits = [tuple(int(d) for d in re.findall(r"\d+", str(label))) for label in spans]
    return max(zip(digits, map(str, spans))) if spans and all(digits) else None


def _require_blessed(version: Version) -> None:
    try:
        card = version.card
    except RegistryError as exc:
        raise PromotionRefused(f"{version.ref} cannot be checked: {exc} Pass --force to "
                               "promote it anyway (recorded in the audit log).") from exc
    blessed = bool(card.get("blessing", {}).get("blessed")) and \
        bool(card.get("infra_validation", {}).get("passed", True))
    if not blessed:
        why = card.get("blessing", {}).get("reason") or \
            card.get("infra_validation", {}).get("reason") or "no blessing on record"
        raise PromotionRefused(f"{version.ref} is not blessed ({why}); pass --force to "
                               "promote it anyway (recorded in the audit log).")
