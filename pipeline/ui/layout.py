"""The console's HTML: one page shell (navigation, a small stylesheet of its own: nothing
fetched from elsewhere, no script needed), tables, pagination and number formats.
Values are escaped where they enter the page; `Raw` marks HTML already built."""

from __future__ import annotations

import html
import urllib.parse
from typing import Any, Iterable

STYLE = """
:root{--ink:#1f2328;--muted:#656d76;--line:#d0d7de;--soft:#f6f8fa;--ok:#1a7f37;--bad:#cf222e;
--warn:#9a6700;--accent:#0969da}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--ink);background:#fff}
header{background:#24292f;color:#fff;padding:8px 20px;display:flex;gap:22px;align-items:center}
header b{font-size:15px;margin-right:8px}header a{color:#d0d7de;text-decoration:none}
header a.on{color:#fff;border-bottom:2px solid #fff}
main{padding:14px 20px 40px;max-width:1400px}
h1{font-size:20px;margin:6px 0 10px}h2{font-size:16px;margin:22px 0 8px;padding-bottom:3px;
border-bottom:1px solid var(--line)}h3{font-size:14px;margin:14px 0 6px}
a{color:var(--accent)}code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid var(--line);padding:3px 8px;
text-align:left;vertical-align:top}th{background:var(--soft);font-weight:600}td.num{text-align:right;
font-variant-numeric:tabular-nums}tr.sel td{background:#fff8c5}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn);
font-weight:600}.muted{color:var(--muted)}
.tag{display:inline-block;border:1px solid var(--line);border-radius:10px;padding:0 7px;
margin:0 3px 2px 0;font-size:12px;background:var(--soft)}.tag.alias{background:#ddf4ff;
border-color:#54aeff}
.note{padding:8px 12px;border-radius:6px;margin:10px 0;border:1px solid}.note.ok{background:#dafbe1;
border-color:#4ac26b;font-weight:400}.note.bad{background:#ffebe9;border-color:#ff8182;
font-weight:400}
form.inline{display:inline}form.box{border:1px solid var(--line);border-radius:6px;padding:10px 12px;
margin:8px 0;background:var(--soft);display:inline-block;min-width:420px}
form.box label{display:block;margin:4px 0}input[type=text],input[type=password],select{
font:inherit;padding:3px 6px;border:1px solid var(--line);border-radius:4px}
input[name=reason]{width:360px}button{font:inherit;padding:4px 12px;border-radius:5px;
border:1px solid #1f883d;background:#1f883d;color:#fff;cursor:pointer}
button.danger{background:#cf222e;border-color:#cf222e}
.pager{margin:8px 0}.pager a,.pager span{margin-right:10px}
.cols{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.chart{border:1px solid var(--line);border-radius:6px;padding:6px;margin:6px 0;background:#fff}
.cm td{min-width:34px;text-align:right}iframe.report{width:100%;height:900px;
border:1px solid var(--line);border-radius:6px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0}
"""

SECTIONS = (("runs", "/runs", "Runs"), ("models", "/models", "Models"),
            ("serving", "/serving", "Serving"))


class Raw(str):
    """HTML already built: put in a page as it is."""


def esc(value: Any) -> str:
    if isinstance(value, Raw):
        return value
    return html.escape("" if value is None else str(value))


def page(title: str, body: str, section: str = "", note: str | None = None,
         error: str | None = None) -> str:
    """A whole page: the header's navigation (`section` marked), an optional note or
    error line, then `body`."""
    nav = "".join(f"<a href='{href}' class='{'on' if key == section else ''}'>{label}</a>"
                  for key, href, label in SECTIONS)
    notes = ""
    if note:
        notes += f"<div class='note ok' role='status'>{esc(note)}</div>"
    if error:
        notes += f"<div class='note bad' role='alert'>{esc(error)}</div>"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{esc(title)} · imgpipe</title><style>{STYLE}</style></head><body>"
            f"<header><b>imgpipe</b>{nav}</header><main><h1>{esc(title)}</h1>{notes}{body}"
            "</main></body></html>")


def cell(value: Any) -> str:
    """A table cell: numbers right-aligned, HTML (`Raw`) as is."""
    if isinstance(value, Raw):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{esc('-' if value is None else str(value).lower())}</td>"
    if isinstance(value, (int, float)):
        return f"<td class='num'>{esc(number(value))}</td>"
    return f"<td>{esc(value)}</td>"


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], css: str = "",
          selected: Iterable[int] = ()) -> str:
    marked = set(selected)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr class='{'sel' if i in marked else ''}'>"
                   + "".join(cell(v) for v in row) + "</tr>" for i, row in enumerate(rows))
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def number(value: Any, places: int = 4) -> str:
    """Rates to `places` decimals, counts whole, '-' for none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        # a whole number past 1 is a count (TFMA's example_count is a float), not a rate
        return f"{value:,.0f}" if value.is_integer() and abs(value) > 1 else \
            f"{value:.{places}f}"
    return str(value)


def link(href: str, text: Any) -> Raw:
    return Raw(f"<a href='{esc(href)}'>{esc(text)}</a>")


def tags(values: Iterable[Any], css: str = "alias") -> Raw:
    return Raw("".join(f"<span class='tag {css}'>{esc(v)}</span>" for v in values))


def verdict(text: str, good: bool | None) -> Raw:
    css = "muted" if good is None else "ok" if good else "bad"
    return Raw(f"<span class='{css}'>{esc(text)}</span>")


def url(path: str, **params: Any) -> str:
    """`path` with the query parameters that have a value."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


def pager(path: str, params: dict[str, Any], page_number: int, per_page: int,
          total: int) -> str:
    """'previous · page N of M · next' links that keep the other query parameters."""
    pages = max(1, -(-total // per_page))
    parts = []
    if page_number > 1:
        parts.append(f"<a href='{esc(url(path, **params, page=page_number - 1))}' "
                     "rel='prev'>&larr; newer</a>")
    parts.append(f"<span>page {page_number} of {pages} ({total:,} in all)</span>")
    if page_number < pages:
        parts.append(f"<a href='{esc(url(path, **params, page=page_number + 1))}' "
                     "rel='next'>older &rarr;</a>")
    return f"<div class='pager'>{''.join(parts)}</div>"


def options(values: Iterable[Any], chosen: Any, blank: str | None = None) -> str:
    out = [f"<option value=''>{esc(blank)}</option>"] if blank is not None else []
    out += [f"<option value='{esc(v)}'{' selected' if str(v) == str(chosen) else ''}>"
            f"{esc(v)}</option>" for v in values]
    return "".join(out)


def csrf_field(token: str) -> str:
    return f"<input type='hidden' name='csrf' value='{esc(token)}'>"


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition list of label: value."""
    return "<dl class='kv'>" + "".join(
        f"<dt>{esc(k)}</dt><dd>{esc(v) if not isinstance(v, Raw) else v}</dd>"
        for k, v in pairs) + "</dl>"
