"""docs/ui/*.png: a screenshot of each page of `imgpipe ui`, on a demo made by the
product's own code, so the pictures can be taken again.

The demo, in --work (a temporary folder unless given; kept when given, and reused:
runs and versions already there are not made again):
  - three runs of configs/digits.yaml through `imgpipe run` (train.seed 1, 2, 3; 3
    epochs; an accuracy bound of 0.9 so each is pushed), the second and third reusing
    ingest, validate and transform from the cache: digits-cnn:1..3;
  - aliases through the ledger: production -> 2, staging -> 3 (a canary);
  - --hours hours of request log (default 6) ending now, --requests requests (default
    2,400) written through `RequestLog`, the writer `imgpipe serve` uses, with
    --canary-share of them (default 0.1) on the candidate arm (staging) and the rest
    on the baseline (production); every fourth request sampled (its images' sizes,
    pixels, predicted classes and confidences, and the other arm's answers: "shadow");
    the served images' brightness drifts up over the last third of the window.
Each chart bucket of the 6-hour window is 30 minutes; `imgpipe monitor`'s checks need
100 requests and 100 sampled images in a bucket for a point, so the baseline arm gets
~180 requests a bucket; the candidate's 10% shows on the canary charts.

Then the real `imgpipe ui` process on it, and headless Chromium (`--screenshot`) on
each page.

Usage: python bench/ui_screenshots.py [--out docs/ui] [--work DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODEL = "digits-cnn"


def make_runs(work: str) -> None:
    """digits-cnn:1..3 from three runs of configs/digits.yaml (skipped when pushed)."""
    from components.registry.versions import Registry

    serving = os.path.join(work, "serving")
    have = len(Registry(serving).versions(MODEL)) if os.path.isdir(
        os.path.join(serving, MODEL)) else 0
    imgpipe = os.path.join(os.path.dirname(sys.executable), "imgpipe")
    for seed in range(have + 1, 4):
        subprocess.run([imgpipe, "run", os.path.join(ROOT, "configs", "digits.yaml"),
                        "--runs-dir", os.path.join(work, "runs"),
                        "--set", f"push.destination={serving}", "--set", "train.epochs=3",
                        "--set", f"train.seed={seed}",
                        "--set", "evaluate.thresholds={accuracy: {min: 0.9}}",
                        "--require-push"], check=True, cwd=work)


def make_aliases(registry) -> dict[str, int]:
    aliases = registry.aliases(MODEL)
    if "production" not in aliases:
        registry.set_alias(f"{MODEL}:2", "production", "first release of the demo")
    if "staging" not in aliases:
        registry.set_alias(f"{MODEL}:3", "staging", "canary candidate")
    return registry.aliases(MODEL)


def add_traffic(registry, requests: int, hours: float, canary_share: float) -> None:
    """`requests` requests over the last `hours` hours through `RequestLog`."""
    from pipeline.serve import request_log
    from pipeline.serve.request_log import RequestLog

    aliases = registry.aliases(MODEL)
    candidate, baseline = aliases["staging"], aliases["production"]
    cards = {v: registry.get(MODEL, v).card for v in (candidate, baseline)}
    card = cards[baseline]
    data = card.get("data") or {}
    classes = [str(c) for c in data.get("classes") or []]
    height, width = (int(n) for n in next(iter(data.get("sizes") or {"8x8": 1})).split("x"))
    channels = int(next(iter(data.get("channels") or {"1": 1})))
    pixels = ((data.get("pixels") or {}).get("train") or {})
    brightness = {c: (pixels.get(c) or {}).get("brightness_mean", 0.3) for c in classes}
    contrast = {c: (pixels.get(c) or {}).get("contrast_mean", 0.3) for c in classes}
    rng = random.Random(37)
    now = dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(hours=hours)
    with RequestLog(registry.root, flush_seconds=3600, max_lines=500) as log:
        for i in range(requests):
            when = start + dt.timedelta(hours=hours) * ((i + rng.random()) / requests)
            progress = (when - start) / dt.timedelta(hours=hours)
            on_candidate = rng.random() < canary_share
            arm, version, other = (("candidate", candidate, baseline) if on_candidate
                                   else ("baseline", baseline, candidate))
            drift = max(0.0, progress - 2 / 3) * 0.36       # brighter images, late on
            sampled = i % 4 == 0
            images = None
            if sampled:
                images = []
                for k in range(4):
                    truth = rng.choice(classes)
                    right = rng.random() < (0.95 if on_candidate else 0.93)
                    answer = truth if right else rng.choice(classes)
                    images.append({
                        "sha256": f"{i:06d}{k}", "bytes": 180, "height": height,
                        "width": width, "channels": channels,
                        "brightness": brightness[truth] + drift + rng.gauss(0, 0.02),
                        "contrast": contrast[truth] + rng.gauss(0, 0.02), "class": answer,
                        "confidence": min(1.0, max(0.0, (0.93 if right else 0.6)
                                                   - drift * 0.3 + rng.gauss(0, 0.04)))})
            status = 500 if rng.random() < (0.004 + 0.01 * (progress > 0.85)) else 200
            entry = request_log.make_entry(
                model=MODEL, version=version, label="staging" if on_candidate else
                "production", arm=arm, status=status,
                latency_ms=rng.lognormvariate(2.9 if on_candidate else 2.8, 0.3),
                instances=4 if sampled else 1, id=f"r{i}", images=images,
                time=when.isoformat(timespec="milliseconds"))
            if images:
                entry["shadow"] = {"version": other, "classes": [
                    im["class"] if rng.random() < 0.96 else rng.choice(classes)
                    for im in images], "confidences": [
                    round(min(1.0, im["confidence"] + rng.gauss(0, 0.03)), 4) for im in images]}
            log.record(MODEL, entry)


def screenshots(work: str, out_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ui import start_console
    from components.registry.versions import Registry
    from pipeline.metadata import METADATA_FILE, MetadataStore

    runs_dir, registry = os.path.join(work, "runs"), Registry(os.path.join(work, "serving"))
    store = MetadataStore(os.path.join(runs_dir, METADATA_FILE), read_only=True)
    pushed = next(r["id"] for r in store.list_runs() if r["status"] == "succeeded")
    numbers = sorted(v.version for v in registry.versions(MODEL))
    url, process = start_console(runs_dir, registry.root)
    shots = [("runs", "/runs", 700), ("run", f"/runs/{pushed}", 1600),
             ("models", f"/models/{MODEL}", 1000),
             ("version", f"/models/{MODEL}/{numbers[-1]}", 1750),
             ("compare", f"/models/{MODEL}/compare?left={numbers[-2]}&right={numbers[-1]}",
              1500), ("serving", f"/serving/{MODEL}?window=6h", 1450),
             # the whole serving page: a #fragment leaves headless Chromium's capture blank
             ("monitoring", f"/serving/{MODEL}?window=6h&alias=production", 3000)]
    os.makedirs(out_dir, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="ui-shots-")
    try:
        for name, path, height in shots:
            target = os.path.abspath(os.path.join(out_dir, f"{name}.png"))
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--no-first-run", "--hide-scrollbars",
                            f"--user-data-dir={profile}", f"--screenshot={target}",
                            f"--window-size=1400,{height}", url + path],
                           check=True, capture_output=True, timeout=120)
            print(f"{name:<12} {path} -> {os.path.relpath(target)}")
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(profile, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "ui"))
    parser.add_argument("--work", help="the demo's folder (kept; reused when it has one)")
    parser.add_argument("--requests", type=int, default=2400)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--canary-share", type=float, default=0.1)
    args = parser.parse_args()
    from components.registry.versions import Registry
    from pipeline.serve import request_log

    work = args.work or tempfile.mkdtemp(prefix="ui-demo-")
    try:
        os.makedirs(work, exist_ok=True)
        make_runs(work)
        registry = Registry(os.path.join(work, "serving"))
        make_aliases(registry)
        logged = request_log.folder(registry.root, MODEL)
        if os.path.isdir(logged):           # traffic ending now, not at the last take
            shutil.rmtree(logged)
        add_traffic(registry, args.requests, args.hours, args.canary_share)
        screenshots(work, args.out)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
