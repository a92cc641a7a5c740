"""What data.source may hold (components/data/sources.py), through `imgpipe run`: a
manifest's mistakes are one line naming the file; file, folder and class names that are
not UTF-8, a BOM before a CSV header and lone surrogates in a manifest are read; a class
folder whose name has a control character is refused."""

from __future__ import annotations

import os

import pytest

from pipeline import cli
from tests import fixtures
from tests.fixtures import one_line_error


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
