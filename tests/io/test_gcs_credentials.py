"""gs:// on a machine without Google Cloud credentials (issue 24, second bad-input
pass): a push destination, a data source, `models list` and `predict` each end in one
line naming the bucket and how to log in, exit 2, before anything runs."""

from __future__ import annotations

import pytest

from components.io import gcs
from tests.fixtures import cli_config, make_class_folders, run_cli


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A machine with no Google Cloud credentials: no emulator, no key file, an empty
    gcloud config, and no metadata server (an address nothing listens on)."""
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
                 "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    gcs._client_for.cache_clear()
    yield
    gcs._client_for.cache_clear()


@pytest.mark.parametrize("case", ["push destination", "data source", "models list",
                                  "predict"])
def test_gs_without_credentials_is_one_line_and_exit_2(tmp_path, capsys, no_credentials, case):
    runs = str(tmp_path / "runs")
    argv = {
        "push destination": ["run", cli_config(tmp_path), "--runs-dir", runs,
                             "--set", "push.destination=gs://nobkt/serving"],
        "data source": ["run", cli_config(tmp_path, data={"source": "gs://nobkt/photos/"}),
                        "--runs-dir", runs],
        "models list": ["models", "list", "--registry", "gs://nobkt/serving"],
        "predict": ["predict", "base@production", str(tmp_path / "photos"), "--registry",
                    "gs://nobkt/serving"],
    }[case]
    make_class_folders(str(tmp_path / "photos"), per_class=1)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("imgpipe: error: gs://nobkt/")
    assert "no usable Google Cloud credentials" in line
    assert "gcloud auth application-default login" in line
