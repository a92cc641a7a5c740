"""`data.channels: auto` and `data.image_size: auto` (the defaults), decided from the data
when the pipeline config loads (`pipeline/config_defaults.py`), before any step runs: the
photo defaults follow the decision, and every step's config and cache key sees the values.

What is read: the headers of up to SAMPLE_FILES files spread evenly over the source's
listing (class folders in order, so over the classes; a manifest in its order), never
their pixels; a built-in dataset's known shape; an array file's shape. A span pattern
reads the newest span of its window.

The policy (README "Channels and size from the data"):
- channels: 3 when at least half the sampled files are color (RGB, RGBA, palette, CMYK
  ...: what ingest stores as 3 channels), else 1;
- image size: for 1 channel the course's 36x36, whatever the images' size (every course
  model is built for it); for 3 channels square, the median shorter side of the sampled
  images held to PHOTO_SIDES: 64 is the size the photo defaults were measured at (the
  sign-language photos, 100x100, gave 0.950-0.966 at 64x64), 32 the smallest a Keras
  application base takes.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from components.data import datasets, imaging, sources, spans
from components.io import fileio
from components.config.data import COURSE_CHANNELS, COURSE_IMAGE_SIZE, DataConfig
from components.config.ingest import IngestConfig
from components.errors import DataError

SAMPLE_FILES = 200
# A JPEG's frame header follows its EXIF block (thumbnails included), rarely past 64 KiB;
# a file whose header is not in its first bytes is read whole.
HEAD_BYTES = 64 * 1024
PHOTO_SIDES = (32, 64)
READERS = 16          # header reads at once (a bucket answers each in tens of ms)


@dataclass(frozen=True)
class Shape:
    """What the data decided: the values, what they rest on, and why the data could not
    be read (then the values are the course's)."""

    channels: int
    image_size: tuple[int, int]
    basis: str
    unread: str | None = None


def decide(data: DataConfig, channels: int | None = None) -> Shape:
    """The channels and image size `data`'s source shows; with `channels` (set in the
    config) the size follows those channels. A source that cannot be read here (absent,
    no credentials) gives the course's values with the reason in `unread`: a local run
    then fails at ingest anyway, and `imgpipe compile` refuses it
    (`pipeline/kfp/checks.py` check_remote)."""
    try:
        return _decide(data, channels)
    except Exception as exc:         # any failure to read is reported, not raised here
        text = " ".join(str(exc).split()) or type(exc).__name__
        return Shape(channels or COURSE_CHANNELS, COURSE_IMAGE_SIZE, "",
                     text[:300].rstrip("."))


def _decide(data: DataConfig, given: int | None) -> Shape:
    where = ""
    if spans.has_pattern(data.source):
        chosen, _ = spans.select(spans.discover(spans.Pattern.parse(data.source)), data.spans,
                                 data.on_missing)
        if not chosen:
            raise DataError(f"no data drop of {data.source} is in the window")
        where = f" of {chosen[-1].label} (the window's newest)"
        data = data.for_span(chosen[-1].path)
    source = sources.resolve(data)
    if source.kind == "builtin":
        height, width, channels = datasets.SHAPES[source.location]
        color = "RGB" if channels == 3 else "grayscale"
        return _shape(given or channels, [(height, width)],
                      f"{data.source} is {height}x{width} {color}")
    if source.kind in ("npz", "idx"):
        images = sources.load_arrays(source).images
        channels = 3 if images.ndim == 4 and images.shape[-1] >= 3 else 1
        return _shape(given or channels, [images.shape[1:3]],
                      f"the arrays are {'x'.join(str(n) for n in images.shape[1:])}")
    items = sources.list_files(source, IngestConfig())
    labeled = [item for item in items if item.label is not None and item.problem is None]
    items = labeled or items
    count = min(SAMPLE_FILES, len(items))
    picks = [items[i * len(items) // count].path for i in range(count)]
    with ThreadPoolExecutor(min(READERS, count)) as pool:
        shapes = [s for s in pool.map(_header, picks) if s is not None]
    if not shapes:
        raise DataError(f"none of the {count} sampled files{where} has an image header")
    color = sum(1 for *_, channels in shapes if channels == 3)
    sampled = f"{len(shapes):,} sampled files{where}" + (
        f" (of {len(items):,})" if len(shapes) < len(items) else "")
    channels = given or (3 if color * 2 >= len(shapes) else 1)
    return _shape(channels, [(h, w) for h, w, _ in shapes], f"{color:,} of {sampled} are RGB")


def _header(path: str) -> tuple[int, int, int] | None:
    """(height, width, channels) of one file from its header; None: not an image (ingest
    quarantines it)."""
    try:
        try:
            return imaging.header_shape(fileio.read_head(path, HEAD_BYTES))
        except imaging.BadImage:
            return imaging.header_shape(fileio.read_bytes(path))
    except Exception:
        return None


def _shape(channels: int, sizes: list[tuple[int, int]], seen: str) -> Shape:
    heights = statistics.median_low(int(h) for h, _ in sizes)
    widths = statistics.median_low(int(w) for _, w in sizes)
    if channels == 1:
        height, width = COURSE_IMAGE_SIZE
        return Shape(1, COURSE_IMAGE_SIZE,
                     f"{seen}; 1 channel trains at the course's {height}x{width}")
    shorter = statistics.median_low(min(int(h), int(w)) for h, w in sizes)
    low, high = PHOTO_SIDES
    side = min(max(shorter, low), high)
    return Shape(3, (side, side), f"{seen}; median {heights}x{widths}; a photo's side is the "
                                  f"median shorter side held to {low}-{high}")
