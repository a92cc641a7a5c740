"""`imgpipe serve`: the registry's models over TF Serving's REST API, following the
registry's aliases while it runs.

    loaded.py    the versions in memory and the thread that follows the registry
    batching.py  dynamic batching of concurrent requests
    app.py       the FastAPI routes, request bounds, metrics, canary split, request log
    reading.py   how long a client may take to send a request (head, body, at a stop)

`serve(...)` runs it in the foreground until SIGTERM/SIGINT (uvicorn's graceful
shutdown: no new connections, requests in flight answered, then the request log is
flushed); `Running` runs it in a thread on a free port, for tests and benchmarks.
"""

from __future__ import annotations

import errno
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from components.errors import ConfigError, ServingError
from pipeline.serve.app import Limits, Metrics, Service, build_app
from pipeline.serve.loaded import (Canary, Follower, LoadedVersion, RegistryCollector, Routes,
                                   load_version)
from pipeline.serve.request_log import FLUSH_SECONDS

__all__ = ["Canary", "Limits", "Options", "Running", "build", "serve", "describe_routes"]

# a request still being answered this long after the drain is cancelled; with the drain
# and a stalled body's bound (reading.py) a stop ends well inside Kubernetes' 30 s grace
GRACEFUL_SECONDS = 20
DRAIN_SECONDS = 2.0       # keep-alive connections answered (then closed) after a stop


@dataclass
class Options:
    registry: str
    models: list[str] | None = None
    host: str = "127.0.0.1"
    port: int = 8501
    poll: float = 2.0
    default_alias: str = "production"
    canary: Canary | None = None
    limits: Limits = field(default_factory=Limits)
    request_log: bool = True
    request_log_seconds: float = FLUSH_SECONDS   # the longest an entry waits to be written


def build(options: Options, log: Callable[[str], None] | None = None,
          loader: Callable[..., LoadedVersion] = load_version) -> tuple[Any, Service]:
    """The app and its service, with every model loaded once (a ConfigError when the
    registry has nothing to serve) and the follower started."""
    metrics = Metrics()
    follower = Follower(options.registry, options.models, options.poll,
                        options.default_alias, options.canary, loader=loader, log=log,
                        on_change=metrics.routes_changed)
    metrics.registry.register(RegistryCollector(follower))
    names = follower.model_names()
    known = set(follower.registry.models())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"no model {', '.join(map(repr, unknown))} in the registry "
                          f"{follower.registry.root} (models: {', '.join(sorted(known)) or 'none'})")
    routes = follower.refresh()
    if not routes:
        raise ConfigError(f"nothing to serve in {follower.registry.root}: no model there has a "
                          "version that loads; push one with `imgpipe run CONFIG`.")
    request_log = None
    if options.request_log:
        from pipeline.serve.request_log import Collector, RequestLog

        request_log = RequestLog(follower.registry.root, options.request_log_seconds, log=log,
                                 models_must_exist=True)
        metrics.registry.register(Collector(request_log))
    service = Service(follower, options.limits, metrics, request_log)
    follower.start()
    return build_app(service), service


def describe_routes(routes: dict[str, Routes]) -> list[str]:
    """One line per served model: its versions, their labels, the default, the canary."""
    lines = []
    for name, r in sorted(routes.items()):
        by_version = r.aliases_by_version()
        parts = []
        for n in sorted(r.versions):
            tags = list(by_version.get(n, []))
            if n == r.default:
                tags.append("default")
            if n == r.candidate:
                tags.append(f"canary {r.weight:g}%")
            parts.append(f"{n}" + (f" ({', '.join(tags)})" if tags else ""))
        lines.append(f"{name}: versions {', '.join(parts)}")
        lines.extend(f"  {why}" for why in r.missing.values())
    return lines


def _socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, not listening yet: an address that cannot work is
    refused before any model is loaded (and nothing connects until they are)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bare, port))
    except (OSError, OverflowError, TypeError) as exc:
        sock.close()
        address = _url(bare, port).removeprefix("http://")
        raise ConfigError(f"cannot listen on {address}: {_unbindable(exc)}") from None
    return sock


def _unbindable(exc: BaseException) -> str:
    """Why a bind failed, and which argument to change."""
    if not isinstance(exc, OSError):
        return "--port takes a port number from 0 to 65535 (0: any free port)."
    if isinstance(exc, socket.gaierror):
        return (f"no such address ({exc.strerror}); give --host an address of this machine: "
                "127.0.0.1 (this machine only), 0.0.0.0 (every interface) or ::1.")
    if exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror}; pick another --port, or stop what holds it."
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"{exc.strerror}: not an address of this machine; give --host one of its "
                "addresses, or 0.0.0.0 for every interface.")
    if exc.errno == errno.EACCES:
        return f"{exc.strerror}: ports below 1024 need privileges; pick --port 1024 or above."
    return f"{exc.strerror or exc}; pick another --host or --port."


def _url(host: str, port: int) -> str:
    """http://HOST:PORT, an IPv6 address in brackets (RFC 3986)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app: Any, service: Service):
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            """uvicorn's graceful shutdown closes idle keep-alive connections at once,
            which cuts off a request a client is sending on one at that moment. First:
            no new connections, and for DRAIN_SECONDS every answer says `Connection:
            close`, so each client's next request is answered and its connection then
            closed; then uvicorn's own shutdown (idle connections closed, requests in
            flight answered, the lifespan's end: the request log flushed)."""
            for listener in self.servers:
                listener.close()
            service.draining = True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DRAIN_SECONDS
            while self.server_state.connections and loop.time() < deadline \
                    and not self.force_exit:
                await asyncio.sleep(0.02)
            await super().shutdown(sockets)

    from pipeline.serve.headers import bounded_protocol
    from pipeline.serve.reading import head_deadline

    def head_refused() -> None:
        service.metrics.errors.labels("(unknown)", "headers_too_large").inc()

    # uvloop and httptools (C parsers), as uvicorn[standard] does; the request's head
    # bounded in size (httptools has no bound of its own) and in time
    protocol = head_deadline(bounded_protocol(service.limits.max_head_bytes, head_refused),
                             service.limits.read_timeout)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, http=protocol)
    return Server(config)


def serve(options: Options, say: Callable[[str], None] = print,
          ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully. `ready` is called
    with the address and the served versions once the socket listens."""
    sock = _socket(options.host, options.port)       # the address first: it may not work
    try:
        app, service = build(options, log=say)
    except BaseException:
        sock.close()
        raise
    sock.listen(2048)
    url = _url(*sock.getsockname()[:2])
    for line in describe_routes(service.follower.routes):
        say(line)
    say(f"listening on {url} (predict: POST /v1/models/NAME:predict; metrics: "
        f"/monitoring/prometheus/metrics); following {service.follower.registry.root} every "
        f"{options.poll:g}s")
    if ready is not None:
        ready({"url": url, "registry": service.follower.registry.root,
               "models": {name: {"versions": sorted(r.versions), "labels": r.labels,
                                 "default": r.default,
                                 "canary": ({"version": r.candidate, "percent": r.weight}
                                            if r.candidate is not None else None)}
                          for name, r in sorted(service.follower.routes.items())}})
    server = _server(app, service)
    # uvicorn takes SIGTERM/SIGINT for its graceful shutdown, then raises the signal
    # again for the handlers it found: a stop asked for and carried out is exit 0.
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, lambda *_: None)
                for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        server.run(sockets=[sock])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _stopped(service, say)


def _stopped(service: Service, say: Callable[[str], None]) -> None:
    """The last line; a ServingError (exit 2) when request-log entries were lost (the
    registry full, read-only or unreachable until the stop)."""
    log = service.request_log
    if log is None:
        say("stopped: requests in flight were answered")
        return
    log.close()         # again, where uvicorn's shutdown did not get to it (idempotent)
    stats = log.stats()
    if not stats["lost"]:
        say(f"stopped: requests in flight were answered; request log flushed "
            f"({stats['written']:,} entries written)")
        return
    say(f"stopped: requests in flight were answered; request log: {stats['written']:,} "
        f"entries written, {stats['lost']:,} NOT written")
    raise ServingError(
        f"the request log lost {stats['lost']:,} of {stats['recorded']:,} entries "
        f"({stats['pending']:,} still unwritten at the stop, {stats['dropped']:,} dropped "
        f"before; last error: {stats['last_error']}); make {log.root} writable (space, "
        "permissions, the bucket's access) so the next run keeps its log: `imgpipe "
        "monitor` and `models canary` read only what was written.")


class Running:
    """`with Running(options) as url:` serves in a thread (on a free port unless `port`
    is given) and stops it, gracefully, on exit."""

    def __init__(self, options: Options, log: Callable[[str], None] | None = None,
                 loader: Callable[..., LoadedVersion] = load_version, port: int = 0):
        self.options = options
        self.port = port
        self.log = log or (lambda line: None)
        self.loader = loader
        self.service: Service | None = None
        self.url = ""

    def __enter__(self) -> str:
        sock = _socket(self.options.host, self.port)
        try:
            app, self.service = build(self.options, self.log, self.loader)
        except BaseException:
            sock.close()
            raise
        sock.listen(2048)
        self.url = _url(*sock.getsockname()[:2])
        self._server = _server(app, self.service)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="imgpipe-serve", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread stopped before it started")
            self._thread.join(0.01)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(GRACEFUL_SECONDS + 5)
