"""benchmarks/tp_run.py's measurements beside the simulator's prediction of the same steps at the same TP.

    python benchmarks/tp_run_compare.py DIR/tp_run.jsonl [--gpu H100|H200]

For each measured configuration the simulator's performance model (simulator/perf.py, constants
unchanged) predicts the same step of the same shape (the run's ModelShape) at the run's
tensor-parallel degree, on the GPU profile named by the run's device (`--gpu` where the run was on
the CPU) at its measured power limit (the profile's largest without one), with the all-reduces
(`communication=True`) and, as in benchmarks/tp_shard_compare.py, without the per-sequence
sampling and host time (the run samples nothing and replays CUDA graphs). Side by side:

    step ms           the TP step; error = simulated / measured - 1
    all-reduce share  measured with CUDA events around each all-reduce; simulated comm_fraction
    all-reduces ms    the step's all-reduces run alone; simulated 2 x layers + 1 all-reduces
    W step            each GPU's mean POWER_INSTANT over the step phase; simulated step power
    W computing       the compute phase (no all-reduce); simulated power of the step without them
    W waiting         the all-reduce phase; simulated idle + clock power (what a GPU in an
                      all-reduce or waiting on its host draws)
    J/token           the step phase's energy counter, all GPUs / tokens; simulated power x time x TP / tokens

Measured power is "n/a" for a run on the CPU (no NVML). A second table puts jouletrace's energy
(the run's `jouletrace` line) beside each GPU's NVML counter: over the whole run (the window
energy API), attributed to the step spans (the run's deltas of the GPU's attributed energy,
against the GPU's step phases), and per step span summed over the GPUs."""

from __future__ import annotations

import argparse
import json

from tp_shard_compare import PROFILES, gpu_work_only, profile_key, work

from jouletrace.simulator.perf import Calibration, PerfModel
from jouletrace.simulator.profiles import GPUProfile, ModelShape


def err(sim: float, measured: float | None) -> str:
    return "" if not measured else f"{sim / measured - 1:+.0%}"


def watts(gpus: list[dict] | None, phase: str) -> str:
    """Each GPU's mean POWER_INSTANT in `phase`, W, joined."""
    if gpus is None:
        return "n/a"
    return " · ".join("?" if g[phase]["instant_w"] is None else f"{g[phase]['instant_w']:.0f}" for g in gpus)


def steps_table(run: dict, rows: list[dict], gpu: GPUProfile, limit_w: float) -> None:
    shape, tp = ModelShape(**run["shape"]), run["tp"]
    calibration = gpu_work_only(Calibration())
    full = PerfModel(shape, gpu, tp, calibration, communication=True)
    alone = PerfModel(shape, gpu, tp, calibration, communication=False)
    print("| id | ms measured | sim | error | all-reduce share measured | sim | all-reduces ms measured | sim "
          "| W step measured (per GPU) | sim | W computing measured | sim | W waiting measured | sim "
          "| J/token measured | sim | error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        w = work(r)
        cost, compute = full.step(w, limit_w), alone.step(w, limit_w)
        ms = cost.duration_s * 1000
        j_sim = cost.power_w * cost.duration_s * tp / r["tokens"]
        j_meas = r.get("j_per_token")
        print(f"| {r['id']} | {r['step_ms']:.2f} | {ms:.2f} | {err(ms, r['step_ms'])} | "
              f"{r['allreduce_share']:.1%} | {cost.comm_fraction:.1%} | {r['allreduce_ms']:.2f} | "
              f"{full.comm_s(w) * 1000:.2f} | {watts(r['power'], 'step')} | {cost.power_w:.0f} | "
              f"{watts(r['power'], 'compute')} | {compute.power_w:.0f} | {watts(r['power'], 'allreduce')} | "
              f"{full.waiting_power_w(cost.clock_ratio):.0f} | {'n/a' if j_meas is None else f'{j_meas:.3f}'} | {j_sim:.3f} | "
              f"{err(j_sim, j_meas)} |")


def jouletrace_table(jt: dict, rows: list[dict]) -> None:
    """jouletrace's energy beside each GPU's NVML counter ("n/a" where the run read none)."""
    nvml_run = {n["uuid"]: n["energy_j"] for n in jt["nvml_run"] if n["uuid"]}
    nvml_steps: dict[str, float] = {}
    for r in rows:
        for g in r["power"] or []:
            nvml_steps[g["uuid"]] = nvml_steps.get(g["uuid"], 0.0) + g["step"]["energy_j"]

    def pair(jouletrace_j: float, nvml_j: float | None) -> str:
        return f"{jouletrace_j:.1f} | {'n/a' if nvml_j is None else f'{nvml_j:.1f}'} | {err(jouletrace_j, nvml_j)}"

    print(f"\njouletrace at {jt['exporter']}, run of {jt['t1'] - jt['t0']:.1f} s, model {jt['model_name']}: "
          f"{jt['model']['requests']:.0f} requests of {len(rows)} step spans ({jt['spans_late']:.0f} late: part of "
          f"their time split before they came), {jt['model']['energy_j']:.1f} J "
          f"attributed (request histogram: {jt['model']['request_energy_sum_j']:.1f} J in "
          f"{jt['model']['request_energy_count']:.0f})\n")
    print("| GPU | uuid | run J jouletrace | NVML | error | attributed J jouletrace | NVML step phases | error |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for g in jt["gpus"]:
        print(f"| {g['index']} | {g['uuid']} | {pair(jt['run_window'].get(g['uuid'], 0.0), nvml_run.get(g['uuid']))} "
              f"| {pair(g['attributed_j'], nvml_steps.get(g['uuid']))} |")
    print("\n| step span | J jouletrace (all GPUs) | NVML | error |")
    print("|---|---:|---:|---:|")
    nvml_span = {r["id"]: None if r["power"] is None else sum(g["step"]["energy_j"] for g in r["power"]) for r in rows}
    for s in jt["spans"]:
        print(f"| {s['id']} | {pair(sum(s['gpus'].values()), nvml_span.get(s['id']))} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jsonl")
    ap.add_argument("--gpu", choices=sorted(PROFILES), help="the GPU profile (default: the run's device)")
    args = ap.parse_args()
    with open(args.jsonl) as f:
        lines = [json.loads(line) for line in f]
    run = next(x for x in lines if x["kind"] == "run")
    rows = [x for x in lines if x["kind"] == "config"]
    device = run["devices"][0]
    key = args.gpu or profile_key(device["name"])
    if key is None:
        ap.error(f"no GPU profile for the run's device {device['name']!r}: give --gpu")
    gpu = PROFILES[key]
    limit_w = device.get("power_limit_w") or gpu.max_power_limit_w
    print(f"{run['model']} at TP {run['tp']} on {run['tp']} x {device['name']}, {run['backend']}, "
          f"{'CUDA graphs' if run['graphs'] else 'eager'}; simulated on profile {gpu.name} at {limit_w:g} W"
          + ("" if run["device"] == "cuda" else " (a CPU run: its times are not a GPU's, it has no power)") + "\n")
    steps_table(run, rows, gpu, limit_w)
    for jt in (x for x in lines if x["kind"] == "jouletrace"):
        jouletrace_table(jt, rows)


if __name__ == "__main__":
    main()
