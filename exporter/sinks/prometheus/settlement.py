"""Settlement: how long each GPU's energy is held before it is split and why, the lag from a
request's end to its energy being final, holds that ran out and fallbacks to the adaptive delay."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.ledger.settlement import LAG_BUCKETS_S
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector, cumulative_buckets
from jouletrace.exporter.sinks.prometheus.labels import GPU_LABELS, gpu_label_values


class SettlementCollector(FamilyCollector):
    def __init__(self, samplers: list[GPUSampler], ledger: Ledger):
        self.samplers = samplers
        self.ledger = ledger

    def families(self):
        return (
            GaugeMetricFamily("jouletrace_settle_hold_seconds", "How far behind now the GPU's energy is split, at "
                              "the last pass; reason: fixed (--settle-delay), engine (waiting for the requests "
                              "the engine runs), adaptive (a delay from the spans' age).",
                              labels=[*GPU_LABELS, "reason"]),
            HistogramMetricFamily("jouletrace_settle_lag_seconds", "Seconds from a request's end to its energy "
                                  "being final.", labels=[]),
            CounterMetricFamily("jouletrace_settle_holds_expired", "Holds for an engine's running request that "
                                "reached --max-hold (or the pending limit) and were given up.", labels=[]),
            CounterMetricFamily("jouletrace_settle_fallbacks", "Times an engine's scrape could no longer be "
                                "followed and settlement fell back to the adaptive delay, by reason "
                                "(engine_down, engine_restart).", labels=["reason"]),
        )

    def fill(self, hold, lag, expired, fallbacks):
        f = self.ledger.settlement_figures()
        for g, s in enumerate(self.samplers):
            if g in f.holds:
                hold.add_metric([*gpu_label_values(s.device), f.reason], f.holds[g])
        lag.add_metric([], cumulative_buckets(LAG_BUCKETS_S, f.lag_counts), f.lag_sum)
        expired.add_metric([], f.holds_expired)
        for name, n in sorted(f.fallbacks.items()):
            fallbacks.add_metric([name], n)
