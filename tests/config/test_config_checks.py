"""Every config mistake is caught when the config loads (issue 24): one line on stderr,
exit 2, before any step runs, never a traceback or a silently different config."""

from __future__ import annotations

import os

import pytest

from pipeline import cli
from pipeline import config as config_lib
from pipeline.metadata import METADATA_FILE, MetadataStore
from tests import fixtures
from tests.fixtures import one_line_error

from tests import ROOT  # noqa: E402
EXAMPLE = os.path.join(ROOT, "deploy", "example.yaml")
# Small enough that a config the old code accepted runs its first step in seconds.
TINY = "name: t\ndata: {source: builtin:digits, image_size: [12, 12]}\n"


def refused_before_any_step(tmp_path, capsys, text, overrides=()):
    """Runs `imgpipe run` on `text`; asserts exit 2, one stderr line and no run on
    record (ingest never started); returns the line."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    runs = tmp_path / "runs"
    args = ["run", str(path), "--runs-dir", str(runs), "--until", "ingest",
            *[part for override in overrides for part in ("--set", override)]]
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("imgpipe: error: ") and len(err.splitlines()) == 1, err
    metadata = runs / METADATA_FILE
    assert not metadata.exists() or MetadataStore(str(metadata)).list_runs() == []
    return err


# --- item 3: a key given twice ----------------------------------------------------------

DUPLICATES = {
    "two train sections": ("train: {epochs: 2}\nmodel: {kind: dense}\ntrain: {batch_size: 8}\n",
                           (), "key 'train' is given twice, at line 3 and line 5"),
    "a key twice in a section": ("train:\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n",
                                 (), "key 'train.epochs' is given twice, at line 4 and line 6"),
    "deeper, in one flow mapping": ("train: {optimizer: {name: sgd, name: adam}}\n", (),
                                    "key 'train.optimizer.name' is given twice, at line 3, "
                                    "columns 21 and 32"),
    "in a --set value": ("", ["train.optimizer={name: sgd, name: adam}"],
                         "key 'name' is given twice"),
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys, case):
    text, overrides, expected = DUPLICATES[case]
    err = refused_before_any_step(tmp_path, capsys, TINY + text, overrides)
    assert expected in err and "merge the two into one" in err, err


def test_a_merge_key_may_still_override_what_it_merges(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(TINY + "train: {<<: {epochs: 2, batch_size: 8}, epochs: 3}\n")
    cfg = config_lib.load(str(path))
    assert (cfg.train.epochs, cfg.train.batch_size) == (3, 8)


# --- items 10 and 13: kfp settings, refused when compiling, not by KFP --------------------

KFP = {
    "cpu request that is no quantity": ("kfp.steps.train.cpu_request=lots",
                                        "kfp.steps.train.cpu_request: cpu_request 'lots' is not "
                                        "a CPU quantity"),
    "cpu limit in cores with a unit": ("kfp.steps.train.cpu_limit=2cores",
                                       "is not a CPU quantity"),
    "memory with a space": ("kfp.steps.train.memory_request=8 GB",
                            "memory_request '8 GB' is not a memory quantity"),
    "memory with a fraction": ("kfp.steps.evaluate.memory_limit=1.5G",
                               "memory_limit '1.5G' is not a memory quantity"),
    "image that is no reference": ("kfp.image=not a valid image ref!!",
                                   "kfp.image: image 'not a valid image ref!!' is not a "
                                   "container image reference"),
    "step image in upper case": ("kfp.steps.train.image=MyImage:tpu",
                                 "is not a container image reference"),
    "gpu image with a bad tag": ("kfp.gpu_image=us-docker.pkg.dev/p/i/imgpipe:-gpu",
                                 "is not a container image reference"),
    "unknown step": ("kfp.steps.bogus.retries=1",
                     "kfp.steps.bogus: this pipeline has no step 'bogus'; its steps are "
                     "ingest, validate, transform, tune, train, evaluate, infra_validate, push, "
                     "infer, report, resolve"),
}


@pytest.mark.parametrize("case", sorted(KFP))
def test_kfp_settings_are_refused_in_one_line_at_compile(tmp_path, capsys, case):
    override, expected = KFP[case]
    out = tmp_path / "p.yaml"
    code = cli.main(["compile", EXAMPLE, "--set", override, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("imgpipe: error: ") and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert not out.exists()


def test_whole_numbers_are_quantities_too():
    cfg = config_lib.load(EXAMPLE, ["kfp.steps.train.cpu_request=2",
                                    "kfp.steps.train.cpu_limit=1.5",
                                    "kfp.steps.train.memory_limit=512Mi"], resolve_paths=False)
    step = cfg.kfp.step("train")
    assert (step.cpu_request, step.cpu_limit, step.memory_limit) == ("2", "1.5", "512Mi")


# --- item 13: values that failed only after the expensive steps ---------------------------

VALUES = {
    "unknown train metric": ("train: {metrics: [bogus_metric]}\n",
                             "train.metrics: unknown metric(s) 'bogus_metric'; use accuracy"),
    "sparse metric on one-hot labels": ("train: {metrics: [sparse_categorical_accuracy]}\n",
                                        "need integer labels"),
    "negative layer width": ("model: {kind: dense, hidden_units: [-1]}\n",
                             "model.hidden_units: hidden_units are layer widths and must be > 0"),
    "zero layer width": ("model: {kind: mlp, hidden_units: [64, 0]}\n",
                         "must be > 0"),
    "threshold on an unknown metric": ("evaluate: {thresholds: {bogus_metric: {min: 0.5}}}\n",
                                       "unknown metrics ['bogus_metric']; thresholds apply to "
                                       "the metrics evaluate computes: accuracy, "
                                       "top_k_accuracy, example_count"),
    "accuracy above 1": ("evaluate: {thresholds: {accuracy: {min: 2}}}\n",
                         "accuracy.min 2 is outside the values accuracy takes (in [0, 1])"),
    "top-k accuracy below 0": ("evaluate: {thresholds: {top_k_accuracy: {max: -0.5}}}\n",
                               "top_k_accuracy.max -0.5 is outside"),
    "accuracy drop over 1": ("evaluate: {thresholds: {accuracy: {max_drop: 5}}}\n",
                             "accuracy.max_drop 5 is more than accuracy can drop"),
    "accuracy NaN": ("evaluate: {thresholds: {accuracy: {min: .nan}}}\n",
                     "evaluate.thresholds.accuracy.min: Input should be a finite number"),
    "learning rate infinite": ("train: {optimizer: {learning_rate: .inf}}\n",
                               "train.optimizer.learning_rate: Input should be a finite number"),
    "learning rate NaN": ("train: {optimizer: {learning_rate: .nan}}\n",
                          "train.optimizer.learning_rate: Input should be a finite number"),
    "missing schema file": ("validate: {schema: /nonexistent.pbtxt}\n",
                            "validate.schema '/nonexistent.pbtxt' is not a file"),
    "missing relative schema file": ("validate: {schema: schemas/nope.pbtxt}\n",
                                     "validate.schema 'schemas/nope.pbtxt' is not a file (looked "
                                     "in"),
    "kfp image": ("kfp: {image: 'not a valid image ref!!'}\n",
                  "is not a container image reference"),
}


@pytest.mark.parametrize("case", sorted(VALUES))
def test_values_are_checked_when_the_config_loads(tmp_path, capsys, case):
    text, expected = VALUES[case]
    err = refused_before_any_step(tmp_path, capsys, TINY + text)
    assert expected in err, err


def test_a_schema_in_a_bucket_is_not_looked_for(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(TINY + "validate: {schema: gs://bucket/schema.pbtxt}\n")
    assert config_lib.load(str(path)).validate_.schema_path == "gs://bucket/schema.pbtxt"


def test_the_metric_names_are_evaluates():
    from components.config.evaluate import EVALUATE_METRICS
    from components.steps import evaluate

    assert set(EVALUATE_METRICS) == {*evaluate.TOP_LEVEL, "top_k_accuracy"}


# --- item 14: a search space checked as the values it will try -----------------------------

SPACES = {
    "uniform on an int key": ("train.batch_size: {uniform: [16, 64]}",
                              "tune.space.train.batch_size: uniform draws fractional numbers and "
                              "train.batch_size takes whole numbers; use int_uniform: [16, 64]"),
    "log_uniform on an int key": ("model.fine_tune_layers: {log_uniform: [1, 8]}",
                                  "log_uniform draws fractional numbers"),
    "a range on a list key": ("model.hidden_units: {int_uniform: [8, 64]}",
                              "model.hidden_units is not a number, so no int_uniform range fits "
                              "it; list the values to try as choice"),
    "transfer on grayscale": ("model.kind: {choice: [cnn, transfer]}",
                              "tune.space.model.kind: 'transfer' is not a valid value: "
                              "model.kind transfer needs 3-channel input"),
    "a choice too small for the images": ("model.kind: {choice: [dense, deep_cnn]}",
                                          "'deep_cnn' is not a valid value: model.kind deep_cnn "
                                          "pools 2 time(s)"),
    "a choice of bad widths": ("model.hidden_units: {choice: [[8], [-1]]}",
                               "[-1] is not a valid value: hidden_units are layer widths"),
    "a metric train cannot record": ("train.loss: {choice: [auto, "
                                     "sparse_categorical_crossentropy]}",
                                     "'sparse_categorical_crossentropy' is not a valid value: "
                                     "train.metrics auc need one-hot labels"),
}


@pytest.mark.parametrize("case", sorted(SPACES))
def test_each_searched_value_is_checked_against_the_whole_config(tmp_path, capsys, case):
    space, expected = SPACES[case]
    text = ("name: t\ndata: {source: builtin:digits, image_size: [2, 2]}\n"
            "model: {kind: dense}\ntrain: {metrics: [accuracy, auc]}\n"
            f"tune: {{space: {{{space}}}, max_trials: 1, epochs: 1}}\n")
    err = refused_before_any_step(tmp_path, capsys, text)
    assert expected in err, err


# --- item 15: environment variables in path fields -----------------------------------------

UNSET = "IMGPIPE_TEST_UNSET_ROOT"
PATHS = {
    "data.source": f"data: {{source: '${{{UNSET}}}/photos'}}\n",
    "push.destination": f"push: {{destination: ${UNSET}/serving}}\n",
    "validate.schema": f"validate: {{schema: '${{{UNSET}}}/schema.pbtxt'}}\n",
    "train.hyperparameters": f"train: {{hyperparameters: ${UNSET}/hyperparameters.json}}\n",
    "model.weights": f"model: {{weights: ${UNSET}/base.weights.h5}}\n",
}


@pytest.mark.parametrize("key", sorted(PATHS))
def test_an_unset_variable_in_a_path_is_named(tmp_path, capsys, monkeypatch, key):
    monkeypatch.delenv(UNSET, raising=False)
    text = TINY.replace("data: {source: builtin:digits, image_size: [12, 12]}\n", "") \
        if key == "data.source" else TINY
    err = refused_before_any_step(tmp_path, capsys, text + PATHS[key])
    assert f"{key}: environment variable {UNSET} is not set; export {UNSET}=..." in err, err


def test_variables_and_home_expand_in_path_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGPIPE_TEST_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("IMGPIPE_TEST_BUCKET", "my-bucket")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "enforced.pbtxt").write_text("")
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: '${IMGPIPE_TEST_ROOT}/photos'}\n"
                    "validate: {schema: $IMGPIPE_TEST_ROOT/enforced.pbtxt}\n"
                    "push: {destination: ~/serving}\n")
    cfg = config_lib.load(str(path), ["train.hyperparameters=gs://$IMGPIPE_TEST_BUCKET/h.json"])
    assert cfg.data.source == str(tmp_path / "root" / "photos")
    assert cfg.validate_.schema_path == str(tmp_path / "root" / "enforced.pbtxt")
    assert cfg.push.destination == str(tmp_path / "home" / "serving")
    assert cfg.train.hyperparameters == "gs://my-bucket/h.json"


# --- mistakes in the config file itself, through `imgpipe run` ---------------------------


CONFIGS = {
    "name with a trailing newline": ('name: "x\\n"\n', "name"),
    "alias outside the registry": ("push: {promote_to: ../x}\n", "promote_to"),
    "model name outside the registry": ("push: {model_name: ../../evil}\n", "model_name"),
    "empty source": ('data: {source: ""}\n', "source is empty"),
    "image too large": ("data: {image_size: [100000, 100000]}\n", "ingest.max_pixels"),
    "boolean epochs": ("train: {epochs: true}\n", "boolean"),
    "boolean in the image size": ("data: {image_size: [true, 36]}\n", "boolean"),
    "boolean channels": ("data: {channels: true}\n", "boolean"),
    "boolean layer width": ("model: {hidden_units: [true, 64]}\n", "boolean"),
    "model too large for the images": ("data: {image_size: [7000, 7000]}\nmodel: {kind: dense}\n",
                                       "weights in its first dense layer"),
    "images too small for the model": ("data: {image_size: [2, 2]}\nmodel: {kind: deep_cnn}\n",
                                       "at least 4x4"),
    "transfer on grayscale": ("model: {kind: transfer}\n", "3-channel input"),
    "promote to latest": ("push: {promote_to: latest}\n", "'latest' always means"),
    "baseline latest": ("push: {baseline_alias: latest}\n", "'latest' always means"),
    "unknown beam runner": ("beam: {runner: NoSuchRunner}\n", "unknown Beam runner"),
    "YAML alias bomb": ("".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
                                for i in range(1, 9)).replace("*a0", "x"), "100,000 values"),
    "NUL byte": ("data: {source: builtin:digits}\x00\n", "invalid YAML"),
    "old hash key": ("validate: {near_duplicate_bits: 2}\n", "near_duplicate_rms"),
    "moved latency key": ("evaluate: {latency_budget_ms: 10}\n", "infra_validate"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_mistakes(tmp_path, capsys, case):
    text, expected = CONFIGS[case]
    path = tmp_path / "c.yaml"
    path.write_text(("name: t\n" if not text.startswith("name") else "") + text)
    err = one_line_error(capsys, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert expected in err
    assert not (tmp_path / "runs" / "metadata.sqlite").exists()     # no run started


def test_config_file_mistakes(tmp_path, capsys):
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in one_line_error(capsys, ["run", str(tmp_path / "latin1.yaml")])
    (tmp_path / "dest").write_text("a file where the registry should be")
    (tmp_path / "c.yaml").write_text(f"name: t\npush: {{destination: '{tmp_path / 'dest'}'}}\n")
    err = one_line_error(capsys, ["run", str(tmp_path / "c.yaml"), "--runs-dir",
                                  str(tmp_path / "runs")])
    assert "push.destination" in err and "is a file" in err
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=2)
    (tmp_path / "d.yaml").write_text(f"name: t\ndata: {{source: '{tmp_path / 'src'}'}}\n")
    err = one_line_error(capsys, ["run", str(tmp_path / "d.yaml"), "--runs-dir",
                                  str(tmp_path / "src" / "runs")])
    assert "inside data.source" in err
