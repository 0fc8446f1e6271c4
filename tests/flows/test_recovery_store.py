"""The recovery store refuses state it cannot safely resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from flows.dataflow import STATEFUL_STEPS
from flows.recovery import RecoveryStore, flow_definition
from flows.views import DEFAULT_VIEWS, USER_ACTIVITY_1M, Tumbling
from kappa.errors import ConfigError


def store(tmp_path: Path) -> RecoveryStore:
    return RecoveryStore(path=tmp_path / "rec", partitions=1, backup_interval_s=0)


def test_same_definition_resumes(tmp_path: Path) -> None:
    definition = flow_definition(STATEFUL_STEPS, DEFAULT_VIEWS)
    store(tmp_path).open(shards=4, partitions=4, definition=definition)
    assert store(tmp_path).exists
    store(tmp_path).open(shards=4, partitions=4, definition=definition)


def test_changed_view_is_refused_with_replay_advice(tmp_path: Path) -> None:
    store(tmp_path).open(shards=4, partitions=4,
                         definition=flow_definition(STATEFUL_STEPS, DEFAULT_VIEWS))
    changed = replace(USER_ACTIVITY_1M, window=Tumbling(size_s=120))
    views = (changed, *DEFAULT_VIEWS[1:])
    with pytest.raises(ConfigError, match="view user_activity_1m changed.*kappa replay"):
        store(tmp_path).open(shards=4, partitions=4,
                             definition=flow_definition(STATEFUL_STEPS, views))


def test_changed_steps_or_shards_are_refused(tmp_path: Path) -> None:
    store(tmp_path).open(shards=4, partitions=4,
                         definition=flow_definition(STATEFUL_STEPS, DEFAULT_VIEWS))
    with pytest.raises(ConfigError, match="step ids"):
        store(tmp_path).open(shards=4, partitions=4,
                             definition=flow_definition(("kafka_in", "other"), DEFAULT_VIEWS))
    with pytest.raises(ConfigError, match="KAPPA_SHARDS"):
        store(tmp_path).open(shards=8, partitions=4)
