"""The `imgpipe` command line. Imports stay inside commands so `--help` and cache
checks do not pay for TensorFlow or Beam."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

from components.errors import ImgpipeError

DEFAULT_RUNS_DIR = "runs"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline config YAML, e.g. configs/fonts.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline import config as config_lib
    from pipeline.local import run_pipeline

    cfg = config_lib.load(args.config, args.overrides)
    result = run_pipeline(cfg, args.runs_dir, args.config, until=args.until,
                          use_cache=not args.no_cache)
    if result.error is not None:
        raise result.error
    ran = sum(1 for s in result.steps if s.status == "ran")
    cached = sum(1 for s in result.steps if s.status == "cached")
    print(f"run {result.run_id} succeeded: {ran} step(s) ran, {cached} reused from cache.")
    for step in result.steps:
        for name, uri in step.outputs.items():
            print(f"  {step.step}.{name}: {uri}")
    print(f"details: imgpipe runs show {result.run_id} --runs-dir {args.runs_dir}")
    return 0


def _store(runs_dir: str):
    from pipeline.local import METADATA_FILE
    from pipeline.metadata import MetadataStore

    path = os.path.join(runs_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise ImgpipeError(f"no runs under {runs_dir!r} (no {METADATA_FILE}); run a pipeline "
                           "first (imgpipe run CONFIG) or pass --runs-dir.")
    return MetadataStore(path)


def cmd_runs_list(args: argparse.Namespace) -> int:
    store = _store(args.runs_dir)
    runs = store.list_runs(args.pipeline, args.limit)
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    print(f"{'RUN':<24} {'PIPELINE':<16} {'STATUS':<10} {'STEPS':<28} STARTED")
    for run in runs:
        steps = store.executions(run["id"])
        marks = " ".join(f"{e.step}{'*' if e.status == 'cached' else ''}" for e in steps)
        print(f"{run['id']:<24} {run['pipeline']:<16} {run['status']:<10} {marks:<28} "
              f"{run['started'][:19]}")
    print("(* = reused from cache)")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from pipeline.local import describe_run

    info = describe_run(_store(args.runs_dir), args.run_id)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"run {info['id']}  pipeline {info['pipeline']}  status {info['status']}")
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
    print(f"wrote {sum(counts.values())} PNG files in {len(counts)} class folders under "
          f"{args.out_dir}")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from pipeline.config import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from pipeline import config as config_lib

    cfg = config_lib.load(args.config, args.overrides)
    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0


def cmd_schema_infer(args: argparse.Namespace) -> int:
    from components import artifacts, fileio, validate
    from pipeline import config as config_lib
    from pipeline.local import run_pipeline

    cfg = config_lib.load(args.config, args.overrides)
    result = run_pipeline(cfg, args.runs_dir, args.config, until="ingest",
                          log=lambda line: None)
    if result.error is not None:
        raise result.error
    stats_uri = result.steps[0].outputs["statistics"]
    stats = json.loads(fileio.read_text(artifacts.read(stats_uri).path("stats.json")))
    text = validate.schema_to_text(validate.infer_schema(stats))
    output = args.output or os.path.join("schemas", f"{cfg.name}.pbtxt")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(f"# TFMD schema of raw image examples, inferred by `imgpipe schema infer` "
                     f"from run {result.run_id}.\n" + text)
    print(f"wrote {output} ({len(stats['class_names'])} classes, from run {result.run_id}); "
          f"enforce it with validate.schema: {output}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from components import models
    from components.config import ModelConfig
    from components.errors import ConfigError

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"--input-shape {args.input_shape!r} must be H,W,C, e.g. 36,36,1.")
    model = models.build(ModelConfig(kind=args.model), shape, args.classes)
    model.summary()
    print(f"Trainable params: {models.trainable_params(model):,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgpipe", description="TFX-style batch pipeline for image classification.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline locally (with caching)")
    _add_config_args(run)
    run.add_argument("--until", help="stop after this step")
    run.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                     help="where runs, artifacts and metadata.sqlite live (default ./runs)")
    run.add_argument("--no-cache", action="store_true", help="rerun every step")
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="inspect earlier runs").add_subparsers(
        dest="runs_command", required=True)
    runs_list = runs.add_parser("list", help="runs, newest first")
    runs_list.add_argument("--pipeline", help="only this pipeline name")
    runs_list.add_argument("--limit", type=int, default=20)
    runs_show = runs.add_parser("show", help="one run: steps, cache decisions, artifacts")
    runs_show.add_argument("run_id", help="run id (or a unique prefix)")
    for p, fn in ((runs_list, cmd_runs_list), (runs_show, cmd_runs_show)):
        p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=fn)

    ds = sub.add_parser("datasets", help="built-in datasets").add_subparsers(
        dest="datasets_command", required=True)
    export = ds.add_parser("export", help="write a built-in dataset as class folders of PNGs")
    export.add_argument("name", choices=["fonts", "digits", "fashion_mnist"])
    export.add_argument("out_dir")
    export.set_defaults(func=cmd_datasets_export)

    summary = sub.add_parser("summary", help="print a model's Keras summary without training")
    summary.add_argument("--model", required=True,
                         choices=["logistic", "dense", "mlp", "hidden1", "dnn", "cnn",
                                  "deep_cnn", "transfer"])
    summary.add_argument("--input-shape", required=True, help="H,W,C, e.g. 36,36,1")
    summary.add_argument("--classes", type=int, required=True)
    summary.set_defaults(func=cmd_summary)

    schema_cmd = sub.add_parser("schema", help="TFMD schema of raw examples").add_subparsers(
        dest="schema_command", required=True)
    infer = schema_cmd.add_parser("infer", help="write a schema from the statistics of a run")
    _add_config_args(infer)
    infer.add_argument("-o", "--output", help="default: schemas/NAME.pbtxt")
    infer.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    infer.set_defaults(func=cmd_schema_infer)

    cfg = sub.add_parser("config", help="config helpers").add_subparsers(
        dest="config_command", required=True)
    schema = cfg.add_parser("schema", help="print (or write) the config's JSON schema")
    schema.add_argument("-o", "--output")
    schema.set_defaults(func=cmd_config_schema)
    show = cfg.add_parser("show", help="print the full config with defaults")
    _add_config_args(show)
    show.set_defaults(func=cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter buries the pipeline's own output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ImgpipeError as exc:
        print(f"imgpipe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("imgpipe: interrupted", file=sys.stderr)
        return 130


def _entry() -> Any:  # pragma: no cover
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # TensorFlow, TFT and pyarrow can segfault while the interpreter tears down their
    # native state, which would turn a finished run's exit code into 139. Everything
    # is written and flushed by now, so leave without that teardown.
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
