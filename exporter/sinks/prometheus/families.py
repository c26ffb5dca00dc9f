"""How a collector declares its metric families: once, in `families()`, for both `describe()` (the
families without samples, read by the registry at registration to refuse a duplicated name) and
`collect()` (the same families, filled by `fill()` from the component's state at scrape time).

A renamed counter keeps its old name for one release: `deprecated_counter` is that family, whose HELP
names the new one; the collector gives it the same samples as the new name's."""

from __future__ import annotations

import abc
from typing import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class FamilyCollector(Collector):
    """A collector whose subclasses give `families()` and `fill()`."""

    @abc.abstractmethod
    def families(self) -> tuple[Metric, ...]:
        """Fresh families without samples, in exposition order."""

    @abc.abstractmethod
    def fill(self, *families: Metric) -> None:
        """Adds the samples of the state now to `families`, given in `families()`'s order."""

    def describe(self) -> Iterator[Metric]:
        return iter(self.families())

    def collect(self) -> Iterator[Metric]:
        families = self.families()
        self.fill(*families)
        return iter(families)


def cumulative_buckets(bounds: Iterable[float], counts: Iterable[int]) -> list[tuple[str, int]]:
    """A histogram's buckets, (le, cumulative count), from its per-bucket `counts`: one count per
    bound, then one for what lies above every bound (le +Inf)."""
    cumulative, buckets = 0, []
    for bound, n in zip([*bounds, float("inf")], counts):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return buckets


def deprecated_counter(old: str, new: str, labels: Sequence[str]) -> CounterMetricFamily:
    """The counter `old` kept for one release after its rename to `new` (both without `_total`)."""
    return CounterMetricFamily(old, f"DEPRECATED: use {new}_total (the same value); this name goes in the next "
                               "release.", labels=labels)
