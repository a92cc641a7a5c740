"""Ingest: reads images from a source into GZIP TFRecord splits with Apache Beam.

Each input is checked once (full decode with Pillow); valid images in unusual modes
are converted to PNG, bad ones go to `quarantine.jsonl` with a reason, and the step
fails only when the bad fraction exceeds `ingest.max_bad_fraction`. Splits come from
the source when it names them, else from a hash of the content, so identical images
always share a split; an eval image identical to a train image is dropped from eval
and counted (no leak). Statistics are computed in the same Beam pipeline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from typing import Any, Iterable, Iterator, NamedTuple

from components import artifacts, features, fileio, sources
from components.artifacts import SPLITS
from components.config import BeamConfig, DataConfig, IngestConfig
from components.contract import step
from components.errors import DataError
from components.imaging import BadImage, check_image, content_id


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
    thumbnail: bytes
    brightness: float
    contrast: float


def external_inputs(data: DataConfig, ingest: IngestConfig) -> dict[str, str]:
    """The source's content fingerprint: ingest reads files the DAG does not produce."""
    return {"source": sources.fingerprint(sources.resolve(data), ingest)}


def hash_split(record_id: str, eval_fraction: float) -> str:
    """Deterministic split from the content hash: same image, same split, everywhere."""
    return "eval" if int(record_id[:8], 16) / 2 ** 32 < eval_fraction else "train"


def process_input(path: str, data: bytes | None, label: str | None, split: str | None,
                  read_error: str | None, *, max_pixels: int, classes: frozenset[str] | None,
                  eval_fraction: float, extensions: frozenset[str] | None = None
                  ) -> Record | dict[str, str]:
    """One input -> a Record, or a quarantine entry {path, label, reason}. Files whose
    extension is not in `extensions` are quarantined (listed, never silently skipped)."""
    def bad(reason: str) -> dict[str, str]:
        return {"path": path, "label": label or "", "reason": reason}

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
                  image.converted, image.thumbnail, image.brightness, image.contrast)


# --- statistics ----------------------------------------------------------------------


def _empty_stats() -> dict[str, Any]:
    return {"counts": {}, "sizes": {}, "channels": {}, "formats": {}, "converted": 0,
            "pixels": {}, "digest": {}}


def _add(acc: dict[str, Any], record: Record) -> dict[str, Any]:
    counts = acc["counts"].setdefault(record.split, {})
    counts[record.label] = counts.get(record.label, 0) + 1
    size = f"{record.height}x{record.width}"
    acc["sizes"][size] = acc["sizes"].get(size, 0) + 1
    acc["channels"][str(record.channels)] = acc["channels"].get(str(record.channels), 0) + 1
    acc["formats"][record.format] = acc["formats"].get(record.format, 0) + 1
    acc["converted"] += int(record.converted)
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
        for key, sums in acc["pixels"].items():
            target = out["pixels"].setdefault(key, [0.0, 0.0, 0.0])
            for i in range(3):
                target[i] += sums[i]
        for split, value in acc["digest"].items():
            out["digest"][split] = (out["digest"].get(split, 0) + value) % 2 ** 64
    return out


def _count_repeats(key_ids: tuple[str, Iterable[list[str]]]) -> tuple[str, int]:
    """(split, extra copies) for one id bucket: n identical images count n - 1."""
    (split, _), id_lists = key_ids
    seen: dict[str, int] = {}
    for ids in id_lists:
        for record_id in ids:
            seen[record_id] = seen.get(record_id, 0) + 1
    return split, sum(n - 1 for n in seen.values())


# --- the Beam pipeline: module-level functions (pickled by reference) ----------------


def process_unit(unit: sources.WorkUnit, *, data: DataConfig, ingest: IngestConfig
                 ) -> Iterator[Any]:
    """Reads and checks every input of a work unit: one (split, [Record]) shard per
    split, and a tagged quarantine entry per bad input. Array sources are decoded once
    per process (`sources.load_arrays` keeps the last one)."""
    from apache_beam import pvalue

    classes = frozenset(data.classes) if data.classes else None
    extensions = frozenset(e.lower().lstrip(".") for e in ingest.extensions)
    arrays = None if unit.files else sources.load_arrays(unit.source)
    by_split: dict[str, list[Record]] = {}
    for item in sources.iter_unit(unit, arrays):
        out = process_input(*item, max_pixels=ingest.max_pixels, classes=classes,
                            eval_fraction=data.eval_fraction,
                            extensions=extensions if unit.files else None)
        if isinstance(out, Record):
            by_split.setdefault(out.split, []).append(out)
        else:
            yield pvalue.TaggedOutput("quarantine", out)
    for split, records in sorted(by_split.items()):
        yield split, records


def shard_stats(shard: tuple[str, list[Record]]) -> dict[str, Any]:
    acc = _empty_stats()
    for record in shard[1]:
        _add(acc, record)
    return acc


def split_is(shard: tuple[str, list[Record]], split: str) -> bool:
    return shard[0] == split


def shard_ids(shard: tuple[str, list[Record]]) -> set[str]:
    return {record.id for record in shard[1]}


def union_ids(sets: Iterable[set[str]]) -> set[str]:
    return set().union(*sets)


def drop_train_copies(shard: tuple[str, list[Record]], train: set[str]) -> Iterator[Any]:
    """An eval shard without the images that are also in train (counted, tagged
    "dropped"): a given split may hold the same file twice."""
    from apache_beam import pvalue

    split, records = shard
    kept = [r for r in records if r.id not in train]
    if len(kept) < len(records):
        yield pvalue.TaggedOutput("dropped", len(records) - len(kept))
    yield split, kept


def thumbnail_row(shard: tuple[str, list[Record]]) -> list[tuple[str, str, bytes]]:
    return [(r.id, r.split, r.thumbnail) for r in shard[1]]


def eval_ids_to_move(rows: list[tuple[str, str, bytes]], max_rms: float) -> set[str]:
    """Eval images that join train so that no eval image has a near-duplicate in train
    (a hash split is then leak-free by construction)."""
    from components import neardup

    ordered = sorted(rows)                 # deterministic, whatever the bundle order
    train = [t for _, split, t in ordered if split == "train"]
    eval_rows = [(i, t) for i, split, t in ordered if split == "eval"]
    move = neardup.eval_to_move(neardup.as_array(train),
                                neardup.as_array([t for _, t in eval_rows]), max_rms)
    return {eval_rows[k][0] for k in map(int, move.nonzero()[0])}


def route_eval(shard: tuple[str, list[Record]], moved: set[str]) -> Iterator[Any]:
    """Eval records stay, or go to train (tagged "moved") when near-duplicates of train."""
    from apache_beam import pvalue

    split, records = shard
    staying = [r for r in records if r.id not in moved]
    going = [r._replace(split="train") for r in records if r.id in moved]
    if going:
        yield pvalue.TaggedOutput("moved", ("train", going))
    yield split, staying


def _id_buckets(shard: tuple[str, list[Record]]) -> Iterator[tuple[tuple[str, str], list[str]]]:
    """Ids grouped by (split, first hex digit): 16 groups per split to count repeats."""
    split, records = shard
    buckets: dict[str, list[str]] = {}
    for record in records:
        buckets.setdefault(record.id[0], []).append(record.id)
    for bucket, ids in buckets.items():
        yield (split, bucket), ids


def shard_examples(shard: tuple[str, list[Record]]) -> list[bytes]:
    return [r.example for r in shard[1]]


def thumbnail_lines(shard: tuple[str, list[Record]]) -> str:
    return "\n".join(f"{r.id}\t{r.split}\t{base64.b64encode(r.thumbnail).decode()}"
                     for r in shard[1])


def reason_kind(entry: dict[str, str]) -> str:
    return entry["reason"].split(" (")[0].split(":")[0]


def finish_stats(stats: dict[str, Any], duplicates: dict[str, int], reasons: dict[str, int],
                 dropped: int, moved: int) -> str:
    return json.dumps(dict(stats, duplicates=duplicates, quarantine_reasons=reasons,
                           eval_dropped_as_train_duplicates=dropped,
                           eval_moved_to_train_near_duplicates=moved), sort_keys=True)


def _check_inputs(pipeline: Any, plan: sources.Plan, data: DataConfig, ingest: IngestConfig,
                  parallel: bool) -> tuple[Any, Any]:
    """(shards, quarantine). Records travel in per-unit, per-split batches: Beam's
    per-element cost (~10 us a hop) is paid once per shard except on the way into the
    TFRecord sink."""
    import apache_beam as beam

    processed = (pipeline
                 | "Units" >> beam.Create(plan.units, reshuffle=parallel and len(plan.units) > 1)
                 | "Check" >> beam.FlatMap(process_unit, data=data, ingest=ingest)
                 .with_outputs("quarantine", main="shards"))
    return processed.shards, processed.quarantine


def _final_splits(pipeline: Any, shards: Any, splits_given: bool, ingest: IngestConfig
                  ) -> tuple[list[Any], Any, Any]:
    """([train shards, eval shards, moved shards], dropped count, moved count).

    Train shards go straight to their sink; only eval shards wait for a decision that
    needs every image: given splits drop eval copies of train images, a hash split
    moves eval images with a near-duplicate in train (and their own near-duplicates)
    to train. Memory: eval's examples and every image's 256-byte thumbnail."""
    import apache_beam as beam

    train = shards | "TrainShards" >> beam.Filter(split_is, "train")
    eval_ = shards | "EvalShards" >> beam.Filter(split_is, "eval")
    zero = pipeline | "Zero" >> beam.Create([0])
    if splits_given:
        train_ids = (train | "TrainIdSet" >> beam.Map(shard_ids)
                     | "UnionIds" >> beam.CombineGlobally(union_ids).without_defaults())
        checked = eval_ | "DropCopies" >> beam.FlatMap(
            drop_train_copies, train=beam.pvalue.AsSingleton(train_ids, default_value=set())
        ).with_outputs("dropped", main="eval")
        dropped = checked.dropped | "SumDropped" >> beam.CombineGlobally(sum)
        return [train, checked.eval], dropped, zero
    to_move = (shards
               | "Thumbnails" >> beam.FlatMap(thumbnail_row)
               | "AllThumbnails" >> beam.combiners.ToList()
               | "NearDuplicates" >> beam.Map(eval_ids_to_move, ingest.near_duplicate_rms))
    routed = eval_ | "Route" >> beam.FlatMap(
        route_eval, moved=beam.pvalue.AsSingleton(to_move)).with_outputs("moved", main="eval")
    return [train, routed.eval, routed.moved], zero, to_move | "MovedCount" >> beam.Map(len)


def _write_examples(final: list[Any], examples_dir: str, ingest: IngestConfig) -> None:
    import apache_beam as beam

    gzip = beam.io.filesystem.CompressionTypes.GZIP
    for (split, prefix), shards in zip((("train", "part"), ("eval", "part"), ("train", "moved")),
                                       final):   # no "moved" shards when splits are given
        (shards
         | f"Examples{split}{prefix}" >> beam.FlatMap(shard_examples)
         | f"Write{split}{prefix}" >> beam.io.WriteToTFRecord(
             fileio.join(examples_dir, split, prefix), file_name_suffix=".tfrecord.gz",
             num_shards=ingest.num_shards if prefix == "part" else 1, compression_type=gzip))


def _write_statistics(final: list[Any], quarantine: Any, dropped: Any, moved: Any,
                      stats_dir: str) -> None:
    """partial_stats.json (summarized after the pipeline), quarantine.jsonl and
    thumbnails.tsv, all of the final splits. Every branch is reduced to small values
    before the branches meet, so no example bytes wait in a buffer."""
    import apache_beam as beam

    def over_final(label: str, fn: Any, transform: Any = beam.FlatMap) -> Any:
        parts = [shards | f"{label}{i}" >> transform(fn) for i, shards in enumerate(final)]
        return parts | f"{label}All" >> beam.Flatten()

    duplicates = (over_final("IdBuckets", _id_buckets)
                  | "GroupBuckets" >> beam.GroupByKey()
                  | "Repeats" >> beam.Map(_count_repeats)
                  | "PerSplit" >> beam.CombinePerKey(sum)
                  | "DupDict" >> beam.combiners.ToDict())
    reasons = (quarantine
               | "ReasonKind" >> beam.Map(reason_kind)
               | "ReasonCount" >> beam.combiners.Count.PerElement()
               | "ReasonDict" >> beam.combiners.ToDict())
    (over_final("ShardStats", shard_stats, beam.Map)
     | "Stats" >> beam.CombineGlobally(_merge)
     | "Finish" >> beam.Map(finish_stats, beam.pvalue.AsSingleton(duplicates),
                            beam.pvalue.AsSingleton(reasons), beam.pvalue.AsSingleton(dropped),
                            beam.pvalue.AsSingleton(moved))
     | "WriteStats" >> beam.io.WriteToText(fileio.join(stats_dir, "partial_stats"),
                                           file_name_suffix=".json", shard_name_template=""))
    (quarantine
     | "QuarantineJson" >> beam.Map(lambda q: json.dumps(q, sort_keys=True))
     | "WriteQuarantine" >> beam.io.WriteToText(fileio.join(stats_dir, "quarantine"),
                                                file_name_suffix=".jsonl",
                                                shard_name_template=""))
    (over_final("ThumbnailLines", thumbnail_lines, beam.Map)
     | "NonEmpty" >> beam.Filter(bool)
     | "WriteThumbnails" >> beam.io.WriteToText(fileio.join(stats_dir, "thumbnails"),
                                                file_name_suffix=".tsv",
                                                shard_name_template=""))


def _build_pipeline(pipeline: Any, plan: sources.Plan, data: DataConfig, ingest: IngestConfig,
                    examples_dir: str, stats_dir: str, parallel: bool) -> None:
    shards, quarantine = _check_inputs(pipeline, plan, data, ingest, parallel)
    final, dropped, moved = _final_splits(pipeline, shards, plan.splits_given, ingest)
    _write_examples(final, examples_dir, ingest)
    _write_statistics(final, quarantine, dropped, moved, stats_dir)


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
        "duplicates": {split: raw["duplicates"].get(split, 0) for split in SPLITS},
        "eval_dropped_as_train_duplicates": raw["eval_dropped_as_train_duplicates"],
        "eval_moved_to_train_near_duplicates": raw["eval_moved_to_train_near_duplicates"],
        "near_duplicate_rms": near_duplicate_rms,
        "quarantine_reasons": raw["quarantine_reasons"],
        "pixels": pixels,
        "content_digest": {split: f"{raw['digest'].get(split, 0):016x}" for split in SPLITS},
    }


@step(name="ingest", outputs={"examples": artifacts.Examples, "statistics": artifacts.Statistics},
      config=("data", "ingest"), beam=("runner",), external=external_inputs)
def run(data: DataConfig, ingest: IngestConfig, beam: BeamConfig, examples: str,
        statistics: str, producer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ingests `data.source` into an Examples artifact and a Statistics artifact."""
    import apache_beam as beam_lib

    from components import beamio

    source = sources.resolve(data)
    plan = sources.plan(source, ingest)
    with artifacts.writing(examples, artifacts.Examples, producer) as ex_w, \
            artifacts.writing(statistics, artifacts.Statistics, producer) as st_w:
        args = beamio.pipeline_args(beam, plan.num_inputs)
        # In-process runs gain nothing from spreading the units over workers.
        parallel = "--direct_running_mode=in_memory" not in args
        with beam_lib.Pipeline(options=beamio.options_from_args(args)) as pipeline:
            _build_pipeline(pipeline, plan, data, ingest, ex_w.path, st_w.path, parallel)
        sources.forget_arrays()
        partial = fileio.join(st_w.path, "partial_stats.json")
        stats = _summarize(json.loads(fileio.read_text(partial)), plan.num_inputs,
                           ingest.near_duplicate_rms)
        fileio.rmtree(partial)
        fileio.write_text(st_w.file("stats.json"), json.dumps(stats, indent=2, sort_keys=True))
        _check(stats, data, ingest, st_w.file("quarantine.jsonl"), examples)

        digest = artifacts.fingerprint_json({"counts": stats["counts"],
                                             "content": stats["content_digest"]})
        ex_w.fingerprint = digest
        ex_w.properties = {"splits": list(SPLITS), "counts": stats["counts"],
                           "class_names": stats["class_names"],
                           "num_examples": stats["num_examples"], "source": data.source}
        st_w.fingerprint = artifacts.fingerprint_json({"examples": digest, "stats": stats})
        st_w.properties = {key: stats[key] for key in
                           ("num_inputs", "num_examples", "num_quarantined", "bad_fraction",
                            "class_names", "duplicates")}
        ex_w.commit()
        st_w.commit()
    split_counts = {split: sum(stats["counts"][split].values()) for split in SPLITS}
    return {
        "num_examples": stats["num_examples"],
        "num_quarantined": stats["num_quarantined"],
        "splits": split_counts,
        "lines": [
            f"{stats['num_examples']} examples from {data.source} "
            f"(train {split_counts['train']}, eval {split_counts['eval']}), "
            f"{len(stats['class_names'])} classes, {stats['converted']} converted to PNG",
            f"{stats['num_quarantined']} quarantined "
            f"({stats['bad_fraction']:.1%} of {stats['num_inputs']}); exact duplicates: "
            f"train {stats['duplicates']['train']}, eval {stats['duplicates']['eval']}; "
            + (f"eval copies of train images dropped: "
               f"{stats['eval_dropped_as_train_duplicates']}" if plan.splits_given else
               f"eval images moved to train as near-duplicates of train images: "
               f"{stats['eval_moved_to_train_near_duplicates']}"),
        ],
    }


def _check(stats: dict[str, Any], data: DataConfig, ingest: IngestConfig,
           quarantine_path: str, examples_uri: str) -> None:
    """Fails the step (before anything is committed) on unusable output."""
    def keep_quarantine() -> str:
        # The artifacts are not committed; keep the quarantine list where the user looks.
        kept = examples_uri.rstrip("/") + ".quarantine.jsonl"
        if not fileio.is_remote(kept):
            shutil.copyfile(quarantine_path, kept)
        return kept

    if stats["bad_fraction"] > ingest.max_bad_fraction:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(stats["quarantine_reasons"].items(),
                                                          key=lambda kv: -kv[1]))
        raise DataError(
            f"{stats['num_quarantined']} of {stats['num_inputs']} inputs are bad "
            f"({stats['bad_fraction']:.1%} > ingest.max_bad_fraction "
            f"{ingest.max_bad_fraction:.1%}): {reasons}. See {keep_quarantine()}; fix or remove "
            "those files, or raise ingest.max_bad_fraction.")
    if stats["num_examples"] == 0:
        raise DataError(f"data.source {data.source} produced no valid images "
                        f"({stats['num_quarantined']} quarantined, see {keep_quarantine()}).")
    if data.classes:
        found = {label for counts in stats["counts"].values() for label in counts}
        missing = [c for c in data.classes if c not in found]
        if missing:
            raise DataError(f"class(es) {', '.join(missing)} listed in data.classes have no "
                            f"valid images in {data.source}; add images or remove them from "
                            "data.classes.")
