"""The audit ledger (NAME/audit.jsonl): alias changes parsed, checked and replayed."""

from __future__ import annotations

import json
from typing import Any

from components import runtime
from components.errors import RegistryError
from components.registry.refs import NAME
from components.registry.store import user

AUDIT = "audit.jsonl"


def parse(path: str, name: str, data: bytes) -> list[dict[str, Any]]:
    """The ledger's entries from its bytes. A torn last line (a writer killed
    mid-append) is not an entry; a damaged line before it is a RegistryError naming
    the line and the repair."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{path} is not UTF-8 text; restore it from a backup, or "
                            "remove it to start a new alias history.") from exc
    entries = []
    # Text after the last newline is a torn append that never committed.
    for number, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            _check_entry(entry)
        except ValueError as exc:
            raise RegistryError(
                f"{path} line {number} is damaged ({exc}); the ledger records every alias "
                f"change: fix or delete that line, then run `imgpipe models repair {name}` "
                "to rewrite aliases.json from it.") from exc
        entries.append(entry)
    return entries


def _check_entry(entry: Any) -> None:
    """A ledger line is an alias change: an alias name, a target version (None for a
    delete), an action; ValueError otherwise."""
    if not isinstance(entry, dict) or "alias" not in entry or "to" not in entry:
        raise ValueError("not an alias change record")
    if not isinstance(entry["alias"], str) or not NAME.fullmatch(entry["alias"]):
        raise ValueError(f"alias {entry['alias']!r} is not an alias name")
    for key in ("to", "from"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{key!r} is {value!r}, not a version number")
    if not isinstance(entry.get("action", ""), str):
        raise ValueError(f"action {entry['action']!r} is not text")


def entry(action: str, alias: str, current: int | None, target: int | None, reason: str,
          force: bool, who: str | None) -> dict[str, Any]:
    """A new ledger line: who moved `alias` from `current` to `target`, when, and why."""
    return {"time": runtime.utc_now(), "who": who or user(), "action": action, "alias": alias,
            "from": current, "to": target, "reason": reason, "force": force}


def replay(entries: list[dict[str, Any]]) -> dict[str, int]:
    """alias -> version after every entry in order (aliases.json is a view of this)."""
    aliases: dict[str, int] = {}
    for item in entries:
        if item.get("action") == "delete" or item["to"] is None:
            aliases.pop(item["alias"], None)
        else:
            aliases[item["alias"]] = int(item["to"])
    return aliases


def traffic(entries: list[dict[str, Any]], alias: str) -> int:
    """The endpoint share the alias's latest entry gave it (0: none)."""
    for item in reversed(entries):
        if item["alias"] == alias:
            return item.get("traffic") or 0
    return 0


def holders(entries: list[dict[str, Any]], alias: str) -> list[int]:
    """The alias's history as a stack: promotions push (a repeat of the top is no
    change), rollbacks pop, a delete clears it. The top is the current holder."""
    stack: list[int] = []
    for item in entries:
        if item["alias"] != alias:
            continue
        if item.get("action") == "delete":
            stack.clear()
        elif item.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != item["to"]:
                stack.append(int(item["to"]))
        elif not stack or stack[-1] != item["to"]:
            stack.append(int(item["to"]))
    return stack
