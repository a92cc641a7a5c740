"""`imgpipe serve`: TF Serving's REST API over the registry, following its aliases,
bounded requests, dynamic batching, metrics, canary split, request log, and a graceful
stop on SIGTERM. Against a real uvicorn server on 127.0.0.1 with small SavedModels
that carry the trainer's serving signatures (tests/serve_models.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter

import httpx
import pytest

from pipeline.serve import request_log
from pipeline import serve
from tests import serve_models as sm

from tests import ROOT  # noqa: E402
IMAGE = base64.b64encode(sm.png()).decode()


def images_body(count: int = 1, data: str = IMAGE) -> dict:
    return {"signature_name": "serving_images", "instances": [{"b64": data}] * count}


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp_module")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """pets: version 1 favours cat, 2 dog, 3 fox; production -> 1, staging -> 2."""
    work = tmp_path_factory.mktemp("serve")
    reg = sm.registry_with(str(work / "serving"), str(work), favourites=(0, 1, 2))
    reg.set_alias("pets:1", "production")
    reg.set_alias("pets:2", "staging")
    return reg


@pytest.fixture
def server(registry):
    """A server that reads the registry only when a test says so (refresh())."""
    options = serve.Options(registry.root, poll=3600, request_log=False)
    with serve.Running(options) as running_url:
        yield running_url


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60)


# --- endpoints ---------------------------------------------------------------------


def test_status_metadata_and_predict_follow_tf_servings_rest_api(server):
    with _client(server) as client:
        status = client.get("/v1/models/pets").json()
        # the versions aliases name and the newest one (3)
        assert [s["version"] for s in status["model_version_status"]] == ["1", "2", "3"]
        assert {s["state"] for s in status["model_version_status"]} == {"AVAILABLE"}
        assert client.get("/v1/models/pets/labels/staging").json()[
            "model_version_status"][0]["version"] == "2"
        assert client.get("/v1/models/pets/versions/3").status_code == 200

        signatures = client.get("/v1/models/pets/metadata").json()[
            "metadata"]["signature_def"]["signature_def"]
        assert signatures["serving_images"]["inputs"]["images"]["dtype"] == "DT_STRING"
        assert set(signatures["serving_default"]["outputs"]) == {
            "class_id", "class_name", "probabilities"}

        # unlabeled: the default alias (production -> 1, which favours cat)
        answer = client.post("/v1/models/pets:predict", json=images_body(3))
        assert answer.status_code == 200
        body = answer.json()
        assert [p["class_name"] for p in body["predictions"]] == ["cat"] * 3
        assert body["model_spec"] == {"name": "pets", "version": "1",
                                      "signature_name": "serving_images"}
        assert answer.headers["x-model-version"] == "1"
        assert abs(sum(body["predictions"][0]["probabilities"]) - 1) < 1e-5
        # by label, by version, named input, columnar format
        assert client.post("/v1/models/pets/labels/staging:predict", json=images_body()).json()[
            "predictions"][0]["class_name"] == "dog"
        assert client.post("/v1/models/pets/versions/3:predict", json=images_body()).json()[
            "predictions"][0]["class_name"] == "fox"
        named = {"signature_name": "serving_images", "instances": [{"images": {"b64": IMAGE}}]}
        assert client.post("/v1/models/pets:predict", json=named).status_code == 200
        columnar = client.post("/v1/models/pets:predict", json={
            "signature_name": "serving_images", "inputs": {"images": [{"b64": IMAGE}] * 2}})
        assert columnar.json()["outputs"]["class_name"] == ["cat", "cat"]
        # serving_default (TF Serving's default signature): serialized tf.Examples
        example = base64.b64encode(sm.example(sm.png())).decode()
        by_example = client.post("/v1/models/pets:predict", json={"instances": [{"b64": example}]})
        assert by_example.status_code == 200
        assert by_example.json()["predictions"] == body["predictions"][:1]
        # the request id is echoed; one is made up when none is sent
        given = client.post("/v1/models/pets:predict", json=images_body(),
                            headers={"X-Request-Id": "abc-1"})
        assert given.headers["x-request-id"] == "abc-1"
        assert answer.headers["x-request-id"]


def _error(response: httpx.Response) -> str:
    assert set(response.json()) == {"error"}, response.text
    return response.json()["error"]


def test_every_refusal_is_one_clear_4xx(server):
    with _client(server) as client:
        cases = [
            ("/v1/models/nosuch:predict", images_body(), 404, "model 'nosuch' is not served"),
            ("/v1/models/pets/versions/9:predict", images_body(), 404, "version 9 of pets is not"),
            ("/v1/models/pets/labels/canary:predict", images_body(), 404, "no alias 'canary'"),
            ("/v1/models/pets:predict", {"signature_name": "nope", "instances": [{"b64": IMAGE}]},
             400, "signature_name 'nope' not found"),
            ("/v1/models/pets:predict", images_body(data="not base64!"), 400, "not valid base64"),
            ("/v1/models/pets:predict", images_body(data=base64.b64encode(b"text").decode()),
             400, "instance 0: not an image"),
            ("/v1/models/pets:predict", {"signature_name": "serving_images", "instances": []},
             400, "non-empty list"),
            ("/v1/models/pets:predict", {"signature_name": "serving_images",
                                         "instances": ["raw"]}, 400, "binary inputs are"),
            ("/v1/models/pets:predict", images_body(300), 413, "300 instances"),
            # an encoded image sent to serving_default is no tf.Example
            ("/v1/models/pets:predict", {"instances": [{"b64": IMAGE}]}, 400,
             "serving_images"),
        ]
        for path, body, status, message in cases:
            response = client.post(path, json=body)
            assert response.status_code == status, (path, response.text)
            assert message in _error(response), (path, response.text)
        assert "not JSON" in _error(client.post("/v1/models/pets:predict", content=b"{oops"))
        unknown_route = client.get("/v1/nothing")
        assert unknown_route.status_code == 404 and "predict with POST" in _error(unknown_route)
        assert client.get("/v1/models/pets:predict").status_code == 405
        # the server still answers after all that
        assert client.post("/v1/models/pets:predict", json=images_body()).status_code == 200


def test_size_limits_refuse_before_reading_further(registry):
    limits = serve.Limits(max_body_bytes=20_000, max_pixels=10_000)
    with serve.Running(serve.Options(registry.root, poll=3600, limits=limits,
                                     request_log=False)) as url, _client(url) as client:
        oversized = client.post("/v1/models/pets:predict", json=images_body(200))
        assert oversized.status_code == 413 and "over the limit of 20,000" in _error(oversized)
        large = base64.b64encode(sm.png(size=200)).decode()      # 40,000 pixels
        too_many = client.post("/v1/models/pets:predict", json=images_body(data=large))
        assert too_many.status_code == 413 and "40,000 pixels" in _error(too_many)
        assert client.post("/v1/models/pets:predict", json=images_body()).status_code == 200


# --- following the registry --------------------------------------------------------


def test_a_promotion_rollback_or_new_push_is_served_without_a_restart(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0, 1))
    reg.set_alias("pets:1", "production")
    options = serve.Options(reg.root, poll=0.2, request_log=False)
    with serve.Running(options) as url, _client(url) as client:
        def served() -> str:
            return client.post("/v1/models/pets:predict", json=images_body()).json()[
                "predictions"][0]["class_name"]

        def eventually(expected: str) -> None:
            # the follower polls every 0.2 s; 30 s is the slowest machine's margin
            deadline = threading.Event()
            timer = threading.Timer(30, deadline.set)
            timer.start()
            try:
                while served() != expected:
                    assert not deadline.is_set(), f"still not serving {expected}"
                    deadline.wait(0.05)
            finally:
                timer.cancel()

        assert served() == "cat"
        reg.set_alias("pets:2", "production")
        eventually("dog")
        reg.rollback("pets", "production")
        eventually("cat")
        # a new version, promoted as it is pushed
        third = reg.push("pets", sm.tiny_saved_model(str(tmp_path / "third"), 2), sm.card())
        reg.set_alias(third.ref, "production")
        eventually("fox")


def test_no_request_fails_while_aliases_swap_under_load(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0, 1))
    reg.set_alias("pets:1", "production")
    options = serve.Options(reg.root, poll=3600, request_log=False)
    running = serve.Running(options)
    with running as url:
        stop = threading.Event()
        outcomes: Counter = Counter()
        versions: Counter = Counter()
        lock = threading.Lock()

        def load() -> None:
            with _client(url) as client:
                while not stop.is_set():
                    try:
                        response = client.post("/v1/models/pets:predict", json=images_body(2))
                    except httpx.TransportError as exc:     # counted: a failed request
                        with lock:
                            outcomes[type(exc).__name__] += 1
                        continue
                    with lock:
                        outcomes[response.status_code] += 1
                        versions[response.headers.get("x-model-version")] += 1

        workers = [threading.Thread(target=load) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            for swap in range(6):
                if swap % 2 == 0:
                    reg.set_alias("pets:2", "production")
                else:
                    reg.rollback("pets", "production")
                running.service.follower.refresh()      # the swap, under load
                before = sum(outcomes.values())
                while sum(outcomes.values()) < before + 8:   # traffic on the new routes
                    stop.wait(0.01)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    assert set(outcomes) == {200}, outcomes
    assert versions["1"] > 0 and versions["2"] > 0


def test_an_alias_moved_to_a_version_that_does_not_load_keeps_serving_its_version(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0,))
    reg.set_alias("pets:1", "production")
    running = serve.Running(serve.Options(reg.root, poll=3600, request_log=False))
    with running as url, _client(url) as client:
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a graph")
        reg.push("pets", str(broken), sm.card())
        reg.set_alias("pets:2", "production")
        running.service.follower.refresh()
        answer = client.post("/v1/models/pets/labels/production:predict", json=images_body())
        assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
        assert client.post("/v1/models/pets:predict", json=images_body()).status_code == 200
        assert client.post("/v1/models/pets/versions/2:predict",
                           json=images_body()).status_code == 404
        assert "which did not load; still serving version 1" in " ".join(
            serve.describe_routes(running.service.follower.routes))


# --- batching, metrics ---------------------------------------------------------------


def test_concurrent_requests_are_batched_and_counted_in_metrics(registry):
    limits = serve.Limits(max_batch=64, batch_wait_ms=50)
    with serve.Running(serve.Options(registry.root, poll=3600, limits=limits,
                                     request_log=False)) as url:
        barrier = threading.Barrier(8)
        codes = []

        def one() -> None:
            with _client(url) as client:
                barrier.wait()
                codes.append(client.post("/v1/models/pets:predict", json=images_body()).status_code)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with _client(url) as client:
            client.post("/v1/models/pets:predict", json=images_body(data="bad!"))
            text = client.get("/monitoring/prometheus/metrics").text
    assert codes == [200] * 8

    def value(pattern: str) -> float:
        found = re.search(pattern + r" ([0-9.e+]+)", text)
        assert found, pattern
        return float(found.group(1))

    assert value(r'imgpipe_serve_requests_total\{code="200",model="pets",'
                 r'signature="serving_images",version="1"\}') == 8
    assert value(r'imgpipe_serve_errors_total\{model="pets",reason="bad_base64"\}') == 1
    # 8 single-image requests in fewer model calls than requests
    calls = value(r'imgpipe_serve_batch_size_count\{model="pets"\}')
    assert value(r'imgpipe_serve_batch_size_sum\{model="pets"\}') == 8 and calls < 8
    assert value(r'imgpipe_serve_version\{label="production",model="pets"\}') == 1
    assert value(r'imgpipe_serve_version\{label="default",model="pets"\}') == 1
    assert "imgpipe_serve_request_latency_seconds_bucket" in text


# --- canary and the request log -------------------------------------------------------


def test_canary_splits_by_request_id_and_logs_both_arms_with_shadow_answers(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0, 1))
    reg.set_alias("pets:1", "production")
    reg.set_alias("pets:2", "staging")
    limits = serve.Limits(log_sample=1.0)
    options = serve.Options(reg.root, poll=3600, canary=serve.Canary("staging", 25),
                            limits=limits)
    seen: dict[str, str] = {}
    with serve.Running(options) as url, _client(url) as client:
        for i in range(200):
            response = client.post("/v1/models/pets:predict", json=images_body(),
                                   headers={"X-Request-Id": f"r{i}"})
            assert response.status_code == 200
            seen[f"r{i}"] = response.headers["x-model-version"]
        # the same id takes the same arm, every time
        again = [client.post("/v1/models/pets:predict", json=images_body(),
                             headers={"X-Request-Id": f"r{i}"}).headers["x-model-version"]
                 for i in range(20)]
        assert again == [seen[f"r{i}"] for i in range(20)]
    shares = Counter(seen.values())
    assert 30 <= shares["2"] <= 70, shares          # 25% of 200, binomial margin
    entries = [e for e in request_log.read(reg.root, "pets") if e["id"] in seen]
    assert len(entries) >= 200
    by_id = {e["id"]: e for e in entries}
    for request_id, version in list(seen.items())[:50]:
        entry = by_id[request_id]
        assert str(entry["version"]) == version
        assert entry["arm"] == ("candidate" if version == "2" else "baseline")
        image = entry["images"][0]
        assert image["class"] == ("dog" if version == "2" else "cat")
        assert (image["height"], image["width"], image["channels"]) == (12, 12, 1)
        # the other arm's answer on the same image (what agreement is computed from)
        assert entry["shadow"]["version"] == (1 if version == "2" else 2)
        assert entry["shadow"]["classes"] == ["cat" if version == "2" else "dog"]


def test_labelled_requests_are_logged_with_their_true_classes_and_both_answers(tmp_path):
    """A predict body's "labels" (one true class per instance, null where unknown): the
    request is logged with its images whatever the sample share, each with its truth,
    and in a canary with the other arm's answers: what `models canary` decides on by
    accuracy. A malformed labels list is the client's 400."""
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0, 1))
    reg.set_alias("pets:1", "production")
    reg.set_alias("pets:2", "staging")
    options = serve.Options(reg.root, poll=3600, canary=serve.Canary("staging", 50),
                            limits=serve.Limits(log_sample=0.0))
    with serve.Running(options) as url, _client(url) as client:
        for i in range(20):
            body = dict(images_body(), labels=["dog"])
            assert client.post("/v1/models/pets:predict", json=body,
                               headers={"X-Request-Id": f"l{i}"}).status_code == 200
        plain = client.post("/v1/models/pets:predict", json=images_body(),
                            headers={"X-Request-Id": "plain"})
        assert plain.status_code == 200
        for bad in (["dog", "cat"], "dog", [3], [""]):
            refused = client.post("/v1/models/pets:predict",
                                  json=dict(images_body(), labels=bad))
            assert refused.status_code == 400 and "'labels' must be a list of 1 class " \
                "names" in refused.json()["error"]
    by_id = {e["id"]: e for e in request_log.read(reg.root, "pets")}
    assert "images" not in by_id["plain"]                       # log_sample 0: not sampled
    for i in range(20):
        entry = by_id[f"l{i}"]
        assert entry["images"][0]["truth"] == "dog"
        assert entry["shadow"]["classes"] == ["cat" if entry["version"] == 2 else "dog"]


def test_the_request_log_samples_the_share_asked_for(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0,))
    options = serve.Options(reg.root, poll=3600, limits=serve.Limits(log_sample=0.2))
    with serve.Running(options) as url, _client(url) as client:
        for i in range(300):
            client.post("/v1/models/pets:predict", json=images_body(), headers={"X-Request-Id": f"s{i}"})
        client.post("/v1/models/pets:predict", json=images_body(data="bad!"))
    entries = request_log.read(reg.root, "pets")
    assert len(entries) == 301                       # every request, flushed on shutdown
    sampled = [e for e in entries if e.get("images")]
    assert 35 <= len(sampled) <= 85, len(sampled)    # 20% of 300
    failed = [e for e in entries if e["status"] != 200]
    assert len(failed) == 1 and "base64" in failed[0]["error"]
    assert all(e["latency_ms"] > 0 and e["version"] == 1 for e in entries if e["status"] == 200)


# --- the command ---------------------------------------------------------------------


def test_sigterm_answers_requests_in_flight_then_exits_0(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0,))
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--registry", reg.root, "--port", "0",
         "--poll", "3600", "--log-sample", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("listening on"):
            break
    else:
        pytest.fail(f"serve never listened: {''.join(lines)} {process.stderr.read()}")
    url = re.search(r"http://[0-9.]+:\d+", lines[-1]).group(0)
    assert any(line.startswith("pets: versions 1") for line in lines), lines
    results: list = []
    started = threading.Barrier(9)

    def client() -> None:
        with _client(url) as session:
            started.wait()
            for _ in range(20):
                try:
                    results.append(session.post("/v1/models/pets:predict",
                                                json=images_body(16)).status_code)
                except httpx.ConnectError:
                    results.append("refused")         # after the stop: not accepted
                    return
                except httpx.TransportError as exc:  # cut off mid-request: a failure
                    results.append(f"cut: {type(exc).__name__}")
                    return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    with _client(url) as session:      # requests are flowing
        session.post("/v1/models/pets:predict", json=images_body())
    process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "stopped: requests in flight were answered; request log flushed" in out
    assert results and set(results) <= {200, "refused"}, Counter(results)
    answered = sum(1 for r in results if r == 200)
    logged = [e for e in request_log.read(reg.root, "pets") if e["status"] == 200]
    assert len(logged) == answered + 1                  # every answer is in the log


def test_serve_refuses_what_it_cannot_serve(tmp_path, capsys):
    from pipeline import cli

    assert cli.main(["serve", "--registry", str(tmp_path / "none")]) == 2
    assert "no model registry at" in capsys.readouterr().err
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0,))
    assert cli.main(["serve", "nosuch", "--registry", reg.root]) == 2
    assert "no model 'nosuch' in the registry" in capsys.readouterr().err
    assert cli.main(["serve", "--registry", reg.root, "--canary", "staging=150"]) == 2
    assert "ALIAS=PERCENT" in capsys.readouterr().err


def test_a_version_is_warmed_with_its_warmup_records(tmp_path):
    from components.inference import serving_config
    from pipeline.serve import loaded

    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0,))
    version = reg.resolve("pets@latest")
    images = [sm.png(40), sm.png(200)]
    serving_config.write_warmup(os.path.join(version.path, serving_config.VERSION_WARMUP),
                                [("serving_images", "images", images)])
    assert loaded.warmup_inputs(version.path) == [("serving_images", images)]
    calls = []
    original = loaded.LoadedVersion.call

    def counting(self, signature, inputs):
        calls.append((signature, list(inputs)))
        return original(self, signature, inputs)

    loaded.LoadedVersion.call = counting
    try:
        loaded.load_version(version)
    finally:
        loaded.LoadedVersion.call = original
    assert calls == [("serving_images", images)]          # no synthetic image needed


def test_a_damaged_image_behind_a_good_header_fails_only_its_own_request(server):
    good = sm.png(90)
    damaged = good[:40] + bytes(len(good) - 40)          # PNG header, broken chunks
    with _client(server) as client:
        results = []

        def send(data: bytes) -> None:
            results.append(client.post("/v1/models/pets:predict", json=images_body(
                data=base64.b64encode(data).decode())))

        threads = [threading.Thread(target=send, args=(d,)) for d in (good, damaged, good)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 400], [r.text for r in results]
    refused = next(r for r in results if r.status_code == 400)
    assert "could not read" in _error(refused) or "corrupt" in _error(refused)


def test_served_images_get_the_conversions_ingest_gives_them():
    from PIL import Image

    from components.data import imaging
    from tests import fixtures

    upright = sm.png(100)
    assert imaging.check_for_serving(upright, 10_000) is upright      # kept, not decoded
    with pytest.raises(imaging.BadImage, match="pixels"):
        imaging.check_for_serving(sm.png(size=200), 10_000)
    rotated = fixtures.jpeg_bytes(Image.new("RGB", (20, 10), (200, 10, 10)),
                                  exif=_exif_orientation(6))
    assert imaging.check_for_serving(rotated, 10_000) == imaging.check_image(rotated, 10_000).data
    assert Image.open(__import__("io").BytesIO(
        imaging.check_for_serving(rotated, 10_000))).size == (10, 20)


def _exif_orientation(value: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_serve_json_says_where_it_listens_and_what_it_serves(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0, 1))
    reg.set_alias("pets:1", "production")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--registry", reg.root, "--port", "0",
         "--json", "--canary", "latest=50"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(process.stdout.readline())
        assert info["models"]["pets"] == {"versions": [1, 2], "default": 1,
                                          "labels": {"production": 1, "latest": 2},
                                          "canary": {"version": 2, "percent": 50.0}}
        with _client(info["url"]) as client:
            assert client.get("/v1/models/pets").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and out == "" and "listening on" in err


def test_the_header_fast_path_keeps_exactly_what_ingest_keeps():
    """check_for_serving keeps the bytes exactly when check_image would (no conversion),
    and otherwise gives check_image's conversion: with or without its header reader."""
    import io

    from PIL import Image, PngImagePlugin

    from components.data import imaging
    from tests import fixtures

    gray = fixtures.class_pattern(0, 1, 16)
    rgb = fixtures.class_pattern(1, 2, 16, 3)
    texted = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "x")
    Image.fromarray(gray).save(texted, "PNG", pnginfo=info)
    corpus = dict(fixtures.unusual_corpus(), **{
        "gray.png": fixtures.png_bytes(gray), "rgb.png": fixtures.png_bytes(rgb),
        "gray.jpg": fixtures.jpeg_bytes(Image.fromarray(gray)),
        "rgb.jpg": fixtures.jpeg_bytes(Image.fromarray(rgb)),
        "text.png": texted.getvalue(),
        "rotated.jpg": fixtures.jpeg_bytes(Image.fromarray(rgb), exif=_exif_orientation(6))})
    fast = 0
    for name, data in corpus.items():
        checked = imaging.check_image(data, 10_000)
        served = imaging.check_for_serving(data, 10_000)
        assert served == checked.data, name
        assert (served is data) == (not checked.converted), name
        fast += imaging._plain_header(data) is not None
    assert fast >= 4                     # plain PNGs and JPEGs skip Pillow
    assert imaging._plain_header(corpus["progressive.jpg"]) is None
    assert imaging._plain_header(corpus["rotated.jpg"]) is None
    assert imaging._plain_header(corpus["rgb.jpg"]) == (16, 16)
