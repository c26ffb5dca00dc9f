"""The exporter itself: its version and GPU backend, which GPUs it samples and where that choice
came from (or why it could not be made), and its configuration reloads by result."""

from __future__ import annotations

from typing import Mapping

from prometheus_client.core import CounterMetricFamily, InfoMetricFamily

from jouletrace import __version__
from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector
from jouletrace.exporter.sinks.prometheus.labels import backend

RELOAD_RESULTS = ("applied", "restart_needed", "invalid")


class InfoCollector(FamilyCollector):
    def __init__(self, samplers: list[GPUSampler], selection: Selection, config_reloads: Mapping[str, int]):
        """`config_reloads`: result -> count, kept by the daemon."""
        self.samplers = samplers
        self.selection = selection
        self.config_reloads = config_reloads

    def families(self):
        return (
            InfoMetricFamily("jouletrace_build", "jouletrace version and GPU backend.", labels=[]),
            CounterMetricFamily("jouletrace_config_reloads", "Configuration reloads by result.", labels=["result"]),
            InfoMetricFamily("jouletrace_gpu_selection", "Which GPUs are sampled and where the choice came from; "
                             "source=unresolved: this pod's GPUs are unknown and none is sampled (reason says why).",
                             labels=[]),
        )

    def fill(self, build, reloads, selection):
        build.add_metric([], {"version": __version__, "backend": backend(self.samplers)})
        for result in RELOAD_RESULTS:
            reloads.add_metric([result], self.config_reloads.get(result, 0))
        selection.add_metric([], {"source": self.selection.source,
                                  "gpus": ",".join(s.device.uuid for s in self.samplers),
                                  "reason": self.selection.reason})
