"""A soak test of `imgpipe serve` (issue 34's done-when): a real server on loopback
under mixed good, malformed and oversized traffic from a few client threads, while the
production alias moves (`imgpipe models promote`) and the registry's request log
becomes unwritable (its day folder replaced by a file, which also holds for root,
where a chmod would not), then SIGTERM. Afterwards: no 5xx for a client's mistake,
every request either in the request log or counted as lost (metrics and the exit
line), and the server's memory flat.

Bounded in count and time (clients stop when the chaos is done, at most a few
thousand requests); each wait polls with a generous timeout instead of assuming a
quiet machine."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter

import httpx
import pytest

from pipeline.serve import request_log
from tests import ROOT
from tests import serve_models as sm

# slow; TensorFlow runs here outside a step (which has a private temporary folder)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("private_tmp_module")]

IMAGE = base64.b64encode(sm.png()).decode()
CLIENTS = 4
MAX_PER_CLIENT = 1500
TIMEOUT = 60.0               # any one wait (generous: the machine may be busy)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit gray pixels (no real pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                              8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _images(count: int = 1, data: str = IMAGE, **extra) -> bytes:
    return json.dumps(dict({"signature_name": "serving_images",
                            "instances": [{"b64": data}] * count}, **extra)).encode()


PREDICT = "/v1/models/pets:predict"
# (kind, path, body): good answers 200, a client's mistake 400, an oversized one 413
TRAFFIC = [
    ("good", PREDICT, _images(1)),
    ("malformed", PREDICT, b"{not json"),
    ("good", "/v1/models/pets/labels/staging:predict", _images(3)),
    ("oversized", PREDICT, _images(9)),                                # --max-instances 8
    ("malformed", PREDICT, b"[1, 2]"),
    ("good", "/v1/models/pets/versions/2:predict", _images(2)),
    ("malformed", PREDICT, json.dumps({"instances": []}).encode()),
    ("oversized", PREDICT, _images(1, "A" * 300_000)),                 # --max-body-mb 0.25
    ("malformed", PREDICT, _images(1, "bad!")),                         # not base64
    ("good", PREDICT, _images(2, labels=["dog", None])),               # always sampled
    ("malformed", PREDICT, _images(1, _b64(b"not an image at all"))),
    ("oversized", PREDICT, _images(1, _b64(_png_header(10_000, 10_000)))),  # pixels
    ("malformed", PREDICT, _images(1, _b64(sm.png(90)[:40] + bytes(60)))),  # damaged PNG
    ("malformed", PREDICT, _images(1, signature_name="nope")),
    ("malformed", PREDICT, _images(1, labels=[3])),
    ("malformed", PREDICT, b'{"instances":' + b"[" * 1100 + b"]" * 1100 + b"}"),  # deep
]
EXPECTED = {"good": {200}, "malformed": {400}, "oversized": {413}}


def _metrics(url: str) -> dict[str, float]:
    """The server's Prometheus samples: 'name{labels}' -> value."""
    text = httpx.get(url + "/metrics", timeout=TIMEOUT).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _logged(folder: str) -> list[dict]:
    """Every entry in every batch file under `folder` (also folders moved aside)."""
    out = []
    for where, _, files in os.walk(folder):
        for name in files:
            if re.fullmatch(r"\d{6}-.+\.jsonl", name):       # a batch (not the ledger)
                with open(os.path.join(where, name)) as handle:
                    out.extend(json.loads(line) for line in handle if line.strip())
    return out


def _until(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g}s for {what}")
        time.sleep(0.1)


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def test_serve_soaks_mixed_traffic_alias_moves_and_an_unwritable_request_log(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0, 1))
    reg.set_alias("pets:1", "production")
    reg.set_alias("pets:2", "staging")
    model_folder = os.path.join(reg.root, "pets")
    requests = os.path.join(model_folder, request_log.REQUESTS)
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--registry", reg.root, "--port", "0",
         "--poll", "0.5", "--log-sample", "0.3", "--max-body-mb", "0.25",
         "--max-instances", "8", "--request-log-seconds", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    err: list[str] = []
    try:
        for line in process.stdout:
            out.append(line)
            if line.startswith("listening on"):
                break
        else:
            pytest.fail(f"serve never listened: {''.join(out)} {process.stderr.read()}")
        url = re.search(r"http://[0-9.]+:\d+", out[-1]).group(0)
        readers = [threading.Thread(target=lambda s=s, into=into: into.extend(s), daemon=True)
                   for s, into in ((process.stdout, out), (process.stderr, err))]
        for reader in readers:
            reader.start()

        # memory, sampled throughout
        rss: list[tuple[float, float]] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.wait(0.2):
                value = _rss_mb(process.pid)
                if value is not None:
                    rss.append((time.monotonic(), value))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        # the clients: each cycles through every kind of request at least once
        answers: list[tuple[str, str, int | str]] = []     # (kind, id, status)
        stop = threading.Event()

        def client(number: int) -> None:
            with httpx.Client(base_url=url, timeout=TIMEOUT) as session:
                for i in range(MAX_PER_CLIENT):
                    if stop.is_set() and i >= len(TRAFFIC):
                        return
                    kind, path, body = TRAFFIC[(i + number * 5) % len(TRAFFIC)]
                    request_id = f"c{number}-{i}"
                    try:
                        status = session.post(path, content=body, headers={
                            "X-Request-Id": request_id,
                            "Content-Type": "application/json"}).status_code
                    except httpx.TransportError as exc:
                        status = f"transport: {type(exc).__name__}"
                    answers.append((kind, request_id, status))

        clients = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in clients:
            thread.start()

        def send(request_id: str) -> None:
            with httpx.Client(base_url=url, timeout=TIMEOUT) as session:
                status = session.post(PREDICT, content=_images(1), headers={
                    "X-Request-Id": request_id, "Content-Type": "application/json"}
                ).status_code
            answers.append(("good", request_id, status))

        def promote(ref: str) -> None:
            done = subprocess.run(
                [sys.executable, "-m", "pipeline.cli", "models", "promote", ref, "--to",
                 "production", "--registry", reg.root, "--reason", "soak"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr

        def served_by_production() -> int:
            return int(httpx.get(url + "/v1/models/pets/labels/production", timeout=TIMEOUT
                                 ).json()["model_version_status"][0]["version"])

        def break_log(aside: str) -> str:
            """The request log's day folder replaced by a file: every write fails. (A
            folder the server makes meanwhile is moved aside too: its files are read.)"""
            day = os.path.join(requests, dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"))
            os.makedirs(requests, exist_ok=True)
            for attempt in range(100):
                if os.path.isdir(day):
                    os.rename(day, os.path.join(model_folder, f"{aside}-{attempt}"))
                try:
                    fd = os.open(day, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                except (FileExistsError, IsADirectoryError):
                    continue
                os.write(fd, b"a file where the day's folder goes\n")
                os.close(fd)
                return day
            pytest.fail("could not replace the request log's day folder")

        def failures() -> float:
            return _metrics(url).get(
                'imgpipe_serve_request_log_write_failures_total{model="pets"}', 0.0)

        _until(lambda: len(answers) >= 50, "the first answers")
        promote("pets:2")
        _until(lambda: served_by_production() == 2, "production to serve version 2")

        # outage 1, with the alias moving back meanwhile; then the store recovers
        day = break_log("aside-1")
        before = failures()
        for k in range(3):
            send(f"outage-{k}")
        _until(lambda: failures() > before, "a failed write to be counted")
        promote("pets:1")
        _until(lambda: served_by_production() == 1, "production to serve version 1 again")
        os.remove(day)
        _until(lambda: {f"outage-{k}" for k in range(3)} <= {
            e.get("id") for e in _logged(model_folder)},
            "the entries kept during the outage to be written once it ended")

        # outage 2, lasting until the stop: what is still in memory then is lost, counted
        day = break_log("aside-2")
        before = failures()
        for k in range(3):
            send(f"at-exit-{k}")
        _until(lambda: failures() > before, "a failed write to be counted")
        stop.set()
        for thread in clients:
            thread.join(TIMEOUT * 2)
        assert not any(thread.is_alive() for thread in clients)
        metrics = _metrics(url)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        for reader in readers:
            reader.join(10)
        stop_sampling.set()
        sampler.join(5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stdout, stderr = "".join(out), "".join(err)

    # no 5xx, and each request answered as its kind says
    statuses = Counter((kind, status) for kind, _, status in answers)
    wrong = {key: n for key, n in statuses.items() if key[1] not in EXPECTED[key[0]]}
    assert not wrong, (wrong, stderr[-3000:])
    assert {kind for kind, _, _ in answers} == set(EXPECTED)
    assert metrics.get('imgpipe_serve_logged_requests_total{model="pets"}') is not None
    assert not [k for k in metrics if k.startswith("imgpipe_serve_requests_total")
                and re.search(r'code="5\d\d"', k)]

    # the outage was said while serving, and the loss at the stop: one line, exit 2
    assert "request log" in stdout and "cannot write" in stdout, stdout
    assert process.returncode == 2, (stdout, stderr)
    assert "stopped: requests in flight were answered" in stdout
    found = re.search(r"the request log lost ([\d,]+) of ([\d,]+) entries", stderr)
    assert found, stderr
    lost, recorded = (int(found[i].replace(",", "")) for i in (1, 2))

    # every request is in the log or counted as lost; nothing twice
    sent = {request_id for _, request_id, _ in answers}
    entries = [e for e in _logged(model_folder)]
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)) and set(ids) <= sent
    assert recorded == len(sent) == len(answers)
    assert len(ids) + lost == len(sent), (len(ids), lost, len(sent))
    assert lost >= 3 and not {f"at-exit-{k}" for k in range(3)} & set(ids)
    # what the metric called written was written (it counts only written entries)
    assert metrics['imgpipe_serve_logged_requests_total{model="pets"}'] <= len(ids)
    assert metrics['imgpipe_serve_request_log_write_failures_total{model="pets"}'] >= 2
    by_id = {e["id"]: e for e in entries}
    assert {by_id[f"outage-{k}"]["status"] for k in range(3)} == {200}
    # the reader skips the file named like a day folder (says so) instead of failing
    kept = request_log.read(reg.root, "pets")
    assert any(os.path.basename(day) in line for line in kept.skipped), kept.skipped

    # memory: flat from warm-up to the end (generous: allocator noise, buffers)
    if rss:
        first = rss[0][0]
        warm = [mb for at, mb in rss if first + 3 <= at <= first + 6] or [rss[0][1]]
        settled = min(warm)
        peak = max(mb for _, mb in rss)
        assert peak - settled < 150, (settled, peak, len(answers))
