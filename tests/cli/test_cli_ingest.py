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


def test_schema_infer_says_whether_it_runs_ingest_or_reuses_a_run(tmp_path, capsys):
    """No run with statistics for this config's data: ingest runs first, and it says so
    (the run is on record). Then the same command reuses that run's statistics, names
    it, and starts no run; changed data runs ingest again and says what changed."""
    from pipeline.metadata import MetadataStore

    fixtures.make_class_folders(str(tmp_path / "src"), per_class=8)
    cfg = write_config(tmp_path, tmp_path / "src")
    runs = str(tmp_path / "runs")
    out_path = str(tmp_path / "s.pbtxt")
    assert cli.main(["schema", "infer", cfg, "--runs-dir", runs, "-o", out_path]) == 0
    out = capsys.readouterr().out
    assert "running ingest first: no run under" in out
    assert "(no earlier execution of this step)" in out and "ingest     done" in out
    [run] = MetadataStore(f"{runs}/metadata.sqlite", read_only=True).list_runs()
    assert f"wrote {out_path} (3 classes, from the statistics of run {run['id']})" in out
    assert f"from the statistics of run {run['id']}" in open(out_path).read()

    result = json.loads(_json_run(capsys, ["schema", "infer", cfg, "--runs-dir", runs,
                                           "-o", out_path, "--json"]))
    assert result["ran_ingest"] is False and result["run_id"] == run["id"]
    assert result["classes"] == ["cat", "dog", "fox"]
    assert len(MetadataStore(f"{runs}/metadata.sqlite", read_only=True).list_runs()) == 1
    assert cli.main(["schema", "infer", cfg, "--runs-dir", runs, "-o", out_path]) == 0
    assert f"using the statistics of run {run['id']}" in capsys.readouterr().out

    fixtures.make_class_folders(str(tmp_path / "src"), per_class=1, first=50)   # new images
    assert cli.main(["schema", "infer", cfg, "--runs-dir", runs, "-o", out_path]) == 0
    out = capsys.readouterr().out
    assert "running ingest first" in out and "inputs.source" in out
    assert len(MetadataStore(f"{runs}/metadata.sqlite", read_only=True).list_runs()) == 2


def _json_run(capsys, argv):
    """stdout of a --json command; its notes went to stderr."""
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "using the statistics of run" in captured.err
    return captured.out
