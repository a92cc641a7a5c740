"""Process-level facts and chores shared by the steps and the runners: the package
version, UTC timestamps, and handing freed memory back to the OS."""

from __future__ import annotations

import datetime as _dt


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


def release_memory() -> None:
    """Returns freed heap to the OS (glibc keeps it otherwise), so the next phase's
    peak does not stack on the last one's."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
