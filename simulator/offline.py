"""The engine in virtual time: a load generator workload run as a discrete-event simulation.

Requests arrive at their planned times (all at t=0 for a closed loop), the engine steps from one
step's end to the next, idles until the next arrival when it has no work, and every token is
stamped at the end of the step that sampled it. The outcome is measured by the load generator's
own code (steady-state window, latency statistics, energy figures), so a simulated configuration
reports exactly what a real run would, in milliseconds instead of minutes."""

from __future__ import annotations

import bisect
import dataclasses

from jouletrace.loadgen.client import RequestResult
from jouletrace.loadgen.load import LoadOutcome
from jouletrace.loadgen.report import build_result
from jouletrace.loadgen.requests import PlannedRequest
from jouletrace.loadgen.stats import DEFAULT_PERCENTILES
from jouletrace.loadgen.window import Window, steady_state_window, whole_run_window

from .engine import Engine, SimRequest
from .lengths import OutputLengths, prompt_tokens


@dataclasses.dataclass
class PowerTrace:
    """Piecewise-constant power of all the engine's GPUs together: segment i holds `watts[i]` from
    `starts[i]` to `ends[i]` (s); with it the running batch of each segment."""

    starts: list[float] = dataclasses.field(default_factory=list)
    ends: list[float] = dataclasses.field(default_factory=list)
    watts: list[float] = dataclasses.field(default_factory=list)
    batch: list[int] = dataclasses.field(default_factory=list)

    def add(self, start: float, end: float, watts: float, batch: int) -> None:
        if end > start:
            self.starts.append(start)
            self.ends.append(end)
            self.watts.append(watts)
            self.batch.append(batch)

    def _overlaps(self, a: float, b: float):
        i = max(0, bisect.bisect_right(self.ends, a))
        while i < len(self.starts) and self.starts[i] < b:
            yield i, max(0.0, min(b, self.ends[i]) - max(a, self.starts[i]))
            i += 1

    def energy(self, a: float, b: float) -> float:
        """Joules from `a` to `b`."""
        return sum(self.watts[i] * dt for i, dt in self._overlaps(a, b))

    def mean_batch(self, a: float, b: float) -> float | None:
        """Time-weighted mean running batch from `a` to `b`."""
        return sum(self.batch[i] * dt for i, dt in self._overlaps(a, b)) / (b - a) if b > a else None


@dataclasses.dataclass
class OfflineRun:
    outcome: LoadOutcome
    power: PowerTrace
    preemptions: int


def simulate(engine: Engine, requests: list[PlannedRequest], arrivals: list[float], lengths: OutputLengths,
             ignore_eos: bool = False) -> OfflineRun:
    """Runs `requests` arriving at `arrivals` (s from 0) to completion through `engine`."""
    gpus = engine.perf.tp
    sims, results = [], []
    for r, at in zip(requests, arrivals):
        rid = f"sim-{r.index}"
        out = r.max_tokens if ignore_eos else min(r.max_tokens, lengths.draw(rid))
        sims.append(SimRequest(rid, prompt_tokens(r), out, at))
        results.append(RequestResult(r.index, rid, r.task, r.api, start=at))
    order = sorted(range(len(sims)), key=lambda i: arrivals[i])
    index = {id(s): i for i, s in enumerate(sims)}
    power = PowerTrace()
    t, k, done = 0.0, 0, 0
    while done < len(sims):
        while k < len(order) and arrivals[order[k]] <= t:
            engine.add(sims[order[k]])
            k += 1
        step = engine.step(t)
        if step is None:
            nxt = arrivals[order[k]]
            power.add(t, nxt, engine.perf.gpu.idle_w * gpus, 0)
            t = nxt
            continue
        power.add(step.start, step.end, step.cost.power_w * gpus, step.batch)
        for s, _ in step.emitted:
            results[index[id(s)]].token_times.append(step.end)
        for s in step.finished:
            res = results[index[id(s)]]
            res.ok, res.first_token, res.end = True, s.first_token_at, s.finished_at
            res.prompt_tokens, res.output_tokens = s.prompt_tokens, s.generated
            done += 1
        t = step.end
    end = max(r.end for r in results) if results else 0.0
    return OfflineRun(LoadOutcome(results, len(results), 0.0, end, False), power, engine.preemptions)


def measure(run: OfflineRun, meta: dict, max_num_seqs: int | None, slos: dict | None = None) -> dict:
    """The load generator's result for a simulated run: its window, energy and statistics (without
    the per-request lists)."""
    results = run.outcome.results
    window: Window | None
    window, reason = (steady_state_window(results, len(results), max_num_seqs) if max_num_seqs else (None, ""))
    if window is None:
        window = whole_run_window(results, run.outcome.start)
    energy = mean_batch = None
    if window is not None:
        energy = {"start": window.start, "end": window.end, "joules": run.power.energy(window.start, window.end),
                  "source": "simulator"}
        mean_batch = run.power.mean_batch(window.start, window.end)
    res = build_result(run.outcome, {**meta, "energy_source": "simulator", "preemptions": run.preemptions},
                       window, reason, energy, "", mean_batch, max_num_seqs, slos or {}, DEFAULT_PERCENTILES)
    return {k: v for k, v in res.items() if not isinstance(v, list) or k == "unstable_reasons"}
