"""End-to-end ``kappa run --bounded`` throughput and peak memory on a seeded workload.

    python -m bench.throughput [--events N] [--users U] [--items I]

Runs in this process (so ``py-spy record -- python -m bench.throughput`` profiles
the flow) on its own broker and redis-server (free ports) and a scratch catalog.
"""

from __future__ import annotations

import argparse
import resource
import time

import orjson

from bench.stack import produce_workload, scratch_stack
from flows.run import RunOptions, run


def main() -> None:
    """Produce the workload, run the flow bounded once, print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--no-recovery", action="store_true")
    args = parser.parse_args()
    with scratch_stack() as settings:
        produced = produce_workload(settings, args.events, args.users, args.items)
        started = time.perf_counter()
        summary = run(settings, RunOptions(bounded=True, recovery=not args.no_recovery))
        print(orjson.dumps({
            "events": args.events, "users": args.users, "items": args.items,
            "produce_events_per_s": produced["events_per_s"],
            "run": {k: summary[k] for k in ("consumed", "valid", "quarantined_total",
                                            "seconds", "cpu_seconds", "events_per_s")},
            "wall_s": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
