"""Registry bad input (issue 24): links out of the root, rollbacks audited as what the
user asked for, model cards with values of the wrong type, aliases whose version
folder is gone, and the `models` listings a user reads (list, diff, repair)."""

import json
import os
import shutil

import pytest

from components import artifacts
from components.registry.versions import Registry
from pipeline import cli
from tests.fixtures import card, fake_saved_model


def registry_with_links(tmp_path, link):
    """m:1, m:2 (production on m:1) and late:1 in tmp_path/serving, x:1 in another
    registry, and a link out of the first one to it: a version folder (late/3) or a
    whole model folder (linked)."""
    root = tmp_path / "serving"
    reg = Registry(str(root))
    src = fake_saved_model(tmp_path / "sm")
    for name in ("m", "m", "late"):
        reg.push(name, src, card())
    reg.set_alias("m:1", "production")
    Registry(str(tmp_path / "elsewhere")).push("x", src, card())
    if link == "version":
        os.symlink(tmp_path / "elsewhere" / "x" / "1", root / "late" / "3")
        return reg, "late:3", str(root / "late" / "3")
    os.symlink(tmp_path / "elsewhere" / "x", root / "linked")
    return reg, "linked:1", str(root / "linked")


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("link", ["version", "model"])
def test_models_list_skips_a_link_out_of_the_registry_with_a_warning(tmp_path, capsys, link):
    reg, ref, path = registry_with_links(tmp_path, link)
    assert cli.main(["models", "list", "--registry", reg.root, "--json"]) == 0
    captured = capsys.readouterr()
    assert [row["ref"] for row in json.loads(captured.out)] == ["late:1", "m:1", "m:2"]
    warning = one_line(captured.err)
    assert warning.startswith("imgpipe: warning: ") and path in warning
    assert str(tmp_path / "elsewhere") in warning and "remove the link" in warning


@pytest.mark.parametrize("link", ["version", "model"])
@pytest.mark.parametrize("command", [
    ["models", "show", "{ref}"], ["models", "promote", "{ref}", "--to", "production"],
    ["models", "promote", "{ref}", "--to", "production", "--force"],
    ["models", "diff", "m:1", "{ref}"], ["predict", "{ref}", "{image}"]])
def test_a_link_out_of_the_registry_is_refused(tmp_path, capsys, link, command):
    reg, ref, path = registry_with_links(tmp_path, link)
    image = tmp_path / "a.png"
    image.write_bytes(b"not read: the model is refused first")
    args = [part.format(ref=ref, image=image) for part in command]
    assert cli.main([*args, "--registry", reg.root]) == 2
    error = one_line(capsys.readouterr().err)
    assert error.startswith("imgpipe: error: ") and path in error
    assert "outside the registry" in error and "remove the link" in error
    assert reg.aliases("m") == {"production": 1} and len(reg.audit("m")) == 1
    assert os.path.isdir(tmp_path / "elsewhere" / "x" / "1")     # nothing lost


def test_a_baseline_behind_a_link_out_of_the_registry_stops_the_run(tmp_path, capsys):
    reg, _, _ = registry_with_links(tmp_path, "version")
    version_one = tmp_path / "serving" / "m" / "1"
    shutil.rmtree(version_one)
    os.symlink(tmp_path / "elsewhere" / "x" / "1", version_one)   # production: m:1
    config = tmp_path / "c.yaml"
    config.write_text(f"name: m\ndata: {{source: builtin:digits}}\n"
                      f"push: {{destination: '{reg.root}'}}\n")
    assert cli.main(["run", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    error = one_line(capsys.readouterr().err)
    assert str(version_one) in error and "remove the link" in error


@pytest.mark.parametrize("target", ["dangling", "elsewhere"])
def test_a_link_taking_the_next_number_is_skipped_by_a_push(tmp_path, target):
    reg, _, _ = registry_with_links(tmp_path, "version")
    link = tmp_path / "serving" / "m" / "3"
    os.symlink(tmp_path / ("nothing" if target == "dangling" else "elsewhere/x/1"), link)
    assert reg.push("m", str(tmp_path / "sm"), card()).version == 4
    assert os.path.islink(link) and [v.version for v in reg.versions("m")] == [1, 2, 4]


def test_a_link_inside_the_registry_is_served(tmp_path, capsys):
    reg, _, _ = registry_with_links(tmp_path, "version")
    os.symlink(tmp_path / "serving" / "m" / "2", tmp_path / "serving" / "late" / "5")
    assert reg.resolve("late:5").path == str(tmp_path / "serving" / "late" / "5")
    assert cli.main(["models", "list", "late", "--registry", reg.root, "--json"]) == 0
    assert [r["ref"] for r in json.loads(capsys.readouterr().out)] == ["late:1", "late:5"]


# --- rollbacks are not forced ---------------------------------------------------------


def rolled_back(tmp_path, how):
    """m:1, m:2 blessed, m:3 not; production m:1 -> m:2 -> rolled back to m:1, and m:3
    force-promoted to staging."""
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for blessed in (True, True, False):
        reg.push("m", src, card(blessed=blessed))
    reg.set_alias("m:1", "production")
    reg.set_alias("m:2", "production")
    reg.set_alias("m:3", "staging", force=True)
    if how == "api":
        reg.rollback("m", "production")
    else:
        assert cli.main(["models", "rollback", "m", "--alias", "production",
                         "--registry", reg.root]) == 0
    return reg


@pytest.mark.parametrize("how", ["api", "cli"])
def test_a_rollback_is_audited_as_not_forced(tmp_path, capsys, how):
    reg = rolled_back(tmp_path, how)
    assert [(e["action"], e["to"], e["force"]) for e in reg.audit("m")] == [
        ("promote", 1, False), ("promote", 2, False), ("promote", 3, True),
        ("rollback", 1, False)]
    capsys.readouterr()
    assert cli.main(["models", "show", "m@production", "--registry", reg.root]) == 0
    audit = [line for line in capsys.readouterr().out.splitlines() if "audit:" in line]
    assert len(audit) == 2 and "rollback" in audit[1] and "(forced)" not in "".join(audit)
    assert cli.main(["models", "show", "m@staging", "--registry", reg.root]) == 0
    assert "(forced)" in capsys.readouterr().out          # a forced promote still says so


def test_a_rollback_recorded_forced_by_an_older_imgpipe_is_not_shown_forced(tmp_path, capsys):
    reg = rolled_back(tmp_path, "api")
    ledger = tmp_path / "serving" / "m" / "audit.jsonl"
    lines = ledger.read_text().splitlines()
    old = dict(json.loads(lines[-1]), force=True)          # as it was written before
    ledger.write_text("\n".join(lines[:-1] + [json.dumps(old)]) + "\n")
    assert cli.main(["models", "show", "m@production", "--registry", reg.root]) == 0
    out = capsys.readouterr().out
    assert "rollback" in out and "(forced)" not in out


# --- model cards with values of the wrong type ----------------------------------------


def damage(card_path, change):
    data = json.loads(open(card_path).read())
    change(data)
    open(card_path, "w").write(json.dumps(data))


@pytest.mark.parametrize("change, named", [
    (lambda c: c["metrics"].update(accuracy="high"), "metrics.accuracy is 'high'"),
    (lambda c: c["metrics"].update(example_count=[346]), "metrics.example_count is [346]"),
    (lambda c: c.update(metrics="fine"), "metrics is 'fine'"),
    (lambda c: c.update(per_class={"0": {"recall": "good"}}), "per_class.0.recall is 'good'"),
    (lambda c: c.update(per_class={"0": 0.5}), "per_class.0 is 0.5"),
    (lambda c: c.update(pushed="yesterday"), "pushed is 'yesterday'"),
])
def test_a_card_value_of_the_wrong_type_is_damaged_not_a_crash(tmp_path, capsys, change,
                                                                named):
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for _ in range(3):
        reg.push("m", src, card())
    reg.set_alias("m:2", "production")
    card_path = os.path.join(reg.get("m", 2).path, artifacts.PushedModel.CARD)
    damage(card_path, change)
    root = ["--registry", reg.root]
    assert cli.main(["models", "list", *root]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:]] == ["m:1", "m:2", "m:3"]
    assert "DAMAGED" in out[2] and named in out[2] and "production" not in out[1] + out[3]
    for command in (["models", "show", "m@production"], ["models", "diff", "m:1", "m:2"],
                    ["models", "promote", "m:2", "--to", "staging"]):
        assert cli.main([*command, *root]) in (2, 4)
        error = one_line(capsys.readouterr().err)
        assert card_path in error and named in error
    assert cli.main(["models", "promote", "m:2", "--to", "staging", "--force", *root]) == 0


@pytest.mark.parametrize("checks", [
    [{"check": "accuracy (overall)", "value": "high", "verdict": "pass"}],
    [{"check": "accuracy (overall)"}], ["accuracy"], "all passed"])
def test_models_show_prints_blessing_checks_it_cannot_fully_read(tmp_path, capsys, checks):
    reg = Registry(str(tmp_path / "serving"))
    reg.push("m", fake_saved_model(tmp_path / "sm"),
             {**card(), "blessing": {"blessed": True, "reason": "ok", "checks": checks}})
    assert cli.main(["models", "show", "m:1", "--registry", reg.root]) == 0
    assert "blessing: blessed" in capsys.readouterr().out


def test_models_show_prints_a_minimal_ledger_line(tmp_path, capsys):
    reg = Registry(str(tmp_path / "serving"))
    reg.push("m", fake_saved_model(tmp_path / "sm"), card())
    (tmp_path / "serving" / "m" / "audit.jsonl").write_text('{"alias": "production", "to": 1}\n')
    assert cli.main(["models", "show", "m@production", "--registry", reg.root]) == 0
    out = capsys.readouterr().out
    assert "audit: ? ? promote @production (none) -> 1" in out
    assert "None" not in out          # Python's None is printed as the CLI's "-"/(none)


# --- an alias whose version folder is gone ---------------------------------------------


def alias_on_a_gone_version(tmp_path, how):
    """m:1..m:3, production and canary on m:1, staging on m:3; then m:1's folder goes
    (removed, or only its saved_model.pb)."""
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for _ in range(3):
        reg.push("m", src, card())
    reg.set_alias("m:1", "production")
    reg.set_alias("m:1", "canary")
    reg.set_alias("m:3", "staging")
    folder = tmp_path / "serving" / "m" / "1"
    if how == "deleted":
        shutil.rmtree(folder)
    else:
        os.remove(folder / "saved_model.pb")       # half deleted: not a version
    return reg, str(folder)


@pytest.mark.parametrize("how", ["deleted", "half deleted"])
def test_models_list_shows_an_alias_whose_version_is_gone(tmp_path, capsys, how):
    reg, folder = alias_on_a_gone_version(tmp_path, how)
    assert cli.main(["models", "list", "--registry", reg.root]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:]] == ["m:1", "m:2", "m:3"]
    assert "canary -> 1 (missing)" in out[1] and "production -> 1 (missing)" in out[1]
    assert folder in out[1] and "imgpipe models promote m:N --to canary" in out[1]
    assert out[3].endswith("staging")
    assert cli.main(["models", "list", "m", "--registry", reg.root, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["missing"] and rows[0]["aliases"] == ["canary", "production"]


@pytest.mark.parametrize("how", ["deleted", "half deleted"])
@pytest.mark.parametrize("command", [
    ["models", "show", "m@production"], ["predict", "m@production", "{image}"],
    ["models", "promote", "m@production", "--to", "staging"],
    ["models", "diff", "m@production", "m:3"]])
def test_resolving_an_alias_whose_version_is_gone_names_the_alias_and_the_fix(
        tmp_path, capsys, how, command):
    reg, folder = alias_on_a_gone_version(tmp_path, how)
    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    args = [part.format(image=image) for part in command]
    assert cli.main([*args, "--registry", reg.root]) == 2
    error = one_line(capsys.readouterr().err)
    assert "m@production points at version 1" in error and folder in error
    assert "imgpipe models promote m:N --to production" in error and "versions: 2, 3" in error
    assert reg.aliases("m") == {"production": 1, "canary": 1, "staging": 3}


def test_a_run_whose_baseline_version_is_gone_says_which_alias(tmp_path, capsys):
    reg, folder = alias_on_a_gone_version(tmp_path, "deleted")
    config = tmp_path / "c.yaml"
    config.write_text(f"name: m\ndata: {{source: builtin:digits}}\n"
                      f"push: {{destination: '{reg.root}'}}\n")
    assert cli.main(["run", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    error = one_line(capsys.readouterr().err)
    assert "m@production points at version 1" in error and folder in error
    assert "imgpipe models promote m:N --to production" in error


def test_a_rollback_to_a_version_that_is_gone_says_so(tmp_path, capsys):
    reg, folder = alias_on_a_gone_version(tmp_path, "deleted")
    reg.set_alias("m:2", "production")
    assert cli.main(["models", "rollback", "m", "--alias", "production",
                     "--registry", reg.root]) == 2
    error = one_line(capsys.readouterr().err)
    assert "back to version 1" in error and folder in error and "promote m:N" in error
    assert reg.aliases("m")["production"] == 2


def test_models_repair_warns_about_an_alias_whose_version_is_gone(tmp_path, capsys):
    reg, _ = alias_on_a_gone_version(tmp_path, "deleted")
    assert cli.main(["models", "repair", "m", "--registry", reg.root]) == 0
    err = capsys.readouterr().err
    assert "m@production points at version 1" in err and "promote m:N --to production" in err


# --- what `models list/diff/repair` print ----------------------------------------------


@pytest.mark.parametrize("asked", ["NOSUCH", "empty"])
def test_models_list_of_a_model_without_versions_names_the_ones_there(tmp_path, capsys, asked):
    reg = Registry(str(tmp_path / "serving"))
    for name in ("digits", "fonts"):
        reg.push(name, fake_saved_model(tmp_path / name), card())
    (tmp_path / "serving" / "empty").mkdir()               # e.g. a failed first push
    assert cli.main(["models", "list", asked, "--registry", reg.root]) == 0
    out = capsys.readouterr().out
    assert f"model {asked!r} has no pushed versions" in out and "no pushed models" not in out
    assert "digits, " in out and "fonts" in out
    assert cli.main(["models", "list", "--registry", str(tmp_path / "serving")]) == 0
    assert "digits:1" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["m", "digits-daily-experiment"])
def test_models_diff_prints_counts_whole_in_aligned_columns(tmp_path, capsys, name):
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for accuracy, count, recall in ((0.9, 346.0, 0.5), (0.95, 1200.0, 0.75)):
        reg.push(name, src, {**card(), "metrics": {"accuracy": accuracy, "example_count": count,
                                                   "top_k_accuracy": 1.0},
                             "per_class": {"0": {"recall": recall, "precision": 0.9,
                                                 "f1_score": recall},
                                           "a-long-class-name": {"recall": None}}})
    for _ in range(9):
        reg.push(name, src, card())
    assert cli.main(["models", "diff", f"{name}:1", f"{name}:2", "--registry", reg.root]) == 0
    metrics, per_class = capsys.readouterr().out.split("\n\n")
    lines = metrics.splitlines()
    assert lines[1].split() == ["accuracy", "0.9000", "0.9500", "+0.0500"]
    assert lines[2].split() == ["example_count", "346", "1,200", "+854"]
    assert lines[3].split() == ["top_k_accuracy", "1.0000", "1.0000", "+0.0000"]
    assert len({len(line) for line in lines}) == 1, metrics      # right edges line up
    rows = per_class.splitlines()
    assert len({len(line) for line in rows}) == 1, per_class
    assert "0.5000 -> 0.7500" in rows[1]
    assert cli.main(["models", "diff", f"{name}:1", f"{name}:11", "--registry", reg.root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len({len(line) for line in lines[:4]}) == 1 and f"{name}:11" in lines[0]


@pytest.mark.parametrize("view, said", [
    (None, ["m: aliases.json already matches the ledger (2 aliases)",
            "  production: version 1", "  staging: version 2"]),
    ('{"production": 2, "old": 1}', ["m: aliases.json rewritten from the ledger (audit.jsonl)",
                                     "  old: version 1 -> (none)",
                                     "  production: version 2 -> version 1",
                                     "  staging: (none) -> version 2"]),
    ("{damaged", ["m: aliases.json rewritten from the ledger (audit.jsonl); it was damaged",
                  "  production: version 1", "  staging: version 2"]),
])
def test_models_repair_prints_readable_lines(tmp_path, capsys, view, said):
    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for _ in range(2):
        reg.push("m", src, card())
    reg.set_alias("m:1", "production")
    reg.set_alias("m:2", "staging")
    if view is not None:
        (tmp_path / "serving" / "m" / "aliases.json").write_text(view)
    assert cli.main(["models", "repair", "m", "--registry", reg.root]) == 0
    assert capsys.readouterr().out.splitlines() == said
    assert json.load(open(tmp_path / "serving" / "m" / "aliases.json")) == {
        "production": 1, "staging": 2}


# A child process that pushes SRC into REGISTRY and prints the CLI's line for its failure.
_PUSH = """
import json, sys
from components.registry.versions import Registry
from pipeline import cli
try:
    Registry(sys.argv[1]).push("m", sys.argv[2], json.loads(sys.argv[3]))
except Exception as exc:
    print(cli.storage_error(exc))
    sys.exit(3)
"""


@pytest.mark.parametrize("disk", ["a small disk", "a file size limit"])
def test_a_push_onto_a_full_registry_names_the_registry(tmp_path, disk):
    """A registry whose disk fills during the copy (a tiny tmpfs where the tests may
    mount one; else a file size limit, EFBIG): the line names the file being written in
    the registry, not the model being copied from; nothing is left half pushed (issue
    34, item 15)."""
    import subprocess
    import sys

    from tests import ROOT
    from tests.fixtures import size_limited, small_disk

    src = fake_saved_model(tmp_path / "run" / "trained_model")
    with open(os.path.join(src, "variables", "variables.data-00000-of-00001"), "wb") as handle:
        handle.write(os.urandom(400 * 1024))
    with small_disk(tmp_path / "disk", 160) as mounted:
        if disk == "a small disk" and mounted is None:
            pytest.skip("mounting a tmpfs needs root")
        root = os.path.join(mounted if disk == "a small disk" else str(tmp_path), "serving")
        proc = subprocess.run([sys.executable, "-c", _PUSH, root, src, json.dumps(card())],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              preexec_fn=None if disk == "a small disk" else size_limited(200))
        assert proc.returncode == 3, proc.stderr
        line = proc.stdout.strip()
        assert line.startswith("no space left on the device writing " if disk == "a small disk"
                               else "a file grew past the size this system allows"), line
        assert f"writing {root}/m/" in line and str(tmp_path / "run") not in line, line
        assert Registry(root).versions("m") == []
        assert [e for e in os.listdir(os.path.join(root, "m")) if e.startswith(".push-")
                and not e.endswith(".lock")] == []
