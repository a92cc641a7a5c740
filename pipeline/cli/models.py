"""The model registry: `models list/show/diff/promote/rollback/repair/sync-vertex`,
`models alias delete`, and `predict` with a pushed model."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from components.io.beamio import PARALLEL_MIN_INPUTS
from components.errors import ConfigError, ImgpipeError
from pipeline.cli.common import (COMMON_ALIASES, DEFAULT_RUNS_DIR, NOTHING_WRITTEN,
                                 PREDICTIONS, Result, _add_force_arg, _add_json_arg,
                                 _add_registry_args, _registry, _sync_vertex, check_output,
                                 positive_int, promote, rollback, table)


def cmd_models_list(args: argparse.Namespace) -> Result:
    from pipeline.registry_views import list_versions

    registry = _registry(args)
    for link, real in registry.links_outside(args.model):
        print(f"imgpipe: warning: skipped {link}: a link to {real}, outside the registry "
              f"{registry.root} (the registry lists, promotes and serves only what was "
              "pushed into it); remove the link.", file=sys.stderr)
    rows = _with_missing(registry, list_versions(registry, args.model), args.model)

    def text() -> None:
        if not rows:
            if args.model:
                others = [m for m in registry.models() if m != args.model]
                print(f"model {args.model!r} has no pushed versions under {registry.root} "
                      f"(models there: {', '.join(others) or 'none'})")
            else:
                print(f"no pushed models under {registry.root}")
            return
        print(f"{'MODEL:VERSION':<28} {'ACCURACY':>8} {'BLESSED':>7} {'INFRA':>5} {'AGE':>5}  "
              f"{'KIND':<9} ALIASES")
        for row in rows:
            if row.get("missing"):
                print(f"{row['ref']:<28} MISSING: "
                      + ", ".join(f"{a} -> {row['version']} (missing)" for a in row["aliases"])
                      + f"; {row['error']}")
                continue
            if row.get("error"):
                print(f"{row['ref']:<28} DAMAGED: {row['error']}")
                continue
            accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            print(f"{row['ref']:<28} {accuracy:>8} {str(row['blessed']).lower():>7} "
                  f"{str(row['infra']).lower():>5} {row['age']:>5}  "
                  f"{str(row['kind'] or '-'):<9} {','.join(row['aliases'])}")

    return Result(data=rows, text=text)


def _with_missing(registry, rows: list[dict[str, Any]], name: str | None
                  ) -> list[dict[str, Any]]:
    """`rows` plus one row per version an alias still names whose folder is gone, so
    the listing shows the alias (and its repair) instead of dropping it."""
    from components.errors import RegistryError

    missing = []
    for model in [name] if name else registry.models():
        try:
            dangling = registry.dangling(model)
        except RegistryError:
            continue          # a damaged ledger: its row already says so
        for number in sorted(set(dangling.values())):
            aliases = sorted(a for a, n in dangling.items() if n == number)
            try:
                registry.resolve(f"{model}@{aliases[0]}")
                continue      # there after all (pushed meanwhile)
            except ImgpipeError as exc:
                error = str(exc)
            missing.append({"ref": f"{model}:{number}", "version": number, "missing": True,
                            "aliases": aliases, "error": error})
    if not missing:
        return rows

    def order(row: dict[str, Any]) -> tuple[str, int]:
        return row["ref"].rsplit(":", 1)[0], -1 if row["version"] is None else row["version"]

    return sorted(rows + missing, key=order)


def cmd_models_show(args: argparse.Namespace) -> Result:
    from components.artifacts import card_field
    from pipeline.registry_views import show

    info = show(_registry(args), args.ref, args.runs_dir)

    def text() -> None:
        card = info["card"]

        def field(dotted: str, default: Any = None) -> Any:
            return card_field(card, dotted, default)

        def shown(dotted: str) -> Any:
            """A value as printed: "-" where the card has none (never Python's None)."""
            value = field(dotted)
            return "-" if value is None else value

        print(f"{info['ref']}  aliases: {', '.join(info['aliases']) or '-'}  "
              f"path: {info['path']}")
        print(f"  model: {shown('model.kind')}, {shown('model.trainable_params')} params; "
              f"run {shown('run_id')}; "
              f"package {shown('package_version')} git {field('git_commit') or '-'}")
        start = field("model.warm_start")
        if start and not start.get("version"):
            print(f"  warm start: none ({start.get('ref')} named no pushed version yet)")
        elif start:
            print(f"  warm start: from {start.get('version')}"
                  + (f" ({start['ref']})" if start.get("ref") not in (None, start.get("version"))
                     else ""))
        print("  metrics: " + ", ".join(f"{k} {_metric(k, v)}"
                                        for k, v in field("metrics", {}).items()))
        print(f"  blessing: {'blessed' if field('blessing.blessed') else 'NOT blessed'} "
              f"({field('blessing.reason')}); baseline {field('blessing.baseline') or '-'}")
        checks = field("blessing.checks", [])
        for check in checks if isinstance(checks, list) else []:
            check = check if isinstance(check, dict) else {"check": check}
            value = check.get("value")
            if isinstance(value, float):
                value = round(value, 4)
            print(f"    [{check.get('verdict', '?')}] {check.get('check', '?')}: {value} "
                  f"{check.get('detail', '')}")
        print(f"  infra validation: {shown('infra_validation.reason')}")
        print(f"  data: {shown('data.examples')} examples, classes {shown('data.classes')}, "
              f"fingerprint {json.dumps(field('data.fingerprint'))[:80]}")
        if field("data.spans"):
            print(f"  spans: trained on {', '.join(field('data.spans'))}; evaluated on "
                  f"{', '.join(field('data.evaluated_on') or [])}")
        for entry in info["audit"]:
            # A rollback has no --force: ledgers written before it stopped recording one
            # say force true on every rollback, which nobody asked for.
            forced = entry.get("force") and entry.get("action") != "rollback"
            print(f"  audit: {entry.get('time', '?')} {entry.get('who', '?')} "
                  f"{entry.get('action', 'promote')} @{entry['alias']} "
                  f"{_version_or_none(entry.get('from'))} -> "
                  f"{_version_or_none(entry.get('to'))}{' (forced)' if forced else ''}"
                  f"{' (canary %s%%)' % entry['traffic'] if 'traffic' in entry else ''} "
                  f"{entry.get('reason') or ''}")
        for item in info.get("lineage", []):
            print(f"  lineage: {item['name']} ({item['type']}, run {item['run_id']}) -> "
                  f"{item['consumed_by']}: {item['uri']}")

    return Result(data=info, text=text)


def cmd_models_diff(args: argparse.Namespace) -> Result:
    from pipeline.registry_views import diff

    result = diff(_registry(args), args.left, args.right)

    def change(key: str, value: Any) -> str:
        return "-" if value is None else (f"{value:+,.0f}" if _is_count(key, value)
                                          else f"{value:+.4f}")

    def text() -> None:
        table([("METRIC", result["left"], result["right"], "CHANGE")] + [
            (key, _metric(key, row["left"]), _metric(key, row["right"]),
             change(key, row["change"])) for key, row in result["metrics"].items()])
        if result["per_class"]:
            print()

            def pair(row: dict[str, Any]) -> str:
                return f"{_metric('', row['left'])} -> {_metric('', row['right'])}"

            table([("CLASS", "RECALL", "PRECISION", "F1 CHANGE")] + [
                (name, pair(row["recall"]), pair(row["precision"]),
                 change("", row["f1_score"]["change"]))
                for name, row in result["per_class"].items()])
        for key, change_ in result["config_changes"].items():
            print(f"config {key}: {_value(change_['left'])} -> {_value(change_['right'])}")
        if result["hyperparameters"]["left"] != result["hyperparameters"]["right"]:
            print(f"tuned values: {_values(result['hyperparameters']['left'])} -> "
                  f"{_values(result['hyperparameters']['right'])}")
        if result["data"]["left"] != result["data"]["right"]:
            counts = result["eval_examples"]
            print(f"imgpipe: warning: the two versions come from different data ("
                  f"{_fingerprints(result['data']['left'], result['data']['right'])}; "
                  f"{_count(counts['left'])} and {_count(counts['right'])} eval examples): the "
                  "metric changes compare different eval sets, not only the models.",
                  file=sys.stderr)

    return Result(data=result, text=text)


def _is_count(key: str, value: Any) -> bool:
    """Counts (example_count, num_*) print as whole numbers; the evaluator writes
    them as floats (346.0)."""
    return (key.endswith("_count") or key.startswith("num_")) or \
        (isinstance(value, int) and not isinstance(value, bool))


def _metric(key: str, value: Any) -> str:
    """A metric as the listings print it: counts whole, rates to 4 places."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,.0f}" if _is_count(key, value) else f"{value:.4f}"


def _count(value: Any) -> str:
    return "?" if value is None else f"{int(value):,}"


def _version_or_none(number: Any) -> str:
    """An audit entry's version: the number, "(none)" before an alias existed or after
    it was deleted (as `models promote` and `alias delete` print it)."""
    return "(none)" if number is None else str(number)


def _value(value: Any) -> str:
    """A config value as YAML writes it: none for null, lists and mappings inline."""
    if value is None:
        return "none"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) \
        else str(value).lower() if isinstance(value, bool) else str(value)


def _values(values: Any) -> str:
    """Tuned values: `key value, ...`, or none."""
    if not values:
        return "none"
    if not isinstance(values, dict):
        return _value(values)
    return ", ".join(f"{key} {_value(value)}" for key, value in sorted(values.items()))


def _fingerprints(left: Any, right: Any) -> str:
    """Two data fingerprints, readably: per split (`eval 73ab... and 14cd...`) when they
    are recorded per split, the first 12 characters of each, "-" for none."""
    def short(value: Any) -> str:
        return "-" if value is None else str(value)[:12]

    if isinstance(left, dict) and isinstance(right, dict):
        keys = [key for key in sorted(set(left) | set(right)) if left.get(key) != right.get(key)]
        return "fingerprints " + ", ".join(f"{key} {short(left.get(key))} and "
                                           f"{short(right.get(key))}" for key in keys)
    if isinstance(left, dict) or isinstance(right, dict):
        def whole(value: Any) -> str:
            return ", ".join(f"{k} {short(v)}" for k, v in sorted(value.items())) \
                if isinstance(value, dict) else short(value)
        return f"fingerprints {whole(left)} and {whole(right)}"
    return f"fingerprints {short(left)} and {short(right)}"


def _alias_change(name: str, entry: dict[str, Any]) -> Result:
    def text() -> None:
        served = entry.get("endpoint") or {}
        if entry.get("unchanged"):
            print(f"{name}@{entry['alias']} already points at version {entry['to']}; nothing "
                  "changed (not recorded)." + (f" {served['line']}" if served.get("line") and
                                               not served.get("warning") else ""))
            return
        before = "(none)" if entry["from"] is None else f"version {entry['from']}"
        after = "(deleted)" if entry["to"] is None else f"version {entry['to']}"
        canary = f", canary {entry['traffic']}%" if entry.get("traffic") is not None else ""
        print(f"{name}@{entry['alias']}: {before} -> {after} ({entry['action']}{canary}"
              f"{', forced' if entry['force'] and entry['action'] == 'promote' else ''})"
              + (f"; also on Vertex AI ({entry['vertex_model']})" if entry.get("vertex_model")
                 else ""))
        if served.get("line") and not served.get("warning"):
            print(f"  {served['line']}")

    return Result(data=dict(entry, model=name), text=text)


def cmd_models_sync_vertex(args: argparse.Namespace) -> Result:
    """Uploads a pushed version to Vertex AI Model Registry when it is not there yet
    (the push's upload failed), and points the aliases it holds here at it there."""
    from components import artifacts
    from components.integrations import vertex
    from components.artifacts import card_field
    from pipeline import config as config_lib

    if not args.config:
        raise ConfigError("models sync-vertex needs --config CONFIG: its push.vertex says "
                          "where in Vertex AI the model goes.")
    cfg = config_lib.load(args.config).push.vertex
    if cfg is None:
        raise ConfigError(f"{args.config} has no push.vertex section, so it does not say where "
                          "in Vertex AI the model goes; add push.vertex (project, region).")
    registry = _registry(args)
    version = registry.resolve(args.ref)
    aliases = sorted(a for a, number in registry.aliases(version.name).items()
                     if number == version.version)
    record = vertex.read_record(version.path)
    uploaded = record is None
    if uploaded:
        built, model_uri = None, card_field(version.card, "artifacts.model")
        try:       # the TensorFlow that built it picks the serving image, as at push
            built = artifacts.read(model_uri).properties.get("tensorflow_version") \
                if model_uri else None
        except (ImgpipeError, OSError):
            pass   # the run's model is gone: the installed TensorFlow's serving image
        record = vertex.upload_version(cfg, version, built, [])
    record = vertex.record_endpoint(version.path, cfg)
    for alias in aliases:
        vertex.sync_alias(version.path, alias)
    served = vertex.sync_endpoint(registry, version.name,
                                  settings=vertex.configured_endpoint(cfg))
    data = dict(record, ref=version.ref, uploaded=uploaded, aliases=aliases, served=served)
    did = "uploaded to" if uploaded else "already in"
    return Result(data=data, text=(
        f"{version.ref} {did} Vertex AI Model Registry: {record['model']} version "
        f"{record['version_id']}" + (f"; aliases {', '.join(aliases)} point at it there too"
                                     if aliases else "")
        + (f"\n  {served['line']}" if served else "")))


def cmd_models_promote(args: argparse.Namespace) -> Result:
    registry = _registry(args)
    name = registry.resolve(args.ref).name
    entry = promote(registry, args.ref, args.to, args.reason or "", args.force, args.create,
                    args.canary)
    return _alias_change(name, entry)


def _percent(text: str) -> int:
    if not text.isdigit() or int(text) > 99:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole percent from 0 to 99")
    return int(text)


def cmd_models_rollback(args: argparse.Namespace) -> Result:
    registry = _registry(args)
    entry = rollback(registry, args.model, args.alias, args.reason or "")
    return _alias_change(args.model, entry)


def cmd_models_alias_delete(args: argparse.Namespace) -> Result:
    registry = _registry(args)
    entry = registry.delete_alias(args.model, args.alias, args.reason or "")
    _sync_vertex(registry, args.model, entry["from"], entry["alias"], True, entry)
    return Result(data=entry, text=lambda: print(
        f"{args.model}: alias {entry['alias']} removed (was version {entry['from']})"))


def cmd_models_repair(args: argparse.Namespace) -> Result:
    registry = _registry(args)
    result = registry.repair(args.model)
    dangling = registry.dangling(args.model)

    def holder(aliases: dict[str, Any], alias: str) -> str:
        return f"version {aliases[alias]}" if alias in aliases else "(none)"

    def text() -> None:
        before, after = result["before"], result["after"]
        if before == after:
            print(f"{args.model}: aliases.json already matches the ledger "
                  f"({len(after)} alias{'' if len(after) == 1 else 'es'})")
        else:
            print(f"{args.model}: aliases.json rewritten from the ledger (audit.jsonl)"
                  + ("; it was damaged" if not isinstance(before, dict) else ""))
        known = isinstance(before, dict)      # else unreadable: only what it is now
        for alias in sorted(set(before if known else ()) | set(after)):
            was, now = holder(before, alias) if known else None, holder(after, alias)
            print(f"  {alias}: {now}" if was in (None, now) else f"  {alias}: {was} -> {now}")
        for alias, number in sorted(dangling.items()):
            print(f"imgpipe: warning: {args.model}@{alias} points at version {number}, whose "
                  f"folder is gone; point it at a version that is there with `imgpipe models "
                  f"promote {args.model}:N --to {alias}` (repair rewrites only aliases.json).",
                  file=sys.stderr)

    return Result(data=dict(result, missing=dangling), text=text)


def register(sub: Any) -> Any:
    """`models ...`; returns the `models` subparsers, where other command groups add
    their own `models` subcommands (the dispatcher hands it to them)."""
    models = sub.add_parser("models", help="the model registry: versions, aliases, promotion"
                            ).add_subparsers(dest="models_command", required=True)
    commands = {
        "list": (cmd_models_list, "versions with key metrics, blessing, aliases, age"),
        "show": (cmd_models_show, "a version's card, lineage and audit"),
        "diff": (cmd_models_diff, "two versions' metrics side by side"),
        "promote": (cmd_models_promote, "point an alias at a version"),
        "rollback": (cmd_models_rollback, "move an alias back to its previous holder"),
        "repair": (cmd_models_repair, "rewrite aliases.json from the audit ledger"),
        "sync-vertex": (cmd_models_sync_vertex, "upload a version missing from Vertex AI "
                                                "(a failed push) and move its aliases there"),
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
            p.add_argument("--canary", type=_percent, metavar="PERCENT",
                           help="with push.vertex.endpoint: the version also serves PERCENT%% "
                                "of the endpoint's traffic, beside the endpoint alias's version "
                                "(recorded in the audit log); 0 ends the canary")
        elif name == "sync-vertex":
            p.add_argument("ref", help="the version: NAME:VERSION, NAME@ALIAS or NAME@latest")
        elif name == "rollback":
            p.add_argument("model", help="model name")
            p.add_argument("--alias", required=True, help="the alias, e.g. production")
            p.add_argument("--reason", help="why (recorded in the audit log)")
        else:
            p.add_argument("model", help="model name")
        _add_registry_args(p)
        _add_json_arg(p)
        p.set_defaults(func=func)
    alias = models.add_parser("alias", help="manage aliases").add_subparsers(
        dest="alias_command", required=True)
    delete = alias.add_parser("delete", help="remove an alias (recorded in the audit log)")
    delete.add_argument("model", help="model name")
    delete.add_argument("alias", help="the alias to remove, e.g. staging")
    delete.add_argument("--reason", help="why (recorded in the audit log)")
    _add_registry_args(delete)
    _add_json_arg(delete)
    delete.set_defaults(func=cmd_models_alias_delete)
    return models


def cmd_predict(args: argparse.Namespace) -> Result:
    from components.inference import predict
    from components.artifacts import card_field
    from components.config.beam import BeamConfig

    if args.output:          # before anything loads: a mistake costs no inference
        check_output(args.output, PREDICTIONS, inputs=args.inputs, force=args.force)
    listed = predict.list_inputs(args.inputs)
    paths = [path for path, why in listed if why is None]
    model = args.model
    card: dict[str, Any] = {}
    answered = os.path.abspath(model)
    if not os.path.isdir(model):
        version = _registry(args).resolve(model)
        model, card, answered = version.path, version.card, version.ref
    warning = predict.shape_warning(paths, card_field(card, "model.image_shape"))
    if warning:
        print(f"imgpipe: warning: {warning}", file=sys.stderr)
    if args.beam or len(paths) > PARALLEL_MIN_INPUTS:
        beam = BeamConfig()
        if args.config:
            from pipeline import config as config_lib

            beam = config_lib.load(args.config).beam
        rows = predict.run_inference(model, paths, beam, args.batch_size, args.top_k)
    else:                    # the same RunInference job, in this process
        rows = predict.predict_local(model, paths, args.batch_size, args.top_k,
                                     progress=sys.stderr.isatty())
    rows = predict.with_unread(listed, rows)
    bad = sum(1 for r in rows if r.get("error"))
    if args.output:
        predict.write_rows(rows, args.output, answered)

    def data() -> dict[str, Any]:
        return {"model": answered, "output": os.path.abspath(args.output) if args.output
                else None, "rows": len(rows), "unreadable": bad,
                **({} if args.output else {"predictions": [
                    dict({k: row.get(k) for k in predict.COLUMNS}, model=answered)
                    for row in rows]})}

    def text() -> None:
        if args.output:
            print(f"wrote {len(rows)} rows to {args.output} (model {answered}; {bad} "
                  "unreadable file(s) reported in the error column)")
        else:                    # the rows themselves, as CSV on stdout
            predict.write_rows(rows, args.output, answered)

    return Result(data=data, text=text)


def register_predict(sub: Any) -> None:
    """`predict` (listed after `schedule` in --help, as before)."""
    predict = sub.add_parser("predict", help="classify image files with a pushed model")
    predict.add_argument("model", help="NAME@ALIAS, NAME:VERSION, NAME@latest or a SavedModel dir")
    predict.add_argument("inputs", nargs="+", help="image files, folders or a CSV/JSONL manifest")
    predict.add_argument("-o", "--output", help="out.csv or out.jsonl (default: CSV to stdout)")
    _add_force_arg(predict)
    predict.add_argument("--registry", help="registry root (default: ./serving)")
    predict.add_argument("--top-k", type=positive_int, default=3,
                         help="how many classes to list per image (default 3)")
    predict.add_argument("--batch-size", type=positive_int, default=64,
                         help="images per model call (default 64)")
    predict.add_argument("--beam", action="store_true",
                         help="run the RunInference job on the --config's Beam runner and "
                              f"options (default above {PARALLEL_MIN_INPUTS:,} files; else "
                              "in this process)")
    predict.add_argument("--config", help="take the registry and Beam options from this config")
    _add_json_arg(predict, "one JSON object: the model, counts, and the predictions (or "
                           "where -o wrote them)")
    predict.set_defaults(func=cmd_predict, stopped=NOTHING_WRITTEN)
