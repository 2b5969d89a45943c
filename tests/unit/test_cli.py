"""The command line and the broker-free parts of the operator tools."""

from __future__ import annotations

import dataclasses
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout as redirect
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from tests.unit.builders import ROOT, T0, encode, ingested, started
from worker import cli
from worker.__main__ import main
from worker.cli import build_parser
from worker.demo import broker_env, local_port
from worker.dlq import DeadLetter, OffsetRange, Selection, letter_json, parse_offset_range
from worker.kafka.readers import StoredRecord
from worker.kafka.topics import TopicLayout, TopicSpec, topic_config
from worker.replay import replay_file
from worker.settings import Settings
from worker.tools import SnapshotPrinter, TailOptions, check_topic, planned_topics

SNAPSHOT = {
    "id": "s1",
    "name": "Show",
    "lastSeen": T0,
    "sourceSegments": 3,
    "transcodedSegments": 9,
    "sourceSegmentsDuration": 6.0,
    "transcodedSegmentsDuration": 18.0,
    "sourceBytes": 3_000_000,
    "transcodedBytes": 2_250_000,
    "ingestRate": 300_000.0,
    "outgoingRate": 225_000.0,
    "isHealthy": True,
    "issues": [],
    "createdAt": T0,
}
DLQ_HEADERS = [
    ("dlq.reason", b"invalid_json"),
    ("dlq.error", b"Invalid JSON: EOF"),
    ("dlq.source.topic", b"media.segment-events"),
    ("dlq.source.partition", b"4"),
    ("dlq.source.offset", b"1234"),
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`main` configures the root logger; leave it as other tests expect it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(value: bytes | None, offset: int = 0, partition: int = 0, **kw: object) -> StoredRecord:
    fields: dict[str, object] = {
        "topic": "t",
        "partition": partition,
        "offset": offset,
        "timestamp": T0,
        "key": b"s1",
        "value": value,
        "headers": (),
    }
    fields.update(kw)
    return StoredRecord(**fields)  # type: ignore[arg-type]


def snapshot(**fields: object) -> bytes:
    return orjson.dumps({**SNAPSHOT, **fields})


# --- parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["tail", "--session", "a", "--session", "b", "--unhealthy", "--json", "--from-beginning"],
        ["tail", "--max-messages", "3", "--timeout", "2.5", "--snapshot-topic", "x"],
        ["topics", "create", "--dry-run", "--topic-partitions", "12", "--replication-factor", "3"],
        ["dlq", "inspect", "--reason", "schema_violation", "--offset", "2:10-20", "--json"],
        ["dlq", "replay", "--all", "--dry-run", "--to", "other", "--dlq-topic", "d"],
    ],
)
def test_every_tool_command_parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_tail_options_reach_the_command() -> None:
    args = build_parser().parse_args(
        ["tail", "--session", "a", "--session", "b", "--max-messages", "3", "--timeout", "2"]
    )
    assert (args.session, args.max_messages, args.timeout) == (["a", "b"], 3, 2.0)
    assert not args.unhealthy
    assert not args.from_beginning


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["dlq", "replay"], "--reason, --offset or --all"),
        (["dlq", "replay", "--reason", "nonsense"], "invalid choice"),
        (["dlq", "inspect", "--offset", "a-b"], "PARTITION:FIRST-LAST"),
        (["tail", "--max-messages", "0"], "not >= 1"),
        (["topics"], "required"),
    ],
)
def test_bad_invocations_exit_2_with_a_reason(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_an_unreachable_broker_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["topics", "create", "--bootstrap-servers", "127.0.0.1:1"])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("session-worker topics create: cannot ")
    assert "Kafka at 127.0.0.1:1" in last


# --- settings on the command line -----------------------------------------------------------


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real entry point in a child process: what a user sees, tracebacks included."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "complaint"),
    [
        (["--rate-window", "0"], {}, "--rate-window=0: Input should be greater than 0"),
        (["--rate-window", "-5"], {}, "--rate-window=-5: Input should be greater than 0"),
        (["--log-level", "bogus"], {}, "--log-level=bogus: must be one of DEBUG, INFO"),
        ([], {"WORKER_RATE_WINDOW_S": "inf"}, "WORKER_RATE_WINDOW_S=inf: Input should be a finite"),
    ],
)
def test_a_bad_replay_setting_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], complaint: str, tmp_path: Path
) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes(encode(started(T0)) + b"\n")
    done = run_cli("replay", str(events), *args, **env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"session-worker replay: invalid {complaint}")
    assert len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_a_missing_replay_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_cli("replay", str(tmp_path / "nope.ndjson"))
    assert done.returncode == 2
    missing = tmp_path / "nope.ndjson"
    assert done.stderr == (
        f"session-worker replay: cannot read {missing}: No such file or directory\n"
    )


def test_replay_folds_with_the_rule_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Session `a` goes silent at T0 while `b` runs on for 100 s of stream time."""
    events = tmp_path / "events.ndjson"
    bodies = [
        started(T0, sid="a"),
        ingested(0, sid="a"),
        started(T0, sid="b"),
        *(ingested(n, sid="b") for n in range(50)),
    ]
    events.write_bytes(b"".join(encode(b) + b"\n" for b in bodies))
    healthy = {}
    for stall_min in ("10", "200"):
        # Inactive only after 600 s: `a` is judged stalled (or not), never inactive here.
        argv = ["replay", str(events), "--stall-min", stall_min, "--inactive-after", "600"]
        assert main(argv) == 0
        snapshots = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        healthy[stall_min] = {s["id"]: s["isHealthy"] for s in snapshots}
    assert (healthy["10"]["a"], healthy["200"]["a"]) == (False, True)  # stalled, or not yet
    assert healthy["10"]["b"] == healthy["200"]["b"]


def test_help_explains_every_flag_from_the_settings_descriptions() -> None:
    text = run_help(["run"])
    flat = "".join(text.split())  # argparse wraps lines, at hyphens too
    for name, field in Settings.model_fields.items():
        if name.startswith(cli.HIDDEN_PREFIX):
            assert cli.flag_name(name) not in text  # the test hook works but is not offered
            continue
        assert field.description, f"{name} has no docstring: --help would not explain it"
        assert f"{cli.flag_name(name)} " in text
        assert "".join(field.description.split()) in flat
        assert f"envWORKER_{name.upper()};" in flat


def test_each_command_offers_only_the_settings_it_uses() -> None:
    helps = {path: " ".join(run_help(path.split()).split()) for path in cli.command_settings()}
    assert "--rate-window" in helps["replay"]
    assert "--bootstrap-servers" not in helps["replay"]
    assert "--http-port" not in helps["tail"]
    assert "--snapshot-topic" in helps["tail"]
    assert "--sasl-mechanism" in helps["dlq inspect"]
    assert "--replication-factor" in helps["topics create"]
    assert "--replication-factor" not in helps["dlq replay"]
    assert all("--check-config" in text for text in helps.values())


def run_help(path: list[str]) -> str:
    out = io.StringIO()
    with pytest.raises(SystemExit), redirect(out):
        main([*path, "--help"])
    return out.getvalue()


def test_every_fold_rule_setting_reaches_the_rules_and_only_those() -> None:
    """A new fold rule `<x>_ms` with a setting `<x>_s` shows up on `replay` by itself."""
    fold = cli.fold_rule_settings()
    assert fold >= {"rate_window_s", "stall_min_s", "retention_s", "idle_timeout_s"}
    defaults = Settings().rules()
    for name, field in Settings.model_fields.items():
        if field.annotation is not float:
            continue
        changed = Settings(**{name: 200.0, "commit_interval_s": 5000.0}).rules()  # type: ignore[arg-type]
        differs = {
            f.name
            for f in dataclasses.fields(defaults)
            if getattr(defaults, f.name) != getattr(changed, f.name)
        }
        assert differs == ({name.removesuffix("_s") + "_ms"} if name in fold else set()), name


def test_run_with_an_unknown_flag_shows_the_usage_of_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--bogus"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "usage: session-worker run [options]\n"
        "session-worker run: error: unrecognized arguments: --bogus\n"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("session-worker ")


def test_demo_without_a_broker_is_one_line_with_the_hint() -> None:
    # 127.0.0.2 is loopback but not an address the demo starts a broker on: it is refused.
    done = run_cli("demo", "--bootstrap-servers", "127.0.0.2:1", "--http-port", "0")
    assert done.returncode == 2
    assert done.stderr == (
        "session-worker demo: cannot connect to Kafka at 127.0.0.2:1; start one with "
        "`make kafka-up` or point --bootstrap-servers at one\n"
    )


def test_demo_starts_a_broker_only_on_a_local_address_with_its_own_dirs_off_9092(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("KAFKA_RUN_DIR", "KAFKA_CONTROLLER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert [local_port(s) for s in ("127.0.0.1:9092", "localhost:19092")] == [9092, 19092]
    assert [local_port(s) for s in ("kafka:9092", "127.0.0.1:1,127.0.0.1:2")] == [None, None]
    assert broker_env(9092)["KAFKA_PORT"] == "9092"
    other = broker_env(19092)
    assert (other["KAFKA_PORT"], other["KAFKA_RUN_DIR"].rsplit("/", 1)[-1]) == (
        "19092",
        "run-19092",
    )


# --- dlq selection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2:100-250", OffsetRange(2, 100, 250)),
        ("2:17", OffsetRange(2, 17, 17)),
        ("0:40-", OffsetRange(0, 40, None)),
        ("100-200", OffsetRange(None, 100, 200)),
        ("7", OffsetRange(None, 7, 7)),
    ],
)
def test_offset_ranges(text: str, expected: OffsetRange) -> None:
    assert parse_offset_range(text) == expected


@pytest.mark.parametrize("text", ["", "x", "1:", "1:5-3", "-1:4", "1:2-x", "1:-4"])
def test_bad_offset_ranges(text: str) -> None:
    with pytest.raises(ValueError, match=r"PARTITION|offsets must"):
        parse_offset_range(text)


def test_selection_needs_both_a_reason_and_a_range_to_match() -> None:
    letter = DeadLetter.of(record(b"{", offset=15, partition=2, headers=tuple(DLQ_HEADERS)))
    assert Selection(everything=True).matches(letter)
    assert Selection(reasons=frozenset({"invalid_json"})).matches(letter)
    assert not Selection(reasons=frozenset({"schema_violation"})).matches(letter)
    assert Selection(ranges=(OffsetRange(2, 10, 20),)).matches(letter)
    assert not Selection(ranges=(OffsetRange(1, 10, 20),)).matches(letter)
    assert Selection(ranges=(OffsetRange(1, 0, 1), OffsetRange(None, 15, 15))).matches(letter)
    both = Selection(frozenset({"schema_violation"}), (OffsetRange(2, 10, 20),))
    assert not both.matches(letter)
    assert Selection().is_empty


def test_a_dead_letter_keeps_its_own_headers_and_names_its_origin() -> None:
    letter = DeadLetter.of(
        record(b"{", offset=3, headers=(("trace", b"abc"), *DLQ_HEADERS, ("x", b"\xff")))
    )
    assert (letter.reason, letter.error) == ("invalid_json", "Invalid JSON: EOF")
    assert letter.source == "media.segment-events 4:1234"
    assert letter.original_headers() == [("trace", b"abc"), ("x", b"\xff")]
    as_json = orjson.loads(letter_json(letter))
    assert as_json["headers"] == {"trace": "abc", "x": "\\xff"}
    assert (as_json["partition"], as_json["offset"], as_json["value"]) == (0, 3, "{")


def test_a_record_without_dlq_headers_is_still_listed() -> None:
    letter = DeadLetter.of(record(b"{}"))
    assert (letter.reason, letter.source) == ("unknown", "? ?:?")


# --- tail printing ------------------------------------------------------------------------


def printer(**options: object) -> tuple[SnapshotPrinter, io.StringIO, io.StringIO]:
    out, errors = io.StringIO(), io.StringIO()
    return SnapshotPrinter(TailOptions(**options), out, errors), out, errors  # type: ignore[arg-type]


def test_tail_prints_each_change_with_deltas() -> None:
    tail, out, _ = printer()
    assert tail.handle(record(snapshot()))
    assert tail.handle(record(snapshot(sourceSegments=5, transcodedSegments=15), offset=1))

    first, second = out.getvalue().splitlines()
    assert "s1 'Show'  healthy  src 3  out 9  in 2.40 Mb/s  out 1.80 Mb/s" in first
    assert "src 5 (+2)  out 15 (+6)" in second
    assert "\x1b" not in out.getvalue()  # not a terminal: no colour codes


def test_tail_json_prints_the_snapshot_bytes_unchanged() -> None:
    tail, out, _ = printer(json=True)
    payload = snapshot()
    tail.handle(record(payload))
    assert out.getvalue() == payload.decode() + "\n"


def test_tail_filters_by_session_and_health_and_shows_recoveries() -> None:
    tail, out, _ = printer(unhealthy=True, sessions=frozenset({"s1", "s2"}))
    sick = {"isHealthy": False, "issues": ["No source segments received for 14s"]}
    shown = [
        tail.handle(record(snapshot())),  # healthy
        tail.handle(record(snapshot(**sick))),  # unhealthy
        tail.handle(record(snapshot(**sick, id="s3"), key=b"s3")),  # not asked for
        tail.handle(record(snapshot())),  # recovered
        tail.handle(record(snapshot(sourceSegments=4))),  # healthy again
    ]
    assert shown == [False, True, False, True, False]
    lines = out.getvalue().splitlines()
    assert "UNHEALTHY" in lines[0]
    assert "No source segments received for 14s" in lines[0]
    assert "healthy" in lines[1]
    assert (tail.read, tail.shown) == (5, 2)


def test_tail_reports_snapshots_that_break_the_contract() -> None:
    tail, out, errors = printer()
    assert not tail.handle(record(snapshot(sourceSegments=-1), offset=7, partition=1))
    assert not tail.handle(record(orjson.dumps({"id": "s1"}), offset=8))
    assert not tail.handle(record(None, offset=9))  # a deleted key
    assert out.getvalue() == ""
    assert tail.invalid == 2
    assert "tail: 1:7: not a valid Session (sourceSegments:" in errors.getvalue()


# --- topics -------------------------------------------------------------------------------


def test_topic_plan_compacts_snapshots_and_changelog_with_input_partitions() -> None:
    settings = Settings(group_id="g", input_topic="in", snapshot_topic="snap", dlq_topic="dead")
    plan = dict(planned_topics(settings, 12))

    assert [spec.name for spec in plan.values()] == ["in", "snap", "g.in.changelog", "dead"]
    assert {spec.partitions for spec in plan.values()} == {12}
    assert plan["snapshots"].config["cleanup.policy"] == "compact"
    assert plan["changelog"].config["cleanup.policy"] == "compact"
    assert plan["input"].config["cleanup.policy"] == "delete"
    assert plan["dlq"].config["cleanup.policy"] == "delete"
    for role, spec in plan.items():  # the one table the worker creates its topics from too
        assert spec.config == topic_config(role, settings.replication_factor), role


def test_existing_topics_are_checked_not_altered() -> None:
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    spec = TopicSpec("c", 6, compacted)
    assert check_topic("changelog", spec, TopicLayout(6, compacted), 6) == ([], [])
    problems, notes = check_topic(
        "changelog", spec, TopicLayout(3, {"cleanup.policy": "delete"}), 6
    )
    assert problems == [
        "has 3 partitions; the changelog needs exactly the input's 6 (recreate it empty: "
        "the worker rebuilds it)",
        "cleanup.policy is 'delete', must be 'compact'",
    ]
    assert notes == ["min.compaction.lag.ms is None (suggested '0'), left as is"]
    problems, notes = check_topic("snapshots", spec, TopicLayout(12, compacted), 6)
    assert (problems, notes) == ([], ["has 12 partitions (suggested 6)"])


def test_existing_topics_need_the_replication_asked_for_and_no_compacted_input() -> None:
    compacted = {"cleanup.policy": "compact"}
    spec = TopicSpec("c", 6, compacted)
    layout = TopicLayout(6, compacted, replication=1)
    problems, _ = check_topic("changelog", spec, layout, 6, replication=3)
    assert problems == [
        "replication factor is 1, less than the 3 asked for (--replication-factor); raise it "
        "with a partition reassignment"
    ]
    assert check_topic("changelog", spec, TopicLayout(6, compacted, replication=3), 6, 2) == (
        [],
        [],
    )
    wanted = {"cleanup.policy": "delete"}
    problems, _ = check_topic("input", TopicSpec("in", 6, wanted), TopicLayout(6, compacted), 6)
    assert problems == ["cleanup.policy is 'compact', must be 'delete'"]


# --- replay progress ----------------------------------------------------------------------


def test_replay_shows_progress_on_a_terminal_and_always_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.ndjson"
    bodies = [started(T0, sid="a"), *(ingested(n, sid="a") for n in range(2_000))]
    events.write_bytes(b"".join(encode(b) + b"\n" for b in bodies) + b"{broken\n")
    bar = io.StringIO()

    code = replay_file(events, progress=Console(file=bar, force_terminal=True, width=100))

    assert code == 1  # one invalid line
    drawn = bar.getvalue()
    assert "replay" in drawn
    assert "kB" in drawn or "MB" in drawn  # bytes of the file, not lines
    assert "line 2002: invalid_json" in drawn  # errors print above the bar
    captured = capsys.readouterr()
    assert orjson.loads(captured.out)["sourceSegments"] == 2_000
    summary = captured.err.strip().splitlines()[-1]
    assert summary.startswith("replayed 2002 events: 2001 valid, 1 invalid, 1 sessions in ")
    assert summary.endswith(" events/s)")
