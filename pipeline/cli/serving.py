"""`imgpipe serve`: the registry's models over TF Serving's REST API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.cli.common import (Result, _add_json_arg, _note, _registry, positive_int,
                                 positive_number, share)

CANARY_HELP = ("ALIAS=PERCENT: send that share of unlabeled requests to the version ALIAS "
               "holds, the rest to the default (e.g. staging=10); each request id always "
               "takes the same side")


def _canary(text: str):
    from pipeline.serve import Canary

    alias, sep, weight = text.partition("=")
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not sep or not alias or not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not ALIAS=PERCENT with a percent between "
                                         "0 and 100 (exclusive), e.g. staging=10")
    return Canary(alias, value)


def _port(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: give 0 to 65535 "
                                         "(0: any free port)")
    return value


def cmd_serve(args: argparse.Namespace) -> Result:
    from pipeline import serve

    registry = _registry(args)
    limits = serve.Limits(max_body_bytes=int(args.max_body_mb * (1 << 20)),
                          max_instances=args.max_instances, max_batch=args.max_batch,
                          batch_wait_ms=args.batch_wait_ms, log_sample=args.log_sample,
                          read_timeout=args.read_timeout)
    options = serve.Options(registry.root, args.model or None, args.host, args.port, args.poll,
                            args.default_alias, args.canary, limits,
                            request_log=not args.no_request_log,
                            request_log_seconds=args.request_log_seconds)
    ready = None
    if args.json:      # one object on stdout once it listens; the log lines on stderr
        def ready(info: dict[str, Any]) -> None:
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()
    serve.serve(options, say=_note(args), ready=ready)
    return Result()


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the registry's models over TF Serving's REST API, "
                                     "following promotions and rollbacks")
    p.add_argument("model", nargs="*", help="models to serve (default: every model of the "
                                            "registry, also ones pushed later)")
    p.add_argument("--registry", help="registry root (default: the --config's push "
                                      "destination, else ./serving)")
    p.add_argument("--config", help="take the registry from this config's push.destination")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                                                       "127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=_port, default=8501, help="port (default 8501, TF Serving's "
                                                          "REST port; 0: any free port)")
    p.add_argument("--default-alias", default="production",
                   help="what an unlabeled request gets (default production; the newest "
                        "version when the model has no such alias)")
    p.add_argument("--canary", type=_canary, metavar="ALIAS=PERCENT", help=CANARY_HELP)
    p.add_argument("--poll", type=positive_number, default=2.0,
                   help="seconds between looks at the registry (default 2)")
    p.add_argument("--max-batch", type=positive_int, default=64,
                   help="inputs per model call when batching concurrent requests (default 64)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="how long a batch waits for more requests (default 2 ms)")
    p.add_argument("--max-body-mb", type=positive_number, default=32.0,
                   help="largest request body (default 32 MiB)")
    p.add_argument("--read-timeout", type=positive_number, default=10.0,
                   help="seconds a client may take to send a request's headers, and may "
                        "pause while sending its body (default 10): past it the connection "
                        "is closed, or the request answered 408")
    p.add_argument("--max-instances", type=positive_int, default=256,
                   help="most instances in one request (default 256)")
    p.add_argument("--log-sample", type=share, default=0.1,
                   help="share of requests logged with their images' statistics, for "
                        "`imgpipe monitor` and `models canary` (default 0.1)")
    p.add_argument("--no-request-log", action="store_true",
                   help="write no request log under the registry")
    p.add_argument("--request-log-seconds", type=positive_number, default=30.0,
                   help="the longest a request's log entry waits in memory before its batch "
                        "is written (default 30: at low traffic a file every 30 s; a batch "
                        "is written sooner once it holds 1,000 entries; SIGTERM writes all)")
    _add_json_arg(p, "once it listens, its address and served versions as one JSON object "
                     "on stdout (the log lines go to stderr)")
    p.set_defaults(func=cmd_serve)
