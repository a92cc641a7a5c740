"""`--set` (pipeline/config_yaml.py, applied by pipeline/config.py): a mapping given for a
section merges into the section the config file wrote, key by key and section by
section, as the file's own values fill the defaults; a mapping that is one value
(data.spans, evaluate.thresholds, beam.options) replaces it, as in the file."""

from __future__ import annotations

import yaml
import pytest

from pipeline import config as config_lib
from tests.fixtures import run_cli

FILE = """\
name: tiny
data: {source: builtin:digits, image_size: [8, 8], channels: 1, eval_fraction: 0.25}
train:
  epochs: 2
  optimizer: {name: adam, learning_rate: 0.005, schedule: cosine}
evaluate: {thresholds: {accuracy: {min: 0.3}, example_count: {min: 10}}}
beam: {options: {direct_num_workers: 2}}
"""

# --set -> (dotted key, expected value) pairs the merged config must hold
MERGES = {
    "a top-level section": ("data={eval_fraction: 0.5}", {
        "data.eval_fraction": 0.5, "data.source": "builtin:digits",
        "data.image_size": [8, 8], "data.channels": 1}),
    "a section inside a section": ("train.optimizer={name: sgd}", {
        "train.optimizer.name": "sgd", "train.optimizer.learning_rate": 0.005,
        "train.optimizer.schedule": "cosine", "train.epochs": 2}),
    "a section with a section in it": ("train={optimizer: {learning_rate: 0.01}}", {
        "train.optimizer.learning_rate": 0.01, "train.optimizer.name": "adam",
        "train.optimizer.schedule": "cosine", "train.epochs": 2}),
    "an empty mapping": ("train={}", {
        "train.epochs": 2, "train.optimizer.learning_rate": 0.005}),
}

# a mapping that is one value replaces it, as the file's value replaces the default
REPLACES = {
    "thresholds (a mapping of metric names)": (
        "evaluate.thresholds={top_k_accuracy: {min: 0.5}}",
        {"evaluate.thresholds": {"top_k_accuracy": {"min": 0.5}}}),
    "Beam options (free-form)": ("beam.options={direct_running_mode: in_memory}", {
        "beam.options": {"direct_running_mode": "in_memory"}}),
    "a plain value under a merged section": ("data={image_size: [12, 12]}", {
        "data.image_size": [12, 12], "data.source": "builtin:digits"}),
}


def _value(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("case", sorted(MERGES) + sorted(REPLACES))
def test_set_merges_a_mapping_into_a_section(tmp_path, case):
    override, expected = {**MERGES, **REPLACES}[case]
    path = tmp_path / "cfg.yaml"
    path.write_text(FILE)
    tree = config_lib.load(str(path), [override]).to_dict()
    for dotted, value in expected.items():
        got = _value(tree, dotted)
        if dotted == "evaluate.thresholds":       # each bound with its unset ones left out
            got = {k: {b: v for b, v in bounds.items() if v is not None}
                   for k, bounds in got.items()}
        assert got == value, (dotted, got)


def test_config_show_keeps_the_files_data_under_a_section_override(tmp_path, capsys):
    """The reproduction: `config show cfg.yaml --set 'data={...}'` showed source
    builtin:fonts and 36x36, another dataset than the file's."""
    path = tmp_path / "cfg.yaml"
    path.write_text(FILE)
    code, out, err = run_cli(capsys, "config", "show", str(path), "--set",
                             "data={eval_fraction: 0.5}", "--set", "train.optimizer={name: sgd}")
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["data"]["source"] == "builtin:digits" and shown["data"]["image_size"] == [8, 8]
    assert shown["data"]["eval_fraction"] == 0.5
    assert shown["train"]["optimizer"] == {**shown["train"]["optimizer"], "name": "sgd",
                                           "learning_rate": 0.005, "schedule": "cosine"}


def test_a_span_window_given_as_a_mapping_replaces_the_files(tmp_path):
    """data.spans is one value ({rolling: N} or {range: [A, B]}): merging two would
    make a selection with two keys, which no window is."""
    (tmp_path / "drops" / "1" / "cat").mkdir(parents=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(f"data: {{source: '{tmp_path}/drops/{{SPAN}}/', spans: {{range: [1, 3]}}}}\n")
    cfg = config_lib.load(str(path), ["data.spans={rolling: 2}"])
    assert cfg.data.spans == {"rolling": 2}
    cfg = config_lib.load(str(path), ["data={spans: {rolling: 2}}"])
    assert cfg.data.spans == {"rolling": 2} and cfg.data.source.endswith("/drops/{SPAN}/")


def test_an_override_leaves_a_yaml_alias_sharing_the_section_alone(tmp_path):
    """`&name`/`*name` make two keys hold one mapping: setting a key under one of them
    changes that one only."""
    path = tmp_path / "cfg.yaml"
    path.write_text("data: {source: builtin:digits}\n"
                    "kfp: {steps: {train: &step {cpu_request: '2'}, evaluate: *step}}\n")
    cfg = config_lib.load(str(path), ["kfp.steps.train.cpu_request='4'"])
    assert (cfg.kfp.steps["train"].cpu_request, cfg.kfp.steps["evaluate"].cpu_request) == \
        ("4", "2")
