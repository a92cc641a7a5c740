import pytest


@pytest.fixture
def fake(monkeypatch):
    """Vertex AI (Model Registry and endpoints) replaced by FakeEndpoints
    (tests/integrations/vertex_fakes.py)."""
    from components.integrations import vertex
    from tests.integrations.vertex_fakes import FakeEndpoints

    fake = FakeEndpoints()
    monkeypatch.setattr(vertex, "client_module", fake.module())
    monkeypatch.setattr(vertex, "tensorflow_version", lambda: "2.21.0")
    return fake
