"""Rendering a session's snapshot, apart from storing it: build the Session, encode it, and
tell whether it changed since the last snapshot published.

The published snapshot's hash stays on the state (`SessionState.published_hash`): it
travels with the session when a rebalance parks and takes it back (nothing republished
unchanged), and a restore clears it (republished). Pure: `now` and the rules passed in.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from worker.health import is_inactive
from worker.rules import Rules
from worker.session import build_session, encode_session
from worker.state import SessionState


class Snapshot(NamedTuple):
    """One per refreshed session: a NamedTuple is cheaper to build than a frozen dataclass."""

    session_id: str
    partition: int
    session: dict[str, Any]
    payload: bytes


class Rendered(NamedTuple):
    snapshot: Snapshot | None
    """The new snapshot, or None when it shows what was published last."""
    final: bool
    """What it shows cannot change until the session's next event: health is null for good
    (no segment yet, ended, or inactive, which `now` only deepens) and the rates are 0 for
    good (windows empty, or inactive). The store skips rendering it until then."""


def render_snapshot(state: SessionState, now_ms: int, rules: Rules) -> Rendered:
    """The session at `now_ms` as a snapshot, if it differs from the one last published
    (which it then becomes)."""
    session = build_session(state, now_ms, rules)
    payload = encode_session(session)
    digest = hash(payload)
    final = session["isHealthy"] is None and (
        not state.has_rates() or is_inactive(state, now_ms, rules)
    )
    if digest == state.published_hash:
        return Rendered(None, final)
    state.published_hash = digest
    return Rendered(Snapshot(state.session_id, state.partition, session, payload), final)
