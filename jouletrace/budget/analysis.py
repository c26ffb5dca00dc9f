"""The maths of a group's power budget: pure functions of measured series (numpy), no I/O. Units: W, s.

What the group draws, measured together. Servers are not independent (a morning peak reaches every
server of a rack at once), so the planner never adds up each node's own distribution: it reads
one series per group of what its nodes drew at the same time. Two such series:

- the sample: at each step k, the sum over the group's GPUs of each one's latest 100 ms power
  (`jouletrace_gpu_power_watts` at its last scrape). Each step is a draw of the group's 100 ms
  power, so the share of steps over a budget estimates the share of 100 ms intervals over it,
  and its quantiles estimate the group's. The nodes' samples come from their own scrapes, up to a
  scrape interval apart: correlation at the scale of the day is kept, and bursts that reach every
  node within the same second are seen only as far as scrapes catch them.
- the bound: at each step, the sum over the nodes of each node's greatest 100 ms power over the
  step and the `--power-peak-window` before it (`jouletrace_node_power_max_watts`). It is at least
  the group's power in every 100 ms interval the step covers, so its peak bounds the group's true
  100 ms peak from above; by how much (each node's peak in a window need not fall in the same
  100 ms as the others') benchmarks/RESULTS.md measures on the simulated fleet.

Servers. More servers of the same kind are assumed to draw like the ones measured: n + x servers
draw the series x (n + x) / n. This keeps the measured correlation (each added server peaks when
the others do), the cautious reading; independent servers would peak less together. The budget
holds floor(n x B / q) servers, q the sample's (1 - risk) quantile: the share of 100 ms intervals
in which they exceed B is the risk, before caps act.

Caps. They must hold the budget at the peak, so they come from the bound: with the group scaled by
s = servers / n, a cap C on every GPU holds the budget at step k when s x sum over GPUs i of
min(p_ik, C) <= B, p_ik the GPU's windowed peak (a GPU draws at most its cap; one below it is
untouched). The greatest such C per step is the water level of the GPUs' peaks at B / s; the cap
that holds at every step measured, the peak included, is the least of these levels."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

QUANTILES = (("peak", 1.0), ("p99.9", 0.999), ("p99", 0.99), ("median", 0.5))


def distribution(values: np.ndarray) -> dict[str, float]:
    """Peak, p99.9, p99 and median of `values` (W)."""
    return {name: float(np.quantile(values, q, method="higher")) for name, q in QUANTILES}


def risk_level(values: np.ndarray, risk: float) -> float:
    """The (1 - risk) quantile of `values`, rounded up to a measured value: at most a `risk` share
    of them exceed it."""
    return float(np.quantile(values, 1.0 - risk, method="higher"))


def servers_fit(servers: int, budget_w: float, level_w: float) -> int:
    """Servers of the measured kind that `budget_w` holds when `servers` of them draw `level_w`."""
    if level_w <= 0:
        raise ValueError("the group drew no power in the history")
    return math.floor(servers * budget_w / level_w + 1e-9)


def water_levels(peaks: np.ndarray, target_w: float) -> np.ndarray:
    """Per row of `peaks` (steps x GPUs, W; NaN: not measured, counted as 0): the greatest C with
    sum over the row of min(p, C) <= `target_w`; inf where the row's sum is within it already."""
    p = np.sort(np.nan_to_num(peaks, nan=0.0), axis=1)
    rows, n = p.shape
    out = np.full(rows, math.inf)
    over = p.sum(axis=1) > target_w
    if not over.any() or n == 0:
        return out
    p = p[over]
    below = np.concatenate([np.zeros((len(p), 1)), np.cumsum(p, axis=1)[:, :-1]], axis=1)  # sum of the k smallest
    levels = (target_w - below) / (n - np.arange(n))   # cap the n - k largest at the level that meets the target
    first = np.argmax(levels <= p, axis=1)            # the least k whose level is within its GPU's peak
    out[over] = np.maximum(levels[np.arange(len(p)), first], 0.0)
    return out


@dataclasses.dataclass
class CapSearch:
    """The least water level over the steps seen, chunk after chunk, and the step it came from."""

    target_w: float
    cap_w: float = math.inf
    at: float | None = None       # Unix s of the step that sets it

    def add(self, times: np.ndarray, peaks: np.ndarray) -> None:
        """`peaks`: steps x GPUs at `times`."""
        if not len(times):
            return
        levels = water_levels(peaks, self.target_w)
        k = int(np.argmin(levels))
        if levels[k] < self.cap_w:
            self.cap_w, self.at = float(levels[k]), float(times[k])
