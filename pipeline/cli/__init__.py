"""The `imgpipe` command line. Imports stay inside commands so `--help` and cache
checks do not pay for TensorFlow or Beam.

Each command group registers its parsers beside its handlers (run.py, models.py,
runs.py, tools.py). A handler returns a common.Result; main() prints it once: the
JSON document under --json, else the text. exits.py maps failures to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Callable, Sequence

from components import runtime
from pipeline.cli import backfill, exits, models, run, runs, serving, serving_config, tools
from pipeline.cli import canary, monitoring, ui
from pipeline.cli.common import Parser, Result, _add_json_arg, _add_registry_args, positive_int
from pipeline.cli.exits import storage_error

__all__ = ["Parser", "Result", "build_parser", "main", "positive_int", "storage_error"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="imgpipe", description="TFX-style batch pipeline for image classification.")
    parser.add_argument("--version", action="version",
                        version=f"imgpipe {runtime.package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own logs (TensorFlow, Beam, TFMA, "
                             "KerasTuner)")
    sub = parser.add_subparsers(dest="command", required=True)
    # in the order --help lists the commands
    run.register(sub)
    models_sub = models.register(sub)      # other groups add `models` subcommands to it
    serving.register(sub)
    monitoring.register(sub)
    serving_config.register(models_sub, _add_registry_args, _add_json_arg)
    canary.register(models_sub)
    run.register_remote(sub)
    models.register_predict(sub)
    runs.register(sub)
    backfill.register(sub)
    tools.register(sub)
    ui.register(sub)
    return parser


def _emit(result: Result, as_json: bool) -> int:
    """Prints what a command returned: its JSON document under --json, else its text."""
    if as_json and result.data is not None:
        data = result.data() if callable(result.data) else result.data
        print(json.dumps(data, indent=2, default=str))
    if result.error is not None:
        raise result.error
    if not as_json or result.data is None:
        if callable(result.text):
            result.text()
        elif result.text is not None:
            print(result.text)
    return result.code


def _quiet_libraries() -> None:
    """Library notices that say nothing to a pipeline user (TF/TFMA deprecations, the
    Keras notes about tf.data input that the trainer builds on purpose)."""
    import logging
    import warnings

    for message in ("`shuffle=True` was passed", "Your input ran out of data"):
        warnings.filterwarnings("ignore", message=message)
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    exits.quiet_library_storage_errors()       # the CLI's one line says it


def _verbose(argv: Sequence[str]) -> bool:
    return any(arg in ("-v", "--verbose") for arg in argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = _verbose(argv)
    if not verbose:
        # TensorFlow's C++ start-up chatter buries the pipeline's own output.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _quiet_libraries()
    # -v works anywhere on the line (imgpipe run CONFIG -v), not only before the command
    argv = [arg for arg in argv if arg not in ("-v", "--verbose")]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # --help, --version, or a usage error already printed
        return int(exc.code or 0)
    args.verbose = verbose
    func: Callable[[argparse.Namespace], Result] = args.func
    try:
        with runtime.private_tempdir():
            return _emit(func(args), getattr(args, "json", False))
    except (KeyboardInterrupt, runtime.Stopped, Exception) as exc:
        code = exits.exit_code(exc, getattr(args, "stopped", None))
        if code is None:
            raise
        return code


def _entry() -> Any:  # pragma: no cover
    runtime.fewer_collections()          # before the libraries a command imports
    runtime.install_stop_handlers()
    with contextlib.ExitStack() as stack:
        if not _verbose(sys.argv[1:]):
            stack.enter_context(runtime.filtered_native_stderr())
        code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = exits.closed_pipe()
    sys.stderr.flush()
    # TensorFlow, TFT and pyarrow can segfault while the interpreter tears down their
    # native state, which would turn a finished run's exit code into 139. Everything
    # is written and flushed by now, so leave without that teardown.
    os._exit(code)
