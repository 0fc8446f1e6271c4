"""The run's allocator policy: Arrow on the system pool, glibc arenas capped (where glibc is)."""

from __future__ import annotations

import ctypes.util
import platform

import pyarrow as pa

from flows.memory_policy import ARENAS, RETURN_ABOVE_BYTES, apply_memory_policy


def test_policy_puts_arrow_on_the_system_pool_and_caps_arenas() -> None:
    applied = apply_memory_policy()
    assert pa.default_memory_pool().backend_name == "system"
    assert applied["arrow_pool"] == "system"
    # New buffers come from the system pool, and the policy is applied only once.
    before = pa.system_memory_pool().bytes_allocated()
    data = pa.array(range(100_000), pa.int64())
    assert pa.system_memory_pool().bytes_allocated() >= before + data.nbytes
    assert apply_memory_policy() is applied
    if platform.system() == "Linux" and ctypes.util.find_library("c"):
        assert applied["malloc_arena_max"] == ARENAS
        assert applied["malloc_return_above"] == RETURN_ABOVE_BYTES
