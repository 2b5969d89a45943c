"""`replay`: the fold over NDJSON on stream time, in-process and as `python -m worker replay`."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from tests.unit.builders import (
    ROOT,
    T0,
    Json,
    encode,
    ended,
    ingested,
    ndjson,
    started,
    transcoded,
)
from worker.replay import replay_lines
from worker.rules import Rules
from worker.session import Session
from worker.traffic import SyntheticTraffic

LINES: list[bytes] = [
    encode(started(T0, sid="a", name="A")) + b"\n",  # 1
    encode(ingested(0, T0, sid="a")) + b"\n",  # 2
    b'{"type":\n',  # 3: not JSON
    encode(transcoded(0, T0 + 500, sid="a")) + b"\n",  # 4
    b"   \n",  # 5: blank, skipped
    encode({**ingested(1, sid="a"), "type": "segment.deleted"}) + b"\n",  # 6: unknown type
    encode(ingested(0, T0 + 1_000, sid="b")) + b"\n",  # 7
    encode(ingested(1, T0 + 2_000, sid="a")) + b"\n",  # 8
    encode(ended(T0 + 3_000, sid="b")),  # 9: no trailing newline
]

# Stream time: now = T0 + 3000, the newest valid timestamp.
SESSION_A: Json = {
    "id": "a",
    "name": "A",
    "lastSeen": T0 + 2_000,
    "sourceSegments": 2,
    "transcodedSegments": 3,
    "sourceSegmentsDuration": 4.0,
    "transcodedSegmentsDuration": 6.0,
    "sourceBytes": 2_000_000,
    "transcodedBytes": 750_000,
    "ingestRate": 200_000.0,
    "outgoingRate": 75_000.0,
    "isHealthy": True,
    "issues": [],
    "createdAt": T0,
}
SESSION_B: Json = {
    "id": "b",
    "name": "b",
    "lastSeen": T0 + 1_000,
    "sourceSegments": 1,
    "transcodedSegments": 0,
    "sourceSegmentsDuration": 2.0,
    "transcodedSegmentsDuration": 0.0,
    "sourceBytes": 1_000_000,
    "transcodedBytes": 0,
    "ingestRate": 100_000.0,
    "outgoingRate": 0.0,
    "isHealthy": None,
    "createdAt": T0 + 1_000,
}


def run_replay(lines: list[bytes], rules: Rules | None = None) -> tuple[list[Json], int, int, str]:
    errors = io.StringIO()
    snapshots, valid, invalid = replay_lines(lines, rules or Rules(), errors)
    return [orjson.loads(s) for s in snapshots], valid, invalid, errors.getvalue()


def test_replay_lines_gives_the_final_snapshots_at_stream_time() -> None:
    sessions, valid, invalid, _ = run_replay(LINES)
    assert sessions == [SESSION_A, SESSION_B]
    assert (valid, invalid) == (6, 2)


def test_replay_lines_reports_invalid_lines_by_number() -> None:
    errors = run_replay(LINES)[3].splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("line 3: invalid_json: ")
    assert errors[1].startswith("line 6: unknown_type: ")


def test_replay_folds_the_valid_part_of_an_invalid_metadata_line_and_reports_it() -> None:
    bad = started(T0, sid="m", name="M", parentId="p", profiles=[{"name": "720p"}])
    sessions, valid, invalid, errors = run_replay(ndjson([bad, ingested(0, T0, sid="m")]))
    assert (valid, invalid) == (1, 1)
    assert errors.startswith("line 1: invalid_metadata: applied without profiles: ")
    assert (sessions[0]["name"], sessions[0]["parentId"]) == ("M", "p")
    assert "profiles" not in sessions[0]


def test_replay_rate_window_is_configurable() -> None:
    sessions = run_replay(LINES, Rules(rate_window_ms=5_000))[0]
    # (T0 - 2000, T0 + 3000]: both source segments of "a" in 5 s.
    assert sessions[0]["ingestRate"] == 400_000.0


def test_replay_is_deterministic_and_order_insensitive_for_totals() -> None:
    first = run_replay(LINES)[0]
    assert run_replay(LINES)[0] == first
    reordered = run_replay([LINES[i] for i in (7, 6, 3, 1, 0, 8)])[0]
    by_id = {s["id"]: s for s in reordered}
    assert by_id["a"] == SESSION_A
    assert by_id["b"] == SESSION_B


def test_replay_does_not_apply_the_wall_clock_rule() -> None:
    far = 2**50
    sessions, valid, invalid, errors = run_replay(ndjson([ingested(0, far)]))
    assert (valid, invalid, errors) == (1, 0, "")
    assert sessions[0]["lastSeen"] == far
    assert sessions[0]["ingestRate"] == 100_000.0


def test_replay_of_nothing_prints_nothing() -> None:
    assert run_replay([]) == ([], 0, 0, "")
    assert run_replay([b"\n", b"  \n"]) == ([], 0, 0, "")


# ------------------------------------------------------------------------ command line


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "replay", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"".join(LINES))
    return path


def test_cli_prints_ndjson_and_exits_1_with_invalid_lines(events_file: Path) -> None:
    done = cli(str(events_file))
    assert done.returncode == 1
    assert [orjson.loads(line) for line in done.stdout.splitlines()] == [SESSION_A, SESSION_B]
    assert done.stdout.endswith(b"\n")
    stderr = done.stderr.decode()
    assert "line 3: invalid_json: " in stderr
    assert "line 6: unknown_type: " in stderr
    assert "replayed 8 events: 6 valid, 2 invalid, 2 sessions" in stderr


def test_cli_exits_0_when_every_line_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "clean.ndjson"
    path.write_bytes(b"".join(line for i, line in enumerate(LINES) if i not in (2, 5)))
    done = cli(str(path), "--rate-window", "5")
    assert done.returncode == 0, done.stderr
    sessions = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert sessions == [
        {**SESSION_A, "ingestRate": 400_000.0, "outgoingRate": 150_000.0},
        {
            **SESSION_B,
            "ingestRate": 200_000.0,
        },
    ]
    assert "replayed 6 events: 6 valid, 0 invalid, 2 sessions" in done.stderr.decode()


def test_cli_reads_stdin() -> None:
    done = cli("-", stdin=b"".join(ndjson([ingested(0, T0), transcoded(0, T0)])))
    assert done.returncode == 0, done.stderr
    (session,) = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert (session["sourceSegments"], session["transcodedSegments"]) == (1, 3)


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    done = cli(str(tmp_path / "missing.ndjson"))
    assert done.returncode == 2
    assert done.stdout == b""
    assert "session-worker replay:" in done.stderr.decode()


def test_synthetic_traffic_replays_cleanly(schema: Draft202012Validator) -> None:
    traffic = SyntheticTraffic(sessions=8, start_ms=T0, seed=3, failure_rate=0.2)
    bodies = traffic.events_between(T0, T0 + 120_000)
    sessions, valid, invalid, errors = run_replay(ndjson(bodies))
    assert (valid, invalid, errors) == (len(bodies), 0, "")
    assert len(sessions) == 8
    for session in sessions:
        Session.model_validate(session)
        assert list(schema.iter_errors(session)) == []
    assert sum(s["sourceSegments"] for s in sessions) == sum(
        1 for b in bodies if b["type"] == "segment.ingested"
    )
