"""Who reads what when a version serves on a Vertex AI endpoint (issue 32, defect 3):
Vertex's default prediction identity reads only `AIP_STORAGE_URI`, Vertex's copy of the
upload's `artifact_uri`, so TF Serving serves that copy (one version, listed once),
and a deployment runs as `push.vertex.service_account` (default `kfp.service_account`).
Against the recording fake of tests/integrations/vertex_fakes.py (the `fake` fixture),
whose calls are bound to the installed SDK's signatures."""

from __future__ import annotations

import inspect

import pytest
from google.cloud import aiplatform as real

from components import artifacts
from components.integrations import vertex
from tests.integrations.vertex_fakes import push_version

ACCOUNT = "serving@p.iam.gserviceaccount.com"


def _served_folder(upload, aip_storage_uri):
    """The folder TF Serving's arguments make it serve, with `$(AIP_STORAGE_URI)`
    expanded as Vertex does (ModelContainerSpec.args), and every other argument."""
    args = [a.replace("$(AIP_STORAGE_URI)", aip_storage_uri)
            for a in upload["serving_container_args"]]
    flags = dict(a.removeprefix("--").split("=", 1) for a in args)
    return flags.pop("model_base_path"), flags


def test_a_deployment_runs_as_the_service_account_and_serves_its_own_copy(tmp_path, fake):
    """Vertex's default prediction identity reads only AIP_STORAGE_URI, Vertex's copy of
    the upload's artifact_uri: the container must serve from that copy (one version,
    read once), and a deployment runs as push.vertex.service_account."""
    for fn in (real.Endpoint.deploy, real.Model.deploy):      # the SDK takes it
        assert "service_account" in inspect.signature(fn).parameters
    assert {"artifact_uri", "serving_container_args", "serving_container_command"} <= \
        set(inspect.signature(real.Model.upload).parameters)

    push_version(tmp_path, "a", "production", service_account=ACCOUNT)
    (_, deploy), = fake.named("deploy")
    inspect.signature(real.Endpoint.deploy).bind(None, **deploy)   # the real API takes it
    assert deploy["service_account"] == ACCOUNT
    version = tmp_path / "serving" / "m" / "1"
    assert vertex.read_record(str(version))["endpoint"]["service_account"] == ACCOUNT

    upload, = fake.uploads()
    assert upload["artifact_uri"] == str(version / vertex.SERVING_COPY)
    assert upload["serving_container_command"] == ["tensorflow_model_server"]
    # what Vertex copies (AIP_STORAGE_URI) is a TF Serving base path holding exactly this
    # version: nothing else in it, and nothing in the arguments names the registry
    served, flags = _served_folder(upload, upload["artifact_uri"])
    assert served == upload["artifact_uri"]
    assert sorted(p.relative_to(served).as_posix()
                  for p in (tmp_path / served).rglob("*") if p.is_file()) == \
        ["1/saved_model.pb"]
    assert (version / vertex.SERVING_COPY / "1" / "saved_model.pb").read_bytes() == \
        (version / "saved_model.pb").read_bytes()
    assert flags == {"rest_api_port": "8501", "model_name": "m",
                     "file_system_poll_wait_seconds": "0"}      # read once, never polled
    assert not any(str(tmp_path / "serving") in str(value) for key, value in upload.items()
                   if key.startswith("serving_container"))
    assert not (version / "serving.config").exists()


def test_without_an_account_the_default_identity_still_reads_what_it_serves(tmp_path, fake):
    push_version(tmp_path, "a", "production")
    (_, deploy), = fake.named("deploy")
    assert deploy["service_account"] is None                    # Vertex's default identity
    assert "service_account" not in vertex.read_record(
        str(tmp_path / "serving" / "m" / "1"))["endpoint"]
    upload, = fake.uploads()
    served, _ = _served_folder(upload, "gs://vertex-copy/model")
    assert served == "gs://vertex-copy/model"                    # AIP_STORAGE_URI only


def test_the_serving_copy_is_the_saved_model_alone(tmp_path):
    """`serving_copy` copies a version's SavedModel parts (variables, assets, warmup
    records) under its number, and leaves out the registry's own files."""
    from components.registry.versions import Version

    path = tmp_path / "serving" / "m" / "4"
    files = {"saved_model.pb": "graph", "fingerprint.pb": "fp",
             "variables/variables.index": "i", "variables/variables.data-00000-of-00001": "d",
             "assets/vocabulary.txt": "a\nb", artifacts.PushedModel.WARMUP: "w",
             artifacts.PushedModel.CARD: "{}", vertex.RECORD: "{}", "serving.config": "old"}
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    base = vertex.serving_copy(Version("m", 4, str(path)))
    assert base == str(path / vertex.SERVING_COPY)
    copied = {p.relative_to(base).as_posix(): p.read_text()
              for p in (tmp_path / base).rglob("*") if p.is_file()}
    assert copied == {f"4/{rel}": text for rel, text in files.items()
                      if rel not in (artifacts.PushedModel.CARD, vertex.RECORD, "serving.config")}
    assert vertex.serving_copy(Version("m", 4, str(path))) == base       # again: the same


def test_the_deploy_account_defaults_to_the_pipeline_account():
    from pipeline import config as config_lib

    def vertex_account(**tree):
        return config_lib.PipelineConfig.model_validate(
            {"name": "x", "push": {"vertex": {"project": "p", **tree.pop("vertex", {})}},
             **tree}).push.vertex.service_account

    assert vertex_account() is None
    assert vertex_account(kfp={"service_account": ACCOUNT}) == ACCOUNT
    assert vertex_account(kfp={"service_account": ACCOUNT},
                          vertex={"service_account": "other@p.iam.gserviceaccount.com"}) == \
        "other@p.iam.gserviceaccount.com"
    with pytest.raises(ValueError, match="not a service account email"):
        vertex_account(vertex={"service_account": "serving"})
