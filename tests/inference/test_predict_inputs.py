"""What `imgpipe predict` and the infer step read (components/inference/predict.py's
`list_inputs`, over components/data/sources.py's manifests): a manifest's relative paths
resolve against the manifest's own folder (the current one for a bare file name), and
anything that is not a regular file (a FIFO, a socket, a device, a link to one) gets an
error row without ever being opened: opening a FIFO blocks until a writer comes."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from pipeline import cli
from tests import fixtures
from tests.fixtures import fifo_watch


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp")


def _images(folder) -> None:
    for index, name in enumerate(("3/0003.png", "4/0004.png")):
        path = folder / "digits" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fixtures.png_bytes(fixtures.class_pattern(index, 1)))


# manifest file name as given -> (where it is written, relative to the current folder)
MANIFESTS = {
    "a bare CSV name": ("m.csv", "."),
    "a bare JSONL name": ("m.jsonl", "."),
    "./ CSV": ("./m.csv", "."),
    "in a subfolder": ("sub/m.csv", "sub"),
    "in the parent folder": ("../m.csv", ".."),
}


def _manifest(path, rows: list[str]) -> None:
    if str(path).endswith(".jsonl"):
        path.write_text("".join(json.dumps({"path": row}) + "\n" for row in rows))
    else:
        path.write_text("path\n" + "".join(f"{row}\n" for row in rows))


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_manifests_paths_resolve_against_its_own_folder(tmp_path, monkeypatch, case):
    from components.inference import predict

    name, folder = MANIFESTS[case]
    work = tmp_path / "work"
    work.mkdir()
    (work / "sub").mkdir()
    base = (work / folder).resolve()
    _images(base)
    _manifest(work / name, ["digits/3/0003.png", "digits/4/0004.png"])
    monkeypatch.chdir(work)
    listed = predict.list_inputs([name])
    assert [why for _, why in listed] == [None, None]
    assert [os.path.realpath(path) for path, _ in listed] == \
        [str(base / "digits" / "3" / "0003.png"), str(base / "digits" / "4" / "0004.png")]


def test_ingest_reads_a_manifest_named_by_a_bare_file_name(tmp_path, monkeypatch):
    from components.data import sources
    from components.config.data import DataConfig
    from components.config.ingest import IngestConfig

    _images(tmp_path)
    (tmp_path / "m.csv").write_text("path,label\ndigits/3/0003.png,3\ndigits/4/0004.png,4\n")
    monkeypatch.chdir(tmp_path)
    items = sources.list_files(sources.resolve(DataConfig(source="m.csv")), IngestConfig())
    assert [item.path for item in items] == [str(tmp_path / "digits" / "3" / "0003.png"),
                                            str(tmp_path / "digits" / "4" / "0004.png")]


def test_predict_with_a_manifest_named_by_a_bare_file_name_scores_every_row(
        tmp_path, monkeypatch, capsys):
    """The reproduction: `imgpipe predict MODEL m.csv` answered every row with
    `m.csv/digits/3/0003.png: Not a directory`."""
    from tests.serve_models import tiny_saved_model

    model = tiny_saved_model(str(tmp_path / "model"))
    _images(tmp_path)
    _manifest(tmp_path / "m.csv", ["digits/3/0003.png", "digits/4/0004.png"])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", model, "m.csv", "-o", "out.jsonl"]) == 0, \
        capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["error"] for row in rows] == [None, None]
    assert all(row["class"] in ("cat", "dog", "fox") for row in rows)


# --- files that are not regular files ----------------------------------------------------


def _fifo(folder, name):
    return fifo_watch(str(folder / name))


class _Socket:
    """A listening Unix socket at folder/name (bound from inside the folder: a socket's
    path is limited to 108 bytes)."""

    def __init__(self, folder, name):
        self.folder, self.name = folder, name

    def __enter__(self):
        here = os.getcwd()
        os.chdir(self.folder)
        try:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(self.name)
        finally:
            os.chdir(here)
        return []

    def __exit__(self, *exc):
        self.sock.close()


class _LinkToFifo:
    def __init__(self, folder, name):
        self.folder, self.name = folder, name
        self.watch = fifo_watch(str(folder.parent / f"{folder.name}-fifo"))

    def __enter__(self):
        opened = self.watch.__enter__()
        os.symlink(str(self.folder.parent / f"{self.folder.name}-fifo"),
                   str(self.folder / self.name))
        return opened

    def __exit__(self, *exc):
        return self.watch.__exit__(*exc)


class _LinkToDevice:
    def __init__(self, folder, name):
        os.symlink("/dev/null", str(folder / name))

    def __enter__(self):
        return []

    def __exit__(self, *exc):
        return None


SPECIAL = {"a FIFO": (_fifo, "a FIFO"), "a socket": (_Socket, "a socket"),
           "a link to a FIFO": (_LinkToFifo, "a FIFO"),
           "a link to a device": (_LinkToDevice, "a character device")}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
@pytest.mark.parametrize("named", ["in a folder", "by name", "in a manifest"])
def test_a_file_that_is_not_regular_gets_an_error_row_unopened(tmp_path, kind, named):
    from components.inference import predict

    make, word = SPECIAL[kind]
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(fixtures.png_bytes(fixtures.class_pattern(0, 1)))
    with make(folder, "x.png") as opened:
        if named == "in a folder":
            inputs = [str(folder)]
        elif named == "by name":
            inputs = [str(folder / "good.png"), str(folder / "x.png")]
        else:
            (tmp_path / "m.csv").write_text("path\nimages/good.png\nimages/x.png\n")
            inputs = [str(tmp_path / "m.csv")]
        started = time.monotonic()
        listed = dict(predict.list_inputs(inputs))
        fingerprint = predict.fingerprint(list(listed.items()))
        assert time.monotonic() - started < 5
    assert opened == [], "the special file was opened"
    why = listed[str(folder / "x.png")]
    assert why and why.startswith(f"not a regular file ({word})"), why
    assert listed[str(folder / "good.png")] is None
    assert len(fingerprint) == 64


def test_predict_on_a_folder_holding_a_fifo_answers_with_an_error_row(tmp_path, capsys):
    """The reproduction: `mkfifo DIR/x.png; imgpipe predict MODEL DIR` hung."""
    from tests.serve_models import tiny_saved_model

    model = tiny_saved_model(str(tmp_path / "model"))
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(fixtures.png_bytes(fixtures.class_pattern(0, 1)))
    out = tmp_path / "out.jsonl"
    with fifo_watch(str(folder / "x.png")) as opened:
        code = cli.main(["predict", model, str(folder), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert opened == []
    rows = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows[str(folder / "good.png")]["class"] in ("cat", "dog", "fox")
    assert rows[str(folder / "x.png")]["error"].startswith("not a regular file (a FIFO)")


def test_the_infer_steps_key_skips_a_fifo_in_infer_source(tmp_path):
    from components.config.infer import InferConfig
    from components.steps import infer

    folder = tmp_path / "unlabeled"
    folder.mkdir()
    (folder / "a.png").write_bytes(fixtures.png_bytes(fixtures.class_pattern(0, 1)))
    with fifo_watch(str(folder / "x.png")) as opened:
        listed, _ = infer.source_files(InferConfig(source=str(folder)))
        key = infer.external_inputs(InferConfig(source=str(folder)))
    assert opened == [] and key["infer_source"]
    assert dict(listed)[str(folder / "x.png")].startswith("not a regular file (a FIFO)")
