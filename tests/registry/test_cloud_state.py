"""State kept in the cloud between attempts and runs: artifact manifests on gs:// made
from the store's own checksums (no object read back), a retried KFP task's scratch
folder, and pushed versions kept in step with Vertex AI Model Registry across failed
uploads. gs:// runs against the fake GCS server (tests/conftest.py's on_fake); Vertex
against a fake client module checked against the real library's signatures
(tests/fake_vertex.py)."""

from __future__ import annotations

import json

import pytest

from tests.fixtures import push_inputs


@pytest.fixture
def downloads(monkeypatch):
    """The names of the objects whose bytes are downloaded (every read of an object's
    content, whole or in ranges, goes through Blob._do_download)."""
    from google.cloud.storage import blob

    names: list[str] = []
    real = blob.Blob._do_download

    def recording(self, *args, **kwargs):
        names.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(blob.Blob, "_do_download", recording)
    return names


# --- 8: manifests from the object store's checksums -----------------------------------


def test_committing_on_gcs_reads_no_object_and_verify_catches_a_change(on_fake, downloads):
    from components import artifacts
    from components.io import fileio

    uri = f"{on_fake}/cloud-state/runs/r1/ingest/examples"
    with artifacts.writing(uri, "Examples") as writer:
        for split in artifacts.SPLITS:
            fileio.write_bytes(writer.file(split, "part-0.tfrecord.gz"), split.encode() * 1000)
    art = artifacts.read(uri)
    # only the manifest itself was read (by the commit's own read-back), no content
    assert downloads and set(downloads) == {"cloud-state/runs/r1/ingest/examples/artifact.json"}
    entry = art.files["train/part-0.tfrecord.gz"]
    assert set(entry) == {"size", "crc32c"} and entry["size"] == 5000
    assert art.fingerprint == artifacts.fingerprint_files(art.files)

    downloads.clear()
    assert artifacts.verify(art)[0] == []
    fileio.write_bytes(f"{uri}/train/part-0.tfrecord.gz", b"x" * 5000)     # same size
    assert artifacts.verify(art)[0] == [
        "train/part-0.tfrecord.gz changed since it was written (content differs)"]
    fileio.rmtree(f"{uri}/eval")
    assert "eval/part-0.tfrecord.gz is missing" in artifacts.verify(art)[0]
    assert downloads == []                                    # verified from listings


def test_a_sha256_manifest_on_gcs_still_verifies_like_with_like(on_fake, monkeypatch):
    """Manifests written before the store's checksums were used hold SHA-256 for gs://
    files too: those are still compared with the SHA-256 of the bytes."""
    from components import artifacts
    from components.io import fileio

    uri = f"{on_fake}/cloud-state/old/model"
    graph = f"{artifacts.Model.SAVED_MODEL}/{artifacts.SAVED_MODEL_PB}"
    with monkeypatch.context() as old:
        old.setattr(fileio, "stored_checksums", lambda root: None)
        with artifacts.writing(uri, "Model") as writer:
            fileio.write_text(writer.file(artifacts.Model.SAVED_MODEL, artifacts.SAVED_MODEL_PB),
                              "graph")
    art = artifacts.read(uri)
    assert set(art.files[graph]) == {"size", "sha256"}
    assert artifacts.verify(art)[0] == []
    fileio.write_text(f"{uri}/{graph}", "GRAPH")
    assert artifacts.verify(art)[0] == [
        f"{graph} changed since it was written (content differs)"]


def test_local_manifests_keep_sha256(tmp_path):
    import hashlib

    from components import artifacts

    uri = str(tmp_path / "model")
    with artifacts.writing(uri, "Model") as writer:
        with open(writer.file(artifacts.Model.FILE), "w") as handle:
            handle.write("{}")
    art = artifacts.read(uri)
    assert art.files == {artifacts.Model.FILE: {"size": 2,
                                                "sha256": hashlib.sha256(b"{}").hexdigest()}}
    assert artifacts.verify(art)[0] == []


# --- 14: a retried KFP task resumes from its scratch folder ---------------------------


def test_epoch_log_round_trip_on_gcs(on_fake):
    from components.io import fileio
    from components.trainer import training

    path = f"{on_fake}/cloud-state/run/train/task-scratch/{training.EPOCH_LOG}"
    assert training.read_epoch_log(path) == {}                      # nothing logged yet
    log = training.EpochLog(path, phase=1)
    log.on_epoch_end(0, {"loss": 0.9, "accuracy": 0.5})
    log.on_epoch_end(1, {"loss": 0.7, "accuracy": 0.6})
    training.EpochLog(path, phase=1).on_epoch_end(1, {"loss": 0.6, "accuracy": 0.65})  # rerun
    assert training.read_epoch_log(path) == {"loss": [0.9, 0.6], "accuracy": [0.5, 0.65],
                                             "phase": [1.0, 1.0]}
    assert fileio.read_text(path).count("\n") == 3


def test_a_retried_scratch_task_gets_the_same_scratch_folder_under_the_pipeline_root(
        on_fake, monkeypatch):
    """A retry of a train task is given the same output URIs; its scratch folder is
    beside them, so the retry finds what the failed attempt left (the epoch log,
    checkpoints) while its outputs start clean."""
    from types import SimpleNamespace

    from components import artifacts
    from components.io import fileio
    from components.trainer import training
    from pipeline import config as config_lib
    from pipeline import dag, invoke
    from pipeline.kfp import entrypoint as kfp_entry

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(kfp_entry, "_exit_without_teardown", lambda: None)
    task = f"{on_fake}/cloud-state/root/123/job-1/train-7"
    kfp_artifacts = {}
    for name, kind in (("transform_graph", "TransformGraph"), ("examples", "Examples"),
                       ("hyperparameters", "HyperParameters")):
        uri = f"{on_fake}/cloud-state/root/123/job-1/{name}-upstream/{name}"
        with artifacts.writing(uri, kind) as writer:
            fileio.write_text(writer.file("x.json"), "{}")
        kfp_artifacts[name] = SimpleNamespace(path="/unused", uri=uri, metadata={})
    kfp_artifacts["trained_model"] = SimpleNamespace(
        path="/unused", uri=f"{task}/trained_model", metadata={})
    seen = []

    def attempt(node, resolved, inputs, outputs, producer, scratch=None):
        seen.append((scratch, training.read_epoch_log(f"{scratch}/{training.EPOCH_LOG}"),
                     fileio.exists(f"{outputs['trained_model']}/half-written")))
        if len(seen) == 1:                                 # the first attempt dies
            training.EpochLog(f"{scratch}/{training.EPOCH_LOG}").on_epoch_end(0, {"loss": 1.0})
            fileio.write_text(f"{outputs['trained_model']}/half-written", "x")
            raise RuntimeError("preempted")
        with artifacts.writing(outputs["trained_model"], "Model") as writer:
            fileio.write_text(writer.file(artifacts.Model.FILE), "{}")
        return {"lines": []}

    monkeypatch.setattr(invoke, "call", attempt)
    step_cfg = json.dumps(invoke.step_config(dag.get("train"), config_lib.load(None)))
    for _ in range(2):
        try:
            kfp_entry.run_step("train", step_cfg, "", "job-1", kfp_artifacts, {}, {}, {})
        except RuntimeError:
            pass
    assert [s for s, _, _ in seen] == [f"{task}/task-scratch"] * 2     # beside the outputs
    assert seen[0][1:] == ({}, False)
    assert seen[1][1:] == ({"loss": [1.0], "phase": [1.0]}, False)  # resumed, outputs wiped
    assert kfp_artifacts["trained_model"].metadata["artifact_type"] == "Model"


# --- 10: pushed versions kept in step with Vertex AI Model Registry -------------------


def _push(tmp_path, inputs, attempt):
    from components import artifacts
    from components.config.push import PushConfig, VertexPushConfig
    from components.steps import push

    cfg = PushConfig(destination=str(tmp_path / "serving"), model_name="m",
                     promote_to="staging", vertex=VertexPushConfig(project="p"))
    return push.run(*inputs, cfg, artifacts.ArtifactWriter(
        str(tmp_path / f"pushed-{attempt}"), artifacts.PushedModel, {"run_id": attempt}), {})


def test_a_failed_vertex_upload_is_done_by_the_next_push(tmp_path, fake_vertex):
    from components.integrations import vertex
    from components.registry.versions import Registry

    inputs = push_inputs(tmp_path)
    fake_vertex.fail_uploads = 1
    with pytest.raises(RuntimeError, match="503"):
        _push(tmp_path, inputs, "r1")          # published and promoted here, not in Vertex
    version = Registry(str(tmp_path / "serving")).get("m", 1)
    assert vertex.read_record(version.path) is None and fake_vertex.versions() == []

    summary = _push(tmp_path, inputs, "r2")    # the retry: already pushed, not uploaded
    assert summary["already"] and "uploaded to Vertex AI Model Registry" in summary["lines"][-1]
    assert fake_vertex.versions() == [("1", {"imgpipe_version": "1"}, ["staging"])]
    assert vertex.read_record(version.path)["version_id"] == "1"

    summary = _push(tmp_path, inputs, "r3")    # recorded now: nothing more to upload
    assert "already in Vertex AI Model Registry" in summary["lines"][-1]
    assert len(fake_vertex.uploads()) == 2 and len(fake_vertex.versions()) == 1


def test_a_version_vertex_already_holds_is_not_uploaded_twice(tmp_path, fake_vertex):
    """The upload went through but its reply never came (or the task died before
    writing vertex.json): the next push finds the version by its label."""
    from components.integrations import vertex
    from components.registry.versions import Registry

    inputs = push_inputs(tmp_path)
    fake_vertex.fail_uploads, fake_vertex.fail_after_create = 1, True
    with pytest.raises(TimeoutError):
        _push(tmp_path, inputs, "r1")
    assert len(fake_vertex.versions()) == 1
    _push(tmp_path, inputs, "r2")
    assert len(fake_vertex.uploads()) == 1                   # found, not uploaded again
    lookups = [kw["filter"] for name, _, kw in fake_vertex.rec.calls if name == "list_versions"]
    assert lookups == ['labels.imgpipe_version="1"']
    record = vertex.read_record(Registry(str(tmp_path / "serving")).get("m", 1).path)
    assert record == {"project": "p", "region": "us-central1",
                      "model": "projects/p/locations/r/models/1", "version_id": "1"}
    assert fake_vertex.versions() == [("1", {"imgpipe_version": "1"}, ["staging"])]


def test_promote_says_when_a_version_is_not_in_vertex_and_sync_vertex_fixes_it(
        tmp_path, fake_vertex, capsys):
    from pipeline import cli

    _push(tmp_path, push_inputs(tmp_path, "one"), "r1")            # m:1, in Vertex
    fake_vertex.fail_uploads = 1
    with pytest.raises(RuntimeError):
        _push(tmp_path, push_inputs(tmp_path, "two"), "r2")        # m:2, upload failed
    capsys.readouterr()
    root = ["--registry", str(tmp_path / "serving")]
    assert cli.main(["models", "promote", "m:1", "--to", "production", *root]) == 0
    captured = capsys.readouterr()
    assert "also on Vertex AI" in captured.out and captured.err == ""
    assert cli.main(["models", "promote", "m:2", "--to", "production", "--json", *root]) == 0
    out, err = capsys.readouterr()
    warning = err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("imgpipe: warning: m:2 is not in Vertex")
    assert "moved only in imgpipe's registry" in warning[0]
    assert "imgpipe models sync-vertex m:2 --config CONFIG" in warning[0]
    data = json.loads(out)
    assert data["vertex_missing"] is True and data["warning"] in warning[0]
    assert cli.main(["models", "promote", "m:1", "--to", "production", *root]) == 0
    assert capsys.readouterr().err == ""                              # m:1 is there
    assert cli.main(["models", "rollback", "m", "--alias", "production", *root]) == 0
    assert "m:2 is not in Vertex" in capsys.readouterr().err          # back to m:2

    config = tmp_path / "push.yaml"
    config.write_text("push:\n  vertex: {project: p}\n")
    assert cli.main(["models", "sync-vertex", "m:2", "--config", str(config), *root]) == 0
    out = capsys.readouterr().out
    assert "m:2 uploaded to Vertex AI Model Registry" in out and "production, staging" in out
    assert fake_vertex.versions() == [("1", {"imgpipe_version": "1"}, []),
                                      ("2", {"imgpipe_version": "2"}, ["production", "staging"])]
    assert cli.main(["models", "sync-vertex", "m:2", "--config", str(config), *root]) == 0
    assert "already in Vertex" in capsys.readouterr().out and len(fake_vertex.uploads()) == 3
    assert cli.main(["models", "promote", "m:1", "--to", "production", *root]) == 0
    captured = capsys.readouterr()
    assert "also on Vertex AI" in captured.out and captured.err == ""
    assert fake_vertex.versions()[0][2] == ["production"]


def test_a_model_never_kept_in_vertex_promotes_without_a_warning(tmp_path, capsys):
    from components.registry.versions import Registry
    from pipeline import cli

    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_text("graph")
    Registry(str(tmp_path / "serving")).push("m", str(folder), {"blessing": {"blessed": True}})
    assert cli.main(["models", "promote", "m:1", "--to", "production", "--registry",
                     str(tmp_path / "serving")]) == 0
    assert capsys.readouterr().err == ""
