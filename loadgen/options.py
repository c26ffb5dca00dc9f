"""The options of one load-generator run (`loadgen run`, and every point of `loadgen sweep`) and
the RunConfig they give."""

from __future__ import annotations

import argparse
import math

from jouletrace.exporter.grid import GridValues, currency_code, optional_rate

from .arrivals import KINDS
from .datasets import FORMATS
from .plan import DEFAULT_FIM_TEMPLATE, Sampling
from .requests import DIFFUSION_APIS, DiffusionParams
from .runner import RunConfig
from .stats import parse_slos
from .tasks import TASKS


def add_run_options(p: argparse.ArgumentParser, base_url_required: bool = True) -> None:
    """The options of one run (also every point of a sweep)."""
    p.add_argument("--base-url", required=base_url_required, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument("--task", default="chat", help=f"workload: {', '.join(TASKS)}")
    p.add_argument("--num-requests", "-n", type=int, default=100, help="requests to send")
    p.add_argument("--model", help="model name to request (default: the first of /v1/models)")
    p.add_argument("--max-num-seqs", type=int, help="the server's max_num_seqs (batch size): enables the "
                   "steady-state window and the batch stability check")
    p.add_argument("--rate", type=float, default=math.inf, help="requests/s (default inf: all at t=0, closed loop)")
    p.add_argument("--arrival", choices=KINDS, default="poisson", help="open-loop arrival process")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape (1 = Poisson)")
    p.add_argument("--concurrency", type=int, help="at most this many requests in flight")
    p.add_argument("--exporter", help="jouletrace exporter metrics URL (http://host:9464); default: NVML here")
    p.add_argument("--no-energy", action="store_true", help="measure time only")
    p.add_argument("--dataset", help="local dataset file (default: the built-in synthetic workload)")
    p.add_argument("--dataset-format", choices=FORMATS, default="jsonl", help="field mapping of the dataset file")
    p.add_argument("--media-root", help="directory the dataset's image and video paths are relative to "
                   "(default: the dataset file's directory)")
    p.add_argument("--fim-template", default=DEFAULT_FIM_TEMPLATE, help="code task prompt with {prefix} {suffix}")
    p.add_argument("--prompt-scale", type=float, default=1.0, help="multiply synthetic prompt lengths (small models)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of every request")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling top_p of every request")
    p.add_argument("--max-tokens", type=int, help="cap every request's max_tokens below the task's cap")
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly max_tokens (the expected length)")
    p.add_argument("--no-stream", action="store_true", help="non-streaming requests (no TTFT/ITL)")
    p.add_argument("--goodput", nargs="+", help="SLOs in ms: ttft:MS tpot:MS e2el:MS")
    p.add_argument("--percentiles", default="50,90,95,99", help="comma-separated latency percentiles")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset sample, the synthetic prompts and "
                   "the arrival times (and of xDiT's generation)")
    p.add_argument("--otlp-endpoint", help="send the client spans here (grpc://host:4317 or http://host:4318/v1/traces)")
    p.add_argument("--request-timeout", type=float, default=3600.0, help="per request, s")
    p.add_argument("--metrics-url", help="engine /metrics to scrape (default: <base-url>/metrics)")
    p.add_argument("--energy-wait", type=float, default=180.0, help="s to wait for the exporter to measure the window")
    p.add_argument("--diffusion-api", choices=DIFFUSION_APIS, default="openai", help="image/video tasks: OpenAI "
                   "images + async video job API, or xDiT's HTTP service (/generate)")
    p.add_argument("--size", default="1024x1024", help="image/video WxH")
    p.add_argument("--seconds", default="4", help="video length, s (OpenAI video API)")
    p.add_argument("--steps", type=int, help="num_inference_steps (default: the server's)")
    p.add_argument("--poll-interval", type=float, default=1.0, help="video job status poll interval, s")
    p.add_argument("--fetch-content", action="store_true", help="download each finished video once")
    p.add_argument("--electricity-price", type=optional_rate, help="electricity price per kWh in --currency: "
                   "adds cost per million output tokens, per image or per video to the result")
    p.add_argument("--currency", type=currency_code, default="", help="ISO 4217 code of --electricity-price's "
                   "currency (USD, EUR)")
    p.add_argument("--grid-carbon-intensity", type=optional_rate, help="grid carbon intensity, grams CO2e per kWh: "
                   "adds grams CO2e per million output tokens, per image or per video to the result")
    p.add_argument("--out", default="loadgen-results", help="directory for the result JSON and summary.csv")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_config(args: argparse.Namespace) -> RunConfig:
    """RunConfig from the parsed options; ValueError with a one-line reason."""
    for name in ("num_requests", "max_num_seqs", "concurrency", "max_tokens"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    grid = GridValues(args.electricity_price, args.currency, args.grid_carbon_intensity).check()
    try:
        percentiles = tuple(float(p) for p in args.percentiles.split(","))
    except ValueError:
        raise ValueError(f"--percentiles: {args.percentiles!r} is not a list of numbers") from None
    return RunConfig(
        base_url=args.base_url, task=args.task, num_requests=args.num_requests, model=args.model,
        max_num_seqs=args.max_num_seqs, rate=args.rate, arrival=args.arrival, burstiness=args.burstiness,
        concurrency=args.concurrency, exporter=args.exporter, no_energy=args.no_energy, dataset=args.dataset,
        dataset_format=args.dataset_format, media_root=args.media_root, fim_template=args.fim_template,
        prompt_scale=args.prompt_scale,
        sampling=Sampling(args.temperature, args.top_p, args.ignore_eos, args.max_tokens),
        stream=not args.no_stream, seed=args.seed, slos=parse_slos(args.goodput), percentiles=percentiles,
        out_dir=args.out, otlp_endpoint=args.otlp_endpoint, request_timeout_s=args.request_timeout,
        metrics_url=args.metrics_url, progress=not args.quiet, energy_wait_s=args.energy_wait,
        diffusion=DiffusionParams(api=args.diffusion_api, size=args.size, seconds=args.seconds, steps=args.steps,
                                  seed=args.seed if args.diffusion_api == "xdit" else None,
                                  poll_interval_s=args.poll_interval,
                                  fetch_content=args.fetch_content),
        grid=grid)
