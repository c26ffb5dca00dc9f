"""The exporter's Prometheus registry: one collector per component, registered in exposition order.
Each collector describes its families, so a metric name two of them declare is refused at start."""

from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from jouletrace.exporter.engine import EngineState
from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.gpu.nodepower import NodePower
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.grid import Grid
from jouletrace.exporter.kubernetes.placement import PodPlacement
from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.powercap.advisor import PowerCap
from jouletrace.exporter.sinks.prometheus.attribution import AttributionCollector
from jouletrace.exporter.sinks.prometheus.budget import BudgetCollector
from jouletrace.exporter.sinks.prometheus.engine import EngineCollector
from jouletrace.exporter.sinks.prometheus.forward import ForwardCollector
from jouletrace.exporter.sinks.prometheus.gpu import GPUCollector
from jouletrace.exporter.sinks.prometheus.grid import GridCollector
from jouletrace.exporter.sinks.prometheus.info import InfoCollector
from jouletrace.exporter.sinks.prometheus.intake import IntakeCollector
from jouletrace.exporter.sinks.prometheus.placement import PlacementCollector
from jouletrace.exporter.sinks.prometheus.powercap import PowerCapCollector
from jouletrace.exporter.sinks.prometheus.settlement import SettlementCollector


def collectors(samplers: list[GPUSampler], ledger: Ledger, intake_snapshot: Callable[[], dict], *,
               engine_states: Callable[[], Sequence[EngineState]] = tuple, powercap: PowerCap | None = None,
               forward_snapshot: Callable[[], dict] | None = None, placement: PodPlacement | None = None,
               selection: Selection = Selection(), config_reloads: Mapping[str, int] | None = None,
               node_name: str = "", grid: Grid | None = None, node_power: NodePower | None = None,
               topology: Mapping[str, str] | None = None,
               clock: Callable[[], float] = time.time) -> list[Collector]:
    """The components' collectors; span forwarding, power capping, node mode, cost and emissions
    (`grid`) and the power-budget series (`node_power`, with the node's `topology`) only where given."""
    out = [GPUCollector(samplers, ledger, clock), AttributionCollector(samplers, ledger),
           SettlementCollector(samplers, ledger),
           EngineCollector(engine_states, ledger.completion_tokens), IntakeCollector(intake_snapshot),
           InfoCollector(samplers, selection, config_reloads if config_reloads is not None else {},
                         node_name)]
    if forward_snapshot is not None:
        out.append(ForwardCollector(forward_snapshot))
    if powercap is not None:
        out.append(PowerCapCollector(powercap))
    if placement is not None:
        out.append(PlacementCollector(placement))
    if grid is not None:
        out.append(GridCollector(grid, samplers, ledger))
    if node_power is not None:
        out.append(BudgetCollector(node_power, node_name, topology or {}, clock))
    return out


def build_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """A registry of `collectors`; raises ValueError when two describe the same metric name."""
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return registry
