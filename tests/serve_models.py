"""Small SavedModels with imgpipe's serving signatures, for the serving tests: no
training, each version recognisable by the class it favours."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from components.registry.versions import Registry

CLASSES = ("cat", "dog", "fox")


def tiny_saved_model(path: str, favourite: int = 0, classes=CLASSES) -> str:
    """`serving_images` (encoded images) and `serving_default` (serialized tf.Examples
    with image/encoded), like the trainer's export: probabilities over `classes`
    that favour class `favourite`, moved a little by the image's brightness."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.names = tf.constant(list(classes))
            self.bias = tf.constant(np.eye(len(classes), dtype=np.float32)[favourite] * 3.0)

        def _predict(self, images):
            def one(data):
                image = tf.io.decode_image(data, channels=1, expand_animations=False)
                image = tf.image.resize(tf.cast(image, tf.float32), [8, 8])
                return tf.reduce_mean(image) / 255.0

            brightness = tf.map_fn(one, images, fn_output_signature=tf.float32)
            logits = self.bias[None, :] + brightness[:, None] * tf.range(
                len(classes), dtype=tf.float32)[None, :]
            probabilities = tf.nn.softmax(logits)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return {"probabilities": probabilities, "class_id": class_id,
                    "class_name": tf.gather(self.names, class_id)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve_images(self, images):
            return self._predict(images)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, examples):
            parsed = tf.io.parse_example(
                examples, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            return self._predict(parsed["image/encoded"])

    module = Tiny()
    tf.saved_model.save(module, path, signatures={"serving_images": module.serve_images,
                                                  "serving_default": module.serve_examples})
    return path


def card(blessed: bool = True) -> dict:
    return {"blessing": {"blessed": blessed, "reason": "ok"},
            "infra_validation": {"passed": True, "reason": "served"},
            "metrics": {"accuracy": 0.9},
            "data": {"classes": list(CLASSES),
                     "counts": {"train": {c: 10 for c in CLASSES}}}}


def registry_with(root: str, work: str, favourites=(0, 1), name: str = "pets") -> Registry:
    """A registry whose model `name` has one version per entry of `favourites`."""
    registry = Registry(root)
    for i, favourite in enumerate(favourites):
        source = tiny_saved_model(os.path.join(work, f"sm{i}"), favourite)
        registry.push(name, source, card())
    return registry


def png(value: int = 128, size: int = 12, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), value if mode == "L" else (value,) * 3).save(buffer, "PNG")
    return buffer.getvalue()


def example(image: bytes) -> bytes:
    import tensorflow as tf

    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
