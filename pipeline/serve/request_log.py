"""The request log: one JSON line per request the server answered, kept under the
registry root next to the model's versions, where `imgpipe monitor` (drift of the
served traffic against the training data recorded in the model card) and `imgpipe
models canary` (a candidate against the baseline on the same traffic) read it.

    ROOT/NAME/requests/YYYY-MM-DD/HHMMSS-<host>-<pid>-<seq>.jsonl

Each file is one batch of lines, written whole (`fileio.write_bytes_atomic`: a
rename locally, one upload on gs://), so the log needs no appends and works on an
object store; a reader sees a batch completely or not at all. All times are UTC. A
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
from typing import Any, Iterable

from components.io import fileio
from components.features import EXAMPLES_SIGNATURE, IMAGES_SIGNATURE

REQUESTS = "requests"            # ROOT/NAME/requests/
SUFFIX = ".jsonl"
ARMS = ("baseline", "candidate")
SIGNATURES = (IMAGES_SIGNATURE, EXAMPLES_SIGNATURE)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_FILE = re.compile(r"(?P<hms>\d{6})-.+\.jsonl")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SEQUENCE = itertools.count(1)   # batches written by this process (all logs together)
_SEQUENCE_LOCK = threading.Lock()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", socket.gethostname() or "host").strip("-.") or "host"


def _utc(value: _dt.datetime) -> _dt.datetime:
    """An aware UTC datetime (a naive one is taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=_dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc)


def parse_time(text: Any) -> _dt.datetime | None:
    """An entry's "time" as an aware UTC datetime; None when it is not an ISO time."""
    if not isinstance(text, str):
        return None
    try:
        return _utc(_dt.datetime.fromisoformat(text))
    except ValueError:
        return None


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
    never raises, never waits on storage). The thread writes each model's buffer as
    one file every `flush_seconds`, and sooner once a buffer holds `max_lines`
    (a file holds at most `max_lines` lines). A write that fails is counted in
    `failures` (its error in `last_error`) and retried after `flush_seconds`, the
    lines kept; while the store stays unreachable a model keeps at most
    `max_buffered` lines, dropping the oldest (counted in `dropped`). `close()`
    (server shutdown) stops the thread and writes what is left; entries recorded
    after it stay buffered until `flush()` or another `close()`.
    """

    def __init__(self, root: str, flush_seconds: float = 2.0, max_lines: int = 1000,
                 max_buffered: int = 100_000):
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
        self._host = _host()
        self._buffers: dict[str, collections.deque] = {}
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
            with self._lock:
                self.dropped += 1
                self.last_error = f"entry not recorded: {type(exc).__name__}: {exc}"
            return
        with self._lock:
            buffer = self._buffers.setdefault(name, collections.deque())
            if len(buffer) >= self.max_buffered:
                buffer.popleft()
                self.dropped += 1
            buffer.append((when, line))
            full = len(buffer) >= self.max_lines
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Entries buffered, not written yet."""
        with self._lock:
            return sum(len(b) for b in self._buffers.values())

    def stats(self) -> dict[str, Any]:
        """The counters, e.g. for the server's metrics or health page."""
        with self._lock:
            return {"written": self.written, "files": self.files, "failures": self.failures,
                    "dropped": self.dropped, "last_error": self.last_error,
                    "pending": sum(len(b) for b in self._buffers.values())}

    # -- writing --

    def flush(self) -> int:
        """Writes every buffer now (in this thread); the entries written. A failure is
        counted, never raised."""
        with self._flush_lock:
            with self._lock:
                names = [n for n, b in self._buffers.items() if b]
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
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            before = self.failures
            self.flush()
            if self.failures != before:   # the store is failing: no retry storm
                self._stop.wait(self.flush_seconds)

    def _flush_one(self, name: str) -> int:
        with self._lock:
            buffer = self._buffers.get(name)
            if not buffer:
                return 0
            lines = list(buffer)
            buffer.clear()
        done = 0
        try:
            for batch in _batches(lines, self.max_lines):
                self._write(name, batch)
                done += len(batch)
                with self._lock:
                    self.written += len(batch)
                    self.files += 1
                    self._written.notify_all()
        except Exception as exc:
            with self._lock:
                self.failures += 1
                self.last_error = f"writing {folder(self.root, name)}: {type(exc).__name__}: {exc}"
                # put back what was not written, in front of what came meanwhile
                buffer = self._buffers.setdefault(name, collections.deque())
                buffer.extendleft(reversed(lines[done:]))
                while len(buffer) > self.max_buffered:
                    buffer.popleft()
                    self.dropped += 1
        return done

    def _write(self, name: str, batch: list[tuple[_dt.datetime, str]]) -> None:
        home = fileio.join(self.root, name)
        if not fileio.isdir(home):
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


# --- reading ---------------------------------------------------------------------------


class Entries(list):
    """read()'s entries (a list), with `damaged`: lines skipped as torn or not an
    entry, and `files`: the batch files read."""

    damaged: int = 0
    files: int = 0


def read(root: str, name: str, since: _dt.datetime | None = None,
         until: _dt.datetime | None = None) -> Entries:
    """The entries of model `name` with since <= time <= until (either may be None),
    oldest first. Days and files are chosen from their names, then each entry from its
    "time". A torn or damaged line, or one without a time, is skipped and counted in
    the result's `damaged`."""
    since = _utc(since) if since else None
    until = _utc(until) if until else None
    out = Entries()
    base = folder(root, name)
    if not fileio.isdir(base):
        return out
    found: list[tuple[_dt.datetime, dict[str, Any]]] = []
    for day in fileio.listdir(base):
        if not _DAY.fullmatch(day):
            continue
        try:
            date = _dt.date.fromisoformat(day)
        except ValueError:
            continue
        if (since and date < since.date()) or (until and date > until.date()):
            continue
        for file in fileio.listdir(fileio.join(base, day)):
            match = _FILE.fullmatch(file)
            if not match:
                continue                 # a temporary file of a write under way
            try:
                first = _dt.datetime.strptime(f"{day} {match['hms']}", "%Y-%m-%d %H%M%S"
                                              ).replace(tzinfo=_dt.timezone.utc)
            except ValueError:
                continue
            if until and first > until:
                continue
            try:
                data = fileio.read_bytes(fileio.join(base, day, file))
            except FileNotFoundError:
                continue                 # removed meanwhile
            out.files += 1
            for line in data.decode("utf-8", errors="replace").split("\n"):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = None
                when = parse_time(entry.get("time")) if isinstance(entry, dict) else None
                if when is None:
                    out.damaged += 1
                    continue
                if (since and when < since) or (until and when > until):
                    continue
                found.append((when, entry))
    found.sort(key=lambda item: item[0])
    out.extend(entry for _, entry in found)
    return out
