"""TF Serving's REST API over the registry (FastAPI on uvicorn).

    GET  /v1/models/NAME[/versions/N | /labels/ALIAS]            model status
    GET  /v1/models/NAME[/versions/N | /labels/ALIAS]/metadata   signature defs
    POST /v1/models/NAME[/versions/N | /labels/ALIAS]:predict    predictions
    GET  /monitoring/prometheus/metrics (and /metrics)           Prometheus metrics

A predict body is TF Serving's: `{"signature_name": ..., "instances": [...]}` (row
format; answered with `predictions`) or `{"inputs": ...}` (columnar; answered with
`outputs`). Binary inputs are `{"b64": "..."}`, alone or under the signature's input
name: encoded images for `serving_images`, serialized tf.Examples for
`serving_default` (TF Serving's default signature). Every response says which version
answered (`model_spec` in the body, `X-Model-Version` in the headers) and echoes the
request id (`X-Request-Id`, made up when the client sends none).

A request is bounded before the model sees it, as ingest bounds its inputs: the body
size, the number of instances, and each image's format and decoded pixels (checked by
the same `imaging.check_image` ingest and `imgpipe predict` use, which also turns
odd formats and EXIF-rotated photos into what the model was trained on). Every refusal
is a 4xx with one `{"error": ...}` line saying what and how to fix it; only a fault of
the server itself is a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from components.data import imaging
from pipeline.serve.request_log import describe_images, make_entry, sampled_images
from components.config.data import MAX_PIXELS
from pipeline.serve.batching import Batcher
from components.features import EXAMPLES_SIGNATURE, IMAGES_SIGNATURE
from pipeline.serve.loaded import Follower, LoadedVersion, Routes
from pipeline.serve.reading import READ_TIMEOUT, read_body
from pipeline.serve.protocol import (Refused, answer, explain, model_reason, parse_json,
                                     parse_version)

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how requests are batched and logged."""

    max_body_bytes: int = 32 * MIB
    max_instances: int = 256
    max_pixels: int = MAX_PIXELS
    max_batch: int = 64            # inputs per model call (dynamic batching)
    batch_wait_ms: float = 2.0     # how long a batch waits for more requests
    parallel: int = 2              # model calls at once
    log_sample: float = 0.1        # share of requests logged with their images
    max_head_bytes: int = 64 * 1024   # request line and headers (431 past it)
    read_timeout: float = READ_TIMEOUT   # a head's whole time, a body's longest pause


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("imgpipe_serve_requests", "Predict requests answered",
                                ["model", "version", "signature", "code"], registry=r)
        self.latency = Histogram(
            "imgpipe_serve_request_latency_seconds", "Predict latency, body read to answer",
            ["model"], registry=r,
            buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10))
        self.errors = Counter("imgpipe_serve_errors", "Refused or failed requests by reason",
                              ["model", "reason"], registry=r)
        self.batch = Histogram("imgpipe_serve_batch_size", "Inputs per model call",
                               ["model"], registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.version = Gauge("imgpipe_serve_version",
                             "The version each label serves (default: unlabeled requests)",
                             ["model", "label"], registry=r)
        self.swaps = Counter("imgpipe_serve_swaps", "Routing changes taken from the registry",
                             ["model"], registry=r)
        self.in_flight = Gauge("imgpipe_serve_in_flight", "Predict requests being answered",
                               registry=r)

    def routes_changed(self, name: str, old: Routes | None, new: Routes) -> None:
        labels = dict(new.labels)
        if new.default is not None:
            labels["default"] = new.default
        if new.candidate is not None:
            labels["canary"] = new.candidate
        for label in (set(old.labels) | {"default", "canary"}) if old else set():
            if label not in labels:
                try:
                    self.version.remove(name, label)
                except KeyError:
                    pass
        for label, version in labels.items():
            self.version.labels(name, label).set(version)
        self.swaps.labels(name).inc()


class Service:
    """What the routes share: the follower's routes, limits, metrics, request log."""

    def __init__(self, follower: Follower, limits: Limits, metrics: Metrics,
                 request_log: Any = None):
        self.follower = follower
        self.limits = limits
        self.metrics = metrics
        self.request_log = request_log
        self.draining = False      # stopping: every answer closes its connection
        self.executor = ThreadPoolExecutor(max(2, limits.parallel), thread_name_prefix="imgpipe-model")
        self.prepare_executor = ThreadPoolExecutor(2, thread_name_prefix="imgpipe-prepare")

    # --- routing --------------------------------------------------------------------

    def routes(self, name: str) -> Routes:
        routes = self.follower.get(name)
        if routes is None or not routes.versions:
            known = sorted(self.follower.routes)
            raise Refused(404, f"Servable not found for request: Latest({name}): model {name!r} "
                               f"is not served here (served: {', '.join(known) or 'none'})",
                          "unknown_model")
        return routes

    def pick(self, routes: Routes, version: int | None, label: str | None,
             request_id: str) -> tuple[LoadedVersion, str | None, str | None]:
        """(version, the label it was reached by, the canary arm)."""
        name = routes.name
        if version is not None:
            if version in routes.versions:
                return routes.versions[version], None, None
            raise Refused(404, f"Servable not found for request: Specific({name}, {version}): "
                               f"version {version} of {name} is not served (served: "
                               f"{_listing(routes)}); serve it by pointing an alias at it: "
                               f"imgpipe models promote {name}:{version} --to ALIAS",
                          "unknown_version")
        if label is not None:
            if label in routes.labels:
                return routes.versions[routes.labels[label]], label, None
            why = routes.missing.get(label) or f"{name} has no alias {label!r}"
            raise Refused(404, f"Unrecognized servable version label: {label}: {why} (labels: "
                               f"{', '.join(sorted(routes.labels)) or 'none'})", "unknown_label")
        assert routes.default is not None
        if routes.candidate is not None:
            arm = "candidate" if _bucket(request_id) < routes.weight / 100 else "baseline"
            chosen = routes.candidate if arm == "candidate" else routes.default
            canary_label = self.follower.canary.alias if self.follower.canary else None
            return (routes.versions[chosen],
                    canary_label if arm == "candidate" else routes.default_label, arm)
        return routes.versions[routes.default], routes.default_label, None

    def batcher(self, loaded: LoadedVersion, signature: str) -> Batcher:
        found = loaded.batchers.get(signature)
        if found is None:
            limits = self.limits
            histogram = self.metrics.batch.labels(loaded.name)
            found = Batcher(lambda inputs: loaded.call(signature, inputs), self.executor,
                            limits.max_batch, limits.batch_wait_ms / 1000, limits.parallel,
                            on_batch=histogram.observe)
            loaded.batchers[signature] = found
        return found

    # --- one predict request ---------------------------------------------------------

    async def predict(self, request: Request, name: str, version: int | str | None,
                      label: str | None) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        entry: dict[str, Any] = {"id": request_id, "model": name, "version": None,
                                 "label": label, "arm": None, "signature": None,
                                 "status": 200, "error": None, "instances": 0}
        known = name in self.follower.routes
        self.metrics.in_flight.inc()
        inputs: list[bytes] = []
        headers = {"X-Request-Id": request_id}
        background = None
        try:
            routes = self.routes(name)
            version = _version(version, name)
            body = await read_body(request, self.limits.max_body_bytes,
                                   self.limits.read_timeout, lambda: self.draining)
            loaded, reached_by, arm = self.pick(routes, version, label, request_id)
            entry.update(version=loaded.version, label=reached_by, arm=arm)
            signature, inputs, columnar, truths = await self._prepare(body, loaded)
            entry.update(signature=signature, instances=len(inputs))
            try:
                outputs = await self.batcher(loaded, signature).submit(inputs)
            except Exception as exc:
                raise await self._model_refusal(exc, loaded, signature, inputs) from None
            content = answer(outputs, columnar, loaded.classes)
            content["model_spec"] = {"name": name, "version": str(loaded.version),
                                     "signature_name": signature}
            headers["X-Model-Version"] = str(loaded.version)
            if reached_by:
                headers["X-Model-Label"] = reached_by
            status = 200
            if self.request_log is not None:
                background = self._log_task(entry, routes, loaded, signature, inputs, outputs,
                                            started, truths)
        except Refused as refused:
            status, content = refused.status, {"error": str(refused)}
            entry.update(status=status, error=str(refused))
            self.metrics.errors.labels(name if known else "(unknown)", refused.reason).inc()
        except Exception as exc:        # a fault of the server itself
            status = 500
            content = {"error": f"internal error: {type(exc).__name__}: {exc}"}
            entry.update(status=status, error=content["error"])
            self.metrics.errors.labels(name if known else "(unknown)", "internal").inc()
        finally:
            self.metrics.in_flight.dec()
        elapsed = time.perf_counter() - started
        entry["latency_ms"] = round(elapsed * 1000, 3)
        model_label = name if known else "(unknown)"
        self.metrics.requests.labels(model_label, str(entry["version"] or ""),
                                     entry["signature"] or "", str(status)).inc()
        self.metrics.latency.labels(model_label).observe(elapsed)
        if self.request_log is not None and background is None and known:
            self._record(entry)
        if self.draining or status == 408:      # 408: the rest of the body may follow
            headers["Connection"] = "close"
        return JSONResponse(content, status_code=status, headers=headers,
                            background=background)

    async def _prepare(self, body: bytes, loaded: LoadedVersion
                       ) -> tuple[str, list[bytes], bool, list[str | None] | None]:
        """The signature, its decoded and checked inputs, whether the body was columnar,
        and the true classes it gave (`labels`); large bodies are parsed off the event
        loop."""
        if len(body) > 64 * 1024:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.prepare_executor, self._parse, body, loaded)
        return self._parse(body, loaded)

    def _parse(self, body: bytes, loaded: LoadedVersion
               ) -> tuple[str, list[bytes], bool, list[str | None] | None]:
        document = parse_json(body)
        if not isinstance(document, dict):
            raise Refused(400, 'the body must be a JSON object such as {"instances": [...]}',
                          "bad_json")
        signature = document.get("signature_name") or EXAMPLES_SIGNATURE
        if not isinstance(signature, str) or signature not in loaded.signatures:
            raise Refused(400, f"signature_name {signature!r} not found in {loaded.name}:"
                               f"{loaded.version}; signatures: "
                               f"{', '.join(sorted(loaded.signatures))}", "unknown_signature")
        key = loaded.signatures[signature].input_key
        if "instances" in document and "inputs" in document:
            raise Refused(400, "give either 'instances' (row format) or 'inputs' (columnar), "
                               "not both", "bad_request")
        columnar = "inputs" in document
        values = document.get("inputs") if columnar else document.get("instances")
        if columnar and isinstance(values, dict):
            if set(values) != {key}:
                raise Refused(400, f"inputs names {sorted(values)}; {signature} takes one input, "
                                   f"{key!r}", "bad_request")
            values = values[key]
        if not isinstance(values, list) or not values:
            raise Refused(400, "'instances' must be a non-empty list, e.g. "
                               '{"instances": [{"b64": "<base64 image>"}]}', "bad_request")
        if len(values) > self.limits.max_instances:
            raise Refused(413, f"{len(values)} instances in one request, over the limit of "
                               f"{self.limits.max_instances} (serve --max-instances); split the "
                               "request", "too_many_instances")
        truths = _truths(document.get("labels"), len(values))
        inputs = [_binary(value, key, i) for i, value in enumerate(values)]
        if signature == IMAGES_SIGNATURE:
            inputs = [self._image(data, i) for i, data in enumerate(inputs)]
        elif signature == EXAMPLES_SIGNATURE:
            for i, data in enumerate(inputs):
                _check_example(data, i)
        return signature, inputs, columnar, truths

    async def _model_refusal(self, exc: Exception, loaded: LoadedVersion, signature: str,
                             inputs: list[bytes]) -> Exception:
        """A model error on inputs the checks let through is the request's fault (400),
        naming the instance and why (found off the event loop); anything else is the
        server's."""
        if type(exc).__name__ not in ("InvalidArgumentError", "InvalidArgument"):
            return exc
        loop = asyncio.get_running_loop()
        index, why = await loop.run_in_executor(
            self.prepare_executor, explain, inputs, signature, self.limits.max_pixels,
            lambda one: loaded.call(signature, one), model_reason(exc))
        if index is None:
            hint = (' (send encoded images with "signature_name": "serving_images")'
                    if signature == EXAMPLES_SIGNATURE else "")
            return Refused(400, f"the model could not read the request: {why}{hint}",
                           "model_refused_input")
        return Refused(400, f"instance {index}: the model could not read it: {why}; send "
                            "each image whole, as the bytes of its PNG or JPEG file",
                       "model_refused_input")

    def _image(self, data: bytes, index: int) -> bytes:
        try:
            return imaging.check_for_serving(data, self.limits.max_pixels)
        except imaging.BadImage as exc:
            reason = "too_many_pixels" if "pixels" in str(exc) else "not_an_image"
            raise Refused(413 if reason == "too_many_pixels" else 400,
                          f"instance {index}: {exc}", reason) from None

    # --- the request log ---------------------------------------------------------------

    def _record(self, entry: dict[str, Any]) -> None:
        try:
            self.request_log.record(entry["model"], make_entry(**{"time": _now(), **entry}))
        except Exception as exc:     # the log never fails a request; the loss is counted
            self.request_log.drop(entry.get("model"), exc)

    def _log_task(self, entry: dict[str, Any], routes: Routes, loaded: LoadedVersion,
                  signature: str, inputs: list[bytes], outputs: dict[str, np.ndarray],
                  started: float, truths: list[str | None] | None = None) -> BackgroundTask:
        """Runs after the answer is sent: the entry, with the images described when the
        request is sampled or labelled (their true classes as "truth"), and in a canary
        the other arm's answers on them (shadow)."""
        sampled = signature == IMAGES_SIGNATURE and (
            truths is not None or _bucket(entry["id"], salt="log") < self.limits.log_sample)
        stamp = _now()

        async def write() -> None:
            record = dict(entry, time=stamp,
                          latency_ms=round((time.perf_counter() - started) * 1000, 3))
            try:
                await describe(record)
            except Exception:           # the entry is still logged, without its images
                record.pop("images", None)
            self._record(record)

        async def describe(record: dict[str, Any]) -> None:
            if sampled:
                loop = asyncio.get_running_loop()
                record["images"] = await loop.run_in_executor(self.prepare_executor,
                                                              _describe, inputs, outputs)
                for image, truth in zip(record["images"], truths or []):
                    if truth is not None:
                        image["truth"] = truth
                other = _other_arm(routes, entry.get("arm"))
                if other is not None:
                    try:
                        shadow = await self.batcher(routes.versions[other], signature).submit(inputs)
                        record["shadow"] = {"version": other,
                                            "classes": _names(shadow),
                                            "confidences": _confidences(shadow)}
                    except Exception as exc:
                        record["shadow"] = {"version": other, "error": str(exc)[:200]}

        return BackgroundTask(write)

    # --- status and metadata --------------------------------------------------------------

    def status(self, name: str, version: int | str | None, label: str | None
               ) -> dict[str, Any]:
        if ":" in name:        # GET /v1/models/NAME:predict
            method = name.split(":", 1)[1]
            raise Refused(405, f":{method} takes POST with a JSON body, e.g. POST "
                               f"/v1/models/{name.split(':')[0]}:predict", "method")
        routes = self.routes(name)
        version = _version(version, name)
        if version is None and label is None:
            chosen = sorted(routes.versions)
        else:
            chosen = [self.pick(routes, version, label, "status")[0].version]
        return {"model_version_status": [
            {"version": str(n), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}} for n in chosen]}

    def metadata(self, name: str, version: int | str | None, label: str | None
                 ) -> dict[str, Any]:
        """TF Serving's signature defs, and the class names in the order of the
        probability vector (`classes`) when the model names them."""
        routes = self.routes(name)
        version = _version(version, name)
        loaded = self.pick(routes, version, label, "metadata")[0] \
            if (version is not None or label is not None) else routes.versions[routes.default]
        metadata: dict[str, Any] = {"signature_def": {"signature_def": {
            n: s.metadata for n, s in sorted(loaded.signatures.items())}}}
        if loaded.classes:
            metadata["classes"] = list(loaded.classes)
        return {"model_spec": {"name": name, "signature_name": "",
                               "version": str(loaded.version)}, "metadata": metadata}


# --- helpers -------------------------------------------------------------------------


def _version(version: int | str | None, name: str) -> int | None:
    """A path's version as a number (a 400 when it is none)."""
    return parse_version(version, name) if isinstance(version, str) else version


def _now() -> str:
    from components import runtime

    return runtime.utc_now()


def _bucket(request_id: str, salt: str = "canary") -> float:
    """A number in [0, 1) fixed by the request id: the same id always takes the same
    canary arm and the same sampling decision."""
    digest = hashlib.sha256(f"{salt}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _listing(routes: Routes) -> str:
    by_version = routes.aliases_by_version()
    return ", ".join(f"{n}" + (f" ({', '.join(by_version[n])})" if n in by_version else "")
                     for n in sorted(routes.versions))


def _binary(value: Any, key: str, index: int) -> bytes:
    if isinstance(value, dict) and set(value) == {key}:
        value = value[key]
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Refused(400, f"instance {index}: 'b64' is not valid base64 ({exc})",
                          "bad_base64") from None
    raise Refused(400, f'instance {index}: binary inputs are {{"b64": "<base64>"}} (or '
                       f'{{"{key}": {{"b64": ...}}}}), got {json.dumps(value)[:80]}',
                  "bad_request")


def _check_example(data: bytes, index: int) -> None:
    from tensorflow.core.example import example_pb2

    try:
        example_pb2.Example.FromString(data)
    except Exception:
        raise Refused(400, f"instance {index} is not a serialized tf.Example; send encoded "
                           'images with "signature_name": "serving_images"',
                      "not_an_example") from None


def _names(outputs: dict[str, np.ndarray]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in outputs["class_name"].tolist()]


def _confidences(outputs: dict[str, np.ndarray]) -> list[float]:
    return [round(float(p), 6) for p in outputs["probabilities"].max(axis=1)]


def _truths(given: Any, count: int) -> list[str | None] | None:
    """A predict body's `labels` (imgpipe's addition to TF Serving's body): the true
    class of each instance, or null where unknown, logged for the canary's accuracy."""
    if given is None:
        return None
    if not isinstance(given, list) or len(given) != count or not all(
            label is None or (isinstance(label, str) and label.strip()) for label in given):
        raise Refused(400, f"'labels' must be a list of {count} class names (or null where "
                           'unknown), one per instance, e.g. "labels": ["cat", null]',
                      "bad_request")
    return [None if label is None else label.strip() for label in given]


def _describe(inputs: list[bytes], outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The sampled request's images as ingest describes them (decoded here, in a
    worker thread: never on the event loop), with the answers they got."""
    return sampled_images(describe_images(inputs), _names(outputs), _confidences(outputs))


def _other_arm(routes: Routes, arm: str | None) -> int | None:
    if arm == "candidate":
        return routes.default
    if arm == "baseline":
        return routes.candidate
    return None


def _refused_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(service: Service) -> FastAPI:
    """The FastAPI app: TF Serving's REST routes over `service`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # uvicorn has stopped taking connections and answered what was in flight
        service.follower.stop()
        if service.request_log is not None:
            service.request_log.close()
        service.executor.shutdown(wait=True)
        service.prepare_executor.shutdown(wait=True)

    app = FastAPI(title="imgpipe serve", lifespan=lifespan,
                  description="TF Serving's REST API over an imgpipe model registry")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        hint = ("; predict with POST /v1/models/NAME:predict, status with GET /v1/models/NAME"
                if exc.status_code in (404, 405) else "")
        return _refused_response(exc.status_code, f"{exc.detail}: {request.method} "
                                                  f"{request.url.path}{hint}")

    @app.exception_handler(RequestValidationError)
    async def bad_path(request: Request, exc: RequestValidationError):
        return _refused_response(400, f"bad request path {request.url.path}: "
                                      f"{exc.errors()[0].get('msg', exc)}")

    async def guarded(call, *args) -> Response:
        try:
            return JSONResponse(call(*args))
        except Refused as refused:
            service.metrics.errors.labels("(status)", refused.reason).inc()
            return _refused_response(refused.status, str(refused))

    @app.get("/v1/models/{name}")
    async def status(name: str):
        return await guarded(service.status, name, None, None)

    @app.get("/v1/models/{name}/versions/{version}")
    async def status_version(name: str, version: str):
        return await guarded(service.status, name, version, None)

    @app.get("/v1/models/{name}/labels/{label}")
    async def status_label(name: str, label: str):
        return await guarded(service.status, name, None, label)

    @app.get("/v1/models/{name}/metadata")
    async def metadata(name: str):
        return await guarded(service.metadata, name, None, None)

    @app.get("/v1/models/{name}/versions/{version}/metadata")
    async def metadata_version(name: str, version: str):
        return await guarded(service.metadata, name, version, None)

    @app.get("/v1/models/{name}/labels/{label}/metadata")
    async def metadata_label(name: str, label: str):
        return await guarded(service.metadata, name, None, label)

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request):
        return await service.predict(request, name, None, None)

    @app.post("/v1/models/{name}/versions/{version}:predict")
    async def predict_version(name: str, version: str, request: Request):
        return await service.predict(request, name, version, None)

    @app.post("/v1/models/{name}/labels/{label}:predict")
    async def predict_label(name: str, label: str, request: Request):
        return await service.predict(request, name, None, label)

    @app.get("/monitoring/prometheus/metrics")
    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app
