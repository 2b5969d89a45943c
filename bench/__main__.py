"""The benchmark suite (`make bench`): throughput against the raw client, end-to-end latency,
memory, /metrics scrape cost and changelog restore, on the local broker.

    .venv/bin/python -m bench [--quick] [--bootstrap HOST:PORT] [--only throughput,latency]

Prints a table and writes every figure to bench/results/<UTC time>.json. Figures are noisy
on a shared machine: throughput is a ratio to a bare aiokafka consumer measured in the same
run (repetitions alternate the two; medians are reported). Nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import uvloop

from bench import latency, load, restore, scrape, throughput
from worker.tuning import tune_runtime

T = TypeVar("T")
RESULTS: Final = Path(__file__).parent / "results"
SECTIONS: Final = ("throughput", "latency", "memory", "scrape", "restore")
LAYER_LABELS: Final = {
    "bare": "(a) bare consumer",
    "orjson": "(b) + orjson.loads (decode-only ceiling)",
    "pydantic": "(c) + pydantic validate_json",
    "worker": "worker",
}
LAYER_TARGETS: Final = {
    "bare": "",
    "orjson": "worker >= 35%",
    "pydantic": "",
    "worker": "",
}


@dataclass(frozen=True, slots=True)
class Sizes:
    events: int
    sessions: int
    reps: int
    rates: tuple[float, ...]
    soak_s: float
    memory_sessions: int
    scrape_sizes: tuple[int, ...]
    restore_sessions: int


FULL: Final = Sizes(
    2_000_000, 10_000, 3, (5_000, 10_000, 20_000), 120, 100_000, (1_000, 10_000, 100_000), 100_000
)
QUICK: Final = Sizes(
    300_000, 10_000, 2, (5_000, 10_000, 20_000), 20, 20_000, (1_000, 10_000), 10_000
)


def run_on(loop: str, coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return uvloop.run(coroutine()) if loop == "uvloop" else asyncio.run(coroutine())


def bench_throughput(
    bootstrap: str, sizes: Sizes, loops: Sequence[str], intervals: Sequence[float]
) -> dict[str, Any]:
    """Per event loop at the default publish interval, then (first loop only) at the other
    `intervals`: how much of the worker's cost is its per-interval checkpoint."""
    topic = f"bench.fill.{time.time_ns() // 1_000_000}"
    filled = asyncio.run(
        load.prefill(bootstrap, topic, 6, sizes.events, sizes.sessions, time.time_ns() // 1_000_000)
    )
    print(
        f"prefilled {filled.events:,} events ({filled.value_bytes / filled.events:.0f} B "
        f"mean value) of {filled.sessions:,} sessions in {filled.seconds:.0f}s",
        file=sys.stderr,
    )
    variants = [(loop, intervals[0]) for loop in loops]
    variants += [(loops[0], interval) for interval in intervals[1:]]
    out: dict[str, Any] = {"prefill": asdict(filled), "loops": {}}
    for loop, interval in variants:
        runs: dict[str, list[throughput.Run]] = {
            name: [] for name in (*throughput.LAYERS, "worker")
        }
        probes: dict[str, list[float]] = {}
        for rep in range(sizes.reps):
            for layer in throughput.LAYERS:
                runs[layer].append(
                    run_on(loop, partial(_ceiling, bootstrap, topic, filled.events, layer))
                )
            worker, probed = run_on(
                loop, partial(_worker, bootstrap, topic, filled.events, interval)
            )
            runs["worker"].append(worker)
            for url, timings in probed.items():
                probes.setdefault(url.rsplit("/", 1)[-1], []).extend(ms for ms, _ in timings)
            print(
                f"  {loop}, publish every {interval:g}s, rep {rep + 1}: "
                + ", ".join(f"{name} {r[-1].rate:,.0f}/s" for name, r in runs.items()),
                file=sys.stderr,
            )
        name = loop if interval == intervals[0] else f"{loop}, publish interval {interval:g} s"
        out["loops"][name] = _throughput_figures(interval, runs, probes)
    return out


def _throughput_figures(
    interval: float, runs: dict[str, list[throughput.Run]], probes: dict[str, list[float]]
) -> dict[str, Any]:
    """Per layer: rates, CPU µs per event (medians); the worker's share of each ceiling
    (median of the per-repetition ratios); the HTTP answer times while it caught up."""
    worker = runs["worker"]
    figures: dict[str, Any] = {"publish_interval_s": interval, "layers": {}, "http": {}}
    for name, layer_runs in runs.items():
        figures["layers"][name] = {
            "events_per_s": [r.rate for r in layer_runs],
            "cpu_us_per_event": [r.cpu_us_per_event for r in layer_runs],
            "rate_median": statistics.median(r.rate for r in layer_runs),
            "cpu_us_median": statistics.median(r.cpu_us_per_event for r in layer_runs),
            "worker_ratio_median": statistics.median(
                w.rate / r.rate for w, r in zip(worker, layer_runs, strict=True)
            ),
        }
    for path, ms in probes.items():
        ms.sort()
        figures["http"][path] = {
            "answers": len(ms),
            "p50_ms": latency.percentile(ms, 0.5),
            "p99_ms": latency.percentile(ms, 0.99),
            "max_ms": ms[-1] if ms else float("nan"),
            "over_100ms": sum(1 for x in ms if x > 100),
        }
    return figures


async def _ceiling(bootstrap: str, topic: str, events: int, layer: str) -> throughput.Run:
    return await throughput.read_ceiling(throughput.bench_settings(bootstrap, topic), events, layer)


async def _worker(
    bootstrap: str, topic: str, events: int, interval: float
) -> tuple[throughput.Run, dict[str, list[tuple[float, int]]]]:
    settings = throughput.bench_settings(bootstrap, topic, publish_interval_s=interval)
    run, _, probes = await throughput.run_worker(settings, events, probe_every_s=0.02)
    return run, probes


def bench_latency(
    bootstrap: str, sizes: Sizes, retention_s: float | None = None, profile: Path | None = None
) -> list[dict[str, Any]]:
    """One soak per offered rate, lowest first (a heavy soak leaves the broker busy for a
    while). `profile`: a directory for a py-spy profile of each soak."""
    results = []
    for rate in sizes.rates:
        overrides: dict[str, object] = {}
        if retention_s is not None:  # exercise eviction and forgetting within the soak
            overrides = {"retention_s": retention_s, "evicted_ttl_s": 2 * retention_s}
        spy = None
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            spy = profile / f"latency-{rate:.0f}.txt"
        result = uvloop.run(
            latency.measure(bootstrap, rate, sizes.soak_s, overrides=overrides, profile=spy)
        )
        results.append({**asdict(result), "rss_slope_mib_per_min": result.rss_slope_mib_per_min})
        print(f"  latency at {rate:,.0f} ev/s: p99 {result.p99_ms:,.0f} ms", file=sys.stderr)
    return results


def bench_memory(sizes: Sizes) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--sessions", str(sizes.memory_sessions)],
        check=True,
        capture_output=True,
    )
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def bench_scrape(sizes: Sizes) -> dict[str, Any]:
    """bench/scrape.py's own measurement, per size; its table is kept as it prints it."""
    results = []
    for size in sizes.scrape_sizes:
        results.append(scrape.run_size(size, 10_000, generic=False))
        print(f"  scrape: {size:,} sessions measured", file=sys.stderr)
    return {"sizes": [asdict(r) for r in results], "table": scrape.table(results)}


def bench_restore(bootstrap: str, sizes: Sizes) -> dict[str, float]:
    return asyncio.run(restore.run(sizes.restore_sessions, bootstrap))


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_avg_at_start": os.getloadavg(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(results: dict[str, Any]) -> str:
    rows = ["| measure | result | target |", "|---|---|---|"]
    tp = results.get("throughput")
    if tp:
        for loop, r in tp["loops"].items():
            layers = r["layers"]
            reps = len(layers["worker"]["events_per_s"])
            for name, label in LAYER_LABELS.items():
                f = layers[name]
                share = "" if name == "worker" else f"; worker **{f['worker_ratio_median']:.0%}**"
                rows.append(
                    f"| throughput ({loop}), {label}, median of {reps} | {f['rate_median']:,.0f} "
                    f"ev/s, **{f['cpu_us_median']:.1f} µs CPU/event**{share} (per rep "
                    f"{', '.join(f'{x:,.0f}' for x in f['events_per_s'])}) "
                    f"| {LAYER_TARGETS[name]} |"
                )
            for path, h in r["http"].items():
                rows.append(
                    f"| HTTP `/{path}` while the worker catches up ({h['answers']:,} answers, "
                    f"every 20 ms) | p50 {h['p50_ms']:,.1f} ms, p99 {h['p99_ms']:,.0f} ms, "
                    f"**max {h['max_ms']:,.0f} ms**, {h['over_100ms']} over 100 ms "
                    f"| max <= 100 ms |"
                )
    for lat in results.get("latency", []):
        rows.append(
            f"| event-to-snapshot latency at {lat['rate_offered']:,.0f} ev/s "
            f"({lat['sessions_live_end']:,} live sessions, {lat['seconds']:.0f} s) "
            f"| p50 {lat['p50_ms']:,.0f} ms, p99 **{lat['p99_ms']:,.0f} ms**, "
            f"max {lat['max_ms']:,.0f} ms ({lat['events_measured']:,} events, "
            f"{lat['events_unpublished']:,} never published); checkpoint p50 "
            f"{lat['checkpoint_p50_ms']:,.0f} ms, max {lat['checkpoint_max_ms']:,.0f} ms; "
            f"CPU: worker {lat['worker_cpu']:.0%}, load generator {lat['generator_cpu']:.0%} "
            f"of a core | p99 <= {lat['publish_interval_s'] * 1000 + 250:,.0f} ms |"
        )
        rows.append(
            f"| worker CPU per event at {lat['rate_offered']:,.0f} ev/s "
            f"| **{lat['worker_us_per_event']:.1f} µs** (load generator "
            f"{lat['generator_us_per_event']:.1f} µs, at most "
            f"{lat['generator_late_ms_max']:,.0f} ms behind its schedule) | <= 30 µs |"
        )
        peak = max((m for _, m in lat["rss_mib"]), default=0.0)
        rows.append(
            f"| worker RSS over that soak | peak {peak:,.0f} MiB, slope (2nd half) "
            f"{lat['rss_slope_mib_per_min']:+.1f} MiB/min | flat (no leak) |"
        )
    mem = results.get("memory")
    if mem:
        rows.append(
            f"| memory, {mem['sessions']:,} active sessions | RSS "
            f"**{mem['rss_per_100k_sessions_mib']:,.0f} MiB per 100k** "
            f"({mem['rss_per_session_bytes']:,.0f} B/session); state "
            f"{mem['state_bytes_mean']:,.0f} B mean, {mem['state_bytes_max']:,.0f} B max "
            f"| <= 2 KiB/session |"
        )
    for r in results.get("scrape", {}).get("sizes", []):
        scrapes = r.get("scrapes") or {}
        nan = [float("nan")]
        rows.append(
            f"| /metrics at {r['sessions']:,} sessions ({r['exported']:,} exported) "
            f"| render {r['render_median_ms']:,.0f} ms, scrape (median) "
            f"{statistics.median(scrapes.get('durations_ms') or nan):,.0f} ms, loop stall (max) "
            f"{max(scrapes.get('stalls_ms') or nan):,.1f} ms "
            f"(idle {max(scrapes.get('idle_stalls_ms') or nan):.1f}) "
            f"| 10k: < 150 ms, stall < 200 ms |"
        )
    rs = results.get("restore")
    if rs:
        rows.append(
            f"| restore {rs['sessions']:,.0f} sessions from the changelog "
            f"| **{rs['restore_from_kafka_s']:,.1f} s** ({rs['sessions_per_s']:,.0f}/s; "
            f"{rs['record_bytes_mean']:,.0f} B/record; decode alone "
            f"{rs['decode_only_s']:,.1f} s) | - |"
        )
        rows.append(
            f"| rebalance giving those partitions back | revoke (final checkpoint) "
            f"{rs['rebalance_revoke_s']:,.1f} s, assignment **{rs['rebalance_assign_kept_s']:,.3f}"
            f" s** (sessions kept, no changelog read) | - |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--loops", default="uvloop,asyncio", help="event loops for throughput")
    parser.add_argument(
        "--intervals",
        default="1,5",
        help="publish intervals (s) for throughput: the first is the default; others use the "
        "first loop only",
    )
    parser.add_argument("--events", type=int, help="prefilled events (throughput)")
    parser.add_argument("--sessions", type=int, help="sessions in the prefill")
    parser.add_argument("--reps", type=int, help="throughput repetitions per loop")
    parser.add_argument("--rates", help="offered events/s (latency), comma-separated")
    parser.add_argument("--soak", type=float, help="seconds of offered load (latency, RSS)")
    parser.add_argument(
        "--retention",
        type=float,
        help="latency soaks: evict ended sessions after this many seconds (default 300)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="latency soaks: py-spy (pip install py-spy) each one into DIR/latency-RATE.txt "
        "(raw folded stacks; summarise with python -m bench.profile)",
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's GC thresholds and GIL switch interval (for comparison)",
    )
    args = parser.parse_args(argv)
    if not args.default_gc:
        tune_runtime()  # the worker runs in this process: tune it as `session-worker run` does
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        args.events or base.events,
        args.sessions or base.sessions,
        args.reps or base.reps,
        tuple(float(r) for r in args.rates.split(",")) if args.rates else base.rates,
        args.soak or base.soak_s,
        base.memory_sessions,
        base.scrape_sizes,
        base.restore_sessions,
    )
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, Any] = {
        "machine": machine(),
        "sizes": asdict(sizes),
        "command": " ".join(["python -m bench", *(argv or sys.argv[1:])]),
        "gc_thresholds": gc.get_threshold(),
    }
    started = time.monotonic()
    for section in wanted:
        print(f"{section}...", file=sys.stderr)
        if section == "throughput":
            results[section] = bench_throughput(
                args.bootstrap,
                sizes,
                args.loops.split(","),
                [float(i) for i in args.intervals.split(",")],
            )
        elif section == "latency":
            results[section] = bench_latency(args.bootstrap, sizes, args.retention, args.profile)
        elif section == "memory":
            results[section] = bench_memory(sizes)
        elif section == "scrape":
            results[section] = bench_scrape(sizes)
        elif section == "restore":
            results[section] = bench_restore(args.bootstrap, sizes)
        else:
            parser.error(f"unknown section {section!r} (known: {', '.join(SECTIONS)})")
    results["seconds"] = time.monotonic() - started
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(table(results))
    if "scrape" in results:
        print(f"\nbench/scrape.py:\n{results['scrape']['table']}")
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
