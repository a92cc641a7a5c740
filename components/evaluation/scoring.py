"""Scoring exported models as a Beam job: the evaluator's per-example predictions (on
whatever runner the pipeline uses: in process, or Dataflow workers) and `imgpipe
predict --beam`. The DoFns are module-level classes, so every runner pickles them by
reference; each loads its SavedModels once per worker.

Imports Beam at module level: import this module only where a Beam job is built.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any, Iterable, Iterator

import apache_beam as beam

from components import artifacts, features
from components.io import fileio

PREDICTIONS, MISTAKES = artifacts.ModelEvaluation.PREDICTIONS, artifacts.ModelEvaluation.MISTAKES


def _stem(name: str) -> str:
    """A file name without its suffix (Beam's text sinks add it)."""
    return name.rsplit(".", 1)[0]


def prediction_keys(name: str, first: bool) -> tuple[str, str]:
    """(label id key, probabilities key) of a model in the scored examples."""
    prefix = "" if first else f"{name}/"
    return f"{prefix}{LABEL_ID}", f"{prefix}probabilities"


LABEL_ID = "label_id"


class ScoreExamples(beam.DoFn):
    """Batches of serialized raw examples -> one row per example (id, source, label,
    each model's top-1 class, the first model's probability); the first model's
    mistakes tagged "mistakes" as (probability, id, image bytes); each batch's
    per-class histograms tagged "curves"; and tagged "scored", each example without
    its image plus every model's label id (in that model's vocabulary, -1 when absent)
    and probabilities (`prediction_keys`): TFMA computes its metrics from these
    without running the models a second time.

    `models`: name -> (SavedModel directory, label vocabulary); the first one is the
    candidate. `slice_keys`: the raw features TFMA slices by, the only ones the scored
    examples keep (TFMA parses every feature of every example it is given)."""

    def __init__(self, models: dict[str, tuple[str, list[str]]],
                 slice_keys: tuple[str, ...] = ()):
        self.models = models
        self.slice_keys = slice_keys

    def setup(self) -> None:
        import tensorflow as tf

        self._tf = tf
        self._fns = {name: tf.saved_model.load(fileio.tf_path(path)).signatures[
            "serving_default"] for name, (path, _) in self.models.items()}
        self._spec = features.labeled_image_spec()
        self._ids = {name: {label: i for i, label in enumerate(vocabulary)}
                     for name, (_, vocabulary) in self.models.items()}

    def process(self, batch: list[bytes]) -> Iterator[Any]:
        tf = self._tf
        serialized = tf.constant(batch)
        parsed = {k: v.numpy() for k, v in tf.io.parse_example(serialized, self._spec).items()}
        probs = {name: fn(examples=serialized)["probabilities"].numpy()
                 for name, fn in self._fns.items()}
        first = next(iter(self.models))
        ids = self._ids[first]
        yield beam.pvalue.TaggedOutput("curves", curve_histograms(
            probs[first], [ids.get(label.decode(), -1) for label in parsed[features.LABEL]]))
        for record in self._scored(batch, parsed, probs, first):
            yield beam.pvalue.TaggedOutput("scored", record)
        for i in range(len(batch)):
            row = {"id": parsed[features.ID][i].decode(),
                   "source": parsed[features.SOURCE][i].decode("utf-8", "surrogateescape"),
                   "label": parsed[features.LABEL][i].decode()}
            for name, (_, vocabulary) in self.models.items():
                key = "predicted" if name == first else f"{name}_predicted"
                row[key] = vocabulary[int(probs[name][i].argmax())]
            row["probability"] = float(probs[first][i].max())
            for name in self.models:        # the baseline's confidence: the canary's reference
                if name != first:
                    row[f"{name}_probability"] = float(probs[name][i].max())
            if row["predicted"] != row["label"]:
                yield beam.pvalue.TaggedOutput(
                    "mistakes", (row["probability"], row["id"], parsed[features.IMAGE][i]))
            yield row


    def _scored(self, batch: list[bytes], parsed: dict[str, Any], probs: dict[str, Any],
                first: str) -> Iterator[bytes]:
        for i, raw in enumerate(batch):
            source = self._tf.train.Example.FromString(raw).features.feature
            example = self._tf.train.Example()
            feature = example.features.feature
            for key in self.slice_keys:
                if key in source:
                    feature[key].CopyFrom(source[key])
            label = parsed[features.LABEL][i].decode()
            for name, values in probs.items():
                label_key, probs_key = prediction_keys(name, name == first)
                feature[label_key].int64_list.value.append(self._ids[name].get(label, -1))
                feature[probs_key].float_list.value.extend(values[i].tolist())
            yield example.SerializeToString()


CURVE_BINS = 1000


def curve_histograms(probs: Any, label_ids: list[int]) -> dict[str, Any]:
    """One batch's share of the per-class (one-vs-rest) ROC, PR and calibration
    curves: for each class, how many positive and negative examples scored in each
    of CURVE_BINS probability bins (TFMA's AUC uses the same 1,000 thresholds), the
    sum of its probability and its count of positives. Batches add up."""
    import numpy as np

    rows, classes = probs.shape
    positive = np.zeros((rows, classes), bool)
    labels = np.asarray(label_ids)
    known = labels >= 0
    positive[np.nonzero(known)[0], labels[known]] = True
    bins = np.minimum((probs * CURVE_BINS).astype(np.int64), CURVE_BINS - 1)
    flat = bins + np.arange(classes)[None, :] * CURVE_BINS
    size = classes * CURVE_BINS
    return {"positive": np.bincount(flat[positive], minlength=size).reshape(classes, -1),
            "negative": np.bincount(flat[~positive], minlength=size).reshape(classes, -1),
            "probability_sum": probs.sum(axis=0, dtype=np.float64),
            "positives": positive.sum(axis=0)}


def add_histograms(parts: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    total = None
    for part in parts:
        if part is None:
            continue
        total = dict(part) if total is None else {k: total[k] + v for k, v in part.items()}
    return total


def row_json(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


def mistakes_json(items: Iterable[tuple[float, str, bytes]]) -> str:
    return json.dumps([[p, ident, base64.b64encode(image).decode()]
                       for p, ident, image in items])


def score_eval_split(files: list[str], models: dict[str, tuple[str, list[str]]], out_dir: str,
                     pipeline_args: list[str], gallery: int, eval_config: Any,
                     tfma_output: str, batch: int = 256
                     ) -> tuple[list[dict[str, Any]], list[tuple[float, str, bytes]]]:
    """One Beam job over `files` (TFRecords of raw examples): scores them with every
    model, writes `out_dir/predictions.jsonl`, the `gallery` most confident mistakes
    and the per-class curve histograms, and hands the scored examples to TFMA
    (`eval_config`, results in `tfma_output`). Returns (rows sorted by id, mistakes
    most confident first)."""
    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_model_analysis import constants
    from tfx_bsl.public.tfxio import TFExampleBeamRecord

    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        reads = [pipeline | f"Read{i}" >> beam.io.ReadFromTFRecord(
                     pattern, compression_type=beam.io.filesystem.CompressionTypes.GZIP)
                 for i, pattern in enumerate(_patterns(files))]
        scored = (reads | "Records" >> beam.Flatten()
                  | "Batch" >> beam.BatchElements(min_batch_size=batch, max_batch_size=batch)
                  | "Score" >> beam.ParDo(ScoreExamples(models, tuple(sorted({
                      key for spec in eval_config.slicing_specs for key in spec.feature_keys}))))
                  .with_outputs(
                      "mistakes", "curves", "scored", main="rows"))
        tfxio = TFExampleBeamRecord(physical_format="inmem",
                                    raw_record_column_name=constants.ARROW_INPUT_COLUMN,
                                    telemetry_descriptors=["imgpipe"])
        _ = (scored.scored
             | "ToArrow" >> tfxio.BeamSource()
             | "ToExtracts" >> tfma.BatchedInputsToExtracts()
             | "ExtractAndEvaluate" >> tfma.ExtractAndEvaluate(
                 extractors=_tfma_extractors(eval_config),
                 evaluators=[tfma.evaluators.MetricsPlotsAndValidationsEvaluator(
                     eval_config=eval_config)])
             | "WriteResults" >> tfma.WriteResults(writers=tfma.default_writers(
                 output_path=tfma_output, eval_config=eval_config)))
        _ = (scored.curves
             | "AddCurves" >> beam.CombineGlobally(add_histograms)
             | "WriteCurves" >> beam.Map(_write_npz, fileio.join(out_dir, artifacts.ModelEvaluation.CURVES)))
        _ = (scored.rows | "RowJson" >> beam.Map(row_json)
             | "WriteRows" >> beam.io.WriteToText(fileio.join(out_dir, _stem(PREDICTIONS)),
                                                  file_name_suffix=".jsonl",
                                                  shard_name_template=""))
        _ = (scored.mistakes
             | "MostConfident" >> beam.combiners.Top.Of(gallery, key=lambda item: item[0])
             | "MistakesJson" >> beam.Map(mistakes_json)
             | "WriteMistakes" >> beam.io.WriteToText(fileio.join(out_dir, _stem(MISTAKES)),
                                                      file_name_suffix=".json",
                                                      shard_name_template=""))
    rows = [json.loads(line) for line in
            fileio.read_text(fileio.join(out_dir, PREDICTIONS)).splitlines() if line]
    rows.sort(key=lambda row: row["id"])
    mistakes_path = fileio.join(out_dir, MISTAKES)
    mistakes = json.loads(fileio.read_text(mistakes_path) or "[]")
    fileio.rmtree(mistakes_path)
    worst = [(p, ident, base64.b64decode(image)) for p, ident, image in mistakes]
    return rows, sorted(worst, key=lambda item: (-item[0], item[1]))


def _tfma_extractors(eval_config: Any) -> list[Any]:
    """What `tfma.default_extractors` returns for predictions stored with the examples,
    without redoing the config's defaulting (evaluate.eval_config did it, knowing
    whether there is a baseline)."""
    from tensorflow_model_analysis import extractors
    from tensorflow_model_analysis.extractors import materialized_predictions_extractor

    return [extractors.FeaturesExtractor(eval_config=eval_config),
            extractors.LabelsExtractor(eval_config=eval_config),
            extractors.ExampleWeightsExtractor(eval_config=eval_config),
            materialized_predictions_extractor.MaterializedPredictionsExtractor(
                eval_config=eval_config),
            extractors.UnbatchExtractor(),
            extractors.SliceKeyExtractor(eval_config=eval_config)]


def _write_npz(arrays: dict[str, Any] | None, path: str) -> None:
    import numpy as np

    if arrays:
        out = io.BytesIO()
        np.savez_compressed(out, **arrays)
        fileio.write_bytes(path, out.getvalue())


def read_curves(out_dir: str) -> dict[str, Any] | None:
    """The per-class histograms the scoring job wrote (None when it scored nothing)."""
    import numpy as np

    path = fileio.join(out_dir, artifacts.ModelEvaluation.CURVES)
    if not fileio.exists(path):
        return None
    with np.load(io.BytesIO(fileio.read_bytes(path))) as data:
        return {key: data[key] for key in data.files}


def _patterns(files: list[str]) -> list[str]:
    """Globs that match exactly the split's files: one per folder they are in (one for
    an ingest's split, one per span for a window of spans)."""
    if len(files) == 1:
        return files
    folders = sorted({path.rsplit("/", 1)[0] for path in files})
    return [fileio.join(folder, artifacts.Examples.SHARDS) for folder in folders]
