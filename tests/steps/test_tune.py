"""Tune: the search space is checked before any trial, the best values reach train and
the model card, a search resumes from its completed trials, reruns are cached."""

from __future__ import annotations

import os

import pytest

from components import artifacts
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from components.config.transform import TransformConfig
from components.config.tune import TuneConfig
from components.errors import ConfigError
from components.steps import train, transform, tune
from pipeline import config as config_lib
from tests import fixtures

SPACE = {"train.optimizer.learning_rate": {"log_uniform": [1e-3, 3e-2]},
         "model.kind": {"choice": ["logistic", "dense"]},
         "model.hidden_units": {"choice": [[8], [16, 8]]}}


@pytest.mark.parametrize("tune_section, expected", [
    ({"space": {"model.dropot": {"choice": [0.2]}}}, "model.dropot: no such key"),
    ({"space": {"train.optimizer.lr": {"uniform": [0.1, 0.2]}}},
     "train.optimizer.lr: no such key"),
    ({"space": {"model.kind": {"choice": ["cnn", "deep_cnnn"]}}}, "'deep_cnnn' is not a valid"),
    ({"space": {"model.dropout": {"uniform": [0.5, 0.2]}}}, "empty range"),
    ({"space": {"model.dropout": {"choice": []}}}, "choice is empty"),
    ({"space": {"model.dropout": {"uniform": [0.1, 1.5]}}}, "1.5 is not a valid value"),
    ({"space": {"data.image_size": {"choice": [[8, 8]]}}}, "cannot be searched"),
    ({"space": {"model.dropout": {"uniform": [0.1, 0.2]}}, "max_trials": 0},
     "max_trials: Input should be greater than 0"),
    ({"space": {"model.dropout": {"uniform": [0.1, 0.2]}}, "objective": "val_auc"},
     "not a metric train records"),
])
def test_bad_search_spaces_are_one_line_config_errors(tune_section, expected, tmp_path):
    with pytest.raises(ConfigError, match=expected) as info:
        config_lib.from_dict({"tune": tune_section})
    assert "\n" not in str(info.value)
    # through the CLI: exit 2, before any step runs
    from pipeline import cli
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"tune": tune_section}))
    assert cli.main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("2*"))


def test_space_parsing_declares_each_kind():
    import keras_tuner as kt

    cfg = TuneConfig(space={**SPACE, "model.dropout": {"uniform": [0.1, 0.4]},
                            "train.batch_size": {"int_uniform": [4, 16]}})
    hp = kt.HyperParameters()
    values = tune.trial_values(cfg.space, hp)
    assert values["model.kind"] in ("logistic", "dense")
    assert values["model.hidden_units"] in ([8], [16, 8])          # lists by index
    assert 1e-3 <= values["train.optimizer.learning_rate"] <= 3e-2
    assert 4 <= values["train.batch_size"] <= 16 and isinstance(values["train.batch_size"], int)
    kinds = {type(h).__name__ for h in hp.space}
    assert {"Choice", "Float", "Int"} <= kinds
    assert hp.space[0].sampling == "log"


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    examples, _ = fixtures.examples_artifact(tmp, per_class=12)
    transform.run(examples, DataConfig(image_size=(12, 12)), TransformConfig(), BeamConfig(),
                  transform_graph=str(tmp / "tg"))
    return artifacts.read(str(tmp / "tg")), examples


def test_best_values_reach_train_and_its_record(tmp_path, graph):
    cfg = TuneConfig(space=SPACE, max_trials=3, epochs=1, seed=3)
    summary = tune.run(*graph, cfg, ModelConfig(kind="cnn"), TrainConfig(batch_size=8),
                       hyperparameters=str(tmp_path / "hp"), scratch=str(tmp_path / "s"))
    found = artifacts.read(str(tmp_path / "hp"), "HyperParameters")
    record = artifacts.HyperParameters.read(found)
    assert len(record["trials"]) == 3 and record["searched"]
    assert all(t["score"] is not None and t["seconds"] > 0 for t in record["trials"])
    best = record["best"]
    assert best == summary["best"] == found.properties["best"]
    assert best == max(record["trials"], key=lambda t: t["score"])["values"]
    assert record["best_score"] == max(t["score"] for t in record["trials"])
    assert not os.path.exists(tmp_path / "s")          # search state removed once done

    # train applies them: the model kind, widths and rate the search chose
    out = train.run(*graph, ModelConfig(kind="cnn"), TrainConfig(epochs=1, batch_size=8),
                    trained_model=str(tmp_path / "m"), hyperparameters=found)
    model = artifacts.read(str(tmp_path / "m"), "Model")
    assert model.properties["kind"] == best["model.kind"]
    assert model.properties["hyperparameters"] == {"best": best, "source": found.uri}
    assert out["lines"][0].startswith("tuned values: ")


def test_the_summary_calls_the_best_trial_by_its_printed_number(tmp_path, graph, capsys):
    """The trial lines, the summary's best trial and the record (the report's table)
    number the trials alike, from 1 (issue 34, item 25)."""
    import re

    cfg = TuneConfig(space=SPACE, max_trials=3, epochs=1, seed=3)
    summary = tune.run(*graph, cfg, ModelConfig(kind="cnn"), TrainConfig(batch_size=8),
                       hyperparameters=str(tmp_path / "hp"), scratch=str(tmp_path / "s"))
    printed = {int(number): float(score) for number, score in
               re.findall(r"trial (\d+): \S+ (-?[\d.]+|inf|-inf)", capsys.readouterr().out)}
    assert sorted(printed) == [1, 2, 3]
    [best_line] = [line for line in summary["lines"] if line.startswith("best ")]
    number, score = re.search(r"best \S+ (\S+) \(trial (\d+)\)", best_line).group(2, 1)
    assert f"{printed[int(number)]:.4f}" == score, (printed, best_line)
    record = artifacts.HyperParameters.read(artifacts.read(str(tmp_path / "hp")))
    assert [t["trial"] for t in record["trials"]] == [1, 2, 3]
    assert record["best_trial"] == int(number)


def test_no_space_searches_nothing_and_train_keeps_its_config(tmp_path, graph):
    summary = tune.run(*graph, TuneConfig(), ModelConfig(kind="logistic"), TrainConfig(),
                       hyperparameters=str(tmp_path / "hp"))
    assert summary["best"] == {} and not summary["searched"]
    found = artifacts.read(str(tmp_path / "hp"), "HyperParameters")
    train.run(*graph, ModelConfig(kind="logistic"), TrainConfig(epochs=1, batch_size=8),
              trained_model=str(tmp_path / "m"), hyperparameters=found)
    model = artifacts.read(str(tmp_path / "m"), "Model")
    assert model.properties["kind"] == "logistic"
    assert model.properties["hyperparameters"] == {"best": {}, "source": None}


def test_an_interrupted_search_resumes_from_completed_trials(tmp_path, graph, monkeypatch):
    import keras

    cfg = TuneConfig(space=SPACE, max_trials=3, epochs=1, seed=5)
    fits = []
    real_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        fits.append(1)
        if len(fits) == 3:
            raise KeyboardInterrupt          # Ctrl-C during the third trial
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    scratch = str(tmp_path / "s")
    with pytest.raises(KeyboardInterrupt):
        tune.run(*graph, cfg, ModelConfig(), TrainConfig(batch_size=8),
                 hyperparameters=str(tmp_path / "hp"), scratch=scratch)
    assert not artifacts.is_committed(str(tmp_path / "hp"))
    fits.clear()
    summary = tune.run(*graph, cfg, ModelConfig(), TrainConfig(batch_size=8),
                       hyperparameters=str(tmp_path / "hp"), scratch=scratch)
    record = artifacts.HyperParameters.read(str(tmp_path / "hp"))
    assert record["resumed_after_trials"] == 2 and len(fits) == 1   # only the third ran again
    assert len(record["trials"]) == 3 and "resumed after 2" in summary["lines"][0]


def test_pipeline_tunes_caches_and_reuses_a_search(tmp_path, make_config):
    from pipeline.local.runner import run_pipeline

    def step_outputs(result, name):
        return next(s for s in result.steps if s.step == name)

    common = dict(data={"source": "builtin:digits", "image_size": [8, 8]},
                  train={"epochs": 1, "batch_size": 32})
    cfg = make_config(tune={"space": {"model.kind": {"choice": ["logistic", "dense"]},
                                      "model.hidden_units": {"choice": [[16], [32]]}},
                            "max_trials": 2, "epochs": 1}, **common)
    runs = str(tmp_path / "runs")
    first = run_pipeline(cfg, runs, until="train", log=lambda _: None)
    assert first.status == "succeeded", first.error
    tuned = step_outputs(first, "tune")
    best = tuned.summary["best"]
    assert set(best) == {"model.kind", "model.hidden_units"}
    report = open(os.path.join(first.run_dir, "report.html")).read()
    assert "<h2>Tuning</h2>" in report and "2 trials of 1 epochs" in report
    assert "Tuned values: model." in report and "tensorboard --logdir" in report
    assert os.path.isfile(os.path.join(first.run_dir, "tuning_trials.png"))
    again = run_pipeline(cfg, runs, until="train", log=lambda _: None)
    assert [s.status for s in again.steps if s.step in ("tune", "train")] == ["cached", "cached"]

    # train.hyperparameters: run:ID reuses that search without searching again
    reuse = make_config(train={"epochs": 1, "batch_size": 32,
                               "hyperparameters": f"run:{first.run_id}"},
                        data=common["data"])
    third = run_pipeline(reuse, runs, until="train", log=lambda _: None)
    assert third.status == "succeeded", third.error
    hp = step_outputs(third, "tune")
    assert hp.summary["best"] == best and not hp.summary["searched"]
    model = artifacts.read(step_outputs(third, "train").outputs["trained_model"])
    assert model.properties["kind"] == best["model.kind"]
