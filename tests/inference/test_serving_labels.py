"""Label moves a real TF Serving accepts (issue 32, defect 2): `imgpipe models
serving-config` writes a label moving onto a version the server has not loaded in two
phases (`components.inference.serving_config.rollout`), checked against a stand-in of TF Serving's
rule (server_core.cc `UpdateModelVersionLabelMap`) and, with `--server`, against TF
Serving's REST status served on 127.0.0.1."""

import json

import pytest

from components.inference import serving_config
from components.registry.versions import Registry
from pipeline import cli
from tests.fixtures import card, configs_by_name, fake_saved_model, parse_serving_config

class TFServing:
    """TF Serving's rules for the model configs it is given (server_core.cc), modelled
    conservatively. The first config loads its versions, then applies its labels. A
    later one is checked before anything of it loads (`UpdateModelVersionLabelMap`
    runs ahead of the new sources): every label must name a version that is AVAILABLE
    now (and that the config keeps); otherwise the whole config is refused, none of its
    versions load, and the server keeps serving the previous one. An accepted config's
    new versions load (`finish_loading`), the versions it no longer lists unload."""

    def __init__(self):
        self.states: dict[str, dict[int, str]] | None = None    # None: not started
        self.labels: dict[str, dict[str, int]] = {}
        self.given: list[str] = []
        self.refused: list[str] = []

    def available(self, name):
        return {v for v, s in (self.states or {}).get(name, {}).items() if s == "AVAILABLE"}

    def give(self, text: str) -> bool:
        if self.given and self.given[-1] == text:
            return True                   # a poll that finds the same file changes nothing
        self.given.append(text)
        wanted = {c.name: (set(c.model_version_policy.specific.versions),
                           dict(c.version_labels))
                  for c in parse_serving_config(text).model_config_list.config}
        first = self.states is None
        for name, (versions, labels) in wanted.items():
            for alias, number in labels.items():
                if number not in versions or not first and number not in \
                        self.available(name):
                    self.refused.append(f"{name}@{alias} -> {number}: version {number} is "
                                        "not AVAILABLE")
                    return False
        old = self.states or {}
        self.states = {name: {v: "AVAILABLE" if first or old.get(name, {}).get(v) == "AVAILABLE"
                              else "LOADING" for v in versions}
                       for name, (versions, _) in wanted.items()}
        self.labels = {name: labels for name, (_, labels) in wanted.items()}
        return True

    def finish_loading(self):
        for states in (self.states or {}).values():
            for v in states:
                states[v] = "AVAILABLE"


def _serving_config(root, target, *extra):
    return cli.main(["models", "serving-config", "--registry", root, "-o", str(target), *extra])


def test_label_moves_reach_a_server_polling_the_file_in_configs_it_accepts(tmp_path, capsys):
    """push + promote staging N -> N+1 (push.promote_to), promote production, rollback:
    each config written is one a real TF Serving reading the file accepts, and once the
    command was run again after the server loaded the new versions, the server's labels
    are the registry's aliases."""
    root, target = str(tmp_path / "serving"), tmp_path / "models.config"
    reg, src = Registry(root), fake_saved_model(tmp_path / "sm")
    server = TFServing()

    def settle(runs_needed):
        """Runs the command until the file is final (at most `runs_needed` runs), the
        server reading each file and loading its versions in between."""
        outputs = []
        for _ in range(runs_needed):
            assert _serving_config(root, target) == 0
            outputs.append(capsys.readouterr().out)
            assert server.give(target.read_text()), server.refused
            server.finish_loading()
        assert server.labels["m"] == reg.aliases("m")
        return outputs

    reg.push("m", src, card())
    reg.set_alias("m:1", "staging")
    reg.set_alias("m:1", "production")
    settle(1)                                        # the server starts with this file

    reg.push("m", src, card())                       # push with promote_to: staging
    reg.set_alias("m:2", "staging")
    first, second = settle(2)
    assert "phase 1 of 2" in first and "m@staging stays on 1 until m:2 is AVAILABLE" in first
    assert "run this command again once the server has loaded m:2" in first
    phase_one = configs_by_name(parse_serving_config(server.given[-2]))["m"]
    assert list(phase_one.model_version_policy.specific.versions) == [1, 2]
    assert dict(phase_one.version_labels) == {"production": 1, "staging": 1}
    assert "phase" not in second and "run this command again" not in second
    assert server.available("m") == {1, 2}

    reg.set_alias("m:2", "production")               # 2 is loaded: one config
    settle(1)
    assert server.available("m") == {2}

    reg.rollback("m", "production")                  # back to 1, no longer loaded
    first, _ = settle(2)
    assert "m@production stays on 2 until m:1 is AVAILABLE" in first
    assert server.labels["m"] == {"production": 1, "staging": 2}
    assert server.refused == []


def test_rollout_holds_moved_labels_and_leaves_out_new_ones():
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for name, versions, labels in (("m", [2, 3], {"production": 2, "staging": 3}),
                                   ("n", [1], {"production": 1})):
        entry = config.model_config_list.config.add(name=name, base_path=f"/r/{name}")
        entry.model_version_policy.specific.versions.extend(versions)
        entry.version_labels.update(labels)
    target = serving_config.ServingConfig(config)

    # a server starting with it takes it whole; one that has everything too
    assert serving_config.rollout(target, None).now is target
    assert not serving_config.rollout(target, {"m": {2, 3}, "n": {1}}).staged

    # m:3 not loaded (staging held on 1, kept loaded), n not served at all (a new model's
    # label is left out: TF Serving checks it against versions it does not have)
    plan = serving_config.rollout(target, {"m": {1, 2}},
                                  {"m": {"production": 2, "staging": 1}})
    assert plan.staged and plan.waiting == {"m": [3], "n": [1]}
    assert plan.now.models() == [
        {"name": "m", "base_path": "/r/m", "versions": [1, 2, 3],
         "labels": {"production": 2, "staging": 1}},
        {"name": "n", "base_path": "/r/n", "versions": [1], "labels": {}}]
    assert plan.held == ["m@staging stays on 1 until m:3 is AVAILABLE",
                         "n@production is left out until n:1 is AVAILABLE"]
    assert plan.final is target
    server = TFServing()
    server.give("model_config_list { config { name: 'm' base_path: '/r/m' "
                "model_version_policy { specific { versions: 1 versions: 2 } } "
                "version_labels { key: 'production' value: 2 } "
                "version_labels { key: 'staging' value: 1 } } }")
    assert not server.give(target.text())                 # what today's file would do
    assert server.give(plan.now.text()) and server.labels["m"] == {"production": 2,
                                                                  "staging": 1}
    assert not server.give(plan.final.text())             # too early: 3 is loading
    server.finish_loading()
    server.given.pop()                                    # the next poll reads it again
    assert server.give(plan.final.text()) and server.labels["m"]["staging"] == 3


class _StatusServer:
    """TF Serving's REST status (`GET /v1/models/NAME`) on 127.0.0.1, for a `TFServing`
    that reads the config file each time it is asked (as a server polling the file
    would between answers): a version it has just accepted is LOADING in the first
    answer and AVAILABLE from the next one, unless `stuck` (never) or `broken` (END with
    an error)."""

    def __init__(self, path, server: TFServing, stuck=False, broken=False):
        import http.server
        import threading

        self.path, self.server, self.asked = path, server, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.removeprefix("/v1/models/")
                body, code = outer.status(name)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.stuck, self.broken = stuck, broken
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def status(self, name):
        self.asked += 1
        if not (self.stuck or self.broken):
            self.server.finish_loading()            # what was LOADING at the last answer
        self.server.give(open(self.path).read())
        states = (self.server.states or {}).get(name)
        if not states:
            return {"error": f"Could not find any versions of model {name}"}, 404
        out = []
        for version, state in sorted(states.items()):
            failed = self.broken and state == "LOADING"
            out.append({"version": str(version), "state": "END" if failed else state,
                        "status": {"error_code": "UNKNOWN" if failed else "OK",
                                   "error_message": "Failed to load: bad graph" if failed
                                   else ""}})
        return {"model_version_status": out}, 200

    def close(self):
        self.http.shutdown()
        self.http.server_close()


def _staged_registry(tmp_path, capsys, server: TFServing):
    """m:1 served under staging and production by `server` (started with the file),
    then m:2 pushed with staging moved onto it. (root, file)."""
    root, target = str(tmp_path / "serving"), tmp_path / "models.config"
    reg, src = Registry(root), fake_saved_model(tmp_path / "sm")
    reg.push("m", src, card())
    reg.set_alias("m:1", "staging")
    reg.set_alias("m:1", "production")
    assert _serving_config(root, target) == 0
    assert server.give(target.read_text())
    reg.push("m", src, card())
    reg.set_alias("m:2", "staging")
    capsys.readouterr()
    return root, target


def test_serving_config_with_server_waits_for_the_new_version_then_moves_the_label(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(serving_config, "POLL_SECONDS", 0.01)
    server = TFServing()
    root, target = _staged_registry(tmp_path, capsys, server)
    status = _StatusServer(target, server)
    try:
        assert _serving_config(root, target, "--server", status.url, "--timeout", "30",
                               "--json") == 0
    finally:
        status.close()
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert (result["phase"], result["server"], result["waiting"]) == (2, status.url, {})
    assert result["models"][0]["labels"] == {"production": 1, "staging": 2}
    assert f"waiting up to 30s for m:2 to be AVAILABLE on {status.url}" in out.err
    # the server saw phase 1 (2 added, staging still on 1), loaded 2, and was asked
    # again before the label moved; the final file is one it accepts
    assert status.asked >= 3
    phase_one = configs_by_name(parse_serving_config(server.given[1]))["m"]
    assert list(phase_one.model_version_policy.specific.versions) == [1, 2]
    assert dict(phase_one.version_labels) == {"production": 1, "staging": 1}
    assert server.give(target.read_text()) and server.refused == []
    assert server.labels["m"] == {"production": 1, "staging": 2}

    # already there: one config, nothing to wait for
    status = _StatusServer(target, server)
    try:
        assert _serving_config(root, target, "--server", status.url) == 0
    finally:
        status.close()
    out = capsys.readouterr().out
    assert out.count("wrote") == 1 and "phase" not in out


@pytest.mark.parametrize("broken", [False, True])
def test_serving_config_with_server_that_never_loads_keeps_phase_one(
        tmp_path, capsys, monkeypatch, broken):
    monkeypatch.setattr(serving_config, "POLL_SECONDS", 0.01)
    server = TFServing()
    root, target = _staged_registry(tmp_path, capsys, server)
    status = _StatusServer(target, server, stuck=not broken, broken=broken)
    try:
        assert _serving_config(root, target, "--server", status.url, "--timeout",
                               "0.3") == 2
    finally:
        status.close()
    out = capsys.readouterr()
    assert "wrote" in out.out and "phase 1 of 2" in out.out
    err = out.err.strip().splitlines()[-1]
    assert err.startswith("imgpipe: error: m:2 ") and f"on {status.url}" in err
    assert ("failed to load" in err and "bad graph" in err) if broken else \
        ("is not AVAILABLE" in err and "LOADING" in err and "--timeout" in err)
    assert "keeps phase 1" in err
    # what is left in the file is phase 1, which the server took
    assert server.given[-1] == target.read_text() and server.refused == []
    assert server.labels["m"] == {"production": 1, "staging": 1}


def test_serving_config_server_unreachable_or_without_a_file_is_one_line(tmp_path, capsys):
    server = TFServing()
    root, target = _staged_registry(tmp_path, capsys, server)
    before = target.read_text()
    assert _serving_config(root, target, "--server", "http://127.0.0.1:9", "--timeout",
                           "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the model status" in err
    assert "nothing was written" in err and target.read_text() == before
    assert cli.main(["models", "serving-config", "--registry", root, "--server",
                     "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs -o FILE" in err
