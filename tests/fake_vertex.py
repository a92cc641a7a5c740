"""A stateful stand-in for google.cloud.aiplatform's Model Registry, shared by the
registry's and the integrations' tests (the `fake_vertex` fixture in tests/conftest.py
installs it)."""

from __future__ import annotations


class FakeVertex:
    """A stateful stand-in for google.cloud.aiplatform: models with versions, labels and
    aliases, and `filter` honoured (display_name="X" on Model.list, labels.KEY="VALUE"
    on ModelRegistry.list_versions; any other filter fails the test). Every call is
    checked against the real library's signature (tests.fixtures.Recorder).
    `fail_uploads`: how many uploads fail next; `fail_after_create`: they fail after
    Vertex created the version (a timeout on the reply)."""

    def __init__(self):
        from google.cloud import aiplatform as real

        from tests.fixtures import Recorder

        self.rec, self.real = Recorder(real), real
        self.models: dict[str, dict] = {}      # resource name -> display_name, versions
        self.fail_uploads, self.fail_after_create = 0, False
        fake = self

        class Model:
            @staticmethod
            def list(**kwargs):
                fake.rec.check("list", real.Model.list, **kwargs)
                wanted = fake._match(kwargs.get("filter"), r'display_name="([^"]*)"')
                return [type("M", (), {"resource_name": name})
                        for name, model in fake.models.items()
                        if model["display_name"] == wanted]

            @staticmethod
            def upload(**kwargs):
                fake.rec.check("upload", real.Model.upload, **kwargs)
                return fake._upload(kwargs)

        class ModelRegistry:
            def __init__(self, model, **kwargs):
                fake.rec.check("ModelRegistry", real.models.ModelRegistry.__init__, None,
                               model, **kwargs)
                self.model = fake.models[model]
                self.name = model

            def list_versions(self, filter=None):
                fake.rec.check("list_versions", real.models.ModelRegistry.list_versions,
                               None, filter=filter)
                key, value = fake._match(filter, r'labels\.(\w+)="([^"]*)"')
                return [real.models.VersionInfo(
                            version_id=v["version_id"], version_create_time=None,
                            version_update_time=None,
                            model_display_name=self.model["display_name"],
                            model_resource_name=self.name, version_aliases=v["aliases"])
                        for v in self.model["versions"] if v["labels"].get(key) == value]

            def add_version_aliases(self, new_aliases, version):
                fake.rec.check("add_version_aliases",
                               real.models.ModelRegistry.add_version_aliases, None,
                               new_aliases, version)
                for v in self.model["versions"]:       # an alias names one version
                    v["aliases"] = [a for a in v["aliases"] if a not in new_aliases]
                    if v["version_id"] == version:
                        v["aliases"] += list(new_aliases)

            def remove_version_aliases(self, target_aliases, version):
                fake.rec.check("remove_version_aliases",
                               real.models.ModelRegistry.remove_version_aliases, None,
                               target_aliases, version)

        self.Model = Model
        self.models_module = type("models", (), {"ModelRegistry": ModelRegistry})

    @staticmethod
    def _match(text, pattern):
        import re

        found = re.fullmatch(pattern, text or "")
        assert found, f"the fake does not know the filter {text!r}"
        return found[1] if found.re.groups == 1 else found.groups()

    def _upload(self, kwargs):
        if self.fail_uploads and not self.fail_after_create:
            self.fail_uploads -= 1
            raise RuntimeError("503 Service Unavailable")
        name = kwargs["parent_model"] or f"projects/p/locations/r/models/{len(self.models) + 1}"
        model = self.models.setdefault(name, {"display_name": kwargs["display_name"],
                                              "versions": []})
        version_id = str(len(model["versions"]) + 1)
        model["versions"].append({"version_id": version_id, "labels": dict(kwargs["labels"]),
                                  "aliases": []})
        if kwargs.get("version_aliases"):
            self.models_module.ModelRegistry(name).add_version_aliases(
                kwargs["version_aliases"], version_id)
        if self.fail_uploads:
            self.fail_uploads -= 1
            raise TimeoutError("the upload's reply never came")
        return type("U", (), {"resource_name": name, "version_id": version_id})

    def module(self):
        fake = self
        return type("ai", (), {"init": staticmethod(
            lambda **kw: fake.rec.check("init", fake.real.init, **kw)),
            "Model": self.Model, "models": self.models_module})

    def uploads(self):
        return [kwargs for name, _, kwargs in self.rec.calls if name == "upload"]

    def versions(self):
        return [(v["version_id"], v["labels"], sorted(v["aliases"]))
                for model in self.models.values() for v in model["versions"]]
