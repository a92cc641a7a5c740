"""The request log (pipeline/serve/request_log.py): batches written whole under
REGISTRY/NAME/requests/DAY/, read back by time window, a torn line skipped and counted,
failures counted and never raised, memory bounded, and images described exactly as
ingest describes them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

from components.data import imaging, ingest_checks
from pipeline.serve import request_log
from pipeline.serve.request_log import RequestLog
from tests import fixtures

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 30, 23, 59, 58, tzinfo=UTC)


def _at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _entry(i: int, **extra) -> dict:
    return request_log.make_entry(model="m", version=1, label="production", status=200,
                                  latency_ms=5.0 + i, instances=1, id=f"r{i}", time=_at(i),
                                  **extra)


def _files(root) -> list[str]:
    base = os.path.join(root, "m", request_log.REQUESTS)
    return sorted(os.path.relpath(os.path.join(d, f), base)
                  for d, _, files in os.walk(base) for f in files)


def test_entries_are_written_in_whole_batches_per_day_and_read_back_by_window(tmp_path):
    root = str(tmp_path / "serving")
    log = RequestLog(root, flush_seconds=3600)         # written at close only
    for i in range(5):                       # 2 before midnight, 3 after
        log.record("m", _entry(i))
    log.record("other", {"id": "x", "status": 200})      # time and model filled in
    log.close()
    assert log.written == 6 and log.failures == 0 and log.pending == 0
    files = _files(root)
    # one file per day (a batch never spans two), named by its earliest entry's time
    assert [os.path.dirname(f) for f in files] == ["2026-11-30", "2026-12-01"]
    assert os.path.basename(files[0]).startswith("235958-")
    assert os.path.basename(files[1]).startswith("000000-")
    assert re.fullmatch(rf"235958-[A-Za-z0-9.-]+-{os.getpid()}-\d+\.jsonl",
                        os.path.basename(files[0]))
    everything = request_log.read(root, "m")
    assert [e["id"] for e in everything] == [f"r{i}" for i in range(5)]
    assert everything[0] == _entry(0) and everything.damaged == 0 and everything.files == 2
    # the window: days and files outside it are not even opened
    window = request_log.read(root, "m", since=T0 + dt.timedelta(seconds=2),
                              until=T0 + dt.timedelta(seconds=3))
    assert [e["id"] for e in window] == ["r2", "r3"] and window.files == 1
    assert request_log.read(root, "m", until=T0 - dt.timedelta(seconds=1)) == []
    other = request_log.read(root, "other")
    assert other[0]["model"] == "other" and request_log.parse_time(other[0]["time"])
    assert request_log.read(root, "nothing-here") == []


def test_a_buffer_reaching_max_lines_is_written_by_the_thread(tmp_path):
    root = str(tmp_path / "serving")
    log = RequestLog(root, flush_seconds=3600, max_lines=4)
    try:
        for i in range(4):
            log.record("m", dict(_entry(i), time=_at(10 + i)))
        # the background thread writes them: no flush_seconds (an hour) has passed
        assert log._wait_written(4, timeout=60)
        [only] = _files(root)
        assert len(open(os.path.join(root, "m", "requests", only)).read().splitlines()) == 4
        for i in range(4, 7):                # under max_lines: kept until close
            log.record("m", dict(_entry(i), time=_at(10 + i)))
    finally:
        log.close()
    assert len(_files(root)) == 2 and len(request_log.read(root, "m")) == 7


def test_a_file_holds_at_most_max_lines(tmp_path):
    root = str(tmp_path / "serving")
    log = RequestLog(root, flush_seconds=3600, max_lines=3, max_buffered=10)
    for i in range(10):
        log.record("m", dict(_entry(i), time=_at(10 + i)))
    log.close()
    sizes = [len(open(os.path.join(root, "m", "requests", f)).read().splitlines())
             for f in _files(root)]
    assert sum(sizes) == 10 and max(sizes) <= 3 and log.files == len(sizes)


def test_concurrent_records_all_arrive(tmp_path):
    root = str(tmp_path / "serving")
    log = RequestLog(root, flush_seconds=3600, max_lines=50)

    def serve(worker: int) -> None:
        for i in range(200):
            log.record("m", {"id": f"{worker}-{i}", "time": _at(i), "status": 200})

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    ids = [e["id"] for e in request_log.read(root, "m")]
    assert len(ids) == 800 and len(set(ids)) == 800 and log.dropped == 0


def test_a_torn_or_damaged_line_is_skipped_and_counted(tmp_path):
    root = str(tmp_path / "serving")
    with RequestLog(root, flush_seconds=3600) as log:
        for i in range(3):
            log.record("m", dict(_entry(i), time=_at(10 + i)))
    path = os.path.join(root, "m", "requests", _files(root)[0])
    lines = open(path).read().splitlines()
    with open(path, "w") as handle:      # a damaged middle line, a torn last one
        handle.write("\n".join([lines[0], "{not json", lines[1], lines[2][:20]]))
    # and a file of another writer holding a line that is not an entry
    with open(os.path.join(os.path.dirname(path), "000030-h-1-9.jsonl"), "w") as handle:
        handle.write('["a list"]\n' + json.dumps(dict(_entry(5), time=_at(30))) + "\n")
    open(os.path.join(os.path.dirname(path), "000031-h-1-10.jsonl.tmp-1-2"), "w").write("{")
    entries = request_log.read(root, "m")
    assert [e["id"] for e in entries] == ["r0", "r1", "r5"]
    assert entries.damaged == 3


def test_failures_are_counted_never_raised_and_memory_is_bounded(tmp_path):
    root = tmp_path / "serving"
    root.mkdir()
    (root / "m").write_text("a file where the model's folder goes")     # writes fail
    # max_lines above the bound: the thread never wakes, this test flushes itself
    log = RequestLog(str(root), flush_seconds=3600, max_lines=100, max_buffered=5)
    for i in range(8):
        log.record("m", _entry(i))
    assert log.flush() == 0                   # never raises
    assert log.failures >= 1 and "m" in log.last_error
    assert log.dropped == 3 and log.pending == 5          # the oldest dropped
    log.record("bad/../name", _entry(99))                 # refused, not raised
    log.record("m", {"unserializable": object()})         # kept, as its str()
    assert log.dropped == 5 and log.pending == 5          # (the bound dropped r3)
    (root / "m").unlink()                     # the store is back
    log.close()
    assert log.pending == 0
    kept = request_log.read(str(root), "m")
    assert [e.get("id") for e in kept] == ["r4", "r5", "r6", "r7", None]
    assert kept[-1]["unserializable"].startswith("<object object")
    assert log.stats()["written"] == 5


def _jpeg_rotated() -> bytes:
    """A 20x10 (w x h) JPEG with EXIF orientation 6: upright it is 10 wide, 20 high."""
    image = Image.fromarray(fixtures.smooth_image(3, size=20)[:10])
    exif = Image.Exif()
    exif[0x0112] = 6
    return fixtures.jpeg_bytes(image, exif=exif.tobytes())


@pytest.mark.parametrize("make", [
    lambda: fixtures.png_bytes(fixtures.class_pattern(1, 2, size=12)),
    lambda: fixtures.png_bytes(fixtures.class_pattern(2, 3, size=16, channels=3)),
    lambda: fixtures.jpeg_bytes(Image.fromarray(fixtures.smooth_image(5, size=24))),
    lambda: fixtures.png_bytes(np.dstack([fixtures.smooth_image(1, 8, 3),
                                          np.full((8, 8, 1), 128, np.uint8)])),   # RGBA
    _jpeg_rotated,
], ids=["gray-png", "rgb-png", "jpeg", "rgba-png", "exif-rotated-jpeg"])
def test_an_image_is_described_exactly_as_ingest_describes_it(make):
    data = make()
    described = request_log.describe_image(data)
    record = ingest_checks.process_input("x/cat/a.png", data, "cat", "train", None,
                                         max_pixels=10**8, classes=None, eval_fraction=0.1)
    assert described == {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
        "height": record.height, "width": record.width, "channels": record.channels,
        "brightness": round(record.brightness, 6), "contrast": round(record.contrast, 6)}
    # brightness and contrast: Pillow's grayscale levels, their mean and std over 255
    gray = np.asarray(imaging.check_image(data, 10**8).gray, np.float64)
    assert described["brightness"] == pytest.approx(gray.mean() / 255, abs=1e-6)
    assert described["contrast"] == pytest.approx(gray.std() / 255, abs=1e-6)


def test_describe_images_in_one_call_and_an_image_that_does_not_decode():
    good = fixtures.png_bytes(fixtures.class_pattern(0, 1))
    out = request_log.describe_images([good, b"not an image", good])
    assert out[0] == out[2] == request_log.describe_image(good)
    assert set(out[1]) == {"sha256", "bytes", "error"} and "not an image" in out[1]["error"]
    assert out[0]["height"] == 12 and out[0]["channels"] == 1
    with pytest.raises(imaging.BadImage):
        request_log.describe_image(b"")
    with pytest.raises(ValueError):
        request_log.describe_image(fixtures.png_bytes(np.zeros((30, 30), np.uint8)),
                                   max_pixels=100)


def test_a_sampled_canary_entry_round_trips(tmp_path):
    good = fixtures.png_bytes(fixtures.class_pattern(0, 1))
    images = request_log.sampled_images(request_log.describe_images([good, good]),
                                        ["cat", "dog"], [0.9, 0.55])
    entry = request_log.make_entry(
        model="m", version=2, label=None, arm="candidate", status=200, latency_ms=3.5,
        instances=2, id="abc", time=_at(0), images=images,
        shadow={"version": 1, "classes": ["cat", "cat"], "confidences": [0.8, 0.6]})
    with RequestLog(str(tmp_path), flush_seconds=3600) as log:
        log.record("m", entry)
    [back] = request_log.read(str(tmp_path), "m")
    assert back == entry
    assert set(back) == {"time", "id", "model", "version", "label", "arm", "signature",
                         "status", "error", "latency_ms", "instances", "images", "shadow"}
    assert back["images"][1]["class"] == "dog" and back["images"][1]["confidence"] == 0.55
    assert back["signature"] == "serving_images"


def test_on_gs_the_batches_are_objects(on_fake):
    root = f"{on_fake}/registry-{os.getpid()}"
    with RequestLog(root, flush_seconds=3600, max_lines=2) as log:
        for i in range(5):
            log.record("m", _entry(i))
    assert [e["id"] for e in request_log.read(root, "m")] == [f"r{i}" for i in range(5)]
    assert [e["id"] for e in request_log.read(root, "m", since=T0 + dt.timedelta(seconds=3))
            ] == ["r3", "r4"]


# --- failures said and counted, cadence (issue 34) ------------------------------------------


def _samples(registry) -> dict[str, float]:
    from prometheus_client import generate_latest

    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_a_failing_store_is_said_once_counted_per_model_and_kept_until_it_works(tmp_path):
    from prometheus_client import CollectorRegistry

    root = tmp_path / "serving"
    root.mkdir()
    (root / "m").write_text("a file where the model's folder goes")     # writes fail
    (root / "other").mkdir()
    lines: list[str] = []
    log = RequestLog(str(root), flush_seconds=3600, max_lines=100, max_buffered=4,
                     log=lines.append)
    metrics = CollectorRegistry()
    metrics.register(request_log.Collector(log))
    for i in range(6):
        log.record("m", _entry(i))
    log.record("other", _entry(9))
    for _ in range(3):
        log.flush()
    said = [line for line in lines if "cannot write" in line]
    assert len(said) == 1 and os.path.join(str(root), "m", "requests") in said[0], lines
    assert any("dropping the oldest" in line for line in lines), lines
    stats = log.stats()
    assert stats["models"]["m"] == {"written": 0, "files": 0, "failures": 3, "dropped": 2,
                                    "pending": 4}
    assert stats["models"]["other"]["written"] == 1
    assert (stats["lost"], stats["recorded"]) == (6, 7)
    samples = _samples(metrics)
    # written means written: nothing of m's, though 6 entries were handed over
    assert samples['imgpipe_serve_logged_requests_total{model="m"}'] == 0
    assert samples['imgpipe_serve_logged_requests_total{model="other"}'] == 1
    assert samples['imgpipe_serve_request_log_write_failures_total{model="m"}'] == 3
    assert samples['imgpipe_serve_request_log_dropped_total{model="m"}'] == 2
    assert samples['imgpipe_serve_request_log_pending{model="m"}'] == 4
    (root / "m").unlink()                       # the store is back
    (root / "m").mkdir()
    assert log.flush() == 4
    assert any("again" in line for line in lines[len(said):]), lines
    log.close()
    assert log.stats()["lost"] == 2 and [e["id"] for e in request_log.read(str(root), "m")] \
        == ["r2", "r3", "r4", "r5"]


def test_an_entry_waits_for_its_batch_up_to_flush_seconds_and_no_less(tmp_path):
    """At low traffic a batch is written once its oldest entry has waited flush_seconds
    (fewer, larger files); the default is 30 s (two files a minute at 1 request/s)."""
    import time

    with RequestLog(str(tmp_path / "d")) as default:
        assert default.flush_seconds == request_log.FLUSH_SECONDS == 30
    root = str(tmp_path / "serving")
    os.makedirs(os.path.join(root, "m"))      # the model's folder, as in a registry
    log = RequestLog(root, flush_seconds=1.5)
    try:
        time.sleep(1.2)                 # the thread has been waiting since it started
        recorded = time.monotonic()
        log.record("m", dict(_entry(0), time=_at(10)))
        assert log._wait_written(1, timeout=60)
        waited = time.monotonic() - recorded
        assert waited >= 1.4, waited            # not at the thread's own wake-up
        for i in range(1, 6):                   # a trickle: one file for all of them
            log.record("m", dict(_entry(i), time=_at(10 + i)))
        assert log._wait_written(6, timeout=60)
        assert log.files == 2
    finally:
        log.close()


def test_serve_says_a_failing_request_log_and_exits_2_with_what_was_lost(tmp_path):
    """The registry's request log unwritable: the metrics count as logged only what was
    written, the server says why writing failed, and at SIGTERM exits 2 saying how many
    entries were lost (before: the entries counted as logged, "request log flushed",
    exit 0)."""
    import base64
    import signal
    import subprocess
    import sys

    import httpx

    from tests import ROOT
    from tests import serve_models as sm

    from components import runtime

    with runtime.private_tempdir():
        reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0,))
    with open(os.path.join(reg.root, "pets", request_log.REQUESTS), "w") as handle:
        handle.write("a file where the request log's folder goes\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--registry", reg.root, "--port", "0",
         "--poll", "3600"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("listening on"):
                break
        url = re.search(r"http://[0-9.]+:\d+", lines[-1]).group(0)
        body = {"signature_name": "serving_images", "instances": [{"b64": base64.b64encode(
            sm.png()).decode()}]}
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(3):
                assert client.post("/v1/models/pets:predict", json=body).status_code == 200
            # (entries are recorded once each answer is sent)
            deadline = dt.datetime.now() + dt.timedelta(seconds=60)
            pending = 'imgpipe_serve_request_log_pending{model="pets"} 3.0'
            while pending not in (text := client.get("/metrics").text):
                if dt.datetime.now() > deadline:
                    break
        # nothing is written yet (a batch waits up to 30 s): none counted as logged
        assert 'imgpipe_serve_logged_requests_total{model="pets"} 0.0' in text, text
        assert pending in text, text
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    out = "".join(lines) + out
    assert process.returncode == 2, (out, err)
    assert "request log: cannot write" in out and "request log flushed" not in out
    assert "request log: 0 entries written, 3 NOT written" in out
    [said] = [line for line in err.splitlines() if line.startswith("imgpipe: error:")]
    assert said.startswith("imgpipe: error: the request log lost 3 of 3 entries"), err
    assert "Traceback" not in err
    assert "NotADirectoryError" in said or "FileExistsError" in said
