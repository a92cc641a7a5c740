"""What the CLI writes with -o, and what it says: an output that would replace one of
the command's inputs, has the wrong suffix, would replace another kind of file or
cannot be written is refused before any work, in one line, losing nothing; Ctrl-C
says what is true for commands that record no run; `predict` reports every file of a
folder it does not read, and refuses a folder with nothing to read."""

import csv
import io
import os
import subprocess
import sys

import pytest

from pipeline import cli
from tests import fixtures
from tests.fixtures import file_tree, torn_writes

from tests import ROOT  # noqa: E402
EXAMPLE = os.path.join(ROOT, "deploy", "example.yaml")
PNG = fixtures.png_bytes(fixtures.class_pattern(0, 1))


def one_line_error(capsys, argv, code=2):
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgpipe: ") and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def fake_predict(monkeypatch):
    """predict_local without TensorFlow: every path it is given is a cat; the paths it
    was asked about are recorded (an empty record: no model was loaded)."""
    from components.inference import predict

    asked = []

    def run(saved_model, paths, batch_size, top_k, progress):
        asked.extend(paths)
        return [{"path": p, "class": "cat", "probability": 0.9, "top_k": [["cat", 0.9]]}
                for p in paths]

    monkeypatch.setattr(predict, "predict_local", run)
    return asked


def _files(tmp_path):
    """A config, an image, a link to it, a CSV that is not predictions, a model folder."""
    (tmp_path / "victim.png").write_bytes(PNG)
    os.symlink(tmp_path / "victim.png", tmp_path / "link.png")
    (tmp_path / "manifest.csv").write_text("path,label\nvictim.png,cat\n")
    (tmp_path / "model").mkdir()
    fixtures.make_class_folders(str(tmp_path / "src"), per_class=2)
    (tmp_path / "base.yaml").write_text(f"name: t\ndata: {{source: '{tmp_path / 'src'}'}}\n")
    (tmp_path / "C.yaml").write_bytes(open(EXAMPLE, "rb").read())


PREDICT = ["predict", "{t}/model", "{t}/victim.png", "-o"]


@pytest.mark.parametrize("argv,target,says", [
    (PREDICT + ["{t}/victim.png"], "victim.png", "one of this command's inputs"),
    (PREDICT + ["{t}/link.png"], "victim.png", "one of this command's inputs"),
    (["predict", "{t}/model", "{t}/manifest.csv", "-o", "{t}/manifest.csv"], "manifest.csv",
     "one of this command's inputs"),
    (PREDICT + ["{t}/out.txt"], "out.txt", "must end in .csv or .jsonl"),
    (PREDICT + ["{t}/manifest.csv"], "manifest.csv", "pass --force"),
    (PREDICT + ["{t}/victim.png", "--force"], "victim.png",
     "one of this command's inputs"),                     # --force never replaces an input
    (PREDICT + ["/proc/x.csv"], None, "cannot create a file in /proc"),
    (["schema", "infer", "{t}/base.yaml", "-o", "{t}/base.yaml"], "base.yaml",
     "one of this command's inputs"),
    (["schema", "infer", "{t}/base.yaml", "-o", "{t}/victim.png"], "victim.png",
     "must end in .pbtxt or .txt"),
    (["compile", "{t}/C.yaml", "-o", "{t}/C.yaml"], "C.yaml", "one of this command's inputs"),
    (["compile", "{t}/C.yaml", "-o", "{t}/base.yaml"], "base.yaml", "pass --force"),
    (["config", "schema", "-o", "{t}/victim.png"], "victim.png", "must end in .json"),
])
def test_an_output_that_would_lose_something_is_refused_before_any_work(
        tmp_path, capsys, fake_predict, argv, target, says):
    if target is None and not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")
    _files(tmp_path)
    argv = [a.format(t=tmp_path) for a in argv]
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)
              if (tmp_path / p).is_file()}
    err = one_line_error(capsys, argv)
    assert says in err and "imgpipe: error: -o " in err, err
    # nothing lost, nothing added, and no model loaded
    after = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)
             if (tmp_path / p).is_file()}
    assert after == before and (target is None or target in after or "must end" in err)
    assert fake_predict == []


@pytest.mark.parametrize("argv,output,starts", [
    (PREDICT + ["{t}/out.csv"], "out.csv", "path,class,probability"),
    (PREDICT + ["{t}/OUT.JSONL"], "OUT.JSONL", '{"path": '),
    (PREDICT + ["{t}/manifest.csv", "--force"], "manifest.csv", "path,class,probability"),
    (["config", "schema", "-o", "{t}/c.json"], "c.json", "{"),
    (["compile", "{t}/C.yaml", "-o", "{t}/base.yaml", "--force"], "base.yaml",
     "# PIPELINE DEFINITION"),
])
def test_an_output_of_its_kind_is_written_and_rewritten_atomically(
        tmp_path, capsys, fake_predict, argv, output, starts):
    """The first write, a rerun over the command's own earlier output (no --force), and
    --force over another kind of file; each leaves no temporary file beside it."""
    _files(tmp_path)
    argv = [a.format(t=tmp_path) for a in argv]
    for _ in range(2):
        assert cli.main(argv) == 0, capsys.readouterr().err
        assert (tmp_path / output).read_text().startswith(starts)
        assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".partial-" in p
                    or p.startswith(".imgpipe-probe-")]
    capsys.readouterr()


def _interrupt(monkeypatch, module, name):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, name, stop)


@pytest.mark.parametrize("total,eta", [(3, "ETA 4s"), (62, "ETA 2m 2s"),
                                       (136_801, "ETA 3d 4h"), (10 ** 18, "ETA >99d")])
def test_epoch_eta_for_long_runs_is_readable(monkeypatch, total, eta):
    """2 s an epoch: an ETA in minutes, days (3d 4h), and beyond 99 days only >99d,
    not a 19-digit count of seconds."""
    import time

    from components.trainer import training

    clock = iter([0.0, 2.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    progress = training.Progress(total, stream=stream)
    progress.on_epoch_begin(0)
    progress.on_epoch_end(0, {"loss": 0.5})
    assert stream.getvalue().rstrip().endswith(f"loss 0.5000  2.0s  {eta}"), stream.getvalue()


@pytest.mark.parametrize("case", ["export interrupted", "predict interrupted",
                                  "predict error", "summary"])
def test_messages_say_what_is_true_once(tmp_path, capsys, monkeypatch, fake_predict, case):
    from components.data import datasets
    from components.inference import predict
    from components.registry.versions import Registry

    _files(tmp_path)
    if case == "export interrupted":
        _interrupt(monkeypatch, datasets, "export")
        err = one_line_error(capsys, ["datasets", "export", "digits", str(tmp_path / "d")],
                             code=130)
        assert err == "imgpipe: interrupted (SIGINT); stopped; nothing was written."
    elif case == "predict interrupted":
        _interrupt(monkeypatch, predict, "predict_local")
        err = one_line_error(capsys, ["predict", str(tmp_path / "model"),
                                      str(tmp_path / "victim.png"), "-o",
                                      str(tmp_path / "p.csv")], code=130)
        assert err == "imgpipe: interrupted (SIGINT); stopped; nothing was written."
        assert not (tmp_path / "p.csv").exists()
    elif case == "predict error":
        # a pushed model, then an input that is not there: the error alone, no model line
        (tmp_path / "model" / "saved_model.pb").write_text("x")
        Registry(str(tmp_path / "serving")).push("late", str(tmp_path / "model"), {})
        err = one_line_error(capsys, ["predict", "late:1", str(tmp_path / "missing.png"),
                                      "--registry", str(tmp_path / "serving")])
        assert "missing.png does not exist" in err
    else:
        assert cli.main(["summary", "--model", "logistic", "--input-shape", "8,8,1",
                         "--classes", "3"]) == 0
        assert capsys.readouterr().out.count("Trainable params") == 1


def _rows(text):
    return {os.path.basename(r["path"]): r for r in csv.DictReader(io.StringIO(text))}


@pytest.mark.parametrize("files,code,says", [
    ({"a.txt": b"hello", "b.tiff": b"II*\x00", "sub/c.png": PNG, ".hidden.png": PNG},
     0, {"a.txt": "extension 'txt'", "b.tiff": "extension 'tiff'", "c.png": ""}),
    ({"notes": b"no extension", "d.PNG": PNG}, 0, {"notes": "extension '(none)'",
                                                    "d.PNG": ""}),
    ({}, 2, "holds no files"),
    ({"notes.txt": b"hello"}, 2, "without an image extension"),
])
def test_predict_reports_each_file_of_a_folder_it_does_not_read(
        tmp_path, capsys, fake_predict, files, code, says):
    (tmp_path / "model").mkdir()
    (tmp_path / "in" / "sub").mkdir(parents=True)
    fixtures.write_files(str(tmp_path / "in"), files)
    argv = ["predict", str(tmp_path / "model"), str(tmp_path / "in")]
    if code:
        err = one_line_error(capsys, argv, code=code)
        assert "no images to predict" in err and says in err
        assert fake_predict == []
        return
    assert cli.main(argv) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == set(says)                          # hidden files left out
    for name, error in says.items():
        assert error in rows[name]["error"] and bool(rows[name]["class"]) == (not error)
    assert [os.path.basename(p) for p in fake_predict] == [n for n, e in says.items()
                                                           if not e]


if sys.platform != "linux":          # pragma: no cover
    pytestmark = pytest.mark.skip("symlinks and /proc as on Linux")


# --- a full disk mid-write keeps the file that was there (issue 24, item 21) ----------


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
    assert len(file_tree(out)) == 1797


def test_a_failed_schema_infer_keeps_the_old_schema(tmp_path, monkeypatch, capsys):
    from pipeline import cli

    config = tmp_path / "c.yaml"
    config.write_text("name: s\ndata: {source: 'builtin:digits', image_size: [8, 8]}\n")
    out = tmp_path / "out" / "s.pbtxt"
    args = ["schema", "infer", str(config), "-o", str(out), "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(args) == 0
    before = file_tree(out.parent)
    assert "feature" in before["s.pbtxt"].decode()
    with torn_writes(monkeypatch, out.parent):
        assert cli.main(args) == 2                 # the statistics are reused, the write fails
    assert "no space left on the device" in capsys.readouterr().err
    assert file_tree(out.parent) == before


def test_a_failed_compile_keeps_the_old_package(tmp_path, monkeypatch, capsys):
    import yaml

    from pipeline import cli

    out = tmp_path / "out" / "pipeline.yaml"
    args = ["compile", os.path.join(ROOT, "configs", "digits.yaml"), "--set",
            "push.destination=gs://b/serving", "--set", "kfp.image=example.com/imgpipe:1",
            "-o", str(out)]
    assert cli.main(args) == 0
    before = file_tree(out.parent)
    assert "deploymentSpec" in yaml.safe_load(before["pipeline.yaml"])
    with torn_writes(monkeypatch, out.parent):
        assert cli.main(args) == 2
    assert "no space left on the device" in capsys.readouterr().err
    assert file_tree(out.parent) == before


def test_output_files_are_written_where_asked(tmp_path, capsys):
    target = tmp_path / "missing" / "dir" / "x.json"
    assert cli.main(["config", "schema", "-o", str(target)]) == 0
    assert target.is_file()
    fixtures.write_files(str(tmp_path / "out"), {"keep.txt": b"mine"})
    err = fixtures.one_line_error(capsys, ["datasets", "export", "digits", str(tmp_path / "out")])
    assert "not empty" in err and (tmp_path / "out" / "keep.txt").read_bytes() == b"mine"


def test_a_closed_pipe_ends_quietly():
    proc = subprocess.run(f"{sys.executable} -m pipeline.cli config schema | head -1",
                          shell=True, cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "{" and proc.stderr == ""
