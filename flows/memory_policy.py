"""Where a run's native memory comes from: fewer glibc arenas, Arrow on the system allocator.

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
ARENAS = 2


@functools.cache
def apply_memory_policy() -> dict[str, object]:
    """Cap glibc arenas and put Arrow on the system pool (idempotent); what was applied."""
    applied: dict[str, object] = {"arrow_pool": None, "malloc_arena_max": None}
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
    return applied
