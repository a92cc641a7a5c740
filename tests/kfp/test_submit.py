"""`imgpipe submit` / `schedule` (`pipeline/kfp/submit.py`): a package takes only
run-time overrides, and the Vertex AI and Kubeflow Pipelines adapters call the real
client APIs' signatures."""

import os

from pipeline import cli
from pipeline import config as config_lib
from pipeline.kfp import compile as kfp_compile
from pipeline.kfp import submit
from tests.fixtures import Recorder

from tests import ROOT  # noqa: E402
EXAMPLE = os.path.join(ROOT, "deploy", "example.yaml")


def test_submit_with_a_package_takes_only_runtime_overrides(tmp_path, capsys, monkeypatch):
    """--set of a run-time key reaches the adapter as the package's parameter, without
    recompiling; a key compiled into the package, or one the package declares no
    parameter for, is one line and exit 2."""
    package = str(tmp_path / "p.yaml")
    lean = str(tmp_path / "lean.yaml")             # compiled without accuracy_max_drop
    assert cli.main(["compile", EXAMPLE, "-o", package]) == 0
    assert cli.main(["compile", EXAMPLE, "-o", lean,
                     "--set", "evaluate.thresholds.accuracy.max_drop=null"]) == 0
    capsys.readouterr()
    calls = []

    class Adapter:
        def submit(self, name, package, parameters):
            calls.append(("submit", package, parameters))
            return "job-1"

        def schedule(self, name, package, parameters, cron):
            calls.append(("schedule", package, parameters, cron))
            return "schedule-1"

    def no_compiling(*args, **kwargs):
        raise AssertionError("recompiled although --package was given")

    monkeypatch.setattr(cli.run, "_adapter", lambda args: Adapter())
    monkeypatch.setattr(kfp_compile, "compile_pipeline", no_compiling)
    target = ["--vertex", "--project", "p", "--region", "r", "--pipeline-root", "gs://b/r"]
    assert cli.main(["submit", EXAMPLE, "--package", package, *target,
                     "--set", "train.epochs=5", "--set", "data.source=gs://b/photos"]) == 0
    assert cli.main(["schedule", EXAMPLE, "--package", package, *target, "--cron",
                     "0 3 * * *", "--set", "evaluate.thresholds.accuracy.max_drop=0.02"]) == 0
    (_, sent_to, params), (_, scheduled, sparams, cron) = calls
    assert sent_to == scheduled == package and cron == "0 3 * * *"
    assert params["train_epochs"] == 5 and params["data_source"] == "gs://b/photos"
    assert sparams["accuracy_max_drop"] == 0.02 and sparams["train_epochs"] == 40
    assert set(params) == kfp_compile.package_parameters(package)
    capsys.readouterr()

    for extra, says in ((["--set", "model.dropout=0.2"], "compiled into"),
                        (["--set", "evaluate.thresholds.accuracy.max_drop=0.02"],
                         "declares no parameter")):
        assert cli.main(["submit", EXAMPLE, "--package", lean, *target, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
    # without --set, only the parameters the package declares are sent
    assert cli.main(["submit", EXAMPLE, "--package", lean, *target]) == 0
    assert "accuracy_max_drop" not in calls[-1][2] and calls[-1][2]["accuracy_min"] == 0.8


def test_vertex_adapter_calls():
    from google.cloud import aiplatform as real

    rec = Recorder(real)

    class Job:
        resource_name = "projects/p/locations/r/pipelineJobs/1"

        def __init__(self, **kwargs):
            rec.check("PipelineJob", real.PipelineJob.__init__, None, **kwargs)

        def submit(self, **kwargs):
            rec.check("submit", real.PipelineJob.submit, None, **kwargs)

    class Schedule:
        resource_name = "projects/p/locations/r/schedules/2"

        def __init__(self, **kwargs):
            rec.check("PipelineJobSchedule", real.PipelineJobSchedule.__init__, None, **kwargs)

        def create(self, **kwargs):
            rec.check("create", real.PipelineJobSchedule.create, None, **kwargs)

    fake = type("ai", (), {"init": staticmethod(lambda **kw: rec.check("init", real.init, **kw)),
                           "PipelineJob": Job, "PipelineJobSchedule": Schedule})
    adapter = submit.VertexAdapter(submit.VertexTarget("p", "europe-west4", "gs://b/root",
                                                       "sa@p.iam"), aiplatform=fake)
    params = kfp_compile.runtime_parameters(config_lib.load(EXAMPLE, ["train.epochs=3"],
                                                            resolve_paths=False))
    assert adapter.submit("fonts", "p.yaml", params).endswith("pipelineJobs/1")
    assert adapter.schedule("fonts", "p.yaml", params, "0 3 * * *").endswith("schedules/2")
    calls = {name: kwargs for name, _, kwargs in rec.calls}
    assert calls["init"] == {"project": "p", "location": "europe-west4"}
    assert calls["PipelineJob"]["template_path"] == "p.yaml"
    assert calls["PipelineJob"]["pipeline_root"] == "gs://b/root"
    assert calls["PipelineJob"]["parameter_values"]["train_epochs"] == 3
    assert calls["submit"] == {"service_account": "sa@p.iam"}
    assert calls["create"]["cron"] == "0 3 * * *"


def test_kfp_adapter_calls():
    import kfp

    rec = Recorder(kfp)
    ids = type("R", (), {"run_id": "run-1", "experiment_id": "exp-1",
                         "recurring_run_id": "rr-1"})

    class Client:
        def create_run_from_pipeline_package(self, *args, **kwargs):
            rec.check("run", kfp.Client.create_run_from_pipeline_package, None, *args, **kwargs)
            return ids

        def create_experiment(self, *args, **kwargs):
            rec.check("experiment", kfp.Client.create_experiment, None, *args, **kwargs)
            return ids

        def create_recurring_run(self, *args, **kwargs):
            rec.check("recurring", kfp.Client.create_recurring_run, None, *args, **kwargs)
            return ids

    adapter = submit.KfpAdapter("https://kfp.example", client=Client(), experiment="nightly")
    assert adapter.submit("fonts", "p.yaml", {"epochs": 3}) == "run-1"
    assert adapter.schedule("fonts", "p.yaml", {"epochs": 3}, "0 3 * * *") == "rr-1"
    calls = {name: (args, kwargs) for name, args, kwargs in rec.calls}
    assert calls["run"][0] == (None, "p.yaml") and calls["run"][1]["experiment_name"] == "nightly"
    assert calls["recurring"][1]["cron_expression"] == "0 0 3 * * *"   # KFP cron has seconds
    assert calls["recurring"][1]["experiment_id"] == "exp-1"
    assert calls["recurring"][1]["pipeline_package_path"] == "p.yaml"


def test_submit_needs_a_target(capsys):
    assert cli.main(["submit", EXAMPLE]) == 2
    assert "--vertex" in capsys.readouterr().err
    assert cli.main(["submit", EXAMPLE, "--vertex", "--project", "p"]) == 2
