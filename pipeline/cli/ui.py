"""`imgpipe ui`: the web console over the runs folder and the registry
(`pipeline/ui/`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pipeline.cli.common import (DEFAULT_RUNS_DIR, Result, _add_json_arg, _add_registry_args,
                                 _note, _registry)


def _port(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: give 0 to 65535 "
                                         "(0: any free port)")
    return int(text)


def cmd_ui(args: argparse.Namespace) -> Result:
    from components.errors import ConfigError
    from pipeline.ui import server
    from pipeline.ui.security import TOKEN_ENV, start_problem

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    problem = start_problem(args.host, token)        # before anything is read
    if problem:
        raise ConfigError(problem)
    if not os.path.isdir(args.runs_dir):
        raise ConfigError(f"--runs-dir {args.runs_dir}: "
                          f"{'not a folder' if os.path.exists(args.runs_dir) else 'no such folder'}"
                          "; give the runs folder `imgpipe run` writes (default ./runs).")
    registry = _registry(args)
    try:
        registry.models()
    except OSError as exc:
        raise ConfigError(f"cannot read the registry {registry.root} ({type(exc).__name__}: "
                          f"{exc.strerror or exc}); check its permissions or the bucket's "
                          "access.") from None
    ready = None
    if args.json:      # one object on stdout once it listens; the line on stderr
        def ready(info: dict[str, Any]) -> None:
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()
    server.serve(server.Options(args.runs_dir, registry.root, args.host, args.port, token),
                 say=_note(args), ready=ready)
    return Result()


def register(sub: Any) -> None:
    p = sub.add_parser("ui", help="a local web console: runs, lineage, the registry, "
                                  "canaries and monitoring")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                   help="the runs folder (default ./runs)")
    _add_registry_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0: any free)")
    p.add_argument("--token", help="the secret every request must carry (sign-in form, or "
                                    "Authorization: Bearer TOKEN); default: the "
                                    "IMGPIPE_UI_TOKEN environment variable")
    _add_json_arg(p, "one JSON object on stdout once it listens (url, runs_dir, registry)")
    p.set_defaults(func=cmd_ui, stopped="stopped.")
