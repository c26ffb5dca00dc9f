"""Drives the load: every planned request sent at its arrival time (closed loop: all at t = 0),
under an optional client-side concurrency limit, until done or stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
from typing import Callable

import aiohttp

from .arrivals import arrival_offsets
from .client import RequestResult, send
from .clock import now
from .plan import Sampling
from .requests import PlannedRequest
from .tracing import ClientTracer


@dataclasses.dataclass
class LoadConfig:
    base_url: str
    model: str
    sampling: Sampling = Sampling()
    stream: bool = True
    rate: float = math.inf        # requests/s; inf: closed loop, all at t = 0
    arrival: str = "poisson"      # constant, poisson, gamma, trace
    burstiness: float = 1.0
    concurrency: int | None = None  # at most this many requests in flight
    seed: int = 0
    request_timeout_s: float = 3600.0
    run_tag: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))


@dataclasses.dataclass
class LoadOutcome:
    results: list[RequestResult]  # every request sent, by index
    planned: int
    start: float                  # unix s
    end: float                    # unix s
    interrupted: bool


async def run_load(requests: list[PlannedRequest], cfg: LoadConfig, tracer: ClientTracer,
                   stop: asyncio.Event | None = None,
                   on_done: Callable[[RequestResult], None] | None = None,
                   session: aiohttp.ClientSession | None = None,
                   sent: list[RequestResult] | None = None) -> LoadOutcome:
    """Sends every request; returns early (cancelling those in flight) once `stop` is set.
    `sent` (optional) receives each request's result as it is sent, for a live view."""
    stop = stop or asyncio.Event()
    offsets = arrival_offsets(len(requests), cfg.rate, cfg.arrival, cfg.burstiness, cfg.seed,
                              trace=[r.arrival_s for r in requests])
    limit = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency else None
    sent = [] if sent is None else sent
    own = session is None
    if own:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=cfg.request_timeout_s))
    t0 = now()

    async def one(r: PlannedRequest, offset: float) -> None:
        delay = t0 + offset - now()
        if delay > 0:
            await asyncio.sleep(delay)
        if limit is not None:
            await limit.acquire()
        try:
            res = RequestResult(r.index, f"{cfg.run_tag}-{r.index}", r.task, r.api)
            sent.append(res)
            await send(session, cfg.base_url, cfg.model, r, res, cfg.sampling, tracer, cfg.stream)
            if on_done is not None:
                on_done(res)
        finally:
            if limit is not None:
                limit.release()

    tasks = [asyncio.create_task(one(r, o)) for r, o in zip(requests, offsets)]
    all_done = asyncio.gather(*tasks, return_exceptions=True)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({all_done, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        interrupted = stop.is_set() and not all_done.done()
        for t in tasks:
            t.cancel()
        await asyncio.gather(all_done, return_exceptions=True)
        stopped.cancel()
        if own:
            await session.close()
    return LoadOutcome(sorted(sent, key=lambda r: r.index), len(requests), t0, now(), interrupted)
