"""The simulator's calibration against the ML.ENERGY reference table (mlenergy_reference.csv).

    python benchmarks/calibrate.py            # the table side by side, with the shipped constants
    python benchmarks/calibrate.py --fit 300  # refit the constants (needs scipy), then the table

Each row is a closed-loop chat run of the load generator's synthetic workload (all requests at
t=0, max(4 x batch, 200) requests) through the simulated engine in virtual time, measured by the
load generator's own window and energy code. The fit minimises the squared log errors of J/token,
median ITL, average power and tokens/s over all rows, plus 5 x the worst one squared, with every
constant kept inside a physically plausible range (BOUNDS)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import multiprocessing
from pathlib import Path

from jouletrace.loadgen.tasks import task
from jouletrace.simulator.lengths import OutputLengths
from jouletrace.simulator.perf import Calibration
from jouletrace.simulator.profiles import H100_SXM, LLAMA_3_1_8B
from jouletrace.simulator.whatif import run_point

REFERENCE = Path(__file__).with_name("mlenergy_reference.csv")
KEYS = ("energy_per_token_j", "median_itl_ms", "avg_power_w", "tokens_per_s")
BOUNDS = {
    "memory_efficiency": (0.5, 0.9),
    "compute_efficiency": (0.15, 0.8),
    "layer_overhead_s": (0.2e-3 / 32, 5e-3 / 32),
    "sequence_overhead_s": (0.0, 60e-6),
    "clock_power_w": (50.0, 300.0),
    "memory_power_w": (50.0, 300.0),
    "compute_power_w": (100.0, 700.0),
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


def errors(pool, cal: Calibration, rows: list[dict]) -> list[list[float]]:
    sims = pool.map(simulate_row, [(int(r["max_num_seqs"]), cal) for r in rows])
    return [[math.log(s[k] / r[k]) for k in KEYS] for s, r in zip(sims, rows)]


def fit(pool, rows: list[dict], evaluations: int) -> Calibration:
    import numpy as np
    from scipy.optimize import minimize

    names = list(BOUNDS)
    lo, hi = np.array([BOUNDS[n][0] for n in names]), np.array([BOUNDS[n][1] for n in names])
    start = np.array([getattr(Calibration(), n) for n in names])

    def constants(z):  # every z maps inside the bounds
        return Calibration(**dict(zip(names, lo + (hi - lo) / (1 + np.exp(-z)))))

    def loss(z):
        e = np.array(errors(pool, constants(z), rows))
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
        cal = fit(pool, rows, args.fit) if args.fit else Calibration()
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
