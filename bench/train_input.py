"""Is the input pipeline the bottleneck? Training steps per second fed from the
transformed TFRecords (the trainer's own `make_dataset`) vs from the same tensors
already in memory, in one run, same model, batch and shuffle. Target ratio >= 0.9.

Two TFRecord variants: with the in-memory cache (the default when the data fits
`train.cache_memory_mb`) and streaming (cache_memory_mb: 0: every epoch reads, parses
and shuffles the GZIP TFRecords again). Data: the built-in fonts (36x36x1), or
--source/--size for others, e.g. --source ../shared/data/sign_language_digits --size 64
--channels 3. Usage: python bench/train_input.py [--model deep_cnn] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def prepare(tmp: str, source: str, size: int, channels: int):
    from components import artifacts
    from components.steps import ingest, transform
    from components.config.beam import BeamConfig
    from components.config.data import DataConfig
    from components.config.ingest import IngestConfig
    from components.config.transform import TransformConfig

    data = DataConfig(source=source, image_size=(size, size), channels=channels)
    ingest.run(data, IngestConfig(), BeamConfig(), examples=f"{tmp}/ex", statistics=f"{tmp}/st")
    transform.run(artifacts.read(f"{tmp}/ex"), data, TransformConfig(), BeamConfig(),
                  transform_graph=f"{tmp}/tg")
    return artifacts.read(f"{tmp}/tg"), artifacts.read(f"{tmp}/ex")


def steps_per_second(model_cfg, train_cfg, dataset, shape, classes, epochs: int) -> float:
    import keras

    from components.trainer import models

    keras.utils.set_random_seed(0)
    net = models.build(model_cfg, shape, classes)
    net.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    net.fit(dataset, epochs=1, verbose=0)  # warm-up: tracing, first read, cache fill

    class Timer(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            Timer.steps += 1

    started = time.perf_counter()
    net.fit(dataset, epochs=epochs, verbose=0, callbacks=[Timer()])
    return Timer.steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="builtin:fonts")
    parser.add_argument("--size", type=int, default=36)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--model", default="deep_cnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from components.trainer import inputs
    from components.config.model import ModelConfig
    from components.config.train import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        graph, examples = prepare(tmp, args.source, args.size, args.channels)
        shape = tuple(graph.properties["image_shape"])
        classes = graph.properties["num_classes"]
        model = ModelConfig(kind=args.model)
        cached_cfg = TrainConfig(batch_size=args.batch_size)
        stream_cfg = TrainConfig(batch_size=args.batch_size, cache_memory_mb=0)
        cached = inputs.make_dataset(graph, examples, "train", args.batch_size, cached_cfg,
                                     True, False)
        stream = inputs.make_dataset(graph, examples, "train", args.batch_size, stream_cfg,
                                     True, False)
        images, labels = [], []
        for x, y in inputs.make_dataset(graph, examples, "train", 4096, cached_cfg, False, False):
            images.append(x.numpy())
            labels.append(y.numpy())
        images, labels = np.concatenate(images), np.concatenate(labels)
        memory = (tf.data.Dataset.from_tensor_slices((images, labels))
                  .shuffle(len(images), seed=42, reshuffle_each_iteration=True)
                  .batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
        rates = {}
        for name, ds in (("in_memory", memory), ("tfrecord_cached", cached),
                         ("tfrecord_streaming", stream)):
            rates[name] = steps_per_second(model, cached_cfg, ds, shape, classes, args.epochs)
    print(f"{args.source} {shape}, {len(images)} train images, {args.model}, batch "
          f"{args.batch_size}, {args.epochs} timed epochs, "
          f"{tf.config.list_logical_devices('GPU') and 'GPU' or 'CPU'}")
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:8.1f} steps/s  ratio vs in-memory "
              f"{rate / rates['in_memory']:.2f}")


if __name__ == "__main__":
    main()
