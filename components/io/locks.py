"""A lock on local paths and gs:// behind one call (`lock`): a file lock on a local
disk, a claim object written by compare-and-swap on an object store, which has no
locks (the protocol the registry claims versions with, `components/registry/store.py`).
Runs that share a folder (the ingest step's per-span cache) take one before writing
what the others would reuse."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator

from components.io.fileio import is_remote, read_versioned, swap



@contextlib.contextmanager
def lock(path: str, waiting: Callable[[], None] | None = None, stale: float = 600.0,
         poll: float = 1.0) -> Iterator[None]:
    """Holds the exclusive lock named `path` while the block runs; when another holder
    has it, calls `waiting()` once and waits. Locally a file lock (`fcntl.flock` on
    `path`, released by the system when its holder dies). On gs://, which has no locks,
    a claim object written by compare-and-swap on its generation (as the registry claims
    versions there): its holder rewrites it every `stale`/4 seconds, and a claim that
    stayed the same for `stale` seconds is a dead holder's, taken over; the holder
    empties it when done. `poll`: seconds between looks at a held claim."""
    if not is_remote(path):
        import fcntl

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    waiting()
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if not path.startswith("gs://"):
        raise NotImplementedError(f"no lock on {path.split('://')[0]}://")
    claim = _Claim(path, stale, poll)
    claim.take(waiting)
    try:
        yield
    finally:
        claim.release()


class _Claim:
    """A lock on gs:// (`lock`): an object holding its holder's claim, b'' when free."""

    def __init__(self, path: str, stale: float, poll: float):
        self.path, self.stale, self.poll = path, stale, poll
        self.mine = b""
        self.stop = threading.Event()
        self.keeper: threading.Thread | None = None

    def _new(self) -> bytes:
        import json
        import uuid

        from components import runtime

        return json.dumps({"process": runtime.process_identity(), "time": runtime.utc_now(),
                           "token": uuid.uuid4().hex}).encode()

    def take(self, waiting: Callable[[], None] | None) -> None:
        import time

        seen, told = (None, 0.0), False
        while True:
            data, generation = read_versioned(self.path)
            now = time.monotonic()
            if generation != seen[0]:
                seen = (generation, now)
            if not data or now - seen[1] >= self.stale:      # free, or its holder died
                mine = self._new()
                if swap(self.path, mine, generation):
                    self.mine = mine
                    break
                continue
            if not told and waiting:
                waiting()
            told = True
            time.sleep(self.poll)
        self.keeper = threading.Thread(target=self._keep, daemon=True,
                                       name="imgpipe-claim")
        self.keeper.start()

    def _keep(self) -> None:
        """Rewrites the claim every stale/4 seconds: a live holder's never goes stale."""
        while not self.stop.wait(self.stale / 4):
            try:
                data, generation = read_versioned(self.path)
                if data != self.mine:
                    return                   # taken over: this holder was thought dead
                mine = self._new()
                if swap(self.path, mine, generation):
                    self.mine = mine
            except Exception:                # a flaky request: try again next time
                continue

    def release(self) -> None:
        self.stop.set()
        if self.keeper is not None:
            self.keeper.join()
        data, generation = read_versioned(self.path)
        if data == self.mine:
            swap(self.path, b"", generation)
