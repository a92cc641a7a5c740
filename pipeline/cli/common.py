"""What the command groups share: the Result a handler returns, the common arguments,
where notes go, and the parser class with the CLI's error style."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_RUNS_DIR = "runs"


@dataclass(frozen=True)
class Result:
    """What a command hands back; main() prints it, once, so no handler looks at --json.

    data: the --json document (printed as json.dumps(data, indent=2)), or a function
      that makes it, where building it costs something only --json should pay; None
      where the command has no JSON form of its own (its text then prints in both modes).
    text: the plain output: a str (one print()), a function that prints it (tables,
      Keras' summary, a line on stderr), or None.
    code: the exit code.
    error: raised once the --json document is printed (a failed run still reports its
      result); without --json it is raised instead of printing the text.
    """

    data: Any = None
    text: str | Callable[[], Any] | None = None
    code: int = 0
    error: BaseException | None = None


def _add_json_arg(parser: argparse.ArgumentParser,
                  text: str = "the result as JSON on stdout") -> None:
    parser.add_argument("--json", action="store_true", help=text)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline config YAML, e.g. configs/fonts.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")


def _add_dag_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dag", default="", metavar="MODULE:ATTRIBUTE",
                        help="run your own steps: a tuple of dag.node(...) in an importable "
                             "module, e.g. mysteps:STEPS (default: the built-in DAG)")


def _note(args: argparse.Namespace) -> Callable[[str], None]:
    """Where a command's progress and notes go: stdout, or stderr under --json (stdout
    then holds only the JSON result)."""
    # Bound now, and written without print(): a kfp-local run redirects sys.stdout and
    # kfp.local replaces print() while it streams a task's output.
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout

    def note(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return note


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """Under --json, whatever the steps print (epoch lines, Beam's and TensorFlow's
    output, also from child processes) goes to stderr: stdout holds only the result."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error style: one line, exit 2, and where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"imgpipe: error: {self.prog}: {message} (see {self.prog} --help)\n")
