"""A data source holding something that is not a regular file (a FIFO, a socket, a
device, a link to one): ingest quarantines it with the reason and the source's
fingerprint (the run's cache key) flags it, without either ever opening it (opening a
FIFO blocks until a writer comes; `imgpipe run` hung while fingerprinting)."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import yaml

from components import artifacts
from components.config.data import DataConfig
from components.config.ingest import IngestConfig
from components.data import sources
from components.io import fileio
from pipeline import cli
from tests import fixtures
from tests.fixtures import fifo_watch, make_class_folders, run_ingest


def _special(kind: str, path: str, stack) -> list:
    """Makes `kind` at `path`; returns the list a watched FIFO records its openings in."""
    if kind == "FIFO":
        return stack.enter_context(fifo_watch(path))
    if kind == "socket":
        here = os.getcwd()
        os.chdir(os.path.dirname(path))        # a socket's path is limited to 108 bytes
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(os.path.basename(path))
        finally:
            os.chdir(here)
        stack.callback(sock.close)
        return []
    if kind == "link to a FIFO":
        target = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(path))),
                              "fifo-target")             # outside the data
        opened = stack.enter_context(fifo_watch(target))
        os.symlink(target, path)
        return opened
    os.symlink("/dev/null", path)            # a character device
    return []


KINDS = {"FIFO": "a FIFO", "socket": "a socket", "link to a FIFO": "a FIFO",
         "link to a device": "a character device"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fingerprint_and_ingest_never_open_a_special_file(tmp_path, kind):
    import contextlib

    root = tmp_path / "data"
    make_class_folders(str(root), per_class=10)
    with contextlib.ExitStack() as stack:
        opened = _special(kind, str(root / "cat" / "x.png"), stack)
        source = sources.resolve(DataConfig(source=str(root)))
        started = time.monotonic()
        first = sources.fingerprint(source, IngestConfig())
        assert time.monotonic() - started < 10
        summary, _, _, stats = run_ingest(tmp_path, root, image_size=[12, 12], channels=1)
        assert opened == [], "the special file was opened"
    assert summary["num_quarantined"] == 1
    assert stats["quarantine_reasons"] == {"not a regular file": 1}
    quarantine = tmp_path / "out" / "statistics" / artifacts.ExampleStatistics.QUARANTINE
    entry = json.loads(quarantine.read_text().splitlines()[0])
    assert entry["path"].endswith("/cat/x.png")
    assert entry["reason"].startswith(f"not a regular file ({KINDS[kind]})")
    # the fingerprint flags it: a regular file there instead is another source
    os.remove(root / "cat" / "x.png")
    (root / "cat" / "x.png").write_bytes(b"")
    assert sources.fingerprint(source, IngestConfig()) != first


def test_fileio_refuses_a_fifo_without_opening_it(tmp_path):
    path = str(tmp_path / "x.png")
    with fifo_watch(path) as opened:
        for read in (fileio.read_bytes, fileio.hash_file, lambda p: fileio.read_head(p, 10),
                     lambda p: fileio.open_file(p, "rb")):
            with pytest.raises(fileio.NotRegularFile) as info:
                read(path)
            assert isinstance(info.value, OSError)
            assert str(info.value).startswith(f"{path}: not a regular file (a FIFO)")
        assert fileio.identities([path]) == {path: None}
    assert opened == []
    # a folder is still IsADirectoryError, a missing file FileNotFoundError
    with pytest.raises(IsADirectoryError):
        fileio.read_bytes(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fileio.read_bytes(str(tmp_path / "none.png"))


def test_run_with_a_fifo_in_a_class_folder_ingests_the_rest(tmp_path, capsys):
    """The reproduction: the same FIFO in a class folder hung `imgpipe run` while it
    fingerprinted the source (and, with the data's shape left to auto, while it sampled
    the files' headers)."""
    root = tmp_path / "data"
    make_class_folders(str(root), per_class=12)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "fifo", "data": {"source": str(root)},
                                      "ingest": {"max_bad_fraction": 0.1}}))
    with fifo_watch(str(root / "dog" / "x.png")) as opened:
        code = cli.main(["run", str(config), "--until", "ingest",
                         "--runs-dir", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert opened == []
    assert "1 quarantined" in captured.out + captured.err
