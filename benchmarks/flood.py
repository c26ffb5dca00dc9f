"""Span flood at 10x the intake benchmark's rate: what a one-core exporter accepts, refuses (retryably)
and attributes, and its peak memory.

The exporter (`--gpu sim`, `--max-pending 100000`, settle delay 2 s) runs pinned to the first core;
`--clients` processes on the other cores each flood it for `--seconds` with 512-span vLLM-like
messages (fresh ids, current times), `--in-flight` at a time on each of `--protocols`.
The offered rate is the spans of all messages answered per second; the target is 10 x the intake
benchmark's 559,000 spans/s (benchmarks/RESULTS.md). After each repeat the ledger drains and the
requests it counted are compared with the spans accepted. Prints one JSON line per repeat and a
summary of medians.

    python benchmarks/flood.py [--clients 4] [--seconds 10] [--repeats 3] [--protocols http,grpc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
sys.path[:0] = [ROOT, os.path.join(ROOT, "reliability")]
from servers import ExporterProcess, http_get, sum_samples, wait_for  # noqa: E402
from span_load import Stamper, flood, peak_rss_bytes  # noqa: E402

SPANS = 512
TARGET = 10 * 559_000  # spans/s


def client(core: int, http_url: str | None, grpc_target: str | None, seconds: float, in_flight: int, out) -> None:
    os.sched_setaffinity(0, {core})
    tally = asyncio.run(flood(http_url, grpc_target, Stamper(SPANS), seconds, in_flight))
    out.put({"answers": {f"{p} {c}": n for (p, c), n in tally.answers.items()}, "accepted": tally.accepted_spans,
             "retry": tally.retry_spans, "unhinted": tally.without_retry_hint, "seconds": tally.seconds})


def metric(exporter: ExporterProcess, name: str, **labels: str) -> float:
    return sum_samples(http_get(exporter.url("/metrics"), timeout=30)[1], name, **labels)


def one_run(exporter: ExporterProcess, cores: list[int], args) -> dict:
    before = metric(exporter, "jouletrace_model_requests_total")
    out = multiprocessing.Queue()
    http_url = f"http://127.0.0.1:{exporter.http_port}/v1/traces" if "http" in args.protocols else None
    grpc_target = f"127.0.0.1:{exporter.grpc_port}" if "grpc" in args.protocols else None
    procs = [multiprocessing.Process(target=client, args=(core, http_url, grpc_target, args.seconds, args.in_flight, out))
             for core in cores]
    for p in procs:
        p.start()
    tallies = [out.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = max(t["seconds"] for t in tallies)
    accepted, retry = sum(t["accepted"] for t in tallies), sum(t["retry"] for t in tallies)
    answers: dict[str, int] = {}
    for t in tallies:
        for k, n in t["answers"].items():
            answers[k] = answers.get(k, 0) + n
    wait_for(lambda: metric(exporter, "jouletrace_requests_pending") == 0, 120, "the ledger to drain")
    counted = metric(exporter, "jouletrace_model_requests_total") - before
    by_protocol = {p: SPANS * sum(n for k, n in answers.items() if k.startswith(p + " ")) / seconds
                   for p in sorted(args.protocols)}
    return {"offered_spans_per_s": (accepted + retry) / seconds, "offered_spans_per_s_by_protocol": by_protocol,
            "accepted_spans_per_s": accepted / seconds,
            "refused_retryably": retry, "accepted": accepted, "attributed": counted,
            "retryable_without_hint": sum(t["unhinted"] for t in tallies), "answers": answers,
            "peak_rss_mib": peak_rss_bytes(exporter.proc.pid) / 2**20}


def protocols(text: str) -> set[str]:
    chosen = set(text.split(","))
    if not chosen or not chosen <= {"http", "grpc"}:
        raise argparse.ArgumentTypeError(f"expected http, grpc or http,grpc, got {text!r}")
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=16, help="messages in flight per protocol and client")
    ap.add_argument("--protocols", type=protocols, default={"http", "grpc"},
                    help="comma-separated: http, grpc (default both)")
    ap.add_argument("--max-message-bytes", type=int, default=4 << 20,
                    help="the exporter's --max-message-bytes (each intake receives 16 such at once)")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.7", "--settle-delay", "2", "--counter-interval", "1",
                               "--log-level", "warning", "--max-message-bytes", str(args.max_message_bytes))
    os.sched_setaffinity(exporter.proc.pid, {cores[0]})
    client_cores = [cores[1 + i % (len(cores) - 1)] if len(cores) > 1 else cores[0] for i in range(args.clients)]
    runs = []
    try:
        rss_idle = peak_rss_bytes(exporter.proc.pid) / 2**20
        for _ in range(args.repeats):
            run = one_run(exporter, client_cores, args)
            print(json.dumps(run), flush=True)
            runs.append(run)
            time.sleep(1.0)
        alive = exporter.proc.poll() is None
    finally:
        exporter.stop()
    keys = ("offered_spans_per_s", "accepted_spans_per_s", "refused_retryably", "peak_rss_mib")
    summary = {f"median_{k}": statistics.median(r[k] for r in runs) for k in keys}
    summary.update(target_spans_per_s=TARGET, idle_rss_mib=rss_idle, exporter_alive=alive,
                   lost=sum(r["accepted"] - r["attributed"] for r in runs),
                   retryable_without_hint=sum(r["retryable_without_hint"] for r in runs))
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
