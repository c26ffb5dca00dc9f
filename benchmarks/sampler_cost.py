"""Sampler cost on a real GPU: jouletrace's sampler vs naive 10 Hz energy-counter polling, side by side.

Both run at once for `--seconds`, each on its own thread, over the same GPUs; CPU time is each
thread's own (time.thread_time). Accuracy: the sampler's timeline energy over the run vs an
independent counter delta over the same window. Prints one JSON object per repeat and a summary.

    python benchmarks/sampler_cost.py --seconds 20 --repeats 3 [--load SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time

from nvml_reference import counter_edge

from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.gpu.nvml import open_devices
from jouletrace.exporter.gpu.sampler import GPUSampler


def naive_poll(device, stop: threading.Event, out: dict) -> None:
    """Read the energy counter every 100 ms: a 100 ms timeline the direct way."""
    cpu0 = time.thread_time()
    reads = 0
    next_at = time.monotonic()
    while not stop.is_set():
        device.energy_mj()
        reads += 1
        next_at += 0.1
        stop.wait(max(0.0, next_at - time.monotonic()))
    out["cpu"] = time.thread_time() - cpu0
    out["reads"] = reads


def independent(device) -> tuple[float, float]:
    """(time, joules) of a counter update, from the burst reference."""
    return counter_edge(device._handle)


def one_run(devices, seconds: float) -> dict:
    samplers = [GPUSampler(d) for d in devices]
    stop = threading.Event()
    naive_out = [{} for _ in devices]
    threads = [threading.Thread(target=s.run, args=(stop,)) for s in samplers]
    threads += [threading.Thread(target=naive_poll, args=(d, stop, o)) for d, o in zip(devices, naive_out)]
    wall0 = time.time()
    for t in threads:
        t.start()
    time.sleep(6.0)  # the sampler's first settlement
    marks0 = [independent(d) for d in devices]
    time.sleep(seconds)
    marks1 = [independent(d) for d in devices]
    time.sleep(6.0)  # let the timeline settle past the window
    stop.set()
    for t in threads:
        t.join()
    wall = time.time() - wall0
    ours_cpu = sum(s.cpu_seconds for s in samplers)
    naive_cpu = sum(o["cpu"] for o in naive_out)
    errors = []
    for s, (t0, e0), (t1, e1) in zip(samplers, marks0, marks1):
        ours = s.timeline.energy(t0, t1)
        errors.append((ours - (e1 - e0)) / (e1 - e0))
    gpu_seconds = wall * len(devices)
    return {
        "gpus": len(devices),
        "wall_s": round(wall, 2),
        "ours_cpu_s_per_gpu_s": ours_cpu / gpu_seconds,
        "naive_cpu_s_per_gpu_s": naive_cpu / gpu_seconds,
        "ratio_ours_to_naive": ours_cpu / naive_cpu,
        "ours_counter_reads": sum(s.counter_reads for s in samplers),
        "naive_counter_reads": sum(o["reads"] for o in naive_out),
        "energy_error_vs_counter": errors,
        "window_energy_j": [e1 - e0 for (_, e0), (_, e1) in zip(marks0, marks1)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpus", default="all")
    ap.add_argument("--load", type=float, default=0.0, help="also keep GPU 0 busy for this many seconds (torch)")
    args = ap.parse_args()
    devices = open_devices(Selection.parse(args.gpus))
    load = None
    if args.load:
        script = pathlib.Path(__file__).resolve().parents[1] / "tests" / "gpu" / "load.py"
        load = subprocess.Popen([sys.executable, str(script), str(args.load)], env=dict(os.environ))
        time.sleep(3.0)
    runs = []
    for _ in range(args.repeats):
        run = one_run(devices, args.seconds)
        print(json.dumps(run), flush=True)
        runs.append(run)
    if load:
        load.wait()
    summary = {
        "median_ours_cpu_s_per_gpu_s": statistics.median(r["ours_cpu_s_per_gpu_s"] for r in runs),
        "median_naive_cpu_s_per_gpu_s": statistics.median(r["naive_cpu_s_per_gpu_s"] for r in runs),
        "median_ratio_ours_to_naive": statistics.median(r["ratio_ours_to_naive"] for r in runs),
        "max_abs_energy_error": max(abs(e) for r in runs for e in r["energy_error_vs_counter"]),
        "device": devices[0].name,
    }
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
