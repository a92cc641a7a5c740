"""Trainer in subprocesses: MirroredStrategy over 2 logical CPUs, and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import ROOT  # noqa: E402

SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
import tensorflow as tf
if {logical_cpus} > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * {logical_cpus})
from components import artifacts
from components.steps import train, transform
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.model import ModelConfig
from components.config.train import TrainConfig
from components.config.transform import TransformConfig
from tests import fixtures
work = {work!r}
if not artifacts.is_committed(work + "/tg"):
    examples, _ = fixtures.examples_artifact(__import__("pathlib").Path(work), per_class=24)
    transform.run(examples, DataConfig(image_size=(12, 12)), TransformConfig(), BeamConfig(),
                  transform_graph=work + "/tg")
graph = artifacts.read(work + "/tg")
summary = train.run(graph, artifacts.read(work + "/examples"), ModelConfig(kind="cnn"),
                    TrainConfig(epochs={epochs}, batch_size=1, strategy={strategy!r}),
                    trained_model=work + "/{name}", scratch=work + "/scratch-{name}")
model = artifacts.read(work + "/{name}")
print("RESULT " + json.dumps({{"strategy": model.properties["strategy"],
                              "epochs": len(json.load(open(model.path("history.json")))["loss"]),
                              "resumed_after": model.properties["resumed_after_epochs"],
                              "final": summary["final"]}}), flush=True)
# TensorFlow + pyarrow can crash in interpreter teardown; the work is done and flushed.
os._exit(0)
"""


def script(tmp_path, **kwargs):
    args = dict(root=ROOT, work=str(tmp_path), logical_cpus=1, epochs=6, strategy="default",
                name="m")
    args.update(kwargs)
    return [sys.executable, "-c", SCRIPT.format(**args)]


def result(proc_stdout):
    line = [ln for ln in proc_stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_default(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    default = result(subprocess.run(script(tmp_path, name="d"), capture_output=True, text=True,
                                    env=env, check=True).stdout)
    mirrored = result(subprocess.run(script(tmp_path, logical_cpus=2, strategy="mirrored",
                                            name="m"),
                                     capture_output=True, text=True, env=env, check=True).stdout)
    assert mirrored["strategy"] == "MirroredStrategy"
    assert default["strategy"] != "MirroredStrategy"
    for run in (default, mirrored):
        assert run["final"]["accuracy"] >= 0.6
    assert abs(mirrored["final"]["accuracy"] - default["final"]["accuracy"]) <= 0.25


@pytest.mark.slow
def test_killed_training_resumes_from_last_epoch(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    epochs = 60
    proc = subprocess.Popen(script(tmp_path, epochs=epochs, name="k"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    backup = tmp_path / "scratch-k"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        state = list(backup.rglob("training_metadata.json"))
        if state and json.load(open(state[0])).get("epoch", 0) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last_saved = json.load(open(list(backup.rglob("training_metadata.json"))[0]))["epoch"]
    rerun = result(subprocess.run(script(tmp_path, epochs=epochs, name="k"), capture_output=True,
                                  text=True, env=env, check=True).stdout)
    # resumed after the last saved epoch (0-based index; one earlier when the kill hit
    # the write of the latest checkpoint), not restarted from scratch; the history
    # still holds every epoch, those before the kill included
    assert last_saved <= rerun["resumed_after"] <= last_saved + 2 and rerun["resumed_after"] >= 2
    assert rerun["epochs"] == epochs
    assert not backup.exists()  # removed once the model is committed


WORKER = """
import json, os, sys
from types import SimpleNamespace
sys.path.insert(0, {root!r})
if {cluster!r}:
    # what Vertex sets for a 2-replica job: workerpool0 is the chief, the others workers
    os.environ["TF_CONFIG"] = json.dumps({{"cluster": {cluster!r},
                                          "task": {{"type": {kind!r}, "index": 0}}}})
from pipeline import config as config_lib, dag, invoke
from pipeline.kfp.entrypoint import run_step
work = {work!r}
cfg = config_lib.load(None, ["model.kind=cnn", "train.epochs=8", "train.batch_size={batch}"])
def art(name):
    return SimpleNamespace(path=work + "/" + name, uri=work + "/" + name, metadata={{}})
# the task's KFP artifacts: every replica gets the same output URI
kfp_artifacts = {{"transform_graph": art("tg"), "examples": art("examples"),
                 "hyperparameters": art("hp"), "trained_model": art({name!r})}}
run_step("train", json.dumps(invoke.step_config(dag.get("train"), cfg)), "", "",
         kfp_artifacts, {{}}, {{}}, {{}})
print("RESULT " + json.dumps(kfp_artifacts["trained_model"].metadata), flush=True)
"""


# Eval examples per class for the one-replica comparison: 3 eval images in all would
# let any two models "match" (one image is 33 points); 40 per class is 120.
EVAL_PER_CLASS = 40


def _eval_records(per_class: int) -> list[bytes]:
    """Held-out examples of each class (variants the training split never has)."""
    from components import features
    from tests import fixtures

    return [features.encode_example({
        features.IMAGE: fixtures.png_bytes(fixtures.class_pattern(li, 1000 + v)),
        features.FORMAT: "png", features.LABEL: label, features.ID: f"{label}-eval{v}"})
        for li, label in enumerate(fixtures.CLASSES) for v in range(per_class)]


def _prepare(tmp_path):
    """Examples (with a real eval split), their transform graph, and the (empty) tune
    output train takes."""
    from components import artifacts
    from components.config.beam import BeamConfig
    from components.config.data import DataConfig
    from components.config.transform import TransformConfig
    from components.steps import transform
    from tests import fixtures

    examples, _ = fixtures.examples_artifact(tmp_path, per_class=24,
                                             extra_eval=_eval_records(EVAL_PER_CLASS))
    transform.run(examples, DataConfig(image_size=(12, 12)), TransformConfig(), BeamConfig(),
                  transform_graph=str(tmp_path / "tg"))
    with artifacts.writing(str(tmp_path / "hp"), artifacts.HyperParameters) as writer:
        with open(writer.file(artifacts.HyperParameters.FILE), "w") as handle:
            handle.write("{}")
        writer.properties = {"best": {}}
        writer.commit()


def _worker(tmp_path, name, batch, cluster=None, kind=""):
    return [sys.executable, "-c", WORKER.format(root=ROOT, work=str(tmp_path), name=name,
                                                batch=batch, cluster=cluster or {}, kind=kind)]


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_chief_and_worker_train_through_run_step_and_only_the_chief_writes(tmp_path):
    """A Vertex 2-replica job's TF_CONFIG (one `chief`, one `worker`) on 127.0.0.1: both
    replicas run the KFP task body (`run_step`) with the same output URI and train with
    MultiWorkerMirroredStrategy through the trainer itself; the chief commits the model
    and fills the task's metadata, the worker neither wipes nor reads the output and
    leaves before the executor would write the task's outputs; the result matches one
    replica with the same global batch."""
    from components import artifacts

    _prepare(tmp_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    chief_at, worker_at = (f"127.0.0.1:{p}" for p in _free_ports(2))
    cluster = {"chief": [chief_at], "worker": [worker_at]}
    procs = [subprocess.Popen(_worker(tmp_path, "shared", 4, cluster, kind),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for kind in ("chief", "worker")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    model = artifacts.read(str(tmp_path / "shared"))
    assert model.properties["strategy"] == "MultiWorkerMirroredStrategy"
    assert "2 workers (chief included)" in model.properties["strategy_reason"]
    assert result(outs[0][0])["strategy"] == "MultiWorkerMirroredStrategy"   # chief's metadata
    assert "trained with the chief" in outs[1][0]
    assert "RESULT" not in outs[1][0]           # the worker left before any output metadata
    assert artifacts.verify(model)[0] == []     # nobody wiped or rewrote the chief's files

    single = subprocess.run(_worker(tmp_path, "one", 8), capture_output=True, text=True,
                            env=env, check=True)
    one = artifacts.read(str(tmp_path / "one"))
    assert one.properties["strategy"] != "MultiWorkerMirroredStrategy"
    assert one.properties["kind"] == model.properties["kind"] == "cnn"
    assert one.properties["trainable_params"] == model.properties["trainable_params"]
    # the same quality as one replica, measured on enough eval images for a difference
    # to mean something (one image is under 1 point of 123)
    counts = artifacts.read(str(tmp_path / "examples")).properties["counts"]
    eval_count = sum(counts["eval"].values())
    assert eval_count == 3 * (EVAL_PER_CLASS + 1), eval_count
    assert model.properties["final"]["eval_accuracy"] >= 0.7
    assert abs(model.properties["final"]["eval_accuracy"] -
               result(single.stdout)["final"]["eval_accuracy"]) <= 0.1
