"""`imgpipe models serving-config`: TF Serving's model config file for the registry
(`components.inference.serving_config.model_server_config`), so that `tensorflow_model_server
--model_config_file` serves the versions the aliases point at, under the aliases as
version labels. A label moving onto a version the server has not loaded is written in
two phases (`components.inference.serving_config.rollout`): with `--server`, the command waits
between them on the server's REST status; without it, it writes the first and says to
run it again."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable

from pipeline.cli.common import (OutputKind, Result, _add_force_arg, _note, _registry,
                                 check_output, positive_number)

# A model config file an earlier run wrote: it starts (after comments) with the list.
_FIRST_FIELD = re.compile(r"\A(?:\s*#[^\n]*\n)*\s*model_config_list\s*[{:]")
MODEL_CONFIG = OutputKind("a TF Serving model config (ModelServerConfig text proto)",
                          (".config", ".pbtxt", ".textproto"),
                          lambda head: bool(_FIRST_FIELD.match(head)))
HEADER = ("# TF Serving model config (ModelServerConfig), written by `imgpipe models "
          "serving-config`\n# from the registry {root}; run it again after a push or an "
          "alias change.\n")
PHASE_ONE = ("# Phase 1 of 2: {held}. TF Serving refuses a label on a version it has not "
             "loaded,\n# so the labels move in the next config, once {refs} AVAILABLE.\n")
# How long --server waits for the new versions by default, in seconds.
DEFAULT_TIMEOUT = 600.0


def _previous(path: str) -> dict[str, tuple[list[int], dict[str, int]]] | None:
    """The model config the server was last given (the -o file), per model (versions,
    labels); None when there is none (a server starting with the new one). A file of
    this command that does not parse is a ConfigError: what the server holds is unknown."""
    from components.io import fileio
    from components.inference import serving_config
    from components.errors import ConfigError

    if not fileio.exists(path):
        return None
    text = fileio.read_text(path)
    if not MODEL_CONFIG.same(text[:4096]):
        return None                 # replaced with --force: no server was reading it
    try:
        return serving_config.read_model_config(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a model config TF Serving can read ({exc}), so what "
                          "the server serves is unknown; fix or remove the file (a server "
                          "starting with the new one takes it whole) and run again.") from exc


def _summary(models: list[dict[str, Any]]) -> str:
    return "; ".join(f"{m['name']} versions {', '.join(map(str, m['versions']))}"
                     + (" (" + ", ".join(f"{a} -> {n}" for a, n in m["labels"].items())
                        + ")" if m["labels"] else "") for m in models)


def cmd_models_serving_config(args: argparse.Namespace) -> Result:
    from components.io import fileio
    from components.inference import serving_config
    from components.errors import ConfigError, ServingError

    if args.output:              # before anything is read: a mistake costs nothing
        check_output(args.output, MODEL_CONFIG, force=args.force)
    elif args.server:
        raise ConfigError("--server waits between the two configs it writes, so it needs "
                          "-o FILE: the model config file the server reads.")
    registry = _registry(args)
    built = serving_config.model_server_config(registry, args.models)
    for line in built.warnings:
        print(f"imgpipe: warning: {line}", file=sys.stderr)
    header = HEADER.format(root=registry.root)
    if not args.output:
        text = header + built.text()
        return Result(data={"registry": registry.root, "models": built.models(),
                            "output": None, "warnings": built.warnings, "config": text},
                      text=lambda: sys.stdout.write(text))

    previous = _previous(args.output)
    names = [m["name"] for m in built.models()]
    if args.server:
        try:
            available = serving_config.available_on(args.server, names)
        except ConnectionError as exc:
            raise ServingError(f"cannot read the model status of TF Serving at {args.server} "
                               f"({exc}); nothing was written. Give its REST address with "
                               "--server (e.g. http://HOST:8501), or leave --server out to "
                               "stage the change through the file alone.") from exc
    else:
        available = None if previous is None else \
            {name: set(versions) for name, (versions, _) in previous.items()}
    plan = serving_config.rollout(built, available,
                                  {name: labels for name, (_, labels) in (previous or {}).items()})
    output = args.output if fileio.is_remote(args.output) else os.path.abspath(args.output)
    refs = plan.waiting_refs()
    verb = "is" if "," not in refs else "are"
    lines: list[str] = []

    def write(config: serving_config.ServingConfig, phase: int) -> None:
        note = PHASE_ONE.format(held="; ".join(plan.held), refs=f"{refs} {verb}") \
            if phase == 1 else ""
        fileio.write_text_atomic(args.output, header + note + config.text())
        what = _summary(config.models())
        lines.append(f"wrote {args.output} (phase 1 of 2: {what})" if phase == 1 else
                     f"wrote {args.output} ({len(config.models())} model"
                     f"{'s' * (len(config.models()) != 1)}): {what}")

    state: dict[str, Any] = {"phase": 2 if not plan.staged else 1, "written": plan.now}
    write(plan.now, state["phase"])

    def data() -> dict[str, Any]:
        return {"registry": registry.root, "models": state["written"].models(),
                "output": output, "warnings": built.warnings, "server": args.server,
                "phase": state["phase"], "waiting": plan.waiting if state["phase"] == 1 else {},
                "held": plan.held if state["phase"] == 1 else []}

    def show() -> None:
        for line in lines:
            print(line)

    if not plan.staged:
        return Result(data=data, text=show)
    if not args.server:
        lines.append(f"{'; '.join(plan.held)}: run this command again once the server has "
                     f"loaded {refs} (TF Serving refuses a label on a version it has not "
                     "loaded), or pass --server URL to wait for it.")
        return Result(data=data, text=show)

    note = _note(args)           # said now: the wait can be long, and can fail
    note(lines.pop())
    note(f"waiting up to {args.timeout:g}s for {refs} to be AVAILABLE on {args.server} ...")
    missing = serving_config.wait_available(args.server, plan.waiting, args.timeout)
    if missing:
        ref, status, error = next((m for m in missing if m[1] == "END" and m[2]), missing[0])
        why = f"{status}: {error}" if error else status
        failed = status == "END" and error
        return Result(data=data, text=show, error=ServingError(
            f"{ref} {'failed to load' if failed else 'is not AVAILABLE'} on {args.server} "
            f"({why}{'' if failed else f' after {args.timeout:g}s'}); {args.output} keeps "
            f"phase 1 (labels on loaded versions), which the server accepts. "
            + ("Fix the version (the server's log says why) and run this command again."
               if failed else "Run this command again once it is loaded, or raise --timeout.")))
    state.update(phase=2, written=plan.final)
    write(plan.final, 2)
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
                                          "stdout). A label moving onto a version the file "
                                          "does not list yet is written in two phases.")
    p.add_argument("--server", metavar="URL",
                   help="the TF Serving reading -o, by its REST address (e.g. "
                        "http://localhost:8501): write the new versions, wait until its "
                        "status says they are AVAILABLE, then move the labels")
    p.add_argument("--timeout", type=positive_number, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"with --server: how long to wait, in seconds (default "
                        f"{DEFAULT_TIMEOUT:g})")
    _add_force_arg(p)
    add_registry_args(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_models_serving_config)
