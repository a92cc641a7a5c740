"""Faults a user meets: Ctrl-C, SIGTERM and kill -9 during a run, interrupted outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
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


class _Output:
    """A child's stdout and stderr, read by threads as they come: a readline() on the
    pipe itself would block past any deadline while the child is quiet."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self.closed = 0
        self.changed = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((proc.stdout, self.out), (proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, lines):
        for line in stream:
            with self.changed:
                lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.closed += 1
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.out):
                left = deadline - time.monotonic()
                if left <= 0 or self.closed == 2:
                    raise AssertionError(f"{what} never happened:\n" + "".join(self.out)
                                         + "".join(self.err)[-3000:])
                self.changed.wait(left)

    def finish(self, timeout: float) -> tuple[str, str]:
        """(stdout, stderr) once the child has exited."""
        self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(timeout)
        with self.changed:
            return "".join(self.out), "".join(self.err)


EPOCH = re.compile(r"\s+epoch (\d+)/")


def _training_underway(lines) -> bool:
    """Train is running and has finished two epochs: well inside training, past the
    run's start and the first epoch's tracing."""
    return any(int(m.group(1)) >= 2 for m in map(EPOCH.match, lines) if m)


@pytest.mark.slow
def test_signals_and_kills_end_runs_on_record(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    store_path = str(tmp_path / "runs" / "metadata.sqlite")
    outcomes = {}
    for how, signum, code in (("SIGINT", signal.SIGINT, 130), ("SIGTERM", signal.SIGTERM, 143),
                              ("kill", signal.SIGKILL, -9)):
        proc = _start(tmp_path)
        try:
            output = _Output(proc)
            output.wait_for(_training_underway, 180, "training")
            proc.send_signal(signum)
            out, err = output.finish(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
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
    # the folder as it is once its dead owner's last few seconds are past (no waiting)
    lock = tmp / left()[0] / ".lock"
    aged = time.time() - 60
    os.utime(lock if lock.exists() else tmp / left()[0], (aged, aged))
    listing = subprocess.run([sys.executable, "-m", "pipeline.cli", "runs", "list",
                              "--runs-dir", str(tmp_path / "runs")], cwd=ROOT,
                             env=dict(os.environ, TMPDIR=str(tmp)), capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "died" in listing.stdout
    assert left() == []


def test_waiting_on_a_quiet_child_ends_at_its_deadline():
    """The wait for training reads the child's output beside it, so a child that goes
    quiet fails the wait at its deadline instead of blocking the test for ever."""
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time; print('started', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        output = _Output(proc)
        began = time.monotonic()
        with pytest.raises(AssertionError, match="training never happened"):
            output.wait_for(_training_underway, 1.0, "training")
        assert time.monotonic() - began < 10
        assert output.out == ["started\n"]
    finally:
        proc.kill()
        proc.wait()


def test_an_interrupted_prediction_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    """Fault injection mid-write (disk full at sync): out.csv keeps its earlier content
    and no temporary file is left; a non-UTF-8 file name keeps its bytes."""
    import errno

    from components.inference import predict

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
