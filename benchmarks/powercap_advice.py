"""Power-cap advice on the simulator: a model on a replica of `--tensor-parallel-size` GPUs
(default Llama-3.1-8B on one H100), the chat workload, each batch size at each power limit, then
the advice the exporter and `loadgen advise` give for median-ITL deadlines of 50, 100 and 250 ms.

    python benchmarks/powercap_advice.py --out benchmarks/results/sim-dev-2026-11-27
    python benchmarks/powercap_advice.py --model llama-3.1-70b --gpu h100-sxm --tensor-parallel-size 4 --out DIR

Each configuration is a closed-loop run (all requests at t=0, max(4 x batch, 200) requests) of the
load generator's synthetic chat workload through the simulated engine in virtual time
(simulator/whatif.py), measured by the load generator's own window and energy code; power limits
run over the GPU's range in 50 W steps. The points go through `jouletrace.planning.advise`: per
deadline, the least J/token among all configurations, and for a fixed batch size the least J/token
among its limits, each against the same batch size at the GPU's maximum limit; then against the
least-energy configuration at the maximum (the batch size alone chosen), and with a 10 kW budget
the GPUs x cap that serve the most (whole replicas). Writes powercap_points.csv and
powercap_advice.png, and prints the tables as Markdown."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import multiprocessing
from pathlib import Path

from jouletrace.loadgen.tasks import task
from jouletrace.planning import Deadline, OperatingPoint, Recommendation, advise
from jouletrace.simulator.lengths import OutputLengths
from jouletrace.simulator.profiles import GPUProfile, ModelShape, gpu_profile, model_shape
from jouletrace.simulator.whatif import Point, min_energy, run_point

BATCHES = (8, 32, 64, 128, 256, 512)
DEADLINES_MS = (50.0, 100.0, 250.0)
SHOWN_BATCHES = (64, 256)
BUDGET_W = 10_000.0
POINTS_CSV = "powercap_points.csv"
PLOT = "powercap_advice.png"


@dataclasses.dataclass(frozen=True)
class Replica:
    model: ModelShape
    gpu: GPUProfile
    tp: int

    @property
    def limits(self) -> list[float]:
        return [float(w) for w in range(int(self.gpu.min_power_limit_w), int(self.gpu.max_power_limit_w) + 1, 50)]

    @property
    def top(self) -> float:
        return self.gpu.max_power_limit_w

    def title(self) -> str:
        return f"{self.model.name} on {self.tp} x {self.gpu.name}"


def simulate(args: tuple[Replica, int, float]) -> Point:
    r, batch, limit = args
    return run_point(r.model, r.gpu, r.tp, task("chat"), batch, limit, OutputLengths())[0]


def operating_point(r: Replica, p: Point) -> OperatingPoint:
    return OperatingPoint(r.model.name, p.power_limit_w, p.energy_per_token_j, p.tokens_per_s, p.avg_power_w / r.tp,
                          {"median_itl": p.median_itl_ms}, gpus=r.tp, config=f"max_num_seqs {p.max_num_seqs}",
                          source="simulator")


def rows(r: Replica, points: list[Point]) -> list[tuple[str, Recommendation]]:
    """(which configurations, recommendation) per deadline: any batch size, then SHOWN_BATCHES."""
    scopes = [("any batch", points)] + [(f"batch {b}", [p for p in points if p.max_num_seqs == b])
                                        for b in SHOWN_BATCHES]
    out = []
    for d in DEADLINES_MS:
        for name, pts in scopes:
            (a,) = advise([operating_point(r, p) for p in pts], [Deadline("median_itl", d)])
            out.append((name, a.recommendations[0]))
    return out


def table(r: Replica, recs: list[tuple[str, Recommendation]]) -> str:
    lines = [("| median ITL deadline | configurations | recommended cap | batch | J/token | median ITL ms | tokens/s "
              f"| energy saved vs {r.top:g} W | throughput vs {r.top:g} W |"),
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rec in recs:
        p = rec.point
        if p is None:
            lines.append(f"| {rec.deadline.ms:g} ms | {name} | none: {rec.reason} | | | | | | |")
            continue
        lines.append(f"| {rec.deadline.ms:g} ms | {name} | **{p.power_limit_w:g} W** | {p.config.split()[-1]} | "
                     f"{p.energy_per_token_j:.4f} | {p.latency_ms['median_itl']:.1f} | {p.tokens_per_s:,.0f} | "
                     f"{rec.energy_saving:.1%} | {rec.throughput_change:+.1%} |")
    return "\n".join(lines)


def uncapped_table(r: Replica, points: list[Point], recs: list[tuple[str, Recommendation]]) -> str:
    """Per deadline, the recommendation against the least-energy configuration at the maximum limit
    (the batch size alone chosen, as without power capping), and the budget plan."""
    lines = [(f"| median ITL deadline | best at {r.top:g} W | J/token | tokens/s | recommended | J/token | tokens/s "
              f"| energy saved | throughput | {BUDGET_W / 1000:g} kW: GPUs x cap | tokens/s | at {r.top:g} W |"),
             "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    ops = [operating_point(r, p) for p in points]
    for name, rec in recs:
        if name != "any batch" or rec.point is None:
            continue
        d = rec.deadline
        base = min_energy([p for p in points if p.power_limit_w == r.top], d.ms)
        if base is None:
            continue
        (budget,) = advise(ops, [d], budget_w=BUDGET_W)[0].budget
        (uncapped,) = advise([o for o in ops if o.power_limit_w == r.top], [d], budget_w=BUDGET_W,
                             min_limits=1)[0].budget
        p = rec.point
        lines.append(f"| {d.ms:g} ms | batch {base.max_num_seqs} | {base.energy_per_token_j:.4f} | "
                     f"{base.tokens_per_s:,.0f} | batch {p.config.split()[-1]} at {p.power_limit_w:g} W | "
                     f"{p.energy_per_token_j:.4f} | {p.tokens_per_s:,.0f} | "
                     f"{1 - p.energy_per_token_j / base.energy_per_token_j:.1%} | "
                     f"{p.tokens_per_s / base.tokens_per_s - 1:+.1%} | "
                     f"{budget.gpus} x {budget.point.power_limit_w:g} W (batch {budget.point.config.split()[-1]}) | "
                     f"{budget.tokens_per_s:,.0f} | "
                     f"{uncapped.tokens_per_s:,.0f} ({uncapped.gpus} GPUs) |")
    return "\n".join(lines)


def plot(r: Replica, points: list[Point], recs: list[tuple[str, Recommendation]], path: Path) -> None:
    """J/token and median ITL against the limit, one line per batch size; each deadline's
    recommendation (any batch) circled, the deadlines dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.4))
    for b in BATCHES:
        line = sorted((p for p in points if p.max_num_seqs == b), key=lambda p: p.power_limit_w)
        x = [p.power_limit_w for p in line]
        left.plot(x, [p.energy_per_token_j for p in line], "o-", ms=3, label=f"batch {b}")
        right.plot(x, [p.median_itl_ms for p in line], "o-", ms=3)
    styles = {50.0: ("tab:red", 140), 100.0: ("tab:orange", 300), 250.0: ("tab:green", 520)}
    for name, rec in recs:
        if name != "any batch" or rec.point is None:
            continue
        (c, size), p = styles[rec.deadline.ms], rec.point
        label = f"ITL <= {rec.deadline.ms:g} ms: {p.power_limit_w:g} W, {p.config.replace('max_num_seqs', 'batch')}"
        left.scatter([p.power_limit_w], [p.energy_per_token_j], s=size, facecolors="none", edgecolors=c,
                     linewidths=2, zorder=4, label=label)
        right.scatter([p.power_limit_w], [p.latency_ms["median_itl"]], s=size, facecolors="none", edgecolors=c,
                      linewidths=2, zorder=4)
        right.axhline(rec.deadline.ms, color=c, linestyle="--", linewidth=1)
    left.set_ylabel("energy per output token (J)")
    right.set_ylabel("median ITL (ms)")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("GPU power limit (W)")
        ax.grid(True, alpha=0.3, which="both")
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(f"Power-cap advice: {r.title()} (simulated), chat, closed loop (deadlines dashed)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/sim-dev-2026-11-27")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--model", default="llama-3.1-8b", help="built-in shape or a Hugging Face config.json")
    parser.add_argument("--gpu", default="h100-sxm", help="built-in GPU profile or a JSON profile")
    parser.add_argument("--tensor-parallel-size", "--tp", dest="tp", type=int, default=1, help="GPUs per replica")
    args = parser.parse_args()
    replica = Replica(model_shape(args.model), gpu_profile(args.gpu), args.tp)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with multiprocessing.Pool(args.processes) as pool:
        points = pool.map(simulate, [(replica, b, w) for b in BATCHES for w in replica.limits])
    with open(out / POINTS_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(Point)])
        w.writeheader()
        w.writerows(dataclasses.asdict(p) for p in points)
    recs = rows(replica, points)
    plot(replica, points, recs, out / PLOT)
    print(f"{replica.title()} (simulated)\n")
    print(table(replica, recs))
    print()
    print(uncapped_table(replica, points, recs))
    print(out / POINTS_CSV)
    print(out / PLOT)


if __name__ == "__main__":
    main()
