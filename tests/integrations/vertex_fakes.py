"""The Vertex AI endpoint fake the integration tests run against (`FakeEndpoints`: the
Model Registry fake of tests/fake_vertex.py plus endpoints, every call bound to the real
library's signature) and the push they make through it."""

from __future__ import annotations

import inspect
import itertools

from google.cloud import aiplatform as real
from google.cloud.aiplatform_v1.types import endpoint as gca_endpoint

from tests.fake_vertex import FakeVertex
from tests.fixtures import push_inputs


ENDPOINT = "projects/p/locations/us-central1/endpoints/1"


def same_signature(real_function, fake: "FakeEndpoints", name: str):
    """Makes `impl` a fake of `real_function`: the same signature (inspect sees the
    real one), each call bound to it (so the real library accepts it), its defaults
    applied, recorded as (name, arguments), then `impl(**arguments)`."""
    signature = inspect.signature(real_function)

    def wrap(impl):
        def method(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            fake.calls.append((name, {k: v for k, v in arguments.items()
                                      if k not in ("self", "cls")}))
            return impl(**arguments)

        method.__signature__ = signature
        method.__name__ = real_function.__name__
        return method

    return wrap


def _classmethod_function(cls, name):
    return inspect.getattr_static(cls, name).__func__


class FakeEndpoints(FakeVertex):
    """tests.fake_vertex.FakeVertex (models, versions, aliases, uploads) plus
    endpoints: `Endpoint.list` (display_name="X" only), `Endpoint.create`,
    `Endpoint(name)`, `deploy`, `undeploy`, `update`, `list_models`, `traffic_split`,
    and `Model(name, version=...)` for what `deploy` takes. `fail_deploys` /
    `fail_undeploys`: how many next calls fail after the service did the work (the
    reply never came)."""

    def __init__(self):
        super().__init__()
        self.endpoints: dict[str, dict] = {}       # resource name -> state
        self.calls: list[tuple[str, dict]] = []
        self.fail_deploys = self.fail_undeploys = 0
        self._ids = itertools.count(101)
        fake, uploaded = self, self.Model

        class Model(uploaded):
            @same_signature(real.Model.__init__, fake, "Model")
            def __init__(self, model_name, project, location, credentials, version):
                versions = fake.models[model_name]["versions"]   # only what was uploaded
                assert version in [v["version_id"] for v in versions], (model_name, version)
                self.resource_name, self.version_id = model_name, version
                self.versioned_resource_name = f"{model_name}@{version}"

        class Endpoint:
            @same_signature(real.Endpoint.__init__, fake, "Endpoint")
            def __init__(self, endpoint_name, project, location, credentials):
                assert endpoint_name in fake.endpoints, f"404 endpoint {endpoint_name}"
                self.resource_name = endpoint_name

            @property
            def _state(self):
                return fake.endpoints[self.resource_name]

            @property
            def display_name(self):
                return self._state["display_name"]

            @property
            def traffic_split(self):
                return dict(self._state["split"])

            @classmethod
            @same_signature(_classmethod_function(real.Endpoint, "list"), fake, "Endpoint.list")
            def list(cls, filter, order_by, project, location, credentials):
                wanted = fake._match(filter, r'display_name="([^"]*)"')
                return [cls(name) for name, state in fake.endpoints.items()
                        if state["display_name"] == wanted]

            @classmethod
            @same_signature(_classmethod_function(real.Endpoint, "create"), fake,
                            "Endpoint.create")
            def create(cls, display_name, **_):
                return cls(fake.add_endpoint(display_name))

            @same_signature(real.Endpoint.deploy, fake, "deploy")
            def deploy(self, model, deployed_model_display_name, traffic_percentage,
                       traffic_split, min_replica_count, max_replica_count, accelerator_type,
                       deployment_resource_pool, required_replica_count, **_):
                # the client library's own checks and traffic arithmetic (Endpoint.deploy,
                # Endpoint._deploy_call)
                real.Endpoint._validate_deploy_args(
                    min_replica_count=min_replica_count, max_replica_count=max_replica_count,
                    accelerator_type=accelerator_type,
                    deployed_model_display_name=deployed_model_display_name,
                    traffic_split=traffic_split, traffic_percentage=traffic_percentage,
                    deployment_resource_pool=deployment_resource_pool,
                    required_replica_count=required_replica_count)
                assert isinstance(model, Model)
                state = self._state
                if traffic_split is None:
                    if not state["split"]:
                        if traffic_percentage == 0:
                            traffic_percentage = 100
                        elif traffic_percentage < 100:
                            raise ValueError("There are currently no deployed models so the "
                                             "traffic percentage for this deployed model "
                                             "needs to be 100.")
                    traffic_split = real.Endpoint._allocate_traffic(
                        traffic_split=dict(state["split"]),
                        traffic_percentage=traffic_percentage)
                # the service: the new deployed model's id replaces the key "0"
                new_id = str(next(fake._ids))
                state["deployed"].append(gca_endpoint.DeployedModel(
                    id=new_id, model=model.versioned_resource_name,
                    model_version_id=model.version_id,
                    display_name=deployed_model_display_name or ""))
                fake.set_split(state, {new_id if k == "0" else k: v
                                       for k, v in traffic_split.items()})
                if fake.fail_deploys:
                    fake.fail_deploys -= 1
                    raise TimeoutError("the deploy's reply never came")

            @same_signature(real.Endpoint.undeploy, fake, "undeploy")
            def undeploy(self, deployed_model_id, traffic_split, metadata, sync):
                state = self._state
                # Endpoint.undeploy's checks, then Endpoint._undeploy's arithmetic
                if traffic_split is not None:
                    if traffic_split.get(deployed_model_id):
                        raise ValueError("Model being undeployed should have 0 traffic.")
                    if sum(traffic_split.values()) != 100:
                        raise ValueError("Sum of all traffic within traffic split needs to "
                                         "be 100.")
                elif (len(state["split"]) > 1 and
                      state["split"].get(deployed_model_id) == 100):
                    raise ValueError(f"Undeploying deployed model '{deployed_model_id}' would "
                                     "leave the remaining traffic split at 0%.")
                current = traffic_split or dict(state["split"])
                if deployed_model_id in current:
                    current = real.Endpoint._unallocate_traffic(
                        traffic_split=current, deployed_model_id=deployed_model_id)
                    current.pop(deployed_model_id)
                ids = [d.id for d in state["deployed"]]
                assert deployed_model_id in ids, f"404 deployed model {deployed_model_id}"
                state["deployed"] = [d for d in state["deployed"] if d.id != deployed_model_id]
                fake.set_split(state, current)
                if fake.fail_undeploys:
                    fake.fail_undeploys -= 1
                    raise TimeoutError("the undeploy's reply never came")

            @same_signature(real.Endpoint.update, fake, "update")
            def update(self, display_name, description, labels, traffic_split, **_):
                if traffic_split:
                    fake.set_split(self._state, dict(traffic_split))
                return self

            @same_signature(real.Endpoint.list_models, fake, "list_models")
            def list_models(self):
                return list(self._state["deployed"])

        self.Model, self.Endpoint = Model, Endpoint

    def add_endpoint(self, display_name, name=None):
        name = name or f"projects/p/locations/us-central1/endpoints/{len(self.endpoints) + 1}"
        self.endpoints[name] = {"display_name": display_name, "deployed": [], "split": {}}
        return name

    @staticmethod
    def set_split(state, split):
        """The service's rule: a split names deployed models only and adds up to 100
        (or is empty: no traffic)."""
        ids = {d.id for d in state["deployed"]}
        assert set(split) <= ids, (split, ids)
        assert sum(split.values()) in ((0, 100) if not state["deployed"] else (100,)), split
        state["split"] = {k: v for k, v in split.items() if k in ids}

    def module(self):
        base = super().module()
        return type("ai", (), {"init": base.init, "Model": self.Model,
                               "models": self.models_module, "Endpoint": self.Endpoint})

    def served(self, name=ENDPOINT):
        """{deployed model's display name: traffic percent} on the endpoint."""
        state = self.endpoints[name]
        return {d.display_name: state["split"].get(d.id, 0) for d in state["deployed"]}

    def named(self, *names):
        return [(name, args) for name, args in self.calls if name in names]


_attempts = itertools.count()


_inputs: dict[tuple[str, str], tuple] = {}     # the same seed pushes the same model again


def push_version(tmp_path, seed, promote_to=None, endpoint="serving", **settings):
    """The push step with push.vertex.endpoint ENDPOINT: pushes the model made from `seed`
    (the same seed, the same model) to tmp_path/serving as `m`, promoting it to
    `promote_to`."""
    from components import artifacts
    from components.config.push import PushConfig, VertexPushConfig
    from components.steps import push

    cfg = PushConfig(destination=str(tmp_path / "serving"), model_name="m",
                     promote_to=promote_to,
                     vertex=VertexPushConfig(project="p", endpoint=endpoint, **settings))
    key = (str(tmp_path), seed)
    if key not in _inputs:
        _inputs[key] = push_inputs(tmp_path, seed)
    return push.run(*_inputs[key], cfg, artifacts.ArtifactWriter(
        str(tmp_path / f"pushed-{next(_attempts)}"), artifacts.PushedModel,
        {"run_id": seed}), {})
