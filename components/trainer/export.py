"""The trained model exported as a SavedModel with the transform and serving signatures.

The signatures are what every client of a pushed model calls
(components/inference/client.py)."""

from __future__ import annotations

import contextlib
from typing import Any

from components import artifacts, features
from components.io import fileio


def _without_keras_traces() -> Any:
    """tf_keras' `save_traces=False` (what `model.save(save_traces=False)` sets) around
    saving the module: TFT's transform layer is a tf_keras layer, which tf_keras would
    otherwise trace again on its own (its call and a default signature) so that it
    could be revived as a Keras layer; nothing loads it as one. With the signatures
    traced without autograph (nothing in them branches on a tensor), each signature is
    one plain trace: the demo's first export took 0.7 s instead of 1.8 s (2-core VM,
    2026-12-08), serving the same outputs. A tf_keras without that scope saves as
    before."""
    try:
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
    except ImportError:
        return contextlib.nullcontext()
    return keras_option_scope(save_traces=False)


def export(model, graph: artifacts.Artifact, path: str) -> None:
    """SavedModel with `serving_default` (serialized raw tf.Example), `serving_images`
    (encoded JPEG/PNG bytes) and `transform_features` (raw examples -> features)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(fileio.tf_path(graph.uri))
    vocabulary = graph.properties["label_vocabulary"]

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.tft_layer = output.transform_features_layer()
            self.class_names = tf.constant(vocabulary)

        def _predict(self, raw_features):
            transformed = self.tft_layer(raw_features)
            probabilities = self.model(transformed[features.TRANSFORMED_IMAGE], training=False)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return {"probabilities": probabilities, "class_id": class_id,
                    "class_name": tf.gather(self.class_names, class_id)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
                     autograph=False)
        def serve_examples(self, examples):
            spec = {features.IMAGE: features.raw_feature_spec()[features.IMAGE]}
            return self._predict(tf.io.parse_example(examples, spec))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")],
                     autograph=False)
        def serve_images(self, images):
            return self._predict({features.IMAGE: images})

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
                     autograph=False)
        def transform_features(self, examples):
            raw = tf.io.parse_example(examples, features.raw_feature_spec())
            return self.tft_layer(raw)

    module = Serving()
    with _without_keras_traces():
        tf.saved_model.save(module, fileio.tf_path(path), signatures={
            features.EXAMPLES_SIGNATURE: module.serve_examples,
            features.IMAGES_SIGNATURE: module.serve_images,
            "transform_features": module.transform_features})
