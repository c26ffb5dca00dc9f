"""What `jouletrace plan budget` prints and writes: a table per group with the lines that explain
it and the assumptions, the plan as JSON, and a plot (matplotlib, Agg) of each group's power
against the share of the history it exceeds it, measured and scaled to the planned servers."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import numpy as np

from .plan import GroupPlan, Question

PLOT = "budget_plan.png"
JSON = "budget_plan.json"

ASSUMPTIONS = (
    "Power is what the group's nodes drew together, one series per group, never a sum of each node's own "
    "distribution: the nodes are not independent.",
    "The distribution (peak, p99.9, p99, median) and the servers that fit come from the sample: at each step the "
    "sum of every GPU's latest 100 ms power (jouletrace_gpu_power_watts); the share of steps over the budget "
    "estimates the share of 100 ms intervals over it. Nodes are scraped up to an interval apart, so bursts that hit "
    "every node in the same second count only as far as the scrapes catch them.",
    "The caps come from the bound: at each step the sum of each node's (and GPU's) greatest 100 ms power over the "
    "step and the window before it (jouletrace_node_power_max_watts, jouletrace_gpu_power_max_watts). It is at "
    "least the group's true 100 ms peak: the caps hold the budget at every measured step, the peak included.",
    "Added servers draw like the measured ones, at the same times (the group's series scaled): the cautious reading "
    "of their correlation.",
    "Caps: every GPU of the planned group capped at the same watts; a GPU below its cap is untouched. The latency a "
    "cap costs is that of the highest measured limit at or below it, paid while the cap binds.",
    "Power is the GPUs' (NVML); the hosts' own power (CPUs, fans, NICs) belongs in the rest of the budget.")


def _kw(w: float | None) -> str:
    return "-" if w is None else f"{w / 1000:.1f}"


def _time(t: float | None) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cap_text(p: GroupPlan) -> str:
    if p.cap_w is None:
        return "-"
    return "none needed" if math.isinf(p.cap_w) else f"{math.floor(p.cap_w)} W"


def table(plans: list[GroupPlan], q: Question) -> list[str]:
    L = q.group_label
    head = (L, "servers", "GPUs", "budget kW", "peak kW", "p99.9", "p99", "median", "mean", "bound peak",
            "nameplate", "fit at risk", "more", "vs nameplate", "cap/GPU")
    rows = [head]
    for p in plans:
        d = p.distribution
        rows.append((p.group, str(p.servers), str(len(p.gpus)), _kw(p.budget_w), _kw(d["peak"]), _kw(d["p99.9"]),
                     _kw(d["p99"]), _kw(d["median"]), _kw(p.mean_w), _kw(float(p.bound.max())),
                     str(p.servers_nameplate), str(p.servers_fit),
                     f"{p.servers_fit - p.servers:+d}", "-" if p.gained is None else f"{p.gained:+.0%}", cap_text(p)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def explain(p: GroupPlan, q: Question) -> list[str]:
    L, d = q.group_label, p.distribution
    head = f"{L}={p.group}: "
    per_server = p.nameplate_w / p.servers if p.servers else 0.0
    lines = [head + f"{p.servers} servers, {len(p.gpus)} GPUs, {len(p.power)} steps"
             + (f", {p.intervals:.0f} intervals of 100 ms in the histogram" if p.intervals else "")
             + f"; its GPUs' 100 ms power summed reached {d['peak']:.0f} W (p99.9 {d['p99.9']:.0f}, "
               f"p99 {d['p99']:.0f}, median {d['median']:.0f})"
             + (f", mean {p.mean_w:.0f} W" if p.mean_w is not None else "")
             + f"; the bound on its 100 ms peak (the nodes' windowed peaks summed) is {p.bound.max():.0f} W."]
    lines.append(head + f"at nameplate ({per_server:.0f} W a server) {p.budget_w:g} W holds {p.servers_nameplate} "
                        f"servers; at {q.risk:.2%} of intervals over the budget ({p.level_w:.0f} W for {p.servers}) "
                        f"it holds {p.servers_fit} ({p.servers_fit - p.servers:+d} on today"
                 + ("" if p.gained is None else f", {p.gained:+.0%} on nameplate") + ").")
    if p.servers_fit < p.servers:
        lines.append(head + f"over budget already: {p.servers - p.servers_fit} server(s) too many at this risk.")
    if p.cap_w is None:
        lines.append(head + "no per-GPU peaks (jouletrace_gpu_power_max_watts): no caps.")
    elif math.isinf(p.cap_w):
        lines.append(head + f"{p.servers_fit} servers stay within {p.budget_w:g} W at every measured step: no cap "
                            "needed.")
    else:
        lines.append(head + f"a cap of {math.floor(p.cap_w)} W on every GPU holds {p.budget_w:g} W with "
                            f"{p.servers_fit} servers at every measured step; it binds at {_time(p.cap_at)} UTC.")
        for r in p.cost:
            if r.point is None:
                lines.append(head + f"latency at the cap ({r.reference.model}): unknown, {r.reason}.")
                continue
            basis = r.deadline.basis
            change = r.latency_change
            text = (f"latency at the cap ({r.point.model}{f', {r.point.config}' if r.point.config else ''}): "
                    f"measured at {r.point.power_limit_w:g} W, {basis} ")
            text += ("not measured" if change is None else
                     f"{r.point.latency_ms[basis]:.1f} ms, {change:+.1%} on {r.reference.power_limit_w:g} W")
            text += f", throughput {r.throughput_change:+.1%}" if r.throughput_change is not None else ""
            if r.deadline.ms != math.inf:
                text += f"; {r.reason}" if r.reason else f"; meets {basis} <= {r.deadline.ms:g} ms"
            lines.append(head + text + " (while the cap binds).")
        for model, basis, ms, watts in p.advised:
            verdict = "at or above" if p.cap_w >= watts else "below"
            lines.append(head + f"the exporters' power-cap advice for {model}, {basis} <= {ms} ms, is {watts:g} W: "
                                f"the cap is {verdict} it.")
    return lines


def text(plans: list[GroupPlan], notes: list[str], q: Question) -> list[str]:
    out = [f"power budgets per {q.group_label}: {_time(q.start)} to {_time(q.end)} UTC, step {q.step_s:g} s, "
           f"risk {q.risk:.2%} of 100 ms intervals over the budget", ""]
    out += table(plans, q) + [""]
    for p in plans:
        out += explain(p, q)
    out += [f"note: {n}" for n in notes]
    out += ["", "assumptions:"] + [f"- {a}" for a in ASSUMPTIONS]
    return out


def to_dict(plans: list[GroupPlan], notes: list[str], q: Question) -> dict:
    def finite(x):
        return None if x is None or (isinstance(x, float) and math.isinf(x)) else x

    return {"group_label": q.group_label, "start": q.start, "end": q.end, "step_s": q.step_s, "risk": q.risk,
            "deadline": str(q.deadline) if q.deadline else None, "notes": notes, "assumptions": list(ASSUMPTIONS),
            "groups": [{"group": p.group, "budget_w": p.budget_w, "servers": p.servers, "nodes": p.nodes,
                        "gpus": len(p.gpus), "steps": len(p.power), "distribution_w": p.distribution,
                        "mean_w": p.mean_w, "intervals": p.intervals, "risk_level_w": p.level_w,
                        "bound_peak_w": float(p.bound.max()),
                        "nameplate_w": p.nameplate_w, "servers_at_nameplate": p.servers_nameplate,
                        "servers_at_risk": p.servers_fit, "gained_on_nameplate": p.gained,
                        "cap_w": finite(p.cap_w), "cap_needed": p.cap_w is not None and math.isfinite(p.cap_w),
                        "cap_binds_at": p.cap_at, "latency_at_cap": [r.to_dict() | {"latency_change": r.latency_change}
                                                                     for r in p.cost]}
                       for p in plans]}


def plot(plans: list[GroupPlan], q: Question, path: Path) -> None:
    """Per group: the sample (its GPUs' power summed) against the share of steps at or above it,
    measured and scaled to the planned servers, the bound, the budget and the risk target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(plans))
    rows = math.ceil(len(plans) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax, p in zip(axes.flat, plans):
        values = np.sort(p.power)[::-1]
        share = np.arange(1, len(values) + 1) / len(values)
        ax.plot(share, values / 1000, label=f"measured, {p.servers} servers")
        ax.plot(share, values * p.scale / 1000, label=f"planned, {p.servers_fit} servers (uncapped)")
        ax.plot(np.arange(1, len(p.bound) + 1) / len(p.bound), np.sort(p.bound)[::-1] / 1000, color="tab:gray",
                linewidth=1,
                label="bound (windowed peaks), measured")
        ax.axhline(p.budget_w / 1000, color="tab:red", linestyle="--", linewidth=1, label="budget")
        if q.risk > 0:
            ax.axvline(q.risk, color="tab:gray", linestyle=":", linewidth=1, label=f"risk {q.risk:.2%}")
        ax.set_xscale("log")
        ax.set_title(f"{q.group_label}={p.group}", fontsize=9)
        ax.set_xlabel("share of steps at or above")
        ax.set_ylabel("group power (kW)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(plans):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
