"""train.augment: auto never makes a course model learn worse (issue 35).

On 3-channel photos `auto` used to augment every model kind. The course's `cnn` (a
4-filter convolution, a dense layer of 32 with dropout 0.5) then underfit: on the
shared sign-language photos (10 epochs) eval accuracy 0.224 augmented against 0.624
without, and on builtin:shapes (30 epochs) 0.385 against 0.598. What a user relies on:
with `augment: auto` the course cnn learns at least as well as with `augment: off` in
the same epochs, the modern convnets are still augmented (transfer is not: a head
over a frozen base underfits too), and the run says which.
This runs `imgpipe run` as a user does, on the generated 3-channel built-in set."""

from __future__ import annotations

import re

import pytest

from components.trainer import inputs
from tests.fixtures import cli_config, run_cli


def _eval_accuracy(out: str) -> float:
    found = re.search(r"eval accuracy ([\d.]+) \(eval split", out)
    assert found, out[-3000:]
    return float(found[1])


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory):
    """(the config of the course cnn on builtin:shapes, 30 epochs; its folder)."""
    tmp = tmp_path_factory.mktemp("shapes")
    config = cli_config(tmp, data={"source": "builtin:shapes", "image_size": [48, 48],
                                   "channels": 3},
                        model={"kind": "cnn", "hidden_units": None},
                        train={"epochs": 30, "batch_size": 64})
    return config, tmp


def test_the_course_cnn_learns_as_well_with_augment_auto_as_with_off(shapes_runs, capsys):
    config, tmp = shapes_runs
    accuracy, outputs = {}, {}
    for augment in ("off", "auto"):       # one runs folder: ingest and transform run once
        code, out, err = run_cli(capsys, "run", config, "--runs-dir", str(tmp / "runs"),
                                 "--until", "evaluate", "--set", f"train.augment={augment}")
        assert code == 0, out[-3000:] + err[-3000:]
        accuracy[augment], outputs[augment] = _eval_accuracy(out), out
    # it learns (5 classes: chance is 0.2), and auto is no worse than off
    assert accuracy["off"] >= 0.45, outputs["off"][-3000:]
    assert accuracy["auto"] >= accuracy["off"] - 0.02, accuracy
    assert "augmentation: off (train.augment auto, model.kind cnn" in outputs["auto"]


def test_auto_augments_the_modern_convnets_only():
    for kind in ("xception", "resnet", "squeezenet"):
        layers, note = inputs.augmentation("auto", 3, kind)
        assert dict(layers)["flip"] == "horizontal" and "auto, 3-channel data" in note, kind
    for kind in ("logistic", "dense", "mlp", "hidden1", "dnn", "cnn", "deep_cnn", "transfer"):
        layers, note = inputs.augmentation("auto", 3, kind)
        assert layers == [] and f"model.kind {kind}" in note, kind
    # 1-channel data stays unaugmented for every kind; a list the user wrote is applied
    assert inputs.augmentation("auto", 1, "xception")[0] == []
    assert inputs.augmentation({"rotation": 0.1}, 3, "cnn")[0] == [("rotation", 0.1)]
