"""What in-flow data profiling costs: the same bounded run with and without it.

    python -m bench.profiling [--events N] [--users U] [--items I] [--rounds R]

One workload on a scratch stack; each round runs ``kappa run --bounded`` with
profiling off, then on, into separate outputs (namespace, Redis prefix, recovery
store), alternating so machine drift hits both alike. Prints events/s and CPU
seconds of each run, and the profiling cost in CPU microseconds per event.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import orjson

from bench.stack import produce_workload, scratch_stack
from flows.run import RunOptions, run


def main() -> None:
    """Produce once, run off/on ``--rounds`` times, print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=30_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with scratch_stack() as settings:
        produce_workload(settings, args.events, args.users, args.items)
        for i in range(args.rounds):
            for mode in ("off", "on"):
                target = replace(settings, profiles=mode == "on", namespace=f"b{mode}{i}",
                                 redis_prefix=f"b{mode}{i}")
                summary = run(target, RunOptions(bounded=True, recovery=False))
                runs[mode].append({k: summary[k] for k in ("seconds", "cpu_seconds",
                                                           "events_per_s")})
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in ("events_per_s", "cpu_seconds")}
           for mode, rs in runs.items()}
    print(orjson.dumps({
        "events": args.events, "rounds": args.rounds, "runs": runs, "median": med,
        "throughput_ratio_on_off": round(med["on"]["events_per_s"] / med["off"]["events_per_s"], 3),
        "profiling_cpu_us_per_event": round(
            (med["on"]["cpu_seconds"] - med["off"]["cpu_seconds"]) / args.events * 1e6, 2),
    }, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
