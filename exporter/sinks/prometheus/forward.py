"""Span forwarding (`--forward-otlp`, Forwarder.snapshot): every offered span is sent, dropped or
still held; the held bytes, retries, the upstream's state and the delivery delay (seconds)."""

from __future__ import annotations

from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from jouletrace.exporter.sinks.forward import DELAY_BUCKETS_S
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector, cumulative_buckets


class ForwardCollector(FamilyCollector):
    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def families(self):
        return (
            CounterMetricFamily("jouletrace_forward_spans_sent", "Spans forwarded and accepted upstream.",
                                labels=[]),
            CounterMetricFamily("jouletrace_forward_spans_dropped", "Spans not forwarded, by reason: "
                                "buffer_full, rejected (upstream refused, not retryable), partial (refused in "
                                "a partial success), malformed, shutdown.", labels=["reason"]),
            GaugeMetricFamily("jouletrace_forward_spans_held", "Spans held for forwarding (waiting for their "
                              "energy, or for the upstream).", labels=[]),
            GaugeMetricFamily("jouletrace_forward_buffer_bytes", "Bytes of span messages held for forwarding.",
                              labels=[]),
            CounterMetricFamily("jouletrace_forward_retries", "Forwarding calls that failed and were retried.",
                                labels=[]),
            GaugeMetricFamily("jouletrace_forward_up", "0 after a forwarding call failed and until one succeeds.",
                              labels=[]),
            HistogramMetricFamily("jouletrace_forward_delay_seconds", "Seconds from a message's receipt to its "
                                  "delivery upstream (mostly the wait for its spans' energy to settle).", labels=[]),
        )

    def fill(self, sent, dropped, held, buffer, retries, up, delay):
        snap = self.snapshot()
        sent.add_metric([], snap["sent"])
        for reason, n in snap["dropped"].items():
            dropped.add_metric([reason], n)
        held.add_metric([], snap["held_spans"])
        buffer.add_metric([], snap["buffer_bytes"])
        retries.add_metric([], snap["retries"])
        up.add_metric([], 1.0 if snap["up"] else 0.0)
        delay.add_metric([], cumulative_buckets(DELAY_BUCKETS_S, snap["delay_counts"]), snap["delay_sum"])
