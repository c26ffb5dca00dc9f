"""One tensor-parallel GPU's share of a Llama-3.1-70B-shaped model, measured on the GPU: step time and power.

    python benchmarks/tp_shard.py --out DIR [--tp 2,4,8] [--quick]

Under tensor parallelism of degree N (Megatron-style, as vLLM shards Llama) each GPU holds 64/N
query heads, max(1, 8/N) KV heads, 28672/N of the MLP's intermediate width and 128256/N rows of
the LM head; the hidden size (8192) is whole on every GPU. This script builds that slice with
random bf16 weights (torch, normal x 0.02) and runs the engine's two kinds of step through all 80
layers and the LM head:

    decode   `batch` sequences, each one new token against `context` cached tokens
    prefill  `tokens` new tokens in sequences of `context` tokens each, causal attention

Each layer is RMSNorm, fused QKV projection, attention (decode: a batched product over the KV
heads' query groups that reads each K and V once; prefill: PyTorch's fused causal attention),
output projection, RMSNorm, fused gate/up projection, SiLU x up, down projection. Rotary
embeddings are left out (elementwise, under 1 % of a step). What is NOT run: the all-reduces
after the attention and MLP outputs (no second GPU), sampling and the host's scheduling.

Memory: `--distinct-layers` (default 8) distinct sets of weights and KV caches are allocated and
the 80 layer calls cycle through them. Each set is far larger than the L2 cache (50-60 MB), so
every layer reads its weights and KV from HBM as a full model would; the step is timed over all
80 layers, nothing is scaled.

Each configuration is captured once as a CUDA graph (as vLLM captures its decode steps) and
replayed back to back for at least `--seconds` (default 1.5 s, longer than the ~100 ms update of
NVML's energy counter). Step time: CUDA events around the replays / replays. Power: the
total-energy counter's delta over the same stretch / its duration, and the mean of the
POWER_INSTANT field (186) polled every 20 ms from a thread. Also recorded: idle power before
anything runs, the SM clock and the power limit (read only: this script changes no GPU setting).

Output: DIR/tp_shard.jsonl, one JSON object per configuration (first line: the device)."""

from __future__ import annotations

import argparse
import functools
import json
import threading
import time
from pathlib import Path

import pynvml
import torch
import torch.nn.functional as F

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, LAYERS, VOCAB = 8192, 64, 8, 128, 28672, 80, 128256
FI_POWER_INSTANT = 186
DECODE_BATCHES = (1, 8, 32, 64, 128, 256)
DECODE_CONTEXTS = (512, 2048)
PREFILL = ((512, 512), (2048, 2048), (8192, 1024), (8192, 4096))   # (tokens, tokens per sequence)


class Power:
    """NVML readings of GPU 0: the energy counter (J) and POWER_INSTANT polled in a thread (W)."""

    def __init__(self) -> None:
        pynvml.nvmlInit()
        self.h = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def instant_w(self) -> float:
        (v,) = pynvml.nvmlDeviceGetFieldValues(self.h, [FI_POWER_INSTANT])
        return v.value.uiVal / 1000.0

    def energy_j(self) -> float:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.h) / 1000.0

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(self.instant_w())

    def start(self) -> float:
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self.energy_j()

    def stop(self) -> tuple[float, float]:
        """(counter joules now, mean POWER_INSTANT since start in W)."""
        e = self.energy_j()
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return e, sum(self.samples) / max(1, len(self.samples))

    def device(self) -> dict:
        h = self.h
        def text(v: str | bytes) -> str:
            return v.decode() if isinstance(v, bytes) else v

        return {"name": text(pynvml.nvmlDeviceGetName(h)), "driver": text(pynvml.nvmlSystemGetDriverVersion()),
                "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
                "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total}

    def sm_clock_mhz(self) -> int:
        return pynvml.nvmlDeviceGetClockInfo(self.h, pynvml.NVML_CLOCK_SM)


def weight(*shape: int) -> torch.Tensor:
    """Random bf16 weights on the GPU, normal x 0.02."""
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 0.02


class Shard:
    """GPU 0's slice of the model at tensor-parallel degree `tp`: `distinct` layer weight sets."""

    def __init__(self, tp: int, distinct: int):
        self.tp, self.hq, self.hkv = tp, HEADS // tp, max(1, KV_HEADS // tp)
        self.inter = INTERMEDIATE // tp
        qkv = (self.hq + 2 * self.hkv) * HEAD_DIM
        self.layers = [{"qkv": weight(qkv, HIDDEN), "o": weight(HIDDEN, self.hq * HEAD_DIM),
                        "gate_up": weight(2 * self.inter, HIDDEN), "down": weight(HIDDEN, self.inter),
                        "n1": torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16),
                        "n2": torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16)} for _ in range(distinct)]
        self.lm_head = weight(VOCAB // tp, HIDDEN)

    def _split(self, qkv: torch.Tensor):
        q_end, k_end = self.hq * HEAD_DIM, (self.hq + self.hkv) * HEAD_DIM
        return qkv[..., :q_end], qkv[..., q_end:k_end], qkv[..., k_end:]

    def _mlp(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        h = F.rms_norm(x, (HIDDEN,), p["n2"])
        gate, up = (h @ p["gate_up"].t()).chunk(2, dim=-1)
        return x + (F.silu(gate) * up) @ p["down"].t()

    def decode(self, x: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x [batch, hidden]; kv per distinct layer: K, V [batch, kv heads, context, head dim]."""
        b, g = x.shape[0], self.hq // self.hkv
        for i in range(LAYERS):
            p, (k, v) = self.layers[i % len(self.layers)], kv[i % len(kv)]
            q, _, _ = self._split(F.rms_norm(x, (HIDDEN,), p["n1"]) @ p["qkv"].t())
            q = q.view(b, self.hkv, g, HEAD_DIM)
            att = torch.softmax((q @ k.transpose(-1, -2)).float() * HEAD_DIM ** -0.5, dim=-1).to(v.dtype)
            x = x + (att @ v).reshape(b, self.hq * HEAD_DIM) @ p["o"].t()
            x = self._mlp(x, p)
        return x[:, :HIDDEN] @ self.lm_head.t()

    def prefill(self, x: torch.Tensor, seq_len: int) -> torch.Tensor:
        """x [tokens, hidden] in sequences of `seq_len`; the LM head runs on each sequence's last token."""
        n = x.shape[0] // seq_len
        for i in range(LAYERS):
            p = self.layers[i % len(self.layers)]
            q, k, v = self._split(F.rms_norm(x, (HIDDEN,), p["n1"]) @ p["qkv"].t())
            q, k, v = (t.reshape(n, seq_len, -1, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + o.transpose(1, 2).reshape(n * seq_len, self.hq * HEAD_DIM) @ p["o"].t()
            x = self._mlp(x, p)
        return x.view(n, seq_len, HIDDEN)[:, -1] @ self.lm_head.t()


def measure(fn, power: Power, seconds: float) -> dict:
    """`fn` as a CUDA graph replayed for at least `seconds`: step ms, counter and instant power."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    once = max(1e-4, start.elapsed_time(end) / 1000)
    warm = max(1, int(0.3 / once))              # ~0.3 s to reach steady clocks and power
    for _ in range(warm):
        graph.replay()
    torch.cuda.synchronize()
    reps = max(3, int(seconds / once))
    e0 = power.start()
    w0 = time.perf_counter()
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    wall = time.perf_counter() - w0
    clock = power.sm_clock_mhz()
    e1, instant = power.stop()
    del graph
    return {"step_ms": start.elapsed_time(end) / reps, "replays": reps, "seconds": wall,
            "energy_j": e1 - e0, "counter_power_w": (e1 - e0) / wall, "instant_power_w": instant,
            "sm_clock_mhz": clock, "setup_s": w0 - t0}


def run(write, config: dict, fn, power: Power, seconds: float) -> None:
    """One configuration's row; a failure (out of memory, an unsupported kernel) is written as its error."""
    try:
        write({**config, **measure(fn, power, seconds)})
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        write({**config, "error": str(e).splitlines()[0][:300]})
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tp", default="2,4,8")
    ap.add_argument("--distinct-layers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--quick", action="store_true", help="a few configurations only, to check the script")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    power = Power()
    torch.manual_seed(0)
    idle = power.start()
    time.sleep(1.5)
    e1, idle_instant = power.stop()
    with open(out / "tp_shard.jsonl", "w") as f:
        def write(row: dict) -> None:
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)

        write({"device": power.device(), "idle_counter_w": (e1 - idle) / 1.5, "idle_instant_w": idle_instant,
               "torch": torch.__version__, "layers": LAYERS, "distinct_layers": args.distinct_layers})
        batches, contexts, prefills = ((8, 128), (2048,), PREFILL[1:2]) if args.quick else \
            (DECODE_BATCHES, DECODE_CONTEXTS, PREFILL)
        for tp in (int(t) for t in args.tp.split(",")):
            shard = Shard(tp, args.distinct_layers)
            for ctx in contexts:
                for b in batches:
                    kv = [(torch.randn(b, shard.hkv, ctx, HEAD_DIM, device="cuda", dtype=torch.bfloat16),
                           torch.randn(b, shard.hkv, ctx, HEAD_DIM, device="cuda", dtype=torch.bfloat16))
                          for _ in range(args.distinct_layers)]
                    x = torch.randn(b, HIDDEN, device="cuda", dtype=torch.bfloat16)
                    run(write, {"tp": tp, "phase": "decode", "batch": b, "context": ctx, "tokens": b},
                        functools.partial(shard.decode, x, kv), power, args.seconds)
                    del kv, x
            for tokens, seq in prefills:
                x = torch.randn(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16)
                run(write, {"tp": tp, "phase": "prefill", "batch": tokens // seq, "context": seq, "tokens": tokens},
                    functools.partial(shard.prefill, x, seq), power, args.seconds)
                del x
            del shard
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
