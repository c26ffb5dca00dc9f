"""Node mode (PodPlacement): which pods hold each GPU, the energy (J) attributed to each pod's
requests, the spans placed on no GPU of theirs, and the kubelet reads."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jouletrace.exporter.kubernetes.placement import PodPlacement
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector

POD_LABELS = ("k8s_namespace", "k8s_pod")
REFRESH_RESULTS = ("ok", "error")


class PlacementCollector(FamilyCollector):
    def __init__(self, placement: PodPlacement):
        self.placement = placement

    def families(self):
        return (
            GaugeMetricFamily("jouletrace_gpu_pod_info", "1 for each container that holds the GPU (kubelet "
                              "PodResources); several pods on one GPU share it by time-slicing.",
                              labels=["gpu", "uuid", *POD_LABELS, "container"]),
            CounterMetricFamily("jouletrace_pod_energy_joules", "GPU energy attributed to the requests of the pod "
                                "named by their spans; `other` past the pod cap.", labels=POD_LABELS),
            CounterMetricFamily("jouletrace_spans_unplaced", "Request spans whose pod holds none of the node's GPUs "
                                "or that name no pod: attributed across every GPU.", labels=[]),
            CounterMetricFamily("jouletrace_pod_placement_refreshes", "Reads of the kubelet's PodResources API for "
                                "the pod placement, by result.", labels=["result"]),
        )

    def fill(self, holds, energy, unplaced, refreshes):
        p = self.placement
        for h in p.holders:
            holds.add_metric([str(h.gpu), p.gpu_uuids[h.gpu], h.namespace, h.pod, h.container], 1)
        for pod, joules in p.ledger.pod_energy():
            namespace, _, name = pod.rpartition("/")
            energy.add_metric([namespace, name], joules)
        unplaced.add_metric([], p.ledger.spans_unplaced)
        for result in REFRESH_RESULTS:
            refreshes.add_metric([result], p.refreshes[result])
