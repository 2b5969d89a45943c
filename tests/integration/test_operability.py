"""Operability against a running worker on the real broker, over real HTTP: /metrics equals
the snapshots, /sessions, readiness and liveness, series gone after eviction, start-up
errors, and Kafka security (SASL_SSL with SCRAM and PLAIN) on a second, secured broker."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import TlsFiles, write_tls_files
from tests.conftest import KAFKA_SCRIPT, ROOT
from tests.integration.conftest import StartWorker
from tests.integration.helpers import (
    Topics,
    WorkerProcess,
    create_topic,
    event_records,
    free_port,
    http_get,
    latest_snapshots,
    produce,
    wait_for,
)
from worker.kafka.clients import client_options
from worker.settings import Settings
from worker.traffic import SyntheticTraffic

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SESSION: Final = "session_worker_session_"
NUMBERS: Final = {
    "sourceSegments": "source_segments_total",
    "transcodedSegments": "transcoded_segments_total",
    "sourceSegmentsDuration": "source_duration_seconds_total",
    "transcodedSegmentsDuration": "transcoded_duration_seconds_total",
    "sourceBytes": "source_bytes_total",
    "transcodedBytes": "transcoded_bytes_total",
    "ingestRate": "ingest_rate_bytes_per_second",
    "outgoingRate": "outgoing_rate_bytes_per_second",
}
RECORDING_STATES: Final = ("waiting", "ready", "failed", "none")  # the SDK enum (session.md)
STARTUP_DEADLINE_S: Final = 20.0


def scrape(port: int) -> Samples:
    status, body = http_get(port, "/metrics")
    assert status == 200, body[:500]
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def session_labels(snapshot: dict[str, Any], **extra: str) -> frozenset[tuple[str, str]]:
    labels = {
        "session_id": snapshot["id"],
        "parent_id": snapshot.get("parentId", ""),
        "project_id": snapshot.get("projectId", ""),
        **extra,
    }
    return frozenset(labels.items())


def series_of(samples: Samples, session_id: str) -> dict[str, float]:
    return {
        name: value
        for (name, labels), value in samples.items()
        if ("session_id", session_id) in labels and not name.endswith("recording_status")
    }


def mismatches(snapshot: dict[str, Any], samples: Samples) -> list[str]:
    """How the session's series differ from its snapshot (empty: they agree)."""
    labels = session_labels(snapshot)
    expected = {f"{SESSION}{metric}": float(snapshot[key]) for key, metric in NUMBERS.items()}
    expected[f"{SESSION}issues"] = float(len(snapshot.get("issues", [])))
    if snapshot["isHealthy"] is not None:
        expected[f"{SESSION}healthy"] = 1.0 if snapshot["isHealthy"] else 0.0
    if "lastSeen" in snapshot:
        expected[f"{SESSION}last_seen_timestamp_seconds"] = snapshot["lastSeen"] / 1000
    actual = {name: value for (name, these), value in samples.items() if these == labels}
    problems = [f"{n}: {actual.get(n)} != {v}" for n, v in expected.items() if actual.get(n) != v]
    problems += [f"unexpected {n}" for n in set(actual) - set(expected)]
    current = snapshot.get("recordingStatus")
    for status in RECORDING_STATES:
        key = (f"{SESSION}recording_status", session_labels(snapshot, status=status))
        want = None if current is None else float(status == current)
        if samples.get(key) != want:
            problems.append(f"recording_status{{{status}}}: {samples.get(key)} != {want}")
    return problems


def recent_traffic(sessions: int, seed: int) -> list[dict[str, Any]]:
    """A minute of traffic: streams still live, one stalled, some ended and recorded."""
    now = int(time.time() * 1000)
    traffic = SyntheticTraffic(
        sessions,
        start_ms=now - 60_000,
        seed=seed,
        segments_before_end=8,
        ending_every=2,
        id_prefix="ops",
    )
    return traffic.events_between(now - 60_000, now)


def get_json(port: int, path: str) -> tuple[int, Any]:
    status, body = http_get(port, path)
    return status, orjson.loads(body) if body else None


async def test_metrics_and_sessions_endpoint_equal_the_published_snapshots(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 3)
    events = recent_traffic(9, seed=31)
    await produce(topics.bootstrap, topics.input, event_records(events))
    worker = start_worker(WORKER_RATE_WINDOW_S="3", WORKER_STALL_MIN_S="4")
    await worker.wait_ready()
    ids = {e["sessionId"] for e in events}

    async def agree() -> dict[str, dict[str, Any]] | None:
        latest = await latest_snapshots(topics.bootstrap, topics.snapshots)
        samples = scrape(worker.port)
        if set(latest) != ids:
            return None
        problems = {sid: mismatches(s, samples) for sid, s in latest.items()}
        return latest if not any(problems.values()) else None

    latest = await wait_for(agree, 60, 1.0, "every session's series equal to its snapshot")
    kinds = {
        "recorded": [s for s in latest.values() if "recordingStatus" in s],
        "unhealthy": [s for s in latest.values() if s["isHealthy"] is False],
        "ended": [s for s in latest.values() if s["isHealthy"] is None],
        "with parent": [s for s in latest.values() if s.get("parentId")],
    }
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}

    samples = scrape(worker.port)
    by_type: dict[str, int] = {}
    for e in events:
        by_type[e["type"]] = by_type.get(e["type"], 0) + 1
    for event_type, count in by_type.items():
        key = ("session_worker_events_consumed_total", frozenset({("type", event_type)}))
        assert samples[key] == count, event_type
    empty: frozenset[tuple[str, str]] = frozenset()
    assert samples[("session_worker_sessions_in_memory", empty)] == len(ids)
    assert samples[("session_worker_assigned_partitions", empty)] == 3
    assert samples[("session_worker_sessions_not_exported", empty)] == 0
    assert samples[("session_worker_snapshots_published_total", empty)] >= len(ids)
    assert samples[("session_worker_rebalances_total", empty)] >= 1
    assert samples[("session_worker_state_restore_duration_seconds_count", empty)] >= 1
    assert samples[("session_worker_publish_latency_seconds_count", empty)] >= 1
    assert samples[("session_worker_event_to_snapshot_latency_seconds_count", empty)] >= 1
    version = [k for k in samples if k[0] == "session_worker_build_info"]
    assert len(version) == 1
    assert dict(version[0][1])["version"]

    async def lag_polled() -> bool:
        lags = [k for k in scrape(worker.port) if k[0] == "session_worker_consumer_lag_records"]
        return {dict(labels)["partition"] for _, labels in lags} == {"0", "1", "2"}

    await wait_for(lag_polled, 20, 1.0, "consumer lag for each partition")

    for session_id in latest:

        async def same_json(sid: str = session_id) -> bool:
            status, body = get_json(worker.port, f"/sessions/{sid}")
            current = (await latest_snapshots(topics.bootstrap, topics.snapshots))[sid]
            return status == 200 and body == current

        await wait_for(same_json, 20, 0.5, f"/sessions/{session_id} equal to its snapshot")
    assert get_json(worker.port, "/sessions/no-such-session")[0] == 404
    assert worker.terminate() == 0


async def test_readyz_waits_for_the_assignment(topics: Topics, start_worker: StartWorker) -> None:
    """A second worker joins while the first one's static membership is still held by a
    killed process: the group cannot assign anything until that member's session times
    out, so the second worker's HTTP is up but not ready for seconds; then it is."""
    await create_topic(topics.bootstrap, topics.input, 2)
    timeout = {"WORKER_SESSION_TIMEOUT_S": "8"}
    first = start_worker(WORKER_GROUP_INSTANCE_ID="ops-static", **timeout)
    await first.wait_ready()
    first.kill()

    second = start_worker(**timeout)
    http_up = await wait_for(
        lambda: _probe(second, "/healthz"), 30, 0.1, "the second worker's HTTP server"
    )
    assert http_up == 200
    http_up_at = time.monotonic()
    assert http_get(second.port, "/readyz")[0] == 503
    samples = scrape(second.port)
    assert samples[("session_worker_assigned_partitions", frozenset())] == 0
    await second.wait_ready(timeout_s=60)
    waited = time.monotonic() - http_up_at
    assert waited > 2, f"ready after {waited:.1f}s: the group did not wait for the dead member"
    assert scrape(second.port)[("session_worker_assigned_partitions", frozenset())] == 2
    assert get_json(second.port, "/readyz") == (200, {"status": "ready"})
    assert second.terminate() == 0


async def _probe(worker: WorkerProcess, path: str) -> int:
    if worker.process.poll() is not None:
        raise AssertionError(f"worker exited ({worker.process.returncode}):\n{worker.logs()}")
    return http_get(worker.port, path)[0]


async def test_healthz_fails_while_the_loop_is_stuck_and_recovers(
    topics: Topics, start_worker: StartWorker, tmp_path: Path
) -> None:
    await create_topic(topics.bootstrap, topics.input, 1)
    stall = tmp_path / "stall"
    worker = start_worker(WORKER_DEBUG_STALL_FILE=str(stall), WORKER_LIVENESS_TIMEOUT_S="2")
    await worker.wait_ready()
    status, body = get_json(worker.port, "/healthz")
    assert (status, body["status"]) == (200, "ok")

    stall.touch()
    stuck = await wait_for(
        lambda: _status_body(worker, "/healthz", 503), 15, 0.3, "/healthz to report stuck"
    )
    assert stuck["status"] == "stuck"
    assert stuck["secondsSinceProgress"] >= 2
    # HTTP itself is fine, and so is readiness: only liveness says the loop is stuck.
    assert http_get(worker.port, "/readyz")[0] == 200
    assert http_get(worker.port, "/metrics")[0] == 200
    events = recent_traffic(1, seed=5)
    await produce(topics.bootstrap, topics.input, event_records(events))
    await asyncio.sleep(1.5)
    assert not series_of(scrape(worker.port), events[0]["sessionId"]), "stuck: nothing folded"

    stall.unlink()
    await wait_for(lambda: _status_body(worker, "/healthz", 200), 15, 0.3, "/healthz to recover")
    await wait_for(
        lambda: _has_series(worker, events[0]["sessionId"]), 20, 0.5, "events folded after"
    )
    logs = worker.logs()
    assert "consume loop stalled by the test hook" in logs
    assert "consume loop resumed by the test hook" in logs
    assert worker.terminate() == 0


async def _status_body(worker: WorkerProcess, path: str, want: int) -> Any:
    status, body = get_json(worker.port, path)
    return body if status == want else None


async def _has_series(worker: WorkerProcess, session_id: str) -> bool:
    return bool(series_of(scrape(worker.port), session_id))


async def test_a_sessions_series_disappear_after_its_eviction(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 1)
    worker = start_worker(WORKER_RETENTION_S="2", WORKER_RATE_WINDOW_S="1")
    await worker.wait_ready()
    now = int(time.time() * 1000)
    ended, staying = "ops-ends", "ops-stays"
    events: list[dict[str, Any]] = []
    for sid in (ended, staying):
        base = {"sessionId": sid, "timestamp": now - 4_000}
        events.append(
            {**base, "type": "session.started", "name": sid, "parentId": "p9", "projectId": "j9"}
        )
        events += [
            {**base, "type": "segment.ingested", "seqNo": n, "duration": 2.0, "bytes": 1_000 + n}
            for n in range(2)
        ]
    events.append({"type": "session.ended", "sessionId": ended, "timestamp": now})
    await produce(topics.bootstrap, topics.input, event_records(events))

    await wait_for(lambda: _has_series(worker, ended), 20, 0.3, "the ended session's series")
    assert http_get(worker.port, f"/sessions/{ended}")[0] == 200

    async def evicted() -> bool:
        samples = scrape(worker.port)
        return not series_of(samples, ended) and bool(series_of(samples, staying))

    await wait_for(evicted, 30, 0.5, "the ended session's series to disappear")
    samples = scrape(worker.port)
    assert ended not in "".join(str(labels) for _, labels in samples)
    assert samples[("session_worker_sessions_in_memory", frozenset())] == 1
    assert http_get(worker.port, f"/sessions/{ended}")[0] == 404
    final = (await latest_snapshots(topics.bootstrap, topics.snapshots))[ended]
    assert final["sourceSegments"] == 2, "the final snapshot stays on the topic"
    assert worker.terminate() == 0


# --- start-up errors ---------------------------------------------------------------------


def wait_exit(worker: WorkerProcess, deadline_s: float = STARTUP_DEADLINE_S) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = worker.process.wait(deadline_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {deadline_s}s:\n{worker.logs()}") from None
    return code, time.monotonic() - started


def error_lines(worker: WorkerProcess) -> list[str]:
    lines = worker.log_path.read_text().splitlines()
    return [line for line in lines if re.search(r"error|Traceback|Exception", line, re.I)]


def only_error(worker: WorkerProcess) -> dict[str, Any]:
    """The single error line of a JSON-logging worker, parsed."""
    errors = error_lines(worker)
    assert len(errors) == 1, worker.logs()
    entry: dict[str, Any] = orjson.loads(errors[0])
    assert entry["level"] == "error"
    return entry


def test_an_unreachable_broker_is_one_error_line_and_exit_2(start_worker: StartWorker) -> None:
    worker = start_worker(WORKER_BOOTSTRAP_SERVERS="127.0.0.1:1")
    code, took = wait_exit(worker)

    assert code == 2
    entry = only_error(worker)
    assert entry["message"].startswith("cannot start: cannot connect to Kafka at 127.0.0.1:1")
    assert "Connection refused" in entry["message"]
    assert took < STARTUP_DEADLINE_S


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A port that accepts TCP connections and never answers (a hung or firewalled broker)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_broker_that_never_answers_is_given_up_in_bounded_time(
    start_worker: StartWorker, silent_broker: str
) -> None:
    worker = start_worker(WORKER_BOOTSTRAP_SERVERS=silent_broker)
    code, took = wait_exit(worker)

    assert code == 2
    message = only_error(worker)["message"]
    assert message.startswith(f"cannot start: cannot connect to Kafka at {silent_broker}")
    assert "TimeoutError" in message or "no answer within" in message, message
    assert took < STARTUP_DEADLINE_S


def test_sigterm_during_startup_stops_at_once(
    start_worker: StartWorker, silent_broker: str
) -> None:
    worker = start_worker(WORKER_BOOTSTRAP_SERVERS=silent_broker)
    time.sleep(3)  # interpreter up, stuck connecting
    assert worker.process.poll() is None
    worker.process.send_signal(signal.SIGTERM)
    code, took = wait_exit(worker, 5)

    assert code == 0
    assert took < 5
    assert "stopped during start-up" in worker.logs()
    assert error_lines(worker) == []


async def test_a_missing_input_topic_is_one_error_line(
    topics: Topics, start_worker: StartWorker
) -> None:
    worker = start_worker(WORKER_CREATE_TOPICS="false")
    code, took = wait_exit(worker)

    assert code == 2
    message = only_error(worker)["message"]
    assert message == f"cannot start: input topic {topics.input!r} does not exist"
    assert took < STARTUP_DEADLINE_S


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WORKER_PUBLISH_INTERVAL_S": "-1"}, "WORKER_PUBLISH_INTERVAL_S=-1: Input should be"),
        ({"WORKER_MAX_POLL_RECORDS": "many"}, "WORKER_MAX_POLL_RECORDS=many: Input should be"),
        ({"WORKER_SECURITY_PROTOCOL": "SASL_SSL"}, "settings: SASL_SSL needs WORKER_SASL_"),
        ({"WORKER_LOG_FORMAT": "xml"}, "WORKER_LOG_FORMAT=xml: Input should be 'json' or 'text'"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    start_worker: StartWorker, env: dict[str, str], expected: str
) -> None:
    worker = start_worker(**env)
    code, _ = wait_exit(worker, 10)

    assert code == 2
    (line,) = worker.log_path.read_text().splitlines()
    assert line.startswith(f"session-worker run: invalid {expected}"), line


async def test_a_taken_http_port_is_one_error_line(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        worker = start_worker(WORKER_HTTP_PORT=port)
        code, _ = wait_exit(worker)

    assert code == 2
    message = only_error(worker)["message"]
    assert message.startswith(f"cannot start: cannot serve HTTP on 127.0.0.1:{port}")


def test_text_logs_for_humans(start_worker: StartWorker) -> None:
    worker = start_worker("--log-format", "text", WORKER_BOOTSTRAP_SERVERS="127.0.0.1:1")
    code, _ = wait_exit(worker)

    assert code == 2
    (line,) = error_lines(worker)
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d ERROR   worker\.app: cannot start: cannot connect to Kafka at "
        r"127\.0\.0\.1:1 \(.*Connection refused\)",
        line,
    ), line


# --- Kafka security on a second broker ---------------------------------------------------

USER: Final = "alice"
PASSWORD: Final = "alice-Secret-pw-7"
JAAS_PLAIN: Final = (
    f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{PASSWORD}";'
)
JAAS_SCRAM: Final = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
BROKER_START_TIMEOUT_S: Final = 150


@dataclass(frozen=True)
class SecuredBroker:
    sasl_ssl: str
    sasl_plaintext: str
    tls: TlsFiles

    def env(self, mechanism: str, password: str = PASSWORD, tls: bool = True) -> dict[str, str]:
        env = {
            "WORKER_SASL_MECHANISM": mechanism,
            "WORKER_SASL_USERNAME": USER,
            "WORKER_SASL_PASSWORD": password,
        }
        if tls:
            env |= {
                "WORKER_BOOTSTRAP_SERVERS": self.sasl_ssl,
                "WORKER_SECURITY_PROTOCOL": "SASL_SSL",
                "WORKER_SSL_CAFILE": str(self.tls.ca),
            }
        else:
            env |= {
                "WORKER_BOOTSTRAP_SERVERS": self.sasl_plaintext,
                "WORKER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            }
        return env


def kafka_libs() -> Path:
    subprocess.run(["bash", str(KAFKA_SCRIPT), "fetch"], check=True, capture_output=True)
    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka\.version>(.+?)</kafka\.version>", pom)
    version = os.environ.get("KAFKA_VERSION") or (found.group(1) if found else "4.1.1")
    return ROOT / ".cache" / "kafka" / version / "libs"


def secured_config(run_dir: Path, tls: TlsFiles, ports: dict[str, int]) -> str:
    listeners = ",".join(f"{name}://127.0.0.1:{port}" for name, port in ports.items())
    advertised = ",".join(
        f"{name}://127.0.0.1:{port}" for name, port in ports.items() if name != "CONTROLLER"
    )
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{ports['CONTROLLER']}",
        f"listeners={listeners}",
        f"advertised.listeners={advertised}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,"
        "CONTROLLER:PLAINTEXT,BROKER:PLAINTEXT",
        "inter.broker.listener.name=BROKER",
        "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={tls.key_and_cert}",
        f"log.dirs={run_dir / 'data'}",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
    ]
    for listener in ("sasl_ssl", "sasl_plaintext"):
        prefix = f"listener.name.{listener}"
        lines += [
            f"{prefix}.plain.sasl.jaas.config={JAAS_PLAIN}",
            f"{prefix}.scram-sha-256.sasl.jaas.config={JAAS_SCRAM}",
            f"{prefix}.scram-sha-512.sasl.jaas.config={JAAS_SCRAM}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def secured_broker(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredBroker]:
    """A private single-node broker with SASL_SSL and SASL_PLAINTEXT listeners (PLAIN and
    SCRAM users, a certificate from a throwaway CA), started from the cached jars."""
    del kafka_bootstrap  # the main broker's fixture fetched the jars (and we reuse its JVM)
    run_dir = tmp_path_factory.mktemp("secured-kafka")
    tls = write_tls_files(run_dir)
    names = ("SASL_SSL", "SASL_PLAINTEXT", "CONTROLLER", "BROKER")
    ports = {name: free_port() for name in names}
    config = run_dir / "server.properties"
    config.write_text(secured_config(run_dir, tls, ports))
    libs = kafka_libs()
    java = ["java", "-Xms128m", "-Xmx384m", "-cp", f"{libs}/*"]
    log4j = f"-Dlog4j2.configurationFile={ROOT / 'scripts' / 'kafka' / 'log4j2.properties'}"
    credentials = [f"SCRAM-SHA-{bits}=[name={USER},password={PASSWORD}]" for bits in (256, 512)]
    format_storage = [*java, log4j, "kafka.tools.StorageTool", "format", "--config", str(config)]
    format_storage += ["--cluster-id", "0pS5pOKiRSmH7c0xvlNxiA"]
    for credential in credentials:
        format_storage += ["--add-scram", credential]
    subprocess.run(format_storage, check=True, capture_output=True, timeout=120)
    log = run_dir / "broker.log"
    with log.open("wb") as out:
        broker = subprocess.Popen(
            [*java, log4j, "kafka.Kafka", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while "Kafka Server started" not in log.read_text(errors="replace"):
            if broker.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"secured broker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield SecuredBroker(
            f"127.0.0.1:{ports['SASL_SSL']}", f"127.0.0.1:{ports['SASL_PLAINTEXT']}", tls
        )
    finally:
        broker.terminate()
        try:
            broker.wait(20)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


async def produce_secured(settings: Settings, topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        for key, value, headers in event_records(events):
            await producer.send(topic, value=value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def test_sasl_ssl_scram_runs_the_whole_pipeline(
    topics: Topics, start_worker: StartWorker, secured_broker: SecuredBroker
) -> None:
    env = secured_broker.env("SCRAM-SHA-512")
    worker = start_worker(WORKER_TOPIC_PARTITIONS="2", **env)
    await worker.wait_ready()
    settings = Settings(
        bootstrap_servers=env["WORKER_BOOTSTRAP_SERVERS"],
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",  # another mechanism, same user
        sasl_username=USER,
        sasl_password=PASSWORD,
        ssl_cafile=str(secured_broker.tls.ca),
    )
    events = recent_traffic(2, seed=13)
    await produce_secured(settings, topics.input, events)

    async def folded() -> bool:
        return all(_has_series_now(worker, e["sessionId"]) for e in events)

    await wait_for(folded, 30, 0.5, "events folded over SASL_SSL")
    assert PASSWORD not in worker.logs()
    assert worker.terminate() == 0


def _has_series_now(worker: WorkerProcess, session_id: str) -> bool:
    return bool(series_of(scrape(worker.port), session_id))


async def test_sasl_plain_over_tls_and_scram_without_tls_connect(
    topics: Topics, start_worker: StartWorker, secured_broker: SecuredBroker
) -> None:
    # Separate groups: each gets every partition at once, no rebalance between them.
    plain = start_worker(WORKER_GROUP_ID=f"{topics.group}-plain", **secured_broker.env("PLAIN"))
    scram = start_worker(
        WORKER_GROUP_ID=f"{topics.group}-scram", **secured_broker.env("SCRAM-SHA-256", tls=False)
    )
    await plain.wait_ready()
    await scram.wait_ready()
    assert plain.terminate() == 0
    assert scram.terminate() == 0


@pytest.mark.parametrize(
    ("mechanism", "tls"), [("SCRAM-SHA-512", True), ("SCRAM-SHA-256", False), ("PLAIN", True)]
)
def test_a_wrong_password_fails_fast_with_a_clear_error(
    start_worker: StartWorker, secured_broker: SecuredBroker, mechanism: str, tls: bool
) -> None:
    wrong = "not-the-Password-9"
    worker = start_worker(**secured_broker.env(mechanism, password=wrong, tls=tls))
    code, took = wait_exit(worker)

    assert code == 2
    message = only_error(worker)["message"]
    assert message.startswith("cannot start: cannot connect to Kafka at "), message
    assert "SaslAuthenticationFailed" in message
    assert took < 10, f"took {took:.1f}s"
    assert wrong not in worker.logs()
    assert PASSWORD not in worker.logs()


def test_a_certificate_from_another_ca_is_refused(
    start_worker: StartWorker, secured_broker: SecuredBroker, tmp_path: Path
) -> None:
    other = write_tls_files(tmp_path)
    env = secured_broker.env("SCRAM-SHA-512") | {"WORKER_SSL_CAFILE": str(other.ca)}
    worker = start_worker(**env)
    code, _ = wait_exit(worker)

    assert code == 2
    message = only_error(worker)["message"]
    assert message.startswith("cannot start: cannot connect to Kafka at ")
    assert "CERTIFICATE_VERIFY_FAILED" in message, message


def test_run_help_lists_the_security_and_log_flags() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    for flag in ("--security-protocol", "--sasl-password", "--ssl-cafile", "--log-format"):
        assert flag in done.stdout
