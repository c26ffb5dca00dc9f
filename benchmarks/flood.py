"""Span flood at 10x the intake benchmark's rate: what a one-core exporter accepts, refuses (retryably)
and attributes, and its peak memory.

The exporter (`--gpu sim`, settle delay 2 s, `--max-message-bytes` and `--max-pending` as given)
runs with all its threads pinned to the first core; `--clients` processes on the other cores each
flood it for `--seconds` with vLLM-like messages of `--spans` spans (512 by default, the
OpenTelemetry SDK's batch; ~600 bytes a span; fresh ids and current times) on each of `--protocols`:
closed loop, `--in-flight` messages at a time, or with `--rate`, open loop: messages sent at that
rate in all whatever the answers (over at most `--in-flight` HTTP connections per client), each
given up after `--timeout` s. The offered rate is the spans of all messages sent per second; the
target is 10 x the intake benchmark's 559,000 spans/s (benchmarks/RESULTS.md). After each repeat the
ledger drains and the requests it counted are compared with the spans the exporter counted as
accepted. Prints one JSON line per repeat and a summary of medians.

    python benchmarks/flood.py [--clients 4] [--seconds 10] [--repeats 3] [--spans 512]
                               [--protocols http,grpc] [--in-flight 16] [--rate SPANS_PER_S]
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
from servers import ExporterProcess, http_get, proc_usage, sum_samples, wait_for  # noqa: E402
from span_load import Stamper, Tally, exporter_counts, flood, peak_rss_bytes  # noqa: E402

TARGET = 10 * 559_000  # spans/s


def client(core: int, http_url: str | None, grpc_target: str | None, args, out) -> None:
    os.sched_setaffinity(0, {core})
    rate = None if args.rate is None else args.rate / (args.clients * len(args.protocols) * args.spans)
    out.put(asyncio.run(flood(http_url, grpc_target, Stamper(args.spans), args.seconds, args.in_flight, rate,
                              args.timeout)))


def one_run(exporter: ExporterProcess, cores: list[int], args) -> dict:
    accepted_before, counted_before = exporter_counts(exporter)
    out = multiprocessing.Queue()
    http_url = f"http://127.0.0.1:{exporter.http_port}/v1/traces" if "http" in args.protocols else None
    grpc_target = f"127.0.0.1:{exporter.grpc_port}" if "grpc" in args.protocols else None
    procs = [multiprocessing.Process(target=client, args=(core, http_url, grpc_target, args, out))
             for core in cores]
    cpu_before, wall_before = proc_usage(exporter.proc.pid)[0], time.monotonic()
    for p in procs:
        p.start()
    tally = Tally.combined([out.get() for _ in procs])
    cpu_share = (proc_usage(exporter.proc.pid)[0] - cpu_before) / (time.monotonic() - wall_before)
    for p in procs:
        p.join()
    wait_for(lambda: sum_samples(http_get(exporter.url("/metrics"), timeout=30)[1], "jouletrace_requests_pending") == 0,
             120, "the ledger to drain")
    accepted, counted = (now - before for now, before in zip(exporter_counts(exporter), (accepted_before, counted_before)))
    seconds = tally.seconds
    spans = {p: tally.sent_spans(p) for p in sorted(args.protocols)}
    return {"offered_spans_per_s": sum(spans.values()) / seconds,
            "offered_spans_per_s_by_protocol": {p: n / seconds for p, n in spans.items()},
            "answered_spans_per_s": (sum(spans.values()) - tally.unanswered_spans) / seconds,
            "accepted_spans_per_s": accepted / seconds, "refused_retryably": tally.retry_spans,
            "unanswered": tally.unanswered_spans, "accepted": accepted, "attributed": counted,
            "retryable_without_hint": tally.without_retry_hint,
            "answers": {f"{p} {c}": n for (p, c), n in tally.answers.items()},
            "peak_rss_mib": peak_rss_bytes(exporter.proc.pid) / 2**20,
            "rss_after_drain_mib": proc_usage(exporter.proc.pid)[1] / 2**20,
            "exporter_cpu_share": cpu_share}  # of its one core, while the clients ran


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
    ap.add_argument("--spans", type=int, default=512, help="spans per message")
    ap.add_argument("--in-flight", type=int, default=16,
                    help="messages in flight (open loop: HTTP connections) per protocol and client")
    ap.add_argument("--rate", type=float, help="open loop: spans/s offered in all (default: closed loop)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a message waits for its answer")
    ap.add_argument("--protocols", type=protocols, default={"http", "grpc"},
                    help="comma-separated: http, grpc (default both)")
    ap.add_argument("--max-message-bytes", type=int, default=4 << 20,
                    help="the exporter's --max-message-bytes (each intake receives 16 such at once)")
    ap.add_argument("--max-pending", type=int, default=100_000, help="the exporter's --max-pending")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.7", "--settle-delay", "2", "--counter-interval", "1",
                               "--log-level", "warning", "--max-message-bytes", str(args.max_message_bytes),
                               "--max-pending", str(args.max_pending))
    for thread in os.listdir(f"/proc/{exporter.proc.pid}/task"):  # threads started later inherit it
        os.sched_setaffinity(int(thread), {cores[0]})
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
    keys = ("offered_spans_per_s", "answered_spans_per_s", "accepted_spans_per_s", "refused_retryably", "unanswered",
            "peak_rss_mib", "exporter_cpu_share")
    summary = {f"median_{k}": statistics.median(r[k] for r in runs) for k in keys}
    summary.update(target_spans_per_s=TARGET, idle_rss_mib=rss_idle, exporter_alive=alive,
                   lost=sum(r["accepted"] - r["attributed"] for r in runs),
                   retryable_without_hint=sum(r["retryable_without_hint"] for r in runs))
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
