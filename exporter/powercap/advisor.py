"""Power-cap advice, headroom and actuation for one exporter (`PowerCap`), and their metrics.

Advice: the power limit that spends the least energy per output within each latency deadline
(`--powercap-deadlines`), and with `--powercap-budget` the one that serves the most within the
budget, drawn (jouletrace.planning) from the live deployment's operating points (history.py).

Headroom: a GPU's enforced limit minus the 99th percentile of its power over the window (power at
the timeline's resolution, 100 ms): what oversubscribing a power budget relies on.

Actuation (actuation.py), off unless `--powercap-actuation on`: the admin API and the latency
guard that rolls a change back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Callable, Sequence

import numpy as np
from aiohttp import web

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import SEEN_PER_PENDING, Ledger
from jouletrace.exporter.powercap import actuation
from jouletrace.exporter.powercap.history import POLL_S, History
from jouletrace.exporter.powercap.latency import SpanLatency
from jouletrace.planning import Deadline, ModelAdvice, advise

log = logging.getLogger(__name__)

HEADROOM_PERCENTILE = 99.0


@dataclasses.dataclass(frozen=True)
class PowerCapConfig:
    """The `--powercap-*` options (docs/configuration.md)."""

    actuation: bool = False
    token_file: str = ""
    min_w: float = 0.0
    max_w: float = 0.0
    max_step_w: float = 100.0
    cooldown_s: float = 60.0
    guard: Deadline | None = Deadline("median_itl", 100.0)
    rollback_windows: int = 3
    audit_log: str = ""
    deadlines: tuple[Deadline, ...] = (Deadline("median_itl", 50.0), Deadline("median_itl", 100.0),
                                       Deadline("median_itl", 250.0))
    budget_w: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "PowerCapConfig":
        """From the exporter's configuration (its `powercap_*` fields)."""
        return cls(actuation=cfg.powercap_actuation, token_file=cfg.powercap_token_file, min_w=cfg.powercap_min,
                   max_w=cfg.powercap_max, max_step_w=cfg.powercap_max_step, cooldown_s=cfg.powercap_cooldown,
                   guard=cfg.powercap_guard_deadline, rollback_windows=cfg.powercap_rollback_windows,
                   audit_log=cfg.powercap_audit_log, deadlines=cfg.powercap_deadlines, budget_w=cfg.powercap_budget)

    def policy(self) -> actuation.Policy:
        return actuation.Policy(self.min_w, self.max_w, self.max_step_w, self.cooldown_s, self.guard,
                                self.rollback_windows)


def power_percentile(sampler: GPUSampler, window_s: float, q: float = HEADROOM_PERCENTILE) -> float | None:
    """The `q`th percentile of the GPU's power (W) over the last `window_s` seconds of its settled
    timeline, at the power sampling resolution; None with less than a second of timeline."""
    with sampler.lock:
        tl = sampler.timeline
        if not tl.started:
            return None
        end = tl.settled_until
        start = max(tl.oldest, end - window_s)
        if end - start < 1.0:
            return None
        grid = np.arange(start, end, sampler.power_interval_s)
        energy = tl.energy_at(np.append(grid, end))
    return float(np.percentile(np.diff(energy) / np.diff(np.append(grid, end)), q))


# -- the exporter's side ---------------------------------------------------------------------
class PowerCap:
    """Advice, headroom and (when enabled) actuation for one exporter.

    Wiring: the requests the ledger takes reach its latency record (a consumer of the ledger,
    added here); `run(stop)` runs on a thread of its own; `add_routes(app)` adds `/api/v1/powercap`
    to the metrics server; `restore()` at stop puts back the limits the GPUs had before actuation changed them."""

    def __init__(self, cfg: PowerCapConfig, samplers: Sequence[GPUSampler], ledger: Ledger,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.samplers = list(samplers)
        self.ledger = ledger
        self._clock = clock
        self.latency = SpanLatency(ledger.max_hold_s + 3 * ledger.window_s, SEEN_PER_PENDING * ledger.max_pending,
                                   clock)
        ledger.add_consumer(self.latency.record)
        self.history = History(self.samplers, ledger, self.latency)
        self.actuator = self.tokens = None
        if cfg.actuation:
            self.actuator = actuation.Actuator([s.device for s in self.samplers], cfg.policy(),
                                               actuation.AuditLog(cfg.audit_log), clock)
            self.tokens = actuation.Tokens(cfg.token_file)
            self.tokens.check()
        self.errors = 0

    def advice(self) -> list[ModelAdvice]:
        return advise(list(self.history.points), self.cfg.deadlines, self.cfg.budget_w, len(self.samplers))

    def step(self) -> None:
        """Read the limits in force; at each window's end observe it and let the guard see it."""
        self.history.limits.poll(self._clock())
        window = self.history.observe()
        if window is not None and self.actuator is not None:
            self.actuator.observe_window(window.start, window.power_limit_w,
                                         {p.model: p.latency_ms for p in window.points})

    def run(self, stop: threading.Event) -> None:
        """`step` every POLL_S until `stop` is set."""
        while not stop.wait(POLL_S):
            try:
                self.step()
            except Exception:  # never let one bad step stop the advice or the guard
                self.errors += 1
                log.exception("power-cap step failed")

    def restore(self) -> None:
        """Put back the limits the GPUs had before actuation changed them (at the exporter's stop)."""
        if self.actuator is not None:
            try:
                self.actuator.restore("jouletrace", "exporter stopping")
            except actuation.Refused as exc:
                log.error("power limits not all restored: %s", exc.reason)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/powercap", self._state)
        post, delete = actuation.handlers(self.actuator, self.tokens)
        app.router.add_post("/api/v1/powercap", post)
        app.router.add_delete("/api/v1/powercap", delete)

    async def _state(self, request: web.Request) -> web.Response:
        gpus = []
        for s in self.samplers:
            with s.lock:
                limit = s.status.power_limit_w
            gpus.append({"index": s.device.index, "uuid": s.device.uuid, "limit_w": limit})
        body = {"actuation": self.actuator is not None, "gpus": gpus,
                "advice": [a.to_dict() for a in self.advice()]}
        if self.actuator is not None:
            body.update(await asyncio.to_thread(self.actuator.state))
        return web.json_response(body)
