"""TFRecord files written without TensorFlow: the framing is a little-endian length,
its masked CRC-32C, the record, and the record's masked CRC-32C (as TensorFlow's
record writer does), GZIP-compressed as a whole. Ingest writes one file per work unit
this way, from the worker that made the records (Beam's per-element sink hop cost
more than all of ingest's own work on small images)."""

from __future__ import annotations

import gzip
import struct
from typing import Iterable

import google_crc32c

from components.io import fileio

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF)


def frame(records: Iterable[bytes]) -> bytes:
    """The TFRecord bytes of `records`, uncompressed."""
    parts = []
    for record in records:
        length = struct.pack("<Q", len(record))
        parts += (length, _masked_crc(length), record, _masked_crc(record))
    return b"".join(parts)


def write_gzip(path: str, records: Iterable[bytes], level: int = 1) -> None:
    """A GZIP TFRecord file at `path` (local or gs://), written in one piece."""
    fileio.write_bytes(path, gzip.compress(frame(records), compresslevel=level))
