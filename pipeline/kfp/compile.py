"""The DAG of `pipeline/dag.py` as a Kubeflow Pipelines v2 package: `compile_pipeline`
writes it, `package_backend` reads back which service it was compiled for.

Every step becomes a lightweight KFP component generated from its declared contract (no
second definition of the steps), whose body only calls `run_step`
(`pipeline/kfp/entrypoint.py`), which goes through `pipeline/invoke.py` like the local
runner. The work is split by concern:

- `builder.py`: the pipeline function: the resolve task, each step behind the gates
  before it under `dsl.If` (as the local runner skips them), the report task;
- `step_builder.py`: one step as a task: its generated component, image, resources,
  accelerator, caching and retries (`kfp.steps`), a Vertex AI custom job;
- `parameters.py`: the run-time parameters (RUNTIME_PARAMETERS) and a step's compiled
  config without them.
"""

from __future__ import annotations

import os

from pipeline.config import PipelineConfig
from pipeline.kfp.builder import (build_pipeline, check_step_names, report_config,  # noqa: F401
                                  resolve_configs)
from pipeline.kfp.parameters import (package_parameters, runtime_parameters,  # noqa: F401
                                     without_runtime_keys)
from pipeline.kfp.shared import RUNTIME_PARAMETERS  # noqa: F401
from pipeline.kfp.step_builder import (BACKEND_ENV, RESOLVE, gke_accelerator,  # noqa: F401
                                       resource_limits)


def package_backend(package: str) -> str | None:
    """The kfp.backend a package was compiled for (the resolve task's BACKEND_ENV); None
    when it does not say (a template on a web address, or compiled before it was
    recorded)."""
    import yaml

    if package.startswith(("https://", "http://")):
        return None
    from components.io import fileio

    try:
        spec = next(yaml.safe_load_all(fileio.read_text(package)))
        env = spec["deploymentSpec"]["executors"][f"exec-{RESOLVE}"]["container"].get("env", [])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, StopIteration):
        return None
    return next((item.get("value") for item in env if item.get("name") == BACKEND_ENV), None)


def compile_pipeline(config: PipelineConfig, output: str, location: str = "") -> str:
    """Writes the pipeline of `config` (`location`: a user's DAG) to `output` as KFP v2
    IR YAML: whole or not at all (a partial file is renamed into place)."""
    from kfp import compiler

    from components.io import fileio

    fileio.prepare_output(output, "-o")
    partial = f"{output}.partial-{os.getpid()}.yaml"
    try:
        compiler.Compiler().compile(build_pipeline(config, location), partial)
        os.replace(partial, output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return output
