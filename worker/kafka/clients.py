"""Kafka clients: connection, TLS and SASL options, retry pacing, the admin client, and the
errors the rest of the worker sees (StartupError, KafkaClientError). Only worker/kafka/
imports aiokafka."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
)

from worker.settings import SecurityProtocol, Settings

T = TypeVar("T")


CONNECT_TIMEOUT_S: Final = 15.0
"""Startup gives up on an unreachable broker after this long, with one clear error."""

KafkaClientError = KafkaError
"""Base of every Kafka client error, named here so no other module imports aiokafka."""


RETRY_BACKOFF_MS: Final = 500
"""Pause before a client retries a failed request (fetch, metadata, coordinator; aiokafka's
default is 100): while a broker is down, fewer attempts, log lines and CPU."""


METADATA_BACKOFF_MAX_S: Final = 2.0
"""Longest pause between failed metadata updates: how late, at worst, a client notices that
the broker is back."""


def client_backoff_options() -> dict[str, Any]:
    """Retry pacing of every client (see RETRY_BACKOFF_MS)."""
    return {"retry_backoff_ms": RETRY_BACKOFF_MS}


def backoff_s(failures: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff: base, 2 x base, 4 x base, ... up to cap (0 before a failure)."""
    if failures <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2 ** min(failures - 1, 32)))


def pace_metadata_updates(
    client: Any, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Make an aiokafka client wait between failed metadata updates.

    aiokafka retries a failed update as soon as anyone asks, and its fetcher and sender ask
    in a loop while a partition has no known leader: with the broker down that was ~7,000
    attempts (and two ERROR lines each) per second and a whole core. aiokafka has no option
    for it (no reconnect backoff), so the client's update is wrapped: after n failures in a
    row it reports the failure only after `backoff_s(n)`, which paces every waiter.
    """
    update = client._metadata_update
    failures = 0

    async def paced(cluster_metadata: Any, topics: Any) -> bool:
        nonlocal failures
        updated = bool(await update(cluster_metadata, topics))
        failures = 0 if updated else failures + 1
        await sleep(backoff_s(failures, RETRY_BACKOFF_MS / 1000, METADATA_BACKOFF_MAX_S))
        return updated

    client._metadata_update = paced


class StartupError(RuntimeError):
    """A problem an operator must fix (unreachable broker, missing topic, bad setting)."""


def start_failure(client: str, error: BaseException) -> StartupError:
    """`cannot start <client>: <why>`; a timeout prints as nothing, so it is named."""
    why = str(error) or (
        f"no answer within {CONNECT_TIMEOUT_S:.0f}s"
        if isinstance(error, TimeoutError)
        else type(error).__name__
    )
    return StartupError(f"cannot start {client}: {why}")


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by every client; secrets stay in memory only."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol.value,
    }
    if settings.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        options["ssl_context"] = tls_context(settings)
    if settings.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        if settings.sasl_mechanism is None or settings.sasl_username is None:
            raise StartupError("SASL needs WORKER_SASL_MECHANISM and WORKER_SASL_USERNAME")
        password = settings.sasl_password
        # aiokafka takes the SCRAM credentials in its `sasl_plain_*` options too.
        options.update(
            sasl_mechanism=settings.sasl_mechanism.value,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=password.get_secret_value() if password else "",
        )
    return options


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verifying client context: the CA file (else the system store), optional client cert.

    Raises StartupError naming the file that cannot be loaded (never a password)."""
    try:
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
    except (OSError, ssl.SSLError) as error:
        raise StartupError(f"cannot load ssl_cafile {settings.ssl_cafile}: {error}") from error
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certfile:
        key_password = settings.ssl_key_password
        try:
            context.load_cert_chain(
                settings.ssl_certfile,
                settings.ssl_keyfile,
                key_password.get_secret_value() if key_password else None,
            )
        except (OSError, ssl.SSLError) as error:
            files = ", ".join(str(f) for f in (settings.ssl_certfile, settings.ssl_keyfile) if f)
            raise StartupError(f"cannot load the client certificate ({files}): {error}") from error
    return context


async def with_admin(
    settings: Settings, action: Callable[[AIOKafkaAdminClient], Awaitable[T]]
) -> T:
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
    except (TimeoutError, KafkaConnectionError) as error:
        await admin.close()
        where = f"cannot connect to Kafka at {settings.bootstrap_servers}"
        if isinstance(error, TimeoutError):
            raise StartupError(f"{where}: no answer within {CONNECT_TIMEOUT_S:.0f}s") from error
        raise StartupError(where) from error
    try:
        return await action(admin)
    finally:
        await admin.close()


def retriable(error: KafkaError) -> bool:
    return bool(getattr(error, "retriable", False)) or isinstance(
        error, KafkaTimeoutError | KafkaConnectionError | RequestTimedOutError
    )
