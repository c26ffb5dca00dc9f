"""Latency statistics in `vllm bench serve`'s shape, and goodput under SLOs."""

from __future__ import annotations

import numpy as np

from .client import RequestResult

METRICS = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


def percentile_key(p: float, metric: str) -> str:
    """`p99_ttft_ms`, `p99.9_itl_ms`: vLLM's key for percentile `p` of `metric`."""
    word = str(int(p)) if int(p) == p else str(p)
    return f"p{word}_{metric}_ms"


def summarize(metric: str, values_s: list[float], percentiles=DEFAULT_PERCENTILES) -> dict:
    """mean/median/std/percentiles of `values_s` (seconds) in ms, as vLLM names them; 0 when empty."""
    v = np.asarray(values_s if values_s else [0.0], dtype=float) * 1000.0
    out = {f"mean_{metric}_ms": float(v.mean()), f"median_{metric}_ms": float(np.median(v)),
           f"std_{metric}_ms": float(v.std())}
    for p in percentiles:
        out[percentile_key(p, metric)] = float(np.percentile(v, p))
    return out


def metric_values(results: list[RequestResult]) -> dict[str, list[float]]:
    """Per metric, the values in seconds over the successful requests (ITL: every gap)."""
    ok = [r for r in results if r.ok]
    return {"ttft": [r.ttft for r in ok if r.ttft is not None],
            "tpot": [r.tpot for r in ok if r.tpot is not None],
            "itl": [g for r in ok for g in r.itl],
            "e2el": [r.latency for r in ok if r.latency is not None]}


def parse_slos(text: str | list[str] | None) -> dict[str, float]:
    """`"ttft:500 tpot:50"` (ms, as vllm bench serve's --goodput) -> {"ttft": 500.0, "tpot": 50.0}."""
    if not text:
        return {}
    parts = text.split() if isinstance(text, str) else [p for t in text for p in t.split()]
    out = {}
    for part in parts:
        name, sep, value = part.partition(":")
        if not sep or name not in ("ttft", "tpot", "e2el"):
            raise ValueError(f"bad SLO {part!r}: use ttft:MS, tpot:MS or e2el:MS")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"bad SLO {part!r}: {value!r} is not a number of ms") from None
        if out[name] < 0:
            raise ValueError(f"bad SLO {part!r}: negative")
    return out


def good_requests(results: list[RequestResult], slos: dict[str, float]) -> int:
    """Successful requests meeting every SLO (ms; a request with < 2 tokens has TPOT 0)."""
    n = 0
    for r in results:
        if not r.ok:
            continue
        got = {"ttft": r.ttft or 0.0, "tpot": r.tpot or 0.0, "e2el": r.latency or 0.0}
        n += all(got[k] * 1000.0 <= v for k, v in slos.items())
    return n
