"""`imgpipe models serving-config`: TF Serving's model config file for the registry
(`components.serving_config.model_server_config`), so that `tensorflow_model_server
--model_config_file` serves the versions the aliases point at, under the aliases as
version labels."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable

from pipeline.cli.common import OutputKind, Result, _add_force_arg, _registry, check_output

# A model config file an earlier run wrote: it starts (after comments) with the list.
_FIRST_FIELD = re.compile(r"\A(?:\s*#[^\n]*\n)*\s*model_config_list\s*[{:]")
MODEL_CONFIG = OutputKind("a TF Serving model config (ModelServerConfig text proto)",
                          (".config", ".pbtxt", ".textproto"),
                          lambda head: bool(_FIRST_FIELD.match(head)))
HEADER = ("# TF Serving model config (ModelServerConfig), written by `imgpipe models "
          "serving-config`\n# from the registry {root}; run it again after a push or an "
          "alias change.\n")


def cmd_models_serving_config(args: argparse.Namespace) -> Result:
    from components import fileio, serving_config

    if args.output:              # before anything is read: a mistake costs nothing
        check_output(args.output, MODEL_CONFIG, force=args.force)
    registry = _registry(args)
    built = serving_config.model_server_config(registry, args.models)
    for line in built.warnings:
        print(f"imgpipe: warning: {line}", file=sys.stderr)
    text = HEADER.format(root=registry.root) + built.text()
    if args.output:
        fileio.write_text_atomic(args.output, text)
    models = built.models()

    def data() -> dict[str, Any]:
        return {"registry": registry.root, "models": models,
                "output": (args.output if fileio.is_remote(args.output)
                           else os.path.abspath(args.output)) if args.output else None,
                "warnings": built.warnings,
                **({} if args.output else {"config": text})}

    def show() -> None:
        if not args.output:
            sys.stdout.write(text)
            return
        print(f"wrote {args.output} ({len(models)} model{'s' * (len(models) != 1)}): "
              + "; ".join(f"{m['name']} versions {', '.join(map(str, m['versions']))}"
                          + (" (" + ", ".join(f"{a} -> {n}" for a, n in m["labels"].items())
                             + ")" if m["labels"] else "") for m in models))

    return Result(data=data, text=show)


def register(models: Any, add_registry_args: Callable[[argparse.ArgumentParser], None],
             add_json_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """`models serving-config [MODEL ...]`, under `models`' subparsers."""
    p = models.add_parser(
        "serving-config", help="TF Serving's model config file for the registry: the "
                               "versions the aliases point at, the aliases as version labels")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="only these models (default: every model in the registry)")
    p.add_argument("-o", "--output", help="the file to write, e.g. models.config (default: "
                                          "stdout)")
    _add_force_arg(p)
    add_registry_args(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_models_serving_config)
