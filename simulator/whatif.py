"""Planning by simulation: every (batch size, power limit) of a model on a GPU profile run offline
through the load generator's closed-loop workload, and the choices a deadline and a power budget
leave (provisioning: `jouletrace.planning.provision`, by median ITL)."""

from __future__ import annotations

import dataclasses

from jouletrace.loadgen.plan import Sampling, plan
from jouletrace.loadgen.tasks import TaskSpec

from .engine import Engine
from .lengths import OutputLengths
from .offline import measure, simulate
from .perf import Calibration, PerfModel
from .profiles import GPUProfile, ModelShape


@dataclasses.dataclass(frozen=True)
class Point:
    """One simulated configuration's figures (per replica of `tp` GPUs)."""

    max_num_seqs: int
    power_limit_w: float
    energy_per_token_j: float
    median_itl_ms: float
    avg_power_w: float           # all the replica's GPUs
    tokens_per_s: float
    tokens_per_joule: float      # = tokens/s per W
    mean_running_batch: float
    preemptions: int
    stable: bool


def run_point(model: ModelShape, gpu: GPUProfile, tp: int, spec: TaskSpec, max_num_seqs: int, power_limit_w: float,
              lengths: OutputLengths, num_requests: int | None = None, seed: int = 0,
              calibration: Calibration = Calibration()) -> tuple[Point, dict]:
    """One closed-loop run (all requests at t=0) in virtual time: (its Point, the loadgen's result)."""
    n = num_requests or max(4 * max_num_seqs, 200)
    requests = plan(spec, n, seed, Sampling())
    engine = Engine(PerfModel(model, gpu, tp, calibration), max_num_seqs=max_num_seqs, power_limit_w=power_limit_w)
    result = measure(simulate(engine, requests, [0.0] * n, lengths),
                     {"task": spec.name, "model_id": model.name, "num_prompts": n, "gpu": gpu.name, "tp": tp,
                      "power_limit_w": power_limit_w}, max_num_seqs)
    point = Point(max_num_seqs, power_limit_w, result["energy_per_token_j"], result["median_itl_ms"],
                  result["avg_power_w"], result["window_output_throughput"], result["output_tokens_per_joule"],
                  result["mean_running_batch"], result["preemptions"], result["stable"])
    return point, result


def min_energy(points: list[Point], deadline_ms: float) -> Point | None:
    """The least J/token among configurations whose median ITL meets the deadline."""
    ok = [p for p in points if p.median_itl_ms <= deadline_ms]
    return min(ok, key=lambda p: (p.energy_per_token_j, p.median_itl_ms)) if ok else None


def write_plot(points: list[Point], deadline_ms: float, path, title: str) -> None:
    """J/token against median ITL, one line per power limit through the batch sizes, the deadline
    and its minimum-energy configuration marked; PNG at `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for limit in sorted({p.power_limit_w for p in points}):
        line = sorted((p for p in points if p.power_limit_w == limit), key=lambda p: p.max_num_seqs)
        ax.plot([p.median_itl_ms for p in line], [p.energy_per_token_j for p in line], "o-", ms=3,
                label=f"{limit:g} W")
    ax.axvline(deadline_ms, color="tab:red", linestyle="--", linewidth=1)
    best = min_energy(points, deadline_ms)
    if best is not None:
        ax.scatter([best.median_itl_ms], [best.energy_per_token_j], s=160, facecolors="none", edgecolors="tab:red",
                   linewidths=2, zorder=4)
        ax.annotate(f"ITL <= {deadline_ms:g} ms: batch {best.max_num_seqs} at {best.power_limit_w:g} W",
                    (best.median_itl_ms, best.energy_per_token_j), textcoords="offset points", xytext=(8, 8),
                    fontsize=8, color="tab:red")
    top = max(p.power_limit_w for p in points)
    for p in points:  # the batch sizes, along the highest limit's line
        if p.power_limit_w == top:
            ax.annotate(f"{p.max_num_seqs}", (p.median_itl_ms, p.energy_per_token_j), textcoords="offset points",
                        xytext=(-4, 5), ha="right", fontsize=7, color="tab:gray")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 1.5, 2, 3, 5, 7)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("median ITL (ms); points labelled with their batch size (max_num_seqs)")
    ax.set_ylabel("energy per output token (J)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="power limit", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
