"""Faults a user meets during `imgpipe run`: Ctrl-C, SIGTERM and kill -9 end the run on
record (the killed process's temporary folder cleaned by the next one), and a run
stopped at any point leaves no execution running, with a push that published its
version recorded as done."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipeline import cli
from pipeline.metadata import METADATA_FILE, MetadataStore
from tests import ROOT
from tests.fixtures import cli_config


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


# Runs `imgpipe run` (the real entry point, with its stop handlers) and sends this
# process SIGTERM at a named point: "evaluate" once infra validation runs beside it,
# "push" just after the registry published the version.
_STOP_AT = r"""
import os, signal, sys, time
point, runs = sys.argv[1], sys.argv[2]
from pipeline import invoke
from components.registry.versions import Registry
from pipeline.metadata import MetadataStore

def stop():
    os.kill(os.getpid(), signal.SIGTERM)

if point == "evaluate":
    call = invoke.call
    def patched(node, *args, **kwargs):
        if node.spec.name == "evaluate":
            store = MetadataStore(os.path.join(runs, "metadata.sqlite"), read_only=True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                run = store.list_runs(limit=1)[0]
                if any(e.step == "infra_validate" and e.status == "running"
                       for e in store.executions(run["id"])):
                    break
                time.sleep(0.05)
            stop()
            time.sleep(120)          # the stop interrupts this
        return call(node, *args, **kwargs)
    invoke.call = patched
else:
    push_once = Registry.push_once
    def patched(self, *args, **kwargs):
        result = push_once(self, *args, **kwargs)
        stop()
        return result
    Registry.push_once = patched
sys.argv = ["imgpipe", *sys.argv[3:]]
from pipeline.cli import _entry
_entry()
"""


@pytest.fixture(scope="module")
def warm_runs(tmp_path_factory):
    """A runs folder whose ingest, validate and transform later runs reuse."""
    tmp = tmp_path_factory.mktemp("signals")
    path = cli_config(tmp, model={"kind": "logistic"})
    assert cli.main(["run", path, "--runs-dir", str(tmp / "runs")]) == 0
    return tmp, path


@pytest.mark.parametrize("point", ["evaluate", "push"])
def test_a_stopped_run_leaves_no_execution_running_and_push_records_its_version(
        warm_runs, point):
    import subprocess
    import sys

    from pipeline.local.runner import describe_run

    tmp, path = warm_runs
    runs = str(tmp / "runs")
    proc = subprocess.run(
        [sys.executable, "-c", _STOP_AT, point, runs, "run", path, "--runs-dir", runs,
         "--set", f"train.seed={7 if point == 'evaluate' else 8}",
         "--set", "push.promote_to=staging"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 143, proc.stdout[-2000:] + proc.stderr[-2000:]
    store = MetadataStore(os.path.join(runs, METADATA_FILE), read_only=True)
    run = store.list_runs(limit=1)[0]
    assert run["status"] == "failed" and run["error"] == "interrupted (SIGTERM)"
    steps = describe_run(store, run["id"])["steps"]
    assert all(step["status"] != "running" for step in steps), steps
    by_step = {step["step"]: step for step in steps}
    if point == "evaluate":
        assert by_step["evaluate"]["status"] == "failed"
        assert by_step["infra_validate"]["status"] == "failed"
        assert "interrupted (SIGTERM)" in by_step["infra_validate"]["error"]
        assert "push" not in by_step
        return
    # the version was published, so the run's record says so: push succeeded, with it
    push = by_step["push"]
    assert push["status"] == "succeeded", push
    assert push["summary"]["pushed"] is True and push["summary"]["alias"] == "staging"
    version = push["summary"]["version"]
    from components.registry.versions import Registry

    registry = Registry(str(tmp / "serving"))
    assert registry.get("base", version).ref == f"base:{version}"
    assert registry.aliases("base")["staging"] == version
