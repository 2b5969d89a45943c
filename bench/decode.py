"""Micro-benchmark: decoding one fetch of N records, record by record against all at once.

    .venv/bin/python -m bench.decode [--records 5000] [--renditions 3] [--rounds 20]

(1) `decode_event` per record, what the worker does; (2) the fetch's raw values joined into
one JSON array and validated by a `TypeAdapter(list[Event])` in one call, then the checks
`decode_event` makes after validation (unique rendition names, key = sessionId, timestamp
not in the future) per event, falling back to (1) for the whole fetch when the array fails
(one bad record); (3) `orjson.loads` per record then `validate_python`; (4) `decode_fetch`,
what the worker does since issue 15: (2) made framing-safe (values keyed by secret keys in
one object, 128 records per call). Values come from
bench/load.py's live traffic (mostly segment.ingested and segment.transcoded). Prints
µs per event (median and best of the rounds) as JSON.

Joining is only safe when every value is one JSON document: a crafted value such as
`{...},{...` can shift its neighbours' bytes into another record. The count of events is
checked against the count of records, which catches most but not every such value: (2) is a
measurement, not a drop-in; `decode_fetch` closes that gap. Times are CPU time (the machine
is shared), µs per event.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from itertools import islice
from operator import itemgetter
from typing import Final

import orjson
from pydantic import TypeAdapter, ValidationError

from bench import load
from worker.events import (
    EVENT_ADAPTER,
    MAX_FUTURE_SKEW_MS,
    Event,
    InvalidRecord,
    SegmentTranscoded,
    decode_event,
    decode_fetch,
)

LIST_ADAPTER: Final[TypeAdapter[list[Event]]] = TypeAdapter(list[Event])
_NAME: Final = itemgetter("name")
Decoded = list[Event | InvalidRecord]


def by_record(records: Sequence[tuple[bytes, bytes]], now_ms: int) -> Decoded:
    return [decode_event(value, key, now_ms) for key, value in records]


def by_fetch(records: Sequence[tuple[bytes, bytes]], now_ms: int) -> Decoded:
    """One validator call for the fetch; `decode_event`'s later checks per event."""
    try:
        events = LIST_ADAPTER.validate_json(b"[" + b",".join(v for _, v in records) + b"]")
    except ValidationError:
        return by_record(records, now_ms)
    if len(events) != len(records):
        return by_record(records, now_ms)
    limit = now_ms + MAX_FUTURE_SKEW_MS
    out: Decoded = []
    for (key, value), event in zip(records, events, strict=True):
        if (
            type(event) is SegmentTranscoded
            and len(renditions := event.renditions) > 1
            and len(set(map(_NAME, renditions))) != len(renditions)
        ) or (key != event.session_id.encode() or event.timestamp > limit):
            out.append(decode_event(value, key, now_ms))  # the rare case: its exact verdict
        else:
            out.append(event)
    return out


def by_decode_fetch(records: Sequence[tuple[bytes, bytes]], now_ms: int) -> Decoded:
    return decode_fetch([(value, key) for key, value in records], now_ms)


def by_record_python(records: Sequence[tuple[bytes, bytes]], now_ms: int) -> Decoded:
    """orjson parse, then pydantic on the Python objects (the later checks left out)."""
    validate = EVENT_ADAPTER.validate_python
    return [validate(orjson.loads(value)) for _, value in records]


def fetch(records: int, renditions: int, bad_every: int = 0) -> list[tuple[bytes, bytes]]:
    """`records` consecutive (key, value) of live traffic; every `bad_every`-th value broken."""
    ladder = tuple((f"r{i}", 3_000_000 >> i) for i in range(renditions))
    traffic = load.Traffic(1_000, seed=5, renditions=ladder)
    stream = traffic.events(1_700_000_000_000)  # past the sessions' starts: steady traffic
    out = [(key, value) for _, key, value in islice(stream, 3_000, 3_000 + records)]
    if bad_every:
        out[::bad_every] = [(key, b'{"type": 1}') for key, _ in out[::bad_every]]
    return out


def timed(
    decode: Callable[[Sequence[tuple[bytes, bytes]], int], Decoded],
    records: list[tuple[bytes, bytes]],
    rounds: int,
) -> dict[str, float]:
    now_ms = 1_800_000_000_000
    per_event = []
    for _ in range(rounds):
        started = time.process_time()
        decode(records, now_ms)
        per_event.append((time.process_time() - started) * 1e6 / len(records))
    return {"median_us": statistics.median(per_event), "best_us": min(per_event)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--records", type=int, default=5_000, help="records per fetch")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    results: dict[str, object] = {"records": args.records, "rounds": args.rounds}
    for renditions in (3, 4):
        records = fetch(args.records, renditions)
        kinds: dict[str, int] = {}
        for _, value in records:
            kind = orjson.loads(value)["type"]
            kinds[kind] = kinds.get(kind, 0) + 1
        expected = by_record(records, 1_800_000_000_000)
        assert by_fetch(records, 1_800_000_000_000) == expected
        assert by_decode_fetch(records, 1_800_000_000_000) == expected
        results[f"{renditions} renditions"] = {
            "mix": kinds,
            "mean_value_bytes": statistics.mean(len(v) for _, v in records),
            # interleaved: drift on a shared machine hits each alike
            **{
                name: timed(decode, records, args.rounds)
                for name, decode in (
                    ("by_record", by_record),
                    ("by_fetch", by_fetch),
                    ("decode_fetch", by_decode_fetch),
                    ("by_record_orjson_then_python", by_record_python),
                    ("by_record_again", by_record),
                    ("by_fetch_again", by_fetch),
                    ("decode_fetch_again", by_decode_fetch),
                )
            },
            "by_fetch_one_bad_record": timed(by_fetch, fetch(args.records, renditions, 997), 5),
            "decode_fetch_one_bad_record": timed(
                by_decode_fetch, fetch(args.records, renditions, 997), 5
            ),
        }
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
