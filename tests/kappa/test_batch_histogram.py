"""BatchHistogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from kappa.batch_histogram import BatchHistogram

BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)


def _samples(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if not line.startswith("#") and "_created" not in line]


@given(st.lists(st.lists(st.floats(min_value=0, max_value=1e4) | st.sampled_from(BUCKETS),
                         max_size=30), max_size=5))
def test_same_exposition_as_prometheus_histogram(batches: list[list[float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("h", "doc", BUCKETS, registry=ours)
    reference = Histogram("h", "doc", buckets=BUCKETS, registry=theirs)
    for values in batches:
        batch.observe_many(values)
        for v in values:
            reference.observe(v)
    mine, reference_samples = _samples(ours), _samples(theirs)
    # Buckets and count exactly; the sum up to float rounding (batches add their own sum).
    assert [s for s in mine if "_sum" not in s] == [s for s in reference_samples if "_sum" not in s]
    assert ours.get_sample_value("h_sum") == pytest.approx(theirs.get_sample_value("h_sum"))


def test_values_on_a_bound_count_in_that_bucket() -> None:
    registry = CollectorRegistry()
    h = BatchHistogram("h", "doc", (1, 2), registry=registry)
    h.observe_many(iter([1.0, 2.0, 2.5]))
    h.observe(0.5)
    assert registry.get_sample_value("h_bucket", {"le": "1.0"}) == 2
    assert registry.get_sample_value("h_bucket", {"le": "2.0"}) == 3
    assert registry.get_sample_value("h_bucket", {"le": "+Inf"}) == 4
    assert registry.get_sample_value("h_sum") == 6.0


def test_bad_buckets_are_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        BatchHistogram("h", "doc", (1, 1), registry=None)
