"""Transform: tensorflow-transform over the raw examples, on Beam.

`AnalyzeAndTransformDataset` on train (full-pass statistics and the label
vocabulary), `TransformDataset` on eval with the same graph. Records are read as
TFXIO record batches. The transform graph is what the exported model applies at
serving time, so training and serving see identical preprocessing. Examples that
passed ingest but no longer decode, and eval labels outside the training
vocabulary, are counted and dropped, not fatal.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from components import artifacts, beamio, features, fileio
from components.artifacts import SPLITS
from components.config import BeamConfig, DataConfig, TransformConfig
from components.contract import Maybe, step
from components.errors import DataError


def check_decodable(serialized: bytes) -> Any:
    """A record whose image bytes still decode, or (tagged "bad") why not."""
    from apache_beam import pvalue
    from tensorflow.core.example import example_pb2

    from components.imaging import BadImage, check_image

    feature = example_pb2.Example.FromString(serialized).features.feature
    data = feature[features.IMAGE].bytes_list.value
    try:
        if not data:
            raise BadImage("no image/encoded value")
        check_image(data[0], 2 ** 62)
    except BadImage as exc:
        record_id = feature[features.ID].bytes_list.value
        return [pvalue.TaggedOutput("bad", {"id": record_id[0].decode() if record_id else "",
                                            "reason": str(exc)})]
    return [serialized]


def _pipeline(pipeline: Any, examples: artifacts.Artifact, out_dir: str, data: DataConfig,
              transform: TransformConfig, num_classes: int, temp_dir: str) -> None:
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    raw_schema = schema_utils.schema_from_feature_spec(features.raw_feature_spec())
    record_io = tfxio.TFExampleBeamRecord(physical_format="tfrecord", schema=raw_schema,
                                          telemetry_descriptors=["imgpipe", "transform"])

    def read(split: str):
        pattern = examples.path(split, "*.tfrecord.gz")
        checked = (pipeline
                   | f"Read{split}" >> beam.io.ReadFromTFRecord(pattern)
                   | f"Check{split}" >> beam.FlatMap(check_decodable).with_outputs(
                       "bad", main="good"))
        return checked.good | f"Batches{split}" >> record_io.BeamSource(), checked.bad

    preprocessing_fn = features.make_preprocessing_fn(
        tuple(data.image_size), data.channels, transform.normalize, num_classes,
        transform.keep_aspect_ratio)
    counts = []
    with tft_beam.Context(temp_dir=temp_dir):
        train_raw, train_bad = read("train")
        eval_raw, eval_bad = read("eval")
        adapter = record_io.TensorAdapterConfig()
        if transform.materialize:
            (train_out, train_meta), transform_fn = (
                (train_raw, adapter)
                | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(preprocessing_fn))
            eval_out, _ = ((eval_raw, adapter), transform_fn) | "TransformEval" >> \
                tft_beam.TransformDataset()
            coder = tft.coders.ExampleProtoCoder(train_meta.schema)
            for split, rows in (("train", train_out), ("eval", eval_out)):
                tagged = rows | f"Known{split}" >> beam.FlatMap(
                    lambda row: [row] if row[features.LABEL_ID] >= 0
                    else [beam.pvalue.TaggedOutput("unknown", 1)]).with_outputs(
                        "unknown", main="known")
                (tagged.known
                 | f"Encode{split}" >> beam.Map(coder.encode)
                 | f"Write{split}" >> beam.io.WriteToTFRecord(
                     fileio.join(out_dir, "examples", split, "part"),
                     file_name_suffix=".tfrecord.gz",
                     compression_type=beam.io.filesystem.CompressionTypes.GZIP))
                counts.append(tagged.known | f"Count{split}" >> beam.Map(
                    lambda _, s=split: (f"{s}/examples", 1)))
                counts.append(tagged.unknown | f"CountUnknown{split}" >> beam.Map(
                    lambda _, s=split: (f"{s}/unknown_label", 1)))
        else:
            transform_fn = (train_raw, adapter) | "Analyze" >> tft_beam.AnalyzeDataset(
                preprocessing_fn)
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(out_dir)
    for split, bad in (("train", train_bad), ("eval", eval_bad)):
        counts.append(bad | f"CountBad{split}" >> beam.Map(
            lambda _, s=split: (f"{s}/undecodable", 1)))
        (bad | f"BadJson{split}" >> beam.Map(lambda b, s=split: json.dumps({"split": s, **b}))
         | f"WriteBad{split}" >> beam.io.WriteToText(fileio.join(out_dir, f"dropped-{split}"),
                                                     file_name_suffix=".jsonl",
                                                     shard_name_template=""))
    (counts
     | "AllCounts" >> beam.Flatten()
     | "SumCounts" >> beam.CombinePerKey(sum)
     | "CountDict" >> beam.combiners.ToDict()
     | "CountJson" >> beam.Map(json.dumps)
     | "WriteCounts" >> beam.io.WriteToText(fileio.join(out_dir, "counts"),
                                            file_name_suffix=".json", shard_name_template=""))


@step(name="transform",
      # Validation gates transform: its anomalies are an input, so a failed validation
      # stops the run before this step and a changed verdict reruns it.
      inputs={"examples": artifacts.Examples, "anomalies": Maybe(artifacts.Anomalies)},
      outputs={"transform_graph": artifacts.TransformGraph},
      config=("data", "transform"), beam=("runner",))
def run(examples: artifacts.Artifact, data: DataConfig, transform: TransformConfig,
        beam: BeamConfig, transform_graph: str, anomalies: artifacts.Artifact | None = None,
        producer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes the TransformGraph artifact (graph, vocabulary, transformed examples).
    `anomalies` only orders the step after a passed validation."""
    import apache_beam as beam_lib
    import tensorflow_transform as tft

    # TFT warns on every run that instance dicts are slower than record batches; the
    # coder we write with needs instance dicts, so the warning is noise here.
    logging.getLogger("absl").setLevel(logging.ERROR)
    class_names = examples.properties["class_names"]
    num_classes = len(class_names)
    num_examples = examples.properties.get("num_examples")
    with artifacts.writing(transform_graph, artifacts.TransformGraph, producer) as writer, \
            beamio.temp_dir(beam, "tft") as temp_dir:
        options = beamio.pipeline_options(beam, num_examples)
        with beam_lib.Pipeline(options=options) as pipeline:
            _pipeline(pipeline, examples, writer.path, data, transform, num_classes, temp_dir)
        counts = json.loads(fileio.read_text(writer.file("counts.json")))
        output = tft.TFTransformOutput(writer.path)
        vocabulary = [v.decode() if isinstance(v, bytes) else v
                      for v in output.vocabulary_by_name(features.LABEL_VOCABULARY)]
        if sorted(vocabulary) != sorted(class_names):
            raise DataError(
                f"the training split holds classes {sorted(vocabulary)} but ingest found "
                f"{sorted(class_names)}; every class needs training images (see the "
                "validate step's anomalies).")
        image_shape = [*data.image_size, data.channels]
        split_counts = {split: counts.get(f"{split}/examples", 0) for split in SPLITS}
        dropped = {key: n for key, n in sorted(counts.items()) if not key.endswith("/examples")}
        writer.properties = {
            "label_vocabulary": vocabulary, "num_classes": num_classes,
            "image_shape": image_shape, "normalize": transform.normalize,
            "materialized": transform.materialize, "counts": split_counts, "dropped": dropped,
        }
        writer.fingerprint = artifacts.fingerprint_json({
            "graph": artifacts.fingerprint_files(
                artifacts.list_files(writer.file("transform_fn"))),
            "vocabulary": vocabulary, "examples": examples.fingerprint,
            "config": transform.model_dump(), "shape": image_shape})
        writer.commit()
    lines = [f"label vocabulary ({num_classes}): {', '.join(vocabulary)}; "
             f"image {'x'.join(map(str, image_shape))}, normalize={transform.normalize}"]
    if transform.materialize:
        lines.append(f"transformed train {split_counts['train']}, eval {split_counts['eval']}")
    if dropped:
        lines.append(f"dropped: {dropped} (see dropped-*.jsonl)")
    return {"counts": split_counts, "dropped": dropped, "lines": lines}
