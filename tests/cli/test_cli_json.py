"""`--json` on every command that prints a result: one JSON document on stdout, the
progress and notes on stderr. `runs` and `models` are covered in test_cli_ingest and
test_registry; the kfp-local run's JSON in kfp/test_kfp_local."""

import argparse
import json
import os

from pipeline import cli
from pipeline.kfp import compile as kfp_compile
from tests import fixtures

from tests import ROOT  # noqa: E402
EXAMPLE = os.path.join(ROOT, "deploy", "example.yaml")


def json_out(capsys, argv, code=0):
    assert cli.main(argv) == code
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_every_command_that_prints_a_result_takes_json():
    """Walks the parser: every leaf command has --json (`config schema` prints JSON
    already; its --json reports where -o wrote it)."""
    missing = []

    def walk(parser, path):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            if "--json" not in parser._option_string_actions:
                missing.append(path)
            return
        for action in subs:
            for name, child in action.choices.items():
                walk(child, f"{path} {name}")

    walk(cli.build_parser(), "imgpipe")
    assert missing == []


def test_run_json_is_one_object_on_stdout_with_progress_on_stderr(tmp_path, capsys):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=8)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: jsonrun\ndata: {{source: {tmp_path / 'src'}, "
                      "eval_fraction: 0.25}\n")
    runs = str(tmp_path / "runs")
    result, err = json_out(capsys, ["run", str(config), "--until", "ingest", "--runs-dir",
                                    runs, "--json"])
    assert result["status"] == "succeeded" and result["engine"] == "local"
    assert result["verdict"] == "stopped before push" and result["pushed"] is None
    assert result["outcome"] == "stopped after ingest (no push)"
    [step] = result["steps"]
    assert step["step"] == "ingest" and step["status"] == "ran"
    assert set(step["outputs"]) == {"examples", "statistics"}
    assert any("24 examples" in line for line in step["lines"])
    assert f"run {result['run_id']}" in err and "ingest     running" in err
    again, _ = json_out(capsys, ["run", str(config), "--until", "ingest", "--runs-dir", runs,
                                 "--json"])
    assert again["steps"][0]["status"] == "cached"
    assert "reused execution" in again["steps"][0]["decision"]


def test_run_json_of_a_failed_run_still_prints_the_result(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    (tmp_path / "empty").mkdir()
    config.write_text(f"name: jsonfail\ndata: {{source: {tmp_path / 'empty'}}}\n")
    result, err = json_out(capsys, ["run", str(config), "--until", "ingest", "--runs-dir",
                                    str(tmp_path / "runs"), "--json"], code=2)
    assert result["status"] == "failed" and result["error"]
    assert result["steps"][0]["status"] == "failed"
    assert result["verdict"] == "failed" and result["outcome"].startswith("failed at ingest: ")
    assert result["report"] and os.path.isfile(result["report"])    # a failed run's too
    assert "imgpipe: error:" in err


KUBEFLOW = ["--set", "kfp.backend=kubeflow"]       # the package --kfp-host below runs


def test_compile_submit_and_schedule_json(tmp_path, capsys, monkeypatch):
    package = str(tmp_path / "p.yaml")
    result, _ = json_out(capsys, ["compile", EXAMPLE, "-o", package, "--json", *KUBEFLOW])
    assert result["output"] == package and result["pipeline"] == "fonts-deep-cnn"
    assert result["parameters"]["train_epochs"] == 40 and result["image"]

    class Adapter:
        def submit(self, name, package, parameters):
            return "projects/p/locations/r/pipelineJobs/job-1"

        def schedule(self, name, package, parameters, cron):
            return "schedule-1"

    monkeypatch.setattr(cli.run, "_adapter", lambda args: Adapter())
    target = ["--kfp-host", "http://127.0.0.1:9", "--pipeline-root", "gs://b/root"]
    result, _ = json_out(capsys, ["submit", EXAMPLE, "--package", package, *target, "--json",
                                  "--set", "train.epochs=5"])
    assert result["job"].endswith("job-1") and result["parameters"]["train_epochs"] == 5
    assert result["target"] == {"service": "kfp", "host": "http://127.0.0.1:9",
                                "experiment": "imgpipe"}
    result, _ = json_out(capsys, ["schedule", EXAMPLE, "--package", package, *target,
                                  "--cron", "0 3 * * *", "--json"])
    assert result["schedule"] == "schedule-1" and result["cron"] == "0 3 * * *"
    assert set(result["parameters"]) == kfp_compile.package_parameters(package)


def test_config_show_and_schema_json(tmp_path, capsys):
    result, _ = json_out(capsys, ["config", "show", EXAMPLE, "--json", "--set",
                                  "train.epochs=3"])
    assert result["name"] == "fonts-deep-cnn" and result["train"]["epochs"] == 3
    out = str(tmp_path / "schema.json")
    result, _ = json_out(capsys, ["config", "schema", "-o", out, "--json"])
    assert result == {"output": out}
    assert json.load(open(out))["title"]


def test_datasets_export_json(tmp_path, capsys):
    result, _ = json_out(capsys, ["datasets", "export", "digits", str(tmp_path / "d"),
                                  "--json"])
    assert result["files"] == 1797 and sum(result["classes"].values()) == 1797
    assert sorted(result["classes"]) == [str(d) for d in range(10)]


def test_summary_json(capsys):
    result, _ = json_out(capsys, ["summary", "--model", "cnn", "--input-shape", "36,36,1",
                                  "--classes", "5", "--json"])
    assert result["trainable_params"] == 41773 and result["classes"] == 5
    assert result["layers"][-1]["output_shape"] == [None, 5]
    assert sum(layer["params"] for layer in result["layers"]) == result["params"]


def test_predict_json(tmp_path, capsys, monkeypatch):
    from components.inference import predict

    model = tmp_path / "model"
    model.mkdir()
    fixtures.make_class_folders(str(tmp_path / "in"), per_class=1)

    def fake_predict(saved_model, paths, batch_size, top_k, progress):
        return [{"path": p, "class": "cat", "probability": 0.9, "top_k": [["cat", 0.9]]}
                for p in paths[:-1]] + [{"path": paths[-1], "error": "not an image"}]

    monkeypatch.setattr(predict, "predict_local", fake_predict)
    result, _ = json_out(capsys, ["predict", str(model), str(tmp_path / "in"), "--json"])
    assert result["rows"] == 3 and result["unreadable"] == 1 and result["output"] is None
    assert result["model"] == str(model)
    assert [row["class"] for row in result["predictions"]] == ["cat", "cat", None]
    assert all(row["model"] == str(model) for row in result["predictions"])
    out = str(tmp_path / "p.csv")
    result, _ = json_out(capsys, ["predict", str(model), str(tmp_path / "in"), "-o", out,
                                  "--json"])
    assert result["output"] == out and "predictions" not in result
    assert open(out).read().startswith("path,class,probability")
