"""Ingest's statistics: a per-shard accumulator of Records (counts, sizes, formats,
pixel sums, an order-independent content digest), merged in the Beam pipeline, and the
final summary the step writes as the Statistics artifact.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

from components.artifacts import SPLITS
from components.data.ingest_checks import Record


def _empty_stats() -> dict[str, Any]:
    return {"counts": {}, "sizes": {}, "channels": {}, "formats": {}, "converted": 0,
            "rotated": 0, "pixels": {}, "digest": {}}


def _add(acc: dict[str, Any], record: Record) -> dict[str, Any]:
    counts = acc["counts"].setdefault(record.split, {})
    counts[record.label] = counts.get(record.label, 0) + 1
    size = f"{record.height}x{record.width}"
    acc["sizes"][size] = acc["sizes"].get(size, 0) + 1
    acc["channels"][str(record.channels)] = acc["channels"].get(str(record.channels), 0) + 1
    acc["formats"][record.format] = acc["formats"].get(record.format, 0) + 1
    acc["converted"] += int(record.converted)
    acc["rotated"] += int(record.rotated)
    key = f"{record.split}/{record.label}"
    sums = acc["pixels"].setdefault(key, [0.0, 0.0, 0.0])
    sums[0] += record.brightness
    sums[1] += record.brightness ** 2
    sums[2] += record.contrast
    # Order-independent content digest: the same records in any shard order agree.
    item = hashlib.sha256(f"{record.id}|{record.split}|{record.label}".encode()).digest()
    acc["digest"][record.split] = (acc["digest"].get(record.split, 0)
                                   + int.from_bytes(item[:8], "big")) % 2 ** 64
    return acc


def _merge(accs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out = _empty_stats()
    for acc in accs:
        for split, counts in acc["counts"].items():
            target = out["counts"].setdefault(split, {})
            for label, n in counts.items():
                target[label] = target.get(label, 0) + n
        for field in ("sizes", "channels", "formats"):
            for key, n in acc[field].items():
                out[field][key] = out[field].get(key, 0) + n
        out["converted"] += acc["converted"]
        out["rotated"] += acc["rotated"]
        for key, sums in acc["pixels"].items():
            target = out["pixels"].setdefault(key, [0.0, 0.0, 0.0])
            for i in range(3):
                target[i] += sums[i]
        for split, value in acc["digest"].items():
            out["digest"][split] = (out["digest"].get(split, 0) + value) % 2 ** 64
    return out



def _summarize(raw: dict[str, Any], num_inputs: int, near_duplicate_rms: float
               ) -> dict[str, Any]:
    """Final statistics: counts per split and class, pixel stats per class, totals."""
    counts = {split: dict(sorted(raw["counts"].get(split, {}).items())) for split in SPLITS}
    pixels = {}
    for key, (total, total_sq, contrast) in sorted(raw["pixels"].items()):
        split, label = key.split("/", 1)
        n = counts[split][label]
        mean = total / n
        pixels.setdefault(split, {})[label] = {
            "brightness_mean": mean,
            "brightness_std": max(total_sq / n - mean * mean, 0.0) ** 0.5,
            "contrast_mean": contrast / n,
        }
    num_examples = sum(sum(c.values()) for c in counts.values())
    num_quarantined = sum(raw["quarantine_reasons"].values())
    return {
        "num_inputs": num_inputs,
        "num_examples": num_examples,
        "num_quarantined": num_quarantined,
        "bad_fraction": num_quarantined / num_inputs if num_inputs else 0.0,
        "counts": counts,
        "class_names": sorted({label for c in counts.values() for label in c}),
        "sizes": dict(sorted(raw["sizes"].items(), key=lambda kv: -kv[1])),
        "channels": raw["channels"],
        "formats": raw["formats"],
        "converted": raw["converted"],
        "exif_rotated": raw["rotated"],
        "duplicates": {split: raw["duplicates"].get(split, 0) for split in SPLITS},
        "eval_dropped_as_train_duplicates": raw["eval_dropped_as_train_duplicates"],
        "eval_moved_to_train_near_duplicates": raw["eval_moved_to_train_near_duplicates"],
        "near_duplicate_rms": near_duplicate_rms,
        "quarantine_reasons": raw["quarantine_reasons"],
        "label_conflicts": raw["label_conflicts"],
        "pixels": pixels,
        "content_digest": {split: f"{raw['digest'].get(split, 0):016x}" for split in SPLITS},
    }


def reason_kind(entry: dict[str, str]) -> str:
    return entry["reason"].split(" (")[0].split(":")[0]
