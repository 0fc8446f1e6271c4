"""The run's GC policy freezes survivors and restores the interpreter's settings."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from flows.gc_policy import YOUNG_THRESHOLDS, GcPolicy


def test_freezes_survivors_and_restores_settings() -> None:
    before = gc.get_threshold()
    with GcPolicy(freeze_every_s=0.05, full_every_s=0.1):
        assert gc.get_threshold() == YOUNG_THRESHOLDS
        kept = [[i] for i in range(1000)]
        deadline = time.monotonic() + 5
        while gc.get_freeze_count() < len(kept) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_full_collection_reclaims_frozen_cycles() -> None:
    with GcPolicy(freeze_every_s=0.05, full_every_s=0.5):
        node = Node()
        alive = weakref.ref(node)
        time.sleep(0.2)  # frozen while alive
        del node
        assert alive() is not None  # frozen: no young collection can free it
        deadline = time.monotonic() + 5
        while alive() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive() is None


def test_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError, match="freeze_every_s"):
        GcPolicy(freeze_every_s=0)
    with pytest.raises(ValueError, match="freeze_every_s"):
        GcPolicy(freeze_every_s=2, full_every_s=1)
