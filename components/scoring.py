"""Scoring exported models as a Beam job: the evaluator's per-example predictions (on
whatever runner the pipeline uses: in process, or Dataflow workers) and `imgpipe
predict --beam`. The DoFns are module-level classes, so every runner pickles them by
reference; each loads its SavedModels once per worker.

Imports Beam at module level: import this module only where a Beam job is built.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterable, Iterator

import apache_beam as beam

from components import features, fileio


class ScoreExamples(beam.DoFn):
    """Batches of serialized raw examples -> one row per example (id, source, label,
    each model's top-1 class, the first model's probability), and the first model's
    mistakes tagged "mistakes" as (probability, id, image bytes).

    `models`: name -> (SavedModel directory, label vocabulary); the first one is the
    candidate."""

    def __init__(self, models: dict[str, tuple[str, list[str]]]):
        self.models = models

    def setup(self) -> None:
        import tensorflow as tf

        self._tf = tf
        self._fns = {name: tf.saved_model.load(fileio.tf_path(path)).signatures[
            "serving_default"] for name, (path, _) in self.models.items()}
        self._spec = features.labeled_image_spec()

    def process(self, batch: list[bytes]) -> Iterator[Any]:
        tf = self._tf
        serialized = tf.constant(batch)
        parsed = {k: v.numpy() for k, v in tf.io.parse_example(serialized, self._spec).items()}
        probs = {name: fn(examples=serialized)["probabilities"].numpy()
                 for name, fn in self._fns.items()}
        first = next(iter(self.models))
        for i in range(len(batch)):
            row = {"id": parsed[features.ID][i].decode(),
                   "source": parsed[features.SOURCE][i].decode("utf-8", "surrogateescape"),
                   "label": parsed[features.LABEL][i].decode()}
            for name, (_, vocabulary) in self.models.items():
                key = "predicted" if name == first else f"{name}_predicted"
                row[key] = vocabulary[int(probs[name][i].argmax())]
            row["probability"] = float(probs[first][i].max())
            if row["predicted"] != row["label"]:
                yield beam.pvalue.TaggedOutput(
                    "mistakes", (row["probability"], row["id"], parsed[features.IMAGE][i]))
            yield row


def row_json(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


def mistakes_json(items: Iterable[tuple[float, str, bytes]]) -> str:
    return json.dumps([[p, ident, base64.b64encode(image).decode()]
                       for p, ident, image in items])


def score_eval_split(files: list[str], models: dict[str, tuple[str, list[str]]], out_dir: str,
                     pipeline_args: list[str], gallery: int, batch: int = 256
                     ) -> tuple[list[dict[str, Any]], list[tuple[float, str, bytes]]]:
    """Runs the scoring job over `files` (TFRecords of raw examples), writing
    `out_dir/predictions.jsonl` and the `gallery` most confident mistakes; returns
    (rows sorted by id, mistakes most confident first)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        scored = (pipeline
                  | "Read" >> beam.io.ReadFromTFRecord(
                      files[0] if len(files) == 1 else _common_pattern(files),
                      compression_type=beam.io.filesystem.CompressionTypes.GZIP)
                  | "Batch" >> beam.BatchElements(min_batch_size=batch, max_batch_size=batch)
                  | "Score" >> beam.ParDo(ScoreExamples(models)).with_outputs(
                      "mistakes", main="rows"))
        _ = (scored.rows | "RowJson" >> beam.Map(row_json)
             | "WriteRows" >> beam.io.WriteToText(fileio.join(out_dir, "predictions"),
                                                  file_name_suffix=".jsonl",
                                                  shard_name_template=""))
        _ = (scored.mistakes
             | "MostConfident" >> beam.combiners.Top.Of(gallery, key=lambda item: item[0])
             | "MistakesJson" >> beam.Map(mistakes_json)
             | "WriteMistakes" >> beam.io.WriteToText(fileio.join(out_dir, "mistakes"),
                                                      file_name_suffix=".json",
                                                      shard_name_template=""))
    rows = [json.loads(line) for line in
            fileio.read_text(fileio.join(out_dir, "predictions.jsonl")).splitlines() if line]
    rows.sort(key=lambda row: row["id"])
    mistakes_path = fileio.join(out_dir, "mistakes.json")
    mistakes = json.loads(fileio.read_text(mistakes_path) or "[]")
    fileio.rmtree(mistakes_path)
    worst = [(p, ident, base64.b64decode(image)) for p, ident, image in mistakes]
    return rows, sorted(worst, key=lambda item: (-item[0], item[1]))


def _common_pattern(files: list[str]) -> str:
    """A glob that matches exactly the split's files (they share a folder)."""
    folder = files[0].rsplit("/", 1)[0]
    return fileio.join(folder, "*.tfrecord.gz")
