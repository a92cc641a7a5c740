"""A step's cache key covers the code it runs and nothing else: on a copy of the
checkout, a comment appended to the push section's module or to the registry reruns
none of ingest, transform and train; one appended to the train section's module reruns
train. The copy's sources are edited, never the checkout's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import ROOT

pytestmark = pytest.mark.slow

CONFIG = """name: keys
data: {source: builtin:digits, image_size: [8, 8], channels: 1, eval_fraction: 0.2}
model: {kind: logistic}
train: {epochs: 1, batch_size: 64}
push: {destination: ./serving}
"""
# What a run of the copy needs of the checkout (not .venv, runs or build outputs).
COPIED = ("components", "pipeline", "schemas", "configs", "requirements.lock")
UNTOUCHED = ("ingest", "transform", "train")


@pytest.fixture
def checkout(tmp_path):
    base = tmp_path
    copy = base / "checkout"
    for name in COPIED:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, copy / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif os.path.exists(source):
            shutil.copy2(source, copy / name)
    (base / "keys.yaml").write_text(CONFIG)
    return copy


def _env(copy) -> dict[str, str]:
    # the copy first: its sources are the ones imported and hashed
    return dict(os.environ, PYTHONPATH=str(copy))


def _run(copy) -> dict[str, str]:
    """step -> ran/cached of a run of the copy, to train, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(copy.parent / "keys.yaml"),
         "--until", "train", "--runs-dir", str(copy.parent / "runs"), "--json"],
        cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    return {step["step"]: step["status"] for step in result["steps"]}


def _ingest_code(copy) -> str:
    """What keys ingest's per-span folder (`invoke.shared_folder`): its code alone."""
    done = subprocess.run(
        [sys.executable, "-c", "from pipeline import cache; "
         "print(cache.code_fingerprint('components.steps.ingest')['source'])"],
        cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def _append(path, text="# edited\n") -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def test_editing_push_or_the_registry_reruns_no_data_or_training_step(checkout):
    first = _run(checkout)
    assert {first[name] for name in UNTOUCHED} == {"ran"}
    span_key = _ingest_code(checkout)

    # the push section's module: push and evaluate read it, no earlier step does
    _append(checkout / "components" / "config" / "push.py")
    statuses = _run(checkout)
    assert {name: statuses[name] for name in UNTOUCHED} == dict.fromkeys(UNTOUCHED, "cached")

    # every module of the registry: push's and the CLI's, not ingest's or train's
    registry = sorted((checkout / "components" / "registry").glob("*.py"))
    assert len(registry) >= 2
    for module in registry:
        _append(module)
    statuses = _run(checkout)
    assert {name: statuses[name] for name in UNTOUCHED} == dict.fromkeys(UNTOUCHED, "cached")
    assert _ingest_code(checkout) == span_key        # the per-span ingest cache too

    # the converse, so that this test can fail: train reads its own section's module
    _append(checkout / "components" / "config" / "train.py")
    statuses = _run(checkout)
    assert statuses["train"] == "ran"
    assert statuses["ingest"] == statuses["transform"] == "cached"
