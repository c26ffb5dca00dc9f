"""Span intake throughput on one core: OTLP/HTTP protobuf (or OTLP/gRPC) with attribution on, vs a
bare parse loop.

The exporter (`--gpu sim`) runs pinned to core 0; a client process pinned to core 1 posts
pre-built 512-span vLLM-like messages (unique ids, end times just before the send) with 8 requests
in flight, over `--protocol`. The ceiling is `ExportTraceServiceRequest.ParseFromString` of the
same messages, in a loop pinned to core 0, in the same run. Prints one JSON line per repeat and a summary.

    python benchmarks/intake_throughput.py [--messages 200] [--repeats 5] [--protocol http]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import time

import aiohttp
import grpc
from jouletrace.exporter.intake.otlp_grpc import GRPC_METHOD
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from servers import ExporterProcess, http_get  # noqa: E402

from payload import build  # noqa: E402

SPANS = 512


def parse_ceiling(messages: list[bytes]) -> float:
    """Spans per second of a bare parse loop over `messages`."""
    msg = trace_service_pb2.ExportTraceServiceRequest()
    t = time.perf_counter()
    for body in messages:
        msg.ParseFromString(body)
    return len(messages) * SPANS / (time.perf_counter() - t)


async def send_all(send, messages: list[bytes], in_flight: int = 8) -> tuple[float, dict]:
    """Seconds to send every message with `in_flight` at a time through `send` (which answers the
    status as a str), and the count of each status."""
    codes: dict[str, int] = {}
    queue = list(reversed(messages))

    async def worker():
        while queue:
            code = await send(queue.pop())
            codes[code] = codes.get(code, 0) + 1
    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - t, codes


async def post_all(url: str, messages: list[bytes]) -> tuple[float, dict]:
    async with aiohttp.ClientSession(headers={"Content-Type": "application/x-protobuf"}) as session:
        async def send(body: bytes) -> str:
            async with session.post(url, data=body) as r:
                await r.read()
                return str(r.status)
        return await send_all(send, messages)


async def export_all(target: str, messages: list[bytes]) -> tuple[float, dict]:
    async with grpc.aio.insecure_channel(target) as channel:
        export = channel.unary_unary(GRPC_METHOD)

        async def send(body: bytes) -> str:
            try:
                await export(body, timeout=30)
            except grpc.aio.AioRpcError as err:
                return err.code().name
            return "OK"
        return await send_all(send, messages)


def received(exporter: ExporterProcess) -> float:
    text = http_get(exporter.url("/metrics"))[1]
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("jouletrace_model_requests_total") or line.startswith("jouletrace_requests_pending "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200, help="messages per repeat (512 spans each)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[0], cores[-1]
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.7", "--settle-delay", "1", "--counter-interval", "1",
                               "--max-pending", "10000000", "--log-level", "warning")
    os.sched_setaffinity(exporter.proc.pid, {server_core})
    if args.protocol == "http":
        url = f"http://127.0.0.1:{exporter.http_port}/v1/traces"
        send_all_messages = functools.partial(post_all, url)
    else:
        send_all_messages = functools.partial(export_all, f"127.0.0.1:{exporter.grpc_port}")
    runs = []
    try:
        for _ in range(args.repeats):
            os.sched_setaffinity(0, {client_core})
            now = time.time()
            messages = [build(SPANS, now - 0.5 + i * SPANS * 0.0001, spacing_s=0.0001) for i in range(args.messages)]
            seconds, codes = asyncio.run(send_all_messages(messages))
            ours = args.messages * SPANS / seconds
            os.sched_setaffinity(0, {server_core})
            ceiling = statistics.median(parse_ceiling(messages) for _ in range(3))
            run = {"spans_per_s": ours, "parse_ceiling_spans_per_s": ceiling, "ratio": ours / ceiling, "codes": codes}
            print(json.dumps(run), flush=True)
            runs.append(run)
        time.sleep(4.0)  # let attribution finish the last spans
        attributed = received(exporter)
    finally:
        exporter.stop()
    summary = {"median_spans_per_s": statistics.median(r["spans_per_s"] for r in runs),
               "median_parse_ceiling_spans_per_s": statistics.median(r["parse_ceiling_spans_per_s"] for r in runs),
               "median_ratio": statistics.median(r["ratio"] for r in runs),
               "requests_counted_or_pending": attributed, "spans_sent": args.messages * SPANS * args.repeats}
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
