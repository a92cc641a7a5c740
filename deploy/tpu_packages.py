"""The TPU train image's package set, one place for deploy/Dockerfile.tpu and its test.

The set is requirements.lock (the project's resolved pins) with TensorFlow's own
packages at the versions TensorFlow 2.20.0 declares, since the TPU build of TensorFlow
on PyPI stops at tensorflow-tpu 2.20.0:

    tensorflow 2.21.0  -> tensorflow-tpu 2.20.0 (or, in tests/deploy/test_tpu_image.py, its
                          CPU build tensorflow-cpu 2.20.0: the same TensorFlow and ops;
                          libtpu only adds the device)
    tensorboard 2.21.0 -> 2.20.0   (tensorflow 2.20.0 declares tensorboard~=2.20.0)
    tf_keras 2.21.0    -> 2.20.1   (declares tensorflow>=2.20,<2.21)
    + libtpu 0.0.14               (tensorflow-tpu declares libtpu~=0.0.14, which admits
                                   every later 0.0.x; 0.0.14 is its floor, the release
                                   closest to TF 2.20's own build)

Everything else TensorFlow 2.20.0 declares (keras>=3.10, numpy>=1.26, protobuf>=5.28,
ml_dtypes>=0.5.1,<1, h5py>=3.11, grpcio, ...) the lock's pins already satisfy; `check`
proves it in the built environment. deploy/Dockerfile.tpu installs the lock as the CPU
image does and then swaps TensorFlow's packages with --no-deps (`swaps()`; pip's
resolver would pull tensorflow 2.21 back for the project and for tensorflow-transform);
the test's environment installs the same set in one go (`requirements()`, --no-deps:
the lock is resolved already; it also has the lock's test tools, which the image
leaves out). Both then run `check`, which compares every installed
distribution's declared requirements with what is installed and fails on anything but
the known skew below.

Known skew (there is no release that avoids it): tensorflow-transform 1.21.0, tfx-bsl
1.21.0 and tensorflow-model-analysis 0.52.0 declare tensorflow>=2.21 (every
tensorflow-transform release pins one TensorFlow minor; none pins 2.20). The trainer
needs tensorflow-transform (`tft.TFTransformOutput(...).transform_features_layer()` in
components/trainer/export.py, and in inputs.py for examples that were not
materialized), so it stays; tests/deploy/test_tpu_image.py runs that code, on artifacts the
pipeline wrote with TensorFlow 2.21, in this set under TensorFlow 2.20. TFMA is not on
the train path.

    python deploy/tpu_packages.py requirements tensorflow-tpu   # the set, pip -r format
    python deploy/tpu_packages.py check [TPU_REPORT]            # in the built environment
    python deploy/tpu_packages.py venv .venv-tpu-tf             # the test's environment
    python deploy/tpu_packages.py probe                         # can pip reach the index?

Standard library only, but `check` (run in the built environment) uses `packaging`,
which the lock pins.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(ROOT, "requirements.lock")

TF_VERSION = "2.20.0"
TF_BUILDS = ("tensorflow-tpu", "tensorflow-cpu", "tensorflow")
# lock name -> the version TensorFlow 2.20.0 wants (tensorflow itself: TF_VERSION)
SWAPPED = {"tensorboard": "2.20.0", "tf-keras": "2.20.1"}
TPU_ONLY = {"libtpu": "0.0.14"}
# distribution -> why its declared TensorFlow requirement is not met, accepted
KNOWN_SKEW = {
    "tensorflow-transform": "declares tensorflow>=2.21; the trainer's transform layer, "
                            "run under TF 2.20 by tests/deploy/test_tpu_image.py",
    "tfx-bsl": "declares tensorflow>=2.21; imported by tensorflow-transform",
    "tensorflow-model-analysis": "declares tensorflow>=2.21; not on the train path",
    "imgpipe": "declares tensorflow 2.21 for the other steps; the image runs only train",
}
# pip freeze (the lock) leaves the packaging tools out; the image's Python has them
PACKAGING_TOOLS = {"pip", "setuptools", "wheel"}
STAMP = ".installed"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def swaps(tf_build: str = "tensorflow-tpu") -> tuple[list[str], list[str]]:
    """(distributions the image uninstalls, `name==version` it installs in their place)."""
    names = {normalize(line.partition("==")[0]): line.partition("==")[0]
             for line in open(LOCK) if "==" in line and not line.startswith("#")}
    gone = [names["tensorflow"], *(names[key] for key in SWAPPED)]
    new = [f"{tf_build}=={TF_VERSION}", *(f"{names[key]}=={v}" for key, v in SWAPPED.items())]
    if tf_build == "tensorflow-tpu":
        new += [f"{name}=={version}" for name, version in TPU_ONLY.items()]
    return gone, new


def requirements(tf_build: str = "tensorflow-tpu") -> list[str]:
    """The image's set as `name==version` lines: the lock, TensorFlow's packages swapped."""
    if tf_build not in TF_BUILDS:
        raise SystemExit(f"unknown TensorFlow build {tf_build!r}; one of {', '.join(TF_BUILDS)}")
    out = []
    with open(LOCK) as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, version = line.partition("==")
            key = normalize(name)
            if key == "tensorflow":
                out.append(f"{tf_build}=={TF_VERSION}")
            elif key in SWAPPED:
                out.append(f"{name}=={SWAPPED[key]}")
            else:
                out.append(line)
    if tf_build == "tensorflow-tpu":
        out += [f"{name}=={version}" for name, version in TPU_ONLY.items()]
    return out


def check(tpu_report: str | None = None) -> list[str]:
    """Every installed distribution's requirements against what is installed, with the
    installed TensorFlow build standing for the `tensorflow` distribution (tensorflow-tpu
    and tensorflow-cpu install the same `tensorflow` package). Returns the problems
    outside KNOWN_SKEW; prints the accepted skew. `tpu_report`: a `pip install --report`
    of tensorflow-tpu (where tensorflow-cpu stands in for it): its declared requirements
    are checked against this environment too, libtpu against TPU_ONLY."""
    from importlib import metadata

    from packaging.requirements import Requirement

    installed = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions()}
    builds = [b for b in TF_BUILDS if b in installed]
    if len(builds) != 1:
        return [f"expected one TensorFlow build installed, found {builds or 'none'}"]
    if installed[builds[0]] != TF_VERSION:
        return [f"{builds[0]} is {installed[builds[0]]}, expected {TF_VERSION}"]
    installed.setdefault("tensorflow", TF_VERSION)
    problems, skew = [], set()
    for dist in metadata.distributions():
        name = normalize(dist.metadata["Name"])
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            have = installed.get(normalize(req.name))
            if have is not None and req.specifier.contains(have, prereleases=True):
                continue
            line = (f"{name} {dist.version} requires {req}, "
                    + (f"has {have}" if have else "not installed"))
            if normalize(req.name) in PACKAGING_TOOLS:
                print(f"not checked: {line} (a packaging tool, not pinned by the lock)")
            elif normalize(req.name) == "tensorflow" and name in KNOWN_SKEW:
                skew.add(name)
                print(f"accepted: {line} ({KNOWN_SKEW[name]})")
            else:
                problems.append(line)
    if tpu_report:
        problems += _check_tpu_wheel(tpu_report, installed, Requirement)
    missing = set(KNOWN_SKEW) - skew - (set(KNOWN_SKEW) - set(installed))
    problems += [f"{name} no longer skews: drop it from KNOWN_SKEW" for name in sorted(missing)]
    return problems


def _check_tpu_wheel(report_path: str, installed: dict, requirement) -> list[str]:
    import json

    with open(report_path) as handle:
        report = json.load(handle)
    [meta] = [item["metadata"] for item in report["install"]
              if normalize(item["metadata"]["name"]) == "tensorflow-tpu"]
    if meta["version"] != TF_VERSION:
        return [f"the registry's tensorflow-tpu is {meta['version']}, expected {TF_VERSION}"]
    problems = []
    for text in meta.get("requires_dist") or []:
        req = requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = normalize(req.name)
        have = TPU_ONLY.get(key) or installed.get(key)
        if key in PACKAGING_TOOLS and have is None:
            continue
        if have is None or not req.specifier.contains(have, prereleases=True):
            problems.append(f"tensorflow-tpu {TF_VERSION} requires {req}, "
                            + (f"the set has {have}" if have else "not in the set"))
    print(f"tensorflow-tpu {TF_VERSION}'s declared requirements: met by the set"
          if not problems else "tensorflow-tpu's declared requirements: NOT met")
    return problems


def fingerprint(tf_build: str) -> str:
    text = "\n".join(requirements(tf_build)) + "\n" + sys.version.split()[0]
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def venv_python(folder: str) -> str:
    return os.path.join(folder, "bin", "python")


def venv_ready(folder: str, tf_build: str = "tensorflow-cpu") -> bool:
    try:
        with open(os.path.join(folder, STAMP)) as handle:
            return handle.read().strip() == fingerprint(tf_build)
    except OSError:
        return False


def probe(timeout: float = 60) -> str | None:
    """None when pip reaches the package index, else pip's last line."""
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions",
                               "tensorflow-cpu"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0 and TF_VERSION in proc.stdout:
        return None
    if proc.returncode == 0:
        return f"no tensorflow-cpu {TF_VERSION} in what pip reaches ({proc.stdout.strip()})"
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"pip exited {proc.returncode}"


def build_venv(folder: str, tf_build: str = "tensorflow-cpu", log=print) -> None:
    """The set in a virtual environment at `folder` (reused while its stamp matches),
    then `check` in it. Raises CalledProcessError on a failed install or check."""
    import shutil
    import tempfile

    if venv_ready(folder, tf_build):
        log(f"{folder}: up to date")
        return
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", folder], check=True)
    python = venv_python(folder)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(requirements(tf_build)) + "\n")
    try:
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-r", handle.name],
                       check=True)
    finally:
        os.unlink(handle.name)
    # tensorflow-tpu's own metadata (not installed here: tensorflow-cpu stands in)
    report = os.path.join(folder, "tensorflow-tpu-report.json")
    subprocess.run([python, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                    "--no-deps", "--report", report, f"tensorflow-tpu=={TF_VERSION}"],
                   check=True)
    subprocess.run([python, os.path.abspath(__file__), "check", report], check=True)
    with open(os.path.join(folder, STAMP), "w") as out:
        out.write(fingerprint(tf_build) + "\n")
    log(f"{folder}: built ({tf_build}=={TF_VERSION})")


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "requirements":
        print("\n".join(requirements(argv[1] if len(argv) > 1 else "tensorflow-tpu")))
        return 0
    if command == "check":
        problems = check(argv[1] if len(argv) > 1 else None)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 1 if problems else 0
    if command == "venv":
        build_venv(argv[1] if len(argv) > 1 else os.path.join(ROOT, ".venv-tpu-tf"))
        return 0
    if command == "probe":
        reason = probe()
        if reason:
            print(reason)
        return 1 if reason else 0
    print(__doc__.split("\n\n")[-2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
