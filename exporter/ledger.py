"""The energy ledger: measured GPU energy split among the requests that ran, conserving every joule.

Attribution rule. Time is finalized per GPU up to its horizon, `min(settled_until, now -
settle_delay)`. Inside a finalized interval, each request occupies the GPU during its prefill and
decode phases (from the span: decode is the last `time_in_model_decode` seconds before the span's
end, prefill the `time_in_model_prefill` seconds before that; queueing and tokenization occupy no
GPU). A phase carries a weight equal to the tokens it processes per second: prompt tokens spread
evenly over prefill, output tokens over decode (at least one token per phase). At every moment
the GPU's energy is split among the running phases in proportion to their weights; energy spent
while no phase runs is idle energy. Spans without phase durations run from start (after any
queue time) to end with weight (prompt + output tokens) / duration; image and video requests with
weight (images or videos) / duration. Over any finalized interval, attributed plus idle energy
equals the timeline's measured energy.

Spans arrive after their request ends; a request whose time was partly finalized before its span
arrived is counted as late and gets energy only for its unfinalized time.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from .labels import LabelLimiter
from .records import IntakeFull, RequestRecord
from .sampler import GPUSampler

#: Request-energy histogram bucket upper bounds (J).
ENERGY_BUCKETS_J = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
                    10000, 25000, 50000, 100000)


@dataclass(slots=True)
class ModelTotals:
    """Monotonic totals for one model label."""

    energy_j: float = 0.0  # attributed, including requests still running at the horizon
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    videos: int = 0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(ENERGY_BUCKETS_J) + 1))
    energy_observed_j: float = 0.0  # sum of the histogram's observations


@dataclass(slots=True)
class GPUTotals:
    attributed_j: float = 0.0
    idle_j: float = 0.0
    finalized_until: float | None = None


@dataclass(slots=True)
class WindowStats:
    """Aggregates of one model over the sliding window, as the study defines them."""

    energy_j: float  # energy attributed to the model's requests in the window
    output_tokens: float  # output tokens generated in the window
    measured_j: float  # all energy measured on the GPUs in the window (idle included)
    seconds: float
    image_energy_j: float = 0.0
    images: int = 0
    video_energy_j: float = 0.0
    videos: int = 0

    @property
    def joules_per_output_token(self) -> float | None:
        return self.energy_j / self.output_tokens if self.output_tokens > 0 else None

    @property
    def output_tokens_per_second_per_watt(self) -> float | None:
        # (tokens / s) / (J / s) = tokens / J, with all measured energy (static power included)
        return self.output_tokens / self.measured_j if self.measured_j > 0 else None

    @property
    def joules_per_image(self) -> float | None:
        return self.image_energy_j / self.images if self.images else None

    @property
    def joules_per_video(self) -> float | None:
        return self.video_energy_j / self.videos if self.videos else None


class _Pending:
    __slots__ = ("record", "model", "run_start", "run_end", "energy_j", "done")

    def __init__(self, record: RequestRecord, model: int, run_start: float, run_end: float):
        self.record = record
        self.model = model
        self.run_start = run_start
        self.run_end = run_end
        self.energy_j = 0.0
        self.done = False


def request_phases(r: RequestRecord) -> list[tuple[float, float, float, float]]:
    """(start, end, weight in tokens/s, output tokens generated) for each GPU phase of `r`."""
    start, end = r.start, r.end
    phases = []
    if r.output_kind in ("image", "video"):
        run = min(end, start + (r.queue_s or 0.0))
        phases.append((run, end, max(r.output_count, 1), 0))
    elif r.prefill_s is not None or r.decode_s is not None:
        decode_start = max(start, end - (r.decode_s or 0.0))
        prefill_start = max(start, decode_start - (r.prefill_s or 0.0))
        phases.append((prefill_start, decode_start, max(r.prompt_tokens, 1), 0))
        phases.append((decode_start, end, max(r.completion_tokens, 1), r.completion_tokens))
    else:
        run = min(end, start + (r.queue_s or 0.0))
        phases.append((run, end, max(r.prompt_tokens + r.completion_tokens, 1), r.completion_tokens))
    return [(s, e, tokens / (e - s), gen) for s, e, tokens, gen in phases if e > s]


class Ledger:
    """Accepts request records, finalizes time, attributes energy and keeps the totals."""

    def __init__(
        self,
        samplers: Sequence[GPUSampler],
        *,
        settle_delay_s: float = 60.0,
        window_s: float = 60.0,
        max_pending: int = 100_000,
        max_models: int = 50,
        clock: Callable[[], float] = time.time,
    ):
        self.samplers = list(samplers)
        retention = min(s.timeline.retention_s for s in self.samplers) if self.samplers else 600.0
        if settle_delay_s >= retention:
            raise ValueError(f"settle delay {settle_delay_s}s must be shorter than retention {retention}s")
        self.settle_delay_s = settle_delay_s
        self.retention_s = retention
        self.window_s = window_s
        self.max_pending = max_pending
        self._clock = clock
        self._lock = threading.Lock()
        self._models = LabelLimiter(max_models)
        self.model_names: list[str] = []
        self._model_index: dict[str, int] = {}
        self.models: list[ModelTotals] = []
        self.gpus = [GPUTotals() for _ in self.samplers]
        # pending requests and their phases (parallel lists; compacted as requests finish)
        self._pending: list[_Pending] = []
        self._ph_start: list[float] = []
        self._ph_end: list[float] = []
        self._ph_weight: list[float] = []
        self._ph_tokens: list[float] = []
        self._ph_req: list[int] = []
        self._n_done = 0
        self._complete_until = float("-inf")  # requests ending before this are complete
        self._window: collections.deque = collections.deque()
        self._seen_spans: dict[bytes, float] = {}  # (trace id + span id) -> end, for duplicates
        # self-metrics
        self.spans_accepted = 0
        self.spans_late = 0  # part of the request's time was finalized before its span arrived
        self.spans_expired = 0  # all of it was: no energy, tokens still counted
        self.spans_duplicate = 0
        self.passes = 0
        self.pass_seconds = 0.0

    # -- intake ---------------------------------------------------------------------------
    def _model(self, name: str) -> int:
        label = self._models(name)
        idx = self._model_index.get(label)
        if idx is None:
            idx = self._model_index[label] = len(self.model_names)
            self.model_names.append(label)
            self.models.append(ModelTotals())
        return idx

    @property
    def pending(self) -> int:
        return len(self._pending) - self._n_done

    @property
    def folded_models(self) -> int:
        return self._models.folded

    def _finalized_floor(self) -> float:
        """The earliest time any GPU has finalized to (energy before it is already split)."""
        done = [g.finalized_until for g in self.gpus if g.finalized_until is not None]
        return min(done) if done else float("-inf")

    def submit(self, records: Iterable[RequestRecord]) -> None:
        """Accept finished requests; raises IntakeFull (nothing accepted) when the ledger is full."""
        records = list(records)
        with self._lock:
            if self.pending + len(records) > self.max_pending:
                raise IntakeFull(f"{self.pending} requests pending (limit {self.max_pending})")
            floor = self._finalized_floor()
            for r in records:
                key = r.trace_id + r.span_id
                if key:
                    if key in self._seen_spans:
                        self.spans_duplicate += 1
                        continue
                    self._seen_spans[key] = r.end
                model = self._model(r.model)
                phases = request_phases(r)
                self.spans_accepted += 1
                run_start = phases[0][0] if phases else r.end
                run_end = phases[-1][1] if phases else r.end
                if run_end <= floor or run_end <= self._complete_until:
                    self.spans_expired += 1
                    self._count_request(self.models[model], r, None)
                    continue
                if run_start < floor:
                    self.spans_late += 1
                idx = len(self._pending)
                self._pending.append(_Pending(r, model, run_start, run_end))
                for s, e, w, gen in phases:
                    self._ph_start.append(s)
                    self._ph_end.append(e)
                    self._ph_weight.append(w)
                    self._ph_tokens.append(gen)
                    self._ph_req.append(idx)

    # -- attribution ----------------------------------------------------------------------
    def settle(self) -> None:
        """Finalize every GPU up to its horizon and attribute the energy; call about once a second."""
        t_pass = time.perf_counter()
        now = self._clock()
        with self._lock:
            self._settle(now)
        self.passes += 1
        self.pass_seconds += time.perf_counter() - t_pass

    def _settle(self, now: float) -> None:
        groups: dict[tuple[float, float], list[int]] = {}
        for g, sampler in enumerate(self.samplers):
            with sampler.lock:
                tl = sampler.timeline
                if not tl.started:
                    continue
                totals = self.gpus[g]
                if totals.finalized_until is None:
                    totals.finalized_until = tl.origin
                f = max(totals.finalized_until, tl.oldest)
                h = min(tl.settled_until, now - self.settle_delay_s)
            if h > f:
                groups.setdefault((f, h), []).append(g)

        ps = np.asarray(self._ph_start)
        pe = np.asarray(self._ph_end)
        pw = np.asarray(self._ph_weight)
        preq = np.asarray(self._ph_req, dtype=np.int64)
        req_energy = np.zeros(len(self._pending))
        model_of_req = np.fromiter((p.model for p in self._pending), dtype=np.int64, count=len(self._pending))
        n_models = len(self.model_names)
        pass_model_energy = np.zeros(n_models)
        pass_measured = 0.0

        for (f, h), gids in groups.items():
            mask = (pe > f) & (ps < h)
            s = np.clip(ps[mask], f, h)
            e = np.clip(pe[mask], f, h)
            w = pw[mask]
            bounds = np.unique(np.concatenate(([f, h], s, e)))
            si = np.searchsorted(bounds, s)
            ei = np.searchsorted(bounds, e)
            k = len(bounds)
            running = (np.bincount(si, minlength=k) - np.bincount(ei, minlength=k)).cumsum()[:-1] > 0
            weight = (np.bincount(si, weights=w, minlength=k) - np.bincount(ei, weights=w, minlength=k)).cumsum()[:-1]
            energy = np.empty((len(gids), k - 1))
            for row, g in enumerate(gids):
                sampler = self.samplers[g]
                with sampler.lock:
                    energy[row] = np.diff(sampler.timeline.energy_at(bounds))
            safe_weight = np.where(running, weight, 1.0)
            ratio = np.where(running, energy.sum(axis=0) / safe_weight, 0.0)
            prefix = np.concatenate(([0.0], np.cumsum(ratio)))
            phase_energy = w * (prefix[ei] - prefix[si])
            np.add.at(req_energy, preq[mask], phase_energy)
            for row, g in enumerate(gids):
                idle = float(energy[row][~running].sum())
                total = float(energy[row].sum())
                self.gpus[g].idle_j += idle
                self.gpus[g].attributed_j += total - idle
                self.gpus[g].finalized_until = h
                pass_measured += total

        if groups:
            pass_model_energy += np.bincount(model_of_req, weights=req_energy, minlength=n_models)
            for i, p in enumerate(self._pending):
                if req_energy[i]:
                    p.energy_j += float(req_energy[i])
            for m in np.flatnonzero(pass_model_energy):
                self.models[m].energy_j += float(pass_model_energy[m])

        # Requests are complete once every healthy GPU has finalized past their end.
        healthy = [t.finalized_until for t, s in zip(self.gpus, self.samplers)
                   if s.healthy and t.finalized_until is not None]
        complete_until = min(healthy) if healthy else self._complete_until
        window_entry = None
        if complete_until > self._complete_until:
            window_entry = self._window_entry(self._complete_until, complete_until, ps, pe, preq, model_of_req,
                                              n_models)
            self._complete_until = complete_until
        for p in self._pending:
            if not p.done and p.run_end <= self._complete_until:
                p.done = True
                self._n_done += 1
                self._count_request(self.models[p.model], p.record, p.energy_j)
                if window_entry is not None and p.record.output_kind in ("image", "video"):
                    window_entry["diffusion"].append((p.model, p.record.output_kind, p.energy_j,
                                                      max(p.record.output_count, 1)))
        if window_entry is not None:
            window_entry["model_energy"] = pass_model_energy
            window_entry["measured"] = pass_measured
            self._window.append(window_entry)
        elif groups and self._window:  # energy finalized without completions: still in the window
            last = self._window[-1]
            last["model_energy"] = _add(last["model_energy"], pass_model_energy)
            last["measured"] += pass_measured
        self._expire(now)

    def _window_entry(self, a, b, ps, pe, preq, model_of_req, n_models) -> dict:
        """Output tokens generated in [a, b), spread evenly over each decode phase."""
        tokens = np.zeros(n_models)
        if len(ps) and np.isfinite(a):
            pt = np.asarray(self._ph_tokens)
            overlap = np.clip(np.minimum(pe, b) - np.maximum(ps, a), 0.0, None)
            share = np.divide(overlap, pe - ps, out=np.zeros_like(overlap), where=pe > ps) * pt
            tokens = np.bincount(model_of_req[preq], weights=share, minlength=n_models)
        return {"end": b, "start": a, "tokens": tokens, "diffusion": []}

    def _count_request(self, m: ModelTotals, r: RequestRecord, energy_j: float | None) -> None:
        m.requests += 1
        m.prompt_tokens += r.prompt_tokens
        m.completion_tokens += r.completion_tokens
        if r.output_kind == "image":
            m.images += max(r.output_count, 1)
        elif r.output_kind == "video":
            m.videos += max(r.output_count, 1)
        if energy_j is not None:
            m.bucket_counts[int(np.searchsorted(ENERGY_BUCKETS_J, energy_j))] += 1
            m.energy_observed_j += energy_j

    def _expire(self, now: float) -> None:
        """Drop finished requests every GPU has passed, old window entries and old span ids."""
        live = [t.finalized_until for t in self.gpus if t.finalized_until is not None
                and t.finalized_until > now - self.retention_s]
        floor = min(live) if live else now - self.retention_s
        droppable = sum(1 for p in self._pending if p.done and p.run_end <= floor)
        if droppable and droppable * 2 >= len(self._pending):
            keep = [i for i, p in enumerate(self._pending) if not (p.done and p.run_end <= floor)]
            remap = {old: new for new, old in enumerate(keep)}
            phases = [j for j, r in enumerate(self._ph_req) if r in remap]
            self._ph_start = [self._ph_start[j] for j in phases]
            self._ph_end = [self._ph_end[j] for j in phases]
            self._ph_weight = [self._ph_weight[j] for j in phases]
            self._ph_tokens = [self._ph_tokens[j] for j in phases]
            self._ph_req = [remap[self._ph_req[j]] for j in phases]
            self._pending = [self._pending[i] for i in keep]
            self._n_done = sum(1 for p in self._pending if p.done)
        while self._window and self._window[0]["end"] < self._complete_until - self.window_s:
            self._window.popleft()
        if len(self._seen_spans) > 2 * self.max_pending:
            cutoff = now - self.retention_s
            self._seen_spans = {k: t for k, t in self._seen_spans.items() if t > cutoff}

    # -- reading --------------------------------------------------------------------------
    def window(self) -> dict[str, WindowStats]:
        """Per-model aggregates over the last `window_s` seconds of completed time."""
        with self._lock:
            # whole passes (about a second each) that lie inside the window
            edge = self._complete_until - self.window_s - 1e-6
            entries = [e for e in self._window if e["start"] >= edge]
            if not entries:
                return {}
            n = len(self.model_names)
            energy, tokens, measured = np.zeros(n), np.zeros(n), 0.0
            seconds = entries[-1]["end"] - entries[0]["start"]
            for e in entries:
                energy = _add(energy, e["model_energy"])
                tokens = _add(tokens, e["tokens"])
                measured += e["measured"]
            out = {}
            for m, name in enumerate(self.model_names):
                out[name] = WindowStats(float(energy[m]), float(tokens[m]), measured, seconds)
            for e in entries:
                for m, kind, ej, count in e["diffusion"]:
                    ws = out[self.model_names[m]]
                    if kind == "image":
                        ws.image_energy_j += ej
                        ws.images += count
                    else:
                        ws.video_energy_j += ej
                        ws.videos += count
            return out

    def snapshot_models(self) -> list[tuple[str, ModelTotals]]:
        with self._lock:
            return [(name, _copy(m)) for name, m in zip(self.model_names, self.models)]


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) < len(b):
        a = np.concatenate((a, np.zeros(len(b) - len(a))))
    a = a.copy()
    a[:len(b)] += b
    return a


def _copy(m: ModelTotals) -> ModelTotals:
    return ModelTotals(m.energy_j, m.requests, m.prompt_tokens, m.completion_tokens, m.images, m.videos,
                       list(m.bucket_counts), m.energy_observed_j)
