"""Scrapes the engine's running batch (vLLM's `vllm:num_requests_running` gauge) during a run."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .clock import now

RUNNING = "vllm:num_requests_running"


def parse_running(text: str) -> float | None:
    """Sum of `vllm:num_requests_running` over its label sets, None where absent."""
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == RUNNING]
    return sum(values) if values else None


class BatchScraper:
    """Polls `metrics_url` every `interval_s` s; `samples` holds (unix s, running requests)."""

    def __init__(self, metrics_url: str, interval_s: float = 0.25):
        self.url = metrics_url
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self.failures = 0

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Until cancelled."""
        while True:
            try:
                async with session.get(self.url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    value = parse_running(await resp.text()) if resp.status == 200 else None
                if value is None:
                    self.failures += 1
                else:
                    self.samples.append((now(), value))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                self.failures += 1
            await asyncio.sleep(self.interval_s)

    def mean(self, start: float, end: float) -> float | None:
        """Time-weighted mean over [start, end] of the running batch, each sample holding until the
        next; None without a sample at or before `end`."""
        pts = [(t, v) for t, v in self.samples if t <= end]
        if not pts or end <= start:
            return None
        area, prev_t, prev_v = 0.0, start, None
        for t, v in pts:
            if t > start and prev_v is not None:
                area += prev_v * (t - prev_t)
                prev_t = t
            prev_v = v
            prev_t = max(prev_t, t) if t > start else start
        area += prev_v * (end - prev_t)
        return area / (end - start)
