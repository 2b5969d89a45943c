"""The HTTP surface over fakes: real aiohttp server and client on localhost, no broker."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.unit.builders import DEFAULT_RULES, SID, Json, decode, seg_ts, segments, started
from tests.unit.publishing import PublishingStore
from worker.http import REFRESH_AFTER_S, SCRAPE_CACHE_S, HttpServer, Probes
from worker.metrics import WorkerMetrics
from worker.session import build_session
from worker.store import SessionStore

LABELS = f'session_id="{SID}",parent_id="stream-1",project_id="project-1"'


@dataclass
class Loop:
    """What the probes read, set by each test."""

    ready: bool = False
    last_progress: float = field(default_factory=time.monotonic)
    tick_ms: int = seg_ts(3)
    now: float = 1000.0
    """What the /metrics cache's clock reads."""


@dataclass
class Server:
    url: str
    http: HttpServer
    loop: Loop
    store: SessionStore
    metrics: WorkerMetrics


def apply_all(store: SessionStore, bodies: list[Json]) -> None:
    for body in bodies:
        store.apply(decode(body), 0)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    store = PublishingStore()
    apply_all(store, [started(parentId="stream-1", projectId="project-1"), *segments(3)])
    store.tick(seg_ts(3))
    loop = Loop()
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    probes = Probes(
        is_ready=lambda: loop.ready,
        last_progress=lambda: loop.last_progress,
        liveness_timeout_s=5.0,
        lookup=store.get,
        clock_ms=lambda _partition: loop.tick_ms,
        rules=DEFAULT_RULES,
    )
    sessions = store.collector
    http = HttpServer(registry, probes, sessions, clock=lambda: loop.now)
    await http.start("127.0.0.1", 0)
    try:
        yield Server(f"http://127.0.0.1:{http.port}", http, loop, store, metrics)
    finally:
        await http.stop()
        await http.stop()  # idempotent


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as client,
        client.get(url, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def get_json(url: str) -> tuple[int, Any]:
    status, _, body = await get(url)
    return status, orjson.loads(body)


async def test_metrics_has_worker_and_session_series(server: Server) -> None:
    server.metrics.rebalances.inc()
    status, headers, body = await get(f"{server.url}/metrics", **{"Accept-Encoding": "identity"})

    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in headers
    text = body.decode()
    assert "session_worker_rebalances_total 1.0" in text
    assert f"session_worker_session_source_segments_total{{{LABELS}}} 3\n" in text
    assert text.count("# TYPE session_worker_session_source_segments_total counter") == 1


async def test_metrics_are_gzipped_when_asked(server: Server) -> None:
    status, headers, body = await get(f"{server.url}/metrics", **{"Accept-Encoding": "gzip"})

    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == server.http.render_metrics()


def source_segments(body: bytes) -> int:
    (line,) = [
        line
        for line in body.decode().splitlines()
        if line.startswith(f"session_worker_session_source_segments_total{{{LABELS}}}")
    ]
    return int(line.rsplit(" ", 1)[1])


def count_renderings(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[threading.Event]:
    """One event per rendering of the body, set once it is rendered."""
    renderings: list[threading.Event] = []
    render = server.http.render_metrics

    def counted() -> bytes:
        done = threading.Event()
        renderings.append(done)
        body = render()
        done.set()
        return body

    monkeypatch.setattr(server.http, "render_metrics", counted)
    return renderings


async def scrape(server: Server, at: float) -> bytes:
    server.loop.now = at
    return (await get(f"{server.url}/metrics", **{"Accept-Encoding": "identity"}))[2]


def publish_two_more_segments(server: Server) -> None:
    apply_all(server.store, segments(2, first=3))
    server.store.tick(seg_ts(5))


async def test_scrapes_close_together_share_one_rendering(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    renderings = count_renderings(server, monkeypatch)
    first = await scrape(server, 1000.0)
    publish_two_more_segments(server)

    assert await scrape(server, 1000.0 + REFRESH_AFTER_S) == first
    assert len(renderings) == 1
    fresh = await scrape(server, 1000.0 + SCRAPE_CACHE_S + 0.01)  # too old: rendered again
    assert source_segments(first) == 3
    assert source_segments(fresh) == 5
    assert len(renderings) == 2


async def test_a_scrape_of_an_aging_body_renders_the_next_one_in_the_background(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    renderings = count_renderings(server, monkeypatch)
    first = await scrape(server, 1000.0)
    publish_two_more_segments(server)

    aging = 1000.0 + REFRESH_AFTER_S + 0.01
    assert await scrape(server, aging) == first  # answered at once with the cached body
    assert await asyncio.to_thread(lambda: renderings[-1].wait(timeout=30))
    assert len(renderings) == 2
    # Past the first body's expiry, the one rendered in the background is served.
    fresh = await scrape(server, 1000.0 + SCRAPE_CACHE_S + 0.01)
    assert source_segments(fresh) == 5
    assert len(renderings) == 2


async def test_a_failed_rendering_answers_500_and_the_next_scrape_renders_again(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    render = server.http.render_metrics
    monkeypatch.setattr(server.http, "render_metrics", lambda: 1 / 0)
    status, _, _ = await get(f"{server.url}/metrics")
    assert status == 500

    monkeypatch.setattr(server.http, "render_metrics", render)
    status, _, body = await get(f"{server.url}/metrics", **{"Accept-Encoding": "identity"})
    assert status == 200
    assert source_segments(body) == 3


async def test_readyz_follows_the_runner(server: Server) -> None:
    assert await get_json(f"{server.url}/readyz") == (503, {"status": "not ready"})
    server.loop.ready = True
    assert await get_json(f"{server.url}/readyz") == (200, {"status": "ready"})


async def test_healthz_fails_once_the_loop_has_not_moved_for_the_timeout(server: Server) -> None:
    status, body = await get_json(f"{server.url}/healthz")
    assert (status, body["status"]) == (200, "ok")

    server.loop.last_progress = time.monotonic() - 6.0
    status, body = await get_json(f"{server.url}/healthz")
    assert (status, body["status"]) == (503, "stuck")
    assert body["secondsSinceProgress"] >= 6.0

    server.loop.last_progress = time.monotonic()
    assert (await get_json(f"{server.url}/healthz"))[0] == 200


async def test_session_is_the_snapshot_at_the_last_tick(server: Server) -> None:
    status, body = await get_json(f"{server.url}/sessions/{SID}")

    assert status == 200
    state = server.store.get(SID)
    assert state is not None
    assert body == build_session(state, seg_ts(3), DEFAULT_RULES)
    assert body["sourceSegments"] == 3


async def test_unknown_session_is_404(server: Server) -> None:
    status, body = await get_json(f"{server.url}/sessions/nobody-here")

    assert status == 404
    assert "error" in body


async def test_a_taken_port_raises_oserror(server: Server) -> None:
    other = HttpServer(CollectorRegistry(), server.http._probes)
    assert server.http.port is not None
    with pytest.raises(OSError, match="address already in use"):
        await other.start("127.0.0.1", server.http.port)
    await other.stop()


async def test_probes_and_scrapes_answer_while_the_consume_loop_is_blocked(
    server: Server,
) -> None:
    """The consume loop may not yield for a while (a big fetch, a tick of every session):
    the server has its own loop and thread, so a probe is answered while this loop blocks
    (if it shared this loop, nothing could answer until the block ends, and the wait would
    give up)."""
    server.loop.ready = True
    answers: list[int] = []
    answered = threading.Event()

    def probe() -> None:
        for path in ("/readyz", "/healthz", "/metrics"):
            with urllib.request.urlopen(server.url + path, timeout=30) as response:  # noqa: S310 (http://127.0.0.1)
                answers.append(response.status)
        answered.set()

    prober = threading.Thread(target=probe)
    prober.start()
    answered.wait(timeout=30)  # blocks this event loop, as a long fold would
    prober.join()
    assert answers == [200, 200, 200]
    assert answered.is_set()
