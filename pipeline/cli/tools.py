"""Helpers around a pipeline: `datasets export`, `summary`, `schema infer`,
`config schema` and `config show`."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from components.config.data import BUILTIN_DATASETS
from components.config.model import MODEL_KINDS
from components.errors import ConfigError
from pipeline.cli.common import (DEFAULT_RUNS_DIR, NOTHING_WRITTEN, OutputKind, Result,
                                 _add_config_args, _add_force_arg, _add_json_arg, _note,
                                 _stdout_to_stderr, check_output, positive_int)

# What -o writes; an existing file passes as an earlier output by how it starts.
JSON_SCHEMA = OutputKind("a JSON schema", (".json",),
                         lambda head: head.lstrip().startswith("{")
                         and re.search(r'"(\$schema|\$defs|properties)"', head) is not None)
TFMD_SCHEMA = OutputKind("a TFMD schema (text proto)", (".pbtxt", ".txt"),
                         lambda head: head.startswith("# TFMD schema")
                         or re.search(r"^feature\s*\{", head, re.MULTILINE) is not None)


def cmd_datasets_export(args: argparse.Namespace) -> Result:
    from components.data import datasets

    counts = datasets.export(args.name, args.out_dir, args.drops, args.first_day)
    kind = "PNG files" if args.name in BUILTIN_DATASETS else "files"
    where = (f"{args.drops} daily drop folders (YYYY-MM-DD/CLASS/) under {args.out_dir}; "
             f"read them with data.source: {args.out_dir.rstrip('/')}/{{YYYY}}-{{MM}}-{{DD}}/"
             if args.drops else f"{len(counts)} class folders under {args.out_dir}")
    return Result(data={"dataset": args.name, "out_dir": os.path.abspath(args.out_dir),
                        "files": sum(counts.values()), "classes": counts,
                        "drops": args.drops},
                  text=f"wrote {sum(counts.values())} {kind} in {where}")


def cmd_config_schema(args: argparse.Namespace) -> Result:
    from pipeline.config import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if not args.output:          # the schema itself is JSON, with or without --json
        return Result(data=None, text=lambda: sys.stdout.write(text))
    from components.io import fileio

    fileio.write_text_atomic(check_output(args.output, JSON_SCHEMA, force=args.force), text)
    return Result(data={"output": os.path.abspath(args.output)}, text=f"wrote {args.output}")


def cmd_config_show(args: argparse.Namespace) -> Result:
    import yaml

    from pipeline import config as config_lib

    cfg = config_lib.load(args.config, args.overrides)
    return Result(data=cfg.to_dict,
                  text=lambda: sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))


def cmd_schema_infer(args: argparse.Namespace) -> Result:
    """A schema from the statistics of this config's data: those of an earlier run
    whose ingest this config would reuse (nothing runs), else ingest runs first."""
    from components import artifacts
    from components.io import fileio
    from components.data import schema
    from pipeline import config as config_lib
    from pipeline import dag
    from pipeline.local.runner import LocalRunner

    cfg = config_lib.load(args.config, args.overrides)
    output = check_output(args.output or os.path.join("schemas", f"{cfg.name}.pbtxt"),
                          TFMD_SCHEMA, inputs=[args.config], force=args.force)
    note = _note(args)
    runner = LocalRunner(cfg, args.runs_dir, args.config, log=note)
    statistics = dag.ref("ingest", "statistics")
    found, why = runner.cached_output(statistics.step, statistics.output)
    if found is not None:
        stats_art, run_id, ran = found[0], found[1].run_id, False
        note(f"using the statistics of run {run_id} (its ingest read the same data with the "
             "same config and code; nothing runs)")
    else:
        note(f"running ingest first: no run under {args.runs_dir} has statistics for this "
             f"config's data ({why}); it is recorded as a run of {cfg.name}")
        with _stdout_to_stderr(args.json):
            result = runner.run(until=statistics.step)
        if result.error is not None:
            raise result.error
        stats_art = artifacts.read(statistics.uri(result.outputs))
        run_id, ran = result.run_id, True
    stats = artifacts.ExampleStatistics.read(stats_art)
    text = schema.schema_to_text(schema.infer_schema(stats))
    fileio.write_text_atomic(
        output, f"# TFMD schema of raw image examples, inferred by `imgpipe schema infer` "
                f"from the statistics of run {run_id}.\n" + text)
    return Result(data={"output": os.path.abspath(output), "classes": stats["class_names"],
                        "run_id": run_id, "statistics": stats_art.uri, "ran_ingest": ran},
                  text=lambda: print(
                      f"wrote {output} ({len(stats['class_names'])} classes, from the "
                      f"statistics of run {run_id}); enforce it with validate.schema: {output}"))


def cmd_summary(args: argparse.Namespace) -> Result:
    from components.trainer import models
    from components.config.model import ModelConfig

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"--input-shape {args.input_shape!r} must be H,W,C, e.g. 36,36,1.")
    model = models.build(ModelConfig(kind=args.model), shape, args.classes)

    def text() -> None:
        model.summary()          # ends with Keras' own total and trainable counts

    return Result(data=lambda: {"model": args.model, "input_shape": list(shape),
                                "classes": args.classes, "params": model.count_params(),
                                "trainable_params": models.trainable_params(model),
                                "layers": [_layer_row(layer) for layer in model.layers]},
                  text=text)


def _layer_row(layer: Any) -> dict[str, Any]:
    try:
        shape = [None if d is None else int(d) for d in layer.output.shape]
    except (AttributeError, ValueError, TypeError):
        shape = None          # a layer used more than once has no single output
    return {"name": layer.name, "type": type(layer).__name__, "output_shape": shape,
            "params": layer.count_params()}


def register(sub: Any) -> None:
    """datasets export, summary, schema infer, config schema/show."""
    ds = sub.add_parser("datasets", help="built-in datasets").add_subparsers(
        dest="datasets_command", required=True)
    export = ds.add_parser("export", help="write a built-in dataset as class folders of PNGs, "
                                          "or deal a folder of class folders into daily drops")
    export.add_argument("name", metavar="NAME_OR_FOLDER",
                        help=f"a built-in dataset ({', '.join(BUILTIN_DATASETS)}) or a folder "
                             "of class folders (its files copied as they are)")
    export.add_argument("out_dir", help="an empty or new folder to write CLASS/*.png into")
    export.add_argument("--drops", type=positive_int, metavar="N",
                        help="deal the images into N daily drops, OUT/YYYY-MM-DD/CLASS/*.png "
                             "(a source for data.spans)")
    export.add_argument("--first-day", metavar="YYYY-MM-DD",
                        help="the first drop's date (default: the last drop is today)")
    _add_json_arg(export)
    export.set_defaults(func=cmd_datasets_export, stopped=NOTHING_WRITTEN)

    summary = sub.add_parser("summary", help="print a model's Keras summary without training")
    summary.add_argument("--model", required=True, choices=MODEL_KINDS, help="model.kind")
    summary.add_argument("--input-shape", required=True, help="H,W,C, e.g. 36,36,1")
    summary.add_argument("--classes", type=positive_int, required=True,
                         help="number of classes (the output layer's width)")
    _add_json_arg(summary, "the layers and parameter counts as JSON")
    summary.set_defaults(func=cmd_summary, stopped="stopped.")

    schema_cmd = sub.add_parser("schema", help="TFMD schema of raw examples").add_subparsers(
        dest="schema_command", required=True)
    infer = schema_cmd.add_parser("infer", help="write a schema from the statistics of a run")
    _add_config_args(infer)
    infer.add_argument("-o", "--output", help="a .pbtxt file (default: schemas/NAME.pbtxt)")
    _add_force_arg(infer)
    infer.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                       help="the runs folder to take the statistics from; ingest runs (and "
                            "is recorded there) when no run has them for this config's data "
                            "(default ./runs)")
    _add_json_arg(infer)
    infer.set_defaults(func=cmd_schema_infer)

    cfg = sub.add_parser("config", help="config helpers").add_subparsers(
        dest="config_command", required=True)
    schema = cfg.add_parser("schema", help="print (or write) the config's JSON schema")
    schema.add_argument("-o", "--output", help="write it to this .json file (default: stdout)")
    _add_force_arg(schema)
    _add_json_arg(schema, "with -o: where it was written, as JSON (the schema itself is "
                          "JSON already)")
    schema.set_defaults(func=cmd_config_schema, stopped=NOTHING_WRITTEN)
    show = cfg.add_parser("show", help="print the full config with defaults")
    _add_config_args(show)
    _add_json_arg(show, "the config as JSON instead of YAML")
    show.set_defaults(func=cmd_config_show, stopped="stopped.")
