"""Behaviours the docs promise that had no test of their own, or a test that would pass
on a broken implementation (issue 24, items 19 and 21): registry races that only a
working lock survives, atomic writes of the files users keep, the DirectRunner mode
policy, a fully cached rerun without TensorFlow or Beam, a killed `imgpipe run` that
resumes, and a promotion that moves evaluate's baseline pin on KFP."""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from components.registry.versions import Registry
from tests.registry.test_cloud_state import _push_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- registry races ----------------------------------------------------------------------
# Each racer sleeps WINDOW inside the decision (components.registry.versions._entry runs after
# the ledger was read and before the entry is appended), so without the model's lock
# both would decide on the same ledger. Each reports its result and the times it was
# released and spent deciding: a correct lock makes the decisions one after the other
# while the racers were released together.

WINDOW = 0.4


def _saved_model(path) -> str:
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "w") as handle:
        handle.write("graph")
    with open(os.path.join(path, "variables", "variables.index"), "w") as handle:
        handle.write("x")
    return str(path)


CARD = {"blessing": {"blessed": True, "reason": "ok"},
        "infra_validation": {"passed": True, "reason": "served"}}


def _registry(tmp_path, versions: int, production: list[int]) -> Registry:
    reg = Registry(str(tmp_path / "serving"))
    src = _saved_model(tmp_path / "sm")
    for _ in range(versions):
        reg.push("m", src, CARD)
    for number in production:
        reg.set_alias(f"m:{number}", "production")
    return reg


def _racer(action, args, unlocked, barrier, queue):
    from components.registry import versions as registry_module
    from components.registry import store as registry_store

    real_entry = registry_module._entry
    window = {}

    def slow_entry(*a, **kw):       # between reading the ledger and appending to it
        window["start"] = time.monotonic()
        time.sleep(WINDOW)
        window["end"] = time.monotonic()
        return real_entry(*a, **kw)

    registry_module._entry = slow_entry
    if unlocked:                    # what the race looks like without the lock
        registry_store._locked = lambda base: contextlib.nullcontext()
    barrier.wait()
    released = time.monotonic()
    try:
        result = action(*args)
    except Exception as exc:        # reported, not a silent non-zero exit
        result = f"{type(exc).__name__}: {exc}"
    queue.put({"result": result, "released": released, **window})


def _race(action, args_per_process, unlocked=False, timeout=60):
    """Runs `action(*args)` in one forked process each, released together; asserts
    every process exited 0 and reported; returns the reports."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(len(args_per_process)), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(action, args, unlocked, barrier, queue))
             for args in args_per_process]
    for proc in procs:
        proc.start()
    reports = [queue.get(timeout=timeout) for _ in procs]
    for proc in procs:
        proc.join(timeout)
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    return reports


def _one_after_the_other(reports):
    """The racers were released together, yet their decisions did not overlap."""
    windows = sorted((r["start"], r["end"]) for r in reports)
    assert max(r["released"] for r in reports) < windows[0][1], "the racers never raced"
    for (_, end), (start, _) in zip(windows, windows[1:]):
        assert start >= end, f"two decisions overlapped: {windows}"


def _rollback(root):
    entry = Registry(root).rollback("m", "production")
    return [entry["from"], entry["to"]]


def _promote(root, ref):
    entry = Registry(root).set_alias(ref, "production")
    return [entry["from"], entry["to"]]


def _ledger_is_whole(tmp_path) -> list[dict]:
    """Every line of the audit log a complete entry; aliases.json agrees with it."""
    model = tmp_path / "serving" / "m"
    text = (model / "audit.jsonl").read_text()
    assert text.endswith("\n")
    entries = [json.loads(line) for line in text.splitlines()]
    assert json.loads((model / "aliases.json").read_text()) == Registry(
        str(tmp_path / "serving")).aliases("m")
    return entries


def test_concurrent_rollbacks_are_serialized_by_the_lock(tmp_path):
    """Two rollbacks at once walk back twice (5 -> 4 -> 3), with their decisions one
    after the other although both were waiting; without the lock the same race rolls
    back from 5 twice (so this window does catch a missing lock)."""
    reg = _registry(tmp_path, 5, [1, 2, 3, 4, 5])
    reports = _race(_rollback, [(reg.root,)] * 2)
    assert sorted(r["result"] for r in reports) == [[4, 3], [5, 4]], reports
    _one_after_the_other(reports)
    assert reg.aliases("m") == {"production": 3}
    assert [e["to"] for e in _ledger_is_whole(tmp_path)] == [1, 2, 3, 4, 5, 4, 3]

    broken = _registry(tmp_path / "unlocked", 5, [1, 2, 3, 4, 5])
    reports = _race(_rollback, [(broken.root,)] * 2, unlocked=True)
    assert [r["result"] for r in reports] == [[5, 4], [5, 4]], reports


def test_concurrent_promotions_of_two_versions_record_both_and_one_wins(tmp_path):
    """`models promote m:2` and `models promote m:3 --to production` at once: the audit
    log has both, chained (the second moved the alias from where the first put it),
    the alias names the later one, and nothing is torn."""
    reg = _registry(tmp_path, 3, [1])
    reports = _race(_promote, [(reg.root, "m:2"), (reg.root, "m:3")])
    _one_after_the_other(reports)
    moves = sorted((r["result"] for r in reports), key=lambda m: m[0] != 1)
    first, second = moves
    assert first[0] == 1 and second[0] == first[1] and {first[1], second[1]} == {2, 3}
    entries = _ledger_is_whole(tmp_path)
    assert [(e["from"], e["to"]) for e in entries] == [(None, 1), tuple(first), tuple(second)]
    assert reg.aliases("m") == {"production": second[1]}


def _push_step(root, inputs_folder, out):
    from components import artifacts
    from components.config.push import PushConfig
    from components.steps import push

    cfg = PushConfig(destination=root, model_name="m", promote_to="production")
    summary = push.run(*_push_inputs_cache[inputs_folder], cfg, artifacts.ArtifactWriter(
        out, artifacts.PushedModel, {"run_id": "r-push"}), {})
    return [summary["version"], summary["lines"][-1]]


_push_inputs_cache: dict = {}


def test_a_promotion_racing_push_promote_to_records_both_and_one_wins(tmp_path):
    """A pipeline's push step with push.promote_to=production (it publishes version 2
    and moves the alias) while someone promotes version 1 by hand: both moves are in
    the audit log, chained, and the alias names whichever came last."""
    reg = _registry(tmp_path, 1, [])
    folder = tmp_path / "inputs"
    _push_inputs_cache[str(folder)] = _push_inputs(tmp_path, seed="race")
    reports = _race(lambda kind, *a: (_push_step if kind == "push" else _promote)(*a),
                    [("push", reg.root, str(folder), str(tmp_path / "pushed")),
                     ("promote", reg.root, "m:1")])
    by_kind = {("push" if isinstance(r["result"][1], str) else "promote"): r for r in reports}
    assert set(by_kind) == {"push", "promote"}, reports
    _one_after_the_other(reports)
    version, line = by_kind["push"]["result"]
    assert version == 2 and [v.version for v in reg.versions("m")] == [1, 2]
    entries = _ledger_is_whole(tmp_path)
    assert len(entries) == 2 and entries[0]["from"] is None
    assert entries[1]["from"] == entries[0]["to"] and {e["to"] for e in entries} == {1, 2}
    assert reg.aliases("m") == {"production": entries[1]["to"]}
    pushed_move = next(e for e in entries if e["to"] == 2)
    assert pushed_move["who"] == "pipeline"
    assert line == f"m@production: version {pushed_move['from'] or '(none)'} -> 2"


# --- atomic writes of the files a user keeps ----------------------------------------------


@contextlib.contextmanager
def torn_writes(monkeypatch, folder, after: int = 0):
    """Every file opened for writing under `folder`, after the first `after` ones, gets
    half of its first write and then a full disk (ENOSPC): what a crash or a full disk
    mid-write leaves. `open` and `io.open` (pathlib) both."""
    import io

    real_open, folder = builtins.open, os.path.abspath(folder)
    opened = {"n": 0}

    class Torn:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device", self.handle.name)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def opener(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and \
                os.path.abspath(file).startswith(folder + os.sep):
            opened["n"] += 1
            if opened["n"] > after:
                return Torn(handle)
        return handle

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    try:
        yield opened
    finally:
        monkeypatch.setattr(builtins, "open", real_open)
        monkeypatch.setattr(io, "open", real_open)


def _tree(folder) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def test_a_failed_datasets_export_leaves_no_folder_and_no_partial_files(tmp_path, monkeypatch,
                                                                        capsys):
    from pipeline import cli

    out = tmp_path / "exported"
    with torn_writes(monkeypatch, tmp_path, after=25) as opened:
        assert cli.main(["datasets", "export", "digits", str(out)]) == 2
    assert opened["n"] > 25                       # it failed part way, not at the start
    assert "no space left on the device" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []             # no folder, no .partial sibling
    assert cli.main(["datasets", "export", "digits", str(out)]) == 0   # and it can retry
    assert len(_tree(out)) == 1797


def test_a_failed_report_write_keeps_the_old_report(tmp_path, monkeypatch):
    from pipeline import config as config_lib
    from pipeline.report import html as report
    from pipeline.local.runner import LocalRunner
    from tests.local.test_local_runner import STEPS

    cfg = config_lib.from_dict({"name": "r", "data": {"source": "a"}})
    result = LocalRunner(cfg, str(tmp_path), log=lambda _: None, steps=STEPS).run()
    before = _tree(result.run_dir)
    assert before["report.html"].startswith(b"<!doctype html>")
    with torn_writes(monkeypatch, result.run_dir), pytest.raises(OSError):
        report.write(result.run_dir, result.run_id, "succeeded", result.steps)
    assert _tree(result.run_dir) == before        # the old report whole, no temporary file


def test_a_failed_schema_infer_keeps_the_old_schema(tmp_path, monkeypatch, capsys):
    from pipeline import cli

    config = tmp_path / "c.yaml"
    config.write_text("name: s\ndata: {source: 'builtin:digits', image_size: [8, 8]}\n")
    out = tmp_path / "out" / "s.pbtxt"
    args = ["schema", "infer", str(config), "-o", str(out), "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(args) == 0
    before = _tree(out.parent)
    assert "feature" in before["s.pbtxt"].decode()
    with torn_writes(monkeypatch, out.parent):
        assert cli.main(args) == 2                 # the statistics are reused, the write fails
    assert "no space left on the device" in capsys.readouterr().err
    assert _tree(out.parent) == before


def test_a_failed_compile_keeps_the_old_package(tmp_path, monkeypatch, capsys):
    import yaml

    from pipeline import cli

    out = tmp_path / "out" / "pipeline.yaml"
    args = ["compile", os.path.join(ROOT, "configs", "digits.yaml"), "--set",
            "push.destination=gs://b/serving", "--set", "kfp.image=example.com/imgpipe:1",
            "-o", str(out)]
    assert cli.main(args) == 0
    before = _tree(out.parent)
    assert "deploymentSpec" in yaml.safe_load(before["pipeline.yaml"])
    with torn_writes(monkeypatch, out.parent):
        assert cli.main(args) == 2
    assert "no space left on the device" in capsys.readouterr().err
    assert _tree(out.parent) == before


# --- the DirectRunner mode policy ---------------------------------------------------------


@pytest.mark.parametrize("inputs,cores,options,expected", [
    (1797, 16, {}, ["--direct_running_mode=in_memory"]),           # small: in-process
    (None, 16, {}, ["--direct_running_mode=in_memory"]),           # size unknown
    (100_000, 2, {}, ["--direct_running_mode=in_memory"]),         # big, but 2 cores
    (99_999, 8, {}, ["--direct_running_mode=in_memory"]),          # just under the size
    (100_000, 4, {}, ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]),
    (250_000, 8, {"direct_num_workers": 3},
     ["--direct_running_mode=multi_processing"]),                  # workers as configured
    (250_000, 8, {"direct_running_mode": "in_memory"}, []),       # the config's own mode
    (10, 8, {"direct_running_mode": "multi_processing"}, []),
])
def test_the_direct_runner_mode_is_picked_by_input_size_and_cores(monkeypatch, inputs, cores,
                                                                  options, expected):
    """components/io/beamio.py: in-process below PARALLEL_MIN_INPUTS inputs or on fewer
    than PARALLEL_MIN_CORES cores (measured: multi-processing never paid off on 2
    cores), else one worker per core; a mode the config sets is never overridden."""
    from components.io import beamio
    from components.config.beam import BeamConfig

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    beam = BeamConfig(options=options)
    added = beamio.pipeline_args(beam, inputs)[len(beam.pipeline_args()):]
    assert added == expected
    other = BeamConfig(runner="DataflowRunner", options=options)
    assert beamio.pipeline_args(other, inputs) == other.pipeline_args()   # Direct only


def test_ingest_and_evaluate_pass_their_input_counts_to_the_mode_policy():
    """The policy only works if the Beam steps say how big their input is: ingest its
    planned inputs, evaluate its eval examples."""
    import inspect

    from components.steps import evaluate, ingest

    assert "beamio.pipeline_args(beam, plan.num_inputs)" in inspect.getsource(ingest)
    assert "beamio.pipeline_args(beam, eval_count)" in inspect.getsource(evaluate)


# --- a promotion moves evaluate's baseline on KFP -----------------------------------------


def test_models_promote_changes_the_evaluate_baseline_the_resolve_task_pins(tmp_path,
                                                                            monkeypatch, capsys):
    """On KFP the platform reuses evaluate while its inputs are unchanged; the baseline
    it compares against is the resolve task's `evaluate__baseline` output, wired into
    the evaluate task. `imgpipe models promote` must change that pin (and so evaluate's
    cache key), or a cached evaluate would keep blessing against the old production."""
    import yaml

    from pipeline import cli, invoke
    from pipeline import config as config_lib
    from pipeline.kfp import compile as kfp_compile
    from pipeline.kfp import entrypoint as kfp_entry

    monkeypatch.setattr(kfp_entry, "_exit_without_teardown", lambda: None)
    reg = _registry(tmp_path, 2, [1])
    cfg = config_lib.load(None, ["name=m", f"push.destination={reg.root}"],
                          resolve_paths=False)
    spec = yaml.safe_load(open(kfp_compile.compile_pipeline(cfg, str(tmp_path / "p.yaml"))))
    evaluate_inputs = spec["root"]["dag"]["tasks"]["evaluate"]["inputs"]["parameters"]
    wired = [source["taskOutputParameter"]["outputParameterKey"]
             for source in evaluate_inputs.values() if "taskOutputParameter" in source
             and source["taskOutputParameter"]["producerTask"] == "resolve"]
    assert "evaluate__baseline" in wired, evaluate_inputs

    def pins():
        params = kfp_compile.runtime_parameters(cfg)
        overrides = {kfp_compile.RUNTIME_PARAMETERS[n]: params[n]
                     for n in kfp_compile._resolve_parameters(params) if n != "baseline_alias"}
        return kfp_entry.resolve_pins(invoke.Context.from_config(cfg).to_json(),
                                      params["baseline_alias"],
                                      kfp_compile.resolve_configs(cfg), overrides)._asdict()

    before = pins()
    assert before["evaluate__baseline"] == "m:1"
    assert cli.main(["models", "promote", "m:2", "--to", "production", "--registry",
                     reg.root]) == 0
    after = pins()
    assert after["evaluate__baseline"] == "m:2"
    assert cli.main(["models", "rollback", "m", "--alias", "production", "--registry",
                     reg.root]) == 0
    assert pins()["evaluate__baseline"] == "m:1"
    capsys.readouterr()


# --- a fully cached rerun -----------------------------------------------------------------

_HEAVY = ("tensorflow", "apache_beam", "keras", "tensorflow_transform",
          "tensorflow_model_analysis")

_RERUN = """
import json, sys
sys.path.insert(0, {root!r})
from pipeline import cli
code = cli.main(["run", {config!r}, "--runs-dir", {runs!r}, "--json"])
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print("\\nCHECK " + json.dumps({{"code": code, "heavy": heavy}}), flush=True)
"""


def _digits_config(tmp_path, epochs=1, **extra) -> str:
    config = tmp_path / "digits.yaml"
    config.write_text(
        "name: quick\n"
        "data: {source: 'builtin:digits', image_size: [8, 8], eval_fraction: 0.2}\n"
        f"model: {{kind: logistic}}\ntrain: {{epochs: {epochs}, batch_size: 32}}\n"
        "evaluate: {thresholds: {accuracy: {min: 0.1}}, bootstrap_samples: 50}\n"
        f"push: {{destination: {str(tmp_path / 'serving')!r}}}\n"
        + "".join(f"{key}: {value}\n" for key, value in extra.items()))
    return str(config)


@pytest.mark.slow
def test_a_fully_cached_rerun_imports_neither_tensorflow_nor_beam(tmp_path, capsys):
    """The third run of an unchanged config (the second reruns validate against the
    first run's statistics) reuses every step and pushes nothing new, in a fresh
    process that never imports TensorFlow, Keras, TFT, TFMA or Beam."""
    from pipeline import cli

    config, runs = _digits_config(tmp_path), str(tmp_path / "runs")
    for _ in range(2):
        assert cli.main(["run", config, "--runs-dir", runs]) == 0
    capsys.readouterr()
    done = subprocess.run([sys.executable, "-c", _RERUN.format(
        root=ROOT, config=config, runs=runs, heavy=_HEAVY)], capture_output=True, text=True,
        timeout=300, env=dict(os.environ, TMPDIR=str(tmp_path)))
    check = json.loads(done.stdout.split("\nCHECK ")[-1])
    result = json.loads(done.stdout.split("\nCHECK ")[0])
    assert check["code"] == 0, done.stderr[-3000:]
    statuses = {s["step"]: s["status"] for s in result["steps"]}
    assert statuses.pop("push") == "ran" and set(statuses.values()) == {"cached"}, \
        [(s["step"], s["decision"]) for s in result["steps"] if s["status"] != "cached"]
    assert result["pushed"]["version"] == 1              # the same model, already pushed
    assert check["heavy"] == [], check


# --- `imgpipe run` killed mid-train -------------------------------------------------------


@pytest.mark.slow
def test_imgpipe_run_killed_mid_train_resumes_from_its_checkpoint_and_reuses_earlier_steps(
        tmp_path):
    """SIGKILL of `imgpipe run` once train has checkpointed an epoch into the runner's
    scratch folder; the rerun reuses ingest, transform and tune (the first unfinished
    step is train), resumes training after the saved epoch instead of from scratch,
    keeps every epoch in the history, and removes the scratch folder."""
    import signal

    from components import artifacts

    epochs = 12
    config, runs = _digits_config(tmp_path, epochs=epochs), tmp_path / "runs"
    config_text = open(config).read().replace("batch_size: 32", "batch_size: 4")
    open(config, "w").write(config_text)                 # slower epochs: time to kill one
    command = [os.path.join(os.path.dirname(sys.executable), "imgpipe"), "run", config,
               "--runs-dir", str(runs), "--until", "train"]
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=tmp_path)
    saved, deadline = None, time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for state in (runs / "scratch").rglob("training_metadata.json"):
                with contextlib.suppress(ValueError, OSError):
                    if json.loads(state.read_text()).get("epoch", -1) >= 1:
                        saved = state
            if saved:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished (or failed) before it could be killed"
        assert saved is not None, "no checkpoint within the deadline"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last_saved = json.loads(saved.read_text())["epoch"]

    done = subprocess.run(command + ["--json"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    statuses = {s["step"]: s["status"] for s in result["steps"]}
    assert [statuses[s] for s in ("ingest", "transform", "tune")] == ["cached"] * 3, statuses
    assert statuses["train"] == "ran"
    model = artifacts.read(next(s for s in result["steps"]
                                if s["step"] == "train")["outputs"]["trained_model"])
    # resumed after the saved epoch (0-based; one later if the kill hit after the next
    # checkpoint), not from scratch; the history holds every epoch
    assert last_saved <= model.properties["resumed_after_epochs"] <= last_saved + 2
    assert model.properties["resumed_after_epochs"] >= 1
    history = json.load(open(model.path(artifacts.Model.FILE)))
    assert len(history["loss"]) == epochs
    assert not list((runs / "scratch").rglob("training_metadata.json"))
