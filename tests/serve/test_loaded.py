"""The served versions' lifecycle (pipeline/serve/loaded.py): what `imgpipe serve` does
when a version's folder, a model's folder or the whole registry goes away under it. It
keeps serving what it loaded (never silently another version), says why once in its
log, shows it in its metrics, and never recreates a moved registry from its request
log. Against a real server on 127.0.0.1 and a real registry (tests/serve_models.py);
the follower is refreshed by hand, so each step is one look at the registry."""

from __future__ import annotations

import base64
import os
import re
import shutil
import time

import httpx
import pytest

from pipeline import serve
from tests import serve_models as sm

IMAGE = base64.b64encode(sm.png()).decode()
BODY = {"signature_name": "serving_images", "instances": [{"b64": IMAGE}]}


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp_module")


@pytest.fixture
def pets(tmp_path):
    """pets: version 1 favours cat (production), 2 dog (staging)."""
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0, 1))
    reg.set_alias("pets:1", "production")
    reg.set_alias("pets:2", "staging")
    return reg


def _metric(client: httpx.Client, name: str, labels: str = "") -> float | None:
    text = client.get("/monitoring/prometheus/metrics").text
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def _predict(client: httpx.Client, path: str = "/v1/models/pets:predict") -> httpx.Response:
    return client.post(path, json=BODY)


# --- item 1: a served version's folder is deleted or moved ----------------------------


@pytest.mark.parametrize("alias, how", [("production", "rm"), ("production", "mv"),
                                        ("staging", "rm")])
def test_a_version_whose_folder_goes_away_keeps_being_served_and_says_why_once(
        pets, tmp_path, alias, how):
    number = pets.aliases("pets")[alias]
    folder = os.path.join(pets.root, "pets", str(number))
    lines: list[str] = []
    running = serve.Running(serve.Options(pets.root, poll=3600, request_log=False),
                            log=lines.append)
    with running as url, httpx.Client(base_url=url, timeout=60) as client:
        assert _metric(client, "imgpipe_serve_versions_gone", '{model="pets"}') == 0
        if how == "rm":
            shutil.rmtree(folder)
        else:
            os.rename(folder, str(tmp_path / "elsewhere"))
        before = len(lines)
        for _ in range(3):                      # three looks at the registry
            running.service.follower.refresh()
        # unlabeled requests still get production's version, never another one
        answer = _predict(client)
        assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
        served = _predict(client, f"/v1/models/pets/labels/{alias}:predict")
        assert served.status_code == 200, served.text
        assert served.headers["x-model-version"] == str(number)
        assert client.get(f"/v1/models/pets/labels/{alias}").status_code == 200
        said = [line for line in lines[before:] if f"pets:{number}" in line]
        assert len(said) == 1, lines[before:]                 # why, once
        assert "gone from the registry" in said[0] and "still serving" in said[0]
        assert _metric(client, "imgpipe_serve_versions_gone", '{model="pets"}') == 1
        assert f"version {number}" in " ".join(
            serve.describe_routes(running.service.follower.routes))
        if how == "mv":                         # put back: the same copy, no reload
            os.rename(str(tmp_path / "elsewhere"), folder)
            running.service.follower.refresh()
            assert _metric(client, "imgpipe_serve_versions_gone", '{model="pets"}') == 0
            assert any("back in the registry" in line for line in lines[before:])
            assert not any(line.startswith("serve: loaded") for line in lines[before:])
            assert _predict(client).headers["x-model-version"] == "1"


# --- item 14: the registry (or a model's folder) goes away ------------------------------


def _settled(log, count: int, timeout: float = 30) -> dict:
    """Flushes once `count` entries were handed to the request log (they are recorded
    after each answer is sent); its counters then."""
    deadline = time.monotonic() + timeout
    while _handed(log.stats()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    log.flush()
    return log.stats()


def _handed(stats: dict) -> int:
    return stats["written"] + stats["dropped"] + stats["pending"]


@pytest.mark.parametrize("how", ["registry moved", "registry deleted", "model deleted"])
def test_serve_notices_its_registry_is_gone_and_never_recreates_it(pets, tmp_path, how):
    root = pets.root
    lines: list[str] = []
    running = serve.Running(serve.Options(root, poll=3600, limits=serve.Limits(log_sample=0)),
                            log=lines.append)
    with running as url, httpx.Client(base_url=url, timeout=60) as client:
        log = running.service.request_log
        assert _predict(client).status_code == 200
        assert _settled(log, 1)["written"] == 1
        assert _metric(client, "imgpipe_serve_registry_missing") == 0
        before = len(lines)
        if how == "registry moved":
            os.rename(root, str(tmp_path / "moved"))
        elif how == "registry deleted":
            shutil.rmtree(root)
        else:
            shutil.rmtree(os.path.join(root, "pets"))
        for _ in range(3):
            running.service.follower.refresh()
        for _ in range(5):                       # still answering from memory
            answer = _predict(client)
            assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
        stats = _settled(log, 6)
        stats = _settled(log, 6)                  # a second try: still nothing made up
        # nothing made up where the registry (or the model) was: the entries are kept,
        # counted as not written (lost should serve stop now), and retried
        if how == "model deleted":
            assert not os.path.exists(os.path.join(root, "pets"))
        else:
            assert not os.path.exists(root)
        assert stats["written"] == 1 and stats["dropped"] + stats["pending"] == 5, stats
        assert "gone" in (stats["last_error"] or ""), stats
        said = [line for line in lines[before:] if "gone" in line and "serve:" in line]
        assert len(said) == 1, lines[before:]                 # said once
        assert (root in said[0]) if how != "model deleted" else ("pets" in said[0])
        if how == "model deleted":
            assert _metric(client, "imgpipe_serve_versions_gone", '{model="pets"}') == 2
        else:
            assert _metric(client, "imgpipe_serve_registry_missing") == 1
        if how == "registry moved":              # put back: followed and logged again
            os.rename(str(tmp_path / "moved"), root)
            running.service.follower.refresh()
            assert _metric(client, "imgpipe_serve_registry_missing") == 0
            assert any("back" in line for line in lines[before:])
            assert _predict(client).status_code == 200
            stats = _settled(log, 7)             # what waited is written now: none lost
            assert stats["written"] == 7 and stats["dropped"] + stats["pending"] == 0, stats
            assert not os.path.exists(os.path.join(root, "serving"))   # nothing nested
