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

import numpy as np

THUMBNAIL_SIZE = 16
THUMBNAIL_BYTES = THUMBNAIL_SIZE * THUMBNAIL_SIZE
_PROJECTED_DIMS = 16
_CONFIRM_CHUNK = 64


def thumbnail(gray) -> bytes:
    """The 16x16 box-filtered thumbnail of a grayscale PIL image, as 256 bytes."""
    from PIL import Image

    return gray.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX).tobytes()


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
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    return mean, vt[:_PROJECTED_DIMS].T


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
    ref_projected = (reference.astype(np.float32) - mean) @ basis
    query_projected = (query.astype(np.float32) - mean) @ basis
    radius = max_rms * np.sqrt(THUMBNAIL_BYTES)
    candidates = cKDTree(ref_projected).query_ball_point(query_projected, r=radius + 1e-3)
    reference_f = reference.astype(np.float32)
    for i, cand in enumerate(candidates):
        if not cand:
            continue
        cand = np.asarray(cand)
        # closest in the projection first: the first chunk usually confirms
        order = np.argsort(((ref_projected[cand] - query_projected[i]) ** 2).sum(axis=1))
        row = query[i].astype(np.float32)
        for start in range(0, len(order), _CONFIRM_CHUNK):
            chunk = cand[order[start:start + _CONFIRM_CHUNK]]
            dist = np.sqrt(((reference_f[chunk] - row) ** 2).mean(axis=1))
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
