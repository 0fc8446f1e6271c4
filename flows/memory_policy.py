"""A run's native memory: fewer glibc arenas, large blocks returned, Arrow on the system pool.

Why: at 1M events most of a run's peak RSS was not Python objects but
allocator retention (measured with ``/proc/<pid>/smaps`` at the peak: 410 MB in
Arrow's mimalloc arena, 650 MB in anonymous maps, many of them 64 MB glibc
per-thread arenas). librdkafka, pyiceberg's writer pool and Bytewax each run
threads, and glibc gives every thread that allocates its own arena, which keeps
freed pages. Capping arenas at two and sending Arrow buffers through glibc
(whose large blocks are mmapped and returned on free) lowered peak RSS from
~1384 to ~1182 MB at the same CPU in isolated 1M-event runs; a full ``make bench``
run did not show the gain above its ~80 MB run-to-run noise (performance issue notes).

Both are process-wide and only affect allocations made afterwards, so the
policy is applied once, before the dataflow starts its threads. There is no
library for this: ``mallopt`` is glibc's own interface, reached through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

import pyarrow as pa

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the arena cap (malloc.h)."""
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
ARENAS = 2
RETURN_ABOVE_BYTES = 128 * 1024
"""Blocks at least this large are mmapped (freed straight back to the OS), and free
heap tops beyond it are trimmed. glibc's default raises the mmap threshold to
32 MiB after the first large free, so the Iceberg commits' transient Arrow and
Parquet buffers stayed in the heap: fixing both at 128 KiB lowered the brk heap
at the peak from ~300 to ~95 MB and peak RSS by ~100 MB (1M-event runs)."""


@functools.cache
def apply_memory_policy() -> dict[str, object]:
    """Cap glibc arenas, fix its return-to-OS thresholds, put Arrow on the system pool.

    Idempotent; returns what was applied.
    """
    applied: dict[str, object] = {"arrow_pool": None, "malloc_arena_max": None,
                                  "malloc_return_above": None}
    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
    applied["arrow_pool"] = pa.default_memory_pool().backend_name
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt here (%s); arenas left as they are", name)
        return applied
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, ARENAS) == 1:
        applied["malloc_arena_max"] = ARENAS
    if (mallopt(M_MMAP_THRESHOLD, RETURN_ABOVE_BYTES) == 1
            and mallopt(M_TRIM_THRESHOLD, RETURN_ABOVE_BYTES) == 1):
        applied["malloc_return_above"] = RETURN_ABOVE_BYTES
    return applied
