"""The exporter's footprint while reasoning requests hold settlement for minutes, at a node's rate.

`jouletrace exporter` over 8 simulated GPUs (`--gpu sim --sim-gpus 8`) gets vLLM-like chat spans
at `--rate` requests/s (messages of rate/10 spans every 0.1 s over OTLP/HTTP, service `chat`), and
a stand-in engine's /metrics (`--engine-metrics`) reports reasoning requests of `--long-s`
seconds, one started every `--long-every` s, running (service `reasoning`); each one's span is sent
when it ends. With in-flight settlement the oldest running reasoning request holds every GPU's
settlement: after `--long-s` the hold stays near `--long-s`, and every chat request of that time
is pending. The exporter's CPU (share of one core, per GPU) and RSS are read from /proc over the
last `--window` s; peak RSS (VmHWM) at the end. `--before DIR` runs the same with the exporter
of another source tree, one after the other.

    python benchmarks/settle_footprint.py --before /tmp/settle-before --out benchmarks/results/settle-footprint
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))
from servers import BackgroundApp, ExporterProcess, http_get, proc_usage, sum_samples  # noqa: E402
from span_load import Stamper, peak_rss_bytes, vllm_message  # noqa: E402

LONG_MODEL = "reasoning"


class LongRequests:
    """Reasoning requests of `seconds`, one started every `every` s from `t0`."""

    def __init__(self, t0: float, seconds: float, every: float):
        self.t0, self.seconds, self.every = t0, seconds, every

    def started(self, t: float) -> int:
        return int((t - self.t0) // self.every) + 1 if t >= self.t0 else 0

    def ended(self, t: float) -> int:
        return self.started(t - self.seconds)

    async def metrics(self, request: web.Request) -> web.Response:
        t = time.time()
        running, done = self.started(t) - self.ended(t), self.ended(t)
        return web.Response(text=f'vllm:num_requests_running{{model_name="{LONG_MODEL}"}} {running}\n'
                                 f'vllm:request_success_total{{model_name="{LONG_MODEL}"}} {done}\n')

    def span(self, i: int) -> bytes:
        """The span of request `i` (from 0), vLLM's layout: prefill 1 s, then decode to the end."""
        msg, ss, span = vllm_message(LONG_MODEL)
        s = ss.spans.add()
        s.CopyFrom(span)
        s.trace_id, s.span_id = os.urandom(16), os.urandom(8)
        start = self.t0 + i * self.every
        s.start_time_unix_nano, s.end_time_unix_nano = int(start * 1e9), int((start + self.seconds) * 1e9)
        times = {"gen_ai.latency.time_in_queue": 0.0, "gen_ai.latency.time_in_model_prefill": 1.0,
                 "gen_ai.latency.time_in_model_decode": self.seconds - 1.0,
                 "gen_ai.latency.time_in_model_inference": self.seconds, "gen_ai.latency.e2e": self.seconds,
                 "gen_ai.latency.time_to_first_token": 1.0}
        for a in s.attributes:
            if a.key in times:
                a.value.double_value = times[a.key]
        return msg.SerializeToString()


async def send(http_url: str, stamper: Stamper, longs: LongRequests, until: float) -> dict:
    """Chat messages every 0.1 s and each reasoning span as its request ends, until `until`."""
    answers: dict[str, int] = {}
    sent_long = 0
    async with aiohttp.ClientSession(headers={"Content-Type": "application/x-protobuf"}) as session:
        async def post(body: bytes) -> None:
            async with session.post(http_url, data=body) as r:
                await r.read()
                answers[str(r.status)] = answers.get(str(r.status), 0) + 1

        tasks = set()
        next_at = time.time()
        while (now := time.time()) < until:
            bodies = [stamper.stamp()]
            while sent_long < longs.ended(now):
                bodies.append(longs.span(sent_long))
                sent_long += 1
            for body in bodies:
                task = asyncio.create_task(post(body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += 0.1
            await asyncio.sleep(max(0.0, next_at - time.time()))
        await asyncio.gather(*tasks)
    return answers


def run_once(code: str | None, args) -> dict:
    longs = LongRequests(time.time() + 5.0, args.long_s, args.long_every)
    app = web.Application()
    app.router.add_get("/metrics", longs.metrics)
    engine = BackgroundApp(app)
    exporter = ExporterProcess("--gpu", "sim", "--sim-gpus", str(args.gpus), "--sim-load", "0.6",
                               "--engine-metrics", engine.url + "/metrics",
                               env={"PYTHONPATH": code, "PYTHONSAFEPATH": "1"} if code else None)
    readings = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(10.0):
            cpu, rss = proc_usage(exporter.proc.pid)
            text = http_get(exporter.url("/metrics"), timeout=30)[1]
            readings.append({"t": time.time(), "cpu_s": cpu, "rss_mib": rss / 2**20,
                             "pending": sum_samples(text, "jouletrace_requests_pending"),
                             "hold_s": sum_samples(text, "jouletrace_settle_hold_seconds", gpu="0")})

    try:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.time()
        answers = asyncio.run(send(f"http://127.0.0.1:{exporter.http_port}/v1/traces",
                                   Stamper(int(args.rate / 10), service="chat"), longs, t0 + args.duration))
        done.set()
        watcher.join()
        text = http_get(exporter.url("/metrics"), timeout=30)[1]
        peak = peak_rss_bytes(exporter.proc.pid) / 2**20
    finally:
        exporter.stop()
        engine.stop()
    steady = [r for r in readings if r["t"] >= t0 + args.duration - args.window]
    cpu = (steady[-1]["cpu_s"] - steady[0]["cpu_s"]) / (steady[-1]["t"] - steady[0]["t"])
    return {"cpu_share_of_one_core": cpu, "cpu_share_per_gpu": cpu / args.gpus,
            "rss_end_mib": readings[-1]["rss_mib"], "rss_peak_mib": peak,
            "pending_max": max(r["pending"] for r in readings), "hold_max_s": max(r["hold_s"] for r in readings),
            "spans_late": sum_samples(text, "jouletrace_spans_late_total"),
            "holds_expired": sum_samples(text, "jouletrace_settle_holds_expired_total"),
            "requests_final": sum_samples(text, "jouletrace_model_requests_total"), "answers": answers,
            "readings": readings}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="chat requests/s over all GPUs")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--long-s", type=float, default=300.0, help="seconds each reasoning request runs")
    p.add_argument("--long-every", type=float, default=30.0, help="seconds between reasoning requests' starts")
    p.add_argument("--duration", type=float, default=420.0, help="seconds of load")
    p.add_argument("--window", type=float, default=120.0, help="last seconds the CPU share is measured over")
    p.add_argument("--before", help="source tree of the exporter to compare with (its root, holding jouletrace/)")
    p.add_argument("--out", required=True, help="directory for footprint.json")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for label, code in {"after": None, **({"before": args.before} if args.before else {})}.items():
        results[label] = run_once(code, args)
        summary = {k: v for k, v in results[label].items() if k != "readings"}
        print(label, json.dumps(summary), flush=True)
    (out / "footprint.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
