"""`runs list` and `runs show`: earlier runs, read from the runs folder's metadata store."""

from __future__ import annotations

import argparse
import os
from typing import Any

from components.errors import ImgpipeError
from pipeline.cli.common import DEFAULT_RUNS_DIR, Result, _add_json_arg, positive_int


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

    def text() -> None:
        # STEPS last: its width grows with the DAG
        print(f"{'RUN':<24} {'PIPELINE':<16} {'ENGINE':<9} {'STATUS':<10} {'STARTED':<19} "
              f"{'SPANS':<23} STEPS")
        marks = {"cached": "*", "skipped": "-", "failed": "!"}
        for run in runs:
            steps = " ".join(f"{e.step}{marks.get(e.status, '')}" for e in executions[run["id"]])
            window = run["spans"]
            spans = "-" if not window else window[0] if len(window) == 1 else \
                f"{window[0]}..{window[-1]} ({len(window)})"
            print(f"{run['id']:<24} {run['pipeline']:<16} {run['engine']:<9} "
                  f"{run['status']:<10} {run['started'][:19]:<19} {spans:<23} {steps}")
        print("(* = reused from cache, - = not run: its gate closed, ! = failed)")

    return Result(data=runs, text=text)


def cmd_runs_show(args: argparse.Namespace) -> Result:
    from pipeline.local import describe_run

    info = describe_run(_store(args.runs_dir), args.run_id)

    def text() -> None:
        print(f"run {info['id']}  pipeline {info['pipeline']}  engine {info['engine']}  "
              f"status {info['status']}")
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
