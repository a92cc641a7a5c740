"""The predict protocol's rules (pipeline/serve/protocol.py) on a real server over the
loopback: a deeply nested body is the client's 400, never the server's error; a path's
version is a whole number from 1, as TF Serving reads it; an image the model cannot
decode is named with its reason; an answer and /metadata name the classes in the order
of the probability vector. Small SavedModels with the trainer's serving signatures and
label vocabulary asset (tests/serve_models.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from components import features
from components.data import imaging
from components.registry.versions import Registry
from pipeline import serve
from pipeline.serve import monitoring, protocol, request_log
from tests import ROOT, fixtures
from tests import serve_models as sm

# the model's vocabulary order (the transform's, by frequency): not the sorted one
ORDER = ("fox", "cat", "dog")
IMAGE = base64.b64encode(sm.png()).decode()


def images_body(*images: bytes) -> dict:
    data = images or (sm.png(),)
    return {"signature_name": "serving_images",
            "instances": [{"b64": base64.b64encode(d).decode()} for d in data]}


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp_module")


def _push(registry: Registry, work, favourite: int, index: int) -> None:
    source = sm.tiny_saved_model(str(work / f"sm{index}"), favourite, classes=ORDER)
    os.makedirs(os.path.join(source, "assets"), exist_ok=True)
    with open(os.path.join(source, "assets", features.LABEL_VOCABULARY), "w") as handle:
        handle.write("".join(f"{name}\n" for name in ORDER))      # as the trainer exports
    registry.push("tiny", source, sm.card())


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """tiny: version 1 favours fox, 2 cat; production -> 1."""
    work = tmp_path_factory.mktemp("protocol")
    reg = Registry(str(work / "serving"))
    for index, favourite in enumerate((0, 1)):
        _push(reg, work, favourite, index)
    reg.set_alias("tiny:1", "production")
    return reg


@pytest.fixture(scope="module")
def server(registry):
    with serve.Running(serve.Options(registry.root, poll=3600, request_log=False)) as url:
        yield url


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60)


def _error(response: httpx.Response) -> str:
    assert set(response.json()) == {"error"}, response.text
    return response.json()["error"]


def _metric(text: str, pattern: str) -> float:
    found = re.search(pattern + r" ([0-9.e+]+)", text)
    return float(found.group(1)) if found else 0.0


# --- item 4: a deeply nested body ------------------------------------------------------

DEEP = 1_100                 # Python's JSON parser gives up (RecursionError) at ~1,000


def _nested(opening: bytes, closing: bytes, depth: int, inner: bytes = b"") -> bytes:
    return opening * depth + inner + closing * depth


NESTED = {
    "arrays in instances": b'{"instances": ' + _nested(b"[", b"]", DEEP) + b"}",
    "objects in an instance": b'{"instances": [' + _nested(b'{"b64": ', b"}", DEEP, b'"x"')
                              + b"]}",
    "arrays in labels": b'{"signature_name": "serving_images", "instances": [{"b64": "'
                        + IMAGE.encode() + b'"}], "labels": ' + _nested(b"[", b"]", DEEP)
                        + b"}",
    "columnar inputs": b'{"inputs": {"images": ' + _nested(b"[", b"]", DEEP) + b"}}",
    "a whole body of brackets": _nested(b"[", b"]", 100_000),
    # under the parser's own limit, over the server's: never reaches a recursive step
    "parsed, over the bound": b'{"instances": [' + _nested(b"[", b"]", 500, b'{"b64": "x"}')
                              + b"]}",
}


@pytest.mark.parametrize("body", NESTED.values(), ids=list(NESTED))
def test_a_deeply_nested_body_is_the_clients_400_never_a_server_error(server, body):
    url = server
    with _client(url) as client:
        before = client.get("/metrics").text
        response = client.post("/v1/models/tiny:predict", content=body,
                               headers={"content-type": "application/json"})
        after = client.get("/metrics").text
        assert client.post("/v1/models/tiny:predict", json=images_body()).status_code == 200
    assert response.status_code == 400, response.text
    message = _error(response)
    assert "nests arrays or objects more than 32 levels deep" in message, message
    assert '{"instances": [{"b64":' in message                 # how to fix it
    assert "RecursionError" not in message and "internal" not in message
    served = r'imgpipe_serve_requests_total\{code="%s",model="tiny",signature="",version="%s"\}'
    assert _metric(after, served % ("400", "1")) == _metric(before, served % ("400", "1")) + 1
    assert "internal" not in after and 'code="500"' not in after
    assert _metric(after, r'imgpipe_serve_errors_total\{model="tiny",reason="bad_json"\}') \
        == _metric(before, r'imgpipe_serve_errors_total\{model="tiny",reason="bad_json"\}') + 1


def test_nested_bodies_are_logged_as_the_clients_mistakes(registry):
    """What `monitor` and `models canary` read: each entry a 400, none a server
    error, so a client that picks the canary arm by its request id cannot flip it."""
    options = serve.Options(registry.root, poll=3600)
    with serve.Running(options) as url, _client(url) as client:
        for family, body in NESTED.items():
            response = client.post("/v1/models/tiny:predict", content=body,
                                   headers={"x-request-id": f"deep-{family}"})
            assert response.status_code == 400, (family, response.text)
    logged = {e["id"]: e for e in request_log.read(registry.root, "tiny")
              if e["id"].startswith("deep-")}
    assert len(logged) == len(NESTED)
    assert {e["status"] for e in logged.values()} == {400}
    assert not any(monitoring.is_error(e) for e in logged.values())


# --- items 22 and 23: the version in a path ---------------------------------------------

NOT_VERSIONS = {"negative": "-1", "zero": "0", "10^23": "1" + "0" * 23,
                "past int64": str(2 ** 63), "a fraction": "1.5", "an exponent": "1e3",
                "digits with an underscore": "1_0", "a word": "one", "hex": "0x1",
                "minus zero": "-0"}
ROUTES = {"status": ("GET", "/v1/models/tiny/versions/{}"),
          "metadata": ("GET", "/v1/models/tiny/versions/{}/metadata"),
          "predict": ("POST", "/v1/models/tiny/versions/{}:predict")}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("raw", NOT_VERSIONS.values(), ids=list(NOT_VERSIONS))
def test_a_version_that_is_no_positive_whole_number_is_refused_without_a_promote_hint(
        server, route, raw):
    url = server
    method, path = ROUTES[route]
    with _client(url) as client:
        response = client.request(method, path.format(raw),
                                  json=images_body() if method == "POST" else None)
    assert response.status_code == 400, response.text
    message = _error(response)
    assert f"version {raw!r} of tiny is no version number" in message, message
    assert "whole numbers from 1" in message and "imgpipe models show tiny" in message
    assert "promote" not in message


def test_a_version_served_nowhere_still_gets_the_promote_hint(server):
    url = server
    with _client(url) as client:
        message = _error(client.get("/v1/models/tiny/versions/7"))
    assert "version 7 of tiny is not served" in message
    assert "imgpipe models promote tiny:7 --to ALIAS" in message


SAME_VERSION = {"leading zero": "01", "leading zeros": "0002", "a space before": "%201",
                "a space after": "2%20", "a plus sign": "+2"}


@pytest.mark.parametrize("raw", SAME_VERSION.values(), ids=list(SAME_VERSION))
def test_versions_are_read_as_integers_as_tf_serving_reads_them(server, raw):
    url = server
    number = str(int(raw.replace("%20", " ")))
    with _client(url) as client:
        status = client.get(f"/v1/models/tiny/versions/{raw}")
        answer = client.post(f"/v1/models/tiny/versions/{raw}:predict", json=images_body())
    assert status.status_code == 200, status.text
    assert [s["version"] for s in status.json()["model_version_status"]] == [number]
    assert answer.json()["model_spec"]["version"] == number            # the canonical form
    assert answer.headers["x-model-version"] == number
    assert "/versions/01" in _serving_section() and "TF Serving" in _serving_section()


def _serving_section() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    start = text.index("### Serving, canary, monitoring")
    return text[start:text.index("\n### ", start + 1)]


# --- item 17: an image the header check passes and the model cannot decode --------------


def _png(size: int = 64) -> bytes:
    rng = np.random.default_rng(size)
    return fixtures.png_bytes(rng.integers(0, 255, (size, size), dtype=np.uint8))


def _jpeg(size: int = 64) -> bytes:
    rng = np.random.default_rng(size)
    return fixtures.jpeg_bytes(Image.fromarray(rng.integers(0, 255, (size, size, 3),
                                                            dtype=np.uint8)))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _fake_ihdr() -> bytes:
    """A PNG signature and a valid IHDR (8x8, 8-bit gray) over pixel data that is no
    zlib stream."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", b"not zlib" * 4) + _chunk(b"IEND", b"")


UNDECODABLE = {
    "truncated PNG": (_png()[: len(_png()) // 2], "truncated"),
    "JPEG cut after its header": (_jpeg()[: _jpeg().index(b"\xff\xda") + 20], "JPEG"),
    "fake IHDR": (_fake_ihdr(), "PNG"),
    "truncated JPEG": (_jpeg()[: len(_jpeg()) // 2], "truncated"),
}


@pytest.mark.parametrize("signature", ["serving_images", "serving_default"])
@pytest.mark.parametrize("case", UNDECODABLE.values(), ids=list(UNDECODABLE))
def test_an_image_the_model_cannot_decode_is_named_with_its_reason(server, case, signature):
    data, reason = case
    assert imaging.check_for_serving(data, 10_000) == data   # it passes the header check
    images = [sm.png(), sm.png(90), data, sm.png()]
    if signature == "serving_images":
        body = images_body(*images)
    else:
        body = {"instances": [{"b64": base64.b64encode(sm.example(d)).decode()}
                              for d in images]}
    url = server
    with _client(url) as client:
        response = client.post("/v1/models/tiny:predict", json=body)
        assert client.post("/v1/models/tiny:predict", json=images_body()).status_code == 200
    assert response.status_code == 400, response.text
    message = _error(response)
    assert message.startswith("instance 2: the model could not read it: "), message
    assert reason in message and "Graph execution error" not in message, message
    assert "send" in message                                          # how to fix it


def test_the_models_own_reason_is_kept_without_its_preamble():
    import tensorflow as tf

    bad = tf.constant([_png()[:40] + bytes(40)])
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        tf.function(lambda x: tf.map_fn(lambda d: tf.io.decode_image(
            d, channels=1, expand_animations=False)[0, 0, 0], x,
            fn_output_signature=tf.uint8))(bad)
    reason = protocol.model_reason(raised.value)
    assert "Graph execution error" not in reason and "Detected at node" not in reason
    assert "[[" not in reason and reason, reason


# --- item 24: which class each probability is -------------------------------------------


def test_answers_and_metadata_name_the_classes_in_the_vectors_order(server):
    url = server
    with _client(url) as client:
        rows = client.post("/v1/models/tiny:predict", json=images_body(sm.png(), sm.png(30)))
        columns = client.post("/v1/models/tiny:predict", json={
            "signature_name": "serving_images", "inputs": {"images": [{"b64": IMAGE}]}})
        metadata = client.get("/v1/models/tiny/metadata").json()
    for prediction in rows.json()["predictions"]:
        assert prediction["classes"] == list(ORDER)
        best = int(np.argmax(prediction["probabilities"]))
        assert prediction["classes"][best] == prediction["class_name"] == "fox"
        assert prediction["class_id"] == best
    assert columns.json()["outputs"]["classes"] == [list(ORDER)]
    assert metadata["metadata"]["classes"] == list(ORDER)
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_images"]
    assert {k: v["dtype"] for k, v in signature["outputs"].items()} == {
        "probabilities": "DT_FLOAT", "class_id": "DT_INT32", "class_name": "DT_STRING"}
    assert signature["inputs"]["images"]["dtype"] == "DT_STRING"


def test_a_model_without_a_vocabulary_is_answered_without_classes(tmp_path):
    reg = sm.registry_with(str(tmp_path / "serving"), str(tmp_path), favourites=(0,))
    with serve.Running(serve.Options(reg.root, poll=3600, request_log=False)) as url, \
            _client(url) as client:
        answer = client.post("/v1/models/pets:predict", json=images_body())
        metadata = client.get("/v1/models/pets/metadata").json()
    assert answer.status_code == 200 and "classes" not in answer.json()["predictions"][0]
    assert metadata["metadata"].get("classes") is None


def test_the_readmes_curl_example_gets_the_answer_it_shows(server, tmp_path):
    """The serving section's `curl` predict call, run as written against this server
    (only the address changed): it answers with the keys the README shows."""
    url = server
    section = _serving_section()
    block = next(b for b in re.findall(r"```(?:sh|bash)?\n(.*?)```", section, re.S)
                 if "curl" in b and ":predict" in b)
    command = block.replace("http://localhost:8501", url)
    (tmp_path / "digit.png").write_bytes(sm.png())
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    keys = set(answer["predictions"][0])
    assert keys == {"class_id", "class_name", "classes", "probabilities"}
    assert all(f'"{key}"' in section for key in keys)
    assert answer["model_spec"]["name"] == "tiny"
