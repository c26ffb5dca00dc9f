"""The exporter itself: its version and GPU backend, which GPUs it samples and where that choice
came from (or why it could not be made), and its configuration reloads by result; and each GPU's
identity under the label names of dcgm-exporter (`UUID`, `Hostname` and its newer spelling
`hostname`) and Kepler (`gpu_uuid`, `node_name`), so their series join on it without label_replace,
and its model name as `gpu_model` (dcgm-exporter's `modelName` is camelCase, which Prometheus's
naming rules refuse; a join brings it from dcgm-exporter's series)."""

from __future__ import annotations

from typing import Mapping

from prometheus_client.core import CounterMetricFamily, InfoMetricFamily

from jouletrace import __version__
from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector
from jouletrace.exporter.sinks.prometheus.labels import GPU_LABELS, backend, gpu_label_values

RELOAD_RESULTS = ("applied", "restart_needed", "invalid")


class InfoCollector(FamilyCollector):
    def __init__(self, samplers: list[GPUSampler], selection: Selection, config_reloads: Mapping[str, int],
                 node_name: str):
        """`config_reloads`: result -> count, kept by the daemon. `node_name`: the node the GPUs are in."""
        self.samplers = samplers
        self.selection = selection
        self.config_reloads = config_reloads
        self.node_name = node_name

    def families(self):
        return (
            InfoMetricFamily("jouletrace_build", "jouletrace version and GPU backend.", labels=[]),
            CounterMetricFamily("jouletrace_config_reloads", "Configuration reloads by result.", labels=["result"]),
            InfoMetricFamily("jouletrace_gpu_selection", "Which GPUs are sampled and where the choice came from; "
                             "source=unresolved: this pod's GPUs are unknown and none is sampled (reason says why).",
                             labels=[]),
            InfoMetricFamily("jouletrace_gpu", "Each GPU's identity under dcgm-exporter's label names (UUID, "
                             "Hostname, hostname) and Kepler's (gpu_uuid, node_name), to join with their series; "
                             "gpu_model: the GPU's model name.", labels=list(GPU_LABELS)),
        )

    def fill(self, build, reloads, selection, gpu):
        build.add_metric([], {"version": __version__, "backend": backend(self.samplers)})
        for result in RELOAD_RESULTS:
            reloads.add_metric([result], self.config_reloads.get(result, 0))
        selection.add_metric([], {"source": self.selection.source,
                                  "gpus": ",".join(s.device.uuid for s in self.samplers),
                                  "reason": self.selection.reason})
        for s in self.samplers:
            d = s.device
            gpu.add_metric(gpu_label_values(d), {"UUID": d.uuid, "Hostname": self.node_name, "hostname": self.node_name,
                                                 "gpu_uuid": d.uuid, "node_name": self.node_name, "gpu_model": d.name})
