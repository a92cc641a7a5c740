"""Batch inference as a step (TFX's BulkInferrer): the optional infer step after push,
and `imgpipe predict`, both through Beam's RunInference (components/inference/predict.py's
run_inference, components/inference/handler.py's model handler)."""

from __future__ import annotations

import json
import os
import tests

import pytest

from components import artifacts
from components.inference import client, predict
from components.config.beam import BeamConfig
from components.config.infer import InferConfig
from components.errors import ConfigError, DataError
from pipeline import cli, dag
from tests import fixtures

GOOD = ("a.png", "b.png", "c.png", "d.png", "deep/e.png")


def _unlabeled(folder) -> None:
    """Five PNGs (one a level down), a text file without an image extension and a PNG
    cut in half: the last two must come back as error rows."""
    for index, name in enumerate(GOOD):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fixtures.png_bytes(fixtures.class_pattern(index % 3, 50 + index)))
    (folder / "notes.txt").write_text("not an image\n")
    whole = fixtures.png_bytes(fixtures.class_pattern(0, 99))
    (folder / "corrupt.png").write_bytes(whole[: len(whole) // 2])


def _config(make_config, tmp_path, **extra):
    return make_config(
        name="inf", data={"source": str(tmp_path / "src"), "image_size": [12, 12],
                             "eval_fraction": 0.3},
        model={"kind": "logistic"}, train={"epochs": 2, "batch_size": 8},
        evaluate={"thresholds": {"accuracy": {"min": 0.0}}, "bootstrap_samples": 100},
        push={"destination": str(tmp_path / "serving")}, **extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real local runs in one runs folder: the first without infer.source, the
    second with it (batch size 2, top 2) on a folder with two bad files."""
    from pipeline import config as config_lib
    from pipeline.local.runner import run_pipeline

    tmp_path = tmp_path_factory.mktemp("infer")
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=12)
    _unlabeled(tmp_path / "unlabeled")

    def make_config(**sections):
        return config_lib.from_dict({"name": sections.pop("name"), **sections})

    quiet = {"log": lambda line: None}
    plain = run_pipeline(_config(make_config, tmp_path), str(tmp_path / "runs"), **quiet)
    inferred = run_pipeline(
        _config(make_config, tmp_path, infer={"source": str(tmp_path / "unlabeled"),
                                              "batch_size": 2, "top_k": 2}),
        str(tmp_path / "runs"), **quiet)
    return tmp_path, plain, inferred


def _step(result, name):
    return next(s for s in result.steps if s.step == name)


def _rows(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.slow
def test_the_infer_step_scores_a_folder_with_the_model_just_pushed(runs):
    tmp_path, plain, inferred = runs
    assert plain.status == "succeeded", plain.error
    assert inferred.status == "succeeded", inferred.error
    # without infer.source the run has no infer step; with it, the steps before push
    # keep their cache keys (reused), push always runs, and infer runs after it
    assert [s.step for s in plain.steps] == dag.names()[:-1]
    # (validate compares with the previous run's statistics, so it checks again)
    statuses = {s.step: s.status for s in inferred.steps}
    assert statuses.pop("validate") in ("ran", "cached")
    assert statuses == {**{name: "cached" for name in dag.names()[:-2] if name != "validate"},
                        "push": "ran", "infer": "ran"}
    step = _step(inferred, "infer")
    uri = step.outputs["inference_result"]
    result = artifacts.read(uri, artifacts.InferenceResult)
    summary = artifacts.InferenceResult.read(result)
    assert summary == result.properties
    assert summary["pushed"] and summary["model"] == "inf:1"
    assert (summary["files"], summary["scored"], summary["errors"]) == (7, 5, 2)
    assert sum(summary["classes"].values()) == 5
    assert set(summary["classes"]) <= set(fixtures.CLASSES)
    assert any(line.startswith("scored 5 of 7 file(s)") for line in step.summary["lines"])

    rows = _rows(os.path.join(uri, artifacts.InferenceResult.PREDICTIONS))
    names = [os.path.relpath(r["path"], tmp_path / "unlabeled") for r in rows]
    assert names == ["a.png", "b.png", "c.png", "corrupt.png", "d.png", "notes.txt",
                     "deep/e.png"]                     # listing order, recursive
    by_name = dict(zip(names, rows))
    assert "truncated" in by_name["corrupt.png"]["error"] or \
        "corrupt" in by_name["corrupt.png"]["error"]
    assert "not an image extension" in by_name["notes.txt"]["error"]
    assert all(r["model"] == "inf:1" for r in rows)
    scored = [by_name[name] for name in GOOD]
    assert all(r["error"] is None and len(r["top_k"]) == 2 for r in scored)

    # the rows are what the pushed version's signature says when called directly
    version = os.path.join(tmp_path / "serving", "inf", "1")
    model = client.load(version)
    direct = client.answers(model, [(tmp_path / "unlabeled" / n).read_bytes() for n in GOOD],
                            top_k=2)
    for row, expected in zip(scored, direct):
        assert row["class"] == expected["class"]
        assert row["probability"] == pytest.approx(expected["probability"], abs=1e-6)
    report = open(os.path.join(inferred.run_dir, "report.html"), encoding="utf-8").read()
    assert "Batch inference" in report and "5 of 7 file(s)" in report
    assert "Batch inference" not in open(os.path.join(plain.run_dir, "report.html"),
                                         encoding="utf-8").read()


@pytest.mark.slow
def test_imgpipe_predict_goes_through_run_inference(runs, monkeypatch, capsys):
    """`imgpipe predict` builds the same Beam job: RunInference with a KeyedModelHandler
    over the serving_images handler; its rows equal the SavedModel called directly and
    the infer step's rows, in the same format."""
    from apache_beam.ml.inference import base

    from components.inference import handler as inference

    tmp_path, _, inferred = runs
    seen = []

    class Recording(base.RunInference):
        def expand(self, pcoll):
            seen.append(self._model_handler)
            return super().expand(pcoll)

    monkeypatch.setattr(base, "RunInference", Recording)
    out = str(tmp_path / "predicted.jsonl")
    assert cli.main(["predict", "inf:1", str(tmp_path / "unlabeled"), "-o", out,
                     "--top-k", "2", "--batch-size", "2",
                     "--registry", str(tmp_path / "serving")]) == 0
    assert "wrote 7 rows" in capsys.readouterr().out
    assert len(seen) == 1 and isinstance(seen[0], base.KeyedModelHandler)
    assert isinstance(seen[0]._unkeyed, inference.ServingImagesHandler)
    rows = _rows(out)
    step_rows = _rows(os.path.join(_step(inferred, "infer").outputs["inference_result"],
                                   artifacts.InferenceResult.PREDICTIONS))
    assert [r["path"] for r in rows] == [r["path"] for r in step_rows]
    assert [(r["class"], r["error"] is None) for r in rows] == \
        [(r["class"], r["error"] is None) for r in step_rows]
    model = client.load(os.path.join(tmp_path / "serving", "inf", "1"))
    good = [r for r in rows if r["error"] is None]
    direct = client.answers(model, [open(r["path"], "rb").read() for r in good], top_k=2)
    for row, expected in zip(good, direct):
        assert row["class"] == expected["class"]
        assert [name for name, _ in row["top_k"]] == [name for name, _ in expected["top_k"]]
        assert [p for _, p in row["top_k"]] == pytest.approx([p for _, p in expected["top_k"]],
                                                             abs=1e-6)


@pytest.mark.slow
def test_run_inference_keeps_order_and_bad_files_on_the_beam_path(runs):
    """The --beam path (the config's Beam section; here a worker process, so the
    handler travels pickled as it does to remote workers) gives the same rows, in
    order, as the in-process job."""
    tmp_path, _, _ = runs
    version = os.path.join(tmp_path / "serving", "inf", "1")
    paths = [str(tmp_path / "unlabeled" / name) for name in ("a.png", "corrupt.png",
                                                             "b.png", "c.png")]
    local = predict.predict_local(version, paths, batch_size=3, top_k=1, progress=False)
    beam = predict.run_inference(version, paths, BeamConfig(options={
        "direct_running_mode": "multi_processing", "direct_num_workers": 1}), batch_size=3,
        top_k=1)
    assert [r["path"] for r in beam] == paths == [r["path"] for r in local]
    assert [r.get("class") for r in beam] == [r.get("class") for r in local]
    assert beam[1].get("class") is None and beam[1]["error"]


def test_a_config_without_infer_source_has_no_infer_step_anywhere(make_config, tmp_path):
    """dag.active leaves infer out of the local runner's steps, the compiled pipeline's
    components and the resolve task's pins; --until infer says why."""
    from pipeline.kfp import checks as kfp_checks
    from pipeline.kfp import compile as kfp_compile
    from pipeline.kfp import builder as kfp_builder
    from pipeline.local.runner import LocalRunner

    plain = make_config(name="inf")
    assert "infer" not in dag.names(LocalRunner(plain, str(tmp_path / "runs")).steps)
    assert "infer" not in dag.names(kfp_builder.active_steps("", plain))
    assert not [p for p in kfp_builder.pins("", plain) if p.startswith("infer__")]
    assert "infer" not in json.loads(kfp_compile.resolve_configs(plain))
    with pytest.raises(ConfigError, match="leaves out that optional step"):
        LocalRunner(plain, str(tmp_path / "runs")).run(until="infer")

    configured = make_config(name="inf", infer={"source": "gs://bucket/unlabeled/"})
    assert dag.names(kfp_builder.active_steps("", configured))[-2:] == ["push", "infer"]
    assert "infer__external" in kfp_builder.pins("", configured)
    assert set(json.loads(kfp_compile.resolve_configs(configured))) == \
        set(json.loads(kfp_compile.resolve_configs(plain))) | {"infer"}
    # KFP's gates: infer consumes the push, so it runs only under both verdicts
    assert dag.gates_of(dag.get("infer"), dag.STEPS) == ["evaluate", "infra_validate"]
    with pytest.raises(ConfigError, match="infer.source .* path on this machine"):
        kfp_checks.check_remote(make_config(
            name="inf", data={"source": "gs://b/data"}, push={"destination": "gs://b/serving"},
            infer={"source": str(tmp_path)}))
    # a local source that is not there stops the run before any step
    with pytest.raises(ConfigError, match="does not exist"):
        LocalRunner(make_config(name="inf", infer={"source": str(tmp_path / "gone")}),
                    str(tmp_path / "runs")).run()


def test_infer_config_is_checked_when_it_loads(make_config):
    with pytest.raises(ConfigError, match="infer.source"):
        make_config(infer={"source": "  "})
    with pytest.raises(ConfigError, match=r"infer.source.*upper case"):
        make_config(infer={"source": "drops/{span}/"})
    with pytest.raises(ConfigError, match="infer.batch_size"):
        make_config(infer={"source": "x", "batch_size": 0})
    assert make_config().infer == InferConfig()


def test_a_span_pattern_scores_the_newest_drop_and_its_content_is_the_key(tmp_path):
    from components.steps import infer

    for span in (1, 2):
        _unlabeled(tmp_path / "drops" / str(span))
    cfg = InferConfig(source=str(tmp_path / "drops" / "{SPAN}") + "/")
    listed, label = infer.source_files(cfg)
    assert label == "span 2"
    assert all(f"{os.sep}2{os.sep}" in p for p, _ in listed)
    before = infer.external_inputs(cfg)
    (tmp_path / "drops" / "2" / "a.png").write_bytes(
        fixtures.png_bytes(fixtures.class_pattern(1, 7)))
    assert infer.external_inputs(cfg) != before
    (tmp_path / "drops" / "1" / "a.png").write_bytes(b"older drops are not read")
    assert infer.external_inputs(InferConfig(source=cfg.source)) == \
        infer.external_inputs(cfg)
    with pytest.raises(ConfigError, match="infer.source .* matches no data drop"):
        infer.source_files(InferConfig(source=str(tmp_path / "none" / "{SPAN}") + "/"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images to predict"):
        infer.source_files(InferConfig(source=str(tmp_path / "empty")))


def test_nothing_pushed_scores_nothing_and_says_so(tmp_path):
    from components.steps import infer

    _unlabeled(tmp_path / "unlabeled")
    with artifacts.writing(str(tmp_path / "push"), "PushedModel") as writer:
        record = {"pushed": False, "reason": "not blessed: accuracy 0.2 < 0.5"}
        artifacts.PushedModel.write(writer, record)
        writer.properties = record
        pushed = writer.commit()
    with artifacts.writing(str(tmp_path / "model"), "Model") as writer:
        artifacts.Model.write(writer, {})
        model = writer.commit()
    summary = infer.run(pushed, model, InferConfig(source=str(tmp_path / "unlabeled")),
                        BeamConfig(), inference_result=str(tmp_path / "out"))
    assert summary["lines"][0].startswith("nothing scored: no model was pushed (not blessed")
    result = artifacts.read(str(tmp_path / "out"), artifacts.InferenceResult)
    assert artifacts.InferenceResult.read(result)["scored"] == 0
    assert _rows(result.path(artifacts.InferenceResult.PREDICTIONS)) == []


def test_an_image_the_signature_cannot_decode_gets_its_own_error_row():
    """A batch TensorFlow refuses as a whole is scored image by image: only the image
    it cannot decode gets an error, its batch mates their answers."""
    import tensorflow as tf

    from components.inference import handler as inference

    def serve(images):
        values = images.numpy().tolist()
        if b"undecodable" in values:
            raise tf.errors.InvalidArgumentError(None, None, "Unknown image format")
        return {"probabilities": tf.constant([[0.25, 0.75]] * len(values)),
                "class_name": tf.constant([b"dog"] * len(values))}

    signature = client.Signature(client.IMAGES, "images", serve, ("class_name", "probabilities"),
                                 {})
    model = client.ServingModel("model", None, {client.IMAGES: signature}, ["cat", "dog"])
    handler = inference.ServingImagesHandler("model", batch_size=3, top_k=1)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 3, "max_batch_size": 3}
    results = handler.run_inference([b"one", b"undecodable", b"two"], model)
    rows = [r.inference for r in results]
    assert rows[0] == rows[2] == {"class": "dog", "probability": 0.75, "top_k": [["dog", 0.75]]}
    assert rows[1] == {"error": "the model cannot decode this image (Unknown image format)"}
    assert [r.example for r in results] == [b"one", b"undecodable", b"two"]


def test_with_infer_source_the_compiled_pipeline_has_an_infer_task_and_its_pin(
        make_config, tmp_path):
    """Compiled with infer.source: an infer task beside push under both gates, fed by the
    push and train outputs and by the resolve task's pin of the source's content, which
    the resolve task computes (and which changes with the files)."""
    import yaml

    from pipeline import invoke
    from pipeline.kfp import compile as kfp_compile
    from pipeline.kfp import builder as kfp_builder
    from pipeline.kfp import entrypoint as kfp_entry

    _unlabeled(tmp_path / "unlabeled")
    cfg = make_config(name="inf", push={"destination": str(tmp_path / "serving")},
                      infer={"source": str(tmp_path / "unlabeled")})
    out = str(tmp_path / "p.yaml")
    kfp_compile.compile_pipeline(cfg, out)
    spec = yaml.safe_load(open(out))
    tasks = spec["root"]["dag"]["tasks"]
    inner = next(t for t in spec["components"].values()
                 if "infer" in t.get("dag", {}).get("tasks", {}))["dag"]["tasks"]
    assert "infer" not in tasks and {"push", "infer"} <= set(inner)
    wired = inner["infer"]["inputs"]
    assert {"pushed_model", "trained_model"} <= set(wired["artifacts"])
    assert wired["artifacts"]["pushed_model"]["taskOutputArtifact"]["producerTask"] == "push"
    assert wired["parameters"]["pin_external"] == {
        "componentInputParameter": "pipelinechannel--resolve-infer__external"}

    params = kfp_compile.runtime_parameters(cfg)
    overrides = {kfp_compile.RUNTIME_PARAMETERS[n]: params[n]
                 for n in kfp_builder.resolve_parameters(params, "", cfg)
                 if n != "baseline_alias"}

    def pin():
        return kfp_entry.resolve_pins(invoke.Context.from_config(cfg).to_json(), "",
                                      kfp_compile.resolve_configs(cfg), overrides
                                      )._asdict()["infer__external"]

    before = pin()
    (tmp_path / "unlabeled" / "a.png").write_bytes(fixtures.png_bytes(
        fixtures.class_pattern(2, 3)))
    assert pin() != before


@pytest.mark.slow
def test_kfp_local_runs_infer_after_push(runs, tmp_path):
    """The compiled pipeline under kfp.local (a process per task): infer runs inside
    push's gates with the resolve task's pin, and its rows are the local runner's."""
    import subprocess
    import sys

    data, _, inferred = runs
    root = tests.ROOT
    (tmp_path / "c.yaml").write_text(
        f"name: inf\ndata: {{source: '{data / 'src'}', image_size: [12, 12], "
        "eval_fraction: 0.3}\nmodel: {kind: logistic}\ntrain: {epochs: 2, batch_size: 8}\n"
        "evaluate: {thresholds: {accuracy: {min: 0.0}}, bootstrap_samples: 100}\n"
        f"push: {{destination: '{tmp_path / 'serving'}'}}\n"
        f"infer: {{source: '{data / 'unlabeled'}', batch_size: 2, top_k: 2}}\n")
    env = dict(os.environ, PYTHONPATH=root, TMPDIR=str(tmp_path))
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "imgpipe"), "run",
                           "c.yaml", "--engine", "kfp-local", "--runs-dir", "kruns"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  infer      done " in done.stdout
    assert "scored 5 of 7 file(s)" in done.stdout
    uri = next(line.split(": ", 1)[1] for line in done.stdout.splitlines()
               if line.startswith("  infer.inference_result: "))
    rows = _rows(os.path.join(uri, artifacts.InferenceResult.PREDICTIONS))
    local = _rows(os.path.join(_step(inferred, "infer").outputs["inference_result"],
                               artifacts.InferenceResult.PREDICTIONS))
    assert [(r["path"], r["error"] is None) for r in rows] == \
        [(r["path"], r["error"] is None) for r in local]
