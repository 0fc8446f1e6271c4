"""A Prometheus histogram that takes a whole batch of observations in one call.

Why: the Redis sink observes freshness once per written row, tens of thousands
of rows per second in a live run, and ``Histogram.observe`` takes a lock and
scans the buckets per call (about 5% of the live worker's time, measured with
py-spy). prometheus_client has no bulk observe; its maintainers point to a
custom collector for this (prometheus/client_python#279, #1124), which is what
this is: counts are kept per bucket here and exposed as a normal histogram.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import REGISTRY, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class BatchHistogram(Collector):
    """Unlabelled histogram with ``observe_many``; scraped like ``prometheus_client.Histogram``."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            msg = "buckets must be distinct finite bounds (+Inf is added)"
            raise ValueError(msg)
        self._name = name
        self._doc = documentation
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        """One observation."""
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        """Count every value in the first bucket whose bound is >= it (Prometheus' ``le``)."""
        where = bisect.bisect_left
        bounds = self._bounds
        local = [0] * len(self._counts)
        total = 0.0
        for value in values:
            local[where(bounds, value)] += 1
            total += value
        with self._lock:
            counts = self._counts
            for i, n in enumerate(local):
                if n:
                    counts[i] += n
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The cumulative buckets, count and sum as Prometheus expects them."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip([*self._bounds, math.inf], counts, strict=True):
            running += n
            cumulative.append((floatToGoString(bound), running))
        yield HistogramMetricFamily(self._name, self._doc, buckets=cumulative, sum_value=total)

    def describe(self) -> list[HistogramMetricFamily]:
        """Name and type only, so registering checks for clashes without collecting."""
        return [HistogramMetricFamily(self._name, self._doc)]

