"""The node's power on the common 100 ms grid, against values computed independently: simulated GPUs
without noise whose power is known in advance, sampled at different phases on a fake clock; the
histogram's energy against the simulated GPUs' exact energy; a GPU that stops answering; the bound of
a group's peak by the sum of its nodes' peaks; and the collector's series.

The grid's times are Unix seconds near 1.8e9, where a double resolves 0.24 us: a 100 ms mean carries
a relative error of a few 1e-6 (REL). A simulated GPU's power changes on 100 ms ticks; sampled in the
middle of its ticks, its timeline is exact at every sample, so the intervals between two samples on
the same side of a load step are exact too."""

import math

import pytest
from prometheus_client.core import Metric
from rig import FakeClock

from jouletrace.exporter.gpu.device import NotSupported
from jouletrace.exporter.gpu.nodepower import BUCKET_FRACTIONS, FALLBACK_MAX_LIMIT_W, NodePower
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.gpu.simulated import SimulatedGPU, wave_load
from jouletrace.exporter.sinks.prometheus.budget import BudgetCollector

IDLE_W, MAX_W = 75.0, 700.0
REL = 1e-5
MID_TICK_S = 0.05


def watts(load: float) -> float:
    return IDLE_W + load * (MAX_W - IDLE_W)


class Node:
    """Simulated GPUs on one fake clock, sampled every 100 ms, GPU i `i * phase_s` after GPU 0."""

    def __init__(self, clock: FakeClock, loads, phase_s: float = 0.0, window_s: float = 10.0, noise: float = 0.0,
                 seed: int = 0):
        self.clock = clock
        self.devices = [SimulatedGPU(i, seed=seed, noise=noise, load=load, clock=clock) for i, load in enumerate(loads)]
        self.samplers = [GPUSampler(d, clock=clock, counter_interval_s=1.0, peak_window_s=window_s)
                         for d in self.devices]
        self.phase_s = phase_s
        self.power = NodePower(self.samplers, window_s=window_s)

    def run(self, seconds: float) -> None:
        """Sample for `seconds`, from the middle of the simulated GPUs' 100 ms ticks on."""
        if not self.samplers[0].timeline.started:
            self.clock.advance(MID_TICK_S)
        for _ in range(int(round(seconds / 0.1))):
            spent = 0.0
            for s in self.samplers:
                s.step()
                self.clock.advance(self.phase_s)
                spent += self.phase_s
            self.clock.advance(0.1 - spent)

    def count(self) -> int:
        return int(self.power.counts.sum())


def run_nodes(nodes, seconds: float) -> None:
    """Nodes on one clock: every GPU sampled in the middle of each 100 ms tick."""
    clock = nodes[0].clock
    clock.advance(MID_TICK_S)
    for _ in range(int(round(seconds / 0.1))):
        t = clock.t
        for node in nodes:
            for s in node.samplers:
                s.step()
        clock.t = t + 0.1


def test_constant_gpus_sum_to_the_node_on_every_interval(clock):
    node = Node(clock, [0.2, 0.6], phase_s=0.03)  # 200 W and 450 W, sampled 30 ms apart
    node.run(20.0)
    node.power.update()
    n = node.count()
    assert 170 <= n <= 200  # 20 s, less the last counter interval
    bounds, counts, sum_w = node.power.histogram()
    assert bounds == tuple(round(f * 2 * MAX_W, 3) for f in BUCKET_FRACTIONS)
    assert counts[bounds.index(700.0)] == n  # 650 W, in (560, 700]
    assert sum_w == pytest.approx(650.0 * n, rel=REL)
    assert node.power.peak_w() == pytest.approx(650.0, rel=REL)
    assert node.power.end == pytest.approx(math.floor(min(s.timeline.settled_until for s in node.samplers) * 10) / 10)


def test_an_update_counts_each_interval_once(clock):
    node = Node(clock, [0.2, 0.6], phase_s=0.03)
    node.run(10.0)
    node.power.update()
    first, end = node.count(), node.power.end
    node.power.update()
    assert (node.count(), node.power.end) == (first, end)
    node.run(5.0)
    node.power.update()
    assert node.power.end - end >= 3.0
    assert node.count() - first == round((node.power.end - end) / 0.1)


def test_a_step_shows_in_the_peak_for_a_window(clock):
    """GPU 1 at full load (700 W) for 1 s, 5 s in: the node reads 900 W on the 8 intervals inside the
    step, and on each side of each edge, where GPU 1's 62.5 W error is that of interpolating its
    energy over a sample interval (50 ms at 450 W, 50 ms at 700 W, taken as 575 W), 712.5 W and
    837.5 W; 650 W elsewhere."""
    t0 = clock.t
    node = Node(clock, [0.2, lambda t: 1.0 if t0 + 5.0 <= t < t0 + 6.0 else 0.6], window_s=10.0)
    node.run(9.0)
    node.power.update()
    assert node.power.peak_w() == pytest.approx(900.0, rel=REL)
    bounds, counts, sum_w = node.power.histogram()
    n = node.count()
    assert dict(zip(bounds, counts)) == {**dict.fromkeys(bounds, 0), 700.0: n - 12, 840.0: 4, 980.0: 8}
    assert sum_w == pytest.approx(650.0 * (n - 12) + 2 * (712.5 + 837.5) + 8 * 900.0, rel=REL)
    node.run(10.0)
    node.power.update()
    assert node.power.peak_w() == pytest.approx(650.0, rel=REL)  # the step left the window


def test_the_histogram_sum_is_the_gpus_energy(clock):
    """Noisy loads out of phase: `_sum` times 100 ms is the energy of the GPUs over the intervals counted."""
    origin = clock.t
    node = Node(clock, [lambda t: wave_load(t, 7.0), lambda t: wave_load(t + 3.0, 11.0)], noise=0.02, seed=5)
    node.run(60.0)
    node.power.update()
    end = node.power.end
    start = end - node.count() * 0.1
    assert start >= origin
    true_j = sum(d.true_energy_j(end) - d.true_energy_j(start) for d in node.devices)
    assert node.power.sum_w * 0.1 == pytest.approx(true_j, rel=2e-3)


def test_a_gpu_that_stops_answering_counts_nothing_past_its_last_reading_and_all_of_them_no_peak(clock):
    node = Node(clock, [0.2, 0.6], window_s=5.0)
    node.run(5.0)
    node.devices[1].fail_reads = 10**6
    node.run(15.0)
    node.power.update()
    assert not node.samplers[1].healthy
    assert node.power.end > node.samplers[1].timeline.settled_until + 9.0  # the node kept up with GPU 0
    assert node.power.peak_w() == pytest.approx(200.0, rel=REL)
    node.devices[0].fail_reads = 10**6
    node.run(2.0)
    node.power.update()
    assert node.power.peak_w() is None  # no GPU answers: no peak to speak of


def test_the_sum_of_node_peaks_bounds_the_group_peak(clock):
    """Two nodes whose GPUs peak at different times: the group's true 100 ms peak (the simulated GPUs'
    exact power, on the same grid) is at most the sum of the nodes' peaks, and here well below it."""
    t0 = clock.t
    high = lambda start: (lambda t: 1.0 if (t - t0) % 4.0 >= start and (t - t0) % 4.0 < start + 1.0 else 0.1)
    nodes = [Node(clock, [high(0.0), high(0.5)], window_s=8.0), Node(clock, [high(2.0), high(2.5)], window_s=8.0)]
    run_nodes(nodes, 12.0)
    for node in nodes:
        node.power.update()
    end = min(node.power.end for node in nodes)
    ticks = range(round((end - 8.0) * 10), round(end * 10))
    group = max(sum(d.power_at_tick(k) for node in nodes for d in node.devices) for k in ticks)
    peaks = [node.power.peak_w() for node in nodes]
    assert peaks == [pytest.approx(2 * MAX_W, rel=REL)] * 2  # each node's GPUs overlap at full load for 0.5 s
    assert group == pytest.approx(2 * MAX_W + 2 * watts(0.1))
    assert group < sum(peaks)


def test_a_gpu_without_its_highest_limit_counts_the_fallback(clock):
    class NoConstraints(SimulatedGPU):
        def power_limit_constraints_w(self):
            raise NotSupported("power_limit_constraints")

    power = NodePower([GPUSampler(SimulatedGPU(0, clock=clock), clock=clock),
                       GPUSampler(NoConstraints(1, clock=clock), clock=clock)])
    assert power.nameplate_w == MAX_W + FALLBACK_MAX_LIMIT_W


def samples(family: Metric) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for s in family.samples]


def test_the_collector_exports_the_peaks_the_histogram_and_the_topology(clock):
    node = Node(clock, [0.2, 0.6], window_s=10.0)
    collector = BudgetCollector(node.power, "gpu-node-7", {"rack": "r12", "pdu": "b12-1"}, clock)
    gpu_max, node_max, histogram, topology = collector.collect()
    assert (samples(gpu_max), samples(node_max)) == ([], [])  # nothing sampled yet
    assert samples(topology) == [("jouletrace_node_topology_info", {"node": "gpu-node-7", "rack": "r12",
                                                                     "pdu": "b12-1"}, 1.0)]
    node.run(12.0)
    gpu_max, node_max, histogram, _ = collector.collect()
    assert [(labels["gpu"], value) for _, labels, value in samples(gpu_max)] == [("0", 200.0), ("1", 450.0)]
    assert samples(node_max) == [("jouletrace_node_power_max_watts", {"node": "gpu-node-7"}, pytest.approx(650.0, rel=REL))]
    rows = {(name, labels.get("le")): value for name, labels, value in samples(histogram)}
    n = node.count()
    assert rows[("jouletrace_node_power_watts_count", None)] == n > 100
    assert rows[("jouletrace_node_power_watts_bucket", "560.0")] == 0
    assert rows[("jouletrace_node_power_watts_bucket", "700.0")] == rows[("jouletrace_node_power_watts_bucket", "+Inf")] == n
    assert rows[("jouletrace_node_power_watts_sum", None)] == pytest.approx(650.0 * n, rel=REL)
    clock.advance(10.0)  # no sample in the GPUs' window
    gpu_max, *_ = collector.collect()
    assert samples(gpu_max) == []


def test_without_gpus_only_the_topology_is_exported(clock):
    """The GPU selection failed closed: no node power, whose buckets would all be 0 W."""
    collector = BudgetCollector(NodePower([]), "gpu-node-7", {"rack": "r12"}, clock)
    assert [len(family.samples) for family in collector.collect()] == [0, 0, 0, 1]
