"""Artifacts: manifest written last, killed writes leave nothing readable."""

import json
import os
import signal
import subprocess
import sys

import pytest

from components import artifacts
from components.errors import ArtifactError

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_commit_then_read(tmp_path):
    uri = str(tmp_path / "examples")
    with artifacts.writing(uri, artifacts.Examples, {"run_id": "r1"}) as writer:
        with open(writer.file("train.txt"), "w") as handle:
            handle.write("hello")
        writer.properties = {"counts": {"train": 1}}
        art = writer.commit()
    assert art.type == "Examples"
    assert art.properties == {"counts": {"train": 1}}
    assert art.producer == {"run_id": "r1"}
    assert open(art.path("train.txt")).read() == "hello"
    assert artifacts.read(uri, artifacts.Examples).fingerprint == art.fingerprint
    with pytest.raises(ArtifactError, match="holds a Examples artifact, expected Model"):
        artifacts.read(uri, artifacts.Model)


def test_fingerprint_is_content_not_location(tmp_path):
    prints = []
    for name in ("a", "b"):
        with artifacts.writing(str(tmp_path / name), "ExampleStatistics") as writer:
            with open(writer.file(artifacts.ExampleStatistics.FILE), "w") as handle:
                handle.write('{"n": 1}')
            prints.append(writer.commit().fingerprint)
    assert prints[0] == prints[1]
    with artifacts.writing(str(tmp_path / "c"), "ExampleStatistics") as writer:
        with open(writer.file(artifacts.ExampleStatistics.FILE), "w") as handle:
            handle.write('{"n": 2}')
        assert writer.commit().fingerprint != prints[0]


def test_directory_without_manifest_is_rejected(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "data.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not a committed artifact"):
        artifacts.read(str(tmp_path / "half"))
    (tmp_path / "half" / artifacts.MANIFEST_NAME).write_text(json.dumps({"type": "Examples"}))
    with pytest.raises(ArtifactError, match="incomplete"):
        artifacts.read(str(tmp_path / "half"))


def test_exception_inside_writer_leaves_nothing(tmp_path):
    uri = str(tmp_path / "model")
    with pytest.raises(RuntimeError):
        with artifacts.writing(uri, artifacts.Model) as writer:
            open(writer.file("weights"), "w").write("partial")
            raise RuntimeError("training crashed")
    assert not artifacts.is_committed(uri)
    assert os.listdir(tmp_path) == []


def test_killed_writer_leaves_nothing_readable(tmp_path):
    uri = str(tmp_path / "examples")
    script = f"""
import sys, time
sys.path.insert(0, {ROOT!r})
from components import artifacts
writer = artifacts.ArtifactWriter({uri!r}, "Examples")
open(writer.file("part-0"), "w").write("x" * 1000)
print("written", flush=True)
time.sleep(60)
writer.commit()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not artifacts.is_committed(uri)
    with pytest.raises(ArtifactError):
        artifacts.read(uri)
    # The next writer to the same place starts clean and commits normally.
    with artifacts.writing(uri, "Examples") as writer:
        open(writer.file("part-0"), "w").write("complete")
        art = writer.commit()
    assert open(art.path("part-0")).read() == "complete"
    assert os.listdir(tmp_path) == ["examples"]


def test_committed_artifacts_are_immutable(tmp_path):
    uri = str(tmp_path / "a")
    with artifacts.writing(uri, "Schema") as writer:
        writer.commit()
    with pytest.raises(ArtifactError, match="immutable"):
        artifacts.ArtifactWriter(uri, "Schema")


def test_unknown_type_is_rejected(tmp_path):
    with pytest.raises(ArtifactError, match="unknown artifact type"):
        artifacts.ArtifactWriter(str(tmp_path / "x"), "Banana")


def _renamed(uri, old_type):
    """Rewrites a committed manifest's type to the name an older imgpipe wrote."""
    path = os.path.join(uri, artifacts.MANIFEST_NAME)
    manifest = json.load(open(path))
    manifest["type"] = old_type
    with open(path, "w") as handle:
        json.dump(manifest, handle)


@pytest.mark.parametrize("new, old, file", [
    ("ExampleStatistics", "Statistics", artifacts.ExampleStatistics.FILE),
    ("ExampleAnomalies", "Anomalies", artifacts.ExampleAnomalies.FILE),
    ("ModelEvaluation", "Evaluation", artifacts.ModelEvaluation.FILE),
    ("ModelBlessing", "Blessing", artifacts.ModelBlessing.FILE),
    ("InfraBlessing", "Blessing", artifacts.InfraBlessing.FILE),
])
def test_manifests_with_the_old_type_names_still_read(tmp_path, new, old, file):
    """Artifacts written before TFX's type names (Statistics, Anomalies, Evaluation,
    Blessing) read as their TFX type, whether asked for by the new name (a step's
    declaration) or by the old one (an older metadata row)."""
    uri = str(tmp_path / "a")
    with artifacts.writing(uri, new) as writer:
        with open(writer.file(file), "w") as handle:
            handle.write("{}")
        writer.commit()
    _renamed(uri, old)
    assert artifacts.read(uri, getattr(artifacts, new)).type == new
    assert artifacts.read(uri, old).type == new
    assert artifacts.read(uri).type == new
    other = "InfraBlessing" if new == "ModelBlessing" else "ModelBlessing"
    with pytest.raises(ArtifactError, match=f"holds a {new} artifact, expected {other}"):
        artifacts.read(uri, other)


def test_old_type_names_cannot_be_written(tmp_path):
    with pytest.raises(ArtifactError, match="unknown artifact type 'Blessing'"):
        artifacts.writing(str(tmp_path / "b"), "Blessing").__enter__()
