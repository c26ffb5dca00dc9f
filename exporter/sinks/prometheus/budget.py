"""The series power budgets are decided on (docs/power-budget.md): each GPU's and the node's windowed
100 ms power peak, the node's 100 ms power histogram, and where the node sits (its topology).

`jouletrace_gpu_power_max_watts`: the greatest power sample of the GPU over the last
`--power-peak-window` seconds before the scrape (its sampler's windowed max), absent without one.
`jouletrace_node_power_max_watts` and `jouletrace_node_power_watts`: the node's power, the sum of
the exporter's GPUs on the common 100 ms grid (exporter/gpu/nodepower.py), brought up to date at each
scrape. `jouletrace_node_topology_info`: 1, with the node's `--topology` keys as labels. Power in W."""

from __future__ import annotations

import time
from typing import Callable, Mapping

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

from jouletrace.exporter.gpu.nodepower import NodePower
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector, cumulative_buckets
from jouletrace.exporter.sinks.prometheus.labels import GPU_LABELS, gpu_label_values


class BudgetCollector(FamilyCollector):
    def __init__(self, node_power: NodePower, node_name: str, topology: Mapping[str, str],
                 clock: Callable[[], float] = time.time):
        """`node_power` over the exporter's GPUs (its samplers give the per-GPU peaks). `node_name`:
        the `node` label. `topology`: topology key -> value (rack, row, pdu, ...)."""
        self.samplers = node_power.samplers
        self.node_power = node_power
        self.node_name = node_name
        self.topology = dict(topology)
        self._clock = clock

    def families(self):
        window = f"{self.node_power.peak.window_s:g}"
        return (
            GaugeMetricFamily("jouletrace_gpu_power_max_watts", f"Greatest 100 ms power sample of the GPU over the "
                              f"last {window} s (--power-peak-window).", labels=list(GPU_LABELS)),
            GaugeMetricFamily("jouletrace_node_power_max_watts", f"Greatest 100 ms power of the node (the sum of the "
                              f"exporter's GPUs on a common 100 ms grid) over the {window} s before the latest "
                              "settled interval.", labels=["node"]),
            HistogramMetricFamily("jouletrace_node_power_watts", "The node's power over each 100 ms interval of the "
                                  "common grid (buckets: fractions of the GPUs' summed highest power limits).",
                                  labels=["node"]),
            InfoMetricFamily("jouletrace_node_topology", "Where the node sits: its --topology keys (rack, row, "
                             "pdu, ...).", labels=["node"]),
        )

    def fill(self, gpu_max, node_max, histogram, topology):
        now = self._clock()
        for s in self.samplers:
            with s.lock:
                peak = s.peak.value(now)
            if peak is not None:
                gpu_max.add_metric(gpu_label_values(s.device), peak)
        topology.add_metric([self.node_name], self.topology)
        if not self.samplers:  # the GPU selection failed closed: no node power to speak of
            return
        self.node_power.update()
        peak = self.node_power.peak_w()
        if peak is not None:
            node_max.add_metric([self.node_name], peak)
        bounds, counts, sum_w = self.node_power.histogram()
        histogram.add_metric([self.node_name], cumulative_buckets(bounds, counts), sum_w)
