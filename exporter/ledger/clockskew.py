"""Span timing per sender, measured from the spans themselves: clock skew, export delay, age.

A span arrives after it ends: arrival - end = d + (exporter clock - sender clock), with d >= 0 the
export delay (batching, network). Per source (the span's model label), the least `arrival - end`
over the last `window_s` seconds of arrivals is its clock offset: the skew, plus the shortest
export delay seen, which is close to 0 whenever spans leave as they end or often enough.

A negative offset beyond `tolerance_s` is certain skew: the sender's clock is ahead (its spans end
in the exporter's future). Its spans are moved back by the offset, onto the exporter's clock, and
counted as corrected; what remains is the shortest export delay. A positive offset cannot be told
from export delay, so it is only reported: if it exceeds the settle delay, spans arrive late.

Settlement reads two more extremes per source, on the exporter's clock (after correction): the
greatest `arrival - end` over `window_s` (`export_delay`: how long a finished request's span may
still be on its way) and the greatest `arrival - start` over `age_window_s` (`age`: how long a
request's time may wait for its span). All in seconds.
"""

from __future__ import annotations

import numpy as np

from jouletrace.exporter.windowed import WindowedExtreme

WINDOW_S = 120.0
AGE_WINDOW_S = 600.0
TOLERANCE_S = 0.5


class ClockSkew:
    """Per-source clock offsets (s; negative: the sender's clock is ahead), export delays and ages."""

    def __init__(self, window_s: float = WINDOW_S, tolerance_s: float = TOLERANCE_S, age_window_s: float = AGE_WINDOW_S):
        self.window_s = window_s
        self.tolerance_s = tolerance_s
        self.age_window_s = age_window_s
        self._offset: dict[int, WindowedExtreme] = {}  # source -> least lag
        self._delay: dict[int, WindowedExtreme] = {}  # source -> greatest lag, corrected
        self._age: dict[int, WindowedExtreme] = {}  # source -> greatest arrival - start, corrected
        self.corrected = 0  # spans moved onto the exporter's clock

    def correct(self, rows: np.ndarray, sources: np.ndarray, arrival: float) -> np.ndarray:
        """Note the batch's lags and return its rows (REQUEST_DTYPE), those of sources whose clock
        is ahead moved back by their offset (a copy; `rows` is left as it is)."""
        lag = arrival - rows["end"]
        age = arrival - rows["start"]
        shift = np.zeros(len(rows))
        for source in np.unique(sources).tolist():
            sel = sources == source
            least_lag = self._of(self._offset, source, self.window_s, least=True)
            least_lag.add(arrival, float(lag[sel].min()))
            offset = least_lag.value()
            moved = offset if offset < -self.tolerance_s else 0.0
            shift[sel] = moved
            self._of(self._delay, source, self.window_s).add(arrival, float(lag[sel].max()) - moved)
            self._of(self._age, source, self.age_window_s).add(arrival, float(age[sel].max()) - moved)
        if not shift.any():
            return rows
        self.corrected += int(np.count_nonzero(shift))
        rows = rows.copy()
        for field in ("start", "end"):
            rows[field] += shift
        return rows

    @staticmethod
    def _of(table: dict[int, WindowedExtreme], source: int, window_s: float, least: bool = False) -> WindowedExtreme:
        extreme = table.get(source)
        if extreme is None:
            extreme = table[source] = WindowedExtreme(window_s, least)
        return extreme

    def offsets(self) -> dict[int, float]:
        """The last offset measured for each source (s)."""
        return {source: v for source, x in self._offset.items() if (v := x.value()) is not None}

    def export_delay(self) -> float | None:
        """The greatest (arrival - end) of any source's spans over the window (s); None before any."""
        return max((v for x in self._delay.values() if (v := x.value()) is not None), default=None)

    def age(self) -> float | None:
        """The greatest (arrival - start) of any source's spans over the age window (s); None before any."""
        return max((v for x in self._age.values() if (v := x.value()) is not None), default=None)
