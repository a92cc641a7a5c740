"""Path safety of a registry root: no link out of it, and why a version folder is not one."""

from __future__ import annotations

import os

from components.artifacts import SAVED_MODEL_PB
from components.errors import RegistryError
from components.io import fileio
from components.registry.refs import NAME


def outside(root: str, path: str) -> str | None:
    """The real path of `path` when a symbolic link takes it out of `root` (None when
    it stays inside, and always on gs://, which has no links): a registry lists,
    promotes and serves only what was pushed into it."""
    if fileio.is_remote(root):
        return None
    real, base = os.path.realpath(path), os.path.realpath(root)
    return None if real == base or real.startswith(base.rstrip(os.sep) + os.sep) else real


def refuse_outside(root: str, path: str) -> None:
    """A RegistryError naming the link and the fix when `path` leaves `root`."""
    real = outside(root, path)
    if real is not None:
        raise RegistryError(f"{path} is a link to {real}, outside the registry {root}; the "
                            "registry lists, promotes and serves only what was pushed into "
                            "it: remove the link (the folder it points at stays) and push "
                            "that model with `imgpipe run`.")


def links_outside(root: str, name: str | None = None) -> list[tuple[str, str]]:
    """(link, real path) for each model folder (or, for `name`, version folder) that a
    symbolic link takes out of `root`."""
    if fileio.is_remote(root) or not fileio.isdir(root):
        return []
    found = []
    for model in [name] if name else sorted(os.listdir(root)):
        path = os.path.join(root, model)
        if not NAME.fullmatch(model) or not os.path.isdir(path):
            continue
        real = outside(root, path)
        if real is not None:
            found.append((path, real))
            continue
        for entry in sorted(os.listdir(path)):
            real = outside(root, os.path.join(path, entry)) if entry.isdigit() else None
            if real is not None:
                found.append((os.path.join(path, entry), real))
    return found


def gone(path: str) -> str:
    """What is wrong with a version folder that is not a complete version."""
    if not fileio.exists(path):
        return f"its folder {path} is gone (deleted or moved)"
    return f"its folder {path} holds no {SAVED_MODEL_PB} (not a complete version)"


def not_a_folder(root: str) -> str | None:
    """Why a local registry root cannot be one (it, or a folder on its way, is a file),
    said after the path; None when it is a folder, does not exist yet, or is remote.
    `push.destination` and `--registry` give the same reason."""
    if fileio.is_remote(root):
        return None
    if os.path.exists(root):
        return None if os.path.isdir(root) else \
            "is a file; it must be a folder (the registry root)"
    existing = os.path.dirname(os.path.abspath(root))
    while existing != os.path.dirname(existing) and not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if os.path.exists(existing) and not os.path.isdir(existing):
        return f"cannot be a folder: {existing} is a file, not a folder"
    return None
