"""benchmarks/tp_shard.py's measurements beside the simulator's prediction of the same per-GPU work.

    python benchmarks/tp_shard_compare.py benchmarks/results/tp-shard-h100-2026-12-06/tp_shard.jsonl

For each measured step (one tensor-parallel GPU's slice of Llama-3.1-70B, decode or prefill), the
simulator's performance model (simulator/perf.py with its shipped constants, which
benchmarks/calibrate.py fits to these step times and the Llama-3.1-8B table together) predicts the
same step on the same GPU profile at the measured power limit: the GPU's share of the work alone,
without the all-reduces (`communication=False`) and without the per-sequence sampling and host
time (the measurement samples nothing and replays CUDA graphs on one GPU); the per-layer latency
stays. The measurement's decode attention is not an engine's fused kernel: it writes its scores
(batch x query heads x context) to HBM and reads them back through five unfused passes (bf16
product, float cast, scale, softmax, bf16 cast, then the PV product), 32 bytes per score against
the 512 bytes of K and V per KV head and context token; with 8 query heads per KV head that is half
the KV cache's traffic again, so a decode step here reads 1.5 x its KV cache. Prints a Markdown
table: step time, power (energy counter / time) and SM clock, measured and simulated, and the
errors."""

from __future__ import annotations

import argparse
import dataclasses
import json

from jouletrace.simulator.perf import Calibration, PerfModel, StepCost, StepWork
from jouletrace.simulator.profiles import H100_SXM, H200_SXM, LLAMA_3_1_70B

PROFILES = {"H100": H100_SXM, "H200": H200_SXM}
UNFUSED_SCORES = 1.5   # HBM traffic of the measurement's decode attention / its KV cache's


def gpu_work_only(calibration: Calibration) -> Calibration:
    """`calibration` without the per-sequence traffic outside the roofline (sampling, the host's
    bookkeeping), which a replayed shard on one GPU does not do."""
    return dataclasses.replace(calibration, sequence_bytes=0.0)


def work(row: dict) -> StepWork:
    """The measured step as the engine would describe it."""
    b, ctx, tokens = row["batch"], row["context"], row["tokens"]
    if row["phase"] == "decode":   # one new token per sequence against `context` cached ones, scores unfused
        return StepWork(sequences=b, tokens=b, sampled=b, attended=b * ctx, kv_read=UNFUSED_SCORES * b * ctx)
    return StepWork(sequences=b, tokens=tokens, sampled=b, attended=b * ctx * (ctx + 1) / 2, kv_read=tokens)


def measured_steps(path) -> tuple[dict, list[dict]]:
    """benchmarks/tp_shard.py's output: (the device, the measured steps without the failed ones)."""
    with open(path) as f:
        head, *rows = [json.loads(line) for line in f]
    return head, [r for r in rows if "error" not in r]


def profile_key(device_name: str) -> str | None:
    """The PROFILES key of a device, by its NVML name ("NVIDIA H100 80GB HBM3": H100); None if none."""
    return next((key for key in PROFILES if key in device_name), None)


def predicted_step(head: dict, row: dict, calibration: Calibration) -> StepCost:
    """The simulator's cost of the measured step `row`: its GPU's work alone at the measured limit."""
    device = head["device"]
    gpu = PROFILES[profile_key(device["name"])]
    perf = PerfModel(LLAMA_3_1_70B, gpu, row["tp"], gpu_work_only(calibration), communication=False)
    return perf.step(work(row), device["power_limit_w"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jsonl")
    args = ap.parse_args()
    head, rows = measured_steps(args.jsonl)
    device = head["device"]
    gpu = PROFILES[profile_key(device["name"])]
    print(f"{device['name']} (profile {gpu.name}), limit {device['power_limit_w']:g} W; idle measured "
          f"{head['idle_counter_w']:.0f} W, profile {gpu.idle_w:g} W\n")
    print("| TP | step | batch | context | ms measured | sim | error | W measured | sim | error "
          "| SM MHz measured | sim |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cost = predicted_step(head, row, Calibration())
        ms, watts = cost.duration_s * 1000, cost.power_w
        print(f"| {row['tp']} | {row['phase']} | {row['batch']} | {row['context']} | {row['step_ms']:.1f} | "
              f"{ms:.1f} | {ms / row['step_ms'] - 1:+.0%} | {row['counter_power_w']:.0f} | {watts:.0f} | "
              f"{watts / row['counter_power_w'] - 1:+.0%} | {row['sm_clock_mhz']} | "
              f"{cost.clock_ratio * gpu.max_sm_clock_hz / 1e6:.0f} |")


if __name__ == "__main__":
    main()
