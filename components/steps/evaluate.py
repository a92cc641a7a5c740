"""Evaluate: TFMA metrics, slices and thresholds, and a paired statistical gate against
the baseline (the model holding `production` in the registry, resolved by the runner).

TFMA (on Beam, with the pipeline's runner options) computes the metrics, the per-slice
and per-class breakdowns, the confusion matrix and calibration, and checks the
configured absolute and change thresholds. Raw examples go in; the model's
`transform_features` signature maps the class name to its id (a TFMA preprocessing
function), so TFMA scores exactly what serving sees.

TFMA has no paired test of "is the candidate worse than the baseline". Both models are
therefore also run on the same eval examples, and the per-example correctness pairs
give a bootstrap confidence interval for the accuracy difference and McNemar's exact
test. `evaluate.gate` says whether "not worse" means the point estimate or the lower
confidence bound. The ModelBlessing lists every check with value, bound and verdict.
"""

from __future__ import annotations

import io
import json
import math
import time
from typing import Any


from components import artifacts, features
from components.io import beamio, fileio
from components.evaluation import gate
from components.config.beam import BeamConfig
from components.config.evaluate import EvaluateConfig
from components.contract import BaselineModel, In, Out, Summary, step

CANDIDATE, BASELINE = "candidate", "baseline"
# Config metric name -> (TFMA class name, config JSON)
TOP_LEVEL = {
    "accuracy": ("SparseCategoricalAccuracy", {"name": "accuracy"}),
    "example_count": ("ExampleCount", {"name": "example_count"}),
}
GALLERY = 24


def _threshold(cfg, with_change: bool):
    from tensorflow_model_analysis.proto import config_pb2

    threshold = config_pb2.MetricThreshold()
    if cfg.min is not None:
        threshold.value_threshold.lower_bound.value = cfg.min
    if cfg.max is not None:
        threshold.value_threshold.upper_bound.value = cfg.max
    if with_change and cfg.max_drop is not None:
        threshold.change_threshold.direction = config_pb2.MetricDirection.HIGHER_IS_BETTER
        threshold.change_threshold.absolute.value = -cfg.max_drop
    return threshold


def eval_config(cfg: EvaluateConfig, num_classes: int, with_baseline: bool):
    """The TFMA EvalConfig: two model specs (candidate, baseline) that read labels and
    predictions from the scored examples (the scoring job ran the models; TFMA does
    not run them again), metrics, slices and thresholds scoped to the slices the
    config names."""
    from tensorflow_model_analysis.proto import config_pb2

    from components.evaluation.scoring import prediction_keys

    names = [CANDIDATE] + ([BASELINE] if with_baseline else [])
    specs = []
    for name in names:
        label_key, prediction_key = prediction_keys(name, name == CANDIDATE)
        specs.append(config_pb2.ModelSpec(name=name, label_key=label_key,
                                          prediction_key=prediction_key,
                                          is_baseline=name == BASELINE))
    # No slice per label unless a threshold names it: TFMA computes every metric for
    # every slice; per-label accuracy and counts come from the overall confusion matrix.
    by_label = any(features.LABEL in (t.slices or []) for t in cfg.thresholds.values()) \
        or features.LABEL in cfg.slice_features
    slice_keys = [[features.LABEL]] * by_label + [
        [key] for key in cfg.slice_features if key != features.LABEL]
    slicing = [config_pb2.SlicingSpec()] + [config_pb2.SlicingSpec(feature_keys=keys)
                                            for keys in slice_keys]
    top_level = dict(TOP_LEVEL)
    top_level["top_k_accuracy"] = ("SparseTopKCategoricalAccuracy",
                                   {"name": "top_k_accuracy", "k": min(cfg.top_k, num_classes)})
    unknown = set(cfg.thresholds) - set(top_level)
    if unknown:
        from components.errors import ConfigError
        raise ConfigError(f"evaluate.thresholds names unknown metrics {sorted(unknown)}; "
                          f"thresholds apply to {sorted(top_level)}.")
    metrics = []
    for name, (class_name, config) in top_level.items():
        metric = config_pb2.MetricConfig(class_name=class_name, config=json.dumps(config))
        threshold = cfg.thresholds.get(name)
        if threshold is not None:
            scopes = [config_pb2.SlicingSpec()] + [
                config_pb2.SlicingSpec(feature_keys=[key]) for key in threshold.slices or []]
            with_change = with_baseline and not gate.decides_change(cfg, name)
            metric.per_slice_thresholds.add(slicing_specs=scopes,
                                            threshold=_threshold(threshold, with_change))
        metrics.append(metric)
    # Per-class precision, recall and F1 of the top-1 prediction come from this matrix;
    # per-class AUC and calibration from the scoring job's histograms (class_metrics).
    # TFMA's binarized per-class metrics cost 6 ms per example on 10 classes, five
    # times the rest of the evaluation together.
    metrics.append(config_pb2.MetricConfig(class_name="MultiClassConfusionMatrixPlot"))
    from tensorflow_model_analysis.utils import config_util

    # TFMA's own defaulting (one model is named ""), told about the baseline: given
    # no model to load, TFMA's API would drop its spec and refuse change thresholds.
    return config_util.update_eval_config_with_defaults(
        config_pb2.EvalConfig(
            model_specs=specs, slicing_specs=slicing,
            metrics_specs=[config_pb2.MetricsSpec(metrics=metrics, model_names=names)]),
        has_baseline=with_baseline)


def class_metrics(confusion: list[list[int]], vocabulary: list[str],
                  curves: dict[str, Any] | None) -> dict[str, dict[str, float | None]]:
    """Per class: precision, recall and F1 of the top-1 prediction (from the confusion
    matrix), one-vs-rest ROC AUC over CURVE_BINS thresholds and calibration (sum of
    predicted probability / positives, 1.0 is calibrated) from the histograms."""
    import numpy as np

    matrix = np.asarray(confusion, dtype=np.float64).reshape(len(vocabulary), len(vocabulary))
    out: dict[str, dict[str, float | None]] = {}
    for index, name in enumerate(vocabulary):
        hits, actual, predicted = matrix[index, index], matrix[index].sum(), matrix[:, index].sum()
        precision = hits / predicted if predicted else None
        recall = hits / actual if actual else None
        f1 = None if not precision or not recall else \
            2 * precision * recall / (precision + recall)
        out[name] = {"precision": precision, "recall": recall, "f1_score": f1,
                     "auc": None, "calibration": None}
        if curves is not None and index < len(curves["positives"]):
            out[name]["auc"] = _auc(curves["positive"][index], curves["negative"][index])
            positives = int(curves["positives"][index])
            out[name]["calibration"] = float(curves["probability_sum"][index]) / positives \
                if positives else None
    return out


def _auc(positive: Any, negative: Any) -> float | None:
    """Area under the ROC curve from per-bin counts (thresholds from high to low)."""
    import numpy as np

    points = gate.roc_points(positive, negative)
    return None if points is None else float(np.trapezoid(points[1], points[0]))


def _value(raw: Any) -> float | None:
    if isinstance(raw, dict):
        raw = raw.get("doubleValue", next(iter(raw.values()), None))
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _slice_name(key: tuple) -> str:
    return "overall" if not key else ", ".join(f"{k}={v}" for k, v in key)


def read_tfma(output: str, model_name: str | None, vocabulary: list[str],
              curves: dict[str, Any] | None = None) -> dict[str, Any]:
    """TFMA's results as plain JSON: metrics per slice, per class, confusion matrix."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(output, model_name=model_name)
    slices: dict[str, dict[str, float | None]] = {}
    for key, metrics in result.slicing_metrics:
        values = metrics.get("", {}).get("", {})
        clean = {k: _value(v) for k, v in values.items() if not k.endswith("_diff")}
        slices.setdefault(_slice_name(key), {}).update(clean)
    confusion = [[0] * len(vocabulary) for _ in vocabulary]
    for key, plots in result.plots:
        if key:
            continue
        matrix = plots.get("", {}).get("", {}).get("multiClassConfusionMatrixAtThresholds")
        if matrix:
            for entry in matrix["matrices"][0]["entries"]:
                actual, predicted = (int(entry.get(k, 0)) for k in ("actualClassId",
                                                                     "predictedClassId"))
                if 0 <= actual < len(vocabulary) and 0 <= predicted < len(vocabulary):
                    confusion[actual][predicted] = int(entry["numWeightedExamples"])
    for index, name in enumerate(vocabulary):       # the label slices, from the matrix
        count = sum(confusion[index])
        if count and _slice_name(((features.LABEL, name),)) not in slices:
            slices[_slice_name(((features.LABEL, name),))] = {
                "accuracy": confusion[index][index] / count, "example_count": float(count)}
    return {"slices": slices, "per_class": class_metrics(confusion, vocabulary, curves),
            "confusion": confusion}


def validation_checks(output: str) -> tuple[bool, list[dict[str, Any]]]:
    """TFMA's threshold verdicts: (ok, failures as {metric, slice, value, bound, message})."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(output)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        name = _slice_name(tuple((s.column, s.bytes_value.decode() if s.HasField("bytes_value")
                                  else s.int64_value) for s in per_slice.slice_key.single_slice_keys))
        for failure in per_slice.failures:
            failures.append({"metric": failure.metric_key.name, "model": failure.metric_key.model_name,
                             "is_diff": failure.metric_key.is_diff, "slice": name,
                             "value": failure.metric_value.double_value.value
                             if failure.metric_value.HasField("double_value") else None,
                             "message": failure.message})
    return bool(result.validation_ok), failures


def _thumbnail(data: bytes, size: int = 96) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.thumbnail((size, size))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# --- the step ------------------------------------------------------------------------


def _baseline_card(baseline: str | None) -> dict[str, Any]:
    path = fileio.join(baseline, artifacts.PushedModel.CARD) if baseline else None
    return json.loads(fileio.read_text(path)) if path and fileio.exists(path) else {}


def _write_gallery(writer: artifacts.ArtifactWriter, worst: list[tuple[float, str, bytes]],
                   rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most confident mistakes as thumbnails under misclassified/."""
    by_id = {row["id"]: row for row in rows}
    gallery = []
    for rank, (_, ident, image) in enumerate(worst):
        name = f"{rank:02d}.png"
        fileio.write_bytes(writer.file(artifacts.ModelEvaluation.GALLERY, name), _thumbnail(image))
        gallery.append({"file": f"{artifacts.ModelEvaluation.GALLERY}/{name}", **by_id[ident]})
    return gallery


def threshold_checks(evaluate: EvaluateConfig, metrics: dict[str, Any],
                     base_metrics: dict[str, Any] | None, failures: list[dict[str, Any]],
                     base_ref: str | None) -> list[dict[str, Any]]:
    """One check per configured bound and slice in scope (TFMA's verdict), one per
    `max_drop` against the baseline, and any TFMA failure no bound explains."""
    checks = []
    overall = metrics["slices"].get("overall", {})
    base_overall = (base_metrics or {}).get("slices", {}).get("overall", {})
    used: set[int] = set()

    def tfma_failures(metric: str, is_diff: bool) -> list[dict[str, Any]]:
        found = [i for i, f in enumerate(failures)
                 if f["metric"] == metric and f["is_diff"] == is_diff]
        used.update(found)
        return [failures[i] for i in found]

    for name, threshold in evaluate.thresholds.items():
        if threshold.min is not None or threshold.max is not None:
            failed_slices = {f["slice"] for f in tfma_failures(name, False)}
            bound = {k: v for k, v in (("min", threshold.min), ("max", threshold.max))
                     if v is not None}
            scopes = ["overall"] + sorted(
                key for key in metrics["slices"]
                if any(key.startswith(f"{feature}=") for feature in threshold.slices or []))
            for scope in scopes:
                checks.append({"check": f"{name} ({scope})", "source": "tfma",
                               "value": metrics["slices"].get(scope, {}).get(name),
                               "bound": bound,
                               "verdict": "fail" if scope in failed_slices else "pass"})
        if threshold.max_drop is not None and base_metrics is not None \
                and not gate.decides_change(evaluate, name):
            bad = tfma_failures(name, True)
            value = overall.get(name)
            change = None if value is None or base_overall.get(name) is None \
                else value - base_overall[name]
            checks.append({"check": f"{name} change vs {base_ref}", "source": "tfma",
                           "value": change, "bound": {"min": -threshold.max_drop},
                           "verdict": "fail" if bad else "pass"})
    for i, failure in enumerate(failures):
        if i not in used:
            checks.append({"check": f"{failure['metric']} ({failure['slice']})",
                           "source": "tfma", "value": failure["value"], "verdict": "fail",
                           "detail": failure["message"]})
    return checks


def recall_checks(recalls: dict[str, float], floor: float | None) -> list[dict[str, Any]]:
    if floor is None:
        return []
    return [{"check": f"recall of class {name}", "source": "predictions", "value": recall,
             "bound": {"min": floor}, "verdict": "pass" if recall >= floor else "fail"}
            for name, recall in recalls.items()]


def _verdict(tfma_ok: bool, checks: list[dict[str, Any]]) -> tuple[bool, str]:
    """(blessed, reason): the failed checks, each by its rule when it has one (the
    baseline gate), else value and bound; blessed, the baseline gate's rule too."""
    blessed = tfma_ok and all(c["verdict"] == "pass" for c in checks)
    failed = [c for c in checks if c["verdict"] == "fail"]
    if blessed:
        rules = [c["rule"] for c in checks if c.get("rule")]
        return True, "; ".join(["all checks passed", *rules])
    reason = "; ".join(
        c["rule"] if c.get("rule") else
        f"{c['check']}: {c['value'] if c['value'] is None else round(c['value'], 4)}"
        f"{' (needs ' + gate.bound_words(c['bound']) + ')' if c.get('bound') else ''}"
        for c in failed) \
        or "TFMA validation failed"
    return blessed, reason


def _summary_lines(accuracy: float | None, examples: int, comparison: dict[str, Any] | None,
                   base_ref: str | None, blessed: bool, reason: str) -> list[str]:
    if accuracy is None:
        first = f"{examples} eval examples"
    elif comparison:
        first = (f"accuracy {accuracy:.4f} on {examples} eval examples, baseline {base_ref}: "
                 f"{comparison['baseline_accuracy']:.4f} (difference "
                 f"{comparison['difference']:+.4f}, CI [{comparison['ci_low']:+.4f}, "
                 f"{comparison['ci_high']:+.4f}])")
    else:
        first = f"accuracy {accuracy:.4f} on {examples} eval examples, no baseline"
    note = gate.resolution_note(comparison) if comparison else None
    return [first, *([note] if note else []),
            ("BLESSED: " if blessed else "NOT BLESSED: ") + reason]


class Evaluated(Summary):
    """What evaluate did: blessed or not and why; the candidate's overall accuracy
    (the run's summary shows it)."""

    blessed: bool
    reason: str
    accuracy: float | None


# Only a blessed model goes on to push (the gate); the run's last line shows the accuracy.
# The KFP run page shows the evaluation's overall metrics and confusion matrix.
@step(gate="blessed", closed="not blessed", shows=("accuracy",), beam=("runner",),
      ui_outputs=(("metrics", "Metrics"), ("confusion", "ClassificationMetrics")))
def run(examples: In[artifacts.Examples], trained_model: In[artifacts.Model],
        evaluate: EvaluateConfig, beam: BeamConfig, evaluation: Out[artifacts.ModelEvaluation],
        blessing: Out[artifacts.ModelBlessing], baseline: BaselineModel = None
        ) -> Evaluated:
    """Writes a ModelEvaluation (TFMA output, metrics, predictions, gallery) and a
    ModelBlessing.
    `baseline`: the directory of the pushed version that holds the baseline alias
    (`push.baseline_alias`, resolved by the runner), or None."""
    files = features.split_files(examples, "eval")
    vocabulary = trained_model.properties["label_vocabulary"]
    saved = trained_model.path(artifacts.Model.SAVED_MODEL)
    base_card = _baseline_card(baseline)
    base_ref = f"{base_card.get('name')}:{base_card.get('version')}" if baseline else None
    base_vocab = base_card.get("label_vocabulary", vocabulary)
    config = eval_config(evaluate, len(vocabulary), baseline is not None)

    writer = evaluation
    # One Beam job on the configured runner (Dataflow workers for large splits):
    # both models score the same examples, and TFMA computes its metrics from those
    # predictions instead of running the models a second time.
    from components.evaluation import scoring

    scored = {CANDIDATE: (saved, vocabulary)}
    if baseline:
        scored[BASELINE] = (baseline, base_vocab)
    eval_count = sum(examples.properties.get("counts", {}).get("eval", {}).values())
    output = writer.file(artifacts.ModelEvaluation.TFMA)
    started = time.perf_counter()
    rows, worst = scoring.score_eval_split(
        files, scored, writer.path, beamio.pipeline_args(beam, eval_count), GALLERY,
        config, output)
    seconds = time.perf_counter() - started
    metrics = read_tfma(output, CANDIDATE if baseline else None, vocabulary,
                        scoring.read_curves(writer.path))
    base_metrics = read_tfma(output, BASELINE, base_vocab) if baseline else None
    tfma_ok, failures = validation_checks(output)
    gallery = _write_gallery(writer, worst, rows)

    labels = [row["label"] for row in rows]
    predicted = [row["predicted"] for row in rows]
    recalls = gate.class_recalls(labels, predicted)
    checks = threshold_checks(evaluate, metrics, base_metrics, failures, base_ref)
    checks += recall_checks(recalls, evaluate.min_class_recall)
    comparison = None
    if baseline:
        comparison = gate.compare(rows, evaluate, base_ref)
        checks.append(gate.gate_check(comparison, evaluate, base_ref))

    overall = metrics["slices"].get("overall", {})
    summary = {"model": trained_model.uri, "baseline": base_ref,
               "examples": len(rows), "metrics": metrics, "baseline_metrics": base_metrics,
               "comparison": comparison, "class_recall": recalls, "gallery": gallery,
               "label_vocabulary": vocabulary,
               # the baseline's confusion matrix is in its own class order
               "baseline_vocabulary": base_vocab if baseline else None,
               # tfma.load_eval_result(tfma/, model_name=...) reads the stored result
               "tfma_model_name": CANDIDATE if baseline else None,
               "scoring_and_tfma_seconds": round(seconds, 2)}
    artifacts.ModelEvaluation.write(writer, summary)
    writer.properties = {"accuracy": overall.get("accuracy"),
                         "examples": len(rows), "baseline": base_ref}

    blessed, reason = _verdict(tfma_ok, checks)
    record = {"blessed": blessed, "reason": reason, "baseline": base_ref,
              "gate": evaluate.gate, "checks": checks}
    artifacts.ModelBlessing.write(blessing, record)
    blessing.properties = {"blessed": blessed, "reason": reason, "baseline": base_ref}
    accuracy = overall.get("accuracy")
    return Evaluated(blessed=blessed, reason=reason, accuracy=accuracy,
                     lines=_summary_lines(accuracy, len(rows), comparison, base_ref, blessed,
                                          reason))
