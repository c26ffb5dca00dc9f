"""One tensor-parallel GPU's share of a Llama-3.1-70B-shaped model, measured on the GPU: step time and power.

    python benchmarks/tp_shard.py --out DIR [--tp 2,4,8] [--quick]

The slice (benchmarks/tp_model.py: `Shard` of the 70B shape, random bf16 weights) runs the engine's
decode and prefill steps through all 80 layers and the LM head. What is NOT run: the all-reduces
after the attention and MLP outputs (no second GPU: benchmarks/tp_run.py runs them on N GPUs),
sampling and the host's scheduling. `--distinct-layers` (default 8) distinct sets of weights and
KV caches are allocated and the 80 layer calls cycle through them, each far larger than the L2
cache; the step is timed over all 80 layers, nothing is scaled.

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
import time
from pathlib import Path

import torch
from nvml_power import Power
from tp_model import Replay, Shard, configurations

from jouletrace.simulator.profiles import LLAMA_3_1_70B


def measure(fn, power: Power, seconds: float) -> dict:
    """`fn` as a CUDA graph replayed for at least `seconds`: step ms, counter and instant power."""
    t0 = time.perf_counter()
    replay = Replay(fn, torch.device("cuda"))
    once = max(1e-4, replay.timed(1))
    replay.timed(max(1, int(0.3 / once)))           # ~0.3 s to reach steady clocks and power
    reps = max(3, int(seconds / once))
    e0 = power.start()
    w0 = time.perf_counter()
    step_s = replay.timed(reps)
    wall = time.perf_counter() - w0
    clock = power.sm_clock_mhz()
    e1, instant = power.stop()
    del replay
    return {"step_ms": step_s * 1000, "replays": reps, "seconds": wall,
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
               "torch": torch.__version__, "layers": LLAMA_3_1_70B.layers, "distinct_layers": args.distinct_layers})
        for tp in (int(t) for t in args.tp.split(",")):
            shard = Shard(LLAMA_3_1_70B, tp, args.distinct_layers, torch.device("cuda"))
            for config, step, inputs in configurations(shard, "quick" if args.quick else "full"):
                run(write, config, functools.partial(step, *inputs), power, args.seconds)
                del inputs
            del shard
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
