"""`jouletrace plan budget`: options, and the run that prints the plan and writes its files.

Exit codes: 0 planned; 2 bad options, Prometheus down or answering wrong, no series (one line on
stderr that says what to do)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

from jouletrace.exporter.powercap.actuation import Policy
from jouletrace.planning import optional_deadline, point_from_result

from .prometheus import MAX_POINTS, Prometheus, QueryError, duration

CAPS_ADMIN = "caps-jouletrace.sh"
CAPS_DYNAMO = "caps-dynamo.sh"
SHOWN_LINES = 4  # of each cap script on stdout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="plan_command", required=True)
    p = sub.add_parser(
        "budget", help="how many servers a rack's, row's or PDU's power budget holds, and the caps that keep it",
        description="Reads the power the exporters measured (Prometheus HTTP API) and answers per group: the power "
                    "the group drew together (peak, p99.9, p99, median), how many servers of the same kind fit at "
                    "the risk target, against provisioning at nameplate, and the per-GPU cap that holds the budget "
                    "at the peak, with its latency cost and the requests that set it (docs/power-budget.md).")
    p.add_argument("--prometheus-url", default="http://127.0.0.1:9090",
                   help="the Prometheus-compatible query API (Prometheus, Thanos, Mimir, VictoriaMetrics)")
    p.add_argument("--range", default="7d", help="history to plan from, a Prometheus duration (e.g. 30d)")
    p.add_argument("--end", help="end of the history: Unix seconds or ISO 8601 (default: now)")
    p.add_argument("--step", default="60s", help="step of the history, at least the exporters' scrape interval")
    p.add_argument("--group-label", default="rack",
                   help="topology label the budget is per (rack, row, pdu, ...: jouletrace_node_topology_info's)")
    p.add_argument("--budget-w", required=True,
                   help="GPU power budget per group, W: one value for every group, or GROUP=W,GROUP=W[,W for the rest]")
    p.add_argument("--risk", type=float, default=0.001,
                   help="share of 100 ms intervals in which a group may exceed its budget before caps act")
    p.add_argument("--deadline", default="",
                   help="latency deadline the caps must meet, [basis:]ms (median_itl, p99_tpot or "
                        "generation_latency; default: none)")
    p.add_argument("--points", help="directory of load generator results at several power limits (`loadgen sweep "
                                    "--power-limits`): the latency a cap costs")
    p.add_argument("--out", default="jouletrace-budget", help="directory of the plan's JSON, plot and cap requests")
    p.add_argument("--admin-token-file", default="/var/run/secrets/jouletrace/admin-token",
                   help="the exporters' admin token file, named in the admin API requests written")
    p.add_argument("--max-step-w", type=float, default=Policy().max_step_w,
                   help="the exporters' --powercap-max-step, W: larger changes are written as steps")
    p.add_argument("--cooldown-s", type=float, default=Policy().cooldown_s,
                   help="the exporters' --powercap-cooldown, s: the wait between steps")
    p.add_argument("--max-points", type=int, default=MAX_POINTS,
                   help="samples per range query's answer (series x steps): the memory one chunk takes")
    p.set_defaults(func=budget_main)


def _end(text: str | None) -> float:
    if not text:
        return time.time()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--end {text!r}: give Unix seconds or ISO 8601 (2026-01-31T00:00:00Z)") from None
    return (t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)).timestamp()


def _question(args: argparse.Namespace):
    from jouletrace.loadgen.plots import load_results

    from .plan import Question, budgets

    def option(flag, parse, value):
        try:
            return parse(value)
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None

    end = _end(args.end)
    step = option("--step", duration, args.step)
    start = end - option("--range", duration, args.range)
    deadline = option("--deadline", optional_deadline, args.deadline)
    points = []
    if args.points:
        if not Path(args.points).is_dir():
            raise ValueError(f"--points {args.points}: no such directory")
        points = [p for p in map(point_from_result, load_results(args.points)) if p is not None]
        if not points:
            raise ValueError(f"--points {args.points}: no load generator result with a power limit and energy "
                             "(`jouletrace loadgen sweep --power-limits` writes them)")
    if args.max_step_w <= 0 or args.cooldown_s < 0 or args.max_points < 1:
        raise ValueError("--max-step-w and --max-points must be > 0, --cooldown-s >= 0")
    return Question(args.group_label, start, end, step, option("--budget-w", budgets, args.budget_w), args.risk,
                    deadline, points)


def budget_main(args: argparse.Namespace) -> int:
    import matplotlib  # noqa: F401  (the plot's; missing, the command names its extra before any query)

    from . import actuators, report
    from .plan import plan

    try:
        q = _question(args)
        plans, notes = plan(Prometheus(args.prometheus_url, max_points=args.max_points), q)
    except (ValueError, QueryError) as e:
        print(f"jouletrace plan budget: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"jouletrace plan budget: --out {out}: {e.strerror}", file=sys.stderr)
        return 2
    for line in report.text(plans, notes, q):
        print(line)
    (out / report.JSON).write_text(json.dumps(report.to_dict(plans, notes, q), indent=1))
    report.plot(plans, q, out / report.PLOT)
    policy = Policy(max_step_w=args.max_step_w, cooldown_s=args.cooldown_s)
    admin = actuators.admin_api(plans, q.group_label, f"$(cat {args.admin_token_file})", policy)
    dynamo = actuators.dynamo(plans, q.group_label)
    (out / CAPS_ADMIN).write_text("\n".join(["#!/bin/sh", "set -e", *admin]) + "\n")
    (out / CAPS_DYNAMO).write_text("\n".join(["#!/bin/sh", "set -e", *dynamo]) + "\n")
    if any(p.cap_w is not None and math.isfinite(p.cap_w) for p in plans):
        for title, lines, name in (("jouletrace's admin API", admin, CAPS_ADMIN),
                                   ("NVIDIA Dynamo's power agent", dynamo, CAPS_DYNAMO)):
            shown = lines[:SHOWN_LINES]
            rest = f"... {len(lines) - len(shown)} more lines in {out / name}" if len(lines) > len(shown) else ""
            print("", f"caps through {title}:", *shown, *([rest] if rest else []), sep="\n")
    print(f"\nwritten: {out / report.JSON}, {out / report.PLOT}, {out / CAPS_ADMIN}, {out / CAPS_DYNAMO}")
    return 0
