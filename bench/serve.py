"""`imgpipe serve` against the same SavedModel called in-process, over 127.0.0.1.

A model is trained and pushed first (configs/fonts.yaml, 36x36 glyphs, the deep CNN,
--epochs 2: the accuracy does not matter here, the graph does), then pushed again as
version 2 (the same SavedModel) so that promotions have somewhere to go. Then, in one
run:

1. in-process: the SavedModel's `serving_images` signature called in a loop on
   batches of --batch encoded eval images (the same PNG bytes the clients send):
   images/s, and p50/p99 per call;
2. served: `imgpipe serve` in its own process (batching on: --max-batch 64, 2 ms),
   --clients load processes sending the same batches as `{"instances": [{"b64": ...}]}`
   on keep-alive connections: images/s, p50/p99 per request, failed requests;
3. memory: the server's resident memory after --memory-requests requests (default
   20,000, one image each), sampled every 2,000 after the first 2,000;
4. swaps: --swaps (20) promote/rollback changes of the production alias while the
   clients keep sending: how long until the new version answered, and failed
   requests (must be 0).

Targets (issue 26): served throughput >= 0.7x in-process; served p99 < 4x its p50;
memory flat (the last sample within 10% of the first); zero failed requests across the
swaps. Prints one table (and --json FILE writes it); exit 1 when a target is missed.
Usage: python bench/serve.py [--batch 32] [--clients 4] [--seconds 20]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
IMGPIPE = [sys.executable, "-m", "pipeline.cli"]
MODEL = "fonts-deep-cnn"


# --- the client (a process of its own: its CPU is not the server's GIL) --------------


def client_main(args: argparse.Namespace) -> None:
    """Sends requests until --until (a time.time()) or --requests are done; prints one
    JSON line: latencies (ms), failures, versions seen with the time first seen."""
    host, port = args.url.split("//")[1].split(":")
    bodies = [line.encode() for line in open(args.bodies, encoding="utf-8")]
    latencies, failures, seen = [], [], {}
    lock = threading.Lock()
    count = [0]

    def stopped() -> bool:
        return bool((args.requests and count[0] >= args.requests)
                    or (args.until and time.time() >= args.until))

    def worker(offset: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        i = offset
        while True:
            with lock:
                if stopped():
                    break
                count[0] += 1
            body = bodies[i % len(bodies)]
            i += 1
            started = time.perf_counter()
            try:
                connection.request("POST", f"/v1/models/{args.model}:predict", body,
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
                elapsed = (time.perf_counter() - started) * 1000
                version = response.getheader("X-Model-Version")
                with lock:
                    if response.status != 200:
                        failures.append(f"{response.status}: {data[:200]!r}")
                    else:
                        latencies.append(elapsed)
                        seen.setdefault(version, time.time())
            except Exception as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.close()

    threads = [threading.Thread(target=worker, args=(k * 7,)) for k in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"latencies": latencies, "failures": failures, "seen": seen}))


def start_clients(url: str, bodies: str, processes: int, threads: int, until: float = 0,
                  requests: int = 0) -> list[subprocess.Popen]:
    share = -(-requests // processes) if requests else 0
    return [subprocess.Popen([sys.executable, __file__, "--client", "--url", url, "--bodies",
                              bodies, "--until", str(until), "--requests", str(share),
                              "--threads", str(threads), "--model", MODEL],
                             stdout=subprocess.PIPE, text=True) for _ in range(processes)]


def collect(clients: list[subprocess.Popen]) -> dict:
    merged = {"latencies": [], "failures": [], "seen": {}}
    for client in clients:
        out, _ = client.communicate(timeout=3600)
        part = json.loads(out.strip().splitlines()[-1])
        merged["latencies"] += part["latencies"]
        merged["failures"] += part["failures"]
        for version, at in part["seen"].items():
            merged["seen"][version] = min(at, merged["seen"].get(version, at))
    return merged


WRK_SCRIPT = r"""
local bodies, counter = {}, 0
local path = "/v1/models/" .. MODEL .. ":predict"
for line in io.lines(BODIES) do bodies[#bodies + 1] = line end
function request()
  counter = counter % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[counter])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "failed": %d, "p50_ms": %.3f, "p99_ms": %.3f, "seconds": %.3f}\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
"""


class PythonLoad:
    """Client processes of this script (http.client on keep-alive connections)."""

    name = "Python clients"

    def __init__(self, processes: int, threads: int):
        self.processes, self.threads = processes, threads

    def start(self, url: str, bodies: str, until: float = 0, requests: int = 0):
        return start_clients(url, bodies, self.processes, self.threads, until, requests)

    def result(self, handle) -> dict:
        merged = collect(handle)
        return {"requests": len(merged["latencies"]), "failed": len(merged["failures"]),
                "p50_ms": percentile(merged["latencies"], 0.5),
                "p99_ms": percentile(merged["latencies"], 0.99),
                "examples": merged["failures"][:3]}


class WrkLoad:
    """wrk (a C load generator; Debian's `wrk`), so the load costs the 2 cores little."""

    name = "wrk"

    def __init__(self, work: str, threads: int, connections: int):
        self.work, self.threads, self.connections = work, threads, connections
        self.count = 0
        self.rate = 0.0          # requests/s of the last run

    def start(self, url: str, bodies: str, until: float = 0, requests: int = 0):
        """Load until `until`; wrk runs for a duration, so `requests` becomes the
        seconds that many take at the rate measured so far (at least 1)."""
        self.count += 1
        script = os.path.join(self.work, f"load-{self.count}.lua")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(f'MODEL = "{MODEL}"\nBODIES = "{bodies}"\n' + WRK_SCRIPT)
        if until:
            seconds = max(1, int(round(until - time.time())))
        else:
            seconds = max(1, int(round(requests / self.rate))) if self.rate else 2
        return subprocess.Popen(["wrk", f"-t{self.threads}", f"-c{self.connections}",
                                 f"-d{seconds}s", "--timeout", "60s", "-s", script, url],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self, handle) -> dict:
        out, _ = handle.communicate(timeout=7200)
        line = next((l for l in out.splitlines() if l.startswith("WRK ")), None)
        if line is None:
            raise SystemExit(f"wrk failed: {out[-500:]}")
        found = json.loads(line[4:])
        found["requests"] -= found["failed"]
        self.rate = found["requests"] / max(found["seconds"], 1e-9)
        return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- the bench -----------------------------------------------------------------------


def train(work: str, epochs: int) -> str:
    registry = os.path.join(work, "serving")
    subprocess.run(IMGPIPE + ["run", os.path.join(ROOT, "configs", "fonts.yaml"),
                              "--runs-dir", os.path.join(work, "runs"),
                              "--set", f"train.epochs={epochs}",
                              "--set", f"push.destination={registry}",
                              # the accuracy of 2 epochs is not the point here: let it be pushed
                              "--set", "evaluate.thresholds.accuracy.min=0.1",
                              "--require-push"],
                   check=True, cwd=work, stdout=subprocess.DEVNULL)
    return registry


def sample_images(limit: int) -> list[bytes]:
    """Encoded images like those the model was trained on (the built-in font glyphs),
    spread over the data set."""
    from components.data import datasets

    images = datasets.load("fonts").images
    step = max(1, len(images) // limit)
    return [datasets.encode_png(image) for image in images[::step][:limit]]


def in_process(saved_model: str, batches: list[list[bytes]], seconds: float) -> dict:
    import tensorflow as tf

    model = tf.saved_model.load(saved_model)
    fn = model.signatures["serving_images"]
    for batch in batches[:3]:
        fn(images=tf.constant(batch))
    latencies, images = [], 0
    deadline = time.perf_counter() + seconds
    i = 0
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        batch = batches[i % len(batches)]
        i += 1
        t = time.perf_counter()
        out = fn(images=tf.constant(batch))
        out["probabilities"].numpy()
        latencies.append((time.perf_counter() - t) * 1000)
        images += len(batch)
    wall = time.perf_counter() - started
    return {"images_per_s": images / wall, "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99), "calls": len(latencies)}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(registry: str, poll: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(IMGPIPE + ["serve", MODEL, "--registry", registry, "--port", "0",
                                          "--poll", str(poll)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    for line in process.stdout:
        match = re.search(r"listening on (http://[0-9.]+:\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, match.group(1)
    raise SystemExit(f"imgpipe serve did not start (exit {process.wait()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=MODEL, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help="images per request / call")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--client-threads", type=int, default=4,
                        help="connections per client process")
    parser.add_argument("--seconds", type=float, default=20, help="seconds per throughput run")
    parser.add_argument("--memory-requests", type=int, default=20_000)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--registry", help="use this registry (model fonts-deep-cnn with "
                                           "versions 1 and 2) instead of training one")
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk",
                        help="load generator: wrk when installed (apt install wrk), else "
                             "Python client processes, which take CPU from the server")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return 0

    from components.registry.versions import Registry

    work = tempfile.mkdtemp(prefix="imgpipe-bench-serve-")
    try:
        print("training and pushing the fonts model ...", flush=True)
        registry_root = args.registry or train(work, args.epochs)
        registry = Registry(registry_root)
        versions = registry.versions(MODEL)
        if len(versions) < 2:
            second = registry.push(MODEL, versions[0].path, versions[0].card)
            versions.append(second)
        registry.set_alias(f"{MODEL}:{versions[0].version}", "production", force=True,
                           reason="bench")
        images = sample_images(512)
        batches = [images[i:i + args.batch] for i in range(0, len(images) - args.batch + 1,
                                                           args.batch)]
        bodies = os.path.join(work, "bodies.jsonl")
        singles = os.path.join(work, "singles.jsonl")
        with open(bodies, "w", encoding="utf-8") as handle:
            for batch in batches:
                handle.write(json.dumps({"signature_name": "serving_images", "instances": [
                    {"b64": base64.b64encode(b).decode()} for b in batch]}) + "\n")
        with open(singles, "w", encoding="utf-8") as handle:
            for image in images:
                handle.write(json.dumps({"signature_name": "serving_images", "instances": [
                    {"b64": base64.b64encode(image).decode()}]}) + "\n")

        print("in-process ...", flush=True)
        local = in_process(versions[0].path, batches, args.seconds)

        load = (WrkLoad(work, 2, args.clients * args.client_threads)
                if shutil.which("wrk") and args.load != "python"
                else PythonLoad(args.clients, args.client_threads))
        server, url = start_server(registry_root, poll=0.5)
        try:
            print(f"served at {url}, load from {load.name} ...", flush=True)
            warm = load.result(load.start(url, bodies, requests=40))
            started = time.time()
            result = load.result(load.start(url, bodies, until=started + args.seconds))
            wall = time.time() - started
            served = {"images_per_s": result["requests"] * args.batch / wall,
                      "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
                      "requests": result["requests"], "failed": result["failed"]}

            print(f"memory over {args.memory_requests:,} requests ...", flush=True)
            samples = []
            done = 0
            failed_memory = warm["failed"]
            while done < args.memory_requests:
                chunk = min(2000, args.memory_requests - done)
                part = load.result(load.start(url, singles, requests=chunk))
                failed_memory += part["failed"]
                done += part["requests"] + part["failed"]
                samples.append((done, rss_mb(server.pid)))

            print(f"{args.swaps} swaps under load ...", flush=True)
            swap_times, swap_failures, swap_requests = [], 0, 0
            for swap in range(args.swaps):
                target = versions[1] if swap % 2 == 0 else versions[0]
                # 5 s of load: 1 s on the old version, the swap (under 1.5 s here), the rest
                # on the new one
                handle = load.start(url, bodies, until=time.time() + 5)
                time.sleep(1.0)                       # traffic flowing on the old version
                changed = time.time()
                if swap % 2 == 0:
                    registry.set_alias(target.ref, "production", reason="bench swap")
                else:
                    registry.rollback(MODEL, "production", reason="bench swap")
                # wait until the new version answers, then stop the load
                probe = http.client.HTTPConnection(url.split("//")[1].split(":")[0],
                                                   int(url.rsplit(":", 1)[1]), timeout=60)
                while True:
                    probe.request("POST", f"/v1/models/{MODEL}:predict",
                                  open(singles, encoding="utf-8").readline().encode(),
                                  {"Content-Type": "application/json"})
                    response = probe.getresponse()
                    response.read()
                    if response.getheader("X-Model-Version") == str(target.version):
                        break
                    if time.time() - changed > 60:
                        raise SystemExit(f"swap {swap}: version {target.version} not served "
                                         "after 60 s")
                swap_times.append(time.time() - changed)
                probe.close()
                during = load.result(handle)
                swap_failures += during["failed"]
                swap_requests += during["requests"]
        finally:
            server.terminate()
            server.wait(timeout=120)

        ratio = served["images_per_s"] / local["images_per_s"]
        tail = served["p99_ms"] / served["p50_ms"]
        first, last = samples[0][1], samples[-1][1]
        checks = {
            "throughput >= 0.7x in-process": ratio >= 0.7,
            "p99 < 4x p50": tail < 4,
            "memory flat (last within 10% of first)": last <= first * 1.10,
            "zero failed requests across swaps": swap_failures == 0 and served["failed"] == 0
            and failed_memory == 0,
        }
        rows = [
            ("in-process SavedModel", f"{local['images_per_s']:.0f}", f"{local['p50_ms']:.1f}",
             f"{local['p99_ms']:.1f}", "-", "-"),
            ("imgpipe serve (batching on)", f"{served['images_per_s']:.0f}",
             f"{served['p50_ms']:.1f}", f"{served['p99_ms']:.1f}", f"{ratio:.2f}x",
             str(served["failed"])),
        ]
        print()
        print(f"# bench/serve.py, {datetime.date.today()}, {platform.node() or 'this machine'}: "
              f"{os.cpu_count()} cores, {platform.python_version()}; batch {args.batch}, "
              f"load: {load.name}, {args.clients * args.client_threads} connections, "
              f"{args.seconds:g} s per run")
        print(f"| {'path':<28} | images/s | p50 ms | p99 ms | vs in-process | failed |")
        print(f"|{'-' * 30}|---------:|-------:|-------:|--------------:|-------:|")
        for row in rows:
            print(f"| {row[0]:<28} | {row[1]:>8} | {row[2]:>6} | {row[3]:>6} | {row[4]:>13} "
                  f"| {row[5]:>6} |")
        print(f"p99/p50 served: {tail:.2f}")
        print("server memory (MB) after N requests: " +
              ", ".join(f"{n:,}: {mb:.0f}" for n, mb in samples))
        print(f"{args.swaps} promote/rollback swaps under load: new version answered after "
              f"{min(swap_times):.2f}-{max(swap_times):.2f} s (median "
              f"{statistics.median(swap_times):.2f} s); {swap_requests:,} requests during "
              f"them, failed: {swap_failures}")
        for name, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}  {name}")
        if args.json_out:
            with open(args.json_out, "w", encoding="utf-8") as handle:
                json.dump({"in_process": local, "served": served, "memory": samples,
                           "swap_seconds": swap_times, "swap_failures": swap_failures,
                           "checks": checks}, handle, indent=2)
        return 0 if all(checks.values()) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
