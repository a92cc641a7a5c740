"""How a registry root stores what `components.registry.versions.Registry` decides: the two
protocols behind one interface, chosen once from the root.

`LocalStore` (a folder): a version is copied under a hidden temporary name and
published by renaming it to the next integer, under one lock per model (a file lock);
the ledger is changed under the same lock and appended with an fsync.

`BucketStore` (gs://, which has no rename and no locks): a version number is claimed
with a create-if-absent marker object and the files are written in place, saved_model.pb
last; the ledger is changed by compare-and-swap on its object generation.

The registry keeps every decision (which number comes next, whether the model is
already pushed, what a ledger change is); a store only calls back for them where its
protocol has to decide under a lock or again after losing a race.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, TypeVar

from components.io import fileio
from components import runtime
from components.artifacts import SAVED_MODEL_PB, PushedModel
from components.errors import ImgpipeError

CARD = PushedModel.CARD   # the file name is the artifact type's (a version's layout)
CLAIM = ".claim"          # a version number taken on an object store (create-if-absent)

Files = list[tuple[str, str]]       # (source file, path inside the version folder)
Published = tuple[int, str]         # (version number, version folder)
Entry = TypeVar("Entry")


@dataclass(frozen=True)
class Push:
    """One push as the registry hands it to a store."""

    base: str                                    # ROOT/NAME
    files: Files                                 # saved_model.pb among them
    source: str                                  # the SavedModel folder (errors name it)
    card: Callable[[int], str]                   # the model card's text for a number
    pushed: Callable[[], Published | None]       # the version already holding the model
    newest: Callable[[], int]                    # the newest complete version (0: none)


class Store(Protocol):
    """The storage protocol of one kind of registry root."""

    def publish(self, push: Push) -> tuple[int, str, bool]:
        """(number, folder, already): writes `push` as the next version, so that
        concurrent pushes get distinct numbers and a reader never sees a partial
        version; `already` when `push.pushed()` found the model at the last moment
        (nothing was written then). A failed push removes what it wrote."""

    def change(self, ledger: str, decide: Callable[[bytes], tuple[Entry, bytes]],
               view: Callable[[bytes | None], None]) -> Entry:
        """Appends the line `decide(whole)` returns (b'': none) to the ledger, where
        `whole` is the ledger without a torn last line, so that `decide` always sees
        the ledger its line is appended to; then `view(whole)` rewrites aliases.json
        (None: from the ledger as it is now). Returns the entry `decide` returned."""


class LocalStore:
    """A folder: a hidden copy renamed into place, and one file lock per model."""

    def publish(self, push: Push) -> tuple[int, str, bool]:
        fileio.makedirs(push.base)
        staging = fileio.join(push.base, f".push-{uuid.uuid4().hex}")
        with contextlib.ExitStack() as held:
            # Cleaning up dead pushes and taking this push's lock are one step under the
            # model's lock: a cleaner never sees this copy before its lock is held.
            with _locked(push.base):
                _clean_dead_pushes(push.base)
                held.enter_context(_held(f"{staging}.lock"))
            try:
                for src, rel in push.files:
                    fileio.copy(src, fileio.join(staging, rel))
                if not fileio.exists(fileio.join(staging, SAVED_MODEL_PB)):
                    raise ImgpipeError(f"{push.source} holds no saved_model.pb: nothing to "
                                       "push.")
                with _locked(push.base):
                    found = push.pushed()
                    if found is not None:
                        fileio.rmtree(staging)
                        return (*found, True)
                    return (*_claim_version(push, staging), False)
            except BaseException:
                fileio.rmtree(staging)
                raise

    def change(self, ledger: str, decide: Callable[[bytes], tuple[Entry, bytes]],
               view: Callable[[bytes | None], None]) -> Entry:
        with _locked(os.path.dirname(ledger)):
            data = fileio.read_bytes(ledger) if fileio.exists(ledger) else b""
            whole = _whole(data)     # a torn tail never happened
            entry, line = decide(whole)
            if whole != data:
                fileio.write_bytes_atomic(ledger, whole)
            if line:
                _append_synced(ledger, line)
            view(None)
        return entry


class BucketStore:
    """An object store: numbers claimed by create-if-absent, the ledger by
    compare-and-swap on its generation."""

    def publish(self, push: Push) -> tuple[int, str, bool]:
        """An object store has no rename: claim the next number with a create-if-absent
        marker (two pushes never get the same one), copy the files in, and write
        saved_model.pb last (TF Serving and `versions` wait for it)."""
        number = _claim_object(push.base)
        target = fileio.join(push.base, str(number))
        try:
            fileio.write_text(fileio.join(target, CARD), push.card(number))
            ready = [(src, rel) for src, rel in push.files if rel == SAVED_MODEL_PB]
            for src, rel in [f for f in push.files if f not in ready] + ready:
                fileio.copy(src, fileio.join(target, rel))
        except BaseException:
            fileio.rmtree(target)
            raise
        return number, target, False

    def change(self, ledger: str, decide: Callable[[bytes], tuple[Entry, bytes]],
               view: Callable[[bytes | None], None]) -> Entry:
        """Retried (and decided again) when another writer swapped the ledger first."""
        for _ in range(100):
            data, generation = fileio.read_versioned(ledger)
            whole = _whole(data)
            entry, line = decide(whole)
            if not line:
                view(whole)
                return entry
            if fileio.swap(ledger, whole + line, generation):
                view(None)
                return entry
        raise ImgpipeError(f"{ledger} kept changing under 100 attempts to record an alias "
                           "change; try again.")


def user() -> str:
    """Who pushes or changes an alias: $IMGPIPE_USER, else the login name."""
    try:
        return os.environ.get("IMGPIPE_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _whole(data: bytes) -> bytes:
    """The ledger without text after its last newline (a torn append that never
    committed)."""
    return data[:data.rfind(b"\n") + 1]


def _claim_object(base: str) -> int:
    for _ in range(1000):
        taken = [int(n) for n in fileio.listdir(base) if n.isdigit()] \
            if fileio.isdir(base) else []
        number = max(taken, default=0) + 1
        claim = {"time": runtime.utc_now(), "who": user(),
                 "process": runtime.process_identity()}
        if fileio.create_if_absent(fileio.join(base, str(number), CLAIM),
                                   json.dumps(claim).encode()):
            return number
    raise ImgpipeError(f"could not claim a version under {base}.")


def _claim_version(push: Push, staging: str) -> Published:
    """Publishes `staging` as the next number (called under the model's lock). A
    number taken by something that is not a version (a stray file `7`, a half-made
    folder) is skipped over, never retried."""
    number = push.newest()
    for _ in range(1000):
        number += 1
        fileio.write_text(fileio.join(staging, CARD), push.card(number))
        target = fileio.join(push.base, str(number))
        try:
            _publish(staging, target)
        except FileExistsError:
            continue  # taken by something else: take the next one
        return number, target
    raise ImgpipeError(f"could not allocate a version under {push.base}.")


def _publish(staging: str, target: str) -> None:
    try:
        os.rename(staging, target)  # fails when target exists and is not empty
    except OSError as exc:
        if os.path.lexists(target):    # a link (even one to nothing) takes the number too
            raise FileExistsError(target) from exc
        raise


def _clean_dead_pushes(base: str) -> None:
    """Removes hidden copies of pushes whose process is gone (called under the
    model's lock, which a push holds while it creates its copy's lock): a running
    push holds the lock file next to its copy; a dead one holds nothing."""
    for entry in os.listdir(base):
        if not entry.startswith(".push-"):
            continue
        path = os.path.join(base, entry.removesuffix(".lock"))
        if _lock_is_free(f"{path}.lock"):
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.remove(f"{path}.lock")


def _append_synced(path: str, line: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def _locked(base: str) -> Iterator[None]:
    """The model's lock (ROOT/NAME/.lock), held while the block runs."""
    os.makedirs(base, exist_ok=True)
    with _held(os.path.join(base, ".lock"), blocking=True):
        yield


@contextlib.contextmanager
def _held(lock_path: str, blocking: bool = False) -> Iterator[None]:
    """Holds an exclusive lock on `lock_path` (local paths) while the block runs."""
    import fcntl

    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            if not blocking:   # a private lock: gone with its owner's work
                with contextlib.suppress(OSError):
                    os.remove(lock_path)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_is_free(lock_path: str) -> bool:
    """True when no live process holds `lock_path` (or it does not exist). Never
    creates the file: a lock that is gone belongs to nobody."""
    import fcntl

    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)    # closing releases the lock it took
    return True
