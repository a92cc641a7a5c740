"""State kept in the cloud between attempts and runs: artifact manifests on gs:// made
from the store's own checksums (no object read back), a retried KFP task's scratch
folder, and pushed versions kept in step with Vertex AI Model Registry across failed
uploads. gs:// runs against the fake GCS server tests/io/test_gcs.py starts; Vertex
against a fake client module checked against the real library's signatures."""

from __future__ import annotations

import json

import pytest

from tests.io.test_gcs import fake_gcs, on_fake  # noqa: F401  (pytest fixtures)


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


class FakeVertex:
    """A stateful stand-in for google.cloud.aiplatform: models with versions, labels and
    aliases, and `filter` honoured (display_name="X" on Model.list, labels.KEY="VALUE"
    on ModelRegistry.list_versions; any other filter fails the test). Every call is
    checked against the real library's signature (tests.fixtures.Recorder).
    `fail_uploads`: how many uploads fail next; `fail_after_create`: they fail after
    Vertex created the version (a timeout on the reply)."""

    def __init__(self):
        from google.cloud import aiplatform as real

        from tests.fixtures import Recorder

        self.rec, self.real = Recorder(real), real
        self.models: dict[str, dict] = {}      # resource name -> display_name, versions
        self.fail_uploads, self.fail_after_create = 0, False
        fake = self

        class Model:
            @staticmethod
            def list(**kwargs):
                fake.rec.check("list", real.Model.list, **kwargs)
                wanted = fake._match(kwargs.get("filter"), r'display_name="([^"]*)"')
                return [type("M", (), {"resource_name": name})
                        for name, model in fake.models.items()
                        if model["display_name"] == wanted]

            @staticmethod
            def upload(**kwargs):
                fake.rec.check("upload", real.Model.upload, **kwargs)
                return fake._upload(kwargs)

        class ModelRegistry:
            def __init__(self, model, **kwargs):
                fake.rec.check("ModelRegistry", real.models.ModelRegistry.__init__, None,
                               model, **kwargs)
                self.model = fake.models[model]
                self.name = model

            def list_versions(self, filter=None):
                fake.rec.check("list_versions", real.models.ModelRegistry.list_versions,
                               None, filter=filter)
                key, value = fake._match(filter, r'labels\.(\w+)="([^"]*)"')
                return [real.models.VersionInfo(
                            version_id=v["version_id"], version_create_time=None,
                            version_update_time=None,
                            model_display_name=self.model["display_name"],
                            model_resource_name=self.name, version_aliases=v["aliases"])
                        for v in self.model["versions"] if v["labels"].get(key) == value]

            def add_version_aliases(self, new_aliases, version):
                fake.rec.check("add_version_aliases",
                               real.models.ModelRegistry.add_version_aliases, None,
                               new_aliases, version)
                for v in self.model["versions"]:       # an alias names one version
                    v["aliases"] = [a for a in v["aliases"] if a not in new_aliases]
                    if v["version_id"] == version:
                        v["aliases"] += list(new_aliases)

            def remove_version_aliases(self, target_aliases, version):
                fake.rec.check("remove_version_aliases",
                               real.models.ModelRegistry.remove_version_aliases, None,
                               target_aliases, version)

        self.Model = Model
        self.models_module = type("models", (), {"ModelRegistry": ModelRegistry})

    @staticmethod
    def _match(text, pattern):
        import re

        found = re.fullmatch(pattern, text or "")
        assert found, f"the fake does not know the filter {text!r}"
        return found[1] if found.re.groups == 1 else found.groups()

    def _upload(self, kwargs):
        if self.fail_uploads and not self.fail_after_create:
            self.fail_uploads -= 1
            raise RuntimeError("503 Service Unavailable")
        name = kwargs["parent_model"] or f"projects/p/locations/r/models/{len(self.models) + 1}"
        model = self.models.setdefault(name, {"display_name": kwargs["display_name"],
                                              "versions": []})
        version_id = str(len(model["versions"]) + 1)
        model["versions"].append({"version_id": version_id, "labels": dict(kwargs["labels"]),
                                  "aliases": []})
        if kwargs.get("version_aliases"):
            self.models_module.ModelRegistry(name).add_version_aliases(
                kwargs["version_aliases"], version_id)
        if self.fail_uploads:
            self.fail_uploads -= 1
            raise TimeoutError("the upload's reply never came")
        return type("U", (), {"resource_name": name, "version_id": version_id})

    def module(self):
        fake = self
        return type("ai", (), {"init": staticmethod(
            lambda **kw: fake.rec.check("init", fake.real.init, **kw)),
            "Model": self.Model, "models": self.models_module})

    def uploads(self):
        return [kwargs for name, _, kwargs in self.rec.calls if name == "upload"]

    def versions(self):
        return [(v["version_id"], v["labels"], sorted(v["aliases"]))
                for model in self.models.values() for v in model["versions"]]


@pytest.fixture
def fake_vertex(monkeypatch):
    from components.integrations import vertex

    fake = FakeVertex()
    monkeypatch.setattr(vertex, "client_module", fake.module())
    monkeypatch.setattr(vertex, "tensorflow_version", lambda: "2.21.0")
    return fake


def _push_inputs(tmp_path, seed="pb"):
    """A blessed, infra-validated model and what push reads besides it."""
    from components import artifacts
    from tests.registry.test_registry import _committed

    saved_model = artifacts.Model.SAVED_MODEL
    folder = tmp_path / f"inputs-{seed}"
    return (
        _committed(folder / "model", artifacts.Model,
                   {f"{saved_model}/{artifacts.SAVED_MODEL_PB}": seed},
                   {"kind": "dense", "tensorflow_version": "2.21.0"}),
        _committed(folder / "blessing", artifacts.ModelBlessing, {artifacts.ModelBlessing.FILE:
                   json.dumps({"blessed": True, "reason": "ok", "baseline": None,
                               "gate": "point", "checks": []})}, {"blessed": True}),
        _committed(folder / "infra", artifacts.InfraBlessing, {artifacts.InfraBlessing.FILE:
                   json.dumps({"passed": True, "reason": "served"})}, {"passed": True}),
        _committed(folder / "evaluation", artifacts.ModelEvaluation, {
            artifacts.ModelEvaluation.FILE: json.dumps(
                {"metrics": {"slices": {"overall": {"accuracy": 0.9}}, "per_class": {}}})}),
        _committed(folder / "statistics", artifacts.ExampleStatistics,
                   {artifacts.ExampleStatistics.FILE: json.dumps({"num_examples": 10})}))


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

    inputs = _push_inputs(tmp_path)
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

    inputs = _push_inputs(tmp_path)
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

    _push(tmp_path, _push_inputs(tmp_path, "one"), "r1")            # m:1, in Vertex
    fake_vertex.fail_uploads = 1
    with pytest.raises(RuntimeError):
        _push(tmp_path, _push_inputs(tmp_path, "two"), "r2")        # m:2, upload failed
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
