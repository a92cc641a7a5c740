"""What the console's tests share: a runs folder made by the real runner (the fake DAG
of tests/local/fake_dags.py: no TensorFlow), a registry of versions pushed through
`Registry.push` with cards, evaluations and a request log written through
`RequestLog`, the app under FastAPI's TestClient, the real `imgpipe ui` process, and a
headless Chromium driven by Selenium (skipped without it, failed under CI=true)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from components import artifacts
from pipeline import cli
from tests import fixtures, gcs_server

CLASSES = ["cat", "dog", "fox"]
DAG = "tests.local.fake_dags:STEPS"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _run(config: str, runs: str, *extra: str) -> None:
    assert cli.main(["run", config, "--dag", DAG, "--runs-dir", runs, *extra]) in (0, 1)


def _evaluation(folder, matrix: list[list[int]], predictions: list[dict]):
    """A committed ModelEvaluation with a confusion matrix and per-example predictions."""
    return fixtures.committed_artifact(folder, artifacts.ModelEvaluation, {
        artifacts.ModelEvaluation.FILE: json.dumps({
            "metrics": {"slices": {}, "per_class": {}, "confusion": matrix},
            "label_vocabulary": CLASSES}),
        artifacts.ModelEvaluation.PREDICTIONS: "\n".join(json.dumps(p) for p in predictions)})


def _card(accuracy: float, evaluation: str, model: str, run_id: str, spans: list[str]) -> dict:
    card = fixtures.card(accuracy=accuracy)
    card.update(
        per_class={c: {"precision": accuracy - 0.01 * i, "recall": accuracy + 0.01 * i,
                       "f1_score": accuracy} for i, c in enumerate(CLASSES)},
        data={"classes": CLASSES, "examples": 300, "spans": spans, "evaluated_on": spans[-1:],
              "counts": {"train": {c: 100 for c in CLASSES}},
              "sizes": {"28x28": 300}, "channels": {"1": 300},
              "pixels": {"train": {c: {"brightness_mean": 0.45, "brightness_std": 0.05,
                                       "contrast_mean": 0.25} for c in CLASSES}}},
        artifacts={"model": model, "evaluation": evaluation}, run_id=run_id,
        model={"kind": "cnn", "trainable_params": 1234})
    card["metrics"].update(top_k_accuracy=min(1.0, accuracy + 0.05), example_count=30.0)
    return card


def _traffic(n: int, version: int, arm: str | None, start: dt.datetime, shadow: int | None,
             label: str) -> list[dict]:
    from pipeline.serve import request_log

    out = []
    for i in range(n):
        images = [{"sha256": f"{version}-{i}-{k}", "bytes": 700, "height": 28, "width": 28,
                   "channels": 1, "brightness": 0.45, "contrast": 0.25,
                   "class": CLASSES[(i + k) % 3], "confidence": 0.9} for k in range(2)]
        entry = request_log.make_entry(
            model="m", version=version, label=label, arm=arm, status=200,
            latency_ms=20.0 + i % 7, instances=2, id=f"{arm}-{i}", images=images,
            time=(start + dt.timedelta(seconds=20 * i)).isoformat(timespec="milliseconds"))
        if shadow is not None:
            entry["shadow"] = {"version": shadow, "classes": [im["class"] for im in images],
                               "confidences": [0.88, 0.9]}
        out.append(entry)
    return out


@pytest.fixture
def world(tmp_path, monkeypatch):
    """runs: three runs of pipeline `base` (the second reused from cache, the third
    failed) and one of `other`; registry m:1..3 (m:1 production, m:2 staging), m:1 and
    m:2 with evaluations that disagree on two eval examples, m's request log: a canary of
    staging against production over the last hour."""
    from components.registry.versions import Registry
    from pipeline.serve.request_log import RequestLog

    runs = str(tmp_path / "runs")
    config = fixtures.cli_config(tmp_path)
    _run(config, runs)
    _run(config, runs)
    monkeypatch.setenv("FAKE_CONSUME_FAILS", "1")
    with pytest.raises(RuntimeError, match="consume crashed"):    # a step's own crash
        _run(config, runs, "--no-cache")
    monkeypatch.delenv("FAKE_CONSUME_FAILS")
    other = tmp_path / "other.yaml"
    other.write_text(open(config).read().replace("name: base", "name: other"))
    _run(str(other), runs)
    from pipeline.metadata import METADATA_FILE, MetadataStore

    store = MetadataStore(os.path.join(runs, METADATA_FILE), read_only=True)
    listed = store.list_runs()
    first = listed[-1]["id"]
    [statistics] = [a for e in store.executions(first) for a in store.artifacts_of(e.id, "output")
                    if a["type"] == "ExampleStatistics"]
    registry = Registry(str(tmp_path / "serving"))
    saved = fixtures.fake_saved_model(tmp_path / "sm")
    rows = [{"id": f"e{i}", "label": CLASSES[i % 3], "predicted": CLASSES[i % 3]}
            for i in range(6)]
    worse = [dict(r, predicted="dog") if r["id"] in ("e0", "e2") else r for r in rows]
    evaluations = [_evaluation(tmp_path / "eval1", [[9, 1, 0], [0, 10, 0], [1, 0, 9]], worse),
                   _evaluation(tmp_path / "eval2", [[10, 0, 0], [0, 10, 0], [0, 0, 10]], rows)]
    for number, accuracy in ((1, 0.8), (2, 0.9), (3, 0.85)):
        evaluation = evaluations[number - 1].uri if number <= 2 else None
        registry.push("m", saved, _card(accuracy, evaluation, statistics["uri"], first,
                                         [f"2026-12-0{number}"]))
    registry.set_alias("m:1", "production", "first release")
    registry.set_alias("m:2", "staging", "next one")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=50)
    with RequestLog(registry.root, flush_seconds=3600, max_lines=500) as log:
        for entry in (_traffic(120, 2, "candidate", start, 1, "staging")
                      + _traffic(120, 1, "baseline", start, 2, "production")):
            log.record("m", entry)
    return SimpleNamespace(runs=runs, registry=registry, run_ids=[r["id"] for r in listed],
                           first=first, statistics=statistics["uri"], tmp=tmp_path)


@pytest.fixture
def client(world):
    """The app on the world, as `imgpipe ui` builds it on 127.0.0.1:8080."""
    from fastapi.testclient import TestClient

    from pipeline.ui.app import build
    from pipeline.ui.security import Guard

    guard = Guard(None, {"127.0.0.1:8080", "localhost:8080"})
    client = TestClient(build(world.runs, world.registry, guard),
                        base_url="http://127.0.0.1:8080")
    client.guard = guard
    return client


@pytest.fixture
def start_console(world):
    """Starts the real `imgpipe ui` on a free port (--port 0: it prints its address);
    returns (url, process). Stopped at the end of the test."""
    started = []

    def start(*args: str, env: dict | None = None) -> tuple[str, subprocess.Popen]:
        imgpipe = os.path.join(os.path.dirname(sys.executable), "imgpipe")
        process = subprocess.Popen(
            [imgpipe, "ui", "--runs-dir", world.runs, "--registry", world.registry.root,
             "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=dict(os.environ, **(env or {})))
        started.append(process)
        line = process.stdout.readline()          # printed once the socket listens
        assert "imgpipe ui on http://" in line, (line, process.stderr.read())
        url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        return url, process

    yield start
    for process in started:
        gcs_server.stop(process, timeout=30)
        for stream in (process.stdout, process.stderr):
            stream.close()


def browser_problem() -> str | None:
    """Why no headless Chromium can be driven here; None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (make install)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(os.path.basename(path))):
            return f"{path} is missing (apt-get install -y chromium chromium-driver)"
    return None


@pytest.fixture
def browser():
    """Headless Chromium under Selenium, its profile and temporary files in a folder of
    its own (short: Chromium's socket paths must fit in 108 bytes), removed after.
    Without it the test skips; with CI=true it fails (CI installs it: .ci/run)."""
    import pathlib
    import tempfile

    problem = browser_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no browser for the console's end-to-end tests: {problem}")
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    home = pathlib.Path(tempfile.mkdtemp(prefix="ui-chromium-"))
    (home / "tmp").mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={home / 'profile'}"):
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or CHROMEDRIVER,
                      env=dict(os.environ, TMPDIR=str(home / "tmp"), HOME=str(home)))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception:
        shutil.rmtree(home, ignore_errors=True)
        raise
    driver.implicitly_wait(10)
    yield driver
    driver.quit()
    shutil.rmtree(home, ignore_errors=True)
