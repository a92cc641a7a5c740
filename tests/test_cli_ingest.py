"""`imgpipe run` / `runs` on real ingest: cache hits, content-based misses, runs show."""

import json

from pipeline import cli
from tests import fixtures


def write_config(tmp_path, source):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"name: clitest\ndata: {{source: {source}, eval_fraction: 0.2}}\n")
    return str(path)


def test_run_cache_and_runs_show(tmp_path, capsys):
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=10)
    cfg = write_config(tmp_path, tmp_path / "src")
    runs = str(tmp_path / "runs")
    assert cli.main(["run", cfg, "--until", "ingest", "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert "ingest     running  (no earlier execution of this step)" in out
    assert cli.main(["run", cfg, "--until", "ingest", "--runs-dir", runs]) == 0
    assert "reused from cache" in capsys.readouterr().out

    # touching a file without changing bytes keeps the cache (content, not mtimes)
    path = tmp_path / "src" / "cat" / "000.png"
    path.write_bytes(path.read_bytes())
    assert cli.main(["run", cfg, "--until", "ingest", "--runs-dir", runs]) == 0
    assert "1 reused from cache" in capsys.readouterr().out

    # a changed pixel is a new input: ingest reruns and says why
    (tmp_path / "src" / "cat" / "000.png").write_bytes(
        fixtures.png_bytes(fixtures.class_pattern(0, 555)))
    assert cli.main(["run", cfg, "--until", "ingest", "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert "inputs.source:" in out and "1 step(s) ran" in out

    assert cli.main(["runs", "list", "--runs-dir", runs]) == 0
    listing = capsys.readouterr().out
    assert listing.count("clitest") == 4 and "ingest*" in listing

    run_id = listing.splitlines()[1].split()[0]
    assert cli.main(["runs", "show", run_id, "--runs-dir", runs, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    step = info["steps"][0]
    assert step["step"] == "ingest" and step["status"] == "succeeded"
    assert "inputs.source" in step["decision"]
    assert set(step["outputs"]) == {"examples", "statistics"}
    assert step["outputs"]["examples"]["uri"].startswith(runs)

    assert cli.main(["runs", "show", run_id[:15] + "x", "--runs-dir", runs]) == 2
    assert "no run" in capsys.readouterr().err


def test_validation_defaults_pass_standard_data_and_stop_real_leaks(tmp_path, capsys):
    """No validate section: digits and fonts (hash splits) pass; a given split whose
    eval holds JPEG re-encodes of train images (~15% of eval) stops with exit 3."""
    runs = str(tmp_path / "runs")
    for source in ("builtin:digits", "builtin:fonts"):
        cfg = tmp_path / f"{source[8:]}.yaml"
        cfg.write_text(f"name: {source[8:]}\ndata: {{source: '{source}'}}\n")
        assert cli.main(["run", str(cfg), "--until", "validate", "--runs-dir", runs]) == 0, source
        assert "near_duplicate_leak" not in capsys.readouterr().out

    root = tmp_path / "given"
    fixtures.make_photo_folders(str(root / "train"), per_class=20)
    fixtures.make_photo_folders(str(root / "eval"), per_class=6, first=100)
    copies = {label: [0] for label in fixtures.CLASSES}   # 1 copy in 7 eval images a class
    fixtures.make_photo_folders(str(tmp_path / "copies"), per_class=0, jpeg_copies_of=copies)
    for label in fixtures.CLASSES:
        (tmp_path / "copies" / label / "copy-000.jpg").rename(root / "eval" / label / "c.jpg")
    cfg = tmp_path / "given.yaml"
    cfg.write_text(f"name: given\ndata: {{source: '{root}', channels: 3}}\n")
    assert cli.main(["run", str(cfg), "--until", "validate", "--runs-dir", runs]) == 3
    err = capsys.readouterr().err
    assert "near_duplicate_leak" in err and "3 of 21 eval images" in err
