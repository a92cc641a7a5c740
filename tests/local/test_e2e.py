"""End to end on the built-in fonts data: ingest -> push, blessing against the
production baseline, promotion, and batch prediction matching the evaluator."""

import csv
import json
import os

import pytest

from components import artifacts
from components.registry.versions import Registry
from pipeline import cli
from pipeline.local.runner import run_pipeline

pytestmark = pytest.mark.slow


def config(make_config, tmp_path, kind, epochs, **train):
    return make_config(
        name="fonts",
        data={"source": "builtin:fonts"},
        model={"kind": kind},
        train={"epochs": epochs, "batch_size": 64, **train},
        evaluate={"thresholds": {"accuracy": {"min": 0.3, "max_drop": 0.0}},
                  "bootstrap_samples": 500},
        push={"destination": str(tmp_path / "serving")})


def outputs(result, step):
    return next(s for s in result.steps if s.step == step)


def test_fonts_pipeline_blesses_pushes_compares_and_predicts(make_config, tmp_path):
    runs = str(tmp_path / "runs")
    registry = Registry(str(tmp_path / "serving"))

    # 1. First run: no baseline; blessed on the absolute threshold; version 1 + report.
    first = run_pipeline(config(make_config, tmp_path, "logistic", 6), runs, log=lambda _: None)
    assert first.status == "succeeded", first.error
    push = outputs(first, "push").summary
    assert push["pushed"] and push["version"] == 1
    assert os.path.isfile(os.path.join(first.run_dir, "report.html"))
    report = open(os.path.join(first.run_dir, "report.html")).read()
    assert "BLESSED" in report and "Most confident mistakes" in report
    assert "ROC and calibration" in report           # from the evaluator's histograms
    assert os.path.isfile(os.path.join(first.run_dir, "roc_calibration.png"))
    card = registry.resolve("fonts:1").card
    assert card["blessing"]["blessed"] and card["run_id"] == first.run_id
    assert card["metrics"]["example_count"] > 200 and card["data"]["examples"] == 2790
    registry.set_alias("fonts:1", "production", reason="first model")

    # 2. A worse model (learning rate near zero): not blessed, not pushed, exit 0 by
    #    default, exit 4 with --require-push.
    worse = run_pipeline(config(make_config, tmp_path, "logistic", 1,
                                optimizer={"name": "sgd", "learning_rate": 1e-7}),
                         runs, log=lambda _: None)
    assert worse.status == "succeeded"
    assert [s.status for s in worse.steps if s.step in ("ingest", "transform")] == \
        ["cached", "cached"]                                     # same data, reused
    blessing = artifacts.ModelBlessing.read(outputs(worse, "evaluate").outputs["blessing"])
    assert not blessing["blessed"] and blessing["baseline"] == "fonts:1"
    failed = {c["check"] for c in blessing["checks"] if c["verdict"] == "fail"}
    assert any("not worse than fonts:1" in c for c in failed)
    assert outputs(worse, "push").summary["pushed"] is False
    assert [v.version for v in registry.versions("fonts")] == [1]

    # 3. A better model: blessed against version 1 as baseline, pushed as version 2.
    better = run_pipeline(config(make_config, tmp_path, "cnn", 6), runs, log=lambda _: None)
    push = outputs(better, "push").summary
    assert push["pushed"] and push["version"] == 2
    comparison = registry.resolve("fonts:2").card["comparison"]
    assert comparison["baseline"] == "fonts:1"
    assert comparison["difference"] > 0 and comparison["ci_low"] <= comparison["difference"]
    # what a canary of fonts:2 against fonts:1 is judged by: the two on the eval split
    reference = comparison["agreement"]
    assert reference["examples"] == comparison["examples"] and 0 < reference["agreement"] < 1
    assert 0 < reference["baseline_confidence"] <= 1 and 0 < reference["candidate_confidence"] <= 1
    assert abs(sum(reference["candidate_shares"].values()) - 1) < 1e-9
    assert cli.main(["models", "promote", "fonts:2", "--to", "production", "--registry",
                     registry.root]) == 0
    assert cli.main(["models", "rollback", "fonts", "--alias", "production", "--registry",
                     registry.root]) == 0
    assert registry.resolve("fonts@production").version == 1
    assert [e["action"] for e in registry.audit("fonts")] == ["promote", "promote", "rollback"]

    # 4. predict on the eval images as PNG files = the evaluator's predictions.
    evaluation = outputs(better, "evaluate").outputs["evaluation"]
    predictions = [json.loads(line) for line in open(
        os.path.join(evaluation, artifacts.ModelEvaluation.PREDICTIONS))]
    from components import features
    examples = outputs(better, "ingest").outputs["examples"]
    import glob
    _, cols = features.read_raw_examples(glob.glob(os.path.join(examples, "eval", "*.gz")))
    folder = tmp_path / "eval_png"
    folder.mkdir()
    for ident, data in zip(cols[features.ID], cols[features.IMAGE]):
        (folder / f"{ident}.png").write_bytes(data)
    out = str(tmp_path / "pred.csv")
    assert cli.main(["predict", "models:/fonts/2", str(folder), "-o", out, "--registry",
                     registry.root]) == 0
    rows = list(csv.DictReader(open(out)))
    assert {r["model"] for r in rows} == {"fonts:2"}            # which version answered
    predicted = {os.path.basename(r["path"])[:-4]: r["class"] for r in rows}
    assert predicted == {p["id"]: p["predicted"] for p in predictions}


def test_predict_inputs_from_folders_and_manifests(tmp_path):
    from components.inference import predict
    from components.errors import DataError

    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.JPG", "notes.txt"):
        (tmp_path / "imgs" / name).write_bytes(b"x")
    (tmp_path / "list.csv").write_text("path,label\nimgs/a.png,x\n/abs/c.png,y\n")
    (tmp_path / "list.jsonl").write_text('{"path": "imgs/sub/b.JPG"}\n')
    found = predict.expand_inputs([str(tmp_path / "imgs"), str(tmp_path / "list.csv"),
                                   str(tmp_path / "list.jsonl")])
    assert found == [str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "sub" / "b.JPG"),
                     str(tmp_path / "imgs" / "a.png"), "/abs/c.png",
                     str(tmp_path / "imgs" / "sub" / "b.JPG")]
    with pytest.raises(DataError, match="does not exist"):
        predict.expand_inputs([str(tmp_path / "missing.png")])


def test_damaged_cached_model_is_retrained_and_thresholds_do_not_rerun_the_probe(
        make_config, tmp_path):
    """Run to infra validation, delete the SavedModel's variables: the rerun notices,
    retrains, and pushes a version that loads and serves. Changing an evaluate
    threshold reruns evaluate but not the serving probe."""
    import glob
    import subprocess
    import sys

    from components import features
    from pipeline.local.runner import describe_run
    from pipeline.metadata import MetadataStore

    runs = str(tmp_path / "runs")

    def cfg(minimum):
        return make_config(name="digits", data={"source": "builtin:digits", "image_size": [8, 8],
                                                "eval_fraction": 0.2},
                           model={"kind": "logistic"}, train={"epochs": 3, "batch_size": 32},
                           evaluate={"thresholds": {"accuracy": {"min": minimum}},
                                     "bootstrap_samples": 100},
                           push={"destination": str(tmp_path / "serving")})

    first = run_pipeline(cfg(0.5), runs, until="infra_validate", log=lambda _: None)
    model_dir = outputs(first, "train").outputs["trained_model"]
    [variables] = glob.glob(os.path.join(model_dir, artifacts.Model.SAVED_MODEL, "variables",
                                        "*.data-*"))
    os.remove(variables)

    second = run_pipeline(cfg(0.5), runs, log=lambda _: None)
    statuses = {s.step: s.status for s in second.steps}
    assert statuses["ingest"] == "cached" and statuses["train"] == "ran"
    train_decision = outputs(second, "train").decision
    assert "no longer verifies: trained_model: saved_model/variables/variables.data" in \
        train_decision and "is missing" in train_decision
    shown = describe_run(MetadataStore(os.path.join(runs, "metadata.sqlite")), second.run_id)
    assert [s["decision"] for s in shown["steps"] if s["step"] == "train"] == [train_decision]
    push = outputs(second, "push").summary
    assert push["pushed"] and push["version"] == 1

    # the pushed version loads and serves in a fresh process
    examples = outputs(second, "ingest").outputs["examples"]
    serialized, cols = features.read_raw_examples(
        glob.glob(os.path.join(examples, "eval", "*.gz")), limit=4)
    image = tmp_path / "one.png"
    image.write_bytes(cols[features.IMAGE][0])
    out = tmp_path / "pred.jsonl"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "predict", "digits:1",
                           str(image), "-o", str(out), "--registry", str(tmp_path / "serving")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text().splitlines()[0])
    assert row["class"] in [str(d) for d in range(10)] and not row["error"]

    third = run_pipeline(cfg(0.6), runs, log=lambda _: None)
    statuses = {s.step: s.status for s in third.steps}
    assert statuses["evaluate"] == "ran" and statuses["infra_validate"] == "cached"
    assert "config.evaluate.thresholds.accuracy.min: 0.5 -> 0.6" in \
        outputs(third, "evaluate").decision


def test_every_beam_step_runs_multi_process(make_config, tmp_path):
    """The Beam steps on the DirectRunner's multi-process mode: their functions and
    DoFns travel to worker processes by pickling, as they would to Dataflow workers."""
    cfg = make_config(name="mp", data={"source": "builtin:digits", "image_size": [8, 8],
                                       "eval_fraction": 0.2},
                      model={"kind": "logistic"}, train={"epochs": 2, "batch_size": 32},
                      evaluate={"thresholds": {"accuracy": {"min": 0.3}},
                                "bootstrap_samples": 50},
                      push={"destination": str(tmp_path / "serving")},
                      beam={"options": {"direct_running_mode": "multi_processing",
                                        "direct_num_workers": 2}})
    result = run_pipeline(cfg, str(tmp_path / "runs"), until="evaluate", log=lambda _: None)
    assert result.status == "succeeded", result.error
    assert {s.step: s.status for s in result.steps} == {
        "ingest": "ran", "validate": "ran", "transform": "ran", "tune": "ran", "train": "ran",
        "evaluate": "ran"}
    evaluation = outputs(result, "evaluate").summary
    assert evaluation["accuracy"] > 0.3     # 2 epochs of logistic regression
    predictions = open(os.path.join(outputs(result, "evaluate").outputs["evaluation"],
                                    artifacts.ModelEvaluation.PREDICTIONS)).read().splitlines()
    assert len(predictions) == sum(
        outputs(result, "ingest").summary["splits"].values()) - outputs(
        result, "ingest").summary["splits"]["train"]


def test_require_push_exits_4_through_the_cli_when_nothing_is_pushed(tmp_path, capsys):
    """`imgpipe run --require-push` (what a scheduler checks): a run whose model is not
    blessed succeeds and pushes nothing; without the flag it exits 0, with it 4 (the
    NotBlessed exit code); once a model is pushed the flag exits 0 again."""
    from components.errors import NotBlessed

    config = tmp_path / "digits.yaml"

    def write(minimum):
        config.write_text(
            "name: strict\n"
            "data: {source: 'builtin:digits', image_size: [8, 8], eval_fraction: 0.2}\n"
            "model: {kind: logistic}\ntrain: {epochs: 1, batch_size: 32}\n"
            f"evaluate: {{thresholds: {{accuracy: {{min: {minimum}}}}}, bootstrap_samples: 50}}\n"
            f"push: {{destination: {str(tmp_path / 'serving')!r}}}\n")

    def run(*flags):
        code = cli.main(["run", str(config), "--runs-dir", str(tmp_path / "runs"), "--json",
                         *flags])
        return code, json.loads(capsys.readouterr().out)

    write(0.999)                              # one epoch of logistic regression: far below
    code, result = run()
    assert code == 0 and result["status"] == "succeeded", result
    assert result["blessed"] is False and result["pushed"] is None
    assert "not blessed" in result["reason"]
    code, result = run("--require-push")      # the same run again, reused up to push
    assert code == NotBlessed.exit_code == 4, result
    assert result["status"] == "succeeded" and result["pushed"] is None
    assert not os.path.exists(tmp_path / "serving" / "strict" / "1")

    write(0.1)
    code, result = run("--require-push")
    assert code == 0, result
    assert result["blessed"] is True and result["pushed"]["version"] == 1
