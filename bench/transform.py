"""Transform step throughput vs a plain tf.data pipeline on the same TFRecords.

Two datasets: the built-in fonts (36x36x1, 2,790 images) and 3-channel photos resized
to 192x192 (the real photos in ../shared/data/sign_language_digits when present,
else synthetic JPEGs). The floor reads the same raw TFRecords with tf.data and does
the same decode/resize/scale (no analyzers, no Beam). Usage: python bench/transform.py
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
    from components.config import BeamConfig, DataConfig, IngestConfig

    data = DataConfig(source=source, image_size=image_size, channels=channels)
    ingest_step.run(data, IngestConfig(), BeamConfig(), examples=f"{out}/examples",
                    statistics=f"{out}/statistics")
    return data, artifacts.read(f"{out}/examples")


def floor(examples, data) -> tuple[float, int]:
    import tensorflow as tf

    from components import features

    started = time.perf_counter()
    files = tf.io.gfile.glob(examples.path("*", "*.tfrecord.gz"))
    spec = features.raw_feature_spec()
    ds = (tf.data.TFRecordDataset(files, compression_type="GZIP")
          .batch(256)
          .map(lambda raw: tf.io.parse_example(raw, spec), num_parallel_calls=tf.data.AUTOTUNE)
          .map(lambda f: features.decode_and_resize(f[features.IMAGE], tuple(data.image_size),
                                                    data.channels, False) / 255.0,
               num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    n = 0
    for batch in ds:
        n += int(batch.shape[0])
    return time.perf_counter() - started, n


def transform_step(examples, data, out, materialize=True) -> float:
    from components.steps import transform
    from components.config import BeamConfig, TransformConfig

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
        cases = [("fonts 36x36x1", "builtin:fonts", (36, 36), 1),
                 (f"photos 192x192x3 ({'real' if photos == PHOTOS else 'synthetic'})",
                  photos, (192, 192), 3)]
        # Fixed cost: the same step on 12 tiny images (graph tracing, Beam, analyzers).
        from tests import fixtures
        fixtures.make_class_folders(f"{root}/tiny", per_class=4)
        data, examples = ingest(f"{root}/tiny", f"{root}/tinyout", (36, 36), 1)
        fixed = min(transform_step(examples, data, f"{root}/tinyout/tg{i}") for i in range(2))
        print(f"fixed cost of the transform step (12 images): {fixed:.2f} s")
        print(f"{'dataset':<34} {'n':>6} {'floor s':>8} {'variant':<18} {'step s':>8} "
              f"{'ex/s':>6} {'step/floor':>10}")
        for name, source, size, channels in cases:
            data, examples = ingest(source, f"{root}/{name.split()[0]}", size, channels)
            floor(examples, data)                      # warm up tf.function tracing
            floor_s, n = floor(examples, data)
            for variant, materialize in (("materialized", True), ("graph only", False)):
                step_s = transform_step(examples, data,
                                        f"{root}/{name.split()[0]}/tg-{materialize}", materialize)
                print(f"{name:<34} {n:6d} {floor_s:8.2f} {variant:<18} {step_s:8.2f} "
                      f"{n / step_s:6.0f} {step_s / floor_s:9.1f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
