"""The energy ledger: measured GPU energy split among the requests that ran, conserving every joule.

Attribution rule. Time is finalized per GPU up to its horizon, `min(settled_until, settlement
horizon)`: the latest moment every request that ran then is known, by the policy of
settlement.py (a fixed `settle_delay`, the engine's requests in flight, or a delay adapted to the
spans). Inside a finalized interval, each request occupies the GPU during its prefill and
decode phases (from the span: decode is the last `time_in_model_decode` seconds before the span's
end, prefill the `time_in_model_prefill` seconds before that; queueing and tokenization occupy no
GPU). A phase carries a weight equal to the tokens it processes per second: prompt tokens spread
evenly over prefill, output tokens over decode (at least one token per phase). At every moment
the GPU's energy is split among the running phases in proportion to their weights; energy spent
while no phase runs is idle energy. Spans without phase durations run from start (after any
queue time) to end with weight (prompt + output tokens) / duration; image and video requests with
weight (images or videos) / duration. Over any finalized interval, attributed plus idle energy
equals the timeline's measured energy.

Placement. By default every request runs on every GPU of the ledger (one server over the GPUs
of its pod). Given a placement (node mode: which GPUs each Kubernetes pod holds), a request whose
span names a placed pod runs only on that pod's GPUs, so a GPU shared by several pods is split
among their requests alone, and each GPU's energy stays with the pods that hold it. A request
whose pod is not placed (or that names none) runs on every GPU and is counted as unplaced.

Span times are on the sender's clock; a sender whose clock runs ahead of the exporter's is
detected and its spans moved onto the exporter's clock (clockskew.py).

Spans arrive after their request ends; a request whose time was partly finalized before its span
arrived is counted as late and gets energy only for its unfinalized time. Each request's lag, from
its end to its energy being final, is observed into the settlement's histogram.

Storage is column-wise (numpy), so that intake and each pass cost a few vector operations over
the pending requests rather than Python work per request.

Per-request results. Given `on_results`, the ledger reports each request span's outcome by its
identity key (`span_keys`): its energy once it completes (`"settled"`, or `"late_partial"` when
part of its time had been split before its span arrived), `"late"` with 0 J when all of it had,
and `"duplicate"` with 0 J for a copy of a span whose original is no longer pending (a copy of a
pending span is answered by the original's result, since both share the key). Span identities are
remembered for the timeline's retention, at most `SEEN_PER_PENDING` x `max_pending` of them: under
a flood, the oldest are forgotten first and memory stays bounded.

Running. `run(stop)` settles every `SETTLE_PERIOD_S` on the caller's thread until `stop` is set; a
pass that raises is logged and counted (`pass_errors`), and the next pass runs.

Consumers. `add_consumer(f)`: after each submit that took rows, `f(rows, batch)` is called with
the rows `submit` returns, on the submitting thread and outside the ledger's lock; it must not
modify them. A consumer that raises is logged and counted (`consumer_errors`); the rows stay
accepted and the other consumers are still called.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.clockskew import ClockSkew
from jouletrace.exporter.ledger.labels import LabelSlots
from jouletrace.exporter.ledger.records import IntakeFull, RequestBatch
from jouletrace.exporter.ledger.settlement import Figures, Settlement

SETTLE_PERIOD_S = 1.0  # how often `run` settles; a window's granularity

#: Request-energy histogram bucket upper bounds (J).
ENERGY_BUCKETS_J = np.array([0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
                             10000, 25000, 50000, 100000])
_IMAGE, _VIDEO = 1, 2
#: Phase kinds: prefill, decode, or a whole request without phase durations (generic spans, media).
PREFILL, DECODE, WHOLE = 0, 1, 2

#: Placement bit masks over the ledger's GPUs (bit g: GPU g); EVERY_GPU for unplaced requests.
MAX_GPUS = 64
EVERY_GPU = np.uint64(2**64 - 1)

#: Span identities remembered for duplicates, per request that may be pending.
SEEN_PER_PENDING = 2
#: Share of max_pending beyond which holds end at the export delay (settlement's `pressure`).
HOLD_PRESSURE = 0.8

#: on_results(keys (uint64), energy_j (float64), completion_tokens (int64), status)
ResultsCallback = Callable[[np.ndarray, np.ndarray, np.ndarray, str], None]
#: consumer(rows taken (REQUEST_DTYPE, exporter's clock), their batch)
Consumer = Callable[[np.ndarray, RequestBatch], None]

log = logging.getLogger(__name__)


def span_keys(rows: np.ndarray) -> np.ndarray:
    """Identity key of each request row (REQUEST_DTYPE): the first 8 bytes of the trace id XOR the
    span id, both read as little-endian uint64. 0 means no identity (never a duplicate)."""
    return (np.ascontiguousarray(rows["trace_id"]).view("<u8")[::2]
            ^ np.ascontiguousarray(rows["span_id"]).view("<u8"))


def span_key(trace_id: bytes, span_id: bytes) -> int:
    """`span_keys` of one span, from its ids as they appear on the wire (16 and 8 bytes)."""
    return (int.from_bytes(trace_id[:8].ljust(8, b"\0"), "little")
            ^ int.from_bytes(span_id[:8].ljust(8, b"\0"), "little"))


@dataclass(slots=True)
class ModelTotals:
    """Monotonic totals for one model label (a copy, read at scrape time)."""

    energy_j: float  # attributed, including requests still running at the horizon
    requests: int
    prompt_tokens: int
    completion_tokens: int
    images: int
    videos: int
    bucket_counts: list[int]  # per bucket of ENERGY_BUCKETS_J, then +Inf; not cumulative
    energy_observed_j: float  # sum of the histogram's observations
    prefill_energy_j: float = 0.0  # of energy_j, attributed to prefill phases
    decode_energy_j: float = 0.0  # of energy_j, attributed to decode phases


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
    measured_j: float  # all energy measured in the window (idle included) on the GPUs the model runs on
    seconds: float
    image_energy_j: float = 0.0
    images: int = 0
    video_energy_j: float = 0.0
    videos: int = 0
    gpus: int = 1  # GPUs the model runs on (those measured_j covers)

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


def batch_phases(rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """GPU phases of a batch's requests, by the rule above.

    Returns (start, end, weight in tokens/s, output tokens generated, row index, kind: PREFILL,
    DECODE or WHOLE), one entry per phase of positive length; each request has one or two phases.
    """
    s, e = rows["start"], rows["end"]
    kind, count = rows["output_kind"], rows["output_count"]
    prompt, completion = rows["prompt_tokens"], rows["completion_tokens"]
    media = kind != 0
    phased = ~media & ~(np.isnan(rows["prefill_s"]) & np.isnan(rows["decode_s"]))
    decode_start = np.maximum(s, e - np.nan_to_num(rows["decode_s"]))
    prefill_start = np.maximum(s, decode_start - np.nan_to_num(rows["prefill_s"]))
    run = np.minimum(e, s + np.nan_to_num(rows["queue_s"]))
    # the first phase: prefill, or the whole run for spans without phases
    a_start = np.where(phased, prefill_start, run)
    a_end = np.where(phased, decode_start, e)
    a_tokens = np.where(media, np.maximum(count, 1),
                        np.where(phased, np.maximum(prompt, 1), np.maximum(prompt + completion, 1)))
    a_gen = np.where(phased | media, 0, completion)
    # the second phase: decode
    b = np.flatnonzero(phased)
    idx = np.arange(len(rows))
    start = np.concatenate((a_start, decode_start[b]))
    end = np.concatenate((a_end, e[b]))
    tokens = np.concatenate((a_tokens, np.maximum(completion[b], 1))).astype(float)
    gen = np.concatenate((a_gen, completion[b])).astype(float)
    row = np.concatenate((idx, b))
    kind = np.concatenate((np.where(phased, PREFILL, WHOLE), np.full(len(b), DECODE))).astype(np.int8)
    keep = end > start
    start, end, tokens, gen, row, kind = start[keep], end[keep], tokens[keep], gen[keep], row[keep], kind[keep]
    order = np.lexsort((start, row))  # by request, then time
    return start[order], end[order], (tokens / (end - start))[order], gen[order], row[order], kind[order]


class _Table:
    """Growable numpy columns; `col(name)` is a view of the rows in use."""

    def __init__(self, **dtypes):
        self.n = 0
        self._cols = {name: np.zeros(1024, dtype) for name, dtype in dtypes.items()}

    def __len__(self) -> int:
        return self.n

    def col(self, name: str) -> np.ndarray:
        return self._cols[name][: self.n]

    def append(self, **values: np.ndarray) -> None:
        k = len(next(iter(values.values())))
        if self.n + k > len(next(iter(self._cols.values()))):
            size = max(2 * (self.n + k), 1024)
            for name, arr in self._cols.items():
                grown = np.zeros(size, arr.dtype)
                grown[: self.n] = arr[: self.n]
                self._cols[name] = grown
        for name, value in values.items():
            self._cols[name][self.n: self.n + k] = value
        self.n += k

    def keep(self, mask: np.ndarray) -> None:
        k = int(mask.sum())
        for name, arr in self._cols.items():
            arr[:k] = arr[: self.n][mask]
        self.n = k


class Ledger:
    """Accepts request batches, finalizes time, attributes energy and keeps the totals."""

    def __init__(
        self,
        samplers: Sequence[GPUSampler],
        *,
        settle_delay_s: float | None = 60.0,
        max_hold_s: float = 300.0,
        window_s: float = 60.0,
        max_pending: int = 100_000,
        max_models: int = 50,
        max_pods: int = 256,
        clock: Callable[[], float] = time.time,
        on_results: ResultsCallback | None = None,
    ):
        self.samplers = list(samplers)
        if len(self.samplers) > MAX_GPUS:
            raise ValueError(f"{len(self.samplers)} GPUs: a ledger splits the energy of {MAX_GPUS} at most")
        retention = min(s.timeline.retention_s for s in self.samplers) if self.samplers else float("inf")
        self.settlement = Settlement(settle_delay_s, max_hold_s)
        if self.settlement.max_hold_s >= retention:
            raise ValueError(f"settle delay or max hold {self.settlement.max_hold_s}s must be shorter than "
                             f"retention {retention}s")
        self.retention_s = retention
        self.window_s = window_s
        self.max_pending = max_pending
        self._clock = clock
        # Called with the lock held, so results arrive in the order the ledger decided them: it
        # must return at once and never call back into the ledger.
        self.on_results = on_results
        self._consumers: list[Consumer] = []
        self._lock = threading.Lock()
        self._models = LabelSlots(max_models)
        slots = max_models + 1  # `other` included
        self._m_energy = np.zeros(slots)
        self._m_counts = np.zeros((slots, 5), dtype=np.int64)  # requests, prompt, completion, images, videos
        self._m_hist = np.zeros((slots, len(ENERGY_BUCKETS_J) + 1), dtype=np.int64)
        self._m_observed = np.zeros(slots)
        self._m_phase_energy = np.zeros((slots, 3))  # by PREFILL, DECODE, WHOLE
        self._model_gpus = np.zeros(slots, dtype=np.uint64)  # GPUs each model's requests were placed on
        self._pods = LabelSlots(max_pods, reserved=("",))  # slot 0: no pod
        self._p_energy = np.zeros(max_pods + 2)
        self._placement: dict[str, np.uint64] = {}  # pod -> GPU mask; `name` alone too where unique
        self.gpus = [GPUTotals() for _ in self.samplers]
        self._req = _Table(model="i4", run_start="f8", run_end="f8", energy="f8", done="?", kind="i1",
                           count="i8", prompt="i8", completion="i8", key="u8", late="?", pod="i4", gpus="u8")
        self._ph = _Table(start="f8", end="f8", weight="f8", gen="f8", req="i8", kind="i1")
        self._n_done = 0
        self._complete_until = float("-inf")  # requests ending before this are complete
        self._window: collections.deque = collections.deque()
        self._seen: set[int] = set()  # span identities (trace id ^ span id, 64 bits), for duplicates
        self._seen_by_time: collections.deque = collections.deque()  # (latest end, keys) per batch
        # self-metrics
        self.spans_accepted = 0
        self.spans_late = 0  # part of the request's time was finalized before its span arrived
        self.spans_expired = 0  # all of it was: no energy, tokens still counted
        self.spans_duplicate = 0
        self.spans_unplaced = 0  # placement is set but names no GPU for the span's pod
        self.consumer_errors = 0
        self.pass_errors = 0
        self.skew = ClockSkew()
        self.passes = 0
        self.pass_seconds = 0.0

    # -- intake ---------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return self._models.names

    def set_placement(self, pods: dict[str, Sequence[int]]) -> None:
        """Which ledger GPUs (indices into `samplers`) each pod (`namespace/name`) holds, for
        requests accepted from now on; empty: every request runs on every GPU."""
        placement: dict[str, np.uint64] = {}
        names: dict[str, list[str]] = {}
        for pod, gpus in pods.items():
            mask = 0
            for g in gpus:
                if not 0 <= g < len(self.samplers):
                    raise ValueError(f"pod {pod}: no GPU {g} among {len(self.samplers)}")
                mask |= 1 << g
            if mask:
                placement[pod] = np.uint64(mask)
                names.setdefault(pod.rpartition("/")[2], []).append(pod)
        for name, full in names.items():  # spans without a namespace match a pod name unique on the node
            if len(full) == 1 and name not in placement:
                placement[name] = placement[full[0]]
        with self._lock:
            self._placement = placement

    def _placed(self, batch: RequestBatch, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pod slot, GPU mask) of each row, counting the unplaced ones."""
        slots = np.array([self._pods.slot(name) for name in batch.pods] + [0], dtype=np.int32)
        masks = [self._placement.get(name) for name in batch.pods] + [None]
        pod = rows["pod"]
        if self._placement:
            unplaced = np.array([m is None for m in masks])
            self.spans_unplaced += int(unplaced[pod].sum())
        gpus = np.array([EVERY_GPU if m is None else m for m in masks], dtype=np.uint64)
        return slots[pod], gpus[pod]  # pod -1 (none) indexes the sentinel at the end

    def add_consumer(self, consumer: Consumer) -> None:
        """Hand `consumer` the rows of every later submit (see the module docstring)."""
        self._consumers.append(consumer)

    @property
    def pending(self) -> int:
        return len(self._req) - self._n_done

    @property
    def full(self) -> bool:
        """Whether as many requests are pending as may be: the intake sheds messages undecoded."""
        return self.pending >= self.max_pending

    @property
    def folded_models(self) -> int:
        return self._models.folded

    def _finalized_floor(self) -> float:
        """The earliest time any GPU has finalized to (energy before it is already split)."""
        done = [g.finalized_until for g in self.gpus if g.finalized_until is not None]
        return min(done) if done else float("-inf")

    def _fresh(self, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Mask of rows whose span (`ids`: their span_keys) was not seen before (in this batch or
        within retention)."""
        keys = ids.tolist()
        distinct = set(keys)
        distinct.discard(0)  # no identity: never a duplicate
        if self._seen.isdisjoint(distinct) and len(distinct) == len(keys) - keys.count(0):
            fresh = np.ones(len(keys), bool)  # the usual case
        else:
            fresh = np.zeros(len(keys), bool)
            taken: set[int] = set()
            for i, k in enumerate(keys):
                if k == 0 or (k not in self._seen and k not in taken):
                    fresh[i] = True
                    taken.add(k)
            distinct = taken - {0}
        self._seen |= distinct
        self._seen_by_time.append((float(rows["end"].max()), distinct))
        while len(self._seen) > SEEN_PER_PENDING * self.max_pending and len(self._seen_by_time) > 1:
            self._seen.difference_update(self._seen_by_time.popleft()[1])
        return fresh

    def submit(self, batch: RequestBatch) -> np.ndarray:
        """Accept finished requests; raises IntakeFull (nothing accepted) when the ledger is full.

        Returns the rows taken (REQUEST_DTYPE, `model` indexing batch.models): duplicates left out,
        times on the exporter's clock."""
        if not len(batch):
            return batch.rows
        with self._lock:
            if self.pending + len(batch) > self.max_pending:
                raise IntakeFull(f"{self.pending} requests pending (limit {self.max_pending})")
            rows = batch.rows
            ids = span_keys(rows)
            fresh = self._fresh(rows, ids)
            if not fresh.all():
                self.spans_duplicate += int((~fresh).sum())
                if self.on_results is not None:
                    self._report_duplicates(rows, ids, fresh)
                rows, ids = rows[fresh], ids[fresh]
            self.spans_accepted += len(rows)
            models = np.array([self._models.slot(name) for name in batch.models], dtype=np.int32)[rows["model"]]
            rows = self.skew.correct(rows, models, self._clock())
            pods, gpus = self._placed(batch, rows)
            np.bitwise_or.at(self._model_gpus, models, gpus)
            p_start, p_end, p_weight, p_gen, p_row, p_kind = batch_phases(rows)
            run_start = np.minimum.reduceat(p_start, _firsts(p_row)) if len(p_row) else p_start
            run_end = np.maximum.reduceat(p_end, _firsts(p_row)) if len(p_row) else p_end
            ran = p_row[_firsts(p_row)] if len(p_row) else p_row
            starts, ends = rows["end"].copy(), rows["end"].copy()  # requests that never ran: their end
            starts[ran], ends[ran] = run_start, run_end
            floor = self._finalized_floor()
            expired = (ends <= floor) | (ends <= self._complete_until)
            late = (starts < floor) & ~expired
            self.spans_late += int(late.sum())
            if expired.any():
                self.spans_expired += int(expired.sum())
                self._count_requests(rows[expired], models[expired], None)
                if self.on_results is not None:
                    self.on_results(ids[expired], np.zeros(int(expired.sum())),
                                    rows["completion_tokens"][expired].astype(np.int64), "late")
            live = ~expired
            index = np.full(len(rows), -1, dtype=np.int64)
            index[live] = len(self._req) + np.arange(int(live.sum()))
            r = rows[live]
            self._req.append(model=models[live], run_start=starts[live], run_end=ends[live], energy=0.0, done=False,
                             kind=r["output_kind"], count=r["output_count"], prompt=r["prompt_tokens"],
                             completion=r["completion_tokens"], key=ids[live], late=late[live], pod=pods[live],
                             gpus=gpus[live])
            ph = live[p_row]
            self._ph.append(start=p_start[ph], end=p_end[ph], weight=p_weight[ph], gen=p_gen[ph], req=index[p_row[ph]],
                            kind=p_kind[ph])
        if len(rows):
            self._hand_on(rows, batch)
        return rows

    def _hand_on(self, rows: np.ndarray, batch: RequestBatch) -> None:
        for consumer in self._consumers:
            try:
                consumer(rows, batch)
            except Exception:  # a consumer's fault never undoes what the ledger took
                with self._lock:
                    self.consumer_errors += 1
                log.exception("ledger consumer %s failed on %d rows", getattr(consumer, "__qualname__", consumer),
                              len(rows))

    def _report_duplicates(self, rows: np.ndarray, ids: np.ndarray, fresh: np.ndarray) -> None:
        """Report "duplicate" for copies whose original is not pending (in this batch or the table);
        a pending original's own result, reported later, answers its copies too."""
        dup = ~fresh & (ids != 0)
        pending = np.concatenate((ids[fresh], self._req.col("key")[~self._req.col("done")]))
        orphan = dup.copy()
        orphan[dup] = ~np.isin(ids[dup], pending)
        if orphan.any():
            self.on_results(ids[orphan], np.zeros(int(orphan.sum())),
                            rows["completion_tokens"][orphan].astype(np.int64), "duplicate")

    # -- attribution ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Settle every SETTLE_PERIOD_S until `stop` is set; one failed pass never stops the next."""
        while not stop.wait(SETTLE_PERIOD_S):
            try:
                self.settle()
            except Exception:
                self.pass_errors += 1
                log.exception("attribution pass failed")

    def settle(self, final: bool = False) -> None:
        """Finalize every GPU up to its horizon and attribute the energy; call about once a second.
        `final` (at shutdown, once no span can arrive): up to the last counter reading, without
        waiting the settle delay."""
        t_pass = time.perf_counter()
        now = self._clock()
        with self._lock:
            self._settle(now, final)
        self.passes += 1
        self.pass_seconds += time.perf_counter() - t_pass

    @property
    def max_hold_s(self) -> float:
        """The longest a moment's energy may wait before it is split (s)."""
        return self.settlement.max_hold_s

    def watch_engines(self, urls: list[str]) -> None:
        """The engines whose scrapes settlement follows from now on (see Settlement.watch)."""
        self.settlement.watch(urls)

    def engine_sample(self, url: str, sent: float, answered: float, values: dict[str, dict[str, float]] | None) -> None:
        """One engine scrape (see Settlement.engine_sample); called by the engine scrape."""
        self.settlement.engine_sample(url, sent, answered, values)

    def _covering(self, model: str, moments: np.ndarray) -> np.ndarray | None:
        """How many of `model`'s spans run (GPU phases, start <= t < end) at each of `moments`; None
        if no span named the model."""
        m = self._models.index_of(model)
        if m is None:
            return None
        sel = (self._req.col("model") == m) & (self._req.col("run_end") > moments.min())
        starts = np.sort(self._req.col("run_start")[sel])
        ends = np.sort(self._req.col("run_end")[sel])
        return np.searchsorted(starts, moments, "right") - np.searchsorted(ends, moments, "right")

    def _horizons(self, now: float, final: bool) -> dict[tuple[float, float], list[int]]:
        """GPUs grouped by the interval [finalized, horizon) each can finalize now."""
        groups: dict[tuple[float, float], list[int]] = {}
        policy = self.settlement.horizon(now, self.skew, self._covering,
                                         pressure=self.pending >= HOLD_PRESSURE * self.max_pending)
        horizons: dict[int, float] = {}
        for g, sampler in enumerate(self.samplers):
            with sampler.lock:
                tl = sampler.timeline
                if not tl.started:
                    continue
                totals = self.gpus[g]
                if totals.finalized_until is None:
                    totals.finalized_until = tl.origin
                f = max(totals.finalized_until, tl.oldest)
                h = tl.settled_until if final else min(tl.settled_until, policy)
            horizons[g] = max(h, f)
            if h > f:
                groups.setdefault((f, h), []).append(g)
        self.settlement.note_holds(now, horizons)
        return groups

    def _settle(self, now: float, final: bool) -> None:
        groups = self._horizons(now, final)
        ps, pe, preq = self._ph.col("start"), self._ph.col("end"), self._ph.col("req")
        model = self._req.col("model")
        phase_slot = model[preq] * 3 + self._ph.col("kind")  # (model, phase kind) of each phase
        placed = self._req.col("gpus")[preq]
        n_req = len(self._req)
        req_energy = np.zeros(n_req)
        phase_energy = np.zeros(self._m_phase_energy.size)
        pass_measured = np.zeros(len(self.samplers))  # per GPU
        for (f, h), gids in groups.items():
            live = (pe > f) & (ps < h)
            for sharing, mask in _sharing(gids, live, placed):
                energy_of_phase, pass_measured[sharing] = self._split(f, h, mask, sharing)
                req_energy += np.bincount(preq[mask], weights=energy_of_phase, minlength=n_req)
                phase_energy += np.bincount(phase_slot[mask], weights=energy_of_phase, minlength=phase_energy.size)
        pass_model_energy = np.bincount(model, weights=req_energy, minlength=len(self._m_energy))
        if groups:
            self._req.col("energy")[:] += req_energy
            self._p_energy += np.bincount(self._req.col("pod"), weights=req_energy, minlength=len(self._p_energy))
            self._m_energy += pass_model_energy
            self._m_phase_energy += phase_energy.reshape(self._m_phase_energy.shape)

        # Requests are complete once every healthy GPU has finalized past their end.
        healthy = [t.finalized_until for t, s in zip(self.gpus, self.samplers)
                   if s.healthy and t.finalized_until is not None]
        complete_until = min(healthy) if healthy else self._complete_until
        if complete_until > self._complete_until:
            entry = self._window_entry(self._complete_until, complete_until)
            self._complete_until = complete_until
            done = self._req.col("done")
            newly = np.flatnonzero(~done & (self._req.col("run_end") <= complete_until))
            if len(newly):
                done[newly] = True
                self._n_done += len(newly)
                self.settlement.observe_lag(np.maximum(now - self._req.col("run_end")[newly], 0.0))
                self._complete(newly, entry)
                if self.on_results is not None:
                    self._report_completed(newly)
            entry["model_energy"] = pass_model_energy
            entry["measured"] = pass_measured
            self._window.append(entry)
        elif groups and self._window:  # energy finalized without new completions: still in the window
            last = self._window[-1]
            last["model_energy"] = last["model_energy"] + pass_model_energy
            last["measured"] += pass_measured
        self._expire(now)

    def _split(self, f: float, h: float, mask: np.ndarray, gids: list[int]) -> tuple[np.ndarray, float]:
        """Split the energy of GPUs `gids` over [f, h) among the phases `mask` selects and finalize
        them to h. Returns each selected phase's energy and each GPU's measured energy (J)."""
        ps, pe, pw = self._ph.col("start")[mask], self._ph.col("end")[mask], self._ph.col("weight")[mask]
        s, e = np.clip(ps, f, h), np.clip(pe, f, h)
        bounds = np.unique(np.concatenate(([f, h], s, e)))
        si, ei = np.searchsorted(bounds, s), np.searchsorted(bounds, e)
        k = len(bounds)
        running = (np.bincount(si, minlength=k) - np.bincount(ei, minlength=k)).cumsum()[:-1] > 0
        weight = (np.bincount(si, weights=pw, minlength=k) - np.bincount(ei, weights=pw, minlength=k)).cumsum()[:-1]
        energy = np.empty((len(gids), k - 1))
        for row, g in enumerate(gids):
            sampler = self.samplers[g]
            with sampler.lock:
                energy[row] = np.diff(sampler.timeline.energy_at(bounds))
        ratio = np.where(running, energy.sum(axis=0) / np.where(running, weight, 1.0), 0.0)
        prefix = np.concatenate(([0.0], np.cumsum(ratio)))
        for row, g in enumerate(gids):
            idle = float(energy[row][~running].sum())
            total = float(energy[row].sum())
            self.gpus[g].idle_j += idle
            self.gpus[g].attributed_j += total - idle
            self.gpus[g].finalized_until = h
        return pw * (prefix[ei] - prefix[si]), energy.sum(axis=1)

    def _report_completed(self, idx: np.ndarray) -> None:
        """Report the results of requests (rows `idx` of the request table) that just completed."""
        t = self._req
        keys, energy, completion = t.col("key")[idx], t.col("energy")[idx], t.col("completion")[idx]
        late = t.col("late")[idx]
        for status, sel in (("settled", ~late), ("late_partial", late)):
            if sel.any():
                self.on_results(keys[sel], energy[sel], completion[sel], status)

    def _window_entry(self, a: float, b: float) -> dict:
        """Output tokens generated in [a, b) per model, spread evenly over each decode phase."""
        slots = len(self._m_energy)
        tokens = np.zeros(slots)
        if len(self._ph) and np.isfinite(a):
            ps, pe = self._ph.col("start"), self._ph.col("end")
            overlap = np.clip(np.minimum(pe, b) - np.maximum(ps, a), 0.0, None)
            share = overlap / (pe - ps) * self._ph.col("gen")
            tokens = np.bincount(self._req.col("model")[self._ph.col("req")], weights=share, minlength=slots)
        zeros = np.zeros(slots)
        return {"start": a, "end": b, "tokens": tokens, "image_energy": zeros, "images": zeros,
                "video_energy": zeros.copy(), "videos": zeros.copy()}

    def _complete(self, idx: np.ndarray, entry: dict) -> None:
        """Count finished requests (rows `idx` of the request table) into the totals and window."""
        t = self._req
        model, energy = t.col("model")[idx], t.col("energy")[idx]
        kind, count = t.col("kind")[idx], np.maximum(t.col("count")[idx], 1)
        self._count_columns(model, t.col("prompt")[idx], t.col("completion")[idx], kind, count, energy)
        slots = len(self._m_energy)
        for k, e_key, n_key in ((_IMAGE, "image_energy", "images"), (_VIDEO, "video_energy", "videos")):
            sel = kind == k
            if sel.any():
                entry[e_key] = np.bincount(model[sel], weights=energy[sel], minlength=slots)
                entry[n_key] = np.bincount(model[sel], weights=count[sel], minlength=slots)

    def _count_requests(self, rows: np.ndarray, model: np.ndarray, energy: np.ndarray | None) -> None:
        self._count_columns(model, rows["prompt_tokens"], rows["completion_tokens"], rows["output_kind"],
                            np.maximum(rows["output_count"], 1), energy)

    def _count_columns(self, model, prompt, completion, kind, count, energy) -> None:
        slots = len(self._m_energy)
        counts = self._m_counts
        counts[:, 0] += np.bincount(model, minlength=slots)
        counts[:, 1] += np.bincount(model, weights=prompt, minlength=slots).astype(np.int64)
        counts[:, 2] += np.bincount(model, weights=completion, minlength=slots).astype(np.int64)
        counts[:, 3] += np.bincount(model, weights=np.where(kind == _IMAGE, count, 0), minlength=slots).astype(np.int64)
        counts[:, 4] += np.bincount(model, weights=np.where(kind == _VIDEO, count, 0), minlength=slots).astype(np.int64)
        if energy is not None:
            nb = self._m_hist.shape[1]
            bucket = np.searchsorted(ENERGY_BUCKETS_J, energy)
            self._m_hist += np.bincount(model * nb + bucket, minlength=slots * nb).reshape(slots, nb)
            self._m_observed += np.bincount(model, weights=energy, minlength=slots)

    def _expire(self, now: float) -> None:
        """Drop finished requests every GPU has passed, old window entries and old span ids."""
        live = [t.finalized_until for t in self.gpus if t.finalized_until is not None
                and t.finalized_until > now - self.retention_s]
        floor = min(live) if live else now - self.retention_s
        drop = self._req.col("done") & (self._req.col("run_end") <= floor)
        n_drop = int(drop.sum())
        if n_drop and n_drop * 2 >= len(self._req):
            keep = ~drop
            remap = np.cumsum(keep) - 1
            ph_keep = keep[self._ph.col("req")]
            self._ph.keep(ph_keep)
            self._ph.col("req")[:] = remap[self._ph.col("req")]
            self._req.keep(keep)
            self._n_done = int(self._req.col("done").sum())
        while self._window and self._window[0]["end"] < self._complete_until - self.window_s:
            self._window.popleft()
        cutoff = now - self.retention_s
        while self._seen_by_time and self._seen_by_time[0][0] < cutoff:
            self._seen.difference_update(self._seen_by_time.popleft()[1])

    # -- reading --------------------------------------------------------------------------
    def window(self) -> dict[str, WindowStats]:
        """Per-model aggregates over the last `window_s` seconds of completed time."""
        with self._lock:
            # whole passes (about a second each) that lie inside the window
            edge = self._complete_until - self.window_s - 1e-6
            entries = [e for e in self._window if e["start"] >= edge]
            if not entries:
                return {}
            seconds = entries[-1]["end"] - entries[0]["start"]
            total = {key: sum(e[key] for e in entries) for key in
                     ("model_energy", "tokens", "measured", "image_energy", "images", "video_energy", "videos")}
            on = (self._model_gpus[:, None] >> np.arange(len(self.samplers), dtype=np.uint64)) & np.uint64(1) == 1
            measured = on @ total["measured"]  # per model: the energy of the GPUs it runs on
            return {name: WindowStats(float(total["model_energy"][m]), float(total["tokens"][m]), float(measured[m]),
                                      seconds, float(total["image_energy"][m]), int(total["images"][m]),
                                      float(total["video_energy"][m]), int(total["videos"][m]), int(on[m].sum()))
                    for m, name in enumerate(self.model_names)}

    def pod_energy(self) -> list[tuple[str, float]]:
        """Energy attributed to each named pod's requests (J, monotonic), `other` for those past the cap."""
        with self._lock:
            return [(name, float(self._p_energy[i])) for i, name in enumerate(self._pods.names) if name]

    def model_energy(self) -> list[tuple[str, float]]:
        """Energy attributed to each model's requests (J, monotonic): what a Grid prices."""
        with self._lock:
            return [(name, float(self._m_energy[m])) for m, name in enumerate(self.model_names)]

    def settlement_figures(self) -> Figures:
        """Settlement's exported state, a copy (Settlement.figures)."""
        with self._lock:
            return self.settlement.figures()

    def clock_offsets(self) -> dict[str, float]:
        """Each model's senders' clock offset (s; negative: ahead of the exporter, corrected)."""
        with self._lock:
            return {self.model_names[m]: offset for m, offset in self.skew.offsets().items()}

    def completion_tokens(self, model: str) -> int:
        """Output tokens of finished requests seen in spans for `model` (0 if never seen)."""
        with self._lock:
            idx = self._models.index_of(model)
            return 0 if idx is None else int(self._m_counts[idx, 2])

    def snapshot_models(self) -> list[tuple[str, ModelTotals]]:
        with self._lock:
            out = []
            for m, name in enumerate(self.model_names):
                c = self._m_counts[m].tolist()
                out.append((name, ModelTotals(float(self._m_energy[m]), *c, self._m_hist[m].tolist(),
                                              float(self._m_observed[m]), float(self._m_phase_energy[m, PREFILL]),
                                              float(self._m_phase_energy[m, DECODE]))))
            return out


def _sharing(gids: list[int], live: np.ndarray, placed: np.ndarray):
    """Split GPUs `gids` into sets that run the same phases: yields (GPUs, mask of the `live`
    phases whose placement mask (`placed`) includes them)."""
    masks = np.unique(placed[live])
    if not len(masks) or (len(masks) == 1 and masks[0] == EVERY_GPU):
        yield gids, live  # the usual case: every phase runs on every GPU
        return
    sets: dict[bytes, list[int]] = {}
    for g in gids:
        sets.setdefault(((masks >> np.uint64(g)) & np.uint64(1)).tobytes(), []).append(g)
    for sharing in sets.values():
        yield sharing, live & (((placed >> np.uint64(sharing[0])) & np.uint64(1)) == 1)


def _firsts(sorted_groups: np.ndarray) -> np.ndarray:
    """Indices where a new value starts in a sorted array."""
    return np.flatnonzero(np.concatenate(([True], sorted_groups[1:] != sorted_groups[:-1])))
