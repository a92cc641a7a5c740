"""The Serving pages: a served model's aliases, its canary (`pipeline.serve.canary`'s
numbers and decision on the request log, and the same numbers per time bucket) and
`imgpipe monitor`'s checks (`pipeline.serve.monitoring.monitor`) per time bucket
against their thresholds. Only the batch files that can hold the chosen window's
entries are read (days and files picked by name as `request_log.read` does, and a file
whose entries all precede the window is passed over), never the whole log; a batch file
is written once and never changed, so its parsed entries are kept (`LogCache`, keyed by
path, size and modification time, at most MAX_CACHED entries in all) and the next view
reads only the files that are new."""

from __future__ import annotations

import bisect
import datetime as _dt
import heapq
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from components.errors import ImgpipeError
from components.registry.versions import Registry
from components.io import fileio
from pipeline.serve import canary, monitoring, request_log
from pipeline.ui import svg
from pipeline.ui.layout import esc, link, options, table, tags, verdict

# window -> (its length, the number of points its charts have)
WINDOWS = {"1h": (_dt.timedelta(hours=1), 12), "6h": (_dt.timedelta(hours=6), 12),
           "24h": (_dt.timedelta(hours=24), 12), "7d": (_dt.timedelta(days=7), 14)}
DEFAULT_WINDOW = "24h"
# per time bucket, the canary's numbers whatever the traffic (its decision is made on
# the whole window with the command's own rules)
BUCKET_RULES = canary.CanaryRules(min_requests=1, min_images=1)


def serving_index(registry: Registry) -> tuple[str, str]:
    rows = []
    for name in registry.models():
        try:
            aliases = registry.aliases(name)
        except ImgpipeError as exc:
            rows.append([name, verdict(str(exc), False), "-"])
            continue
        logged = request_log.folder(registry.root, name)
        rows.append([link(f"/serving/{name}", name),
                     tags(f"{a} → {v}" for a, v in sorted(aliases.items())),
                     "yes" if _exists(logged) else "none yet"])
    body = ("<p class='muted'>What <code>imgpipe serve</code> logged for each model: its "
            "canary and <code>imgpipe monitor</code>'s checks over time.</p>")
    body += table(["model", "aliases", "request log"], rows) if rows else \
        "<p class='muted'>Nothing pushed to this registry yet.</p>"
    return "Serving", body


def _exists(path: str) -> bool:
    from components.io import fileio

    try:
        return fileio.isdir(path)
    except OSError:
        return False


# --- the request log, a batch file at a time ----------------------------------------------

MAX_CACHED = 400_000            # entries kept in all (~0.5 KB each); the oldest file goes first


@dataclass
class _Batch:
    """One batch file's valid entries, oldest first, with their times (epoch seconds)."""

    entries: list[dict[str, Any]]
    times: list[float]
    damaged: int
    first_damage: str | None


def _signatures(folder: str, paths: list[str]) -> dict[str, str | None]:
    """path -> what changes when the file is rewritten: size, times and inode locally;
    on gs:// the object's generation and size (one listing of the day's folder); None
    (not cached) elsewhere."""
    if folder.startswith("gs://"):
        return fileio.identities(paths)
    return {path: fileio.stat_signature(path) for path in paths}


def _parse(path: str, data: bytes) -> _Batch:
    """A batch file's lines as `request_log.read` takes them: a torn or damaged line
    (one `problem` finds fault with) skipped and counted."""
    found: list[tuple[float, dict[str, Any]]] = []
    damaged, first = 0, None
    for number, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            why = request_log.problem(entry)
        except (ValueError, RecursionError):
            entry, why = None, "not JSON (a torn line?)"
        if why:
            damaged += 1
            first = first or f"{path} line {number}: {why}"
            continue
        found.append((request_log.parse_time(entry["time"]).timestamp(), entry))
    found.sort(key=lambda item: item[0])
    return _Batch([e for _, e in found], [t for t, _ in found], damaged, first)


class LogCache:
    """The request log's batch files, parsed once: path -> (signature, entries). A file
    is written whole and never changed (`RequestLog` writes each batch atomically under
    a new name), so a path whose size and modification time are unchanged needs no
    second read; one that changed is read again."""

    def __init__(self, max_entries: int = MAX_CACHED):
        self.max_entries = max_entries
        self.held = 0
        self.reads = 0                  # files read from the store (tests, the bench)
        self._files: OrderedDict[str, tuple[str, _Batch]] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, path: str, signature: str | None) -> _Batch | None:
        with self._lock:
            kept = self._files.get(path)
            if kept and signature is not None and kept[0] == signature:
                self._files.move_to_end(path)
                return kept[1]
        return None

    def _put(self, path: str, signature: str | None, batch: _Batch) -> None:
        if signature is None or len(batch.entries) > self.max_entries:
            return
        with self._lock:
            old = self._files.pop(path, None)
            self.held -= len(old[1].entries) if old else 0
            self._files[path] = (signature, batch)
            self.held += len(batch.entries)
            while self.held > self.max_entries:
                _, (_, dropped) = self._files.popitem(last=False)
                self.held -= len(dropped.entries)

    def read(self, root: str, name: str, since: _dt.datetime,
             until: _dt.datetime) -> tuple[request_log.Entries, list[float]]:
        """The entries of model `name` with since <= time <= until, oldest first (what
        `request_log.read` returns: the same days, files, damage and skipped paths),
        and their times in epoch seconds."""
        out = request_log.Entries()
        base = request_log.folder(root, name)
        low, high = since.timestamp(), until.timestamp()
        parts: list[list[tuple[float, dict[str, Any]]]] = []
        for _, paths in request_log.batch_files(root, name, since, until, out):
            signatures = _signatures(base, paths) if paths else {}
            for path in paths:
                batch = self._get(path, signatures.get(path))
                if batch is None:
                    try:
                        data = fileio.read_bytes(path)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        out.skipped.append(f"{path} ({request_log.unreadable(exc)})")
                        continue
                    self.reads += 1
                    batch = _parse(path, data)
                    self._put(path, signatures.get(path), batch)
                out.files += 1
                out.damaged += batch.damaged
                out.first_damage = out.first_damage or batch.first_damage
                if not batch.times or batch.times[-1] < low or batch.times[0] > high:
                    continue
                start = bisect.bisect_left(batch.times, low)
                end = bisect.bisect_right(batch.times, high)
                parts.append(list(zip(batch.times[start:end], batch.entries[start:end])))
        merged = list(heapq.merge(*parts, key=lambda item: item[0]))
        out.extend(entry for _, entry in merged)
        return out, [when for when, _ in merged]


def _buckets(entries: list[dict[str, Any]], times: list[float], since: _dt.datetime,
             length: _dt.timedelta, count: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """The window's entries (oldest first, `times` theirs) in `count` equal buckets, each
    labelled by its end; the window's last instant counts in the last bucket."""
    step = length / count
    out = []
    for i in range(count):
        start = bisect.bisect_left(times, (since + step * i).timestamp())
        end = (bisect.bisect_left(times, (since + step * (i + 1)).timestamp())
               if i < count - 1 else len(times))
        out.append(((since + step * (i + 1)).strftime("%d %H:%M"), entries[start:end]))
    return out


def serving_page(registry: Registry, name: str, window: str, candidate_alias: str,
                 baseline_alias: str, watched: str, csrf: str,
                 now: _dt.datetime | None = None, logs: LogCache | None = None
                 ) -> tuple[str, str]:
    window = window if window in WINDOWS else DEFAULT_WINDOW
    length, count = WINDOWS[window]
    now = now or _dt.datetime.now(_dt.timezone.utc)
    since = now - length
    aliases = registry.aliases(name)
    entries, times = (logs or LogCache()).read(registry.root, name, since, now)
    buckets = _buckets(entries, times, since, length, count)
    alias_names = sorted(aliases)
    form = (f"<form method='get' action='/serving/{esc(name)}'>window <select name='window'>"
            f"{options(WINDOWS, window)}</select> candidate <select name='candidate'>"
            f"{options(alias_names, candidate_alias)}</select> baseline <select name='baseline'>"
            f"{options(alias_names, baseline_alias)}</select> monitor <select name='alias'>"
            f"{options(alias_names, watched)}</select> <button type='submit'>show</button></form>")
    body = form + table(["alias", "version"], [
        [a, link(f"/models/{name}/{v}", f"{name}:{v}")] for a, v in sorted(aliases.items())])
    body += (f"<p class='muted'>Request log: {entries.files:,} file(s) read for "
             f"{monitoring.iso(since)} to {monitoring.iso(now)}: {len(entries):,} request(s)"
             + "".join(f"; {esc(line)}" for line in monitoring.damage_lines(entries)) + "</p>")
    body += "<h2 id='canary'>Canary</h2>" + _canary(registry, name, aliases, entries, buckets,
                                                    candidate_alias, baseline_alias, csrf)
    body += "<h2 id='monitor'>Monitoring</h2>" + _monitor(registry, name, aliases, entries,
                                                          buckets, watched)
    return f"Serving {name}", body


def _canary(registry: Registry, name: str, aliases: dict[str, int], entries: Any,
            buckets: list[tuple[str, list[dict[str, Any]]]], candidate_alias: str,
            baseline_alias: str, csrf: str) -> str:
    if candidate_alias not in aliases or baseline_alias not in aliases:
        return (f"<p class='muted'>No canary: {esc(name)} needs both aliases "
                f"{esc(candidate_alias)} and {esc(baseline_alias)}.</p>")
    candidate, baseline = aliases[candidate_alias], aliases[baseline_alias]
    if candidate == baseline:
        return (f"<p class='muted'>No canary running: {esc(name)}@{esc(candidate_alias)} and "
                f"@{esc(baseline_alias)} both point at version {candidate}.</p>")
    card = registry.get(name, candidate).card
    expected = canary.reference(card, name, baseline)
    result = canary.canary(list(entries), candidate, baseline, canary.CanaryRules(), expected)
    arms = result["arms"]
    out = (f"<p>candidate <b>{esc(candidate_alias)}</b> = version {candidate}, baseline "
           f"<b>{esc(baseline_alias)}</b> = version {baseline}; decision "
           f"{verdict(result['decision'], {canary.PROMOTE: True, canary.REVERT: False}.get(result['decision']))}"
           f": {esc(result['reason'])}</p>")
    out += table(["arm", "version", "requests", "errors", "error rate", "p50 ms", "p99 ms",
                  "sampled images", "mean confidence"], [
        [arm, v, arms[arm]["requests"], arms[arm]["errors"], arms[arm]["error_rate"],
         arms[arm]["p50_ms"], arms[arm]["p99_ms"], arms[arm]["sampled_images"],
         arms[arm]["mean_confidence"]] for arm, v in (("candidate", candidate),
                                                     ("baseline", baseline))], css="arms")
    if result["agreement"] is not None:
        out += (f"<p>agreement {result['agreement']:.3f} on {result['pairs']} image(s) answered "
                "by both versions</p>")
    if result["rules"]:
        out += table(["rule", "value", "limit", "verdict"], [
            [r["rule"], r["value"], r["limit"], verdict("ok" if r["passed"] else "FAIL",
                                                        r["passed"])] for r in result["rules"]])
    per_bucket = [(label, canary.canary(part, candidate, baseline, BUCKET_RULES, expected))
                  for label, part in buckets]

    def series(key: str) -> dict[str, list[tuple[str, float | None]]]:
        return {arm: [(label, r["arms"][arm][key]) for label, r in per_bucket]
                for arm in ("candidate", "baseline")}

    out += "<div class='cols'>"
    out += svg.line_chart(series("requests"), "requests per arm", width=440)
    out += svg.line_chart(series("error_rate"), "error rate per arm", width=440)
    out += svg.line_chart(series("p50_ms"), "latency p50 (ms)", width=440)
    out += svg.line_chart(series("p99_ms"), "latency p99 (ms)", width=440)
    out += svg.line_chart(series("mean_confidence"), "mean confidence", width=440)
    out += svg.line_chart({"agreement": [(label, r["agreement"]) for label, r in per_bucket]},
                          "agreement of the two arms", width=440,
                          threshold=expected.get("agreement") if expected else None,
                          threshold_label="eval agreement")
    out += "</div>"
    out += end_canary_form(name, candidate_alias, baseline_alias, candidate, baseline,
                           result["decision"], csrf)
    return out


def end_canary_form(name: str, candidate_alias: str, baseline_alias: str, candidate: int,
                    baseline: int, decision: str, csrf: str) -> str:
    promote = decision == canary.PROMOTE
    return (f"<form class='box' method='post' action='/serving/{esc(name)}/end-canary'>"
            f"<b>End the canary</b> (as <code>imgpipe models canary</code> does on a decision)"
            f"<input type='hidden' name='csrf' value='{esc(csrf)}'>"
            f"<input type='hidden' name='candidate' value='{esc(candidate_alias)}'>"
            f"<input type='hidden' name='baseline' value='{esc(baseline_alias)}'>"
            f"<input type='hidden' name='candidate_version' value='{candidate}'>"
            f"<input type='hidden' name='baseline_version' value='{baseline}'>"
            f"<label><input type='radio' name='decision' value='promote'"
            f"{' checked' if promote else ''}> promote: {esc(baseline_alias)} → version "
            f"{candidate} (canary-promote)</label>"
            f"<label><input type='radio' name='decision' value='revert'"
            f"{'' if promote else ' checked'}> revert: {esc(candidate_alias)} → version "
            f"{baseline} (canary-revert)</label>"
            "<label>reason <input type='text' name='reason' required></label>"
            "<button class='danger' type='submit'>end the canary</button></form>")


def _monitor(registry: Registry, name: str, aliases: dict[str, int], entries: Any,
             buckets: list[tuple[str, list[dict[str, Any]]]], watched: str) -> str:
    if watched not in aliases:
        return f"<p class='muted'>{esc(name)} has no alias {esc(watched)} to monitor.</p>"
    number = aliases[watched]
    card = registry.get(name, number).card
    thresholds = monitoring.Thresholds()
    served = [e for e in entries if e.get("version") == number]
    reference, reference_line = monitoring.reference_entries(served)
    whole = monitoring.monitor(card, served, reference, reference_line, thresholds)
    status = whole["status"]
    out = (f"<p>{esc(name)}@{esc(watched)} = version {number}: "
           f"{verdict(status, {monitoring.HEALTHY: True, monitoring.DRIFT: False}.get(status))}"
           f" over the window ({whole['requests']:,} request(s), {whole['images']:,} sampled "
           f"image(s)); thresholds are <code>imgpipe monitor</code>'s defaults; confidence "
           f"reference: {esc(reference_line)} in this window.</p>")
    out += table(["check", "value", "threshold", "verdict", "detail"], [
        [c["check"], c["value"], ("-" if c["threshold"] is None else
                                  f"{'≤' if c['direction'] == 'max' else '≥'} {c['threshold']:g}"),
         verdict(c["verdict"], {monitoring.OK: True, monitoring.FAIL: False}.get(c["verdict"])),
         c["detail"]] for c in whole["checks"]], css="checks")
    points = [(label, monitoring.monitor(card, [e for e in part if e.get("version") == number],
                                         reference, reference_line, thresholds))
              for label, part in buckets]
    out += "<div class='cols'>"
    for index, check in enumerate(whole["checks"]):
        series = {check["check"]: [(label, report["checks"][index]["value"])
                                   for label, report in points]}
        out += svg.line_chart(series, check["check"], threshold=check["threshold"],
                              threshold_label="threshold", width=440, height=200)
    out += "</div><p class='muted'>Each point is the check on that bucket's traffic alone, " \
           f"judged as <code>imgpipe monitor</code> judges it (at least {thresholds.min_images} " \
           "sampled images and " f"{thresholds.min_requests} requests, else no point).</p>"
    return out
