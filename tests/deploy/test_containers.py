"""The step image in Docker, as Kubeflow and Vertex AI run it: `make image` builds
deploy/Dockerfile (on stand-in bases where the official ones cannot be pulled), the
compiled pipeline runs task by task in containers of it (`--engine kfp-docker`), and
`imgpipe serve` answers from it.

Without Docker these tests skip and say why; under CI (CI=true) they fail instead, since
CI installs and starts Docker itself (.ci/run)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from components import artifacts
from tests import ROOT  # noqa: E402
IMAGE = "imgpipe:local"
IMGPIPE = os.path.join(os.path.dirname(sys.executable), "imgpipe")

pytestmark = pytest.mark.slow


def _docker_missing() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed (apt-get install docker.io)"
    try:
        done = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer in 30 s"
    if done.returncode != 0:
        return f"the Docker daemon is not reachable: {done.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def image() -> str:
    """imgpipe:local built from this checkout (`make image`: Docker's layer cache makes
    an unchanged tree a few seconds), one build at a time across pytest-xdist workers."""
    missing = _docker_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}; .ci/run installs and starts Docker")
        pytest.skip(missing)
    lock = os.path.join(ROOT, "build", "image-build.lock")    # build/ is git-ignored
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        done = subprocess.run(["make", "image", f"IMAGE={IMAGE}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


def _imgpipe(cwd, *args: str, env: dict | None = None, timeout: int = 900
             ) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **(env or {}))
    return subprocess.run([IMGPIPE, *args], cwd=cwd, capture_output=True, text=True,
                          env=environment, timeout=timeout)


def test_the_digits_pipeline_runs_task_by_task_in_containers_of_the_image(image, tmp_path):
    """`imgpipe run configs/digits.yaml --engine kfp-docker`: every task in a container
    of kfp.image, the registry a local folder mounted at its own path; the run is
    recorded and reported as kfp-local's is, and the version lands in the registry."""
    done = _imgpipe(tmp_path, "run", os.path.join(ROOT, "configs", "digits.yaml"),
                    "--engine", "kfp-docker", "--set", f"kfp.image={image}",
                    "--set", f"push.destination={tmp_path / 'serving'}",
                    "--runs-dir", str(tmp_path / "runs"))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "engine kfp-docker" in out and "pushed digits-cnn:1" in out
    for step in ("ingest", "transform", "train", "evaluate", "push"):
        assert f"  {step:<10} done" in out, step
    card = json.load(open(tmp_path / "serving" / "digits-cnn" / "1" / artifacts.PushedModel.CARD))
    assert card["blessing"]["blessed"] and card["metrics"]["accuracy"] > 0.9
    listed = _imgpipe(tmp_path, "runs", "list", "--runs-dir", str(tmp_path / "runs"), "--json")
    run = json.loads(listed.stdout)[0]
    assert run["engine"] == "kfp-docker" and run["verdict"] == "pushed"


def test_a_task_whose_container_runs_nothing_fails_the_run(image, tmp_path, monkeypatch):
    """The image's ENTRYPOINT (Beam's boot program) left in front of a task's command:
    the container exits 0 having done nothing, which kfp.local takes for success. The
    run fails at that task, naming why, instead of reporting a pipeline that did
    nothing."""
    from pipeline import config as config_lib
    from pipeline.kfp import docker as kfp_docker
    from pipeline.kfp import local as kfp_local

    monkeypatch.setattr(kfp_docker, "ENTRYPOINT", None)       # the image's own ENTRYPOINT
    cfg = config_lib.load(os.path.join(ROOT, "configs", "digits.yaml"),
                          [f"kfp.image={image}", f"push.destination={tmp_path / 'serving'}"])
    lines: list[str] = []
    result = kfp_local.run_local(cfg, str(tmp_path / "runs"), log=lines.append,
                                 engine=kfp_docker.ENGINE_DOCKER)
    assert result.status == "failed"
    assert "wrote no outputs" in str(result.error) and "ENTRYPOINT" in str(result.error)
    assert not (tmp_path / "serving" / "digits-cnn").exists()


def _upload_drops(bucket_root: str, tmp_path) -> None:
    """Two daily drops of a few PNGs per class, uploaded under gs://BUCKET/drops/DAY/."""
    from components.io import fileio
    from tests.fixtures import make_class_folders

    for offset, day in enumerate(("2026-11-30", "2026-12-01")):
        local = tmp_path / "drops" / day
        make_class_folders(str(local), classes=("cat", "dog", "fox"), per_class=14,
                           first=offset * 1000)
        for folder, _, files in os.walk(local):
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), tmp_path / "drops")
                fileio.write_bytes(f"{bucket_root}/drops/{rel}",
                                   open(os.path.join(folder, name), "rb").read())


def test_a_scheduled_window_on_a_bucket_runs_in_containers_on_its_schedule_day(
        image, tmp_path, monkeypatch):
    """The daily schedule's pipeline in containers: data drops in a bucket (the GCS test
    server on loopback, reached from the containers on the host network), a
    `{scheduled: -1d}` window and the schedule time a schedule passes: the run trains
    on the day before that time, not on today's yesterday, and a time whose day has no
    drop stops in the resolve task, before any training."""
    from tests import gcs_server

    missing = gcs_server.available("fake-gcs-server")
    if missing:
        pytest.skip(missing)
    proc, url = gcs_server.start("fake-gcs-server")
    try:
        gcs_server.use(url, monkeypatch)
        from google.cloud import storage

        storage.Client().create_bucket("daily")
        _upload_drops("gs://daily", tmp_path)
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({
            "name": "daily",
            "data": {"source": "gs://daily/drops/{YYYY}-{MM}-{DD}/", "image_size": [12, 12],
                     "channels": 1, "eval_fraction": 0.4, "spans": {"scheduled": "-1d"}},
            "validate": {"max_near_duplicate_fraction": 1.0},
            "model": {"kind": "logistic"}, "train": {"epochs": 2, "batch_size": 16},
            "evaluate": {"thresholds": {"accuracy": {"min": 0.0}}},
            "push": {"destination": str(tmp_path / "serving")},
            "kfp": {"image": image}}))
        env = {"STORAGE_EMULATOR_HOST": url, "NO_GCE_CHECK": "true"}
        done = _imgpipe(tmp_path, "run", str(path), "--engine", "kfp-docker",
                        "--schedule-time", "2026-12-01T03:00:00Z",
                        "--runs-dir", str(tmp_path / "runs"), env=env)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-6000:]
        assert "1 span(s) 2026-11-30..2026-11-30" in out and "pushed daily:1" in out
        card = json.load(open(tmp_path / "serving" / "daily" / "1" / artifacts.PushedModel.CARD))
        assert card["data"]["spans"] == ["2026-11-30"]
        missing_day = _imgpipe(tmp_path, "run", str(path), "--engine", "kfp-docker",
                               "--schedule-time", "2026-12-05T03:00:00Z",
                               "--runs-dir", str(tmp_path / "runs"), env=env)
        out = missing_day.stdout + missing_day.stderr
        assert missing_day.returncode != 0 and "2026-12-04" in out, out[-4000:]
        assert "  train      done" not in out
    finally:
        gcs_server.stop(proc)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_imgpipe_serve_answers_from_the_step_image(image, tmp_path):
    """`docker run` of the step image with `imgpipe serve` on a loopback port (the
    image's ENTRYPOINT replaced, as a serving deployment's command does) answers TF
    Serving's REST predict from a registry mounted into it."""
    from components import runtime
    from tests import serve_models as sm

    with runtime.private_tempdir():       # TensorFlow's autograph files stay contained
        registry = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(1,))
    registry.set_alias("pets:1", "production")
    port = _free_port()
    name = f"imgpipe-serve-test-{os.getpid()}-{port}"
    started = subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--network", "host",
         "-v", f"{registry.root}:{registry.root}", "--entrypoint", "imgpipe", image,
         "serve", "--registry", registry.root, "--host", "127.0.0.1", "--port", str(port)],
        capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        base = f"http://127.0.0.1:{port}/v1/models/pets"
        deadline = time.monotonic() + 180
        while True:
            try:
                status = json.load(urllib.request.urlopen(base, timeout=5))
                break
            except OSError:
                if time.monotonic() > deadline:
                    logs = subprocess.run(["docker", "logs", name], capture_output=True,
                                          text=True).stderr
                    pytest.fail(f"serve in the image did not answer in 180 s: {logs[-2000:]}")
                time.sleep(1)
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        body = json.dumps({"signature_name": "serving_images",
                           "instances": [{"b64": base64.b64encode(sm.png()).decode()}]})
        request = urllib.request.Request(f"{base}:predict", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(request, timeout=30))
        assert answer["model_spec"]["version"] == "1"
        assert answer["predictions"][0]["class_name"] == "dog"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
