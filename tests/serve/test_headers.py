"""The bound on a request's head (pipeline/serve/headers.py), against a real `imgpipe
serve` process on the loopback: a request line and headers over 64 KiB are answered
431 and the connection closed, whatever their shape, and however much more the client
sends the server's memory stays where it was; a head under the bound is answered."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipeline.serve import headers
from tests import ROOT
from tests import serve_models as sm

LIMIT = headers.MAX_HEAD_BYTES
MIB = 1 << 20


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp_module")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`imgpipe serve` in a process of its own: (host, port, pid)."""
    work = tmp_path_factory.mktemp("headers")
    reg = sm.registry_with(str(work / "serving"), str(work), favourites=(0,))
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--registry", reg.root, "--port", "0",
         "--poll", "3600", "--no-request-log"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("listening on"):
            break
    else:
        pytest.fail(f"serve never listened: {''.join(lines)} {process.stderr.read()}")
    host, port = re.search(r"http://([0-9.]+):(\d+)", lines[-1]).groups()
    try:
        yield host, int(port), process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err


def _exchange(address, head: bytes, body: bytes = b"") -> bytes:
    """Sends `head` (and `body`) on a fresh connection, then reads until the server
    closes it (or answers one request and keeps it open)."""
    with socket.create_connection(address, timeout=30) as sock:
        try:
            sock.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass                       # the server closed before all of it was sent
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            answered = re.match(rb"HTTP/1\.1 \d+ .*?\r\n\r\n", received, re.S)
            length = re.search(rb"(?i)content-length: (\d+)", received)
            if answered and length and len(received) >= answered.end() + int(length.group(1)):
                break
        return received


def _get(path: str, extra: bytes = b"") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode() + extra + b"\r\n")


OVER = LIMIT + 16 * 1024
HEADS = {
    "one long header": _get("/v1/models/pets", b"X-Big: " + b"a" * OVER + b"\r\n"),
    "many short headers": _get("/v1/models/pets", b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 24) for i in range(OVER // 30))),
    "a long query": _get("/v1/models/pets?" + "q" * OVER),
    "a long path": _get("/v1/models/" + "p" * OVER),
    "a head that never ends": _get("/v1/models/pets", b"X-Big: " + b"a" * (8 * MIB))[:-2],
}


@pytest.mark.parametrize("head", HEADS.values(), ids=list(HEADS))
def test_a_head_over_the_bound_is_answered_431_and_the_connection_closed(server, head):
    host, port, _ = server
    answer = _exchange((host, port), head)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert b"over the limit of 65,536 bytes" in answer and b"send fewer or shorter" in answer
    # the server goes on answering
    assert _exchange((host, port), _get("/v1/models/pets")).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_head_under_the_bound_is_answered(server, method):
    host, port, _ = server
    big = b"X-Big: " + b"a" * (LIMIT - 2048) + b"\r\n"
    if method == "GET":
        answer = _exchange((host, port), _get("/v1/models/pets", big))
    else:
        import base64
        import json

        body = json.dumps({"signature_name": "serving_images", "instances": [
            {"b64": base64.b64encode(sm.png()).decode()}]}).encode()
        head = (b"POST /v1/models/pets:predict HTTP/1.1\r\nHost: localhost\r\n" + big
                + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        answer = _exchange((host, port), head, body)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return int(re.search(r"VmRSS:\s+(\d+) kB", handle.read()).group(1)) * 1024


def _flood(address, size: int) -> None:
    """One connection whose header goes on for `size` bytes (sent as fast as the
    server takes it), then whatever the server answers."""
    with socket.create_connection(address, timeout=60) as sock:
        sock.sendall(b"GET /v1/models/pets HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        chunk = b"a" * MIB
        try:
            for _ in range(size // MIB):
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
            sock.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_endless_headers_leave_the_servers_memory_where_it_was(server):
    host, port, pid = server
    _flood((host, port), 8 * MIB)                     # warm: the first refusal's costs
    before = _rss(pid)
    started = time.monotonic()
    threads = [threading.Thread(target=_flood, args=((host, port), 200 * MIB))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.monotonic() - started
    grown = _rss(pid) - before
    assert grown < 40 * MIB, f"{grown / MIB:.0f} MiB more after 3 x 200 MiB of header"
    assert elapsed < 30, elapsed
    assert _exchange((host, port), _get("/v1/models/pets")).startswith(b"HTTP/1.1 200 ")
    metrics = _exchange((host, port), _get("/metrics"))
    refused = re.search(rb'imgpipe_serve_errors_total\{model="\(unknown\)",'
                        rb'reason="headers_too_large"\} ([0-9.]+)', metrics)
    assert refused and float(refused.group(1)) >= 4, metrics[-2000:]
