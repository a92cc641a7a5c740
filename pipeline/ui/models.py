"""The Models pages: each model's versions (metrics, blessing, aliases, age, spans),
its metric-by-version plot, a version's card, audit trail and lineage, and two
versions compared (`registry_views.diff`, the evaluations' confusion matrices and the
eval examples the two got wrong differently). Version folders never change once
pushed, so their cards are read once per process (`Cards`)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from components import artifacts
from components.artifacts import card_field
from components.errors import ImgpipeError
from components.io import fileio
from components.registry.versions import Registry, Version
from pipeline import registry_views
from pipeline.metadata import METADATA_FILE, MetadataStore
from pipeline.ui import svg
from pipeline.ui.layout import Raw, esc, kv, link, pager, table, tags, verdict

PER_PAGE = 50
PLOTTED = ("accuracy", "top_k_accuracy", "macro_f1", "balanced_accuracy")
MISTAKES_SHOWN = 40


@dataclass(frozen=True)
class _Read(Version):
    """A version whose card was already read."""

    read: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def card(self) -> dict[str, Any]:  # type: ignore[override]
        return self.read


class Cards:
    """Model cards by version folder, read once: a pushed version is never rewritten."""

    def __init__(self) -> None:
        self._cards: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def of(self, version: Version) -> Version:
        with self._lock:
            known = self._cards.get(version.path)
        if known is None:
            known = version.card          # a RegistryError when damaged: not kept
            with self._lock:
                self._cards[version.path] = known
        return _Read(version.name, version.version, version.path, known)


def _rows(registry: Registry, cards: Cards, name: str) -> list[dict[str, Any]]:
    """One row per version (oldest first), as `models list` has them, plus the spans."""
    aliases = registry.aliases(name)
    rows = []
    for version in registry.versions(name):
        try:
            read = cards.of(version)
        except ImgpipeError as exc:
            rows.append({"ref": version.ref, "version": version.version, "error": str(exc),
                         "aliases": sorted(a for a, v in aliases.items()
                                           if v == version.version), "card": {}})
            continue
        row = registry_views.version_row(read, aliases)
        row.update(card=read.card, spans=card_field(read.card, "data.spans"))
        rows.append(row)
    return rows


def models_index(registry: Registry, cards: Cards) -> tuple[str, str]:
    rows = []
    for name in registry.models():
        try:
            aliases = registry.aliases(name)
            versions = registry.versions(name)
        except ImgpipeError as exc:
            rows.append([name, "-", "-", verdict(str(exc), False), "-"])
            continue
        newest = versions[-1] if versions else None
        accuracy = None
        if newest is not None:
            try:
                accuracy = card_field(cards.of(newest).card, "metrics.accuracy")
            except ImgpipeError:
                pass
        rows.append([link(f"/models/{name}", name), len(versions),
                     newest.version if newest else "-",
                     tags(f"{a} → {v}" for a, v in sorted(aliases.items())), accuracy])
    body = table(["model", "versions", "newest", "aliases", "newest accuracy"], rows) if rows \
        else "<p class='muted'>Nothing pushed to this registry yet.</p>"
    return f"Models in {registry.root}", body


def _plot(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in PLOTTED if any(isinstance(card_field(r["card"], f"metrics.{k}"),
                                                (int, float)) for r in rows)]
    series = {k: [(f"v{r['version']}", card_field(r["card"], f"metrics.{k}"))
                  for r in rows if r.get("version") is not None] for k in keys}
    return svg.line_chart(series, "metrics by version", width=900, height=240)


def model_page(registry: Registry, cards: Cards, name: str, page: int, csrf: str
               ) -> tuple[str, str]:
    rows = _rows(registry, cards, name)
    aliases = registry.aliases(name)
    page = max(1, page)
    newest_first = list(reversed(rows))
    shown = newest_first[(page - 1) * PER_PAGE: page * PER_PAGE]
    table_rows = []
    for row in shown:
        ref = link(f"/models/{name}/{row['version']}", row["ref"])
        if row.get("error"):
            table_rows.append([ref, verdict(row["error"], False), "", "", "", "", "", "", ""])
            continue
        spans = row.get("spans") or []
        table_rows.append([
            ref, row["accuracy"], row["top_k_accuracy"],
            int(row["examples"]) if isinstance(row["examples"], float) else row["examples"],
            verdict("blessed" if row["blessed"] else "not blessed", bool(row["blessed"])),
            verdict("passed" if row["infra"] else "failed", bool(row["infra"])),
            tags(row["aliases"]), row["age"],
            spans[0] if len(spans) == 1 else f"{spans[0]}..{spans[-1]} ({len(spans)})"
            if spans else "-",
            link(f"/runs/{row['run_id']}", row["run_id"]) if row.get("run_id") else "-"])
    numbers = [r["version"] for r in newest_first]
    left, right = (numbers[1], numbers[0]) if len(numbers) > 1 else (None, None)
    body = "<h2>Aliases</h2>" + (table(["alias", "version"], [
        [a, link(f"/models/{name}/{v}", f"{name}:{v}")] for a, v in sorted(aliases.items())])
        if aliases else "<p class='muted'>No aliases yet.</p>")
    body += "<div class='cols'>" + "".join(rollback_form(name, a, csrf)
                                           for a in sorted(aliases)) + "</div>"
    body += "<h2>Metrics by version</h2>" + _plot(rows)
    if left is not None:
        body += (f"<h2>Compare</h2><form method='get' action='/models/{esc(name)}/compare'>"
                 f"<label>version <input type='text' name='left' value='{left}' size='5'>"
                 f"</label> with <label>version <input type='text' name='right' "
                 f"value='{right}' size='5'></label> <button type='submit'>compare</button>"
                 "</form>")
    body += "<h2>Versions</h2>" + pager(f"/models/{name}", {}, page, PER_PAGE, len(rows))
    body += table(["version", "accuracy", "top-k", "eval examples", "blessing", "infra",
                   "aliases", "age", "spans trained on", "run"], table_rows) \
        if table_rows else "<p class='muted'>No versions.</p>"
    return f"Model {name}", body


def rollback_form(name: str, alias: str, csrf: str) -> str:
    return (f"<form class='box' method='post' action='/models/{esc(name)}/rollback'>"
            f"<b>Roll back {esc(name)}@{esc(alias)}</b> to its previous holder"
            f"<input type='hidden' name='csrf' value='{esc(csrf)}'>"
            f"<input type='hidden' name='alias' value='{esc(alias)}'>"
            "<label>reason <input type='text' name='reason' required></label>"
            "<button class='danger' type='submit'>roll back</button></form>")


def promote_form(name: str, version: int, aliases: list[str], csrf: str) -> str:
    choices = "".join(f"<option value='{esc(a)}'>" for a in aliases)
    return (f"<form class='box' method='post' action='/models/{esc(name)}/promote'>"
            f"<b>Promote {esc(name)}:{version}</b>"
            f"<input type='hidden' name='csrf' value='{esc(csrf)}'>"
            f"<input type='hidden' name='version' value='{version}'>"
            "<label>alias <input type='text' name='alias' list='aliases' value='production' "
            f"required><datalist id='aliases'>{choices}</datalist></label>"
            "<label>reason <input type='text' name='reason' required></label>"
            "<label><input type='checkbox' name='create' value='1'> create a new alias</label>"
            "<label><input type='checkbox' name='force' value='1'> force (not blessed; "
            "recorded)</label><button type='submit'>promote</button></form>")


def audit_rows(entries: list[dict[str, Any]]) -> list[list[Any]]:
    def held(value: Any) -> str:
        return "(none)" if value is None else str(value)

    return [[e.get("time", "?"), e.get("who", "?"), e.get("action", "promote"),
             "@" + str(e.get("alias")), f"{held(e.get('from'))} → {held(e.get('to'))}",
             ("forced; " if e.get("force") and e.get("action") != "rollback" else "")
             + (f"canary {e['traffic']}%; " if "traffic" in e else "")
             + (e.get("reason") or "")] for e in reversed(entries)]


def version_graph(runs_dir: str, card: dict[str, Any], ref: str) -> svg.Graph:
    """The pushed version back to the run that trained it and its data: the upstream
    of its model artifact in the runs folder's metadata store."""
    graph = svg.Graph()
    path = os.path.join(runs_dir, METADATA_FILE)
    model_uri = card_field(card, "artifacts.model")
    if not model_uri or not os.path.isfile(path):
        return graph
    metadata = MetadataStore(path, read_only=True)
    frontier, seen = [model_uri], {model_uri}
    graph.artifact(model_uri, "model", model_uri)
    sources = []
    while frontier:
        uri = frontier.pop(0)
        producer = metadata.producer_of(uri)
        if producer is None:
            continue
        key = graph.execution(f"execution:{producer.id}", producer.step, producer.status,
                              f"/runs/{producer.run_id}#step-{producer.step}")
        graph.edge(key, uri)
        inputs = metadata.artifacts_of(producer.id, "input")
        if not inputs:
            sources.append(key)
        for art in inputs:
            graph.artifact(art["uri"], f"{art['name']}: {art['type']}",
                           f"{art['type']} {art['uri']}")
            graph.edge(art["uri"], key)
            if art["uri"] not in seen:
                seen.add(art["uri"])
                frontier.append(art["uri"])
    if len(graph.nodes) > 1:
        spans = card_field(card, "data.spans")
        data = graph.artifact("data:", "data: " + (", ".join(spans) if spans else "source"),
                              f"data fingerprint {json.dumps(card_field(card, 'data.fingerprint'))}")
        for key in sources:
            graph.edge(data, key)
    graph.execution("registry:" + ref, ref, "pushed")
    graph.edge(model_uri, "registry:" + ref)
    return graph


def version_page(registry: Registry, cards: Cards, runs_dir: str, name: str, number_: int,
                 csrf: str) -> tuple[str, str]:
    version = cards.of(registry.get(name, number_))
    card = version.card
    aliases = registry.aliases(name)
    held = sorted(a for a, v in aliases.items() if v == number_)
    metrics = card.get("metrics") or {}
    facts = [("aliases", tags(held) if held else "-"), ("path", version.path),
             ("model", f"{card_field(card, 'model.kind') or '-'}, "
                       f"{card_field(card, 'model.trainable_params') or '-'} params"),
             ("pushed", card.get("pushed") or "-"),
             ("run", link(f"/runs/{card['run_id']}", card["run_id"]) if card.get("run_id")
              else "-"),
             ("blessing", verdict(("blessed" if card_field(card, "blessing.blessed") else
                                   "NOT blessed") + f" ({card_field(card, 'blessing.reason')})",
                                  bool(card_field(card, "blessing.blessed")))),
             ("infra validation", card_field(card, "infra_validation.reason") or "-"),
             ("data", f"{card_field(card, 'data.examples') or '?'} examples, classes "
                      f"{', '.join(card_field(card, 'data.classes') or []) or '-'}"),
             ("spans trained on", ", ".join(card_field(card, "data.spans") or []) or "-"),
             ("evaluated on", ", ".join(card_field(card, "data.evaluated_on") or []) or "-"),
             ("package", f"{card.get('package_version') or '-'} git "
                         f"{card.get('git_commit') or '-'}")]
    body = kv(facts)
    body += "<h2>Metrics</h2>" + table(["metric", "value"], [[k, v] for k, v in
                                                            sorted(metrics.items())])
    checks = card_field(card, "blessing.checks", [])
    if isinstance(checks, list) and checks:
        body += "<h3>Blessing checks</h3>" + table(["check", "value", "verdict", "detail"], [
            [c.get("check"), c.get("value"), c.get("verdict"), c.get("detail", "")]
            for c in checks if isinstance(c, dict)])
    per_class = card.get("per_class") or {}
    if per_class:
        body += "<h3>Per class</h3>" + table(["class", "precision", "recall", "f1"], [
            [c, m.get("precision"), m.get("recall"), m.get("f1_score")]
            for c, m in sorted(per_class.items()) if isinstance(m, dict)])
    entries = [e for e in registry.audit(name) if number_ in (e.get("to"), e.get("from"))]
    body += "<h2 id='audit'>Audit trail</h2>" + (table(
        ["time", "who", "action", "alias", "version", "reason"], audit_rows(entries), css="audit")
        if entries else "<p class='muted'>No alias has pointed at this version.</p>")
    body += "<h2>Actions</h2>" + promote_form(name, number_, sorted(aliases), csrf)
    graph = version_graph(runs_dir, card, version.ref)
    body += "<h2 id='lineage'>Lineage</h2>" + (svg.lineage(graph, f"lineage of {version.ref}")
                                               if len(graph.nodes) > 2 else
                                               f"<p class='muted'>The runs folder {esc(runs_dir)} "
                                               "has no record of this version's model.</p>")
    return f"{version.ref}", body


def _evaluation(card: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    uri = card_field(card, "artifacts.evaluation")
    return artifacts.ModelEvaluation.load(uri), uri


def _predictions(uri: str | None) -> dict[str, dict[str, Any]] | None:
    if not uri:
        return None
    path = fileio.join(uri, artifacts.ModelEvaluation.PREDICTIONS)
    try:
        text = fileio.read_text(path)
    except (OSError, ValueError):
        return None
    rows = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "id" in row:
            rows[str(row["id"])] = row
    return rows


def _change(value: Any) -> Raw:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return Raw("-")
    css = "ok" if value > 0 else "bad" if value < 0 else "muted"
    return Raw(f"<span class='{css}'>{value:+.4f}</span>")


def compare_page(registry: Registry, name: str, left: int, right: int) -> tuple[str, str]:
    diff = registry_views.diff(registry, f"{name}:{left}", f"{name}:{right}")
    a, b = registry.get(name, left).card, registry.get(name, right).card
    body = f"<p>{link(f'/models/{name}/{left}', diff['left'])} against " \
           f"{link(f'/models/{name}/{right}', diff['right'])}</p>"
    if diff["data"]["left"] != diff["data"]["right"]:
        body += ("<div class='note bad'>The two versions come from different data: the metric "
                 "changes compare different eval sets, not only the models.</div>")
    body += "<h2>Metrics</h2>" + table(["metric", diff["left"], diff["right"], "change"], [
        [k, r["left"], r["right"], _change(r["change"])] for k, r in diff["metrics"].items()],
        css="metrics")
    if diff["per_class"]:
        body += "<h2>Per class</h2>" + table(
            ["class", f"recall {diff['left']}", f"recall {diff['right']}",
             f"precision {diff['left']}", f"precision {diff['right']}", "f1 change"],
            [[c, r["recall"]["left"], r["recall"]["right"], r["precision"]["left"],
              r["precision"]["right"], _change(r["f1_score"]["change"])]
             for c, r in diff["per_class"].items()])
    if diff["config_changes"]:
        body += "<h2>Config changes</h2>" + table(["key", diff["left"], diff["right"]], [
            [k, json.dumps(v["left"]), json.dumps(v["right"])]
            for k, v in diff["config_changes"].items()])
    (eval_a, uri_a), (eval_b, uri_b) = _evaluation(a), _evaluation(b)
    matrices = []
    for evaluation, ref in ((eval_a, diff["left"]), (eval_b, diff["right"])):
        matrix = ((evaluation or {}).get("metrics") or {}).get("confusion")
        vocabulary = (evaluation or {}).get("label_vocabulary")
        if matrix and vocabulary:
            matrices.append(svg.confusion(matrix, list(vocabulary), ref))
        else:
            matrices.append(f"<div><h3>{esc(ref)}</h3><p class='muted'>no confusion matrix "
                            "recorded (its evaluation is not at hand)</p></div>")
    body += "<h2>Confusion matrices</h2><div class='cols'>" + "".join(matrices) + "</div>"
    body += "<h2>Mistakes that differ</h2>" + _mistakes(_predictions(uri_a),
                                                        _predictions(uri_b), diff)
    return f"Compare {name}:{left} and {name}:{right}", body


def _mistakes(left: dict[str, Any] | None, right: dict[str, Any] | None,
              diff: dict[str, Any]) -> str:
    if left is None or right is None:
        return ("<p class='muted'>Not recorded: the per-example predictions of both "
                "evaluations are needed.</p>")
    common = sorted(set(left) & set(right))
    differ = [i for i in common if left[i].get("predicted") != right[i].get("predicted")
              and (left[i].get("predicted") != left[i].get("label")
                   or right[i].get("predicted") != right[i].get("label"))]
    fixed = sum(1 for i in differ if right[i].get("predicted") == right[i].get("label"))
    broken = sum(1 for i in differ if left[i].get("predicted") == left[i].get("label"))
    out = (f"<p>{len(common):,} eval examples scored by both; {len(differ):,} answered "
           f"differently where one was wrong: <span class='ok'>{fixed:,} fixed</span> by "
           f"{esc(diff['right'])}, <span class='bad'>{broken:,} broken</span>, "
           f"{len(differ) - fixed - broken:,} wrong both ways.</p>")
    rows = [[i, left[i].get("label"), left[i].get("predicted"), right[i].get("predicted"),
             verdict("fixed", True) if right[i].get("predicted") == right[i].get("label") else
             verdict("broken", False) if left[i].get("predicted") == left[i].get("label") else
             verdict("both wrong", None)] for i in differ[:MISTAKES_SHOWN]]
    if rows:
        out += table(["example", "true", diff["left"], diff["right"], ""], rows, css="mistakes")
        if len(differ) > MISTAKES_SHOWN:
            out += f"<p class='muted'>the first {MISTAKES_SHOWN} of {len(differ):,}</p>"
    return out


def number_or_none(text: str | None) -> int | None:
    try:
        return int(str(text).strip().lstrip("v"))
    except (TypeError, ValueError):
        return None

