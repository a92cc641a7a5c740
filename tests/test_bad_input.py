"""Every user mistake is one line on stderr and exit 2, before any expensive step.
One parametrized test per family of input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline import cli
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(capsys, args, code=2):
    assert cli.main(args) == code, capsys.readouterr()
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgpipe: error:") and len(err.splitlines()) == 1, err
    return err


CONFIGS = {
    "name with a trailing newline": ('name: "x\\n"\n', "name"),
    "alias outside the registry": ("push: {promote_to: ../x}\n", "promote_to"),
    "model name outside the registry": ("push: {model_name: ../../evil}\n", "model_name"),
    "empty source": ('data: {source: ""}\n', "source is empty"),
    "image too large": ("data: {image_size: [100000, 100000]}\n", "ingest.max_pixels"),
    "boolean epochs": ("train: {epochs: true}\n", "boolean"),
    "boolean in the image size": ("data: {image_size: [true, 36]}\n", "boolean"),
    "boolean channels": ("data: {channels: true}\n", "boolean"),
    "boolean layer width": ("model: {hidden_units: [true, 64]}\n", "boolean"),
    "model too large for the images": ("data: {image_size: [7000, 7000]}\nmodel: {kind: dense}\n",
                                       "weights in its first dense layer"),
    "images too small for the model": ("data: {image_size: [2, 2]}\nmodel: {kind: deep_cnn}\n",
                                       "at least 4x4"),
    "transfer on grayscale": ("model: {kind: transfer}\n", "3-channel input"),
    "promote to latest": ("push: {promote_to: latest}\n", "'latest' always means"),
    "baseline latest": ("push: {baseline_alias: latest}\n", "'latest' always means"),
    "unknown beam runner": ("beam: {runner: NoSuchRunner}\n", "unknown Beam runner"),
    "YAML alias bomb": ("".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
                                for i in range(1, 9)).replace("*a0", "x"), "100,000 values"),
    "NUL byte": ("data: {source: builtin:digits}\x00\n", "invalid YAML"),
    "old hash key": ("validate: {near_duplicate_bits: 2}\n", "near_duplicate_rms"),
    "moved latency key": ("evaluate: {latency_budget_ms: 10}\n", "infra_validate"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_mistakes(tmp_path, capsys, case):
    text, expected = CONFIGS[case]
    path = tmp_path / "c.yaml"
    path.write_text(("name: t\n" if not text.startswith("name") else "") + text)
    err = one_line_error(capsys, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert expected in err
    assert not (tmp_path / "runs" / "metadata.sqlite").exists()     # no run started


def test_config_file_mistakes(tmp_path, capsys):
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in one_line_error(capsys, ["run", str(tmp_path / "latin1.yaml")])
    (tmp_path / "dest").write_text("a file where the registry should be")
    (tmp_path / "c.yaml").write_text(f"name: t\npush: {{destination: '{tmp_path / 'dest'}'}}\n")
    err = one_line_error(capsys, ["run", str(tmp_path / "c.yaml"), "--runs-dir",
                                  str(tmp_path / "runs")])
    assert "push.destination" in err and "is a file" in err
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=2)
    (tmp_path / "d.yaml").write_text(f"name: t\ndata: {{source: '{tmp_path / 'src'}'}}\n")
    err = one_line_error(capsys, ["run", str(tmp_path / "d.yaml"), "--runs-dir",
                                  str(tmp_path / "src" / "runs")])
    assert "inside data.source" in err


MANIFESTS = {
    "field over 128 KiB": ("m.csv", ("path,label\n" + "a.png," + "x" * 200_000 + "\n").encode(),
                           "field larger than field limit"),
    "not UTF-8": ("m.csv", "path,label\ncaf\xe9.png,a\n".encode("latin-1"), "not UTF-8"),
    "line not an object": ("m.jsonl", b'["a.png", "cat"]\n', "not an object"),
    "path not text": ("m.jsonl", b'{"path": 5, "label": "cat"}\n', "'path' must be text"),
    "label a list": ("m.jsonl", b'{"path": "a.png", "label": ["a", "b"]}\n', "the label must"),
    "label with a tab": ("m.jsonl", b'{"path": "a.png", "label": "a\\tb"}\n', "control character"),
    "JSONL field over 128 KiB": ("m.jsonl", b'{"path": "a.png", "label": "' + b"x" * 200_000
                                 + b'"}\n', "larger than the field limit"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_manifest_mistakes(tmp_path, capsys, case):
    name, data, expected = MANIFESTS[case]
    (tmp_path / "a.png").write_bytes(fixtures.png_bytes(fixtures.class_pattern(0, 1)))
    (tmp_path / name).write_bytes(data)
    (tmp_path / "c.yaml").write_text(f"name: t\ndata: {{source: '{tmp_path / name}'}}\n")
    err = one_line_error(capsys, ["run", str(tmp_path / "c.yaml"), "--until", "ingest",
                                  "--runs-dir", str(tmp_path / "runs")])
    assert expected in err and name in err


def test_legal_but_unusual_names_are_ingested(tmp_path, capsys):
    """Non-UTF-8 file and folder names are legal on Linux; a BOM in a CSV is no header."""
    root = os.fsencode(tmp_path / "src")
    for label in (b"caf\xe9", b"plain"):
        os.makedirs(os.path.join(root, label))
        for i in range(6):
            name = os.path.join(root, label, b"img-\xff%d.png" % i)
            with open(name, "wb") as handle:
                handle.write(fixtures.png_bytes(fixtures.class_pattern(len(label), i)))
    (tmp_path / "c.yaml").write_text(f"name: t\ndata: {{source: '{tmp_path / 'src'}'}}\n")
    assert cli.main(["run", str(tmp_path / "c.yaml"), "--until", "ingest", "--runs-dir",
                     str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "12 examples" in out and "2 classes" in out
    (tmp_path / "a.png").write_bytes(fixtures.png_bytes(fixtures.class_pattern(0, 1)))
    (tmp_path / "b.png").write_bytes(fixtures.png_bytes(fixtures.class_pattern(1, 1)))
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfpath,label\na.png,cat\nb.png,dog\n")
    (tmp_path / "d.yaml").write_text(f"name: u\ndata: {{source: '{tmp_path / 'm.csv'}'}}\n")
    assert cli.main(["run", str(tmp_path / "d.yaml"), "--until", "ingest", "--runs-dir",
                     str(tmp_path / "runs")]) == 0
    assert "2 examples" in capsys.readouterr().out


def test_names_that_are_not_utf8_in_a_manifest_are_ingested_or_quarantined(tmp_path, capsys):
    """`predict -o x.jsonl` writes a file name that is not UTF-8 as JSON's \\udcff: such
    a manifest ingests, its missing files are quarantined under a readable name, and a
    label holding a lone surrogate becomes an escaped class name."""
    import json

    root = os.fsencode(tmp_path)
    rows = []
    for i in range(6):
        for label in ("a", "b"):
            with open(os.path.join(root, b"%s\xff%d.png" % (label.encode(), i)), "wb") as handle:
                handle.write(fixtures.png_bytes(fixtures.class_pattern(ord(label) % 3, i)))
            rows.append({"path": f"{label}\udcff{i}.png", "label": label})
    rows.append({"path": "missing\udcff.png", "label": "a"})
    # an image of its own: the same file under a second label is a label conflict
    with open(os.path.join(root, b"c\xff0.png"), "wb") as handle:
        handle.write(fixtures.png_bytes(fixtures.class_pattern(2, 99)))
    rows.append({"path": "c\udcff0.png", "label": "c\ud800"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.yaml").write_text(f"name: t\ndata: {{source: '{tmp_path / 'm.jsonl'}'}}\n"
                                     "ingest: {max_bad_fraction: 0.2}\n")
    assert cli.main(["run", str(tmp_path / "c.yaml"), "--until", "ingest", "--runs-dir",
                     str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "13 examples" in out and "3 classes" in out and "1 quarantined" in out, out


def test_class_folder_with_a_newline_is_refused(tmp_path, capsys):
    fixtures.make_class_folders(str(tmp_path / "src"), classes=("cat", "do\ng"), per_class=2)
    (tmp_path / "c.yaml").write_text(f"name: t\ndata: {{source: '{tmp_path / 'src'}'}}\n")
    err = one_line_error(capsys, ["run", str(tmp_path / "c.yaml"), "--until", "ingest",
                                  "--runs-dir", str(tmp_path / "runs")])
    assert "control character" in err


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


def test_output_files_are_written_where_asked(tmp_path, capsys):
    target = tmp_path / "missing" / "dir" / "x.json"
    assert cli.main(["config", "schema", "-o", str(target)]) == 0
    assert target.is_file()
    fixtures.write_files(str(tmp_path / "out"), {"keep.txt": b"mine"})
    err = one_line_error(capsys, ["datasets", "export", "digits", str(tmp_path / "out")])
    assert "not empty" in err and (tmp_path / "out" / "keep.txt").read_bytes() == b"mine"


def test_a_closed_pipe_ends_quietly():
    proc = subprocess.run(f"{sys.executable} -m pipeline.cli config schema | head -1",
                          shell=True, cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "{" and proc.stderr == ""


def test_predict_warns_when_inputs_look_nothing_like_the_training_images(tmp_path):
    import numpy as np
    from PIL import Image

    from components.inference import predict

    photo, glyph = str(tmp_path / "photo.jpg"), str(tmp_path / "glyph.png")
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(photo)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(glyph)
    warning = predict.shape_warning([photo, glyph], [8, 8, 1])
    assert warning.startswith("1 of 2 images checked (e.g. 640x480 RGB) differ from the "
                              "model's 8x8 grayscale input")
    assert predict.shape_warning([glyph], [8, 8, 1]) is None       # 2x: fine
    assert predict.shape_warning([glyph], None) is None
