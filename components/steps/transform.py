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
import math
from typing import Any, Iterator

from components import artifacts, features
from components.io import beamio, fileio
from components.artifacts import SPLITS
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.transform import TransformConfig
from components.contract import In, Out, step
from components.errors import DataError


def check_decodable(serialized: bytes) -> Any:
    """A record whose image bytes still decode, or (tagged "bad") why not."""
    from apache_beam import pvalue
    from tensorflow.core.example import example_pb2

    from components.data.imaging import BadImage, verify_decodes

    feature = example_pb2.Example.FromString(serialized).features.feature
    data = feature[features.IMAGE].bytes_list.value
    try:
        if not data:
            raise BadImage("no image/encoded value")
        verify_decodes(data[0])
    except BadImage as exc:
        record_id = feature[features.ID].bytes_list.value
        return [pvalue.TaggedOutput("bad", {"id": record_id[0].decode() if record_id else "",
                                            "reason": str(exc)})]
    return [serialized]


def not_listed(serialized: bytes, bad_ids: dict[str, bool]) -> bool:
    """Whether a record's id is not among `bad_ids` (parsed only when there are any;
    a dict, so each record is one lookup however many are bad)."""
    if not bad_ids:
        return True
    from tensorflow.core.example import example_pb2

    ids = example_pb2.Example.FromString(serialized).features.feature[features.ID]
    return (ids.bytes_list.value[0].decode() if ids.bytes_list.value else "") not in bad_ids


# Values (pixels) per record batch the transform holds at once: 1,000 small images, or
# a few dozen 192x192 photos.
_BATCH_VALUES = 1 << 23


def write_batch(element: tuple[Any, Any], directory: str, split: str) -> Iterator[Any]:
    """Writes one transformed record batch as a GZIP TFRecord file of compact examples
    (uint8 pixel bytes, label id, normalization), named by its content, and yields the
    counts: examples written, and eval images whose label training never saw (dropped)."""
    import hashlib

    import numpy as np

    from components.io import tfrecord

    batch = element[0]

    def column(name: str) -> np.ndarray:
        return batch.column(name).flatten().to_numpy().reshape(batch.num_rows, -1)

    label_ids = column(features.LABEL_ID)[:, 0]
    known = np.flatnonzero(label_ids >= 0)
    pixels = column(features.PIXELS).astype(np.uint8)         # whole numbers 0-255
    scale = column(features.PIXEL_SCALE)[:, 0]
    offset = column(features.PIXEL_OFFSET)[:, 0]
    records = [features.encode_example({
        features.PIXEL_BYTES: pixels[k].tobytes(), features.LABEL_ID: int(label_ids[k]),
        features.PIXEL_SCALE: float(scale[k]), features.PIXEL_OFFSET: float(offset[k])})
        for k in known]
    if records:
        digest = hashlib.sha256()
        for record in records:
            digest.update(record)
        tfrecord.write_gzip(fileio.join(directory, f"part-{digest.hexdigest()[:16]}.tfrecord.gz"),
                            records)
    yield f"{split}/examples", len(records)
    if len(known) < batch.num_rows:
        yield f"{split}/unknown_label", batch.num_rows - len(known)


def _pipeline(pipeline: Any, examples: artifacts.Artifact, out_dir: str, data: DataConfig,
              transform: TransformConfig, num_classes: int, temp_dir: str,
              materialize: bool) -> None:
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    raw_schema = schema_utils.schema_from_feature_spec(features.raw_feature_spec())
    record_io = tfxio.TFExampleBeamRecord(physical_format="tfrecord", schema=raw_schema,
                                          telemetry_descriptors=["imgpipe", "transform"])

    def records(split: str, again: str = ""):
        """The split's records (one read per part of a window of spans)."""
        reads = [pipeline | f"Read{split}{again}{i}" >> beam.io.ReadFromTFRecord(pattern)
                 for i, pattern in enumerate(artifacts.Examples.patterns(examples, split))]
        return reads | f"All{split}{again}" >> beam.Flatten()

    def read(split: str):
        checked = (records(split)
                   | f"Check{split}" >> beam.FlatMap(check_decodable).with_outputs(
                       "bad", main="good"))
        return checked.good | f"Batches{split}" >> record_io.BeamSource(), checked.bad

    def read_again(split: str, bad: Any):
        """The split once more, less the records the first read found undecodable: the
        analysis needs all of it before the transform starts, and a runner would
        otherwise hold the whole split in memory between the two passes."""
        bad_ids = beam.pvalue.AsDict(bad | f"BadIds{split}" >> beam.Map(lambda b: (b["id"], True)))
        return (records(split, "Again")
                | f"SkipBad{split}" >> beam.Filter(not_listed, bad_ids)
                | f"Batches{split}Again" >> record_io.BeamSource())

    preprocessing_fn = features.make_preprocessing_fn(
        tuple(data.image_size), data.channels, transform.normalize, num_classes,
        transform.keep_aspect_ratio)
    counts = []
    values = math.prod(data.image_size) * data.channels
    with tft_beam.Context(temp_dir=temp_dir,
                          desired_batch_size=max(1, min(1000, _BATCH_VALUES // values))):
        train_raw, train_bad = read("train")
        adapter = record_io.TensorAdapterConfig()
        transform_fn = (train_raw, adapter) | "Analyze" >> tft_beam.AnalyzeDataset(
            preprocessing_fn)
        if materialize:
            eval_raw, eval_bad = read("eval")
            for split, raw in (("train", read_again("train", train_bad)), ("eval", eval_raw)):
                batches, _ = (((raw, adapter), transform_fn)
                              | f"Transform{split}" >> tft_beam.TransformDataset(
                                  exclude_outputs=[features.TRANSFORMED_IMAGE,
                                                   features.LABEL_ONEHOT],
                                  output_record_batches=True))
                counts.append(batches | f"Write{split}" >> beam.FlatMap(
                    write_batch, fileio.join(out_dir, artifacts.TransformGraph.EXAMPLES, split),
                    split))
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(out_dir)
    bad_splits = [("train", train_bad)] + ([("eval", eval_bad)] if materialize else [])
    for split, bad in bad_splits:
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
     | "WriteCounts" >> beam.io.WriteToText(
         fileio.join(out_dir, artifacts.TransformGraph.COUNTS.removesuffix(".json")),
         file_name_suffix=".json", shard_name_template=""))


# `materialize: auto` writes the transformed pixels above this size. Below it the trainer
# decodes each image itself: once when the examples fit its cache (train.cache_memory_mb),
# else every epoch, which for up to this many bytes of pixels costs about what writing
# them does (at 240,000 28x28 images, on 2 cores: 124 s materialized, 50-62 s graph
# only, 2026-11-30).
AUTO_MATERIALIZE_BYTES = 1 << 30


def should_materialize(transform: TransformConfig, data: DataConfig,
                       num_examples: int | None) -> bool:
    if transform.materialize != "auto":
        return bool(transform.materialize)
    pixels = math.prod(data.image_size) * data.channels
    return num_examples is None or num_examples * pixels > AUTO_MATERIALIZE_BYTES


@step(beam=("runner",))
def run(examples: In[artifacts.Examples], data: DataConfig, transform: TransformConfig,
        beam: BeamConfig, transform_graph: Out[artifacts.TransformGraph]) -> dict[str, Any]:
    """Writes the TransformGraph artifact (graph, vocabulary, transformed examples). The
    DAG runs it after a passed validation (`after`), without reading the anomalies: a
    verdict reached again on the same data reuses this step's cached result."""
    import apache_beam as beam_lib
    import tensorflow_transform as tft

    logging.getLogger("absl").setLevel(logging.ERROR)   # TFT's per-run notices
    class_names = examples.properties["class_names"]
    num_classes = len(class_names)
    num_examples = examples.properties.get("num_examples")
    materialize = should_materialize(transform, data, num_examples)
    writer = transform_graph
    with beamio.temp_dir(beam, "tft") as temp_dir:
        options = beamio.pipeline_options(beam, num_examples)
        with beam_lib.Pipeline(options=options) as pipeline:
            _pipeline(pipeline, examples, writer.path, data, transform, num_classes, temp_dir,
                      materialize)
        counts = json.loads(fileio.read_text(writer.file(artifacts.TransformGraph.COUNTS)))
        output = tft.TFTransformOutput(writer.path)
        vocabulary = [v.decode() if isinstance(v, bytes) else v
                      for v in output.vocabulary_by_name(features.LABEL_VOCABULARY)]
        if sorted(vocabulary) != sorted(class_names):
            raise DataError(
                f"the training split holds classes {sorted(vocabulary)} but ingest found "
                f"{sorted(class_names)}; every class needs training images (see the "
                "validate step's anomalies).")
        image_shape = [*data.image_size, data.channels]
        if materialize:
            split_counts = {split: counts.get(f"{split}/examples", 0) for split in SPLITS}
        else:     # what the trainer will read: ingest's examples (less undecodable ones)
            split_counts = {split: sum(examples.properties["counts"].get(split, {}).values())
                            - counts.get(f"{split}/undecodable", 0) for split in SPLITS}
        dropped = {key: n for key, n in sorted(counts.items()) if not key.endswith("/examples")}
        writer.properties = {
            "label_vocabulary": vocabulary, "num_classes": num_classes,
            "image_shape": image_shape, "normalize": transform.normalize,
            "materialized": materialize, "counts": split_counts, "dropped": dropped,
        }
        writer.fingerprint = artifacts.fingerprint_json({
            "graph": artifacts.fingerprint_files(
                artifacts.list_files(writer.file(artifacts.TransformGraph.TRANSFORM_FN))),
            "vocabulary": vocabulary, "examples": examples.fingerprint,
            "config": transform.model_dump(), "shape": image_shape})
    lines = [f"label vocabulary ({num_classes}): {', '.join(vocabulary)}; "
             f"image {'x'.join(map(str, image_shape))}, normalize={transform.normalize}"]
    if materialize:
        lines.append(f"transformed train {split_counts['train']}, eval {split_counts['eval']}")
    if dropped:
        lines.append(f"dropped: {dropped} (see dropped-*.jsonl)")
    return {"counts": split_counts, "dropped": dropped, "lines": lines}
