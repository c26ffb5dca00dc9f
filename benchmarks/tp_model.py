"""One tensor-parallel GPU's slice of a Llama-3.1-70B-shaped model, its steps and their replay; shared by
benchmarks/tp_shard.py (one GPU, no all-reduce) and benchmarks/tp_run.py (N GPUs, with them).

Under tensor parallelism of degree N (Megatron-style, as vLLM shards Llama) each GPU holds 64/N
query heads, max(1, 8/N) KV heads, 28672/N of the MLP's intermediate width and 128256/N rows of
the LM head; the hidden size (8192) is whole on every GPU. `Shard` builds that slice of a
`ModelShape` (the simulator's own: its `LLAMA_3_1_70B`, or `TINY` here for checks on the CPU) with random
weights (normal x 0.02) and runs the engine's two kinds of step through all layers and the LM head:

    decode   `batch` sequences, each one new token against `context` cached tokens
    prefill  `tokens` new tokens in sequences of `context` tokens each, causal attention

Each layer is RMSNorm, fused QKV projection, attention (decode: a batched product over the KV
heads' query groups that reads each K and V once; prefill: PyTorch's fused causal attention),
output projection, RMSNorm, fused gate/up projection, SiLU x up, down projection. Rotary
embeddings are left out (elementwise, under 1 % of a step), as are sampling and the host's
scheduling. The output and down projections' partial sums go through `Shard.reduce`, the identity
here (one GPU alone); benchmarks/tp_run.py sums them across the GPUs there.

Memory: `distinct` sets of weights and KV caches are allocated and the layer calls cycle through
them. Each set of the 70B shape is far larger than the L2 cache (50-60 MB), so every layer reads
its weights and KV from HBM as a full model would; nothing is scaled.

`Replay` runs a step as a CUDA graph captured once (as vLLM captures its decode steps), or eagerly
(on the CPU, or where asked); `Replay.timed` runs it back to back and times it (CUDA events on the
GPU, the host's clock on the CPU)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jouletrace from a checkout
from jouletrace.simulator.profiles import ModelShape  # noqa: E402

TINY = ModelShape(name="tiny-llama", layers=2, hidden=64, intermediate=128, heads=8, kv_heads=2, head_dim=8,
                  vocab=256, source="a few-kilobyte Llama shape: the benchmarks' code checked on the CPU")
DECODE_BATCHES = (1, 8, 32, 64, 128, 256)
DECODE_CONTEXTS = (512, 2048)
PREFILL = ((512, 512), (2048, 2048), (8192, 1024), (8192, 4096))   # (tokens, tokens per sequence)
# (decode batches, decode contexts, prefills) of a run
SWEEPS = {"full": (DECODE_BATCHES, DECODE_CONTEXTS, PREFILL), "quick": ((8, 128), (2048,), PREFILL[1:2]),
          "tiny": ((1, 4), (16,), ((32, 16),))}
Step = Callable[[], torch.Tensor]


class Shard:
    """One GPU's slice of `shape` at tensor-parallel degree `tp`: `distinct` layer weight sets on `device`."""

    def __init__(self, shape: ModelShape, tp: int, distinct: int, device: torch.device,
                 dtype: torch.dtype = torch.bfloat16):
        self.shape, self.device, self.dtype, self.distinct = shape, device, dtype, distinct
        self.tp, self.hq, self.hkv = tp, shape.heads // tp, max(1, shape.kv_heads // tp)
        self.inter = shape.intermediate // tp
        qkv, hidden = (self.hq + 2 * self.hkv) * shape.head_dim, shape.hidden
        self.layers = [{"qkv": self.weight(qkv, hidden), "o": self.weight(hidden, self.hq * shape.head_dim),
                        "gate_up": self.weight(2 * self.inter, hidden), "down": self.weight(hidden, self.inter),
                        "n1": torch.ones(hidden, device=device, dtype=dtype),
                        "n2": torch.ones(hidden, device=device, dtype=dtype)} for _ in range(distinct)]
        self.lm_head = self.weight(shape.vocab // tp, hidden)

    def weight(self, *dims: int) -> torch.Tensor:
        """Random weights, normal x 0.02."""
        return torch.randn(*dims, device=self.device, dtype=self.dtype) * 0.02

    def activations(self, tokens: int) -> torch.Tensor:
        return torch.randn(tokens, self.shape.hidden, device=self.device, dtype=self.dtype)

    def kv_cache(self, batch: int, context: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K and V [batch, kv heads, context, head dim] per distinct layer."""
        def one() -> torch.Tensor:
            return torch.randn(batch, self.hkv, context, self.shape.head_dim, device=self.device, dtype=self.dtype)
        return [(one(), one()) for _ in range(self.distinct)]

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum of a projection's partial outputs across the GPUs: one GPU alone has nothing to add."""
        return partial

    def _split(self, qkv: torch.Tensor):
        d = self.shape.head_dim
        q_end, k_end = self.hq * d, (self.hq + self.hkv) * d
        return qkv[..., :q_end], qkv[..., q_end:k_end], qkv[..., k_end:]

    def _mlp(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        h = F.rms_norm(x, (self.shape.hidden,), p["n2"])
        gate, up = (h @ p["gate_up"].t()).chunk(2, dim=-1)
        return x + self.reduce((F.silu(gate) * up) @ p["down"].t())

    def decode(self, x: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x [batch, hidden]; kv per distinct layer: K, V [batch, kv heads, context, head dim]."""
        b, g, d, hidden = x.shape[0], self.hq // self.hkv, self.shape.head_dim, self.shape.hidden
        for i in range(self.shape.layers):
            p, (k, v) = self.layers[i % len(self.layers)], kv[i % len(kv)]
            q, _, _ = self._split(F.rms_norm(x, (hidden,), p["n1"]) @ p["qkv"].t())
            q = q.view(b, self.hkv, g, d)
            att = torch.softmax((q @ k.transpose(-1, -2)).float() * d ** -0.5, dim=-1).to(v.dtype)
            x = x + self.reduce((att @ v).reshape(b, self.hq * d) @ p["o"].t())
            x = self._mlp(x, p)
        return x[:, :hidden] @ self.lm_head.t()

    def prefill(self, x: torch.Tensor, seq_len: int) -> torch.Tensor:
        """x [tokens, hidden] in sequences of `seq_len`; the LM head runs on each sequence's last token."""
        n, d, hidden = x.shape[0] // seq_len, self.shape.head_dim, self.shape.hidden
        for i in range(self.shape.layers):
            p = self.layers[i % len(self.layers)]
            q, k, v = self._split(F.rms_norm(x, (hidden,), p["n1"]) @ p["qkv"].t())
            q, k, v = (t.reshape(n, seq_len, -1, d).transpose(1, 2) for t in (q, k, v))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.reduce(o.transpose(1, 2).reshape(n * seq_len, self.hq * d) @ p["o"].t())
            x = self._mlp(x, p)
        return x.view(n, seq_len, hidden)[:, -1] @ self.lm_head.t()


def configurations(shard: Shard, sweep: str) -> Iterator[tuple[dict, Callable, tuple]]:
    """Each configuration of `sweep` (SWEEPS): its row's head, the step method and its inputs, allocated
    for it. The generator drops its reference before allocating the next one's; the caller must drop
    its own (`del inputs`) too, or two configurations' KV caches are held at once."""
    batches, contexts, prefills = SWEEPS[sweep]
    for ctx in contexts:
        for b in batches:
            inputs = (shard.activations(b), shard.kv_cache(b, ctx))
            yield ({"tp": shard.tp, "phase": "decode", "batch": b, "context": ctx, "tokens": b},
                   shard.decode, inputs)
            del inputs
    for tokens, seq in prefills:
        inputs = (shard.activations(tokens), seq)
        yield ({"tp": shard.tp, "phase": "prefill", "batch": tokens // seq, "context": seq, "tokens": tokens},
               shard.prefill, inputs)
        del inputs


class Replay:
    """`fn` run as a CUDA graph captured once (on a GPU with `graph`), else eagerly; warmed up twice."""

    def __init__(self, fn: Step, device: torch.device, graph: bool = True):
        self.fn, self.cuda = fn, device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        if not self.cuda:
            for _ in range(2):
                fn()
            return
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        if graph:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                fn()
        self.sync()

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.fn()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, reps: int) -> float:
        """Runs the step `reps` times back to back; device seconds per step."""
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(reps):
                self()
            return (time.perf_counter() - t0) / reps
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            self()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / reps
