"""The second bad-input pass (issue 24), the runner's share: a batch larger than the
training split never trains or pushes a model of random weights; gs:// without
credentials is one line before anything runs; kfp-local names the failing task's own
error. Each case failed on cd29488."""

from __future__ import annotations

import os

import pytest
import yaml

from components.io import gcs
from pipeline import cli
from pipeline.metadata import METADATA_FILE, MetadataStore
from tests.fixtures import make_class_folders
from tests.steps.test_train import graph  # noqa: F401  (a fixture: 12x12x1, 3 classes)

BASE = {"name": "base", "data": {"source": "builtin:digits", "image_size": [8, 8],
                                 "channels": 1},
        "model": {"kind": "cnn", "hidden_units": [16]},
        "train": {"epochs": 1, "batch_size": 32},
        "evaluate": {"thresholds": {"accuracy": {"min": 0.1}}}}


def _config(tmp_path, **sections) -> str:
    tree = {**BASE, "push": {"destination": str(tmp_path / "serving")}}
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- a batch larger than the training split ----------------------------------------------


def test_a_batch_larger_than_a_builtin_dataset_is_refused_before_the_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = _run(capsys, "run", _config(tmp_path), "--runs-dir", str(runs),
                        "--set", "train.batch_size=100000000")
    assert code == 2
    assert err.strip().splitlines() == [
        "imgpipe: error: train.batch_size 100000000 is larger than builtin:digits's 1797 "
        "training images: not one full batch, so no optimizer step would run; set "
        "train.batch_size to at most 1797 (e.g. 32)."]
    assert MetadataStore(str(runs / METADATA_FILE)).list_runs() == []     # no run started


def test_a_batch_larger_than_the_training_split_stops_at_train_and_pushes_nothing(
        tmp_path, capsys):
    """A folder's size is known after ingest: train stops before fitting (it used to
    take no optimizer step, report 'train accuracy nan', bless and push the model)."""
    make_class_folders(str(tmp_path / "photos"), per_class=30)
    path = _config(tmp_path, data={"source": str(tmp_path / "photos"), "image_size": [12, 12]},
                   validate={"max_near_duplicate_fraction": 1.0},
                   model={"kind": "logistic"}, train={"batch_size": 5000})
    runs = tmp_path / "runs"
    code, out, err = _run(capsys, "run", path, "--runs-dir", str(runs))
    assert code == 2, out + err
    [line] = err.strip().splitlines()
    assert line.startswith("imgpipe: error: train.batch_size 5000 is larger than the "
                           "training split (")
    assert "no optimizer step would run; set train.batch_size to at most" in line
    assert "BLESSED" not in out and not os.path.exists(tmp_path / "serving")
    [run] = MetadataStore(str(runs / METADATA_FILE)).list_runs()
    assert run["status"] == "failed"


def test_a_model_that_took_no_optimizer_step_is_not_written(tmp_path, graph, monkeypatch):
    """The last guard, under the batch check: a fit that ran no step fails train."""
    from components import artifacts
    from components.config.model import ModelConfig
    from components.config.train import TrainConfig
    from components.errors import TrainingError
    from components.steps import train

    monkeypatch.setattr(train, "check_batch_fits", lambda *args: None)   # as before it
    with pytest.raises(TrainingError, match="took no optimizer step"):
        train.run(*graph, ModelConfig(kind="logistic"), TrainConfig(epochs=1, batch_size=10_000),
                  trained_model=str(tmp_path / "model"))
    assert not artifacts.is_committed(str(tmp_path / "model"))


# --- gs:// without credentials -----------------------------------------------------------


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A machine with no Google Cloud credentials: no emulator, no key file, an empty
    gcloud config, and no metadata server (an address nothing listens on)."""
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
                 "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    gcs._client_for.cache_clear()
    yield
    gcs._client_for.cache_clear()


@pytest.mark.parametrize("case", ["push destination", "data source", "models list",
                                  "predict"])
def test_gs_without_credentials_is_one_line_and_exit_2(tmp_path, capsys, no_credentials, case):
    runs = str(tmp_path / "runs")
    argv = {
        "push destination": ["run", _config(tmp_path), "--runs-dir", runs,
                             "--set", "push.destination=gs://nobkt/serving"],
        "data source": ["run", _config(tmp_path, data={"source": "gs://nobkt/photos/"}),
                        "--runs-dir", runs],
        "models list": ["models", "list", "--registry", "gs://nobkt/serving"],
        "predict": ["predict", "base@production", str(tmp_path / "photos"), "--registry",
                    "gs://nobkt/serving"],
    }[case]
    make_class_folders(str(tmp_path / "photos"), per_class=1)
    code, _, err = _run(capsys, *argv)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("imgpipe: error: gs://nobkt/")
    assert "no usable Google Cloud credentials" in line
    assert "gcloud auth application-default login" in line


# --- kfp-local names the task's own error ------------------------------------------------


def test_kfp_local_names_the_resolve_tasks_error_in_one_line(tmp_path, capsys):
    """The real kfp.local (a subprocess per task): a missing source fails the resolve
    task, and the CLI says why, as the local engine does (it printed kfp's traceback
    ending "Inner task failed: 'resolve'")."""
    path = _config(tmp_path, data={"source": str(tmp_path / "nonexistent")})
    runs = tmp_path / "runs"
    code, out, err = _run(capsys, "run", path, "--engine", "kfp-local", "--runs-dir", str(runs))
    assert code == 2, out + err
    assert err.strip().splitlines() == [
        f"imgpipe: error: data.source {str(tmp_path / 'nonexistent')!r} does not exist; give "
        "a folder of class folders, a .csv/.jsonl manifest, an .npz file, IDX files or "
        "builtin:fonts."]
    [run] = MetadataStore(str(runs / METADATA_FILE)).list_runs()
    assert run["status"] == "failed" and "does not exist" in run["error"]
    assert "\x1b" not in run["error"]


# --- every execution of an ended run has an end state; push records what it did ----------

# Runs `imgpipe run` (the real entry point, with its stop handlers) and sends this
# process SIGTERM at a named point: "evaluate" once infra validation runs beside it,
# "push" just after the registry published the version.
_STOP_AT = r"""
import os, signal, sys, time
point, runs = sys.argv[1], sys.argv[2]
from pipeline import invoke
from components.registry.versions import Registry
from pipeline.metadata import MetadataStore

def stop():
    os.kill(os.getpid(), signal.SIGTERM)

if point == "evaluate":
    call = invoke.call
    def patched(node, *args, **kwargs):
        if node.spec.name == "evaluate":
            store = MetadataStore(os.path.join(runs, "metadata.sqlite"), read_only=True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                run = store.list_runs(limit=1)[0]
                if any(e.step == "infra_validate" and e.status == "running"
                       for e in store.executions(run["id"])):
                    break
                time.sleep(0.05)
            stop()
            time.sleep(120)          # the stop interrupts this
        return call(node, *args, **kwargs)
    invoke.call = patched
else:
    push_once = Registry.push_once
    def patched(self, *args, **kwargs):
        result = push_once(self, *args, **kwargs)
        stop()
        return result
    Registry.push_once = patched
sys.argv = ["imgpipe", *sys.argv[3:]]
from pipeline.cli import _entry
_entry()
"""


@pytest.fixture(scope="module")
def warm_runs(tmp_path_factory):
    """A runs folder whose ingest, validate and transform later runs reuse."""
    tmp = tmp_path_factory.mktemp("signals")
    path = _config(tmp, model={"kind": "logistic"})
    assert cli.main(["run", path, "--runs-dir", str(tmp / "runs")]) == 0
    return tmp, path


@pytest.mark.parametrize("point", ["evaluate", "push"])
def test_a_stopped_run_leaves_no_execution_running_and_push_records_its_version(
        warm_runs, point):
    import subprocess
    import sys

    from pipeline.local.runner import describe_run

    tmp, path = warm_runs
    runs = str(tmp / "runs")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", _STOP_AT, point, runs, "run", path, "--runs-dir", runs,
         "--set", f"train.seed={7 if point == 'evaluate' else 8}",
         "--set", "push.promote_to=staging"],
        cwd=root, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 143, proc.stdout[-2000:] + proc.stderr[-2000:]
    store = MetadataStore(os.path.join(runs, METADATA_FILE), read_only=True)
    run = store.list_runs(limit=1)[0]
    assert run["status"] == "failed" and run["error"] == "interrupted (SIGTERM)"
    steps = describe_run(store, run["id"])["steps"]
    assert all(step["status"] != "running" for step in steps), steps
    by_step = {step["step"]: step for step in steps}
    if point == "evaluate":
        assert by_step["evaluate"]["status"] == "failed"
        assert by_step["infra_validate"]["status"] == "failed"
        assert "interrupted (SIGTERM)" in by_step["infra_validate"]["error"]
        assert "push" not in by_step
        return
    # the version was published, so the run's record says so: push succeeded, with it
    push = by_step["push"]
    assert push["status"] == "succeeded", push
    assert push["summary"]["pushed"] is True and push["summary"]["alias"] == "staging"
    version = push["summary"]["version"]
    from components.registry.versions import Registry

    registry = Registry(str(tmp / "serving"))
    assert registry.get("base", version).ref == f"base:{version}"
    assert registry.aliases("base")["staging"] == version


def test_a_step_that_resumes_an_interrupted_attempt_says_so(tmp_path):
    """A rerun after a killed train resumes from the scratch checkpoint: its decision
    says so (it said "no earlier execution of this step")."""
    import json

    from components.trainer import training
    from pipeline.local.runner import _resuming

    scratch = tmp_path / "scratch" / "train" / "0123456789abcdef"
    assert _resuming("no earlier execution of this step", str(scratch)) == \
        "no earlier execution of this step"
    scratch.mkdir(parents=True)
    (scratch / training.EPOCH_LOG).write_text("".join(
        json.dumps({"epoch": epoch, "phase": 1, "loss": 1.0 / (epoch + 1)}) + "\n"
        for epoch in (0, 1, 1, 2)))              # epoch 1 logged twice: ran again after a kill
    assert _resuming("no earlier execution of this step", str(scratch)) == (
        f"no earlier execution of this step; resumes an interrupted attempt after its epoch 3 "
        f"(kept in {scratch})")
