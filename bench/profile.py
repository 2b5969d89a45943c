"""Summarise a py-spy profile (`py-spy record --format raw`: folded stacks, one per line
with its sample count) by phase of the worker, plus the top functions.

    .venv/bin/python -m bench.profile /tmp/prof/latency-10000.txt [--top 15]

`python -m bench --only latency --rates 10000 --profile DIR` records one (py-spy in the
venv: `pip install py-spy`). A sample counts in the first phase, in the order below, that
one of its frames matches, so "refresh: health" is health evaluation inside the snapshot
build and "refresh: tick, other" is the tick without build, health and encoding. Samples
whose innermost Python frame is the event loop's `run` are the loop idle or in its C code
(uvloop runs callbacks and I/O in C, invisible to py-spy).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

PHASES: Final = (
    ("refresh: health", ("(worker/health.py",)),
    ("refresh: build_session", ("build_session (worker/session.py",)),
    ("refresh: encode snapshot", ("encode_session (worker/session.py",)),
    ("changelog encode", ("(worker/changelog.py",)),
    ("refresh: tick, other", ("SessionStore.tick (",)),
    ("produce (aiokafka producer, _send_all)", ("aiokafka/producer", "_send_all (")),
    ("decode (pydantic, checks)", ("decode_event (worker/events.py",)),
    ("fold (store.apply, state.fold)", ("SessionStore.apply (", "(worker/state.py")),
    ("process: other (dead letters, bookkeeping)", ("fold_records (", "Runner.fold (")),
    (
        "checkpoint: outbox, screening, end-to-end histogram, other",
        (
            "Runner._prepare",
            "Runner.publish",
            "Runner._write",
            "(worker/runtime/checkpoint.py",
            "(worker/outbox.py",
        ),
    ),
    ("fetch (aiokafka consumer)", ("aiokafka/consumer", "KafkaSource.fetch (")),
    ("HTTP (aiohttp, /metrics)", ("aiohttp/", "(worker/http.py", "(worker/metrics.py")),
    ("aiokafka other (connections, protocol)", ("aiokafka/",)),
    ("benchmark itself", ("_sample_rss", "(bench/latency.py:1", "bench/throughput.py")),
)
IDLE: Final = "loop idle or in C (uvloop)"
LINE: Final = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
FRAME: Final = re.compile(r"^(?P<name>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def read(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if match:
            out.append((match["stack"].split(";"), int(match["count"])))
    return out


def phase_of(stack: list[str]) -> str:
    joined = ";".join(stack)
    for phase, needles in PHASES:
        if any(needle in joined for needle in needles):
            return phase
    if stack and stack[-1].startswith(("run (uvloop", "Runner.run (asyncio")):
        return IDLE
    return "loop and other"


def function(frame: str) -> str:
    """`name (file:line)` -> `name (file)`: lines of one function counted together."""
    match = FRAME.match(frame)
    return f"{match['name']} ({match['file']})" if match else frame


def summary(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks)
    phases: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks:
        phases[phase_of(stack)] += count
        own[function(stack[-1])] += count
        for name in {function(frame) for frame in stack}:
            inclusive[name] += count
    rows = [f"{total:,} samples", "", "| phase | share of samples |", "|---|---|"]
    rows += [f"| {name} | {n / total:.1%} |" for name, n in phases.most_common()]
    rows += ["", "| function (own samples) | share |", "|---|---|"]
    rows += [f"| `{name}` | {n / total:.1%} |" for name, n in own.most_common(top)]
    worker = [(name, n) for name, n in inclusive.most_common() if "(worker/" in name]
    rows += ["", "| worker function (inclusive) | share |", "|---|---|"]
    rows += [f"| `{name}` | {n / total:.1%} |" for name, n in worker[:top]]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    print(summary(read(args.profile), args.top))


if __name__ == "__main__":
    main()
