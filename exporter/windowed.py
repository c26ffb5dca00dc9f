"""The greatest (or least) value of a stream over a sliding window of time, in O(1) amortised per value.

A monotonic deque holds the (time, value) pairs that can still be the window's extreme: each new
value drops the values before it that it outdoes (not less than it, for the greatest), so its front
is the extreme; a query drops from the front what left the window. Each value enters and leaves
once. The window is (now - window_s, now]: a value at time t counts until now reaches t + window_s.
Times in seconds, values in any unit. Used for the GPUs' and the node's power peaks (W) and the
span senders' clock offsets, export delays and ages (s, ledger/clockskew.py).
"""

from __future__ import annotations

from collections import deque


class WindowedExtreme:
    """The greatest value added over the last `window_s` seconds; with `least`, the least."""

    __slots__ = ("window_s", "_sign", "_deque", "_last_t")

    def __init__(self, window_s: float, least: bool = False):
        if not window_s > 0:
            raise ValueError(f"window must be positive, got {window_s}")
        self.window_s = window_s
        self._sign = 1.0 if least else -1.0  # the deque keeps the least of sign x value
        self._deque: deque[tuple[float, float]] = deque()
        self._last_t = float("-inf")

    def add(self, t: float, value: float) -> None:
        """Record `value` taken at time `t`; a time before the last one's counts as the last one's."""
        t = self._last_t = max(t, self._last_t)
        d, v = self._deque, self._sign * value
        self._expire(t)
        while d and d[-1][1] >= v:
            d.pop()
        d.append((t, v))

    def value(self, now: float | None = None) -> float | None:
        """The extreme of the values of times in (now - window_s, now], or of the window that ended
        at the last value added when `now` is None; None where there is none."""
        if now is not None:
            self._expire(now)
        return self._sign * self._deque[0][1] if self._deque else None

    def _expire(self, now: float) -> None:
        d = self._deque
        while d and d[0][0] <= now - self.window_s:
            d.popleft()
