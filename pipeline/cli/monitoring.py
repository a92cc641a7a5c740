"""`imgpipe monitor MODEL@ALIAS`: the traffic the version behind an alias served
(the request log `imgpipe serve` writes) against the training data its model card
records; exit 3 when a check fails, so that a schedule can act on it.
(`pipeline.serve.monitoring` holds the checks.)"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.common import (Result, _add_json_arg, _add_registry_args, _registry, number,
                                 positive_int, share, table)

DRIFT_EXIT = 3


def cmd_monitor(args: argparse.Namespace) -> Result:
    import dataclasses
    import datetime as dt

    from pipeline.serve import monitoring, request_log
    from components.errors import ConfigError
    from components.registry.refs import REF, normalize_reference

    now = dt.datetime.now(dt.timezone.utc)
    since = monitoring.parse_when(args.since, now, "--since")
    until = monitoring.parse_when(args.until, now, "--until") or now
    ref_since = monitoring.parse_when(args.reference_since, now, "--reference-since")
    ref_until = monitoring.parse_when(args.reference_until, now, "--reference-until")
    for first, last, what in ((since, until, "--since"), (ref_since, ref_until,
                                                          "--reference-since")):
        if first and last and first > last:
            raise ConfigError(f"{what} {first.isoformat()} is after the end of its window "
                              f"({last.isoformat()}); give the earlier time first.")
    registry = _registry(args)
    version = registry.resolve(args.ref)
    card = version.card
    thresholds = monitoring.Thresholds(**{
        field.name: getattr(args, field.name) for field in dataclasses.fields(
            monitoring.Thresholds)})
    pushed = request_log.parse_time(card.get("pushed"))
    # the version's own traffic (from a day before its push: clocks differ between
    # machines): the window, and the reference (its earliest traffic)
    entries = request_log.read(registry.root, version.name,
                               pushed - dt.timedelta(days=1) if pushed else None,
                               max(until, ref_until) if ref_until else until)
    served = [e for e in entries if e.get("version") == version.version]
    window = [e for e in served if since is None or monitoring.entry_time(e) >= since]
    window = [e for e in window if monitoring.entry_time(e) <= until]
    reference, reference_line = monitoring.reference_entries(served, ref_since, ref_until)
    report = monitoring.monitor(card, window, reference, reference_line, thresholds)
    match = REF.fullmatch(normalize_reference(args.ref))
    data = {"ref": args.ref, "model": version.name, "version": version.version,
            "alias": match["alias"] if match else None, "registry": registry.root,
            "window": {"since": monitoring.iso(since), "until": monitoring.iso(until)},
            "damaged_lines": entries.damaged, "first_damage": entries.first_damage,
            "skipped_paths": entries.skipped, "thresholds": dataclasses.asdict(thresholds),
            **report}
    code = DRIFT_EXIT if report["status"] == monitoring.DRIFT else 0

    def text() -> None:
        served_as = f" ({args.ref})" if data["alias"] else ""
        print(f"{version.ref}{served_as}: traffic from {data['window']['since'] or 'the start'} "
              f"to {data['window']['until']}: {report['requests']} request(s), "
              f"{report['sampled_requests']} sampled ({report['images']} image(s))")
        rows = [("CHECK", "VALUE", "THRESHOLD", "VERDICT")]
        for check in report["checks"]:
            bound = "-" if check["threshold"] is None else \
                f"{'<=' if check['direction'] == 'max' else '>='} {check['threshold']:g}"
            rows.append((check["check"], number(check["value"]), bound, check["verdict"]))
        table(rows)
        low: dict[str, list[str]] = {}       # one line per reason there was too little
        for check in report["checks"]:
            if check["verdict"] == monitoring.LOW:
                low.setdefault(check["detail"], []).append(check["check"])
            else:
                print(f"  {check['check']}: {check['detail']}")
        for detail, names in low.items():
            print(f"  {', '.join(names)}: {detail}")
        print(f"  confidence reference: {reference_line}")
        for line in monitoring.damage_lines(entries):
            print(f"  {line}")
        failed = [c["check"] for c in report["checks"] if c["verdict"] == monitoring.FAIL]
        if failed:
            print(f"drift: {', '.join(failed)} over the threshold (exit {DRIFT_EXIT})")
        elif report["status"] == monitoring.NOT_ENOUGH:
            unjudged = [c["check"] for c in report["checks"] if c["verdict"] == monitoring.LOW]
            judged = len(report["checks"]) - len(unjudged)
            print(f"not enough traffic to judge {', '.join(unjudged)} (why: above)"
                  + (f"; the other {judged} check(s) within their thresholds" if judged else "")
                  + "; nothing judged as drift")
        else:
            print("healthy: every check within its threshold")

    return Result(data=data, text=text, code=code)


def register(sub: Any) -> None:
    """`monitor MODEL@ALIAS`."""
    from pipeline.serve.monitoring import Thresholds

    t = Thresholds()
    p = sub.add_parser("monitor", help="served traffic (the request log) against the model "
                                       "card's training data; exit 3 on drift")
    p.add_argument("ref", metavar="MODEL@ALIAS",
                   help="the version to check: NAME@ALIAS, NAME:VERSION or NAME@latest")
    p.add_argument("--since", default="24h",
                   help="start of the window: an ISO time or a span back from now, e.g. 1h, "
                        "24h, 7d (default 24h)")
    p.add_argument("--until", help="end of the window (default now)")
    p.add_argument("--reference-since", help="the confidence reference's start (default: the "
                                             "earliest 25%% of the version's sampled traffic)")
    p.add_argument("--reference-until", help="the confidence reference's end")
    p.add_argument("--min-images", type=positive_int, default=t.min_images,
                   help="sampled images needed to judge the image checks (default "
                        f"{t.min_images}; fewer: not enough traffic, exit 0)")
    p.add_argument("--min-requests", type=positive_int, default=t.min_requests,
                   help=f"requests needed to judge the error rate (default {t.min_requests})")
    for flag, what in (
            ("max_size_shift", "share of served images of a size (or scale) training did "
                               "not have"),
            ("max_channel_shift", "share of served images with a channel count training "
                                  "did not have"),
            ("max_brightness_drift", "served vs training mean brightness, 0-1 scale"),
            ("max_contrast_drift", "served vs training mean contrast, 0-1 scale"),
            ("max_class_drift", "L-inf distance of predicted-class shares from training's"),
            ("max_confidence_drop", "mean confidence drop vs the reference"),
            ("max_error_rate", "share of requests that failed (5xx)")):
        p.add_argument("--" + flag.replace("_", "-"), type=share, default=getattr(t, flag),
                       help=f"{what} above which the check fails (default "
                            f"{getattr(t, flag):g})")
    _add_registry_args(p)
    _add_json_arg(p, "the checks as JSON on stdout")
    p.set_defaults(func=cmd_monitor)
