"""Ingest of a window of data drops (spans): each span once, reused by later windows.

A source with a pattern (`data/{YYYY}-{MM}-{DD}/`, `gs://b/photos/span-{SPAN}/`, see
`components/data/spans.py`) names many drops; `data.spans` picks the window a run trains on.
Each span is ingested on its own, by the same code as a plain source, into an Examples
and an ExampleStatistics artifact in the step's `Shared` folder (kept across runs),
under a key of the span's content fingerprint and the ingest config: a rolling window
the day after ingests the one new span and reuses the others. Runs whose windows overlap
take each span's lock (`components/io/locks.py`) before ingesting it: the second waits,
then reuses what the first committed. The run's own artifacts
are the union, by reference: the Examples artifact lists its parts (no records are
copied), the statistics hold the window's totals and each span's, so validation can
compare the newest drop with the rest of the window.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from typing import Any, Callable

from components import artifacts
from components.io import fileio, locks
from components.data import sources, spans
from components.artifacts import SPLITS
from components.config.data import DataConfig
from components.config.ingest import IngestConfig
from components.errors import ArtifactError

# The DataConfig keys a single span's ingest does not depend on (`decided` says how the
# channels and size were chosen, from the newest span: a new span must not re-ingest
# the older ones).
_WINDOW_KEYS = ("source", "spans", "on_missing", "eval_spans", "min_eval_examples", "decided")


def window(data: DataConfig, now: datetime.datetime | None = None
           ) -> tuple[list[spans.Span], list[str]]:
    """The spans `data.spans` selects among those the pattern finds now (oldest first),
    and warnings (spans skipped under `data.on_missing: skip`)."""
    found = spans.discover(spans.Pattern.parse(data.source))
    return spans.select(found, data.spans, data.on_missing, now)


def is_scheduled(data: DataConfig) -> bool:
    """A window given relative to the schedule's time (`{scheduled: -1d}`)."""
    return isinstance(data.spans, dict) and "scheduled" in data.spans


def scheduled_spans(data: DataConfig, when: datetime.datetime) -> list[Any]:
    """The spans a scheduled window names at `when` (the schedule's time), as a list
    `data.spans` takes; a span that is not there stops here (data.on_missing: fail)."""
    chosen, _ = window(data, when)
    return [s.date or s.number for s in chosen]


def at_schedule_time(data: DataConfig, when: datetime.datetime | None) -> DataConfig:
    """`data` with a scheduled window pinned to the spans it names at `when`; as it is
    without a time or a scheduled window."""
    if when is None or not is_scheduled(data):
        return data
    return data.model_copy(update={"spans": scheduled_spans(data, when)})


def span_key(span: spans.Span, data: DataConfig, ingest: IngestConfig) -> str:
    """What a span's ingest depends on: its files' fingerprint and the ingest config."""
    one = data.for_span(span.path)
    return artifacts.fingerprint_json({
        "source": sources.fingerprint(sources.resolve(one), ingest),
        "data": {k: v for k, v in data.model_dump(mode="json").items() if k not in _WINDOW_KEYS},
        "ingest": ingest.model_dump(mode="json")})


def fingerprints(data: DataConfig, ingest: IngestConfig) -> dict[str, str]:
    """The window's identity for the step's cache key: span label -> its key."""
    chosen, _ = window(data)
    return {span.label: span_key(span, data, ingest) for span in chosen}


def _folder(span: spans.Span, key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", span.label).strip("-")
    return f"{name}{f'-v{span.version}' if span.version is not None else ''}-{key[:16]}"


def _reusable(examples_uri: str, statistics_uri: str) -> bool:
    """Both committed, with every file the manifests list at its recorded size (a
    size check only: rehashing each span's records on every run would read the whole
    window again, which is what the per-span reuse saves)."""
    return _verified(examples_uri) and _verified(statistics_uri)


def _verified(uri: str) -> bool:
    try:
        art = artifacts.read(uri)
    except ArtifactError:
        return False
    return all(fileio.file_size(fileio.join(uri, rel)) == entry["size"]
               for rel, entry in art.files.items())


def commit_or_reuse(writer: artifacts.ArtifactWriter) -> None:
    """Commits a span's artifact; when another writer of the same span (its folder
    names the content and the config) renamed its copy into place first, ours fails
    (the folder is there, not empty): theirs is verified and kept, ours removed. A
    failure with nothing verified there is raised."""
    try:
        writer.commit()
    except OSError:
        writer.abort()
        if not _verified(writer.uri):
            raise


IngestOne = Callable[[DataConfig, artifacts.ArtifactWriter, artifacts.ArtifactWriter],
                     dict[str, Any]]


def ingest_parts(data: DataConfig, ingest: IngestConfig, store: str,
                 producer: dict[str, Any], ingest_one: IngestOne
                 ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Each span of the window as committed Examples + ExampleStatistics under `store`,
    ingested now (with `ingest_one`, a plain source's ingest) or reused. Returns the
    parts (oldest first), the labels ingested anew, and warnings (the window's, and the
    warning lines of each span ingested now: labels stripped, label conflicts)."""
    chosen, warnings = window(data)
    parts, fresh = [], []
    for span in chosen:
        key = span_key(span, data, ingest)
        where = fileio.join(store, _folder(span, key))
        ex_uri, st_uri = fileio.join(where, "examples"), fileio.join(where, "statistics")
        if not _reusable(ex_uri, st_uri):
            lock = fileio.join(where, LOCK)
            with locks.lock(lock, waiting=lambda: _waiting(span, lock)):
                if not _reusable(ex_uri, st_uri):   # else: committed while we waited
                    warnings += _ingest_span(span, data, ex_uri, st_uri, producer,
                                             ingest_one)
                    fresh.append(span.label)
        examples = artifacts.read(ex_uri, artifacts.Examples)
        parts.append({"span": span.label, "number": span.number, "date": span.date,
                      "version": span.version, "uri": ex_uri, "statistics": st_uri,
                      "fingerprint": examples.fingerprint, "key": key})
    return parts, fresh, warnings


LOCK = ".lock"       # in a span's folder: held while the span is ingested


def _waiting(span: spans.Span, lock: str) -> None:
    print(f"ingest: another run is ingesting {span.label} (it holds {lock}); waiting to "
          "reuse it", file=sys.stderr, flush=True)


def _ingest_span(span: spans.Span, data: DataConfig, ex_uri: str, st_uri: str,
                 producer: dict[str, Any], ingest_one: IngestOne) -> list[str]:
    """One span ingested and committed under its lock; its warning lines."""
    _clear(ex_uri, st_uri)
    ex_w = artifacts.ArtifactWriter(ex_uri, artifacts.Examples, producer)
    st_w = artifacts.ArtifactWriter(st_uri, artifacts.ExampleStatistics, producer)
    try:
        summary = ingest_one(data.for_span(span.path), ex_w, st_w) or {}
        commit_or_reuse(ex_w)
        commit_or_reuse(st_w)
    except BaseException:
        ex_w.abort()
        st_w.abort()
        raise
    return [f"{span.label}: {line}" for line in summary.get("warnings", [])]


def _clear(*uris: str) -> None:
    """What a killed ingest of this span left (never committed, or half verified)."""
    for uri in uris:
        fileio.rmtree(uri)


def _add(into: dict[str, Any], counts: dict[str, int]) -> None:
    for label, n in counts.items():
        into[label] = into.get(label, 0) + n


def _split_counts(part_stats: list[dict[str, Any]], eval_spans: str) -> dict[str, dict]:
    """Per split and class, what the window's splits hold (`Examples.patterns`)."""
    out: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for index, stats in enumerate(part_stats):
        newest = index == len(part_stats) - 1
        _add(out["train"], stats["counts"].get("train", {}))
        if eval_spans == "all" or newest:
            _add(out["eval"], stats["counts"].get("eval", {}))
        else:
            _add(out["train"], stats["counts"].get("eval", {}))
    return out


def merge_pixels(part_stats: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per split and class brightness/contrast means over parts, weighted by counts."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    weights: dict[tuple[str, str], float] = {}
    for stats in part_stats:
        for split, by_class in stats.get("pixels", {}).items():
            for label, values in by_class.items():
                n = stats["counts"].get(split, {}).get(label, 0) or 1
                target = out.setdefault(split, {}).setdefault(label, {})
                seen = weights.get((split, label), 0.0)
                for key, value in values.items():
                    target[key] = (target.get(key, 0.0) * seen + value * n) / (seen + n)
                weights[(split, label)] = seen + n
    return out


def merge_stats(part_stats: list[dict[str, Any]], parts: list[dict[str, Any]],
                eval_spans: str) -> dict[str, Any]:
    """The window's statistics: totals as the union's splits hold them, and each span's
    own (`spans`: label, counts, examples, statistics URI), newest last."""
    def total(key: str) -> int:
        return sum(stats[key] for stats in part_stats)

    def histogram(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for stats in part_stats:
            _add(out, stats.get(key, {}))
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    counts = _split_counts(part_stats, eval_spans)
    inputs, quarantined = total("num_inputs"), total("num_quarantined")
    return {
        "num_inputs": inputs,
        "num_examples": total("num_examples"),
        "num_quarantined": quarantined,
        "bad_fraction": quarantined / inputs if inputs else 0.0,
        "class_names": sorted({c for stats in part_stats for c in stats["class_names"]}),
        "counts": counts,
        "sizes": histogram("sizes"),
        "channels": histogram("channels"),
        "formats": histogram("formats"),
        "converted": total("converted"),
        "duplicates": {split: sum(s["duplicates"].get(split, 0) for s in part_stats)
                       for split in SPLITS},
        "eval_dropped_as_train_duplicates": total("eval_dropped_as_train_duplicates"),
        "eval_moved_to_train_near_duplicates": total("eval_moved_to_train_near_duplicates"),
        "near_duplicate_rms": part_stats[-1]["near_duplicate_rms"],
        "quarantine_reasons": histogram("quarantine_reasons"),
        "pixels": merge_pixels(part_stats),
        "content_digest": {split: artifacts.fingerprint_json(
            [s["content_digest"].get(split) for s in part_stats])[:16] for split in SPLITS},
        "eval_spans": eval_spans,
        "spans": [{"span": part["span"], "version": part["version"],
                   "statistics": part["statistics"], "counts": stats["counts"],
                   "num_examples": stats["num_examples"]}
                  for part, stats in zip(parts, part_stats)],
    }


def eval_spans(data: DataConfig, part_stats: list[dict[str, Any]]) -> tuple[str, str]:
    """Whose eval split the window evaluates on ('newest' or 'all') and why: `auto`
    takes the newest span's when it holds `data.min_eval_examples`, else every span's."""
    if data.eval_spans != "auto":
        return data.eval_spans, f"data.eval_spans: {data.eval_spans}"
    newest = sum(part_stats[-1]["counts"].get("eval", {}).values())
    if newest >= data.min_eval_examples or len(part_stats) == 1:
        return "newest", (f"the newest span's {newest} eval examples (at least "
                          f"data.min_eval_examples {data.min_eval_examples})")
    return "all", (f"the newest span has {newest} eval examples, fewer than "
                   f"data.min_eval_examples {data.min_eval_examples}: every span's eval "
                   "split is evaluated on")


def write_union(parts: list[dict[str, Any]], data: DataConfig,
                examples: artifacts.ArtifactWriter, statistics: artifacts.ArtifactWriter
                ) -> dict[str, Any]:
    """The run's Examples (parts by reference) and ExampleStatistics (the window's
    totals, each span's, and the parts' thumbnails and quarantine lists joined, with
    the older spans' eval images counted as train when only the newest is evaluated)."""
    part_stats = [artifacts.ExampleStatistics.read(part["statistics"]) for part in parts]
    chosen, why = eval_spans(data, part_stats)
    data = data.model_copy(update={"eval_spans": chosen})
    stats = merge_stats(part_stats, parts, data.eval_spans)
    stats["eval_spans_reason"] = why
    artifacts.ExampleStatistics.write(statistics, stats, sort_keys=True)
    thumbnails, quarantine = [], []
    for index, part in enumerate(parts):
        newest = index == len(parts) - 1
        path = fileio.join(part["statistics"], artifacts.ExampleStatistics.THUMBNAILS)
        for line in (fileio.read_text(path).splitlines() if fileio.exists(path) else []):
            ident, split, encoded = line.split("\t")
            if split == "eval" and data.eval_spans == "newest" and not newest:
                split = "train"
            thumbnails.append(f"{ident}\t{split}\t{encoded}\n")
        path = fileio.join(part["statistics"], artifacts.ExampleStatistics.QUARANTINE)
        if fileio.exists(path):
            quarantine.append(fileio.read_text(path))
    fileio.write_text(statistics.file(artifacts.ExampleStatistics.THUMBNAILS),
                      "".join(thumbnails))
    fileio.write_text(statistics.file(artifacts.ExampleStatistics.QUARANTINE),
                      "".join(quarantine))
    digest = artifacts.fingerprint_json([part["fingerprint"] for part in parts])
    labels = [part["span"] for part in parts]
    examples.fingerprint = artifacts.fingerprint_json({"parts": digest,
                                                      "eval_spans": data.eval_spans})
    examples.properties = {
        "splits": list(SPLITS), "counts": stats["counts"], "class_names": stats["class_names"],
        "num_examples": stats["num_examples"], "source": data.source, "spans": labels,
        "eval_spans": data.eval_spans,
        "parts": [{k: part[k] for k in ("span", "version", "uri", "fingerprint")}
                  for part in parts]}
    # a marker file: the manifest lists something, and a reader sees what this is
    fileio.write_text(examples.file(artifacts.Examples.PARTS),
                      json.dumps(examples.properties["parts"], indent=2))
    statistics.fingerprint = artifacts.fingerprint_json({"examples": examples.fingerprint,
                                                        "stats": stats})
    statistics.properties = {key: stats[key] for key in
                             ("num_inputs", "num_examples", "num_quarantined", "bad_fraction",
                              "class_names", "duplicates")} | {"spans": labels}
    return stats
