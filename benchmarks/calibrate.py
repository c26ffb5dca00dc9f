"""The simulator's calibration against the ML.ENERGY reference table (mlenergy_reference.csv) and
one tensor-parallel GPU's slice of Llama-3.1-70B measured on an H100 (benchmarks/tp_shard.py).

    python benchmarks/calibrate.py            # the table side by side, with the shipped constants
    python benchmarks/calibrate.py --fit 300  # refit the constants (needs scipy), then the table

Each row of the table is a closed-loop chat run of the load generator's synthetic workload (all
requests at t=0, max(4 x batch, 200) requests) through the simulated Llama-3.1-8B engine on one
H100 in virtual time, measured by the load generator's own window and energy code. Each
measured 70B step is predicted as benchmarks/tp_shard_compare.py predicts it. The fit minimises
the squared log errors of J/token, median ITL, average power and tokens/s over the table's rows
and of the step time over the measured steps, plus 5 x the worst one squared, with every fitted
constant kept inside a physically plausible range (BOUNDS); the others are set."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import multiprocessing
from pathlib import Path

from tp_shard_compare import measured_steps, predicted_step

from jouletrace.loadgen.tasks import task
from jouletrace.simulator.lengths import OutputLengths
from jouletrace.simulator.perf import Calibration
from jouletrace.simulator.profiles import H100_SXM, LLAMA_3_1_8B
from jouletrace.simulator.whatif import run_point

REFERENCE = Path(__file__).with_name("mlenergy_reference.csv")
SHARD = Path(__file__).parent / "results" / "tp-shard-h100-2026-12-06" / "tp_shard.jsonl"
KEYS = ("energy_per_token_j", "median_itl_ms", "avg_power_w", "tokens_per_s")
BOUNDS = {
    "memory_efficiency": (0.5, 0.9),
    "gemm_efficiency": (0.5, 0.95),
    "gemm_half_rows": (0.0, 128.0),
    "layer_overhead_s": (0.2e-3 / 32, 5e-3 / 32),
    "sequence_bytes": (0.0, 200e6),
    "clock_power_w": (50.0, 300.0),
    "memory_power_w": (50.0, 300.0),
    "compute_power_w": (300.0, 2000.0),
    "overlap_loss": (0.0, 1.0),
}


def reference() -> list[dict]:
    with open(REFERENCE) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def simulate_row(args: tuple[int, Calibration]) -> dict:
    batch, cal = args
    point, _ = run_point(LLAMA_3_1_8B, H100_SXM, 1, task("chat"), batch, H100_SXM.max_power_limit_w,
                         OutputLengths(), calibration=cal)
    return {"energy_per_token_j": point.energy_per_token_j, "median_itl_ms": point.median_itl_ms,
            "avg_power_w": point.avg_power_w, "tokens_per_s": point.tokens_per_s}


def errors(pool, cal: Calibration, rows: list[dict], steps: tuple[dict, list[dict]]) -> list[float]:
    """Log errors: the table's four figures per row, then each measured step's time."""
    sims = pool.map(simulate_row, [(int(r["max_num_seqs"]), cal) for r in rows])
    device, measured = steps
    return ([math.log(s[k] / r[k]) for s, r in zip(sims, rows) for k in KEYS]
            + [math.log(predicted_step(device, r, cal).duration_s * 1000 / r["step_ms"]) for r in measured])


def fit(pool, rows: list[dict], steps: tuple[dict, list[dict]], evaluations: int) -> Calibration:
    import numpy as np
    from scipy.optimize import minimize

    names = list(BOUNDS)
    lo, hi = np.array([BOUNDS[n][0] for n in names]), np.array([BOUNDS[n][1] for n in names])
    start = np.array([getattr(Calibration(), n) for n in names])

    def constants(z):  # every z maps inside the bounds
        return Calibration(**dict(zip(names, lo + (hi - lo) / (1 + np.exp(-z)))))

    def loss(z):
        e = np.array(errors(pool, constants(z), rows, steps))
        return float((e ** 2).sum() + 5 * np.abs(e).max() ** 2)

    p = np.clip((start - lo) / (hi - lo), 1e-3, 1 - 1e-3)
    z0 = np.log(p / (1 - p))
    res = minimize(loss, z0, method="Nelder-Mead",
                   options={"maxfev": evaluations, "initial_simplex": np.vstack([z0, z0 + 0.5 * np.eye(len(z0))])})
    return constants(res.x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", type=int, metavar="EVALUATIONS", help="refit the constants first")
    args = ap.parse_args()
    rows = reference()
    with multiprocessing.Pool() as pool:
        cal = fit(pool, rows, measured_steps(SHARD), args.fit) if args.fit else Calibration()
        sims = pool.map(simulate_row, [(int(r["max_num_seqs"]), cal) for r in rows])
    print("constants:", ", ".join(f"{f.name}={getattr(cal, f.name):.4g}" for f in dataclasses.fields(cal)))
    print("| max_num_seqs | J/token study | sim | ITL ms study | sim | power W study | sim | tokens/s study | sim "
          "| worst error |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for r, s in zip(rows, sims):
        errs = [s[k] / r[k] - 1 for k in KEYS]
        worst = max(worst, *map(abs, errs))
        print(f"| {int(r['max_num_seqs'])} | {r['energy_per_token_j']:.4f} | {s['energy_per_token_j']:.4f} | "
              f"{r['median_itl_ms']:.1f} | {s['median_itl_ms']:.1f} | {r['avg_power_w']:.0f} | {s['avg_power_w']:.0f} | "
              f"{r['tokens_per_s']:.0f} | {s['tokens_per_s']:.0f} | {max(errs, key=abs):+.1%} |")
    print(f"worst error over all rows and columns: {worst:.1%}")


if __name__ == "__main__":
    main()
