"""Clock skew between a span's sender and the exporter, measured from the spans themselves.

A span arrives after it ends: arrival - end = d + (exporter clock - sender clock), with d >= 0 the
export delay (batching, network). Per source (the span's model label), the least `arrival - end`
over the last `window_s` seconds of arrivals is its clock offset: the skew, plus the shortest
export delay seen, which is close to 0 whenever spans leave as they end or often enough.

A negative offset beyond `tolerance_s` is certain skew: the sender's clock is ahead (its spans end
in the exporter's future). Its spans are moved back by the offset, onto the exporter's clock, and
counted as corrected; what remains is the shortest export delay. A positive offset cannot be told
from export delay, so it is only reported: if it exceeds the settle delay, spans arrive late.
"""

from __future__ import annotations

import collections

import numpy as np

WINDOW_S = 120.0
TOLERANCE_S = 0.5


class ClockSkew:
    """Per-source clock offsets (s; negative: the sender's clock is ahead)."""

    def __init__(self, window_s: float = WINDOW_S, tolerance_s: float = TOLERANCE_S):
        self.window_s = window_s
        self.tolerance_s = tolerance_s
        self._seen: dict[int, collections.deque] = {}  # source -> (arrival, least lag of a batch)
        self.corrected = 0  # spans moved onto the exporter's clock

    def correct(self, rows: np.ndarray, sources: np.ndarray, arrival: float) -> np.ndarray:
        """Note the batch's lags and return its rows (REQUEST_DTYPE), those of sources whose clock
        is ahead moved back by their offset (a copy; `rows` is left as it is)."""
        lag = arrival - rows["end"]
        shift = np.zeros(len(rows))
        for source in np.unique(sources).tolist():
            sel = sources == source
            offset = self._observe(source, arrival, float(lag[sel].min()))
            if offset < -self.tolerance_s:
                shift[sel] = offset
        if not shift.any():
            return rows
        self.corrected += int(np.count_nonzero(shift))
        rows = rows.copy()
        for field in ("start", "end"):
            rows[field] += shift
        return rows

    def _observe(self, source: int, arrival: float, least_lag: float) -> float:
        seen = self._seen.setdefault(source, collections.deque())
        while seen and seen[0][0] < arrival - self.window_s:
            seen.popleft()
        while seen and seen[-1][1] >= least_lag:  # a monotonic deque: its head is the window's least
            seen.pop()
        seen.append((arrival, least_lag))
        return seen[0][1]

    def offsets(self) -> dict[int, float]:
        """The last offset measured for each source (s)."""
        return {source: seen[0][1] for source, seen in self._seen.items() if seen}
