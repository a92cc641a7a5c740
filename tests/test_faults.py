"""Faults a user meets: Ctrl-C, SIGTERM and kill -9 during a run, interrupted outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.metadata import MetadataStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """name: sig
data: {source: 'builtin:digits', image_size: [8, 8]}
model: {kind: logistic}
train: {epochs: 400, batch_size: 8}
"""


def _start(tmp_path):
    # A TMPDIR of this test's own: imgpipe processes of tests running beside it would
    # otherwise clean up the killed process's folder before this test looks for it.
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path / "tmp"))
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run",
                             str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_training(proc, timeout=180):
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("train") and "running" in line:
            time.sleep(3)       # well inside training
            return lines
    raise AssertionError("training never started:\n" + "".join(lines))


@pytest.mark.slow
def test_signals_and_kills_end_runs_on_record(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    store_path = str(tmp_path / "runs" / "metadata.sqlite")
    outcomes = {}
    for how, signum, code in (("SIGINT", signal.SIGINT, 130), ("SIGTERM", signal.SIGTERM, 143),
                              ("kill", signal.SIGKILL, -9)):
        proc = _start(tmp_path)
        _wait_for_training(proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == code, (how, err[-2000:])
        if how != "kill":
            assert "Traceback" not in err and "Traceback" not in out
            assert err.strip().splitlines()[-1].startswith(f"imgpipe: interrupted ({how})")
        run = MetadataStore(store_path).list_runs()[0]
        outcomes[how] = (run["status"], run["error"])
    assert outcomes["SIGINT"] == ("failed", "interrupted (SIGINT)")
    assert outcomes["SIGTERM"] == ("failed", "interrupted (SIGTERM)")
    assert outcomes["kill"][0] == "died"
    # The killed process could not remove its private temporary folder; the next imgpipe
    # process does (once the folder is a few seconds old: younger ones may be starting).
    tmp = tmp_path / "tmp"

    def left():
        return [e for e in os.listdir(tmp) if e.startswith("imgpipe-tmp-")]

    assert len(left()) == 1, left()
    time.sleep(6)
    listing = subprocess.run([sys.executable, "-m", "pipeline.cli", "runs", "list",
                              "--runs-dir", str(tmp_path / "runs")], cwd=ROOT,
                             env=dict(os.environ, TMPDIR=str(tmp)), capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "died" in listing.stdout
    assert left() == []


def test_an_interrupted_prediction_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    """Fault injection mid-write (disk full at sync): out.csv keeps its earlier content
    and no temporary file is left; a non-UTF-8 file name keeps its bytes."""
    import errno

    from components import predict

    out = tmp_path / "out.csv"
    out.write_text("earlier predictions\n")
    odd = os.fsdecode(b"/data/caf\xe9.png")
    rows = [{"path": odd, "class": "cat", "probability": 0.9, "top_k": [["cat", 0.9]]}]

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        predict.write_rows(rows, str(out))
    assert out.read_text() == "earlier predictions\n"
    assert os.listdir(tmp_path) == ["out.csv"]
    monkeypatch.undo()
    predict.write_rows(rows, str(out))
    assert b"/data/caf\xe9.png,cat,0.900000" in out.read_bytes()
    predict.write_rows(rows, str(tmp_path / "out.jsonl"))
    assert json.loads((tmp_path / "out.jsonl").read_text())["path"] == odd
