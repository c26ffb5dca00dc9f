"""The Prometheus collectors: each describes, without samples, exactly the families it collects, and
a metric name that two collectors declare is refused when the registry is built."""

import pytest
from prometheus_client.core import GaugeMetricFamily
from rig import Rig, every_collector

from jouletrace.exporter.sinks.prometheus.families import FamilyCollector
from jouletrace.exporter.sinks.prometheus.registry import build_registry


class Declares(FamilyCollector):
    """A collector of one empty gauge called `name`."""

    def __init__(self, name: str):
        self.name = name

    def families(self):
        return (GaugeMetricFamily(self.name, "a second use of the name", labels=[]),)

    def fill(self, family):
        pass


def heads(families) -> list[tuple[str, str, str]]:
    return [(f.name, f.type, f.documentation) for f in families]


def test_each_collector_describes_the_families_it_collects(clock):
    rig = Rig(clock, gpus=2)
    rig.run(3.0)
    rig.submit([rig.request(0.5, 1.0)])
    rig.run(8.0)
    for c in every_collector(rig):
        described = list(c.describe())
        assert described and not any(f.samples for f in described), type(c).__name__
        assert heads(described) == heads(c.collect()), type(c).__name__


def test_the_registry_collects_every_family_described_once(clock):
    found = every_collector(Rig(clock))
    collected = [f.name for f in build_registry(found).collect()]
    assert collected == [f.name for c in found for f in c.describe()]
    assert len(set(collected)) == len(collected)


@pytest.mark.parametrize("name", ["jouletrace_requests_pending",  # a gauge
                                  "jouletrace_spans_received_total",  # a counter's sample
                                  "jouletrace_build_info",  # an info's
                                  "jouletrace_forward_delay_seconds_bucket",  # a histogram's
                                  "jouletrace_grid_file_read_timestamp_seconds"])  # the last collector's
def test_a_metric_name_declared_twice_is_refused_at_start(clock, name):
    with pytest.raises(ValueError, match=name):
        build_registry([*every_collector(Rig(clock)), Declares(name)])


def test_a_collector_registered_twice_is_refused_at_start(clock):
    gpu = every_collector(Rig(clock))[0]
    with pytest.raises(ValueError, match="jouletrace_gpu_up"):
        build_registry([gpu, gpu])
