"""The console's pictures, drawn on the server as inline SVG (no plotting library and no
script in the browser): line charts with a threshold line, the lineage graph of
artifacts and executions, and confusion matrices as shaded tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.ui.layout import esc

COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#57606a")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + (abs(low) or 1.0)
    step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(count + 2) if first + i * step <= high + step * 0.5]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def line_chart(series: dict[str, list[tuple[str, float | None]]], title: str = "",
               threshold: float | None = None, threshold_label: str = "",
               width: int = 640, height: int = 220, y_range: tuple[float, float] | None = None,
               kind: str = "line") -> str:
    """Series of (x label, value) on one shared x axis (the labels of the first series
    give the order); a value None is a gap. `threshold`: a dashed line with its label.
    kind "bar": bars for the first series instead of a line."""
    labels: list[str] = []
    for points in series.values():
        for x, _ in points:
            if x not in labels:
                labels.append(x)
    values = [v for points in series.values() for _, v in points if v is not None]
    if threshold is not None:
        values.append(threshold)
    left, right, top, bottom = 52, 12, 24 if title else 10, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    if not labels or not values:
        return (f"<svg class='chart' role='img' width='{width}' height='{60}' "
                f"aria-label='{esc(title)}: no data'><text x='10' y='20' font-size='13'>"
                f"{esc(title)}</text><text x='10' y='44' font-size='12' fill='#656d76'>"
                "no data in this window</text></svg>")
    low, high = y_range if y_range else (min(values), max(values))
    if not y_range:
        pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
        low, high = (0.0 if low >= 0 and low - pad < 0 else low - pad), high + pad
    ticks = _ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])

    def x_of(index: int) -> float:
        return left + (plot_w * (index + 0.5) / len(labels))

    def y_of(value: float) -> float:
        return top + plot_h - (value - low) / (high - low) * plot_h

    out = [f"<svg class='chart' role='img' xmlns='http://www.w3.org/2000/svg' width='{width}' "
           f"height='{height}' viewBox='0 0 {width} {height}' aria-label='{esc(title)}'>"]
    if title:
        out.append(f"<text x='{left}' y='15' font-size='13' font-weight='600'>{esc(title)}"
                   "</text>")
    for tick in ticks:
        y = y_of(tick)
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' "
                   "stroke='#eaeef2'/>"
                   f"<text x='{left - 5}' y='{y + 4:.1f}' font-size='10' text-anchor='end' "
                   f"fill='#656d76'>{_label(tick)}</text>")
    every = max(1, math.ceil(len(labels) / 10))
    for index, label in enumerate(labels):
        if index % every == 0:
            out.append(f"<text x='{x_of(index):.1f}' y='{height - bottom + 14}' font-size='10' "
                       f"text-anchor='middle' fill='#656d76'>{esc(label)}</text>")
    if threshold is not None:
        y = y_of(threshold)
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' "
                   "stroke='#cf222e' stroke-dasharray='5 4' stroke-width='1.5'/>"
                   f"<text x='{width - right - 4}' y='{y - 4:.1f}' font-size='10' "
                   f"text-anchor='end' fill='#cf222e'>{esc(threshold_label)} "
                   f"{_label(threshold)}</text>")
    position = {label: i for i, label in enumerate(labels)}
    for number, (name, points) in enumerate(series.items()):
        colour = COLOURS[number % len(COLOURS)]
        if kind == "bar" and number == 0:
            bar = max(2.0, plot_w / len(labels) * 0.7)
            for x, v in points:
                if v is None:
                    continue
                y0, y1 = y_of(max(low, 0.0)), y_of(v)
                out.append(f"<rect x='{x_of(position[x]) - bar / 2:.1f}' y='{min(y0, y1):.1f}' "
                           f"width='{bar:.1f}' height='{abs(y0 - y1):.1f}' fill='{colour}' "
                           f"opacity='.75'><title>{esc(name)} {esc(x)}: {_label(v)}</title>"
                           "</rect>")
            continue
        runs: list[list[str]] = [[]]
        for x, v in points:
            if v is None:
                runs.append([])
                continue
            runs[-1].append(f"{x_of(position[x]):.1f},{y_of(v):.1f}")
        for run in runs:
            if len(run) > 1:
                out.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.8' "
                           f"points='{' '.join(run)}'/>")
        if len(points) <= 120:
            for x, v in points:
                if v is not None:
                    out.append(f"<circle cx='{x_of(position[x]):.1f}' cy='{y_of(v):.1f}' r='3' "
                               f"fill='{colour}'><title>{esc(name)} {esc(x)}: {_label(v)}"
                               "</title></circle>")
    legend_x = left
    for number, name in enumerate(series):
        colour = COLOURS[number % len(COLOURS)]
        out.append(f"<rect x='{legend_x}' y='{height - 14}' width='10' height='10' "
                   f"fill='{colour}'/><text x='{legend_x + 14}' y='{height - 5}' "
                   f"font-size='11'>{esc(name)}</text>")
        legend_x += 24 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)


# --- lineage ----------------------------------------------------------------------------


@dataclass
class Graph:
    """Executions and artifacts, and the edges between them (input: artifact ->
    execution; output: execution -> artifact)."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)

    def execution(self, key: str, label: str, status: str = "", href: str = "") -> str:
        self.nodes.setdefault(key, {"kind": "execution", "label": label, "status": status,
                                    "href": href, "title": label})
        return key

    def artifact(self, uri: str, label: str, title: str = "", href: str = "") -> str:
        self.nodes.setdefault(uri, {"kind": "artifact", "label": label, "status": "",
                                    "href": href, "title": title or uri})
        return uri

    def edge(self, source: str, target: str) -> None:
        self.edges.add((source, target))


STATUS_FILL = {"succeeded": "#dafbe1", "cached": "#ddf4ff", "failed": "#ffebe9",
               "skipped": "#eaeef2", "running": "#fff8c5"}


def _fit(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 1] + "…"


LINEAGE_WIDTH = 1320      # the page's content width (main: 1400 less its padding, the frame)


def lineage(graph: Graph, title: str = "lineage", max_width: int = LINEAGE_WIDTH) -> str:
    """The graph drawn left to right in layers: each node in the layer after the nodes
    it comes from (its longest path from a source), executions as boxes coloured by
    status, artifacts as rounded boxes; a node with a link opens it. Layers that would
    not fit `max_width` wrap into bands one under the other (as many layers in each), so
    the picture fits the page at full size; an edge into a later band runs down the gap
    right of its source, along the gap between the bands and into its target from the
    left. A narrower window scales the whole drawing down (viewBox, max-width 100%)."""
    if not graph.nodes:
        return "<p class='muted'>No lineage recorded.</p>"
    incoming: dict[str, list[str]] = {key: [] for key in graph.nodes}
    for source, target in graph.edges:
        if source in graph.nodes and target in graph.nodes:
            incoming[target].append(source)
    column: dict[str, int] = {}

    def depth(key: str, seen: frozenset = frozenset()) -> int:
        if key in column:
            return column[key]
        if key in seen:
            return 0
        value = max((depth(p, seen | {key}) + 1 for p in incoming[key]), default=0)
        column[key] = value
        return value

    for key in graph.nodes:
        depth(key)
    columns: dict[int, list[str]] = {}
    for key in graph.nodes:        # insertion order: the order the caller added them
        columns.setdefault(column[key], []).append(key)
    box_w, box_h, gap_x, gap_y, gap_band, margin = 150, 34, 34, 12, 40, 8
    layers = max(columns) + 1
    edge_room = gap_x // 2 + 6               # each side, when edges run between bands
    fits = max(1, (max_width - 2 * (margin + edge_room) + gap_x) // (box_w + gap_x))
    bands = -(-layers // fits)
    per_band = -(-layers // bands)           # as even as can be: 12 layers, 7 fit -> 6 + 6
    band_rows = [max(len(columns.get(c, ())) for c in range(b * per_band,
                                                          min(layers, (b + 1) * per_band)))
                 for b in range(bands)]
    band_top = [margin + sum(band_rows[:b]) * (box_h + gap_y) - gap_y * b + gap_band * b
                for b in range(bands)]
    band_of = {key: column[key] // per_band for key in graph.nodes}
    side = margin + (edge_room if bands > 1 else 0)
    place: dict[str, tuple[float, float]] = {}
    for index, keys in columns.items():
        band = index // per_band
        for row, key in enumerate(keys):
            place[key] = (side + (index % per_band) * (box_w + gap_x),
                          band_top[band] + row * (box_h + gap_y))
    width = side * 2 + min(layers, per_band) * (box_w + gap_x) - gap_x
    height = band_top[-1] + band_rows[-1] * (box_h + gap_y) - gap_y + margin
    out = [f"<svg class='chart lineage' role='img' xmlns='http://www.w3.org/2000/svg' "
           f"width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
           f"style='max-width:100%;height:auto' aria-label='{esc(title)}'><defs>"
           "<marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
           "markerHeight='7' orient='auto-start-reverse'><path d='M0,0L10,5L0,10z' "
           "fill='#8c959f'/></marker></defs>"]
    crossing = 0
    for source, target in sorted(graph.edges):
        if source not in place or target not in place:
            continue
        (x1, y1), (x2, y2) = place[source], place[target]
        x1, y1, x2, y2 = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
        if band_of[target] > band_of[source]:
            # down the gap right of the source, along the gap under the source's band,
            # down the gap left of the target; a little apart from the other such edges
            shift = (crossing % 5) * 4 - 8
            crossing += 1
            band = band_of[target]
            lane = band_top[band] - gap_band / 2 + shift
            right, left = x1 + gap_x / 2 + shift / 2, x2 - gap_x / 2 + shift / 2
            d = (f"M{x1:.0f},{y1:.0f} H{right:.0f} V{lane:.0f} H{left:.0f} V{y2:.0f} "
                 f"H{x2:.0f}")
        else:
            bend = max(20.0, (x2 - x1) / 2)
            d = (f"M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} {x2 - bend:.0f},{y2:.0f} "
                 f"{x2:.0f},{y2:.0f}")
        out.append(f"<path class='edge' d='{d}' fill='none' stroke='#8c959f' "
                   "stroke-width='1.3' marker-end='url(#arrow)'/>")
    for key, node in graph.nodes.items():
        x, y = place[key]
        is_execution = node["kind"] == "execution"
        fill = STATUS_FILL.get(node["status"], "#f6f8fa") if is_execution else "#fff"
        radius = 3 if is_execution else 14
        # an artifact "name: Type" on two lines (name, then type); an execution's status
        label, second = node["label"], node["status"] or (
            "execution" if is_execution else "artifact")
        if not is_execution and ": " in label:
            label, second = label.split(": ", 1)
        label, second = _fit(label, 22), _fit(second, 26)
        shape = (f"<g class='node {node['kind']}' data-key='{esc(key)}'><title>{esc(node['title'])}"
                 f"</title><rect x='{x}' y='{y}' width='{box_w}' height='{box_h}' rx='{radius}' "
                 f"fill='{fill}' stroke='{'#57606a' if is_execution else '#0969da'}'/>"
                 f"<text x='{x + box_w / 2}' y='{y + 14}' font-size='11.5' text-anchor='middle' "
                 f"font-weight='{600 if is_execution else 400}'>{esc(label)}</text>"
                 f"<text x='{x + box_w / 2}' y='{y + 27}' font-size='10' text-anchor='middle' "
                 f"fill='#656d76'>{esc(second)}"
                 "</text></g>")
        out.append(f"<a href='{esc(node['href'])}'>{shape}</a>" if node["href"] else shape)
    out.append("</svg>")
    return "".join(out)


# --- confusion matrices -----------------------------------------------------------------


def confusion(matrix: list[list[int]], classes: list[str], title: str) -> str:
    """A confusion matrix (rows: the true class, columns: predicted) as a table whose
    cells are shaded by their share of the row: the diagonal green, mistakes red."""
    head = "".join(f"<th title='predicted {esc(c)}'>{esc(c)}</th>" for c in classes)
    rows = []
    for i, name in enumerate(classes):
        total = sum(matrix[i]) or 1
        cells = []
        for j, count in enumerate(matrix[i]):
            share = count / total
            colour = f"rgba(26,127,55,{share:.2f})" if i == j else f"rgba(207,34,46,{share:.2f})"
            cells.append(f"<td style='background:{colour}' title='true {esc(name)}, predicted "
                         f"{esc(classes[j])}: {count}'>{count}</td>")
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return (f"<div><h3>{esc(title)}</h3><table class='cm'><thead><tr><th>true \\ predicted</th>"
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
