"""Which failures the CLI reports in one line, and with which exit code: its own errors
(their exit_code), a stop (130/143), a closed pipe (0), a full, read-only or forbidden
disk (2). Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import errno
import logging
import os
import re
import sys

from components import runtime
from components.errors import ImgpipeError


# What a stop means for a command that records a run; a command that does not says
# its own (the `stopped` default of its parser).
RUN_STOPPED = ("the run is recorded as failed and resumes from the first unfinished step "
               "when started again.")


def exit_code(exc: BaseException, stopped: str | None = None) -> int | None:
    """The exit code for `exc`, its line already printed on stderr; None for an error
    the CLI does not explain (the caller re-raises it). `stopped`: what an interrupt
    leaves behind, for this command (default: a run on record)."""
    if isinstance(exc, ImgpipeError):
        print(f"imgpipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, runtime.Stopped)):
        return _stopped(exc, stopped)
    if isinstance(exc, BrokenPipeError):
        return closed_pipe()
    if runtime.stop_signal():   # a library turned our stop into an error of its own
        return _stopped(runtime.Stopped(runtime.stop_signal()), stopped)
    storage = storage_error(exc)
    if storage is None:
        return None
    print(f"imgpipe: error: {storage}", file=sys.stderr)
    return 2


# errno -> what it means for the user, for the storage failures a user fixes
_STORAGE_ERRORS = {errno.ENOSPC: "no space left on the device",
                   errno.EDQUOT: "the disk quota is used up",
                   errno.EFBIG: "a file grew past the size this system allows (ulimit -f)",
                   errno.EROFS: "the file system is read-only",
                   errno.EACCES: "permission denied"}
_WRAPPED_ERRNO = re.compile(r"\[Errno (\d+)\] [^:'\n]*(?:: '([^']+)')?")


def storage_error(exc: BaseException) -> str | None:
    """One line for a full, read-only or forbidden disk, also when a library (Beam,
    TensorFlow) wrapped the OSError into an error of its own; None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRORS:
            return _storage_line(current.errno, current.filename)
        current = current.__cause__ or current.__context__
    match = _WRAPPED_ERRNO.search(str(exc))
    if match and int(match[1]) in _STORAGE_ERRORS:
        return _storage_line(int(match[1]), match[2])
    return None


def _storage_line(code: int, path: str | None) -> str:
    where = f" writing {path}" if path else ""
    return (f"{_STORAGE_ERRORS[code]}{where}; free space or fix the permissions, or point "
            "--runs-dir, push.destination or -o at another folder. A run stopped this way "
            "is recorded as failed and resumes from its first unfinished step.")


def _stopped(exc: BaseException, stopped: str | None = None) -> int:
    name = exc.signal_name if isinstance(exc, runtime.Stopped) else "SIGINT"
    print(f"imgpipe: interrupted ({name}); {stopped or RUN_STOPPED}", file=sys.stderr)
    return 130 if name == "SIGINT" else 143


def closed_pipe() -> int:
    """`imgpipe ... | head`: the reader left; say nothing more, exit quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


# --- a library's own log of a storage failure --------------------------------------------
# Beam logs every exception a transform raises (ERROR:apache_beam.runners.common and
# its traceback) before it re-raises it; for a full or read-only disk that is ten lines
# in front of the one line the CLI prints for it. Those records are dropped; any other
# failure is logged as Beam logs it (and keeps its traceback when the CLI re-raises it).
LIBRARY_FAILURE_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.direct.executor",
                           "apache_beam.runners.worker.bundle_processor",
                           "apache_beam.runners.worker.sdk_worker")


class _NotAStorageError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        failure = record.exc_info[1] if record.exc_info else None
        if failure is None and isinstance(record.msg, BaseException):
            failure = record.msg
        return failure is None or storage_error(failure) is None


_FILTER = _NotAStorageError()


def quiet_library_storage_errors() -> None:
    """Drops the libraries' log records of a storage failure the CLI reports itself."""
    for name in LIBRARY_FAILURE_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
