"""The inference servers' own series (`--engine-metrics`), beside the energy: whether each engine
answers, its batch and queue, KV-cache use and token counters, and the span/engine token ratio."""

from __future__ import annotations

from typing import Callable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jouletrace.exporter.engine import GAUGES, UP, EngineState, span_token_ratio
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector

ENGINE_LABELS = ("engine", "model")


class EngineCollector(FamilyCollector):
    def __init__(self, states: Callable[[], Sequence[EngineState]], span_tokens: Callable[[str], float]):
        """`states()`: the engine scraper's states now (a reload replaces the scraper); `span_tokens(model)`:
        the output tokens seen in spans."""
        self.states = states
        self.span_tokens = span_tokens

    def families(self):
        lab = ENGINE_LABELS
        return (
            GaugeMetricFamily("jouletrace_engine_up", "1 while the engine's metrics endpoint answers.",
                              labels=["engine"]),
            CounterMetricFamily("jouletrace_engine_scrape_failures", "Failed engine scrapes by reason "
                                "(down, slow, garbage).", labels=["engine", "reason"]),
            GaugeMetricFamily("jouletrace_engine_requests_running", "Requests in the engine's running batch.",
                              labels=lab),
            GaugeMetricFamily("jouletrace_engine_requests_waiting", "Requests waiting in the engine's queue.",
                              labels=lab),
            GaugeMetricFamily("jouletrace_engine_kv_cache_usage_ratio", "KV-cache usage (0-1).", labels=lab),
            CounterMetricFamily("jouletrace_engine_prompt_tokens", "Prompt tokens the engine counted.", labels=lab),
            CounterMetricFamily("jouletrace_engine_generation_tokens", "Output tokens the engine counted.",
                                labels=lab),
            GaugeMetricFamily("jouletrace_engine_span_token_ratio", "Output tokens seen in spans per output token "
                              "the engine counted since the first scrape: below 1 means spans are missing.",
                              labels=lab),
        )

    def fill(self, up, failures, running, waiting, kv, prompt, generation, ratio):
        for st in self.states():
            answers = st.state == UP
            up.add_metric([st.url], 1.0 if answers else 0.0)
            for reason, n in sorted(st.failures.items()):
                failures.add_metric([st.url, reason], n)
            for model, series in st.values.items():
                labels = [st.url, model]
                for family, key in ((running, "requests_running"), (waiting, "requests_waiting"),
                                    (kv, "kv_cache_usage_ratio"), (prompt, "prompt_tokens"),
                                    (generation, "generation_tokens")):
                    if key in series and (answers or key not in GAUGES):  # a failed engine's gauges are stale
                        family.add_metric(labels, series[key])
                value = span_token_ratio(st, model, self.span_tokens(model))
                if value is not None:
                    ratio.add_metric(labels, value)
