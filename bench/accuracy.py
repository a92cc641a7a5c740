"""Eval accuracy of the shipped configs against the floors the project holds them to,
and of the photo defaults and the course's kinds on 3-channel photos, with and without
augmentation.

Runs `imgpipe run CONFIG --until evaluate` in a fresh folder per config (its seeds
share it: ingest and transform run once), as a user would, and prints, per config and
seed (`--set train.seed=N`), the eval accuracy, the epoch kept and the wall time.

Floors (`--configs`): fonts deep CNN >= 0.85, digits >= 0.95, sign-language deep CNN
>= 0.85, and `photos` (the same photos with no model/train keys: the photo defaults)
>= 0.95, each photo run in under 15 minutes (when ../shared/data/sign_language_digits
is there). Fashion-MNIST's floor is relative to the tutorial's own script, measured
side by side by bench/fashion.py.

`--matrix` (issue 35): on the shared photos and on builtin:shapes (generated 3-channel
shapes, a set the defaults were not chosen on), the photo defaults, and the course's
`cnn` (10 epochs), `deep_cnn` (40 epochs) and `transfer` from a local model (a base
the photo defaults trained on the other set, at the same size) each with
`train.augment: auto` and with the layers auto gives photos forced on
(`augment=[flip,rotation,zoom,translation,contrast]`) and off.

Usage: python bench/accuracy.py [--seeds 42,1,2] [--configs fonts,digits,sign_language,photos]
                                [--set KEY=VALUE ...]   (e.g. transform.normalize=scale)
       python bench/accuracy.py --matrix [--seeds 42]
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
sys.path.insert(0, ROOT)
IMGPIPE = os.path.join(os.path.dirname(sys.executable), "imgpipe")
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "sign_language_digits")
FLOORS = {"fonts": 0.85, "digits": 0.95, "sign_language": 0.85, "photos": 0.95}
PHOTO_CONFIGS = ("sign_language", "photos")
MAX_PHOTO_RUN_S = 900
AUGMENTED = "[flip,rotation,zoom,translation,contrast]"


def run(config: str, seed: int, work: str, extra: list[str]) -> dict:
    """{accuracy, kept, epochs, seconds, out} of one `imgpipe run --until evaluate`."""
    started = time.perf_counter()
    out = subprocess.run([IMGPIPE, "run", config, "--until", "evaluate", "--set",
                          f"train.seed={seed}", *extra], cwd=work, text=True,
                         capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    found = re.search(r"accuracy ([\d.]+) on \d+ eval examples", out.stdout)
    kept = re.search(r"kept epoch (\d+) of (\d+)", out.stdout)
    if out.returncode != 0 or not found:
        raise SystemExit(f"{config} (seed {seed}) failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return {"accuracy": float(found[1]), "kept": int(kept[1]) if kept else None,
            "epochs": int(kept[2]) if kept else None,
            "seconds": time.perf_counter() - started, "out": out.stdout}


def _described(result: dict, seed: int) -> str:
    return (f"{result['accuracy']:.4f} (seed {seed}, epoch {result['kept']} of "
            f"{result['epochs']}, {result['seconds']:.0f} s)")


def floors(args, seeds: list[int]) -> list[str]:
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
            runs = [run(config, seed, work, extra) for seed in seeds]
        values = [r["accuracy"] for r in runs]
        low, slowest = min(values), max(r["seconds"] for r in runs)
        verdict = "met" if low >= FLOORS[name] else "NOT met"
        print(f"{name}: eval accuracy " + ", ".join(_described(r, s) for r, s in zip(runs, seeds))
              + f"; median {statistics.median(values):.4f}, lowest {low:.4f}; "
                f"floor {FLOORS[name]}: {verdict}", flush=True)
        if low < FLOORS[name]:
            failed.append(name)
        if name in PHOTO_CONFIGS and slowest > MAX_PHOTO_RUN_S:
            print(f"{name}: slowest run {slowest:.0f} s, over {MAX_PHOTO_RUN_S} s")
            failed.append(f"{name} (time)")
    return failed


def _matrix_config(folder: str, name: str, source: str, size: int) -> str:
    path = os.path.join(folder, f"{name}.yaml")
    with open(path, "w") as handle:
        handle.write(f"name: {name}\n"
                     f"data: {{source: '{source}', image_size: [{size}, {size}], channels: 3, "
                     "eval_fraction: 0.2}\n"
                     "evaluate: {thresholds: {accuracy: {min: 0.0}}}\n"
                     "push: {destination: ./serving}\n")
    return path


def matrix(seeds: list[int]) -> None:
    """The photo defaults and the course's kinds, augmented or not, on two 3-channel
    sets; a transfer base for each set is what the defaults trained on the other."""
    sets = {"shapes": ("builtin:shapes", 64)}
    if os.path.isdir(PHOTOS):
        sets["photos"] = (os.path.abspath(PHOTOS), 64)
    else:
        print(f"photos: skipped ({PHOTOS} is not here)")
    kinds = [("cnn", ["--set", "model.kind=cnn", "--set", "train.epochs=10"]),
             ("deep_cnn", ["--set", "model.kind=deep_cnn", "--set", "train.epochs=40",
                           "--set", "train.batch_size=32"])]
    with tempfile.TemporaryDirectory() as work:
        configs = {name: _matrix_config(work, name, source, size)
                   for name, (source, size) in sets.items()}
        folders = {name: os.path.join(work, name) for name in sets}
        for folder in folders.values():
            os.makedirs(folder)
        defaults = {}
        print("set     variant                       augment  seed  accuracy  kept      time")
        for name in sets:
            for seed in seeds:
                result = run(configs[name], seed, folders[name], [])
                defaults.setdefault(name, result)
                _row(name, "photo defaults (xception)", "auto", seed, result)
        for name in sets:
            other = next((o for o in sets if o != name), None)
            variants = list(kinds)
            if other is not None:
                from components import artifacts

                trained = re.search(r"train\.trained_model: (\S+)", defaults[other]["out"])[1]
                base = os.path.join(trained, artifacts.Model.KERAS_FILE)
                variants.append(("transfer from " + other, [
                    "--set", "model.kind=transfer", "--set", f"model.weights={base}",
                    "--set", "train.epochs=10"]))
            for label, extra in variants:
                for augment in ("auto", AUGMENTED, "off"):
                    for seed in seeds:
                        result = run(configs[name], seed, folders[name],
                                     [*extra, "--set", f"train.augment={augment}"])
                        _row(name, label, "on" if augment == AUGMENTED else augment, seed,
                             result)


def _row(name: str, variant: str, augment: str, seed: int, result: dict) -> None:
    print(f"{name:7} {variant:29} {augment:7} {seed:5}  {result['accuracy']:.4f}   "
          f"{result['kept']:>3}/{result['epochs']:<3}  {result['seconds']:5.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="42", help="comma-separated train.seed values")
    parser.add_argument("--configs", default=",".join(FLOORS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, as `imgpipe run --set`")
    parser.add_argument("--matrix", action="store_true",
                        help="the photo defaults and the course's kinds, with and without "
                             "augmentation, on the shared photos and builtin:shapes")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.matrix:
        matrix(seeds)
        return
    failed = floors(args, seeds)
    if failed:
        raise SystemExit(f"below the floor: {', '.join(failed)}")


if __name__ == "__main__":
    main()
