"""Google Cloud Storage behind `components/io/fileio.py`: gs:// paths through the
google-cloud-storage client (which, unlike TensorFlow's built-in gs:// filesystem,
honours STORAGE_EMULATOR_HOST, so the tests run it against a GCS protocol server on
127.0.0.1), plus the two conditional writes that make concurrent writers safe without
locks: create-if-absent (`if_generation_match=0`) and compare-and-swap on an object's
generation.

Folders do not exist on GCS: a "folder" is the prefix of the objects below it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import os
from typing import IO, Any, Callable, Iterator, TypeVar

from components.errors import AccessError, ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def split(path: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ('bucket', 'a/b')."""
    rest = path[len("gs://"):]
    bucket, _, name = rest.partition("/")
    return bucket, name


@functools.lru_cache(maxsize=1)
def _client_for(emulator: str | None, project: str | None):
    from google.cloud import storage

    return storage.Client(project=project)


def client():
    """One client per process (and per emulator, for tests that start one)."""
    return _client_for(os.environ.get("STORAGE_EMULATOR_HOST"),
                       os.environ.get("GOOGLE_CLOUD_PROJECT"))


def _explained(function: F) -> F:
    """The storage failures a user fixes, as one line naming the path and the fix: no
    credentials (or ones that cannot be refreshed), access denied, no such bucket."""
    @contextlib.contextmanager
    def explaining(path: str) -> Iterator[None]:
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        try:
            yield
        except auth.GoogleAuthError as exc:
            raise AccessError(
                f"{path}: no usable Google Cloud credentials ({_first_line(exc)}); run "
                "`gcloud auth application-default login`, or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service account key file.",
                "no usable Google Cloud credentials here") from None
        except (api.Forbidden, api.Unauthorized) as exc:
            # GCS answers 403 also for a bucket that does not exist, to a caller who
            # may not list it
            raise AccessError(
                f"{path}: access denied ({_first_line(exc)}); check that gs://"
                f"{split(path)[0]} exists and grant this account roles/storage.objectAdmin "
                "on it, or use another bucket.",
                f"access to gs://{split(path)[0]} denied to this machine's account") from None
        except api.NotFound as exc:
            if "bucket does not exist" not in str(exc).lower():
                raise
            raise ConfigError(f"{path}: bucket gs://{split(path)[0]} does not exist; create "
                              "it (gcloud storage buckets create) or fix the path.") from None

    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def generator(path: str, *args: Any, **kwargs: Any) -> Any:
            with explaining(path):
                yield from function(path, *args, **kwargs)
        return generator  # type: ignore[return-value]

    @functools.wraps(function)
    def wrapper(path: str, *args: Any, **kwargs: Any) -> Any:
        with explaining(path):
            return function(path, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _blob(path: str):
    bucket, name = split(path)
    return client().bucket(bucket).blob(name)


def _prefix(path: str) -> str:
    name = split(path)[1]
    return name.rstrip("/") + "/" if name else ""


@_explained
def exists(path: str) -> bool:
    return _blob(path).exists() or isdir(path)


@_explained
def isdir(path: str) -> bool:
    bucket, _ = split(path)
    return any(True for _ in client().list_blobs(bucket, prefix=_prefix(path), max_results=1))


@_explained
def listdir(path: str) -> list[str]:
    bucket, _ = split(path)
    prefix = _prefix(path)
    pages = client().list_blobs(bucket, prefix=prefix, delimiter="/")
    names = [blob.name[len(prefix):] for blob in pages]
    names += [p[len(prefix):].rstrip("/") for p in pages.prefixes]
    return sorted(n for n in names if n)


@_explained
def walk_files(root: str) -> Iterator[str]:
    bucket, _ = split(root)
    for blob in sorted(client().list_blobs(bucket, prefix=_prefix(root)), key=lambda b: b.name):
        yield f"gs://{bucket}/{blob.name}"


@_explained
def signatures(prefix: str) -> dict[str, str]:
    """gs://... -> "generation:size" for every object whose name starts with the name
    part of `prefix`, from one listing (no object is read). An object rewritten in
    place gets a new generation, so the signature changes whenever its content can."""
    bucket, name = split(prefix)
    return {f"gs://{bucket}/{blob.name}": f"{blob.generation}:{blob.size}"
            for blob in client().list_blobs(bucket, prefix=name)}


@_explained
def checksums(root: str) -> dict[str, dict[str, int | str]]:
    """gs://... -> {"size", "crc32c"} for every object under the folder `root`, from one
    listing (no object is read): the checksum GCS computed when the object was written
    (base64, as the JSON API gives it). Every object has a CRC32C; where a store lists
    none, its MD5 ("md5"), and where it lists neither, only the size."""
    bucket, _ = split(root)
    out: dict[str, dict[str, int | str]] = {}
    for blob in client().list_blobs(bucket, prefix=_prefix(root)):
        entry: dict[str, int | str] = {"size": blob.size}
        if blob.crc32c:
            entry["crc32c"] = blob.crc32c
        elif blob.md5_hash:
            entry["md5"] = blob.md5_hash
        out[f"gs://{bucket}/{blob.name}"] = entry
    return out


@_explained
def glob(pattern: str) -> list[str]:
    bucket, name = split(pattern)
    fixed = name[:min((name.index(c) for c in "*?[" if c in name), default=len(name))]
    matches = []
    for blob in client().list_blobs(bucket, prefix=fixed):
        if fnmatch.fnmatchcase(blob.name, name):
            matches.append(f"gs://{bucket}/{blob.name}")
    return sorted(matches)


@_explained
def open_file(path: str, mode: str = "rb") -> IO:
    if "r" in mode:
        return _blob(path).open("rb" if "b" in mode else "r")
    return _blob(path).open("wb" if "b" in mode else "w")


@_explained
def read_bytes(path: str) -> bytes:
    from google.api_core.exceptions import NotFound

    try:
        return _blob(path).download_as_bytes()
    except NotFound as exc:
        raise FileNotFoundError(path) from exc


@_explained
def read_head(path: str, size: int) -> bytes:
    """The first `size` bytes of an object (one ranged download)."""
    from google.api_core.exceptions import NotFound

    try:
        return _blob(path).download_as_bytes(start=0, end=size - 1)
    except NotFound as exc:
        raise FileNotFoundError(path) from exc


@_explained
def write_bytes(path: str, data: bytes) -> None:
    """One upload: readers see the old object or the new one, never a part."""
    _blob(path).upload_from_string(data)


@_explained
def size(path: str) -> int | None:
    bucket, name = split(path)
    blob = client().bucket(bucket).get_blob(name)
    return None if blob is None else blob.size


@_explained
def copy(src: str, dst: str) -> None:
    src_bucket, src_name = split(src)
    dst_bucket, dst_name = split(dst)
    bucket = client().bucket(src_bucket)
    bucket.copy_blob(bucket.blob(src_name), client().bucket(dst_bucket), dst_name)


@_explained
def rmtree(path: str) -> None:
    bucket, name = split(path)
    for blob in list(client().list_blobs(bucket, prefix=_prefix(path))):
        blob.delete()
    blob = client().bucket(bucket).blob(name)
    if name and blob.exists():
        blob.delete()


# --- conditional writes --------------------------------------------------------------


@_explained
def create_if_absent(path: str, data: bytes) -> bool:
    """Writes `path` only if no object is there; False when another writer was first."""
    from google.api_core.exceptions import PreconditionFailed

    try:
        _blob(path).upload_from_string(data, if_generation_match=0)
    except PreconditionFailed:
        return False
    return True


@_explained
def read_versioned(path: str) -> tuple[bytes, int]:
    """(content, generation); (b'', 0) when absent. The generation is read with the
    metadata, before the content, so a compare-and-swap on it is exact."""
    bucket, name = split(path)
    blob = client().bucket(bucket).get_blob(name)
    if blob is None:
        return b"", 0
    from google.api_core.exceptions import NotFound, PreconditionFailed

    try:
        return blob.download_as_bytes(if_generation_match=blob.generation), blob.generation
    except (NotFound, PreconditionFailed):
        return read_versioned(path)    # replaced between the two requests: read again


@_explained
def swap(path: str, data: bytes, generation: int) -> bool:
    """Writes `path` only if it is still at `generation` (0: absent); False otherwise."""
    from google.api_core.exceptions import PreconditionFailed

    try:
        _blob(path).upload_from_string(data, if_generation_match=generation)
    except PreconditionFailed:
        return False
    return True
