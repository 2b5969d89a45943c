"""The runtime: the consume loop and the parts it sequences.

- `schedule`: when to publish and checkpoint (pure, `now` passed in);
- `intake`: folding a fetched batch (decode, fold, dead letters, offsets);
- `checkpoint`: what each write sends (outbox, rounds, retries, changelog, tombstones);
- `recovery`: parking, take-back and restore across rebalances;
- `loop`: the `Runner` that sequences them under one lock;
- `ports`: the Protocols the Kafka adapter implements.
"""

from worker.runtime.loop import Runner, wall_clock_ms
from worker.runtime.ports import ChangelogReader, ChangelogRecords, OutputTopics, Sink, Source

__all__ = [
    "ChangelogReader",
    "ChangelogRecords",
    "OutputTopics",
    "Runner",
    "Sink",
    "Source",
    "wall_clock_ms",
]
