"""`imgpipe serve` against clients that stall: a request whose headers or body stop
arriving is cut off after the read timeout (never held forever), and SIGTERM with a
stalled upload stops well inside Kubernetes' 30 s grace, with the request log flushed
and no traceback. Against a real server (uvicorn in a thread, or the `imgpipe serve`
process) on loopback, with raw sockets for the stalling clients."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from pipeline import serve
from pipeline.serve import request_log
from tests import ROOT
from tests import serve_models as sm

IMAGE = base64.b64encode(sm.png()).decode()
BODY = {"signature_name": "serving_images", "instances": [{"b64": IMAGE}]}
STALLED_BODY = (b"POST /v1/models/pets:predict HTTP/1.1\r\nHost: imgpipe\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                b'{"signature_name": "serving_images", "instances": [')


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp_module")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    reg = sm.registry_with(str(work / "serving"), str(work), favourites=(0,))
    reg.set_alias("pets:1", "production")
    return reg


def _connect(url: str) -> socket.socket:
    host, port = re.fullmatch(r"http://\[?([^\]]+?)\]?:(\d+)", url).groups()
    return socket.create_connection((host, int(port)), timeout=10)


def _until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends within `seconds`, and whether it closed the connection."""
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


# --- item 9: stalled headers and bodies ------------------------------------------------


@pytest.mark.parametrize("stall", ["headers dripped", "body stalled"])
def test_a_stalled_request_is_cut_off_after_the_read_timeout(registry, stall):
    limits = serve.Limits(read_timeout=1.0)
    with serve.Running(serve.Options(registry.root, poll=3600, limits=limits,
                                     request_log=False)) as url:
        sock = _connect(url)
        started = time.monotonic()
        closed, answer = False, b""
        if stall == "headers dripped":
            # a header line every 0.3 s: the headers never end (slowloris)
            sock.sendall(b"POST /v1/models/pets:predict HTTP/1.1\r\nHost: imgpipe\r\n")
            for n in range(30):
                try:
                    sock.sendall(b"X-Drip-%d: 1\r\n" % n)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                answer, closed = _until_closed(sock, 0.3)
                if closed:
                    break
        else:
            sock.sendall(STALLED_BODY)
            answer, closed = _until_closed(sock, 9)
        elapsed = time.monotonic() - started
        sock.close()
        assert closed, f"the server still holds a {stall} connection after {elapsed:.1f}s"
        assert elapsed < 5, elapsed
        if stall == "body stalled":
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), answer
            assert b"application/json" in head and b"close" in head.lower(), head
            error = json.loads(body)["error"]
            assert "stalled" in error and "--read-timeout" in error, error
        with httpx.Client(base_url=url, timeout=60) as client:   # still serving
            assert client.post("/v1/models/pets:predict", json=BODY).status_code == 200


def _start(args: list[str]) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", *args], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    return process, []


def test_sigterm_with_a_stalled_upload_stops_well_inside_kubernetes_grace(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0,))
    process, lines = _start(["--registry", reg.root, "--port", "0", "--poll", "3600"])
    for line in process.stdout:
        lines.append(line)
        if line.startswith("listening on"):
            break
    else:
        pytest.fail(f"serve never listened: {''.join(lines)} {process.stderr.read()}")
    url = re.search(r"http://[0-9.]+:\d+", lines[-1]).group(0)
    stalled = _connect(url)
    stalled.sendall(STALLED_BODY)              # then nothing more: a stalled upload
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/models/pets:predict", json=BODY).status_code == 200
    time.sleep(0.5)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    answer, _ = _until_closed(stalled, 5)
    stalled.close()
    assert process.returncode == 0, err
    assert elapsed < 10, f"{elapsed:.1f}s to stop (Kubernetes' default grace: 30 s)"
    assert "Traceback" not in err and "CancelledError" not in err, err
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"application/json" in head, answer
    assert "stopping" in json.loads(body)["error"]
    assert "request log flushed" in out
    assert sorted(e["status"] for e in request_log.read(reg.root, "pets")) == [200, 503]


