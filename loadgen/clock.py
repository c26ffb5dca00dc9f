"""One clock for the whole run: wall-clock seconds (unix) advanced by the monotonic counter, so
that timestamps are comparable with the exporter's energy windows and never jump."""

from __future__ import annotations

import time

_WALL0 = time.time()
_MONO0 = time.perf_counter()


def now() -> float:
    """Current time, unix seconds (monotonic within this process)."""
    return _WALL0 + (time.perf_counter() - _MONO0)
