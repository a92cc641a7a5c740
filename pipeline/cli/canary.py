"""`imgpipe models canary MODEL`: decides a canary from the request log `imgpipe serve
--canary` writes: the candidate alias's version against the baseline alias's on the
same traffic. promote: the baseline alias moves to the candidate's version (audit
action canary-promote); revert: the candidate alias moves back to the baseline's
version (canary-revert); undecided: too little traffic yet, nothing changes.
(`pipeline.serve.canary` holds the rules; the candidate's model card gives the two models'
agreement on the eval split they are judged against.)"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.common import (Result, _add_json_arg, _add_registry_args, _registry,
                                 end_canary, number, positive_int, positive_number, share,
                                 table)

REVERT_EXIT = 3      # the candidate failed: a schedule running the canary hears of it


def cmd_models_canary(args: argparse.Namespace) -> Result:
    import dataclasses
    import datetime as dt

    from pipeline.serve import canary, monitoring, request_log
    from components.errors import ConfigError
    from components.registry.refs import check_name

    name = check_name(args.model)
    if args.candidate == args.baseline:
        raise ConfigError(f"--candidate and --baseline are both {args.candidate!r}; a canary "
                          "compares two aliases, e.g. --candidate staging --baseline production.")
    registry = _registry(args)
    holders = {}
    for role, alias in (("candidate", args.candidate), ("baseline", args.baseline)):
        aliases = registry.aliases(name)
        if alias not in aliases:
            raise ConfigError(f"model {name!r} has no alias {alias!r} (the --{role}; aliases: "
                              f"{', '.join(sorted(aliases)) or 'none'}).")
        holders[role] = registry.holder(name, alias)
    candidate, baseline = holders["candidate"].version, holders["baseline"].version
    now = dt.datetime.now(dt.timezone.utc)
    since = monitoring.parse_when(args.since, now, "--since")
    until = monitoring.parse_when(args.until, now, "--until") or now
    if since and since > until:
        raise ConfigError(f"--since {since.isoformat()} is after the end of its window "
                          f"({until.isoformat()}); give the earlier time first.")
    rules = canary.CanaryRules(**{f.name: getattr(args, f.name, f.default)
                                  for f in dataclasses.fields(canary.CanaryRules)})
    data: dict[str, Any] = {
        "model": name, "candidate": {"alias": args.candidate, "version": candidate},
        "baseline": {"alias": args.baseline, "version": baseline},
        "window": {"since": monitoring.iso(since), "until": monitoring.iso(until)},
        "rules_given": dataclasses.asdict(rules), "dry_run": args.dry_run, "change": None}
    if candidate == baseline:
        data.update(decision=canary.NOTHING, reason=(
            f"{name}@{args.candidate} and {name}@{args.baseline} both point at version "
            f"{candidate}: no canary running"))
        return Result(data=data, text=f"{data['reason']}; nothing changed.")
    entries = request_log.read(registry.root, name, since, until)
    expected = canary.reference(holders["candidate"].card, name, baseline)
    truths = read_truths(args.labels) if args.labels else None
    result = canary.canary(entries, candidate, baseline, rules, expected, truths)
    data.update(result, damaged_lines=entries.damaged, first_damage=entries.first_damage,
                skipped_paths=entries.skipped)
    decision = result["decision"]
    if decision in (canary.PROMOTE, canary.REVERT) and not args.dry_run:
        # the aliases as they are now: one moved meanwhile is not overwritten blindly;
        # a model kept in Vertex AI too: its aliases and endpoint follow, as a promote's do
        data["change"] = end_canary(registry, name, args.candidate, args.baseline,
                                    decision == canary.PROMOTE, result["reason"],
                                    (candidate, baseline))
    code = REVERT_EXIT if decision == canary.REVERT else 0

    def text() -> None:
        print(f"{name} canary: candidate {args.candidate} = version {candidate}, baseline "
              f"{args.baseline} = version {baseline}; traffic from "
              f"{data['window']['since'] or 'the start'} to {data['window']['until'] or 'now'}")
        rows = [("ARM", "VERSION", "REQUESTS", "ERRORS", "ERROR RATE", "P50 MS", "P99 MS",
                 "SAMPLED", "MEAN CONF")]
        for arm, version in (("candidate", candidate), ("baseline", baseline)):
            stats = result["arms"][arm]
            rows.append((arm, str(version), str(stats["requests"]), str(stats["errors"]),
                         number(stats["error_rate"], 4), number(stats["p50_ms"], 1),
                         number(stats["p99_ms"], 1), str(stats["sampled_images"]),
                         number(stats["mean_confidence"])))
        table(rows)
        if result["agreement"] is not None:
            print(f"agreement {result['agreement']:.3f} on {result['pairs']} image(s) answered "
                  f"by both versions ({result['labelled']} with labels)")
            print(f"judged against: version {candidate}'s eval split, where it and version "
                  f"{baseline} agreed on {expected['agreement']:.3f} of {expected['examples']} "
                  "examples" if expected else
                  f"judged against: fixed limits (version {candidate}'s card has no eval "
                  f"comparison with version {baseline})")
        if result["rules"]:
            table([("RULE", "VALUE", "LIMIT", "VERDICT")] + [
                (r["rule"], number(r["value"]), number(r["limit"]),
                 "ok" if r["passed"] else "FAIL") for r in result["rules"]])
        for line in monitoring.damage_lines(entries):
            print(f"  {line}")
        if decision == canary.UNDECIDED:
            print(f"decision: undecided: {result['reason']}; nothing changed.")
            return
        target, alias, action = ((candidate, args.baseline, "canary-promote")
                                 if decision == canary.PROMOTE
                                 else (baseline, args.candidate, "canary-revert"))
        held = baseline if decision == canary.PROMOTE else candidate
        rule = ("every rule passed" if result["decided_by"] == "all rules" else
                f"decided by {result['decided_by']}: the label-free rules inform only"
                ) if decision == canary.PROMOTE else \
            f"decided by the {result['decided_by']} rule"
        print(f"decision: {decision} ({rule}): {result['reason']}")
        change = data["change"]
        if args.dry_run:
            print(f"dry run: {name}@{alias} would move from version {held} to version "
                  f"{target} ({action}); nothing written.")
        elif change and change.get("unchanged"):
            print(f"{name}@{alias} already points at version {target}; nothing changed.")
        else:
            print(f"{name}@{alias}: version {held} -> version {target} ({action}, "
                  "recorded in the audit log)")

    return Result(data=data, text=text, code=code)


def read_truths(path: str) -> dict[tuple[str, int], str]:
    """A label file for labelled feedback: CSV with a header (request_id, label, and
    optionally index: the image's place in the request, default 0) or JSON lines with
    the same keys -> {(request id, index): label}."""
    import csv
    import json

    from components.io import fileio
    from components.errors import ConfigError

    if not fileio.exists(path):
        raise ConfigError(f"--labels {path}: no such file; give a CSV (request_id,label"
                          "[,index]) or JSON lines with those keys.")
    text = fileio.read_text(path)
    try:
        rows = ([json.loads(line) for line in text.splitlines() if line.strip()]
                if path.endswith((".jsonl", ".json")) else list(csv.DictReader(text.splitlines())))
        return {(str(row["request_id"]), int(row.get("index") or 0)): str(row["label"]).strip()
                for row in rows}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"--labels {path}: each row needs request_id and label (and "
                          f"optionally index, an integer); {type(exc).__name__}: {exc}"
                          ) from None


def register(models: Any) -> None:
    """`models canary MODEL`, under `models`' subparsers (the dispatcher hands them)."""
    from pipeline.serve.canary import CanaryRules

    rules = CanaryRules()
    p = models.add_parser("canary", help="decide a canary from the request log: promote the "
                                         "candidate, revert it, or wait for more traffic")
    p.add_argument("model", help="model name")
    p.add_argument("--candidate", default="staging",
                   help="the alias under test (default staging)")
    p.add_argument("--baseline", default="production",
                   help="the alias it is compared with, and moves to it on promote (default "
                        "production)")
    p.add_argument("--min-requests", type=positive_int, default=rules.min_requests,
                   help="requests needed on each arm before deciding (default "
                        f"{rules.min_requests}; fewer: undecided, nothing changes)")
    p.add_argument("--min-images", type=positive_int, default=rules.min_images,
                   help="sampled images answered by both versions needed (default "
                        f"{rules.min_images})")
    p.add_argument("--min-agreement", type=share, default=rules.min_agreement,
                   help="without an eval reference only (the candidate's card compares it "
                        "with another version): share of images both versions give the "
                        f"same class, at least (default {rules.min_agreement:g}); with one, "
                        "the eval split's agreement less its sampling noise")
    p.add_argument("--max-confidence-drop", type=share, default=rules.max_confidence_drop,
                   help="how much more the candidate's mean confidence fell since eval than "
                        "the baseline's, on the same images, at most (default "
                        f"{rules.max_confidence_drop:g}; without an eval reference: the "
                        "baseline's minus the candidate's)")
    p.add_argument("--max-share-shift", type=share, default=rules.max_share_shift,
                   help="how much further apart the two arms' predicted-class shares are on "
                        f"traffic than on eval, at most (default {rules.max_share_shift:g})")
    p.add_argument("--labels", metavar="FILE",
                   help="true classes of served images, joined by request id: CSV "
                        "request_id,label[,index] or JSON lines; with requests' own "
                        "\"labels\", labelled traffic decides by accuracy")
    p.add_argument("--min-labelled", type=positive_int, default=rules.min_labelled,
                   help="labelled images answered by both versions from which accuracy "
                        f"decides (default {rules.min_labelled})")
    p.add_argument("--max-error-rate-increase", type=share,
                   default=rules.max_error_rate_increase,
                   help="candidate's error rate (5xx) minus the baseline's, at most "
                        f"(default {rules.max_error_rate_increase:g})")
    p.add_argument("--max-latency-ratio", type=positive_number, default=rules.max_latency_ratio,
                   help="candidate's p50 and tail latency (p99 from 1,000 requests an arm; "
                        "below, the slowest 10: p95 at 200) over the baseline's, at most "
                        f"(default {rules.max_latency_ratio:g})")
    p.add_argument("--since", help="only traffic from then on: an ISO time or a span back "
                                   "from now, e.g. 1h, 24h (default: all the traffic of "
                                   "the versions the aliases hold now)")
    p.add_argument("--until", help="only traffic until then (default now)")
    p.add_argument("--dry-run", action="store_true",
                   help="decide and print, but move no alias")
    _add_registry_args(p)
    _add_json_arg(p, "the arms, rules and decision as JSON on stdout")
    p.set_defaults(func=cmd_models_canary)
