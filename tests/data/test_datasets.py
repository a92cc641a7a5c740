"""Built-in datasets: sizes, labels, and byte-for-byte determinism of the fonts export."""

import hashlib
import json
import os

import numpy as np
import pytest

from components.data import datasets
from components.errors import DataError
from pipeline import cli

# sha256 over (relative path, bytes) of every file of `imgpipe datasets export fonts`
# with the pinned Pillow, FreeType (inside Pillow's wheel), matplotlib fonts and zlib
# (our own PNG writer compresses with zlib level 1).
FONTS_EXPORT_SHA256 = "548890876bfe0d520de11d79451c571725daf8f077d6d7404701adedb1e60459"


def tree_hash(root):
    digest = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            digest.update(open(path, "rb").read())
    return digest.hexdigest()


def test_fonts_dataset_shape_and_labels():
    data = datasets.load_fonts()
    assert data.images.shape == (2790, 36, 36) and data.images.dtype == np.uint8
    assert sorted(set(data.labels)) == sorted(datasets.FONT_FILES)
    assert all((data.labels == font).sum() == 62 * 9 for font in datasets.FONT_FILES)
    # every glyph is visible and every image is distinct
    assert (data.images.reshape(len(data.images), -1).max(axis=1) == 255).all()
    assert len({img.tobytes() for img in data.images}) == 2790


def test_fonts_export_is_deterministic(tmp_path, capsys):
    assert cli.main(["datasets", "export", "fonts", str(tmp_path / "a")]) == 0
    assert "wrote 2790 PNG files in 5 class folders" in capsys.readouterr().out
    datasets.export("fonts", str(tmp_path / "b"))
    first = tree_hash(str(tmp_path / "a"))
    assert first == tree_hash(str(tmp_path / "b"))
    assert sorted(os.listdir(tmp_path / "a")) == sorted(datasets.FONT_FILES)
    if FONTS_EXPORT_SHA256:
        assert first == FONTS_EXPORT_SHA256


def test_digits_dataset():
    data = datasets.load_digits()
    assert data.images.shape == (1797, 8, 8)
    assert data.images.max() == 255
    assert sorted(set(data.labels)) == [str(d) for d in range(10)]


def test_digits_export(tmp_path):
    counts = datasets.export("digits", str(tmp_path))
    assert sum(counts.values()) == 1797 and len(counts) == 10


@pytest.mark.skipif(datasets.fashion_mnist_dir() is None,
                    reason="dataset-fashion-mnist Debian package not installed")
def test_fashion_mnist_has_its_own_split():
    data = datasets.load_fashion_mnist(download=False)
    assert data.images.shape == (70000, 28, 28)
    assert (data.splits == "train").sum() == 60000 and (data.splits == "eval").sum() == 10000
    assert set(data.labels) == set(datasets.FASHION_CLASSES)


def test_fashion_mnist_missing_names_both_ways(monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_DIRS", ("/nonexistent",))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*keras"):
        datasets.load_fashion_mnist(download=False)


def test_read_idx_rejects_truncated(tmp_path):
    path = tmp_path / "x-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (2).to_bytes(4, "big")
                     + (2).to_bytes(4, "big") + b"\0" * 7)
    with pytest.raises(DataError, match="truncated"):
        datasets.read_idx(str(path))


@pytest.mark.slow
@pytest.mark.skipif(datasets.fashion_mnist_dir() is None,
                    reason="dataset-fashion-mnist Debian package not installed")
def test_fashion_mnist_given_split_passes_default_validation(tmp_path, capsys):
    """A newcomer's config (no validate section) on the tutorial's own train/test
    split: its handful of real near-copies is a warning, not a stop."""
    from pipeline import cli

    cfg = tmp_path / "f.yaml"
    cfg.write_text("name: f\ndata: {source: 'builtin:fashion_mnist', image_size: [28, 28]}\n")
    assert cli.main(["run", str(cfg), "--until", "validate", "--runs-dir",
                     str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "train 60000, eval 10000" in out and "warning: near_duplicate_leak" in out


@pytest.mark.parametrize("shape", [(7, 5), (9, 4, 3), (3, 11, 4), (1, 1)])
def test_png_writer_round_trips_through_pillow_and_tensorflow(shape):
    import io

    import tensorflow as tf
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    png = datasets.encode_png(image)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    decoded = tf.io.decode_png(png, channels=channels).numpy()
    assert np.array_equal(decoded.reshape(image.shape), image)


def test_a_folder_of_class_folders_is_dealt_into_daily_drops(tmp_path, capsys):
    """`datasets export FOLDER OUT --drops N`: a user's own photos as daily drops, every
    class in every drop, the files copied byte for byte; a path that is no folder of
    class folders is one line, exit 2, and nothing is written."""
    from pipeline import cli
    from tests.fixtures import make_class_folders

    make_class_folders(str(tmp_path / "photos"), classes=("cat", "dog"), per_class=7)
    (tmp_path / "photos" / "LICENSE.txt").write_text("not an image")
    out = tmp_path / "drops"
    assert cli.main(["datasets", "export", str(tmp_path / "photos"), str(out), "--drops", "3",
                     "--first-day", "2026-12-01", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"] == 14 and result["classes"] == {"cat": 7, "dog": 7}
    days = sorted(os.listdir(out))
    assert days == ["2026-12-01", "2026-12-02", "2026-12-03"]
    for day in days:
        assert sorted(os.listdir(out / day)) == ["cat", "dog"]
    original = sorted((tmp_path / "photos" / "cat").iterdir())
    assert sorted(p.read_bytes() for d in days for p in (out / d / "cat").iterdir()) == \
        sorted(p.read_bytes() for p in original)
    assert cli.main(["datasets", "export", str(tmp_path / "nope"), str(tmp_path / "x"),
                     "--drops", "3"]) == 2
    assert "is neither a built-in dataset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_config_knows_each_built_in_datasets_training_size():
    """train's pre-run check reads the training sizes from the config (no dataset loader
    in its code key); they must be what the loaders produce."""
    from components.config.data import BUILTIN_TRAIN_IMAGES
    from components.data.datasets import TRAIN_IMAGES

    assert BUILTIN_TRAIN_IMAGES == TRAIN_IMAGES


def test_builtin_shapes_are_three_channel_photos_of_five_balanced_classes():
    """builtin:shapes, the generated colour set the photo defaults are checked on: the
    same images on every machine (a seeded generator), 400 48x48 RGB images a class, and
    no two alike (a turn, a place, colours and a background of their own)."""
    from components.data import datasets

    first, again = datasets.load("shapes"), datasets.load("shapes")
    assert first.images.shape == (2000, 48, 48, 3) and first.images.dtype == np.uint8
    assert np.array_equal(first.images, again.images)
    names, counts = np.unique(first.labels, return_counts=True)
    assert sorted(names) == sorted(datasets.SHAPE_CLASSES) and set(counts) == {400}
    assert len({image.tobytes() for image in first.images}) == 2000
    assert datasets.SHAPES["shapes"] == first.images.shape[1:]
    # colour photos: the channels differ (not a grey image copied three times)
    assert np.abs(first.images[..., 0].astype(int) - first.images[..., 1]).mean() > 10
