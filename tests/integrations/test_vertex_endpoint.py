"""Promotion reaches traffic on a Vertex AI endpoint (`push.vertex.endpoint`,
`components.integrations.vertex.sync_endpoint`): the endpoint alias's version is deployed with all
the traffic, a canary takes its share beside it, the versions nothing names any more
are undeployed, and every call is safe to repeat.

Vertex is not reachable from here: `FakeEndpoints` (tests/integrations/vertex_fakes.py)
stands in for google.cloud.aiplatform. Each method it fakes has the real library's
signature (the same `inspect.Signature` object; `test_the_fake_has_the_real_signatures`
compares them), every call is bound to that signature and its defaults applied before
the fake acts on it, and the client-side traffic rules are the library's own
(`Endpoint._validate_deploy_args`, `_allocate_traffic`, `_unallocate_traffic`, the
checks `deploy` and `undeploy` make), run by the fake on each call. What the service
does with a request (deployed model ids, the split it keeps, refusing a split that does
not add up) is the fake's reading of the API reference, not the service."""

from __future__ import annotations

import inspect
import json

import pytest
from google.cloud import aiplatform as real
from google.cloud.aiplatform_v1.types import endpoint as gca_endpoint

from components.integrations import vertex
from tests.integrations.vertex_fakes import ENDPOINT, FakeEndpoints, push_version


def _cli(tmp_path, *args):
    from pipeline import cli

    return cli.main([*args, "--registry", str(tmp_path / "serving")])


def _ledger(tmp_path):
    from components.registry.versions import Registry

    return Registry(str(tmp_path / "serving")).audit("m")


def test_the_fake_has_the_real_signatures():
    ai = FakeEndpoints().module()
    for attr in ("__init__", "deploy", "undeploy", "update", "list_models"):
        assert inspect.signature(getattr(ai.Endpoint, attr)) == \
            inspect.signature(getattr(real.Endpoint, attr)), attr
    for attr in ("list", "create"):          # classmethods, as the class holds them
        assert inspect.signature(getattr(ai.Endpoint, attr)) == \
            inspect.signature(getattr(real.Endpoint, attr)), attr
    assert inspect.signature(ai.Model.__init__) == inspect.signature(real.Model.__init__)
    assert "version" in inspect.signature(real.Model.__init__).parameters
    assert isinstance(inspect.getattr_static(real.Endpoint, "traffic_split"), property)
    assert {"traffic_percentage", "machine_type", "min_replica_count", "max_replica_count",
            "deployed_model_display_name"} <= set(inspect.signature(real.Endpoint.deploy)
                                                  .parameters)
    # what list_models() returns, and the two fields a deployment is recognised by
    assert {"id", "model", "model_version_id", "display_name"} <= \
        set(gca_endpoint.DeployedModel.meta.fields)


def test_promoting_to_production_deploys_with_all_traffic_and_retires_the_old(tmp_path, fake):
    summary = push_version(tmp_path, "a", "production")
    assert summary["lines"][-1] == f"endpoint {ENDPOINT}: m:1 100% (deployed m:1)"
    assert fake.served() == {"m:1": 100}
    record = json.loads((tmp_path / "serving" / "m" / "1" / vertex.RECORD).read_text())
    assert record["endpoint"] == {"endpoint": "serving", "alias": "production",
                                  "machine_type": "n1-standard-2", "min_replica_count": 1,
                                  "max_replica_count": 1}
    (_, deploy), = fake.named("deploy")
    assert deploy["traffic_percentage"] == 100 and deploy["machine_type"] == "n1-standard-2"
    assert (deploy["min_replica_count"], deploy["max_replica_count"]) == (1, 1)
    assert deploy["model"].versioned_resource_name == "projects/p/locations/r/models/1@1"

    fake.calls.clear()
    summary = push_version(tmp_path, "b", "production")
    assert fake.served() == {"m:2": 100}
    assert summary["lines"][-1] == (f"endpoint {ENDPOINT}: m:2 100% (deployed m:2; "
                                    "undeployed m:1)")
    # the new version takes the traffic first, then the old one goes; nothing else
    assert [n for n, _ in fake.named("deploy", "update", "undeploy")] == ["deploy", "undeploy"]
    assert fake.named("deploy")[0][1]["traffic_percentage"] == 100
    # found by its display name, created only the first time
    assert [a["filter"] for _, a in fake.named("Endpoint.list")] == ['display_name="serving"']
    assert len(fake.endpoints) == 1 and fake.named("Endpoint.create") == []

    fake.calls.clear()                     # the same push again: nothing new
    summary = push_version(tmp_path, "b", "production")
    assert summary["lines"][-1] == f"endpoint {ENDPOINT}: m:2 100% (already so)"
    assert fake.named("deploy", "update", "undeploy", "Endpoint.create") == []


def test_a_push_to_another_alias_or_none_deploys_nothing(tmp_path, fake):
    push_version(tmp_path, "a", "staging")
    push_version(tmp_path, "b")
    assert fake.endpoints == {} and fake.named("Endpoint.list") == []


def test_canary_then_full_promotion(tmp_path, fake, capsys):
    push_version(tmp_path, "a", "production")
    push_version(tmp_path, "b")
    fake.calls.clear()
    capsys.readouterr()
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "staging", "--canary", "10") == 0
    out = capsys.readouterr().out
    assert "m@staging: (none) -> version 2 (promote, canary 10%)" in out
    assert f"endpoint {ENDPOINT}: m:1 90%, m:2 10% (deployed m:2)" in out
    (_, deploy), = fake.named("deploy")
    assert deploy["traffic_percentage"] == 10
    assert fake.served() == {"m:1": 90, "m:2": 10}
    assert fake.named("update", "undeploy") == []
    entry = _ledger(tmp_path)[-1]
    assert (entry["action"], entry["alias"], entry["to"], entry["traffic"]) == \
        ("promote", "staging", 2, 10)
    assert fake.versions()[1][2] == ["staging"]          # the Vertex alias moved too
    assert _cli(tmp_path, "models", "show", "m:2", "--runs-dir", str(tmp_path / "runs")) == 0
    assert "promote @staging (none) -> 2 (canary 10%)" in capsys.readouterr().out

    fake.calls.clear()                       # the canary becomes production
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "production") == 0
    assert f"endpoint {ENDPOINT}: m:2 100% (undeployed m:1)" in capsys.readouterr().out
    assert fake.named("deploy") == []
    (_, update), = fake.named("update")
    m2 = next(d.id for d in fake.endpoints[ENDPOINT]["deployed"] if d.display_name == "m:2")
    assert update["traffic_split"] == {m2: 100}
    assert [n for n, _ in fake.named("update", "undeploy")] == ["update", "undeploy"]
    assert fake.served() == {"m:2": 100}
    assert [(e["alias"], e["to"], e.get("traffic")) for e in _ledger(tmp_path)] == [
        ("production", 1, None), ("staging", 2, 10), ("production", 2, None)]


def test_repeating_a_promotion_deploys_nothing_new(tmp_path, fake, capsys):
    push_version(tmp_path, "a", "production")
    push_version(tmp_path, "b")
    canary = ("models", "promote", "m:2", "--to", "staging", "--canary", "10")
    assert _cli(tmp_path, *canary) == 0
    ledger = _ledger(tmp_path)
    fake.calls.clear()
    capsys.readouterr()
    assert _cli(tmp_path, *canary) == 0
    out = capsys.readouterr().out
    assert "nothing changed (not recorded)" in out and "m:2 10% (already so)" in out
    assert _ledger(tmp_path) == ledger
    assert fake.named("deploy", "update", "undeploy", "Endpoint.create") == []
    # looked up first: the endpoint's deployed models and its split
    assert fake.named("list_models")
    assert fake.served() == {"m:1": 90, "m:2": 10}
    # a plain promotion of the production version again: nothing either
    assert _cli(tmp_path, "models", "promote", "m:1", "--to", "production") == 0
    assert fake.named("deploy", "update", "undeploy") == []


def test_rollback_and_canary_0_end_the_canary(tmp_path, fake, capsys):
    push_version(tmp_path, "a", "production")
    assert _cli(tmp_path, "models", "promote", "m:1", "--to", "staging") == 0
    push_version(tmp_path, "b")
    assert fake.served() == {"m:1": 100}
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "staging", "--canary", "10") == 0
    assert fake.served() == {"m:1": 90, "m:2": 10}

    fake.calls.clear()                       # staging back to m:1: the canary goes
    assert _cli(tmp_path, "models", "rollback", "m", "--alias", "staging") == 0
    assert fake.served() == {"m:1": 100}
    assert [n for n, _ in fake.named("deploy", "update", "undeploy")] == ["update", "undeploy"]
    assert _ledger(tmp_path)[-1]["action"] == "rollback"

    # --canary 0 ends a canary without moving the alias (recorded: 2 -> 2, traffic 0)
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "staging", "--canary", "25") == 0
    assert fake.served() == {"m:1": 75, "m:2": 25}
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "staging", "--canary", "0") == 0
    assert fake.served() == {"m:1": 100}
    entry = _ledger(tmp_path)[-1]
    assert (entry["from"], entry["to"], entry["traffic"]) == (2, 2, 0)
    assert "(promote, canary 0%)" in capsys.readouterr().out

    # a rollback of production: the earlier holder serves everything again
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "production") == 0
    assert fake.served() == {"m:2": 100}
    fake.calls.clear()
    assert _cli(tmp_path, "models", "rollback", "m", "--alias", "production") == 0
    assert fake.served() == {"m:1": 100}
    assert [n for n, _ in fake.named("deploy", "update", "undeploy")] == ["deploy", "undeploy"]
    assert fake.named("deploy")[0][1]["traffic_percentage"] == 100


def test_moving_production_ends_a_running_canary(tmp_path, fake):
    push_version(tmp_path, "a", "production")
    push_version(tmp_path, "b")
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "staging", "--canary", "10") == 0
    push_version(tmp_path, "c", "production")                 # m:3 takes everything
    assert fake.served() == {"m:3": 100}


def test_a_deploy_whose_reply_never_came_is_not_repeated(tmp_path, fake, capsys):
    push_version(tmp_path, "a", "production")
    push_version(tmp_path, "b")
    canary = ("models", "promote", "m:2", "--to", "staging", "--canary", "10")
    fake.fail_deploys = 1
    capsys.readouterr()
    assert _cli(tmp_path, *canary) != 0
    err = capsys.readouterr().err
    assert "m@staging moved in the registry, but not on Vertex AI (TimeoutError" in err
    assert "run the same command again to retry" in err
    assert fake.served() == {"m:1": 90, "m:2": 10}      # the service did deploy it
    assert _cli(tmp_path, *canary) == 0
    assert len(fake.named("deploy")) == 2                # m:1's at push, m:2's once
    assert fake.served() == {"m:1": 90, "m:2": 10}


def test_a_failed_rollback_is_finished_by_sync_vertex(tmp_path, fake, capsys):
    push_version(tmp_path, "a", "production")
    push_version(tmp_path, "b", "production")
    fake.fail_undeploys = 1
    capsys.readouterr()
    assert _cli(tmp_path, "models", "rollback", "m", "--alias", "production") != 0
    err = capsys.readouterr().err
    # not "the same command": a second rollback would move production further back
    assert "run `imgpipe models sync-vertex m:1 --config CONFIG` to retry" in err
    assert fake.served() == {"m:1": 100}                # the undeploy went through
    config = tmp_path / "push.yaml"
    config.write_text("push:\n  vertex: {project: p, endpoint: serving}\n")
    fake.calls.clear()
    assert _cli(tmp_path, "models", "sync-vertex", "m:1", "--config", str(config)) == 0
    assert f"endpoint {ENDPOINT}: m:1 100% (already so)" in capsys.readouterr().out
    assert fake.named("deploy", "update", "undeploy", "upload") == []


def test_sync_vertex_records_an_endpoint_for_versions_pushed_without_one(tmp_path, fake,
                                                                        capsys):
    push_version(tmp_path, "a", "production", endpoint=None)
    assert fake.endpoints == {} and "endpoint" not in vertex.read_record(
        str(tmp_path / "serving" / "m" / "1"))
    config = tmp_path / "push.yaml"
    config.write_text("push:\n  vertex: {project: p, endpoint: serving, "
                      "machine_type: n1-standard-4, max_replica_count: 3}\n")
    assert _cli(tmp_path, "models", "sync-vertex", "m:1", "--config", str(config)) == 0
    assert fake.served() == {"m:1": 100}
    (_, deploy), = fake.named("deploy")
    assert (deploy["machine_type"], deploy["max_replica_count"]) == ("n1-standard-4", 3)
    assert vertex.read_record(str(tmp_path / "serving" / "m" / "1"))["endpoint"][
        "machine_type"] == "n1-standard-4"


def test_an_endpoint_named_by_resource_keeps_other_models_deployed(tmp_path, fake):
    """An endpoint given as a resource name is taken as it is (never listed or
    created); a model someone else deployed there keeps its deployment, without
    traffic."""
    name = fake.add_endpoint("shared", "projects/p/locations/us-central1/endpoints/77")
    state = fake.endpoints[name]
    state["deployed"].append(gca_endpoint.DeployedModel(
        id="5", model="projects/p/locations/r/models/99", model_version_id="1",
        display_name="other"))
    state["split"] = {"5": 100}
    push_version(tmp_path, "a", "production", endpoint=name)
    assert fake.served(name) == {"other": 0, "m:1": 100}
    assert fake.named("Endpoint.list", "Endpoint.create", "undeploy") == []
    assert fake.named("Endpoint")[0][1]["endpoint_name"] == name


def test_canaries_that_cannot_be_are_refused_before_anything_moves(tmp_path, fake, capsys):
    push_version(tmp_path, "a", endpoint=None)                 # no endpoint recorded
    assert _cli(tmp_path, "models", "promote", "m:1", "--to", "staging", "--canary", "10") == 2
    assert "m has no endpoint" in capsys.readouterr().err
    push_version(tmp_path, "b")                                # m:2 records the endpoint
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "staging", "--canary", "10") == 2
    assert "nothing holds m@production" in capsys.readouterr().err
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "production", "--canary",
                "10") == 2
    assert "promote to it without --canary" in capsys.readouterr().err
    assert _ledger(tmp_path) == [] and fake.endpoints == {}
    assert _cli(tmp_path, "models", "promote", "m:1", "--to", "production") == 0
    assert _cli(tmp_path, "models", "promote", "m:1", "--to", "staging", "--canary", "5") == 2
    assert "already serves all the traffic" in capsys.readouterr().err
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "staging", "--canary", "5") == 0
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "canary", "--canary", "5") == 2
    assert "m@staging is already a canary" in capsys.readouterr().err
    assert _cli(tmp_path, "models", "promote", "m:2", "--to", "staging", "--canary",
                "100") == 2
    assert "'100' is not a whole percent from 0 to 99" in capsys.readouterr().err


def test_endpoint_plan_from_the_ledger():
    def e(alias, to, action="promote", traffic=None):
        entry = {"alias": alias, "to": to, "action": action}
        return entry if traffic is None else dict(entry, traffic=traffic)

    plan = vertex.endpoint_plan
    assert plan([], "production") == (None, None)
    assert plan([e("staging", 2, traffic=10)], "production") == (None, None)
    assert plan([e("production", 1), e("staging", 2, traffic=10)], "production") == \
        (1, ("staging", 2, 10))
    # a canary from before production last moved is over
    assert plan([e("staging", 2, traffic=10), e("production", 1)], "production") == (1, None)
    # ended by a plain promotion, a rollback, a delete, or --canary 0
    for end in (e("staging", 3), e("staging", 1, "rollback"), e("staging", None, "delete"),
                e("staging", 2, traffic=0)):
        assert plan([e("production", 1), e("staging", 2, traffic=10), end],
                    "production") == (1, None)
    assert plan([e("production", 1), e("production", None, "delete")], "production") == \
        (None, None)
    # a deployed model names its version either way
    assert vertex._deployed_key(gca_endpoint.DeployedModel(
        model="projects/1/locations/r/models/7@3")) == ("7", "3")
    assert vertex._deployed_key(gca_endpoint.DeployedModel(
        model="projects/p/locations/r/models/7", model_version_id="4")) == ("7", "4")


def test_endpoint_config_is_checked_when_loaded():
    from components.config.push import VertexPushConfig

    assert VertexPushConfig(project="p").endpoint is None
    with pytest.raises(ValueError, match="the region's"):
        VertexPushConfig(project="p", endpoint="projects/p/locations/europe-west4/endpoints/1")
    with pytest.raises(ValueError, match="endpoint_alias 'Prod_1'"):
        VertexPushConfig(project="p", endpoint="serving", endpoint_alias="Prod_1")
    with pytest.raises(ValueError, match="max_replica_count"):
        VertexPushConfig(project="p", endpoint="serving", min_replica_count=2)
