"""Transform step throughput vs a plain tf.data pipeline on the same TFRecords.

Two datasets: Fashion-MNIST (28x28x1, 70,000 images, from the Debian package when
installed, else the built-in fonts) and 3-channel photos resized to 192x192 (the real
photos in ../shared/data/sign_language_digits when present, else synthetic JPEGs).
The floor reads the same raw TFRecords with tf.data, decodes, resizes and normalizes
them, and writes the pixels (uint8) and label ids as GZIP TFRecords: what a
materialized transform writes, with no analyzers and no Beam. Target: the step at
most 3x the floor. Usage: python bench/transform.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PHOTOS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                      "shared", "data", "sign_language_digits")


def ingest(source: str, out: str, image_size, channels):
    from components import artifacts
    from components.steps import ingest as ingest_step
    from components.config.beam import BeamConfig
    from components.config.data import DataConfig
    from components.config.ingest import IngestConfig

    data = DataConfig(source=source, image_size=image_size, channels=channels)
    ingest_step.run(data, IngestConfig(), BeamConfig(), examples=f"{out}/examples",
                    statistics=f"{out}/statistics")
    return data, artifacts.read(f"{out}/examples")


def floor(examples, data, out_dir: str) -> tuple[float, int]:
    import tensorflow as tf

    from components import artifacts, features

    started = time.perf_counter()
    files = tf.io.gfile.glob(examples.path("*", artifacts.Examples.SHARDS))
    spec = features.raw_feature_spec()
    ids = {name: i for i, name in enumerate(sorted(examples.properties["class_names"]))}

    def decode(f):
        pixels = features.decode_and_resize(f[features.IMAGE], tuple(data.image_size),
                                            data.channels, False)
        image = pixels / 255.0                                   # normalize
        return tf.cast(tf.round(image * 255.0), tf.uint8), f[features.LABEL]

    ds = (tf.data.TFRecordDataset(files, compression_type="GZIP")
          .batch(256)
          .map(lambda raw: tf.io.parse_example(raw, spec), num_parallel_calls=tf.data.AUTOTUNE)
          .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    n = 0
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(out_dir, "floor.tfrecord.gz"), options) as writer:
        for pixels, labels in ds:
            pixels = pixels.numpy().reshape(len(labels), -1)
            for row, label in zip(pixels, labels.numpy()):
                writer.write(features.encode_example({
                    features.PIXEL_BYTES: row.tobytes(), features.LABEL_ID: ids[label.decode()]}))
            n += len(pixels)
    return time.perf_counter() - started, n


def transform_step(examples, data, out, materialize=True) -> float:
    from components.steps import transform
    from components.config.beam import BeamConfig
    from components.config.transform import TransformConfig

    started = time.perf_counter()
    transform.run(examples, data, TransformConfig(materialize=materialize), BeamConfig(),
                  transform_graph=out)
    return time.perf_counter() - started


def synthetic_photos(root: str, n_per_class: int = 60) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(5):
        os.makedirs(f"{root}/{label}", exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(
                f"{root}/{label}/{i}.jpg", quality=90)
    return root


def main() -> None:
    import apache_beam  # noqa: F401
    import tensorflow  # noqa: F401
    import tensorflow_transform  # noqa: F401

    root = tempfile.mkdtemp(prefix="bench-transform-")
    try:
        photos = PHOTOS if os.path.isdir(PHOTOS) else synthetic_photos(f"{root}/synthetic")
        from components.data import datasets

        small = (("fashion 28x28x1", "builtin:fashion_mnist", (28, 28), 1)
                 if datasets.fashion_mnist_dir()
                 else ("fonts 36x36x1", "builtin:fonts", (36, 36), 1))
        cases = [small,
                 (f"photos 192x192x3 ({'real' if photos == PHOTOS else 'synthetic'})",
                  photos, (192, 192), 3)]
        print(f"transform benchmark, {os.cpu_count()} cores; the step includes its fixed cost "
              "(graph tracing, Beam start-up, analyzers)")
        print(f"{'dataset':<34} {'n':>6} {'floor s':>8} {'variant':<22} {'step s':>8} "
              f"{'ex/s':>6} {'step/floor':>10}")
        met = []
        for name, source, size, channels in cases:
            key = name.split()[0]
            data, examples = ingest(source, f"{root}/{key}", size, channels)
            os.makedirs(f"{root}/{key}/floor0")
            os.makedirs(f"{root}/{key}/floor1")
            floor(examples, data, f"{root}/{key}/floor0")     # warm up tf.function tracing
            floor_s, n = floor(examples, data, f"{root}/{key}/floor1")
            from components.steps.transform import should_materialize
            from components.config.transform import TransformConfig

            auto = should_materialize(TransformConfig(), data, n)
            for variant, materialize in (("materialized", True),
                                         ("graph only", False)):
                step_s = transform_step(examples, data, f"{root}/{key}/tg-{materialize}",
                                        materialize)
                label = variant + (" (auto)" if materialize == auto else "")
                print(f"{name:<34} {n:6d} {floor_s:8.2f} {label:<22} {step_s:8.2f} "
                      f"{n / step_s:6.0f} {step_s / floor_s:9.1f}x")
                if materialize:
                    met.append(step_s / floor_s <= 3.0)
        print("target: materialized step <= 3x the floor on both datasets: "
              f"{'met' if all(met) else 'NOT met'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
