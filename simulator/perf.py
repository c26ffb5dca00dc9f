"""How long one engine step takes on a GPU and what it draws: a roofline with a power model.

Time. A step processes `tokens` (decode tokens and prefill chunks) through the model. The matrix
products read every weight once and do 2 FLOPs per parameter per token; attention reads each
sequence's KV cache and does 4 FLOPs per head dimension per (query, context) pair. Each part
takes the longer of its compute time and its memory time (a roofline per kernel family) plus the
share `overlap_loss` of the shorter that the kernels fail to hide behind the longer:

    t = host + layers x latency + sequences x per_sequence + R(F_lin / C, B_w / M) + R(F_attn / C, B_kv / M) + t_comm
    R(a, b) = max(a, b) + overlap_loss x min(a, b)
    C = peak FLOP/s x compute_efficiency x f          M = HBM bytes/s x memory_efficiency x min(1, f / knee)

f is the SM clock as a fraction of its maximum. All figures are per GPU. `latency` is a fixed
time per layer outside the kernels' compute and memory time (launch and tail latencies of the
layer's kernels); `per_sequence` the time each sequence in the
step adds whatever the model's size (sampling over the vocabulary, the host's work per request);
`host` is extra host time per step (0 unless a slow host is modelled).

Tensor parallelism (degree N, Megatron-style as vLLM shards a Llama): each GPU holds 1/N of the
weights, query heads and MLP width, so FLOPs and weight bytes divide by N; it holds
max(1, kv_heads / N) KV heads (replicated when N exceeds them), which sets its KV bytes. The
residual stream is whole on every GPU and is summed across them after each layer's attention and
MLP and after the vocabulary-parallel embedding: 2 x layers + 1 all-reduces per step, each of
tokens x hidden x dtype bytes (S). One all-reduce takes

    t_ar(S) = latency + 2 (N - 1) / N x S / busbw(S)

where busbw(S), the all-reduce's bus bandwidth, runs geometrically from the profile's figure at
1 MiB (vLLM's custom all-reduce, latency-bound) to ALLREDUCE_LARGE_EFFICIENCY of NVLink's
bandwidth at 1 GiB and beyond (NCCL's ring at full speed). vLLM runs these all-reduces on the
compute stream between the layer's kernels, so they do not overlap computation: t_comm is
(2 x layers + 1) x t_ar(S) added to the step. While it communicates a GPU's tensor cores and HBM
are nearly idle: it draws idle and clock power only (below).

Power. A busy GPU draws idle power, clock power that grows as f^3 (dynamic power ~ V^2 f with
voltage roughly proportional to frequency), memory power while HBM is streaming, and compute power
while the tensor cores work, the latter scaled by V^2 ~ f^2. Activity is time-based, as DCGM's
DRAM and tensor activity are: a_mem is the share of the step spent streaming memory (each part's
bytes / M), a_compute the share spent computing (each part's FLOPs / C); time spent in all-reduces
or on the host counts in neither:

    P(f) = idle + k_c x clock_power x f^3 + k_m x memory_power x a_mem + k_c x compute_power x a_compute x f^2

with k_c, k_m the profile's compute and memory power scales (1 on the H100 the watts were fitted on).

Power limit. When P(1) exceeds the limit the GPU lowers its clock to the f where P(f) equals the
limit (P falls monotonically with f): compute-bound steps stretch by 1/f, memory-bound ones only
below the knee, where the SMs can no longer keep HBM busy. Should the lowest clock still draw more
than the limit, the GPU is gated down to it (the work's energy above idle spread over a longer
step). A GPU that waits between steps keeps the clock the limit left and draws idle and clock
power at it (`waiting_power_w`): a capped GPU's average power never exceeds its limit.

The calibration constants are the only fitted numbers; benchmarks/calibrate.py fits them and
RESULTS.md shows the fit."""

from __future__ import annotations

import dataclasses
import math

from .profiles import GPUProfile, ModelShape

MIN_CLOCK_RATIO = 0.2            # lowest SM clock the power limit may push the GPU to, of the maximum
ALLREDUCE_SMALL_BYTES = 1 << 20  # message size of the profile's all-reduce bus bandwidth
ALLREDUCE_LARGE_BYTES = 1 << 30  # from this size on, all-reduces run at full speed
ALLREDUCE_LARGE_EFFICIENCY = 0.8  # full-speed bus bandwidth / NVLink bandwidth each way (361 of 450 GB/s
                                  # measured for 1 GiB on the lent 8 x H100 machine)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The time and power models' constants (per GPU), fitted to the study's Llama-3.1-8B / H100
    table by benchmarks/calibrate.py within the plausible ranges it names; memory_clock_knee is set."""

    memory_efficiency: float = 0.860   # bandwidth reached while streaming weights and KV / HBM peak
    compute_efficiency: float = 0.458  # FLOP/s of the forward pass's kernels (matmuls, attention, norms) / tensor peak
    layer_overhead_s: float = 47.5e-6  # per layer per step outside the kernels' work: launch and tail latencies, s
    sequence_overhead_s: float = 17.4e-6  # per sequence in the step: sampling and the host's per-request work, s
    host_overhead_s: float = 0.0       # extra host time per step (a slow host), s; not fitted
    clock_power_w: float = 279.0       # a busy GPU's power above idle at the maximum clock before any work, W
    memory_power_w: float = 149.0      # added while HBM streams for the whole step, W
    compute_power_w: float = 669.0     # added while the tensor cores work for the whole step at the maximum clock, W
    overlap_loss: float = 0.88         # share of the shorter of a part's compute and memory times not hidden
    memory_clock_knee: float = 0.5     # clock ratio below which HBM bandwidth falls with the clock


@dataclasses.dataclass(frozen=True)
class StepWork:
    """What one step computes, summed over its sequences."""

    sequences: int         # sequences in the step
    tokens: int            # tokens processed: one per decoding sequence plus every prefill chunk's
    sampled: int           # tokens that go through the LM head (decodes, and prefills that finish)
    attended: float        # (query token, context token) pairs of attention
    kv_read: float         # KV-cache tokens read


@dataclasses.dataclass(frozen=True)
class StepCost:
    """One step on each of the engine's GPUs (all alike under tensor parallelism)."""

    duration_s: float
    power_w: float           # per GPU
    clock_ratio: float       # SM clock / maximum
    capped: bool             # the power limit lowered the clock
    compute_util: float      # share of the step the tensor cores work (a_compute)
    memory_util: float       # share of the step HBM streams (a_mem)
    busy_fraction: float     # share of the step with a kernel running (computing or communicating)
    comm_fraction: float     # share of the step spent in tensor-parallel all-reduces


class PerfModel:
    """Step time and power of `model` on `tp` GPUs of profile `gpu`. With `communication` False
    the all-reduces are left out: one GPU's share of the work alone, as a single GPU running one
    tensor-parallel shard measures it (benchmarks/tp_shard.py)."""

    def __init__(self, model: ModelShape, gpu: GPUProfile, tp: int = 1, calibration: Calibration = Calibration(),
                 communication: bool = True):
        if tp < 1:
            raise ValueError("tensor-parallel degree must be >= 1")
        self.model, self.gpu, self.tp, self.cal = model, gpu, tp, calibration
        self.communication = communication and tp > 1

    def allreduce_s(self, message_bytes: float) -> float:
        """One all-reduce of `message_bytes` among the `tp` GPUs, s."""
        g, n = self.gpu, self.tp
        x = math.log(max(message_bytes, 1.0) / ALLREDUCE_SMALL_BYTES) / math.log(ALLREDUCE_LARGE_BYTES /
                                                                                 ALLREDUCE_SMALL_BYTES)
        large = g.interconnect_bandwidth * ALLREDUCE_LARGE_EFFICIENCY
        busbw = g.allreduce_busbw_1mib * (large / g.allreduce_busbw_1mib) ** min(1.0, max(0.0, x))
        return g.allreduce_latency_s + 2.0 * (n - 1) / n * message_bytes / busbw

    def comm_s(self, w: StepWork) -> float:
        """Per-GPU seconds of the step's all-reduces (0 on one GPU or without communication)."""
        if not self.communication:
            return 0.0
        m = self.model
        return (2 * m.layers + 1) * self.allreduce_s(w.tokens * m.hidden * m.dtype_bytes)

    def _parts(self, w: StepWork) -> tuple[float, float, float, float]:
        """Per-GPU (linear FLOPs, weight bytes, attention FLOPs, KV bytes)."""
        m, tp = self.model, self.tp
        return (m.linear_flops(w.tokens, w.sampled) / tp, m.weight_bytes_per_step / tp,
                m.attention_flops(w.attended) / tp, m.kv_bytes_per_token_per_gpu(tp) * w.kv_read)

    def _times(self, w: StepWork, f: float) -> tuple[float, float, float]:
        """Per-GPU (kernel seconds, compute seconds, memory seconds) at clock ratio `f`."""
        f_lin, b_w, f_attn, b_kv = self._parts(w)
        c = self.gpu.peak_flops * self.cal.compute_efficiency * f
        mem = self.gpu.memory_bandwidth * self.cal.memory_efficiency * min(1.0, f / self.cal.memory_clock_knee)
        tc_lin, tm_lin, tc_attn, tm_attn = f_lin / c, b_w / mem, f_attn / c, b_kv / mem
        overlap = self.cal.overlap_loss
        t = (max(tc_lin, tm_lin) + overlap * min(tc_lin, tm_lin)
             + max(tc_attn, tm_attn) + overlap * min(tc_attn, tm_attn))
        return t, tc_lin + tc_attn, tm_lin + tm_attn

    def _at(self, w: StepWork, f: float, comm: float) -> StepCost:
        kernels, compute, memory = self._times(w, f)
        t = (self.cal.host_overhead_s + self.model.layers * self.cal.layer_overhead_s
             + w.sequences * self.cal.sequence_overhead_s + kernels + comm)
        a_c, a_m = min(1.0, compute / t), min(1.0, memory / t)
        k_c, k_m = self.gpu.compute_power_scale, self.gpu.memory_power_scale
        power = (self.gpu.idle_w + k_c * self.cal.clock_power_w * f**3 + k_m * self.cal.memory_power_w * a_m
                 + k_c * self.cal.compute_power_w * a_c * f**2)
        return StepCost(t, power, f, f < 1.0, a_c, a_m, (kernels + comm) / t, comm / t)

    def step(self, w: StepWork, power_limit_w: float) -> StepCost:
        """The step's duration and power under `power_limit_w` (W per GPU): never above the limit."""
        comm = self.comm_s(w)  # NVLink does not slow with the SM clock
        full = self._at(w, 1.0, comm)
        if full.power_w <= power_limit_w:
            return full
        lo, hi = MIN_CLOCK_RATIO, 1.0
        lowest = self._at(w, lo, comm)
        if lowest.power_w > power_limit_w:
            return self._stretched(lowest, power_limit_w)
        for _ in range(40):  # P(f) is increasing in f: bisect to P(f) = limit
            mid = (lo + hi) / 2
            if self._at(w, mid, comm).power_w > power_limit_w:
                hi = mid
            else:
                lo = mid
        return self._at(w, lo, comm)

    def _stretched(self, cost: StepCost, power_limit_w: float) -> StepCost:
        """`cost` at the lowest clock, still above the limit, gated to it: the work's energy above
        idle is the same, spread over a longer step at the limit."""
        idle = self.gpu.idle_w
        t = cost.duration_s * (cost.power_w - idle) / (power_limit_w - idle)
        k = cost.duration_s / t
        return dataclasses.replace(cost, duration_s=t, power_w=power_limit_w, compute_util=cost.compute_util * k,
                                   memory_util=cost.memory_util * k, busy_fraction=cost.busy_fraction * k,
                                   comm_fraction=cost.comm_fraction * k)

    def waiting_power_w(self, clock_ratio: float) -> float:
        """Power of a GPU that waits between kernels (on its host or on an all-reduce) at `clock_ratio`, W."""
        return self.gpu.idle_w + self.gpu.compute_power_scale * self.cal.clock_power_w * clock_ratio**3
