"""The DAG of `pipeline/dag.py` as a Kubeflow Pipelines v2 pipeline: three programs
that run in different places, one module each.

- `compile.py`: on the user's machine, at compile time. Writes the IR
  (`compile_pipeline`) of the `@dsl.pipeline` that `builder.py` assembles (the resolve
  and report tasks, each step behind its gates), one task per step from
  `step_builder.py` (a typed component generated from the step's contract, resources,
  caching), with the run-time parameters of `parameters.py`. `checks.py`, beside it:
  whether a config can run remotely (the steps' declared checks, `check_remote`, which
  says what it could not check from here) and has a step image (`check_image`).
- `entrypoint.py`: inside each step's container, at run time. The one stable module
  the generated component code imports (`run_step`, `resolve_pins`, `write_report`);
  it imports neither `compile.py` nor `local.py`.
- `local.py`: on the user's machine, running the compiled pipeline with `kfp.local`
  (`run_local`) and recording it like a local run.
- `shared.py`: the names compile and entrypoint must agree on (run-time parameters,
  the external-inputs pin, the UI outputs).

This package imports none of them, so importing `pipeline.kfp.entrypoint` in a
container loads only what the steps need.
"""
