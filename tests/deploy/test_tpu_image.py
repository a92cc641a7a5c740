"""The TPU train image's TensorFlow (2.20: tensorflow-tpu stops there) against what the
rest of the pipeline writes with TensorFlow 2.21.

The image's package set comes from deploy/tpu_packages.py (requirements.lock with
TensorFlow's packages at TF 2.20's versions). The slow test builds that set once in
.venv-tpu-tf/ (ignored by git; .ci/run builds it before the suite) with tensorflow-cpu
2.20.0 standing in for tensorflow-tpu 2.20.0 (the same TensorFlow and ops; libtpu only
adds the device), runs the pipeline to train here (TF 2.21), then runs
tests/tpu_image_check.py in the TPU set on those artifacts, and finally loads the model
the TPU set trained back here, as infra_validate and TF Serving 2.21 will.
"""

import fcntl
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests import ROOT  # noqa: E402
VENV = os.path.join(ROOT, ".venv-tpu-tf")
CHECK = os.path.join(ROOT, "tests", "tpu_image_check.py")


def _packages():
    spec = importlib.util.spec_from_file_location(
        "tpu_packages", os.path.join(ROOT, "deploy", "tpu_packages.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_image_installs_the_set_the_test_checks():
    """Dockerfile.tpu: the lock's install, then exactly tpu_packages' swaps, then its
    check; the test's environment (the lock with the same swaps in place, tensorflow-cpu
    for tensorflow-tpu, no libtpu) is the same set."""
    import re

    packages = _packages()
    gone, new = packages.swaps("tensorflow-tpu")
    pins = dict(line.split("==") for line in new)
    assert pins == {"tensorflow-tpu": "2.20.0", "tensorboard": "2.20.0", "tf_keras": "2.20.1",
                    "libtpu": "0.0.14"}
    dockerfile = open(os.path.join(ROOT, "deploy", "Dockerfile.tpu")).read()
    steps = [" ".join(re.sub(r"\\\n", " ", step).split()) for step in
             re.findall(r"^RUN ((?:.*\\\n)*.*)$", dockerfile, re.MULTILINE)]
    assert steps == [
        "pip install -c requirements.lock .",
        f"pip uninstall -y {' '.join(gone)} && pip install --no-deps {' '.join(new)} "
        "&& python deploy/tpu_packages.py check"], steps

    lock = [line.strip() for line in open(os.path.join(ROOT, "requirements.lock"))
            if line.strip() and not line.startswith("#")]
    kept = [line for line in lock if packages.normalize(line.split("==")[0]) not in
            {packages.normalize(name) for name in gone}]
    assert sorted(packages.requirements("tensorflow-tpu")) == sorted(kept + new)
    _, cpu_new = packages.swaps("tensorflow-cpu")
    assert cpu_new == ["tensorflow-cpu==2.20.0"] + [p for p in new[1:] if "libtpu" not in p]
    assert sorted(packages.requirements("tensorflow-cpu")) == sorted(kept + cpu_new)


@pytest.fixture(scope="module")
def tpu_python():
    """.venv-tpu-tf's python: reused when its stamp matches the set, else built (minutes;
    .ci/run builds it first). Skips only when pip cannot reach the package index."""
    packages = _packages()
    with open(os.path.join(ROOT, ".venv-tpu-tf.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one build, whoever comes first
        if not packages.venv_ready(VENV):
            reason = packages.probe()
            if reason:
                pytest.skip(f"the TPU image's package set cannot be installed: pip cannot "
                            f"reach the package index ({reason}); "
                            "run `python3 deploy/tpu_packages.py venv` where it can")
            packages.build_venv(VENV)
    return packages.venv_python(VENV)


def _produce(tmp_path):
    """The pipeline to train under this venv's TensorFlow 2.21, as tests/local/test_e2e does."""
    from pipeline import config as config_lib
    from pipeline import dag, invoke
    from pipeline.local.runner import run_pipeline

    cfg = config_lib.from_dict({
        "name": "digits", "data": {"source": "builtin:digits", "image_size": [8, 8],
                                   "eval_fraction": 0.2},
        "model": {"kind": "cnn"}, "train": {"epochs": 1, "batch_size": 32}})
    result = run_pipeline(cfg, str(tmp_path / "runs"), until="train", log=lambda _: None)
    assert result.status == "succeeded", result.error
    out = {s.step: s.outputs for s in result.steps}
    return {"examples": out["ingest"]["examples"],
            "transform_graph": out["transform"]["transform_graph"],
            "hyperparameters": out["tune"]["hyperparameters"],
            "trained_model": out["train"]["trained_model"],
            "step_config": json.dumps(invoke.step_config(dag.get("train"), cfg))}


def _expected(spec, path, count=8):
    """What TF 2.21 makes of `count` raw eval examples: the transformed image and label
    id, and the exported model's probabilities."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from components import artifacts, features

    serialized, _ = features.read_raw_examples(
        artifacts.Examples.shards(spec["examples"], "eval"), limit=count)
    raw = tf.io.parse_example(tf.constant(serialized), features.raw_feature_spec())
    transformed = tft.TFTransformOutput(spec["transform_graph"]).transform_raw_features(
        dict(raw))
    served = tf.saved_model.load(os.path.join(spec["trained_model"],
                                              artifacts.Model.SAVED_MODEL))
    probabilities = served.signatures["serving_default"](examples=tf.constant(serialized))
    np.savez(path, image=transformed[features.TRANSFORMED_IMAGE].numpy(),
             label_id=transformed[features.LABEL_ID].numpy(),
             probabilities=probabilities["probabilities"].numpy())
    return serialized


@pytest.mark.slow
def test_pipeline_artifacts_load_and_train_in_the_tpu_images_tensorflow(tpu_python, tmp_path):
    import tensorflow as tf

    from components import artifacts

    spec = _produce(tmp_path)
    spec["expected"] = str(tmp_path / "expected.npz")
    spec["out"] = str(tmp_path / "tpu-trained")
    serialized = _expected(spec, spec["expected"])
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # a TMPDIR of its own: the train task exits without teardown (run_step), which
    # leaves TensorFlow's autograph files behind
    (tmp_path / "tmp").mkdir()
    env.update(TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.run([tpu_python, CHECK, str(tmp_path / "spec.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["tensorflow"] == "2.20.0" and tf.__version__.startswith("2.21.")
    assert result["distributions"]["tensorflow-cpu"] == "2.20.0"
    assert result["distributions"]["tf_keras"].startswith("2.20.")
    assert result["distributions"]["tensorboard"].startswith("2.20.")
    assert result["transform_fn_written_by"] == tf.__version__   # the graph came from 2.21
    trained = result["trained"]
    assert trained["artifact_type"] == "Model", trained

    # the other direction: the model the TPU set trained (TF 2.20) loads and serves
    # here (TF 2.21: infra_validate, and TF Serving 2.21 after push)
    model = artifacts.read(spec["out"], artifacts.Model)
    assert model.properties["tensorflow_version"] == "2.20.0"
    served = tf.saved_model.load(model.path(artifacts.Model.SAVED_MODEL))
    out = served.signatures["serving_default"](examples=tf.constant(serialized))
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (len(serialized), 10)
    assert abs(float(probabilities.sum(axis=1).mean()) - 1.0) < 1e-4
    assert glob.glob(model.path(artifacts.Model.KERAS_FILE))
