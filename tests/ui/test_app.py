"""`imgpipe ui`'s pages and actions under FastAPI's TestClient, on a runs folder and a
registry made by the product's own code (tests/ui/conftest.py)."""

from __future__ import annotations

import re

import pytest

from pipeline import cli
from pipeline.cli import common
from tests.fixtures import one_line_error, run_cli


def _csrf(page: str) -> str:
    return re.search(r"name='csrf' value='([^']+)'", page).group(1)


def test_runs_list_filters_and_pages(client, world, monkeypatch):
    from pipeline.ui import runs

    page = client.get("/runs")
    assert page.status_code == 200
    for run_id in world.run_ids:
        assert f"/runs/{run_id}" in page.text
    assert "4 in all" in page.text and "<option value='other'>" in page.text
    only = client.get("/runs", params={"pipeline": "other"}).text
    assert only.count("<tr class=''>") == 1 and "1 in all" in only
    failed = client.get("/runs", params={"status": "failed"}).text
    assert "1 in all" in failed and "failed at consume" in failed
    monkeypatch.setattr(runs, "PER_PAGE", 3)
    first, second = client.get("/runs").text, client.get("/runs", params={"page": 2}).text
    assert "page 1 of 2" in first and "rel='next'" in first
    assert second.count("<tr class=''>") == 1 and "rel='prev'" in second


def test_a_run_page_has_its_steps_lineage_and_report(client, world):
    cached = world.run_ids[-2]                 # the second run: both steps reused
    page = client.get(f"/runs/{cached}").text
    assert "id='step-produce'" in page and "id='step-consume'" in page
    assert "reused execution" in page and ">cached<" in page
    lineage = page[page.index("id='lineage'"):]
    assert "<svg" in lineage and lineage.count("class='node execution'") == 2
    assert lineage.count("class='node artifact'") == 2 and "class='edge'" in lineage
    assert f"src='/runs/{cached}/report'" in page
    report = client.get(f"/runs/{cached}/report")
    assert report.status_code == 200 and "<h1>Run " in report.text
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert client.get("/runs/nosuchrun").status_code == 404
    assert client.get("/runs/..%2F..%2Fetc/report").status_code == 404


def test_models_pages_plot_versions_and_compare_them(client, world):
    index = client.get("/models").text
    assert "/models/m" in index and "production → 1" in index
    model = client.get("/models/m").text
    assert "metrics by version" in model and "<polyline" in model
    assert "2026-12-03" in model and "not blessed" not in model
    version = client.get("/models/m/1").text
    assert "first release" in version and "id='audit'" in version
    assert "<svg" in version[version.index("id='lineage'"):]       # back to the run
    assert f"/runs/{world.first}#step-consume" in version
    compare = client.get("/models/m/compare", params={"left": 1, "right": 2}).text
    assert compare.count("<table class='cm'>") == 2
    assert "2 answered differently" in compare and "2 fixed" in compare
    assert ">e0<" in compare and ">e2<" in compare and ">e1<" not in compare
    assert "+0.1000" in compare                      # accuracy 0.8 -> 0.9
    assert client.get("/models/m/compare", params={"left": "x"}).status_code == 400
    assert client.get("/models/nosuch").status_code == 404
    assert client.get("/models/m/9").status_code == 404


def test_promote_writes_the_clis_ledger_entry_through_the_clis_function(client, world,
                                                                          monkeypatch, capsys):
    calls = []
    real = common.promote

    def spy(*args, **kwargs):
        calls.append(args[1:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(common, "promote", spy)
    page = client.get("/models/m/2").text
    done = client.post("/models/m/promote", data={
        "csrf": _csrf(page), "version": "2", "alias": "production", "reason": "better on eval"},
        follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/models/m/2?note=")
    shown = client.get(done.headers["location"]).text
    assert "m@production: version 1 -&gt; version 2 (promote" in shown
    entry = world.registry.audit("m")[-1]
    assert (entry["action"], entry["alias"], entry["from"], entry["to"], entry["reason"]) == \
        ("promote", "production", 1, 2, "better on eval")
    code, out, _ = run_cli(capsys, "models", "promote", "m:3", "--to", "production",
                           "--reason", "from the CLI", "--registry", world.registry.root)
    assert code == 0 and calls == [("m:2", "production")]
    # the commands call the very functions the console calls
    from pipeline.cli import canary as canary_cli
    from pipeline.cli import models as models_cli

    assert (models_cli.promote, models_cli.rollback, canary_cli.end_canary) == \
        (real, common.rollback, common.end_canary)
    cli_entry = world.registry.audit("m")[-1]
    assert set(cli_entry) == set(entry)                     # the same shape of entry
    code, out, _ = run_cli(capsys, "models", "show", "m:2", "--registry", world.registry.root)
    assert "promote @production 1 -> 2" in out and "better on eval" in out


def test_an_action_needs_csrf_a_reason_and_passes_the_clis_refusals(client, world):
    page = client.get("/models/m/3").text
    token = _csrf(page)
    form = {"version": "3", "alias": "production", "reason": "x"}
    assert client.post("/models/m/promote", data=form).status_code == 403
    assert client.post("/models/m/promote", data=dict(form, csrf="forged")).status_code == 403
    elsewhere = client.post("/models/m/promote", data=dict(form, csrf=token),
                            headers={"Origin": "http://evil.example"})
    assert elsewhere.status_code == 403 and "not from this console" in elsewhere.text
    blank = client.post("/models/m/promote", data=dict(form, csrf=token, reason="  "))
    assert blank.status_code == 400 and "give a reason" in blank.text
    typo = client.post("/models/m/promote", data=dict(form, csrf=token, alias="prodution"))
    assert typo.status_code == 409 and "pass --create to add it" in typo.text
    assert world.registry.aliases("m") == {"production": 1, "staging": 2}
    assert client.get("/runs", headers={"Host": "evil.example"}).status_code == 421


def test_rollback_and_ending_a_canary(client, world):
    token = client.guard.csrf
    serving = client.get("/serving/m").text
    assert "candidate <b>staging</b> = version 2" in serving
    assert "<table class='arms'>" in serving and "latency p99 (ms)" in serving
    assert "<table class='checks'>" in serving and "error rate" in serving
    stale = client.post("/serving/m/end-canary", data={
        "csrf": token, "candidate": "staging", "baseline": "production", "decision": "revert",
        "candidate_version": "3", "baseline_version": "1", "reason": "bad"})
    assert stale.status_code == 409 and "aliases moved" in stale.text
    done = client.post("/serving/m/end-canary", data={
        "csrf": token, "candidate": "staging", "baseline": "production", "decision": "revert",
        "candidate_version": "2", "baseline_version": "1", "reason": "latency"},
        follow_redirects=False)
    assert done.status_code == 303
    entry = world.registry.audit("m")[-1]
    assert (entry["action"], entry["alias"], entry["to"], entry["reason"]) == \
        (common.CANARY_REVERT, "staging", 1, "latency")
    back = client.post("/models/m/rollback", data={"csrf": token, "alias": "staging",
                                                   "reason": "undo"}, follow_redirects=False)
    assert back.status_code == 303 and world.registry.aliases("m")["staging"] == 2
    assert world.registry.audit("m")[-1]["action"] == "rollback"


def test_with_a_token_every_request_needs_it():
    from fastapi.testclient import TestClient

    from components.registry.versions import Registry
    from pipeline.ui.app import build
    from pipeline.ui.security import Guard

    guard = Guard("a-long-secret", None)
    client = TestClient(build("/nonexistent", Registry("/nonexistent"), guard))
    assert client.get("/runs", follow_redirects=False).headers["location"] == \
        "/login?next=/runs"
    assert client.post("/models/m/promote", data={"csrf": guard.csrf}).status_code == 401
    assert client.get("/serving", headers={"Authorization": "Bearer a-long-secret"}
                      ).status_code == 200
    assert client.get("/serving", headers={"Authorization": "Bearer wrong"},
                      follow_redirects=False).status_code == 303
    login = client.post("/login", data={"csrf": guard.csrf, "token": "a-long-secret",
                                        "next": "/serving"}, follow_redirects=False)
    assert login.status_code == 303 and "a-long-secret" not in login.headers["set-cookie"]
    assert client.get("/serving").status_code == 200            # the cookie now
    wrong = TestClient(build("/nonexistent", Registry("/nonexistent"), guard))
    assert "failed=1" in wrong.post("/login", data={"csrf": guard.csrf, "token": "nope"},
                                    follow_redirects=False).headers["location"]


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 would let other machines reach the console"),
    (["--host", "0.0.0.0", "--token", "short"], "give at least 8"),
    (["--runs-dir", "{tmp}/nothing"], "--runs-dir {tmp}/nothing: no such folder"),
    (["--registry", "{tmp}/nothing"], "no model registry at {tmp}/nothing"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, world, monkeypatch, args, message):
    monkeypatch.delenv("IMGPIPE_UI_TOKEN", raising=False)
    tmp = str(world.tmp)
    argv = ["ui", "--runs-dir", world.runs, "--registry", world.registry.root]
    err = one_line_error(capsys, argv + [a.format(tmp=tmp) for a in args])
    assert message.format(tmp=tmp) in err


def test_an_unreadable_registry_is_one_line(capsys, world, monkeypatch):
    from components.registry.versions import Registry

    def refused(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Registry, "models", refused)
    err = one_line_error(capsys, ["ui", "--runs-dir", world.runs, "--registry",
                                  world.registry.root])
    assert "cannot read the registry" in err and "Permission denied" in err


def test_page_runs_reads_one_page(world):
    from pipeline.metadata import METADATA_FILE, MetadataStore

    store = MetadataStore(f"{world.runs}/{METADATA_FILE}", read_only=True)
    rows, total = store.page_runs(pipeline="base", offset=1, limit=1)
    assert total == 3 and [r["id"] for r in rows] == [world.run_ids[2]]   # [0]: other
    assert store.pipelines() == ["base", "other"]
    assert set(store.executions_of(world.run_ids[:2])) == set(world.run_ids[:2])
    assert cli.build_parser()     # the ui command registers beside the others


def test_a_long_lineage_wraps_to_the_pages_width():
    from pipeline.ui import svg

    graph = svg.Graph()
    for i in range(20):                      # a chain of 20 layers: 3 bands of 7
        graph.execution(f"e{i}", f"step {i}", "succeeded")
        if i:
            graph.edge(f"e{i - 1}", f"e{i}")
    drawn = svg.lineage(graph)
    width = int(re.search(r"width='(\d+)'", drawn).group(1))
    assert width <= svg.LINEAGE_WIDTH and "max-width:100%" in drawn
    assert drawn.count("class='node execution'") == 20 and drawn.count("class='edge'") == 19
    ys = {float(y) for y in re.findall(r"<rect x='[\d.]+' y='([\d.]+)'", drawn)}
    assert len(ys) == 3                      # three bands, one row each
    assert drawn.count(" V") == 2 * 2        # two edges run down into the next band


def test_the_serving_page_reads_each_batch_file_once(client, world):
    import datetime as dt

    from pipeline.serve import request_log
    from pipeline.serve.request_log import RequestLog

    logs = client.app.state.console.logs
    first = client.get("/serving/m").text
    files = logs.reads
    assert files >= 1 and "240 request(s)" in first
    now = dt.datetime.now(dt.timezone.utc)
    entries, times = logs.read(world.registry.root, "m", now - dt.timedelta(hours=24), now)
    assert entries == request_log.read(world.registry.root, "m",
                                       now - dt.timedelta(hours=24), now)
    assert times == sorted(times) and len(times) == 240
    assert "240 request(s)" in client.get("/serving/m").text and logs.reads == files
    with RequestLog(world.registry.root, flush_seconds=3600) as log:      # a new batch
        log.record("m", request_log.make_entry(
            model="m", version=1, label="production", arm="baseline", status=500,
            latency_ms=30.0, instances=1, id="late", images=None,
            time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")))
    assert "241 request(s)" in client.get("/serving/m").text and logs.reads == files + 1
    old = client.get("/serving/m", params={"window": "1h"}).text     # still from the cache
    assert "241 request(s)" in old and logs.reads == files + 1
