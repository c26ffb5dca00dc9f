"""Diagnosis: where the joules go and what to change, from a short history of the latent factors.

The ML.ENERGY study's framework: knobs (GPU, model, quantization, max_num_seqs, power limit, the
latency deadline) act through latent factors (memory available for the KV cache, batch size,
non-GPU bottlenecks, GPU utilization) on energy per token and throughput per watt. Static power
paid while the GPU is under-used is the main waste; the batch size moves along the time-energy
frontier; memory capacity bounds the batch; the latency deadline picks the point.

`History` records the factors about once a second into a bounded ring: per GPU the power, limit,
utilization, SM occupancy, the `sw_power_cap` clocks-event reason, and the measured, attributed
and idle energy; per engine and model the running and waiting requests and the KV-cache usage; per
model (from spans) the attributed energy, output tokens and prefill and decode energy. `diagnose`
turns the snapshots of a window into factors and ranked findings. A rule whose inputs are absent
gives no finding: the input is listed as missing instead.

Rules (thresholds below):
- batch limited by load: mean running batch < BATCH_FILL_LOW x max_num_seqs, mean waiting <
  QUEUE_EMPTY and mean KV-cache usage < KV_LOW; high below BATCH_FILL_VERY_LOW.
- batch capped by max_num_seqs: mean running batch >= BATCH_FULL x max_num_seqs, mean waiting >=
  QUEUE_BUILT and mean KV-cache usage < KV_FULL.
- memory bound: mean KV-cache usage >= KV_FULL and mean waiting >= QUEUE_BUILT; high when as many
  requests wait as run.
- non-GPU bottleneck: mean waiting >= QUEUE_BUILT while the GPUs' mean utilization < UTIL_LOW and
  the KV cache is not full; high below UTIL_VERY_LOW.
- running at the power cap: `sw_power_cap` active in >= CAP_SHARE of the samples, or mean power >=
  POWER_AT_LIMIT x the enforced limit; low severity, since the cap may be the chosen point.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from aiohttp import web

from jouletrace.exporter.engine import UP, EngineState
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import Ledger

log = logging.getLogger(__name__)

PERIOD_S = 1.0  # one snapshot a second
HOLD_S = 600.0  # snapshots held: the longest window

BATCH_FILL_LOW = 0.5
BATCH_FILL_VERY_LOW = 0.25
BATCH_FULL = 0.9
QUEUE_EMPTY = 0.5  # requests
KV_LOW = 0.5
KV_FULL = 0.85
QUEUE_BUILT = 1.0  # requests
UTIL_LOW = 0.5
UTIL_VERY_LOW = 0.25
CAP_SHARE = 0.5
POWER_AT_LIMIT = 0.95

SEVERITIES = ("high", "medium", "low")
RULES = ("batch_limited_by_load", "batch_capped", "memory_bound", "non_gpu_bottleneck", "power_cap")  # ties: this order


# -- snapshots --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GPUPoint:
    """One GPU at one snapshot; None where the device does not report the value."""

    up: bool
    power_w: float | None
    power_limit_w: float | None
    utilization: float | None  # 0-1
    sm_occupancy: float | None  # 0-1
    power_capped: bool | None  # the sw_power_cap clocks-event reason; None: reasons not reported
    energy_j: float  # measured since the exporter started, J
    settled_until: float  # time up to which energy_j is measured, Unix s
    attributed_j: float  # finalized energy attributed to requests, J
    idle_j: float  # finalized energy spent while no request ran, J


@dataclass(frozen=True, slots=True)
class EnginePoint:
    """One model of one engine as its last successful scrape found it."""

    running: float  # requests in the running batch
    waiting: float  # requests queued
    kv_usage: float | None  # KV-cache usage, 0-1


@dataclass(frozen=True, slots=True)
class ModelPoint:
    """A model's cumulative totals from spans."""

    energy_j: float  # attributed, J
    output_tokens: float  # of finished requests
    prefill_j: float  # of energy_j, in prefill phases
    decode_j: float  # of energy_j, in decode phases


@dataclass(frozen=True, slots=True)
class Snapshot:
    time: float  # Unix s
    gpus: dict[str, GPUPoint]  # by GPU index
    engines: dict[tuple[str, str], EnginePoint]  # by (engine URL, model); engines that answered only
    models: dict[str, ModelPoint]


# -- factors ----------------------------------------------------------------------------------
@dataclass(slots=True)
class GPUFactors:
    gpu: str
    samples: int
    power_w: float | None  # mean of the power samples, W
    power_limit_w: float | None  # mean enforced limit, W
    idle_power_w: float  # W
    idle_power_source: str  # "given", or "lowest seen" (in all the history held)
    utilization: float | None  # mean, 0-1
    sm_occupancy: float | None  # mean, 0-1
    power_cap_share: float | None  # share of samples with sw_power_cap active
    energy_j: float | None  # measured over the window's settled span, J
    static_power_share: float | None  # idle power x that span / energy_j
    idle_energy_share: float | None  # finalized energy spent while no request ran / all finalized


@dataclass(slots=True)
class EngineFactors:
    engine: str
    model: str
    samples: int
    running: float  # mean running batch, requests
    running_max: float  # requests
    max_num_seqs: float  # requests
    max_num_seqs_source: str  # "given", or "observed maximum" (running_max)
    batch_fill: float  # running / max_num_seqs (0 when no request ran)
    waiting: float  # mean, requests
    kv_usage: float | None  # mean, 0-1
    kv_usage_max: float | None  # 0-1


@dataclass(slots=True)
class ModelFactors:
    model: str
    energy_j: float  # attributed in the window, J
    output_tokens: float  # of requests finished in the window
    energy_per_output_token_j: float | None
    prefill_share: float | None  # of energy_j
    decode_share: float | None  # of energy_j


@dataclass(slots=True)
class Finding:
    id: str
    severity: str
    title: str
    evidence: dict[str, dict]  # name -> {"value", "unit"[, "threshold": the rule it met]}
    effect: str
    action: str


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def gpu_factors(gpu: str, window: Sequence[Snapshot], held: Sequence[Snapshot],
                idle_power_w: float | None) -> GPUFactors | None:
    """GPU `gpu` over `window` (None if it never answered); the lowest power seen in `held` stands in
    for an idle power not given."""
    points = [s.gpus[gpu] for s in window if gpu in s.gpus and s.gpus[gpu].up]
    if not points:
        return None
    if idle_power_w is None:
        seen = [p.power_w for s in held if (p := s.gpus.get(gpu)) and p.up and p.power_w is not None]
        idle_power_w, source = min(seen, default=0.0), "lowest seen"
    else:
        source = "given"
    first, last = points[0], points[-1]
    settled_s = last.settled_until - first.settled_until
    energy = last.energy_j - first.energy_j if settled_s > 0 else None
    finalized = last.attributed_j + last.idle_j - first.attributed_j - first.idle_j
    capped = [p.power_capped for p in points if p.power_capped is not None]
    return GPUFactors(
        gpu=gpu, samples=len(points), power_w=_mean(p.power_w for p in points),
        power_limit_w=_mean(p.power_limit_w for p in points), idle_power_w=idle_power_w, idle_power_source=source,
        utilization=_mean(p.utilization for p in points), sm_occupancy=_mean(p.sm_occupancy for p in points),
        power_cap_share=sum(capped) / len(capped) if capped else None, energy_j=energy,
        static_power_share=min(1.0, idle_power_w * settled_s / energy) if energy else None,
        idle_energy_share=(last.idle_j - first.idle_j) / finalized if finalized > 0 else None)


def engine_factors(key: tuple[str, str], window: Sequence[Snapshot], max_num_seqs: int | None) -> EngineFactors | None:
    """One (engine URL, model) over `window`; the largest running batch seen stands in for a
    max_num_seqs not given."""
    points = [s.engines[key] for s in window if key in s.engines]
    if not points:
        return None
    running = _mean(p.running for p in points)
    running_max = max(p.running for p in points)
    cap, source = (float(max_num_seqs), "given") if max_num_seqs else (running_max, "observed maximum")
    kv = [p.kv_usage for p in points if p.kv_usage is not None]
    return EngineFactors(engine=key[0], model=key[1], samples=len(points), running=running, running_max=running_max,
                         max_num_seqs=cap, max_num_seqs_source=source, batch_fill=running / cap if cap > 0 else 0.0,
                         waiting=_mean(p.waiting for p in points), kv_usage=_mean(kv),
                         kv_usage_max=max(kv, default=None))


def model_factors(model: str, window: Sequence[Snapshot]) -> ModelFactors | None:
    """One model's span totals over `window`; None when none of its energy or tokens fall in it."""
    points = [s.models[model] for s in window if model in s.models]
    if len(points) < 2:
        return None
    first, last = points[0], points[-1]
    energy, tokens = last.energy_j - first.energy_j, last.output_tokens - first.output_tokens
    if energy <= 0 and tokens <= 0:
        return None
    prefill, decode = last.prefill_j - first.prefill_j, last.decode_j - first.decode_j
    phased = energy > 0 and prefill + decode > 0
    return ModelFactors(model=model, energy_j=energy, output_tokens=tokens,
                        energy_per_output_token_j=energy / tokens if tokens > 0 else None,
                        prefill_share=prefill / energy if phased else None,
                        decode_share=decode / energy if phased else None)


# -- findings ---------------------------------------------------------------------------------
def _ev(value: float, unit: str, threshold: str | None = None) -> dict:
    item = {"value": round(value, 4), "unit": unit}
    if threshold is not None:
        item["threshold"] = threshold
    return item


def _gpu_context(gpus: Sequence[GPUFactors]) -> dict:
    """Mean power, static-power share and idle-energy share over all GPUs, as evidence."""
    out = {}
    power = _mean(g.power_w for g in gpus)
    if power is not None:
        out["gpu_power_mean"] = _ev(power, "W")
    measured = [g for g in gpus if g.energy_j and g.static_power_share is not None]
    if measured:
        static = sum(g.static_power_share * g.energy_j for g in measured) / sum(g.energy_j for g in measured)
        out["static_power_share"] = _ev(static, "ratio")
    idle = [g.idle_energy_share for g in gpus if g.idle_energy_share is not None]
    if idle:
        out["idle_energy_share"] = _ev(sum(idle) / len(idle), "ratio")
    return out


def _batch(e: EngineFactors) -> dict:
    cap = "max_num_seqs" if e.max_num_seqs_source == "given" else "running_batch_max"
    return {"running_batch_mean": _ev(e.running, "requests"), cap: _ev(e.max_num_seqs, "requests")}


def batch_limited_by_load(e: EngineFactors, gpus: Sequence[GPUFactors],
                          models: Mapping[str, ModelFactors]) -> Finding | None:
    if e.kv_usage is None or not (e.batch_fill < BATCH_FILL_LOW and e.waiting < QUEUE_EMPTY and e.kv_usage < KV_LOW):
        return None
    evidence = {**_batch(e), "batch_fill": _ev(e.batch_fill, "ratio", f"< {BATCH_FILL_LOW}"),
                "waiting_mean": _ev(e.waiting, "requests", f"< {QUEUE_EMPTY}"),
                "kv_cache_usage_mean": _ev(e.kv_usage, "ratio", f"< {KV_LOW}"), **_gpu_context(gpus)}
    m = models.get(e.model)
    if m is not None and m.energy_per_output_token_j is not None:
        evidence["energy_per_output_token"] = _ev(m.energy_per_output_token_j, "J/token")
    return Finding(
        "batch_limited_by_load", "high" if e.batch_fill < BATCH_FILL_VERY_LOW else "medium",
        f"Batch limited by load: {e.model}", evidence,
        effect=f"The running batch averages {e.running:.1f} requests, {e.batch_fill:.0%} of "
               f"{'max_num_seqs' if e.max_num_seqs_source == 'given' else 'the largest seen'}, with nothing queued: "
               "every request that arrives is already running. The GPU's power hardly depends on the batch (decode "
               "reads all the weights each step, whatever the batch, and idle and clock power are paid anyway), so "
               "energy per token is dominated by power that a fuller batch would share: it falls nearly in "
               "proportion to the batch until the GPU becomes compute-bound, at a slightly higher inter-token latency.",
        action="Give each replica more load: route the traffic to fewer replicas (scale in) until the running batch "
               "nears max_num_seqs within the latency deadline; queue work that can wait and send it in bursts. "
               "If the load cannot grow, serve it from a smaller GPU share (fewer tensor-parallel GPUs, a MIG "
               "slice, a smaller GPU), which pays less static power.")


def batch_capped(e: EngineFactors) -> Finding | None:
    if e.kv_usage is None or not (e.batch_fill >= BATCH_FULL and e.waiting >= QUEUE_BUILT and e.kv_usage < KV_FULL):
        return None
    evidence = {**_batch(e), "batch_fill": _ev(e.batch_fill, "ratio", f">= {BATCH_FULL}"),
                "waiting_mean": _ev(e.waiting, "requests", f">= {QUEUE_BUILT:g}"),
                "kv_cache_usage_mean": _ev(e.kv_usage, "ratio", f"< {KV_FULL}")}
    return Finding(
        "batch_capped", "medium", f"Batch capped by max_num_seqs: {e.model}", evidence,
        effect="Requests wait while the KV cache has room: max_num_seqs, not memory or the load, caps the batch. "
               "A larger batch would raise throughput at little more power, so energy per token would fall, while "
               "each step takes longer (a higher inter-token latency): a move along the time-energy frontier.",
        action="Raise max_num_seqs as far as the inter-token latency deadline allows (the KV cache has room for "
               "it); `jouletrace loadgen sweep --batch-sizes` measures the frontier and `jouletrace simulate plan "
               "--itl-deadline-ms D` estimates it.")


def memory_bound(e: EngineFactors) -> Finding | None:
    if e.kv_usage is None or not (e.kv_usage >= KV_FULL and e.waiting >= QUEUE_BUILT):
        return None
    evidence = {"kv_cache_usage_mean": _ev(e.kv_usage, "ratio", f">= {KV_FULL}"),
                "waiting_mean": _ev(e.waiting, "requests", f">= {QUEUE_BUILT:g}"), **_batch(e),
                "batch_fill": _ev(e.batch_fill, "ratio")}
    return Finding(
        "memory_bound", "high" if e.waiting >= e.running else "medium", f"Memory bound: {e.model}", evidence,
        effect="The KV cache, not max_num_seqs or the load, bounds the batch: requests queue (time to first token "
               "grows) and the engine preempts and recomputes sequences, so the GPU runs a smaller batch, at a "
               "higher energy per token, than max_num_seqs would allow.",
        action="Give the KV cache more memory: raise --gpu-memory-utilization, quantize the weights or the KV cache "
               "(FP8 halves the KV cache), lower --max-model-len, or spread the model over more GPUs (tensor "
               "parallelism) or onto a GPU with more memory. Failing that, lower max_num_seqs to what fits, which "
               "stops the preemptions.")


def non_gpu_bottleneck(e: EngineFactors, gpus: Sequence[GPUFactors]) -> Finding | None:
    util = _mean(g.utilization for g in gpus)
    if util is None or e.kv_usage is None or not (e.waiting >= QUEUE_BUILT and util < UTIL_LOW
                                                  and e.kv_usage < KV_FULL):
        return None
    evidence = {"waiting_mean": _ev(e.waiting, "requests", f">= {QUEUE_BUILT:g}"),
                "gpu_utilization_mean": _ev(util, "ratio", f"< {UTIL_LOW}"),
                "kv_cache_usage_mean": _ev(e.kv_usage, "ratio", f"< {KV_FULL}"), **_batch(e)}
    occupancy = _mean(g.sm_occupancy for g in gpus)
    if occupancy is not None:
        evidence["sm_occupancy_mean"] = _ev(occupancy, "ratio")
    evidence.update(_gpu_context(gpus))
    return Finding(
        "non_gpu_bottleneck", "high" if util < UTIL_VERY_LOW else "medium", f"Non-GPU bottleneck: {e.model}",
        evidence,
        effect="Requests queue while the GPU runs kernels only part of the time and the KV cache has room: the host "
               "(scheduling, tokenization, input preprocessing, the network) sets the pace. The GPU's static power is "
               "paid through the gaps, so both energy per token and latency are worse than the GPU allows.",
        action="Look off the GPU: CPU saturation of the server process (give it more cores, move other processes "
               "away), tokenization and detokenization, image or video preprocessing, the network or load balancer "
               "in front. Engine options that overlap scheduling with the GPU step shorten the gaps.")


def power_cap(g: GPUFactors) -> Finding | None:
    at_limit = g.power_w is not None and g.power_limit_w and g.power_w >= POWER_AT_LIMIT * g.power_limit_w
    capped = g.power_cap_share is not None and g.power_cap_share >= CAP_SHARE
    if not (at_limit or capped):
        return None
    evidence = {}
    if g.power_cap_share is not None:
        evidence["sw_power_cap_share"] = _ev(g.power_cap_share, "ratio", f">= {CAP_SHARE}")
    if g.power_w is not None and g.power_limit_w:
        evidence["power_mean"] = _ev(g.power_w, "W")
        evidence["power_limit"] = _ev(g.power_limit_w, "W")
        evidence["power_to_limit"] = _ev(g.power_w / g.power_limit_w, "ratio", f">= {POWER_AT_LIMIT}")
    return Finding(
        "power_cap", "low", f"Running at the power cap: GPU {g.gpu}", evidence,
        effect="The power limit holds the SM clock down. Memory-bound steps (decode at moderate batches) lose "
               "little speed, so there the cap saves energy per token; compute-bound steps (prefill, large batches) "
               "stretch by up to the clock's reduction, so throughput falls and latency rises.",
        action="Compare latency with the deadline: within it, the cap is a power budget that costs little, so keep "
               "it; beyond it, raise the limit (nvidia-smi -pl) or spread the load over more GPUs. `jouletrace "
               "simulate plan --itl-deadline-ms D` shows the batch size x power limit frontier.")


def findings(gpus: Sequence[GPUFactors], engines: Sequence[EngineFactors],
             models: Sequence[ModelFactors]) -> list[Finding]:
    """Every rule over the factors, ranked: by severity, then in RULES order."""
    by_model = {m.model: m for m in models}
    found = [power_cap(g) for g in gpus]
    for e in engines:
        found += [batch_limited_by_load(e, gpus, by_model), batch_capped(e), memory_bound(e),
                  non_gpu_bottleneck(e, gpus)]
    return sorted((f for f in found if f is not None),
                  key=lambda f: (SEVERITIES.index(f.severity), RULES.index(f.id)))


# -- the diagnosis ----------------------------------------------------------------------------
def _missing_gpu(g: GPUFactors) -> list[str]:
    out = []
    for value, what in ((g.utilization, "utilization (the non-GPU bottleneck finding needs it)"),
                        (g.sm_occupancy, "SM occupancy (GPM: Hopper and newer)"),
                        (g.power_limit_w, "the enforced power limit"),
                        (g.power_cap_share, "clocks-event reasons (the power-cap finding uses power vs limit)"),
                        (g.energy_j, "a settled energy reading in the window (the static-power share needs it)")):
        if value is None:
            out.append(f"GPU {g.gpu}: no {what}")
    if g.idle_power_source != "given":
        out.append(f"GPU {g.gpu}: idle power not given (idle_power, --idle-power); the static-power share uses "
                   f"the lowest power seen, {g.idle_power_w:.0f} W, which overstates it when the GPU never idled")
    return out


def diagnose(snapshots: Sequence[Snapshot], engine_urls: Sequence[str], window_s: float = 60.0,
             max_num_seqs: int | None = None, idle_power_w: float | None = None) -> dict:
    """The factors over the last `window_s` seconds of `snapshots` (bounded by what they hold), the
    ranked findings and what is missing: `{window_s, factors: {gpus, engines, models}, findings, missing}`."""
    end = snapshots[-1].time if snapshots else 0.0
    window = [s for s in snapshots if s.time >= end - window_s]
    if len(window) < 2:
        return {"window_s": 0.0, "factors": {"gpus": [], "engines": [], "models": []}, "findings": [],
                "missing": [f"history: {len(window)} snapshot(s) in the window; a diagnosis needs two, "
                            f"{PERIOD_S:g} s apart"]}
    missing = []
    gpus = []
    for gpu in dict.fromkeys(k for s in window for k in s.gpus):
        g = gpu_factors(gpu, window, snapshots, idle_power_w)
        if g is None:
            missing.append(f"GPU {gpu}: no reading in the window")
        else:
            gpus.append(g)
            missing += _missing_gpu(g)
    engines = [e for key in dict.fromkeys(k for s in window for k in s.engines)
               if (e := engine_factors(key, window, max_num_seqs)) is not None]
    if not engine_urls:
        missing.append("engine metrics: no --engine-metrics URL is configured; the batch, memory and non-GPU "
                       "findings need vLLM's /metrics")
    missing += [f"engine metrics: {url} answered no scrape in the window"
                for url in engine_urls if not any(e.engine == url for e in engines)]
    missing += [f"{e.model} at {e.engine}: no KV-cache usage in the scrapes" for e in engines if e.kv_usage is None]
    if engines and not max_num_seqs:
        missing.append("max_num_seqs: not given (max_num_seqs, --max-num-seqs); the batch fill is against the "
                       "largest running batch seen in the window")
    models = [m for name in dict.fromkeys(k for s in window for k in s.models)
              if (m := model_factors(name, window)) is not None]
    if not models:
        missing.append("spans: no request energy attributed in the window (no spans arrived, or none are settled "
                       "yet: attribution waits --settle-delay); J/token and prefill/decode shares need them")
    missing += [f"{m.model}: spans without prefill/decode durations (no phase shares)"
                for m in models if m.energy_j > 0 and m.prefill_share is None]
    return {"window_s": round(window[-1].time - window[0].time, 3),
            "factors": {"gpus": [_rounded(g) for g in gpus], "engines": [_rounded(e) for e in engines],
                        "models": [_rounded(m) for m in models]},
            "findings": [dataclasses.asdict(f) for f in findings(gpus, engines, models)],
            "missing": missing}


def _rounded(factors) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(factors).items()}


# -- recording --------------------------------------------------------------------------------
def _gpu_point(sampler: GPUSampler, ledger: Ledger, i: int) -> GPUPoint:
    with sampler.lock:
        st, power = sampler.status, sampler.power_w
        energy, settled = sampler.timeline.total_j, sampler.timeline.settled_until
    totals = ledger.gpus[i]
    return GPUPoint(up=sampler.healthy, power_w=power, power_limit_w=st.power_limit_w, utilization=st.utilization,
                    sm_occupancy=st.sm_occupancy, power_capped=st.clocks_event_reasons.get("sw_power_cap"),
                    energy_j=energy, settled_until=settled, attributed_j=totals.attributed_j, idle_j=totals.idle_j)


class History:
    """The factors, one snapshot every `period_s` for the last `hold_s` seconds. `engines()` gives
    the engine scrapes' current states (the list changes when the configuration is reloaded)."""

    def __init__(self, samplers: Sequence[GPUSampler], ledger: Ledger, engines: Callable[[], list[EngineState]],
                 *, period_s: float = PERIOD_S, hold_s: float = HOLD_S, clock: Callable[[], float] = time.time):
        self.samplers, self.ledger, self.engines = list(samplers), ledger, engines
        self.period_s = period_s
        self._clock = clock
        self._ring: collections.deque[Snapshot] = collections.deque(maxlen=math.ceil(hold_s / period_s) + 1)
        self._lock = threading.Lock()

    def record(self) -> None:
        """Take one snapshot."""
        gpus = {s.gpu_label: _gpu_point(s, self.ledger, i) for i, s in enumerate(self.samplers)}
        engines = {(st.url, model): EnginePoint(v.get("requests_running", 0.0), v.get("requests_waiting", 0.0),
                                                v.get("kv_cache_usage_ratio"))
                   for st in self.engines() if st.state == UP for model, v in st.values.items()}
        models = {name: ModelPoint(m.energy_j, m.completion_tokens, m.prefill_energy_j, m.decode_energy_j)
                  for name, m in self.ledger.snapshot_models()}
        snap = Snapshot(self._clock(), gpus, engines, models)
        with self._lock:
            self._ring.append(snap)

    def snapshots(self) -> list[Snapshot]:
        with self._lock:
            return list(self._ring)

    def diagnose(self, window_s: float = 60.0, max_num_seqs: int | None = None,
                 idle_power_w: float | None = None) -> dict:
        return diagnose(self.snapshots(), [st.url for st in self.engines()], window_s, max_num_seqs, idle_power_w)

    def run(self, stop: threading.Event) -> None:
        """Record every `period_s` until `stop` is set."""
        while not stop.wait(self.period_s):
            try:
                self.record()
            except Exception:  # a failed snapshot must not stop the history
                log.exception("diagnosis snapshot failed")


# -- GET /diagnose ----------------------------------------------------------------------------
def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        value = kind(text)
        if not (math.isfinite(value) and value > 0):
            raise ValueError
        return value
    return parse


#: query parameter -> (parser, keyword of History.diagnose, what it is)
PARAMS = {"window": (_positive(float), "window_s", "seconds > 0"),
          "max_num_seqs": (_positive(int), "max_num_seqs", "an integer >= 1"),
          "idle_power": (_positive(float), "idle_power_w", "watts > 0")}


def parse_query(query: Mapping[str, str]) -> dict:
    """History.diagnose's keywords from the query; ValueError with a one-line reason."""
    out = {}
    for name, text in query.items():
        if name not in PARAMS:
            raise ValueError(f"unknown parameter {name!r}: give {', '.join(PARAMS)}")
        parse, keyword, what = PARAMS[name]
        try:
            out[keyword] = parse(text)
        except ValueError:
            raise ValueError(f"{name} must be {what}, got {text!r}") from None
    return out


def handler(history: History):
    """The aiohttp handler for GET /diagnose?window=S&max_num_seqs=N&idle_power=W."""
    async def diagnose_route(request: web.Request) -> web.Response:
        try:
            options = parse_query(request.query)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(history.diagnose(**options))
    return diagnose_route
