"""A rolling restart of 3 workers against a real broker, done the way Kubernetes does it,
with and without static group membership: how long input partitions go unowned and how
many group rebalances one rollout costs.

    .venv/bin/python -m bench.rollout --bootstrap 127.0.0.1:59092 \
        --broker-log /tmp/kafka-deploy/broker.log

Modes (each on fresh topics and a fresh group, under a steady live load):
  deployment-static   a Deployment (maxSurge 1, maxUnavailable 0) with
                      --group-instance-id = pod name: each new pod has a new name
  deployment-dynamic  the same Deployment, no --group-instance-id
  statefulset-static  a StatefulSet: pods replaced one at a time, highest ordinal first,
                      each deleted, then recreated under the same name (and member id)

"Owned" is what the workers' /metrics say: the sum over live processes of
`session_worker_assigned_partitions` (set once a partition's state is restored). Rebalances
are the broker's count of group generations ("Stabilized group ... generation" lines in its
log) when --broker-log is given; assignments are the workers' `session_worker_rebalances`.
Freshness is the share of events whose event-to-snapshot latency exceeded the SLO bound, from
the workers' histograms (last scrape of each process: what a process publishes while it
drains is missed, and a restarted container's counts start over). Prints one JSON line per
mode; deploy/README.md (Scaling) has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench import load

PARTITIONS: Final = 12
REPLICAS: Final = 3
SAMPLE_S: Final = 0.1
SETTLE_S: Final = 10.0
"""The group counts as settled once every partition has been owned this long."""
CRASH_BACKOFF_S: Final = 10.0
"""The kubelet's first back-off before it restarts a container that exited."""
SLO_BOUND_S: Final = 2.0
"""Publish interval (1 s) + 1 s: the freshness SLO of deploy/README.md."""
MODES: Final = ("deployment-static", "deployment-dynamic", "statefulset-static")
WORKER: Final = Path(sys.executable).with_name("session-worker")


@dataclass(slots=True)
class Pod:
    name: str
    port: int
    process: asyncio.subprocess.Process
    static: bool
    last: dict[str, float] = field(default_factory=dict)
    """The last scrape: assigned, rebalances, events within the bound, all events."""
    at_rollout: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@dataclass(slots=True)
class Result:
    mode: str
    session_timeout_s: float
    pod_start_delay_s: float
    rollout_s: float
    unowned_partition_s: float
    any_unowned_s: float
    longest_any_unowned_s: float
    assignments: int
    group_rebalances: int | None
    container_restarts: int
    events: int
    late_events: int


class Rollout:
    """Three worker processes on one group, a sampler, and the rollout steps."""

    def __init__(self, args: argparse.Namespace, mode: str, workdir: Path) -> None:
        self.args = args
        self.mode = mode
        self.workdir = workdir
        suffix = uuid.uuid4().hex[:8]
        self.topic = f"rollout.{mode}.{suffix}"
        self.group = f"rollout-{mode}-{suffix}"
        self.pods: list[Pod] = []
        self.retired: list[Pod] = []
        self.samples: list[tuple[float, int]] = []
        self.restarts = 0
        self._next_port = args.port
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))

    def _env(self, name: str, port: int, static: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        env.update(
            {
                "WORKER_BOOTSTRAP_SERVERS": self.args.bootstrap,
                "WORKER_GROUP_ID": self.group,
                "WORKER_INPUT_TOPIC": self.topic,
                "WORKER_SNAPSHOT_TOPIC": f"{self.topic}.sessions",
                "WORKER_DLQ_TOPIC": f"{self.topic}.dlq",
                "WORKER_CREATE_TOPICS": "true",
                "WORKER_TOPIC_PARTITIONS": str(PARTITIONS),
                "WORKER_SESSION_TIMEOUT_S": str(self.args.session_timeout),
                "WORKER_HTTP_HOST": "127.0.0.1",
                "WORKER_HTTP_PORT": str(port),
                "WORKER_LOG_LEVEL": "INFO",
                "WORKER_CLIENT_ID": name,
            }
        )
        if static:
            env["WORKER_GROUP_INSTANCE_ID"] = name
        return env

    async def _spawn(self, name: str, port: int, static: bool) -> asyncio.subprocess.Process:
        log = (self.workdir / f"{self.mode}-{name}.log").open("ab")
        return await asyncio.create_subprocess_exec(
            str(WORKER), "run", env=self._env(name, port, static), stdout=log, stderr=log
        )

    async def start_pod(self, name: str, static: bool) -> Pod:
        port = self._next_port
        self._next_port += 1
        pod = Pod(name, port, await self._spawn(name, port, static), static)
        self.pods.append(pod)
        return pod

    async def stop_pod(self, pod: Pod, *, wait: bool) -> None:
        """SIGTERM, as the kubelet sends it; the process drains and exits on its own."""
        pod.process.send_signal(signal.SIGTERM)
        self.pods.remove(pod)
        self.retired.append(pod)
        if wait:
            await pod.process.wait()

    async def _scrape(self, pod: Pod) -> bool:
        """Updates pod.last; returns whether /readyz says Ready."""
        base = f"http://127.0.0.1:{pod.port}"
        try:
            async with self._http.get(f"{base}/metrics") as response:
                text = await response.text()
            async with self._http.get(f"{base}/readyz") as response:
                ready = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "session_worker_assigned_partitions":
                    values["assigned"] = sample.value
                elif sample.name == "session_worker_rebalances_total":
                    values["rebalances"] = sample.value
                elif sample.name == "session_worker_event_to_snapshot_latency_seconds_bucket":
                    bound = sample.labels["le"]
                    if bound == "+Inf":
                        values["events"] = sample.value
                    elif float(bound) == SLO_BOUND_S:
                        values["fresh"] = sample.value
        if pod.alive:
            pod.last = values
        return ready

    async def sample_forever(self) -> None:
        while True:
            pods = [p for p in self.pods + self.retired if p.alive]
            await asyncio.gather(*(self._scrape(p) for p in pods))
            owned = sum(int(p.last.get("assigned", 0)) for p in pods if p.alive)
            self.samples.append((time.monotonic(), owned))
            await asyncio.sleep(SAMPLE_S)

    async def wait_ready(self, pod: Pod, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self._scrape(pod):
            if not pod.alive:  # e.g. it could not join the group in time: the kubelet restarts it
                self.restarts += 1
                await asyncio.sleep(CRASH_BACKOFF_S)
                pod.process = await self._spawn(pod.name, pod.port, pod.static)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pod.name} not Ready after {timeout_s} s")
            await asyncio.sleep(SAMPLE_S)

    async def wait_settled(self, timeout_s: float = 300.0) -> float:
        """Until every partition has been owned for SETTLE_S; returns when that began."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(SAMPLE_S)
            recent = [s for s in self.samples if s[0] >= time.monotonic() - SETTLE_S]
            full = [owned == PARTITIONS for _, owned in recent]
            if recent and all(full) and recent[0][0] <= time.monotonic() - SETTLE_S + 1:
                return recent[0][0]
        raise RuntimeError("the group did not settle")

    async def roll(self) -> None:
        static = self.mode != "deployment-dynamic"
        delay = self.args.pod_start_delay
        if self.mode.startswith("deployment"):
            # maxSurge 1, maxUnavailable 0: a new pod, Ready, then the next old one goes.
            for index, old in enumerate(list(self.pods)):
                await asyncio.sleep(delay)
                new = await self.start_pod(f"session-worker-new{index}", static)
                await self.wait_ready(new)
                await self.stop_pod(old, wait=False)
        else:
            # StatefulSet RollingUpdate: highest ordinal first; delete, wait for the pod to
            # be gone, recreate it under the same name, wait until Ready, next.
            for old in sorted(self.pods, key=lambda p: p.name, reverse=True):
                await self.stop_pod(old, wait=True)
                await asyncio.sleep(delay)
                new = await self.start_pod(old.name, static)
                await self.wait_ready(new)

    async def close(self) -> None:
        for pod in self.pods + self.retired:
            if pod.alive:
                pod.process.send_signal(signal.SIGTERM)
        for pod in self.pods + self.retired:
            with suppress(ProcessLookupError):
                await asyncio.wait_for(pod.process.wait(), 30)
        await self._http.close()


def unowned(samples: list[tuple[float, int]]) -> tuple[float, float, float]:
    """Partition-seconds unowned, seconds with any partition unowned, the longest such span
    (consecutive pod replacements that each leave some partitions unowned merge into one)."""
    partition_s = any_s = longest = gap = 0.0
    for (t0, owned), (t1, _) in itertools.pairwise(samples):
        missing = max(0, PARTITIONS - owned)
        partition_s += missing * (t1 - t0)
        if missing:
            any_s += t1 - t0
            gap += t1 - t0
            longest = max(longest, gap)
        else:
            gap = 0.0
    return partition_s, any_s, longest


GENERATION: Final = re.compile(r"Stabilized group (\S+) generation (\d+)")


def generations(broker_log: Path | None, group: str) -> list[int]:
    if broker_log is None:
        return []
    found = []
    for line in broker_log.read_text(errors="replace").splitlines():
        match = GENERATION.search(line)
        if match and match.group(1) == group:
            found.append(int(match.group(2)))
    return found


def counted(pods: Iterable[Pod], key: str) -> int:
    return round(sum(p.last.get(key, 0) - p.at_rollout.get(key, 0) for p in pods))


async def run_mode(args: argparse.Namespace, mode: str, workdir: Path) -> Result:
    rollout = Rollout(args, mode, workdir)
    await load.create_topic(args.bootstrap, rollout.topic, PARTITIONS)
    traffic = asyncio.create_task(
        load.offer_live(args.bootstrap, rollout.topic, PARTITIONS, args.rate, 3600)
    )
    sampler = asyncio.create_task(rollout.sample_forever())
    try:
        for index in range(REPLICAS):
            await rollout.start_pod(f"session-worker-{index}", mode != "deployment-dynamic")
        for pod in list(rollout.pods):
            await rollout.wait_ready(pod)
        await rollout.wait_settled()
        before = len(generations(args.broker_log, rollout.group))
        for pod in rollout.pods:
            pod.at_rollout = dict(pod.last)
        started = time.monotonic()
        await rollout.roll()
        settled = await rollout.wait_settled()
        window = [s for s in rollout.samples if started <= s[0] <= settled]
        partition_s, any_s, longest = unowned(window)
        pods = rollout.pods + rollout.retired
        after = len(generations(args.broker_log, rollout.group))
        return Result(
            mode=mode,
            session_timeout_s=args.session_timeout,
            pod_start_delay_s=args.pod_start_delay,
            rollout_s=round(settled - started, 1),
            unowned_partition_s=round(partition_s, 1),
            any_unowned_s=round(any_s, 1),
            longest_any_unowned_s=round(longest, 1),
            assignments=counted(pods, "rebalances"),
            group_rebalances=after - before if args.broker_log else None,
            container_restarts=rollout.restarts,
            events=counted(pods, "events"),
            late_events=counted(pods, "events") - counted(pods, "fresh"),
        )
    finally:
        traffic.cancel()
        sampler.cancel()
        for task in (traffic, sampler):
            with suppress(asyncio.CancelledError):
                await task
        await rollout.close()


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rollout-"))
    print(f"worker logs in {workdir}", file=sys.stderr)
    for _ in range(args.reps):
        for mode in args.modes.split(","):
            result = await run_mode(args, mode, workdir)
            print(orjson.dumps(asdict(result)).decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--broker-log", type=Path, help="the broker's log: count generations")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--rate", type=float, default=500.0, help="live input, events/s")
    parser.add_argument("--session-timeout", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--pod-start-delay",
        type=float,
        default=2.0,
        help="seconds from a pod's creation to its process start (scheduling, container)",
    )
    parser.add_argument("--port", type=int, default=19464, help="first worker HTTP port")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
