"""KFP / Vertex caching over two compiled-and-run kfp.local runs on unchanged data.

kfp.local runs every task; the platform's cache does not. What the platform reuses is
decided by its cache key: the task's component (spec and container) and its inputs:
parameter values and, for artifacts, the producing task's own identity (a reused task
hands on its earlier artifact). This test computes that key for every task of two real
runs from the compiled spec and each task's recorded inputs (kfp.local's
executor_output.json of the tasks that feed them), and checks that on unchanged data
every cached task after validate would be reused: validate reruns (it checks drift
against the run before), its unchanged verdict lets the run go on, and nothing after it
takes an input whose identity changes every run. First, on the compiled spec alone:
which tasks may be cached, and that each takes only what its result depends on."""

from __future__ import annotations

import json
import os
import tests
import subprocess
import sys

import pytest
import yaml

from components import artifacts
from pipeline import config as config_lib
from pipeline.kfp import compile as kfp_compile
from tests.fixtures import task_inputs

EXAMPLE = os.path.join(tests.ROOT, "deploy", "example.yaml")


def test_kfp_caching_is_correct_across_runs(tmp_path):
    """A scheduled run reuses a task exactly when its result would not change: no task
    that may be cached takes anything derived from the job; each takes only the config
    it reads; push, resolve and report are never cached; evaluate and validate take the
    baseline and previous statistics the resolve task pinned."""
    def compile_with(*overrides):
        out = str(tmp_path / f"p{len(overrides)}.yaml")
        cfg = config_lib.load(EXAMPLE, list(overrides), resolve_paths=False)
        kfp_compile.compile_pipeline(cfg, out)
        return yaml.safe_load(open(out))

    base, longer = compile_with(), compile_with("train.epochs=3", "model.dropout=0.2")
    for step in ("ingest", "validate", "transform"):
        for key in (f"comp-{step}", ):
            assert base["components"][key] == longer["components"][key], step
        assert base["deploymentSpec"]["executors"][f"exec-{step}"] == \
            longer["deploymentSpec"]["executors"][f"exec-{step}"], step
        assert task_inputs(base)[step] == task_inputs(longer)[step], step
    assert task_inputs(base)["train"] != task_inputs(longer)["train"]   # dropout is compiled
    assert base["root"]["inputDefinitions"]["parameters"]["train_epochs"]["defaultValue"] == 40
    assert longer["root"]["inputDefinitions"]["parameters"]["train_epochs"]["defaultValue"] == 3

    tasks = task_inputs(base)
    for name, task in tasks.items():
        if name.startswith("condition"):
            continue
        text = json.dumps(task.get("inputs", {}))
        cached = task.get("cachingOptions") == {"enableCache": True}
        assert cached == (name not in ("push", "resolve", "report")), name
        if cached:
            assert "pipeline_job" not in text and "PIPELINE_JOB" not in text, name
    evaluate = tasks["evaluate"]["inputs"]["parameters"]
    assert evaluate["pin_baseline"]["taskOutputParameter"] == {
        "outputParameterKey": "evaluate__baseline", "producerTask": "resolve"}
    validate = tasks["validate"]["inputs"]["parameters"]
    assert validate["pin_baseline_statistics"]["taskOutputParameter"]["producerTask"] == "resolve"
    # each task's config holds only the sections it reads
    ingest_cfg = json.loads(tasks["ingest"]["inputs"]["parameters"]["config_json"]["runtimeValue"]
                            ["constant"])
    assert set(ingest_cfg) == {"data", "ingest", "beam"} and "source" not in ingest_cfg["data"]


CONFIG = """name: cache-check
data: {source: builtin:digits, image_size: [8, 8], channels: 1}
model: {kind: logistic}
train: {epochs: 1}
evaluate: {thresholds: {accuracy: {min: 0.1}}}
push: {destination: SERVING}
"""


def _run(tmp_path, config: str, runs: str) -> str:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "imgpipe"), "run",
                           config, "--engine", "kfp-local", "--runs-dir", runs],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return os.path.join(runs, done.stdout.splitlines()[0].split()[1])


def cache_keys(spec: dict, run_root: str) -> dict[str, str | None]:
    """task -> the key the platform's cache would look up (None: caching disabled), for
    the tasks at the pipeline's root (those under a gate are the uncached push)."""
    tasks = spec["root"]["dag"]["tasks"]
    defaults = {name: p.get("defaultValue") for name, p in
                spec["root"].get("inputDefinitions", {}).get("parameters", {}).items()}
    keys: dict[str, str | None] = {}

    def outputs_of(task: str) -> dict:
        with open(os.path.join(run_root, task, "executor_output.json")) as handle:
            return json.load(handle).get("parameterValues", {})

    def key(name: str) -> str:
        if name in keys:
            return keys[name]
        task = tasks[name]
        if not task.get("cachingOptions", {}).get("enableCache"):
            keys[name] = None
            return None
        params = {}
        for param, source in task.get("inputs", {}).get("parameters", {}).items():
            if "runtimeValue" in source:
                params[param] = source["runtimeValue"]["constant"]
            elif "componentInputParameter" in source:
                params[param] = defaults[source["componentInputParameter"]]
            else:
                producer = source["taskOutputParameter"]
                params[param] = outputs_of(producer["producerTask"])[
                    producer["outputParameterKey"]]
        inputs = {}
        for param, source in task.get("inputs", {}).get("artifacts", {}).items():
            producer = source["taskOutputArtifact"]
            upstream = key(producer["producerTask"])
            assert upstream is not None, f"{name} reads an uncached task's artifact"
            inputs[param] = [upstream, producer["outputArtifactKey"]]
        component = spec["components"][task["componentRef"]["name"]]
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
        keys[name] = artifacts.fingerprint_json(
            {"component": component, "executor": executor, "parameters": params,
             "artifacts": inputs})
        return keys[name]

    for name, task in tasks.items():
        if "componentRef" in task and not name.startswith("condition"):
            key(name)
    return keys


@pytest.mark.slow
def test_unchanged_data_reuses_every_task_after_validate(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("SERVING", str(tmp_path / "serving")))
    runs = str(tmp_path / "runs")
    first, second = _run(tmp_path, str(config), runs), _run(tmp_path, str(config), runs)
    cfg = config_lib.load(str(config), resolve_paths=False)
    spec = yaml.safe_load(open(kfp_compile.compile_pipeline(cfg, str(tmp_path / "p.yaml"))))
    before, after = cache_keys(spec, first), cache_keys(spec, second)
    rerun = sorted(name for name in before if before[name] is None or before[name] != after[name])
    # resolve and report are never cached; validate sees the first run's statistics now
    assert rerun == ["report", "resolve", "validate"], (before, after)
    for name in ("ingest", "transform", "tune", "train", "evaluate", "infra-validate"):
        assert before[name] is not None and before[name] == after[name], name
    # ... and the drift check really compared with the first run
    anomalies = artifacts.ExampleAnomalies.read(os.path.join(second, "validate", "anomalies"))
    assert anomalies["baseline"] and anomalies["baseline"].startswith(first)


def test_a_changed_dataset_reruns_ingest_and_what_follows(tmp_path):
    """The same key, fed a different pin for ingest (another drop of data), misses for
    ingest and every cached task that reads its outputs, directly or not."""
    cfg = config_lib.load(None, [f"push.destination={tmp_path / 'serving'}"],
                          resolve_paths=False)
    spec = yaml.safe_load(open(kfp_compile.compile_pipeline(cfg, str(tmp_path / "p.yaml"))))
    pins = {"ingest__external": '{"fingerprint": "a"}', "validate__baseline_statistics": "",
            "validate__external": "{}", "tune__external": "{}", "train__external": "{}",
            "evaluate__baseline": ""}
    roots = []
    for run, fingerprint in (("one", "a"), ("two", "b")):
        root = tmp_path / run / "resolve"
        root.mkdir(parents=True)
        values = dict(pins, ingest__external=json.dumps({"fingerprint": fingerprint}))
        (root / "executor_output.json").write_text(json.dumps({"parameterValues": values}))
        roots.append(str(tmp_path / run))
    before, after = cache_keys(spec, roots[0]), cache_keys(spec, roots[1])
    assert sorted(n for n in before if before[n] is not None and before[n] != after[n]) == \
        ["evaluate", "infra-validate", "ingest", "train", "transform", "tune", "validate"]


def _codes(cfg, path: str) -> dict[str, str | None]:
    """task -> its `code` input, for the tasks at the root and inside the gates."""
    from tests.fixtures import task_codes

    return task_codes(yaml.safe_load(open(kfp_compile.compile_pipeline(cfg, path))))


def test_a_tasks_code_covers_what_resolves_its_inputs_and_the_image_libraries(tmp_path,
                                                                             monkeypatch):
    """The platform's key holds the image tag, not what the image holds. What turns a
    task's inputs into the step's arguments in its container (the entrypoint: run-time
    parameters and pins; invoke: references to weights, warm start, hyperparameters)
    and the library versions the image pins are in every cached task's `code` input:
    an edit to either module, or another TensorFlow in requirements.lock, reruns every
    cached task."""
    import re

    from pipeline import cache

    cfg = config_lib.load(None, [f"push.destination={tmp_path / 'serving'}"],
                          resolve_paths=False)
    before = _codes(cfg, str(tmp_path / "p.yaml"))
    cached = sorted(name for name, code in before.items() if code)
    assert cached == ["evaluate", "infra-validate", "ingest", "train", "transform", "tune",
                      "validate"]
    real = cache._file_info
    for module in ("pipeline.invoke", "pipeline.kfp.entrypoint"):
        def edited(name, module=module):
            source, imports = real(name)
            return (source + "# edited" if name == module else source, imports)

        monkeypatch.setattr(cache, "_file_info", edited)
        after = _codes(cfg, str(tmp_path / "p.yaml"))
        assert sorted(n for n in cached if after[n] != before[n]) == cached, module
        assert {n: after[n] for n in before if n not in cached} == \
            {n: None for n in before if n not in cached}           # never cached: no code
    monkeypatch.setattr(cache, "_file_info", real)
    assert _codes(cfg, str(tmp_path / "p.yaml")) == before

    # the libraries: requirements.lock's pins (what deploy/Dockerfile installs)
    lock = open(os.path.join(tests.ROOT,
                             "requirements.lock")).read()
    pinned = cache.image_libraries()
    assert pinned["tensorflow"] == re.search(r"^tensorflow==(\S+)$", lock, re.M)[1]
    assert pinned["tensorflow-model-analysis"] == \
        re.search(r"^tensorflow[-_]model[-_]analysis==(\S+)$", lock, re.M)[1]
    assert set(pinned) == set(cache.LIBRARIES)
    monkeypatch.setattr(cache, "image_libraries", lambda: {**pinned, "tensorflow": "2.99.0"})
    after = _codes(cfg, str(tmp_path / "p.yaml"))
    assert sorted(n for n in cached if after[n] != before[n]) == cached


def test_the_adapter_modules_are_what_a_cached_task_runs_before_its_step():
    """Every module of `pipeline` a step's container imports through the entrypoint is in
    cache.ADAPTER_MODULES, but for the report's (its task is never cached): a module
    added to that path must be covered, or said not to change what a step reads."""
    from pipeline import cache

    reached = {m for m in cache.code_modules("pipeline.kfp.entrypoint")
               if m.startswith("pipeline.")}
    assert reached - set(cache.ADAPTER_MODULES) - {"pipeline.kfp"} == \
        {"pipeline.report", "pipeline.report.html", "pipeline.report.plots", "pipeline.results"}
    assert all(cache._origin(module) for module in cache.ADAPTER_MODULES)
