"""`runs list` and `runs show`: earlier runs, read from the runs folder's metadata store."""

from __future__ import annotations

import argparse
import os
from typing import Any

from components import runtime
from components.errors import ImgpipeError
from pipeline import results
from pipeline.cli.common import DEFAULT_RUNS_DIR, Result, _add_json_arg, number, positive_int


def _store(runs_dir: str):
    from pipeline.metadata import METADATA_FILE, MetadataStore

    path = os.path.join(runs_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise ImgpipeError(f"no runs under {runs_dir!r} (no {METADATA_FILE}); run a pipeline "
                           "first (imgpipe run CONFIG) or pass --runs-dir.")
    return MetadataStore(path, read_only=True)


def cmd_runs_list(args: argparse.Namespace) -> Result:
    store = _store(args.runs_dir)
    runs = store.list_runs(args.pipeline, args.limit)
    executions = {run["id"]: store.executions(run["id"]) for run in runs}
    for run in runs:                  # the data drops (spans) the run's ingest read
        run["spans"] = next(((e.summary or {}).get("spans") for e in executions[run["id"]]
                             if e.step == "ingest" and (e.summary or {}).get("spans")), None)
        run.update(_did(run, executions[run["id"]]))

    def text() -> None:
        verdicts = {run["id"]: _cut(run["outcome"], VERDICT_WIDTH) for run in runs}
        verdict_width = max([len("VERDICT"), *map(len, verdicts.values())])
        # STEPS last: its width grows with the DAG
        print(f"{'RUN':<24} {'PIPELINE':<16} {'ENGINE':<9} {'STATUS':<10} {'STARTED':<19} "
              f"{'DURATION':>8} {'ACCURACY':>8} {'PUSHED':<16} {'VERDICT':<{verdict_width}} "
              f"{'SPANS':<23} STEPS")
        marks = {"cached": "*", "skipped": "-", "failed": "!"}
        for run in runs:
            steps = " ".join(f"{e.step}{marks.get(e.status, '')}" for e in executions[run["id"]])
            window = run["spans"]
            spans = "-" if not window else window[0] if len(window) == 1 else \
                f"{window[0]}..{window[-1]} ({len(window)})"
            print(f"{run['id']:<24} {run['pipeline']:<16} {run['engine']:<9} "
                  f"{run['status']:<10} {run['started'][:19]:<19} "
                  f"{results.duration(run['seconds']):>8} {number(run['accuracy']):>8} "
                  f"{run['model'] or '-':<16} {verdicts[run['id']]:<{verdict_width}} {spans:<23} "
                  f"{steps}")
        print("(* = reused from cache, - = not run: its gate closed, ! = failed)")

    return Result(data=runs, text=text)


VERDICT_WIDTH = 64      # a longer one (an error) is cut; `runs show` and --json have it all


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _did(run: dict[str, Any], executions: list[Any]) -> dict[str, Any]:
    """What a recorded run did (`results.outcome`) and how long it took (so far)."""
    did = results.outcome(run["status"], executions, run.get("error"))
    seconds = None                 # a run that died has no end on record
    if run.get("started") and (run.get("ended") or run["status"] == results.RUNNING):
        ended = runtime.seconds_since(run["ended"]) if run.get("ended") else 0.0
        seconds = runtime.seconds_since(run["started"]) - ended
    return {"verdict": did["verdict"], "outcome": did["text"], "accuracy": did["accuracy"],
            "model": did["model"], "seconds": None if seconds is None else round(seconds, 3)}


def cmd_runs_show(args: argparse.Namespace) -> Result:
    from pipeline.local.runner import describe_run

    from types import SimpleNamespace

    info = describe_run(_store(args.runs_dir), args.run_id)
    info.update(_did(info, [SimpleNamespace(**step) for step in info["steps"]]))

    def text() -> None:
        print(f"run {info['id']}  pipeline {info['pipeline']}  engine {info['engine']}  "
              f"status {info['status']}")
        print(f"  {info['outcome']}")
        print(f"  config: {info['config_path'] or '(defaults)'}  started {info['started']}  "
              f"ended {info['ended']}")
        if info.get("error"):
            print(f"  error: {info['error']}")
        for step in info["steps"]:
            print(f"  [{step['step']}] {step['status']}: {step['decision']}")
            for name, uri in step["inputs"].items():
                print(f"      in  {name}: {uri}")
            for name, out in step["outputs"].items():
                print(f"      out {name} ({out['type']}): {out['uri']}")
            for line in (step["summary"] or {}).get("lines", []):
                print(f"      {line}")
            if step["error"] and step["status"] == "failed":
                print(f"      error: {step['error'].strip().splitlines()[-1]}")
        report = os.path.join(args.runs_dir, info["id"], "report.html")
        if os.path.isfile(report):
            print(f"  report: {report}")

    return Result(data=info, text=text)


def register(sub: Any) -> None:
    runs = sub.add_parser("runs", help="inspect earlier runs").add_subparsers(
        dest="runs_command", required=True)
    runs_list = runs.add_parser("list", help="runs, newest first")
    runs_list.add_argument("--pipeline", help="only this pipeline name")
    runs_list.add_argument("--limit", type=positive_int, default=20,
                           help="at most this many runs (default 20)")
    runs_show = runs.add_parser("show", help="one run: steps, cache decisions, artifacts")
    runs_show.add_argument("run_id", help="run id (or a unique prefix)")
    for p, fn in ((runs_list, cmd_runs_list), (runs_show, cmd_runs_show)):
        p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                       help="the runs folder (default ./runs)")
        _add_json_arg(p)
        p.set_defaults(func=fn)
