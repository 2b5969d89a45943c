"""HTTP surface: /metrics, /healthz, /readyz, /sessions/{id}.

The server runs on an event loop of its own, in its own thread: probes and scrapes are
answered while the consume loop folds a backlog or ticks every session (it yields rarely
then), so a busy worker is never mistaken for a dead one. Only /sessions/{id} reads live
session state, so it is answered on the owner's loop, between two steps of the fold.

A /metrics body with thousands of sessions takes a while to build, so it is built in a
thread (the per-session part by `SessionCollector.render`, written for speed and few GC
allocations), cached briefly so concurrent scrapers share one rendering, and gzipped (in the
thread too; zlib releases the GIL) when the scraper asks for it, as Prometheus does.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from worker.metrics import SessionCollector
from worker.rules import Rules
from worker.session import build_session
from worker.state import SessionState

SCRAPE_CACHE_S: Final = 0.5
"""Scrapes closer together than this share one rendering."""
GZIP_LEVEL: Final = 1
"""Level 1 already shrinks the exposition ~10x; higher levels cost 3x the time for ~15%."""


@dataclass(slots=True)
class Probes:
    """What the probes report; the runner and the composition root fill it in."""

    is_ready: Callable[[], bool]
    last_progress: Callable[[], float]
    """`time.monotonic()` of the consume loop's latest iteration."""
    liveness_timeout_s: float
    lookup: Callable[[str], SessionState | None]
    clock_ms: Callable[[int], int]
    """`now` of an input partition as the latest tick judged it (what was published)."""
    rules: Rules


@dataclass(slots=True)
class _Exposition:
    rendered_at: float
    body: bytes
    gzipped: bytes | None = field(default=None)


class HttpServer:
    """One aiohttp server; `start`/`stop` are awaited by the composition root."""

    def __init__(
        self,
        registry: CollectorRegistry,
        probes: Probes,
        sessions: SessionCollector | None = None,
    ) -> None:
        """`sessions` is rendered after `registry` (and must not also be registered on it)."""
        self._registry = registry
        self._sessions = sessions
        self._probes = probes
        self._cached: _Exposition | None = None
        self._render_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The server's own loop, run by `_thread`."""
        self._thread: threading.Thread | None = None
        self._owner: asyncio.AbstractEventLoop | None = None
        """The loop that owns the session state (the one `start` was awaited on)."""
        self.port: int | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/sessions/{session_id}", self._session)
        self._app = app

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (0: any free port, then in `self.port`) from the server's
        own thread; raises OSError."""
        self._owner = asyncio.get_running_loop()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="http", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            await self._on_server_loop(self._listen(host, port))
        except BaseException:
            await self.stop()
            raise

    async def _listen(self, host: str, port: int) -> None:
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else port

    async def _on_server_loop(self, work: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    async def stop(self) -> None:
        """Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await self._on_server_loop(runner.cleanup())
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()

    def render_metrics(self) -> bytes:
        """The whole exposition; may run in a thread (collectors only read)."""
        body = generate_latest(self._registry)
        if self._sessions is not None:
            body += self._sessions.render()
        return body

    async def _exposition(self, gzipped: bool) -> bytes:
        async with self._render_lock:
            cached = self._cached
            if cached is None or time.monotonic() - cached.rendered_at > SCRAPE_CACHE_S:
                body = await asyncio.to_thread(self.render_metrics)
                cached = self._cached = _Exposition(time.monotonic(), body)
            if not gzipped:
                return cached.body
            if cached.gzipped is None:
                cached.gzipped = await asyncio.to_thread(
                    gzip.compress, cached.body, GZIP_LEVEL, mtime=0
                )
            return cached.gzipped

    async def _metrics(self, request: web.Request) -> web.Response:
        gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
        body = await self._exposition(gzipped)
        headers = {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def _healthz(self, _: web.Request) -> web.Response:
        silent_s = time.monotonic() - self._probes.last_progress()
        body = {"secondsSinceProgress": round(silent_s, 1)}
        if silent_s > self._probes.liveness_timeout_s:
            return web.json_response({"status": "stuck", **body}, status=503)
        return web.json_response({"status": "ok", **body})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._probes.is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def _session(self, request: web.Request) -> web.Response:
        assert self._owner is not None
        found = asyncio.run_coroutine_threadsafe(
            self._render_session(request.match_info["session_id"]), self._owner
        )
        body = await asyncio.wrap_future(found)
        if body is None:
            return web.json_response({"error": "session not owned by this worker"}, status=404)
        return web.Response(body=body, content_type="application/json")

    async def _render_session(self, session_id: str) -> bytes | None:
        """On the owner's loop: the session is not being folded meanwhile."""
        state = self._probes.lookup(session_id)
        if state is None:
            return None
        session = build_session(state, self._probes.clock_ms(state.partition), self._probes.rules)
        return orjson.dumps(session)
