"""Registry races that only a working lock survives (issue 24, item 19): concurrent
rollbacks, promotions of two versions, and a promotion racing a push step's
push.promote_to, each with its decisions one after the other and a whole ledger."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time

from components.registry.versions import Registry
from tests.fixtures import push_inputs, registry_with_versions

# Each racer sleeps WINDOW inside the decision (components.registry.ledger.entry runs after
# the ledger was read and before the entry is appended), so without the model's lock
# both would decide on the same ledger. Each reports its result and the times it was
# released and spent deciding: a correct lock makes the decisions one after the other
# while the racers were released together.


WINDOW = 0.4


def _racer(action, args, unlocked, barrier, queue):
    from components.registry import ledger
    from components.registry import store as registry_store

    real_entry = ledger.entry
    window = {}

    def slow_entry(*a, **kw):       # between reading the ledger and appending to it
        window["start"] = time.monotonic()
        time.sleep(WINDOW)
        window["end"] = time.monotonic()
        return real_entry(*a, **kw)

    ledger.entry = slow_entry
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
    reg = registry_with_versions(tmp_path, 5, [1, 2, 3, 4, 5])
    reports = _race(_rollback, [(reg.root,)] * 2)
    assert sorted(r["result"] for r in reports) == [[4, 3], [5, 4]], reports
    _one_after_the_other(reports)
    assert reg.aliases("m") == {"production": 3}
    assert [e["to"] for e in _ledger_is_whole(tmp_path)] == [1, 2, 3, 4, 5, 4, 3]

    broken = registry_with_versions(tmp_path / "unlocked", 5, [1, 2, 3, 4, 5])
    reports = _race(_rollback, [(broken.root,)] * 2, unlocked=True)
    assert [r["result"] for r in reports] == [[5, 4], [5, 4]], reports


def test_concurrent_promotions_of_two_versions_record_both_and_one_wins(tmp_path):
    """`models promote m:2` and `models promote m:3 --to production` at once: the audit
    log has both, chained (the second moved the alias from where the first put it),
    the alias names the later one, and nothing is torn."""
    reg = registry_with_versions(tmp_path, 3, [1])
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
    reg = registry_with_versions(tmp_path, 1, [])
    folder = tmp_path / "inputs"
    _push_inputs_cache[str(folder)] = push_inputs(tmp_path, seed="race")
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
