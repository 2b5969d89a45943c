"""HTTP surface: /metrics, /healthz, /readyz, /sessions/{id}.

The server runs on an event loop of its own, in its own thread: probes and scrapes are
answered while the consume loop folds a backlog or ticks every session (it yields rarely
then), so a busy worker is never mistaken for a dead one. Only /sessions/{id} reads live
session state, so it is answered on the owner's loop, between two steps of the fold.

A /metrics body with thousands of sessions takes a while to build, so it is built in a
thread (the per-session part by `SessionCollector.render`, written for speed and few GC
allocations), cached briefly so concurrent scrapers share one rendering, and gzipped (in the
thread too; zlib releases the GIL) when the scraper asks for it, as Prometheus does. A
scraper that comes back before the cached body expires gets it while the next one renders in
the background, so frequent scrapes never wait for a rendering (while the consume loop folds
a backlog, a rendering of 10k sessions takes several times its CPU time).
"""

from __future__ import annotations

import asyncio
import gzip
import math
import threading
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
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

SCRAPE_CACHE_S: Final = 1.0
"""A body is served until this long after its rendering started (it shows the metrics as
they were then); scrapes closer together share one rendering."""
REFRESH_AFTER_S: Final = 0.5
"""A scrape of a body older than this starts the next rendering in the background."""
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
    started_at: float
    """When its rendering started: it shows what had been published by then."""
    body: bytes
    gzipped: bytes | None = field(default=None)


def _compress(body: bytes) -> bytes:
    return gzip.compress(body, GZIP_LEVEL, mtime=0)


def _retrieve(rendering: asyncio.Task[_Exposition]) -> None:
    """A failed background rendering is not logged as never retrieved; the scrapes that
    awaited it answered 500, and the next scrape renders again."""
    if not rendering.cancelled():
        rendering.exception()


class HttpServer:
    """One aiohttp server; `start`/`stop` are awaited by the composition root."""

    def __init__(
        self,
        registry: CollectorRegistry,
        probes: Probes,
        sessions: SessionCollector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`sessions` is rendered after `registry` (and must not also be registered on it);
        `clock` times the /metrics cache."""
        self._registry = registry
        self._sessions = sessions
        self._probes = probes
        self._clock = clock
        self._cached: _Exposition | None = None
        self._rendering: asyncio.Task[_Exposition] | None = None
        """The rendering in progress (or the latest one), on the server's loop."""
        self._gzip_lock = asyncio.Lock()
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
        # The owner's kind of loop: uvloop writes a 16 MB body from C without the GIL, the
        # default loop from Python callbacks that each wait for it while the fold runs.
        loop = type(self._owner)()
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
        await self._on_server_loop(self._stop_rendering())
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
        cached = self._cached
        age_s = math.inf if cached is None else self._clock() - cached.started_at
        if cached is None or age_s > SCRAPE_CACHE_S:
            # Shielded: a scraper that hangs up must not cancel a rendering others await.
            cached = await asyncio.shield(self._render())
        elif age_s > REFRESH_AFTER_S:
            self._render()  # ready for the next scrape; this one is served the cached body
        if not gzipped:
            return cached.body
        async with self._gzip_lock:
            if cached.gzipped is None:
                cached.gzipped = await asyncio.to_thread(_compress, cached.body)
            return cached.gzipped

    def _render(self) -> asyncio.Task[_Exposition]:
        """The rendering in progress, or a new one: concurrent scrapers share it."""
        rendering = self._rendering
        if rendering is None or rendering.done():
            gzipped = self._cached is not None and self._cached.gzipped is not None
            rendering = self._rendering = asyncio.create_task(self._rendered(gzipped))
            rendering.add_done_callback(_retrieve)
        return rendering

    async def _rendered(self, gzipped: bool) -> _Exposition:
        """A new body, gzipped too when the previous one was asked for that way."""
        started_at = self._clock()
        body = await asyncio.to_thread(self.render_metrics)
        exposition = _Exposition(started_at, body)
        if gzipped:
            exposition.gzipped = await asyncio.to_thread(_compress, body)
        self._cached = exposition
        return exposition

    async def _stop_rendering(self) -> None:
        if self._rendering is not None:
            self._rendering.cancel()
            with suppress(asyncio.CancelledError):
                await self._rendering

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
