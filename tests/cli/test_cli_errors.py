"""Every mistake on the command line, and every storage failure, is one line on stderr
and exit 2: bad arguments, a disk that fills mid-step (the run on record as failed), a
runs folder that cannot be written, and storage errors found inside wrapped ones."""

from __future__ import annotations

import json

import pytest

from pipeline import cli
from tests import ROOT
from tests.fixtures import one_line_error


@pytest.mark.parametrize("args,expected", [
    (["predict", "m@production", "x.png", "--batch-size", "0"], "must be 1 or more"),
    (["predict", "m@production", "x.png", "--top-k", "0"], "must be 1 or more"),
    (["summary", "--model", "transfer", "--input-shape", "8,8,3", "--classes", "3"],
     "at least 32x32"),
    (["summary", "--model", "deep_cnn", "--input-shape", "2,2,1", "--classes", "3"],
     "at least 4x4"),
    (["summary", "--model", "dense", "--input-shape", "100000,100000,3", "--classes", "3"],
     "weights in its first dense layer"),
    (["datasets", "export", "digits", "FILE"], "is a file"),
    (["predict", "m:1", "x.png", "-o", "DIR"], "is a folder"),
    (["submit", "deploy/example.yaml", "--kfp-host", "http://127.0.0.1:9", "--set",
      "kfp.backend=kubeflow", "--pipeline-root", "gs://b/root"], "failed"),
    (["submit", "deploy/example.yaml", "--vertex", "--project", "p", "--region", "us-central1",
      "--pipeline-root", "gs://b/r"], "credentials"),
])
def test_command_line_mistakes(tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))     # no credentials here
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "DIR").mkdir()
    args = [str(tmp_path / a) if a in ("FILE", "DIR") else a for a in args]
    assert expected in one_line_error(capsys, args)


def test_a_full_disk_mid_step_is_one_line_and_the_run_is_on_record(tmp_path, capsys,
                                                                    monkeypatch):
    """The disk fills while Beam writes a shard: Beam wraps the OSError into its own
    error; the user still gets one line naming the file, exit 2, and a failed run."""
    import errno

    from components.io import tfrecord

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(tfrecord, "write_gzip", full)
    (tmp_path / "c.yaml").write_text("name: t\ndata: {source: builtin:digits}\n")
    err = one_line_error(capsys, ["run", str(tmp_path / "c.yaml"), "--until", "ingest",
                                  "--runs-dir", str(tmp_path / "runs")])
    assert "no space left on the device writing" in err and ".tfrecord.gz" in err
    assert cli.main(["runs", "list", "--runs-dir", str(tmp_path / "runs"), "--json"]) == 0
    import json

    [run] = json.loads(capsys.readouterr().out)
    assert run["status"] == "failed"


def test_a_runs_folder_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    """A run needs to write its runs folder (one line, exit 2, before any step); `runs
    list` only reads, so it still works on a folder that has become read-only."""
    import sqlite3

    from pipeline import metadata

    (tmp_path / "c.yaml").write_text("name: t\ndata: {source: builtin:digits}\n")
    (tmp_path / "afile").write_text("x")
    err = one_line_error(capsys, ["run", str(tmp_path / "c.yaml"), "--until", "ingest",
                                  "--runs-dir", str(tmp_path / "afile" / "runs")])
    assert "cannot write the metadata store" in err
    runs = tmp_path / "runs"
    assert cli.main(["run", str(tmp_path / "c.yaml"), "--until", "ingest", "--runs-dir",
                     str(runs)]) == 0
    capsys.readouterr()
    real_open = metadata.MetadataStore._open

    def read_only_disk(self):
        if not self.read_only:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_open(self)

    monkeypatch.setattr(metadata.MetadataStore, "_open", read_only_disk)
    assert cli.main(["runs", "list", "--runs-dir", str(runs), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    err = one_line_error(capsys, ["run", str(tmp_path / "c.yaml"), "--until", "ingest",
                                  "--runs-dir", str(runs)])
    assert "metadata store" in err and "readonly" in err


def test_storage_errors_are_found_inside_wrapped_errors():
    import errno

    assert cli.storage_error(OSError(errno.EROFS, "Read-only file system", "/ro/x")) == \
        cli.storage_error(RuntimeError("OSError: [Errno 30] Read-only file system: '/ro/x' "
                                       "[while running 'Write']"))
    assert "read-only" in cli.storage_error(OSError(errno.EROFS, "x", "/ro/x"))
    assert cli.storage_error(RuntimeError("[Errno 2] No such file")) is None
    assert cli.storage_error(ValueError("something else")) is None


@pytest.mark.parametrize("disk", ["a small disk", "a file size limit"])
def test_a_full_runs_folder_during_ingest_is_only_the_one_line(tmp_path, disk):
    """A real disk that fills while Beam writes ingest's shards (a tiny tmpfs as the runs
    folder where the tests may mount one; else a file size limit, EFBIG): stderr holds
    the one line naming the file, not Beam's own ERROR log and traceback before it
    (issue 34, item 16)."""
    import os
    import subprocess
    import sys

    from tests.fixtures import size_limited, small_disk

    (tmp_path / "c.yaml").write_text("name: t\ndata: {source: builtin:digits}\n")
    with small_disk(tmp_path / "disk", 160) as mounted:
        if disk == "a small disk" and mounted is None:
            pytest.skip("mounting a tmpfs needs root")
        runs = os.path.join(mounted if disk == "a small disk" else str(tmp_path), "runs")
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "c.yaml"), "--until",
             "ingest", "--runs-dir", runs], cwd=ROOT, capture_output=True, text=True,
            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            preexec_fn=None if disk == "a small disk" else size_limited(100))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("imgpipe: error: ") and ".tfrecord.gz" in err[0]
    assert ("no space left on the device writing " if disk == "a small disk"
            else "ulimit -f) writing ") + runs in err[0]
