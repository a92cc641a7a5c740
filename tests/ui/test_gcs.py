"""`imgpipe ui` on a registry in gs://, against the fake GCS server (tests/conftest.py's
on_fake, tests/gcs_server.py): versions pushed there and their request log, read as the
CLI opens the registry."""

from __future__ import annotations

import datetime as dt
import os

from tests import fixtures
from tests.ui.conftest import _card, _traffic


def test_the_console_reads_a_registry_on_gcs(on_fake, tmp_path):
    from fastapi.testclient import TestClient

    from components.registry.versions import Registry
    from pipeline import cli
    from pipeline.cli.common import _registry
    from pipeline.serve.request_log import RequestLog
    from pipeline.ui.app import build
    from pipeline.ui.security import Guard

    root = f"{on_fake}/ui-registry-{os.getpid()}"
    args = cli.build_parser().parse_args(["ui", "--registry", root])
    pushed = Registry(root)
    saved = fixtures.fake_saved_model(tmp_path / "sm")
    for number, accuracy in ((1, 0.8), (2, 0.9)):
        pushed.push("m", saved, _card(accuracy, None, None, f"run-{number}",
                                      [f"2026-12-0{number}"]))
    pushed.set_alias("m:1", "production", "first release")
    pushed.set_alias("m:2", "staging", "next one")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)
    with RequestLog(root, flush_seconds=3600, max_lines=50) as log:
        for entry in (_traffic(60, 2, "candidate", start, 1, "staging")
                      + _traffic(60, 1, "baseline", start, 2, "production")):
            log.record("m", entry)

    registry = _registry(args)                       # as `imgpipe ui --registry gs://...`
    assert registry.root == root
    client = TestClient(build(str(tmp_path / "runs"), registry,
                              Guard(None, {"127.0.0.1:8080"})),
                        base_url="http://127.0.0.1:8080")
    index = client.get("/models")
    assert index.status_code == 200 and "/models/m" in index.text
    assert "production → 1" in index.text and "staging → 2" in index.text
    model = client.get("/models/m").text
    assert "/models/m/1" in model and "/models/m/2" in model and "2026-12-02" in model
    version = client.get("/models/m/2").text
    assert "next one" in version and root in version
    serving = client.get("/serving/m").text
    assert "120 request(s)" in serving and "3 file(s)" in serving   # 50 + 50 + 20 a batch
    logs = client.app.state.console.logs
    reads = logs.reads
    assert reads == 3 and "120 request(s)" in client.get("/serving/m").text
    assert logs.reads == reads                        # the objects' generations unchanged
