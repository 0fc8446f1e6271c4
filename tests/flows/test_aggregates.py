"""The compiled per-view aggregate programs (their results are property-tested in
test_windowing_property against the reference)."""

from __future__ import annotations

import pickle

import pytest

from flows.aggregates import AggSpec
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
