"""How long one engine step takes on a GPU and what it draws: a roofline per kernel with a power model.

Time. A step processes `tokens` (decode tokens and prefill chunks) through the model. Each layer's
four matrix products (QKV, output, gate/up, down; ModelShape.layer_gemms) multiply the step's m
tokens by a K x N weight; the LM head multiplies the sampled tokens. Each product is its own
roofline: its compute time at its efficiency eta and its memory time (the weight and its m x K
input and m x N output, read and written once), the longer of the two plus the share
`overlap_loss` of the shorter that the kernel's pipeline fails to hide. Attention is a roofline of
its FLOPs (4 per head dimension per (query, context) pair, at e) and the KV cache it reads. The
activations between them (residual-add RMSNorms, SiLU-and-multiply) only stream memory:

    t = host + layers x latency + sum over products R(2 m K N / (P eta), B / M) + R(F_attn / (P e), B_kv / M)
        + (B_act + sequences x B_seq) / M + t_comm
    R(a, b) = max(a, b) + overlap_loss x min(a, b)
    eta(m, K) = e x m / (m + m_half) x K / (K + K_half)
    P = peak FLOP/s x f          M = HBM bytes/s x memory_efficiency x min(1, f / knee)

f is the SM clock as a fraction of its maximum. eta is a function of the product's shape only:
e (`gemm_efficiency`) is the share of the tensor peak a large product reaches at any clock; with
few rows the tensor-core tiles are partly empty (m_half, `gemm_half_rows`), and with a short inner
dimension each output tile's fixed work (filling its pipeline, writing its result) weighs more
against its K loop (K_half, `gemm_half_depth`). Tensor parallelism shortens K of the output and
down projections, so a shard's products run a little below the whole model's. All figures are per
GPU. `latency` is a fixed time per layer outside the kernels' compute and memory time (launch and
tail latencies of the layer's kernels); B_seq (`sequence_bytes`) the HBM traffic each sequence in
the step adds outside the roofline whatever the model's size (sampling over the vocabulary,
attention's work per sequence; fitted, it stands for all the 8B table's per-sequence cost), so it
takes less time on a GPU with more bandwidth; `host` is extra host time per step (0 unless a slow
host is modelled).

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
voltage roughly proportional to frequency), and power for the work it does: HBM power in
proportion to the bytes it moves per second, tensor power in proportion to the FLOPs it does per
cycle (DCGM's tensor activity) scaled by V^2 ~ f^2:

    P(f) = idle + k_c x clock_power x f^3 + k_m x memory_power x a_mem + k_c x compute_power x a_compute x f^2
    a_mem = B_all / (HBM bytes/s x memory_efficiency x t)      a_compute = F_all / (P x t)

with k_c, k_m the profile's compute and memory power scales (1 on the H100 the watts were fitted
on). So power follows the work done per second, not the time a unit is busy: below the knee, where
the SMs no longer keep HBM busy, the bytes per second and the HBM power fall with the clock; a
matrix product that reaches more of the peak draws more. memory_power is HBM streaming at the
attainable bandwidth; compute_power is the tensor cores busy on every cycle at the maximum clock,
which the 700 W limit never allows.

Power limit. When P(1) exceeds the limit the GPU lowers its clock to the f where P(f) equals the
limit (P rises with f: the work per second does): compute-bound steps stretch by 1/f, memory-bound
ones only below the knee. Should the lowest clock still draw more than the limit, the GPU is gated
down to it (the work's energy above idle is spread over a longer step). A GPU that waits between
steps keeps the clock the limit left and draws idle and clock power at it (`waiting_power_w`): a
capped GPU's average power never exceeds its limit.

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
    table and one GPU's slice of Llama-3.1-70B measured on an H100 by benchmarks/calibrate.py, within
    the plausible ranges it names. Set, not fitted: the half depth (a tile's fixed work, about four
    64-deep K steps) and the knee."""

    memory_efficiency: float = 0.872   # bandwidth reached while streaming weights and KV / HBM peak
    gemm_efficiency: float = 0.924     # FLOP/s of a matrix product with many rows and a deep K / tensor peak
    gemm_half_rows: float = 0.51       # rows (tokens) M at which a matrix product reaches half of that
    gemm_half_depth: float = 256.0     # inner dimension K at which a matrix product reaches half of that
    layer_overhead_s: float = 56.8e-6  # per layer per step outside the kernels' work: launch and tail latencies, s
    sequence_bytes: float = 140.4e6    # HBM bytes each sequence in the step moves outside the roofline
    host_overhead_s: float = 0.0       # extra host time per step (a slow host), s; not fitted
    clock_power_w: float = 229.5       # a busy GPU's power above idle at the maximum clock before any work, W
    memory_power_w: float = 216.0      # added while HBM streams at the attainable bandwidth for the whole step, W
    compute_power_w: float = 1196.0    # added with the tensor cores busy on every cycle at the maximum clock, W
    overlap_loss: float = 0.015        # share of the shorter of a kernel's compute and memory times not hidden
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
    compute_util: float      # FLOPs per cycle / the tensor peak's, over the step (a_compute, tensor activity)
    memory_util: float       # HBM bytes per second / the attainable bandwidth, over the step (a_mem)
    busy_fraction: float     # share of the step with a kernel running (computing or communicating)
    comm_fraction: float     # share of the step spent in tensor-parallel all-reduces


@dataclasses.dataclass(frozen=True)
class _Kernels:
    """A step's kernels per GPU, what the clock does not change: per matrix product (count, FLOPs,
    efficiency at the tensor peak, HBM bytes), attention's FLOPs and KV bytes, the element-wise
    bytes, and the FLOPs and HBM bytes of all of them."""

    gemms: list[tuple[int, float, float, float]]
    attention_flops: float
    kv_bytes: float
    activation_bytes: float
    flops: float
    nbytes: float


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

    def gemm_efficiency(self, rows: float, depth: int) -> float:
        """FLOP/s of one matrix product of `rows` x `depth` by `depth` x N / tensor peak at the clock."""
        cal = self.cal
        return cal.gemm_efficiency * rows / (rows + cal.gemm_half_rows) * depth / (depth + cal.gemm_half_depth)

    def _kernels(self, w: StepWork) -> _Kernels:
        """The step's kernels, per GPU, as far as they do not depend on the clock."""
        m, tp, cal = self.model, self.tp, self.cal
        gemms, flops, nbytes = [], 0.0, 0.0
        products = [(w.tokens, k, n, m.layers) for k, n in m.layer_gemms(tp)] + [(w.sampled, *m.lm_head_gemm(tp), 1)]
        for rows, k, n, count in products:
            if rows <= 0:
                continue
            f_g, b_g = 2.0 * rows * k * n, (k * n + rows * (k + n)) * m.dtype_bytes
            gemms.append((count, f_g, self.gemm_efficiency(rows, k), b_g))
            flops, nbytes = flops + count * f_g, nbytes + count * b_g
        f_attn, b_kv = m.attention_flops(w.attended) / tp, m.kv_bytes_per_token_per_gpu(tp) * w.kv_read
        b_act = w.tokens * m.layers * m.elementwise_elements(tp) * m.dtype_bytes + w.sequences * cal.sequence_bytes
        return _Kernels(gemms, f_attn, b_kv, b_act, flops + f_attn, nbytes + b_kv + b_act)

    def _kernel_s(self, k: _Kernels, f: float) -> float:
        """Seconds of `k`'s kernels at clock ratio `f`, each at its roofline."""
        peak, mem = self.gpu.peak_flops * f, self._bandwidth(f)
        t = 0.0
        for count, f_g, efficiency, b_g in k.gemms:
            t += count * self._roofline(f_g / (peak * efficiency), b_g / mem)
        return t + (self._roofline(k.attention_flops / (peak * self.cal.gemm_efficiency), k.kv_bytes / mem)
                    + k.activation_bytes / mem)

    def _bandwidth(self, f: float) -> float:
        """HBM bytes/s the kernels reach at clock ratio `f`."""
        return self.gpu.memory_bandwidth * self.cal.memory_efficiency * min(1.0, f / self.cal.memory_clock_knee)

    def _roofline(self, compute_s: float, memory_s: float) -> float:
        return max(compute_s, memory_s) + self.cal.overlap_loss * min(compute_s, memory_s)

    def _at(self, k: _Kernels, f: float, comm: float) -> StepCost:
        kernels = self._kernel_s(k, f)
        t = self.cal.host_overhead_s + self.model.layers * self.cal.layer_overhead_s + kernels + comm
        a_c = min(1.0, k.flops / (self.gpu.peak_flops * f * t))
        a_m = min(1.0, k.nbytes / (self._bandwidth(1.0) * t))
        k_c, k_m = self.gpu.compute_power_scale, self.gpu.memory_power_scale
        power = (self.gpu.idle_w + k_c * self.cal.clock_power_w * f**3 + k_m * self.cal.memory_power_w * a_m
                 + k_c * self.cal.compute_power_w * a_c * f**2)
        return StepCost(t, power, f, f < 1.0, a_c, a_m, (kernels + comm) / t, comm / t)

    def step(self, w: StepWork, power_limit_w: float) -> StepCost:
        """The step's duration and power under `power_limit_w` (W per GPU): never above the limit."""
        comm = self.comm_s(w)  # NVLink does not slow with the SM clock
        k = self._kernels(w)   # the clock changes only their times: built once for the search
        full = self._at(k, 1.0, comm)
        if full.power_w <= power_limit_w:
            return full
        lo, hi = MIN_CLOCK_RATIO, 1.0
        lowest = self._at(k, lo, comm)
        if lowest.power_w > power_limit_w:
            return self._stretched(lowest, power_limit_w)
        for _ in range(40):  # P(f) is increasing in f: bisect to P(f) = limit
            mid = (lo + hi) / 2
            if self._at(k, mid, comm).power_w > power_limit_w:
                hi = mid
            else:
                lo = mid
        return self._at(k, lo, comm)

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
