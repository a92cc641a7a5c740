"""`imgpipe serve` given arguments that cannot work: a port or host that cannot be
listened on is one line and exit 2 before any model is loaded, and an IPv6 address is
written as a URL writes it. Against a real server (uvicorn in a thread, or the
`imgpipe serve` process) on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from pipeline import serve
from tests import ROOT
from tests import serve_models as sm


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp_module")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    reg = sm.registry_with(str(work / "serving"), str(work), favourites=(0,))
    reg.set_alias("pets:1", "production")
    return reg


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", *args], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


# --- item 13: arguments checked before any model is loaded -----------------------------


@pytest.fixture
def busy_port():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    yield str(holder.getsockname()[1])
    holder.close()


@pytest.mark.parametrize("case", ["port 70000", "port -1", "port http", "port busy",
                                  "host unknown"])
def test_a_port_or_host_that_cannot_work_is_one_line_and_exit_2_before_loading(
        registry, busy_port, capsys, case):
    from pipeline import cli

    args = {"port 70000": ["--port", "70000"], "port -1": ["--port", "-1"],
            "port http": ["--port", "http"], "port busy": ["--port", busy_port],
            "host unknown": ["--host", "no-such-host.invalid", "--port", "0"]}[case]
    started = time.monotonic()
    code = cli.main(["serve", "--registry", registry.root, *args])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert ("--port" in err) if case.startswith("port") else ("--host" in err), err
    assert "loaded" not in out + err, out + err          # checked before any model loads
    assert time.monotonic() - started < 5


# --- item 19: IPv6 addresses in URLs ---------------------------------------------------


@pytest.mark.parametrize("host, shown", [("::1", "[::1]"), ("[::1]", "[::1]"),
                                         ("127.0.0.1", "127.0.0.1")])
def test_the_address_is_written_as_a_url(registry, host, shown):
    with serve.Running(serve.Options(registry.root, host=host, poll=3600,
                                     request_log=False)) as url:
        assert re.fullmatch(rf"http://{re.escape(shown)}:\d+", url), url
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/v1/models/pets").status_code == 200


def test_serve_on_ipv6_says_a_url_a_client_can_use(registry):
    process = _start(["--registry", registry.root, "--host", "::1", "--port", "0", "--json"])
    try:
        info = json.loads(process.stdout.readline())
        assert re.fullmatch(r"http://\[::1\]:\d+", info["url"]), info
        with httpx.Client(base_url=info["url"], timeout=60) as client:
            assert client.get("/v1/models/pets").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert f"listening on {info['url']} " in err, err
