"""``make bench``: every headline number in one run, written to bench/results/.

    python -m bench.harness [--events N] [--users U] [--items I] [--rounds R]
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

The first four run ``--rounds`` times (default 3), interleaved; each reports its
median run, and a ratio is the median of the ratios within a round.

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
import statistics
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


ROUND_STEPS = ("ceiling", "one_process", "two_processes", "replay")
"""Steps measured once per round, interleaved, so a ratio compares runs minutes apart."""


def measure_all(settings: Settings, args: argparse.Namespace,
                results: dict[str, Any]) -> dict[str, Any]:
    """Produce once, then every step not skipped, in the order of ``STEPS``.

    The throughput steps run ``args.rounds`` times, interleaved (ceiling, one, two,
    replay; again): this machine's single-core speed drifts by up to a third within
    an hour (one process took 35.5 s and 49.6 s on the same log half an hour apart,
    and in traced runs every step slowed alike; two processes took 23-29 s), so one
    sample per step can make a ratio say more about the minute than the code.
    Fills ``results`` as it goes, so an interrupted run still reports what it measured.
    """
    skip = set(args.skip.split(",")) if args.skip else set()
    produced = produce_workload(settings, args.events, args.users, args.items)
    results["produce"] = {k: produced[k] for k in ("produced", "good", "events_per_s")}
    base = cli_env(settings, KAPPA_METRICS_PORT="0")
    rounds: list[dict[str, Any]] = []
    results["rounds"] = rounds
    for i in range(args.rounds):
        sample: dict[str, Any] = {}
        rounds.append(sample)
        if "ceiling" not in skip:
            sample["ceiling"] = measure_ceiling(settings)
        if "one_process" not in skip:
            env = {**base, "KAPPA_NAMESPACE": f"one{i}", "KAPPA_REDIS_PREFIX": f"one{i}"}
            sample["one_process"] = _flow_result(
                run_measured(env, "run", "--bounded", "--no-recovery"), args.events)
        if "two_processes" not in skip:
            env = {**base, "KAPPA_NAMESPACE": f"two{i}", "KAPPA_REDIS_PREFIX": f"two{i}"}
            sample["two_processes"] = _flow_result(
                run_measured(env, "run", "--bounded", "--no-recovery", "--processes", "2"),
                args.events)
        if "replay" not in skip:
            measured = run_measured(base, "replay", "--version", f"bench{i}", "--no-progress")
            sample["replay"] = _flow_result(measured, args.events)
        results.update(median_runs(rounds))
    if "naive" not in skip:
        results["naive"] = measure_naive(settings, args.naive_budget_s)
    if "freshness" not in skip:
        results["freshness"] = measure_freshness(settings, args.fresh_rate, args.fresh_seconds)
    if "freshness_two_processes" not in skip:
        results["freshness_two_processes"] = measure_freshness(
            settings, args.fresh_rate, args.fresh_seconds, processes=2)
    return results


def median_runs(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round step, its median-rate run, with every round's events/s and the peak RSS.

    The median of an even count is the slower middle run.
    """
    out: dict[str, Any] = {}
    for step in ROUND_STEPS:
        runs = [r[step] for r in rounds if step in r]
        if not runs:
            continue
        ordered = sorted(runs, key=lambda run: run["events_per_s"] or 0.0)
        median = dict(ordered[(len(ordered) - 1) // 2])
        median["rounds_events_per_s"] = [run["events_per_s"] for run in runs]
        rss = [run["peak_rss_mb"] for run in runs if run.get("peak_rss_mb") is not None]
        if rss:
            median["peak_rss_mb"] = max(rss)
        out[step] = median
    return out


def _rate(results: dict[str, Any], step: str) -> float | None:
    value = results.get(step, {}).get("events_per_s")
    return float(value) if value else None


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value (``None``: step skipped).

    Throughput ratios are taken within each round and their median reported.
    """
    one, naive = _rate(results, "one_process"), _rate(results, "naive")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    def paired(top: str, bottom: str) -> float | None:
        """The median over rounds of the ratio within each round (runs minutes apart)."""
        values = [v for r in results.get("rounds", [])
                  if (v := ratio(_rate(r, top), _rate(r, bottom))) is not None]
        return round(statistics.median(values), 3) if values else None

    def p99(step: str) -> float | None:
        fresh = results.get(step, {})
        return fresh.get("p99_s") if fresh.get("drained") else None

    rss = results.get("one_process", {}).get("peak_rss_mb")
    checks = [
        ("one process / ceiling", paired("one_process", "ceiling"), ">=", 0.5),
        ("one process / naive", ratio(one, naive), ">=", 2.0),
        ("two processes / one", paired("two_processes", "one_process"), ">=", 1.7),
        ("replay / live bounded", paired("replay", "one_process"), ">=", 0.9),
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
    rounds = r.get("rounds", [])
    if rounds:
        lines += ["", f"Median of {len(rounds)} interleaved round(s) (peak RSS: the largest); "
                  "events/s per round:"]
        lines += [f"- {step}: " + ", ".join(f"{v:,.0f}" for v in r[step]["rounds_events_per_s"])
                  for step in ROUND_STEPS if step in r]
    for step in ("freshness", "freshness_two_processes"):
        if step in r:
            f = r[step]
            lines += ["", f"Freshness, {f.get('processes', 1)} process(es), at "
                      f"{f['target_rate']:,} events/s for {f['seconds']} s (producer reached "
                      f"{f['produced_events_per_s']}/s; drained: {f['drained']}, "
                      f"{f['drain_after_produce_s']} s after producing): "
                      f"p50 {_round(f['p50_s'])} s, p99 {_round(f['p99_s'])} s"]
    lines += ["", "Ratios: the median over rounds of each round's ratio.", "",
              "| target | measured | goal | met |", "|---|---:|---|---|"]
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
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved runs of the ceiling, one, two and replay steps")
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
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
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
