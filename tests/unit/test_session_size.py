"""session.md "Size": the biggest valid input makes a snapshot far below the 1 MB record limit.

Every string and list of events.md at its bound, every string made of the character that
orjson writes longest (a control character, 6 bytes as `\\u0001`), every integer at 2^53 - 1,
and every health rule firing at once (the issues repeat the longest texts: the newest
transcode error and up to 32 missing rendition names).
"""

from __future__ import annotations

from typing import Final

import orjson

from tests.unit.builders import (
    SEGMENT_MS,
    T0,
    Json,
    decode,
    failed,
    fold_events,
    ingested,
    recording,
    render,
    started,
    transcoded,
)
from worker.events import MAX_JSON_INT, MAX_RENDITIONS, MAX_URL_CHARS
from worker.profiles import MAX_GOP_CHARS, MAX_PROFILES
from worker.session import Session, encode_session

WIDEST: Final = "\x01"
"""The character with the longest JSON text: orjson escapes it as `\\u0001`."""
RECORD_LIMIT: Final = 1_048_576
"""The broker's and producer's default record limit."""
SID: Final = "s" * 128


def text(chars: int, tag: str = "") -> str:
    """`chars` characters, as wide in JSON as a string can be, starting with `tag`."""
    return tag + WIDEST * (chars - len(tag))


def widest_profile(tag: str) -> Json:
    return {
        "name": text(500, tag),
        "width": MAX_JSON_INT,
        "height": MAX_JSON_INT,
        "bitrate": MAX_JSON_INT,
        "fps": MAX_JSON_INT,
        "fpsDen": MAX_JSON_INT,
        "quality": 44,
        "gop": text(MAX_GOP_CHARS),
        "profile": "H264ConstrainedHigh",
        "encoder": "H.264",
    }


def biggest_input() -> list[Json]:
    ladder = [widest_profile(f"p{i:02d}") for i in range(MAX_PROFILES)]
    spec = [widest_profile(f"r{i:02d}") for i in range(MAX_PROFILES)]
    renditions = {text(500, f"x{i:02d}"): MAX_JSON_INT for i in range(MAX_RENDITIONS)}
    bodies = [
        started(
            T0,
            sid=SID,
            name=text(500),
            parentId=text(128),
            projectId=text(128),
            playbackId=text(128),
            record=True,
            kind=text(64),
            userId=text(128),
            profiles=ladder,
            recordingSpec={"profiles": spec},
        ),
        recording(
            "waiting",  # the longest status
            T0 + 1,
            sid=SID,
            recordingUrl=text(MAX_URL_CHARS),
            mp4Url=text(MAX_URL_CHARS),
        ),
    ]
    for seq_no in range(20):
        bodies.append(ingested(seq_no, sid=SID, size=MAX_JSON_INT))
    for seq_no in range(10):  # slow (a ratio of 300 digits), and none of the renditions
        bodies.append(transcoded(seq_no, sid=SID, renditions=renditions, transcode_time=1e300))
    bodies.append(failed(19, sid=SID, error=text(1000)))
    return bodies


def test_the_biggest_valid_input_makes_a_snapshot_far_below_the_record_limit() -> None:
    events = [decode(orjson.dumps(body)) for body in biggest_input()]  # all valid
    state = fold_events(events)
    now = T0 + 19 * SEGMENT_MS + 30_000  # stalled, not yet inactive
    session = render(state, now)
    payload = encode_session(session)

    # Guard: it really is the worst case (every rule fires, every field is there).
    issues = session["issues"]
    assert [issue.split()[0] for issue in issues] == [
        "No",
        "1",
        "Transcoding",
        "Transcoding",
        "Missing",
    ]
    assert len(issues[-1]) > MAX_PROFILES * 500
    assert (len(session["profiles"]), len(session["recordingSpec"]["profiles"])) == (32, 32)
    assert {"recordingUrl", "mp4Url", "recordingStatus"} <= session.keys()
    named = 500 - 3  # the profile names after their 3-character tags
    wide = 500 + 4 * 128 + 64 + 2 * MAX_PROFILES * (named + MAX_GOP_CHARS) + 2 * MAX_URL_CHARS
    wide += 1000 + MAX_PROFILES * named  # the error and the missing names in the issues
    assert payload.count(b"\\u0001") == wide
    Session.model_validate_json(payload)

    print(f"largest snapshot: {len(payload)} bytes")  # the figure in docs/session.md
    assert len(payload) < RECORD_LIMIT // 2
