"""A per-GPU energy timeline: cumulative joules as a function of time, in bounded memory.

Cheap power samples (~100 ms apart) shape the curve; settlements pin it. Each settlement gives
the energy (J) spent since the previous one, normally the energy counter's delta, and that energy
is spread over the interval in proportion to the trapezoidal integral of the power samples. So the
timeline's total over any run of settlements equals the counter exactly, while its resolution is
that of the power samples.
"""

from __future__ import annotations

import bisect

import numpy as np


class EnergyTimeline:
    """Cumulative energy (J since `origin`) at knot times (Unix seconds), up to `settled_until`."""

    def __init__(self, retention_s: float = 600.0):
        self.retention_s = retention_s
        self._t = np.empty(1024)
        self._e = np.empty(1024)
        self._lo = 0  # first live knot
        self._hi = 0  # one past the last knot
        self._pending_t: list[float] = []  # power samples after settled_until
        self._pending_p: list[float] = []
        self._last_power: float | None = None  # the last power sample at or before settled_until

    # -- state ----------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._hi > 0

    @property
    def origin(self) -> float:
        return float(self._t[0]) if self._hi else float("nan")

    @property
    def settled_until(self) -> float:
        """Time of the latest settlement; the timeline answers for times up to here."""
        return float(self._t[self._hi - 1]) if self._hi else float("-inf")

    @property
    def oldest(self) -> float:
        """Earliest time still answerable (older knots fell out of retention)."""
        return float(self._t[self._lo]) if self._hi else float("inf")

    @property
    def total_j(self) -> float:
        """Energy settled since the origin (J)."""
        return float(self._e[self._hi - 1]) if self._hi else 0.0

    def __len__(self) -> int:
        return self._hi - self._lo

    # -- writing --------------------------------------------------------------------------
    def add_power(self, t: float, watts: float) -> None:
        """Record a power sample taken at time `t`."""
        if self._hi and t <= self.settled_until:
            return
        if self._pending_t and t <= self._pending_t[-1]:
            return
        self._pending_t.append(t)
        self._pending_p.append(watts)

    def start(self, t: float) -> None:
        """Set the origin: energy is counted from `t` on."""
        if self._hi:
            raise RuntimeError("timeline already started")
        self._append(np.array([t]), np.array([0.0]))
        self._take_pending_until(t)

    def _profile(self, t_end: float) -> tuple[np.ndarray, np.ndarray]:
        """Knot times in (settled_until, t_end] and the cumulative power integral (J) at each."""
        t0 = self.settled_until
        k = bisect.bisect_left(self._pending_t, t_end)
        at_end = bisect.bisect_right(self._pending_t, t_end)  # a sample taken at t_end itself
        ts = [t0] + self._pending_t[:k]
        ps = self._pending_p[:k]
        first = self._last_power if self._last_power is not None else (
            self._pending_p[0] if self._pending_p else 0.0)
        last = self._pending_p[at_end - 1] if at_end else first
        ts.append(t_end)
        ps = [first] + ps + [last]
        t = np.asarray(ts)
        p = np.asarray(ps)
        cum = np.concatenate(([0.0], np.cumsum(np.diff(t) * (p[1:] + p[:-1]) * 0.5)))
        return t, cum

    def pending_integral(self, t_end: float) -> float:
        """Energy (J) the power samples alone give from `settled_until` to `t_end`."""
        if not self._hi or t_end <= self.settled_until:
            return 0.0
        return float(self._profile(t_end)[1][-1])

    def settle(self, t_end: float, energy_j: float) -> None:
        """Pin the timeline: `energy_j` joules were spent from `settled_until` to `t_end`."""
        if not self._hi:
            raise RuntimeError("timeline not started")
        if t_end <= self.settled_until:
            raise ValueError(f"settlement at {t_end} not after {self.settled_until}")
        if energy_j < 0:
            raise ValueError(f"negative energy {energy_j}")
        t, cum = self._profile(t_end)
        if cum[-1] > 0:
            share = cum / cum[-1]
        else:  # no power information: spread evenly in time
            share = (t - t[0]) / (t[-1] - t[0])
        e0 = self.total_j
        self._append(t[1:], e0 + energy_j * share[1:])
        self._e[self._hi - 1] = e0 + energy_j  # exact at the settlement
        self._take_pending_until(t_end)
        self._trim(t_end - self.retention_s)

    def _take_pending_until(self, t_end: float) -> None:
        k = bisect.bisect_right(self._pending_t, t_end)
        if k:
            self._last_power = self._pending_p[k - 1]
            del self._pending_t[:k]
            del self._pending_p[:k]

    def _append(self, t: np.ndarray, e: np.ndarray) -> None:
        n = len(t)
        if self._hi + n > len(self._t):
            live = self._hi - self._lo
            size = max(1024, 2 * (live + n))
            nt, ne = np.empty(size), np.empty(size)
            nt[:live] = self._t[self._lo:self._hi]
            ne[:live] = self._e[self._lo:self._hi]
            self._t, self._e, self._lo, self._hi = nt, ne, 0, live
        self._t[self._hi:self._hi + n] = t
        self._e[self._hi:self._hi + n] = e
        self._hi += n

    def _trim(self, before: float) -> None:
        """Forget knots older than `before`, keeping the last one at or before it."""
        k = int(np.searchsorted(self._t[self._lo:self._hi], before, side="right")) - 1
        if k > 0:
            self._lo += k

    # -- reading --------------------------------------------------------------------------
    def energy_at(self, ts: np.ndarray) -> np.ndarray:
        """Cumulative energy (J) at each time in `ts`, which must lie in [oldest, settled_until]."""
        ts = np.asarray(ts, dtype=float)
        if ts.size and (ts.min() < self.oldest or ts.max() > self.settled_until):
            raise ValueError(
                f"times [{ts.min()}, {ts.max()}] outside the timeline [{self.oldest}, {self.settled_until}]")
        return np.interp(ts, self._t[self._lo:self._hi], self._e[self._lo:self._hi])

    def energy(self, t0: float, t1: float) -> float:
        """Energy (J) spent from `t0` to `t1`."""
        e0, e1 = self.energy_at(np.array([t0, t1]))
        return float(e1 - e0)
