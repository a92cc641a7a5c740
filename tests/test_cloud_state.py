"""State kept in the cloud between attempts and runs: artifact manifests on gs:// made
from the store's own checksums (no object read back), a retried KFP task's scratch
folder, and pushed versions kept in step with Vertex AI Model Registry across failed
uploads. gs:// runs against the fake GCS server tests/test_gcs.py starts; Vertex
against a fake client module checked against the real library's signatures."""

from __future__ import annotations

import json

import pytest

from tests.test_gcs import fake_gcs, on_fake  # noqa: F401  (pytest fixtures)


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
    from components import artifacts, fileio

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
    from components import artifacts, fileio

    uri = f"{on_fake}/cloud-state/old/model"
    with monkeypatch.context() as old:
        old.setattr(fileio, "stored_checksums", lambda root: None)
        with artifacts.writing(uri, "Model") as writer:
            fileio.write_text(writer.file("saved_model", "saved_model.pb"), "graph")
    art = artifacts.read(uri)
    assert set(art.files["saved_model/saved_model.pb"]) == {"size", "sha256"}
    assert artifacts.verify(art)[0] == []
    fileio.write_text(f"{uri}/saved_model/saved_model.pb", "GRAPH")
    assert artifacts.verify(art)[0] == [
        "saved_model/saved_model.pb changed since it was written (content differs)"]


def test_local_manifests_keep_sha256(tmp_path):
    import hashlib

    from components import artifacts

    uri = str(tmp_path / "model")
    with artifacts.writing(uri, "Model") as writer:
        with open(writer.file("history.json"), "w") as handle:
            handle.write("{}")
    art = artifacts.read(uri)
    assert art.files == {"history.json": {"size": 2,
                                          "sha256": hashlib.sha256(b"{}").hexdigest()}}
    assert artifacts.verify(art)[0] == []


# --- 14: a retried KFP task resumes from its scratch folder ---------------------------


def test_epoch_log_round_trip_on_gcs(on_fake):
    from components import fileio, training

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

    from components import artifacts, fileio, training
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
            fileio.write_text(writer.file("history.json"), "{}")
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
