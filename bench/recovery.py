"""What recovery costs: events/s with and without checkpoints, snapshot sizes, resume time.

    python -m bench.recovery [--events N] [--users U]

Runs on its own broker and redis-server (free ports) and a scratch catalog.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from bench.stack import cli_env, produce_workload, scratch_stack
from kappa.procs import free_port
from kappa.settings import Settings


def _env(settings: Settings, name: str, **extra: str) -> dict[str, str]:
    return cli_env(settings, KAPPA_NAMESPACE=name, KAPPA_REDIS_PREFIX=name, **extra)


def _run(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "kappa.cli", "run", "--bounded", *args],
                          env=env, capture_output=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.decode()[-2000:])
    return orjson.loads(proc.stdout)


def _consumed(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
    except OSError:
        return -1.0
    for line in text.decode().splitlines():
        if line.startswith("kappa_events_consumed_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _snapshot_sizes(store: Path, sizes: dict[str, Any]) -> None:
    """Fold the store's current per-step snapshot sizes into ``sizes`` (max per epoch).

    Bytewax keeps only the newest snapshot per key (no backup interval), so the
    store is sampled while the run goes on.
    """
    total = sum(f.stat().st_size for f in store.glob("*.sqlite3"))
    sizes["store_bytes_max"] = max(sizes.get("store_bytes_max", 0), total)
    for db in store.glob("*.sqlite3"):
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            rows = conn.execute("SELECT step_id, snap_epoch, SUM(LENGTH(ser_change)) FROM snaps "
                                "GROUP BY step_id, snap_epoch").fetchall()
            conn.close()
        except sqlite3.Error:
            continue
        for step, _epoch, size in rows:
            step = step.split(".", 1)[1]
            sizes.setdefault(step, {"max_epoch_bytes": 0})
            sizes[step]["max_epoch_bytes"] = max(sizes[step]["max_epoch_bytes"], size or 0)


def main() -> None:
    """Produce once, then measure the three things."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=30_000)
    args = parser.parse_args()
    with scratch_stack() as settings:
        home = settings.home
        produce_workload(settings, args.events, args.users)
        without = _run(_env(settings, "norec"), "--no-recovery")
        store = home / "recovery" / "bench--rec--rec"
        rec = subprocess.Popen([sys.executable, "-m", "kappa.cli", "run", "--bounded"],
                               env=_env(settings, "rec"), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
        sizes: dict[str, Any] = {}
        while rec.poll() is None:
            if store.exists():
                _snapshot_sizes(store, sizes)
            time.sleep(1.0)
        with_rec = orjson.loads(rec.communicate()[0])

        port = free_port()
        env = _env(settings, "killed", KAPPA_METRICS_PORT=str(port))
        proc = subprocess.Popen([sys.executable, "-m", "kappa.cli", "run", "--bounded"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while _consumed(port) < args.events * 0.6:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        restarted = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "kappa.cli", "run", "--bounded"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        while _consumed(port) <= 0 and proc.poll() is None:
            time.sleep(0.05)
        first_batch_s = time.perf_counter() - restarted
        out, _ = proc.communicate()
        resumed = orjson.loads(out)
        print(orjson.dumps({
            "events": args.events, "users": args.users,
            "without_recovery": {k: without[k] for k in ("events_per_s", "seconds", "cpu_seconds")},
            "with_recovery": {k: with_rec[k] for k in ("events_per_s", "seconds", "cpu_seconds")},
            "recovery_cost": round(1 - with_rec["events_per_s"] / without["events_per_s"], 3),
            "snapshot_interval_s": 10,
            "snapshots": sizes,
            "resume_after_kill": {"process_start_to_first_batch_s": round(first_batch_s, 2),
                                  "reprocessed_after_resume": resumed["consumed"],
                                  "total_resume_run_s": round(time.perf_counter() - restarted, 2)},
        }, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
