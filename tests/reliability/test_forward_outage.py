"""The span forwarding target down for a while under a steady span load: the exporter keeps taking
spans, holds them up to `--forward-buffer-bytes`, drops the oldest past that and counts them, and
delivers the rest once the target is back, each span once.

The outage is shortened to OUTAGE_S (20 s; in production it may last minutes, which
benchmarks/forward_outage.py runs). The target is a real OTLP/gRPC receiver (grpcio with the
official TraceService servicer, tests/test_forward.py), stopped and started again on its port."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace.export import SpanExportResult
from servers import free_port, wait_for
from test_forward import GrpcReceiver, grpc_sdk_exporter, ids, make_spans, metrics, start_exporter, value

OUTAGE_S = 20.0
PERIOD_S = 0.5  # one message (a request span and its parent) every PERIOD_S during the outage
BUFFER_BYTES = 4000  # about a dozen of those messages


def test_spans_outlive_an_outage_of_the_target_within_the_buffer_bound():
    port = free_port()
    first = receiver = GrpcReceiver(port)
    exporter = start_exporter("--forward-otlp", f"grpc://127.0.0.1:{port}", "--forward-buffer-bytes",
                              str(BUFFER_BYTES))
    sdk = grpc_sdk_exporter(exporter)
    messages = []  # the span ids of each message, in the order sent

    def send() -> None:
        spans, _ = make_spans("outage", 1, seconds=0.05)
        assert sdk.export(spans) == SpanExportResult.SUCCESS  # the intake never refuses meanwhile
        messages.append({ids(s) for s in spans})

    try:
        send()
        wait_for(lambda: len(receiver.spans()) == 2, 30, "delivery before the outage")
        receiver.stop()
        before = len(messages)
        end = time.monotonic() + OUTAGE_S
        while time.monotonic() < end:
            send()
            time.sleep(PERIOD_S)
        m = metrics(exporter)
        assert value(m, "jouletrace_forward_up") == 0
        assert 0 < value(m, "jouletrace_forward_buffer_bytes") <= BUFFER_BYTES
        assert value(m, "jouletrace_forward_spans_dropped_total", reason="buffer_full") > 0
        receiver = GrpcReceiver(port)
        wait_for(lambda: value(metrics(exporter), "jouletrace_forward_spans_held") == 0, 60,
                 "the held spans delivered once the target is back")
        m = metrics(exporter)
    finally:
        sdk.shutdown()
        assert exporter.stop() == 0, exporter.output()
        receiver.stop()
    delivered = [(s.trace_id, s.span_id) for r in (first, receiver) for _, _, s in r.spans()]
    assert len(delivered) == len(set(delivered))  # each span once
    lost = [i for i, msg in enumerate(messages) if not msg <= set(delivered)]
    assert all(not (msg & set(delivered)) for i, msg in enumerate(messages) if i in lost)  # whole messages
    received = value(m, "jouletrace_spans_received_total")
    assert received == 2 * len(messages)
    dropped = value(m, "jouletrace_forward_spans_dropped_total")
    assert dropped == value(m, "jouletrace_forward_spans_dropped_total", reason="buffer_full") == 2 * len(lost)
    assert value(m, "jouletrace_forward_spans_sent_total") == len(delivered) == received - dropped
    # oldest first: the lost messages are the first ones of the outage, the newest all arrived
    assert lost == list(range(before, before + len(lost)))
    assert before + len(lost) < len(messages)
