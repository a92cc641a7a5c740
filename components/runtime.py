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


def utc_now() -> str:
    """ISO 8601 UTC time to the second (artifact manifests, model cards, audit lines)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
