"""File I/O on local paths and remote URIs behind one small interface.

Local paths use the standard library (the CLI and cache checks stay fast, no
TensorFlow import); gs:// goes through the google-cloud-storage client
(`components/io/gcs.py`), which also offers the conditional writes the registry claims
versions and moves aliases with; any other scheme (s3:// ...) goes through
`tf.io.gfile`. Callers never branch on the scheme themselves.

TensorFlow reads and writes (TFRecords, SavedModels, the transform graph) take
`tf_path(uri)`: where a bucket is mounted under /gcs (Vertex AI), a gs:// URI becomes
its path there; elsewhere it stays a gs:// URI.
"""

from __future__ import annotations

import errno
import glob as _glob
import hashlib
import os
import shutil
import stat
import threading
from typing import IO, Any, Iterator

GCS_MOUNT = "/gcs"


def is_remote(path: str) -> bool:
    """True for URIs with a scheme such as gs://, which local os calls cannot reach."""
    return "://" in str(path)


def _is_gcs(path: str) -> bool:
    return str(path).startswith("gs://")


def _gcs():
    from components.io import gcs

    return gcs


def _gfile():
    import tensorflow as tf  # deferred: only other remote schemes pay for the import

    return tf.io.gfile


def gcs_mounted(bucket: str) -> bool:
    """Whether gs://BUCKET is mounted under /gcs (Vertex AI's Cloud Storage FUSE, which
    mounts either /gcs itself or /gcs/BUCKET). A plain folder named /gcs does not count:
    on a self-hosted KFP node it is local disk, and TensorFlow writing there while
    `exists`/`read_bytes` look in the bucket would lose the writes."""
    return os.path.ismount(GCS_MOUNT) or os.path.ismount(os.path.join(GCS_MOUNT, bucket))


def tf_path(path: str) -> str:
    """The path TensorFlow should open: gs://B/x as /gcs/B/x where the bucket is
    mounted there (TensorFlow's own gs:// client then is not involved), else unchanged,
    so TensorFlow and this module's gs:// calls always see the same objects."""
    if _is_gcs(path) and gcs_mounted(path[len("gs://"):].split("/", 1)[0]):
        return os.path.join(GCS_MOUNT, path[len("gs://"):])
    return path


def join(base: str, *parts: str) -> str:
    """Joins path parts with '/', which works for local paths and URIs alike."""
    out = str(base)
    for part in parts:
        out = out.rstrip("/") + "/" + str(part).lstrip("/")
    return out


def exists(path: str) -> bool:
    if _is_gcs(path):
        return _gcs().exists(path)
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    if _is_gcs(path):
        return _gcs().isdir(path)
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if _is_gcs(path):
        return                      # prefixes need no creating
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    if _is_gcs(path):
        return _gcs().listdir(path)
    names = _gfile().listdir(path) if is_remote(path) else os.listdir(path)
    return sorted(name.rstrip("/") for name in names)


def glob(pattern: str) -> list[str]:
    if _is_gcs(pattern):
        return _gcs().glob(pattern)
    return sorted(_gfile().glob(pattern) if is_remote(pattern) else _glob.glob(pattern))


def walk_files(root: str) -> Iterator[str]:
    """Yields every file under `root` (recursively), sorted, as full paths."""
    if _is_gcs(root):
        yield from _gcs().walk_files(root)
        return
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
    if _is_gcs(path):
        return _gcs().open_file(path, mode)
    if is_remote(path):
        return _gfile().GFile(path, mode)
    if any(flag in mode for flag in "wa"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return open(path, mode)
    return open(path, mode, opener=lambda name, flags: _open_regular(name, flags))


def read_bytes(path: str) -> bytes:
    if _is_gcs(path):
        return _gcs().read_bytes(path)
    if is_remote(path):
        with open_file(path, "rb") as handle:
            return handle.read()
    # Unbuffered os calls: a third of open().read()'s cost on small files (ingest reads
    # every image through here). Never a FIFO, socket or device (`_open_regular`).
    fd, opened = _opened(path)
    try:
        want = min(opened.st_size + 1, 1 << 30)
        data = os.read(fd, want)
        if 0 < len(data) < want:        # a regular file reads short only at its end
            return data
        chunks = [data]
        while chunks[-1]:               # grew since fstat, or larger than one read
            chunks.append(os.read(fd, 1 << 24))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_head(path: str, size: int) -> bytes:
    """The first `size` bytes of a file (at most): one range request on gs://."""
    if _is_gcs(path):
        return _gcs().read_head(path, size)
    with open_file(path, "rb") as handle:
        return handle.read(size)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    if _is_gcs(path):
        _gcs().write_bytes(path, data)
        return
    try:
        with open_file(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        if exc.filename is None:        # a failed write names no file: this one
            exc.filename = path
        raise


def append_text(path: str, text: str) -> None:
    """Appends `text` to a small file (a log), durably: synced to disk locally; on an
    object store, which cannot append, the object is rewritten whole with the text
    added, so a reader sees the old lines or all of the new ones."""
    if is_remote(path):
        old = read_bytes(path) if exists(path) else b""
        write_bytes(path, old + text.encode("utf-8"))
        return
    with open_file(path, "a") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: str, text: str) -> None:
    """Writes a small file so readers see either nothing or the complete content."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes a file so readers see either the old content or the complete new one:
    a temporary file in the same folder, renamed over `path` (removed on failure). An
    object store publishes an object only when its upload completes."""
    if is_remote(path):
        write_bytes(path, data)
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


def create_if_absent(path: str, data: bytes) -> bool:
    """Writes `path` only when nothing is there; False when another writer was first
    (an object precondition on gs://, O_EXCL locally)."""
    if _is_gcs(path):
        return _gcs().create_if_absent(path, data)
    if is_remote(path):
        raise NotImplementedError(f"no conditional create on {path.split('://')[0]}://")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def read_versioned(path: str) -> tuple[bytes, int]:
    """(content, generation) of an object (b'', 0 when absent): for compare-and-swap."""
    if not _is_gcs(path):
        raise NotImplementedError(f"no object generations on {path}")
    return _gcs().read_versioned(path)


def swap(path: str, data: bytes, generation: int) -> bool:
    """Writes an object only if it is still at `generation` (0: absent)."""
    if not _is_gcs(path):
        raise NotImplementedError(f"no object generations on {path}")
    return _gcs().swap(path, data, generation)


def copy(src: str, dst: str) -> None:
    """Copies one file (across local paths and URIs)."""
    if _is_gcs(src) and _is_gcs(dst):
        _gcs().copy(src, dst)
    elif is_remote(src) or is_remote(dst):
        write_bytes(dst, read_bytes(src))
    else:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        try:
            shutil.copy2(src, dst)
        except OSError as exc:
            # a full or read-only disk is the destination's (the copy names its source
            # first): the user frees or fixes that one
            if exc.errno in _DESTINATION_ERRORS:
                exc.filename, exc.filename2 = dst, None
            raise


# Errors of a copy that are about the disk written to, never the one read from.
_DESTINATION_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


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
        for path in list(walk_files(src)) or [src]:
            copy(path, dst + path[len(src):])
        rmtree(src)
    else:
        os.rename(src, dst)


def rmtree(path: str) -> None:
    if _is_gcs(path):
        _gcs().rmtree(path)
        return
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


# The content checksums an object store keeps per object (`stored_checksums`), in the
# order a manifest prefers them; a file without one is hashed (SHA-256).
STORED_CHECKSUMS = ("crc32c", "md5")


def stored_checksums(root: str) -> dict[str, dict[str, Any]] | None:
    """path -> {"size", "crc32c"} (or "md5") for every file under `root`, from the object
    store's listing (one listing, no object read: the store computed the checksum when
    the object was written). None where the storage keeps no checksums (local disks,
    schemes other than gs://): there the content has to be read and hashed."""
    if _is_gcs(root):
        return _gcs().checksums(root)
    return None


def identities(paths: list[str]) -> dict[str, str | None]:
    """path -> a cheap identity that changes when the file's content can have changed
    (None for a missing file): on gs:// the object's generation and size, from one
    listing per bucket under the paths' common prefix, never its bytes (a data source in
    a bucket can be many gigabytes); elsewhere the SHA-256 of its content."""
    out: dict[str, str | None] = {}
    by_bucket: dict[str, list[str]] = {}
    for path in paths:
        if _is_gcs(path):
            by_bucket.setdefault(path[len("gs://"):].split("/", 1)[0], []).append(path)
            continue
        try:
            out[path] = hash_file(path)
        except OSError:
            out[path] = None
    for group in by_bucket.values():
        prefix = os.path.commonprefix(group)
        if prefix not in group:        # list from the last '/': a folder, not a name's start
            prefix = prefix[:prefix.rfind("/") + 1]
        listed = _gcs().signatures(prefix)
        out.update({path: listed.get(path) for path in group})
    return out


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
    if _is_gcs(path):
        return _gcs().size(path)
    try:
        return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)
    except Exception:  # gfile raises NotFoundError, os raises OSError
        return None


# --- files that are not regular files ---------------------------------------------------


class NotRegularFile(OSError):
    """A local path names a FIFO, a socket or a device (or a link to one), which imgpipe
    never opens: opening a FIFO blocks until a writer comes, a device may never end.
    `strerror` says what it is and what to do (a quarantine reason or an error row);
    `str()` adds the path."""

    def __init__(self, path: str, kind: str):
        super().__init__(errno.EINVAL, f"not a regular file ({kind}): imgpipe opens no "
                                       "FIFO, socket or device, which can block forever; "
                                       "put the file itself there, or remove it", path)
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str | None:
    """What a file of this mode is when it is neither a regular file nor a folder."""
    return next((kind for test, kind in _KINDS if test(mode)), None)


def special(path: str) -> str | None:
    """'a FIFO', 'a socket', 'a character device' or 'a block device' for a local path
    that is one (a link to one too); None for a regular file, a folder, a path that
    does not exist and any remote path (an object store holds only objects). A stat,
    never an open."""
    if is_remote(path):
        return None
    try:
        return _kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def _open_regular(path: str, flags: int = os.O_RDONLY) -> int:
    return _opened(path, flags)[0]


def _opened(path: str, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
    """A descriptor for reading a local file, refusing (NotRegularFile) anything that is
    not a regular file or a folder without opening it; O_NONBLOCK (which changes
    nothing for a regular file) keeps a FIFO swapped in after the check from blocking,
    and the check is made again on what was opened."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode) and _kind(mode):
        raise NotRegularFile(path, _kind(mode))
    fd = os.open(path, flags | os.O_NONBLOCK)
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) and _kind(opened.st_mode):
        os.close(fd)
        raise NotRegularFile(path, _kind(opened.st_mode))
    return fd, opened

