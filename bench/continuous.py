"""Continuous training, as a daily schedule runs it: a data drop lands each day, and each
day `imgpipe run` trains on the newest 5 drops (`data.spans: {rolling: 5}`), warm
started from the model in production (`train.warm_start: NAME@production`), blessed
against production on the newest drop's eval split, and pushed to production.

The drops are generated here: --drops (12) days of --per-drop (3,000) images, 16x16
grayscale digits (scikit-learn's, upscaled, each one shifted, rescaled in brightness
and noised anew, so no two drops share an image), 10 classes in equal shares, except
the --drift days (6 and 11), where a third of the drop is one class (the shares a
broken labelling job or a new camera gives). Day d's folder is written just before
day d's run, as a schedule would find it.

Per run it prints the wall time of `imgpipe run` (a fresh process, as cron starts it),
the spans ingested anew and reused, the eval accuracy, the blessing and the drift
verdict, and, side by side on each steady-state run (window full, drop not drifted),
the wall time of a bare Keras script (a fresh process too) that trains the same model
with the same optimizer, batch and epochs on the same window from in-memory arrays
and evaluates it on the newest drop. Then it checks:

- the per-run time stays flat within 25% once the window is full (ingest reads the
  new drop only, not the history);
- each steady-state run costs at most 1.5x the bare Keras script;
- each drifted drop stops at validate with exit 3;

and writes a plot of time and accuracy by run (--plot). Exit 1 when a check fails.
Usage: python bench/continuous.py [--drops 12] [--per-drop 3000] [--epochs 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
IMGPIPE = os.path.join(os.path.dirname(sys.executable), "imgpipe")
NAME = "daily"
SIZE = 16
WINDOW = 5
EVAL_FRACTION = 0.25
TARGET = {"flat": 1.25, "vs_keras": 1.5}

# The same network `model: {kind: cnn, hidden_units: [64], dropout: 0.25}` builds
# (components/trainer/models.py), written out as a user's own script would, on pixels / 255.
BARE_KERAS = r"""
import sys, time, json
started = time.perf_counter()
import numpy as np
import keras
data = np.load(sys.argv[1])
epochs, batch, rate = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
keras.utils.set_random_seed(0)
x, y = data["x_train"].astype("float32") / 255.0, data["y_train"]
xe, ye = data["x_eval"].astype("float32") / 255.0, data["y_eval"]
inputs = keras.Input(shape=x.shape[1:])
h = keras.layers.Conv2D(4, 5, padding="same", activation="relu")(inputs)
h = keras.layers.MaxPooling2D(2)(h)
h = keras.layers.Flatten()(h)
h = keras.layers.Dense(64, activation="relu")(h)
h = keras.layers.Dropout(0.25)(h)
outputs = keras.layers.Dense(10, activation="softmax")(h)
net = keras.Model(inputs, outputs)
net.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy",
            metrics=["accuracy"])
fit = time.perf_counter()
net.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
_, accuracy = net.evaluate(xe, ye, batch_size=256, verbose=0)
print(json.dumps({"accuracy": accuracy, "fit_s": time.perf_counter() - fit,
                  "script_s": time.perf_counter() - started}))
"""


def base_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)
    return np.kron(images, np.ones((1, 2, 2), np.float32)), digits.target  # 8x8 -> 16x16


def make_drop(day: int, count: int, drifted: bool, base: tuple[np.ndarray, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
    """`count` new images: a digit, shifted up to 2 pixels, brightness x0.8-1.2, noise."""
    rng = np.random.default_rng(1000 + day)
    images, targets = base
    shares = np.full(10, 0.1)
    if drifted:
        shares = np.full(10, (1 - 1 / 3) / 9)
        shares[day % 10] = 1 / 3
    labels = rng.choice(10, size=count, p=shares)
    out = np.empty((count, SIZE, SIZE), np.uint8)
    for i, label in enumerate(labels):
        image = images[rng.choice(np.flatnonzero(targets == label))]
        dy, dx = rng.integers(-2, 3, size=2)
        image = np.roll(np.roll(image, dy, axis=0), dx, axis=1)
        image = image * rng.uniform(0.8, 1.2) + rng.normal(0, 12, image.shape)
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out, labels


def write_drop(folder: str, images: np.ndarray, labels: np.ndarray) -> None:
    from components.data.datasets import encode_png

    for index, (image, label) in enumerate(zip(images, labels)):
        path = os.path.join(folder, f"digit_{label}", f"{index:05d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(encode_png(image))


def config(work: str, epochs: int) -> str:
    path = os.path.join(work, "daily.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump({
            "name": NAME,
            "data": {"source": os.path.join(work, "drops") + "/{YYYY}-{MM}-{DD}/",
                     "image_size": [SIZE, SIZE], "channels": 1,
                     "spans": {"rolling": WINDOW}, "eval_fraction": EVAL_FRACTION},
            "model": {"kind": "cnn", "hidden_units": [64], "dropout": 0.25},
            "train": {"epochs": epochs, "batch_size": 32, "warm_start": f"{NAME}@production",
                      "optimizer": {"name": "adam", "learning_rate": 0.001}},
            "evaluate": {"thresholds": {"accuracy": {"min": 0.8}}},
            "push": {"destination": os.path.join(work, "serving"), "promote_to": "production"},
        }, handle, sort_keys=False)
    return path


def run_pipeline(work: str, path: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    proc = subprocess.run([IMGPIPE, "run", path, "--runs-dir", os.path.join(work, "runs")],
                          cwd=work, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    out = proc.stdout
    ingest = re.search(r"span\(s\) \S+: ingested (\d+)(?: \([^)]*\))?, reused (\d+)", out)
    accuracy = re.search(r"accuracy ([\d.]+) on (\d+) eval examples", out)
    drift = re.findall(r"(?:error|warning): (\w+_drift) \[\w+\] (.*)", out)
    blessing = ("BLESSED" if re.search(r"^\s+BLESSED", out, re.M) else
                "NOT BLESSED" if "NOT BLESSED" in out else "-")
    steps = {m[1]: float(m[2]) for m in re.finditer(r"^  (\w+)\s+done\s+([\d.]+)s", out, re.M)}
    if proc.returncode not in (0, 3):
        raise SystemExit(f"imgpipe run failed (exit {proc.returncode}):\n{out[-3000:]}")
    return {"seconds": seconds, "exit": proc.returncode, "steps": steps,
            "ingested": int(ingest[1]) if ingest else None,
            "reused": int(ingest[2]) if ingest else None,
            "accuracy": float(accuracy[1]) if accuracy else None,
            "eval_examples": int(accuracy[2]) if accuracy else None,
            "blessing": blessing,
            "drift": list(dict.fromkeys(f"{kind}: {what}" for kind, what in drift)),
            "warm_start": "warm start from" in out}


def run_bare_keras(work: str, window: list[tuple[np.ndarray, np.ndarray]], epochs: int) -> dict:
    """The window as in-memory arrays: every older drop and 75% of the newest to train,
    the newest's other 25% to evaluate (the pipeline's split, by count)."""
    *older, (new_x, new_y) = window
    cut = int(len(new_x) * (1 - EVAL_FRACTION))
    path = os.path.join(work, "window.npz")
    np.savez(path, x_train=np.concatenate([x for x, _ in older] + [new_x[:cut]])[..., None],
             y_train=np.concatenate([y for _, y in older] + [new_y[:cut]]),
             x_eval=new_x[cut:, ..., None], y_eval=new_y[cut:])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BARE_KERAS, path, str(epochs), "32", "0.001"],
                          env=env, text=True, capture_output=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"the bare Keras script failed:\n{proc.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(proc.stdout.strip().splitlines()[-1])}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [row["day"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.bar([d - 0.2 for d in days], [row["seconds"] for row in rows], 0.4,
            label="imgpipe run", color=["#c0392b" if row["exit"] == 3 else "#2c7fb8"
                                       for row in rows])
    bare = [row for row in rows if row.get("keras")]
    top.bar([row["day"] + 0.2 for row in bare], [row["keras"]["seconds"] for row in bare], 0.4,
            label="bare Keras script", color="#999999")
    top.set_ylabel("wall time (s)")
    top.legend(loc="upper left")
    top.set_title("daily runs, rolling window of 5 drops (red: drift, stopped at validate)")
    done = [row for row in rows if row["accuracy"] is not None]
    bottom.plot([row["day"] for row in done], [row["accuracy"] for row in done], "o-",
                label="imgpipe (newest drop's eval split)")
    bottom.plot([row["day"] for row in bare], [row["keras"]["accuracy"] for row in bare], "s--",
                color="#999999", label="bare Keras script")
    bottom.set_ylabel("eval accuracy")
    bottom.set_xlabel("day (run)")
    bottom.set_xticks(days)
    bottom.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drops", type=int, default=12)
    parser.add_argument("--per-drop", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--drift", type=int, nargs="*", default=[6, 11],
                        help="days whose drop is drifted (1-based)")
    parser.add_argument("--plot", default="continuous.png")
    args = parser.parse_args()
    base = base_images()
    first_day = datetime.date.today() - datetime.timedelta(days=args.drops - 1)
    rows: list[dict] = []
    drops: list[tuple[np.ndarray, np.ndarray]] = []
    with tempfile.TemporaryDirectory(prefix="imgpipe-continuous-") as work:
        path = config(work, args.epochs)
        for day in range(1, args.drops + 1):
            drifted = day in args.drift
            drops.append(make_drop(day, args.per_drop, drifted, base))
            date = first_day + datetime.timedelta(days=day - 1)
            write_drop(os.path.join(work, "drops", date.isoformat()), *drops[-1])
            row = {"day": day, "date": date.isoformat(), "drifted": drifted,
                   **run_pipeline(work, path)}
            if day >= WINDOW and not drifted:
                row["keras"] = run_bare_keras(work, drops[-WINDOW:], args.epochs)
            rows.append(row)
            print(line(row), flush=True)
        plot(rows, args.plot)
    return report(rows, args)


def line(row: dict) -> str:
    keras = row.get("keras")
    return (f"day {row['day']:2d} {row['date']}  {row['seconds']:6.1f} s  exit {row['exit']}  "
            f"ingested {row['ingested']} reused {row['reused']}  "
            f"accuracy {row['accuracy'] if row['accuracy'] is not None else '-':<6}  "
            f"{row['blessing']:<11}  drift: {'; '.join(row['drift']) or 'none'}"
            + (f"  | bare Keras {keras['seconds']:.1f} s (fit {keras['fit_s']:.1f} s) "
               f"accuracy {keras['accuracy']:.4f}  ratio {row['seconds'] / keras['seconds']:.2f}"
               if keras else ""))


def report(rows: list[dict], args: argparse.Namespace) -> int:
    steady = [row for row in rows if row.get("keras")]
    times = [row["seconds"] for row in steady]
    ratios = [row["seconds"] / row["keras"]["seconds"] for row in steady]
    drifted = [row for row in rows if row["drifted"]]
    checks = {
        f"steady-state time flat within {TARGET['flat'] - 1:.0%} (max/min)":
            (max(times) / min(times), max(times) / min(times) <= TARGET["flat"]),
        f"steady-state run <= {TARGET['vs_keras']}x the bare Keras script (worst)":
            (max(ratios), max(ratios) <= TARGET["vs_keras"]),
        "one span ingested per run once the first exists":
            (sorted({row["ingested"] for row in rows[1:]}),
             all(row["ingested"] == 1 for row in rows[1:])),
        "drifted drops stop at validate (exit 3)":
            ([row["exit"] for row in drifted],
             all(row["exit"] == 3 and row["drift"] for row in drifted)),
        "healthy drops pass validate":
            ([row["day"] for row in rows if not row["drifted"] and row["exit"] != 0],
             all(row["exit"] == 0 for row in rows if not row["drifted"])),
    }
    print(f"\n{datetime.date.today()} on {platform.node()} ({os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}), python bench/continuous.py "
          f"--drops {args.drops} --per-drop {args.per_drop} --epochs {args.epochs}")
    print(f"steady-state runs (days {', '.join(str(r['day']) for r in steady)}): imgpipe "
          f"{min(times):.1f}-{max(times):.1f} s, bare Keras "
          f"{min(r['keras']['seconds'] for r in steady):.1f}-"
          f"{max(r['keras']['seconds'] for r in steady):.1f} s, ratio "
          f"{min(ratios):.2f}-{max(ratios):.2f}")
    print("where a steady-state run's time goes (median s): " + ", ".join(
        f"{step} {statistics.median(row['steps'].get(step, 0.0) for row in steady):.1f}"
        for step in steady[0]["steps"]))
    failed = 0
    for name, (value, ok) in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {value if not isinstance(value, float) else round(value, 3)}")
        failed += not ok
    print(f"plot: {os.path.abspath(args.plot)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
