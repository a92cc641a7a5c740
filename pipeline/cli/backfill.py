"""`backfill`: one local run per data drop (span), in order, as a schedule would have run
them; it stops at the first run that fails, so no span is skipped silently."""

from __future__ import annotations

import argparse
from typing import Any

from components.errors import ConfigError
from pipeline.cli.common import (DEFAULT_RUNS_DIR, Result, _add_config_args, _add_json_arg,
                                 _note, _stdout_to_stderr, at_schedule_time)


def _bounds(text: str) -> tuple[str, str]:
    first, sep, last = text.partition("..")
    if not sep or not first or not last:
        raise ConfigError(f"--spans {text!r}: give FIRST..LAST, e.g. 3..9 or "
                          "2026-11-01..2026-11-07.")
    return first.strip(), last.strip()


def plan(cfg: Any, text: str) -> list[tuple[Any, list[Any]]]:
    """(span, the window its run reads) for each span from FIRST to LAST that exists:
    the config's `data.spans` rolling window ending at that span, else the span alone."""
    from components.data import spans

    if not spans.has_pattern(cfg.data.source):
        raise ConfigError(f"backfill needs a data.source with a span pattern ({{SPAN}} or "
                          f"{{YYYY}}-{{MM}}-{{DD}}); {cfg.data.source!r} has none.")
    first, last = _bounds(text)
    found = spans.discover(spans.Pattern.parse(cfg.data.source))
    chosen, _ = spans.select(found, {"range": [_value(first), _value(last)]},
                             cfg.data.on_missing)
    rolling = cfg.data.spans.get("rolling") if isinstance(cfg.data.spans, dict) else None
    out = []
    for span in chosen:
        upto = [s for s in found if _order(s) <= _order(span)]
        out.append((span, upto[-rolling:] if rolling else [span]))
    return out


def scheduled_at(cfg: Any, span: Any) -> Any:
    """For a scheduled window (`{scheduled: -Nd}`), the time the schedule that reads
    `span` ran: N days after its date, at midnight UTC; None for other windows."""
    import datetime

    from components.data import ingest_window

    if not ingest_window.is_scheduled(cfg.data) or span.date is None:
        return None
    days = int(cfg.data.spans["scheduled"].strip("-d") or 0)
    day = datetime.date.fromisoformat(span.date) + datetime.timedelta(days=days)
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)


def _value(text: str) -> Any:
    return int(text) if text.isdigit() else text


def _order(span: Any) -> Any:
    return span.date or span.number


def cmd_backfill(args: argparse.Namespace) -> Result:
    from pipeline import config as config_lib
    from pipeline.local.runner import run_pipeline

    cfg = config_lib.load(args.config, args.overrides)
    log = _note(args)
    runs: list[dict[str, Any]] = []
    error = None
    with _stdout_to_stderr(args.json):
        for span, window in plan(cfg, args.spans):
            when = scheduled_at(cfg, span)
            if when is not None:
                # as the schedule ran it: the window its own time names
                log(f"backfill {span.label}: scheduled at {when.isoformat()}")
                one = at_schedule_time(cfg, when, log)
            else:
                values = [_order(s) for s in window]
                log(f"backfill {span.label}: data.spans {values}")
                one = cfg.model_copy(update={"data": cfg.data.model_copy(
                    update={"spans": values})})
            result = run_pipeline(one, args.runs_dir, args.config, log=log)
            push = result.push_outcome() or {}
            did = result.outcome()
            runs.append({"span": span.label, "window": [s.label for s in window],
                         "run_id": result.run_id, "status": result.status,
                         "pushed": push.get("pushed"), "version": push.get("version"),
                         "verdict": did["verdict"], "outcome": did["text"],
                         "accuracy": did["accuracy"], "model": did["model"]})
            if result.error is not None:
                error = result.error
                break

    def text() -> None:
        for run in runs:
            print(f"{run['span']}: run {run['run_id']} {run['outcome']}")
        if error is not None:
            print(f"stopped at {runs[-1]['span']}: later spans were not run")

    if error is not None and not args.json:
        text()            # main() raises the error instead of printing the text
    return Result(data=lambda: {"runs": runs, "stopped": error is not None},
                  text=text, error=error)


def register(sub: Any) -> None:
    backfill = sub.add_parser("backfill", help="one local run per data drop (span), in order")
    _add_config_args(backfill)
    backfill.add_argument("--spans", required=True, metavar="FIRST..LAST",
                          help="the spans to run, e.g. 3..9 or 2026-11-01..2026-11-07")
    backfill.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                          help="where runs, artifacts and metadata.sqlite live (default ./runs)")
    _add_json_arg(backfill, "every run's span, id, status, verdict and pushed version as JSON")
    backfill.set_defaults(func=cmd_backfill)
