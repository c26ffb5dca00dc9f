"""PNG plots of a sweep (matplotlib, Agg backend): J/token against max_num_seqs, and the
time-energy frontier (J/token against median ITL) with the minimum-energy configuration of each
latency deadline marked."""

from __future__ import annotations

import json
from pathlib import Path

from jouletrace.planning import deadline_choices, pareto_frontier

ENERGY_VS_BATCH = "energy_per_token_vs_batch.png"
FRONTIER = "time_energy_frontier.png"
DEFAULT_DEADLINES_MS = (50.0, 100.0, 250.0)


def load_results(results_dir: str | Path) -> list[dict]:
    """The run results (JSON written by `loadgen run` or `sweep`) in `results_dir`, by file name;
    files that are not run results are skipped."""
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "energy_per_token_j" in data and "median_itl_ms" in data:
            data.setdefault("result_file", path.name)
            out.append(data)
    return out


def _plotted(results: list[dict]) -> list[dict]:
    """Completed (not interrupted) results with J/token."""
    return [r for r in results if not r.get("interrupted") and isinstance(r.get("energy_per_token_j"), (int, float))]


def _label(r: dict, by_batch: bool) -> str:
    if by_batch:
        label = str(r["max_num_seqs"])
    else:
        rate = r.get("request_rate")
        label = "closed" if rate in (None, "inf") else f"{float(rate):g}/s"
    return f"{label}, {r['power_limit_w']:g} W" if r.get("power_limit_w") else label


def write_plots(results: list[dict], out_dir: str | Path,
                deadlines_ms=DEFAULT_DEADLINES_MS) -> tuple[list[Path], str]:
    """Writes the PNGs that `results` allow into `out_dir`; returns (paths written, why a plot was
    not written, or "")."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rs = _plotted(results)
    if not rs:
        return [], "no completed result has energy (J/token)"
    written, skipped = [], ""
    batches = [r.get("max_num_seqs") for r in rs]
    by_batch = all(isinstance(b, int) and b > 0 for b in batches) and len(set(batches)) == len(batches)

    if by_batch:
        rb = sorted(rs, key=lambda r: r["max_num_seqs"])
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.plot([r["max_num_seqs"] for r in rb], [r["energy_per_token_j"] for r in rb], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["max_num_seqs"] for r in rb], [str(r["max_num_seqs"]) for r in rb])
        ax.minorticks_off()
        ax.set_xlabel("max_num_seqs (batch size)")
        ax.set_ylabel("energy per output token (J)")
        ax.set_title(_title(rb, "Energy per token vs batch size"))
        ax.grid(True, alpha=0.3)
        for r in rb:
            if not r.get("stable", True):
                ax.annotate("unstable", (r["max_num_seqs"], r["energy_per_token_j"]), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=7, color="tab:red")
        fig.tight_layout()
        written.append(_save(fig, out_dir / ENERGY_VS_BATCH))
        plt.close(fig)
    else:
        skipped = f"{ENERGY_VS_BATCH}: the results do not differ by max_num_seqs"

    pts = [(r.get("median_itl_ms"), r["energy_per_token_j"]) for r in rs]
    front = pareto_frontier(pts)
    if not front:
        return written, (skipped + "; " if skipped else "") + f"{FRONTIER}: no result has a median ITL"
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    usable = [i for i, p in enumerate(pts) if isinstance(p[0], (int, float))]
    ax.scatter([pts[i][0] for i in usable], [pts[i][1] for i in usable], color="tab:gray", zorder=2,
               label="configurations")
    for i in usable:
        ax.annotate(_label(rs[i], by_batch), pts[i], textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="tab:blue", zorder=1,
            label="Pareto frontier")
    ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], color="tab:blue", zorder=3)
    choices = deadline_choices(pts, list(deadlines_ms))
    colors = ["tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    chosen: dict[int, list[float]] = {}  # point -> the deadlines choosing it: one label each, rings nested
    for k, (d, i) in enumerate(sorted(choices.items())):
        c = colors[k % len(colors)]
        ax.axvline(d, color=c, linestyle="--", linewidth=1, zorder=0)
        if i is None:  # stacked, so that close deadlines' labels do not overlap
            ax.annotate(f"{d:g} ms: none", (d, 1), xycoords=("data", "axes fraction"), xytext=(3, -12 - 9 * k),
                        textcoords="offset points", fontsize=7, color=c)
            continue
        x, y = pts[i]
        ax.scatter([x], [y], s=160 * (1 + len(chosen.get(i, ()))), facecolors="none", edgecolors=c, linewidths=2,
                   zorder=4, label=f"ITL <= {d:g} ms: {_label(rs[i], by_batch)}, {y:.3g} J/token")
        chosen.setdefault(i, []).append(d)
    for i, ds in chosen.items():
        ax.annotate(f"<= {', '.join(f'{d:g}' for d in ds)} ms", pts[i], textcoords="offset points", xytext=(6, -14),
                    fontsize=7)
    ax.margins(y=0.12)
    ax.set_xlabel("median ITL (ms)")
    ax.set_ylabel("energy per output token (J)")
    ax.set_title(_title(rs, "Time-energy frontier"))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    written.append(_save(fig, out_dir / FRONTIER))
    plt.close(fig)
    return written, skipped


def _title(rs: list[dict], what: str) -> str:
    models = {str(r.get("model_id") or "") for r in rs}
    tasks = {str(r.get("task") or "") for r in rs}
    tail = ", ".join(x for x in (" / ".join(sorted(models)), " / ".join(sorted(tasks))) if x)
    return f"{what}\n{tail}" if tail else what


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path
