"""HTTP surface on the worker's event loop: /metrics, /healthz, /readyz, /sessions/{id}.

Rendering /metrics walks every exported session; it runs in a thread so a large scrape does
not stall the consume loop, and the result is cached briefly so concurrent scrapers share it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.rules import Rules
from worker.session import build_session
from worker.state import SessionState

SCRAPE_CACHE_S: Final = 0.5
"""Scrapes closer together than this share one rendering."""


@dataclass(slots=True)
class Probes:
    """What the probes report; the runner and the composition root fill it in."""

    is_ready: Callable[[], bool]
    last_progress: Callable[[], float]
    liveness_timeout_s: float
    lookup: Callable[[str], SessionState | None]
    clock_ms: Callable[[], int]
    rules: Rules


class HttpServer:
    def __init__(self, registry: CollectorRegistry, probes: Probes) -> None:
        self._registry = registry
        self._probes = probes
        self._cached: tuple[float, bytes] | None = None
        self._render_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/sessions/{session_id}", self._session)
        self._app = app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # the only way to learn an ephemeral port
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        async with self._render_lock:
            cached = self._cached
            if cached is None or time.monotonic() - cached[0] > SCRAPE_CACHE_S:
                body = await asyncio.to_thread(generate_latest, self._registry)
                cached = self._cached = (time.monotonic(), body)
        return web.Response(body=cached[1], headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        silent_s = time.monotonic() - self._probes.last_progress()
        if silent_s > self._probes.liveness_timeout_s:
            return web.json_response(
                {"status": "stuck", "secondsSinceProgress": round(silent_s, 1)}, status=503
            )
        return web.json_response({"status": "ok", "secondsSinceProgress": round(silent_s, 1)})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._probes.is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def _session(self, request: web.Request) -> web.Response:
        state = self._probes.lookup(request.match_info["session_id"])
        if state is None:
            return web.json_response({"error": "session not owned by this worker"}, status=404)
        session = build_session(state, self._probes.clock_ms(), self._probes.rules)
        return web.Response(body=orjson.dumps(session), content_type="application/json")
