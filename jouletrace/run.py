"""`jouletrace run`: the whole pipeline in one command.

By default everything is simulated and embedded: a jouletrace exporter reads the simulated GPU
of a simulated engine (a Llama-3.1-8B shape on an H100 profile) that behaves like vLLM, and the
load generator replays the chat workload at a few batch sizes, restarting the engine with each
`max_num_seqs`. With `--engine-url` the same pipeline measures a real server instead: the exporter
samples the real GPUs (`--gpu auto` or `nvml`), and each batch size becomes a client-side
concurrency limit, since a running server's `max_num_seqs` cannot change.

While it runs, the progress line shows J/token and tokens/s per W, and the exporter serves
`/metrics` for Prometheus. At the end it prints where the results, plots and logs are.

Exit codes: 0 done; 1 a point failed; 2 bad options or the exporter did not start; 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from jouletrace.exporter.config import address
from jouletrace.loadgen.plan import Sampling
from jouletrace.loadgen.plots import write_plots
from jouletrace.loadgen.runner import RunConfig, run, until_signalled
from jouletrace.loadgen.sweep import SweepConfig, parse_list, sweep
from jouletrace.simulator.gpus import install_gpus

DEFAULT_BATCHES = "8,32,96"
DEVICE_FILE = "gpu.dev"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine-url", help="measure this running OpenAI-compatible server instead of the simulated one")
    p.add_argument("--gpu", default="sim", choices=("sim", "auto", "nvml"),
                   help="the exporter's GPU backend; sim (default) needs the simulated engine")
    p.add_argument("--batch-sizes", default=DEFAULT_BATCHES,
                   help="max_num_seqs of the simulated engine, or client concurrency with --engine-url")
    p.add_argument("--requests-per-batch", type=float, default=3.0,
                   help="requests per point, as a multiple of its batch size")
    p.add_argument("--max-tokens", type=int, default=1024, help="output cap per request, tokens")
    p.add_argument("--model", default="llama-3.1-8b", help="simulated model shape (see `jouletrace simulate serve`)")
    p.add_argument("--metrics-addr", default="127.0.0.1:9464", help="the exporter's /metrics address")
    p.add_argument("--otlp-grpc-addr", default="127.0.0.1:4317", help="the exporter's OTLP/gRPC span listener, "
                   "host:port (off: none); the simulated engine sends its spans here")
    p.add_argument("--otlp-http-addr", default="127.0.0.1:4318", help="the exporter's OTLP/HTTP span listener, "
                   "host:port (off: none); the simulated engine's spans go here when --otlp-grpc-addr is off")
    p.add_argument("--engine-port", type=int, default=8000, help="port of the simulated engine")
    p.add_argument("--out", default="jouletrace-run", help="directory of the runs' results, plots and logs "
                   "(each run in a subdirectory named by its start time)")
    p.set_defaults(func=main)


def span_endpoint(grpc_addr: str, http_addr: str) -> str | None:
    """Where an engine on this machine sends its spans: the exporter's OTLP/gRPC listener, else its
    OTLP/HTTP one (`.../v1/traces`); None when both are off. ValueError for a malformed address."""
    for flag, text, path in (("--otlp-grpc-addr", grpc_addr, ""), ("--otlp-http-addr", http_addr, "/v1/traces")):
        try:
            addr = address(text)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{flag}: {e}") from None
        if addr is not None:
            host = "127.0.0.1" if addr[0] in ("0.0.0.0", "::") else addr[0]
            return f"http://{f'[{host}]' if ':' in host else host}:{addr[1]}{path}"
    return None


def _say(msg: str) -> None:
    print(f"jouletrace run: {msg}", file=sys.stderr, flush=True)


class Exporter:
    """The exporter in a subprocess, its output in `log`."""

    def __init__(self, args: list[str], metrics_addr: str, log: Path):
        self.url = f"http://{metrics_addr}"
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "jouletrace", "exporter", "--metrics-addr", metrics_addr,
                                      *args], stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        last = (self.log_path.read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the exporter did not start: {last} (log {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _base(args: argparse.Namespace, out: Path, exporter_url: str) -> RunConfig:
    return RunConfig(base_url="http://unset", task="chat", num_requests=1, exporter=exporter_url,
                     sampling=Sampling(max_tokens=args.max_tokens), out_dir=str(out), energy_wait_s=60.0)


async def _simulated(args, batches: list[int], out: Path, exporter_url: str, stop: asyncio.Event) -> tuple[list[dict], bool]:
    template = (f"{sys.executable} -m jouletrace simulate serve --model {args.model} --port {{port}} "
                f"--max-num-seqs {{max_num_seqs}} --device-file {out / DEVICE_FILE} "
                f"--otlp-traces-endpoint {span_endpoint(args.otlp_grpc_addr, args.otlp_http_addr)}")
    results = []
    for b in batches:  # one sweep per point: each has its own request count
        n = max(b + 2, math.ceil(args.requests_per_batch * b))
        cfg = SweepConfig(base=dataclasses.replace(_base(args, out, exporter_url), num_requests=n),
                          server_cmd=template, batch_sizes=(b,), port=args.engine_port, server_timeout_s=60.0,
                          stop_grace_s=10.0)
        points, interrupted = await sweep(cfg, stop)
        results += [p.result for p in points if p.result is not None]
        if interrupted or any(p.error for p in points):
            return results, interrupted
    return results, False


async def _real(args, batches: list[int], out: Path, exporter_url: str, stop: asyncio.Event) -> tuple[list[dict], bool]:
    results = []
    for b in batches:
        n = max(b + 2, math.ceil(args.requests_per_batch * b))
        cfg = dataclasses.replace(_base(args, out, exporter_url), base_url=args.engine_url, num_requests=n,
                                  concurrency=b, max_num_seqs=b)
        _say(f"concurrency {b}: {n} requests")
        result, _ = await run(cfg, stop)
        results.append(result)
        if result.get("interrupted"):
            return results, True
    return results, False


def main(args: argparse.Namespace) -> int:
    import matplotlib  # noqa: F401  the plots', before the runs: missing, `jouletrace` names its extra
    try:
        batches = parse_list(args.batch_sizes, int, "--batch-sizes")
        if args.gpu == "sim" and args.engine_url:
            raise ValueError("a real engine (--engine-url) runs on real GPUs: use --gpu auto or nvml")
        if args.gpu != "sim" and not args.engine_url:
            raise ValueError(f"--gpu {args.gpu} measures real GPUs: give the engine serving on them (--engine-url)")
        if args.requests_per_batch < 1 or args.max_tokens < 1:
            raise ValueError("--requests-per-batch and --max-tokens must be >= 1")
        if span_endpoint(args.otlp_grpc_addr, args.otlp_http_addr) is None:
            raise ValueError("the exporter needs spans: --otlp-grpc-addr and --otlp-http-addr cannot both be off")
    except ValueError as e:
        _say(str(e))
        return 2
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    exporter_args = ["--counter-interval", "1", "--window", "10", "--shutdown-scrape-wait", "0",
                     "--otlp-grpc-addr", args.otlp_grpc_addr, "--otlp-http-addr", args.otlp_http_addr]
    if args.engine_url:
        exporter_args += ["--gpu", args.gpu, "--engine-metrics", args.engine_url.rstrip("/") + "/metrics"]
    else:
        install_gpus(out / DEVICE_FILE)
        exporter_args += ["--gpu", "sim", "--sim-device-file", str(out / DEVICE_FILE),
                          "--engine-metrics", f"http://127.0.0.1:{args.engine_port}/metrics"]
    exporter = Exporter(exporter_args, args.metrics_addr, out / "exporter.log")
    try:
        exporter.wait_healthy()
    except RuntimeError as e:
        _say(str(e))
        return 2
    what = args.engine_url or f"a simulated {args.model} engine on a simulated H100"
    _say(f"exporter: {exporter.url}/metrics (Prometheus can scrape it); measuring {what} at batch sizes "
         f"{', '.join(map(str, batches))}; spans go to OTLP/gRPC {args.otlp_grpc_addr}, OTLP/HTTP {args.otlp_http_addr}")
    t0 = time.monotonic()
    try:
        work = _real if args.engine_url else _simulated
        results, interrupted = asyncio.run(until_signalled(lambda stop: work(args, batches, out, exporter.url, stop)))
    finally:
        exporter.stop()
    paths, skipped = write_plots(results, out)
    _say(f"done in {time.monotonic() - t0:.0f} s")
    print(f"{'batch':>6} {'J/token':>9} {'tokens/s/W':>10} {'median ITL ms':>13} {'avg W':>7} {'tokens/s':>9}")
    for r in results:
        jpt = r.get("energy_per_token_j")
        print(f"{r['max_num_seqs']:6d} {jpt or math.nan:9.4f} {r.get('output_tokens_per_joule') or math.nan:10.2f} "
              f"{r['median_itl_ms']:13.1f} {r.get('avg_power_w') or math.nan:7.0f} "
              f"{r.get('window_output_throughput') or math.nan:9.0f}")
    print(f"results: {out.resolve() / 'summary.csv'} and one JSON per batch size in {out.resolve()}")
    for p in paths:
        print(f"plot: {p.resolve()}")
    if skipped:
        _say(skipped)
    print(f"logs: {exporter.log_path.resolve()}" + ("" if args.engine_url else f", {out.resolve()}/server-b*.log"))
    if interrupted:
        return 130
    return 0 if len(results) == len(batches) and all(r.get("energy_per_token_j") for r in results) else 1
