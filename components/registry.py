"""The model registry: pushed versions in the TF Serving layout, with aliases and an
audit log stored next to them (a serving system or another team sees them without the
pipeline's metadata store).

    ROOT/NAME/1/            saved_model.pb, variables/, assets/  (what TF Serving loads)
    ROOT/NAME/1/model_card.json, model.keras                     (ours; Serving ignores them)
    ROOT/NAME/aliases.json  {"production": 3, "staging": 5}
    ROOT/NAME/audit.jsonl   one line per alias change: who, when, from, to, reason, force

A version is written under a hidden temporary name and published by renaming it to
the next integer: the rename fails if another push took that number first, and the
push retries with the next one, so concurrent pushes get distinct versions and TF
Serving never sees a partial version. Alias changes and audit lines are serialized
by a lock file (local roots); on gs:// the last writer wins (documented).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from components import fileio, runtime
from components.errors import ConfigError, ImgpipeError

CARD = "model_card.json"
ALIASES = "aliases.json"
AUDIT = "audit.jsonl"
REF = re.compile(r"^(?P<name>[A-Za-z0-9][\w.-]*)(?:@(?P<alias>[\w.-]+)|:(?P<version>\d+))$")


class PromotionRefused(ImgpipeError):
    """A version that is not blessed (or failed infra validation) was to be promoted."""

    exit_code = 4


def is_reference(text: str) -> bool:
    return bool(REF.match(text))


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
        card_path = fileio.join(self.path, CARD)
        return json.loads(fileio.read_text(card_path)) if fileio.exists(card_path) else {}

    @property
    def blessed(self) -> bool:
        card = self.card
        return bool(card.get("blessing", {}).get("blessed")) and \
            bool(card.get("infra_validation", {}).get("passed", True))


class Registry:
    """Versions, aliases and the audit log under one root (local folder or gs://)."""

    def __init__(self, root: str):
        self.root = root if fileio.is_remote(root) else os.path.abspath(root)

    # --- reading -------------------------------------------------------------------

    def models(self) -> list[str]:
        if not fileio.isdir(self.root):
            return []
        return sorted(n.rstrip("/") for n in fileio.listdir(self.root)
                      if not n.startswith(".") and fileio.isdir(fileio.join(self.root, n)))

    def versions(self, name: str) -> list[Version]:
        base = fileio.join(self.root, name)
        if not fileio.isdir(base):
            return []
        numbers = sorted(int(n.rstrip("/")) for n in fileio.listdir(base)
                         if n.rstrip("/").isdigit())
        return [Version(name, n, fileio.join(base, str(n))) for n in numbers]

    def aliases(self, name: str) -> dict[str, int]:
        path = fileio.join(self.root, name, ALIASES)
        return json.loads(fileio.read_text(path)) if fileio.exists(path) else {}

    def audit(self, name: str) -> list[dict[str, Any]]:
        path = fileio.join(self.root, name, AUDIT)
        if not fileio.exists(path):
            return []
        return [json.loads(line) for line in fileio.read_text(path).splitlines() if line]

    def get(self, name: str, version: int) -> Version:
        for candidate in self.versions(name):
            if candidate.version == version:
                return candidate
        known = ", ".join(str(v.version) for v in self.versions(name)) or "none"
        raise ConfigError(f"no version {version} of model {name!r} in {self.root} "
                          f"(versions: {known}).")

    def resolve(self, ref: str) -> Version:
        """NAME@ALIAS, NAME@latest or NAME:VERSION -> a Version."""
        match = REF.match(ref)
        if not match:
            raise ConfigError(f"{ref!r} is not a model reference; use NAME@ALIAS, NAME@latest "
                              "or NAME:VERSION.")
        name = match["name"]
        if match["version"]:
            return self.get(name, int(match["version"]))
        versions = self.versions(name)
        if not versions:
            raise ConfigError(f"model {name!r} has no pushed versions in {self.root}; list "
                              "them with `imgpipe models list --registry DIR`.")
        if match["alias"] == "latest":
            return versions[-1]
        aliases = self.aliases(name)
        if match["alias"] not in aliases:
            raise ConfigError(f"model {name!r} has no alias {match['alias']!r} in {self.root} "
                              f"(aliases: {', '.join(sorted(aliases)) or 'none'}); set one with "
                              f"`imgpipe models promote {name}:N --to {match['alias']}`.")
        return self.get(name, aliases[match["alias"]])

    def holder(self, name: str, alias: str) -> Version | None:
        aliases = self.aliases(name)
        return self.get(name, aliases[alias]) if alias in aliases else None

    # --- writing -------------------------------------------------------------------

    def push(self, name: str, saved_model: str, card: dict[str, Any],
             extra_files: dict[str, str] | None = None) -> Version:
        """Copies a SavedModel (+ card and extra files) in as the next version."""
        if not REF.match(f"{name}:1"):
            raise ConfigError(f"model name {name!r} must be letters, digits, '.', '_' or '-'.")
        base = fileio.join(self.root, name)
        fileio.makedirs(base)
        self._clean_stale_pushes(base)
        staging = fileio.join(base, f".push-{uuid.uuid4().hex}")
        _copytree(saved_model, staging)
        for rel, src in (extra_files or {}).items():
            _copytree(src, fileio.join(staging, rel)) if fileio.isdir(src) else \
                _copyfile(src, fileio.join(staging, rel))
        for _ in range(1000):
            number = (self.versions(name)[-1].version if self.versions(name) else 0) + 1
            card = dict(card, name=name, version=number, pushed=runtime.utc_now())
            fileio.write_text(fileio.join(staging, CARD), json.dumps(card, indent=2, default=str))
            target = fileio.join(base, str(number))
            try:
                self._publish(staging, target)
            except FileExistsError:
                continue  # another push took this number: take the next one
            return Version(name, number, target)
        raise ImgpipeError(f"could not allocate a version under {base}.")

    @staticmethod
    def _clean_stale_pushes(base: str, max_age_s: float = 6 * 3600) -> None:
        """Removes staging dirs of pushes killed midway (hidden from TF Serving, but
        they take space); a push younger than `max_age_s` may still be running."""
        if fileio.is_remote(base):
            return
        import time

        for entry in os.listdir(base):
            path = os.path.join(base, entry)
            if entry.startswith(".push-") and time.time() - os.path.getmtime(path) > max_age_s:
                shutil.rmtree(path, ignore_errors=True)

    def _publish(self, staging: str, target: str) -> None:
        if fileio.is_remote(target):
            # No atomic rename on object stores: concurrent pushes to one gs:// model
            # are not safe (documented); TF Serving waits for saved_model.pb.
            if fileio.exists(target):
                raise FileExistsError(target)
            _copytree(staging, target)
            fileio.rmtree(staging)
            return
        try:
            os.rename(staging, target)  # fails when target exists and is not empty
        except OSError as exc:
            if os.path.isdir(target):
                raise FileExistsError(target) from exc
            raise

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        base = fileio.join(self.root, name)
        if fileio.is_remote(base):
            yield
            return
        import fcntl

        os.makedirs(base, exist_ok=True)
        with open(os.path.join(base, ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def set_alias(self, ref: str, alias: str, reason: str = "", force: bool = False,
                  action: str = "promote", who: str | None = None) -> dict[str, Any]:
        """Points `alias` at the version `ref` names; refuses a version that is not
        blessed or failed infra validation unless `force` (recorded in the audit)."""
        if not re.fullmatch(r"[\w.-]+", alias) or alias == "latest":
            raise ConfigError(f"alias {alias!r} must be a word other than 'latest'.")
        version = self.resolve(ref)
        if not version.blessed and not force:
            card = version.card
            why = card.get("blessing", {}).get("reason") or \
                card.get("infra_validation", {}).get("reason") or "no blessing on record"
            raise PromotionRefused(f"{version.ref} is not blessed ({why}); pass --force to "
                                   "promote it anyway (recorded in the audit log).")
        with self._locked(version.name):
            aliases = self.aliases(version.name)
            entry = {"time": runtime.utc_now(), "who": who or _user(), "action": action, "alias": alias,
                     "from": aliases.get(alias), "to": version.version, "reason": reason,
                     "force": force}
            aliases[alias] = version.version
            fileio.write_text_atomic(fileio.join(self.root, version.name, ALIASES),
                                     json.dumps(aliases, indent=2, sort_keys=True))
            self._append_audit(version.name, entry)
        return entry

    def rollback(self, name: str, alias: str, reason: str = "",
                 who: str | None = None) -> dict[str, Any]:
        """Moves `alias` back to the version that held it before the current holder;
        repeated rollbacks walk further back (undone promotions are skipped)."""
        current = self.aliases(name).get(alias)
        if current is None:
            raise ConfigError(f"model {name!r} has no alias {alias!r} to roll back.")
        holders: list[int] = []
        for entry in self.audit(name):
            if entry["alias"] != alias:
                continue
            if entry["action"] == "rollback" and holders:
                holders.pop()
            else:
                holders.append(entry["to"])
        if len(holders) < 2:
            raise ConfigError(f"{name}@{alias} (version {current}) has no earlier holder to "
                              "roll back to; promote a version explicitly instead.")
        previous = holders[-2]
        return self.set_alias(f"{name}:{previous}", alias, reason or f"rollback from {current}",
                              force=True, action="rollback", who=who)

    def _append_audit(self, name: str, entry: dict[str, Any]) -> None:
        path = fileio.join(self.root, name, AUDIT)
        line = json.dumps(entry, sort_keys=True) + "\n"
        if fileio.is_remote(path):
            old = fileio.read_text(path) if fileio.exists(path) else ""
            fileio.write_text(path, old + line)
        else:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())


def _user() -> str:
    try:
        return os.environ.get("IMGPIPE_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _copyfile(src: str, dst: str) -> None:
    fileio.makedirs(os.path.dirname(dst) if not fileio.is_remote(dst) else dst.rsplit("/", 1)[0])
    if fileio.is_remote(src) or fileio.is_remote(dst):
        fileio._gfile().copy(src, dst, overwrite=True)
    else:
        shutil.copy2(src, dst)


def _copytree(src: str, dst: str) -> None:
    if not (fileio.is_remote(src) or fileio.is_remote(dst)):
        shutil.copytree(src, dst)
        return
    prefix = src.rstrip("/") + "/"
    for path in fileio.walk_files(src):
        _copyfile(path, fileio.join(dst, path[len(prefix):]))
