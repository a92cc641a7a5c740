"""The request log: one JSON line per request the server answered, kept under the
registry root next to the model's versions, where `imgpipe monitor` (drift of the
served traffic against the training data recorded in the model card) and `imgpipe
models canary` (a candidate against the baseline on the same traffic) read it.

    ROOT/NAME/requests/YYYY-MM-DD/HHMMSS-<host>-<pid>-<seq>.jsonl

Each file is one batch of lines, written whole (`fileio.write_bytes_atomic`: a
rename locally, one upload on gs://), so the log needs no appends and works on an
object store; a reader sees a batch completely or not at all. A batch is written once
it holds 1,000 entries or once its oldest entry has waited FLUSH_SECONDS (30 s): at
low traffic fewer, larger files (at 1 request/s two a minute, not one every 2 s),
while a crash (SIGKILL, out of memory) loses at most the last 30 s; a stop (SIGTERM)
writes everything first. An entry that cannot be written (the registry full,
read-only or unreachable) is kept and retried, and counted: the server's metrics, a
line when writing fails and when it works again, and the exit status (2) when entries
were still lost at the stop (`RequestLog.stats`). All times are UTC. A
file holds the entries of one UTC day (its folder), and its name is the time of its
earliest entry, to the second, so a reader skips days and files outside the window
it asks for from the names alone. <seq> counts the batches this process wrote (host
and pid keep two servers, or two workers of one, apart).

One entry (what the server writes per request; `make_entry` builds one):

    time        ISO 8601 UTC, e.g. "2026-12-02T18:30:15.123+00:00" (filled in by
                `RequestLog.record` when absent)
    id          the request id (text)
    model       NAME (filled in by `record` when absent)
    version     the version that answered (int), or null when none did (the alias
                did not resolve)
    label       the alias it was served through ("production"), or null when the
                request named a version
    arm         "baseline" | "candidate" in a canary, else null
    signature   "serving_images" | "serving_default"
    status      the HTTP status (int)
    error       the error text, or null
    latency_ms  float, the server's time for the request
    instances   how many images the request held (int)
    images      only on sampled requests: one object per image, in order:
                `describe_image(...)` (sha256, bytes, height, width, channels,
                brightness, contrast; or sha256, bytes, error for an image that does
                not decode) plus "class" (the predicted class name) and "confidence"
                (its probability, the top one)
    shadow      only on sampled requests in a canary: the OTHER arm's answers on the
                same images, {"version": int, "classes": [name, ...],
                "confidences": [float, ...]} (in the order of "images"), so that
                agreement between the two versions can be computed

A reader (`read`) takes a field that is absent or null as unknown, but a line whose
fields are there with another type (`"images": 5`, a confidence in words, a width in
text, a number that is not finite) is damaged: skipped and counted, as a torn line is
(`problem` says why). So are paths that are not what their names say (a file named
like a day's folder, a folder named like a batch file): skipped and named.

`brightness` and `contrast` are ingest's (`components.data.neardup.describe`): the mean
and the standard deviation of the grayscale levels (Pillow's convert("L")) over 255;
`height`, `width` and `channels` (1 or 3) are counted as ingest counts them
(`components.data.imaging.check_image`: EXIF-upright, gray modes 1, others 3).
"""

from __future__ import annotations

import collections
import datetime as _dt
import hashlib
import itertools
import json
import os
import re
import socket
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from components.io import fileio
from components.features import EXAMPLES_SIGNATURE, IMAGES_SIGNATURE
from pipeline.serve.log_entries import parse_time, problem
from pipeline.serve.log_entries import utc as _utc

REQUESTS = "requests"            # ROOT/NAME/requests/
SUFFIX = ".jsonl"
ARMS = ("baseline", "candidate")
SIGNATURES = (IMAGES_SIGNATURE, EXAMPLES_SIGNATURE)
FLUSH_SECONDS = 30.0             # the longest an entry waits in memory to be written
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_FILE = re.compile(r"(?P<hms>\d{6})-.+\.jsonl")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SEQUENCE = itertools.count(1)   # batches written by this process (all logs together)
_SEQUENCE_LOCK = threading.Lock()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", socket.gethostname() or "host").strip("-.") or "host"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def folder(root: str, name: str) -> str:
    """ROOT/NAME/requests: where the model's request log lives."""
    return fileio.join(root, name, REQUESTS)


def make_entry(*, model: str, status: int, latency_ms: float, instances: int,
               signature: str = IMAGES_SIGNATURE, version: int | None = None,
               label: str | None = None, arm: str | None = None, id: str | None = None,
               error: str | None = None, images: list[dict[str, Any]] | None = None,
               shadow: dict[str, Any] | None = None, time: str | None = None
               ) -> dict[str, Any]:
    """One entry in the schema above (`images` and `shadow` only when given)."""
    entry: dict[str, Any] = {
        "time": time or now_iso(), "id": id, "model": model, "version": version,
        "label": label, "arm": arm, "signature": signature, "status": int(status),
        "error": error, "latency_ms": float(latency_ms), "instances": int(instances)}
    if images is not None:
        entry["images"] = images
    if shadow is not None:
        entry["shadow"] = shadow
    return entry


def sampled_images(descriptions: list[dict[str, Any]], classes: list[str],
                   confidences: list[float]) -> list[dict[str, Any]]:
    """An entry's "images": each image's description with its predicted class and
    confidence."""
    return [dict(d, **{"class": c, "confidence": float(p)})
            for d, c, p in zip(descriptions, classes, confidences)]


# --- describing an image ---------------------------------------------------------------


def describe_images(images: Iterable[bytes], max_pixels: int | None = None
                    ) -> list[dict[str, Any]]:
    """describe_image of each encoded image, the same-sized ones computed together; an
    image that does not decode gets {sha256, bytes, error} instead of raising."""
    from components.data import imaging, neardup
    from components.config.data import MAX_PIXELS

    limit = MAX_PIXELS if max_pixels is None else max_pixels
    out: list[dict[str, Any]] = []
    grays, where = [], []
    for data in images:
        data = bytes(data)
        item: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        try:
            checked = imaging.check_image(data, limit)
        except imaging.BadImage as exc:
            item["error"] = str(exc)
        else:
            item.update(height=checked.height, width=checked.width, channels=checked.channels)
            grays.append(checked.gray)
            where.append(len(out))
        out.append(item)
    for index, (_, brightness, contrast) in zip(where, neardup.describe_each(grays)):
        out[index].update(brightness=round(brightness, 6), contrast=round(contrast, 6))
    return out


def describe_image(data: bytes, max_pixels: int | None = None) -> dict[str, Any]:
    """{sha256, bytes, height, width, channels, brightness, contrast} of one encoded
    image, as ingest measures them (module docstring); raises imaging.BadImage (a
    ValueError, its text the reason) when the bytes are not a usable image."""
    from components.data import imaging

    item = describe_images([data], max_pixels)[0]
    if "error" in item:
        raise imaging.BadImage(item["error"])
    return item


# --- writing ---------------------------------------------------------------------------


class RequestLog:
    """Buffers entries in memory and writes them in batches from a daemon thread.

    `record(name, entry)` only appends a JSON line to the model's buffer (thread-safe,
    never raises, never waits on storage). The thread writes a model's buffer as one
    file once its oldest entry has waited `flush_seconds`, or sooner once it holds
    `max_lines` (a file holds at most `max_lines` lines). A write that fails is
    counted in `failures` (its error in `last_error`), said once through `log` (and
    once more when writing works again), and retried after `flush_seconds`, the lines
    kept; while the store stays unreachable a model keeps at most `max_buffered`
    lines, dropping the oldest (counted in `dropped`). `close()` (server shutdown)
    stops the thread and writes what is left; entries recorded after it stay buffered
    until `flush()` or another `close()`. Whatever is still `pending` then is lost with
    the process: `stats()["lost"]` counts it with the dropped ones. With
    `models_must_exist` (the server's log, under a registry) a model whose folder is
    gone (the registry moved or deleted) is a failed write: its folder is never made.
    """

    def __init__(self, root: str, flush_seconds: float = FLUSH_SECONDS,
                 max_lines: int = 1000, max_buffered: int = 100_000,
                 log: Callable[[str], None] | None = None, models_must_exist: bool = False):
        if flush_seconds <= 0 or max_lines < 1 or max_buffered < 1:
            raise ValueError("flush_seconds must be > 0, max_lines and max_buffered >= 1")
        self.root = root if fileio.is_remote(root) else os.path.abspath(root)
        self.flush_seconds = float(flush_seconds)
        self.max_lines = int(max_lines)
        self.max_buffered = int(max_buffered)
        self.failures = 0           # batch writes that failed (retried)
        self.dropped = 0            # entries lost: buffer full, or not JSON-serializable
        self.written = 0            # entries written
        self.files = 0              # batch files written
        self.last_error: str | None = None
        self.models_must_exist = models_must_exist   # a registry's: never make ROOT/NAME
        self._log = log or (lambda line: None)
        self._host = _host()
        self._buffers: dict[str, collections.deque] = {}
        self._oldest: dict[str, float] = {}      # monotonic time of a buffer's oldest entry
        self._models: dict[str, collections.Counter] = {}    # the counters, per model
        self._failing: set[str] = set()     # models whose last write failed (said once)
        self._dropping: set[str] = set()    # ... whose buffer overflowed meanwhile
        self._lock = threading.Lock()            # the buffers and counters
        self._flush_lock = threading.Lock()      # one flush at a time (order kept)
        self._written = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imgpipe-request-log",
                                        daemon=True)
        self._thread.start()

    # -- the request path --

    def record(self, name: str, entry: dict[str, Any]) -> None:
        """Queues one entry of model `name` (a copy, with "time" and "model" filled in
        when absent)."""
        try:
            if not _NAME.fullmatch(name or "") or ".." in name:
                raise ValueError(f"{name!r} is not a model name")
            entry = dict(entry)
            when = parse_time(entry.get("time"))
            if when is None:
                when = _dt.datetime.now(_dt.timezone.utc)
                entry["time"] = when.isoformat(timespec="milliseconds")
            entry.setdefault("model", name)
            line = json.dumps(entry, default=str, separators=(",", ":"))
        except Exception as exc:     # a bad entry costs the entry, never the request
            self.drop(name, exc)
            return
        overflow = False
        with self._lock:
            buffer = self._buffers.setdefault(name, collections.deque())
            if not buffer:
                self._oldest[name] = time.monotonic()
            if len(buffer) >= self.max_buffered:
                buffer.popleft()
                self._count(name, "dropped")
                overflow = name not in self._dropping
                self._dropping.add(name)
            buffer.append((when, line))
            full = len(buffer) >= self.max_lines
        if overflow:
            self._log(f"request log: {self.max_buffered:,} entries of {name} wait to be "
                      "written; dropping the oldest, counted in "
                      "imgpipe_serve_request_log_dropped_total")
        if full:
            self._wake.set()

    def drop(self, name: Any, why: BaseException | str) -> None:
        """Counts an entry that could not be recorded (never raises)."""
        text = why if isinstance(why, str) else f"{type(why).__name__}: {why}"
        with self._lock:
            self._count(str(name)[:100], "dropped")
            self.last_error = f"entry not recorded: {text}"

    def _count(self, name: str, key: str, n: int = 1) -> None:
        """Adds to a counter, in all and for the model (the caller holds the lock)."""
        setattr(self, key, getattr(self, key) + n)
        self._models.setdefault(name, collections.Counter())[key] += n

    @property
    def pending(self) -> int:
        """Entries buffered, not written yet."""
        with self._lock:
            return sum(len(b) for b in self._buffers.values())

    def stats(self) -> dict[str, Any]:
        """The counters, e.g. for the server's metrics or health page: written, files,
        failures (batch writes that failed), dropped, pending (buffered), lost (dropped
        + pending: what is not in the log should the process end now), recorded (all
        entries handed to it: written + lost), last_error, and `models`: the same per
        model."""
        keys = ("written", "files", "failures", "dropped")
        with self._lock:
            models = {name: dict({key: counts[key] for key in keys},
                                 pending=len(self._buffers.get(name) or ()))
                      for name, counts in self._models.items()}
            for name, buffer in self._buffers.items():
                models.setdefault(name, dict(dict.fromkeys(keys, 0), pending=len(buffer)))
            pending = sum(len(b) for b in self._buffers.values())
            return {"written": self.written, "files": self.files, "failures": self.failures,
                    "dropped": self.dropped, "pending": pending,
                    "lost": self.dropped + pending,
                    "recorded": self.written + self.dropped + pending,
                    "last_error": self.last_error, "models": models}

    # -- writing --

    def flush(self, due_only: bool = False) -> int:
        """Writes every buffer now (in this thread; `due_only`: those full or whose
        oldest entry waited `flush_seconds`); the entries written. A failure is counted,
        never raised."""
        with self._flush_lock:
            with self._lock:
                due = time.monotonic() - self.flush_seconds + 0.01
                names = [n for n, b in self._buffers.items() if b and (
                    not due_only or len(b) >= self.max_lines
                    or self._oldest.get(n, 0.0) <= due)]
            return sum(self._flush_one(name) for name in names)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stops the background thread and writes what is buffered."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self.flush()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                oldest = min(self._oldest.values(), default=None)
            self._wake.wait(self.flush_seconds if oldest is None else
                            max(0.0, oldest + self.flush_seconds - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            before = self.failures
            self.flush(due_only=True)
            if self.failures != before:   # the store is failing: no retry storm
                self._stop.wait(self.flush_seconds)

    def _flush_one(self, name: str) -> int:
        with self._lock:
            buffer = self._buffers.get(name)
            if not buffer:
                return 0
            lines = list(buffer)
            buffer.clear()
            oldest = self._oldest.pop(name, time.monotonic())
        done = 0
        try:
            for batch in _batches(lines, self.max_lines):
                self._write(name, batch)
                done += len(batch)
                with self._lock:
                    self._count(name, "written", len(batch))
                    self._count(name, "files")
                    self._written.notify_all()
        except Exception as exc:
            where = folder(self.root, name)
            with self._lock:
                self._count(name, "failures")
                self.last_error = f"writing {where}: {type(exc).__name__}: {exc}"
                # put back what was not written, in front of what came meanwhile
                buffer = self._buffers.setdefault(name, collections.deque())
                buffer.extendleft(reversed(lines[done:]))
                self._oldest[name] = oldest
                while len(buffer) > self.max_buffered:
                    buffer.popleft()
                    self._count(name, "dropped")
                first = name not in self._failing
                self._failing.add(name)
                kept = len(buffer)
            if first:
                self._log(f"request log: cannot write {where} ({type(exc).__name__}: {exc}); "
                          f"{kept:,} entries kept in memory (at most {self.max_buffered:,} a "
                          f"model), retried every {self.flush_seconds:g}s; counted in "
                          "imgpipe_serve_request_log_write_failures_total")
            return done
        with self._lock:
            back = name in self._failing
            self._failing.discard(name)
            self._dropping.discard(name)
        if back:
            self._log(f"request log: writing {folder(self.root, name)} again ({done:,} "
                      "entries kept meanwhile written)")
        return done

    def _write(self, name: str, batch: list[tuple[_dt.datetime, str]]) -> None:
        home = fileio.join(self.root, name)
        if self.models_must_exist and not fileio.isdir(home):
            # the registry (or the model) was moved or deleted: writing would make up a
            # phantom one in its place (`models list` would find it empty, and the real
            # one put back would nest in it); a failed write, kept and retried instead
            raise FileNotFoundError(f"the model folder {home} is gone (the registry or the "
                                    "model moved or deleted); not recreated")
        first = min(when for when, _ in batch)
        with _SEQUENCE_LOCK:
            seq = next(_SEQUENCE)
        path = fileio.join(folder(self.root, name), first.strftime("%Y-%m-%d"),
                           f"{first.strftime('%H%M%S')}-{self._host}-{os.getpid()}-{seq}{SUFFIX}")
        fileio.write_bytes_atomic(path, "".join(line + "\n" for _, line in batch).encode())

    def _wait_written(self, count: int, timeout: float) -> bool:
        """Waits until `count` entries are written in all (tests: the thread's work)."""
        with self._written:
            return self._written.wait_for(lambda: self.written >= count, timeout)


def _batches(lines: list[tuple[_dt.datetime, str]], size: int
             ) -> list[list[tuple[_dt.datetime, str]]]:
    """Lines grouped by UTC day (a file holds one day's entries), at most `size` each."""
    by_day: dict[_dt.date, list] = {}
    for item in lines:
        by_day.setdefault(item[0].date(), []).append(item)
    return [group[i:i + size] for _, group in sorted(by_day.items())
            for i in range(0, len(group), size)]


class Collector:
    """The request log's counters as Prometheus metrics, read at each scrape (register
    it on the server's metrics registry): what `imgpipe_serve_logged_requests_total`
    counts is what was written, not what was handed to the log."""

    FAMILIES = (
        ("counter", "imgpipe_serve_logged_requests", "Requests written to the request log",
         "written"),
        ("counter", "imgpipe_serve_request_log_dropped",
         "Request log entries lost: the oldest dropped while writes failed and the buffer "
         "was full, or an entry that could not be recorded", "dropped"),
        ("counter", "imgpipe_serve_request_log_write_failures",
         "Request log batch writes that failed (their entries kept and retried)", "failures"),
        ("gauge", "imgpipe_serve_request_log_pending",
         "Request log entries in memory, not written yet", "pending"))

    def __init__(self, log: RequestLog):
        self.log = log

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        models = self.log.stats()["models"]
        for kind, name, text, key in self.FAMILIES:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, text, labels=["model"])
            for model, counts in sorted(models.items()):
                family.add_metric([model], counts[key])
            yield family



# --- reading ---------------------------------------------------------------------------


class Entries(list):
    """read()'s entries (a list), with `damaged`: lines skipped as torn or not an entry
    (`problem`), `first_damage`: where the first was and why, `skipped`: paths in the
    log's folder that are not what their names say or cannot be read ("PATH (why)"),
    and `files`: the batch files read."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.damaged = 0
        self.files = 0
        self.first_damage: str | None = None
        self.skipped: list[str] = []


def unreadable(exc: OSError) -> str:
    if isinstance(exc, NotADirectoryError):
        return "a file where a day's folder of batch files belongs"
    if isinstance(exc, IsADirectoryError):
        return "a folder where a batch file belongs"
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def batch_files(root: str, name: str, since: _dt.datetime | None,
                until: _dt.datetime | None, out: Entries) -> Iterator[tuple[str, list[str]]]:
    """(a day's folder, its batch files that may hold entries up to `until`) for each
    day of model `name`'s log from `since` to `until` (either may be None; aware
    times), chosen by their names; a folder that cannot be listed, or a file where the
    log's folder belongs, is named in `out.skipped`. What `read` reads, and what a
    reader that keeps files (the console) lists."""
    base = folder(root, name)
    if not fileio.isdir(base):
        if fileio.exists(base):
            out.skipped.append(f"{base} (a file where the request log's folder belongs)")
        return
    for day in fileio.listdir(base):
        if not _DAY.fullmatch(day):
            continue
        try:
            date = _dt.date.fromisoformat(day)
        except ValueError:
            continue
        if (since and date < since.date()) or (until and date > until.date()):
            continue
        where = fileio.join(base, day)
        try:
            files = fileio.listdir(where)
        except FileNotFoundError:
            continue                     # removed meanwhile
        except OSError as exc:
            out.skipped.append(f"{where} ({unreadable(exc)})")
            continue
        paths = []
        for file in files:
            match = _FILE.fullmatch(file)
            if not match:
                continue                 # a temporary file of a write under way
            try:
                first = _dt.datetime.strptime(f"{day} {match['hms']}", "%Y-%m-%d %H%M%S"
                                              ).replace(tzinfo=_dt.timezone.utc)
            except ValueError:
                continue
            if not until or first <= until:
                paths.append(fileio.join(where, file))
        yield where, paths


def read(root: str, name: str, since: _dt.datetime | None = None,
         until: _dt.datetime | None = None) -> Entries:
    """The entries of model `name` with since <= time <= until (either may be None),
    oldest first. Days and files are chosen from their names, then each entry from its
    "time". A torn or damaged line (one `problem` finds fault with) is skipped and
    counted in the result's `damaged`; a path that is not what its name says is
    skipped and named in its `skipped`."""
    since = _utc(since) if since else None
    until = _utc(until) if until else None
    out = Entries()
    found: list[tuple[_dt.datetime, dict[str, Any]]] = []
    for _, paths in batch_files(root, name, since, until, out):
        for path in paths:
            try:
                data = fileio.read_bytes(path)
            except FileNotFoundError:
                continue                 # removed meanwhile
            except OSError as exc:
                out.skipped.append(f"{path} ({unreadable(exc)})")
                continue
            out.files += 1
            for number, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    why = problem(entry)
                except (ValueError, RecursionError):
                    entry, why = None, "not JSON (a torn line?)"
                if why:
                    out.damaged += 1
                    out.first_damage = out.first_damage or f"{path} line {number}: {why}"
                    continue
                when = parse_time(entry["time"])
                if (since and when < since) or (until and when > until):
                    continue
                found.append((when, entry))
    found.sort(key=lambda item: item[0])
    out.extend(entry for _, entry in found)
    return out
