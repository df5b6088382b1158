"""The journal writer's cycle against a real redis-server: all owned shards are read, written and
finished together, with a shard's lease and disk errors still handled shard by shard."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio

from cluster import RedisCluster
from walletgate.journal import writer
from walletgate.journal.records import keymap_key
from walletgate.journal.scripts import (
    DELETE_ENTRIES_LUA,
    MAP_KEYS_LUA,
    PUBLISH_STATS_LUA,
    READ_STREAMS_LUA,
    STREAM_LENGTHS_LUA,
)
from walletgate.journal.segments import ShardFiles, check_layout
from walletgate.journal.streams import StreamReader
from walletgate.journal.writer import JournalWriter, WriterSettings
from walletgate.ledger import keys

SHARDS = 4


class CountingClient:
    """Wraps a redis.asyncio client and counts the writer's script calls by script."""

    def __init__(self, inner: redis.asyncio.Redis) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        names = {
            READ_STREAMS_LUA: "read",
            STREAM_LENGTHS_LUA: "lengths",
            MAP_KEYS_LUA: "map",
            DELETE_ENTRIES_LUA: "delete",
            PUBLISH_STATS_LUA: "stats",
        }
        self.calls[names.get(script, "other")] += 1
        return await self._inner.eval(script, numkeys, *args)


def settings(directory: Path, **overrides: Any) -> WriterSettings:
    return WriterSettings(
        directory=directory, buckets=SHARDS, cluster=False, shards=SHARDS, **overrides
    )


def add_record(url: str, bucket: int, player: str, key: str, seq: int) -> None:
    now_us = time.time_ns() // 1000
    fx = [["acct", "bal:usd", "5", "0"], ["tx:" + key, "state", "applied", "3600"]]
    fields = {
        "ts": str(now_us), "tenant": "t1", "player": player, "currency": "usd", "seq": str(seq),
        "kind": "adjust", "key": key, "delta": "5", "bal": "5", "proto": "admin", "result": "1",
        "fp": "f", "refs": orjson.dumps({"ref": key}).decode(), "fx": orjson.dumps(fx).decode(),
    }  # fmt: skip
    client = redis.Redis.from_url(url)
    client.xadd(keys.journal_stream_key(bucket, False), fields)  # type: ignore[arg-type]
    client.close()


def pending(url: str, bucket: int) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(keys.journal_stream_key(bucket, False)))
    finally:
        client.close()


def on_disk(directory: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in sorted(directory.glob("shard-*/segment-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


async def owning_every_shard(url: str, directory: Path, **overrides: Any) -> JournalWriter:
    """A writer that owns every shard and has not cycled yet (driven by the test)."""
    client = CountingClient(redis.asyncio.Redis.from_url(url))
    journal = JournalWriter(client, settings(directory, **overrides), writer_id="w")
    check_layout(directory, SHARDS, SHARDS, False)
    await journal._maintain_leases()
    assert sorted(journal._owned) == list(range(SHARDS))
    journal._next_lease_check = math.inf  # the test decides when leases are looked at
    return journal


async def close(journal: JournalWriter) -> None:
    await journal._release_everything()
    journal._executor.shutdown()
    await journal._client.aclose()


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def test_one_cycle_reads_writes_and_finishes_every_shard_at_once(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "journal"
    for index in range(40):
        add_record(redis_url, index % SHARDS, f"p{index}", f"k{index}", 1)
    trips = Counter[int]()
    real_write_batches = writer.write_batches

    def counting(reads: Any, keymap_ttl_s: int) -> Any:
        trips[len(reads)] += 1
        return real_write_batches(reads, keymap_ttl_s)

    monkeypatch.setattr(writer, "write_batches", counting)

    async def scenario() -> tuple[Counter[str], writer.JournalStatus]:
        journal = await owning_every_shard(redis_url, directory)
        client = journal._client
        assert isinstance(client, CountingClient)
        client.calls.clear()
        more = await journal._cycle()
        assert not more
        calls, status = Counter(client.calls), journal.status()
        await close(journal)
        return calls, status

    calls, status = run(scenario())
    # Standalone: the lengths script, then one pipeline of XRANGEs (not a script call).
    assert calls == {"lengths": 1, "map": 1, "delete": 1, "stats": 1}
    assert trips == {SHARDS: 1}
    assert status.records_written_total == 40
    assert all(pending(redis_url, bucket) == 0 for bucket in range(SHARDS))
    records = on_disk(directory)
    assert len(records) == 40
    assert {(r["bucket"], r["batch"]) for r in records} == {(b, 1) for b in range(SHARDS)}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.get(keymap_key("t1", "k7")) == "p7"
    stats = client.hgetall(writer.STATS_KEY)
    assert sorted(stats) == [str(shard) for shard in range(SHARDS)]
    assert all(orjson.loads(value)["pending"] == 0 for value in stats.values())
    client.close()


@pytest.mark.parametrize(
    "bob_bucket",
    [
        pytest.param(1, id="two shards in one cycle"),
        pytest.param(0, id="one batch"),
    ],
)
def test_a_key_that_two_players_use_keeps_the_first_and_is_counted(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, bob_bucket: int
) -> None:
    add_record(redis_url, 0, "alice", "shared", 1)
    add_record(redis_url, bob_bucket, "bob", "shared", 1)
    add_record(redis_url, 2, "carol", "own", 1)

    async def scenario() -> writer.JournalStatus:
        journal = await owning_every_shard(redis_url, tmp_path / "journal")
        await journal._cycle()
        status = journal.status()
        await close(journal)
        return status

    with caplog.at_level(logging.WARNING, "walletgate.journal"):
        status = run(scenario())
    assert dict(status.cross_player_total) == {"admin": 1}
    assert "'shared' of tenant t1 is used by player alice and player bob" in caplog.text
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.get(keymap_key("t1", "shared")) == "alice"
    assert client.get(keymap_key("t1", "own")) == "carol"
    client.close()


def test_a_secret_tenant_is_logged_as_a_digest(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Wallet v2 tenant id is the agent's wallet_token: the reuse warning must not print it."""
    add_record(redis_url, 0, "alice", "shared", 1)
    add_record(redis_url, 1, "bob", "shared", 1)

    async def scenario() -> None:
        journal = await owning_every_shard(
            redis_url, tmp_path / "journal", secret_tenants=frozenset({"t1"})
        )
        await journal._cycle()
        await close(journal)

    with caplog.at_level(logging.WARNING, "walletgate.journal"):
        run(scenario())
    digest = hashlib.sha256(b"t1").hexdigest()[:12]
    assert f"of tenant wallet_v2 agent sha256:{digest} is used by player alice" in caplog.text
    assert "tenant t1" not in caplog.text


def test_a_shard_whose_lease_another_writer_took_is_given_up_alone(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "journal"
    for bucket in range(SHARDS):
        add_record(redis_url, bucket, f"p{bucket}", f"k{bucket}", 1)

    async def scenario() -> list[int]:
        journal = await owning_every_shard(redis_url, directory)
        # Shard 2's lease ran out unseen and another writer holds it now.
        journal._owned[2].lease_trusted_until = 0.0
        await journal._client.set(writer.lease_key(2), "other", px=10_000)
        await journal._cycle()
        owned = sorted(journal._owned)
        await close(journal)
        return owned

    with caplog.at_level(logging.WARNING, "walletgate.journal"):
        owned = run(scenario())
    assert "lost the lease of shard 2" in caplog.text
    assert owned == [0, 1, 3]
    assert [pending(redis_url, bucket) for bucket in range(SHARDS)] == [0, 0, 1, 0]
    assert sorted(r["bucket"] for r in on_disk(directory)) == [0, 1, 3]


def test_a_disk_slower_than_the_lease_trust_window_keeps_every_shard(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each fsync takes 200 ms and the lease is trusted for 350 ms (lease_ms 500): one trip of
    four shards outlasts the trust of the last two. Before, those were given up and taken
    back (through recovery) every cycle; now their leases are renewed and they are written in
    a second trip."""
    directory = tmp_path / "journal"
    for bucket in range(SHARDS):
        add_record(redis_url, bucket, f"p{bucket}", f"k{bucket}", 1)
    real_append = ShardFiles.append

    def slow_append(self: ShardFiles, data: bytes) -> float:
        time.sleep(0.2)
        return real_append(self, data)

    monkeypatch.setattr(ShardFiles, "append", slow_append)

    async def scenario() -> tuple[list[int], int]:
        journal = await owning_every_shard(redis_url, directory, lease_ms=500)
        await journal._cycle()
        owned = sorted(journal._owned)
        written = journal.status().records_written_total
        await close(journal)
        return owned, written

    with caplog.at_level(logging.WARNING, "walletgate.journal"):
        owned, written = run(scenario())
    assert owned == list(range(SHARDS))
    assert written == SHARDS
    assert "lease" not in caplog.text
    assert [pending(redis_url, bucket) for bucket in range(SHARDS)] == [0] * SHARDS
    assert sorted(r["bucket"] for r in on_disk(directory)) == list(range(SHARDS))


def test_a_disk_error_gives_up_that_shard_alone_and_it_is_written_later(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "journal"
    for bucket in range(SHARDS):
        add_record(redis_url, bucket, f"p{bucket}", f"k{bucket}", 1)
    real_append = ShardFiles.append
    failures = [1]

    def failing_append(self: ShardFiles, data: bytes) -> float:
        if self.directory.name == "shard-01" and failures:
            failures.pop()
            raise OSError(5, "injected")
        return real_append(self, data)

    monkeypatch.setattr(ShardFiles, "append", failing_append)

    async def scenario() -> tuple[list[int], writer.JournalStatus]:
        journal = await owning_every_shard(redis_url, directory, max_backoff_ms=500)
        await journal._cycle()
        owned = sorted(journal._owned)
        status = journal.status()
        await asyncio.sleep(0.6)
        journal._next_lease_check = 0.0
        await journal._cycle()  # takes shard 1 back (recovery) and writes its batch
        assert sorted(journal._owned) == list(range(SHARDS))
        await close(journal)
        return owned, status

    owned, status = run(scenario())
    assert owned == [0, 2, 3]
    assert status.errors_total == 1 and "shard 1: disk error" in (status.last_error or "")
    assert all(pending(redis_url, bucket) == 0 for bucket in range(SHARDS))
    assert sorted(r["bucket"] for r in on_disk(directory)) == [0, 1, 2, 3]


def test_standalone_reader_reads_what_the_script_reads(redis_url: str) -> None:
    """On a standalone Redis the reader takes lengths from a script and entries from plain
    XRANGEs; for every budget and rotation it returns what READ_STREAMS_LUA (the cluster path)
    returns, with fields as flat lists of bytes, and leaves its client's callbacks alone."""
    for bucket, count in enumerate((5, 0, 3, 2)):
        for index in range(count):
            add_record(redis_url, bucket, f"p{bucket}", f"k{bucket}-{index}", index + 1)
    streams = [keys.journal_stream_key(bucket, False) for bucket in range(SHARDS)]

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        reader = StreamReader(client)
        joined = "\n".join(streams).encode()
        for budget in (1, 2, 4, 7, 100):
            for rotation in range(SHARDS + 1):
                pages = await reader.read("all", streams, budget, rotation)
                reply = await client.eval(READ_STREAMS_LUA, 0, budget, rotation, joined)
                expected = {
                    streams[int(reply[index]) - 1]: (
                        int(reply[index + 1]),
                        [(sid.decode(), flat) for sid, flat in reply[index + 2]],
                    )
                    for index in range(0, len(reply), 3)
                }
                assert pages == expected, (budget, rotation)
                for _, entries in pages.values():
                    assert all(type(field) is bytes for _, flat in entries for field in flat)
        assert sum(len(entries) for _, entries in pages.values()) == 10
        # The caller's client still parses XRANGE replies into (id, {field: value}) pairs.
        [(_, fields)] = await client.xrange(streams[3], count=1)
        assert fields[b"player"] == b"p3"
        await client.aclose()

    run(scenario())


@pytest.mark.cluster
def test_a_migrating_slot_does_not_stop_the_other_streams_draining(
    redis_cluster: RedisCluster,
) -> None:
    """While a slot migrates, its stream is not on the source node (it never existed there, or
    it moved), and Redis refuses that key inside a script: the reader once lost the whole
    node's read to that, so nothing on any node drained during a reshard. Now the other streams
    are read, and a reader that must see every stream (journal verify) is told to retry."""
    cluster = redis_cluster
    cluster.flushall()
    streams = [keys.journal_stream_key(slot, True) for slot in range(keys.CLUSTER_SLOTS)]
    record_slots: dict[int, int] = {}
    for slot in range(0, keys.CLUSTER_SLOTS, 97):
        record_slots.setdefault(cluster.owner_port(slot), slot)
    assert sorted(record_slots) == sorted(cluster.ports)
    source_port, target_port = cluster.ports[0], cluster.ports[1]
    migrating = record_slots[source_port] + 1
    assert cluster.owner_port(migrating) == source_port
    client = redis.RedisCluster.from_url(cluster.url)
    for port, slot in record_slots.items():
        client.xadd(streams[slot], {"port": str(port)})
    client.close()
    expected = {streams[slot] for slot in record_slots.values()}

    async def read(every_stream: bool) -> set[str]:
        async_client = redis.asyncio.RedisCluster.from_url(cluster.url)
        try:
            pages = await StreamReader(async_client).read(
                "all", streams, 100, every_stream=every_stream
            )
        finally:
            await async_client.aclose()
        return {stream for stream, (length, _) in pages.items() if length == 1}

    assert asyncio.run(read(every_stream=False)) == expected
    cluster.begin_migration(migrating, target_port)
    try:
        assert asyncio.run(read(every_stream=False)) == expected
        with pytest.raises(redis.exceptions.RedisError, match="migrating"):
            asyncio.run(read(every_stream=True))
    finally:
        cluster.finish_migration(migrating, source_port, target_port)
    assert asyncio.run(read(every_stream=True)) == expected
