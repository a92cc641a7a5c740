"""Transform: outputs for scale/standardize, vocabulary, bad records, train/serve skew."""

import numpy as np
import pytest

from components import artifacts, features
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.transform import TransformConfig
from components.steps import transform
from tests import fixtures
from tests.fixtures import CLASSES, examples_artifact


def run_transform(tmp_path, examples, name="tg", size=(10, 10), channels=1, **cfg):
    cfg.setdefault("materialize", True)
    uri = str(tmp_path / name)
    summary = transform.run(examples, DataConfig(image_size=size, channels=channels),
                            TransformConfig(**cfg), BeamConfig(), transform_graph=uri)
    return artifacts.read(uri, "TransformGraph"), summary


def read_transformed(graph, split):
    """The materialized examples, as the model sees them: image = pixels * scale + offset."""
    import tensorflow as tf

    spec = {features.PIXEL_BYTES: tf.io.FixedLenFeature([], tf.string),
            features.LABEL_ID: tf.io.FixedLenFeature([], tf.int64),
            features.PIXEL_SCALE: tf.io.FixedLenFeature([], tf.float32),
            features.PIXEL_OFFSET: tf.io.FixedLenFeature([], tf.float32)}
    files = artifacts.TransformGraph.shards(graph, split)
    rows = []
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        parsed = {k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}
        pixels = np.frombuffer(parsed[features.PIXEL_BYTES], np.uint8).reshape(
            graph.properties["image_shape"])
        rows.append({"pixels": pixels, "label_id": parsed[features.LABEL_ID],
                     "image": pixels.astype(np.float32) * parsed[features.PIXEL_SCALE]
                     + parsed[features.PIXEL_OFFSET]})
    return rows


def test_scale_outputs_shape_range_onehot(tmp_path):
    examples, _ = examples_artifact(tmp_path)
    graph, summary = run_transform(tmp_path, examples, normalize="scale")
    assert graph.properties["num_classes"] == 3
    assert sorted(graph.properties["label_vocabulary"]) == list(CLASSES)
    assert graph.properties["counts"] == {"train": 15, "eval": 3}
    rows = read_transformed(graph, "train")
    assert len(rows) == 15
    for row in rows:
        assert row["image"].shape == (10, 10, 1) and row["image"].dtype == np.float32
        assert 0.0 <= row["image"].min() and row["image"].max() <= 1.0
        assert np.allclose(row["image"], row["pixels"] / 255.0, atol=1e-6)
        assert 0 <= row["label_id"] < 3
    vocab = graph.properties["label_vocabulary"]
    assert {vocab[r["label_id"]] for r in rows} == set(CLASSES)


def test_standardize_uses_full_pass_statistics(tmp_path):
    examples, _ = examples_artifact(tmp_path)
    graph, _ = run_transform(tmp_path, examples, normalize="standardize")
    pixels = np.stack([r["image"] for r in read_transformed(graph, "train")])
    assert abs(pixels.mean()) < 1e-4 and abs(pixels.std() - 1.0) < 1e-3


def test_rgb_resize_with_padding(tmp_path):
    examples, _ = examples_artifact(tmp_path, channels=3, size=8)
    graph, _ = run_transform(tmp_path, examples, size=(16, 8), channels=3,
                             keep_aspect_ratio=True, normalize="scale")
    row = read_transformed(graph, "eval")[0]
    assert row["image"].shape == (16, 8, 3)
    assert np.allclose(row["image"][:4], 0.0)  # padded top band keeps the aspect ratio


def test_vocabulary_is_deterministic_and_frequency_independent(tmp_path):
    first, _ = run_transform(tmp_path, examples_artifact(tmp_path, "a", per_class=4)[0], "g1")
    more_dogs = [features.encode_example({features.IMAGE: fixtures.png_bytes(
        fixtures.class_pattern(1, 50 + i)), features.LABEL: "dog", features.ID: f"d{i}"})
        for i in range(10)]
    second, _ = run_transform(
        tmp_path, examples_artifact(tmp_path, "b", per_class=4, extra_train=more_dogs)[0], "g2")
    assert first.properties["label_vocabulary"] == second.properties["label_vocabulary"]


def test_bad_records_are_counted_not_fatal(tmp_path):
    corrupt = features.encode_example({features.IMAGE: b"\x89PNG\r\n\x1a\nbroken",
                                       features.LABEL: "cat", features.ID: "corrupt"})
    stranger = features.encode_example({features.IMAGE: fixtures.png_bytes(
        fixtures.class_pattern(0, 77)), features.LABEL: "owl", features.ID: "owl"})
    examples, _ = examples_artifact(tmp_path, extra_eval=(corrupt, stranger))
    graph, summary = run_transform(tmp_path, examples)
    assert graph.properties["dropped"] == {"eval/undecodable": 1, "eval/unknown_label": 1}
    assert graph.properties["counts"]["eval"] == 3
    dropped = open(graph.path("dropped-eval.jsonl")).read()
    assert '"id": "corrupt"' in dropped


def test_a_bad_train_record_is_left_out_of_the_materialized_split(tmp_path):
    """The training split is read twice (analysis, then transform); the second read
    skips the records the first found undecodable."""
    corrupt = features.encode_example({features.IMAGE: b"\x89PNG\r\n\x1a\nbroken",
                                       features.LABEL: "cat", features.ID: "corrupt"})
    examples, _ = examples_artifact(tmp_path, extra_train=(corrupt,))
    graph, _ = run_transform(tmp_path, examples)
    assert graph.properties["dropped"] == {"train/undecodable": 1}
    assert len(read_transformed(graph, "train")) == \
        sum(examples.properties["counts"]["train"].values()) - 1


def test_beam_output_equals_serving_layer(tmp_path):
    """Training/serving skew: the Beam output and the graph's Keras layer agree."""
    import tensorflow as tf
    import tensorflow_transform as tft

    examples, raw = examples_artifact(tmp_path)
    graph, _ = run_transform(tmp_path, examples, normalize="standardize")
    beam_rows = read_transformed(graph, "eval")

    layer = tft.TFTransformOutput(graph.uri).transform_features_layer()
    parsed = tf.io.parse_example(tf.constant(raw["eval"]), features.raw_feature_spec())
    eager = {k: v.numpy() for k, v in layer(parsed).items()}
    key = lambda img, lab: (int(lab), round(float(img.sum()), 3))
    beam_sorted = sorted(beam_rows, key=lambda r: key(r["image"], r["label_id"]))
    order = sorted(range(len(eager["label_id"])),
                   key=lambda i: key(eager["image"][i], eager["label_id"][i]))
    assert len(beam_sorted) == len(order) == 3
    for row, i in zip(beam_sorted, order):
        assert row["label_id"] == eager["label_id"][i]
        assert np.max(np.abs(row["image"] - eager["image"][i])) <= 1e-6
        assert np.array_equal(row["pixels"], eager["pixels"][i].astype(np.uint8))
        assert eager["label_onehot"][i].argmax() == eager["label_id"][i]


def test_materialize_auto_writes_pixels_only_for_large_data(tmp_path):
    """auto: small data leaves the decoding to the trainer (which caches it); above
    1 GiB of pixels the transform writes them once."""
    examples, _ = examples_artifact(tmp_path)
    graph, summary = run_transform(tmp_path, examples, materialize="auto")
    assert graph.properties["materialized"] is False
    assert not (tmp_path / "tg" / "examples").exists()
    assert graph.properties["counts"] == {"train": 15, "eval": 3}     # what training reads
    big = TransformConfig(materialize="auto")
    assert transform.should_materialize(big, DataConfig(image_size=[192, 192], channels=3),
                                        20_000)
    assert not transform.should_materialize(big, DataConfig(image_size=[28, 28]), 70_000)


@pytest.mark.slow
def test_pipeline_caches_validate_and_transform(tmp_path, make_config):
    from pipeline.local.runner import run_pipeline

    fixtures.make_class_folders(str(tmp_path / "src"), per_class=12)
    cfg = make_config(data={"source": str(tmp_path / "src"), "image_size": [8, 8],
                            "eval_fraction": 0.3})
    quiet = dict(log=lambda line: None)
    first = run_pipeline(cfg, str(tmp_path / "runs"), until="transform", **quiet)
    assert [s.status for s in first.steps] == ["ran", "ran", "ran"]
    second = run_pipeline(cfg, str(tmp_path / "runs"), until="transform", **quiet)
    assert [s.status for s in second.steps] == ["cached", "ran", "cached"]
    # validate reran once: it now has a baseline (run 1's statistics); its verdict is
    # unchanged, so transform's inputs are unchanged too
    third = run_pipeline(cfg, str(tmp_path / "runs"), until="transform", **quiet)
    assert [s.status for s in third.steps] == ["cached", "cached", "cached"]
    cfg.transform.normalize = "scale"
    fourth = run_pipeline(cfg, str(tmp_path / "runs"), until="transform", **quiet)
    assert [s.status for s in fourth.steps] == ["cached", "cached", "ran"]
    assert "config.transform.normalize: 'standardize' -> 'scale'" in fourth.steps[2].decision
