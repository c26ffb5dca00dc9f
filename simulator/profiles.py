"""What the simulator simulates: model shapes and GPU profiles, with where each figure comes from.

A model shape is read from a Hugging Face `config.json` (or one of the built-in shapes); a GPU
profile from a JSON file with GPUProfile's fields (or the built-in H100, H200 and B200). Units:
FLOP/s, bytes, bytes/s, seconds, watts, hertz."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape (grouped-query attention, gated MLP)."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False
    dtype_bytes: int = 2
    source: str = ""

    @property
    def layer_params(self) -> int:
        """Parameters of one layer: its matrix products' weights on one GPU, the attention
        projections and the gated MLP (norms are negligible)."""
        return sum(k * n for k, n in self.layer_gemms(1))

    @property
    def params(self) -> int:
        """All parameters: layers, token embedding and (untied) LM head."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params + embeddings

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies: K and V of every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def kv_bytes_per_token_per_gpu(self, tp: int) -> int:
        """KV-cache bytes one token occupies on each of `tp` GPUs: the KV heads are split among them,
        and replicated when there are fewer heads than GPUs (each GPU keeps one), as vLLM shards them."""
        return 2 * self.layers * max(1, self.kv_heads // tp) * self.head_dim * self.dtype_bytes

    def layer_gemms(self, tp: int) -> tuple[tuple[int, int], ...]:
        """One layer's matrix products on each of `tp` GPUs as (K, N): each multiplies the step's
        tokens (M rows) by a K x N weight. Megatron-style sharding: the QKV and gate/up projections
        split their output columns N, the output and down projections their inner dimension K."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return ((self.hidden, (q + 2 * kv) // tp), (q // tp, self.hidden),
                (self.hidden, 2 * self.intermediate // tp), (self.intermediate // tp, self.hidden))

    def lm_head_gemm(self, tp: int) -> tuple[int, int]:
        """The LM head's (K, N) on each of `tp` GPUs (vocabulary-parallel), applied to the sampled tokens."""
        return self.hidden, self.vocab // tp

    def elementwise_elements(self, tp: int) -> int:
        """Activation elements one token reads and writes per layer outside the matrix products and
        attention on each of `tp` GPUs, as vLLM fuses them: two residual-add RMSNorms (read x and the
        residual, write both: 4 x hidden each) and SiLU-and-multiply (read gate and up, write one)."""
        return 8 * self.hidden + 3 * self.intermediate // tp

    def attention_flops(self, attended: float) -> float:
        """FLOPs of attention (QK^T and PV) over `attended` (query token, context token) pairs."""
        return 4.0 * self.layers * self.heads * self.head_dim * attended

    @classmethod
    def from_hf_config(cls, config: dict, name: str, source: str = "") -> "ModelShape":
        """The shape in a Hugging Face `config.json` (Llama, Mistral, Qwen2 style keys)."""
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
            return cls(name=name, layers=int(config["num_hidden_layers"]), hidden=hidden,
                       intermediate=int(config["intermediate_size"]), heads=heads,
                       kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
                       tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                       dtype_bytes=4 if "32" in dtype else 1 if "8" in dtype else 2, source=source)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"model config {name}: missing or bad field {e}") from None


@dataclasses.dataclass(frozen=True)
class GPUProfile:
    """One GPU's peak rates, memory, links and power envelope.

    The power model's calibrated watts (perf.Calibration) were fitted on the H100: `compute_power_scale`
    scales its clock and compute power, `memory_power_scale` its HBM power, for another GPU (1 for
    the H100)."""

    name: str
    peak_flops: float             # dense BF16 tensor FLOP/s at the maximum SM clock
    memory_bandwidth: float       # HBM bytes/s
    memory_bytes: int
    interconnect_bandwidth: float  # NVLink bytes/s per GPU, one direction (data sheet)
    allreduce_latency_s: float    # one all-reduce of a few KB among the NVLink-connected GPUs, s
    allreduce_busbw_1mib: float   # bus bandwidth an all-reduce of 1 MiB reaches, bytes/s
    idle_w: float                 # power with nothing running, W
    min_power_limit_w: float
    max_power_limit_w: float      # also the default limit (TDP)
    max_sm_clock_hz: float
    compute_power_scale: float = 1.0
    memory_power_scale: float = 1.0
    source: str = ""


LLAMA_3_1_8B = ModelShape(
    name="llama-3.1-8b", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
    vocab=128256, source="meta-llama/Llama-3.1-8B-Instruct config.json (8.03 B parameters, BF16)")

LLAMA_3_1_70B = ModelShape(
    name="llama-3.1-70b", layers=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8, head_dim=128,
    vocab=128256, source="meta-llama/Llama-3.1-70B-Instruct config.json (70.6 B parameters, BF16)")

ALLREDUCE_SOURCE = (
    "All-reduce: vLLM's custom all-reduce on H100s, 8.5-10 us for messages up to 32 KB and 27-45 us for "
    "1 MiB at TP 2-8 (https://github.com/sgl-project/sglang/pull/2904), i.e. ~60 GB/s of bus bandwidth at "
    "1 MiB; 1 GiB all-reduces through NCCL reach 329-361 GB/s on the lent 2-8 x H100 machines, 0.8 of "
    "NVLink's 450 GB/s each way")

H100_SXM = GPUProfile(
    name="h100-sxm", peak_flops=989.4e12, memory_bandwidth=3.35e12, memory_bytes=80 * 10**9,
    interconnect_bandwidth=450e9, allreduce_latency_s=9e-6, allreduce_busbw_1mib=60e9, idle_w=72.0,
    min_power_limit_w=200.0, max_power_limit_w=700.0, max_sm_clock_hz=1.98e9,
    source="NVIDIA H100 SXM5 datasheet: 989.4 TFLOP/s dense BF16, 3.35 TB/s HBM3, 80 GB, NVLink 900 GB/s "
           "(450 GB/s each way), up to 700 W. Read through NVML (benchmarks/h100_profile.py): 200-700 W limit "
           "range, 1980 MHz max SM clock (the lent SXM machine, an H200 of the same board power envelope, "
           "2026-11-27); ~72 W idle on an H100 SXM5 (benchmarks/RESULTS.md). " + ALLREDUCE_SOURCE)

H200_SXM = GPUProfile(
    name="h200-sxm", peak_flops=989.4e12, memory_bandwidth=4.8e12, memory_bytes=141 * 10**9,
    interconnect_bandwidth=450e9, allreduce_latency_s=9e-6, allreduce_busbw_1mib=60e9, idle_w=72.0,
    min_power_limit_w=200.0, max_power_limit_w=700.0, max_sm_clock_hz=1.98e9, memory_power_scale=4.8 / 3.35,
    source="NVIDIA H200 SXM: the H100's GH100 die and 700 W envelope with 141 GB of HBM3e at 4.8 TB/s and the "
           "same NVLink 4 (900 GB/s both ways) (https://www.aiminingco.com/gpu/h200/specs, "
           "https://lzwjava.github.io/nvidia-h200-gpu-specs-en); 200-700 W and 1980 MHz read through NVML on "
           "the lent H200 (benchmarks/RESULTS.md). Same die and clocks: the H100's compute and clock power; "
           "HBM power scaled with bandwidth (the same energy per byte). Idle as the H100. " + ALLREDUCE_SOURCE)

B200_SXM = GPUProfile(
    name="b200-sxm", peak_flops=2.25e15, memory_bandwidth=8.0e12, memory_bytes=180 * 10**9,
    interconnect_bandwidth=900e9, allreduce_latency_s=9e-6, allreduce_busbw_1mib=120e9, idle_w=103.0,
    min_power_limit_w=200.0, max_power_limit_w=1000.0, max_sm_clock_hz=1.98e9,
    compute_power_scale=1000 / 700, memory_power_scale=8.0 / 3.35,
    source="NVIDIA HGX B200 at 1000 W: 2.25 PFLOP/s dense BF16, 8 TB/s HBM3e, NVLink 5 at 1.8 TB/s both ways "
           "(https://glennklockwood.com/garden/processors/B200, https://hmc-tech.com/gpus/nvidia-b200-vs-nvidia-b100); "
           "180 GB as HGX B200 boards ship it (192 GB on the package). Assumed, not measured: the lowest limit "
           "and the clock as the H100's, idle power at the H100's share of its limit, clock and compute power "
           "scaled with the board power (1000/700), HBM power with bandwidth, all-reduce bus bandwidth doubled "
           "with NVLink 5 and the H100's latency. " + ALLREDUCE_SOURCE)

MODELS = {m.name: m for m in (LLAMA_3_1_8B, LLAMA_3_1_70B)}
GPUS = {g.name: g for g in (H100_SXM, H200_SXM, B200_SXM)}


def model_shape(name_or_path: str) -> ModelShape:
    """A built-in shape by name, or the shape in a Hugging Face config.json (file or directory)."""
    if name_or_path in MODELS:
        return MODELS[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"unknown model {name_or_path!r}: give one of {', '.join(MODELS)} or a config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    return ModelShape.from_hf_config(config, path.parent.name or path.stem, source=str(path))


def gpu_profile(name_or_path: str) -> GPUProfile:
    """A built-in profile by name, or a JSON file with GPUProfile's fields."""
    if name_or_path in GPUS:
        return GPUS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"unknown GPU {name_or_path!r}: give one of {', '.join(GPUS)} or a JSON profile")
    try:
        return GPUProfile(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot read GPU profile {path}: {e}") from None
