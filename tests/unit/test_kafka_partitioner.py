"""The sinks place keyed records where aiokafka's DefaultPartitioner would (and so where the
Java client and every other default-partitioned producer would): one session, one partition."""

from __future__ import annotations

import random
import string

import pytest
from aiokafka.partitioner import DefaultPartitioner

from worker.kafka.sinks import key_hash

ALPHABETS = (
    string.ascii_letters + string.digits + "-_",
    "éüßøñçあいうえお漢字中文한국어🎥📺🙂",
    "".join(chr(c) for c in range(0x20, 0x7F)),
)


def random_keys(seed: int, count: int) -> list[bytes]:
    """Session-id-like keys of 0 to 300 characters, ASCII and Unicode, plus UUIDs and raw bytes."""
    rng = random.Random(seed)
    keys: list[bytes] = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            keys.append(f"{rng.getrandbits(128):032x}".encode())
        elif kind == 3:
            keys.append(rng.randbytes(rng.randint(0, 64)))
        else:
            alphabet = ALPHABETS[rng.randrange(len(ALPHABETS))]
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
            keys.append(text.encode())
    return keys


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 12, 64, 100])
def test_key_hash_places_keys_where_the_default_partitioner_does(partitions: int) -> None:
    layout = list(range(partitions))
    default = DefaultPartitioner()
    keys = random_keys(seed=partitions, count=10_000)
    assert len(set(keys)) > 9_000
    for key in keys:
        expected = default(key, layout, layout)
        assert key_hash(key) % partitions == expected, key
        assert key_hash(key) % partitions == expected, "the cached hash is the same"


def test_keys_spread_over_every_partition() -> None:
    """Not a constant: 10,000 keys reach each of 12 partitions."""
    keys = random_keys(seed=99, count=10_000)
    assert {key_hash(key) % 12 for key in keys} == set(range(12))
