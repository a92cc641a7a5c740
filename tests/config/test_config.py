"""Config: defaults, overrides, and one-line errors with exit code 2."""

import json
import os

import pytest

from components.errors import ConfigError
from pipeline import cli
from pipeline import config as config_lib

from tests import ROOT  # noqa: E402


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_minimal_file_gets_course_defaults(tmp_path):
    cfg = config_lib.load(write(tmp_path, "name: tiny\ndata: {source: builtin:digits}\n"))
    assert cfg.name == "tiny"
    assert cfg.data.image_size == (36, 36)
    assert cfg.train.optimizer.name == "adam" and cfg.train.optimizer.learning_rate == 0.001
    assert cfg.ingest.max_bad_fraction == 0.05
    assert cfg.beam.runner == "DirectRunner"


def test_example_configs_load():
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        cfg = config_lib.load(os.path.join(ROOT, "configs", name))
        assert cfg.name


def test_set_overrides_parse_yaml_values(tmp_path):
    cfg = config_lib.load(write(tmp_path, "data: {source: builtin:fonts}\n"),
                          ["train.epochs=3", "data.image_size=[28, 28]",
                           "train.optimizer.name=sgd", "beam.options.direct_num_workers=4"])
    assert cfg.train.epochs == 3
    assert cfg.data.image_size == (28, 28)
    assert cfg.train.optimizer.name == "sgd"
    assert cfg.beam.options == {"direct_num_workers": 4}


@pytest.mark.parametrize("text, overrides, expected", [
    ("data: {imagesize: [3, 3]}\n", [], "unknown key 'data.imagesize'"),
    ("train: {epochs: many}\n", [], "train.epochs"),
    ("data: {image_size: [0, 36]}\n", [], "data.image_size"),
    ("model: {kind: transformer}\n", [], "model.kind"),
    ("name: 'bad name!'\n", [], "name"),
    ("data: [1, 2\n", [], "invalid YAML at line"),
    ("", ["train.epochs"], "is not KEY=VALUE"),
    ("", ["trian.epochs=3"], "unknown key 'trian'"),
])
def test_errors_name_the_key_and_the_fix(tmp_path, text, overrides, expected):
    with pytest.raises(ConfigError) as info:
        config_lib.load(write(tmp_path, text), overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert "cfg.yaml" in message or message.startswith("--set")


def test_cli_exit_code_2_with_one_line(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "missing.yaml" in err and "not found" in err

    bad = write(tmp_path, "ingest: {max_bad_fraction: 2}\n")
    assert cli.main(["run", bad, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ingest.max_bad_fraction" in err


def test_published_json_schema_is_current():
    with open(os.path.join(ROOT, "schemas", "config.schema.json")) as handle:
        committed = json.load(handle)
    assert committed == json.loads(json.dumps(config_lib.json_schema())), (
        "schemas/config.schema.json is stale: run "
        "`imgpipe config schema -o schemas/config.schema.json`")


def test_enumerations_have_one_home():
    """Model kinds and built-in dataset names are defined once, in components.config;
    the builders, the loaders and the CLI's choices all read them from there."""
    import typing

    from components.config import data as data_config, model as model_config
    from components.data import datasets
    from components.trainer import models

    assert tuple(models.DEFAULTS) == model_config.MODEL_KINDS
    assert typing.get_args(model_config.ModelKind) == model_config.MODEL_KINDS
    parser = cli.build_parser()
    actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices["summary"]._actions}
    assert tuple(actions["model"].choices) == model_config.MODEL_KINDS
    for name in data_config.BUILTIN_DATASETS:
        assert callable(getattr(datasets, f"load_{name}"))


def test_every_command_line_argument_has_help():
    import argparse

    from pipeline import cli

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) \
                    and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(cli.build_parser(), "imgpipe")
    assert missing == []


@pytest.mark.parametrize("tree, kind, schedule, epochs", [
    # 3-channel data naming no model.kind: the photo defaults, under the keys given
    ({"data": {"channels": 3}}, "xception", "cosine", 40),
    ({"data": {"channels": 3}, "train": {"epochs": 5}}, "xception", "cosine", 5),
    ({"data": {"channels": 3}, "model": {"dropout": 0.3}}, "xception", "cosine", 40),
    # a named kind keeps the course's model and training exactly; 1-channel data too
    ({"data": {"channels": 3}, "model": {"kind": "deep_cnn"}}, "deep_cnn", "constant", 10),
    ({"data": {"channels": 1}}, "deep_cnn", "constant", 10),
    ({}, "deep_cnn", "constant", 10),
])
def test_photo_defaults_apply_to_3_channel_data_that_names_no_model(tree, kind, schedule,
                                                                    epochs):
    cfg = config_lib.from_dict({"data": {"source": "x", **tree.get("data", {})},
                                **{k: v for k, v in tree.items() if k != "data"}})
    assert (cfg.model.kind, cfg.train.optimizer.schedule, cfg.train.epochs) == \
        (kind, schedule, epochs)
    photos = kind == "xception"
    assert cfg.train.label_smoothing == (0.1 if photos else 0.0)
    assert cfg.train.optimizer.learning_rate == (0.002 if photos else 0.001)
    # what a run records loads back to the same config
    assert config_lib.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
