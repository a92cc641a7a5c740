"""Validate: ingest statistics against a TFMD schema and against the previous run.

Checks: unknown or missing classes, channel counts and sizes out of range, empty
splits, eval missing a class, class-share drift (L-infinity distance, as TFDV
measures it), decode-failure rate, near-duplicate images across train and eval
(confirmed in pixel space on ingest's thumbnails), per-class brightness/contrast drift. Writes
an ExampleAnomalies artifact (and the Schema it enforced); any error stops the run.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from components import artifacts, features
from components.io import fileio
from components.data import neardup
from components.config.validate import ValidateConfig
from components.contract import In, Out, Summary, step
from components.errors import ValidationFailed
from components.data.schema import (domain, infer_schema, int_bounds, linf_distance, load_schema,
                               schema_to_text)

ERROR, WARNING = "error", "warning"
MAX_REPORTED_PAIRS = 20


# --- checks ------------------------------------------------------------------------


def _anomaly(kind: str, feature: str, description: str, severity: str = ERROR) -> dict[str, str]:
    return {"kind": kind, "feature": feature, "description": description, "severity": severity}


def check_schema(stats: dict[str, Any], schema) -> list[dict[str, str]]:
    out = []
    classes = domain(schema, features.LABEL)
    found = set(stats["class_names"])
    if classes is not None:
        unknown = sorted(found - set(classes))
        if unknown:
            out.append(_anomaly("unknown_class", features.LABEL,
                                f"classes not in the schema: {', '.join(unknown)}"))
        train = set(stats["counts"].get("train", {}))
        missing = sorted(set(classes) - train)
        if missing:
            out.append(_anomaly("missing_class", features.LABEL,
                                f"schema classes with no training images: {', '.join(missing)}"))
    low, high = int_bounds(schema, features.CHANNELS)
    bad_channels = sorted(int(c) for c in stats["channels"]
                          if (low is not None and int(c) < low) or (high is not None and int(c) > high))
    if bad_channels:
        out.append(_anomaly("channels_out_of_range", features.CHANNELS,
                            f"channel counts {bad_channels} outside [{low}, {high}]"))
    for name, index in ((features.HEIGHT, 0), (features.WIDTH, 1)):
        low, high = int_bounds(schema, name)
        values = [int(key.split("x")[index]) for key in stats["sizes"]]
        outside = [v for v in values if (low is not None and v < low) or
                   (high is not None and v > high)]
        if outside:
            out.append(_anomaly("size_out_of_range", name,
                                f"{name} {min(outside)}..{max(outside)} outside [{low}, {high}]"))
    return out


def check_splits(stats: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for split in artifacts.SPLITS:
        if not sum(stats["counts"].get(split, {}).values()):
            out.append(_anomaly("empty_split", split, f"the {split} split has no examples"))
    train, eval_ = stats["counts"].get("train", {}), stats["counts"].get("eval", {})
    if eval_:
        missing = sorted(set(train) - set(eval_))
        if missing:
            out.append(_anomaly("eval_missing_class", features.LABEL,
                                f"eval split has no images of: {', '.join(missing)}"))
    return out


def class_shares(stats: dict[str, Any], split: str = "train") -> dict[str, float]:
    counts = stats["counts"].get(split, {})
    total = sum(counts.values()) or 1
    return {label: n / total for label, n in counts.items()}


def check_drift(stats: dict[str, Any], previous: dict[str, Any] | None,
                cfg: ValidateConfig, against: str = "the previous run") -> list[dict[str, str]]:
    if previous is None:
        return []
    out = []
    distance, label = linf_distance(class_shares(stats), class_shares(previous))
    if distance > cfg.max_class_drift:
        out.append(_anomaly("class_drift", features.LABEL,
                            f"class shares moved by L-inf {distance:.3f} (class {label!r}) vs "
                            f"{against}, over validate.max_class_drift {cfg.max_class_drift}"))
    for label, now in sorted(stats["pixels"].get("train", {}).items()):
        before = previous.get("pixels", {}).get("train", {}).get(label)
        if before is None:
            continue
        for key, what in (("brightness_mean", "brightness"), ("contrast_mean", "contrast")):
            change = now[key] - before[key]
            if abs(change) > cfg.max_brightness_drift:
                out.append(_anomaly(f"{what}_drift", features.IMAGE,
                                    f"class {label!r} mean {what} changed by {change:+.3f} "
                                    f"(0-1 scale) vs {against}, over "
                                    f"validate.max_brightness_drift {cfg.max_brightness_drift}",
                                    WARNING))
    return out


def check_newest_span(stats: dict[str, Any], cfg: ValidateConfig) -> list[dict[str, str]]:
    """A window of spans: the newest drop against the rest of the window (the data the
    model also trains on), class shares and brightness/contrast, as a run is checked
    against the run before. Comparing with the rest rather than with the one previous
    drop keeps a single drifted drop from also failing the normal drop after it."""
    window = stats.get("spans") or []
    if len(window) < 2:
        return []
    from components.data import ingest_window

    def whole(stats: dict[str, Any]) -> dict[str, Any]:
        # every image of the drop: its train/eval split is a hash, noise on a small drop
        counts: dict[str, int] = {}
        for split in stats["counts"].values():
            for label, n in split.items():
                counts[label] = counts.get(label, 0) + n
        return {**stats, "counts": {"train": counts}}

    newest = artifacts.ExampleStatistics.read(window[-1]["statistics"])
    rest = [artifacts.ExampleStatistics.read(part["statistics"]) for part in window[:-1]]
    merged = ingest_window.merge_stats(rest, window[:-1], "all")
    return check_drift(whole(newest), whole(merged), cfg,
                       f"the window's other {len(rest)} span(s) (newest span {window[-1]['span']})")


def check_bad_fraction(stats: dict[str, Any], cfg: ValidateConfig) -> list[dict[str, str]]:
    if stats["bad_fraction"] > cfg.max_bad_fraction_warning:
        return [_anomaly("decode_failures", features.IMAGE,
                         f"{stats['num_quarantined']} of {stats['num_inputs']} inputs "
                         f"({stats['bad_fraction']:.1%}) were quarantined at ingest", WARNING)]
    return []


def read_thumbnails(path: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """split -> (ids, uint8 [n, 256] thumbnails) from ingest's thumbnails.tsv."""
    ids: dict[str, list[str]] = {split: [] for split in artifacts.SPLITS}
    thumbs: dict[str, list[bytes]] = {split: [] for split in artifacts.SPLITS}
    if fileio.exists(path):
        with fileio.open_file(path, "rb") as handle:
            for line in handle:
                record_id, split, encoded = line.decode().rstrip("\n").split("\t")
                ids.setdefault(split, []).append(record_id)
                thumbs.setdefault(split, []).append(base64.b64decode(encoded))
    return {split: (ids[split], neardup.as_array(thumbs[split])) for split in ids}


def check_near_duplicates(thumbnails_path: str, max_rms: float, cfg: ValidateConfig
                          ) -> tuple[list[dict], dict]:
    """Eval images with a near-duplicate in train (pixel space, `max_rms` as ingest
    recorded it): a warning, an error above `max_near_duplicate_fraction`."""
    thumbs = read_thumbnails(thumbnails_path)
    train_ids, train = thumbs["train"]
    eval_ids, eval_ = thumbs["eval"]
    found, rms = neardup.matches(eval_, train, max_rms)
    hits = np.flatnonzero(found >= 0)
    fraction = len(hits) / len(eval_) if len(eval_) else 0.0
    pairs = [{"eval_id": eval_ids[i], "train_id": train_ids[found[i]], "rms": round(float(rms[i]), 2)}
             for i in hits[:MAX_REPORTED_PAIRS]]
    report = {"num_eval": len(eval_), "num_near_duplicates": int(len(hits)),
              "leak_fraction": fraction, "max_rms": max_rms, "pairs": pairs}
    if not len(hits):
        return [], report
    severity = ERROR if fraction > cfg.max_near_duplicate_fraction else WARNING
    return [_anomaly("near_duplicate_leak", features.IMAGE,
                     f"{len(hits)} of {len(eval_)} eval images ({fraction:.1%}) have a train "
                     f"image within RMS {max_rms:g} (16x16 grayscale, 0-255): re-encoded or "
                     f"edited copies leak into the evaluation (allowed: "
                     f"validate.max_near_duplicate_fraction {cfg.max_near_duplicate_fraction})",
                     severity)], report


# --- the step ----------------------------------------------------------------------


def external_inputs(validate: ValidateConfig) -> dict[str, str]:
    """The enforced schema file is an input too: editing it must rerun validation."""
    if validate.schema_path and fileio.exists(validate.schema_path):
        return {"schema_file": fileio.hash_file(validate.schema_path)}
    return {}


class Validated(Summary):
    """The verdict: passed when no anomaly is an error; `reason` lists the anomalies
    that stop the run (and where they are written)."""

    passed: bool
    reason: str
    num_anomalies: int


# A verdict, not a crash: the anomalies are committed as any output, then an error
# ends the run (ValidationFailed) on every engine, before transform.
@step(gate="passed", stop=ValidationFailed, external=external_inputs)
def run(statistics: In[artifacts.ExampleStatistics], validate: ValidateConfig,
        anomalies: Out[artifacts.ExampleAnomalies], schema: Out[artifacts.Schema],
        baseline_statistics: In[artifacts.ExampleStatistics] | None = None) -> Validated:
    """Checks `statistics`; writes ExampleAnomalies and Schema. Not `passed` when an
    anomaly is an error: the runner then stops the run with ValidationFailed."""
    stats = artifacts.ExampleStatistics.read(statistics)
    previous = (artifacts.ExampleStatistics.read(baseline_statistics)
                if baseline_statistics is not None else None)
    if validate.schema_path:
        enforced, origin = load_schema(validate.schema_path), validate.schema_path
    else:
        enforced, origin = infer_schema(stats), "inferred from this run's statistics"

    spans = stats.get("spans")
    # A window of spans is checked drop by drop (the newest against the rest); the
    # window against the previous run's window would mostly compare a span with itself.
    drift = check_newest_span(stats, validate) if spans else \
        check_drift(stats, previous, validate)
    found = (check_schema(stats, enforced) + check_splits(stats) + drift
             + check_bad_fraction(stats, validate))
    leak_anomalies, leak_report = check_near_duplicates(
        statistics.path(artifacts.ExampleStatistics.THUMBNAILS), stats["near_duplicate_rms"],
        validate)
    found += leak_anomalies
    errors = [a for a in found if a["severity"] == ERROR]

    artifacts.Schema.write(schema, schema_to_text(enforced))
    schema.properties = {"origin": origin, "class_names": domain(enforced, features.LABEL)}
    body = {"anomalies": found, "near_duplicates": leak_report, "schema": origin,
            "baseline": baseline_statistics.uri if baseline_statistics else None}
    artifacts.ExampleAnomalies.write(anomalies, body)
    anomalies.properties = {"num_errors": len(errors), "num_warnings": len(found) - len(errors),
                            "kinds": sorted({a["kind"] for a in found})}
    # The verdict, not where the baseline lives: downstream caches key on it.
    anomalies.fingerprint = artifacts.fingerprint_json({"anomalies": found, "schema": origin})
    lines = [f"{a['severity']}: {a['kind']} [{a['feature']}] {a['description']}" for a in found]
    if errors:
        # the anomalies the message points to are committed before the run stops
        where = fileio.join(anomalies.uri, artifacts.ExampleAnomalies.FILE)
        return Validated(passed=False, num_anomalies=len(found), lines=lines,
                         reason=f"{len(errors)} anomalies stop the run (details in {where})"
                                ":\n  " + "\n  ".join(lines))
    baseline = (f"the window's other spans (newest {spans[-1]['span']})" if spans and len(spans) > 1
                else "a single span" if spans else
                "previous run" if previous else "no previous run")
    return Validated(passed=True, num_anomalies=len(found), reason="no anomaly is an error",
                     lines=[f"schema: {origin}; compared with {baseline}; "
                            f"{len(found)} warning(s)"] + lines)
