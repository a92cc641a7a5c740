"""The console's process: the listening socket, taken first, then uvicorn."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Callable

from components.errors import ConfigError


@dataclass(frozen=True)
class Options:
    runs_dir: str
    registry: str
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None


def _socket(host: str, port: int) -> socket.socket:
    """The listening address, taken before anything else: one line when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick "
                          "another --port (0: any free one) or --host.") from None
    return sock


def serve(options: Options, say: Callable[[str], None] = print,
          ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Serves the console until SIGTERM or SIGINT; `ready` is called with its address
    once the socket listens."""
    import uvicorn

    from components.registry.versions import Registry
    from pipeline.ui.app import build
    from pipeline.ui.security import Guard, is_loopback, start_problem

    problem = start_problem(options.host, options.token)
    if problem:
        raise ConfigError(problem)
    sock = _socket(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    hosts = None
    if is_loopback(options.host):         # a page elsewhere cannot rebind a name to us
        hosts = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", shown)}
    app = build(options.runs_dir, Registry(options.registry), Guard(options.token, hosts))
    sock.listen(128)
    say(f"imgpipe ui on http://{shown}:{port}/ (runs {options.runs_dir}, registry "
        f"{options.registry}{'; token required' if options.token else ''}); Ctrl-C stops it")
    if ready is not None:
        ready({"url": f"http://{shown}:{port}/", "runs_dir": options.runs_dir,
               "registry": options.registry, "token_required": bool(options.token)})
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
