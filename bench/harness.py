"""``make bench``: every headline number in one run, written to bench/results/.

    python -m bench.harness [--events N] [--users U] [--items I]
                            [--fresh-rate EPS] [--fresh-seconds S] [--skip a,b]

On a scratch stack (own broker, redis-server, catalog; removed afterwards), one
seeded workload (default 1M events, 100k users, 10k items, the usual bad, late
and duplicate shares) is measured by:

* ``ceiling`` — consume + decode in one process, no Bytewax (``bench.ceiling``);
* ``one_process`` / ``two_processes`` — ``kappa run --bounded [--processes 2]``;
* ``replay`` — ``kappa replay`` of the same log into a version;
* ``naive`` — the per-event Bytewax baseline (``bench.naive``);
* ``freshness`` / ``freshness_two_processes`` — a live run (``kappa run [--processes 2]``)
  fed at ``--fresh-rate`` for ``--fresh-seconds``.

CLI runs are subprocesses reaped with ``os.wait4``, so CPU seconds and peak RSS
are those of the run (and of its child processes), not of the harness.
Writes ``latest.json``, ``latest.md`` and ``latest.png``; the targets are the
ones of the performance issue, judged on ratios measured in this same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.ceiling import measure_ceiling
from bench.freshness import measure_freshness
from bench.naive import measure_naive
from bench.stack import cli_env, produce_workload, scratch_stack
from kappa.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("ceiling", "one_process", "two_processes", "replay", "naive", "freshness",
         "freshness_two_processes")


def run_measured(env: dict[str, str], *args: str) -> dict[str, Any]:
    """``kappa ARGS`` as a child; its JSON summary plus wall, CPU and peak RSS (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "kappa.cli", *args], env=env,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            msg = f"kappa {' '.join(args)} failed: {err.read().decode()[-2000:]}"
            raise SystemExit(msg)
        summary = orjson.loads(out.read())
    return {"summary": summary, "wall_s": round(wall, 3),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _flow_result(measured: dict[str, Any], events: int) -> dict[str, Any]:
    s = measured["summary"]
    seconds = s.get("seconds") or measured["wall_s"]
    consumed = s.get("consumed", events)
    return {"consumed": consumed, "seconds": seconds,
            "events_per_s": round(consumed / seconds, 1) if seconds else None,
            "wall_s": measured["wall_s"], "cpu_seconds": measured["cpu_seconds"],
            "cpu_s_per_1m": round(measured["cpu_seconds"] / consumed * 1e6, 1) if consumed else None,
            "peak_rss_mb": measured["peak_rss_mb"]}


def measure_all(settings: Settings, args: argparse.Namespace,
                results: dict[str, Any]) -> dict[str, Any]:
    """Produce once, then every step not skipped, in the order of ``STEPS``.

    Fills ``results`` as it goes, so an interrupted run still reports what it measured.
    """
    skip = set(args.skip.split(",")) if args.skip else set()
    produced = produce_workload(settings, args.events, args.users, args.items)
    results["produce"] = {k: produced[k] for k in ("produced", "good", "events_per_s")}
    if "ceiling" not in skip:
        results["ceiling"] = measure_ceiling(settings)
    base = cli_env(settings, KAPPA_METRICS_PORT="0")
    if "one_process" not in skip:
        env = {**base, "KAPPA_NAMESPACE": "one", "KAPPA_REDIS_PREFIX": "one"}
        results["one_process"] = _flow_result(
            run_measured(env, "run", "--bounded", "--no-recovery"), args.events)
    if "two_processes" not in skip:
        env = {**base, "KAPPA_NAMESPACE": "two", "KAPPA_REDIS_PREFIX": "two"}
        results["two_processes"] = _flow_result(
            run_measured(env, "run", "--bounded", "--no-recovery", "--processes", "2"),
            args.events)
    if "replay" not in skip:
        measured = run_measured(base, "replay", "--version", "bench", "--no-progress")
        results["replay"] = _flow_result(measured, args.events)
    if "naive" not in skip:
        results["naive"] = measure_naive(settings, args.naive_budget_s)
    if "freshness" not in skip:
        results["freshness"] = measure_freshness(settings, args.fresh_rate, args.fresh_seconds)
    if "freshness_two_processes" not in skip:
        results["freshness_two_processes"] = measure_freshness(
            settings, args.fresh_rate, args.fresh_seconds, processes=2)
    return results


def _rate(results: dict[str, Any], step: str) -> float | None:
    value = results.get(step, {}).get("events_per_s")
    return float(value) if value else None


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value (``None``: step skipped)."""
    one, two = _rate(results, "one_process"), _rate(results, "two_processes")
    ceiling, naive, replay = (_rate(results, s) for s in ("ceiling", "naive", "replay"))

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    def p99(step: str) -> float | None:
        fresh = results.get(step, {})
        return fresh.get("p99_s") if fresh.get("drained") else None

    rss = results.get("one_process", {}).get("peak_rss_mb")
    checks = [
        ("one process / ceiling", ratio(one, ceiling), ">=", 0.5),
        ("one process / naive", ratio(one, naive), ">=", 2.0),
        ("two processes / one", ratio(two, one), ">=", 1.7),
        ("replay / live bounded", ratio(replay, one), ">=", 0.9),
        ("freshness p99 s (one process)", p99("freshness"), "<=", 1.0),
        ("freshness p99 s (two processes)", p99("freshness_two_processes"), "<=", 1.0),
        ("peak RSS MB (one process)", rss, "<=", 1024.0),
    ]
    return [{"target": name, "value": value, "goal": f"{op} {goal}",
             "met": None if value is None else (value >= goal if op == ">=" else value <= goal)}
            for name, value, op, goal in checks]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def markdown(report: dict[str, Any]) -> str:
    """The results as the Markdown tables the closing notes and README carry."""
    r = report["results"]
    lines = [f"# kappa benchmark — {report['finished_at']}", "",
             f"{report['events']:,} events, {report['users']:,} users, {report['items']:,} items; "
             f"{report['machine']}", "",
             "| measurement | events/s | CPU s / 1M | peak RSS MB |", "|---|---:|---:|---:|"]
    for step in ("ceiling", "one_process", "two_processes", "replay", "naive"):
        if step in r:
            s = r[step]
            cpu = s.get("cpu_s_per_1m") or (round(s["cpu_seconds"] / s["consumed"] * 1e6, 1)
                                            if s.get("consumed") else None)
            lines.append(f"| {step} | {s['events_per_s']:,.0f} | {cpu if cpu is not None else '-'} "
                         f"| {s.get('peak_rss_mb', '-')} |")
    for step in ("freshness", "freshness_two_processes"):
        if step in r:
            f = r[step]
            lines += ["", f"Freshness, {f.get('processes', 1)} process(es), at "
                      f"{f['target_rate']:,} events/s for {f['seconds']} s (producer reached "
                      f"{f['produced_events_per_s']}/s; drained: {f['drained']}, "
                      f"{f['drain_after_produce_s']} s after producing): "
                      f"p50 {_round(f['p50_s'])} s, p99 {_round(f['p99_s'])} s"]
    lines += ["", "| target | measured | goal | met |", "|---|---:|---|---|"]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {_round(t['value']) if t['value'] is not None else '-'} "
                     f"| {t['goal']} | {met} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Bar chart of events/s per measurement, the ceiling as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = report["results"]
    steps = [s for s in ("one_process", "two_processes", "replay", "naive") if s in r]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(steps, [r[s]["events_per_s"] for s in steps], color="#4C72B0")
    ax.bar_label(bars, fmt="%.0f")
    if "ceiling" in r:
        ax.axhline(r["ceiling"]["events_per_s"], color="red", linestyle="--",
                   label=f"ceiling (consume+decode) {r['ceiling']['events_per_s']:,.0f}/s")
        ax.legend()
    ax.set_ylabel("events/s")
    ax.set_title(f"kappa, {report['events']:,} events ({report['finished_at'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Measure, judge, write latest.{json,md,png}, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--fresh-rate", type=int, default=20_000)
    parser.add_argument("--fresh-seconds", type=int, default=60)
    parser.add_argument("--naive-budget-s", type=float, default=120.0,
                        help="stop the per-event baseline after this long (it slows as state grows)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps of {','.join(STEPS)}")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    unknown = set(filter(None, args.skip.split(","))) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; known: {', '.join(STEPS)}")
    started = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C: the scratch stack is stopped, partial results written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results: dict[str, Any] = {}
    try:
        with scratch_stack() as settings:
            measure_all(settings, args, results)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: writing what was measured so far\n")
    report = {"events": args.events, "users": args.users, "items": args.items,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}",
              "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "total_s": round(time.perf_counter() - started, 1), "results": results}
    report["targets"] = judge(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    text = markdown(report)
    (out / "latest.md").write_text(text)
    plot(report, out / "latest.png")
    sys.stdout.write(text + f"\nwritten: {out / 'latest.json'}, latest.md, latest.png\n")


if __name__ == "__main__":
    main()
