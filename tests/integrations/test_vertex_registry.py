"""Vertex AI Model Registry (`components/integrations/vertex.py`): the uploader's calls
against the real client's signatures, the TF Serving image a version is served by, and
promotion and rollback moving the Vertex aliases with the registry's."""

import os
import re

import pytest

from pipeline import cli
from tests.fixtures import Recorder

from tests import ROOT  # noqa: E402


def _fake_aiplatform(rec, models=("fonts",), labelled=()):
    """google.cloud.aiplatform as far as the uploader uses it, with `filter` honoured as
    the real Model.list / ModelRegistry.list_versions honour it: `display_name="X"`
    finds the Vertex model only when X is one of `models` (models/7), and
    `labels.imgpipe_version="N"` finds a version of it only when N is in `labelled`
    (an upload an earlier attempt made). Any other filter fails the test."""
    from google.cloud import aiplatform as real

    def match(text, pattern):
        found = re.fullmatch(pattern, text or "")
        assert found, f"the fake does not know the filter {text!r}"
        return found[1]

    parent = type("M", (), {"resource_name": "projects/p/locations/r/models/7"})

    class Model:
        @staticmethod
        def list(**kwargs):
            rec.check("list", real.Model.list, **kwargs)
            return [parent] if match(kwargs.get("filter"), r'display_name="([^"]*)"') in \
                models else []

        @staticmethod
        def upload(**kwargs):
            rec.check("upload", real.Model.upload, **kwargs)
            return type("U", (), {"resource_name": "projects/p/locations/r/models/7",
                                  "version_id": "2"})

    class ModelRegistry:
        def __init__(self, model):
            rec.check("ModelRegistry", real.models.ModelRegistry.__init__, None, model)
            self.model = model

        def list_versions(self, *args, **kwargs):
            rec.check("list_versions", real.models.ModelRegistry.list_versions, None, *args,
                      **kwargs)
            wanted = match(kwargs.get("filter"), r'labels\.imgpipe_version="([^"]*)"')
            return [real.models.VersionInfo(
                version_id=f"v{wanted}", version_create_time=None, version_update_time=None,
                model_display_name="fonts", model_resource_name=self.model,
                version_aliases=[])] if wanted in labelled else []

        def add_version_aliases(self, *args, **kwargs):
            rec.check("add_version_aliases", real.models.ModelRegistry.add_version_aliases,
                      None, *args, **kwargs)

        def remove_version_aliases(self, *args, **kwargs):
            rec.check("remove_version_aliases",
                      real.models.ModelRegistry.remove_version_aliases, None, *args, **kwargs)

    models_module = type("models", (), {"ModelRegistry": ModelRegistry})
    return type("ai", (), {"init": staticmethod(lambda **kw: rec.check("init", real.init, **kw)),
                           "Model": Model, "models": models_module})


def test_vertex_model_registry_upload_calls():
    from google.cloud import aiplatform as real

    from components.integrations import vertex

    rec = Recorder(real)
    registry = vertex.VertexModelRegistry("p", "us-central1", aiplatform=_fake_aiplatform(rec))
    image = vertex.serving_image(None, "p", "us-central1", "2.21.0")
    assert image == "us-central1-docker.pkg.dev/p/imgpipe/tensorflow-serving:2.21.0"
    container = vertex.serving_spec(image, "fonts")
    record = registry.upload("fonts", "gs://b/serving/fonts/2/tf_serving",
                             {"imgpipe_version": "2"}, ["staging"], container)
    assert record == {"project": "p", "region": "us-central1",
                      "model": "projects/p/locations/r/models/7", "version_id": "2"}
    upload = {n: k for n, _, k in rec.calls}["upload"]
    assert upload["parent_model"] == "projects/p/locations/r/models/7"   # a new version
    assert upload["artifact_uri"] == "gs://b/serving/fonts/2/tf_serving"
    assert upload["version_aliases"] == ["staging"]
    assert upload["serving_container_image_uri"] == image
    assert upload["serving_container_predict_route"] == "/v1/models/fonts:predict"
    # TF Serving serves Vertex's copy of the artifact, read once (issue 32)
    assert upload["serving_container_args"] == [
        "--rest_api_port=8501", "--model_name=fonts", "--model_base_path=$(AIP_STORAGE_URI)",
        "--file_system_poll_wait_seconds=0"]
    lookups = [kw["filter"] for name, _, kw in rec.calls if name in ("list", "list_versions")]
    assert lookups == ['display_name="fonts"', 'labels.imgpipe_version="2"']

    # a model Vertex does not hold yet: the first upload makes it (no parent model)
    rec.calls.clear()
    registry.upload("digits", "gs://b/serving/digits/1", {"imgpipe_version": "1"}, [],
                    container)
    upload = {n: k for n, _, k in rec.calls}["upload"]
    assert upload["parent_model"] is None and upload["display_name"] == "digits"
    assert upload["version_aliases"] is None
    assert "list_versions" not in [n for n, _, _ in rec.calls]

    # a version an earlier attempt uploaded (found by its label): not uploaded again,
    # its aliases moved instead
    rec = Recorder(real)
    registry = vertex.VertexModelRegistry("p", "us-central1",
                                          aiplatform=_fake_aiplatform(rec, labelled=("3",)))
    record = registry.upload("fonts", "gs://b/serving/fonts/3", {"imgpipe_version": "3"},
                             ["staging"], container)
    assert record["version_id"] == "v3" and "upload" not in [n for n, _, _ in rec.calls]
    assert [a for n, a, _ in rec.calls if n == "add_version_aliases"] == [(None, ["staging"], "v3")]
    # a model from the TPU image (tensorflow-tpu 2.20) is served by the one TF Serving
    # image the deploy builds (the pipeline's 2.21), which loads older SavedModels
    assert vertex.serving_version("2.20.0", "2.21.0") == "2.21.0"
    assert vertex.serving_image(None, "p", "us-central1", "2.20.0", "2.21.0") == image
    assert vertex.serving_image(None, "p", "us-central1", "2.20.0") == image    # installed TF
    assert vertex.serving_version("2.22.1", "2.21.0") == "2.22.1"        # never an older one
    tag = re.search(r"^# .*tensorflow-serving:(\S+) \.$", open(os.path.join(
        ROOT, "deploy", "Dockerfile.serving")).read(), re.MULTILINE)[1]
    assert image.endswith(f":{tag}")                  # the tag deploy/README builds
    # up to TF 2.15 Vertex's own prebuilt image; never one older than the model
    assert vertex.serving_image(None, "p", "europe-west4", "2.15.1", "2.15.1") == \
        "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
    with pytest.raises(Exception, match="serves TensorFlow 2.15, the models are built with 2.21"):
        vertex.serving_image("us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest",
                             "p", "us-central1", "2.21.0")


def test_promotion_and_rollback_move_the_vertex_aliases_too(tmp_path, capsys, fake_vertex):
    """Two versions pushed by the push step with push.vertex (the stateful fake of
    tests/fake_vertex.py, which honours `filter`): each is uploaded as a version of
    one Vertex model and recorded; promote and rollback then move the Vertex alias
    with the registry's, onto the version each push recorded."""
    from components import artifacts
    from components.config.push import PushConfig, VertexPushConfig
    from components.registry.versions import Registry
    from components.steps import push
    from tests.fixtures import push_inputs

    serving = str(tmp_path / "serving")
    cfg = PushConfig(destination=serving, model_name="m", vertex=VertexPushConfig(project="p"))
    for number, seed in ((1, "a"), (2, "b")):
        summary = push.run(*push_inputs(tmp_path, seed), cfg, artifacts.ArtifactWriter(
            str(tmp_path / f"pushed-{seed}"), artifacts.PushedModel, {"run_id": seed}), {})
        assert summary["version"] == number
        assert summary["lines"][-1] == ("uploaded to Vertex AI Model Registry: "
                                        f"projects/p/locations/r/models/1 version {number}")
    uploads = fake_vertex.uploads()
    assert [u["parent_model"] for u in uploads] == [None, "projects/p/locations/r/models/1"]
    assert fake_vertex.versions() == [("1", {"imgpipe_version": "1"}, []),
                                      ("2", {"imgpipe_version": "2"}, [])]
    root = ["--registry", serving]
    assert cli.main(["models", "promote", "m:1", "--to", "production", *root]) == 0
    assert cli.main(["models", "promote", "m:2", "--to", "production", *root]) == 0
    assert "also on Vertex AI" in capsys.readouterr().out
    assert [aliases for _, _, aliases in fake_vertex.versions()] == [[], ["production"]]
    assert cli.main(["models", "rollback", "m", "--alias", "production", *root]) == 0
    assert Registry(serving).aliases("m") == {"production": 1}
    assert [aliases for _, _, aliases in fake_vertex.versions()] == [["production"], []]
    moves = [args for name, args, _ in fake_vertex.rec.calls if name == "add_version_aliases"]
    assert moves == [(None, ["production"], "1"), (None, ["production"], "2"),
                     (None, ["production"], "1")]
