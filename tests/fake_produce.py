from tests.fake_steps import produce as run  # noqa: F401
