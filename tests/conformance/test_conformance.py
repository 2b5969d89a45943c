"""Every snapshot decodes with the seed's Go SDK model (session.md "Normative model").

The decoder is the Go program beside this file (types written from livepeer-go-session.md
and its enums, strict as Speakeasy's generated code). First the checker itself: it must
reject what the SDK rejects, or a passing run would prove nothing. Then snapshots of
edge-case inputs folded by the real code: the replay module, and a store ticked through
every phase of a session's life (live, stalled, ended, timed out). The integration suite's
own snapshots are checked at the end of every run (tests/conftest.py).
"""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path
from typing import Any, Final

import orjson
import pytest

from tests.conformance.sessioncheck import (
    check_ndjson,
    check_snapshots,
    collect,
    collecting,
    verify_collected,
)
from tests.unit.builders import (
    PROFILES,
    SEGMENT_MS,
    T0,
    Json,
    ended,
    failed,
    ingested,
    profile,
    recording,
    seg_ts,
    segments,
    started,
    transcoded,
)
from tests.unit.test_changelog import FROZEN_RECORDS
from tests.unit.test_session import SPEC_EXAMPLE
from tests.unit.test_session_reference import RULES, varied_states
from tests.unit.test_session_size import biggest_input
from worker.changelog import decode_state
from worker.events import InvalidReason, InvalidRecord, decode_event
from worker.replay import NO_WALL_CLOCK, replay_lines
from worker.rules import Rules
from worker.session import build_session, encode_session
from worker.store import SessionStore


def snapshot(**changes: Any) -> bytes:
    """session.md's example with `changes` (`...` deletes a field)."""
    body = copy.deepcopy(SPEC_EXAMPLE)
    for name, value in changes.items():
        if value is ...:
            del body[name]
        else:
            body[name] = value
    return orjson.dumps(body)


P: Final = PROFILES[0]

REJECTED = [
    pytest.param(snapshot(record=True, recordingStatus="deleted"), "RecordingStatus: deleted"),
    pytest.param(snapshot(record=True, recordingStatus="Ready"), "RecordingStatus: Ready"),
    pytest.param(snapshot(profiles=[{**P, "encoder": "HEVC"}]), "FfmpegProfileEncoder: HEVC"),
    pytest.param(snapshot(profiles=[{**P, "profile": "H265"}]), "FfmpegProfileProfile: H265"),
    pytest.param(
        snapshot(recordingSpec={"profiles": [{"bitrate": 400}]}), 'missing required field "width"'
    ),
    pytest.param(snapshot(profiles=[{**P, "name": None}]), 'missing required field "name"'),
    pytest.param(snapshot(profiles=[{**P, "width": 1.5}]), "of type int64"),
    pytest.param(snapshot(profiles=[{**P, "fps": "30"}]), "of type int64"),
    pytest.param(snapshot(profiles=[{**P, "gop": 2}]), "of type string"),
    pytest.param(snapshot(profiles={}), "of type []main.FfmpegProfile"),
    pytest.param(snapshot(name=...), 'Session: missing required field "name"'),
    pytest.param(snapshot(name=5), "of type string"),
    pytest.param(snapshot(isHealthy="yes"), "of type bool"),
    pytest.param(snapshot(lastSeen="1"), "of type float64"),
    pytest.param(snapshot(issues="x"), "of type []string"),
    pytest.param(b"[1]", "cannot unmarshal array"),
    pytest.param(b'{"id": "x", "name": "x"', "unexpected end of JSON input"),
]


@pytest.mark.parametrize(("line", "error"), REJECTED)
def test_the_checker_rejects_what_the_sdk_rejects(line: bytes, error: str) -> None:
    result = check_snapshots([line])
    assert result.decoded == 0
    assert len(result.failures) == 1
    assert result.failures[0].startswith("line 1: ")
    assert error in result.failures[0], result.failures[0]


ACCEPTED = [
    pytest.param(snapshot(), id="session.md example"),
    pytest.param(snapshot(isHealthy=None, issues=...), id="isHealthy null"),
    pytest.param(snapshot(id=..., lastSeen=...), id="only name required"),
    pytest.param(snapshot(future={"x": [1]}, profiles=[{**P, "x": 1}]), id="unknown fields"),
    pytest.param(
        snapshot(record=True, recordingStatus="none", recordingUrl="u", mp4Url="m"), id="none"
    ),
    pytest.param(
        snapshot(
            profiles=[
                {**P, "fpsDen": 1, "quality": 44, "gop": "2", "profile": p, "encoder": "H.264"}
                for p in ("H264Baseline", "H264Main", "H264High", "H264ConstrainedHigh")
            ],
            recordingSpec={"profiles": [P]},
        ),
        id="every profile field and enum value",
    ),
]


@pytest.mark.parametrize("line", ACCEPTED)
def test_the_checker_accepts_what_the_sdk_accepts(line: bytes) -> None:
    assert check_snapshots([line]).failures == []


def test_the_checker_reports_every_failing_line_and_a_huge_one() -> None:
    huge = snapshot(name="n" * 500, issues=["x" * 400_000], isHealthy=False)  # > 64 KiB
    bad = snapshot(record=True, recordingStatus="deleted", id="bad-1")
    payload = b"\n".join([huge, bad, b"", snapshot(), bad.replace(b"bad-1", b"bad-2")])
    result = check_ndjson(payload + b"\n")
    assert result.decoded == 2
    assert [f.split(":")[0] for f in result.failures] == ["line 2", "line 5"]
    assert result.failures[0].endswith('(id "bad-1")')
    assert result.failures[1].endswith('(id "bad-2")')


def test_a_bad_snapshot_collected_during_a_run_fails_the_end_of_run_check(
    tmp_path: Path,
) -> None:
    path = tmp_path / "collected.ndjson"
    bad = snapshot(record=True, recordingStatus="deleted")
    outer = tmp_path / "outer.ndjson"
    with collecting(outer):
        with collecting(path):
            collect([snapshot(), None, bad, bad, snapshot()])  # tombstones skipped, repeats once
        collect([snapshot(name="after")])  # the outer collection resumes, the bad stays inner
    assert path.read_bytes().count(b"\n") == 2
    assert verify_collected(outer) == (1, None)
    checked, verdict = verify_collected(path)
    assert checked == 2
    assert verdict is not None
    assert verdict.startswith("1 of 2 snapshots of this run do not decode")
    assert "invalid value for RecordingStatus: deleted" in verdict
    assert path.exists(), "kept for inspection"

    with collecting(path):
        collect([snapshot(), snapshot(isHealthy=None, issues=...)])
    assert verify_collected(path) == (2, None)
    assert not path.exists()


# ------------------------------------------------------------------ edge-case inputs

NAMES: Final = [
    "n" * 500,
    "\U0001f600" * 500,  # 4-byte UTF-8
    "\u4e2d\u6587 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 e\u0301",  # CJK, RTL, combining
    'quote " backslash \\ slash / tab \t newline \n nul \x00 del \x7f',
    "\u2028\u2029\ufeff\ufffd",
    " ",
]
STATUSES: Final = ("waiting", "ready", "failed", "deleted", "none")


def edge_sessions() -> list[list[Json]]:
    """The events of one session per edge case (each list one session)."""
    cases: list[list[Json]] = []

    def add(sid: str, *bodies: Json) -> None:
        cases.append([{**body, "sessionId": sid} for body in bodies])

    urls = {"recordingUrl": "https://r/i.m3u8", "mp4Url": "https://r/v.mp4"}
    for status in STATUSES:
        for record in (True, False, None):
            meta: Json = {} if record is None else {"record": record}
            add(f"rec-{status}-{record}", started(**meta), recording(status, T0 + 1, **urls))
    add("rec-no-update", started(record=True), *segments(2))
    add("rec-url-only", started(record=True), recording("ready", T0 + 1, mp4Url="m"))
    full = {"fpsDen": 1, "quality": 44, "profile": "H264High", "encoder": "H.264"}
    gops = (2, 2.5, 0, 1e-7, 2.0, "intra", "", 2**53 - 1)
    add("spec-full", started(record=True, recordingSpec={"profiles": [profile("r", **full)]}))
    add("spec-empty", started(record=True, recordingSpec={"profiles": []}))
    add("spec-transcode", started(record=True, recordingSpec={"profiles": [{"bitrate": 400}]}))
    add("spec-hevc", started(recordingSpec={"profiles": [profile("r", encoder="HEVC")]}))
    add("profiles-minimal", started(profiles=PROFILES), *segments(3))
    add("profiles-full", started(profiles=[profile(n, **full) for n in ("a", "b")]))
    add("profiles-gop", started(profiles=[profile(f"g{i}", gop=g) for i, g in enumerate(gops)]))
    add("profiles-bad", started(profiles=[profile("a"), profile("b", width=1)]))
    add("profiles-missing", started(profiles=[*PROFILES, profile("1080p")]), *segments(3))
    for index, name in enumerate(NAMES):
        add(f"name-{index}", started(name=name), *segments(1))
    add("renditions-unicode", *segments(2, renditions={"\U0001f600" * 500: 1, "\x01": 2}))
    add("failed-unicode", *segments(2), failed(2, error="\u4e2d\x00" * 500))
    add("slow", ingested(0), transcoded(0, transcode_time=1e300))
    add("lagging", *[ingested(n) for n in range(9)])
    add("ended", started(record=True), *segments(3), ended(seg_ts(3)))
    add("ended-early", ended(T0))
    add("only-failed", failed(0))
    add("idle", *segments(2))  # times out in `ticked_snapshots`
    return cases


def ticked_snapshots(sessions: list[list[Json]]) -> tuple[list[bytes], SessionStore]:
    """Every snapshot a store publishes while folding these sessions, ticked through live,
    stalled and timed-out phases, as the runner does (decoding included)."""
    rules = Rules()
    store = SessionStore(rules)
    payloads: list[bytes] = []
    events = [body for session in sessions for body in session]
    random.Random(3).shuffle(events)
    for index, body in enumerate(events):
        decoded = decode_event(orjson.dumps(body), body["sessionId"].encode(), NO_WALL_CLOCK)
        if isinstance(decoded, InvalidRecord):
            assert decoded.reason is InvalidReason.INVALID_METADATA, decoded
            assert decoded.event is not None
            decoded = decoded.event
        store.apply(decoded, 0)
        if index % 7 == 0:
            payloads.extend(s.payload for s in store.tick(T0 + index * 100).snapshots)
    last = max(body["timestamp"] for body in events)
    for now in (last, last + SEGMENT_MS * 10, last + 60_000, last + rules.idle_timeout_ms + 1):
        payloads.extend(s.payload for s in store.tick(now).snapshots)
    return payloads, store


def test_snapshots_of_edge_case_inputs_decode_with_the_sdk() -> None:
    sessions = edge_sessions()
    lines = [orjson.dumps(body) + b"\n" for session in sessions for body in session]
    finals, valid, invalid = replay_lines(lines, Rules(), errors=io.StringIO())
    assert (len(finals), valid + invalid) == (len(sessions), len(lines))
    assert invalid == 3, "the invalid recording specs and ladder are applied, not lost"
    ticked, store = ticked_snapshots(sessions)
    published = [orjson.loads(p) for p in finals + ticked]
    # Guard: the cases reach what the SDK is strict about.
    statuses = {s.get("recordingStatus") for s in published}
    assert statuses == {"waiting", "ready", "failed", "none", None}
    assert store.live["idle"].timed_out
    assert {p.get("gop") for s in published for p in s.get("profiles", [])} >= {"2", "2.5", "1e-07"}

    result = check_snapshots(finals + ticked)
    assert result.failures == []
    assert result.decoded == len(finals) + len(ticked)


def test_the_biggest_snapshot_and_varied_states_decode_with_the_sdk() -> None:
    payloads, _ = ticked_snapshots([biggest_input()])
    assert max(map(len, payloads)) > 300_000
    for state in varied_states(150):
        newest = max(state.last_activity, state.last_seen or 0)
        for now in (newest, newest + 11_000, newest + 95_000):
            payloads.extend(encode_session(build_session(state, now, rules)) for rules in RULES)
    result = check_snapshots(payloads)
    assert (result.failures, result.decoded) == ([], len(payloads))


def test_state_restored_from_old_changelog_records_publishes_decodable_snapshots() -> None:
    """Records written before 2026-12 hold TranscodeProfile specs and `deleted` statuses."""
    records = orjson.loads(FROZEN_RECORDS.read_bytes())
    payloads: list[bytes] = []
    for record in records:
        state = decode_state(record["v2"].encode(), record["partition"]).state
        payloads.extend(
            encode_session(build_session(state, now, Rules())) for now in record["nows"]
        )
    assert any('{"bitrate":400' in r["v2"] for r in records), "legacy specs are exercised"
    result = check_snapshots(payloads)
    assert (result.failures, result.decoded) == ([], len(payloads))
