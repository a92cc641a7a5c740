"""Process-level facts and chores shared by the steps and the runners: the package
version, UTC timestamps, handing freed memory back to the OS, stopping on signals,
telling whether a recorded process still runs, and a private temporary folder."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import sys
from typing import Iterator


def package_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("imgpipe")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def utc_now(timespec: str = "seconds") -> str:
    """ISO 8601 UTC time (artifact manifests, model cards, audit lines; the metadata
    store asks for milliseconds so that rows sort in the order they were written)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)


def seconds_since(iso: str) -> float:
    """Seconds from an ISO 8601 time (as `utc_now` writes it) until now."""
    then = _dt.datetime.fromisoformat(iso)
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()


def utc_compact() -> str:
    """UTC time as YYYYMMDD-HHMMSS, for names that sort by time (run ids)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


# Net allocations between two collections of the young generation. Python's 700 turns
# importing TensorFlow, Beam, TFT and TFMA (millions of objects, nearly all kept for the
# process's life) into thousands of collections; at 50,000 those imports took 4.6 s
# instead of 5.3 s (2-core VM, 2026-12-08), for a few MB more young garbage at a time.
YOUNG_COLLECTION_THRESHOLD = 50_000


def fewer_collections() -> None:
    """Collects the young generation every YOUNG_COLLECTION_THRESHOLD net allocations
    (the older generations' thresholds unchanged): for a command's process, at start."""
    import gc

    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(YOUNG_COLLECTION_THRESHOLD, young), middle, old)


def release_memory(freeze: bool = False) -> None:
    """Returns freed heap to the OS (glibc keeps it otherwise), so the next phase's
    peak does not stack on the last one's. `freeze` (a runner between steps): what
    survives the collection (modules, library caches: there for the process's life) is
    then frozen out of later collections until `thaw()`, so each walks only what was
    allocated since; a full collection over TensorFlow's, Beam's and TFMA's 600,000
    objects took 0.25 s, after every step and in every automatic collection of the
    oldest generation. Only on the main thread: from a step beside it, the main
    thread's step is still running, and its objects must stay collectable."""
    import ctypes
    import gc
    import threading

    gc.collect()
    if freeze and threading.current_thread() is threading.main_thread():
        gc.freeze()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def thaw() -> None:
    """Gives what `release_memory(freeze=True)` froze back to the collector: at a run's
    end, so a process that goes on (a test suite, a second run) collects what the run
    left behind."""
    import gc

    gc.unfreeze()


# --- stopping on signals -------------------------------------------------------------


class Stopped(BaseException):
    """The process was asked to stop (SIGINT / SIGTERM). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` in a library swallows it."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        return 130 if self.signal_name == "SIGINT" else 143


_STOP: dict[str, str] = {}


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM raise Stopped in the main thread, once the first arrives:
    runs record their end, temporary files go, and library threads stay quiet."""
    import logging
    import signal
    import threading

    def handler(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        first = not _STOP
        _STOP.setdefault("signal", name)
        # Threads of Beam/TF that fail because of the stop would print tracebacks.
        logging.disable(logging.CRITICAL)
        threading.excepthook = lambda args: None
        if first and _DEFERRING:
            _STOP["held"] = "yes"       # raised by raise_deferred_stop, after the record
        elif first:
            raise Stopped(name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def stop_signal() -> str | None:
    """The signal that asked this process to stop, if one did."""
    return _STOP.get("signal")


# How many `deferred_stop` blocks are open (one entry each).
_DEFERRING: list[None] = []


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """A stop (SIGINT/SIGTERM) that arrives inside the block does not interrupt it: an
    effect outside the artifacts (a version published, an alias moved) completes and is
    recorded. The stop is then raised by `raise_deferred_stop`, which the runner calls
    once it has recorded the step; a stop that came before the block raises at once."""
    _DEFERRING.append(None)
    try:
        yield
    finally:
        _DEFERRING.pop()


def raise_deferred_stop() -> None:
    """Raises the stop a `deferred_stop` block held back, if one did."""
    if _STOP.pop("held", None):
        raise Stopped(_STOP["signal"])


# --- who is running ------------------------------------------------------------------


def process_identity(pid: int | None = None) -> str:
    """host:pid:start-time of a process (the start time tells a reused pid apart)."""
    import socket

    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "?"


def process_alive(identity: str | None) -> bool | None:
    """Whether the process `identity` names is still running; None when that cannot be
    told from here (another host, or no identity recorded)."""
    import socket

    if not identity or identity.count(":") != 2:
        return None
    host, pid, started = identity.split(":")
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started == "?" or _start_time(int(pid)) == started


# --- native start-up notices -------------------------------------------------------------

# Lines TensorFlow's native libraries write straight to file descriptor 2 while loading,
# before any logging setting applies: notices about CUDA on a machine without a GPU and
# CPU instruction sets. Nothing in them is for a pipeline user.
NATIVE_NOISE = re.compile(
    r"(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ (cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics"
    r"|cpu_feature_guard|cuda_dnn|cuda_fft|cuda_blas|port)\.cc:\d+\]"
    r"|To enable the following instructions: .*rebuild TensorFlow)")


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Points file descriptor 2 (this process's and its children's) at a pipe while the
    block runs; a thread forwards every line to the real stderr except NATIVE_NOISE."""
    import threading

    try:
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:
        yield
        return

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as source:
            for line in iter(source.readline, b""):
                if not NATIVE_NOISE.match(line.decode("utf-8", "replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)               # the pipe's last write end here closes
        thread.join(timeout=2)          # children still holding it: do not wait long


# --- a private temporary folder ---------------------------------------------------------

# A step's detail lines (its summary, epochs, trials) start under the state column of
# the runner's step lines ("  NAME       STATE    ..."): 2 + 10 + 1 characters in.
DETAIL_INDENT = " " * 13


_TEMP_PREFIX = "imgpipe-tmp-"
_TEMP_DEPTH: list[str] = []


@contextlib.contextmanager
def private_tempdir() -> Iterator[str]:
    """Points `tempfile` and TMPDIR (child processes too) at a folder of our own while
    the block runs, and removes it after: TensorFlow's autograph files, Beam's pipeline
    temp dirs and tensorflow-transform's scratch never pile up in the system's TMPDIR.
    A folder left by a killed process is removed by the next one (its lock is free)."""
    import fcntl
    import shutil
    import tempfile

    if _TEMP_DEPTH:           # nested: the outer folder serves
        yield _TEMP_DEPTH[-1]
        return
    base = tempfile.gettempdir()
    _remove_dead_tempdirs(base)
    path = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=base)
    lock = open(os.path.join(path, ".lock"), "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    _TEMP_DEPTH.append(path)
    try:
        yield path
    finally:
        _TEMP_DEPTH.pop()
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(path, ignore_errors=True)
        lock.close()


def _remove_dead_tempdirs(base: str) -> None:
    import fcntl
    import shutil

    try:
        entries = [e for e in os.listdir(base) if e.startswith(_TEMP_PREFIX)]
    except OSError:
        return
    import time

    for entry in entries:
        path = os.path.join(base, entry)
        try:
            lock = os.path.join(path, ".lock")
            made = os.path.getmtime(lock if os.path.exists(lock) else path)
            if time.time() - made < 5:
                continue   # just made: its owner may not hold its lock yet
            with open(lock, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue   # alive (locked), or not ours to touch
