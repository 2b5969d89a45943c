"""Operator tools end to end on the real broker: `topics create`, `tail`, `dlq inspect/replay`.

Every tool runs as `python -m worker ...` in a subprocess, as an operator would run it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import ROOT
from tests.integration.conftest import StartWorker
from tests.integration.helpers import (
    Record,
    Topics,
    create_topic,
    event_records,
    free_port,
    http_get,
    latest_snapshots,
    produce,
    read_all,
    wait_for,
)
from worker.session import Session

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


def tool_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker", *args]


async def run_tool(topics: Topics, *args: str, timeout_s: float = 60) -> Done:
    process = await asyncio.create_subprocess_exec(
        *tool_args(*args),
        env=topics.worker_env(free_port()),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return await finish(process, timeout_s)


async def start_tail(topics: Topics, *args: str) -> asyncio.subprocess.Process:
    """`tail` in the background, returned once it follows the topic (its first stderr line)."""
    process = await asyncio.create_subprocess_exec(
        *tool_args("tail", *args),
        env=topics.worker_env(free_port()),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    first = await asyncio.wait_for(process.stderr.readline(), 30)
    assert first.startswith(b"tail: following " + topics.snapshots.encode()), first
    return process


async def finish(process: asyncio.subprocess.Process, timeout_s: float = 60) -> Done:
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


async def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """What the cluster says, straight from the admin API (describe_configs)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _, _, name, entries in response.resources:
            assert error_code == 0, (name, error_code)
            found[name] = {entry[0]: entry[1] for entry in entries}
    return found


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}


def session_events(session_id: str, segments: int, fail_last: bool = False) -> list[dict[str, Any]]:
    now = int(time.time() * 1000) - segments * 2_000
    events: list[dict[str, Any]] = [
        {"type": "session.started", "sessionId": session_id, "timestamp": now, "name": "Show"}
    ]
    for seq_no in range(segments):
        at = now + seq_no * 2_000
        base = {"sessionId": session_id, "seqNo": seq_no, "duration": 2.0}
        events.append({**base, "type": "segment.ingested", "timestamp": at, "bytes": 1_000})
        if fail_last and seq_no == segments - 1:
            events.append(
                {
                    "type": "segment.failed",
                    "sessionId": session_id,
                    "seqNo": seq_no,
                    "timestamp": at + 100,
                    "error": "encoder crashed",
                }
            )
        else:
            renditions = [{"name": "720p", "bytes": 500}]
            events.append(
                {
                    **base,
                    "type": "segment.transcoded",
                    "timestamp": at + 100,
                    "renditions": renditions,
                }
            )
    return events


# --- topics create ------------------------------------------------------------------------


async def test_topics_create_sets_compaction_and_is_idempotent(topics: Topics) -> None:
    names = [topics.input, topics.snapshots, topics.changelog, topics.dlq]

    first = await run_tool(topics, "topics", "create", "--topic-partitions", "3")
    assert first.code == 0, first
    assert [line.split()[4] for line in first.out.splitlines()[:4]] == ["created"] * 4

    configs = await topic_configs(topics.bootstrap, names)
    assert configs[topics.snapshots]["cleanup.policy"] == "compact"
    assert configs[topics.changelog]["cleanup.policy"] == "compact"
    assert configs[topics.dlq]["cleanup.policy"] == "delete"
    assert configs[topics.dlq]["retention.ms"] == str(14 * 86_400_000)
    assert await partition_counts(topics.bootstrap, names) == dict.fromkeys(names, 3)

    # Again, with a different default partition count: nothing changes, nothing fails.
    second = await run_tool(topics, "topics", "create", "--topic-partitions", "8")
    assert second.code == 0, second
    assert [line.split()[4] for line in second.out.splitlines()[:4]] == ["exists"] * 4
    assert "0 problem(s)" in second.out
    assert await partition_counts(topics.bootstrap, names) == dict.fromkeys(names, 3)
    assert await topic_configs(topics.bootstrap, names) == configs


async def test_topics_create_reports_a_snapshot_topic_that_is_not_compacted(
    topics: Topics,
) -> None:
    await create_topic(topics.bootstrap, topics.input, 2)
    await create_topic(topics.bootstrap, topics.snapshots, 2)  # cleanup.policy=delete

    done = await run_tool(topics, "topics", "create")

    assert done.code == 1, done
    assert "cleanup.policy is 'delete', must be 'compact'" in done.out
    configs = await topic_configs(topics.bootstrap, [topics.snapshots, topics.changelog])
    assert configs[topics.snapshots]["cleanup.policy"] == "delete", "existing topics untouched"
    assert configs[topics.changelog]["cleanup.policy"] == "compact"
    counts = await partition_counts(topics.bootstrap, [topics.changelog, topics.dlq])
    assert counts == {topics.changelog: 2, topics.dlq: 2}, "co-partitioned with the input"


async def test_topics_create_dry_run_creates_nothing(topics: Topics) -> None:
    done = await run_tool(topics, "topics", "create", "--dry-run")

    assert done.code == 0, done
    assert [line.split()[4:6] for line in done.out.splitlines()[:4]] == [["would", "create"]] * 4
    assert "topics: would create 4;" in done.out
    assert await partition_counts(topics.bootstrap, [topics.input, topics.snapshots]) == {}


async def test_topics_create_checks_the_replication_of_existing_topics(topics: Topics) -> None:
    assert (await run_tool(topics, "topics", "create", "--topic-partitions", "2")).code == 0

    done = await run_tool(topics, "topics", "create", "--replication-factor", "2")

    assert done.code == 1, done
    assert done.out.count("error: replication factor is 1, less than the 2 asked for") == 4
    assert "4 problem(s)" in done.out


async def test_topics_create_refuses_a_compacted_input(topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=topics.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topics.input, 2, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()

    done = await run_tool(topics, "topics", "create")

    assert done.code == 1, done
    lines = done.out.splitlines()
    after_input = lines[next(n for n, line in enumerate(lines) if line.startswith("input ")) + 1]
    assert after_input == "    error: cleanup.policy is 'compact', must be 'delete'"


async def test_a_topic_shared_by_two_roles_is_refused_in_one_line(topics: Topics) -> None:
    done = await run_tool(topics, "topics", "create", "--dlq-topic", topics.input)

    assert done.code == 2, done
    assert done.err == (
        "session-worker topics create: invalid settings: WORKER_INPUT_TOPIC and "
        f"WORKER_DLQ_TOPIC are both {topics.input!r}: each role needs its own topic\n"
    )
    assert await partition_counts(topics.bootstrap, [topics.input, topics.dlq]) == {}


# --- tail ---------------------------------------------------------------------------------


async def test_tail_sees_a_snapshot_as_it_is_published(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 2)
    worker = start_worker()
    await worker.wait_ready()
    tail = await start_tail(topics, "--session", "live-1", "--json", "--max-messages", "1")

    await produce(topics.bootstrap, topics.input, event_records(session_events("live-1", 3)))
    await produce(topics.bootstrap, topics.input, event_records(session_events("other", 3)))
    done = await finish(tail)

    assert done.code == 0, done
    session = Session.model_validate_json(done.out)
    assert session.id == "live-1"
    assert session.source_segments >= 1
    assert "tail: 1 shown" in done.err


async def test_tail_from_the_beginning_can_show_only_unhealthy_sessions(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 2)
    events = session_events("fine-1", 3) + session_events("sick-1", 3, fail_last=True)
    await produce(topics.bootstrap, topics.input, event_records(events))
    start_worker(WORKER_STALL_MIN_S="600")  # only the failure makes a session unhealthy

    async def both_published() -> bool:
        latest = await latest_snapshots(topics.bootstrap, topics.snapshots)
        return latest.get("sick-1", {}).get("isHealthy") is False and "fine-1" in latest

    await wait_for(both_published, 60, what="both snapshots")
    done = await run_tool(topics, "tail", "--from-beginning", "--unhealthy", "--timeout", "4")

    assert done.code == 0, done
    assert "sick-1 'Show'  UNHEALTHY" in done.out
    assert "encoder crashed" in done.out
    assert "fine-1" not in done.out


async def test_tail_stops_cleanly_on_ctrl_c(topics: Topics) -> None:
    await create_topic(topics.bootstrap, topics.snapshots, 1)
    tail = await start_tail(topics)

    tail.send_signal(signal.SIGINT)
    done = await finish(tail, timeout_s=10)

    assert done.code == 0, done
    assert "Traceback" not in done.err
    assert "tail: 0 shown, 0 read, 0 invalid" in done.err


async def test_tail_times_out_with_exit_1_when_nothing_came(topics: Topics) -> None:
    await create_topic(topics.bootstrap, topics.snapshots, 1)
    done = await run_tool(topics, "tail", "--max-messages", "1", "--timeout", "1")
    assert done.code == 1, done


async def test_tail_of_a_missing_topic_says_so(topics: Topics) -> None:
    done = await run_tool(topics, "tail")
    assert done.code == 2
    assert f"topic {topics.snapshots!r} does not exist" in done.err


# --- dlq ----------------------------------------------------------------------------------


async def dead_letters(topics: Topics, count: int) -> list[Any]:
    async def enough() -> list[Any] | None:
        found = await read_all(topics.bootstrap, topics.dlq)
        return found if len(found) >= count else None

    result: list[Any] = await wait_for(enough, 60, what=f"{count} dead letters")
    return result


async def test_dlq_inspect_lists_reasons_and_replay_reinjects_the_selection(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 2)
    good = orjson.dumps(session_events("s-1", 1)[1])
    bad: list[Record] = [
        (b"s-1", b"{not json", [("trace", b"abc")]),
        (b"s-1", orjson.dumps({**orjson.loads(good), "type": "segment.exploded"}), []),
        (b"someone-else", good, []),
    ]
    await produce(topics.bootstrap, topics.input, bad)
    start_worker()
    letters = await dead_letters(topics, 3)

    listed = await run_tool(topics, "dlq", "inspect", "--json")
    assert listed.code == 0, listed
    entries = [orjson.loads(line) for line in listed.out.splitlines()]
    assert sorted(e["reason"] for e in entries) == ["invalid_json", "key_mismatch", "unknown_type"]
    broken = next(e for e in entries if e["reason"] == "invalid_json")
    assert broken["value"] == "{not json"
    assert broken["headers"] == {"trace": "abc"}
    assert broken["source"].startswith(topics.input + " ")
    pretty = await run_tool(topics, "dlq", "inspect", "--reason", "key_mismatch")
    assert "3 dead letters" in pretty.out
    assert "1 selected (1 key_mismatch)" in pretty.out
    assert "key someone-else" in pretty.out

    async def input_records() -> dict[tuple[int, int], Any]:
        return {(r.partition, r.offset): r for r in await read_all(topics.bootstrap, topics.input)}

    before = await input_records()
    dry = await run_tool(topics, "dlq", "replay", "--reason", "invalid_json", "--dry-run")
    assert dry.code == 0, dry
    assert "would replay 1 of 3" in dry.out
    assert await input_records() == before

    done = await run_tool(topics, "dlq", "replay", "--reason", "invalid_json")
    assert done.code == 0, done
    assert f"replayed 1 of 3 dead letters (1 invalid_json) into {topics.input}" in done.out
    after = await input_records()
    replayed = [r for where, r in after.items() if where not in before]
    assert [(r.key, r.value, r.headers) for r in replayed] == [
        (b"s-1", b"{not json", {"trace": b"abc"})
    ]
    # Still invalid, so the running worker dead-letters it again, pointing at the new copy.
    again = await dead_letters(topics, 4)
    assert str(replayed[0].offset).encode() in {r.headers["dlq.source.offset"] for r in again}

    unknown = next(r for r in letters if r.headers["dlq.reason"] == b"unknown_type")
    selected = f"{unknown.partition}:{unknown.offset}"
    by_offset = await run_tool(topics, "dlq", "replay", "--offset", selected)
    assert "replayed 1 of 4 dead letters (1 unknown_type)" in by_offset.out
    newest = [r for where, r in (await input_records()).items() if where not in after]
    assert [r.value for r in newest] == [unknown.value]


async def test_dlq_replay_after_a_fix_reaches_the_snapshot(
    topics: Topics, start_worker: StartWorker
) -> None:
    """Letters written while a bug rejected valid events go through once replayed."""
    assert (await run_tool(topics, "topics", "create", "--topic-partitions", "2")).code == 0
    events = session_events("rescued-1", 4)
    headers = [("dlq.reason", b"schema_violation"), ("dlq.error", b"a bug, since fixed")]
    letters = [(key, value, [("trace", b"t"), *headers]) for key, value, _ in event_records(events)]
    await produce(topics.bootstrap, topics.dlq, letters)

    done = await run_tool(topics, "dlq", "replay", "--all")
    assert done.code == 0, done
    assert f"replayed {len(events)} of {len(events)}" in done.out
    start_worker()

    async def rescued() -> dict[str, Any] | None:
        latest = await latest_snapshots(topics.bootstrap, topics.snapshots)
        found = latest.get("rescued-1")
        return found if found and found["transcodedSegments"] == 4 else None

    session = await wait_for(rescued, 60, what="the replayed session's snapshot")
    assert session["sourceSegments"] == 4
    assert len(await read_all(topics.bootstrap, topics.dlq)) == len(events), "no new letters"


async def test_dlq_replay_skips_letters_cut_to_fit(topics: Topics) -> None:
    """A truncated letter's value is not the record that came in: listed, never replayed."""
    assert (await run_tool(topics, "topics", "create", "--topic-partitions", "1")).code == 0
    events = session_events("cut-1", 1)
    (key, value, _), *_ = event_records(events)
    assert value is not None
    cut = [("dlq.reason", b"invalid_json"), ("dlq.truncated", b"2000000")]
    whole = [("dlq.reason", b"invalid_json")]
    await produce(topics.bootstrap, topics.dlq, [(key, value[:20], cut), (key, value, whole)])

    listed = await run_tool(topics, "dlq", "inspect", "--json")
    assert [orjson.loads(line)["truncated"] for line in listed.out.splitlines()] == [2000000, None]
    pretty = await run_tool(topics, "dlq", "inspect")
    assert "(cut from 2000000 bytes)" in pretty.out
    done = await run_tool(topics, "dlq", "replay", "--all")
    assert done.code == 0, done
    assert "skipped 0:0: its value was cut from 2000000 bytes" in done.out
    assert "replayed 1 of 2 dead letters" in done.out
    assert [r.value for r in await read_all(topics.bootstrap, topics.input)] == [value]


async def test_dlq_offsets_in_a_partition_that_does_not_exist_are_an_error(
    topics: Topics,
) -> None:
    await create_topic(topics.bootstrap, topics.dlq, 2)
    for action in ("replay", "inspect"):
        done = await run_tool(topics, "dlq", action, "--offset", "1:0", "--offset", "7:3-9")
        assert done.code == 2, done
        assert done.err == (
            f"session-worker dlq {action}: {topics.dlq} has no partition 7 "
            "(its partitions are 0-1)\n"
        )
    fine = await run_tool(topics, "dlq", "replay", "--offset", "1:0")
    assert (fine.code, fine.err) == (0, "")
    assert "replayed 0 of 0 dead letters" in fine.out


# --- demo ---------------------------------------------------------------------------------


async def test_make_demo_uses_the_broker_and_http_ports_from_the_environment(
    topics: Topics,
) -> None:
    """`make demo` with KAFKA_PORT and WORKER_HTTP_PORT set, as the README says; Ctrl-C ends it."""
    http_port = free_port()
    env = {k: v for k, v in topics.worker_env(http_port).items() if k != "WORKER_BOOTSTRAP_SERVERS"}
    env.update(KAFKA_PORT=topics.bootstrap.rpartition(":")[2], WORKER_LOG_FORMAT="text")
    process = await asyncio.create_subprocess_exec(
        "make",
        "-o",
        ".venv/.installed",
        "demo",
        "DEMO_ARGS=--sessions 3",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C goes to the whole group, as in a terminal
    )
    try:

        async def ready() -> bool:
            status, _ = await asyncio.to_thread(http_get, http_port, "/readyz")
            return status == 200

        await wait_for(ready, 60, what="the demo's worker to be ready on WORKER_HTTP_PORT")
        os.killpg(process.pid, signal.SIGINT)
        done = await finish(process, timeout_s=30)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "Traceback" not in done.err
    assert " events folded into " in done.err.splitlines()[-1], done.err
