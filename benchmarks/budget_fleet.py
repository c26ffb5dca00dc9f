"""Power budgets on a simulated fleet: does `jouletrace plan budget` keep what it plans?

    python benchmarks/budget_fleet.py --out benchmarks/results/budget-fleet-2026-12-06

1. A fleet of `--racks` racks of `--servers` servers, each 2 replicas of Llama-3.1-70B on 4
   simulated H100s (8 GPUs, 5.6 kW at nameplate), every replica under its own load: the load
   generator's Poisson or gamma-burst arrivals at a rate that follows a day (amplitude 0.5-0.9, the
   rack's phase give or take a twelfth of a day), the day compressed to `--day` s, `--duration` s in
   all (simulator/fleet.py). Each GPU's 100 ms power comes from the simulator's power model.
2. From the traces, the series the exporters export for budgets (scrapes every `--scrape` s at each
   node's own offset, `--window` s peaks, the node histogram), backfilled into a real Prometheus
   (`promtool tsdb create-blocks-from openmetrics`), and a power-limit sweep of the same replica
   (closed loop, batch 64, 700 ... 300 W) as load generator results for the latency of caps.
3. `jouletrace plan budget` against that Prometheus through its HTTP API, each rack's budget its
   servers at nameplate (`--servers` x 5.6 kW), `--risk`, `--deadline`.
4. The bound against the truth: each rack's true 100 ms peak, the sample's peak and the bound's
   (the nodes' windowed peaks summed), and the bound for other windows.
5. The fleet re-simulated with the planned servers per rack (the measured ones and new ones drawn
   alike), uncapped and with the planned caps: the share of 100 ms intervals over the budget
   against the risk, servers gained on nameplate (POLCA's headline), and the latency the caps
   cost (token gaps, capped against uncapped, same loads).
Writes plan/ (the planner's output), budget_fleet.png and summary.json; prints Markdown tables."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from servers import PrometheusProcess, backfill  # noqa: E402

from jouletrace.loadgen.tasks import task  # noqa: E402
from jouletrace.simulator.fleet import (TICK_S, FleetRun, Shape, make_servers, run_fleet,  # noqa: E402
                                        windowed_peaks, write_openmetrics)
from jouletrace.simulator.lengths import OutputLengths  # noqa: E402
from jouletrace.simulator.profiles import gpu_profile, model_shape  # noqa: E402
from jouletrace.simulator.whatif import run_point  # noqa: E402

SWEEP_LIMITS_W = (700, 600, 500, 400, 300)


def sweep(shape: Shape, out: Path) -> None:
    """The replica's closed-loop chat at batch 64 at each limit, as load generator results."""
    out.mkdir(parents=True, exist_ok=True)
    for limit in SWEEP_LIMITS_W:
        _, result = run_point(model_shape(shape.model), gpu_profile(shape.gpu), shape.tp, task(shape.task),
                              shape.max_num_seqs, float(limit), OutputLengths())
        (out / f"sweep-b{shape.max_num_seqs}-{limit}W.json").write_text(json.dumps(result))


def gaps_ms(run: FleetRun, group: str) -> np.ndarray:
    return np.concatenate([g for s, g in zip(run.servers, run.gaps) if s.group == group]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--racks", type=int, default=3)
    ap.add_argument("--servers", type=int, default=6, help="servers per rack today (at nameplate)")
    ap.add_argument("--duration", type=float, default=2400.0, help="simulated seconds")
    ap.add_argument("--day", type=float, default=600.0, help="seconds of a compressed day")
    ap.add_argument("--scrape", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--risk", type=float, default=0.01)
    ap.add_argument("--deadline", default="median_itl:50")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", default="budget-fleet")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = Shape(duration_s=args.duration, day_s=args.day)
    nameplate = shape.gpus * gpu_profile(shape.gpu).max_power_limit_w
    budget = args.servers * nameplate
    racks = {f"r{i + 1}": args.servers for i in range(args.racks)}

    t0 = time.time()
    measured = run_fleet(make_servers(racks, shape, args.seed), shape, processes=args.processes)
    print(f"fleet simulated: {len(measured.servers)} servers, {shape.duration_s:g} s in {time.time() - t0:.0f} s")
    start = float(int(time.time()) - 4 * 3600)
    with open(out / "fleet.om", "w") as f:
        write_openmetrics(measured, f, start, args.scrape, args.window)
    backfill(str(out / "fleet.om"), str(out / "tsdb"))
    os.remove(out / "fleet.om")
    sweep(shape, out / "points")
    prom = PrometheusProcess([], data=str(out / "tsdb"))
    try:
        done = subprocess.run([sys.executable, "-m", "jouletrace", "plan", "budget", "--prometheus-url",
                               f"http://127.0.0.1:{prom.port}", "--range", f"{shape.duration_s:g}s", "--end",
                               f"{start + shape.duration_s:.0f}", "--step", f"{args.scrape:g}s", "--budget-w",
                               f"{budget:g}", "--risk", str(args.risk), "--deadline", args.deadline, "--points",
                               str(out / "points"), "--out", str(out / "plan")], capture_output=True, text=True)
    finally:
        prom.stop()
    (out / "plan" / "stdout.txt").write_text(done.stdout)
    if done.returncode != 0:
        sys.exit(f"the planner failed: {done.stderr}")
    print(done.stdout)
    plan = {g["group"]: g for g in json.loads((out / "plan" / "budget_plan.json").read_text())["groups"]}

    summary = {"racks": racks, "budget_w": budget, "risk": args.risk, "shape": shape.__dict__, "groups": {}}
    print("\n| rack | true 100 ms peak kW | sample peak kW | bound peak kW | bound over truth | "
          + " | ".join(f"bound at {w:g} s window" for w in (1, 5, 15, 30)) + " |")
    print("|---|---|---|---|---|" + "---|" * 4)
    for group in sorted(racks):
        rows = [k for k, s in enumerate(measured.servers) if s.group == group]
        node_power = measured.power[rows].sum(axis=1)  # the group's nodes x ticks
        truth = measured.group_power(group).max()
        per_window = {w: windowed_peaks(node_power, w).sum(axis=0).max() for w in (1, 5, 15, 30)}
        p = plan[group]
        summary["groups"][group] = {"true_peak_w": truth, "sample_peak_w": p["distribution_w"]["peak"],
                                    "bound_peak_w": p["bound_peak_w"], "bound_by_window_w": per_window}
        print(f"| {group} | {truth / 1000:.2f} | {p['distribution_w']['peak'] / 1000:.2f} | "
              f"{p['bound_peak_w'] / 1000:.2f} | {p['bound_peak_w'] / truth - 1:+.1%} | "
              + " | ".join(f"{v / 1000:.2f} ({v / truth - 1:+.0%})" for v in per_window.values()) + " |")

    extra = {g: plan[g]["servers_at_risk"] - args.servers for g in racks}
    added = make_servers({g: n for g, n in extra.items() if n > 0}, shape, args.seed,
                         start={g: args.servers for g in racks})
    planned_servers = list(measured.servers) + added
    t0 = time.time()
    uncapped = run_fleet(planned_servers, shape, processes=args.processes)
    capped_runs = {}
    for group in sorted(racks):
        cap = plan[group]["cap_w"]
        mine = [s for s in planned_servers if s.group == group]
        capped_runs[group] = run_fleet(mine, shape, math.floor(cap), args.processes) if cap else None
    print(f"\nre-simulated with the planned servers in {time.time() - t0:.0f} s")
    print("\n| rack | servers today (= at nameplate) | planned at risk | gained | cap W/GPU | "
          "intervals over budget, uncapped | capped | peak kW uncapped | capped | median ITL ms uncapped | capped | "
          "p99 ITL ms uncapped | capped | advice: latency at cap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for group in sorted(racks):
        p = plan[group]
        power = uncapped.group_power(group)
        gaps = gaps_ms(uncapped, group)
        row = {"servers_today": args.servers, "servers_at_nameplate": p["servers_at_nameplate"],
               "servers_at_risk": p["servers_at_risk"], "cap_w": p["cap_w"],
               "exceedance_uncapped": float((power > budget).mean()), "peak_uncapped_w": float(power.max()),
               "median_itl_uncapped_ms": float(np.median(gaps)), "p99_itl_uncapped_ms": float(np.quantile(gaps, 0.99))}
        capped = capped_runs[group]
        if capped is not None:
            cp, cg = capped.group_power(group), gaps_ms(capped, group)
            row.update(exceedance_capped=float((cp > budget).mean()), peak_capped_w=float(cp.max()),
                       gpu_max_capped_w=float(capped.power.max()), median_itl_capped_ms=float(np.median(cg)),
                       p99_itl_capped_ms=float(np.quantile(cg, 0.99)))
        cost = p["latency_at_cap"][0] if p["latency_at_cap"] else None
        row["advice_latency_change"] = cost and cost["latency_change"]
        summary["groups"][group].update(row)
        def cell(key: str, fmt: str, scale: float = 1.0) -> str:
            return "-" if row.get(key) is None else format(row[key] / scale, fmt)

        print(f"| {group} | {args.servers} ({p['servers_at_nameplate']}) | {p['servers_at_risk']} | "
              f"{p['servers_at_risk'] / p['servers_at_nameplate'] - 1:+.0%} | {cell('cap_w', '.0f')} | "
              f"{cell('exceedance_uncapped', '.3%')} | {cell('exceedance_capped', '.3%')} | "
              f"{cell('peak_uncapped_w', '.1f', 1000)} | {cell('peak_capped_w', '.1f', 1000)} | "
              f"{cell('median_itl_uncapped_ms', '.1f')} | {cell('median_itl_capped_ms', '.1f')} | "
              f"{cell('p99_itl_uncapped_ms', '.1f')} | {cell('p99_itl_capped_ms', '.1f')} | "
              f"{cell('advice_latency_change', '+.1%')} |")
    total_nameplate = sum(p["servers_at_nameplate"] for p in plan.values())
    total = sum(p["servers_at_risk"] for p in plan.values())
    summary["gained_on_nameplate"] = total / total_nameplate - 1
    print(f"\nall racks: {total} servers planned against {total_nameplate} at nameplate: "
          f"{total / total_nameplate - 1:+.0%}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    plot(measured, uncapped, capped_runs, budget, out / "budget_fleet.png")


def plot(measured: FleetRun, uncapped: FleetRun, capped: dict, budget: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = measured.groups()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        t = np.arange(measured.shape.ticks) * TICK_S
        n_now = sum(s.group == group for s in measured.servers)
        n_plan = sum(s.group == group for s in uncapped.servers)
        ax.plot(t, measured.group_power(group) / 1000, linewidth=0.4, label=f"measured, {n_now} servers")
        ax.plot(t, uncapped.group_power(group) / 1000, linewidth=0.4, label=f"planned, {n_plan}, uncapped")
        if capped.get(group) is not None:
            ax.plot(t, capped[group].group_power(group) / 1000, linewidth=0.4,
                    label=f"planned, capped at {capped[group].limit_w:g} W")
        ax.axhline(budget / 1000, color="tab:red", linestyle="--", linewidth=1, label="budget")
        ax.set_title(f"rack {group}: 100 ms power", fontsize=9)
        ax.set_xlabel("simulated s (a day is compressed)")
        ax.set_ylabel("kW")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
