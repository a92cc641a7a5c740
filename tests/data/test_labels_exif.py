"""Ingest and labels a user did not mean as they are (issue 24.17): labels with
surrounding spaces, identical images labelled differently, and photos stored rotated
with an EXIF orientation."""

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import fixtures
from tests.fixtures import read_examples, run_ingest


def _quarantine(stats_art):
    from components import artifacts

    with open(stats_art.path(artifacts.ExampleStatistics.QUARANTINE)) as handle:
        return [json.loads(line) for line in handle]


def _write_manifest(path, kind, rows, quote_all=False):
    if kind == "csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label"],
                                    quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
            writer.writeheader()
            writer.writerows(rows)
    else:
        with open(path, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.mark.parametrize("kind,spaced,quote_all", [
    ("csv", " cat ", False),      # spaces on both sides, unquoted
    ("csv", "cat  ", True),       # trailing spaces inside quotes
    ("csv", "  cat", False),      # leading spaces
    ("jsonl", " cat ", False),
    ("jsonl", "\tcat\u00a0", False),   # a tab and a no-break space
    ("folder", "cat ", False),    # a class folder named with a trailing space
])
def test_labels_with_surrounding_spaces_are_one_class(tmp_path, kind, spaced, quote_all):
    """A label written with spaces around it is the same class as without them (not a
    class apart), the summary says how many were stripped, and a label that is only
    spaces is quarantined with a reason while every other image is ingested."""
    fixtures.make_class_folders(str(tmp_path / "imgs"), classes=("cat", "dog"), per_class=8)
    extra = {f"extra{i}.png": fixtures.png_bytes(fixtures.class_pattern(0, 50 + i))
             for i in range(3)}
    blank = {"blank.png": fixtures.png_bytes(fixtures.class_pattern(1, 60))}
    if kind == "folder":
        fixtures.write_files(str(tmp_path / "imgs" / spaced), extra)
        fixtures.write_files(str(tmp_path / "imgs" / "   "), blank)
        source = tmp_path / "imgs"
    else:
        fixtures.write_files(str(tmp_path / "imgs" / "more"), extra | blank)
        rows = [{"path": f"imgs/{label}/{i:03d}.png", "label": label}
                for label in ("cat", "dog") for i in range(8)]
        rows += [{"path": f"imgs/more/{name}", "label": spaced} for name in extra]
        rows += [{"path": "imgs/more/blank.png", "label": "   "}]
        source = tmp_path / f"m.{kind}"
        _write_manifest(source, kind, rows, quote_all)
    summary, examples, stats_art, stats = run_ingest(
        tmp_path, source, ingest={"max_bad_fraction": 0.2})

    assert stats["class_names"] == ["cat", "dog"]
    assert examples.properties["class_names"] == ["cat", "dog"]
    totals = {label: sum(stats["counts"][split].get(label, 0) for split in ("train", "eval"))
              for label in stats["class_names"]}
    assert totals == {"cat": 11, "dog": 8}
    records = read_examples(examples, "train") + read_examples(examples, "eval")
    assert {r["label"] for r in records} == {"cat", "dog"}
    warning = [line for line in summary["lines"] if "surrounding spaces" in line]
    assert len(warning) == 1 and "3 label(s) had surrounding spaces, stripped" in warning[0]
    assert "extra" in warning[0]        # names an example file
    quarantined = _quarantine(stats_art)
    assert summary["num_quarantined"] == 1 and len(quarantined) == 1
    assert os.path.basename(quarantined[0]["path"]) == "blank.png"
    assert quarantined[0]["reason"].startswith("empty label")
    assert stats["quarantine_reasons"] == {"empty label": 1}


def test_labels_without_spaces_add_no_warning(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "imgs"), classes=("cat", "dog"), per_class=4)
    summary, _, _, _ = run_ingest(tmp_path, tmp_path / "imgs")
    assert not any("surrounding spaces" in line or "label conflict" in line
                   for line in summary["lines"])


@pytest.mark.parametrize("files, channels, noted", [
    (3, 1, True),          # a photo folder with no data.channels: told how to train color
    (3, 3, False),         # data.channels: 3 asked for: nothing to say
    (1, 1, False),         # grayscale files (glyphs, digits): the defaults fit
])
def test_rgb_files_trained_as_grayscale_get_one_note(tmp_path, files, channels, noted):
    fixtures.make_class_folders(str(tmp_path / "imgs"), classes=("cat", "dog"), per_class=4,
                                channels=files)
    summary, _, _, _ = run_ingest(tmp_path, tmp_path / "imgs", channels=channels)
    notes = [line for line in summary["lines"] if line.startswith("note:")]
    if not noted:
        assert notes == []
        return
    assert len(notes) == 1 and notes[0] in summary["warnings"]
    assert notes[0].startswith("note: 8 of 8 images are RGB files, but data.channels is 1 "
                               "(set in the config), so they are trained as 36x36 grayscale")
    assert "drop data.channels and data.image_size (auto decides them from the files), or " \
           "set data.channels: 3 and data.image_size" in notes[0]


def _copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(src, "rb") as handle:
        data = handle.read()
    with open(dst, "wb") as handle:
        handle.write(data)


@pytest.mark.parametrize("case", ["eval_vs_train", "train_vs_train", "hash_split"])
def test_identical_images_with_different_labels_are_quarantined(tmp_path, case):
    """Copies of one image (same bytes) labelled cat and dog: every copy is quarantined
    with reason "label conflict: cat vs dog" (the model must not learn both), the summary
    warns naming the count and the files, and every other image still flows, a
    same-label duplicate included."""
    src = tmp_path / "src"
    if case == "hash_split":
        fixtures.make_class_folders(str(src), per_class=8)
        train_root = eval_root = src
    else:
        fixtures.make_class_folders(str(src / "train"), per_class=8)
        fixtures.make_class_folders(str(src / "eval"), per_class=3, first=100)
        train_root, eval_root = src / "train", src / "eval"
    original = train_root / "cat" / "000.png"
    copy_root = eval_root if case == "eval_vs_train" else train_root
    conflicting = copy_root / "dog" / "copy-of-cat.png"
    _copy(original, conflicting)
    _copy(train_root / "fox" / "001.png", train_root / "fox" / "same-label-copy.png")

    summary, examples, stats_art, stats = run_ingest(
        tmp_path, src, eval_fraction=0.25, ingest={"max_bad_fraction": 0.2})

    records = read_examples(examples, "train") + read_examples(examples, "eval")
    sources_kept = {r["source"] for r in records}
    assert str(original) not in sources_kept and str(conflicting) not in sources_kept
    assert len(records) == stats["num_examples"]
    inputs = 24 + (9 if case != "hash_split" else 0) + 2
    assert stats["num_examples"] == inputs - 2 and stats["num_quarantined"] == 2
    quarantined = {q["path"]: q for q in _quarantine(stats_art)}
    assert set(quarantined) == {str(original), str(conflicting)}
    assert {q["reason"] for q in quarantined.values()} == {"label conflict: cat vs dog"}
    assert quarantined[str(original)]["label"] == "cat"
    assert quarantined[str(conflicting)]["label"] == "dog"
    assert stats["quarantine_reasons"] == {"label conflict": 2}
    assert stats["eval_dropped_as_train_duplicates"] == 0    # a conflict is no eval copy
    warning = [line for line in summary["lines"] if "different labels" in line]
    assert len(warning) == 1
    assert "1 image(s)" in warning[0] and "all 2 copies quarantined" in warning[0]
    assert str(original) in warning[0] and str(conflicting) in warning[0]
    # the same image under one label is still a duplicate, kept and counted
    assert sum(stats["duplicates"].values()) == 1
    assert sum(r["source"].endswith("same-label-copy.png") for r in records) == 1


def _upright_photo(height=16, width=24):
    """A non-square RGB image whose every orientation differs (smooth: JPEG keeps it)."""
    rng = np.random.default_rng(7)
    field = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(field).resize((width, height),
                                                    Image.Resampling.BILINEAR))


# EXIF orientation -> how the camera stored an upright picture (displaying it applies
# the inverse): 3 = rotate 180, 6 = rotate 90 clockwise to view, 8 = 90 counter-clockwise.
_STORED = {
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", [3, 6, 8, 2, 5, 7])
def test_exif_orientation_is_applied_at_ingest(tmp_path, orientation):
    """A phone JPEG stored sideways with an EXIF Orientation tag is stored upright: the
    Example's image decodes (TensorFlow ignores EXIF) to the upright shape and pixels,
    and height/width are the upright ones."""
    upright = _upright_photo()
    stored = np.ascontiguousarray(_STORED[orientation](upright))
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    fixtures.make_class_folders(str(tmp_path / "src"), classes=("cat", "dog"), per_class=6)
    (tmp_path / "src" / "cat" / "phone.jpg").write_bytes(buffer.getvalue())

    summary, examples, _, stats = run_ingest(tmp_path, tmp_path / "src")

    records = read_examples(examples, "train") + read_examples(examples, "eval")
    [phone] = [r for r in records if r["source"].endswith("phone.jpg")]
    assert phone["image"].shape == (16, 24, 3)
    assert (phone["height"], phone["width"], phone["channels"]) == (16, 24, 3)
    error = np.abs(phone["image"].astype(int) - upright.astype(int)).mean()
    assert error < 4, error                     # the upright pixels (JPEG-close)
    assert phone["image/format"] == "png"       # re-encoded: no EXIF left to misread
    assert Image.open(io.BytesIO(_encoded(examples, "phone.jpg"))).getexif().get(0x0112) in (
        None, 1)
    assert stats["exif_rotated"] == 1 and stats["sizes"]["16x24"] == 1
    assert "1 turned upright by their EXIF orientation" in summary["lines"][0]
    # the other images keep their bytes
    assert stats["converted"] == 1


def _encoded(examples, name):
    import tensorflow as tf

    from components import artifacts

    for split in ("train", "eval"):
        for raw in tf.data.TFRecordDataset(artifacts.Examples.shards(examples, split),
                                           compression_type="GZIP"):
            example = tf.train.Example.FromString(raw.numpy())
            feature = example.features.feature
            if feature["source"].bytes_list.value[0].decode().endswith(name):
                return feature["image/encoded"].bytes_list.value[0]
    raise AssertionError(name)
