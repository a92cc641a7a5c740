"""Scale curve: the data steps and one training epoch at growing sizes.

Each size runs in a fresh process: it generates N structured 28x28 grayscale PNGs
(10 classes of shifted, noisy glyph-like strokes; generated, not stored), runs
`ingest -> validate -> transform -> train` (1 epoch, dense model, a newcomer's
config otherwise) and reports the step times and its peak RSS. A run on 1,000 images
measures the fixed cost (imports, Beam start-up, graph tracing), which is subtracted
to give the marginal cost per image. Targets: marginal cost per image and peak RSS
each flat within 25% across sizes. Writes a PNG plot of both.

Usage: python bench/scale.py [--sizes 10000,60000,240000] [--plot scale.png]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
STEPS = ("ingest", "validate", "transform", "train")


def make_images(root: str, n: int, seed: int = 0) -> None:
    """n PNGs in 10 class folders: a class's stroke pattern, shifted and noised."""
    import numpy as np

    from components.data import datasets

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    bases = []
    for k in range(10):
        angle = np.pi * k / 10
        stroke = np.abs(np.cos(angle) * (xx - 14) + np.sin(angle) * (yy - 14)) < 2 + k % 3
        ring = np.abs(np.hypot(xx - 14, yy - 14) - (5 + k)) < 1.5
        bases.append(np.where(stroke | ring, 220.0, 20.0))
    for k in range(10):
        os.makedirs(os.path.join(root, str(k)), exist_ok=True)
    for i in range(n):
        k = i % 10
        image = np.roll(bases[k], (rng.integers(-4, 5), rng.integers(-4, 5)), axis=(0, 1))
        image = image * rng.uniform(0.6, 1.0) + rng.normal(0, 18, image.shape)
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        with open(os.path.join(root, str(k), f"{i:07d}.png"), "wb") as handle:
            handle.write(datasets.encode_png(pixels))


def one_size(n: int, work: str) -> dict:
    from pipeline import config as config_lib
    from pipeline.local.runner import run_pipeline

    started = time.perf_counter()
    make_images(os.path.join(work, "images"), n)
    generate_s = time.perf_counter() - started
    cfg = config_lib.from_dict({
        "name": "scale", "data": {"source": os.path.join(work, "images"),
                                  "image_size": [28, 28], "channels": 1},
        "model": {"kind": "dense"}, "train": {"epochs": 1}})
    result = run_pipeline(cfg, os.path.join(work, "runs"), until="train", log=lambda _: None)
    if result.status != "succeeded":
        raise SystemExit(f"the pipeline failed at {n} images: {result.error}")
    seconds = {s.step: s.seconds for s in result.steps}
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"n": n, "generate_s": generate_s, "steps": seconds,
            "total_s": sum(seconds.get(s, 0.0) for s in STEPS), "peak_rss_mb": peak_kb / 1024}


def run_child(n: int) -> dict:
    work = tempfile.mkdtemp(prefix=f"bench-scale-{n}-")
    try:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", work],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["n"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(sizes, [r["marginal_ms"] for r in rows], "o-", label="marginal (fixed cost removed)")
    left.plot(sizes, [1000 * r["total_s"] / r["n"] for r in rows], "s--", label="raw")
    left.set(xscale="log", xlabel="images", ylabel="ms per image", title="cost per image")
    left.legend()
    right.plot(sizes, [r["peak_rss_mb"] for r in rows], "o-")
    right.set(xscale="log", xlabel="images", ylabel="MB", title="peak RSS")
    right.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,60000,240000")
    parser.add_argument("--plot", default="scale.png", help="where to write the PNG plot")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.work)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    # The fixed cost is the median of three small runs: one run's noise (a second or two
    # on a shared 2-core machine) is as large as 10,000 images' whole marginal cost.
    smalls = sorted((run_child(1000) for _ in range(3)), key=lambda r: r["total_s"])
    fixed = smalls[1]
    rows = []
    for n in sizes:
        row = run_child(n)
        row["marginal_ms"] = 1000 * (row["total_s"] - fixed["total_s"]) / (n - 1000)
        rows.append(row)
    small_runs = ", ".join(f"{r['total_s']:.1f}" for r in smalls)
    print(f"scale benchmark: {os.cpu_count()} cores; fixed cost (1,000 images, median of "
          f"{small_runs} s) {fixed['total_s']:.1f} s, peak RSS {fixed['peak_rss_mb']:.0f} MB")
    print(f"{'images':>8} " + " ".join(f"{s + ' s':>12}" for s in STEPS)
          + f" {'total s':>8} {'ms/image':>9} {'marginal':>9} {'peak MB':>8}")
    for r in rows:
        print(f"{r['n']:8d} " + " ".join(f"{r['steps'].get(s, 0):12.1f}" for s in STEPS)
              + f" {r['total_s']:8.1f} {1000 * r['total_s'] / r['n']:9.3f} "
                f"{r['marginal_ms']:9.3f} {r['peak_rss_mb']:8.0f}")
    cost = [r["marginal_ms"] for r in rows]
    rss = [r["peak_rss_mb"] for r in rows]
    # below a few thousand images the noise of the fixed cost dominates the margin
    cost_spread = max(cost) / min(cost) if min(cost) > 0 else float("inf")
    rss_spread = max(rss) / min(rss)
    print(f"marginal cost per image: max/min {cost_spread:.2f} "
          f"({'flat' if cost_spread <= 1.25 else 'NOT flat'} within 25%)")
    print(f"peak RSS: max/min {rss_spread:.2f} "
          f"({'flat' if rss_spread <= 1.25 else 'NOT flat'} within 25%)")
    plot(rows, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
