"""The simulated engine's scheduler: vLLM-style continuous batching on a virtual or real clock.

Each step (vLLM V1's scheduler, simplified) has a budget of `max_num_batched_tokens`. Running
sequences come first, in admission order: a decoding one takes 1 token, one still prefilling takes
the next chunk of its prompt. Then waiting requests are admitted, oldest first, while fewer than
`max_num_seqs` run and budget and KV-cache blocks remain. A sequence whose pending tokens are all
computed samples one output token at the end of the step. When the KV cache is full, the most
recently admitted sequence is preempted: its blocks are freed and it waits again at the front of
the queue, to recompute its prompt and output so far (vLLM's recompute preemption).

KV capacity, per GPU as vLLM sizes it: GPU memory x `gpu_memory_utilization`, less the GPU's
share of the weights (1/tp), the activations of a full token budget (the residual stream whole, the
MLP's width split) and a fixed runtime reserve; divided by the KV bytes a token takes on one GPU
(its share of the KV heads, at least one head when tp exceeds them); in blocks of `block_size`
tokens. A `max_num_seqs` larger than the cache holds is capped by it: admission waits for free
blocks and a full cache preempts, so the running batch stays below `max_num_seqs`.

The engine is clock-free: `step(t)` plans the step that starts at `t`, asks the performance model
how long it takes and what it draws, and applies its outcome at its end time. A server runs it
in real time; `simulator.offline` runs it in virtual time."""

from __future__ import annotations

import collections
import dataclasses

from .perf import PerfModel, StepCost, StepWork

RUNTIME_RESERVE_BYTES = 1 << 30   # CUDA context, graphs and allocator slack per GPU


@dataclasses.dataclass(eq=False)
class SimRequest:
    """One request inside the engine. Times are seconds on the engine's clock."""

    request_id: str
    prompt_tokens: int
    output_tokens: int            # tokens it will generate before it stops
    arrival: float
    computed: int = 0             # tokens whose KV is cached
    generated: int = 0            # output tokens sampled
    blocks: int = 0               # KV blocks held
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    preemptions: int = 0

    @property
    def pending(self) -> int:
        """Tokens to compute before the next output token can be sampled."""
        return self.prompt_tokens + self.generated - self.computed


@dataclasses.dataclass(frozen=True)
class StepResult:
    start: float
    end: float
    cost: StepCost
    batch: int                                  # sequences in the step
    emitted: list[tuple[SimRequest, float | None]]  # sampled one token at `end`; when the previous one was
    finished: list[SimRequest]                  # finished at `end`


class Engine:
    """Continuous batching of `SimRequest`s through `perf`."""

    def __init__(self, perf: PerfModel, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
                 gpu_memory_utilization: float = 0.9, block_size: int = 16, power_limit_w: float | None = None):
        if max_num_seqs < 1 or max_num_batched_tokens < 1 or block_size < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and block_size must be >= 1")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        self.perf = perf
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_size = block_size
        self.power_limit_w = perf.gpu.max_power_limit_w if power_limit_w is None else power_limit_w
        self.kv_capacity_tokens = self._kv_capacity(gpu_memory_utilization)
        if self.kv_capacity_tokens < block_size:
            raise ValueError(f"{perf.model.name} leaves no room for a KV cache on {perf.tp} x {perf.gpu.name}")
        self.total_blocks = self.kv_capacity_tokens // block_size
        self.free_blocks = self.total_blocks
        self.waiting: collections.deque[SimRequest] = collections.deque()
        self.running: list[SimRequest] = []
        self.preemptions = 0
        self.prompt_tokens_total = 0      # prompt tokens of requests that got their first token
        self.generation_tokens_total = 0

    def _kv_capacity(self, utilization: float) -> int:
        m, gpu, tp = self.perf.model, self.perf.gpu, self.perf.tp
        activations = self.max_num_batched_tokens * (2 * m.intermediate / tp + 4 * m.hidden) * m.dtype_bytes
        per_gpu = gpu.memory_bytes * utilization - m.params * m.dtype_bytes / tp - activations - RUNTIME_RESERVE_BYTES
        return max(0, int(per_gpu / m.kv_bytes_per_token_per_gpu(tp)))

    @property
    def kv_usage(self) -> float:
        """Share of the KV-cache blocks in use, 0-1."""
        return 1.0 - self.free_blocks / self.total_blocks

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, r: SimRequest) -> None:
        if r.prompt_tokens + r.output_tokens > self.kv_capacity_tokens:
            raise ValueError(f"request {r.request_id}: {r.prompt_tokens} + {r.output_tokens} tokens exceed the "
                             f"KV cache ({self.kv_capacity_tokens} tokens)")
        self.waiting.append(r)

    def abort(self, r: SimRequest) -> None:
        """Drop `r` (its client went away), freeing its blocks."""
        if r in self.running:
            self.running.remove(r)
            self.free_blocks += r.blocks
            r.blocks = 0
        elif r in self.waiting:
            self.waiting.remove(r)

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _preempt_last(self) -> SimRequest:
        victim = self.running.pop()
        self.free_blocks += victim.blocks
        victim.blocks = victim.computed = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def _plan(self) -> list[tuple[SimRequest, int]]:
        budget = self.max_num_batched_tokens
        chunks: list[tuple[SimRequest, int]] = []
        preempted = 0
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n = min(r.pending, budget)
            need = self._blocks_for(r.computed + n) - r.blocks
            while need > self.free_blocks and self.running[-1] is not r:
                self._preempt_last()
                preempted += 1
            if need > self.free_blocks:  # r itself is the newest: it waits
                self._preempt_last()
                preempted += 1
                break
            self.free_blocks -= need
            r.blocks += need
            chunks.append((r, n))
            budget -= n
            i += 1
        while self.waiting and not preempted and len(self.running) < self.max_num_seqs and budget > 0:
            r = self.waiting[0]
            n = min(r.pending, budget)
            need = self._blocks_for(r.computed + n)
            if need > self.free_blocks:
                break
            self.waiting.popleft()
            self.free_blocks -= need
            r.blocks = need
            self.running.append(r)
            chunks.append((r, n))
            budget -= n
        return chunks

    def step(self, t: float) -> StepResult | None:
        """Plans, costs and applies the step that starts at `t`; None when there is nothing to run."""
        chunks = self._plan()
        if not chunks:
            return None
        sampled = sum(1 for r, n in chunks if n == r.pending)
        work = StepWork(sequences=len(chunks), tokens=sum(n for _, n in chunks), sampled=sampled,
                        attended=sum(n * (r.computed + (n + 1) / 2) for r, n in chunks),
                        kv_read=sum(r.computed + n for r, n in chunks))
        cost = self.perf.step(work, self.power_limit_w)
        end = t + cost.duration_s
        emitted, finished = [], []
        for r, n in chunks:
            if r.scheduled_at is None:
                r.scheduled_at = t
            complete = n == r.pending
            r.computed += n
            if not complete:
                continue
            r.generated += 1
            self.generation_tokens_total += 1
            emitted.append((r, r.last_token_at))
            r.last_token_at = end
            if r.first_token_at is None:
                r.first_token_at = end
                self.prompt_tokens_total += r.prompt_tokens
            if r.generated >= r.output_tokens:
                r.finished_at = end
                finished.append(r)
        for r in finished:
            self.running.remove(r)
            self.free_blocks += r.blocks
            r.blocks = 0
        return StepResult(t, end, cost, len(chunks), emitted, finished)
