"""Runs whose windows overlap share each span's ingest (components/data/ingest_window.py):
one lock per span (a file lock locally, a claim object on gs://), so the second run waits
and reuses what the first committed; a commit that loses the rename race to another
writer of the same span (same content, same config) verifies theirs and reuses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import yaml

from components import artifacts
from components.data import ingest_window
from components.io import fileio, locks
from tests import ROOT
from tests.fixtures import make_class_folders, race

CLASSES = ("cat", "dog", "fox")


# --- the commit race -----------------------------------------------------------------------


def _written(uri: str, marker: str) -> artifacts.ArtifactWriter:
    writer = artifacts.ArtifactWriter(uri, artifacts.Examples, {"step": "ingest"})
    fileio.write_text(writer.file("train", "part.txt"), marker)
    writer.properties = {"marker": marker}
    return writer


def test_a_commit_that_loses_the_rename_race_reuses_the_winners(tmp_path):
    uri = str(tmp_path / "span" / "examples")
    mine, theirs = _written(uri, "mine"), _written(uri, "theirs")
    theirs.commit()                       # the other run renamed its copy in first
    ingest_window.commit_or_reuse(mine)   # today: OSError [Errno 39] Directory not empty
    assert artifacts.read(uri, artifacts.Examples).properties == {"marker": "theirs"}
    assert sorted(os.listdir(tmp_path / "span")) == ["examples"]     # our copy is gone


def test_a_lost_race_to_something_that_does_not_verify_still_fails(tmp_path):
    uri = str(tmp_path / "span" / "examples")
    mine = _written(uri, "mine")
    os.makedirs(uri)
    (tmp_path / "span" / "examples" / "junk").write_text("not an artifact")
    with pytest.raises(OSError):
        ingest_window.commit_or_reuse(mine)
    assert sorted(os.listdir(tmp_path / "span")) == ["examples"]


# --- the lock ------------------------------------------------------------------------------


def _hold(lock_path, log, seconds, barrier, queue):
    barrier.wait()
    with locks.lock(lock_path, waiting=lambda: None):
        start = time.time()
        time.sleep(seconds)
        end = time.time()
    queue.put((start, end))


def _disjoint(intervals) -> bool:
    intervals = sorted(intervals)
    return all(a[1] <= b[0] for a, b in zip(intervals, intervals[1:]))


def test_the_local_lock_lets_one_process_in_at_a_time(tmp_path):
    lock = str(tmp_path / "span" / ".lock")
    codes, held = race(_hold, [(lock, None, 0.3)] * 3, timeout=30)
    assert codes == [0, 0, 0] and _disjoint(held)


def test_the_bucket_lock_lets_one_holder_in_at_a_time_and_takes_over_a_dead_ones(on_fake):
    lock = f"{on_fake}/shared/ingest/k/span-1/.lock"
    held, waited = [], []

    def hold():
        with locks.lock(lock, waiting=lambda: waited.append(1), stale=30, poll=0.05):
            start = time.time()
            time.sleep(0.3)
            held.append((start, time.time()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(held) == 3 and _disjoint(held) and len(waited) >= 1
    # a holder that died left its claim: unchanged for `stale` seconds, it is taken over
    fileio.write_bytes(lock, json.dumps({"process": "dead", "time": "then"}).encode())
    started = time.monotonic()
    with locks.lock(lock, stale=0.5, poll=0.05):
        assert 0.5 <= time.monotonic() - started < 10
    data, _ = fileio.read_versioned(lock)
    assert data == b""                     # released


# --- two real runs whose windows overlap ----------------------------------------------------


def _drop(root, day: str, per_class: int = 8) -> None:
    first = int(day.replace("-", "")) % 100000 * 40
    for label in CLASSES:
        make_class_folders(str(root / day), classes=(label,), per_class=per_class, first=first)
        first += 1000


def test_two_runs_with_overlapping_windows_share_each_span(tmp_path):
    """The reproduction: `imgpipe run spans.yaml --until ingest` and the same with
    `--set 'data.spans={rolling: 2}'` at once on a fresh runs dir: one exited 1 with
    `OSError: [Errno 39] Directory not empty: .../examples.staging-... -> .../examples`."""
    for day in ("2026-11-28", "2026-11-29", "2026-11-30"):
        _drop(tmp_path / "drops", day)
    config = tmp_path / "spans.yaml"
    config.write_text(yaml.safe_dump({
        "name": "daily",
        "data": {"source": str(tmp_path / "drops") + "/{YYYY}-{MM}-{DD}/",
                 "image_size": [12, 12], "channels": 1, "spans": {"rolling": 3}}}))
    runs = str(tmp_path / "runs")
    base = [sys.executable, "-m", "pipeline.cli", "run", str(config), "--until", "ingest",
            "--runs-dir", runs]
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, text=True)
             for argv in (base, base + ["--set", "data.spans={rolling: 2}"])]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=420)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    ingested = {}
    for out in outputs:
        line = next(line for line in out.splitlines() if "span(s) " in line and "ingested" in line)
        for label in ("2026-11-28", "2026-11-29", "2026-11-30"):
            if label in line.split("reused")[0].split("ingested", 1)[1]:
                ingested[label] = ingested.get(label, 0) + 1
    # every span ingested once, by one run or the other; the other reused it
    assert ingested == {"2026-11-28": 1, "2026-11-29": 1, "2026-11-30": 1}, outputs
    store = [entry for key in os.listdir(os.path.join(runs, "shared", "ingest"))
             for entry in os.listdir(os.path.join(runs, "shared", "ingest", key))]
    assert len(store) == 3 and not any("staging" in entry for entry in store), store
