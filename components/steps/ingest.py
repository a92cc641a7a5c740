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

import numpy as np

from components import artifacts, features, fileio, neardup, sources
from components.artifacts import SPLITS
from components.config import BeamConfig, DataConfig, IngestConfig
from components.contract import Out, step
from components.errors import DataError
from components.imaging import BadImage, check_image, content_id, pixels_over


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
                  image.converted, b"", 0.0, 0.0), image.gray


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

    from components import datasets

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
                     "png", False, thumbs[offset], float(brightness[offset]),
                     float(contrast[offset]))


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


# --- the Beam pipeline: module-level functions (pickled by reference) ----------------


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


def thumbnail_rows(shard: tuple[str, list[Record]]) -> tuple[str, str, bytes]:
    """A shard's (split, ids joined by newlines, thumbnails joined): three objects, not
    three per image (Beam's runner sizes side inputs by walking every object)."""
    split, records = shard
    return split, "\n".join(r.id for r in records), b"".join(r.thumbnail for r in records)


class Decision(NamedTuple):
    """What needs every image at once: eval images that move to train (near-duplicates
    of train, hash splits) or are dropped (copies of train images, given splits), and
    the repeated images per final split."""
    moved: frozenset[str]
    dropped: frozenset[str]
    duplicates: dict[str, int]


def decide(shards: list[tuple[str, str, bytes]], splits_given: bool, max_rms: float,
           thumbnails_path: str) -> Decision:
    """The Decision, from every shard's `thumbnail_rows`; writes thumbnails.tsv with the
    final splits (validation's leak check reads it). Holds 256 bytes and an id per
    image: the only step that sees the whole dataset."""
    ids: list[str] = []
    splits: list[str] = []
    for split, shard_ids, _ in shards:
        names = shard_ids.split("\n") if shard_ids else []
        ids += names
        splits += [split] * len(names)
    thumbs = np.frombuffer(b"".join(t for _, _, t in shards), np.uint8
                           ).reshape(-1, neardup.THUMBNAIL_BYTES)
    order = sorted(range(len(ids)), key=lambda k: (ids[k], splits[k]))  # any bundle order
    ids = [ids[k] for k in order]
    splits = [splits[k] for k in order]
    thumbs = thumbs[order] if len(order) else thumbs
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
    return Decision(moved, dropped, duplicates)


def route_eval(shard: tuple[str, list[Record]], decision: Decision) -> Iterator[Any]:
    """An eval shard without its dropped images; its moved images go to train (tagged
    "moved")."""
    from apache_beam import pvalue

    split, records = shard
    if not decision.moved and not decision.dropped:
        yield shard
        return
    staying = [r for r in records if r.id not in decision.moved and r.id not in decision.dropped]
    going = [r._replace(split="train") for r in records if r.id in decision.moved]
    if going:
        yield pvalue.TaggedOutput("moved", ("train", going))
    yield split, staying


def reason_kind(entry: dict[str, str]) -> str:
    return entry["reason"].split(" (")[0].split(":")[0]


def finish(stats: dict[str, Any], decision: Decision, quarantine: list[dict[str, str]],
           stats_dir: str) -> None:
    """Writes quarantine.jsonl and partial_stats.json (summarized after the pipeline)."""
    quarantine = sorted(quarantine, key=lambda q: (q["path"], q["reason"]))
    fileio.write_text(fileio.join(stats_dir, "quarantine.jsonl"),
                      "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine))
    reasons: dict[str, int] = {}
    for entry in quarantine:
        kind = reason_kind(entry)
        reasons[kind] = reasons.get(kind, 0) + 1
    fileio.write_text(fileio.join(stats_dir, "partial_stats.json"), json.dumps(dict(
        stats, duplicates=decision.duplicates, quarantine_reasons=reasons,
        eval_dropped_as_train_duplicates=len(decision.dropped),
        eval_moved_to_train_near_duplicates=len(decision.moved)), sort_keys=True))


def write_shard(shard: tuple[str, list[Record]], examples_dir: str, prefix: str
                ) -> tuple[str, list[Record]]:
    """Writes a shard's examples as one GZIP TFRecord file of its split, named by the
    hash of its record ids (a retried bundle writes the same file again), and passes
    the records on without their example bytes (the statistics do not need them)."""
    from components import tfrecord

    split, records = shard
    if not records:
        return shard
    name = hashlib.sha256("".join(r.id for r in records).encode()).hexdigest()[:16]
    tfrecord.write_gzip(fileio.join(examples_dir, split, f"{prefix}-{name}.tfrecord.gz"),
                        [r.example for r in records])
    return split, [r._replace(example=b"") for r in records]


def _build_pipeline(pipeline: Any, units: list[sources.WorkUnit], splits_given: bool,
                    data: DataConfig, ingest: IngestConfig, examples_dir: str, stats_dir: str,
                    parallel: bool) -> None:
    """Check every input (per work unit), decide what needs the whole dataset (moves,
    drops, repeats) from the thumbnails alone, route eval shards by that decision, write
    each shard from the worker that holds it, and merge per-shard statistics. Records
    travel in per-unit, per-split batches: Beam's per-element cost is paid per shard.
    Train shards never wait: only eval shards wait for the decision."""
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
                               fileio.join(stats_dir, "thumbnails.tsv")))
    routed = (checked.eval
              | "Route" >> beam.FlatMap(route_eval, decision).with_outputs("moved", main="eval"))
    final = {("train", "part"): checked.train, ("eval", "part"): routed.eval,
             ("train", "moved"): routed.moved}
    stats = [parts | f"Write{split}{prefix}" >> beam.Map(write_shard, examples_dir, prefix)
             | f"Stats{split}{prefix}" >> beam.Map(shard_stats)
             for (split, prefix), parts in final.items()]
    (stats
     | "AllStats" >> beam.Flatten()
     | "MergeStats" >> beam.CombineGlobally(_merge)
     | "Finish" >> beam.Map(finish, decision,
                            beam.pvalue.AsSingleton(checked.quarantine
                                                    | "AllQuarantined" >> beam.combiners.ToList()),
                            stats_dir))


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


@step(beam=("runner",), external=external_inputs)
def run(data: DataConfig, ingest: IngestConfig, beam: BeamConfig,
        examples: Out[artifacts.Examples], statistics: Out[artifacts.ExampleStatistics]
        ) -> dict[str, Any]:
    """Ingests `data.source` into an Examples artifact and a Statistics artifact."""
    import apache_beam as beam_lib

    from components import beamio

    source = sources.resolve(data)
    plan = sources.plan(source, ingest)
    ex_w, st_w = examples, statistics
    args = beamio.pipeline_args(beam, plan.num_inputs)
    # In-process runs gain nothing from spreading the units over workers.
    parallel = "--direct_running_mode=in_memory" not in args
    with beamio.temp_dir(beam, "ingest") as temp:
        listing = ""
        if plan.files is not None:
            listing = fileio.join(temp, "listing.json")
            sources.write_listing(listing, plan.files)
        units = plan.units(listing)
        with beam_lib.Pipeline(options=beamio.options_from_args(args)) as pipeline:
            _build_pipeline(pipeline, units, plan.splits_given, data, ingest, ex_w.path,
                            st_w.path, parallel)
    sources.forget_arrays()
    partial = st_w.file(artifacts.ExampleStatistics.PARTIAL)
    stats = _summarize(json.loads(fileio.read_text(partial)), plan.num_inputs,
                       ingest.near_duplicate_rms)
    fileio.rmtree(partial)
    artifacts.ExampleStatistics.write(st_w, stats, sort_keys=True)
    _check(stats, data, ingest, st_w.file(artifacts.ExampleStatistics.QUARANTINE),
           examples.uri)

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
