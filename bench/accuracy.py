"""Eval accuracy of the shipped configs against the floors the project holds them to.

Runs `imgpipe run CONFIG --until evaluate` in a fresh folder for each config and seed
(`--set train.seed=N`), as a user would, and prints each eval accuracy with its floor:
fonts deep CNN >= 0.85, digits >= 0.95, sign-language deep CNN >= 0.85 and photos (the
same photos with no model/train keys: the photo defaults) >= 0.95, each photo run in
under 10 minutes (when ../shared/data/sign_language_digits is there). Fashion-MNIST's floor is relative to the
tutorial's own script, measured side by side by bench/fashion.py.
Usage: python bench/accuracy.py [--seeds 42,1,2] [--configs fonts,digits,sign_language]
                                [--set KEY=VALUE ...]   (e.g. transform.normalize=scale)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMGPIPE = os.path.join(os.path.dirname(sys.executable), "imgpipe")
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "sign_language_digits")
FLOORS = {"fonts": 0.85, "digits": 0.95, "sign_language": 0.85, "photos": 0.95}
PHOTO_CONFIGS = ("sign_language", "photos")
MAX_PHOTO_RUN_S = 600


def accuracy(config: str, seed: int, work: str, extra: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    out = subprocess.run([IMGPIPE, "run", config, "--until", "evaluate", "--set",
                          f"train.seed={seed}", *extra], cwd=work, text=True,
                         capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    found = re.search(r"accuracy ([\d.]+) on \d+ eval examples", out.stdout)
    if out.returncode != 0 or not found:
        raise SystemExit(f"{config} (seed {seed}) failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return float(found[1]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="42", help="comma-separated train.seed values")
    parser.add_argument("--configs", default=",".join(FLOORS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, as `imgpipe run --set`")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    failed = []
    for name in args.configs.split(","):
        config = os.path.join(ROOT, "configs", f"{name}.yaml")
        extra = [arg for value in args.set for arg in ("--set", value)]
        if name in PHOTO_CONFIGS:
            if not os.path.isdir(PHOTOS):
                print(f"{name}: skipped ({PHOTOS} is not here)")
                continue
            extra += ["--set", f"data.source={os.path.abspath(PHOTOS)}"]
        with tempfile.TemporaryDirectory() as work:    # ingest and transform run once
            runs = [accuracy(config, seed, work, extra) for seed in seeds]
        values = [value for value, _ in runs]
        low, slowest = min(values), max(seconds for _, seconds in runs)
        verdict = "met" if low >= FLOORS[name] else "NOT met"
        print(f"{name}: eval accuracy " + ", ".join(f"{v:.4f} (seed {s}, {t:.0f} s)"
                                                   for (v, t), s in zip(runs, seeds))
              + f"; median {statistics.median(values):.4f}, lowest {low:.4f}; "
                f"floor {FLOORS[name]}: {verdict}", flush=True)
        if low < FLOORS[name]:
            failed.append(name)
        if name in PHOTO_CONFIGS and slowest > MAX_PHOTO_RUN_S:
            print(f"{name}: slowest run {slowest:.0f} s, over {MAX_PHOTO_RUN_S} s")
            failed.append(f"{name} (time)")
    if failed:
        raise SystemExit(f"below the floor: {', '.join(failed)}")


if __name__ == "__main__":
    main()
