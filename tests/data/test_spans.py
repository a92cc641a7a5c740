"""Data drops (components/data/spans.py): pattern parsing and its refusals, discovery on
folder trees (local and gs://) with versions, selection by data.spans with
data.on_missing, and DataConfig's checks of data.spans."""

from __future__ import annotations

import datetime
import os

import pytest

from components.io import fileio
from components.data import spans
from components.config.data import DataConfig
from components.errors import ConfigError, DataError
from pipeline import config as config_lib

NOW = datetime.datetime(2026, 12, 2, 6, 30)          # a schedule time (UTC)


def _touch(path) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"x")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize("source, kind, version, root, levels, trailing", [
    ("/data/photos/span-{SPAN}/", "span", False, "/data/photos", ("span-{SPAN}",), "/"),
    ("gs://b/photos/{YYYY}-{MM}-{DD}/", "date", False, "gs://b/photos",
     ("{YYYY}-{MM}-{DD}",), "/"),
    ("gs://b/drops/{SPAN}/v{VERSION}/labels.csv", "span", True, "gs://b/drops",
     ("{SPAN}", "v{VERSION}", "labels.csv"), ""),
    ("arrays/digits-{YYYY}{MM}{DD}.npz", "date", False, "arrays",
     ("digits-{YYYY}{MM}{DD}.npz",), ""),
    ("{SPAN}/labels.jsonl", "span", False, "", ("{SPAN}", "labels.jsonl"), ""),
    ("/{DD}.{MM}.{YYYY}-v{VERSION}", "date", True, "/", ("{DD}.{MM}.{YYYY}-v{VERSION}",), ""),
])
def test_patterns_parse(source, kind, version, root, levels, trailing):
    assert spans.has_pattern(source)
    pattern = spans.Pattern.parse(source)
    assert (pattern.kind, pattern.has_version, pattern.root, pattern.levels,
            pattern.trailing) == (kind, version, root, levels, trailing)


def test_plain_sources_have_no_pattern():
    for source in ("builtin:fonts", "/data/photos", "gs://b/x/labels.csv", "a{b", "a{}b"):
        assert not spans.has_pattern(source)
    assert spans.has_pattern("x/{FOO}/")          # unknown: parse says what is wrong


@pytest.mark.parametrize("source, expected", [
    ("d/{SPAN}-{YYYY}{MM}{DD}/", "mixes {SPAN} with date parts"),
    ("d/{SPAN}/x-{SPAN}/", "names {SPAN} more than once"),
    ("d/{YYYY}/", "has {YYYY} without {MM}, {DD}"),
    ("d/{YYYY}-{MM}/", "without {DD}"),
    ("d/v{VERSION}/", "has {VERSION} without a span part"),
    ("d/{WEEK}/", "unknown part {WEEK}"),
    ("d/{span}/", "parts are upper case: write {SPAN}"),
    ("d/{SPAN:4}/", "gives {SPAN:4} a width"),
    ("d/{SPAN}{VERSION}/", "side by side"),
    ("d/*/{SPAN}/", "wildcard '*'"),
    ("gs://b-{SPAN}/x/", "part in its bucket name"),
    ("d/plain/", "has no span pattern"),
])
def test_bad_patterns_are_refused_naming_the_source_and_the_fix(source, expected):
    with pytest.raises(ConfigError) as info:
        spans.Pattern.parse(source)
    message = _one_line(info)
    assert expected in message and repr(source) in message and "; " in message


# --- discovery -------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    for n in range(1, 13):
        _touch(tmp_path / "photos" / f"span-{n}" / "cat" / "a.png")
    _touch(tmp_path / "photos" / "span-x" / "cat" / "a.png")     # not a number
    _touch(tmp_path / "photos" / "span-3.tmp" / "cat" / "a.png")
    _touch(tmp_path / "photos" / ".span-13" / "cat" / "a.png")   # hidden: being written
    _touch(tmp_path / "photos" / "notes.txt")
    for version in (1, 2):
        _touch(tmp_path / "drops" / "3" / f"v{version}" / "labels.csv")
    _touch(tmp_path / "drops" / "4" / "v1" / "labels.csv")
    _touch(tmp_path / "drops" / "5" / "v7" / "images" / "a.png")  # no manifest yet
    for day in ("2026-11-28", "2026-11-29", "2026-12-01"):        # 11-30 missing
        _touch(tmp_path / "daily" / day / "cat" / "a.png")
    return tmp_path


def test_discovery_matches_folder_names_and_sorts_by_span(tree):
    found = spans.discover(spans.Pattern.parse(f"{tree}/photos/span-{{SPAN}}/"))
    assert [s.number for s in found] == list(range(1, 13))
    assert found[6] == spans.Span(7, None, None, f"{tree}/photos/span-7/")
    assert found[6].label == "span 7"


def test_the_highest_version_of_a_span_wins(tree):
    found = spans.discover(spans.Pattern.parse(f"{tree}/drops/{{SPAN}}/v{{VERSION}}/labels.csv"))
    assert [(s.number, s.version) for s in found] == [(3, 2), (4, 1)]   # 5: no labels.csv
    assert found[0].path == f"{tree}/drops/3/v2/labels.csv"


def test_date_spans_are_days_since_1970(tree):
    found = spans.discover(spans.Pattern.parse(f"{tree}/daily/{{YYYY}}-{{MM}}-{{DD}}/"))
    assert [s.date for s in found] == ["2026-11-28", "2026-11-29", "2026-12-01"]
    assert found[0].number == (datetime.date(2026, 11, 28) - datetime.date(1970, 1, 1)).days
    assert found[-1].label == "2026-12-01" and found[-1].path.endswith("/daily/2026-12-01/")


def test_date_parts_over_folder_levels_and_file_names(tmp_path):
    for day in ("2026/11/30", "2026/12/01", "2025/01/02"):
        _touch(tmp_path / "nested" / day / "labels.jsonl")
    found = spans.discover(spans.Pattern.parse(f"{tmp_path}/nested/{{YYYY}}/{{MM}}/{{DD}}/"
                                               "labels.jsonl"))
    assert [s.date for s in found] == ["2025-01-02", "2026-11-30", "2026-12-01"]
    for name in ("digits-20261201-v1.npz", "digits-20261201-v3.npz", "digits-20261202-v1.npz",
                 "digits-2026120.npz"):
        _touch(tmp_path / "arrays" / name)
    found = spans.discover(spans.Pattern.parse(f"{tmp_path}/arrays/digits-{{YYYY}}{{MM}}{{DD}}"
                                               "-v{VERSION}.npz"))
    assert [(s.date, s.version) for s in found] == [("2026-12-01", 3), ("2026-12-02", 1)]
    assert found[0].path == f"{tmp_path}/arrays/digits-20261201-v3.npz"


def test_a_relative_pattern_lists_the_current_folder(tmp_path, monkeypatch):
    for n in (2, 3):
        _touch(tmp_path / f"{n}" / "labels.jsonl")
    _touch(tmp_path / "4" / "other.jsonl")
    monkeypatch.chdir(tmp_path)
    found = spans.discover(spans.Pattern.parse("{SPAN}/labels.jsonl"))
    assert [s.path for s in found] == ["2/labels.jsonl", "3/labels.jsonl"]


def test_discovery_refusals(tmp_path):
    with pytest.raises(ConfigError) as info:
        spans.discover(spans.Pattern.parse(f"{tmp_path}/none/span-{{SPAN}}/"))
    message = _one_line(info)
    assert "matches no data drop" in message and "does not exist" in message
    assert f"{tmp_path}/none/span-1/" in message          # what a drop would look like
    _touch(tmp_path / "bad" / "2026-02-30" / "a.png")
    with pytest.raises(DataError, match="2026-02-30 is no date"):
        spans.discover(spans.Pattern.parse(f"{tmp_path}/bad/{{YYYY}}-{{MM}}-{{DD}}/"))
    _touch(tmp_path / "twice" / "span-7" / "a.png")
    _touch(tmp_path / "twice" / "span-007" / "a.png")
    with pytest.raises(DataError, match="are both span 7 of data.source .*; remove or rename one"):
        spans.discover(spans.Pattern.parse(f"{tmp_path}/twice/span-{{SPAN}}/"))


# --- selection -------------------------------------------------------------------------


def _numbered(*numbers, version=None):
    return [spans.Span(n, None, version, f"/d/span-{n}/") for n in numbers]


def _dated(*days):
    return [spans.Span(spans.span_number(datetime.date.fromisoformat(d)), d, None, f"/d/{d}/")
            for d in days]


def _numbers(chosen):
    return [s.number for s in chosen]


def test_select_latest_rolling_range_and_list():
    found = _numbered(1, 2, 3, 5, 8)
    assert spans.select(found, None, "fail") == (found[-1:], [])
    assert spans.select(found, "latest", "fail") == (found[-1:], [])
    assert spans.select(found, {"rolling": 3}, "fail") == (found[-3:], [])
    assert _numbers(spans.select(found, {"range": [2, 3]}, "fail")[0]) == [2, 3]
    assert _numbers(spans.select(found, [8, 1], "fail")[0]) == [1, 8]      # oldest first


def test_rolling_with_fewer_spans_than_asked_takes_them_and_says_so():
    chosen, warnings = spans.select(_numbered(4, 6), {"rolling": 5}, "fail")
    assert _numbers(chosen) == [4, 6]
    assert warnings == ["data.spans {rolling: 5}: only 2 span(s) exist (span 4 .. span 6); "
                        "using those"]


def test_a_missing_span_fails_naming_it_and_the_newest():
    found = _numbered(1, 2, 3)
    with pytest.raises(ConfigError) as info:
        spans.select(found, {"range": [2, 5]}, "fail")
    message = _one_line(info)
    assert "span 4, span 5 are missing" in message and "newest drop that exists is span 3" \
        in message and "data.on_missing: skip" in message
    with pytest.raises(ConfigError, match="span 9 is missing"):
        spans.select(found, [1, 9], "fail")


def test_skip_drops_missing_spans_with_a_warning():
    chosen, warnings = spans.select(_numbered(1, 2, 3), {"range": [2, 5]}, "skip")
    assert _numbers(chosen) == [2, 3]
    assert warnings == ["data.spans {range: [2, 5]}: skipped 2 missing span(s): span 4, span 5 "
                        "(data.on_missing: skip)"]
    with pytest.raises(ConfigError, match="none of the spans asked for exists"):
        spans.select(_numbered(1, 2, 3), [7, 8], "skip")


def test_a_wide_range_is_not_spelled_out():
    with pytest.raises(ConfigError) as info:
        spans.select(_numbered(1), {"range": [0, 10**12]}, "fail")
    assert "span 0, span 2, span 3" in str(info.value) and "more are missing" in str(info.value)


def test_date_selections():
    found = _dated("2026-11-28", "2026-11-29", "2026-12-01")
    chosen, _ = spans.select(found, {"range": ["2026-11-28", "2026-11-29"]}, "fail")
    assert [s.date for s in chosen] == ["2026-11-28", "2026-11-29"]
    assert spans.select(found, ["2026-12-01"], "fail")[0] == found[-1:]
    assert spans.select(found, [datetime.date(2026, 12, 1)], "fail")[0] == found[-1:]  # YAML
    with pytest.raises(ConfigError, match="2026-11-30 is missing"):
        spans.select(found, {"range": ["2026-11-28", "2026-12-01"]}, "fail")
    chosen, warnings = spans.select(found, {"range": ["2026-11-28", "2026-12-01"]}, "skip")
    assert len(chosen) == 3 and "2026-11-30" in warnings[0]


def test_scheduled_resolves_against_the_schedule_time():
    found = _dated("2026-11-29", "2026-12-01")
    assert spans.select(found, {"scheduled": "-1d"}, "fail", now=NOW)[0] == found[-1:]
    assert spans.select(found, {"scheduled": "-3d"}, "fail", now=NOW)[0] == found[:1]
    with pytest.raises(ConfigError) as info:            # the day itself: not there yet
        spans.select(found, {"scheduled": "0d"}, "fail", now=NOW)
    assert "2026-12-02 is missing" in _one_line(info) and "at 2026-12-02T06:30" in \
        str(info.value)
    # an aware time counts in UTC: 00:30 in Berlin on the 2nd is still the 1st in UTC
    berlin = datetime.datetime(2026, 12, 2, 0, 30, tzinfo=datetime.timezone(
        datetime.timedelta(hours=1)))
    assert spans.select(found, {"scheduled": "0d"}, "fail", now=berlin)[0] == found[-1:]
    with pytest.raises(ConfigError, match="needs a date pattern"):
        spans.select(_numbered(1, 2), {"scheduled": "-1d"}, "fail", now=NOW)


def test_select_refuses_what_it_cannot_read():
    with pytest.raises(ConfigError, match="matches no data drop"):
        spans.select([], "latest", "fail")
    with pytest.raises(ConfigError, match='data.spans: span "3" is not a span number'):
        spans.select(_numbered(3), ["3"], "fail")
    with pytest.raises(ConfigError, match="is not a date"):
        spans.select(_dated("2026-12-01"), [3], "fail")


def test_span_source_is_a_plain_source_the_ingest_code_reads(tree):
    from components.data import sources

    data = DataConfig(source=f"{tree}/photos/span-{{SPAN}}/", spans={"rolling": 2},
                      on_missing="skip", image_size=(28, 28))
    chosen, _ = spans.select(spans.discover(spans.Pattern.parse(data.source)), data.spans,
                             data.on_missing)
    one = data.for_span(chosen[-1].path)
    assert isinstance(one, DataConfig) and one.spans is None
    assert one.source == f"{tree}/photos/span-12/" and one.image_size == (28, 28)
    assert data.source.endswith("span-{SPAN}/")                    # unchanged
    assert sources.resolve(one).kind == "folder"


# --- gs:// -----------------------------------------------------------------------------


def test_discovery_in_a_bucket_lists_once_per_level(on_fake, monkeypatch):  # noqa: F811
    root = f"{on_fake}/spans-test"
    for n in (1, 2, 10):
        fileio.write_bytes(f"{root}/photos/span-{n}/cat/a.png", b"x")
        fileio.write_bytes(f"{root}/photos/span-{n}/dog/b.png", b"x")
    fileio.write_bytes(f"{root}/photos/span-x/cat/a.png", b"x")
    for path in ("drops/3/v1/labels.csv", "drops/3/v2/labels.csv", "drops/4/v1/labels.csv",
                 "drops/5/v1/a.png", "daily/2026-11-30/cat/a.png",
                 "daily/2026-12-01/cat/a.png"):
        fileio.write_bytes(f"{root}/{path}", b"x")
    listed = []
    real = fileio.listdir
    monkeypatch.setattr(fileio, "listdir", lambda path: listed.append(path) or real(path))
    try:
        found = spans.discover(spans.Pattern.parse(f"{root}/photos/span-{{SPAN}}/"))
        assert [(s.number, s.path) for s in found] == [
            (n, f"{root}/photos/span-{n}/") for n in (1, 2, 10)]
        assert listed == [f"{root}/photos"]            # one listing for all the spans
        found = spans.discover(spans.Pattern.parse(f"{root}/drops/{{SPAN}}/v{{VERSION}}/"
                                                   "labels.csv"))
        assert [(s.number, s.version, s.path) for s in found] == [
            (3, 2, f"{root}/drops/3/v2/labels.csv"), (4, 1, f"{root}/drops/4/v1/labels.csv")]
        found = spans.discover(spans.Pattern.parse(f"{root}/daily/{{YYYY}}-{{MM}}-{{DD}}/"))
        chosen, _ = spans.select(found, {"scheduled": "-1d"}, "fail", now=NOW)
        assert [s.path for s in chosen] == [f"{root}/daily/2026-12-01/"]
        with pytest.raises(ConfigError, match="matches no data drop"):
            spans.discover(spans.Pattern.parse(f"{root}/nothing/{{SPAN}}/"))
    finally:
        fileio.rmtree(root)


# --- DataConfig ------------------------------------------------------------------------


def _load(tmp_path, data_yaml: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"name: t\ndata: {data_yaml}\n")
    return config_lib.load(str(path), resolve_paths=False)


def test_config_defaults_and_accepted_forms(tmp_path):
    plain = _load(tmp_path, "{source: builtin:fonts}").data
    assert (plain.spans, plain.on_missing, plain.eval_spans) == (None, "fail", "auto")
    cases = [("d/span-{SPAN}/", "latest", "latest"),
             ("d/span-{SPAN}/", "{rolling: 7}", {"rolling": 7}),
             ("d/span-{SPAN}/", "{range: [3, 9]}", {"range": [3, 9]}),
             ("d/span-{SPAN}/", "[4, 2]", [4, 2]),
             ("d/{YYYY}-{MM}-{DD}/", "{range: [2026-11-01, 2026-11-30]}",  # YAML dates
              {"range": ["2026-11-01", "2026-11-30"]}),
             ("d/{YYYY}-{MM}-{DD}/", "['2026-12-01']", ["2026-12-01"]),
             ("d/{YYYY}-{MM}-{DD}/", "{scheduled: -1d}", {"scheduled": "-1d"}),
             ("d/{YYYY}-{MM}-{DD}/", "{scheduled: 0d}", {"scheduled": "0d"})]
    for source, value, expected in cases:
        data = _load(tmp_path, f"{{source: '{source}', spans: {value}, on_missing: skip, "
                               "eval_spans: all}").data
        assert data.spans == expected and data.on_missing == "skip"
        again = DataConfig.model_validate(data.model_dump(mode="json"))   # KFP's config_json
        assert again.spans == expected


@pytest.mark.parametrize("data_yaml, key, expected", [
    ("{source: d/plain/, spans: latest}", "data.spans", "has no span pattern"),
    ("{source: builtin:fonts, spans: {rolling: 3}}", "data.spans", "has no span pattern"),
    ("{source: 'd/{SPAN}-{DD}/'}", "data.source", "mixes {SPAN} with date parts"),
    ("{source: 'd/{YYYY}/'}", "data.source", "without {MM}, {DD}"),
    ("{source: 'd/{SPAN}/', spans: {rolling: 0}}", "data.spans", "rolling takes a number"),
    ("{source: 'd/{SPAN}/', spans: {rolling: true}}", "data.spans", "rolling takes a number"),
    ("{source: 'd/{SPAN}/', spans: [true]}", "data.spans", "span true is not a span number"),
    ("{source: 'd/{SPAN}/', spans: {range: [9, 3]}}", "data.spans", "swap them"),
    ("{source: 'd/{SPAN}/', spans: {range: [3]}}", "data.spans", "range takes [first, last]"),
    ("{source: 'd/{SPAN}/', spans: [2026-12-01]}", "data.spans", "not a span number"),
    ("{source: 'd/{SPAN}/', spans: [3, 3]}", "data.spans", "names 3 more than once"),
    ("{source: 'd/{SPAN}/', spans: []}", "data.spans", "list of spans is empty"),
    ("{source: 'd/{SPAN}/', spans: newest}", "data.spans", "is not a span selection"),
    ("{source: 'd/{SPAN}/', spans: {last: 3}}", "data.spans", "is not a span selection"),
    ("{source: 'd/{SPAN}/', spans: {scheduled: -1d}}", "data.spans", "needs a date pattern"),
    ("{source: 'd/{YYYY}{MM}{DD}/', spans: [3]}", "data.spans", "is not a date"),
    ("{source: 'd/{YYYY}{MM}{DD}/', spans: ['2026-02-30']}", "data.spans", "is no date"),
    ("{source: 'd/{YYYY}{MM}{DD}/', spans: {scheduled: 1d}}", "data.spans", "cannot exist yet"),
    ("{source: 'd/{YYYY}{MM}{DD}/', spans: {scheduled: yesterday}}", "data.spans",
     "scheduled takes -Nd"),
    ("{source: 'd/{SPAN}/', on_missing: ignore}", "data.on_missing", "'fail' or 'skip'"),
    ("{source: 'd/{SPAN}/', eval_spans: oldest}", "data.eval_spans", "'auto', 'newest' or 'all'"),
])
def test_config_refusals_name_the_key_and_the_fix(tmp_path, data_yaml, key, expected):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data_yaml)
    message = _one_line(info)
    assert f"{key}:" in message and expected in message and "cfg.yaml" in message


def test_reassigning_the_source_rechecks_the_spans():
    data = DataConfig(source="d/span-{SPAN}/", spans=[3])
    with pytest.raises(ValueError, match="data.spans: given, but data.source 'd/plain/'"):
        data.source = "d/plain/"
