"""Validate: schema inference and enforcement, every anomaly kind, drift between runs."""

import copy

import numpy as np
import pytest

from components import artifacts
from components.data import schema as schema_lib
from components.config.validate import ValidateConfig
from components.errors import ConfigError, ValidationFailed
from components.steps import validate
from tests import fixtures
from tests.fixtures import random_thumbnail, stats_artifact

BASE = fixtures.STATISTICS


def run(tmp_path, stats_art, cfg=None, baseline=None, name="v"):
    """The step, then what the runners do with its verdict: a closed gate ends the run
    with the step's `stop` error (ValidationFailed) and its reason."""
    summary = validate.run(stats_art, cfg or ValidateConfig(),
                           anomalies=str(tmp_path / name / "a"),
                           schema=str(tmp_path / name / "s"), baseline_statistics=baseline)
    stop = validate.run.spec.stop_error(summary)
    if stop is not None:
        raise stop
    return summary


def kinds(tmp_path, name="v"):
    body = artifacts.ExampleAnomalies.read(str(tmp_path / name / "a"))
    return {a["kind"]: a["severity"] for a in body["anomalies"]}


def test_clean_statistics_pass_and_write_schema(tmp_path):
    summary = run(tmp_path, stats_artifact(tmp_path, "s", BASE))
    assert summary["num_anomalies"] == 0
    schema = schema_lib.load_schema(str(tmp_path / "v" / "s" / artifacts.Schema.TEXT))
    assert schema_lib.domain(schema, "label") == ["cat", "dog"]
    assert schema_lib.int_bounds(schema, "height") == (12, 16)
    assert schema_lib.int_bounds(schema, "channels") == (1, 1)


def test_enforced_schema_flags_classes_channels_sizes(tmp_path):
    schema_path = tmp_path / artifacts.Schema.TEXT
    schema_path.write_text(schema_lib.schema_to_text(schema_lib.infer_schema(BASE)))
    changed = copy.deepcopy(BASE)
    changed["counts"]["train"] = {"cat": 40, "owl": 50}
    changed["counts"]["eval"] = {"cat": 5, "owl": 5}
    changed["class_names"] = ["cat", "owl"]
    changed["channels"] = {"1": 90, "3": 10}
    changed["sizes"] = {"12x12": 90, "64x64": 10}
    cfg = ValidateConfig(schema=str(schema_path))
    with pytest.raises(ValidationFailed) as info:
        run(tmp_path, stats_artifact(tmp_path, "s", changed), cfg)
    found = kinds(tmp_path)
    for kind in ("unknown_class", "missing_class", "channels_out_of_range", "size_out_of_range"):
        assert found[kind] == "error"
    message = str(info.value)
    assert "unknown_class" in message and message.count("\n") >= 4  # one line per anomaly
    assert info.value.exit_code == 3
    # the step itself returns its verdict with both outputs committed, the message
    # pointing at the anomalies (the runner, not the step, stops the run)
    summary = validate.run(stats_artifact(tmp_path, "s2", changed), cfg,
                           anomalies=str(tmp_path / "w" / "a"), schema=str(tmp_path / "w" / "s"))
    assert summary["passed"] is False and summary["reason"] == message.replace(
        str(tmp_path / "v"), str(tmp_path / "w"))
    assert artifacts.is_committed(str(tmp_path / "w" / "a"))
    assert artifacts.is_committed(str(tmp_path / "w" / "s"))
    assert str(tmp_path / "w" / "a" / artifacts.ExampleAnomalies.FILE) in summary["reason"]


def test_empty_split_and_eval_missing_class(tmp_path):
    stats = copy.deepcopy(BASE)
    stats["counts"]["eval"] = {"cat": 10}
    with pytest.raises(ValidationFailed):
        run(tmp_path, stats_artifact(tmp_path, "a", stats), name="x")
    assert kinds(tmp_path, "x")["eval_missing_class"] == "error"
    stats["counts"]["eval"] = {}
    with pytest.raises(ValidationFailed):
        run(tmp_path, stats_artifact(tmp_path, "b", stats), name="y")
    assert kinds(tmp_path, "y")["empty_split"] == "error"


def test_class_share_drift_between_runs(tmp_path):
    previous = stats_artifact(tmp_path, "prev", BASE)
    shifted = copy.deepcopy(BASE)
    shifted["counts"]["train"] = {"cat": 70, "dog": 20}    # 0.5 -> 0.78: L-inf 0.28
    with pytest.raises(ValidationFailed, match="L-inf 0.278"):
        run(tmp_path, stats_artifact(tmp_path, "now", shifted), baseline=previous)
    assert kinds(tmp_path)["class_drift"] == "error"
    # the same shift passes when the limit allows it
    run(tmp_path, stats_artifact(tmp_path, "now2", shifted),
        ValidateConfig(max_class_drift=0.3), baseline=previous, name="ok")


def test_brightness_drift_and_decode_failures_warn(tmp_path):
    previous = stats_artifact(tmp_path, "prev", BASE)
    darker = copy.deepcopy(BASE)
    darker["pixels"]["train"]["cat"]["brightness_mean"] = 0.15
    darker.update(num_quarantined=5, num_inputs=105, bad_fraction=5 / 105)
    summary = run(tmp_path, stats_artifact(tmp_path, "now", darker), baseline=previous)
    found = kinds(tmp_path)
    assert found["brightness_drift"] == "warning" and found["decode_failures"] == "warning"
    assert summary["num_anomalies"] == 2


def test_near_duplicates_across_splits_are_confirmed_in_pixel_space(tmp_path):
    rng = np.random.default_rng(7)
    train = [random_thumbnail(rng) for _ in range(20)]
    rows = [(f"t{i}", "train", t) for i, t in enumerate(train)]

    def near(thumb, rms):          # the same image with noise of a given RMS
        noise = rng.choice([-rms, rms], size=256)
        return np.clip(thumb.astype(float) + noise, 0, 255).astype(np.uint8)

    # e0: a re-encoded copy of t0 (RMS ~2); e1: 10 off t1 (distinct); e2: unrelated
    rows += [("e0", "eval", near(train[0], 2)), ("e1", "eval", near(train[1], 10)),
             ("e2", "eval", random_thumbnail(rng))]
    art = stats_artifact(tmp_path, "s", BASE, rows)
    with pytest.raises(ValidationFailed, match="1 of 3 eval images"):
        run(tmp_path, art)            # RMS 6: only e0 is near; 33% > 1%
    body = artifacts.ExampleAnomalies.read(str(tmp_path / "v" / "a"))
    [pair] = body["near_duplicates"]["pairs"]
    assert (pair["eval_id"], pair["train_id"]) == ("e0", "t0") and pair["rms"] < 2.5
    loose = dict(BASE, near_duplicate_rms=12.0)          # as ingest recorded it
    summary = run(tmp_path, stats_artifact(tmp_path, "s2", loose, rows),
                  ValidateConfig(max_near_duplicate_fraction=0.9), name="w")
    assert kinds(tmp_path, "w") == {"near_duplicate_leak": "warning"}
    assert "2 of 3 eval images" in summary["lines"][1]


def test_removed_hash_distance_key_says_what_replaced_it():
    with pytest.raises(Exception, match="ingest: {near_duplicate_rms"):
        ValidateConfig(near_duplicate_bits=2)


def test_missing_schema_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="imgpipe schema infer"):
        run(tmp_path, stats_artifact(tmp_path, "s", BASE),
            ValidateConfig(schema=str(tmp_path / "nope.pbtxt")))


def test_linf_distance():
    assert validate.linf_distance({"a": 0.5, "b": 0.5}, {"a": 0.2, "b": 0.3, "c": 0.5}) == \
        (0.5, "c")
