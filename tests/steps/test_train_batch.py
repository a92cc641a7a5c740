"""A batch larger than the training split never trains or pushes a model of random
weights (issue 24, second bad-input pass): refused before the run for a built-in
dataset, stopped at train for a folder, and a fit that took no optimizer step is never
written."""

from __future__ import annotations

import os

import pytest

from pipeline.metadata import METADATA_FILE, MetadataStore
from tests.fixtures import cli_config, make_class_folders, run_cli


def test_a_batch_larger_than_a_builtin_dataset_is_refused_before_the_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = run_cli(capsys, "run", cli_config(tmp_path), "--runs-dir", str(runs),
                        "--set", "train.batch_size=100000000")
    assert code == 2
    assert err.strip().splitlines() == [
        "imgpipe: error: train.batch_size 100000000 is larger than builtin:digits's 1797 "
        "training images: not one full batch, so no optimizer step would run; set "
        "train.batch_size to at most 1797 (e.g. 32)."]
    assert MetadataStore(str(runs / METADATA_FILE)).list_runs() == []     # no run started


def test_a_batch_larger_than_the_training_split_stops_at_train_and_pushes_nothing(
        tmp_path, capsys):
    """A folder's size is known after ingest: train stops before fitting (it used to
    take no optimizer step, report 'train accuracy nan', bless and push the model)."""
    make_class_folders(str(tmp_path / "photos"), per_class=30)
    path = cli_config(tmp_path, data={"source": str(tmp_path / "photos"), "image_size": [12, 12]},
                   validate={"max_near_duplicate_fraction": 1.0},
                   model={"kind": "logistic"}, train={"batch_size": 5000})
    runs = tmp_path / "runs"
    code, out, err = run_cli(capsys, "run", path, "--runs-dir", str(runs))
    assert code == 2, out + err
    [line] = err.strip().splitlines()
    assert line.startswith("imgpipe: error: train.batch_size 5000 is larger than the "
                           "training split (")
    assert "no optimizer step would run; set train.batch_size to at most" in line
    assert "BLESSED" not in out and not os.path.exists(tmp_path / "serving")
    [run] = MetadataStore(str(runs / METADATA_FILE)).list_runs()
    assert run["status"] == "failed"


def test_a_model_that_took_no_optimizer_step_is_not_written(tmp_path, graph, monkeypatch):
    """The last guard, under the batch check: a fit that ran no step fails train."""
    from components import artifacts
    from components.config.model import ModelConfig
    from components.config.train import TrainConfig
    from components.errors import TrainingError
    from components.steps import train

    monkeypatch.setattr(train, "check_batch_fits", lambda *args: None)   # as before it
    with pytest.raises(TrainingError, match="took no optimizer step"):
        train.run(*graph, ModelConfig(kind="logistic"), TrainConfig(epochs=1, batch_size=10_000),
                  trained_model=str(tmp_path / "model"))
    assert not artifacts.is_committed(str(tmp_path / "model"))
