"""The run report's plots: training curves, tuning trials, the candidate's and the
baseline's confusion matrices side by side, ROC, precision-recall and calibration
curves, each drawn with matplotlib (imported only to draw) as a PNG written next to
`report.html` and an embedded <img>, kept in a cache by the hash of its data."""

from __future__ import annotations

import base64
import os
from typing import Any

from components import artifacts
from components.io import fileio



# The epoch log's series by split. Keras' `val_` metrics are the validation split's:
# the part of the train split held out during fit (data.validation_fraction), not the
# eval split, which evaluate scores.
SPLITS = (("", "train"), ("val_", "validation"))


def curve_series(history: dict) -> dict[str, list[tuple[str, list[float]]]]:
    """{metric: [(split, value per epoch)]}: the lines the training curves draw."""
    return {key: [(label, history[prefix + key]) for prefix, label in SPLITS
                  if history.get(prefix + key)] for key in ("loss", "accuracy")}


def _draw_curves(history: dict) -> bytes:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, (key, series) in zip(axes, curve_series(history).items()):
        for label, values in series:
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3,
                    label=label)   # one epoch: a point
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_whole_numbers())
        ax.set_title(key)
        ax.legend()
    return _to_png(plt, fig)


def _whole_numbers():
    """Axis ticks on whole numbers (epochs, trials): 1, 2, not 1.0, 1.2, ..."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _by_name(matrix: list[list[int]], vocabulary: list[str], classes: list[str]
             ) -> list[list[int]]:
    """A confusion matrix in vocabulary order -> rows and columns in `classes` order
    (a class the model does not know: zeros)."""
    index = {name: i for i, name in enumerate(vocabulary)}
    return [[matrix[index[a]][index[b]] if a in index and b in index
             and index[a] < len(matrix) and index[b] < len(matrix[index[a]]) else 0
             for b in classes] for a in classes]


def _draw_confusion(data: dict) -> bytes:
    """The candidate's confusion matrix, and the baseline's beside it on the same eval
    examples when there is one; classes by name in both."""
    plt = _pyplot()
    panels = [(data["title"], data["confusion"])]
    if data.get("baseline") is not None:
        panels.append((data["baseline_title"], data["baseline"]))
    vocab = data["classes"]
    size = max(3.5, 0.45 * len(vocab))
    fig, axes = plt.subplots(1, len(panels), figsize=((size + 1) * len(panels), size),
                             squeeze=False)
    for ax, (title, confusion) in zip(axes[0], panels):
        im = ax.imshow(confusion, cmap="Blues")
        ax.set_xticks(range(len(vocab)), vocab, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(vocab)), vocab, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
        if len(vocab) <= 15:
            top = max(map(max, confusion)) or 1
            for i, row in enumerate(confusion):
                for j, value in enumerate(row):
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                            color="white" if value > top / 2 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _to_png(plt, fig)


def _draw_trials(record: dict) -> bytes:
    """Each trial's score in the order they ran, and the best so far."""
    plt = _pyplot()
    trials = [t for t in record["trials"] if t["score"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs, ys = [t["trial"] for t in trials], [t["score"] for t in trials]
    ax.scatter(xs, ys, label="trial")
    pick = min if record.get("direction") == "min" else max
    best = [pick(ys[:i + 1]) for i in range(len(ys))]
    ax.step(xs, best, where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(_whole_numbers())
    ax.set_ylabel(record["objective"])
    ax.legend()
    return _to_png(plt, fig)


def _draw_spans(window: list[dict]) -> bytes:
    """Each class's share of each span (all its images), spans in order: a drifted drop
    stands out as a jump."""
    plt = _pyplot()
    labels = [part["span"] for part in window]
    totals = [sum(sum(c.values()) for c in part["counts"].values()) or 1 for part in window]
    classes = sorted({c for part in window for split in part["counts"].values() for c in split})
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels) + 2), 3.2))
    for name in classes:
        shares = [sum(split.get(name, 0) for split in part["counts"].values()) / total
                  for part, total in zip(window, totals)]
        ax.plot(range(len(labels)), shares, marker="o", label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel("class share")
    if len(classes) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return _to_png(plt, fig)


def spans_plot(stats: dict | None, out_dir: str, cache_dir: str | None) -> str:
    """The class shares across a window of spans, or '' for a plain source."""
    window = (stats or {}).get("spans") or []
    return _plot("span_class_shares", window, _draw_spans, out_dir, cache_dir) \
        if len(window) > 1 else ""


def _largest_classes(positive: Any, vocab: list) -> list[tuple[int, str]]:
    """(index, name) of the 12 classes with the most eval examples, by name: the ones a
    per-class curve plot shows."""
    import numpy as np

    shown = np.argsort(-positive.sum(axis=1))[:12]
    named = [(int(i), str(vocab[i]) if i < len(vocab) else str(i)) for i in shown]
    return sorted(named, key=lambda item: item[1])


def _draw_roc_calibration(data: dict) -> bytes:
    """Per-class one-vs-rest ROC curves and a reliability diagram (every class's
    one-vs-rest probabilities pooled, 10 buckets) from the evaluator's histograms."""
    import numpy as np

    plt = _pyplot()
    positive, negative = np.asarray(data["positive"]), np.asarray(data["negative"])
    vocab = data["vocabulary"]
    fig, (roc, cal) = plt.subplots(1, 2, figsize=(10, 3.8))
    from components.evaluation.gate import roc_points

    for index, name in _largest_classes(positive, vocab):
        points = roc_points(positive[index], negative[index])
        if points is not None:
            roc.plot(*points, linewidth=1, label=name)
    roc.plot([0, 1], [0, 1], color="#999", linestyle=":")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    roc.set_title("ROC, one class vs the rest")
    roc.legend(fontsize=7, ncol=2)
    buckets = 10
    pos = positive.sum(axis=0).reshape(buckets, -1).sum(axis=1)
    neg = negative.sum(axis=0).reshape(buckets, -1).sum(axis=1)
    total = pos + neg
    centers = (np.arange(buckets) + 0.5) / buckets
    keep = total > 0
    cal.plot([0, 1], [0, 1], color="#999", linestyle=":")
    cal.plot(centers[keep], pos[keep] / total[keep], marker="o")
    cal.set_xlabel("predicted probability")
    cal.set_ylabel("observed frequency")
    cal.set_title("calibration (all classes pooled)")
    return _to_png(plt, fig)


def _draw_precision_recall(data: dict) -> bytes:
    """Per-class one-vs-rest precision-recall curves (the 12 largest classes), each
    with its average precision, from the evaluator's histograms."""
    import numpy as np

    from components.evaluation.gate import pr_points

    plt = _pyplot()
    positive, negative = np.asarray(data["positive"]), np.asarray(data["negative"])
    vocab = data["vocabulary"]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for index, name in _largest_classes(positive, vocab):
        points = pr_points(positive[index], negative[index])
        if points is not None:
            recall, precision, average = points
            ax.plot(recall, precision, linewidth=1, label=f"{name} (AP {average:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall, one class vs the rest")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # off the curves
    return _to_png(plt, fig)


def _curves_data(evaluation_uri: str | None, vocabulary: list | None) -> dict | None:
    if not evaluation_uri or not vocabulary:
        return None
    import io

    import numpy as np

    path = fileio.join(evaluation_uri, artifacts.ModelEvaluation.CURVES)
    if not fileio.exists(path):
        return None
    with np.load(io.BytesIO(fileio.read_bytes(path))) as arrays:
        if arrays["positive"].shape[1] % 10:
            return None
        return {"positive": arrays["positive"].tolist(), "negative": arrays["negative"].tolist(),
                "vocabulary": vocabulary}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_png(plt, fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _plot(name: str, data: Any, draw: Any, out_dir: str, cache_dir: str | None) -> str:
    """`draw(data)` as `out_dir/NAME.png` and an embedded <img>. With a cache dir, a
    plot of the same data (and the same plotting code) is drawn once: a fully cached
    rerun then never imports matplotlib."""
    png = None
    cached = None
    if cache_dir:
        key = artifacts.fingerprint_json({"plot": name, "data": data,
                                          "code": fileio.hash_file(__file__)})
        cached = os.path.join(cache_dir, f"{key}.png")
        if os.path.isfile(cached):
            with open(cached, "rb") as handle:
                png = handle.read()
    if png is None:
        png = draw(data)
        if cached:
            fileio.write_bytes_atomic(cached, png)
    fileio.write_bytes_atomic(os.path.join(out_dir, f"{name}.png"), png)
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _plots(history: dict | None, metrics: dict | None, out_dir: str,
           cache_dir: str | None = None, tuning: dict | None = None,
           evaluation_uri: str | None = None) -> dict[str, str]:
    images = {}
    curves = _curves_data(evaluation_uri, (metrics or {}).get("label_vocabulary"))
    if curves:
        images["roc"] = _plot("roc_calibration", curves, _draw_roc_calibration, out_dir,
                              cache_dir)
        images["pr"] = _plot("precision_recall", curves, _draw_precision_recall, out_dir,
                             cache_dir)
    if tuning and tuning.get("searched") and tuning.get("trials"):
        images["trials"] = _plot("tuning_trials", tuning, _draw_trials, out_dir, cache_dir)
    if history and history.get("loss"):
        images["curves"] = _plot("training_curves", history, _draw_curves, out_dir, cache_dir)
    confusion = _confusion_data(metrics)
    if confusion:
        images["confusion"] = _plot("confusion_matrix", confusion, _draw_confusion, out_dir,
                                    cache_dir)
    return images


def _confusion_data(metrics: dict | None) -> dict | None:
    """The candidate's confusion matrix and, with a baseline, the baseline's on the
    same examples: both with rows and columns in class-name order."""
    metrics = metrics or {}
    confusion = metrics.get("metrics", {}).get("confusion")
    vocab = metrics.get("label_vocabulary")
    if not (confusion and vocab and any(any(row) for row in confusion)):
        return None
    base = (metrics.get("baseline_metrics") or {}).get("confusion")
    base_vocab = metrics.get("baseline_vocabulary") or vocab
    classes = sorted(set(vocab) | (set(base_vocab) if base else set()), key=str)
    data = {"classes": classes, "confusion": _by_name(confusion, vocab, classes),
            "title": "this run's model", "baseline": None}
    if base and any(any(row) for row in base):
        data.update(baseline=_by_name(base, base_vocab, classes),
                    baseline_title=f"baseline {metrics.get('baseline') or ''}".strip())
    return data
