"""Built-in datasets, available offline: fonts, digits, fashion_mnist, shapes.

- fonts: the 5-font character dataset of the classic TensorFlow course, regenerated
  from TrueType fonts bundled in matplotlib's wheel: A-Z, a-z, 0-9 in 5 fonts,
  36x36 grayscale, 9 shifted copies each (2,790 images), label = font name.
- digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images, labels 0-9).
- fashion_mnist: the Keras beginner tutorial's data with its own train/test split,
  read from the Debian package `dataset-fashion-mnist` or Keras' download.
- shapes: generated 3-channel "photos" (2,000 images, 48x48 RGB): a circle, square,
  triangle, cross or ring of random colour, size, place and turn over a textured
  background of random colours, label = the shape. A second colour set besides a
  user's photos, on which a flip or a small turn keeps the class (what the photo
  defaults and augmentation are checked on).

Each loads as arrays (`load`) and exports as class folders of PNG files (`export`).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from components.config.data import BUILTIN_DATASETS
from components.errors import DataError

FONT_FILES = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "cmtt10", "DejaVuSans-BoldOblique")
FONT_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
FONT_SIZE = 36
FONT_POINTS = 24
FONT_SHIFTS = tuple((dx, dy) for dy in (-2, 0, 2) for dx in (-2, 0, 2))
# Images a built-in dataset trains on at most (fashion_mnist: its own train split), known
# before it loads: a training batch larger than this is refused before the run starts.
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring")
SHAPE_SIZE = 48
SHAPES_PER_CLASS = 400
TRAIN_IMAGES = {"fonts": len(FONT_FILES) * len(FONT_CHARS) * len(FONT_SHIFTS),
                "digits": 1797, "fashion_mnist": 60000,
                "shapes": len(SHAPE_CLASSES) * SHAPES_PER_CLASS}

# (height, width, channels) of each built-in dataset's images, known without loading it
# (what `data.channels: auto` and `data.image_size: auto` decide from).
SHAPES = {"fonts": (FONT_SIZE, FONT_SIZE, 1), "digits": (8, 8, 1), "fashion_mnist": (28, 28, 1),
          "shapes": (SHAPE_SIZE, SHAPE_SIZE, 3)}

FASHION_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle_boot")
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",
                os.path.expanduser("~/.keras/datasets/fashion-mnist"))

# MNIST-style IDX files: PREFIX-images-idx3-ubyte[.gz] next to PREFIX-labels-idx1-ubyte[.gz];
# the prefixes t10k and test mean the eval split.
IDX_IMAGES = "images-idx3-ubyte"
IDX_LABELS = "labels-idx1-ubyte"
IDX_EVAL_PREFIXES = ("t10k", "test")


def is_idx_images(name: str) -> bool:
    return IDX_IMAGES in name


def is_idx_file(name: str) -> bool:
    """An IDX images or labels file."""
    return IDX_IMAGES in name or IDX_LABELS in name


def idx_labels_path(images_path: str) -> str:
    """The labels file that belongs to an IDX images file."""
    return images_path.replace(IDX_IMAGES, IDX_LABELS)


def idx_split(images_path: str) -> str:
    prefix = os.path.basename(images_path).split(f"-{IDX_IMAGES}")[0]
    return "eval" if prefix in IDX_EVAL_PREFIXES else "train"


@dataclass(frozen=True)
class ArrayDataset:
    """Images as uint8 [N, H, W] (or [N, H, W, C]), one class name per image, and
    optional split names ('train'/'eval') when the dataset defines its own split."""

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray | None = None
    names: np.ndarray | None = None  # a stable per-image name used as its source path


def _mpl_font_dir() -> str:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the fonts dataset needs matplotlib's bundled fonts; "
                        "install matplotlib (pip install matplotlib).")
    return os.path.join(list(spec.submodule_search_locations)[0], "mpl-data", "fonts", "ttf")


def _render_font(path: str) -> list[np.ndarray]:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(path, FONT_POINTS)
    out = []
    for char in FONT_CHARS:
        left, top, right, bottom = font.getbbox(char)
        x0 = (FONT_SIZE - (right - left)) / 2 - left
        y0 = (FONT_SIZE - (bottom - top)) / 2 - top
        for dx, dy in FONT_SHIFTS:
            canvas = Image.new("L", (FONT_SIZE, FONT_SIZE), 0)
            ImageDraw.Draw(canvas).text((round(x0 + dx), round(y0 + dy)), char, fill=255,
                                        font=font)
            out.append(np.asarray(canvas, dtype=np.uint8))
    return out


def load_fonts() -> ArrayDataset:
    font_dir = _mpl_font_dir()
    images, labels, names = [], [], []
    for font_name in FONT_FILES:
        path = os.path.join(font_dir, f"{font_name}.ttf")
        if not os.path.isfile(path):
            raise DataError(f"font file {path} is missing from matplotlib's wheel; "
                            "reinstall the pinned matplotlib (make install).")
        rendered = _render_font(path)
        images.extend(rendered)
        labels.extend([font_name] * len(rendered))
        names.extend(f"{font_name}/U{ord(c):04X}-{j}.png"
                     for c in FONT_CHARS for j in range(len(FONT_SHIFTS)))
    return ArrayDataset(np.stack(images), np.asarray(labels), None, np.asarray(names))


def load_digits() -> ArrayDataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray([str(int(t)) for t in bunch.target])
    names = np.asarray([f"{label}/{i:04d}.png" for i, label in enumerate(labels)])
    return ArrayDataset(images, labels, None, names)


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one `kind` at a random centre, radius and turn."""
    radius = rng.uniform(0.22, 0.36) * size
    cy, cx = size / 2 + rng.uniform(-0.12, 0.12, 2) * size     # about centred, as photos are
    turn = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = y - cy, x - cx
    u = dx * np.cos(turn) + dy * np.sin(turn)        # coordinates in the shape's frame
    v = -dx * np.sin(turn) + dy * np.cos(turn)
    distance = np.hypot(dx, dy)
    if kind == "circle":
        return distance <= radius
    if kind == "ring":
        return (distance <= radius) & (distance >= 0.55 * radius)
    if kind == "square":
        side = radius / np.sqrt(2) * 1.15
        return (np.abs(u) <= side) & (np.abs(v) <= side)
    if kind == "cross":
        arm = radius * 0.3
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | \
            ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    # an equilateral triangle: inside the three half-planes of its sides
    inside = np.ones((size, size), bool)
    for k in range(3):
        angle = turn + k * 2 * np.pi / 3
        inside &= dx * np.cos(angle) + dy * np.sin(angle) <= radius * 0.55
    return inside


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A background: a gradient between two random colours plus blurred noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = (x * np.cos(angle) + y * np.sin(angle) + 1.5) / 3.0
    start, end = rng.uniform(0, 255, (2, 3))
    image = start + (end - start) * t[..., None]
    noise = rng.normal(0, 1, (size // 4 + 1, size // 4 + 1, 3))
    noise = np.kron(noise, np.ones((4, 4, 1)))[:size, :size]
    return image + noise * rng.uniform(3, 12)


def load_shapes() -> ArrayDataset:
    """The generated shapes (see the module's doc), the same on every machine."""
    rng = np.random.default_rng(20261207)
    images, labels, names = [], [], []
    for kind in SHAPE_CLASSES:
        for index in range(SHAPES_PER_CLASS):
            image = _texture(SHAPE_SIZE, rng)
            mask = _shape_mask(kind, SHAPE_SIZE, rng)
            colour = rng.uniform(0, 255, 3)
            while np.abs(colour - image[mask].mean(axis=0)).sum() < 120:   # visible
                colour = rng.uniform(0, 255, 3)
            shade = colour + rng.normal(0, 6, (SHAPE_SIZE, SHAPE_SIZE, 3))
            image[mask] = shade[mask]
            images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
            labels.append(kind)
            names.append(f"{kind}/{index:04d}.png")
    return ArrayDataset(np.stack(images), np.asarray(labels), None, np.asarray(names))


def read_idx(path: str) -> np.ndarray:
    """Reads an MNIST-style IDX file (plain or gzip) into a numpy array."""
    from components.io import fileio

    try:
        data = fileio.read_bytes(path)
        if path.endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                        "expected MNIST-style files such as train-images-idx3-ubyte.gz.")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} values, file holds {body.size}; "
                        "the file is truncated.")
    return body.reshape(dims)


def _idx_pair(directory: str, prefix: str) -> tuple[str, str] | None:
    for suffix in (".gz", ""):
        images = os.path.join(directory, f"{prefix}-{IDX_IMAGES}{suffix}")
        labels = idx_labels_path(images)
        if os.path.isfile(images) and os.path.isfile(labels):
            return images, labels
    return None


def fashion_mnist_dir() -> str | None:
    for directory in FASHION_DIRS:
        if _idx_pair(directory, "train") and _idx_pair(directory, IDX_EVAL_PREFIXES[0]):
            return directory
    return None


def load_fashion_mnist(download: bool = True) -> ArrayDataset:
    directory = fashion_mnist_dir()
    if directory is None and download:
        try:
            import keras

            keras.datasets.fashion_mnist.load_data()  # fills ~/.keras/datasets/fashion-mnist
        except Exception:  # no network, or Keras' mirror unreachable
            pass
        directory = fashion_mnist_dir()
    if directory is None:
        raise DataError(
            "fashion_mnist is not available offline: install the Debian package "
            "(apt-get install dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist) "
            "or download it once with internet access via "
            "keras.datasets.fashion_mnist.load_data() (files in ~/.keras/datasets/fashion-mnist).")
    parts = []
    for prefix, split in (("train", "train"), (IDX_EVAL_PREFIXES[0], "eval")):
        images_path, labels_path = _idx_pair(directory, prefix)
        images, ids = read_idx(images_path), read_idx(labels_path)
        names = np.asarray([f"{split}/{FASHION_CLASSES[t]}/{i:05d}.png" for i, t in enumerate(ids)])
        parts.append((images, np.asarray(FASHION_CLASSES)[ids], np.full(len(ids), split), names))
    return ArrayDataset(*(np.concatenate(arrays) for arrays in zip(*parts)))


def load(name: str) -> ArrayDataset:
    """Loads a built-in dataset by name."""
    loaders = {"fonts": load_fonts, "digits": load_digits, "fashion_mnist": load_fashion_mnist,
               "shapes": load_shapes}
    if name not in loaders:
        raise DataError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}.")
    return loaders[name]()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR = {1: 0, 3: 2, 4: 6}          # grayscale, RGB, RGBA


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=64)
def _png_head(width: int, height: int, channels: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR[channels], 0, 0, 0)
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", header)


_PNG_END = _png_chunk(b"IEND", b"")


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W] or [H, W, C] array: deterministic and fast (one
    IDAT, no row filters, zlib level 1), about 10x Pillow's encoder on small images."""
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    rows = np.zeros((height, 1 + width * channels), np.uint8)   # filter byte 0: "none"
    rows[:, 1:] = image.reshape(height, width * channels)
    return (_png_head(width, height, channels)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _PNG_END)


def export(name: str, out_dir: str, drops: int | None = None,
           first_day: str | None = None) -> dict[str, int]:
    """Writes a built-in dataset as class folders of PNGs (split folders when the
    dataset has its own split), or copies a folder of class folders (`name` a path:
    the files as they are), into a new or empty folder, all at once: the files are
    written under a temporary sibling name that is renamed into place, so a failure
    leaves nothing and no existing file is overwritten. Returns files per class.

    `drops`: deal the images into that many daily drops instead, `OUT/YYYY-MM-DD/...`
    from `first_day` (default: so that the last drop is today), as a data source that
    grows by a folder a day (`data.source: OUT/{YYYY}-{MM}-{DD}/`); dealt one file a drop
    in class order, so every drop holds every class."""
    import datetime
    import shutil

    target = os.path.abspath(out_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise DataError(f"{out_dir!r} is a file; export into a new or empty folder.")
    if os.path.isdir(target) and os.listdir(target):
        raise DataError(f"{out_dir!r} is not empty; export into a new or empty folder (the "
                        "export never overwrites files).")
    days: list[str] = []
    if drops:
        try:
            start = (datetime.date.fromisoformat(first_day) if first_day else
                     datetime.date.today() - datetime.timedelta(days=drops - 1))
        except ValueError:
            raise DataError(f"first day {first_day!r} is not a date; give YYYY-MM-DD, "
                            "e.g. 2026-12-01.") from None
        days = [(start + datetime.timedelta(days=i)).isoformat() for i in range(drops)]
    if name in BUILTIN_DATASETS:
        data = load(name)
        files = ((str(label), str(rel), lambda image=image: encode_png(image))
                 for image, label, rel in zip(data.images, data.labels, data.names))
    else:
        files = _folder_files(name)
    partial = f"{target}.partial-{os.getpid()}"
    counts: dict[str, int] = {}
    try:
        for index, (label, rel, content) in enumerate(files):
            day = [days[index % len(days)]] if days else []
            path = os.path.join(partial, *day, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(content())
            counts[label] = counts.get(label, 0) + 1
        if os.path.isdir(target):
            os.rmdir(target)      # empty: checked above
        os.rename(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return counts


def _folder_files(folder: str):
    """(class, CLASS/FILE, a reader of its bytes) for each file under a folder of class
    folders, in name order; a DataError when it is not one."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder!r} is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
                        "nor a folder; give a folder of class folders (CLASS/IMAGE).")
    classes = sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e))
                     and not e.startswith("."))
    if not classes:
        raise DataError(f"{folder!r} holds no class folders; give a folder of CLASS/IMAGE "
                        "files.")
    for label in classes:
        for entry in sorted(os.listdir(os.path.join(folder, label))):
            path = os.path.join(folder, label, entry)
            if os.path.isfile(path) and not entry.startswith("."):
                yield label, os.path.join(label, entry), \
                    lambda path=path: open(path, "rb").read()
