"""The compiled per-view aggregate programs (their results are property-tested in
test_windowing_property against the reference)."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.aggregates import AggSpec, add_exact
from flows.views import DEFAULT_VIEWS, USER_SPEND_1H, Feature, FeatureView, Tumbling


def event(ts: int, event_type: str = "purchase", amount: float | None = 2.5) -> dict:
    return {"ts": ts, "ingest_ts": ts + 7, "event_type": event_type, "amount": amount,
            "item_id": f"i{ts % 3}", "user_id": "u1"}


@pytest.mark.parametrize("view", DEFAULT_VIEWS, ids=lambda v: v.name)
def test_spec_survives_pickling(view: FeatureView) -> None:
    spec = AggSpec(view)
    agg = spec.new()
    for ts in (30, 10, 20):
        spec.add(agg, event(ts))
    again = pickle.loads(pickle.dumps(spec))
    assert again.finish(agg) == spec.finish(agg)
    # The dict form (live flushes) and the values form (history) are one vector.
    assert list(spec.finish(agg).items()) == list(zip(view.feature_names,
                                                      spec.finish_values(agg), strict=True))
    assert (again.count(agg), again.first_ts(agg), again.last_ts(agg),
            again.last_ingest(agg)) == (3, 10, 30, 37)


def test_copy_is_independent_and_merge_folds() -> None:
    spec = AggSpec(USER_SPEND_1H)
    a, b = spec.new(), spec.new()
    spec.add(a, event(1, amount=1.0))
    spec.add(b, event(2, amount=4.0))
    spec.add(b, event(3, event_type="page_view", amount=None))
    c = spec.copy(a)
    spec.merge(c, b)
    assert spec.finish(a) == {"purchase_count": 1, "purchase_amount_sum": 1.0,
                              "purchase_amount_avg": 1.0, "purchase_amount_max": 1.0}
    assert spec.finish(c) == {"purchase_count": 2, "purchase_amount_sum": 5.0,
                              "purchase_amount_avg": 2.5, "purchase_amount_max": 4.0}
    assert spec.count(c) == 3 and spec.first_ts(c) == 1 and spec.last_ts(c) == 3


def test_ratio_of_a_later_ratio_is_refused() -> None:
    view = FeatureView(name="v", entity="user_id", window=Tumbling(size_s=60), features=(
        Feature(name="n", agg="count"),
        Feature(name="r1", agg="ratio", ratio_of=("r2", "n")),
        Feature(name="r2", agg="ratio", ratio_of=("n", "n")),
    ))
    with pytest.raises(ValueError, match="defined after"):
        AggSpec(view)


_AMOUNTS = st.lists(st.one_of(st.floats(min_value=0, max_value=1e12), st.sampled_from(
    [0.1, 0.2, 0.3, 9.99, 1e-300, 5e-324, 1e15, 2.0 ** 52])), max_size=200)


@given(_AMOUNTS, _AMOUNTS, st.randoms())
def test_exact_partials_total_like_fsum_of_all_terms(xs: list[float], ys: list[float],
                                                     rnd: object) -> None:
    """Reference: ``math.fsum`` over every term; any order, any split, any merge."""
    left: list[float] = []
    for x in xs:
        add_exact(left, x)
    right: list[float] = []
    for y in ys:
        add_exact(right, y)
    assert math.fsum(left) == math.fsum(xs)
    shuffled = xs + ys
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    merged: list[float] = []
    for v in shuffled:
        add_exact(merged, v)
    for v in right:  # merging a state into another: add its partials
        add_exact(left, v)
    assert math.fsum(left) == math.fsum(merged) == math.fsum(xs + ys)
    assert len(left) <= 40  # non-overlapping partials of doubles stay few


def test_state_with_plain_terms_keeps_summing_exactly() -> None:
    """States pickled before partials hold the terms themselves: still exact."""
    terms = [0.1] * 10 + [1e16, 1.0]
    partials = list(terms)
    add_exact(partials, 0.7)
    assert math.fsum(partials) == math.fsum([*terms, 0.7])


def test_sum_without_terms_holds_nothing_and_merges_with_any_state() -> None:
    """A sum is ``None`` until its first term; ``[]`` (older snapshots) means the same."""
    spec = AggSpec(USER_SPEND_1H)
    empty = spec.new()
    assert empty[1] is None and spec.finish(empty)["purchase_amount_sum"] == 0.0
    paid = spec.new()
    for amount in (0.1, 0.2):
        spec.add(paid, {"event_type": "purchase", "amount": amount, "ts": 5, "ingest_ts": 6})
    old = spec.copy(paid)
    old[1] = []  # a window snapshotted before sums started as None, with no purchase
    for into, other in ((spec.copy(empty), paid), (spec.copy(paid), empty),
                        (spec.copy(paid), old), (old, spec.copy(paid))):
        spec.merge(into, other)
        assert spec.finish(into)["purchase_amount_sum"] == math.fsum([0.1, 0.2])
    copied = spec.copy(empty)
    spec.merge(copied, empty)
    assert copied[1] is None
