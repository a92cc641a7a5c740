"""The `imgpipe` command line. Imports stay inside commands so `--help` and cache
checks do not pay for TensorFlow or Beam."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
from typing import Any, Callable, Sequence

from components import runtime
from components.beamio import PARALLEL_MIN_INPUTS
from components.config import BUILTIN_DATASETS, MODEL_KINDS
from components.errors import ConfigError, ImgpipeError, NotBlessed

DEFAULT_RUNS_DIR = "runs"


def _add_json_arg(parser: argparse.ArgumentParser,
                  text: str = "the result as JSON on stdout") -> None:
    parser.add_argument("--json", action="store_true", help=text)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline config YAML, e.g. configs/fonts.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _note(args: argparse.Namespace) -> Callable[[str], None]:
    """Where a command's progress and notes go: stdout, or stderr under --json (stdout
    then holds only the JSON result)."""
    # Bound now, and written without print(): a kfp-local run redirects sys.stdout and
    # kfp.local replaces print() while it streams a task's output.
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout

    def note(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return note


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """Under --json, whatever the steps print (epoch lines, Beam's and TensorFlow's
    output, also from child processes) goes to stderr: stdout holds only the result."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline import config as config_lib

    cfg = config_lib.load(args.config, args.overrides)
    log = _note(args)
    with _stdout_to_stderr(args.json):
        if args.engine == "kfp-local":
            from pipeline import kfp as kfp_pipeline

            if args.until or args.no_cache:
                raise ConfigError("--until/--no-cache apply to the local engine; kfp-local runs "
                                  "the whole compiled pipeline (kfp.local reuses nothing).")
            result = kfp_pipeline.run_local(cfg, args.runs_dir, args.config, log=log,
                                            verbose=args.verbose)
        else:
            from pipeline.local import run_pipeline

            result = run_pipeline(cfg, args.runs_dir, args.config, until=args.until,
                                  use_cache=not args.no_cache, log=log)
    push = result.push_outcome()
    code = NotBlessed.exit_code if (args.require_push and push is not None
                                    and not push.get("pushed")) else 0
    if args.json:
        _print_json(result.to_json())
    if result.error is not None:
        raise result.error
    if args.json:
        return code
    ran = sum(1 for s in result.steps if s.status == "ran")
    cached = sum(1 for s in result.steps if s.status == "cached")
    print(f"run {result.run_id} succeeded: {ran} step(s) ran, {cached} reused from cache"
          + (f" ({result.engine})." if result.engine != "local" else "."))
    for step in result.steps:
        for name, uri in step.outputs.items():
            print(f"  {step.step}.{name}: {uri}")
    print(f"details: imgpipe runs show {result.run_id} --runs-dir {args.runs_dir}")
    if push is not None:
        if push.get("pushed"):
            print(f"model: {push['model_name']}:{push['version']} at {push['path']}")
        else:
            print(f"NOTHING PUSHED: {push.get('reason')}")
    return code


def cmd_compile(args: argparse.Namespace) -> int:
    from pipeline import config as config_lib
    from pipeline import kfp as kfp_pipeline

    cfg = config_lib.load(args.config, args.overrides, resolve_paths=False)
    kfp_pipeline.check_remote(cfg)
    kfp_pipeline.compile_pipeline(cfg, args.output)
    if args.json:
        _print_json({"output": os.path.abspath(args.output), "pipeline": cfg.name,
                     "image": cfg.kfp.image,
                     "parameters": kfp_pipeline.runtime_parameters(cfg)})
    else:
        print(f"wrote {args.output} (KFP v2 IR; image {cfg.kfp.image})")
    return 0


@contextlib.contextmanager
def _compiled(args: argparse.Namespace):
    """(config, package path, parameters); a package compiled here lives in a temporary
    folder removed afterwards."""
    import tempfile

    from pipeline import config as config_lib
    from pipeline import kfp as kfp_pipeline

    cfg = config_lib.load(args.config, args.overrides, resolve_paths=False)
    kfp_pipeline.check_remote(cfg)
    params = kfp_pipeline.runtime_parameters(cfg)
    if args.package:
        fixed = [text.split("=", 1)[0] for text in args.overrides
                 if text.split("=", 1)[0].strip() not in kfp_pipeline.RUNTIME_PARAMETERS.values()]
        if fixed:
            raise ConfigError(
                f"--set {', '.join(fixed)}: compiled into {args.package}; a run can change "
                f"only {', '.join(kfp_pipeline.RUNTIME_PARAMETERS.values())}. Drop --package "
                "to compile with the change.")
        # Only what the package declares: a parameter it lacks would be refused by the
        # service, or ignored while the run uses the compiled value.
        declared = kfp_pipeline.package_parameters(args.package)
        if declared is not None:
            by_key = {key: name for name, key in kfp_pipeline.RUNTIME_PARAMETERS.items()}
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
        package = kfp_pipeline.compile_pipeline(cfg, os.path.join(folder, "pipeline.yaml"))
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
    from pipeline.submit import KfpAdapter, VertexAdapter, VertexTarget

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
                      lambda: KfpAdapter(args.kfp_host, experiment=args.experiment))
    raise ConfigError("say where: --vertex --project P --region R --pipeline-root gs://... "
                      "or --kfp-host https://...")


def cmd_submit(args: argparse.Namespace) -> int:
    with _compiled(args) as (cfg, package, params):
        adapter = _adapter(args)
        name = args.name or cfg.name
        job = _reach("submitting the run", lambda: adapter.submit(name, package, params))
    if args.json:
        _print_json({"name": name, "target": _target(args), "job": str(job),
                     "parameters": params})
    else:
        print(f"submitted {name}: {job}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    with _compiled(args) as (cfg, package, params):
        adapter = _adapter(args)
        name = args.name or cfg.name
        schedule = _reach("creating the schedule",
                          lambda: adapter.schedule(name, package, params, args.cron))
    if args.json:
        _print_json({"name": name, "target": _target(args), "cron": args.cron,
                     "schedule": str(schedule), "parameters": params})
    else:
        print(f"scheduled {name} ({args.cron}): {schedule}")
    return 0


def _target(args: argparse.Namespace) -> dict[str, Any]:
    if args.vertex:
        return {"service": "vertex", "project": args.project, "region": args.region,
                "pipeline_root": args.pipeline_root}
    return {"service": "kfp", "host": args.kfp_host, "experiment": args.experiment}


def _add_cloud_parsers(sub) -> None:
    comp = sub.add_parser("compile", help="compile the pipeline to KFP v2 IR YAML")
    _add_config_args(comp)
    comp.add_argument("-o", "--output", default="pipeline.yaml",
                      help="where to write the IR YAML (default pipeline.yaml)")
    _add_json_arg(comp)
    comp.set_defaults(func=cmd_compile)
    for name, func, text in (("submit", cmd_submit, "run the pipeline on Vertex AI / KFP"),
                             ("schedule", cmd_schedule, "run it on a cron schedule")):
        p = sub.add_parser(name, help=text)
        _add_config_args(p)
        p.add_argument("--vertex", action="store_true", help="Vertex AI Pipelines")
        p.add_argument("--project", help="Google Cloud project (with --vertex)")
        p.add_argument("--region", help="Vertex AI region, e.g. us-central1 (with --vertex)")
        p.add_argument("--pipeline-root", help="gs://BUCKET/PATH for artifacts")
        p.add_argument("--service-account",
                       help="service account the pipeline runs as (default: the project's)")
        p.add_argument("--kfp-host", help="Kubeflow Pipelines endpoint")
        p.add_argument("--experiment", default="imgpipe", help="KFP experiment")
        p.add_argument("--package", help="a compiled pipeline YAML (default: compile now)")
        p.add_argument("--name", help="run / schedule display name (default: config name)")
        if name == "schedule":
            p.add_argument("--cron", required=True, help='e.g. "0 3 * * *"')
        _add_json_arg(p)
        p.set_defaults(func=func)


def _store(runs_dir: str):
    from pipeline.metadata import METADATA_FILE, MetadataStore

    path = os.path.join(runs_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise ImgpipeError(f"no runs under {runs_dir!r} (no {METADATA_FILE}); run a pipeline "
                           "first (imgpipe run CONFIG) or pass --runs-dir.")
    return MetadataStore(path, read_only=True)


def cmd_runs_list(args: argparse.Namespace) -> int:
    store = _store(args.runs_dir)
    runs = store.list_runs(args.pipeline, args.limit)
    if args.json:
        _print_json(runs)
        return 0
    # STEPS last: its width grows with the DAG
    print(f"{'RUN':<24} {'PIPELINE':<16} {'ENGINE':<9} {'STATUS':<10} {'STARTED':<19} STEPS")
    marks = {"cached": "*", "skipped": "-", "failed": "!"}
    for run in runs:
        steps = " ".join(f"{e.step}{marks.get(e.status, '')}"
                         for e in store.executions(run["id"]))
        print(f"{run['id']:<24} {run['pipeline']:<16} {run['engine']:<9} {run['status']:<10} "
              f"{run['started'][:19]:<19} {steps}")
    print("(* = reused from cache, - = not run: its gate closed, ! = failed)")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from pipeline.local import describe_run

    info = describe_run(_store(args.runs_dir), args.run_id)
    if args.json:
        _print_json(info)
        return 0
    print(f"run {info['id']}  pipeline {info['pipeline']}  engine {info['engine']}  "
          f"status {info['status']}")
    print(f"  config: {info['config_path'] or '(defaults)'}  started {info['started']}  "
          f"ended {info['ended']}")
    if info.get("error"):
        print(f"  error: {info['error']}")
    for step in info["steps"]:
        print(f"  [{step['step']}] {step['status']}: {step['decision']}")
        for name, uri in step["inputs"].items():
            print(f"      in  {name}: {uri}")
        for name, out in step["outputs"].items():
            print(f"      out {name} ({out['type']}): {out['uri']}")
        for line in (step["summary"] or {}).get("lines", []):
            print(f"      {line}")
        if step["error"] and step["status"] == "failed":
            print(f"      error: {step['error'].strip().splitlines()[-1]}")
    report = os.path.join(args.runs_dir, info["id"], "report.html")
    if os.path.isfile(report):
        print(f"  report: {report}")
    return 0


def cmd_datasets_export(args: argparse.Namespace) -> int:
    from components import datasets

    counts = datasets.export(args.name, args.out_dir)
    if args.json:
        _print_json({"dataset": args.name, "out_dir": os.path.abspath(args.out_dir),
                     "files": sum(counts.values()), "classes": counts})
    else:
        print(f"wrote {sum(counts.values())} PNG files in {len(counts)} class folders under "
              f"{args.out_dir}")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from pipeline.config import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        from components import fileio

        fileio.write_text_atomic(fileio.prepare_output(args.output, "-o"), text)
        if args.json:
            _print_json({"output": os.path.abspath(args.output)})
        else:
            print(f"wrote {args.output}")
    else:                        # the schema itself is JSON, with or without --json
        sys.stdout.write(text)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from pipeline import config as config_lib

    cfg = config_lib.load(args.config, args.overrides)
    if args.json:
        _print_json(cfg.to_dict())
    else:
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0


def cmd_schema_infer(args: argparse.Namespace) -> int:
    """A schema from the statistics of this config's data: those of an earlier run
    whose ingest this config would reuse (nothing runs), else ingest runs first."""
    from components import artifacts, fileio, schema
    from pipeline import config as config_lib
    from pipeline.local import LocalRunner

    cfg = config_lib.load(args.config, args.overrides)
    output = fileio.prepare_output(args.output or os.path.join("schemas", f"{cfg.name}.pbtxt"),
                                   "-o")
    note = _note(args)
    runner = LocalRunner(cfg, args.runs_dir, args.config, log=note)
    found, why = runner.cached_output("ingest", "statistics")
    if found is not None:
        stats_art, run_id, ran = found[0], found[1].run_id, False
        note(f"using the statistics of run {run_id} (its ingest read the same data with the "
             "same config and code; nothing runs)")
    else:
        note(f"running ingest first: no run under {args.runs_dir} has statistics for this "
             f"config's data ({why}); it is recorded as a run of {cfg.name}")
        with _stdout_to_stderr(args.json):
            result = runner.run(until="ingest")
        if result.error is not None:
            raise result.error
        stats_art = artifacts.read(result.steps[0].outputs["statistics"])
        run_id, ran = result.run_id, True
    stats = json.loads(fileio.read_text(stats_art.path("stats.json")))
    text = schema.schema_to_text(schema.infer_schema(stats))
    fileio.write_text_atomic(
        output, f"# TFMD schema of raw image examples, inferred by `imgpipe schema infer` "
                f"from the statistics of run {run_id}.\n" + text)
    if args.json:
        _print_json({"output": os.path.abspath(output), "classes": stats["class_names"],
                     "run_id": run_id, "statistics": stats_art.uri, "ran_ingest": ran})
    else:
        print(f"wrote {output} ({len(stats['class_names'])} classes, from the statistics of "
              f"run {run_id}); enforce it with validate.schema: {output}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from components import models
    from components.config import ModelConfig

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"--input-shape {args.input_shape!r} must be H,W,C, e.g. 36,36,1.")
    model = models.build(ModelConfig(kind=args.model), shape, args.classes)
    if args.json:
        _print_json({"model": args.model, "input_shape": list(shape), "classes": args.classes,
                     "params": model.count_params(),
                     "trainable_params": models.trainable_params(model),
                     "layers": [_layer_row(layer) for layer in model.layers]})
        return 0
    model.summary()
    print(f"Trainable params: {models.trainable_params(model):,}")
    return 0


def _layer_row(layer: Any) -> dict[str, Any]:
    try:
        shape = [None if d is None else int(d) for d in layer.output.shape]
    except (AttributeError, ValueError, TypeError):
        shape = None          # a layer used more than once has no single output
    return {"name": layer.name, "type": type(layer).__name__, "output_shape": shape,
            "params": layer.count_params()}


def _registry(args: argparse.Namespace):
    from components import fileio
    from pipeline.registry import Registry, registry_root

    root = registry_root(args.registry, getattr(args, "config", None))
    if not fileio.exists(root):
        raise ConfigError(f"no model registry at {root} (nothing was pushed there); name it "
                          "with --registry DIR or --config CONFIG (its push.destination).")
    return Registry(root)


# Aliases a newcomer may use without --create; any other name must already exist for
# the model, so that a typo ("prodution") does not quietly become a new alias.
COMMON_ALIASES = ("production", "staging", "canary", "candidate")


def cmd_models_list(args: argparse.Namespace) -> int:
    from pipeline.registry import list_versions

    registry = _registry(args)
    rows = list_versions(registry, args.model)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no pushed models under {registry.root}")
        return 0
    print(f"{'MODEL:VERSION':<28} {'ACCURACY':>8} {'BLESSED':>7} {'INFRA':>5} {'AGE':>5}  "
          f"{'KIND':<9} ALIASES")
    for row in rows:
        if row.get("error"):
            print(f"{row['ref']:<28} DAMAGED: {row['error']}")
            continue
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        print(f"{row['ref']:<28} {accuracy:>8} {str(row['blessed']).lower():>7} "
              f"{str(row['infra']).lower():>5} {row['age']:>5}  {row['kind'] or '-':<9} "
              f"{','.join(row['aliases'])}")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    from pipeline.registry import show

    info = show(_registry(args), args.ref, args.runs_dir)
    if args.json:
        _print_json(info)
        return 0
    card = info["card"]
    print(f"{info['ref']}  aliases: {', '.join(info['aliases']) or '-'}  path: {info['path']}")
    print(f"  model: {card.get('model', {}).get('kind')}, "
          f"{card.get('model', {}).get('trainable_params')} params; run {card.get('run_id')}; "
          f"package {card.get('package_version')} git {card.get('git_commit') or '-'}")
    metrics = card.get("metrics", {})
    print("  metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                    if isinstance(v, float)))
    blessing = card.get("blessing", {})
    print(f"  blessing: {'blessed' if blessing.get('blessed') else 'NOT blessed'} "
          f"({blessing.get('reason')}); baseline {blessing.get('baseline') or '-'}")
    for check in blessing.get("checks", []):
        value = check["value"] if check["value"] is None else round(check["value"], 4)
        print(f"    [{check['verdict']}] {check['check']}: {value} {check.get('detail', '')}")
    print(f"  infra validation: {card.get('infra_validation', {}).get('reason')}")
    data = card.get("data", {})
    print(f"  data: {data.get('examples')} examples, classes {data.get('classes')}, "
          f"fingerprint {json.dumps(data.get('fingerprint'))[:80]}")
    for entry in info["audit"]:
        print(f"  audit: {entry['time']} {entry['who']} {entry['action']} @{entry['alias']} "
              f"{entry['from']} -> {entry['to']}{' (forced)' if entry['force'] else ''} "
              f"{entry['reason']}")
    for item in info.get("lineage", []):
        print(f"  lineage: {item['name']} ({item['type']}, run {item['run_id']}) -> "
              f"{item['consumed_by']}: {item['uri']}")
    return 0


def cmd_models_diff(args: argparse.Namespace) -> int:
    from pipeline.registry import diff

    result = diff(_registry(args), args.left, args.right)
    if args.json:
        _print_json(result)
        return 0

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    print(f"{'METRIC':<20} {result['left']:>14} {result['right']:>14} {'CHANGE':>9}")
    for key, row in result["metrics"].items():
        change = "-" if row["change"] is None else f"{row['change']:+.4f}"
        print(f"{key:<20} {num(row['left']):>14} {num(row['right']):>14} {change:>9}")
    print(f"\n{'CLASS':<24} {'RECALL':>15} {'PRECISION':>15} {'F1 CHANGE':>9}")
    for name, row in result["per_class"].items():
        f1 = row["f1_score"]["change"]
        print(f"{name:<24} {num(row['recall']['left'])}->{num(row['recall']['right'])} "
              f"{num(row['precision']['left'])}->{num(row['precision']['right'])} "
              f"{'-' if f1 is None else f'{f1:+.4f}':>9}")
    for key, change in result["config_changes"].items():
        print(f"config {key}: {change['left']!r} -> {change['right']!r}")
    if result["hyperparameters"]["left"] != result["hyperparameters"]["right"]:
        print(f"tuned values: {result['hyperparameters']['left'] or 'none'} -> "
              f"{result['hyperparameters']['right'] or 'none'}")
    if result["data"]["left"] != result["data"]["right"]:
        counts = result["eval_examples"]
        print(f"imgpipe: warning: the two versions come from different data (fingerprints "
              f"{str(result['data']['left'])[:12]} and {str(result['data']['right'])[:12]}; "
              f"{_count(counts['left'])} and {_count(counts['right'])} eval examples): the "
              "metric changes compare different eval sets, not only the models.",
              file=sys.stderr)
    return 0


def _count(value: Any) -> str:
    return "?" if value is None else f"{int(value):,}"


def _alias_change(name: str, entry: dict[str, Any], json_output: bool) -> None:
    if json_output:
        _print_json(dict(entry, model=name))
    elif entry.get("unchanged"):
        print(f"{name}@{entry['alias']} already points at version {entry['to']}; nothing "
              "changed (not recorded).")
    else:
        before = "(none)" if entry["from"] is None else f"version {entry['from']}"
        after = "(deleted)" if entry["to"] is None else f"version {entry['to']}"
        print(f"{name}@{entry['alias']}: {before} -> {after} ({entry['action']}"
              f"{', forced' if entry['force'] and entry['action'] == 'promote' else ''})"
              + (f"; also on Vertex AI ({entry['vertex_model']})" if entry.get("vertex_model")
                 else ""))


def _sync_vertex(registry, name: str, version: int | None, alias: str, removed: bool,
                 entry: dict[str, Any]) -> None:
    """Moves the alias on Vertex AI Model Registry too, when the version went there."""
    from components import vertex

    if version is None:
        return
    try:
        model = vertex.sync_alias(registry.get(name, version).path, alias, removed)
    except ImgpipeError:
        raise
    except Exception as exc:
        raise ImgpipeError(
            f"{name}@{alias} moved in the registry, but not on Vertex AI ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); run the same command "
            "again to retry (the registry side is already done).") from exc
    if model:
        entry["vertex_model"] = model


def cmd_models_promote(args: argparse.Namespace) -> int:
    registry = _registry(args)
    name = registry.resolve(args.ref).name
    existing = registry.aliases(name)
    if args.to not in existing and args.to not in COMMON_ALIASES and not args.create:
        raise ConfigError(f"alias {args.to!r} does not exist yet (existing: "
                          f"{', '.join(sorted(existing)) or 'none'}); check the spelling, or "
                          "pass --create to add it.")
    entry = registry.set_alias(args.ref, args.to, args.reason or "", args.force)
    _sync_vertex(registry, name, entry["to"], entry["alias"], False, entry)
    _alias_change(name, entry, args.json)
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    entry = registry.rollback(args.model, args.alias, args.reason or "")
    _sync_vertex(registry, args.model, entry["to"], entry["alias"], False, entry)
    _alias_change(args.model, entry, args.json)
    return 0


def cmd_models_alias_delete(args: argparse.Namespace) -> int:
    registry = _registry(args)
    entry = registry.delete_alias(args.model, args.alias, args.reason or "")
    _sync_vertex(registry, args.model, entry["from"], entry["alias"], True, entry)
    if args.json:
        _print_json(entry)
    else:
        print(f"{args.model}: alias {entry['alias']} removed (was version {entry['from']})")
    return 0


def cmd_models_repair(args: argparse.Namespace) -> int:
    result = _registry(args).repair(args.model)
    if args.json:
        _print_json(result)
    elif result["before"] == result["after"]:
        print(f"{args.model}: aliases.json already matches the ledger: {result['after']}")
    else:
        print(f"{args.model}: aliases.json rewritten from the ledger: {result['before']} -> "
              f"{result['after']}")
    return 0


def _add_models_parser(sub) -> None:
    models = sub.add_parser("models", help="the model registry: versions, aliases, promotion"
                            ).add_subparsers(dest="models_command", required=True)
    commands = {
        "list": (cmd_models_list, "versions with key metrics, blessing, aliases, age"),
        "show": (cmd_models_show, "a version's card, lineage and audit"),
        "diff": (cmd_models_diff, "two versions' metrics side by side"),
        "promote": (cmd_models_promote, "point an alias at a version"),
        "rollback": (cmd_models_rollback, "move an alias back to its previous holder"),
        "repair": (cmd_models_repair, "rewrite aliases.json from the audit ledger"),
    }
    for name, (func, text) in commands.items():
        p = models.add_parser(name, help=text)
        if name == "list":
            p.add_argument("model", nargs="?", help="only this model (default: every model)")
        elif name == "show":
            p.add_argument("ref", help="NAME@ALIAS, NAME:VERSION or NAME@latest")
            p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                           help="runs dir for the lineage (default ./runs)")
        elif name == "diff":
            p.add_argument("left", help="the earlier version, e.g. NAME@production")
            p.add_argument("right", help="the version compared with it, e.g. NAME:5")
        elif name == "promote":
            p.add_argument("ref", help="the version: NAME:VERSION, NAME@ALIAS or NAME@latest")
            p.add_argument("--to", required=True, help="alias, e.g. production")
            p.add_argument("--reason", help="why (recorded in the audit log)")
            p.add_argument("--force", action="store_true",
                           help="promote even if not blessed (recorded in the audit log)")
            p.add_argument("--create", action="store_true",
                           help=f"create an alias other than {', '.join(COMMON_ALIASES)} "
                                "that the model does not have yet")
        elif name == "rollback":
            p.add_argument("model", help="model name")
            p.add_argument("--alias", required=True, help="the alias, e.g. production")
            p.add_argument("--reason", help="why (recorded in the audit log)")
        else:
            p.add_argument("model", help="model name")
        p.add_argument("--registry", help="registry root (default: the --config's push "
                                          "destination, else ./serving)")
        p.add_argument("--config", help="take the registry from this config's push.destination")
        _add_json_arg(p)
        p.set_defaults(func=func)
    alias = models.add_parser("alias", help="manage aliases").add_subparsers(
        dest="alias_command", required=True)
    delete = alias.add_parser("delete", help="remove an alias (recorded in the audit log)")
    delete.add_argument("model", help="model name")
    delete.add_argument("alias", help="the alias to remove, e.g. staging")
    delete.add_argument("--reason", help="why (recorded in the audit log)")
    delete.add_argument("--registry", help="registry root (default: the --config's push "
                                           "destination, else ./serving)")
    delete.add_argument("--config", help="take the registry from this config's "
                                         "push.destination")
    _add_json_arg(delete)
    delete.set_defaults(func=cmd_models_alias_delete)


def cmd_predict(args: argparse.Namespace) -> int:
    from components import fileio, predict
    from components.config import BeamConfig

    if args.output:
        fileio.prepare_output(args.output, "-o")
    model = args.model
    card: dict[str, Any] = {}
    answered = os.path.abspath(model)
    if not os.path.isdir(model):
        version = _registry(args).resolve(model)
        model, card, answered = version.path, version.card, version.ref
        print(f"model: {version.ref} ({model})", file=sys.stderr)
    paths = predict.expand_inputs(args.inputs)
    warning = predict.shape_warning(paths, card.get("model", {}).get("image_shape"))
    if warning:
        print(f"imgpipe: warning: {warning}", file=sys.stderr)
    if args.beam or len(paths) > PARALLEL_MIN_INPUTS:
        beam = BeamConfig()
        if args.config:
            from pipeline import config as config_lib

            beam = config_lib.load(args.config).beam
        rows = predict.predict_beam(model, paths, beam.pipeline_args(), args.batch_size,
                                    args.top_k)
    else:
        rows = predict.predict_local(model, paths, args.batch_size, args.top_k,
                                     progress=sys.stderr.isatty())
    bad = sum(1 for r in rows if r.get("error"))
    if args.json:
        if args.output:
            predict.write_rows(rows, args.output, answered)
        _print_json({"model": answered, "output": os.path.abspath(args.output) if args.output
                     else None, "rows": len(rows), "unreadable": bad,
                     **({} if args.output else {"predictions": [
                         dict({k: row.get(k) for k in predict.COLUMNS}, model=answered)
                         for row in rows]})})
        return 0
    predict.write_rows(rows, args.output, answered)
    if args.output:
        print(f"wrote {len(rows)} rows to {args.output} ({bad} unreadable file(s) reported "
              "in the error column)")
    return 0


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error style: one line, exit 2, and where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"imgpipe: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="imgpipe", description="TFX-style batch pipeline for image classification.")
    parser.add_argument("--version", action="version",
                        version=f"imgpipe {runtime.package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own logs (TensorFlow, Beam, TFMA, "
                             "KerasTuner)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_models_parser(sub)
    _add_cloud_parsers(sub)
    _add_predict_parser(sub)
    _add_runs_parser(sub)
    _add_helper_parsers(sub)
    return parser


def _add_run_parser(sub: Any) -> None:
    from pipeline import dag     # the steps, as the DAG names them

    run = sub.add_parser("run", help="run the pipeline locally (with caching)")
    _add_config_args(run)
    run.add_argument("--until", metavar="STEP", choices=dag.names(),
                     help="stop after this step: " + ", ".join(dag.names()))
    run.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                     help="where runs, artifacts and metadata.sqlite live (default ./runs)")
    run.add_argument("--no-cache", action="store_true", help="rerun every step")
    run.add_argument("--engine", choices=["local", "kfp-local"], default="local",
                     help="local: cached local runner; kfp-local: the compiled KFP pipeline "
                          "with kfp.local subprocesses")
    run.add_argument("--require-push", action="store_true",
                     help="exit 4 when the model was not pushed (not blessed or failed "
                          "infra validation); default: exit 0 and say so")
    _add_json_arg(run, "the run's result as one JSON object (steps, verdict, pushed "
                       "version); progress goes to stderr")
    run.set_defaults(func=cmd_run)


def _add_predict_parser(sub: Any) -> None:
    predict = sub.add_parser("predict", help="classify image files with a pushed model")
    predict.add_argument("model", help="NAME@ALIAS, NAME:VERSION, NAME@latest or a SavedModel dir")
    predict.add_argument("inputs", nargs="+", help="image files, folders or a CSV/JSONL manifest")
    predict.add_argument("-o", "--output", help="out.csv or out.jsonl (default: CSV to stdout)")
    predict.add_argument("--registry", help="registry root (default: ./serving)")
    predict.add_argument("--top-k", type=positive_int, default=3,
                         help="how many classes to list per image (default 3)")
    predict.add_argument("--batch-size", type=positive_int, default=64,
                         help="images per model call (default 64)")
    predict.add_argument("--beam", action="store_true",
                         help="run as a Beam job (default above "
                              f"{PARALLEL_MIN_INPUTS:,} files)")
    predict.add_argument("--config", help="take the registry and Beam options from this config")
    _add_json_arg(predict, "one JSON object: the model, counts, and the predictions (or "
                           "where -o wrote them)")
    predict.set_defaults(func=cmd_predict)


def _add_runs_parser(sub: Any) -> None:
    runs = sub.add_parser("runs", help="inspect earlier runs").add_subparsers(
        dest="runs_command", required=True)
    runs_list = runs.add_parser("list", help="runs, newest first")
    runs_list.add_argument("--pipeline", help="only this pipeline name")
    runs_list.add_argument("--limit", type=positive_int, default=20,
                           help="at most this many runs (default 20)")
    runs_show = runs.add_parser("show", help="one run: steps, cache decisions, artifacts")
    runs_show.add_argument("run_id", help="run id (or a unique prefix)")
    for p, fn in ((runs_list, cmd_runs_list), (runs_show, cmd_runs_show)):
        p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                       help="the runs folder (default ./runs)")
        _add_json_arg(p)
        p.set_defaults(func=fn)


def _add_helper_parsers(sub: Any) -> None:
    """datasets export, summary, schema infer, config schema/show."""
    ds = sub.add_parser("datasets", help="built-in datasets").add_subparsers(
        dest="datasets_command", required=True)
    export = ds.add_parser("export", help="write a built-in dataset as class folders of PNGs")
    export.add_argument("name", choices=BUILTIN_DATASETS, help="which built-in dataset")
    export.add_argument("out_dir", help="an empty or new folder to write CLASS/*.png into")
    _add_json_arg(export)
    export.set_defaults(func=cmd_datasets_export)

    summary = sub.add_parser("summary", help="print a model's Keras summary without training")
    summary.add_argument("--model", required=True, choices=MODEL_KINDS, help="model.kind")
    summary.add_argument("--input-shape", required=True, help="H,W,C, e.g. 36,36,1")
    summary.add_argument("--classes", type=positive_int, required=True,
                         help="number of classes (the output layer's width)")
    _add_json_arg(summary, "the layers and parameter counts as JSON")
    summary.set_defaults(func=cmd_summary)

    schema_cmd = sub.add_parser("schema", help="TFMD schema of raw examples").add_subparsers(
        dest="schema_command", required=True)
    infer = schema_cmd.add_parser("infer", help="write a schema from the statistics of a run")
    _add_config_args(infer)
    infer.add_argument("-o", "--output", help="default: schemas/NAME.pbtxt")
    infer.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                       help="the runs folder to take the statistics from; ingest runs (and "
                            "is recorded there) when no run has them for this config's data "
                            "(default ./runs)")
    _add_json_arg(infer)
    infer.set_defaults(func=cmd_schema_infer)

    cfg = sub.add_parser("config", help="config helpers").add_subparsers(
        dest="config_command", required=True)
    schema = cfg.add_parser("schema", help="print (or write) the config's JSON schema")
    schema.add_argument("-o", "--output", help="write it to this file (default: stdout)")
    _add_json_arg(schema, "with -o: where it was written, as JSON (the schema itself is "
                          "JSON already)")
    schema.set_defaults(func=cmd_config_schema)
    show = cfg.add_parser("show", help="print the full config with defaults")
    _add_config_args(show)
    _add_json_arg(show, "the config as JSON instead of YAML")
    show.set_defaults(func=cmd_config_show)


def _quiet_libraries() -> None:
    """Library notices that say nothing to a pipeline user (TF/TFMA deprecations, the
    Keras notes about tf.data input that the trainer builds on purpose)."""
    import logging
    import warnings

    for message in ("`shuffle=True` was passed", "Your input ran out of data"):
        warnings.filterwarnings("ignore", message=message)
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _verbose(argv: Sequence[str]) -> bool:
    return any(arg in ("-v", "--verbose") for arg in argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = _verbose(argv)
    if not verbose:
        # TensorFlow's C++ start-up chatter buries the pipeline's own output.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _quiet_libraries()
    # -v works anywhere on the line (imgpipe run CONFIG -v), not only before the command
    argv = [arg for arg in argv if arg not in ("-v", "--verbose")]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # --help, --version, or a usage error already printed
        return int(exc.code or 0)
    args.verbose = verbose
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with runtime.private_tempdir():
            return func(args)
    except ImgpipeError as exc:
        print(f"imgpipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, runtime.Stopped) as exc:
        return _stopped(exc)
    except BrokenPipeError:
        return _closed_pipe()
    except Exception as exc:
        if runtime.stop_signal():   # a library turned our stop into an error of its own
            return _stopped(runtime.Stopped(runtime.stop_signal()))
        storage = storage_error(exc)
        if storage is None:
            raise
        print(f"imgpipe: error: {storage}", file=sys.stderr)
        return 2


# errno -> what it means for the user, for the storage failures a user fixes
_STORAGE_ERRORS = {errno.ENOSPC: "no space left on the device",
                   errno.EDQUOT: "the disk quota is used up",
                   errno.EROFS: "the file system is read-only",
                   errno.EACCES: "permission denied"}
_WRAPPED_ERRNO = re.compile(r"\[Errno (\d+)\] [^:'\n]*(?:: '([^']+)')?")


def storage_error(exc: BaseException) -> str | None:
    """One line for a full, read-only or forbidden disk, also when a library (Beam,
    TensorFlow) wrapped the OSError into an error of its own; None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRORS:
            return _storage_line(current.errno, current.filename)
        current = current.__cause__ or current.__context__
    match = _WRAPPED_ERRNO.search(str(exc))
    if match and int(match[1]) in _STORAGE_ERRORS:
        return _storage_line(int(match[1]), match[2])
    return None


def _storage_line(code: int, path: str | None) -> str:
    where = f" writing {path}" if path else ""
    return (f"{_STORAGE_ERRORS[code]}{where}; free space or fix the permissions, or point "
            "--runs-dir, push.destination or -o at another folder. A run stopped this way "
            "is recorded as failed and resumes from its first unfinished step.")


def _stopped(exc: BaseException) -> int:
    name = exc.signal_name if isinstance(exc, runtime.Stopped) else "SIGINT"
    print(f"imgpipe: interrupted ({name}); the run is recorded as failed and resumes from "
          "the first unfinished step when started again.", file=sys.stderr)
    return 130 if name == "SIGINT" else 143


def _closed_pipe() -> int:
    """`imgpipe ... | head`: the reader left; say nothing more, exit quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def _entry() -> Any:  # pragma: no cover
    runtime.install_stop_handlers()
    with contextlib.ExitStack() as stack:
        if not _verbose(sys.argv[1:]):
            stack.enter_context(runtime.filtered_native_stderr())
        code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _closed_pipe()
    sys.stderr.flush()
    # TensorFlow, TFT and pyarrow can segfault while the interpreter tears down their
    # native state, which would turn a finished run's exit code into 139. Everything
    # is written and flushed by now, so leave without that teardown.
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    _entry()
