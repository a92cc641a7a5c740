"""What the command groups share: the Result a handler returns, the common arguments,
where notes go, the checks on an -o file, and the parser class with the CLI's error
style."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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


def _add_registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", help="registry root (default: the --config's push "
                                           "destination, else ./serving)")
    parser.add_argument("--config", help="take the registry from this config's "
                                         "push.destination")


def _registry(args: argparse.Namespace):
    """The registry `--registry`/`--config` name; a ConfigError when nothing is there."""
    from components.io import fileio
    from components.errors import ConfigError
    from components.registry.paths import not_a_folder
    from components.registry.versions import Registry
    from pipeline.registry_views import registry_root

    root = registry_root(args.registry, getattr(args, "config", None))
    problem = not_a_folder(root)
    if problem:
        raise ConfigError(f"the registry {root!r} {problem}: name the registry folder with "
                          "--registry DIR or --config CONFIG (its push.destination).")
    if not fileio.exists(root):
        raise ConfigError(f"no model registry at {root} (nothing was pushed there); name it "
                          "with --registry DIR or --config CONFIG (its push.destination).")
    return Registry(root)


def _sync_vertex(registry, name: str, version: int | None, alias: str, removed: bool,
                 entry: dict[str, Any]) -> None:
    """Moves the alias on Vertex AI Model Registry too, when the version went there."""
    from components.integrations import vertex
    from components.errors import ImgpipeError

    if version is None:
        return
    try:
        model = vertex.sync_alias(registry.get(name, version).path, alias, removed)
        # push.vertex.endpoint: the endpoint serves what the ledger now says
        served = vertex.sync_endpoint(registry, name, alias) if model else None
    except ImgpipeError:
        raise
    except Exception as exc:
        # a rollback again would move the alias further back: retry through sync-vertex
        retry = ("run the same command again" if entry.get("action") != "rollback" else
                 f"run `imgpipe models sync-vertex {name}:{version} --config CONFIG`")
        raise ImgpipeError(
            f"{name}@{alias} moved in the registry, but not on Vertex AI ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); {retry} to retry (the "
            "registry side is already done).") from exc
    if served:
        entry["endpoint"] = served
        if served.get("warning"):
            print(f"imgpipe: warning: {served['warning']}", file=sys.stderr)
    if model:
        entry["vertex_model"] = model
    elif not removed:
        warning = _missing_from_vertex(registry, name, version, alias)
        if warning:
            entry.update(vertex_missing=True, warning=warning)
            print(f"imgpipe: warning: {warning}", file=sys.stderr)


def _missing_from_vertex(registry, name: str, version: int, alias: str) -> str | None:
    """Why the alias moved only here, when the model is kept in Vertex AI (another of its
    versions has a Vertex record) but this version is not there (its upload failed)."""
    from components.integrations import vertex

    if not any(vertex.read_record(v.path) for v in registry.versions(name)
               if v.version != version):
        return None            # the model is not kept in Vertex at all
    return (f"{name}:{version} is not in Vertex AI Model Registry (no {vertex.RECORD} in "
            f"{registry.get(name, version).path}; its upload failed), so {name}@{alias} moved "
            f"only in imgpipe's registry; `imgpipe models sync-vertex {name}:{version} "
            "--config CONFIG` uploads it and moves its aliases there too.")


# Aliases a newcomer may use without --create; any other name must already exist for
# the model, so that a typo ("prodution") does not quietly become a new alias.
COMMON_ALIASES = ("production", "staging", "canary", "candidate")


# --- the audited alias moves: `models promote/rollback`, `models canary` and `imgpipe ui`
# call these same functions, so a move writes the same ledger entry and Vertex sync
# whichever front end asked for it.


def promote(registry, ref: str, alias: str, reason: str = "", force: bool = False,
            create: bool = False, canary: int | None = None) -> dict[str, Any]:
    """Points `alias` at the version `ref` names (`imgpipe models promote`): the ledger
    entry, then the alias on Vertex AI when the model is kept there. Returns the entry."""
    from components.errors import ConfigError

    name = registry.resolve(ref).name
    existing = registry.aliases(name)
    if alias not in existing and alias not in COMMON_ALIASES and not create:
        raise ConfigError(f"alias {alias!r} does not exist yet (existing: "
                          f"{', '.join(sorted(existing)) or 'none'}); check the spelling, or "
                          "pass --create to add it.")
    _check_vertex_alias(registry, name, alias)
    if canary is not None:            # refused before anything moves
        from components.integrations import vertex

        vertex.check_canary(registry, registry.resolve(ref), alias, canary)
    entry = registry.set_alias(ref, alias, reason or "", force, traffic=canary)
    _sync_vertex(registry, name, entry["to"], entry["alias"], False, entry)
    return entry


def rollback(registry, name: str, alias: str, reason: str = "") -> dict[str, Any]:
    """Moves `alias` back to its previous holder (`imgpipe models rollback`), here and on
    Vertex AI. Returns the ledger entry."""
    entry = registry.rollback(name, alias, reason or "")
    _sync_vertex(registry, name, entry["to"], entry["alias"], False, entry)
    return entry


CANARY_PROMOTE, CANARY_REVERT = "canary-promote", "canary-revert"


def end_canary(registry, name: str, candidate_alias: str, baseline_alias: str,
               promote_candidate: bool, reason: str,
               holding: tuple[int, int]) -> dict[str, Any]:
    """Ends a canary (`imgpipe models canary` on a decision): promote moves the baseline
    alias to the candidate's version (audit action canary-promote), revert moves the
    candidate alias back to the baseline's version (canary-revert); then Vertex AI
    follows, as a promote's does. `holding`: (candidate, baseline) versions the decision
    was made on; aliases that moved since are refused, never overwritten blindly."""
    from components.errors import ConfigError

    candidate, baseline = holding
    now_holding = registry.aliases(name)
    if (now_holding.get(candidate_alias), now_holding.get(baseline_alias)) != holding:
        raise ConfigError(f"{name}'s aliases moved while the canary was decided "
                          f"({candidate_alias} -> {now_holding.get(candidate_alias)}, "
                          f"{baseline_alias} -> {now_holding.get(baseline_alias)}); run it "
                          "again.")
    if promote_candidate:
        entry = registry.set_alias(f"{name}:{candidate}", baseline_alias, reason=reason,
                                   action=CANARY_PROMOTE)
    else:
        entry = registry.set_alias(f"{name}:{baseline}", candidate_alias, reason=reason,
                                   action=CANARY_REVERT)
    _sync_vertex(registry, name, entry["to"], entry["alias"], False, entry)
    return entry


def _check_vertex_alias(registry, name: str, alias: str) -> None:
    """A model kept in Vertex AI Model Registry too (a version of it has a Vertex record)
    takes only aliases Vertex accepts: refused before the registry moves, instead of a
    promotion that stands here and fails there."""
    from components.io import fileio
    from components.errors import ConfigError
    from components.integrations import vertex
    from components.config.push import vertex_alias_problem

    problem = vertex_alias_problem(alias)
    if problem and any(fileio.exists(fileio.join(v.path, vertex.RECORD))
                       for v in registry.versions(name)):
        raise ConfigError(f"alias {alias!r} cannot move on Vertex AI, where {name}'s versions "
                          f"are kept too: {problem}.")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline config YAML, e.g. configs/fonts.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable); a mapping given for a "
                             "section merges into it: 'train.optimizer={name: sgd}' keeps "
                             "the file's learning rate")


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


def positive_number(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def schedule_time(text: str) -> Any:
    """argparse type: an ISO 8601 time as a schedule passes it (KFP's
    pipeline_job_schedule_time_utc, e.g. 2026-12-02T03:00:00Z); without a zone, UTC."""
    import datetime

    try:
        value = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. "
                                         "2026-12-02T03:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def at_schedule_time(cfg: Any, when: Any, log: Callable[[str], None]) -> Any:
    """The config a run scheduled at `when` reads: a scheduled window (`data.spans:
    {scheduled: -1d}`) pinned to the spans it names then (what KFP's resolve task does
    with the schedule's time); a span that is absent stops the run here."""
    from components.data import ingest_window

    data = ingest_window.at_schedule_time(cfg.data, when)
    if data is cfg.data:
        log(f"schedule time {when.isoformat()}: data.spans {cfg.data.spans!r} does not depend "
            "on it")
        return cfg
    log(f"schedule time {when.isoformat()}: data.spans {cfg.data.spans} -> {data.spans}")
    return cfg.model_copy(update={"data": data})


def share(text: str) -> float:
    """argparse type: a number between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def table(rows: list[tuple[str, ...]]) -> None:
    """Prints rows (the first a header) in columns as wide as their widest cell: the
    first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join([row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]).rstrip())


def number(value: Any, places: int = 3) -> str:
    """A table cell: a float with `places` decimals, '-' for None."""
    if value is None:
        return "-"
    return f"{value:.{places}f}" if isinstance(value, float) else str(value)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error style: one line, exit 2, and where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"imgpipe: error: {self.prog}: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class OutputKind:
    """What a command writes with -o: its name in messages, the file suffixes that say
    so, and how to recognise an earlier output of the same kind (which -o may replace
    without --force) from the start of an existing file."""

    name: str
    suffixes: tuple[str, ...]
    same: Callable[[str], bool]


def _earlier_predictions(head: str) -> bool:
    from components.inference.predict import looks_like_rows

    return looks_like_rows(head)


# What `predict -o` writes: CSV, or JSONL by the suffix (components.inference.predict.write_rows).
PREDICTIONS = OutputKind("predictions (CSV or JSONL)", (".csv", ".jsonl"),
                         _earlier_predictions)
# What a command that records no run leaves when stopped: its output is written at the
# end, in one rename.
NOTHING_WRITTEN = "stopped; nothing was written."


def _add_force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="let -o replace an existing file that is not an earlier output "
                             "of this command (never one of its inputs)")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)          # hard links
    except OSError:
        return False


def _head(path: str, size: int = 4096) -> str | None:
    """The start of a file as text; None when it is not UTF-8 text (an image)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(size)
    except OSError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the end of the sample is still text
        return data[:exc.start].decode("utf-8") if exc.start > size - 4 else None


def check_output(path: str, kind: OutputKind, inputs: Iterable[str] = (),
                 force: bool = False, what: str = "-o") -> str:
    """Refuses, before any work, an output that would lose something or could not be
    written: one of the command's `inputs` (also through a link), a suffix that is not
    `kind`'s, an existing file that is not an earlier output of `kind` (unless `force`),
    a folder, or a place nothing can be created in. Returns `path`."""
    from components.io import fileio
    from components.errors import ConfigError

    remote = fileio.is_remote(path)
    for item in inputs:
        if item and (path == item if remote or fileio.is_remote(item)
                     else os.path.lexists(path) and _same_file(path, item)):
            raise ConfigError(f"{what} {path} is one of this command's inputs ({item}); writing "
                              "there would replace it. Give another file name, e.g. "
                              f"{_example(path, kind)}.")
    if not remote and os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a folder; give a file name inside it, e.g. "
                          f"{os.path.join(path, 'out' + kind.suffixes[0])}.")
    if not path.lower().endswith(kind.suffixes):
        raise ConfigError(f"{what} {path}: this command writes {kind.name}, so the file name "
                          f"must end in {' or '.join(kind.suffixes)}; e.g. "
                          f"{_example(path, kind)}.")
    if remote:
        return path
    if os.path.isfile(path) and os.path.getsize(path) and not force:
        head = _head(path)
        if head is None or not kind.same(head):
            raise ConfigError(f"{what} {path} already exists and does not hold {kind.name} "
                              "from an earlier run of this command; choose another name, or "
                              "pass --force to replace it.")
    fileio.prepare_output(path, what)            # the parent created, writable
    parent = os.path.dirname(os.path.abspath(path))
    try:                                         # root passes os.access anywhere (/proc)
        handle, probe = tempfile.mkstemp(prefix=".imgpipe-probe-", dir=parent)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create a file in {parent} "
                          f"({exc.strerror}); choose another folder.") from exc
    return path


def _example(path: str, kind: OutputKind) -> str:
    stem = os.path.splitext(path)[0]
    return stem + ("-out" if path.lower().endswith(kind.suffixes) else "") + kind.suffixes[0]
