"""Where `imgpipe run`'s time goes, next to the same work done bare, and the three ratios
the project holds itself to (issue 36), each measured side by side in one run.

Jobs (each in fresh processes, in an empty folder, one after the other):
- demo: `imgpipe run configs/fonts.yaml` (2,790 36x36 glyphs, deep CNN, 40 epochs, batch
  64) against a bare Keras script that loads the same glyphs as PNG files (written
  before timing), standardizes them, and fits the same network (written out) with the
  same optimizer, batch and epochs, scoring Keras' own validation split each epoch
  (`validation_split=0.1`, as the pipeline scores its 10% validation split), then
  evaluates on a 10% eval split. Target <= 1.3x.
- fashion: `imgpipe run configs/fashion_mnist.yaml` against the Keras beginner
  tutorial's own script (bench/fashion.py's), on the Debian package's IDX files.
  Target <= 1.5x, accuracy no more than a point below.
- digits: `imgpipe run configs/digits.yaml` cold (empty folder) and unchanged (the
  third run: every step reused), against TFX 1.16's LocalDagRunner on the same digits
  (../shared/anchors/tfx: `bash setup.sh` builds its venv, the data is made here when
  missing), full run and cached rerun. Targets <= 0.25x cold, 0.03x unchanged.

For the demo and Fashion-MNIST it prints each step's wall time next to its floor (the
same work done bare, in a fresh process after the run, TensorFlow imported before
timing): transform against one tf.data pass over the run's raw examples (parse, decode,
resize, scale, and the full-pass mean and variance when the config standardizes);
evaluate against loading the run's SavedModel and one forward pass over the eval split;
train against the bare script's `fit`. Then the time outside steps, from the times the
run's lines reached the bench: start-up (process start, imports, config) until the run's
first line, between steps (cache keys, lineage records, the memory release after each
step, the wait for a step running beside another), and the end (report, exit) after
the last step.
Usage: python bench/breakdown.py [--jobs demo,fashion,digits] [--tfx-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
IMGPIPE = os.path.join(os.path.dirname(sys.executable), "imgpipe")
FASHION = "/usr/share/datasets/fashion-mnist"
TFX_DIR = os.path.join(ROOT, "..", "shared", "anchors", "tfx")
TFX_BASE = os.environ.get("TFX_ANCHOR_BASE", "/tmp/tfxanchor")
TARGET = {"demo": 1.3, "fashion": 1.5, "digits_cold": 0.25, "digits_rerun": 0.03}

# The demo's network (components/trainer/models.py, kind deep_cnn, 5 classes) written
# out as a user's own script would, on standardized pixels.
BARE_DEMO = r"""
import glob, json, os, sys, time
import numpy as np
from PIL import Image
import keras

folder = sys.argv[1]
keras.utils.set_random_seed(42)
def load(split):
    paths = sorted(glob.glob(os.path.join(folder, split, "*", "*.png")))
    x = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])[..., None]
    names = [p.split(os.sep)[-2] for p in paths]
    return x.astype("float32"), names
x, names = load("train")
xe, names_e = load("eval")
classes = sorted(set(names))
y = np.array([classes.index(n) for n in names])
ye = np.array([classes.index(n) for n in names_e])
order = np.random.default_rng(0).permutation(len(x))   # validation_split takes the tail
x, y = x[order], y[order]
mean, std = x.mean(), x.std()
x, xe = (x - mean) / std, (xe - mean) / std
inputs = keras.Input(shape=x.shape[1:])
h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
h = keras.layers.MaxPooling2D(2)(h)
h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(h)
h = keras.layers.MaxPooling2D(2)(h)
h = keras.layers.Flatten()(h)
h = keras.layers.Dense(32, activation="relu")(h)
h = keras.layers.Dropout(0.5)(h)
outputs = keras.layers.Dense(len(classes), activation="softmax")(h)
net = keras.Model(inputs, outputs)
net.compile(optimizer=keras.optimizers.Adam(0.001), loss="sparse_categorical_crossentropy",
            metrics=["accuracy"])
started = time.perf_counter()
net.fit(x, y, batch_size=64, epochs=40, validation_split=0.1, verbose=0)
fit_s = time.perf_counter() - started
_, accuracy = net.evaluate(xe, ye, batch_size=256, verbose=0)
print("RESULT " + json.dumps({"accuracy": accuracy, "fit_s": fit_s,
                              "params": net.count_params()}))
"""

FLOORS = r"""
import json, sys, time
import tensorflow as tf
sys.path.insert(0, sys.argv[3])
from components import artifacts, features

run_dir, standardize = sys.argv[1], sys.argv[2] == "standardize"
examples = artifacts.read(f"{run_dir}/ingest/examples")
model = artifacts.read(f"{run_dir}/train/trained_model")
size, channels = model.properties["image_shape"][:2], model.properties["image_shape"][2]
spec = features.raw_feature_spec()

def split(name):
    return (tf.data.TFRecordDataset(features.split_files(examples, name), compression_type="GZIP")
            .batch(256))

started = time.perf_counter()
def decode(raw):
    f = tf.io.parse_example(raw, spec)
    pixels = features.decode_and_resize(f[features.IMAGE], tuple(size), channels, False)
    return tf.cast(pixels, tf.float32) / 255.0
total = count = squares = 0.0
for name in ("train", "eval"):
    for x in split(name).map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2):
        if name == "train" and standardize:
            total += float(tf.reduce_sum(x)); squares += float(tf.reduce_sum(x * x))
        count += int(tf.size(x))
transform_s = time.perf_counter() - started

started = time.perf_counter()
serve = tf.saved_model.load(model.path(artifacts.Model.SAVED_MODEL)).signatures[
    features.EXAMPLES_SIGNATURE]
label_spec = {features.LABEL: tf.io.FixedLenFeature([], tf.string)}
vocabulary = model.properties["label_vocabulary"]
right = seen = 0
for raw in split("eval"):
    labels = tf.io.parse_example(raw, label_spec)[features.LABEL].numpy()
    predicted = serve(examples=raw)["class_id"].numpy()
    right += sum(vocabulary[p] == l.decode() for p, l in zip(predicted, labels))
    seen += len(labels)
evaluate_s = time.perf_counter() - started
print("RESULT " + json.dumps({"transform": transform_s, "evaluate": evaluate_s,
                              "eval_accuracy": right / seen}))
"""


def timed(command: list[str], cwd: str) -> dict:
    """Runs `command` in a fresh process: wall seconds, peak RSS (GiB), exit code, and
    its output lines, each with the seconds since start at which it arrived."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, bufsize=1)
    lines = [(time.perf_counter() - started, line.rstrip("\n")) for line in proc.stdout]
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{command[:3]} failed ({code}):\n"
                         + "\n".join(text for _, text in lines[-40:]))
    return {"seconds": seconds, "rss_gib": usage.ru_maxrss / 2 ** 20, "lines": lines}


def result_of(proc: dict) -> dict:
    return json.loads(next(text for _, text in proc["lines"]
                           if text.startswith("RESULT "))[len("RESULT "):])


def imgpipe(config: str, work: str) -> dict:
    """`imgpipe run CONFIG` in `work`: wall time, each step's own time (as the run prints
    it) and its start and end as seen here, start-up, gaps, end, accuracy, run dir."""
    proc = timed([IMGPIPE, "run", os.path.join(ROOT, "configs", config)], work)
    lines = proc["lines"]
    first = next(t for t, text in lines if text.startswith("run "))
    spans, steps, cached = {}, {}, 0
    for t, text in lines:
        if m := re.match(r"^  (\w+)\s+running\b", text):
            spans[m[1]] = [t, None]
        elif m := re.match(r"^  (\w+)\s+done\s+([\d.]+)s", text):
            spans[m[1]][1] = t
            steps[m[1]] = float(m[2])
        elif re.match(r"^  (\w+)\s+cached\b", text):
            cached += 1
    last = max((end for _, end in spans.values() if end is not None), default=first)
    # time inside any step: the union of the steps' own intervals, from its running line
    # for as long as it says it ran (one runs beside another); what its done line came
    # later (records, the memory release after it) counts as between steps
    inside, edge = 0.0, first
    for start, own in sorted((s[0], steps[name]) for name, s in spans.items()
                             if s[1] is not None):
        inside += max(0.0, start + own - max(start, edge))
        edge = max(edge, start + own)
    accuracy = re.search(r"accuracy ([\d.]+) on \d+ eval examples",
                         "\n".join(text for _, text in lines))
    run_id = next(text.split()[1] for _, text in lines if text.startswith("run "))
    return {"seconds": proc["seconds"], "rss_gib": proc["rss_gib"], "steps": steps,
            "startup": first, "gaps": (last - first) - inside, "end": proc["seconds"] - last,
            "accuracy": float(accuracy[1]) if accuracy else None, "cached": cached,
            "run_dir": os.path.join(work, "runs", run_id)}


def floors(run_dir: str, normalize: str, work: str) -> dict:
    proc = timed([sys.executable, "-c", FLOORS, run_dir, normalize, ROOT], work)
    return result_of(proc)


def write_fonts_pngs(folder: str) -> None:
    """The built-in fonts as PNG files in train/CLASS/ and eval/CLASS/ (10% eval, by a
    seeded draw), as a user's folder of glyphs would be."""
    import numpy as np
    from PIL import Image

    from components.data.datasets import load_fonts

    data = load_fonts()
    is_eval = np.random.default_rng(1).random(len(data.images)) < 0.1
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        path = os.path.join(folder, "eval" if is_eval[i] else "train", str(label), f"{i}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)


def job(name: str, config: str, normalize: str, bare: list[str], work: str) -> dict:
    script = timed(bare, work)
    run = imgpipe(config, work)
    floor = floors(run["run_dir"], normalize, work)
    bare_result = result_of(script)
    return {"job": name, "bare_s": script["seconds"], "bare_rss_gib": script["rss_gib"],
            "bare_fit_s": bare_result["fit_s"], "bare_accuracy": bare_result["accuracy"],
            "pipeline": run, "floors": floor, "ratio": run["seconds"] / script["seconds"]}


def show(row: dict) -> None:
    run, floor = row["pipeline"], row["floors"]
    floor_of = {"transform": floor["transform"], "train": row["bare_fit_s"],
                "evaluate": floor["evaluate"]}
    print(f"\n{row['job']}: imgpipe run {run['seconds']:.1f} s (peak RSS "
          f"{run['rss_gib']:.2f} GiB, accuracy {run['accuracy']:.4f}) vs bare script "
          f"{row['bare_s']:.1f} s (its fit {row['bare_fit_s']:.1f} s, peak RSS "
          f"{row['bare_rss_gib']:.2f} GiB, accuracy {row['bare_accuracy']:.4f}): ratio "
          f"{row['ratio']:.2f}x (target <= {TARGET[row['job']]}x)")
    print(f"  {'step':<15}{'wall s':>8}{'floor s':>9}")
    for step, seconds in run["steps"].items():
        bare = f"{floor_of[step]:9.1f}" if step in floor_of else f"{'':>9}"
        print(f"  {step:<15}{seconds:8.1f}{bare}")
    print(f"  {'start-up':<15}{run['startup']:8.1f}   (process start, imports, config: until "
          "the run's first line)")
    print(f"  {'between steps':<15}{run['gaps']:8.1f}   (keys, records, memory release, the "
          "wait for a step beside)")
    print(f"  {'end':<15}{run['end']:8.1f}   (report, exit)")


def tfx_run(python: str, root: str, work: str) -> float:
    data = os.path.join(TFX_BASE, "data")
    script = os.path.join(TFX_DIR, "digits_pipeline.py")
    if not os.path.isfile(os.path.join(data, "train", "data.tfrecord")):
        timed([python, script, "make-data", "--out", data], work)
    return timed([python, script, "run", "--root", root, "--data", data], work)["seconds"]


def digits(work: str, tfx_python: str) -> dict:
    runs = [imgpipe("digits.yaml", work) for _ in range(3)]
    if not os.path.isfile(tfx_python):
        raise SystemExit(f"{tfx_python} is missing: run `bash setup.sh` in {TFX_DIR}")
    tfx_cold = tfx_run(tfx_python, os.path.join(work, "tfx"), work)
    tfx_cached = tfx_run(tfx_python, os.path.join(work, "tfx"), work)
    return {"cold_s": runs[0]["seconds"], "rerun_s": runs[2]["seconds"],
            "rerun_cached_steps": runs[2]["cached"], "cold_rss_gib": runs[0]["rss_gib"],
            "accuracy": runs[0]["accuracy"], "steps": runs[0]["steps"],
            "tfx_cold_s": tfx_cold, "tfx_cached_s": tfx_cached,
            "cold_ratio": runs[0]["seconds"] / tfx_cold,
            "rerun_ratio": runs[2]["seconds"] / tfx_cached}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", default="demo,fashion,digits")
    parser.add_argument("--tfx-python", default=os.path.join(TFX_BASE, "venv310", "bin",
                                                             "python"))
    args = parser.parse_args()
    jobs = args.jobs.split(",")
    rows, report = [], {}
    if "demo" in jobs:
        with tempfile.TemporaryDirectory() as work:
            write_fonts_pngs(os.path.join(work, "pngs"))
            rows.append(job("demo", "fonts.yaml", "standardize",
                            [sys.executable, "-c", BARE_DEMO, os.path.join(work, "pngs")], work))
    if "fashion" in jobs:
        if not os.path.isdir(FASHION):
            raise SystemExit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
        from bench.fashion import TUTORIAL

        with tempfile.TemporaryDirectory() as work:
            rows.append(job("fashion", "fashion_mnist.yaml", "scale",
                            [sys.executable, "-c", TUTORIAL, FASHION], work))
    if "digits" in jobs:
        with tempfile.TemporaryDirectory() as work:
            report["digits"] = digits(work, args.tfx_python)
    for row in rows:
        row["pipeline"].pop("run_dir")
        report[row["job"]] = row
    print(json.dumps(report, indent=2))
    for row in rows:
        show(row)
    if "digits" in report:
        d = report["digits"]
        print(f"\ndigits: cold {d['cold_s']:.1f} s vs TFX LocalDagRunner {d['tfx_cold_s']:.1f} s: "
              f"{d['cold_ratio']:.2f}x (target <= {TARGET['digits_cold']}x); unchanged rerun "
              f"{d['rerun_s']:.2f} s ({d['rerun_cached_steps']} steps reused) vs TFX cached "
              f"{d['tfx_cached_s']:.1f} s: {d['rerun_ratio']:.3f}x (hold "
              f"{TARGET['digits_rerun']}x); accuracy {d['accuracy']:.4f}, peak RSS "
              f"{d['cold_rss_gib']:.2f} GiB")
    print("\nratios: " + ", ".join(
        [f"{r['job']} {r['ratio']:.2f}x (<= {TARGET[r['job']]})" for r in rows]
        + ([f"digits cold {report['digits']['cold_ratio']:.2f}x (<= 0.25)"]
           if "digits" in report else [])))


if __name__ == "__main__":
    main()
