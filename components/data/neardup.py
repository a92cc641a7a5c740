"""Near-duplicate images, decided in pixel space at a common resolution.

Every image gets a 16x16 grayscale thumbnail (box-filtered, 256 bytes). Two images
are near-duplicates when the RMS difference of their thumbnails is at most
`max_rms` (0-255 scale). Measured on this project's data (2026-11-23, 16x16):
a JPEG quality-75 re-encode sits at RMS <= 5.3 from its original on Fashion-MNIST and
<= 0.7 on 100x100 photos, while the nearest *distinct* image is at RMS >= 7.9 for
99.9% of Fashion-MNIST's test images (>= 10.7 for the photos, >= 21 for scikit-learn's
digits). A 64-bit difference hash cannot make this call: 2 bits apart flags 45-85% of
healthy eval images, and a JPEG copy of a small image can be 10 bits apart.

The search is exact: thumbnails are projected on their top principal components
(an orthogonal projection never increases a distance), a k-d tree finds every
candidate within the threshold there, and each candidate is confirmed on the full
thumbnail. No candidate within the threshold is missed.
"""

from __future__ import annotations

import functools

import numpy as np

THUMBNAIL_SIZE = 16
THUMBNAIL_BYTES = THUMBNAIL_SIZE * THUMBNAIL_SIZE
_PROJECTED_DIMS = 16
_CONFIRM_CHUNK = 64


@functools.lru_cache(maxsize=256)
def _box_weights(size: int) -> np.ndarray:
    """[THUMBNAIL_SIZE, size]: Pillow's BOX resampling as a matrix (its coefficients:
    the input pixels whose centres fall in an output pixel's window, equally weighted)."""
    scale = size / THUMBNAIL_SIZE
    support = 0.5 * max(scale, 1.0)
    filter_scale = max(scale, 1.0)
    weights = np.zeros((THUMBNAIL_SIZE, size))
    for out in range(THUMBNAIL_SIZE):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), size)
        for pixel in range(first, last):
            t = (pixel - center + 0.5) / filter_scale
            weights[out, pixel] = 1.0 if -0.5 < t <= 0.5 else 0.0
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    weights.setflags(write=False)     # cached: shared by every caller
    return weights


_BATCH_PIXELS = 1 << 22     # images described at once: at most 16 MB as float32


def describe(gray: np.ndarray) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """For grayscale uint8 images of one size [n, H, W]: their thumbnails (as Pillow's
    BOX resize makes them, up to 1 level of 255 for rounding), brightness (mean gray
    level, 0-1) and contrast (standard deviation of gray levels, 0-1). Vectorized over
    the batch (per-image overhead dominates small images), in bounded chunks."""
    count, height, width = gray.shape
    rows = _box_weights(height)
    cols_t = _box_weights(width).T
    step = max(1, _BATCH_PIXELS // max(1, height * width))
    thumbs: list[bytes] = []
    brightness = np.empty(count)
    contrast = np.empty(count)
    for start in range(0, count, step):
        pixels = gray[start:start + step].astype(np.float32)
        small = np.clip(np.rint(rows @ pixels @ cols_t), 0, 255).astype(np.uint8)
        flat = small.tobytes()
        thumbs += [flat[k:k + THUMBNAIL_BYTES] for k in range(0, len(flat), THUMBNAIL_BYTES)]
        flat_pixels = pixels.reshape(len(pixels), -1)
        brightness[start:start + step] = flat_pixels.mean(axis=1, dtype=np.float64) / 255.0
        contrast[start:start + step] = flat_pixels.std(axis=1, dtype=np.float64) / 255.0
    return thumbs, brightness, contrast


def describe_each(grays: list[np.ndarray]) -> list[tuple[bytes, float, float]]:
    """(thumbnail, brightness, contrast) of each grayscale image [H, W], in order;
    images of one size are described together."""
    out: list[tuple[bytes, float, float]] = [(b"", 0.0, 0.0)] * len(grays)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, gray in enumerate(grays):
        by_shape.setdefault(gray.shape, []).append(index)
    for indices in by_shape.values():
        thumbs, brightness, contrast = describe(np.stack([grays[i] for i in indices]))
        for k, index in enumerate(indices):
            out[index] = (thumbs[k], float(brightness[k]), float(contrast[k]))
    return out


def as_array(thumbnails: list[bytes]) -> np.ndarray:
    """Thumbnails (bytes) -> uint8 [n, 256]."""
    if not thumbnails:
        return np.zeros((0, THUMBNAIL_BYTES), np.uint8)
    return np.frombuffer(b"".join(thumbnails), np.uint8).reshape(len(thumbnails), THUMBNAIL_BYTES)


def _projection(*sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, basis [256, k]) of the principal components of a sample of the rows."""
    rng = np.random.default_rng(0)
    sample = np.concatenate([s[rng.choice(len(s), min(len(s), 4000), replace=False)]
                             for s in sets if len(s)]).astype(np.float32)
    mean = sample.mean(axis=0)
    centered = sample - mean
    # eigenvectors of the 256x256 covariance: the SVD's basis, for a fraction of its cost
    values, vectors = np.linalg.eigh(centered.T @ centered)
    return mean, vectors[:, np.argsort(values)[::-1][:_PROJECTED_DIMS]]


def _project(rows: np.ndarray, mean: np.ndarray, basis: np.ndarray,
             chunk: int = 16384) -> np.ndarray:
    """Rows in the projection, a chunk at a time: never a float copy of all rows (4x
    the thumbnails' bytes: 1 GB at 1 million images)."""
    out = np.empty((len(rows), basis.shape[1]), np.float32)
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = (rows[start:start + chunk].astype(np.float32) - mean) @ basis
    return out


def matches(query: np.ndarray, reference: np.ndarray, max_rms: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """For each query row: the index of a reference row within `max_rms` (the nearest
    in the projection that confirms), or -1, and its RMS (inf when none)."""
    found = np.full(len(query), -1, np.int64)
    rms = np.full(len(query), np.inf)
    if len(query) == 0 or len(reference) == 0:
        return found, rms
    from scipy.spatial import cKDTree

    mean, basis = _projection(query, reference)
    ref_projected = _project(reference, mean, basis)
    query_projected = _project(query, mean, basis)
    radius = max_rms * np.sqrt(THUMBNAIL_BYTES)
    candidates = cKDTree(ref_projected).query_ball_point(query_projected, r=radius + 1e-3)
    for i, cand in enumerate(candidates):
        if not cand:
            continue
        cand = np.asarray(cand)
        # closest in the projection first: the first chunk usually confirms
        order = np.argsort(((ref_projected[cand] - query_projected[i]) ** 2).sum(axis=1))
        row = query[i].astype(np.float32)
        for start in range(0, len(order), _CONFIRM_CHUNK):
            chunk = cand[order[start:start + _CONFIRM_CHUNK]]
            dist = np.sqrt(((reference[chunk].astype(np.float32) - row) ** 2).mean(axis=1))
            best = int(dist.argmin())
            if dist[best] <= max_rms:
                found[i], rms[i] = chunk[best], dist[best]
                break
    return found, rms


def eval_to_move(train: np.ndarray, eval_: np.ndarray, max_rms: float) -> np.ndarray:
    """Which eval rows join train so that no eval image has a near-duplicate in train:
    those with a near-duplicate in train, and, transitively, eval images that are
    near-duplicates of those (a boolean mask over `eval_`)."""
    move = matches(eval_, train, max_rms)[0] >= 0
    if not move.any() or move.all():
        return move
    while True:
        staying = np.flatnonzero(~move)
        moving = eval_[move]
        joined = matches(eval_[staying], moving, max_rms)[0] >= 0
        if not joined.any():
            return move
        move[staying[joined]] = True
