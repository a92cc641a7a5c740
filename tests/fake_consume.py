from tests.fake_steps import consume as run  # noqa: F401
