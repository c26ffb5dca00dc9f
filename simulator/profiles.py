"""What the simulator simulates: model shapes and GPU profiles, with where each figure comes from.

A model shape is read from a Hugging Face `config.json` (or one of the built-in shapes); a GPU
profile from a JSON file with GPUProfile's fields (or the built-in H100). Units: FLOP/s, bytes,
bytes/s, watts, hertz."""

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
        """Parameters of one layer: attention projections and the gated MLP (norms are negligible)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return attn + 3 * self.hidden * self.intermediate

    @property
    def params(self) -> int:
        """All parameters: layers, token embedding and (untied) LM head."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params + embeddings

    @property
    def weight_bytes_per_step(self) -> float:
        """Weights read by one forward step: every layer and the LM head (embedding lookups are rows)."""
        return (self.layers * self.layer_params + self.vocab * self.hidden) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies: K and V of every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def linear_flops(self, tokens: float, sampled: float) -> float:
        """FLOPs of the matrix products for `tokens` processed, `sampled` of which go through the LM head."""
        return 2.0 * self.layers * self.layer_params * tokens + 2.0 * self.vocab * self.hidden * sampled

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
    """One GPU's peak rates, memory and power envelope."""

    name: str
    peak_flops: float             # dense BF16 tensor FLOP/s at the maximum SM clock
    memory_bandwidth: float       # HBM bytes/s
    memory_bytes: int
    interconnect_bandwidth: float  # GPU-to-GPU bytes/s, one direction (tensor-parallel all-reduce)
    idle_w: float                 # power with nothing running, W
    min_power_limit_w: float
    max_power_limit_w: float      # also the default limit (TDP)
    max_sm_clock_hz: float
    source: str = ""


LLAMA_3_1_8B = ModelShape(
    name="llama-3.1-8b", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
    vocab=128256, source="meta-llama/Llama-3.1-8B-Instruct config.json (8.03 B parameters, BF16)")

LLAMA_3_1_70B = ModelShape(
    name="llama-3.1-70b", layers=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8, head_dim=128,
    vocab=128256, source="meta-llama/Llama-3.1-70B-Instruct config.json (70.6 B parameters, BF16)")

H100_SXM = GPUProfile(
    name="h100-sxm", peak_flops=989.4e12, memory_bandwidth=3.35e12, memory_bytes=80 * 10**9,
    interconnect_bandwidth=450e9, idle_w=72.0, min_power_limit_w=200.0, max_power_limit_w=700.0,
    max_sm_clock_hz=1.98e9,
    source="NVIDIA H100 SXM5 datasheet: 989.4 TFLOP/s dense BF16, 3.35 TB/s HBM3, 80 GB, NVLink 900 GB/s "
           "(450 GB/s each way), up to 700 W. Read through NVML (benchmarks/h100_profile.py): 200-700 W limit "
           "range, 1980 MHz max SM clock (the lent SXM machine, an H200 of the same board power envelope, "
           "2026-11-27); ~72 W idle on an H100 SXM5 (benchmarks/RESULTS.md)")

MODELS = {m.name: m for m in (LLAMA_3_1_8B, LLAMA_3_1_70B)}
GPUS = {g.name: g for g in (H100_SXM,)}


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
