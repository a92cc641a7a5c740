"""Real TF Serving follows the registry (issue 26, part 4): infra_validate's warmup
records, push copying them into the version's assets.extra/, and `imgpipe models
serving-config` (TF Serving's model config file), parsed back with the serving protos."""

import json
import os

import pytest

from components import artifacts, features, runtime
from components.inference import serving_config
from components.config.infra_validate import InfraValidateConfig
from components.config.push import PushConfig
from components.registry.versions import Registry
from pipeline import cli
from tests import fixtures
from tests.fixtures import card, committed_artifact, configs_by_name, fake_saved_model
from tests.fixtures import parse_serving_config

VOCABULARY = list(fixtures.CLASSES)
SIGNATURES = {"serving_default": "examples", "serving_images": "images"}


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp")


def _tiny_model(path):
    """A SavedModel with the exported model's two serving signatures (as
    components.trainer.export.export names them), built without training: the class
    probabilities are a softmax of the image's mean brightness, so both signatures give
    the same answer for the same image."""
    import tensorflow as tf

    vocabulary = tf.constant(VOCABULARY)

    def classify(encoded):
        brightness = tf.map_fn(
            lambda image: tf.reduce_mean(tf.cast(tf.io.decode_image(
                image, channels=1, expand_animations=False), tf.float32)) / 255.0,
            encoded, fn_output_signature=tf.float32)
        logits = tf.stack([brightness, 1.0 - brightness, 0.5 * brightness], axis=1)
        probs = tf.nn.softmax(logits)
        class_id = tf.argmax(probs, axis=1, output_type=tf.int32)
        return {"probabilities": probs, "class_id": class_id,
                "class_name": tf.gather(vocabulary, class_id)}

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, examples):
            parsed = tf.io.parse_example(
                examples, {features.IMAGE: tf.io.FixedLenFeature([], tf.string)})
            return classify(parsed[features.IMAGE])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve_images(self, images):
            return classify(images)

    module = Tiny()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve_examples,
                                                  "serving_images": module.serve_images})


def _model_artifact(tmp_path, build):
    uri = str(tmp_path / "model")
    with artifacts.writing(uri, artifacts.Model) as writer:
        build(writer.file(artifacts.Model.SAVED_MODEL))
        writer.properties = {"label_vocabulary": VOCABULARY}
        writer.commit()
    return artifacts.read(uri)


def _eval_examples(tmp_path, count):
    """An Examples artifact whose eval split holds `count` images (3 + extras)."""
    extra = [features.encode_example({
        features.IMAGE: fixtures.png_bytes(fixtures.class_pattern(i % 3, 10 + i)),
        features.FORMAT: "png", features.LABEL: VOCABULARY[i % 3], features.ID: f"x{i}"})
        for i in range(count - len(VOCABULARY))]
    return fixtures.examples_artifact(tmp_path, per_class=2, extra_eval=extra)


def _read_back(path):
    """(signature, input key, tensor as a list) per record, read the way TF Serving's
    own reader sees the file: TFRecords of PredictionLog protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        for key, tensor in request.inputs.items():
            assert tensor.dtype == tf.string.as_datatype_enum
            array = tf.make_ndarray(tensor)
            assert array.shape == (len(array),)
            out.append((request.model_spec.signature_name, key, list(array)))
    return out


def test_infra_validation_writes_warmup_records_that_the_model_serves(tmp_path):
    import tensorflow as tf

    from components.steps import infra_validate

    examples, raw = _eval_examples(tmp_path, 10)
    model = _model_artifact(tmp_path, _tiny_model)
    summary = infra_validate.run(model, examples, InfraValidateConfig(latency_budget_ms=60000),
                                 infra_blessing=str(tmp_path / "ib"))
    assert summary["passed"] is True, summary["lines"]
    verdict = artifacts.read(str(tmp_path / "ib"), artifacts.InfraBlessing)
    assert verdict.properties["warmup_requests"] == 2
    assert artifacts.InfraBlessing.WARMUP in verdict.files        # listed in the manifest
    path = artifacts.InfraBlessing.warmup(verdict)
    assert path == verdict.path(artifacts.InfraBlessing.WARMUP)

    # the probe's inputs, in its order: the first WARMUP_BATCH of them per signature
    serialized, cols = features.read_raw_examples(features.split_files(examples, "eval"),
                                                  limit=infra_validate.PROBE_EXAMPLES)
    assert len(serialized) == 10 > serving_config.WARMUP_BATCH
    expected = {"serving_default": serialized[:serving_config.WARMUP_BATCH],
                "serving_images": cols[features.IMAGE][:serving_config.WARMUP_BATCH]}
    records = _read_back(path)
    assert [(s, k) for s, k, _ in records] == list(SIGNATURES.items())
    assert {s: v for s, _, v in records} == expected
    # the module's own reader (what a local server warms a model with) agrees
    assert serving_config.read_warmup(path) == records

    loaded = tf.saved_model.load(model.path(artifacts.Model.SAVED_MODEL))
    answers = {}
    for signature, key, inputs in records:
        out = loaded.signatures[signature](**{key: tf.constant(inputs)})
        assert out["probabilities"].shape == (serving_config.WARMUP_BATCH, len(VOCABULARY))
        assert {c.decode() for c in out["class_name"].numpy()} <= set(VOCABULARY)
        answers[signature] = out["probabilities"].numpy()
    assert abs(answers["serving_default"] - answers["serving_images"]).max() < 1e-5


def test_a_failed_probe_writes_no_warmup_records(tmp_path):
    from components.steps import infra_validate

    examples, _ = fixtures.examples_artifact(tmp_path, per_class=2)

    def not_a_model(path):
        os.makedirs(path)
        with open(os.path.join(path, artifacts.SAVED_MODEL_PB), "wb") as handle:
            handle.write(b"garbage")

    model = _model_artifact(tmp_path, not_a_model)
    infra_validate.run(model, examples, InfraValidateConfig(),
                       infra_blessing=str(tmp_path / "ib"))
    verdict = artifacts.read(str(tmp_path / "ib"), artifacts.InfraBlessing)
    assert verdict.properties["passed"] is False
    assert "warmup_requests" not in verdict.properties
    assert artifacts.InfraBlessing.warmup(verdict) is None
    assert artifacts.InfraBlessing.WARMUP not in verdict.files


def test_warmup_batches_are_capped_and_a_damaged_file_is_named(tmp_path):
    path = str(tmp_path / "warmup")
    inputs = [f"image {i}".encode() for i in range(20)]
    assert serving_config.write_warmup(path, [("serving_images", "images", inputs),
                                              ("serving_default", "examples", [])], batch=5) == 1
    assert serving_config.read_warmup(path) == [("serving_images", "images", inputs[:5])]
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="CRC"):
        serving_config.read_warmup(path)
    with open(path, "wb") as handle:
        handle.write(data[:-7])
    with pytest.raises(ValueError, match="truncated"):
        serving_config.read_warmup(path)


def _push_inputs(tmp_path, warmup: bool):
    """push.run's committed inputs (a SavedModel of files, verdicts that pass), with
    or without the warmup records a newer infra_validate writes."""
    saved_model = artifacts.Model.SAVED_MODEL
    model = committed_artifact(tmp_path / "model", artifacts.Model,
                       {f"{saved_model}/{artifacts.SAVED_MODEL_PB}": f"pb {warmup}",
                        f"{saved_model}/variables/v": "w"}, {"kind": "dense"})
    blessing = committed_artifact(tmp_path / "blessing", artifacts.ModelBlessing, {
        artifacts.ModelBlessing.FILE: json.dumps({"blessed": True, "reason": "ok",
                                                  "baseline": None, "gate": "point",
                                                  "checks": []})}, {"blessed": True})
    with artifacts.writing(str(tmp_path / "infra"), artifacts.InfraBlessing) as writer:
        artifacts.InfraBlessing.write(writer, {"passed": True, "reason": "served"})
        if warmup:
            serving_config.write_warmup(writer.file(artifacts.InfraBlessing.WARMUP),
                                        [("serving_images", "images", [b"png", b"jpeg"])])
        writer.properties = {"passed": True}
        infra = writer.commit()
    evaluation = committed_artifact(tmp_path / "evaluation", artifacts.ModelEvaluation, {
        artifacts.ModelEvaluation.FILE: json.dumps(
            {"metrics": {"slices": {"overall": {"accuracy": 0.9}}, "per_class": {}}})})
    statistics = committed_artifact(tmp_path / "statistics", artifacts.ExampleStatistics,
                            {artifacts.ExampleStatistics.FILE: json.dumps({"num_examples": 10})})
    return model, blessing, infra, evaluation, statistics


def test_push_puts_the_warmup_records_where_tf_serving_reads_them(tmp_path):
    from components.steps import push

    cfg = PushConfig(destination=str(tmp_path / "serving"), model_name="m")

    def pushed(inputs, n):
        return push.run(*inputs, cfg, artifacts.ArtifactWriter(
            str(tmp_path / f"pushed{n}"), artifacts.PushedModel, {"run_id": f"r{n}"}), {})

    with_warmup = _push_inputs(tmp_path / "new", warmup=True)
    first, again = pushed(with_warmup, 0), pushed(with_warmup, 1)
    assert (first["version"], again["version"], again.get("already")) == (1, 1, True)
    copied = tmp_path / "serving" / "m" / "1" / serving_config.VERSION_WARMUP
    assert copied.read_bytes() == open(artifacts.InfraBlessing.warmup(with_warmup[2]),
                                       "rb").read()
    assert serving_config.read_warmup(str(copied)) == [
        ("serving_images", "images", [b"png", b"jpeg"])]
    assert os.path.isfile(tmp_path / "serving" / "m" / "1" / artifacts.SAVED_MODEL_PB)

    # an InfraBlessing from before warmup records: pushed as before, without them
    older = pushed(_push_inputs(tmp_path / "old", warmup=False), 2)
    assert older["version"] == 2 and not older.get("already")
    version = tmp_path / "serving" / "m" / "2"
    assert os.path.isfile(version / artifacts.SAVED_MODEL_PB)
    assert not os.path.exists(version / serving_config.VERSION_WARMUP)
    assert not os.path.exists(version / os.path.dirname(serving_config.VERSION_WARMUP))


# --- imgpipe models serving-config -------------------------------------------------


def _registry(tmp_path) -> str:
    """m: versions 1-3, production -> 1, staging -> 3; n: one version, no aliases."""
    root = str(tmp_path / "serving")
    reg = Registry(root)
    src = fake_saved_model(tmp_path / "sm")
    for _ in range(3):
        reg.push("m", src, card())
    reg.push("n", src, card())
    reg.set_alias("m:1", "production")
    reg.set_alias("m:3", "staging")
    return root


def test_serving_config_serves_the_aliased_and_newest_versions(tmp_path, capsys):
    root = _registry(tmp_path)
    assert cli.main(["models", "serving-config", "--registry", root]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    models = configs_by_name(parse_serving_config(out.out))
    assert sorted(models) == ["m", "n"]
    m = models["m"]
    assert m.base_path == os.path.join(os.path.abspath(root), "m")
    assert os.path.isabs(m.base_path) and m.model_platform == "tensorflow"
    assert m.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(m.model_version_policy.specific.versions) == [1, 3]
    assert dict(m.version_labels) == {"production": 1, "staging": 3}
    n = models["n"]
    assert list(n.model_version_policy.specific.versions) == [1] and not n.version_labels

    # only the models named; --json names them too
    assert cli.main(["models", "serving-config", "m", "--registry", root, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    config = parse_serving_config(result["config"])
    assert [c.name for c in config.model_config_list.config] == ["m"]
    assert result["models"] == [{"name": "m", "base_path": m.base_path, "versions": [1, 3],
                                 "labels": {"production": 1, "staging": 3}}]

    # staging's folder is gone: left out with a warning, the newest is now 2
    import shutil

    shutil.rmtree(os.path.join(root, "m", "3"))
    assert cli.main(["models", "serving-config", "m", "--registry", root]) == 0
    out = capsys.readouterr()
    m = configs_by_name(parse_serving_config(out.out))["m"]
    assert list(m.model_version_policy.specific.versions) == [1, 2]
    assert dict(m.version_labels) == {"production": 1}
    warnings = out.err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("imgpipe: warning: ")
    assert "m@staging" in warnings[0] and "version 3" in warnings[0]


def test_serving_config_unknown_model_and_empty_registry_are_one_line(tmp_path, capsys):
    root = _registry(tmp_path)
    assert cli.main(["models", "serving-config", "m", "nope", "--registry", root]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and "'nope'" in out.err and "models there: m, n" in out.err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["models", "serving-config", "--registry", str(empty)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "no pushed models" in out.err


def test_serving_config_output_file_refuses_to_overwrite_without_force(tmp_path, capsys):
    root = _registry(tmp_path)
    target = tmp_path / "models.config"
    assert cli.main(["models", "serving-config", "--registry", root, "-o", str(target)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(configs_by_name(parse_serving_config(target.read_text()))) == ["m", "n"]
    # an earlier output of this command is replaced without --force
    assert cli.main(["models", "serving-config", "n", "--registry", root,
                     "-o", str(target)]) == 0
    assert sorted(configs_by_name(parse_serving_config(target.read_text()))) == ["n"]
    capsys.readouterr()

    other = tmp_path / "notes.config"
    other.write_text("someone's notes\n")
    assert cli.main(["models", "serving-config", "--registry", root, "-o", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert other.read_text() == "someone's notes\n"
    assert cli.main(["models", "serving-config", "--registry", root, "-o", str(other),
                     "--force"]) == 0
    assert sorted(configs_by_name(parse_serving_config(other.read_text()))) == ["m", "n"]
    capsys.readouterr()

    assert cli.main(["models", "serving-config", "--registry", root,
                     "-o", str(tmp_path / "models.json")]) == 2
    assert "must end in .config" in capsys.readouterr().err
