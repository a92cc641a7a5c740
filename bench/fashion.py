"""The whole pipeline on Fashion-MNIST vs the Keras beginner tutorial's own script.

Both in fresh processes, side by side, on the same IDX files (Debian package
dataset-fashion-mnist): the tutorial script (load, /255, Flatten-Dense(128)-Dense(10),
adam, 5 epochs, batch 32, evaluate on the test split) against `imgpipe run
configs/fashion_mnist.yaml` in an empty folder (ingest 60,000 + 10,000 images,
validate, transform, train the same model, evaluate with TFMA, infra validation,
push). Prints wall times, the ratio (target <= 2.0), accuracies (target: within one
point of the script), peak RSS, and the pipeline's per-step times.
Usage: python bench/fashion.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMGPIPE = os.path.join(os.path.dirname(sys.executable), "imgpipe")
DATA = "/usr/share/datasets/fashion-mnist"

TUTORIAL = r"""
import gzip, json, sys, time
import numpy as np
import tensorflow as tf

def idx(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims)

d = sys.argv[1]
train_images, train_labels = idx(f"{d}/train-images-idx3-ubyte.gz"), idx(f"{d}/train-labels-idx1-ubyte.gz")
test_images, test_labels = idx(f"{d}/t10k-images-idx3-ubyte.gz"), idx(f"{d}/t10k-labels-idx1-ubyte.gz")
train_images, test_images = train_images / 255.0, test_images / 255.0
tf.keras.utils.set_random_seed(42)
model = tf.keras.Sequential([
    tf.keras.layers.Flatten(input_shape=(28, 28)),
    tf.keras.layers.Dense(128, activation="relu"),
    tf.keras.layers.Dense(10)])
model.compile(optimizer="adam",
              loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
started = time.perf_counter()
model.fit(train_images, train_labels, epochs=5, verbose=0)
fit_s = time.perf_counter() - started
_, accuracy = model.evaluate(test_images, test_labels, verbose=0)
print("RESULT " + json.dumps({"accuracy": accuracy, "fit_s": fit_s}))
"""


def timed(command: list[str], cwd: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GiB of the child, its output)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[0]} failed:\n{out[-3000:]}")
    return seconds, usage.ru_maxrss / 2 ** 20, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if not os.path.isdir(DATA):
        raise SystemExit(f"{DATA} is missing: apt-get install dataset-fashion-mnist")
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as work:
            script_s, script_rss, out = timed([sys.executable, "-c", TUTORIAL, DATA], work)
            script = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
            run_s, run_rss, out = timed(
                [IMGPIPE, "run", os.path.join(ROOT, "configs", "fashion_mnist.yaml")], work)
        steps = {m[1]: float(m[2]) for m in re.finditer(r"^  (\w+)\s+done\s+([\d.]+)s", out,
                                                       re.M)}
        accuracy = float(re.search(r"accuracy ([\d.]+) on \d+ eval examples", out)[1])
        rows.append({"script_s": script_s, "script_fit_s": script["fit_s"],
                     "script_accuracy": script["accuracy"], "pipeline_s": run_s,
                     "pipeline_accuracy": accuracy, "ratio": run_s / script_s,
                     "script_rss_gib": script_rss, "pipeline_rss_gib": run_rss,
                     "steps_s": steps})
    med = {key: statistics.median(r[key] for r in rows)
           for key in rows[0] if key != "steps_s"}
    print(json.dumps({"runs": rows, "median": med}, indent=2))
    print(f"\ntutorial script {med['script_s']:.1f} s (fit {med['script_fit_s']:.1f} s), "
          f"accuracy {med['script_accuracy']:.4f}, peak RSS {med['script_rss_gib']:.2f} GiB")
    print(f"imgpipe run      {med['pipeline_s']:.1f} s, accuracy {med['pipeline_accuracy']:.4f}, "
          f"peak RSS {med['pipeline_rss_gib']:.2f} GiB")
    print(f"ratio {med['ratio']:.2f} (target <= 2.0); accuracy difference "
          f"{med['pipeline_accuracy'] - med['script_accuracy']:+.4f} (target >= -0.01)")
    print("pipeline steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in rows[-1]["steps_s"].items()))


if __name__ == "__main__":
    main()
