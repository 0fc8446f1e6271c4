"""Replay vs live bounded throughput on the same log, and the cost of verify + promote.

    python -m bench.replay [--events N] [--users U]

Runs on its own broker and redis-server (free ports) and a scratch catalog.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import orjson

from bench.stack import cli_env, produce_workload, scratch_stack


def _kappa(env: dict[str, str], *args: str) -> tuple[Any, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kappa.cli", *args], env=env,
                          capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1) or not proc.stdout:
        raise SystemExit(proc.stderr.decode()[-2000:])
    return orjson.loads(proc.stdout), elapsed


def main() -> None:
    """Produce once; live bounded run; replay of the same log; verify; promote."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    with scratch_stack() as settings:
        produce_workload(settings, args.events, args.users)
        env = cli_env(settings)
        live, _ = _kappa(env, "run", "--bounded")
        replayed, _ = _kappa(env, "replay", "--version", "r1", "--no-progress")
        verified, verify_s = _kappa(env, "versions", "verify", "r1")
        promoted, promote_s = _kappa(env, "versions", "promote", "r1")
        print(orjson.dumps({
            "events": args.events, "users": args.users,
            "live_bounded": {k: live[k] for k in ("events_per_s", "seconds", "cpu_seconds")},
            "replay": {k: replayed[k] for k in ("events_per_s", "seconds", "cpu_seconds")},
            "replay_over_live": round(replayed["events_per_s"] / live["events_per_s"], 3),
            "verify": {"seconds": round(verify_s, 2), "ok": verified["ok"]},
            "promote": {"seconds": round(promote_s, 2), "result": promoted},
        }, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
