"""The Dockerfiles under deploy/: each installs the package from pyproject.toml with
the lock, copies what compile lets configs refer to, and runs the pinned Python,
TensorFlow (tensorflow-tpu and libtpu for the TPU image) and TF Serving."""

import os
import re

import pytest

from pipeline.kfp import checks as kfp_checks

from tests import ROOT  # noqa: E402


def test_dockerfiles_install_the_package_from_pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:            # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from packaging.specifiers import SpecifierSet

    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    # a wheel holds the subpackages too: the containers import pipeline.kfp.entrypoint
    from setuptools import find_packages

    found = find_packages(ROOT, include=project["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {"components", "components.steps", "pipeline", "pipeline.kfp", "pipeline.cli"} <= set(found)
    assert not [p for p in found if p.startswith("tests")]
    supported = SpecifierSet(project["project"]["requires-python"])
    # the range the pinned stack's wheels declare (see pyproject.toml)
    assert [v for v in ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14") if v in supported] == \
        ["3.10", "3.11", "3.12", "3.13"]
    lock = open(os.path.join(ROOT, "requirements.lock")).read()
    tf_version = re.search(r"^tensorflow==([\d.]+)$", lock, re.MULTILINE)[1]
    for name in ("Dockerfile", "Dockerfile.gpu", "Dockerfile.tpu"):
        text = open(os.path.join(ROOT, "deploy", name)).read()
        assert re.search(r"^COPY pyproject.toml requirements.lock", text, re.MULTILINE)
        for package in ("components", "pipeline"):
            assert re.search(rf"^COPY {package} \./{package}$", text, re.MULTILINE), (name, package)
        assert re.search(r"^RUN pip install -c requirements.lock \.$", text, re.MULTILINE), name
        base = re.search(r"^FROM (\S+)", text, re.MULTILINE)[1]
        if name == "Dockerfile.gpu":
            assert base == f"tensorflow/tensorflow:{tf_version}-gpu"
        else:
            # the images run the Python the suite and the lock are made on
            assert base.startswith("python:3.11") and "3.11" in supported
        for folder in kfp_checks.IMAGE_FOLDERS:       # what compile lets configs refer to
            assert re.search(rf"^COPY {folder.rstrip('/')} \./{folder.rstrip('/')}$", text,
                             re.MULTILINE), (name, folder)
    tpu = open(os.path.join(ROOT, "deploy", "Dockerfile.tpu")).read()
    assert re.search(r"pip uninstall -y tensorflow .*tensorflow-tpu==2\.20\.0", tpu, re.S)
    # tensorflow-tpu 2.20.0 declares libtpu~=0.0.14, which admits any later 0.0.x: exact pin
    assert re.search(r"\slibtpu==0\.0\.14(\s|$)", tpu) and "libtpu~=" not in tpu.split("RUN")[-1]
    serving = open(os.path.join(ROOT, "deploy", "Dockerfile.serving")).read()
    assert re.search(r"^FROM (\S+)", serving, re.MULTILINE)[1] == f"tensorflow/serving:{tf_version}"
