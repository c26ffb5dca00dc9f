"""Request latency from spans, for the power-cap history: a consumer of the ledger
(`ledger.add_consumer(latency.record)`), so each request counts once, with its times on the
exporter's clock (after the ledger's clock-skew correction) and duplicates left out.

Per request it keeps the end (Unix s), the model, the mean inter-token latency (decode time /
(output tokens - 1), s) with its token gaps as weight, and for image and video requests the
generation latency (span duration, s); for `hold_s` seconds and of at most `max_rows` requests
(the oldest go first). `window` answers in ms: median ITL weighted by token gaps, p99 TPOT over
requests, median generation latency.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

import numpy as np

from jouletrace.exporter.ledger.records import RequestBatch


class SpanLatency:
    """The latency of the requests the ledger took recently; see the module docstring."""

    def __init__(self, hold_s: float, max_rows: int, clock: Callable[[], float] = time.time):
        self.hold_s = hold_s
        self.max_rows = max_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._chunks: collections.deque = collections.deque()  # (latest end, columns)
        self._rows = 0

    def record(self, rows: np.ndarray, batch: RequestBatch) -> None:
        """Keep the latency of `rows` (the ledger's accepted rows, `model` indexing batch.models)."""
        if not len(rows):
            return
        gaps = rows["completion_tokens"] - 1
        text = (rows["output_kind"] == 0) & np.isfinite(rows["decode_s"]) & (gaps >= 1)
        columns = {
            "end": rows["end"].copy(),
            "model": np.asarray(batch.models, dtype=object)[rows["model"]],
            "itl": np.where(text, rows["decode_s"] / np.maximum(gaps, 1), np.nan),
            "gaps": np.where(text, gaps, 0),
            "generation": np.where(rows["output_kind"] != 0, rows["end"] - rows["start"], np.nan),
        }
        with self._lock:
            self._chunks.append((float(rows["end"].max()), columns))
            self._rows += len(rows)
            cutoff = self._clock() - self.hold_s
            while self._chunks and (self._chunks[0][0] < cutoff or self._rows > self.max_rows):
                self._rows -= len(self._chunks.popleft()[1]["end"])

    def window(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Latency (ms) by basis, per model, of the requests that ended in (start, end]."""
        with self._lock:
            chunks = [c for t, c in self._chunks if t > start]
        if not chunks:
            return {}
        col = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        inside = (col["end"] > start) & (col["end"] <= end)
        out = {}
        for model in set(col["model"][inside]):
            sel = inside & (col["model"] == model)
            itl, gaps, gen = col["itl"][sel], col["gaps"][sel], col["generation"][sel]
            lat = {}
            text = np.isfinite(itl)
            if text.any():
                lat["median_itl"] = 1000 * weighted_median(itl[text], gaps[text])
                lat["p99_tpot"] = 1000 * float(np.percentile(itl[text], 99))
            if np.isfinite(gen).any():
                lat["generation_latency"] = 1000 * float(np.median(gen[np.isfinite(gen)]))
            out[str(model)] = lat
        return out


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half the total weight lies."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])
