"""The evaluate step vs plain batched inference plus the same metrics, same model.

Builds (or reuses, --run-dir) a Fashion-MNIST run up to train: 10,000 eval images and
the tutorial's dense model (Debian package dataset-fashion-mnist; the built-in fonts
when it is missing). Then, in one process with TensorFlow, Beam and TFMA already
imported, times side by side:
- plain: load the SavedModel, read the eval TFRecords with tf.data, batched
  `serving_default` calls, then accuracy, top-3 accuracy, the confusion matrix,
  per-class precision/recall/F1 and one-vs-rest AUC with scikit-learn;
- the evaluate step (TFMA over the scored examples, thresholds, predictions file,
  gallery, per-class curves, blessing) with the default config, no baseline;
- TFMA's fixed cost: its smallest evaluation (ExampleCount over 10 examples) on the
  same runner, the floor under any TFMA-on-Beam evaluation.
Prints the times and ratios (target <= 2.0).
Usage: python bench/evaluate.py [--run-dir RUNS/RUN_ID] [--repeats N]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FASHION = "/usr/share/datasets/fashion-mnist"


def build_run(work: str) -> str:
    config = os.path.join(ROOT, "configs", "fashion_mnist.yaml" if os.path.isdir(FASHION)
                          else "fonts.yaml")
    imgpipe = os.path.join(os.path.dirname(sys.executable), "imgpipe")
    subprocess.run([imgpipe, "run", config, "--until", "train", "--runs-dir",
                    os.path.join(work, "runs")], check=True, stdout=subprocess.DEVNULL)
    return sorted(glob.glob(os.path.join(work, "runs", "2*")))[-1]


def plain(examples, model) -> float:
    import numpy as np
    import tensorflow as tf
    from sklearn import metrics

    from components import artifacts, features

    started = time.perf_counter()
    vocabulary = model.properties["label_vocabulary"]
    serve = tf.saved_model.load(model.path(artifacts.Model.SAVED_MODEL)).signatures[
        "serving_default"]
    spec = {features.LABEL: tf.io.FixedLenFeature([], tf.string)}
    labels, probs = [], []
    for batch in tf.data.TFRecordDataset(features.split_files(examples, "eval"),
                                         compression_type="GZIP").batch(256):
        labels += [v.decode() for v in tf.io.parse_example(batch, spec)[features.LABEL].numpy()]
        probs.append(serve(examples=batch)["probabilities"].numpy())
    probs = np.concatenate(probs)
    index = {name: i for i, name in enumerate(vocabulary)}
    truth = np.array([index[label] for label in labels])
    predicted = probs.argmax(axis=1)
    classes = list(range(len(vocabulary)))
    summary = {"accuracy": metrics.accuracy_score(truth, predicted),
               "top_3": metrics.top_k_accuracy_score(truth, probs, k=3, labels=classes),
               "confusion": metrics.confusion_matrix(truth, predicted, labels=classes),
               "per_class": metrics.precision_recall_fscore_support(truth, predicted,
                                                                    labels=classes),
               "auc": [metrics.roc_auc_score(truth == c, probs[:, c]) for c in classes]}
    assert summary["accuracy"] > 0
    return time.perf_counter() - started


def tfma_floor(out: str) -> float:
    """TFMA's fixed cost: the smallest evaluation it runs (ExampleCount over 10 scored
    examples, no model) on the same in-process Beam runner, through the same
    extractors as the step. No evaluation with TFMA on Beam can take less."""
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis import constants
    from tensorflow_model_analysis.proto import config_pb2
    from tensorflow_model_analysis.utils import config_util
    from tfx_bsl.public.tfxio import TFExampleBeamRecord

    from components.evaluation.scoring import _tfma_extractors

    config = config_util.update_eval_config_with_defaults(config_pb2.EvalConfig(
        model_specs=[config_pb2.ModelSpec(label_key="label_id",
                                          prediction_key="probabilities")],
        slicing_specs=[config_pb2.SlicingSpec()],
        metrics_specs=[config_pb2.MetricsSpec(metrics=[
            config_pb2.MetricConfig(class_name="ExampleCount")])]))
    records = []
    for i in range(10):
        example = tf.train.Example()
        example.features.feature["label_id"].int64_list.value.append(i % 2)
        example.features.feature["probabilities"].float_list.value.extend([0.5, 0.5])
        records.append(example.SerializeToString())
    started = time.perf_counter()
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        source = TFExampleBeamRecord(physical_format="inmem",
                                     raw_record_column_name=constants.ARROW_INPUT_COLUMN,
                                     telemetry_descriptors=["imgpipe-bench"])
        _ = (pipeline | beam.Create(records) | source.BeamSource()
             | tfma.BatchedInputsToExtracts()
             | tfma.ExtractAndEvaluate(
                 extractors=_tfma_extractors(config),
                 evaluators=[tfma.evaluators.MetricsPlotsAndValidationsEvaluator(
                     eval_config=config)])
             | tfma.WriteResults(writers=tfma.default_writers(output_path=out,
                                                              eval_config=config)))
    return time.perf_counter() - started


def step(examples, model, out: str) -> tuple[float, float]:
    from components.config.beam import BeamConfig
    from components.config.evaluate import EvaluateConfig
    from components.steps import evaluate

    started = time.perf_counter()
    result = evaluate.run(examples, model, EvaluateConfig(), BeamConfig(),
                          evaluation=os.path.join(out, "evaluation"),
                          blessing=os.path.join(out, "blessing"))
    return time.perf_counter() - started, result["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", help="a run with ingest and train outputs (default: "
                                          "build one in a temporary folder)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import apache_beam  # noqa: F401  (imports are not what is measured)
    import tensorflow_model_analysis  # noqa: F401

    from components import artifacts, runtime

    with tempfile.TemporaryDirectory() as work, runtime.private_tempdir():
        run_dir = args.run_dir or build_run(work)
        examples = artifacts.read(os.path.join(run_dir, "ingest", "examples"))
        model = artifacts.read(os.path.join(run_dir, "train", "trained_model"))
        count = sum(examples.properties["counts"]["eval"].values())
        plain(examples, model)                              # warm: file cache, graph
        tfma_floor(os.path.join(work, "floor-warm"))
        rows = []
        for repeat in range(args.repeats):
            plain_s = plain(examples, model)
            step_s, accuracy = step(examples, model, os.path.join(work, f"eval{repeat}"))
            floor_s = tfma_floor(os.path.join(work, f"floor{repeat}"))
            rows.append({"plain_s": plain_s, "evaluate_s": step_s, "ratio": step_s / plain_s,
                         "tfma_floor_s": floor_s, "floor_ratio": floor_s / plain_s})
    med = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    print(json.dumps({"eval_examples": count, "runs": rows, "median": med}, indent=2))
    print(f"\n{count} eval examples: plain inference + metrics {med['plain_s']:.1f} s, "
          f"evaluate step {med['evaluate_s']:.1f} s (accuracy {accuracy:.4f}); "
          f"ratio {med['ratio']:.2f} (target <= 2.0)")
    print(f"TFMA's fixed cost alone (ExampleCount over 10 examples, same runner): "
          f"{med['tfma_floor_s']:.1f} s = {med['floor_ratio']:.2f}x plain")


if __name__ == "__main__":
    main()
