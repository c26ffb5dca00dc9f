"""The greatest value of a stream over a sliding window of time, in O(1) amortised per value.

A monotonic deque holds the (time, value) pairs that can still be the window's greatest: each new
value drops the values before it that are not greater, so the deque's values decrease from front
to back and its front is the greatest; `max(now)` drops from the front what left the window. Each
value enters and leaves once. The window is (now - window_s, now]: a value at time t counts until
now reaches t + window_s. Times in seconds, values in any unit (W here).
"""

from __future__ import annotations

from collections import deque


class WindowedMax:
    """The greatest value added over the last `window_s` seconds."""

    def __init__(self, window_s: float):
        if not window_s > 0:
            raise ValueError(f"window must be positive, got {window_s}")
        self.window_s = window_s
        self._deque: deque[tuple[float, float]] = deque()
        self._last_t = float("-inf")

    def add(self, t: float, value: float) -> None:
        """Record `value` taken at time `t`; a time before the last one's counts as the last one's."""
        t = self._last_t = max(t, self._last_t)
        d = self._deque
        while d and d[-1][1] <= value:
            d.pop()
        d.append((t, value))

    def max(self, now: float) -> float | None:
        """The greatest value of times in (now - window_s, now]; None where there is none."""
        d = self._deque
        while d and d[0][0] <= now - self.window_s:
            d.popleft()
        return d[0][1] if d else None
