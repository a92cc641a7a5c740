"""Run by tests/deploy/test_tpu_image.py with the TPU image's Python (.venv-tpu-tf: the image's
package set, tensorflow-cpu 2.20.0 standing in for tensorflow-tpu 2.20.0) on artifacts
the pipeline wrote with TensorFlow 2.21:

1. the transform graph loads as a plain SavedModel and through tensorflow-transform's
   TFTransformOutput, and both transform a few raw examples as TF 2.21 did;
2. the exported SavedModel serves them as it did under TF 2.21;
3. the Keras file loads, predicts the same, and takes one training step on a batch of
   the trainer's own input pipeline (`inputs.make_dataset`);
4. the train task itself (`run_step("train", ...)`, what the TPU container runs) trains
   on them and exports a SavedModel.

    python tests/tpu_image_check.py SPEC.json    # prints `RESULT {json}` last

SPEC: {"examples", "transform_graph", "hyperparameters", "trained_model": artifact URIs,
"expected": .npz from the project's venv, "step_config": train's config JSON, "out":
a folder for the new model}.
"""

import json
import os
import sys
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(spec_path: str) -> dict:
    import importlib.metadata

    import keras
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from components import artifacts, features
    from components.trainer import inputs, training
    from components.config.train import TrainConfig

    spec = json.load(open(spec_path))
    expected = np.load(spec["expected"])
    result = {"tensorflow": tf.__version__, "keras": keras.__version__,
              "tensorflow_transform": tft.__version__,
              "distributions": {name: importlib.metadata.version(name) for name in (
                  "tensorflow-cpu", "tensorboard", "tf_keras", "keras",
                  "tensorflow-transform", "tfx-bsl")}}

    examples = artifacts.read(spec["examples"], artifacts.Examples)
    graph = artifacts.read(spec["transform_graph"], artifacts.TransformGraph)
    model = artifacts.read(spec["trained_model"], artifacts.Model)
    serialized, _ = features.read_raw_examples(artifacts.Examples.shards(examples, "eval"),
                                               limit=len(expected["image"]))
    raw = tf.io.parse_example(tf.constant(serialized), features.raw_feature_spec())

    # 1. the transform graph: a plain SavedModel, and through TFT
    plain = tf.saved_model.load(graph.path(artifacts.TransformGraph.TRANSFORM_FN))
    result["transform_fn_written_by"] = plain.tensorflow_version.numpy().decode() \
        if hasattr(plain.tensorflow_version, "numpy") else str(plain.tensorflow_version)
    by_plain = plain.transform_fn(dict(raw))
    by_tft = tft.TFTransformOutput(graph.uri).transform_raw_features(dict(raw))
    layer = tft.TFTransformOutput(graph.uri).transform_features_layer()(dict(raw))
    for name, out in (("plain SavedModel", by_plain), ("TFTransformOutput", by_tft),
                      ("transform_features_layer", layer)):
        np.testing.assert_allclose(out[features.TRANSFORMED_IMAGE].numpy(), expected["image"],
                                   rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(out[features.LABEL_ID].numpy(), expected["label_id"],
                                      err_msg=name)

    # 2. the exported SavedModel serves as under TF 2.21
    served = tf.saved_model.load(model.path(artifacts.Model.SAVED_MODEL))
    probabilities = served.signatures["serving_default"](
        examples=tf.constant(serialized))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-4, atol=1e-5,
                               err_msg="exported SavedModel")

    # 3. the Keras file: same predictions, then one training step on the trainer's batches
    net = keras.saving.load_model(model.path(artifacts.Model.KERAS_FILE))
    np.testing.assert_allclose(net.predict(by_tft[features.TRANSFORMED_IMAGE], verbose=0),
                               expected["probabilities"], rtol=1e-4, atol=1e-5,
                               err_msg="Keras file")
    train = TrainConfig()
    sparse = train.loss == "sparse_categorical_crossentropy"
    plan = training.plan_for(train, tf.distribute.get_strategy())
    training.compile_model(net, train, plan, "sparse_categorical_crossentropy" if sparse
                           else "categorical_crossentropy")
    images, labels = next(iter(inputs.make_dataset(graph, examples, "train", 32, train,
                                                   True, sparse)))
    before = [w.copy() for w in net.get_weights()]
    logs = net.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["loss"]), logs
    assert any(not np.array_equal(a, b) for a, b in zip(before, net.get_weights())), \
        "one training step changed no weight"
    result["one_step_loss"] = float(logs["loss"])

    # 4. the train task, as the TPU container runs it (without a TPU: the default strategy)
    from pipeline.kfp.entrypoint import run_step

    def art(uri):
        return SimpleNamespace(path=uri, uri=uri, metadata={})

    kfp_artifacts = {"transform_graph": art(graph.uri), "examples": art(examples.uri),
                     "hyperparameters": art(spec["hyperparameters"]),
                     "trained_model": art(spec["out"])}
    run_step("train", spec["step_config"], "", "", kfp_artifacts, {}, {}, {})
    result["trained"] = kfp_artifacts["trained_model"].metadata
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1]), default=str), flush=True)
