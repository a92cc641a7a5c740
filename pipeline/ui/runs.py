"""The Runs pages: the list (a page of the runs folder's metadata store at a time,
filtered by pipeline and status) and one run (its steps, its lineage graph, its
report). What a run did is `results.outcome`, as `imgpipe runs list` says it."""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

from pipeline import results
from pipeline.metadata import METADATA_FILE, Execution, MetadataStore
from pipeline.ui import svg
from pipeline.ui.layout import Raw, esc, kv, link, options, pager, table, url, verdict

PER_PAGE = 50
STATUSES = ("succeeded", "failed", "running")
REPORT = "report.html"         # the run report pipeline/report/html.py writes in RUN_DIR
GOOD = {results.PUSHED, results.ALREADY_PUSHED}


def store(runs_dir: str) -> MetadataStore:
    return MetadataStore(os.path.join(runs_dir, METADATA_FILE), read_only=True)


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return (_dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(start)
                ).total_seconds()
    except ValueError:
        return None


def _duration(run: dict[str, Any]) -> float | None:
    if run.get("ended"):
        return _seconds(run.get("started"), run["ended"])
    if run["status"] == results.RUNNING and run.get("started"):
        return _seconds(run["started"], _dt.datetime.now(_dt.timezone.utc).isoformat())
    return None


def spans_of(executions: list[Execution]) -> list[str] | None:
    """The data drops (spans) the run's ingest read, from its recorded summary."""
    return next(((e.summary or {}).get("spans") for e in executions
                 if (e.summary or {}).get("spans")), None)


def _spans_text(window: list[str] | None) -> str:
    if not window:
        return "-"
    return window[0] if len(window) == 1 else f"{window[0]}..{window[-1]} ({len(window)})"


def runs_list(runs_dir: str, pipeline: str, status: str, page: int) -> tuple[str, str]:
    """(title, body) of the runs list."""
    metadata = store(runs_dir)
    page = max(1, page)
    runs, total = metadata.page_runs(pipeline or None, status or None,
                                     (page - 1) * PER_PAGE, PER_PAGE)
    executions = metadata.executions_of([run["id"] for run in runs])
    rows = []
    for run in runs:
        steps = executions[run["id"]]
        did = results.outcome(run["status"], steps, run.get("error"))
        good = True if did["verdict"] in GOOD else None if did["verdict"] in (
            results.STOPPED, results.RUNNING, results.NOTHING_TO_PUSH) else False
        rows.append([link(f"/runs/{run['id']}", run["id"]), run["pipeline"], run["engine"],
                     verdict(run["status"], {"succeeded": True, "failed": False,
                                             "died": False}.get(run["status"])),
                     (run["started"] or "")[:19].replace("T", " "),
                     results.duration(_duration(run)), _spans_text(spans_of(steps)),
                     did["accuracy"],
                     link(f"/models/{did['model'].split(':')[0]}/{did['model'].split(':')[1]}",
                          did["model"]) if did["model"] else "-",
                     verdict(did["text"] if len(did["text"]) < 90 else did["text"][:87] + "...",
                             good)])
    form = (f"<form method='get' action='/runs'>pipeline <select name='pipeline'>"
            f"{options(metadata.pipelines(), pipeline, 'all')}</select> status "
            f"<select name='status'>{options(STATUSES, status, 'all')}</select> "
            "<button type='submit'>filter</button></form>")
    body = form + pager("/runs", {"pipeline": pipeline, "status": status}, page, PER_PAGE,
                        total)
    body += table(["run", "pipeline", "engine", "status", "started (UTC)", "duration",
                   "spans", "accuracy", "pushed", "verdict"], rows, css="runs") if rows else \
        "<p class='muted'>No runs match.</p>"
    return f"Runs in {runs_dir}", body


def run_graph(metadata: MetadataStore, steps: list[Execution]) -> svg.Graph:
    """The run's executions and the artifacts they read and wrote."""
    graph = svg.Graph()
    for execution in steps:
        key = graph.execution(f"execution:{execution.id}", execution.step, execution.status,
                              f"#step-{execution.step}")
        for art in metadata.artifacts_of(execution.id):
            node = graph.artifact(art["uri"], f"{art['name']}: {art['type']}",
                                  f"{art['type']} {art['uri']}")
            graph.edge(*((node, key) if art["event"] == "input" else (key, node)))
    return graph


def run_page(runs_dir: str, run_id: str) -> tuple[str, str] | None:
    """(title, body) of one run; None when the store has no such run."""
    metadata = store(runs_dir)
    run = metadata.get_run(run_id)
    if run is None:
        return None
    steps = metadata.executions(run["id"])
    did = results.outcome(run["status"], steps, run.get("error"))
    facts = [("pipeline", run["pipeline"]), ("engine", run["engine"]),
             ("status", run["status"]), ("verdict", did["text"]),
             ("started", run["started"]), ("ended", run.get("ended") or "-"),
             ("duration", results.duration(_duration(run))),
             ("spans", _spans_text(spans_of(steps))),
             ("config", run.get("config_path") or "(defaults)")]
    if did["model"]:
        name, number = did["model"].split(":")
        facts.append(("pushed", link(f"/models/{name}/{number}", did["model"])))
    if run.get("error"):
        facts.append(("error", results.one_line(run["error"])))
    rows = []
    for e in steps:
        seconds = _seconds(e.started, e.ended)
        why = e.decision + (f" (reused execution {e.cached_from})" if e.cached_from else "")
        outputs = [f"{a['name']}: {a['type']}" for a in metadata.artifacts_of(e.id, "output")]
        lines = (e.summary or {}).get("lines") or []
        rows.append([Raw(f"<a id='step-{esc(e.step)}'></a>{esc(e.step)}"),
                     verdict(e.status, {"succeeded": True, "cached": True,
                                        "failed": False}.get(e.status)),
                     results.duration(seconds) if seconds is not None else "-",
                     "cached" if e.status == "cached" else "ran" if e.status in (
                         "succeeded", "failed") else e.status,
                     Raw(esc(why) + "".join(f"<br><span class='muted'>{esc(line)}</span>"
                                            for line in lines[:6])
                         + (f"<br><span class='bad'>{esc(results.one_line(e.error))}</span>"
                            if e.error and e.status == "failed" else "")),
                     ", ".join(outputs) or "-"])
    body = kv(facts)
    body += "<h2>Steps</h2>" + table(["step", "status", "time", "cached or ran", "why",
                                      "outputs"], rows)
    body += ("<h2 id='lineage'>Lineage</h2><p class='muted'>Executions (boxes, coloured by "
             "status) and the artifacts they read and wrote (rounded); hover for the URI.</p>"
             + svg.lineage(run_graph(metadata, steps), f"lineage of run {run['id']}"))
    report = report_path(runs_dir, run["id"])
    body += "<h2>Report</h2>"
    if report:
        href = f"/runs/{run['id']}/report"
        body += (f"<p>{link(href, 'open the report on its own')}</p>"
                 f"<iframe class='report' title='run report' src='{esc(href)}'></iframe>")
    else:
        body += "<p class='muted'>This run wrote no report.</p>"
    return f"Run {run['id']}", body


def report_path(runs_dir: str, run_id: str) -> str | None:
    """RUNS_DIR/RUN_ID/report.html when the run wrote one (a run id from the store only)."""
    if os.path.basename(run_id) != run_id or run_id in ("", ".", ".."):
        return None
    path = os.path.join(runs_dir, run_id, REPORT)
    return path if os.path.isfile(path) else None


def pipelines_link(name: str) -> str:
    return url("/runs", pipeline=name)
