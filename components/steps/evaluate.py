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
confidence bound. The Blessing lists every check with value, bound and verdict.
"""

from __future__ import annotations

import io
import json
import math
import time
from typing import Any


from components import artifacts, beamio, features, fileio, gate, runtime
from components.config import BeamConfig, EvaluateConfig
from components.contract import BASELINE_MODEL, step

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
    """The TFMA EvalConfig: two model specs (candidate, baseline), metrics, slices and
    thresholds scoped to the slices the config names."""
    from tensorflow_model_analysis.proto import config_pb2

    names = [CANDIDATE] + ([BASELINE] if with_baseline else [])
    specs = [config_pb2.ModelSpec(
        name=name, signature_name="serving_default", label_key=features.LABEL_ID,
        prediction_key="probabilities", preprocessing_function_names=["transform_features"],
        is_baseline=name == BASELINE) for name in names]
    # No slice per label unless a threshold names it: TFMA computes every metric (the
    # per-class ones too) for every slice, which made evaluate cost more than training;
    # per-label accuracy and counts come from the overall confusion matrix (read_tfma).
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
            metric.per_slice_thresholds.add(slicing_specs=scopes,
                                            threshold=_threshold(threshold, with_baseline))
        metrics.append(metric)
    metrics.append(config_pb2.MetricConfig(class_name="MultiClassConfusionMatrixPlot"))
    # Precision/recall/F1 of the top-1 prediction (not of probability > 0.5).
    per_class = [config_pb2.MetricConfig(class_name=c, config='{"top_k": 1}')
                 for c in ("Precision", "Recall", "F1Score")]
    # AUC from 1,000 thresholds and a 20-bucket calibration plot instead of TFMA's
    # default 10,000 per class and slice: the same numbers to 3 decimals, 100 MB less.
    per_class += [config_pb2.MetricConfig(class_name="AUC", config='{"num_thresholds": 1000}'),
                  config_pb2.MetricConfig(class_name="Calibration")]
    per_class.append(config_pb2.MetricConfig(class_name="CalibrationPlot",
                                             config='{"num_buckets": 20}'))
    return config_pb2.EvalConfig(
        model_specs=specs, slicing_specs=slicing,
        metrics_specs=[
            config_pb2.MetricsSpec(metrics=metrics, model_names=names),
            config_pb2.MetricsSpec(metrics=per_class, model_names=names,
                                   binarize=config_pb2.BinarizationOptions(
                                       class_ids={"values": list(range(num_classes))}))])


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


def read_tfma(output: str, model_name: str | None, vocabulary: list[str]) -> dict[str, Any]:
    """TFMA's results as plain JSON: metrics per slice, per class, confusion matrix."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(output, model_name=model_name)
    slices: dict[str, dict[str, float | None]] = {}
    per_class: dict[str, dict[str, float | None]] = {}
    for key, metrics in result.slicing_metrics:
        for sub_key, values in metrics.get("", {}).items():
            clean = {k: _value(v) for k, v in values.items() if not k.endswith("_diff")}
            if sub_key == "":
                slices.setdefault(_slice_name(key), {}).update(clean)
            elif not key and sub_key.startswith("classId:"):
                # "classId:3 topK:1" (argmax precision/recall/F1) and "classId:3" (AUC,
                # calibration: one-vs-rest over the probability).
                class_name = vocabulary[int(sub_key.split()[0].split(":")[1])]
                per_class.setdefault(class_name, {}).update(clean)
    confusion = [[0] * len(vocabulary) for _ in vocabulary]
    for key, plots in result.plots:
        if key:
            continue
        matrix = plots.get("", {}).get("", {}).get("multiClassConfusionMatrixAtThresholds")
        if matrix:
            for entry in matrix["matrices"][0]["entries"]:
                confusion[int(entry.get("actualClassId", 0))][
                    int(entry.get("predictedClassId", 0))] = int(entry["numWeightedExamples"])
    for index, name in enumerate(vocabulary):       # the label slices, from the matrix
        count = sum(confusion[index])
        if count and _slice_name(((features.LABEL, name),)) not in slices:
            slices[_slice_name(((features.LABEL, name),))] = {
                "accuracy": confusion[index][index] / count, "example_count": float(count)}
    return {"slices": slices, "per_class": per_class, "confusion": confusion}


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
    path = fileio.join(baseline, "model_card.json") if baseline else None
    return json.loads(fileio.read_text(path)) if path and fileio.exists(path) else {}


def _run_tfma(examples: artifacts.Artifact, saved: str, baseline: str | None, config: Any,
              beam: BeamConfig, output: str) -> float:
    """TFMA over the raw eval examples (both models when there is a baseline); seconds."""
    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions

    started = time.perf_counter()
    models = [tfma.default_eval_shared_model(eval_saved_model_path=fileio.tf_path(saved),
                                             model_name=CANDIDATE, eval_config=config)]
    if baseline:
        models.append(tfma.default_eval_shared_model(
            eval_saved_model_path=fileio.tf_path(baseline), model_name=BASELINE, eval_config=config))
    tfma.run_model_analysis(
        eval_shared_model=models if baseline else models[0], eval_config=config,
        data_location=examples.path("eval", "*.tfrecord.gz"),
        file_format="tfrecords", output_path=output,
        pipeline_options=PipelineOptions(beamio.pipeline_args(beam)))
    return time.perf_counter() - started


def _write_gallery(writer: artifacts.ArtifactWriter, worst: list[tuple[float, str, bytes]],
                   rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most confident mistakes as thumbnails under misclassified/."""
    by_id = {row["id"]: row for row in rows}
    gallery = []
    for rank, (_, ident, image) in enumerate(worst):
        name = f"{rank:02d}.png"
        fileio.write_bytes(writer.file("misclassified", name), _thumbnail(image))
        gallery.append({"file": f"misclassified/{name}", **by_id[ident]})
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
        if threshold.max_drop is not None and base_metrics is not None:
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
    blessed = tfma_ok and all(c["verdict"] == "pass" for c in checks)
    failed = [c for c in checks if c["verdict"] == "fail"]
    reason = "all checks passed" if blessed else "; ".join(
        f"{c['check']}: {c['value'] if c['value'] is None else round(c['value'], 4)}"
        f"{' vs ' + json.dumps(c['bound']) if c.get('bound') else ''}" for c in failed) \
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
    return [first, "BLESSED" if blessed else "NOT BLESSED: " + reason]


@step(name="evaluate",
      inputs={"examples": artifacts.Examples, "trained_model": artifacts.Model},
      outputs={"evaluation": artifacts.Evaluation, "blessing": artifacts.Blessing},
      config=("evaluate",), beam=("runner",), resolved={"baseline": BASELINE_MODEL},
      gate="blessed")
def run(examples: artifacts.Artifact, trained_model: artifacts.Artifact,
        evaluate: EvaluateConfig, beam: BeamConfig, evaluation: str, blessing: str,
        baseline: str | None = None, producer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes an Evaluation (TFMA output, metrics, predictions, gallery) and a Blessing.
    `baseline`: the directory of the pushed version that holds the baseline alias
    (`push.baseline_alias`, resolved by the runner), or None."""
    files = features.split_files(examples, "eval")
    vocabulary = trained_model.properties["label_vocabulary"]
    saved = trained_model.path("saved_model")
    base_card = _baseline_card(baseline)
    base_ref = f"{base_card.get('name')}:{base_card.get('version')}" if baseline else None
    base_vocab = base_card.get("label_vocabulary", vocabulary)
    config = eval_config(evaluate, len(vocabulary), baseline is not None)

    with artifacts.writing(evaluation, artifacts.Evaluation, producer) as writer:
        # Per-example predictions of both models on the same examples, as a Beam job on
        # the configured runner (Dataflow workers for large splits), before TFMA loads
        # its own copies (the models are released first: a lower peak RSS).
        from components import scoring

        scored = {CANDIDATE: (saved, vocabulary)}
        if baseline:
            scored[BASELINE] = (baseline, base_vocab)
        eval_count = sum(examples.properties.get("counts", {}).get("eval", {}).values())
        rows, worst = scoring.score_eval_split(
            files, scored, writer.path, beamio.pipeline_args(beam, eval_count), GALLERY)
        runtime.release_memory()
        output = writer.file("tfma")
        tfma_seconds = _run_tfma(examples, saved, baseline, config, beam, output)
        metrics = read_tfma(output, CANDIDATE if baseline else None, vocabulary)
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
            base_predicted = [row["baseline_predicted"] for row in rows]
            comparison = gate.compare(labels, predicted, base_predicted, evaluate, base_ref)
            checks.append(gate.gate_check(comparison, evaluate, base_ref))

        overall = metrics["slices"].get("overall", {})
        summary = {"model": trained_model.uri, "baseline": base_ref,
                   "examples": len(rows), "metrics": metrics, "baseline_metrics": base_metrics,
                   "comparison": comparison, "class_recall": recalls, "gallery": gallery,
                   "label_vocabulary": vocabulary, "tfma_seconds": round(tfma_seconds, 2)}
        fileio.write_text(writer.file("metrics.json"), json.dumps(summary, indent=2))
        writer.properties = {"accuracy": overall.get("accuracy"),
                             "examples": len(rows), "baseline": base_ref}
        writer.commit()

    blessed, reason = _verdict(tfma_ok, checks)
    with artifacts.writing(blessing, artifacts.Blessing, producer) as writer:
        record = {"blessed": blessed, "reason": reason, "baseline": base_ref,
                  "gate": evaluate.gate, "checks": checks}
        fileio.write_text(writer.file("blessing.json"), json.dumps(record, indent=2))
        writer.properties = {"blessed": blessed, "reason": reason, "baseline": base_ref}
        writer.commit()
    accuracy = overall.get("accuracy")
    return {"blessed": blessed, "accuracy": accuracy,
            "lines": _summary_lines(accuracy, len(rows), comparison, base_ref, blessed, reason)}
