"""A live progress line on stderr: requests done, request rate, errors, and, when an exporter is
given, the J/token and tokens/s per W (= tokens per J) so far: the exporter's energy from the first
output token to EXPORTER_LAG_S ago over the output tokens in that time. It is shown once that time
holds MIN_TOKENS_PER_REQUEST tokens per request sent: before, prefill and the first tokens alone
would give a figure many times the run's."""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from .client import RequestResult
from .clock import now
from .energy import EnergyUnavailable, exporter_energy
from .window import Window, tokens_in_window

EXPORTER_LAG_S = 3.0  # ask the exporter only about energy this old (newer is usually not measured yet)
MIN_TOKENS_PER_REQUEST = 20


class Progress:
    def __init__(self, total: int, sent: list[RequestResult], start: float, exporter_url: str | None,
                 stream=sys.stderr, period_s: float = 2.0):
        self.total, self.sent, self.start = total, sent, start
        self.exporter_url, self.stream, self.period_s = exporter_url, stream, period_s
        self.j_per_token: float | None = None

    def line(self) -> str:
        done = [r for r in self.sent if r.end is not None or r.error_kind]
        errors = sum(1 for r in done if not r.ok)
        elapsed = max(1e-9, now() - self.start)
        text = (f"loadgen: {len(done)}/{self.total} done, {len(self.sent) - len(done)} in flight, "
                f"{len(done) / elapsed:.2f} req/s, {errors} errors, {elapsed:.0f} s")
        if self.j_per_token is not None:
            text += f", {self.j_per_token:.4f} J/token, {1 / self.j_per_token:.2f} tokens/s/W"
        return text

    async def _energy(self, session: aiohttp.ClientSession) -> None:
        sent = list(self.sent)
        firsts = [t for r in sent if (t := r.first_token if r.first_token is not None else r.end) is not None]
        end = now() - EXPORTER_LAG_S
        if not firsts or end <= min(firsts) + 1.0:
            return
        w = Window(min(firsts), end, "progress")
        tokens = sum(_tokens_so_far(r, w) for r in sent)
        if tokens < MIN_TOKENS_PER_REQUEST * len(sent):
            return
        try:
            energy = await exporter_energy(session, self.exporter_url, w.start, w.end, wait_s=0)
        except EnergyUnavailable:
            return
        self.j_per_token = energy["joules"] / tokens

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Until cancelled; a final line is written by `finish`."""
        while True:
            await asyncio.sleep(self.period_s)
            if self.exporter_url:
                await self._energy(session)
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        print(self.line(), file=self.stream, flush=True)


def _tokens_so_far(r: RequestResult, w: Window) -> float:
    if r.ok:
        return tokens_in_window(r, w)
    return float(sum(1 for t in list(r.token_times) if w.start < t <= w.end))  # still streaming
