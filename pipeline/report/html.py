"""The run report: one self-contained `report.html` (plots embedded, PNGs also written
next to it) per run, for the reviewer of a promotion: what was pushed where, every
blessing check with the baseline comparison and its confidence interval, per-slice and
per-class metrics, the candidate's and the baseline's confusion matrices side by side,
ROC, precision-recall and calibration curves, a gallery of the most confident mistakes,
training curves, the config and tuned values that made the model, pointers to the
TensorBoard logs and the stored TFMA result, data and quarantine, anomalies. The plots
are drawn by pipeline.report.plots."""

from __future__ import annotations

import base64
import html
import json
import os
from types import SimpleNamespace
from typing import Any

from components import artifacts
from components.io import fileio
from pipeline import dag
from pipeline.report.plots import _plots, curve_series, spans_plot
from pipeline.results import delivery, one_line, outcome, outputs_by_ref, summary_from_artifacts

# The step outputs the report reads (checked against the DAG when this module loads).
STATISTICS = dag.ref("ingest", "statistics")
ANOMALIES = dag.ref("validate", "anomalies")
HYPERPARAMETERS = dag.ref("tune", "hyperparameters")
MODEL = dag.ref("train", "trained_model")
EVALUATION = dag.ref("evaluate", "evaluation")
BLESSING = dag.ref("evaluate", "blessing")
INFRA_BLESSING = dag.ref("infra_validate", "infra_blessing")
PUSHED_MODEL = dag.ref("push", "pushed_model")
INFERENCE = dag.ref("infer", "inference_result")      # only a run with infer.source
# What the KFP report task is given: the outputs of steps outside any gate (a task
# cannot read an output of a task under a `dsl.If` it is not under).
TASK_INPUTS = (STATISTICS, ANOMALIES, MODEL, EVALUATION, BLESSING, INFRA_BLESSING)

STYLE = """body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}
.pass{color:#17702a;font-weight:600}.fail{color:#b00020;font-weight:600}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;width:120px;
font-size:11px}.gallery img{width:96px;image-rendering:pixelated;border:1px solid #ccc}
h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.6em}img{max-width:100%}
.config{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.config table{margin:0}
.config caption{font-weight:600;text-align:left;padding-bottom:2px}
.tuned{background:#fff5d6;font-weight:600}code{background:#f4f4f4;padding:1px 4px}
.pointers li{margin:.3em 0}"""


def _read_json(path: str) -> Any:
    return json.loads(fileio.read_text(path)) if fileio.exists(path) else None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            # rates to 3 decimals (1.000, not 1: counts are ints by the time they get
            # here); small values (learning rates) to 3 significant digits
            return f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    def td(value: Any) -> str:
        css = " ".join(c for c in (getattr(value, "css", None), _numeric(value) and "num") if c)
        return f"<td class='{css}'>{cell(value)}</td>" if css else f"<td>{cell(value)}</td>"

    body = "".join("<tr>" + "".join(td(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Figure(str):
    """A number already formatted (seconds to 0.1): shown as is, aligned as a number."""


def _numeric(value: Any) -> bool:
    """Numbers sit right-aligned in a table."""
    return isinstance(value, (int, float, Figure)) and not isinstance(value, bool)


def _training_notes(manifest: dict | None) -> str:
    """What trained (kind, plan) and the tuned values it trained with."""
    props = (manifest or {}).get("properties", {})
    lines = []
    if props.get("kind"):
        lines.append(f"{html.escape(str(props['kind']))}, {props.get('trainable_params', 0):,} "
                     f"trainable parameters, {props.get('epochs')} epochs, "
                     f"{html.escape(str(props.get('strategy')))} "
                     f"({html.escape(str(props.get('training_plan', '')))})")
    tuned = _tuned(manifest)
    if tuned:
        lines.append("Tuned values: " + html.escape(
            ", ".join(f"{k}={_config_value(v)}" for k, v in tuned.items())))
    return "".join(f"<p>{line}</p>" for line in lines)


def _curves_note(history: dict) -> str:
    """Which data the curves' lines are (the validation split is not the eval split)."""
    labels = {label for series in curve_series(history).values() for label, _ in series}
    if "validation" not in labels:
        return ""
    return ("<p>train: the part of the train split the model was fitted on; validation: "
            "the part held out from it during fit (data.validation_fraction), which early "
            "stopping, when on, scores. The eval split is scored under Evaluation.</p>")


def _tuned(manifest: dict | None) -> dict[str, Any]:
    """The tuned values train applied over its config (dotted keys), if any."""
    props = (manifest or {}).get("properties", {})
    return dict((props.get("hyperparameters") or {}).get("best") or {})


def _pointers(model_uri: str | None, evaluation_uri: str | None,
              metrics: dict | None) -> str:
    """Where to look further: the TensorBoard logs and the stored TFMA result."""
    items = []
    if model_uri:
        items.append("TensorBoard (training curves, graph): <code>tensorboard --logdir "
                     f"{html.escape(fileio.join(model_uri, artifacts.Model.LOGS))}</code>")
    if evaluation_uri:
        name = (metrics or {}).get("tfma_model_name")
        if name is None and (metrics or {}).get("comparison"):
            name = "candidate"          # evaluations written before the name was recorded
        arguments = repr(fileio.join(evaluation_uri, artifacts.ModelEvaluation.TFMA)) + (
            f", model_name={name!r}" if name else "")
        items.append("TFMA result (slices, plots, in a notebook): <code>import "
                     "tensorflow_model_analysis as tfma; result = "
                     f"tfma.load_eval_result({html.escape(arguments)})</code>")
    if not items:
        return ""
    return ("<h2>Look further</h2><ul class='pointers'>"
            + "".join(f"<li>{item}</li>" for item in items) + "</ul>")


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict) and tree:
        out: list[tuple[str, Any]] = []
        for key, value in tree.items():
            out.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [(prefix, tree)]


def _config_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"            # a tuned learning rate, not 0.00010928280642635887
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _config_section(config: dict[str, Any], tuned: dict[str, Any]) -> str:
    """The sections the model card records, one small table each; a value the search
    tuned is shown as trained, with the config's value beside it."""
    tables = []
    for section, values in config.items():
        rows = []
        for key, value in _flatten(values or {}):
            dotted = f"{section}.{key}"
            if dotted in tuned:
                rows.append(f"<tr class='tuned'><td>{html.escape(key)}</td><td>"
                            f"{html.escape(_config_value(tuned[dotted]))} (tuned; config "
                            f"{html.escape(_config_value(value))})</td></tr>")
            else:
                rows.append(f"<tr><td>{html.escape(key)}</td>"
                            f"<td>{html.escape(_config_value(value))}</td></tr>")
        tables.append(f"<table><caption>{html.escape(section)}</caption>{''.join(rows)}"
                      "</table>")
    missing = {k: v for k, v in tuned.items() if k.split(".")[0] not in config}
    extra = ("<p>Tuned values outside these sections: " + html.escape(", ".join(
        f"{k}={v}" for k, v in missing.items())) + "</p>") if missing else ""
    from components.config.train import decision_line

    # the run's first line: the data's shape (set or decided from the data) and defaults
    line = decision_line(config.get("data") or {}, config.get("train") or {})
    return ("<h2>Config</h2>" + (f"<p><b>{html.escape(line)}</b></p>" if line else "")
            + "<p>The sections recorded in the model card"
            + (" (tuned values highlighted)" if tuned else "") + ".</p>"
            + f"<div class='config'>{''.join(tables)}</div>" + extra)


def _tune_section(record: dict, image: str) -> str:
    if not record.get("searched"):
        source = record.get("source")
        return ("<h2>Tuning</h2><p>" + (f"Best values reused from {html.escape(source)}: "
                                       if source else "No search (no tune.space).")
                + html.escape(", ".join(f"{k}={v}" for k, v in record["best"].items()))
                + "</p>")
    keys = list(record["space"])
    rows = [[("★ " if t["trial"] == record["best_trial"] else "") + str(t["trial"]),
             *[t["values"].get(k) for k in keys], t["score"],
             None if t["seconds"] is None else Figure(f"{t['seconds']:.1f}")]
            for t in record["trials"]]
    head = (f"<h2>Tuning</h2><p>{record['algorithm']} search, {len(record['trials'])} "
            f"trials of {record['epochs_per_trial']} epochs, {record['seconds']} s; best "
            f"{html.escape(record['objective'])} {record['best_score']:.4f} (trial "
            f"{record['best_trial']}), applied to train's config.</p>")
    return head + image + _table(["trial", *keys, record["objective"], "seconds"], rows)


def _with_summaries(steps: list[Any]) -> list[Any]:
    """The steps with the records `outcome` reads; where a step has none (the KFP report
    task knows only the artifacts), what its committed outputs tell
    (`results.summary_from_artifacts`, by the step's declaration in the DAG)."""
    out = []
    for step in steps:
        spec = next((n.spec for n in dag.STEPS if n.name == step.step), None)
        if getattr(step, "summary", None) is not None or spec is None:
            out.append(step)
            continue
        outputs = {name: artifacts.read(uri) for name, uri in step.outputs.items()
                   if artifacts.is_committed(uri)}
        out.append(SimpleNamespace(step=step.step, status=step.status,
                                   error=getattr(step, "error", None),
                                   summary=summary_from_artifacts(spec, outputs)))
    return out


def _decision(step: Any) -> str:
    """A step's cache decision; for the step that failed, its error."""
    error = getattr(step, "error", None)
    if step.status != "failed" or not error:
        return step.decision
    return f"{step.decision}; error: {one_line(error)}" if step.decision else \
        f"error: {one_line(error)}"


def _push_section(push: dict) -> str:
    already = "Already pushed" if push.get("already") else "Pushed"
    verdict = (f"<p class='pass'>{already} {html.escape(push['model_name'])}:{push['version']}"
               f" to {html.escape(push['path'])}</p>" if push.get("pushed") else
               f"<p class='fail'>Nothing pushed: {html.escape(push.get('reason', ''))}</p>")
    return "<h2>Push</h2>" + verdict


def _inference_section(summary: dict, uri: str) -> str:
    """The infer step's batch: what was scored with which version, per class."""
    where = html.escape(summary.get("source") or "") + (
        f" ({html.escape(summary['span'])})" if summary.get("span") else "")
    if not summary.get("pushed"):
        return (f"<h2>Batch inference</h2><p>Nothing scored in {where}: "
                f"{html.escape(summary.get('reason') or 'nothing was pushed')}</p>")
    predictions = html.escape(fileio.join(uri, artifacts.InferenceResult.PREDICTIONS))
    return (f"<h2>Batch inference</h2><p>{summary['scored']} of {summary['files']} file(s) "
            f"in {where} scored with {html.escape(summary['model'])}, {summary['errors']} "
            f"not scored (their rows say why): <code>{predictions}</code></p>"
            + _table(["predicted class", "files"],
                     [[name, count] for name, count in summary["classes"].items()]))


def _blessing_section(blessing: dict, infra: dict | None) -> str:
    cls = "pass" if blessing["blessed"] else "fail"
    out = (f"<h2>Blessing</h2><p class='{cls}'>"
           f"{'BLESSED' if blessing['blessed'] else 'NOT BLESSED'}: "
           f"{html.escape(blessing['reason'])}</p>")
    out += _table(["check", "source", "value", "bound", "verdict", "detail"], [
        [c["check"], c["source"], c["value"], _bound(c.get("bound")), c["verdict"],
         c.get("detail", "")] for c in blessing["checks"]])
    return out + (_infra_line(infra) if infra else "")


def _bound(bound: dict | None) -> str:
    """{'min': 0.8} -> '>= 0.8' (components.evaluation.gate.bound_words)."""
    from components.evaluation.gate import bound_words

    return bound_words(bound).replace(" ", "\u00a0")      # one line: '>= -0.2'


# A drop against the baseline this large is shown as a warning even when the gate
# allowed it (its max_drop is a config choice, the reader should still see it).
LARGE_DROP = 0.02


def _infra_line(infra: dict) -> str:
    return (f"<p>Infra validation: <span class='{'pass' if infra['passed'] else 'fail'}'>"
            f"{html.escape(infra['reason'])}</span></p>")


def _evaluation_section(metrics: dict, images: dict[str, str], evaluation_uri: str) -> str:
    comparison = metrics.get("comparison")
    parts = ["<h2>Evaluation</h2>"]
    if comparison:
        parts.append(
            f"<p>Baseline {html.escape(str(comparison['baseline']))}: accuracy "
            f"{comparison['baseline_accuracy']:.4f} &rarr; {comparison['candidate_accuracy']:.4f}"
            f" (difference {comparison['difference']:+.4f}, "
            f"{comparison['confidence']:.0%} paired bootstrap CI [{comparison['ci_low']:+.4f}, "
            f"{comparison['ci_high']:+.4f}], McNemar p = {comparison['mcnemar_p']:.3g}, "
            f"{comparison['examples']} examples)</p>")
        if comparison["difference"] <= -LARGE_DROP:
            parts.append(f"<p class='fail'>Warning: accuracy is "
                         f"{-comparison['difference']:.1%} below the baseline "
                         f"{html.escape(str(comparison['baseline']))}.</p>")
    else:
        parts.append("<p>No baseline (no model holds the baseline alias yet).</p>")
    slices = dict(sorted(metrics["metrics"]["slices"].items(),
                         key=lambda item: (item[0] != "overall", item[0])))
    base_slices = (metrics.get("baseline_metrics") or {}).get("slices", {})
    parts.append(_table(["slice", "accuracy", "top-k accuracy", "examples", "baseline accuracy"],
                        [[name, v.get("accuracy"), v.get("top_k_accuracy"),
                          _count(v.get("example_count")),
                          base_slices.get(name, {}).get("accuracy")]
                         for name, v in slices.items()]))
    parts.append(_per_class_table(metrics["metrics"]["per_class"], comparison))
    if "confusion" in images:
        both = bool((metrics.get("baseline_metrics") or {}).get("confusion"))
        parts.append(("<h3>Confusion matrices: this run's model and the baseline</h3>"
                      if both else "<h3>Confusion matrix</h3>") + images["confusion"])
    if "roc" in images:
        parts.append("<h3>ROC and calibration</h3>" + images["roc"])
    if "pr" in images:
        parts.append("<h3>Precision-recall</h3>" + images["pr"])
    parts.append(_gallery(metrics.get("gallery") or [], evaluation_uri))
    return "".join(parts)


def _per_class_table(per_class: dict, comparison: dict | None) -> str:
    base_recall = {k: v["baseline"] for k, v in (comparison or {}).get("class_recall", {}).items()}
    rows = []
    for name, v in sorted(per_class.items()):
        change = None if base_recall.get(name) is None or v.get("recall") is None \
            else v["recall"] - base_recall[name]
        rows.append([name, v.get("precision"), v.get("recall"), v.get("f1_score"), v.get("auc"),
                     v.get("calibration"), base_recall.get(name),
                     Marked(change, "fail") if change is not None and change <= -0.1
                     else change])
    return "<h3>Per class</h3>" + _table(
        ["class", "precision", "recall", "F1", "AUC", "calibration", "baseline recall",
         "recall change"], rows)


def _count(value: Any) -> Any:
    """TFMA stores counts as floats: 39.0 -> 39."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class Marked(float):
    """A number shown with a CSS class (a recall drop of 10 points or more: 'fail')."""

    def __new__(cls, value: float, css: str):
        made = super().__new__(cls, value)
        made.css = css
        return made


def _gallery(gallery: list[dict], evaluation_uri: str) -> str:
    if not gallery:
        return ""
    figures = []
    for item in gallery:
        thumbnail = fileio.join(evaluation_uri, item["file"])
        data = base64.b64encode(fileio.read_bytes(thumbnail)).decode()
        figures.append(
            f"<figure><img src='data:image/png;base64,{data}'><figcaption>true "
            f"<b>{html.escape(item['label'])}</b><br>predicted "
            f"<b>{html.escape(item['predicted'])}</b> ({item['probability']:.2f})"
            f"</figcaption></figure>")
    return ("<h3>Most confident mistakes</h3><div class='gallery'>" + "".join(figures)
            + "</div>")


def _split_total(counts: Any) -> Any:
    return sum(counts.values()) if isinstance(counts, dict) else counts


def _data_section(stats: dict, spans_image: str = "") -> str:
    out = "<h2>Data</h2>" + _table(
        ["examples", "inputs", "quarantined", "bad fraction", "train", "eval"],
        [[stats["num_examples"], stats["num_inputs"], stats["num_quarantined"],
          stats["bad_fraction"], _split_total(stats["counts"].get("train", {})),
          _split_total(stats["counts"].get("eval", {}))]])
    window = stats.get("spans") or []
    if window:
        classes = sorted({c for part in window for split in part["counts"].values()
                          for c in split})
        out += (f"<h3>Spans ({len(window)}; evaluated on "
                f"{'the newest' if stats.get('eval_spans', 'newest') == 'newest' else 'all'})</h3>"
                + _table(["span", "version", "examples", *classes],
                         [[part["span"], part.get("version") if part.get("version") is not None
                           else "-", part["num_examples"],
                           *[sum(split.get(c, 0) for split in part["counts"].values())
                             for c in classes]] for part in window])
                + spans_image)
    if stats.get("quarantine_reasons"):
        out += "<h3>Quarantine</h3>" + _table(["reason", "files"],
                                              sorted(stats["quarantine_reasons"].items()))
    return out


def _validation_section(anomalies: Any) -> str:
    items = anomalies if isinstance(anomalies, list) else anomalies.get("anomalies", [])
    return "<h2>Validation</h2>" + (_table(
        ["severity", "kind", "feature", "description"],
        [[a["severity"], a["kind"], a["feature"], a["description"]] for a in items])
        if items else "<p>No anomalies.</p>")


def write_for_run(runs_dir: str, run_id: str, status: str, steps: list[Any],
                  error: str | None, config: dict[str, Any], log: Any) -> None:
    """A runner's report of a finished run, failed ones too: RUNS_DIR/RUN_ID/report.html
    (plots kept in RUNS_DIR/.plots), its path logged. A report never fails the run it
    describes: an error writing it is logged instead."""
    try:
        path = write(os.path.join(runs_dir, run_id), run_id, status, steps, error,
                     plot_cache=os.path.join(runs_dir, ".plots"), config=config)
    except Exception as exc:
        log(f"  (report not written: {type(exc).__name__}: {exc})")
        return
    log(f"  report   {path}")


def draw_plots(runs_dir: str, run_id: str, steps: list[Any]) -> None:
    """Draws the plots of the steps finished so far into the plot cache
    (RUNS_DIR/.plots), where the run's report finds them. The local runner calls it
    while it waits for a step running beside (infra validation in its own process), so
    that drawing them (matplotlib's import included) is off the run's critical path.
    Never fails the run: a plot not drawn now is drawn by the report."""
    try:
        outputs = outputs_by_ref(steps)
        evaluation_uri = EVALUATION.uri(outputs)
        run_dir = os.path.join(runs_dir, run_id)
        cache = os.path.join(runs_dir, ".plots")
        os.makedirs(run_dir, exist_ok=True)
        _plots(artifacts.Model.load(MODEL.uri(outputs)),
               artifacts.ModelEvaluation.load(evaluation_uri), run_dir, cache,
               artifacts.HyperParameters.load(HYPERPARAMETERS.uri(outputs)), evaluation_uri)
        stats = artifacts.ExampleStatistics.load(STATISTICS.uri(outputs))
        if stats:
            spans_plot(stats, run_dir, cache)
    except Exception:       # the report draws what is missing, and says so if it fails
        return


def write(run_dir: str, run_id: str, status: str, steps: list[Any], error: str | None = None,
          path: str | None = None, plot_cache: str | None = None,
          config: dict[str, Any] | None = None) -> str:
    """Writes `run_dir/report.html` (or `path`) from the run's step results: objects with
    `step`, `status`, `seconds`, `decision` and `outputs` {name: uri}. `plot_cache`: a
    folder where plots are kept by the hash of their data, shared by runs. `config`:
    the sections the model card records ({section: values})."""
    os.makedirs(run_dir, exist_ok=True)
    outputs = outputs_by_ref(steps)
    model_uri, evaluation_uri = MODEL.uri(outputs), EVALUATION.uri(outputs)
    stats = artifacts.ExampleStatistics.load(STATISTICS.uri(outputs))
    anomalies = artifacts.ExampleAnomalies.load(ANOMALIES.uri(outputs))
    history = artifacts.Model.load(model_uri)
    metrics = artifacts.ModelEvaluation.load(evaluation_uri)
    blessing = artifacts.ModelBlessing.load(BLESSING.uri(outputs))
    infra = artifacts.InfraBlessing.load(INFRA_BLESSING.uri(outputs))
    # not run behind a closed gate, it wrote nothing: its record says why
    push = artifacts.PushedModel.load(PUSHED_MODEL.uri(outputs)) or delivery(steps)
    inference = artifacts.InferenceResult.load(INFERENCE.uri(outputs))
    tuning = artifacts.HyperParameters.load(HYPERPARAMETERS.uri(outputs))
    images = _plots(history, metrics, run_dir, plot_cache, tuning, evaluation_uri)

    did = outcome(status, _with_summaries(steps), error)
    parts = [f"<!doctype html><meta charset='utf-8'><title>imgpipe run {run_id}</title>"
             f"<style>{STYLE}</style><h1>Run {html.escape(run_id)}: "
             f"{html.escape(did['text'])}</h1>"]
    if error:
        parts.append(f"<p class='fail'>{html.escape(error)}</p>")
    parts.append("<h2>Steps</h2>" + _table(
        ["step", "status", "seconds", "decision"],
        [[s.step, s.status, Figure(f"{s.seconds:.1f}"), _decision(s)] for s in steps]))
    if push:
        parts.append(_push_section(push))
    if inference:
        parts.append(_inference_section(inference, INFERENCE.uri(outputs)))
    if blessing:
        parts.append(_blessing_section(blessing, infra))
    elif infra:
        parts.append(_infra_line(infra))
    if metrics:
        parts.append(_evaluation_section(metrics, images, evaluation_uri))
    model_manifest = _read_json(fileio.join(model_uri, artifacts.MANIFEST_NAME)) \
        if model_uri else None
    if history:
        parts.append("<h2>Training</h2>" + images.get("curves", "") + _curves_note(history)
                     + _training_notes(model_manifest))
    if tuning:
        parts.append(_tune_section(tuning, images.get("trials", "")))
    if config:
        parts.append(_config_section(config, _tuned(model_manifest)))
    parts.append(_pointers(model_uri if history else None,
                           evaluation_uri if metrics else None, metrics))
    if stats:
        parts.append(_data_section(stats, spans_plot(stats, run_dir, plot_cache)))
    if anomalies is not None:
        parts.append(_validation_section(anomalies))
    path = path or os.path.join(run_dir, "report.html")
    fileio.write_text_atomic(path, "\n".join(parts))
    return path
