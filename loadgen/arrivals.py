"""When each request is sent: offsets in seconds after the run starts.

- closed loop (rate = inf): every request at t = 0, as the study ran it;
- constant: one every 1/rate s;
- poisson: exponential gaps with mean 1/rate s;
- gamma: gamma gaps with shape `burstiness` and mean 1/rate s (burstiness 1 is Poisson; below 1
  burstier, above 1 more regular), as `vllm bench serve --burstiness`;
- trace: the dataset's own timestamps."""

from __future__ import annotations

import math
import random

KINDS = ("constant", "poisson", "gamma", "trace")


def arrival_offsets(n: int, rate: float, kind: str = "poisson", burstiness: float = 1.0,
                    seed: int = 0, trace: list[float | None] | None = None) -> list[float]:
    """`n` non-decreasing send times (s after start). `rate` in requests/s; inf: all at 0."""
    if kind == "trace":
        if trace is None or len(trace) < n or any(t is None for t in trace[:n]):
            raise ValueError("trace arrivals need a `timestamp` on every dataset row")
        return sorted(float(t) for t in trace[:n])
    if kind not in KINDS:
        raise ValueError(f"unknown arrival process {kind!r}; known: {', '.join(KINDS)}")
    if math.isinf(rate):
        return [0.0] * n
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    if kind == "gamma" and not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(n):
        out.append(t)
        if kind == "constant":
            t = (i + 1) / rate
        elif kind == "poisson":
            t += rng.expovariate(rate)
        else:
            t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out
