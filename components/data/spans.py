"""Data drops (spans): a `data.source` with a pattern names many drops of the same data,
as TFX ExampleGen's input patterns do (`tfx/components/example_gen/utils.py`), and
`data.spans` picks the ones a run reads. No TensorFlow, Beam or `sources` import here.

Patterns. `{SPAN}` (a whole number), or `{YYYY}`, `{MM}` and `{DD}` together (a date;
its span number is the days since 1970-01-01, as in TFX), optionally with `{VERSION}`
(a whole number: the highest version of a span wins, so a corrected drop is written
beside the first one instead of over it). The parts may sit in a folder path, a
manifest name or an array file name, locally or on gs://, and may spread over folder
levels::

    gs://bucket/photos/span-{SPAN}/                 folders of class folders
    data/{YYYY}-{MM}-{DD}/    data/{YYYY}/{MM}/{DD}/ date folders
    drops/{SPAN}/v{VERSION}/labels.csv              a manifest per drop and version
    arrays/digits-{SPAN}.npz                        an array file per drop

Refused (PatternError, a ConfigError: one line naming the source and the fix, its
`problem` without the config key, which the caller adds): `{SPAN}` with date
parts, a part given twice, some date parts without the others, `{VERSION}` without a
span part, an unknown `{PART}` (also `{span}`, `{SPAN:4}`: the number is matched
whatever its zero padding), `{SPAN}` or `{VERSION}` touching another part (their
digits could not be told apart), glob wildcards (`*`, `?`, `[`), a part in a bucket
name.

`data.spans` (validated with DataConfig, through `check_spans`):

    None / "latest"        the newest span found
    {rolling: N}           the newest N found (fewer when fewer exist: a warning)
    {range: [A, B]}        every span from A to B, both included
    [A, B, ...]            exactly these spans
    {scheduled: "-1d"}     the day N days before the run's schedule time ("0d": that day;
                           date patterns only: a {SPAN} number names no day)

Span values are whole numbers for `{SPAN}` patterns and "YYYY-MM-DD" for date patterns
(YAML's unquoted dates are taken too). A span that range/list/scheduled asks for and
that is absent follows `data.on_missing`: `fail` (a ConfigError naming the missing
spans and the newest that exists: a run never quietly trains on old data) or `skip`
(dropped, with a warning line for the caller to show).

API (what the ingest step builds on):

    has_pattern(source) -> bool               any {PART} in it (then Pattern.parse it)
    Pattern.parse(source) -> Pattern          .source, .kind ("span" | "date"),
                                              .has_version, .root (the fixed folder);
                                              PatternError when it names no drops
    discover(pattern) -> list[Span]           what exists, highest version per span,
                                              oldest first; ConfigError when none does
    select(found, spans_cfg, on_missing, now=None) -> (list[Span], list[str])
                                              the chosen spans (oldest first) and
                                              warnings; `now` (a datetime, UTC when
                                              naive) resolves {scheduled: ...}
    check_spans(spans_cfg, kind) -> value     data.spans checked, in its canonical form
    Span(number, date, version, path)         .label ("span 7" | "2026-12-01"); the
                                              plain ingest code reads one span through
                                              DataConfig.for_span(span.path)
    span_number(date) / span_date(number)     days since 1970-01-01 and back (TFX's)
    Pattern.fill(number, version=None)        a span's path (for messages)

DataConfig's validators call this module (lazily, only for a source holding "{"): a
bad pattern or data.spans is refused when the config loads, with the file and key.
This module knows nothing of the config: it takes plain values.

Discovery lists through `components/io/fileio`, level by level: the fixed folder before
the first part is listed once, whatever the number of spans (on gs:// one delimited
listing: the drops' names, never the images below them); each entry is matched with a
regex built from the pattern (names starting with "." are skipped: a drop being
written under a hidden name is not found until it is renamed into place). Only parts
in a deeper level (`{SPAN}/v{VERSION}/`) or a fixed name below a part
(`drops/{SPAN}/labels.csv`) cost a listing or an existence check per matching folder
(GCS cannot list two levels in one delimited request; a recursive listing would list
every image); on gs:// those run concurrently. Put the version in the span's own name
(`span-{SPAN}-v{VERSION}/`) to keep discovery to one listing.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from components.io import fileio
from components.errors import ConfigError, DataError

PARTS = ("SPAN", "VERSION", "YYYY", "MM", "DD")
DATE_PARTS = ("YYYY", "MM", "DD")
EPOCH = datetime.date(1970, 1, 1)
SPAN_CHOICES = ("latest, {rolling: N}, {range: [A, B]}, a list of spans, or "
                "{scheduled: -1d}")
# How many spans a message names before "... and N more".
NAMED = 8
# Concurrent listings for a level below the first on remote storage.
LISTERS = 16

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?::[^{}/]*)?)\}")
_PART_REGEX = {"SPAN": r"\d+", "VERSION": r"\d+", "YYYY": r"\d{4}", "MM": r"\d{2}",
               "DD": r"\d{2}"}
_OFFSET = re.compile(r"([+-]?)(\d+)d")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class PatternError(ConfigError):
    """A source whose span pattern cannot name data drops. `problem` says what is wrong
    and the fix without naming the config key that gave the source (`data.source`,
    `infer.source`): the caller adds it."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source!r} {problem}.")
        self.source, self.problem = source, problem


def has_pattern(source: str) -> bool:
    """Whether `source` holds a `{PART}` placeholder (known or not: `Pattern.parse`
    then accepts it or says what is wrong with it)."""
    return "{" in source and _PLACEHOLDER.search(source) is not None


# --- patterns ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern source: `root` is the fixed folder before the first part
    ("" for a relative pattern that starts with one), `levels` the path segments from
    there (templates), `trailing` a final "/" of the source."""

    source: str
    kind: str                    # "span" ({SPAN}) | "date" ({YYYY}{MM}{DD})
    has_version: bool
    root: str
    levels: tuple[str, ...]
    trailing: str = ""

    @classmethod
    def parse(cls, source: str) -> "Pattern":
        """The pattern `source` names; a PatternError saying what is wrong and the fix."""
        def refuse(problem: str, fix: str) -> PatternError:
            return PatternError(source, f"{problem}; {fix}")

        names = _PLACEHOLDER.findall(source)
        if not names:
            raise refuse("has no span pattern", "name the drops with {SPAN} (e.g. "
                         "data/span-{SPAN}/) or {YYYY}-{MM}-{DD}")
        for name in names:
            if name in PARTS:
                continue
            base = name.split(":", 1)[0]
            if base.upper() in PARTS and ":" in name:
                raise refuse(f"gives {{{name}}} a width", f"write {{{base.upper()}}}: it "
                             "matches the number whatever its zero padding (7, 07, 007)")
            if base.upper() in PARTS:
                raise refuse(f"has {{{name}}}", f"parts are upper case: write "
                             f"{{{base.upper()}}}")
            raise refuse(f"has an unknown part {{{name}}}",
                         "use {SPAN}, {YYYY}, {MM}, {DD} and {VERSION} only")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise refuse(f"names {{{repeated[0]}}} more than once",
                         "a pattern has each part once")
        dates = [p for p in DATE_PARTS if p in names]
        if "SPAN" in names and dates:
            raise refuse("mixes {SPAN} with date parts",
                         "use either {SPAN} or {YYYY}, {MM} and {DD}")
        if dates and len(dates) < len(DATE_PARTS):
            missing = ", ".join(f"{{{p}}}" for p in DATE_PARTS if p not in names)
            raise refuse(f"has {', '.join(f'{{{p}}}' for p in dates)} without {missing}",
                         "a date needs all of {YYYY}, {MM} and {DD}, e.g. "
                         "data/{YYYY}-{MM}-{DD}/")
        if "SPAN" not in names and not dates:
            raise refuse("has {VERSION} without a span part",
                         "add {SPAN} or {YYYY}-{MM}-{DD}, e.g. drops/{SPAN}/v{VERSION}/")
        for a, b in (("SPAN", "VERSION"), ("VERSION", "SPAN")) + tuple(
                pair for p in DATE_PARTS for pair in ((p, "VERSION"), ("VERSION", p))):
            if f"{{{a}}}{{{b}}}" in source:
                raise refuse(f"has {{{a}}}{{{b}}} side by side",
                             f"separate them, e.g. {{{a}}}-v{{{b}}}"
                             if a != "VERSION" else f"separate them, e.g. v{{{a}}}-{{{b}}}")
        wild = next((c for c in "*?[" if c in source), None)
        if wild:
            raise refuse(f"has the wildcard {wild!r}", "a pattern names its drops with "
                         "{SPAN} or {YYYY}{MM}{DD} only; give the rest of the path as is")
        text = source
        if not fileio.is_remote(text):
            text = os.path.expanduser(text)
        scheme, rest = text.split("://", 1) if "://" in text else ("", text)
        head = ""
        if scheme:
            bucket, _, rest = rest.partition("/")
            if _PLACEHOLDER.search(bucket):
                raise refuse("has a part in its bucket name",
                             "put the parts in the path below the bucket")
            head = f"{scheme}://{bucket}"
        elif rest.startswith("/"):
            head, rest = "/", rest.lstrip("/")
        trailing = "/" if rest.endswith("/") else ""
        segments = [s for s in rest.split("/") if s]
        first = next(i for i, s in enumerate(segments) if _PLACEHOLDER.search(s))
        root = fileio.join(head, *segments[:first]) if head else "/".join(segments[:first])
        if head == "/" and not segments[:first]:
            root = "/"
        return cls(source, "span" if "SPAN" in names else "date", "VERSION" in names,
                   root, tuple(segments[first:]), trailing)

    def fill(self, number: int, version: int | None = None) -> str:
        """The concrete path of span `number` (a day number for date patterns), for
        messages about a span that does not exist (no zero padding for {SPAN})."""
        values = {"VERSION": "" if version is None else str(version)}
        if self.kind == "span":
            values["SPAN"] = str(number)
        else:
            day = span_date(number)
            values.update(YYYY=f"{day.year:04d}", MM=f"{day.month:02d}", DD=f"{day.day:02d}")
        rest = "/".join(_PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), level)
                        for level in self.levels)
        return _join(self.root, rest) + self.trailing


def _join(parent: str, name: str) -> str:
    return fileio.join(parent, name) if parent else name


def _segment_regex(template: str) -> re.Pattern:
    out, last = [], 0
    for match in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[last:match.start()]))
        out.append(f"(?P<{match[1]}>{_PART_REGEX[match[1]]})")
        last = match.end()
    out.append(re.escape(template[last:]))
    return re.compile("".join(out))


def span_number(day: datetime.date) -> int:
    """A date's span number: the days since 1970-01-01 (TFX's date_to_span_number)."""
    return (day - EPOCH).days


def span_date(number: int) -> datetime.date:
    return EPOCH + datetime.timedelta(days=number)


# --- spans -------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One data drop: its number (a day number for date patterns), its date
    ("YYYY-MM-DD", date patterns only), its version (None without {VERSION}) and the
    concrete source path with the parts filled in."""

    number: int
    date: str | None
    version: int | None
    path: str

    @property
    def label(self) -> str:
        """How messages name it: "span 7" or "2026-12-01"."""
        return self.date if self.date is not None else f"span {self.number}"


def _label(kind: str, number: int) -> str:
    return span_date(number).isoformat() if kind == "date" else f"span {number}"


# --- discovery ---------------------------------------------------------------------


def _listings(parents: list[str]) -> dict[str, list[str]]:
    """parent -> the names in it ([] when it is absent or not a folder)."""
    def one(parent: str) -> list[str]:
        try:
            return sorted(set(fileio.listdir(parent or ".")))  # an object and a prefix
        except (FileNotFoundError, NotADirectoryError):
            return []
    return dict(zip(parents, _each(one, parents)))


def _each(function, items: list[str]) -> list[Any]:
    """`function` over `items`; concurrently for several remote paths (each is a
    request to the store)."""
    if len(items) < 2 or not fileio.is_remote(items[0]):
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(LISTERS, len(items)), thread_name_prefix="imgpipe-spans") \
            as pool:
        return list(pool.map(function, items))


def discover(pattern: Pattern) -> list[Span]:
    """Every span the pattern finds, one per span number (its highest version), oldest
    first. ConfigError when nothing matches; DataError for a drop whose name matches
    but cannot be one (a date that does not exist, two folders for one span)."""
    candidates: list[tuple[dict[str, str], str]] = [({}, pattern.root)]
    for level in pattern.levels:
        parents = [path for _, path in candidates]
        if not _PLACEHOLDER.search(level):      # a fixed name below a part: must exist
            there = _each(fileio.exists, [_join(p, level) for p in parents])
            candidates = [(caps, _join(path, level))
                          for (caps, path), ok in zip(candidates, there) if ok]
            continue
        regex = _segment_regex(level)
        listed = _listings(parents)
        candidates = [({**caps, **match.groupdict()}, _join(path, name))
                      for caps, path in candidates for name in listed[path]
                      if not name.startswith(".") and (match := regex.fullmatch(name))]
    best: dict[int, Span] = {}
    for caps, path in candidates:
        span = _span(pattern, caps, path + pattern.trailing)
        held = best.get(span.number)
        if held is not None and held.version == span.version:
            raise DataError(f"{held.path} and {span.path} are both {span.label}"
                            f"{'' if span.version is None else f' version {span.version}'} "
                            f"of data.source {pattern.source!r}; remove or rename one.")
        if held is None or (span.version or 0) > (held.version or 0):
            best[span.number] = span
    if not best:
        where = pattern.root or "."
        absent = "" if fileio.exists(where) else f" ({where} does not exist)"
        example = pattern.fill(1 if pattern.kind == "span" else
                               span_number(datetime.date.today()),
                               1 if pattern.has_version else None)
        raise ConfigError(f"data.source {pattern.source!r} matches no data drop{absent}; "
                          f"check the path, or add a drop such as {example}.")
    return [best[number] for number in sorted(best)]


def _span(pattern: Pattern, caps: dict[str, str], path: str) -> Span:
    version = int(caps["VERSION"]) if pattern.has_version else None
    if pattern.kind == "span":
        return Span(int(caps["SPAN"]), None, version, path)
    try:
        day = datetime.date(int(caps["YYYY"]), int(caps["MM"]), int(caps["DD"]))
    except ValueError as exc:
        raise DataError(f"{path} matches data.source {pattern.source!r} but "
                        f"{caps['YYYY']}-{caps['MM']}-{caps['DD']} is no date ({exc}); "
                        "rename or remove it.") from exc
    return Span(span_number(day), day.isoformat(), version, path)


# --- data.spans --------------------------------------------------------------------


def check_spans(value: Any, kind: str) -> Any:
    """`data.spans` checked against the pattern's kind ("span" or "date") and in its
    canonical form: None, "latest", {"rolling": N}, {"range": [A, B]}, a list, or
    {"scheduled": "-Nd"}, with dates as "YYYY-MM-DD". ConfigError (its message
    continues "data.spans: ") when it cannot be read."""
    if value is None or value == "latest":
        return value
    if isinstance(value, str):
        raise ConfigError(f"{value!r} is not a span selection; give {SPAN_CHOICES}")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError("the list of spans is empty; name at least one span, or "
                              "use latest")
        spans = [_value(v, kind) for v in value]
        repeated = sorted({s for s in spans if spans.count(s) > 1}, key=str)
        if repeated:
            raise ConfigError(f"the list names {repeated[0]} more than once; list each "
                              "span once")
        return spans
    if not isinstance(value, dict) or len(value) != 1 or \
            next(iter(value)) not in ("rolling", "range", "scheduled"):
        keys = list(value) if isinstance(value, dict) else type(value).__name__
        raise ConfigError(f"{json.dumps(keys, default=str)} is not a span selection; give "
                          f"{SPAN_CHOICES}")
    (key, given), = value.items()
    if key == "rolling":
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise ConfigError(f"rolling takes a number of spans >= 1, got "
                              f"{json.dumps(given, default=str)}; e.g. {{rolling: 7}}")
        return {"rolling": given}
    if key == "range":
        if not isinstance(given, (list, tuple)) or len(given) != 2:
            raise ConfigError(f"range takes [first, last], got {json.dumps(given, default=str)}"
                              f"; e.g. {{range: {_example(kind)}}}")
        low, high = (_value(v, kind) for v in given)
        if _number(low, kind) > _number(high, kind):
            raise ConfigError(f"range [{low}, {high}] is empty: the first span is after the "
                              "last; swap them")
        return {"range": [low, high]}
    if kind != "date":
        raise ConfigError("{scheduled: ...} needs a date pattern ({YYYY}-{MM}-{DD} in "
                          "data.source): a {SPAN} number names no day; use latest, "
                          "{rolling: N}, {range: [A, B]} or a list")
    match = _OFFSET.fullmatch(given) if isinstance(given, str) else None
    if match is None or (match[1] != "-" and int(match[2]) != 0):
        raise ConfigError(f"scheduled takes -Nd (the day N days before the schedule time) "
                          f"or 0d (that day), got {json.dumps(given, default=str)}"
                          + ("; a later day's drop cannot exist yet" if match else ""))
    return {"scheduled": f"-{int(match[2])}d" if int(match[2]) else "0d"}


def _example(kind: str) -> str:
    return "[2026-11-01, 2026-11-30]" if kind == "date" else "[1, 12]"


def _value(value: Any, kind: str) -> int | str:
    """One span value: a whole number ({SPAN}) or a date as "YYYY-MM-DD"."""
    shown = json.dumps(value, default=str)
    if kind == "span":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"span {shown} is not a span number; a {{SPAN}} pattern's spans "
                              "are whole numbers >= 0, e.g. [3, 4]")
        return value
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return datetime.date.fromisoformat(value).isoformat()
        except ValueError as exc:
            raise ConfigError(f"span {shown} is no date ({exc}); write YYYY-MM-DD") from exc
    raise ConfigError(f"span {shown} is not a date; a date pattern's spans are written "
                      "YYYY-MM-DD, e.g. 2026-12-01")


def _number(value: int | str, kind: str) -> int:
    return value if kind == "span" else span_number(datetime.date.fromisoformat(value))


def _describe(spans_cfg: Any) -> str:
    return json.dumps(spans_cfg, default=str).replace('"', "")


def select(found: list[Span], spans_cfg: Any, on_missing: str,
           now: datetime.datetime | None = None) -> tuple[list[Span], list[str]]:
    """The spans `spans_cfg` (data.spans) picks from `found` (`discover`'s), oldest
    first, and warning lines for the caller to show. Absent spans that range, a list or
    scheduled ask for: a ConfigError under on_missing "fail", dropped with a warning
    under "skip". `now` (a datetime; naive means UTC; default: the current time)
    resolves {scheduled: -Nd} to the UTC day N days before it."""
    if not found:
        raise ConfigError("data.source's pattern matches no data drop; check data.source, "
                          "or add a drop")
    kind = "date" if found[0].date is not None else "span"
    try:
        spans_cfg = check_spans(spans_cfg, kind)
    except ConfigError as exc:
        raise ConfigError(f"data.spans: {exc}.") from None
    newest = found[-1]
    if spans_cfg is None or spans_cfg == "latest":
        return [newest], []
    if isinstance(spans_cfg, dict) and "rolling" in spans_cfg:
        count = spans_cfg["rolling"]
        chosen = found[-count:]
        warnings = [] if len(chosen) == count else [
            f"data.spans {_describe(spans_cfg)}: only {len(chosen)} span(s) exist "
            f"({chosen[0].label} .. {chosen[-1].label}); using those"]
        return chosen, warnings
    by_number = {span.number: span for span in found}
    wanted = _wanted(spans_cfg, kind, now)
    chosen = [span for span in found if span.number in wanted]
    count = len(wanted) - len(chosen)
    if not count:
        return chosen, []
    missing = [_label(kind, n) for n in _absent(wanted, by_number)]
    named = ", ".join(missing) + (f" and {count - len(missing)} more"
                                  if count > len(missing) else "")
    what = f"data.spans {_describe(spans_cfg)}"
    if isinstance(spans_cfg, dict) and "scheduled" in spans_cfg:
        what += f" at {_when(now).isoformat(timespec='minutes')}"
    if on_missing != "skip":
        raise ConfigError(f"{what}: {named} {'is' if count == 1 else 'are'} missing (the "
                          f"newest drop that exists is {newest.label}, {newest.path}); wait "
                          "for the drop, change data.spans, or set data.on_missing: skip to "
                          f"run without {'it' if count == 1 else 'them'}.")
    if not chosen:
        raise ConfigError(f"{what}: none of the spans asked for exists ({named} missing; the "
                          f"newest drop that exists is {newest.label}), so there is nothing "
                          "to read even with data.on_missing: skip; change data.spans.")
    return chosen, [f"{what}: skipped {count} missing span(s): {named} "
                    "(data.on_missing: skip)"]


def _when(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc)


def _wanted(spans_cfg: Any, kind: str, now: datetime.datetime | None) -> range | set[int]:
    """The span numbers range / list / scheduled ask for (a range stays a range: a
    wide one is never spelled out)."""
    if isinstance(spans_cfg, list):
        return {_number(v, kind) for v in spans_cfg}
    if "range" in spans_cfg:
        low, high = (_number(v, kind) for v in spans_cfg["range"])
        return range(low, high + 1)
    days = int(spans_cfg["scheduled"][:-1])
    return {span_number(_when(now).date()) + days}


def _absent(wanted: range | set[int], present: dict[int, Span]) -> list[int]:
    """The first NAMED wanted span numbers not in `present`, in order (a range is
    walked only as far as it takes to find them)."""
    out: list[int] = []
    for number in wanted if isinstance(wanted, range) else sorted(wanted):
        if number not in present:
            out.append(number)
            if len(out) == NAMED:
                break
    return out
