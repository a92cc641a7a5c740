"""Ingest's per-input checks: one input (a file, or a range of an array source) -> a
Record for the examples, or a quarantine entry with a reason.

Each input is checked once (full decode with Pillow); valid images in unusual modes
are converted to PNG, bad ones become a quarantine entry. Splits come from the source
when it names them, else from a hash of the content, so identical images always share
a split. Array sources (built-in, NPZ, IDX) hold known-good pixels and skip decoding.
Module-level functions: the Beam pipeline (`components.data.ingest_graph`) calls them on
its workers.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

from components import features
from components.data import neardup, sources
from components.data.imaging import BadImage, check_image, content_id, pixels_over


class Record(NamedTuple):
    id: str
    split: str
    label: str
    example: bytes
    height: int
    width: int
    channels: int
    format: str
    converted: bool
    rotated: bool       # turned upright by its EXIF orientation
    source: str         # the input's path (names it in a quarantine entry decided later)
    thumbnail: bytes
    brightness: float
    contrast: float



def hash_split(record_id: str, eval_fraction: float) -> str:
    """Deterministic split from the content hash: same image, same split, everywhere."""
    return "eval" if int(record_id[:8], 16) / 2 ** 32 < eval_fraction else "train"


def check_input(path: str, data: bytes | None, label: str | None, split: str | None,
                read_error: str | None, *, max_pixels: int, classes: frozenset[str] | None,
                eval_fraction: float, extensions: frozenset[str] | None = None
                ) -> tuple[Record, Any] | dict[str, str]:
    """One input -> (a Record without its pixel statistics, its grayscale pixels), or a
    quarantine entry {path, label, reason}. Files whose extension is not in
    `extensions` are quarantined (listed, never silently skipped)."""
    def bad(reason: str) -> dict[str, str]:
        # as text: a name that is not UTF-8 must still travel through Beam and be listed
        return {"path": sources.text(path), "label": sources.text(label or ""),
                "reason": sources.text(reason)}

    if read_error:
        return bad(read_error)
    if extensions is not None:
        extension = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
        if extension not in extensions:
            return bad(f"file extension {extension or '(none)'!r} is not in ingest.extensions")
    if label is None:
        return bad("file is not inside a class folder (ROOT/CLASS/file)")
    if classes is not None and label not in classes:
        return bad(f"label {label!r} is not in data.classes")
    try:
        image = check_image(data or b"", max_pixels)
    except BadImage as exc:
        return bad(str(exc))
    record_id = content_id(data or b"")
    split = split or hash_split(record_id, eval_fraction)
    example = features.encode_example({
        features.IMAGE: image.data, features.FORMAT: image.format, features.LABEL: label,
        features.HEIGHT: image.height, features.WIDTH: image.width,
        features.CHANNELS: image.channels, features.ID: record_id, features.SOURCE: path,
    })
    return Record(record_id, split, label, example, image.height, image.width, image.channels,
                  image.original_format.lower() + ("->png" if image.converted else ""),
                  image.converted, image.rotated, path, b"", 0.0, 0.0), image.gray


def with_statistics(checked: list[tuple[Record, Any]]) -> list[Record]:
    """Records with their thumbnails, brightness and contrast, computed for the batch."""
    described = neardup.describe_each([gray for _, gray in checked])
    # built positionally: NamedTuple._replace costs more than the statistics here
    return [Record(*record[:-3], thumb, brightness, contrast)
            for (record, _), (thumb, brightness, contrast) in zip(checked, described)]


def process_input(*args: Any, **kwargs: Any) -> Record | dict[str, str]:
    """One input -> a Record, or a quarantine entry (`check_input`'s arguments)."""
    out = check_input(*args, **kwargs)
    return out if isinstance(out, dict) else with_statistics([out])[0]


def _fast_arrays(arrays: Any) -> bool:
    """Grayscale or RGB uint8 arrays take the vectorized path (others: per image)."""
    images = arrays.images
    return images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))


def process_arrays(unit: sources.WorkUnit, arrays: Any, *, max_pixels: int,
                   classes: frozenset[str] | None, eval_fraction: float
                   ) -> Iterator[Record | dict[str, str]]:
    """A work unit of an array source (built-in, NPZ, IDX): the images are known-good
    pixels, so nothing is decoded: each is encoded to PNG once, and the statistics ingest
    keeps (brightness, contrast, the 16x16 thumbnail) come from the pixels, the first
    two for the whole unit at once. The same Record as `process_input` would make from
    the PNG."""
    import numpy as np

    from components.data import datasets

    images = arrays.images[unit.start:unit.stop]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 4:     # RGB: Pillow's own conversion to L, so thumbnails agree
        wide = images.astype(np.uint32)
        gray = ((wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 0x8000)
                >> 16).astype(np.uint8)
    else:
        gray = images
    height, width = images.shape[1:3]
    channels = 3 if images.ndim == 4 else 1
    thumbs, brightness, contrast = neardup.describe(gray)
    for offset in range(len(images)):
        index = unit.start + offset
        path = str(arrays.names[index])
        label = str(arrays.labels[index])
        if classes is not None and label not in classes:
            yield {"path": path, "label": label,
                   "reason": f"label {label!r} is not in data.classes"}
            continue
        too_large = pixels_over(width, height, max_pixels)
        if too_large:
            yield {"path": path, "label": label, "reason": too_large}
            continue
        png = datasets.encode_png(images[offset])
        record_id = content_id(png)
        given = None if arrays.splits is None else (str(arrays.splits[index]) or None)
        split = given or hash_split(record_id, eval_fraction)
        example = features.encode_example({
            features.IMAGE: png, features.FORMAT: "png", features.LABEL: label,
            features.HEIGHT: int(height), features.WIDTH: int(width),
            features.CHANNELS: channels, features.ID: record_id, features.SOURCE: path})
        yield Record(record_id, split, label, example, int(height), int(width), channels,
                     "png", False, False, path, thumbs[offset], float(brightness[offset]),
                     float(contrast[offset]))

