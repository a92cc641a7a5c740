"""Infra validation: the exported SavedModel must load and serve in a fresh process
that imports only TensorFlow (as TF Serving would), before anything is pushed.

The probe calls `serving_default` (serialized raw examples) and `serving_images`
(encoded image bytes) on a few eval examples and checks output shapes, that the
probabilities are finite and sum to 1, that class names belong to the label
vocabulary, that both signatures agree, and that one batch stays within
`infra_validate.latency_budget_ms`. A model that fails is not pushed; the reason is kept.

A model that passes also gets TF Serving warmup records in its InfraBlessing: one
`PredictRequest` per signature, a small batch of the inputs it was just served
(`components.inference.serving_config`); push copies them into the version's `assets.extra/`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from components import artifacts, features
from components.io import fileio
from components.inference import serving_config
from components.config.infra_validate import InfraValidateConfig
from components.contract import Closed, In, Out, Summary, step

PROBE_EXAMPLES = 16

# Runs in a fresh interpreter: TensorFlow only, nothing of this package (young
# collections as rare as in imgpipe's own process: runtime.fewer_collections).
PROBE = r"""
import gc, json, sys, time
gc.set_threshold(50000, *gc.get_threshold()[1:])
import numpy as np
import tensorflow as tf

saved, data_file = sys.argv[1], sys.argv[2]
data = json.load(open(data_file))
examples = [bytes.fromhex(x) for x in data["examples"]]
images = [bytes.fromhex(x) for x in data["images"]]
loaded = tf.saved_model.load(saved)
report = {"signatures": sorted(loaded.signatures.keys())}
outs = {}
for name, arg, batch in (("serving_default", "examples", examples),
                         ("serving_images", "images", images)):
    if name not in loaded.signatures:
        continue
    fn = loaded.signatures[name]
    fn(**{arg: tf.constant(batch[:1])})  # warm-up (tracing, kernels)
    start = time.perf_counter()
    out = fn(**{arg: tf.constant(batch)})
    report[name + "_ms"] = (time.perf_counter() - start) * 1000
    probs = out["probabilities"].numpy() if "probabilities" in out else None
    outs[name] = probs
    report[name] = {
        "outputs": sorted(out.keys()),
        "shape": list(probs.shape) if probs is not None else None,
        "finite": bool(np.all(np.isfinite(probs))) if probs is not None else None,
        "max_sum_error": float(np.max(np.abs(probs.sum(axis=1) - 1.0))) if probs is not None else None,
        "class_names": [c.decode() for c in out["class_name"].numpy()] if "class_name" in out else None,
    }
if len(outs) == 2 and all(v is not None for v in outs.values()):
    report["max_signature_disagreement"] = float(np.max(np.abs(outs["serving_default"] - outs["serving_images"])))
print("PROBE " + json.dumps(report))
"""


def probe(saved_model: str, examples: list[bytes], images: list[bytes],
          timeout: float = 300) -> dict[str, Any]:
    """Runs the probe in a fresh process; returns its report or {'error': ...}."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"examples": [e.hex() for e in examples],
                   "images": [i.hex() for i in images]}, handle)
        data_file = handle.name
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE, saved_model, data_file],
                              capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return {"error": f"the model did not load and serve within {timeout:.0f} s"}
    finally:
        os.unlink(data_file)
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"loading/serving failed in a fresh process (exit {proc.returncode}): "
                     f"{tail[:300]}"}


def verdict(report: dict[str, Any], batch: int, vocabulary: list[str],
            budget_ms: float) -> list[str]:
    """The problems in a probe report (empty = passed)."""
    if "error" in report:
        return [report["error"]]
    problems = []
    for name in (features.EXAMPLES_SIGNATURE, features.IMAGES_SIGNATURE):
        out = report.get(name)
        if out is None:
            problems.append(f"signature {name} is missing (has {report['signatures']})")
            continue
        missing = {"probabilities", "class_id", "class_name"} - set(out["outputs"])
        if missing:
            problems.append(f"{name} lacks outputs {sorted(missing)}")
            continue
        if out["shape"] != [batch, len(vocabulary)]:
            problems.append(f"{name} probabilities have shape {out['shape']}, expected "
                            f"[{batch}, {len(vocabulary)}]")
        if not out["finite"]:
            problems.append(f"{name} returned NaN/inf probabilities")
        elif out["max_sum_error"] > 1e-3:
            problems.append(f"{name} probabilities do not sum to 1 (off by up to "
                            f"{out['max_sum_error']:.3g})")
        unknown = set(out["class_names"] or []) - set(vocabulary)
        if unknown:
            problems.append(f"{name} returned class names outside the vocabulary: "
                            f"{sorted(unknown)[:5]}")
        if report.get(name + "_ms", 0) > budget_ms:
            problems.append(f"{name} took {report[name + '_ms']:.0f} ms for {batch} examples, "
                            f"over the {budget_ms:.0f} ms budget (infra_validate.latency_budget_ms)")
    disagreement = report.get("max_signature_disagreement")
    if disagreement is not None and disagreement > 1e-4:
        problems.append(f"serving_default and serving_images disagree by {disagreement:.3g}")
    return problems


class InfraValidated(Summary):
    """Whether the model loaded and served both signatures in a fresh process, and why not."""

    passed: bool
    reason: str


# Only a model that served goes on to push (the gate).
@step(gate="passed", closed=Closed("infra validation failed", verdict="infra failed"),
      isolated=True)
def run(trained_model: In[artifacts.Model], examples: In[artifacts.Examples],
        infra_validate: InfraValidateConfig, infra_blessing: Out[artifacts.InfraBlessing]
        ) -> InfraValidated:
    """Writes an InfraBlessing with the probe report and the verdict."""
    files = features.split_files(examples, "eval")
    serialized, cols = features.read_raw_examples(files, limit=PROBE_EXAMPLES)
    images = cols[features.IMAGE]
    saved_model = fileio.tf_path(trained_model.path(artifacts.Model.SAVED_MODEL))
    report = probe(saved_model, serialized, images)
    problems = verdict(report, len(serialized), trained_model.properties["label_vocabulary"],
                       infra_validate.latency_budget_ms)
    passed = not problems
    reason = "served both signatures in a fresh process" if passed else "; ".join(problems)
    artifacts.InfraBlessing.write(infra_blessing,
                                  {"passed": passed, "reason": reason, "report": report})
    infra_blessing.properties = {"kind": "infra", "passed": passed, "reason": reason,
                                 "latency_ms": {k[:-3]: round(v, 1) for k, v in report.items()
                                                if k.endswith("_ms")}}
    if passed:
        # the inputs each signature was just served, as TF Serving warmup requests
        infra_blessing.properties["warmup_requests"] = serving_config.write_warmup(
            infra_blessing.file(artifacts.InfraBlessing.WARMUP),
            [(features.EXAMPLES_SIGNATURE, "examples", serialized),
             (features.IMAGES_SIGNATURE, "images", images)])
    lines = [f"{'passed' if passed else 'FAILED'}: {reason}"]
    if passed:
        lines[0] += " (" + ", ".join(f"{k[:-3]} {v:.0f} ms" for k, v in report.items()
                                     if k.endswith("_ms")) + f" per {len(serialized)})"
    return InfraValidated(passed=passed, reason=reason, lines=lines)
