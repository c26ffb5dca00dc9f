"""The span forwarding target down for minutes under a steady span load.

A `jouletrace exporter` (`--gpu sim`) forwards to a real OTLP/gRPC receiver (tests/test_forward.py's
grpcio TraceService servicer), which is stopped for `--outage` seconds and started again on its
port. Throughout, one message (a vLLM-like request span and its parent, OTLP/gRPC from the
OpenTelemetry SDK) is exported every `--period` seconds. Prints one JSON line: messages sent and
refused by the intake, spans delivered (distinct and duplicated), dropped by reason, the most
bytes held, and the seconds from the target's return to the last held span delivered.

    python benchmarks/forward_outage.py [--outage 180] [--period 0.1] [--buffer-bytes 262144]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: E402
from servers import free_port  # noqa: E402
from test_forward import GrpcReceiver, grpc_sdk_exporter, make_spans, metrics, start_exporter, value  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outage", type=float, default=180.0, help="seconds the target is down")
    ap.add_argument("--period", type=float, default=0.1, help="seconds between two messages")
    ap.add_argument("--buffer-bytes", type=int, default=256 << 10, help="--forward-buffer-bytes")
    args = ap.parse_args()

    port = free_port()
    receivers = [GrpcReceiver(port)]
    exporter = start_exporter("--forward-otlp", f"grpc://127.0.0.1:{port}", "--forward-buffer-bytes",
                              str(args.buffer_bytes))
    sdk = grpc_sdk_exporter(exporter)
    sent = refused = 0
    peak = 0.0

    def load(seconds: float) -> None:
        nonlocal sent, refused, peak
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            spans, _ = make_spans("outage", 1, seconds=0.01)
            sent += 1
            refused += sdk.export(spans) != SpanExportResult.SUCCESS
            if sent % 20 == 0:
                peak = max(peak, value(metrics(exporter), "jouletrace_forward_buffer_bytes"))
            time.sleep(args.period)

    try:
        load(10.0)
        receivers[0].stop()
        load(args.outage)
        receivers.append(GrpcReceiver(port))
        back = time.monotonic()
        load(10.0)
        while value(metrics(exporter), "jouletrace_forward_spans_held") > 0:
            time.sleep(0.2)
        drained_s = time.monotonic() - back
        m = metrics(exporter)
    finally:
        sdk.shutdown()
        exporter.stop()
        receivers[-1].stop()
    delivered = [(s.trace_id, s.span_id) for r in receivers for _, _, s in r.spans()]
    print(json.dumps({
        "outage_s": args.outage, "period_s": args.period, "buffer_bytes": args.buffer_bytes,
        "messages_sent": sent, "messages_refused": refused, "spans_received": value(m, "jouletrace_spans_received_total"),
        "spans_delivered": len(set(delivered)), "spans_delivered_twice": len(delivered) - len(set(delivered)),
        "spans_dropped": {r: value(m, "jouletrace_forward_spans_dropped_total", reason=r)
                          for r in ("buffer_full", "rejected", "partial", "malformed", "shutdown")},
        "peak_buffer_bytes": peak, "retries": value(m, "jouletrace_forward_retries_total"),
        "drained_s_after_return": round(drained_s, 1)}))


if __name__ == "__main__":
    main()
