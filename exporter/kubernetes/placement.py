"""Node mode: which of the exporter's GPUs each pod on the node holds, kept in the ledger.

Every `refresh_s` the kubelet's PodResources API lists the node's containers and their GPU ids;
each pod (`namespace/name`) is placed on the exporter's GPUs whose UUIDs it holds, and the ledger
splits each GPU's energy among the requests of the pods placed on it (ledger.py). A GPU shared
by time-slicing appears under several pods: the NVIDIA device plugin names its replicas
`<uuid>::<n>`, read here as the GPU `<uuid>`. When the kubelet does not answer, the last
placement stays and the failure is counted.

Spans name their pod through the resource attributes `k8s.namespace.name` and `k8s.pod.name`
(set from the downward API; see k8s/README.md). `holders`, `gpu_uuids` and `refreshes` are
rendered by jouletrace.exporter.sinks.prometheus.placement.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from typing import Callable

from jouletrace.exporter.kubernetes.podresources import ContainerGPUs, PodResourcesError, list_gpus
from jouletrace.exporter.ledger.ledger import Ledger

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Holder:
    """A container holding one of the exporter's GPUs (ledger index `gpu`)."""

    gpu: int
    namespace: str
    pod: str
    container: str


def gpu_uuid(device_id: str) -> str:
    """The GPU a PodResources device id names: a time-slicing replica `<uuid>::<n>` is `<uuid>`."""
    return device_id.split("::", 1)[0]


def holders_of(containers: list[ContainerGPUs], gpu_uuids: list[str]) -> list[Holder]:
    """The containers holding the exporter's GPUs (`gpu_uuids`, in ledger order), one per GPU held."""
    index = {uuid: i for i, uuid in enumerate(gpu_uuids)}
    out: set[Holder] = set()
    for c in containers:
        for device_id in c.device_ids:
            g = index.get(gpu_uuid(device_id))
            if g is not None:
                out.add(Holder(g, c.namespace, c.pod, c.container))
    return sorted(out, key=dataclasses.astuple)


def pod_placement(holders: list[Holder]) -> dict[str, list[int]]:
    """Each pod (`namespace/name`) and the ledger GPUs its containers hold."""
    pods: dict[str, list[int]] = collections.defaultdict(list)
    for h in holders:
        gpus = pods[f"{h.namespace}/{h.pod}"]
        if h.gpu not in gpus:
            gpus.append(h.gpu)
    return dict(pods)


class PodPlacement:
    """Keeps `ledger`'s placement in step with the kubelet; `run(stop)` refreshes on a thread."""

    def __init__(self, ledger: Ledger, gpu_uuids: Callable[[], list[str]], socket_path: str, refresh_s: float,
                 lister: Callable[[str], list[ContainerGPUs]] = list_gpus):
        """`gpu_uuids` gives the UUIDs of the ledger's GPUs, asked at every refresh (a device file's
        GPUs are named once it appears)."""
        self.ledger = ledger
        self._gpu_uuids = gpu_uuids
        self.gpu_uuids: list[str] = []  # as of the last refresh
        self.socket_path = socket_path
        self.refresh_s = refresh_s
        self._list = lister
        self.holders: list[Holder] = []
        self.refreshes: collections.Counter[str] = collections.Counter()  # "ok" or "error"

    def refresh(self) -> None:
        """One refresh; a kubelet that does not answer leaves the last placement in force."""
        try:
            containers = self._list(self.socket_path)
        except PodResourcesError as exc:
            self.refreshes["error"] += 1
            log.warning("pod placement not refreshed: %s", exc)
            return
        self.gpu_uuids = list(self._gpu_uuids())
        holders = holders_of(containers, self.gpu_uuids)
        self.ledger.set_placement(pod_placement(holders))
        if holders != self.holders:
            log.info("pod placement: %s", "; ".join(f"GPU {h.gpu}: {h.namespace}/{h.pod}" for h in holders) or "none")
        self.holders = holders
        self.refreshes["ok"] += 1

    def run(self, stop: threading.Event) -> None:
        while True:
            self.refresh()
            if stop.wait(self.refresh_s):
                return
