"""Ingest: reads images from a source into GZIP TFRecord splits with Apache Beam.

Each input is checked once (full decode with Pillow); valid images in unusual modes
are converted to PNG, bad ones go to `quarantine.jsonl` with a reason, and the step
fails only when the bad fraction exceeds `ingest.max_bad_fraction`. Splits come from
the source when it names them, else from a hash of the content, so identical images
always share a split; an eval image identical to a train image is dropped from eval
and counted (no leak), and every copy of an image labelled differently in its copies
is quarantined ("label conflict"). Labels lose surrounding spaces (counted in the
summary), and photos are turned upright by their EXIF orientation. Statistics are
computed in the same Beam pipeline.

This module is the step; the per-input checks live in `components.data.ingest_checks`, the
statistics in `components.data.ingest_stats` and the Beam pipeline in `components.data.ingest_graph`.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from components import artifacts
from components.io import fileio
from components.data import ingest_window, sources, spans
from components.artifacts import SPLITS
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.ingest import IngestConfig
from components.contract import Out, Shared, Where, step
from components.errors import DataError
from components.data.ingest_graph import _build_pipeline
from components.data.ingest_stats import _summarize


def external_inputs(data: DataConfig, ingest: IngestConfig) -> dict[str, str]:
    """The source's content fingerprint: ingest reads files the DAG does not produce.
    For a window of spans, each selected span's (so a new drop reruns the step, which
    then ingests only that drop)."""
    if spans.has_pattern(data.source):
        return {"spans": artifacts.fingerprint_json(ingest_window.fingerprints(data, ingest))}
    return {"source": sources.fingerprint(sources.resolve(data), ingest)}


def check(data: DataConfig, where: Where) -> list[str]:
    """A source the steps cannot read where they run (a path on this machine, from a
    pipeline's containers), or one holding the runs folder (a run would write into the
    data it reads)."""
    import os

    from components.config.data import BUILTIN_PREFIX

    source = data.source
    if source.startswith(BUILTIN_PREFIX):
        return []
    if not where.reaches(source):
        return [f"data.source {source!r} is a path on this machine, which the pipeline's "
                "containers cannot read; copy the data to a bucket and use gs://BUCKET/... "
                "(or a built-in dataset)."]
    if where.runs_dir is None or fileio.is_remote(source):
        return []
    src, runs = os.path.realpath(source), os.path.realpath(where.runs_dir)
    if os.path.isdir(src) and (runs == src or runs.startswith(src + os.sep)):
        return [f"the runs folder {where.runs_dir} is inside data.source {source}: a run "
                "would write into the data it reads; pass --runs-dir elsewhere."]
    return []


@step(beam=("runner",), external=external_inputs, check=check)
def run(data: DataConfig, ingest: IngestConfig, beam: BeamConfig,
        examples: Out[artifacts.Examples], statistics: Out[artifacts.ExampleStatistics],
        shared: Shared = None) -> dict[str, Any]:
    """Ingests `data.source` into an Examples artifact and a Statistics artifact; a
    source with a span pattern, the window `data.spans` selects, each span once
    (`components/data/ingest_window.py`; reused from `shared` by later runs)."""
    if not spans.has_pattern(data.source):
        return _ingest_one(data, ingest, beam, examples, statistics, whole=True)
    import tempfile

    store = shared or tempfile.mkdtemp(prefix="spans-")     # inside the step's tmp
    parts, fresh, warnings = ingest_window.ingest_parts(
        data, ingest, store, examples.producer,
        lambda one, ex_w, st_w: _ingest_one(one, ingest, beam, ex_w, st_w))
    stats = ingest_window.write_union(parts, data, examples, statistics)
    split_counts = {split: sum(stats["counts"][split].values()) for split in SPLITS}
    labels = [part["span"] for part in parts]
    reused = [label for label in labels if label not in fresh]
    warnings = warnings + color_note(stats, data)
    if data.eval_spans == "auto" and stats["eval_spans"] == "all":
        warnings.append(f"note: {stats['eval_spans_reason']}")
    return {
        "num_examples": stats["num_examples"], "num_quarantined": stats["num_quarantined"],
        "splits": split_counts, "spans": labels, "ingested": fresh, "reused": reused,
        "eval_spans": stats["eval_spans"], "eval_spans_reason": stats["eval_spans_reason"],
        "lines": warnings + [
            f"{len(labels)} span(s) {labels[0]}..{labels[-1]}: ingested {len(fresh)} "
            f"({_named(fresh)}), reused {len(reused)}" + (f" ({_named(reused)})" if reused else ""),
            f"{stats['num_examples']} examples (train {split_counts['train']}, eval "
            f"{split_counts['eval']} from {'the newest span' if stats['eval_spans'] == 'newest' else 'every span'}), "
            f"{len(stats['class_names'])} classes, {stats['num_quarantined']} quarantined"],
    }


def _named(labels: list[str]) -> str:
    """Span labels for a summary line: all of them up to six, else the first two and
    the last (every label is in the summary's `ingested` / `reused` lists)."""
    if len(labels) <= 6:
        return ", ".join(labels) or "none"
    return f"{labels[0]}, {labels[1]}, ... {labels[-1]}"


def _ingest_one(data: DataConfig, ingest: IngestConfig, beam: BeamConfig,
                examples: artifacts.ArtifactWriter, statistics: artifacts.ArtifactWriter,
                whole: bool = False) -> dict[str, Any]:
    """One plain source (or one span) into the two writers; the step's summary (with the
    notes on the whole data when `whole`: not one span of a window)."""
    import apache_beam as beam_lib

    from components.io import beamio

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
    warnings = _label_warnings(plan, stats) + (color_note(stats, data) if whole else [])
    return {
        "num_examples": stats["num_examples"],
        "num_quarantined": stats["num_quarantined"],
        "splits": split_counts,
        "warnings": warnings,       # also the last lines; a window of spans shows them
        "lines": [
            f"{stats['num_examples']} examples from {data.source} "
            f"(train {split_counts['train']}, eval {split_counts['eval']}), "
            f"{len(stats['class_names'])} classes, {stats['converted']} converted to PNG"
            + (f" ({stats['exif_rotated']} turned upright by their EXIF orientation)"
               if stats["exif_rotated"] else ""),
            f"{stats['num_quarantined']} quarantined "
            f"({stats['bad_fraction']:.1%} of {stats['num_inputs']}); exact duplicates: "
            f"train {stats['duplicates']['train']}, eval {stats['duplicates']['eval']}; "
            + (f"eval copies of train images dropped: "
               f"{stats['eval_dropped_as_train_duplicates']}" if plan.splits_given else
               f"eval images moved to train as near-duplicates of train images: "
               f"{stats['eval_moved_to_train_near_duplicates']}"),
        ] + warnings,
    }


def color_note(stats: dict[str, Any], data: DataConfig) -> list[str]:
    """A note when most images are RGB(A) files but data.channels is 1: set so in the
    config (a course config copied for a photo folder), or decided from a sample that
    the whole data contradicts. Such photos train as small grayscale images without the
    photo defaults, and nothing else would say why."""
    counts = stats.get("channels") or {}
    total = sum(counts.values())
    color = sum(n for channels, n in counts.items() if int(channels) >= 3)
    if data.channels != 1 or not total or color * 2 < total:
        return []
    height, width = data.image_size
    if data.decided_from_data("channels"):
        how = f"decided from a sample of the files: {data.decided.basis}"
        fix = "set data.channels: 3 and data.image_size (e.g. [64, 64])"
    else:
        how = "set in the config"
        fix = ("drop data.channels and data.image_size (auto decides them from the files), "
               "or set data.channels: 3 and data.image_size (e.g. [64, 64])")
    return [f"note: {color} of {total} images are RGB files, but data.channels is 1 "
            f"({how}), so they are trained as {height}x{width} grayscale. For color photos "
            f"{fix}: with no model.kind that trains the photo defaults (xception, "
            "augmentation, a cosine schedule; README 'Photo defaults'). To train grayscale, "
            "ignore this note."]


def _label_warnings(plan: sources.Plan, stats: dict[str, Any]) -> list[str]:
    """Summary lines for labels the user should look at: labels given with surrounding
    spaces (stripped), and identical images labelled differently (all copies
    quarantined), each with a few examples."""
    lines = []
    stripped = plan.stripped_labels()
    if stripped:
        shown = {}
        for item in stripped:
            shown.setdefault((item.raw_label, item.label), sources.text(item.path))
        lines.append(
            f"warning: {len(stripped)} label(s) had surrounding spaces, stripped: "
            + ", ".join(f"{sources.text(raw)!r} -> {label!r} ({path})"
                        for (raw, label), path in list(shown.items())[:3])
            + (", ..." if len(shown) > 3 else ""))
    conflicts = stats["label_conflicts"]
    if conflicts["images"]:
        lines.append(
            f"warning: {conflicts['images']} image(s) appear with different labels (identical "
            f"content); all {conflicts['records']} copies quarantined as 'label conflict': "
            + "; ".join(" vs ".join(f"{path} ({label})" for path, label in copies)
                        for copies in conflicts["examples"])
            + ("; ..." if conflicts["images"] > len(conflicts["examples"]) else "")
            + ". Fix the labels so one image has one class.")
    return lines


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
