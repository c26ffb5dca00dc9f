"""The span intake's counts (IntakeStats.snapshot): spans received, ignored and rejected, and the
OTLP export calls answered, per protocol."""

from __future__ import annotations

from typing import Callable

from prometheus_client.core import CounterMetricFamily

from jouletrace.exporter.sinks.prometheus.families import FamilyCollector


class IntakeCollector(FamilyCollector):
    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def families(self):
        return (
            CounterMetricFamily("jouletrace_spans_received", "Spans received.", labels=["protocol"]),
            CounterMetricFamily("jouletrace_spans_ignored", "Spans received that describe no inference request.",
                                labels=["protocol"]),
            CounterMetricFamily("jouletrace_spans_rejected", "Spans (or whole messages) rejected, by reason.",
                                labels=["protocol", "reason"]),
            CounterMetricFamily("jouletrace_otlp_requests", "OTLP export calls answered, by status code.",
                                labels=["protocol", "code"]),
        )

    def fill(self, received, ignored, rejected, exports):
        snap = self.snapshot()
        for protocol, n in sorted(snap.get("received", {}).items()):
            received.add_metric([protocol], n)
        for protocol, n in sorted(snap.get("ignored", {}).items()):
            ignored.add_metric([protocol], n)
        for (protocol, reason), n in sorted(snap.get("rejected", {}).items()):
            rejected.add_metric([protocol, reason], n)
        for (protocol, code), n in sorted(snap.get("requests", {}).items()):
            exports.add_metric([protocol, str(code)], n)
