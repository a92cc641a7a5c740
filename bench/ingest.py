"""Ingest throughput vs a bare single-process loop, measured in one run.

The floor reads each PNG, decodes it once with Pillow (the check ingest makes
anyway), hashes it and writes the same GZIP TFRecords with TensorFlow's writer.
The ingest step runs with its default runner settings and, for comparison, in each
DirectRunner mode. The target: ingest at least 0.5x the floor's throughput at about
60,000 images (the default, 22 shifted copies of the fonts dataset).
Usage: python bench/ingest.py [--copies N] [--repeats N]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_corpus(root: str, copies: int) -> list[str]:
    """The fonts dataset as PNG files; `copies` > 1 adds shifted copies (distinct bytes)."""
    import numpy as np

    from components.data import datasets

    data = datasets.load_fonts()
    paths = []
    for copy in range(copies):
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = os.path.join(root, str(label))
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{copy}-{i:05d}.png")
            with open(path, "wb") as handle:
                handle.write(datasets.encode_png(np.roll(image, copy, axis=1)))
            paths.append(path)
    return paths


def floor(paths: list[str], out_dir: str) -> float:
    import tensorflow as tf
    from PIL import Image

    started = time.perf_counter()
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(out_dir, "floor.tfrecord.gz"), options) as writer:
        for path in paths:
            with open(path, "rb") as handle:
                data = handle.read()
            image = Image.open(io.BytesIO(data))
            image.load()
            record_id = hashlib.sha256(data).hexdigest()[:32]
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
                "label": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[os.path.basename(os.path.dirname(path)).encode()])),
                "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.height])),
                "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.width])),
                "channels": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[record_id.encode()])),
                "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    return time.perf_counter() - started


def ingest_step(source: str, out_dir: str, options: dict) -> float:
    from components.steps import ingest
    from components.config.beam import BeamConfig
    from components.config.data import DataConfig
    from components.config.ingest import IngestConfig

    started = time.perf_counter()
    ingest.run(DataConfig(source=source), IngestConfig(), BeamConfig(options=options),
               examples=os.path.join(out_dir, "examples"),
               statistics=os.path.join(out_dir, "statistics"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=22, help="fonts copies (2,790 PNGs each)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import apache_beam  # noqa: F401  (imports are not what we measure)
    import tensorflow  # noqa: F401

    root = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        paths = make_corpus(os.path.join(root, "src"), args.copies)
        n = len(paths)
        cores = os.cpu_count() or 1
        modes = {"default": {},
                 "in_memory": {"direct_running_mode": "in_memory"},
                 f"multi_processing x{cores}": {"direct_running_mode": "multi_processing",
                                                "direct_num_workers": cores}}
        times: dict[str, list[float]] = {"floor": []}
        for mode in modes:
            times[mode] = []
        for rep in range(args.repeats):
            out = os.path.join(root, f"floor{rep}")
            os.makedirs(out)
            times["floor"].append(floor(paths, out))
            for mode, options in modes.items():
                out = os.path.join(root, f"{mode.split()[0]}{rep}")
                times[mode].append(ingest_step(os.path.join(root, "src"), out, options))
        floor_time = statistics.median(times["floor"])
        print(f"ingest benchmark: {n} PNG files of 36x36, {os.cpu_count()} cores, "
              f"median of {args.repeats}")
        print(f"{'variant':<24} {'seconds':>8} {'images/s':>10} {'ratio to floor':>15}")
        for name, values in times.items():
            t = statistics.median(values)
            print(f"{name:<24} {t:8.2f} {n / t:10.0f} {floor_time / t:15.2f}")
        ratio = floor_time / statistics.median(times["default"])
        print(f"target: default >= 0.50 of the floor's throughput: "
              f"{'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
