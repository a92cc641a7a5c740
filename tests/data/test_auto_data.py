"""`data.channels` and `data.image_size` decided from the data (`auto`, the defaults) when
the config loads, and the one line saying what was decided and which defaults followed
(issue 31, parts 4 and 5)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from components import artifacts
from pipeline import config as config_lib
from tests import fixtures

from tests import ROOT  # noqa: E402

PHOTO_KEYS = ("model.kind xception, model.hidden_units [24, 48, 96, 192], train.epochs 40, "
              "train.batch_size 32, "
              "train.label_smoothing 0.1, train.optimizer.learning_rate 0.002, "
              "train.optimizer.schedule cosine, train.optimizer.warmup_epochs 2")


def photos(root, size=48, per_class=20, classes=("cat", "dog", "fox")):
    """ROOT/CLASS/NNN.png: smooth RGB images of size x size."""
    for li, label in enumerate(classes):
        os.makedirs(os.path.join(root, label), exist_ok=True)
        for v in range(per_class):
            Image.fromarray(fixtures.smooth_image(1000 * li + v, size)).save(
                os.path.join(root, label, f"{v:03d}.png"))
    return str(root)


def load(tmp_path, yaml_text, *overrides):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    return config_lib.load(str(path), list(overrides))


def test_a_photo_folder_with_only_a_source_trains_3_channels_at_a_photo_size_with_the_photo_defaults(
        tmp_path):
    photos(tmp_path / "imgs")
    # a path relative to the config's folder, as a user writes it
    cfg = load(tmp_path, "data: {source: imgs}\n")
    assert (cfg.data.channels, cfg.data.image_size) == (3, (48, 48))
    assert cfg.data.decided.keys == ["channels", "image_size"]
    assert (cfg.model.kind, cfg.train.epochs, cfg.train.optimizer.schedule,
            cfg.train.label_smoothing) == ("xception", 40, "cosine", 0.1)
    assert cfg.train.defaults.applied == "photo"
    assert cfg.decision_line() == (
        "data: 3 channels, 48x48 (decided from the data: 60 of 60 sampled files are RGB; "
        "median 48x48; a photo's side is the median shorter side held to 32-64); photo "
        f"defaults applied (3 channels, no model.kind named): {PHOTO_KEYS}")
    # what a run records loads back as the same config, its records kept
    assert config_lib.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("size, side", [(20, 32), (48, 48), (100, 64)])
def test_the_photo_size_is_the_median_shorter_side_held_to_32_64(tmp_path, size, side):
    photos(tmp_path / "imgs", size=size, per_class=3)
    cfg = config_lib.from_dict({"data": {"source": str(tmp_path / "imgs")}})
    assert (cfg.data.channels, cfg.data.image_size) == (3, (side, side))


def test_a_large_folder_is_sampled_over_its_classes_from_headers(tmp_path):
    """At most 200 files, spread over the listing; mostly RGB (3 of 4 classes) is 3."""
    from components.data import data_shape

    photos(tmp_path / "imgs", size=16, per_class=70, classes=("a", "b", "c"))
    fixtures.make_class_folders(str(tmp_path / "imgs"), classes=("d",), per_class=70,
                                size=16, channels=1)
    cfg = config_lib.from_dict({"data": {"source": str(tmp_path / "imgs")}})
    assert cfg.data.channels == 3
    assert cfg.data.decided.basis.startswith(
        f"150 of {data_shape.SAMPLE_FILES} sampled files (of 280) are RGB")


def test_a_grayscale_folder_stays_1_channel_at_the_course_size_with_the_course_defaults(
        tmp_path):
    fixtures.make_class_folders(str(tmp_path / "imgs"), per_class=5, size=12, channels=1)
    cfg = config_lib.from_dict({"data": {"source": str(tmp_path / "imgs")}})
    assert (cfg.data.channels, cfg.data.image_size, cfg.model.kind, cfg.train.epochs) == \
        (1, (36, 36), "deep_cnn", 10)
    assert cfg.decision_line().startswith(
        "data: 1 channel, 36x36 (decided from the data: 0 of 15 sampled files are RGB; 1 "
        "channel trains at the course's 36x36); photo defaults not applied (1 channel: they "
        "are for 3-channel photos); course defaults: model.kind deep_cnn, train.epochs 10, ")


@pytest.mark.parametrize("source, shape", [
    ("builtin:fonts", (1, (36, 36))),
    ("builtin:digits", (1, (36, 36))),       # the course size, whatever the images' size
    ("arrays.npz", (3, (32, 32))),           # [N, 20, 30, 3]: color, held to 32
])
def test_builtin_datasets_and_arrays_decide_from_their_known_shape(tmp_path, source, shape):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "arrays.npz", images=rng.integers(0, 255, (6, 20, 30, 3), np.uint8),
             labels=np.array(["a", "b"] * 3))
    if not source.startswith("builtin:"):
        source = str(tmp_path / source)
    cfg = config_lib.from_dict({"data": {"source": source}})
    assert (cfg.data.channels, cfg.data.image_size) == shape


def test_explicit_keys_win_and_configs_that_set_both_behave_as_before(tmp_path):
    imgs = photos(tmp_path / "imgs", per_class=3)
    gray = config_lib.from_dict({"data": {"source": imgs, "channels": 1}})
    assert (gray.data.channels, gray.data.image_size) == (1, (36, 36))
    assert gray.data.decided.keys == ["image_size"] and gray.model.kind == "deep_cnn"
    assert gray.decision_line().startswith("data: 1 channel (set in the config), 36x36 "
                                           "(decided from the data: 9 of 9 sampled files")
    sized = config_lib.from_dict({"data": {"source": imgs, "image_size": [24, 24]}})
    assert (sized.data.channels, sized.data.image_size) == (3, (24, 24))
    both = config_lib.from_dict({"data": {"source": imgs, "channels": 3,
                                          "image_size": [64, 64]}, "train": {"epochs": 5}})
    assert both.data.decided is None and both.train.epochs == 5
    assert both.decision_line() == (
        "data: 3 channels, 64x64 (set in the config); photo defaults applied (3 channels, no "
        "model.kind named): " + PHOTO_KEYS.replace("train.epochs 40, ", ""))
    # the shipped configs set both: nothing is decided, nothing read
    for name in ("fonts", "digits", "photos", "spans"):
        cfg = config_lib.load(os.path.join(ROOT, "configs", f"{name}.yaml"))
        assert cfg.data.decided is None, name


def test_a_named_model_kind_keeps_the_course_training_and_the_line_says_so(tmp_path):
    imgs = photos(tmp_path / "imgs", per_class=3)
    cfg = config_lib.from_dict({"data": {"source": imgs}, "model": {"kind": "transfer"}})
    assert (cfg.data.channels, cfg.model.kind, cfg.train.epochs) == (3, "transfer", 10)
    assert cfg.train.defaults.applied == "course"
    assert cfg.decision_line().endswith(
        "; photo defaults not applied (model.kind transfer is named); course defaults: "
        "train.epochs 10, train.batch_size 64, train.label_smoothing 0, "
        "train.optimizer.learning_rate 0.001, train.optimizer.schedule constant, "
        "train.optimizer.warmup_epochs 0")


def test_a_span_pattern_decides_from_the_newest_span_of_its_window(tmp_path):
    fixtures.make_class_folders(str(tmp_path / "drops" / "span-1"), per_class=3, channels=1)
    photos(tmp_path / "drops" / "span-2", per_class=3)
    cfg = config_lib.from_dict({"data": {"source": str(tmp_path / "drops") + "/span-{SPAN}/",
                                         "spans": {"rolling": 2}}})
    assert cfg.data.channels == 3
    assert "9 of 9 sampled files of span 2 (the window's newest) are RGB" in \
        cfg.data.decided.basis


def test_a_source_not_readable_here_takes_the_course_values_and_compile_refuses_it():
    from components.errors import ConfigError
    from pipeline.kfp import checks as kfp_checks
    from pipeline.kfp import compile as kfp_compile

    serving = "push.destination=gs://imgpipe-no-such-bucket/serving"
    cfg = config_lib.load(None, ["data.source=gs://imgpipe-no-such-bucket/photos", serving],
                          resolve_paths=False)
    assert (cfg.data.channels, cfg.data.image_size) == (1, (36, 36))
    assert cfg.data.decided.unread
    assert "auto, but data.source could not be read when the config loaded" in \
        cfg.decision_line()
    with pytest.raises(ConfigError, match=r"data.channels and data.image_size are auto, "
                                          r"decided from the data when the pipeline "
                                          r"compiles, but data.source .* could not be read"):
        kfp_checks.check_remote(cfg)
    explicit = config_lib.load(None, ["data.source=gs://imgpipe-no-such-bucket/photos",
                                      "data.channels=3", "data.image_size=[64,64]", serving],
                               resolve_paths=False)
    kfp_checks.check_remote(explicit)             # nothing to read: compiles as before
    assert "data_source" in kfp_compile.runtime_parameters(explicit)


def test_a_source_the_shape_was_decided_from_is_compiled_in(tmp_path):
    """Another source at run time would keep this one's shape and defaults: data.source
    is then no run-time parameter, and stays in the tasks' config."""
    from pipeline import dag, invoke
    from pipeline.kfp import compile as kfp_compile

    cfg = config_lib.from_dict({"data": {"source": photos(tmp_path / "imgs", per_class=3)}})
    assert "data_source" not in kfp_compile.runtime_parameters(cfg)
    ingest_cfg = kfp_compile.without_runtime_keys(invoke.step_config(dag.get("ingest"), cfg))
    assert ingest_cfg["data"]["source"] == cfg.data.source


def test_the_decision_does_not_change_an_older_spans_ingest_key(tmp_path):
    from components.data import ingest_window, spans
    from components.config.data import DataConfig, DataDecision
    from components.config.ingest import IngestConfig

    fixtures.make_class_folders(str(tmp_path / "drops" / "span-1"), per_class=3)
    data = DataConfig(source=str(tmp_path / "drops") + "/span-{SPAN}/", channels=1,
                      image_size=(36, 36))
    span = spans.discover(spans.Pattern.parse(data.source))[0]
    told = data.model_copy(update={"decided": DataDecision(keys=["channels"],
                                                           basis="a newer span")})
    assert ingest_window.span_key(span, data, IngestConfig()) == \
        ingest_window.span_key(span, told, IngestConfig())


def test_ingest_says_when_channels_decided_from_a_sample_disagree_with_the_whole_data(
        tmp_path):
    from tests.fixtures import run_ingest

    fixtures.make_class_folders(str(tmp_path / "imgs"), classes=("cat", "dog"), per_class=4,
                                channels=3)
    summary, _, _, _ = run_ingest(tmp_path, tmp_path / "imgs", channels=1, decided={
        "keys": ["channels"], "basis": "2 of 8 sampled files are RGB"})
    notes = [line for line in summary["lines"] if line.startswith("note:")]
    assert notes == [notes[0]] and notes[0].startswith(
        "note: 8 of 8 images are RGB files, but data.channels is 1 (decided from a sample of "
        "the files: 2 of 8 sampled files are RGB), so they are trained as 36x36 grayscale. "
        "For color photos set data.channels: 3 and data.image_size")


def test_config_show_prints_the_decided_values(tmp_path, capsys):
    from pipeline import cli

    photos(tmp_path / "imgs", per_class=3)
    (tmp_path / "c.yaml").write_text(f"data: {{source: {tmp_path / 'imgs'}}}\n")
    assert cli.main(["config", "show", str(tmp_path / "c.yaml"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["data"]["channels"], shown["data"]["image_size"]) == (3, [48, 48])
    assert shown["model"]["kind"] == "xception"


@pytest.mark.slow
def test_a_run_on_a_photo_folder_trains_3_channels_and_records_the_decision(tmp_path, capsys):
    """The whole pipeline on a photo folder whose config names only the source (and one
    epoch, a larger eval split, any accuracy pushed): the line at the start of the run,
    the trained model's input, the card, the report."""
    from pipeline import cli

    photos(tmp_path / "imgs")
    (tmp_path / "c.yaml").write_text(
        "name: snaps\ndata: {source: imgs, eval_fraction: 0.3}\ntrain: {epochs: 1}\n"
        "evaluate: {thresholds: {accuracy: {min: 0.0}}}\n"
        f"push: {{destination: {str(tmp_path / 'serving')!r}}}\n")
    code = cli.main(["run", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("run ") and lines[1].startswith(
        "  data: 3 channels, 48x48 (decided from the data: 60 of 60 sampled files are RGB")
    assert "photo defaults applied (3 channels, no model.kind named): model.kind xception, " \
           "model.hidden_units [24, 48, 96, 192], train.batch_size 32" in lines[1]
    card = json.loads((tmp_path / "serving" / "snaps" / "1" /
                       artifacts.PushedModel.CARD).read_text())
    assert card["model"]["image_shape"] == [48, 48, 3] and card["model"]["kind"] == "xception"
    assert card["data"]["decided"]["keys"] == ["channels", "image_size"]
    assert card["data"]["decided"]["defaults"]["applied"] == "photo"
    assert card["data"]["decided"]["line"] == lines[1].strip()
    report = (tmp_path / "runs" / lines[0].split()[1] / "report.html").read_text()
    assert "data: 3 channels, 48x48 (decided from the data" in report
