"""Ingest's Beam pipeline: checks every input per work unit, decides what needs the
whole dataset from the thumbnails alone, writes GZIP TFRecord shards and merges their
statistics.

An eval image identical to a train image is dropped from eval (given splits) or, for
hash splits, an eval image near-duplicate of a train image moves to train; both are
counted (no leak). Copies of one image (same content hash) with different labels, in
any splits, are all quarantined ("label conflict: cat vs dog"): neither label can be
trusted, and the model must not learn both. Statistics are computed in the same Beam
pipeline. Every function here is module-level: Beam pickles them by reference.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Iterator, NamedTuple

import numpy as np

from components import artifacts
from components.io import fileio
from components.data import neardup, sources
from components.config.data import DataConfig
from components.config.ingest import IngestConfig
from components.data.ingest_checks import (Record, _fast_arrays, check_input, process_arrays,
                                      with_statistics)
from components.data.ingest_stats import _add, _empty_stats, _merge, reason_kind


# grayscale pixels held for one batch of statistics (large photos: described a few at a time)
_PENDING_PIXELS = 1 << 24


def process_unit(unit: sources.WorkUnit, *, data: DataConfig, ingest: IngestConfig
                 ) -> Iterator[Any]:
    """Reads and checks every input of a work unit: one (split, [Record]) shard per
    split (train shards as the main output, eval shards tagged "eval"), and a tagged
    quarantine entry per bad input. Array sources are decoded once per process
    (`sources.load_arrays` keeps the last one)."""
    from apache_beam import pvalue

    classes = frozenset(data.classes) if data.classes else None
    extensions = frozenset(e.lower().lstrip(".") for e in ingest.extensions)
    arrays = None if unit.listing else sources.load_arrays(unit.source)
    by_split: dict[str, list[Record]] = {}
    items = sources.iter_unit(unit, arrays)
    if arrays is not None and _fast_arrays(arrays):
        items = []
        for out in process_arrays(unit, arrays, max_pixels=ingest.max_pixels, classes=classes,
                                  eval_fraction=data.eval_fraction):
            if isinstance(out, Record):
                by_split.setdefault(out.split, []).append(out)
            else:
                yield pvalue.TaggedOutput("quarantine", out)
    pending: list[tuple[Record, Any]] = []
    pending_pixels = 0
    for item in items:
        out = check_input(*item, max_pixels=ingest.max_pixels, classes=classes,
                          eval_fraction=data.eval_fraction,
                          extensions=extensions if unit.listing else None)
        if isinstance(out, dict):
            yield pvalue.TaggedOutput("quarantine", out)
            continue
        pending.append(out)
        pending_pixels += out[1].size
        if pending_pixels > _PENDING_PIXELS:
            for record in with_statistics(pending):
                by_split.setdefault(record.split, []).append(record)
            pending, pending_pixels = [], 0
    for record in with_statistics(pending):
        by_split.setdefault(record.split, []).append(record)
    for split, records in sorted(by_split.items()):
        # Apart from the start: only eval shards wait for the whole dataset's decision,
        # so only they are held between stages (the runner keeps a stage's input).
        yield (split, records) if split == "train" else pvalue.TaggedOutput("eval",
                                                                            (split, records))


def shard_stats(shard: tuple[str, list[Record]]) -> dict[str, Any]:
    acc = _empty_stats()
    for record in shard[1]:
        _add(acc, record)
    return acc


def thumbnail_rows(shard: tuple[str, list[Record]]) -> tuple[str, str, str, bytes]:
    """A shard's (split, ids joined by newlines, labels joined by newlines, thumbnails
    joined): four objects, not four per image (Beam's runner sizes side inputs by
    walking every object). A label holds no newline (`sources.check_label`)."""
    split, records = shard
    return (split, "\n".join(r.id for r in records), "\n".join(r.label for r in records),
            b"".join(r.thumbnail for r in records))


class Decision(NamedTuple):
    """What needs every image at once: eval images that move to train (near-duplicates
    of train, hash splits) or are dropped (copies of train images, given splits), and
    the repeated images per final split; and images whose copies carry different labels
    (id -> quarantine reason), every copy quarantined."""
    moved: frozenset[str]
    dropped: frozenset[str]
    duplicates: dict[str, int]
    conflicts: dict[str, str]


def decide(shards: list[tuple[str, str, str, bytes]], splits_given: bool, max_rms: float,
           thumbnails_path: str) -> Decision:
    """The Decision, from every shard's `thumbnail_rows`; writes thumbnails.tsv with the
    final splits (validation's leak check reads it). Holds 256 bytes and an id per
    image: the only step that sees the whole dataset."""
    ids: list[str] = []
    splits: list[str] = []
    labels_of: dict[str, set[str]] = {}
    for split, shard_ids, shard_labels, _ in shards:
        names = shard_ids.split("\n") if shard_ids else []
        ids += names
        splits += [split] * len(names)
        for i, label in zip(names, shard_labels.split("\n") if shard_ids else []):
            labels_of.setdefault(i, set()).add(label)
    conflicts = {i: "label conflict: " + " vs ".join(sorted(labels))
                 for i, labels in labels_of.items() if len(labels) > 1}
    del labels_of
    thumbs = np.frombuffer(b"".join(t for *_, t in shards), np.uint8
                           ).reshape(-1, neardup.THUMBNAIL_BYTES)
    order = sorted(range(len(ids)), key=lambda k: (ids[k], splits[k]))  # any bundle order
    ids = [ids[k] for k in order]
    splits = [splits[k] for k in order]
    thumbs = thumbs[order] if len(order) else thumbs
    if conflicts:     # quarantined: neither kept, dropped, moved nor a reference to move
        rows = [k for k in range(len(ids)) if ids[k] not in conflicts]
        ids, splits = [ids[k] for k in rows], [splits[k] for k in rows]
        thumbs = thumbs[rows] if rows else thumbs[:0]
    moved: frozenset[str] = frozenset()
    dropped: frozenset[str] = frozenset()
    is_eval = np.array([split == "eval" for split in splits], bool)
    if splits_given:
        train_ids = {i for i, split in zip(ids, splits) if split == "train"}
        dropped = frozenset(i for i, split in zip(ids, splits)
                            if split == "eval" and i in train_ids)
    else:
        eval_rows = np.flatnonzero(is_eval)
        move = neardup.eval_to_move(thumbs[~is_eval], thumbs[eval_rows], max_rms)
        moved = frozenset(ids[k] for k in eval_rows[move])
    keep = [k for k in range(len(ids)) if not (splits[k] == "eval" and ids[k] in dropped)]
    final = [(ids[k], "train" if ids[k] in moved else splits[k]) for k in keep]
    seen: dict[tuple[str, str], int] = {}
    for i, split in final:
        seen[split, i] = seen.get((split, i), 0) + 1
    duplicates: dict[str, int] = {}
    for (split, _), n in seen.items():
        duplicates[split] = duplicates.get(split, 0) + n - 1
    with fileio.open_file(thumbnails_path, "w") as out:     # streamed: a line per image
        for start in range(0, len(final), 8192):
            out.write("".join(
                f"{i}\t{split}\t{base64.b64encode(thumbs[k].tobytes()).decode()}\n"
                for k, (i, split) in zip(keep[start:start + 8192], final[start:start + 8192])))
    return Decision(moved, dropped, duplicates, conflicts)


def _conflict_entry(record: Record, decision: Decision) -> dict[str, str]:
    """A quarantine entry for a copy of an image whose copies' labels disagree; `_id`
    groups the copies for the summary (`finish` removes it)."""
    return {"path": sources.text(record.source), "label": record.label,
            "reason": decision.conflicts[record.id], "_id": record.id}


def route_eval(shard: tuple[str, list[Record]], decision: Decision) -> Iterator[Any]:
    """An eval shard without its dropped images; its moved images go to train (tagged
    "moved")."""
    from apache_beam import pvalue

    split, records = shard
    if not decision.moved and not decision.dropped and not decision.conflicts:
        yield shard
        return
    for record in records:
        if record.id in decision.conflicts:
            yield pvalue.TaggedOutput("quarantine", _conflict_entry(record, decision))
    staying = [r for r in records if r.id not in decision.moved and r.id not in decision.dropped
               and r.id not in decision.conflicts]
    going = [r._replace(split="train") for r in records
             if r.id in decision.moved and r.id not in decision.conflicts]
    if going:
        yield pvalue.TaggedOutput("moved", ("train", going))
    yield split, staying



def finish(stats: dict[str, Any], decision: Decision, quarantine: list[dict[str, str]],
           stats_dir: str) -> None:
    """Writes quarantine.jsonl and partial_stats.json (summarized after the pipeline)."""
    conflicts: dict[str, list[dict[str, str]]] = {}
    for entry in quarantine:
        if "_id" in entry:
            conflicts.setdefault(entry["_id"], []).append(entry)
    quarantine = sorted(({k: v for k, v in q.items() if k != "_id"} for q in quarantine),
                        key=lambda q: (q["path"], q["reason"]))
    fileio.write_text(fileio.join(stats_dir, artifacts.ExampleStatistics.QUARANTINE),
                      "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine))
    reasons: dict[str, int] = {}
    for entry in quarantine:
        kind = reason_kind(entry)
        reasons[kind] = reasons.get(kind, 0) + 1
    fileio.write_text(fileio.join(stats_dir, artifacts.ExampleStatistics.PARTIAL), json.dumps(dict(
        stats, duplicates=decision.duplicates, quarantine_reasons=reasons,
        eval_dropped_as_train_duplicates=len(decision.dropped),
        eval_moved_to_train_near_duplicates=len(decision.moved),
        label_conflicts={
            "images": len(conflicts), "records": sum(len(c) for c in conflicts.values()),
            "examples": [sorted([q["path"], q["label"]] for q in conflicts[i])
                         for i in sorted(conflicts)[:3]]}), sort_keys=True))


def write_shard(shard: tuple[str, list[Record]], examples_dir: str, prefix: str
                ) -> tuple[str, list[Record]]:
    """Writes a shard's examples as one GZIP TFRecord file of its split, named by the
    hash of its record ids (a retried bundle writes the same file again), and passes
    the records on without their example bytes (the statistics do not need them)."""
    from components.io import tfrecord

    split, records = shard
    if not records:
        return shard
    tfrecord.write_gzip(_shard_path(examples_dir, split, prefix, records),
                        [r.example for r in records])
    return split, [r._replace(example=b"") for r in records]


def _shard_path(examples_dir: str, split: str, prefix: str, records: list[Record]) -> str:
    name = hashlib.sha256("".join(r.id for r in records).encode()).hexdigest()[:16]
    return fileio.join(examples_dir, split, f"{prefix}-{name}.tfrecord.gz")


def _read_frames(data: bytes) -> list[bytes]:
    """The records of uncompressed TFRecord bytes (as `tfrecord.frame` writes them)."""
    import struct

    out, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        out.append(data[at + 12:at + 12 + length])
        at += 12 + length + 4
    return out


def drop_conflicts(shard: tuple[str, list[Record]], decision: Decision, examples_dir: str,
                   prefix: str) -> Iterator[Any]:
    """A written train shard without the copies of images whose labels conflict: its
    file is rewritten without them (train shards are written before the decision, so
    they never wait for the whole dataset), and each is tagged "quarantine". Safe to
    retry: the new file is written before the old one is removed."""
    import gzip

    from apache_beam import pvalue

    from components.io import tfrecord

    split, records = shard
    if not decision.conflicts or not any(r.id in decision.conflicts for r in records):
        yield shard
        return
    keep = [k for k, r in enumerate(records) if r.id not in decision.conflicts]
    for record in records:
        if record.id in decision.conflicts:
            yield pvalue.TaggedOutput("quarantine", _conflict_entry(record, decision))
    kept = [records[k] for k in keep]
    old = _shard_path(examples_dir, split, prefix, records)
    if fileio.exists(old):       # else a retry after the rewrite
        if kept:
            examples = _read_frames(gzip.decompress(fileio.read_bytes(old)))
            tfrecord.write_gzip(_shard_path(examples_dir, split, prefix, kept),
                                [examples[k] for k in keep])
        fileio.rmtree(old)
    yield split, kept


def _build_pipeline(pipeline: Any, units: list[sources.WorkUnit], splits_given: bool,
                    data: DataConfig, ingest: IngestConfig, examples_dir: str, stats_dir: str,
                    parallel: bool) -> None:
    """Check every input (per work unit), decide what needs the whole dataset (moves,
    drops, repeats) from the thumbnails alone, route eval shards by that decision, write
    each shard from the worker that holds it, and merge per-shard statistics. Records
    travel in per-unit, per-split batches: Beam's per-element cost is paid per shard.
    Train shards never wait: only eval shards wait for the decision; a written train
    shard holding a copy of a conflicting-label image is rewritten without it after."""
    import apache_beam as beam

    checked = (pipeline
               | "Units" >> beam.Create(units, reshuffle=parallel and len(units) > 1)
               | "Check" >> beam.FlatMap(process_unit, data=data, ingest=ingest)
               .with_outputs("quarantine", "eval", main="train"))
    decision = beam.pvalue.AsSingleton(
        [checked.train | "TrainThumbnails" >> beam.Map(thumbnail_rows),
         checked.eval | "EvalThumbnails" >> beam.Map(thumbnail_rows)]
        | "Thumbnails" >> beam.Flatten()
        | "AllThumbnails" >> beam.combiners.ToList()
        | "Decide" >> beam.Map(decide, splits_given, ingest.near_duplicate_rms,
                               fileio.join(stats_dir, artifacts.ExampleStatistics.THUMBNAILS)))
    routed = (checked.eval
              | "Route" >> beam.FlatMap(route_eval, decision).with_outputs(
                  "moved", "quarantine", main="eval"))
    final = {("train", "part"): checked.train, ("eval", "part"): routed.eval,
             ("train", "moved"): routed.moved}
    written = {key: parts | f"Write{key[0]}{key[1]}" >> beam.Map(write_shard, examples_dir,
                                                                  key[1])
               for key, parts in final.items()}
    # train shards are written before the decision: label conflicts are removed after
    train = (written["train", "part"]
             | "DropConflicts" >> beam.FlatMap(drop_conflicts, decision, examples_dir, "part")
             .with_outputs("quarantine", main="train"))
    written["train", "part"] = train.train
    stats = [parts | f"Stats{split}{prefix}" >> beam.Map(shard_stats)
             for (split, prefix), parts in written.items()]
    quarantined = ([checked.quarantine, routed.quarantine, train.quarantine]
                   | "Quarantined" >> beam.Flatten())
    (stats
     | "AllStats" >> beam.Flatten()
     | "MergeStats" >> beam.CombineGlobally(_merge)
     | "Finish" >> beam.Map(finish, decision,
                            beam.pvalue.AsSingleton(quarantined
                                                    | "AllQuarantined" >> beam.combiners.ToList()),
                            stats_dir))
