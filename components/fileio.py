"""File I/O on local paths and remote URIs (gs://, s3:// ...) behind one small interface.

Local paths use the standard library, so the CLI and cache checks stay fast (no
TensorFlow import); any path with a scheme goes through `tf.io.gfile`, which speaks
GCS and the other filesystems TensorFlow was built with. Callers never branch on the
scheme themselves.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import os
import shutil
import threading
from typing import IO, Any, Iterator


def is_remote(path: str) -> bool:
    """True for URIs with a scheme such as gs://, which local os calls cannot reach."""
    return "://" in str(path)


def _gfile():
    import tensorflow as tf  # deferred: only remote paths pay for the import

    return tf.io.gfile


def join(base: str, *parts: str) -> str:
    """Joins path parts with '/', which works for local paths and URIs alike."""
    out = str(base)
    for part in parts:
        out = out.rstrip("/") + "/" + str(part).lstrip("/")
    return out


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    names = _gfile().listdir(path) if is_remote(path) else os.listdir(path)
    return sorted(name.rstrip("/") for name in names)


def glob(pattern: str) -> list[str]:
    return sorted(_gfile().glob(pattern) if is_remote(pattern) else _glob.glob(pattern))


def walk_files(root: str) -> Iterator[str]:
    """Yields every file under `root` (recursively), sorted, as full paths."""
    if is_remote(root):
        for dirpath, _, files in _gfile().walk(root):
            for name in sorted(files):
                yield join(dirpath, name)
        return
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            yield os.path.join(dirpath, name)


def open_file(path: str, mode: str = "rb") -> IO:
    if is_remote(path):
        return _gfile().GFile(path, mode)
    if any(flag in mode for flag in "wa"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return open(path, mode)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as handle:
        return handle.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    with open_file(path, "wb") as handle:
        handle.write(text.encode("utf-8"))


def write_text_atomic(path: str, text: str) -> None:
    """Writes a small file so readers see either nothing or the complete content."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes a file so readers see either the old content or the complete new one:
    a temporary file in the same folder, renamed over `path` (removed on failure)."""
    if is_remote(path):
        # Object stores publish an object only when its upload completes.
        with open_file(path, "wb") as handle:
            handle.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def prepare_output(path: str, what: str) -> str:
    """Checks that a file the user asked for can be written at `path` (creating its
    folder), before any work: a folder there, a file where a folder should be, or a
    read-only folder is a ConfigError naming `what` (e.g. "-o") and the fix."""
    from components.errors import ConfigError

    if is_remote(path):
        return path
    if os.path.isdir(path):
        raise ConfigError(f"{what} {path!r} is a folder; give a file name inside it, e.g. "
                          f"{os.path.join(path, 'out' + (os.path.splitext(path)[1] or '.csv'))}.")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError(f"{what} {path!r}: a part of {parent!r} is a file, not a folder; "
                          "choose another path.") from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path!r}: cannot create {parent!r} ({exc.strerror}).") from exc
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{what} {path!r}: the folder {parent!r} is not writable; choose "
                          "another path.")
    return path


def rename(src: str, dst: str) -> None:
    if is_remote(src):
        _gfile().rename(src, dst, overwrite=False)
    else:
        os.rename(src, dst)


def rmtree(path: str) -> None:
    if not exists(path):
        return
    if is_remote(path):
        _gfile().rmtree(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def hash_file(path: str, digest: Any = None) -> str:
    """SHA-256 of a file's bytes (hex), streamed; or feeds them into `digest` and
    returns its hex digest. The one way imgpipe hashes file content."""
    digest = digest if digest is not None else hashlib.sha256()
    with open_file(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stat_signature(path: str) -> str | None:
    """Size, modification and change times and inode of a local file: when all four
    are unchanged the content has not been rewritten. None for remote paths (object
    stores offer no such guarantee) or a missing file."""
    if is_remote(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def file_size(path: str) -> int | None:
    """Size in bytes, or None when the file does not exist."""
    try:
        return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)
    except Exception:  # gfile raises NotFoundError, os raises OSError
        return None
