"""What compile, submit and schedule check before a package is made
(`pipeline/kfp/checks.py`): compiling needs no credentials, and what it could not check
without them is one line; the placeholder step image is refused where the package is
for a service, while kfp.local runs and the committed example compile as before."""

import json
import os

import pytest
import yaml

from pipeline import cli
from pipeline import config as config_lib
from pipeline.kfp import compile as kfp_compile

from tests import ROOT  # noqa: E402
EXAMPLE = os.path.join(ROOT, "deploy", "example.yaml")
IMAGE = "example.com/imgpipe/imgpipe:1"

WARM = """name: photos
data: {source: builtin:digits, image_size: [8, 8], channels: 1}
model: {kind: cnn}
train: {warm_start: photos@production}
push: {destination: gs://imgpipe-no-credentials/serving}
"""
NOT_CHECKED = ("not checked: train.warm_start photos@production against the registry "
               "gs://imgpipe-no-credentials/serving (no usable Google Cloud credentials "
               "here); the resolve task pins the version and train checks it when the "
               "pipeline runs (compile with read access to check it now).")


def _service(monkeypatch) -> list:
    """A service that takes every run submitted to it; the packages it was given."""
    submitted = []

    class Adapter:
        def submit(self, name, package, parameters):
            submitted.append(package)
            return "job-1"

    monkeypatch.setattr(cli.run, "_adapter", lambda args: Adapter())
    return submitted


def _one_line_error(capsys, args):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgpipe: error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A machine without Google Cloud credentials, as CI is: no key file, no gcloud
    login (an empty gcloud config folder), no metadata server probed."""
    from components.io import gcs

    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
                 "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    gcs._client_for.cache_clear()
    yield
    gcs._client_for.cache_clear()


def test_compile_works_offline_and_says_what_it_could_not_check(tmp_path, capsys,
                                                                monkeypatch, no_credentials):
    """`train.warm_start: NAME@production` with the registry in a bucket and no
    credentials: exit 0, the package written, one line naming what was not checked."""
    config = tmp_path / "c.yaml"
    config.write_text(WARM + f"kfp: {{image: {IMAGE}}}\n")
    package = str(tmp_path / "p.yaml")
    assert cli.main(["compile", str(config), "-o", package]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"wrote {package} (KFP v2 IR; image {IMAGE})"
    assert out[-1] == NOT_CHECKED and [line for line in out if "not checked" in line] == \
        [NOT_CHECKED]
    spec = yaml.safe_load(open(package))
    assert "exec-train" in spec["deploymentSpec"]["executors"]
    # --json carries it too; stdout holds only the document
    assert cli.main(["compile", str(config), "-o", package, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unchecked"] == [NOT_CHECKED]
    # submit says it too, and goes on to the service
    _service(monkeypatch)
    assert cli.main(["submit", str(config), "--package", package, "--vertex", "--project",
                     "p", "--region", "r", "--pipeline-root", "gs://b/root"]) == 0
    assert capsys.readouterr().out.splitlines() == [NOT_CHECKED, "submitted photos: job-1"]


def test_an_unset_kfp_image_is_refused_for_a_service(tmp_path, capsys, monkeypatch):
    """Unset, kfp.image is a placeholder no registry holds: compile (whose package is
    for `submit`/`schedule --package`), submit and schedule refuse it in one line."""
    config = tmp_path / "c.yaml"
    config.write_text("push: {destination: gs://b/serving}\n")
    package = tmp_path / "p.yaml"
    says = ("imgpipe: error: kfp.image is unset, so every task would run in the placeholder "
            "image us-docker.pkg.dev/my-project/imgpipe/imgpipe:0.1.0, which no registry "
            "holds; build and push the step image (`make image IMAGE=REGION-docker.pkg.dev/"
            "PROJECT/imgpipe/imgpipe:0.1.0`, then `docker push` it: deploy/README.md, "
            "1. Images) and set kfp.image to its tag.")
    assert _one_line_error(capsys, ["compile", str(config), "-o", str(package)]) == says
    assert not package.exists()
    target = ["--kfp-host", "http://127.0.0.1:9", "--pipeline-root", "gs://b/root"]
    assert _one_line_error(capsys, ["submit", str(config), *target]) == says
    assert _one_line_error(capsys, ["schedule", str(config), *target, "--cron",
                                    "0 3 * * *"]) == says
    # a step with its own image is not named; the others still are
    own = ["--set", "kfp.steps.train.image=example.com/train:1"]
    err = _one_line_error(capsys, ["compile", str(config), *own, "-o", str(package)])
    assert "unset, so ingest, validate, transform, tune, evaluate, infra_validate, push, " \
        "report, resolve would run in the placeholder image" in err

    # set, it compiles; a package compiled with it is submitted with the config as is
    assert cli.main(["compile", str(config), "--set", f"kfp.image={IMAGE}",
                     "-o", str(package)]) == 0
    submitted = _service(monkeypatch)
    assert cli.main(["submit", str(config), "--package", str(package), "--vertex",
                     "--project", "p", "--region", "r", "--pipeline-root", "gs://b/root"]) == 0
    assert submitted == [str(package)]


def test_the_example_and_kfp_local_compile_with_the_image_as_it_is(tmp_path, capsys):
    """deploy/example.yaml names its image (a template's placeholder, taken as written);
    kfp.local runs build their package without the service checks, so a config with no
    kfp.image runs there."""
    assert cli.main(["compile", EXAMPLE, "-o", str(tmp_path / "e.yaml")]) == 0
    cfg = config_lib.load(None, ["push.destination=gs://b/serving"], resolve_paths=False)
    assert "image" not in cfg.kfp.model_fields_set
    spec = yaml.safe_load(open(kfp_compile.compile_pipeline(cfg, str(tmp_path / "l.yaml"))))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} \
        == {cfg.kfp.image}
