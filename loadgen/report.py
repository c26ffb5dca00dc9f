"""One run's result (JSON, with `vllm bench serve`'s key names where the quantity is the same)
and a CSV row of its scalars across a sweep.

Energy quantities are over the measurement window: J/token = window energy / output tokens
generated in the window; J/response = J/token x mean output length of the successful requests;
average power = window energy / window duration; tokens per joule = window throughput / average
power. Stability (the study's): window >= 20 s and mean running batch >= 0.85 x max_num_seqs.

Diffusion tasks (images, videos): the generation latency percentiles, the images or videos
completed, and energy per image / video = window energy / items finished in the window. The study
takes the mean over batches of batch energy / batch size; at a fixed concurrency B that is window
energy / items produced in the window.

Cost and emissions, where a price or a carbon intensity is given: the window's J/token, J/image
or J/video in kWh times the price (in `currency`) or the grams CO2e per kWh, per million output
tokens and per image or video. The window energy is every joule the GPUs drew, idle included."""

from __future__ import annotations

import collections
import csv
import datetime
import math
from pathlib import Path

from jouletrace.exporter.grid import PER_MILLION, GridValues, per_kwh

from .client import RequestResult
from .load import LoadOutcome
from .stats import METRICS, good_requests, metric_values, summarize
from .window import Window, tokens_in_window

MIN_WINDOW_S = 20.0
MIN_BATCH_FRACTION = 0.85


def stability(window: Window | None, mean_batch: float | None, max_num_seqs: int | None) -> list[str]:
    """Why the run is unstable by the study's rules (empty: stable)."""
    reasons = []
    if window is None:
        reasons.append("no measurement window")
    else:
        if max_num_seqs and window.rule != "steady_state":
            reasons.append("no steady-state window (whole run measured instead)")
        if window.duration < MIN_WINDOW_S:
            reasons.append(f"window {window.duration:.1f} s < {MIN_WINDOW_S:.0f} s")
    if max_num_seqs:
        if mean_batch is None:
            reasons.append("no vllm:num_requests_running samples in the window")
        elif mean_batch < MIN_BATCH_FRACTION * max_num_seqs:
            reasons.append(f"mean running batch {mean_batch:.1f} < {MIN_BATCH_FRACTION} x max_num_seqs {max_num_seqs}")
    return reasons


def stability_note(result: dict) -> str:
    """`stable`, or `unstable (why)` from a result's stability reasons: for console lines."""
    return "stable" if result["stable"] else f"unstable ({'; '.join(result['unstable_reasons'])})"


def energy_figures(window: Window | None, energy: dict | None, results: list[RequestResult]) -> dict:
    """Window tokens and throughput; with energy also J/token, J/response, W and tokens/J."""
    out: dict = {"window_output_tokens": None, "window_output_throughput": None, "energy_joules": None,
                 "energy_per_token_j": None, "energy_per_response_j": None, "avg_power_w": None,
                 "output_tokens_per_joule": None}
    if window is None:
        return out
    tokens = sum(tokens_in_window(r, window) for r in results)
    out["window_output_tokens"] = tokens
    out["window_output_throughput"] = tokens / window.duration
    if energy is None:
        return out
    joules = float(energy["joules"])
    lens = [r.output_tokens for r in results if r.ok and r.output_tokens is not None]
    out["energy_joules"] = joules
    out["avg_power_w"] = joules / window.duration
    if tokens > 0 and joules > 0:
        out["energy_per_token_j"] = joules / tokens
        out["energy_per_response_j"] = joules / tokens * (sum(lens) / len(lens)) if lens else None
        out["output_tokens_per_joule"] = tokens / joules  # = tokens/s per W
    return out


def items_in_window(r: RequestResult, w: Window) -> int:
    """Images or videos of `r` finished in (w.start, w.end] (a generation yields its items at its end)."""
    if not r.ok or not r.items or r.end is None:
        return 0
    return r.items if w.start < r.end <= w.end else 0


def diffusion_figures(kind: str, window: Window | None, energy: dict | None, results: list[RequestResult],
                      percentiles=(50.0, 90.0, 95.0, 99.0)) -> dict:
    """Items (`kind`: "image" or "video") completed, generation latency percentiles and, with
    energy, J per item over the window (the window energy itself is energy_figures' `energy_joules`)."""
    ok = [r for r in results if r.ok]
    total = sum(r.items or 0 for r in ok)
    out: dict = {"item_kind": kind, f"{kind}s_completed": total, "total_items": total,
                 "item_throughput": None, "window_items": None, "window_item_throughput": None,
                 f"energy_per_{kind}_j": None, "energy_per_item_j": None, "items_per_joule": None}
    out.update(summarize("generation_latency", [r.latency for r in ok if r.latency is not None], percentiles))
    if window is None:
        return out
    items = sum(items_in_window(r, window) for r in results)
    out["window_items"] = items
    out["window_item_throughput"] = items / window.duration
    if energy is not None and items > 0 and float(energy["joules"]) > 0:
        joules = float(energy["joules"])
        out[f"energy_per_{kind}_j"] = out["energy_per_item_j"] = joules / items
        out["items_per_joule"] = items / joules
    return out


def grid_figures(grid: GridValues, res: dict) -> dict:
    """Cost (`cost_per_*`, in the currency of the run's `currency` key) and grams CO2e
    (`co2e_per_*_g`) per million output tokens or, for diffusion tasks, per image or video, from
    `res`'s energy figures: only the keys of what `grid` gives, None where the energy figure is."""
    kind = res.get("item_kind")
    what, joules, scale = ((kind, res.get(f"energy_per_{kind}_j"), 1) if kind else
                           ("million_output_tokens", res.get("energy_per_token_j"), PER_MILLION))
    out: dict = {}
    for key, rate in ((f"cost_per_{what}", grid.electricity_price), (f"co2e_per_{what}_g", grid.grid_carbon_intensity)):
        if rate is not None:
            out[key] = None if joules is None else per_kwh(joules * scale, rate)
    return out


def grid_note(result: dict) -> str:
    """`, <cost> <currency> and <grams> gCO2e per million output tokens` (or per image or video) from
    a result's grid figures, for console lines; empty without them."""
    what = result.get("item_kind") or "million_output_tokens"
    cost, grams = result.get(f"cost_per_{what}"), result.get(f"co2e_per_{what}_g")
    parts = ([] if cost is None else [f"{cost:.4g} {result['currency']}"]) + \
        ([] if grams is None else [f"{grams:.4g} gCO2e"])
    return f", {' and '.join(parts)} per {what.replace('_', ' ')}" if parts else ""


def build_result(outcome: LoadOutcome, meta: dict, window: Window | None, window_reason: str,
                 energy: dict | None, energy_error: str, mean_batch: float | None,
                 max_num_seqs: int | None, slos: dict[str, float], percentiles,
                 grid: GridValues = GridValues()) -> dict:
    """The run's result as a JSON-ready dict. `meta` carries the configuration keys."""
    results = outcome.results
    ok = [r for r in results if r.ok]
    duration = max(1e-9, max((r.end for r in results if r.end), default=outcome.end) - outcome.start)
    total_in = sum(r.prompt_tokens or 0 for r in ok)
    total_out = sum(r.output_tokens or 0 for r in ok)
    errors = collections.Counter(r.error_kind for r in results if not r.ok)
    res = {
        "date": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
        **meta,
        "max_num_seqs": max_num_seqs,
        "duration": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "not_sent": outcome.planned - len(results),
        "interrupted": outcome.interrupted,
        "error_counts": dict(errors),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "request_goodput": good_requests(results, slos) / duration if slos else None,
        "goodput_slos_ms": slos or None,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
    }
    values = metric_values(results)
    for m in METRICS:
        res.update(summarize(m, values[m], percentiles))
    res["window"] = None if window is None else {"start": window.start, "end": window.end,
                                                   "duration_s": window.duration, "rule": window.rule}
    res["window_reason"] = window_reason or None
    res.update(energy_figures(window, energy, results))
    res["energy"] = energy
    res["energy_error"] = energy_error or None
    kind = meta.get("item_kind")
    if kind:
        res.update(diffusion_figures(kind, window, energy, results, percentiles))
        res["item_throughput"] = res["total_items"] / duration
        res["items"] = [r.items for r in results]
        res["polls"] = [r.polls for r in results]
    res.update(grid_figures(grid, res))
    res["mean_running_batch"] = mean_batch
    reasons = stability(window, mean_batch, max_num_seqs)
    res["stable"] = not reasons
    res["unstable_reasons"] = reasons
    res.update({
        "input_lens": [r.prompt_tokens for r in results],
        "output_lens": [r.output_tokens for r in results],
        "ttfts": [r.ttft for r in results],
        "itls": [r.itl for r in results],
        "latencies": [r.latency for r in results],
        "start_times": [r.start for r in results],
        "errors": [r.error for r in results],
        "request_ids": [r.request_id for r in results],
        "response_ids": [r.response_id for r in results],
        "server_request_ids": [r.server_request_id for r in results],
        "trace_ids": [r.trace_id for r in results],
        "span_ids": [r.span_id for r in results],
    })
    return _finite(res)


def _finite(v):
    """JSON has no inf/nan: they become null (request_rate inf is written "inf", as vLLM does)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


CSV_KEYS = ("date", "task", "model_id", "max_num_seqs", "power_limit_w", "request_rate", "max_concurrency",
            "num_prompts", "completed", "failed", "duration", "energy_per_token_j", "energy_per_response_j",
            "avg_power_w", "window_output_throughput", "output_tokens_per_joule", "output_throughput",
            "request_goodput", "median_itl_ms", "p99_itl_ms", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
            "median_e2el_ms", "mean_running_batch", "stable", "result_file", "item_kind", "total_items",
            "energy_per_item_j", "median_generation_latency_ms", "p99_generation_latency_ms")


def append_csv(path: Path, result: dict) -> None:
    """Appends the result's scalars as one row of `path` (header written with the first row)."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: result.get(k) for k in CSV_KEYS})
