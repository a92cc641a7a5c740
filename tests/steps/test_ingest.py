"""Ingest: every source format, splits, quarantine, unusual modes, statistics."""

import csv
import gzip
import json
import os

import numpy as np
import pytest

from components import artifacts
from components.data import ingest_checks
from components.errors import DataError
from tests import fixtures
from tests.fixtures import read_examples, run_ingest


def test_class_folders_hash_split_and_statistics(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=20)
    summary, examples, _, stats = run_ingest(tmp_path, tmp_path / "src", eval_fraction=0.25)
    assert summary["num_examples"] == 60 and summary["num_quarantined"] == 0
    train, eval_ = read_examples(examples, "train"), read_examples(examples, "eval")
    assert len(train) + len(eval_) == 60 and len(eval_) > 0
    assert {r["label"] for r in train} == {"cat", "dog", "fox"}
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in eval_})
    record = train[0]
    assert record["image"].shape == (12, 12, 1) and record["image"].dtype == np.uint8
    assert (record["height"], record["width"], record["channels"]) == (12, 12, 1)
    assert record["image/format"] == "png" and record["source"].endswith(".png")
    # the original bytes are kept: decoding matches the file on disk
    src = fixtures.class_pattern(["cat", "dog", "fox"].index(record["label"]),
                                 int(os.path.basename(record["source"])[:3]))
    assert (record["image"][..., 0] == src).all()
    assert stats["counts"]["train"]["cat"] + stats["counts"]["eval"].get("cat", 0) == 20
    assert stats["sizes"] == {"12x12": 60} and stats["channels"] == {"1": 60}
    assert set(stats["pixels"]["train"]["cat"]) == {"brightness_mean", "brightness_std",
                                                    "contrast_mean"}
    assert examples.properties["class_names"] == ["cat", "dog", "fox"]


def test_splits_are_deterministic(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=15)
    _, first, _, _ = run_ingest(tmp_path, tmp_path / "src", name="a")
    _, second, _, _ = run_ingest(tmp_path, tmp_path / "src", name="b")
    assert first.properties["counts"] == second.properties["counts"]
    assert first.fingerprint == second.fingerprint
    ids = lambda art, s: sorted(r["id"] for r in read_examples(art, s))
    assert ids(first, "eval") == ids(second, "eval")


def test_duplicates_never_cross_splits(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src" / "train"), per_class=8)
    fixtures.make_class_folders(str(tmp_path / "src" / "eval"), per_class=3, first=100)
    # Two eval files are byte-identical copies of train files: a leak to remove.
    for label in ("cat", "dog"):
        data = open(tmp_path / "src" / "train" / label / "000.png", "rb").read()
        (tmp_path / "src" / "eval" / label / "copy.png").write_bytes(data)
    # A duplicate inside train is counted and kept.
    data = open(tmp_path / "src" / "train" / "fox" / "001.png", "rb").read()
    (tmp_path / "src" / "train" / "fox" / "dup.png").write_bytes(data)
    summary, examples, _, stats = run_ingest(tmp_path, tmp_path / "src")
    assert stats["eval_dropped_as_train_duplicates"] == 2
    assert stats["duplicates"] == {"train": 1, "eval": 0}
    train_ids = {r["id"] for r in read_examples(examples, "train")}
    eval_ids = {r["id"] for r in read_examples(examples, "eval")}
    assert train_ids.isdisjoint(eval_ids)
    # splits came from the folders (eval/cat holds 100-102 and the dropped copy)
    assert stats["counts"]["eval"] == {"cat": 3, "dog": 3, "fox": 3}
    assert stats["counts"]["train"] == {"cat": 8, "dog": 8, "fox": 9}


def test_bad_inputs_are_quarantined_with_exact_counts(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=10)
    fixtures.write_files(str(tmp_path / "src" / "cat"), fixtures.bad_corpus())
    summary, examples, stats_art, stats = run_ingest(
        tmp_path, tmp_path / "src", ingest={"max_bad_fraction": 0.2})
    assert summary["num_examples"] == 30 and summary["num_quarantined"] == 4
    quarantine = stats_art.path(artifacts.ExampleStatistics.QUARANTINE)
    lines = [json.loads(line) for line in open(quarantine)]
    reasons = {os.path.basename(q["path"]): q["reason"] for q in lines}
    assert set(reasons) == {"empty.png", "truncated.jpg", "notes.png", "bomb.png"}
    assert reasons["empty.png"].startswith("empty file")
    assert reasons["truncated.jpg"].startswith("corrupt or truncated")
    assert reasons["notes.png"].startswith("not an image")
    assert "50000x50000" in reasons["bomb.png"] and "max_pixels" in reasons["bomb.png"]
    assert stats["num_quarantined"] == 4 and stats["num_inputs"] == 34
    assert sum(stats["quarantine_reasons"].values()) == 4


def test_too_many_bad_inputs_fail_with_a_clear_message(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=10)
    fixtures.write_files(str(tmp_path / "src" / "cat"), fixtures.bad_corpus())
    with pytest.raises(DataError) as info:
        run_ingest(tmp_path, tmp_path / "src")  # 4/34 = 11.8% > 5%
    message = str(info.value)
    assert "4 of 34 inputs are bad" in message and "ingest.max_bad_fraction" in message
    kept = message.split("See ")[1].split(";")[0]
    assert len(open(kept).readlines()) == 4  # the list survives for the user
    assert not artifacts.is_committed(str(tmp_path / "out" / "examples"))


def test_unusual_modes_are_converted_and_decode(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=4)
    fixtures.write_files(str(tmp_path / "src" / "dog"), fixtures.unusual_corpus())
    original_jpeg = fixtures.jpeg_bytes(
        __import__("PIL.Image", fromlist=["Image"]).fromarray(fixtures.class_pattern(0, 1, 16, 3)))
    (tmp_path / "src" / "fox" / "plain.jpg").write_bytes(original_jpeg)
    summary, examples, _, stats = run_ingest(tmp_path, tmp_path / "src", eval_fraction=0.01)
    assert summary["num_quarantined"] == 0 and summary["num_examples"] == 12 + 7 + 1
    records = read_examples(examples, "train") + read_examples(examples, "eval")
    by_name = {os.path.basename(r["source"]): r for r in records}
    for name in fixtures.unusual_corpus():
        record = by_name[name]
        assert record["image/format"] == "png", name
        assert record["image"].dtype == np.uint8 and record["image"].shape[-1] in (1, 3), name
        assert record["image"].shape[-1] == record["channels"]
    assert by_name["sixteen.png"]["channels"] == 1
    assert by_name["sixteen.png"]["image"].max() > 200  # scaled from 16 bits, not clipped
    assert by_name["plain.jpg"]["image/format"] == "jpeg"  # baseline JPEG keeps its bytes
    assert stats["converted"] == 7


def test_csv_and_jsonl_manifests(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "imgs"), per_class=6)
    rows = [{"path": f"imgs/{label}/{i:03d}.png", "label": label,
             "split": "eval" if i == 0 else "train"}
            for label in ("cat", "dog", "fox") for i in range(6)]
    with open(tmp_path / "m.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "m.jsonl", "w") as handle:
        handle.writelines(json.dumps({"uri": row["path"], "label": row["label"]}) + "\n" for row in rows)
    _, _, _, stats = run_ingest(tmp_path, tmp_path / "m.csv", name="csv")
    assert stats["counts"]["eval"] == {"cat": 1, "dog": 1, "fox": 1}
    _, _, _, stats = run_ingest(tmp_path, tmp_path / "m.jsonl", name="jsonl")
    assert stats["num_examples"] == 18


def test_manifest_row_without_label_is_an_error(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.png,\n")
    with pytest.raises(DataError, match="row 2 lacks"):
        run_ingest(tmp_path, tmp_path / "m.csv")


def test_npz_arrays(tmp_path):
    images = np.stack([fixtures.class_pattern(i % 2, i, 36) for i in range(20)]).astype(
        np.float32) / 255.0
    labels = np.eye(2)[[i % 2 for i in range(20)]]  # one-hot, as in the course's file
    np.savez(tmp_path / "data_with_labels.npz", arr_0=images, arr_1=labels)
    summary, examples, _, stats = run_ingest(tmp_path, tmp_path / "data_with_labels.npz",
                                             eval_fraction=0.2)
    assert summary["num_examples"] == 20
    assert examples.properties["class_names"] == ["0", "1"]
    record = (read_examples(examples, "train") + read_examples(examples, "eval"))[0]
    assert record["image"].shape == (36, 36, 1)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files(tmp_path, compress):
    def idx(data, ndim_dims):
        header = bytes([0, 0, 8, len(ndim_dims)]) + b"".join(d.to_bytes(4, "big") for d in ndim_dims)
        return header + data.tobytes()

    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, n in (("train", 12), ("t10k", 4)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 3).astype(np.uint8)
        for kind, blob in (("images-idx3", idx(images, [n, 28, 28])),
                           ("labels-idx1", idx(labels, [n]))):
            name = f"{prefix}-{kind}-ubyte" + (".gz" if compress else "")
            (folder / name).write_bytes(gzip.compress(blob) if compress else blob)
    _, _, _, stats = run_ingest(tmp_path, folder)
    assert sum(stats["counts"]["train"].values()) == 12
    assert sum(stats["counts"]["eval"].values()) == 4


def test_builtin_digits(tmp_path):
    summary, examples, _, stats = run_ingest(tmp_path, "builtin:digits", eval_fraction=0.2)
    assert summary["num_examples"] == 1797
    assert examples.properties["class_names"] == [str(d) for d in range(10)]
    assert 0.15 < sum(stats["counts"]["eval"].values()) / 1797 < 0.25


def test_class_list_quarantines_other_labels(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=10)
    summary, examples, stats_art, _ = run_ingest(
        tmp_path, tmp_path / "src", classes=["cat", "dog"], ingest={"max_bad_fraction": 0.5})
    assert summary["num_quarantined"] == 10
    assert examples.properties["class_names"] == ["cat", "dog"]
    line = json.loads(open(stats_art.path(artifacts.ExampleStatistics.QUARANTINE)).readline())
    assert "not in data.classes" in line["reason"]


def test_listed_class_without_images_is_an_error(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=5)
    with pytest.raises(DataError, match="class\\(es\\) owl listed in data.classes"):
        run_ingest(tmp_path, tmp_path / "src", classes=["cat", "dog", "fox", "owl"])


def test_empty_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        run_ingest(tmp_path, tmp_path / "empty")
    (tmp_path / "src" / "cat").mkdir(parents=True)
    fixtures.make_class_folders(str(tmp_path / "src"), classes=("dog",), per_class=2)
    with pytest.raises(DataError, match="class folder 'cat'.*has no files"):
        run_ingest(tmp_path, tmp_path / "src")
    with pytest.raises(DataError, match="does not exist"):
        run_ingest(tmp_path, tmp_path / "nowhere")


def test_files_outside_class_folders_are_quarantined_not_dropped(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=30)
    (tmp_path / "src" / "stray.png").write_bytes(fixtures.png_bytes(np.zeros((4, 4), np.uint8)))
    (tmp_path / "src" / "cat" / "README.txt").write_text("notes")
    summary, _, stats_art, _ = run_ingest(tmp_path, tmp_path / "src")
    assert summary["num_quarantined"] == 2
    text = open(stats_art.path(artifacts.ExampleStatistics.QUARANTINE)).read()
    assert "not inside a class folder" in text
    assert "file extension 'txt' is not in ingest.extensions" in text


def test_hash_split_keeps_near_duplicates_in_one_split(tmp_path):
    """JPEG re-encodes of images are different files (different ids, so independent
    hash splits); ingest moves eval members of such pairs to train."""
    import base64

    from components.data import neardup

    copies = {label: list(range(0, 12, 2)) for label in fixtures.CLASSES}
    fixtures.make_photo_folders(str(tmp_path / "src"), per_class=12, jpeg_copies_of=copies)
    summary, examples, stats_art, stats = run_ingest(tmp_path, tmp_path / "src",
                                                     eval_fraction=0.5, channels=3)
    assert summary["num_examples"] == 54
    assert stats["eval_moved_to_train_near_duplicates"] > 0
    assert "eval images moved to train as near-duplicates" in summary["lines"][1]
    thumbnails = stats_art.path(artifacts.ExampleStatistics.THUMBNAILS)
    rows = [line.split("\t") for line in open(thumbnails).read().split("\n") if line]
    thumbs = {split: neardup.as_array([base64.b64decode(r[2]) for r in rows if r[1] == split])
              for split in ("train", "eval")}
    assert len(thumbs["eval"]) == sum(stats["counts"]["eval"].values()) > 0
    found, _ = neardup.matches(thumbs["eval"], thumbs["train"], 6.0)
    assert (found < 0).all()                       # no eval image has a copy in train
    # the moved images are in train's files and counted there
    assert len(read_examples(examples, "train")) == sum(stats["counts"]["train"].values())


def test_near_duplicate_search_is_exact():
    """Every pair within the threshold is found, whatever the projection drops."""
    from components.data import neardup

    rng = np.random.default_rng(3)
    reference = rng.integers(0, 256, (500, 256), dtype=np.uint8)
    query = rng.integers(0, 256, (200, 256), dtype=np.uint8)
    planted = rng.choice(200, 40, replace=False)
    for q in planted:
        noise = rng.normal(0, 3, 256)
        query[q] = np.clip(reference[q].astype(float) + noise, 0, 255).astype(np.uint8)
    found, rms = neardup.matches(query, reference, 6.0)
    brute = np.sqrt(((query[:, None, :].astype(float) - reference[None].astype(float)) ** 2)
                    .mean(axis=2)).min(axis=1)
    assert set(np.flatnonzero(found >= 0)) == set(np.flatnonzero(brute <= 6.0)) == set(planted)
    assert np.allclose(rms[planted], brute[planted])
    move = neardup.eval_to_move(reference, query, 6.0)
    assert set(np.flatnonzero(move)) == set(planted)


@pytest.mark.parametrize("shape", [(12, 36, 36), (12, 28, 28, 1), (12, 40, 24, 3)])
def test_array_fast_path_matches_the_per_image_path(shape):
    """Array sources skip decoding; what they record must equal what the per-image path
    records for the same pixels encoded as PNG (ids, splits, examples, statistics)."""
    from components.data import datasets, sources

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    images[:4] //= 3                       # darker images: a spread of brightness
    arrays = datasets.ArrayDataset(images=images, labels=np.array(["a", "b"] * 6),
                                   names=np.array([f"img{i}" for i in range(12)]))
    unit = sources.WorkUnit(source=None, start=2, stop=12)   # an array range
    fast = list(ingest_checks.process_arrays(unit, arrays, max_pixels=10**6, classes=None,
                                             eval_fraction=0.3))
    assert len(fast) == 10
    for offset, record in enumerate(fast):
        index = 2 + offset
        slow = ingest_checks.process_input(
            f"img{index}", datasets.encode_png(images[index]), arrays.labels[index], None,
            None, max_pixels=10**6, classes=None, eval_fraction=0.3)
        assert record._replace(thumbnail=b"", brightness=0, contrast=0) == \
            slow._replace(thumbnail=b"", brightness=0, contrast=0)
        assert record.brightness == pytest.approx(slow.brightness, abs=1e-6)
        assert record.contrast == pytest.approx(slow.contrast, abs=1e-6)
        diff = np.abs(np.frombuffer(record.thumbnail, np.uint8).astype(int)
                      - np.frombuffer(slow.thumbnail, np.uint8))
        assert diff.max() <= 1


def test_tfrecord_writer_is_read_back_by_tensorflow_with_checksums(tmp_path):
    import tensorflow as tf

    from components.io import tfrecord

    records = [b"", b"x", os.urandom(300), b"y" * 70_000]
    path = str(tmp_path / "a.tfrecord.gz")
    tfrecord.write_gzip(path, records)
    read = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    assert read == records
    framed = bytearray(tfrecord.frame(records))
    framed[len(framed) // 2] ^= 0xFF                 # one flipped bit inside a record
    (tmp_path / "bad.tfrecord").write_bytes(bytes(framed))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(tmp_path / "bad.tfrecord")))


@pytest.mark.parametrize("shape", [(36, 36), (28, 28), (8, 8), (40, 24), (16, 16), (300, 200)])
def test_thumbnails_match_pillows_box_resize(shape):
    from PIL import Image

    from components.data import neardup

    gray = np.random.default_rng(2).integers(0, 256, (3, *shape), dtype=np.uint8)
    thumbs, brightness, contrast = neardup.describe(gray)
    for image, thumb, b, c in zip(gray, thumbs, brightness, contrast):
        pillow = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BOX))
        assert np.abs(np.frombuffer(thumb, np.uint8).reshape(16, 16).astype(int)
                      - pillow).max() <= 1
        assert b == pytest.approx(image.mean() / 255) and c == pytest.approx(image.std() / 255)


def test_example_encoder_matches_protobuf():
    """The hand-built wire format parses as the same tf.train.Example protobuf builds,
    across every varint width (short and 20 kB values, negative ints, non-UTF-8 names)."""
    import tensorflow as tf

    from components import features

    values = {features.IMAGE: bytes(range(256)) * 80, features.FORMAT: "png",
              features.LABEL: "é" * 70, features.HEIGHT: 300, features.WIDTH: -1,
              features.CHANNELS: 2 ** 40, features.ID: "a" * 32,
              features.SOURCE: "/data/\udcff-name.png", "empty": b""}
    expected = tf.train.Example()
    for key, value in values.items():
        feature = expected.features.feature[key]
        if isinstance(value, int):
            feature.int64_list.value.append(value)
        else:
            feature.bytes_list.value.append(
                value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value)
    for _ in range(2):      # the second time from the cache of repeated entries
        assert tf.train.Example.FromString(features.encode_example(values)) == expected


def test_the_decode_recheck_catches_any_damaged_byte():
    """Transform re-checks each record: a PNG by its chunk CRCs (one flipped byte of the
    compressed pixels, a cut-off file), a JPEG by decoding it."""
    import io

    from PIL import Image

    from components.data.imaging import BadImage, verify_decodes

    png = fixtures.png_bytes(fixtures.class_pattern(1, 3))
    verify_decodes(png)
    idat = png.index(b"IDAT") + 8
    for damaged in (png[:idat] + bytes([png[idat] ^ 0xFF]) + png[idat + 1:], png[:-20]):
        with pytest.raises(BadImage):
            verify_decodes(damaged)
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(out, format="JPEG")
    verify_decodes(out.getvalue())
    with pytest.raises(BadImage):
        verify_decodes(out.getvalue()[:len(out.getvalue()) // 2])
