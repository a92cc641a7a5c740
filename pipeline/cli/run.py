"""Running the pipeline: `run` (locally, or the compiled pipeline under kfp.local), and
on a KFP service: `compile`, `submit`, `schedule`."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Callable

from components.errors import ConfigError, ImgpipeError, NotBlessed
from pipeline.cli.common import (DEFAULT_RUNS_DIR, NOTHING_WRITTEN, OutputKind, Result,
                                 _add_config_args, _add_dag_arg, _add_force_arg, _add_json_arg,
                                 _note, _stdout_to_stderr, at_schedule_time, check_output,
                                 schedule_time)

# What `compile -o` writes; an earlier package starts with KFP's header comment.
KFP_PACKAGE = OutputKind("a KFP pipeline package (IR YAML)", (".yaml", ".yml"),
                         lambda head: head.startswith("# PIPELINE DEFINITION"))


def cmd_run(args: argparse.Namespace) -> Result:
    from pipeline import config as config_lib

    cfg = config_lib.load(args.config, args.overrides)
    log = _note(args)
    with _stdout_to_stderr(args.json):
        when = args.schedule_time
        if when is not None and args.engine == "local":
            cfg = at_schedule_time(cfg, when, log)
        if args.engine in ("kfp-local", "kfp-docker"):
            from pipeline.kfp import local as kfp_local

            if args.until or args.no_cache:
                raise ConfigError(f"--until/--no-cache apply to the local engine; {args.engine} "
                                  "runs the whole compiled pipeline (kfp.local reuses nothing).")
            result = kfp_local.run_local(cfg, args.runs_dir, args.config, log=log,
                                         verbose=args.verbose, dag_location=args.dag,
                                         engine=args.engine,
                                         schedule_time=when.isoformat() if when else "")
        else:
            from pipeline.local.runner import run_pipeline

            result = run_pipeline(cfg, args.runs_dir, args.config, until=args.until,
                                  use_cache=not args.no_cache, log=log, dag_location=args.dag)
    push = result.push_outcome()
    code = NotBlessed.exit_code if (args.require_push and push is not None
                                    and not push.get("pushed")) else 0
    did = result.outcome()

    def text() -> None:
        ran = sum(1 for s in result.steps if s.status == "ran")
        cached = sum(1 for s in result.steps if s.status == "cached")
        print(f"run {result.run_id} finished: {ran} step(s) ran, {cached} reused from cache"
              + (f" ({result.engine})." if result.engine != "local" else "."))
        for step in result.steps:
            for name, uri in step.outputs.items():
                print(f"  {step.step}.{name}: {uri}")
        print(f"details: imgpipe runs show {result.run_id} --runs-dir {args.runs_dir}")
        # the last line says what the run did: pushed NAME:V, not blessed (why), ...
        where = f" at {push['path']}" if did["model"] and push and push.get("path") else ""
        metric = f" (accuracy {did['accuracy']:.3f})" if did["model"] and isinstance(
            did["accuracy"], (int, float)) else ""
        print(f"{did['text']}{where}{metric}")

    if result.error is not None and not args.json:
        # main() raises the error (its one line) instead of printing the text
        failed = next((s.step for s in result.steps if s.status == "failed"), None)
        report = os.path.join(result.run_dir, "report.html")
        log(f"run {result.run_id} failed" + (f" at {failed}" if failed else "")
            + (f"; report: {report}" if os.path.isfile(report) else ""))
        log(f"details: imgpipe runs show {result.run_id} --runs-dir {args.runs_dir}")
    return Result(data=result.to_json, text=text, code=code, error=result.error)


def cmd_compile(args: argparse.Namespace) -> Result:
    from pipeline import config as config_lib
    from pipeline.kfp import checks
    from pipeline.kfp import compile as kfp_compile

    check_output(args.output, KFP_PACKAGE, inputs=[args.config], force=args.force)
    cfg = config_lib.load(args.config, args.overrides, resolve_paths=False)
    checks.check_image(cfg, args.dag)
    unchecked = checks.check_remote(cfg, args.dag)
    kfp_compile.compile_pipeline(cfg, args.output, args.dag)
    return Result(data=lambda: {"output": os.path.abspath(args.output), "pipeline": cfg.name,
                                "image": cfg.kfp.image,
                                "parameters": kfp_compile.runtime_parameters(cfg),
                                "decided": cfg.decision_line(), "unchecked": unchecked},
                  text="\n".join([f"wrote {args.output} (KFP v2 IR; image {cfg.kfp.image})",
                                   cfg.decision_line(), *unchecked]))


@contextlib.contextmanager
def _compiled(args: argparse.Namespace):
    """(config, package path, parameters); a package compiled here lives in a temporary
    folder removed afterwards."""
    import tempfile

    from pipeline import config as config_lib
    from pipeline.kfp import checks
    from pipeline.kfp import compile as kfp_compile

    cfg = config_lib.load(args.config, args.overrides, resolve_paths=False)
    if not args.package:        # a package was checked when it was compiled
        checks.check_image(cfg, args.dag)
    for line in checks.check_remote(cfg, args.dag):
        _note(args)(line)
    params = kfp_compile.runtime_parameters(cfg)
    if args.package:
        fixed = [text.split("=", 1)[0] for text in args.overrides
                 if text.split("=", 1)[0].strip() not in kfp_compile.RUNTIME_PARAMETERS.values()]
        if fixed:
            raise ConfigError(
                f"--set {', '.join(fixed)}: compiled into {args.package}; a run can change "
                f"only {', '.join(kfp_compile.RUNTIME_PARAMETERS.values())}. Drop --package "
                "to compile with the change.")
        # Only what the package declares: a parameter it lacks would be refused by the
        # service, or ignored while the run uses the compiled value.
        declared = kfp_compile.package_parameters(args.package)
        if declared is not None:
            by_key = {key: name for name, key in kfp_compile.RUNTIME_PARAMETERS.items()}
            undeclared = [key for key in (t.split("=", 1)[0].strip() for t in args.overrides)
                          if by_key[key] not in declared]
            if undeclared:
                raise ConfigError(
                    f"--set {', '.join(undeclared)}: {args.package} declares no parameter for "
                    f"it (it declares {', '.join(sorted(declared)) or 'none'}); drop --package "
                    "to compile with the change.")
            params = {name: value for name, value in params.items() if name in declared}
        yield cfg, args.package, params
        return
    with tempfile.TemporaryDirectory(prefix="imgpipe-submit-") as folder:
        package = kfp_compile.compile_pipeline(cfg, os.path.join(folder, "pipeline.yaml"),
                                               args.dag)
        yield cfg, package, params


def _reach(target: str, call: Callable[[], Any]) -> Any:
    """A call to a remote service; its failure (no credentials, unreachable host, a
    refused request) is one line naming the service, not a traceback."""
    try:
        return call()
    except ImgpipeError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300].rstrip(".")
        raise ImgpipeError(f"{target} failed: {type(exc).__name__}: {first}. Check the "
                           "credentials (gcloud auth application-default login) and the "
                           "target (--project/--region, --kfp-host).") from exc


def _adapter(args: argparse.Namespace):
    from pipeline.kfp.submit import KfpAdapter, VertexAdapter, VertexTarget

    if args.vertex:
        missing = [f"--{k.replace('_', '-')}" for k in ("project", "region", "pipeline_root")
                   if not getattr(args, k)]
        if missing:
            raise ConfigError(f"--vertex needs {', '.join(missing)}.")
        target = VertexTarget(args.project, args.region, args.pipeline_root,
                              args.service_account)
        return _reach("connecting to Vertex AI", lambda: VertexAdapter(target))
    if args.kfp_host:
        return _reach(f"connecting to {args.kfp_host}",
                      lambda: KfpAdapter(args.kfp_host, experiment=args.experiment,
                                         pipeline_root=args.pipeline_root,
                                         service_account=args.service_account))
    raise ConfigError("say where: --vertex --project P --region R --pipeline-root gs://... "
                      "or --kfp-host https://...")


def _check_target(args: argparse.Namespace, cfg: Any, package: str) -> None:
    """What the chosen service cannot run: a package compiled for the other backend (its
    accelerators are named for one of them), and on Kubeflow Pipelines a pipeline root
    outside a bucket (its default minio:// root reaches the steps, where TensorFlow's
    file system cannot open it). Sets `args.service_account` to kfp.service_account
    when not given; a different one is refused (the package's custom jobs and Dataflow
    workers were compiled to run as kfp.service_account)."""
    from pipeline.config_kfp import KUBEFLOW, VERTEX
    from pipeline.kfp import compile as kfp_compile

    account = cfg.kfp.service_account
    if args.service_account and account and args.service_account != account:
        raise ConfigError(f"--service-account {args.service_account} is not kfp.service_account "
                          f"{account} of {args.config or 'the config'}, which the pipeline's "
                          "jobs (custom jobs, Dataflow workers) are compiled to run as; drop "
                          "--service-account, or set kfp.service_account to it and compile "
                          "again.")
    args.service_account = args.service_account or account
    if not (args.vertex or args.kfp_host):
        return                             # _adapter says how to name a target
    target = VERTEX if args.vertex else KUBEFLOW
    built = kfp_compile.package_backend(package) if args.package else cfg.kfp.backend
    if built is not None and built != target:
        what = f"--package {args.package}" if args.package else args.config or "the config"
        flag = "--vertex" if target == VERTEX else "--kfp-host"
        raise ConfigError(f"{what} is compiled for kfp.backend {built} (accelerators and the "
                          f"custom jobs are named for that service), not for {flag}; compile "
                          f"with --set kfp.backend={target} or submit it to its own service.")
    if target == KUBEFLOW and not (args.pipeline_root or "").startswith("gs://"):
        got = f" (got {args.pipeline_root!r})" if args.pipeline_root else ""
        raise ConfigError(f"--kfp-host needs --pipeline-root gs://BUCKET/PATH{got}: Kubeflow "
                          "Pipelines' default root is minio://, which the steps' TensorFlow "
                          "(tf.io.gfile) cannot open; give a bucket the run's service "
                          "account can write.")


def cmd_submit(args: argparse.Namespace) -> Result:
    with _compiled(args) as (cfg, package, params):
        _check_target(args, cfg, package)
        adapter = _adapter(args)
        name = args.name or cfg.name
        job = _reach("submitting the run", lambda: adapter.submit(name, package, params))
    return Result(data={"name": name, "target": _target(args), "job": str(job),
                        "parameters": params},
                  text=f"submitted {name}: {job}")


def cmd_schedule(args: argparse.Namespace) -> Result:
    with _compiled(args) as (cfg, package, params):
        _check_target(args, cfg, package)
        adapter = _adapter(args)
        name = args.name or cfg.name
        schedule = _reach("creating the schedule",
                          lambda: adapter.schedule(name, package, params, args.cron))
    return Result(data={"name": name, "target": _target(args), "cron": args.cron,
                        "schedule": str(schedule), "parameters": params},
                  text=f"scheduled {name} ({args.cron}): {schedule}")


def _target(args: argparse.Namespace) -> dict[str, Any]:
    if args.vertex:
        return {"service": "vertex", "project": args.project, "region": args.region,
                "pipeline_root": args.pipeline_root}
    return {"service": "kfp", "host": args.kfp_host, "experiment": args.experiment}


def register(sub: Any) -> None:
    """`run`."""
    from pipeline import dag  # the steps, as the DAG names them

    run = sub.add_parser("run", help="run the pipeline locally (with caching)")
    _add_config_args(run)
    # not argparse choices: a --dag of your own has steps of its own (the runner checks)
    run.add_argument("--until", metavar="STEP",
                     help="stop after this step: " + ", ".join(dag.names()))
    _add_dag_arg(run)
    run.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                     help="where runs, artifacts and metadata.sqlite live (default ./runs)")
    run.add_argument("--no-cache", action="store_true", help="rerun every step")
    run.add_argument("--engine", choices=["local", "kfp-local", "kfp-docker"], default="local",
                     help="local: cached local runner; kfp-local: the compiled KFP pipeline "
                          "with kfp.local subprocesses; kfp-docker: each task in a container "
                          "of kfp.image, as Kubernetes and Vertex AI run it (build it with "
                          "`make image`)")
    run.add_argument("--schedule-time", type=schedule_time, metavar="ISO8601",
                     help="run as a schedule would have at this time (e.g. "
                          "2026-12-02T03:00:00Z): a data.spans {scheduled: -Nd} window names "
                          "the spans of that day (every engine); for replays and tests")
    run.add_argument("--require-push", action="store_true",
                     help="exit 4 when the model was not pushed (not blessed or failed "
                          "infra validation); default: exit 0 and say so")
    _add_json_arg(run, "the run's result as one JSON object (steps, verdict, pushed "
                       "version); progress goes to stderr")
    run.set_defaults(func=cmd_run)


def register_remote(sub: Any) -> None:
    """`compile`, `submit`, `schedule` (listed after `models` in --help, as before)."""
    comp = sub.add_parser("compile", help="compile the pipeline to KFP v2 IR YAML")
    _add_config_args(comp)
    comp.add_argument("-o", "--output", default="pipeline.yaml",
                      help="where to write the IR YAML (default pipeline.yaml)")
    _add_force_arg(comp)
    _add_dag_arg(comp)
    _add_json_arg(comp)
    comp.set_defaults(func=cmd_compile, stopped=NOTHING_WRITTEN)
    for name, func, text in (("submit", cmd_submit, "run the pipeline on Vertex AI / KFP"),
                             ("schedule", cmd_schedule, "run it on a cron schedule")):
        p = sub.add_parser(name, help=text)
        _add_config_args(p)
        p.add_argument("--vertex", action="store_true", help="Vertex AI Pipelines")
        p.add_argument("--project", help="Google Cloud project (with --vertex)")
        p.add_argument("--region", help="Vertex AI region, e.g. us-central1 (with --vertex)")
        p.add_argument("--pipeline-root", help="gs://BUCKET/PATH for artifacts (required: "
                                               "Kubeflow's default minio:// root is not one "
                                               "the steps can open)")
        p.add_argument("--service-account",
                       help="account the run uses (default: kfp.service_account, else the "
                            "service's default); Vertex: an email, Kubeflow: a Kubernetes "
                            "service account")
        p.add_argument("--kfp-host", help="Kubeflow Pipelines endpoint")
        p.add_argument("--experiment", default="imgpipe", help="KFP experiment")
        p.add_argument("--package", help="a compiled pipeline YAML (default: compile now)")
        p.add_argument("--name", help="run / schedule display name (default: config name)")
        _add_dag_arg(p)
        if name == "schedule":
            p.add_argument("--cron", required=True, help='e.g. "0 3 * * *"')
        _add_json_arg(p)
        p.set_defaults(func=func)
