"""The plan of each group's power budget from the series in a Prometheus (docs/power-budget.md#planning).

It reads the raw series the exporters export (no recording rule needed), joined on `node` with
`jouletrace_node_topology_info` for the group label (`rack`, `row`, `pdu`, ...): each GPU's latest
power `jouletrace_gpu_power_watts` (the sample, analysis.py), each node's windowed 100 ms peak
`jouletrace_node_power_max_watts` (the bound); each GPU's windowed peak
`jouletrace_gpu_power_max_watts` (the caps) and limit `jouletrace_gpu_power_limit_watts` (GPU
series carry the scrape's `node` label, as the monitors of k8s/overlays/monitoring set it; their
`instance` is the exporter whose admin API sets the GPU's limit); the node histogram's `_sum` and
`_count` for the mean and the number of 100 ms intervals measured; where present, the pods holding each GPU
(`jouletrace_gpu_pod_info`) and the exporters' power-cap advice
(`jouletrace_powercap_recommended_watts`). The maths is analysis.py's; the latency a cap costs is
jouletrace.planning's (`at_limit`) over the operating points given."""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Sequence

import numpy as np

from jouletrace.exporter.config import TOPOLOGY_RESERVED, label_name
from jouletrace.planning import Deadline, OperatingPoint, Recommendation, at_limit

from .analysis import CapSearch, distribution, risk_level, servers_fit
from .prometheus import Prometheus, QueryError, promql_duration

NO_DEADLINE = Deadline("median_itl", math.inf)


@dataclasses.dataclass(frozen=True)
class Gpu:
    node: str
    instance: str     # the exporter that measures it (its metrics port serves the admin API)
    index: str        # the exporter's `gpu` label
    limit_w: float    # the highest limit in force over the history: what it is provisioned at
    current_w: float  # the limit in force at the end


@dataclasses.dataclass
class GroupPlan:
    """One group's answer (W unless named otherwise)."""

    group: str
    budget_w: float
    nodes: list[str]
    gpus: list[Gpu]
    times: np.ndarray                 # steps (Unix s)
    power: np.ndarray                 # the sample: the GPUs' latest 100 ms power summed at each step
    distribution: dict[str, float]    # of `power`: peak, p99.9, p99, median
    level_w: float                    # the (1 - risk) quantile of `power`
    bound_times: np.ndarray
    bound: np.ndarray                 # the bound: the nodes' windowed peaks summed at each step
    nameplate_w: float                # the GPUs' limits summed
    servers_nameplate: int            # servers the budget holds at their nameplate
    servers_fit: int                  # servers the budget holds at the risk target
    mean_w: float | None = None       # mean 100 ms power (histogram), the nodes summed
    intervals: float | None = None    # 100 ms intervals in the histogram, the nodes summed
    cap_w: float | None = None        # per GPU: inf when none is needed; None when no GPU peaks were found
    cap_at: float | None = None       # the step whose water level sets the cap (Unix s)
    cost: list[Recommendation] = dataclasses.field(default_factory=list)
    advised: list[tuple[str, str, str, float]] = dataclasses.field(default_factory=list)  # model, basis, ms, W
    pods: set[tuple[str, str]] = dataclasses.field(default_factory=set)   # (namespace, pod) holding its GPUs

    @property
    def servers(self) -> int:
        return len(self.nodes)

    @property
    def scale(self) -> float:
        """The fleet planned over the fleet measured."""
        return self.servers_fit / self.servers

    @property
    def gained(self) -> float | None:
        """Servers at the risk target over servers at nameplate, less 1."""
        return self.servers_fit / self.servers_nameplate - 1.0 if self.servers_nameplate else None


@dataclasses.dataclass(frozen=True)
class Budgets:
    """Watts per group: `default` for every group not named in `per_group` (None: none)."""

    default: float | None
    per_group: dict[str, float]

    def of(self, group: str, label: str) -> float:
        w = self.per_group.get(group, self.default)
        if w is None:
            raise QueryError(f"no budget for {label}={group}: give --budget-w {group}=W, or one value for all groups")
        return w


def budgets(text: str) -> Budgets:
    """`W` for every group, or `GROUP=W,GROUP=W[,W for the rest]`."""
    default, per = None, {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.rpartition("=")
        try:
            watts = float(value)
        except ValueError:
            watts = math.nan
        if not watts > 0 or math.isinf(watts):
            raise ValueError(f"expected W or GROUP=W with W > 0, got {part!r}")
        if name:
            per[name] = watts
        else:
            default = watts
    if default is None and not per:
        raise ValueError("give a budget: W for every group, or GROUP=W,...")
    return Budgets(default, per)


@dataclasses.dataclass(frozen=True)
class Question:
    group_label: str
    start: float                 # Unix s
    end: float
    step_s: float                # >= the exporters' scrape interval
    budgets: Budgets
    risk: float                  # share of 100 ms intervals the group may exceed its budget in before caps act
    deadline: Deadline | None = None
    points: Sequence[OperatingPoint] = ()   # operating points for the latency a cap costs

    def __post_init__(self):
        if not label_name(self.group_label) or self.group_label in TOPOLOGY_RESERVED:
            raise ValueError(f"--group-label {self.group_label!r}: give a topology label name such as rack, row, pdu")
        if not 0.0 <= self.risk < 1.0:
            raise ValueError(f"--risk {self.risk:g}: give a share of the 100 ms intervals, 0 <= risk < 1")
        if not self.end - self.start >= 2 * self.step_s:
            raise ValueError("the history must hold at least two steps: lengthen --range or shorten --step")


def plan(prom: Prometheus, q: Question) -> tuple[list[GroupPlan], list[str]]:
    """Each group's plan, and notes on what was left out."""
    L, R, S = q.group_label, promql_duration(q.end - q.start), promql_duration(q.step_s)
    notes: list[str] = []

    def at_end(query: str) -> list[tuple[dict, float]]:
        return prom.instant(query, q.end)

    group_of = {}
    for labels, _ in at_end(f"max by (node, {L}) (last_over_time(jouletrace_node_topology_info[{R}]))"):
        if labels.get(L):
            group_of[labels.get("node", "")] = labels[L]
    measured = {labels.get("node", "") for labels, _ in
                at_end(f"max by (node) (max_over_time(jouletrace_node_power_max_watts[{R}]))")}
    if not measured:
        raise QueryError(f"no jouletrace_node_power_max_watts in Prometheus over the {R} before the end: do the "
                         "exporters export it (docs/power-budget.md), and do --range and --end cover their history?")
    unplaced = sorted(measured - group_of.keys())
    if unplaced:
        notes.append(f"{len(unplaced)} node(s) without a `{L}` in jouletrace_node_topology_info left out: "
                     f"{', '.join(unplaced[:5])}{' ...' if len(unplaced) > 5 else ''}")
    nodes_of: dict[str, list[str]] = collections.defaultdict(list)
    for node in sorted(measured & group_of.keys()):
        nodes_of[group_of[node]].append(node)
    if not nodes_of:
        raise QueryError(f"no node with power peaks has a `{L}` label in jouletrace_node_topology_info: give the "
                         f"exporters --topology {L}=... (docs/power-budget.md), or name another --group-label")

    gpus_of = _gpus(at_end, R, group_of)
    sums = _node_sums(at_end, R)
    pods = collections.defaultdict(set)
    for labels, _ in at_end(f"max by (node, uuid, k8s_namespace, k8s_pod) "
                            f"(last_over_time(jouletrace_gpu_pod_info[{R}]))"):
        if labels.get("node") in group_of and labels.get("k8s_pod"):
            pods[group_of[labels["node"]]].add((labels.get("k8s_namespace", ""), labels["k8s_pod"]))
    advised = [(labels.get("model", ""), labels.get("basis", ""), labels.get("deadline_ms", ""), w) for labels, w in
               at_end(f"max by (model, basis, deadline_ms) "
                      f"(last_over_time(jouletrace_powercap_recommended_watts[{R}]))")]
    if q.deadline is not None:
        advised = [a for a in advised if a[1] == q.deadline.basis and _same_ms(a[2], q.deadline.ms)]

    join = f"* on (node) group_left ({L}) max by (node, {L}) (jouletrace_node_topology_info))"
    sample = _group_series(prom, q, len(nodes_of),
                           f"sum by ({L}) (sum by (node) (jouletrace_gpu_power_watts) {join}")
    bound = _group_series(prom, q, len(nodes_of),
                          f"sum by ({L}) (max_over_time(jouletrace_node_power_max_watts[{S}]) {join}")
    plans = []
    for group, nodes in sorted(nodes_of.items()):
        if group not in sample or group not in bound:
            notes.append(f"{L}={group}: no steps with both GPU power and node peaks in the history; left out")
            continue
        times, power = sample[group]
        gpus = gpus_of.get(group, [])
        nameplate = sum(g.limit_w for g in gpus)
        budget = q.budgets.of(group, L)
        level = risk_level(power, q.risk)
        p = GroupPlan(group, budget, nodes, gpus, times, power, distribution(power), level, *bound[group],
                      nameplate,
                      servers_fit(len(nodes), budget, nameplate) if nameplate else 0,
                      servers_fit(len(nodes), budget, level), advised=advised, pods=pods.get(group, set()))
        if not gpus:
            notes.append(f"{L}={group}: no jouletrace_gpu_power_limit_watts with a `node` label: no nameplate")
        if all(n in sums for n in nodes):
            p.mean_w = sum(sums[n][0] / sums[n][1] for n in nodes if sums[n][1] > 0)
            p.intervals = sum(sums[n][1] for n in nodes)
        plans.append(p)
    _caps(prom, q, plans, notes)
    for p in plans:
        if p.cap_w is not None and math.isfinite(p.cap_w) and q.points:
            p.cost = at_limit(q.points, p.cap_w, q.deadline or NO_DEADLINE)
    return plans, notes


def _same_ms(text: str, ms: float) -> bool:
    try:
        return float(text) == ms
    except ValueError:
        return False


def _gpus(at_end, R: str, group_of: dict[str, str]) -> dict[str, list[Gpu]]:
    by = "max by (node, instance, gpu, uuid)"
    current = {(l.get("node"), l.get("instance"), l.get("gpu"), l.get("uuid")): w for l, w in
               at_end(f"{by} (last_over_time(jouletrace_gpu_power_limit_watts[{R}]))")}
    out = collections.defaultdict(list)
    for l, w in at_end(f"{by} (max_over_time(jouletrace_gpu_power_limit_watts[{R}]))"):
        key = (l.get("node"), l.get("instance"), l.get("gpu"), l.get("uuid"))
        if key[0] in group_of:
            out[group_of[key[0]]].append(Gpu(key[0], key[1] or "", key[2] or "", w, current.get(key, w)))
    for gpus in out.values():
        gpus.sort(key=lambda g: (g.node, g.instance, g.index))
    return out


def _node_sums(at_end, R: str) -> dict[str, tuple[float, float]]:
    """Per node: (watts summed, 100 ms intervals) of its histogram over the history."""
    total = {l.get("node"): v for l, v in at_end(f"sum by (node) (increase(jouletrace_node_power_watts_sum[{R}]))")}
    count = {l.get("node"): v for l, v in at_end(f"sum by (node) (increase(jouletrace_node_power_watts_count[{R}]))")}
    return {n: (total[n], count[n]) for n in total.keys() & count.keys()}


def _group_series(prom: Prometheus, q: Question, groups: int,
                  query: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per group: (times, values) of `query` (one series per group) at every step, chunk by chunk;
    steps without a finite value are left out."""
    parts = collections.defaultdict(list)
    for chunk in prom.range(query, q.start + q.step_s, q.end, q.step_s, groups):
        for s in chunk:
            finite = np.isfinite(s.values)
            if finite.any():
                parts[s.labels.get(q.group_label, "")].append((s.times[finite], s.values[finite]))
    return {g: (np.concatenate([t for t, _ in ps]), np.concatenate([v for _, v in ps])) for g, ps in parts.items()}


def _caps(prom: Prometheus, q: Question, plans: list[GroupPlan], notes: list[str]) -> None:
    """The per-GPU cap that holds each group's budget at every step, scaled to its planned servers."""
    group_of = {n: p.group for p in plans for n in p.nodes}
    search = {p.group: CapSearch(p.budget_w / p.scale) for p in plans if p.servers_fit > 0}
    S = promql_duration(q.step_s)
    query = f"max by (node, uuid) (max_over_time(jouletrace_gpu_power_max_watts[{S}]))"
    gpus = sum(len(p.gpus) for p in plans) or 1
    seen = set()
    for chunk in prom.range(query, q.start + q.step_s, q.end, q.step_s, gpus):
        columns = collections.defaultdict(list)
        for s in chunk:
            group = group_of.get(s.labels.get("node", ""))
            if group in search:
                columns[group].append(s)
        for group, ss in columns.items():
            t0 = min(float(s.times[0]) for s in ss if len(s.times))
            t1 = max(float(s.times[-1]) for s in ss if len(s.times))
            steps = int(round((t1 - t0) / q.step_s)) + 1
            grid = np.full((steps, len(ss)), np.nan)
            for j, s in enumerate(ss):
                grid[np.rint((s.times - t0) / q.step_s).astype(int), j] = s.values
            search[group].add(t0 + q.step_s * np.arange(steps), grid)
            seen.add(group)
    for p in plans:
        if p.group in seen:
            p.cap_w, p.cap_at = search[p.group].cap_w, search[p.group].at
        elif p.group in search:
            notes.append(f"{q.group_label}={p.group}: no jouletrace_gpu_power_max_watts with a `node` label: no caps")
