"""`jouletrace loadgen`: its subcommands wired (`run` here, its options in options.py; `sweep`,
`plot` and `advise` in sweep.py); `run`'s summary line, clean stop on Ctrl-C and exit codes.

Exit codes of `run`: 0 done; 1 the run failed (no request succeeded, or energy was asked for and not
obtained); 2 bad options, bad dataset, unreachable server or no energy source; 130 interrupted
(partial results written)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .datasets import DatasetError
from .energy import EnergyUnavailable
from .options import add_run_options, run_config
from .report import grid_note, stability_note
from .runner import RunConfig, ServerUnreachable, run, until_signalled
from .sweep import add_sweep_parsers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="loadgen_command", required=True)
    p = sub.add_parser("run", help="replay one workload configuration against an OpenAI-compatible server",
                       description="Sends a workload to an OpenAI-compatible server (vLLM) and reports time and "
                                   "energy over the ML.ENERGY steady-state window.")
    add_run_options(p)
    p.set_defaults(func=main)
    add_sweep_parsers(sub)


async def _main(cfg: RunConfig) -> tuple[dict, object]:
    return await until_signalled(lambda stop: run(cfg, stop))


def main(args: argparse.Namespace) -> int:
    try:
        cfg = run_config(args)
        result, path = asyncio.run(_main(cfg))
    except (ValueError, DatasetError, ServerUnreachable, EnergyUnavailable) as e:
        print(f"jouletrace loadgen: {e}", file=sys.stderr)
        return 2
    e = result
    kind = e.get("item_kind")
    if kind:  # diffusion: energy per image or video, generation latency
        energy = f"{e['energy_per_item_j']:.1f} J/{kind}" if e.get("energy_per_item_j") else "no energy"
        latency = f"median generation latency {e['median_generation_latency_ms']:.0f} ms"
    else:
        energy = f"{e['energy_per_token_j']:.4f} J/token" if e.get("energy_per_token_j") else "no energy"
        latency = f"median ITL {e['median_itl_ms']:.1f} ms"
    print(f"jouletrace loadgen: {e['completed']}/{e['num_prompts']} completed, {e['failed']} failed, {energy}"
          f"{grid_note(e)}, {latency}, {stability_note(e)}; {path}", file=sys.stderr)
    if e.get("energy_error"):
        print(f"jouletrace loadgen: energy: {e['energy_error']}", file=sys.stderr)
    print(path)
    if result["interrupted"]:
        return 130
    if e["completed"] == 0 or (e.get("energy_error") and not cfg.no_energy):
        return 1
    return 0
