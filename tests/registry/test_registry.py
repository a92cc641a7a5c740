"""Registry: TF Serving layout, atomic versions under concurrency, aliases, audit,
promotion rules and rollback."""

import json
import os

import pytest

from components import artifacts
from components.errors import ConfigError
from components.registry.versions import PromotionRefused, Registry
from pipeline import cli
from tests import fixtures
from tests.fixtures import card, committed_artifact, fake_saved_model


def test_versions_are_integers_in_the_serving_layout(tmp_path):
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    v1 = reg.push("fonts", src, card())
    v2 = reg.push("fonts", src, card())
    assert (v1.version, v2.version) == (1, 2)
    # (plus the model's hidden .lock, which TF Serving ignores)
    assert sorted(os.listdir(tmp_path / "serving" / "fonts")) == [".lock", "1", "2"]
    assert os.path.isfile(tmp_path / "serving" / "fonts" / "2" / "saved_model.pb")
    card_path = tmp_path / "serving" / "fonts" / "2" / artifacts.PushedModel.CARD
    assert json.load(open(card_path))["version"] == 2
    assert reg.resolve("fonts@latest").version == 2 and reg.resolve("fonts:1") == v1
    with pytest.raises(ConfigError, match="no alias 'production'"):
        reg.resolve("fonts@production")


def _push(root, src, marker, barrier, queue):
    barrier.wait()
    queue.put(Registry(root).push("m", src, card(accuracy=marker)).version)


def test_concurrent_pushes_get_distinct_intact_versions(tmp_path):
    root = str(tmp_path / "serving")
    sources = [fake_saved_model(tmp_path / f"sm{i}", marker=str(i)) for i in range(4)]
    codes, versions = fixtures.race(_push, [(root, sources[i], i) for i in range(4)])
    assert codes == [0] * 4
    versions = sorted(versions)
    assert versions == [1, 2, 3, 4]
    for version in Registry(root).versions("m"):
        marker = str(int(version.card["metrics"]["accuracy"]))
        # each version holds exactly the model that claimed it, whole
        assert open(os.path.join(version.path, "saved_model.pb")).read() == marker * 1000
        assert version.card["version"] == version.version
    assert not [n for n in os.listdir(os.path.join(root, "m")) if n.startswith(".push-")]


def _push_many(root, src, worker, rounds, barrier, queue):
    import fcntl
    import time

    real_flock = fcntl.flock

    def slow_flock(handle, operation):     # widens the gap between opening and locking
        if operation & fcntl.LOCK_NB:
            time.sleep(0.003)
        return real_flock(handle, operation)

    fcntl.flock = slow_flock
    barrier.wait()
    got = []
    for i in range(rounds):
        got.append(Registry(root).push("m", src, card(accuracy=worker * 100 + i)).version)
    queue.put(got)


def test_many_pushes_at_once_never_break_a_version_or_block_the_next(tmp_path):
    """Pushes from several processes, each cleaning up after dead pushes as it starts:
    no cleaner ever removes a live push's copy, so every push publishes a whole version
    and the numbers are exactly 1..N."""
    src = fake_saved_model(tmp_path / "sm")
    for i in range(20):                     # a copy that takes a while
        (tmp_path / "sm" / "variables" / f"part{i}").write_text("x" * 2000)
    workers, rounds = 5, 12
    root = str(tmp_path / "serving")
    codes, pushed = fixtures.race(_push_many, [(root, src, w, rounds) for w in range(workers)],
                                  timeout=120)
    assert codes == [0] * workers
    numbers = sorted(n for numbers in pushed for n in numbers)
    assert numbers == list(range(1, workers * rounds + 1))
    versions = Registry(root).versions("m")
    assert [v.version for v in versions] == numbers
    for version in versions:
        assert len(os.listdir(os.path.join(version.path, "variables"))) == 21
        assert version.card["version"] == version.version
    assert not [n for n in os.listdir(os.path.join(root, "m")) if n.startswith(".push-")]


def _push_once(root, src, barrier, queue):
    barrier.wait()
    version, already = Registry(root).push_once(
        "m", src, {**card(), "model": {"fingerprint": "abc"}}, fingerprint="abc")
    queue.put((version.version, already))


def test_one_model_pushed_by_two_runs_at_once_is_one_version(tmp_path):
    src = fake_saved_model(tmp_path / "sm")
    for attempt in range(3):
        root = str(tmp_path / f"serving{attempt}")
        codes, results = fixtures.race(_push_once, [(root, src)] * 2)
        assert codes == [0, 0] and sorted(results) == [(1, False), (1, True)]
        assert [v.version for v in Registry(root).versions("m")] == [1]


def test_a_half_made_version_is_skipped_not_collided_with(tmp_path):
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    reg.push("m", src, card())
    half = tmp_path / "serving" / "m" / "2"
    half.mkdir()
    (half / artifacts.PushedModel.CARD).write_text("{}")        # no saved_model.pb: not a version
    assert reg.push("m", src, card()).version == 3
    assert reg.push("m", src, card()).version == 4


def test_promote_refuses_unblessed_unless_forced_and_audits(tmp_path):
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    reg.push("m", src, card())
    reg.push("m", src, card(blessed=False))
    reg.push("m", src, card(infra=False))
    reg.set_alias("m:1", "production", reason="first", who="ana")
    with pytest.raises(PromotionRefused, match="not blessed .accuracy too low"):
        reg.set_alias("m:2", "production")
    with pytest.raises(PromotionRefused):
        reg.set_alias("m:3", "production")
    reg.set_alias("m:2", "production", reason="hotfix", force=True, who="bo")
    assert reg.aliases("m") == {"production": 2}
    audit = reg.audit("m")
    assert [(e["who"], e["from"], e["to"], e["force"], e["reason"]) for e in audit] == [
        ("ana", None, 1, False, "first"), ("bo", 1, 2, True, "hotfix")]
    entry = reg.rollback("m", "production", who="cy")
    assert (entry["from"], entry["to"], entry["action"]) == (2, 1, "rollback")
    assert reg.resolve("m@production").version == 1
    with pytest.raises(ConfigError, match="no earlier holder"):
        reg.rollback("m", "production")


def test_models_cli(tmp_path, capsys):
    root = str(tmp_path / "serving")
    reg = Registry(root)
    src = fake_saved_model(tmp_path / "sm")
    reg.push("m", src, card(accuracy=0.8))
    reg.push("m", src, card(accuracy=0.85))
    assert cli.main(["models", "promote", "m:1", "--to", "production", "--registry", root,
                     "--reason", "baseline"]) == 0
    assert cli.main(["models", "promote", "m:2", "--to", "production", "--registry", root]) == 0
    assert cli.main(["models", "list", "--registry", root]) == 0
    out = capsys.readouterr().out
    assert "m:2" in out and "production" in out.splitlines()[-1]
    assert cli.main(["models", "diff", "m:1", "m:2", "--registry", root, "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["metrics"]["accuracy"]["change"] == pytest.approx(0.05)
    assert cli.main(["models", "rollback", "m", "--alias", "production", "--registry",
                     root]) == 0
    assert reg.aliases("m") == {"production": 1}
    assert cli.main(["models", "show", "m@production", "--registry", root, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert shown["ref"] == "m:1" and [e["action"] for e in shown["audit"]] == ["promote",
                                                                             "rollback"]
    reg.push("m", src, card(blessed=False))
    assert cli.main(["models", "promote", "m:3", "--to", "production", "--registry", root]) == 4


def test_registry_defaults_to_the_config_destination(tmp_path, capsys):
    dest = tmp_path / "elsewhere"
    config = tmp_path / "c.yaml"
    config.write_text(f"name: m\npush: {{destination: {dest}}}\n")
    Registry(str(dest)).push("m", fake_saved_model(tmp_path / "sm"), card())
    assert cli.main(["models", "list", "--config", str(config), "--json"]) == 0
    assert [row["ref"] for row in json.loads(capsys.readouterr().out)] == ["m:1"]


def test_a_killed_push_leaves_nothing_visible_and_is_cleaned_by_the_next(tmp_path):
    import fcntl

    root = tmp_path / "serving"
    (root / "m" / ".push-dead").mkdir(parents=True)           # its process is gone
    (root / "m" / ".push-dead" / "saved_model.pb").write_text("half")
    (root / "m" / ".push-running").mkdir()                    # its process holds the lock
    holder = open(root / "m" / ".push-running.lock", "a")
    fcntl.flock(holder, fcntl.LOCK_EX)
    reg = Registry(str(root))
    assert reg.versions("m") == []          # TF Serving and the registry ignore both
    reg.push("m", fake_saved_model(tmp_path / "sm"), card())
    assert sorted(os.listdir(root / "m")) == [".lock", ".push-running", ".push-running.lock",
                                              "1"]
    holder.close()


def test_a_failed_push_removes_its_copy(tmp_path, monkeypatch):
    import errno

    from components import artifacts
    from components.io import fileio

    reg = Registry(str(tmp_path / "serving"))
    real = fileio.copy
    copied = []

    def disk_full(src, dst):
        if copied:          # the second file: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(dst)
        real(src, dst)

    monkeypatch.setattr(fileio, "copy", disk_full)
    with pytest.raises(OSError, match="No space left"):
        reg.push("m", fake_saved_model(tmp_path / "sm"), card(),
                 {artifacts.Model.KERAS_FILE: str(tmp_path / "sm" / "saved_model.pb")})
    # no hidden copy, no lock of its own (the model's .lock stays, as after any change)
    assert copied and os.listdir(tmp_path / "serving" / "m") == [".lock"]
    monkeypatch.setattr(fileio, "copy", real)
    assert reg.push("m", str(tmp_path / "sm"), card()).version == 1


def test_only_complete_versions_count(tmp_path):
    reg = Registry(str(tmp_path / "serving"))
    reg.push("m", fake_saved_model(tmp_path / "sm"), card())
    (tmp_path / "serving" / "m" / "7").write_text("a stray file")
    (tmp_path / "serving" / "m" / "8").mkdir()
    assert [v.version for v in reg.versions("m")] == [1]
    assert reg.resolve("m@latest").version == 1
    assert reg.push("m", str(tmp_path / "sm"), card()).version == 2


def two_versions(tmp_path) -> Registry:
    """A registry at tmp_path/serving with m:1 and m:2, production on m:1."""
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for _ in range(2):
        reg.push("m", src, card())
    reg.set_alias("m:1", "production")
    return reg


def test_a_no_op_is_not_recorded_and_rollback_moves_or_says_why(tmp_path):
    reg = two_versions(tmp_path)
    assert reg.set_alias("m:1", "production").get("unchanged")     # e.g. a cached rerun
    reg.set_alias("m:2", "production")
    reg.set_alias("m:2", "production")
    assert [(e["from"], e["to"]) for e in reg.audit("m")] == [(None, 1), (1, 2)]
    entry = reg.rollback("m", "production")
    assert (entry["from"], entry["to"]) == (2, 1)
    with pytest.raises(ConfigError, match="no earlier holder"):
        reg.rollback("m", "production")
    assert reg.aliases("m") == {"production": 1}


def _rollback(root, barrier, queue):
    barrier.wait()
    try:
        entry = Registry(root).rollback("m", "production")
        queue.put((entry["from"], entry["to"]))
    except ConfigError as exc:
        queue.put(str(exc))


def test_concurrent_rollbacks_each_move_one_step(tmp_path):
    src = fake_saved_model(tmp_path / "sm")
    for attempt in range(3):
        root = str(tmp_path / f"serving{attempt}")
        reg = Registry(root)
        for version in range(1, 6):
            reg.push("m", src, card())
            reg.set_alias(f"m:{version}", "production")
        codes, moves = fixtures.race(_rollback, [(root,)] * 2)
        moves = sorted(moves)
        assert moves == [(4, 3), (5, 4)], moves
        assert reg.aliases("m") == {"production": 3}
        assert reg.rollback("m", "production")["to"] == 2   # the next one skips nothing


def test_the_ledger_is_written_first_and_wins(tmp_path, monkeypatch):
    from components.registry import versions as registry_module

    root = tmp_path / "serving"
    reg = two_versions(tmp_path)

    # killed after the ledger line, before aliases.json: the change is audited and in force
    def killed(self, name, aliases):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(registry_module.Registry, "_write_view", killed)
    with pytest.raises(KeyboardInterrupt):
        reg.set_alias("m:2", "production")
    monkeypatch.undo()
    assert json.load(open(root / "m" / "aliases.json")) == {"production": 1}   # stale view
    assert reg.aliases("m") == {"production": 2}
    assert [e["to"] for e in reg.audit("m")] == [1, 2]
    assert reg.repair("m") == {"before": {"production": 1}, "after": {"production": 2}}
    assert json.load(open(root / "m" / "aliases.json")) == {"production": 2}

    # killed mid-append: a torn last line is no change, and the next writer cuts it
    with open(root / "m" / "audit.jsonl", "a") as handle:
        handle.write('{"action": "promote", "alias": "production", "to": 1')
    assert reg.aliases("m") == {"production": 2}
    reg.set_alias("m:1", "staging")
    assert [e["alias"] for e in reg.audit("m")] == ["production", "production", "staging"]


def test_damaged_registry_files_are_named_with_their_repair(tmp_path, capsys):
    root = tmp_path / "serving"
    reg = two_versions(tmp_path)
    (root / "m" / "aliases.json").write_text("{not json")        # only a view: harmless
    assert reg.aliases("m") == {"production": 1}
    (root / "m" / "2" / artifacts.PushedModel.CARD).write_text("{broken")
    assert cli.main(["models", "list", "--registry", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "m:1" in listing and "m:2" in listing and "DAMAGED" in listing
    assert cli.main(["models", "promote", "m:2", "--to", "staging", "--registry", str(root)]) == 4
    err = capsys.readouterr().err
    assert "2/model_card.json is damaged" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["models", "promote", "m:2", "--to", "staging", "--force",
                     "--registry", str(root)]) == 0
    with open(root / "m" / "audit.jsonl", "r+") as handle:
        lines = handle.read().splitlines()
        handle.seek(0)
        handle.write("\n".join(["{oops"] + lines[1:]) + "\n")
        handle.truncate()
    assert cli.main(["models", "show", "m@staging", "--registry", str(root)]) == 2
    err = capsys.readouterr().err
    assert "audit.jsonl line 1 is damaged" in err and "imgpipe models repair m" in err


@pytest.mark.parametrize("line", ['{"alias": "production", "to": "abc"}',
                                  '{"alias": ["x"], "to": 1}',
                                  '{"alias": "production", "to": true}',
                                  '{"alias": "production", "to": 1, "action": 5}'])
def test_a_ledger_line_of_the_wrong_shape_is_named(tmp_path, capsys, line):
    root = tmp_path / "serving"
    reg = two_versions(tmp_path)
    Registry(str(root)).push("other", fake_saved_model(tmp_path / "sm2"), card())
    with open(root / "m" / "audit.jsonl", "a") as handle:
        handle.write(line + "\n")
    assert cli.main(["models", "show", "m@production", "--registry", str(root)]) == 2
    err = capsys.readouterr().err
    assert "audit.jsonl line 2 is damaged" in err and len(err.strip().splitlines()) == 1
    # the listing still shows every other model, and this one as damaged
    assert cli.main(["models", "list", "--registry", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "other:1" in listing and "m:* " in listing and "DAMAGED" in listing
    with pytest.raises(ConfigError, match="line 2 is damaged"):
        reg.aliases("m")


def test_a_damaged_baseline_stops_the_run_before_it_starts(tmp_path, capsys):
    root = tmp_path / "serving"
    two_versions(tmp_path)                               # production on m:1
    (root / "m" / "1" / artifacts.PushedModel.CARD).write_text("{broken")
    config = tmp_path / "c.yaml"
    config.write_text(f"name: m\ndata: {{source: builtin:digits}}\n"
                      f"push: {{destination: '{root}'}}\n")
    assert cli.main(["run", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "1/model_card.json is damaged" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["runs", "list", "--runs-dir", str(tmp_path / "runs"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []      # no run was started


@pytest.mark.parametrize("args", [
    ["models", "list", "../x"], ["models", "show", "../x:1"], ["models", "rollback", "../x",
                                                               "--alias", "production"],
    ["models", "promote", "m:1", "--to", "../prod"], ["models", "promote", "m:1", "--to",
                                                      "prod\n"]])
def test_references_outside_the_registry_are_refused(tmp_path, capsys, args):
    root = tmp_path / "serving"
    Registry(str(root)).push("m", fake_saved_model(tmp_path / "sm"), card())
    assert cli.main([*args, "--registry", str(root)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_alias_typos_are_refused_and_aliases_can_be_removed(tmp_path, capsys):
    reg = two_versions(tmp_path)
    root = ["--registry", reg.root]
    assert cli.main(["models", "promote", "m:2", "--to", "prodution", *root]) == 2
    assert "alias 'prodution' does not exist yet (existing: production)" in \
        capsys.readouterr().err
    assert reg.aliases("m") == {"production": 1}
    assert cli.main(["models", "promote", "m:2", "--to", "staging", *root]) == 0   # common
    assert cli.main(["models", "promote", "m:2", "--to", "eu-prod", "--create", *root]) == 0
    assert reg.aliases("m") == {"production": 1, "staging": 2, "eu-prod": 2}
    capsys.readouterr()
    assert cli.main(["models", "alias", "delete", "m", "eu-prod", "--reason", "typo",
                     "--json", *root]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert (entry["action"], entry["from"], entry["to"]) == ("delete", 2, None)
    assert reg.aliases("m") == {"production": 1, "staging": 2}
    assert reg.audit("m")[-1]["reason"] == "typo"
    assert cli.main(["models", "alias", "delete", "m", "eu-prod", *root]) == 2


def test_a_registry_that_does_not_exist_is_an_error(tmp_path, capsys):
    assert cli.main(["models", "list", "--registry", str(tmp_path / "nowhere")]) == 2
    assert "no model registry at" in capsys.readouterr().err


def test_diff_warns_when_versions_were_scored_on_different_data(tmp_path, capsys):
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for fingerprint, count in (("aaa", 250.0), ("bbb", 300.0)):
        reg.push("m", src, {**card(), "data": {"fingerprint": fingerprint},
                            "metrics": {"accuracy": 0.9, "example_count": count}})
    assert cli.main(["models", "diff", "m:1", "m:2", "--registry", reg.root]) == 0
    err = capsys.readouterr().err
    assert "different data" in err and "250 and 300 eval examples" in err
    reg.push("m", src, {**card(), "data": {"fingerprint": "bbb"},
                        "metrics": {"accuracy": 0.92, "example_count": 300.0}})
    assert cli.main(["models", "diff", "m:2", "m:3", "--registry", reg.root]) == 0
    assert "warning" not in capsys.readouterr().err


def test_mlflow_style_references_resolve_like_ours(tmp_path):
    from components.registry.refs import is_reference, normalize_reference

    reg = two_versions(tmp_path)
    assert reg.resolve("models:/m@production").version == 1
    assert reg.resolve("models:/m/2").version == 2
    assert normalize_reference("models:/m/2") == "m:2" and is_reference("models:/m@staging")
    assert not is_reference("models:/m") and normalize_reference("m@x") == "m@x"
    with pytest.raises(ConfigError, match="models:/NAME/VERSION"):
        reg.resolve("models:/m")


def test_pushing_the_same_model_again_neither_pushes_nor_records_a_promotion(tmp_path):
    """A cached rerun with push.promote_to: the model is already pushed and the alias
    already points at it, so the ledger gets no `X -> X` entry."""
    from components import artifacts
    from components.config.push import PushConfig
    from components.steps import push

    saved_model = artifacts.Model.SAVED_MODEL
    model = committed_artifact(tmp_path / "model", artifacts.Model,
                       {f"{saved_model}/{artifacts.SAVED_MODEL_PB}": "pb",
                        f"{saved_model}/variables/v": "w"},
                       {"kind": "dense"})
    blessing = committed_artifact(tmp_path / "blessing", artifacts.ModelBlessing, {
        artifacts.ModelBlessing.FILE: json.dumps({"blessed": True, "reason": "ok",
                                                  "baseline": None, "gate": "point",
                                                  "checks": []})}, {"blessed": True})
    infra = committed_artifact(tmp_path / "infra", artifacts.InfraBlessing, {
        artifacts.InfraBlessing.FILE: json.dumps({"passed": True, "reason": "served"})},
        {"passed": True})
    evaluation = committed_artifact(tmp_path / "evaluation", artifacts.ModelEvaluation, {
        artifacts.ModelEvaluation.FILE: json.dumps(
            {"metrics": {"slices": {"overall": {"accuracy": 0.9}}, "per_class": {}}})})
    statistics = committed_artifact(tmp_path / "statistics", artifacts.ExampleStatistics,
                            {artifacts.ExampleStatistics.FILE: json.dumps({"num_examples": 10})})
    cfg = PushConfig(destination=str(tmp_path / "serving"), model_name="m",
                     promote_to="staging")
    results = [push.run(model, blessing, infra, evaluation, statistics, cfg,
                        artifacts.ArtifactWriter(str(tmp_path / f"pushed{i}"),
                                                 artifacts.PushedModel, {"run_id": f"r{i}"}),
                        {}) for i in range(2)]
    assert results[0]["version"] == results[1]["version"] == 1
    assert results[1].get("already") and "already points at version 1" in results[1]["lines"][-1]
    reg = Registry(str(tmp_path / "serving"))
    assert [v.version for v in reg.versions("m")] == [1]
    assert [(e["alias"], e["from"], e["to"]) for e in reg.audit("m")] == [("staging", None, 1)]



def test_diff_and_audit_print_values_readably(tmp_path, capsys):
    """Per-split data fingerprints print per split (not a cut dict repr), a config key
    one side lacks and an alias before it existed print as none, never Python's None
    (issue 34, item 25)."""
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for digest, optimizer, best in (("73ab", None, {"train.learning_rate": 0.01}),
                                    ("14cd", "sgd", None)):
        reg.push("m", src, {**card(), "config": {"train": {"optimizer": optimizer,
                                                           "epochs": 3}},
                            "hyperparameters": {"best": best},
                            "data": {"fingerprint": {"eval": digest * 4, "train": "same"}},
                            "metrics": {"accuracy": 0.9, "example_count": 10.0}})
    reg.set_alias("m:1", "production")
    reg.delete_alias("m", "production")
    assert cli.main(["models", "diff", "m:1", "m:2", "--registry", reg.root]) == 0
    out, err = capsys.readouterr()
    assert "fingerprints eval 73ab73ab73ab and 14cd14cd14cd;" in err and "{" not in err
    assert "config train.optimizer: none -> 'sgd'" in out
    assert "tuned values: train.learning_rate 0.01 -> none" in out
    assert cli.main(["models", "show", "m:1", "--registry", reg.root]) == 0
    audit = [line for line in capsys.readouterr().out.splitlines() if "audit:" in line]
    assert any("@production (none) -> 1" in line for line in audit), audit
    assert not any("None" in line for line in audit), audit
