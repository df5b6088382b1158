"""The journal writer against a real redis-server: fields, fsync-before-delete, flush interval,
concurrent writers, crash recovery (torn lines, SIGKILL) and the key-to-player map."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
import redis
import redis.asyncio

from conftest import RedisServer
from ledger_helpers import make_ledger
from walletgate.config import Config, parse_config
from walletgate.health import record_journal_status
from walletgate.journal import replay, writer
from walletgate.journal.observer import JournalObserver
from walletgate.journal.records import MalformedEntry, journal_record, keymap_key, parse_ts
from walletgate.journal.scripts import DELETE_ENTRIES_LUA, MAP_KEYS_LUA
from walletgate.journal.segments import (
    JournalCorrupt,
    JournalLayoutError,
    LostPages,
    ShardBusy,
    ShardFiles,
    open_segment,
)
from walletgate.journal.writer import JournalWriter, WriterSettings
from walletgate.ledger import keys
from walletgate.ledger.admin import adjust
from walletgate.ledger.core import Ledger, LedgerSettings
from walletgate.metrics import Metrics

ADMIN_TOKEN = "t" * 40
SPEC_FIELDS = {
    "ts",
    "tenant",
    "player",
    "currency",
    "seq",
    "kind",
    "key",
    "delta_units",
    "balance_after_units",
    "protocol",
    "result",
    "fp",
    "refs",
}
WRITER_FIELDS = {"fx", "sid", "bucket", "batch"}
TS_PATTERN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
PYTHON_DIR = Path(__file__).resolve().parent.parent / "python"


# --- Helpers shared with test_journal_replay.py ----------------------------------------------


def journal_config(url: str, directory: Path, **journal: Any) -> Config:
    section: dict[str, Any] = {"dir": str(directory), "buckets": 4, "flush_interval_ms": 50}
    section.update(journal)
    return parse_config(
        {"redis": {"url": url}, "journal": section, "admin": {"token": ADMIN_TOKEN}}
    )


def write_config_file(path: Path, url: str, directory: Path, **journal: Any) -> Path:
    section: dict[str, Any] = {"dir": str(directory), "buckets": 4, "flush_interval_ms": 50}
    section.update(journal)
    lines = ["[redis]", f'url = "{url}"', "", "[journal]"]
    for name, value in section.items():
        lines.append(f"{name} = {value!r}" if not isinstance(value, str) else f'{name} = "{value}"')
    lines += ["", "[admin]", f'token = "{ADMIN_TOKEN}"', ""]
    path.write_text("\n".join(lines))
    return path


def ledger_for(config: Config) -> Ledger:
    return make_ledger(
        config.redis.url,
        LedgerSettings(
            journal_buckets=config.journal.buckets,
            cluster=config.redis.cluster,
            idempotency_ttl_s=config.idempotency.ttl_s,
            midas_ttl_s=config.idempotency.midas_ttl_s,
        ),
    )


Kind = Literal["adjust", "save"]
Operation = tuple[str, str, str, int, str, Kind]


def plan_operations(count: int, *, seed: int, players: int = 12) -> list[Operation]:
    """Credits, debits (some refused for insufficient funds, a stored and journaled rejection)
    and saves over a few tenants, players and currencies, each with a unique ref."""
    rng = random.Random(seed)
    operations: list[Operation] = []
    for index in range(count):
        tenant = f"t{rng.randrange(3)}"
        player = f"p{rng.randrange(players)}"
        currency = rng.choice(["usd", "eur"])
        roll = rng.random()
        kind: Kind = "adjust"
        if roll < 0.6:
            amount = rng.randrange(1, 10**9)
        elif roll < 0.9:
            amount = -rng.randrange(1, 10**9)
        else:
            amount, kind = rng.randrange(1, 10**6), "save"
        operations.append((tenant, player, currency, amount, f"r{seed}-{index}", kind))
    return operations


async def apply_operations(
    ledger: Ledger, operations: list[Operation], concurrency: int = 64
) -> dict[str, tuple[str, int]]:
    """Apply in parallel; returns ref -> (outcome, balance_units), where the outcome is
    "unknown" for a debit that found no account (nothing stored)."""
    semaphore = asyncio.Semaphore(concurrency)
    outcomes: dict[str, tuple[str, int]] = {}

    async def one(operation: Operation) -> None:
        tenant, player, currency, amount, ref, kind = operation
        async with semaphore:
            result = await adjust(
                ledger,
                tenant=tenant,
                player=player,
                currency=currency,
                amount_units=amount,
                ref=ref,
                kind=kind,
            )
        # A debit of an account that does not exist yet stores nothing, as an unknown player.
        stored = result.outcome != "insufficient" or result.rejected
        outcomes[ref] = (result.outcome if stored else "unknown", result.balance_units)

    await asyncio.gather(*(one(operation) for operation in operations))
    return outcomes


def pending_count(url: str, buckets: int = 4) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(
            int(client.xlen(stream)) for stream in keys.all_journal_stream_keys(buckets, False)
        )
    finally:
        client.close()


def disk_records(directory: Path) -> list[dict[str, Any]]:
    """Every complete line of every segment (no dedupe: tests count duplicates)."""
    records = []
    for path in replay.segment_paths(directory):
        with open_segment(path) as handle:
            data = handle.read()
        for raw in data.splitlines(keepends=True):
            if raw.endswith(b"\n"):
                records.append(orjson.loads(raw))
    return records


def assert_each_record_once(records: list[dict[str, Any]], applied: int) -> None:
    identities = Counter((r["tenant"], r["player"], r["currency"], r["seq"]) for r in records)
    duplicates = [identity for identity, count in identities.items() if count > 1]
    assert not duplicates, f"records written twice: {duplicates[:5]}"
    assert len(records) == applied
    by_account: dict[tuple[str, str, str], list[int]] = {}
    for record in records:
        by_account.setdefault((record["tenant"], record["player"], record["currency"]), []).append(
            record["seq"]
        )
    for account, seqs in by_account.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), account


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(step_s)


async def drain(config: Config, timeout_s: float = 30.0, **overrides: Any) -> None:
    """Run one in-process writer until nothing is pending, then stop it."""
    client = redis.asyncio.Redis.from_url(config.redis.url)
    journal = JournalWriter(client, WriterSettings.from_config(config, **overrides))
    await journal.start()
    try:
        await wait_until(
            lambda: pending_count(config.redis.url, config.journal.buckets) == 0,
            timeout_s,
            "the writer to drain",
        )
    finally:
        await journal.stop()
        await client.aclose()


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


JOURNALED_OUTCOMES = ("applied", "insufficient")


def journaled_count(outcomes: dict[str, tuple[str, int]]) -> int:
    """The operations that wrote a journal record: the applied ones and the stored rejections."""
    return sum(1 for outcome, _ in outcomes.values() if outcome in JOURNALED_OUTCOMES)


# --- Tests -----------------------------------------------------------------------------------


def test_records_reach_disk_with_the_spec_fields(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal")

    async def scenario() -> dict[str, tuple[str, int]]:
        ledger = ledger_for(config)
        outcomes = await apply_operations(ledger, plan_operations(200, seed=1))
        await ledger.runner.close()
        await drain(config)
        return outcomes

    outcomes = run(scenario())
    records = disk_records(config.journal.dir)
    assert_each_record_once(records, journaled_count(outcomes))
    assert pending_count(redis_url) == 0
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for record in records:
        assert set(record) == SPEC_FIELDS | WRITER_FIELDS
        assert TS_PATTERN.match(record["ts"])
        for name in ("seq", "delta_units", "balance_after_units", "bucket", "batch"):
            assert type(record[name]) is int, name
        assert record["protocol"] == "admin"
        rejected = record["kind"] == "reject"
        assert record["kind"] in ("adjust", "save", "reject")
        assert record["result"] == ("insufficient_funds" if rejected else "ok")
        assert record["key"] == "admin:" + record["refs"]["ref"]
        assert record["bucket"] == keys.journal_bucket(record["tenant"], record["player"], 4, False)
        assert isinstance(record["fx"], list) and all(len(entry) == 4 for entry in record["fx"])
        outcome = "insufficient" if rejected else "applied"
        assert outcomes[record["refs"]["ref"]] == (outcome, record["balance_after_units"])
    # The last record of each account holds the balance Redis holds.
    last: dict[tuple[str, str, str], dict[str, Any]] = {}
    for record in records:
        account = (record["tenant"], record["player"], record["currency"])
        if account not in last or last[account]["seq"] < record["seq"]:
            last[account] = record
    for (tenant, player, currency), record in last.items():
        stored = client.hmget(
            keys.account_key(tenant, player), f"bal:{currency}", f"seq:{currency}"
        )
        # A stored rejection on a new account takes a seq and leaves the balance field absent.
        assert [stored[0] or "0", stored[1]] == [
            str(record["balance_after_units"]),
            str(record["seq"]),
        ]
    client.close()


class DeleteAuditingClient:
    """Wraps a redis.asyncio client; every deletion must name only entries already fsynced."""

    def __init__(self, inner: redis.asyncio.Redis, durable: set[str]) -> None:
        self._inner = inner
        self._durable = durable
        self.deleted = 0
        self.early_deletes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        if script == DELETE_ENTRIES_LUA:
            for _, ids in orjson.loads(args[0]):
                self.early_deletes.extend(sid for sid in ids if sid not in self._durable)
                self.deleted += len(ids)
        return await self._inner.eval(script, numkeys, *args)


def test_records_leave_redis_only_after_fsync(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = journal_config(redis_url, tmp_path / "journal", batch_records=37)
    durable: set[str] = set()
    real_fsync = os.fsync

    def auditing_fsync(descriptor: int) -> None:
        real_fsync(descriptor)
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        if path.endswith(".jsonl"):
            for line in Path(path).read_bytes().splitlines():
                durable.add(orjson.loads(line)["sid"])

    monkeypatch.setattr(os, "fsync", auditing_fsync)

    async def scenario() -> tuple[dict[str, tuple[str, int]], int]:
        ledger = ledger_for(config)
        client = DeleteAuditingClient(redis.asyncio.Redis.from_url(redis_url), durable)
        journal = JournalWriter(client, WriterSettings.from_config(config))
        await journal.start()
        # Operations arrive while the writer runs, so batches and deletes interleave with them.
        outcomes = await apply_operations(ledger, plan_operations(400, seed=2), concurrency=8)
        await wait_until(lambda: pending_count(redis_url) == 0, 30, "the writer to drain")
        await journal.stop()
        await client.aclose()
        await ledger.runner.close()
        assert client.early_deletes == []
        return outcomes, client.deleted

    outcomes, deleted = run(scenario())
    assert deleted == journaled_count(outcomes)
    assert_each_record_once(disk_records(config.journal.dir), journaled_count(outcomes))


class CallSizeAuditingClient:
    """Wraps a redis.asyncio client; records the work each key-map and delete call carries, and
    how many script calls were in flight at once."""

    def __init__(self, inner: redis.asyncio.Redis) -> None:
        self._inner = inner
        self.map_items: list[int] = []
        self.delete_ids: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        if script == MAP_KEYS_LUA:
            self.map_items.append(len(orjson.loads(args[0])))
        elif script == DELETE_ENTRIES_LUA:
            self.delete_ids.append(sum(len(ids) for _, ids in orjson.loads(args[0])))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._inner.eval(script, numkeys, *args)
        finally:
            self.in_flight -= 1


def test_a_large_cycle_sends_bounded_script_calls_one_at_a_time(
    redis_url: str, tmp_path: Path
) -> None:
    """Redis runs one script at a time and the gateway's bets wait behind it: the writer's
    key-map and delete calls each carry a bounded amount of work, one call after the other."""
    config = journal_config(redis_url, tmp_path / "journal", batch_records=5000)
    operations = plan_operations(1200, seed=9, players=40)

    async def scenario() -> tuple[dict[str, tuple[str, int]], CallSizeAuditingClient]:
        ledger = ledger_for(config)
        # Everything is pending before the writer starts, so one cycle takes it all.
        outcomes = await apply_operations(ledger, operations)
        await ledger.runner.close()
        client = CallSizeAuditingClient(redis.asyncio.Redis.from_url(redis_url))
        journal = JournalWriter(client, WriterSettings.from_config(config))
        await journal.start()
        await wait_until(lambda: pending_count(redis_url) == 0, 30, "the writer to drain")
        await journal.stop()
        await client.aclose()
        return outcomes, client

    outcomes, client = run(scenario())
    applied = journaled_count(outcomes)
    assert applied > 2 * writer.DELETE_IDS_PER_CALL, applied
    assert sum(client.delete_ids) == applied
    assert 0 < max(client.map_items) <= writer.MAP_KEYS_PER_CALL, client.map_items
    assert 0 < max(client.delete_ids) <= writer.DELETE_IDS_PER_CALL, client.delete_ids
    assert len(client.delete_ids) >= applied // writer.DELETE_IDS_PER_CALL
    assert client.most_in_flight == 1
    assert_each_record_once(disk_records(config.journal.dir), applied)


def test_flush_interval_is_respected(redis_url: str, tmp_path: Path) -> None:
    flush_interval_ms = 300
    config = journal_config(redis_url, tmp_path / "journal", flush_interval_ms=flush_interval_ms)

    async def scenario() -> list[float]:
        ledger = ledger_for(config)
        client = redis.asyncio.Redis.from_url(redis_url)
        journal = JournalWriter(client, WriterSettings.from_config(config))
        await journal.start()
        await asyncio.sleep(0.5)  # the writer has taken its shards
        delays: list[float] = []
        for index in range(6):
            await asyncio.sleep(random.uniform(0.0, 0.4))
            started = time.monotonic()
            await adjust(
                ledger,
                tenant="t1",
                player=f"p{index}",
                currency="usd",
                amount_units=100,
                ref=f"f{index}",
                kind="adjust",
            )
            ref = f"f{index}"

            def on_disk(ref: str = ref) -> bool:
                return any(r["refs"]["ref"] == ref for r in disk_records(config.journal.dir))

            await wait_until(on_disk, 5, f"record {ref} on disk", step_s=0.005)
            delays.append(time.monotonic() - started)
        # A line is visible before the writer counts it (after its fsync): wait for the delete.
        await wait_until(lambda: pending_count(redis_url) == 0, 5, "the last delete")
        status = journal.status()
        await journal.stop()
        await client.aclose()
        await ledger.runner.close()
        assert status.alive and status.last_flush_s > 0 and status.records_written_total == 6
        return delays

    delays = run(scenario())
    # Within one interval, plus the time a cycle and this test's polling take on a busy host.
    assert max(delays) < flush_interval_ms / 1000 + 0.45, delays
    # The writer waits between cycles instead of spinning: some record waited a while.
    assert max(delays) > 0.02, delays


def test_two_writers_never_write_the_same_record(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal", batch_records=50, flush_interval_ms=20)
    overrides = {"lease_ms": 600, "shards": 4}

    async def scenario() -> tuple[dict[str, tuple[str, int]], list[int]]:
        ledger = ledger_for(config)
        clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(3)]
        writers = [
            JournalWriter(
                clients[index],
                WriterSettings.from_config(config, **overrides),
                writer_id=f"w{index}",
            )
            for index in range(3)
        ]
        outcomes: dict[str, tuple[str, int]] = {}

        async def paced(operations: list[Operation]) -> None:
            # Operations keep arriving for a few seconds, across the handover below.
            for start in range(0, len(operations), 100):
                outcomes.update(await apply_operations(ledger, operations[start : start + 100], 16))
                await asyncio.sleep(0.08)

        await writers[0].start()
        await writers[1].start()
        traffic = asyncio.create_task(paced(plan_operations(3000, seed=3)))
        await asyncio.sleep(1.2)
        # A handover mid-stream: one writer stops cleanly and a third one joins.
        await writers[0].stop()
        await writers[2].start()
        await traffic
        await wait_until(lambda: pending_count(redis_url) == 0, 30, "the writers to drain")
        written = [journal.status().records_written_total for journal in writers]
        await writers[1].stop()
        await writers[2].stop()
        for client in clients:
            await client.aclose()
        await ledger.runner.close()
        return outcomes, written

    outcomes, written = run(scenario())
    assert all(count > 0 for count in written), written
    assert sum(written) == journaled_count(outcomes)
    assert_each_record_once(disk_records(config.journal.dir), journaled_count(outcomes))
    assert replay_verify(config) == 0


def replay_verify(config: Config) -> int:
    return int(asyncio.run(replay.verify(config)))


PendingEntries = list[tuple[bytes, dict[bytes, bytes]]]


def written_then_pending(
    redis_url: str, config: Config, seeds: tuple[int, int]
) -> tuple[dict[str, tuple[str, int]], PendingEntries, Path, int]:
    """One shard: operations written to disk by a writer, then more left pending in Redis.
    Returns every outcome, the pending entries, the last segment and its last batch number."""

    async def scenario() -> dict[str, tuple[str, int]]:
        ledger = ledger_for(config)
        outcomes = await apply_operations(ledger, plan_operations(30, seed=seeds[0]), 1)
        await drain(config, shards=1)
        outcomes.update(await apply_operations(ledger, plan_operations(30, seed=seeds[1]), 1))
        await ledger.runner.close()
        return outcomes

    outcomes = run(scenario())
    client = redis.Redis.from_url(redis_url)
    pending: PendingEntries = client.xrange(keys.journal_stream_key(0, False))  # type: ignore[assignment]
    client.close()
    assert len(pending) == journaled_count(outcomes) - len(disk_records(config.journal.dir))
    segment = replay.segment_paths(config.journal.dir)[-1]
    last_batch = orjson.loads(segment.read_bytes().splitlines()[-1])["batch"]
    return outcomes, pending, segment, last_batch


def assert_drained_once(redis_url: str, config: Config, outcomes: dict[str, Any]) -> None:
    """A writer drains the shard: every applied record is on disk exactly once."""
    run(drain(config, shards=1))
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(keys.journal_stream_key(0, False)) == 0
    client.close()
    assert_each_record_once(disk_records(config.journal.dir), journaled_count(outcomes))
    assert replay_verify(config) == 0


def test_torn_line_and_unfinished_batch_are_recovered(redis_url: str, tmp_path: Path) -> None:
    """A writer died after writing part of a batch: the complete lines reached the page cache
    (their entries are still in Redis) and the last line is torn."""
    config = journal_config(redis_url, tmp_path / "journal", buckets=1)
    outcomes, pending, segment, last_batch = written_then_pending(redis_url, config, (5, 6))
    crashed = b"".join(
        orjson.dumps(journal_record(0, sid.decode(), fields, last_batch + 1)) + b"\n"
        for sid, fields in pending[:3]
    )
    torn = orjson.dumps(journal_record(0, pending[3][0].decode(), pending[3][1], last_batch + 1))
    with open(segment, "ab") as handle:
        handle.write(crashed + torn[: len(torn) // 2])
    assert_drained_once(redis_url, config, outcomes)


def test_pages_lost_by_a_power_loss_are_moved_aside_and_written_again(
    redis_url: str, tmp_path: Path
) -> None:
    """A power loss kept the segment's new size but not every page of its last, unsynced batch:
    a page reads back as zeros between complete lines. Before, every recovery raised
    JournalCorrupt on that line and the shard never drained. Now the batch's bytes from the hole
    on are moved to a .lost-pages file and its records are written again from Redis."""
    config = journal_config(redis_url, tmp_path / "journal", buckets=1)
    outcomes, pending, segment, last_batch = written_then_pending(redis_url, config, (15, 16))
    assert len(pending) >= 6
    synced_size = segment.stat().st_size
    lines = [
        orjson.dumps(journal_record(0, sid.decode(), fields, last_batch + 1)) + b"\n"
        for sid, fields in pending[:6]
    ]
    # Lines 0-1 reached the disk, line 2 began a page that was lost (zeros up to the next page),
    # lines 4-5 reached the disk after the hole, and the batch ends in a torn line.
    hole = lines[2][:40] + bytes(4096) + lines[3][60:]
    with open(segment, "ab") as handle:
        handle.write(lines[0] + lines[1] + hole + lines[4] + lines[5] + lines[5][:30])
    cut_at = synced_size + len(lines[0]) + len(lines[1])

    assert_drained_once(redis_url, config, outcomes)
    aside = list(segment.parent.glob(segment.name + ".lost-pages-*"))
    assert len(aside) == 1, aside
    assert aside[0].read_bytes() == hole + lines[4] + lines[5] + lines[5][:30]
    # The two complete lines before the hole stayed where they were.
    assert segment.read_bytes()[synced_size:cut_at] == lines[0] + lines[1]


def test_a_lost_first_page_of_a_one_line_batch_is_cut_and_written_again(
    redis_url: str, tmp_path: Path
) -> None:
    """A batch of one line began in the block it shared with the batch before, and a power loss
    lost that block but kept the next one, with the line's end. Read backwards, the lines
    before the hole (a finished batch) once looked like the hole's batch, so the hole was never
    cut and the shard stalled for good. The line's surviving end names its batch and record:
    the record is still pending, so the hole is cut and the record written again."""
    config = journal_config(redis_url, tmp_path / "journal", buckets=1)
    outcomes, pending, segment, last_batch = written_then_pending(redis_url, config, (35, 36))
    sid, fields = pending[0]
    only_line = orjson.dumps(journal_record(0, sid.decode(), fields, last_batch + 1)) + b"\n"
    assert len(only_line) > 200
    hole = bytes(len(only_line) - 60) + only_line[-60:]
    with open(segment, "ab") as handle:
        handle.write(hole)

    assert_drained_once(redis_url, config, outcomes)
    [aside] = segment.parent.glob(segment.name + ".lost-pages-*")
    assert aside.read_bytes() == hole


def test_a_hole_in_finished_records_is_never_cut(redis_url: str, tmp_path: Path) -> None:
    """Zeros inside a batch that was fsynced and deleted from Redis are damage to the journal
    itself: cutting there would take finished records out of it. The writer leaves the segment
    as it is, moves nothing aside, and reports the shard as corrupt (it stays stalled)."""
    config = journal_config(redis_url, tmp_path / "journal", buckets=1)
    segment = written_then_pending(redis_url, config, (25, 26))[2]
    run(drain(config, shards=1))
    lines = segment.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 5
    middle = len(lines) // 2
    lines[middle] = bytes(len(lines[middle]) - 1) + b"\n"
    damaged = b"".join(lines)
    segment.write_bytes(damaged)
    run(apply_more(config, seed=27))

    async def stalled() -> writer.JournalStatus:
        client = redis.asyncio.Redis.from_url(redis_url)
        journal = JournalWriter(client, WriterSettings.from_config(config, shards=1))
        await journal.start()
        await wait_until(lambda: journal.status().errors_total > 0, 10, "the writer to refuse")
        status = journal.status()
        await journal.stop()
        await client.aclose()
        return status

    status = run(stalled())
    assert "not cut" in (status.last_error or ""), status.last_error
    assert segment.read_bytes() == damaged
    assert not list(segment.parent.glob("*.lost-pages-*"))


async def apply_more(config: Config, seed: int) -> None:
    ledger = ledger_for(config)
    await apply_operations(ledger, plan_operations(10, seed=seed), 1)
    await ledger.runner.close()


def test_only_the_newest_batch_of_the_newest_segment_is_a_cut_candidate(tmp_path: Path) -> None:
    directory = tmp_path / "shard-00"
    directory.mkdir()

    def line(batch: int, number: int) -> bytes:
        # In the writer's key order: sid, bucket and batch end the line.
        record = {"pad": "x" * 50, "sid": f"{batch}-{number}", "bucket": 0, "batch": batch}
        return orjson.dumps(record) + b"\n"

    def recovered() -> tuple[int, list[str]]:
        files = ShardFiles(directory, 1 << 20)
        last_records, last_batch = files.open()
        files.close()
        return last_batch, [record["sid"] for record in last_records]

    segment = directory / "segment-000000001.jsonl"
    # A hole among an older batch's lines: damage to fsynced data, left alone.
    older = line(1, 0) + line(1, 1) + bytes(100) + b"\n" + line(1, 2)
    segment.write_bytes(older + line(2, 0) + line(2, 1))
    assert recovered() == (2, ["2-0", "2-1"])
    assert segment.read_bytes() == older + line(2, 0) + line(2, 1)

    # Zeros after the last newline are a torn tail, cut as before.
    segment.write_bytes(line(2, 0) + line(3, 0) + b"\x00" * 300)
    assert recovered() == (3, ["3-0"])
    assert segment.read_bytes() == line(2, 0) + line(3, 0)

    # A hole inside the newest batch: a candidate, with the batch's complete lines to check,
    # and the shard still locked for the writer's decision.
    content = line(2, 0) + line(3, 0) + b"\x00" * 300 + b"\n" + line(3, 1)
    segment.write_bytes(content)
    files = ShardFiles(directory, 1 << 20)
    with pytest.raises(LostPages) as caught:
        files.open()
    lost = caught.value
    assert lost.offset == len(line(2, 0) + line(3, 0))
    assert sorted(lost.entries) == [(0, "3-0"), (0, "3-1")]
    with pytest.raises(ShardBusy):
        ShardFiles(directory, 1 << 20).open()
    last_records, last_batch = files.cut_lost_pages(lost)
    files.close()
    assert (last_batch, [record["sid"] for record in last_records]) == (3, ["3-0"])
    assert segment.read_bytes() == line(2, 0) + line(3, 0)
    [aside] = directory.glob("*.lost-pages-*")
    assert aside.read_bytes() == content[lost.offset :]

    # A newest line in the hole whose end survived: its batch (4) is the candidate, with the
    # record its end names; batch 3 before it is finished and not a candidate.
    segment.write_bytes(line(2, 0) + line(3, 0) + bytes(40) + line(4, 0)[40:])
    files = ShardFiles(directory, 1 << 20)
    with pytest.raises(LostPages) as caught:
        files.open()
    files.close()
    lost = caught.value
    assert (lost.offset, lost.entries) == (len(line(2, 0) + line(3, 0)), [(0, "4-0")])

    # The same hole in a closed segment is not a candidate: the newer segment exists only
    # because that segment's last batch was finished. It is corrupt, and stays as it is.
    segment.write_bytes(content)
    (directory / "segment-000000002.jsonl").write_bytes(b"")
    with pytest.raises(JournalCorrupt):
        recovered()
    assert segment.read_bytes() == content
    assert len(list(directory.glob("*.lost-pages-*"))) == 1


def test_sigkill_mid_flush_loses_and_duplicates_nothing(redis_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    config_path = write_config_file(
        tmp_path / "walletgate.toml",
        redis_url,
        directory,
        # Small cycles, so that six kills land while the backlog is still draining.
        batch_records=100,
        segment_max_bytes=65536,
        flush_interval_ms=20,
    )
    config = journal_config(redis_url, directory)

    async def backlog() -> dict[str, tuple[str, int]]:
        ledger = ledger_for(config)
        outcomes = await apply_operations(ledger, plan_operations(12_000, seed=7, players=200), 256)
        await ledger.runner.close()
        return outcomes

    outcomes = run(backlog())
    applied = journaled_count(outcomes)
    environment = {**os.environ, "PYTHONPATH": str(PYTHON_DIR)}

    def start_writer() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "walletgate.journal.writer",
                "--config",
                str(config_path),
                "--lease-ms",
                "1000",
                "--writer-id",
                "killable",
            ],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    rng = random.Random(8)
    kills = 0
    for _ in range(6):
        before = pending_count(redis_url)
        if before == 0:
            break
        process = start_writer()
        # Kill once the writer is busy flushing the backlog (its pending count moved).
        deadline = time.monotonic() + 20
        while pending_count(redis_url) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        kills += 1
        # The restarted writer has the same id, so it takes back the dead one's leases at once
        # (the kernel released the dead one's file locks).
    assert kills >= 2
    assert pending_count(redis_url) > 0, "the backlog was too small to kill mid-flush"
    process = start_writer()
    deadline = time.monotonic() + 60
    while pending_count(redis_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr.decode()
    assert pending_count(redis_url) == 0
    assert_each_record_once(disk_records(directory), applied)
    assert replay_verify(config) == 0
    assert len(replay.segment_paths(directory)) > 4  # segments were rotated


def test_status_reports_backlog_and_lag(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal", batch_records=4, flush_interval_ms=100)
    overrides = {"status_interval_ms": 50}

    async def scenario() -> None:
        ledger = ledger_for(config)
        outcomes = await apply_operations(ledger, plan_operations(300, seed=9), 16)
        await asyncio.sleep(0.3)  # the backlog ages
        client = redis.asyncio.Redis.from_url(redis_url)
        journal = JournalWriter(client, WriterSettings.from_config(config, **overrides))
        assert not journal.status().alive
        await journal.start()
        seen_backlog = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = journal.status()
            if status.pending_records > 0 and status.oldest_pending_age_s >= 0.2:
                seen_backlog = True
            if status.pending_records == 0 and pending_count(redis_url) == 0 and seen_backlog:
                break
            await asyncio.sleep(0.02)
        assert seen_backlog
        status = journal.status()
        assert status.alive and status.owned_shards == (0, 1, 2, 3)
        assert status.records_written_total == journaled_count(outcomes)
        assert status.sequence_violations_total == 0 and status.errors_total == 0
        await journal.stop()
        assert not journal.status().alive
        await client.aclose()
        await ledger.runner.close()

    run(scenario())


def test_key_to_player_map_and_cross_player_keys(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal")

    async def scenario() -> writer.JournalStatus:
        ledger = ledger_for(config)
        claims = redis.Redis.from_url(redis_url)
        for player in ("alice", "bob"):
            # One ref for two players, as adjustments stored before the tenant-wide claim on a
            # ref existed could be: without the claim, nothing stops the second one.
            claims.delete(keys.admin_claim_key("t1", "shared"))
            result = await adjust(
                ledger,
                tenant="t1",
                player=player,
                currency="usd",
                amount_units=5,
                ref="shared",
                kind="adjust",
            )
            assert result.outcome == "applied"
        claims.close()
        await adjust(
            ledger,
            tenant="t1",
            player="carol",
            currency="usd",
            amount_units=5,
            ref="own",
            kind="adjust",
        )
        await ledger.runner.close()
        client = redis.asyncio.Redis.from_url(redis_url)
        settings = WriterSettings.from_config(config)
        journal = JournalWriter(client, settings)
        await journal.start()
        await wait_until(lambda: pending_count(redis_url) == 0, 10, "the writer to drain")
        status = journal.status()
        # The workers of `walletgate serve` report what every writer counted, from Redis.
        observer = JournalObserver(client, settings)
        seen: list[writer.JournalStatus] = []

        async def observed() -> None:
            for _ in range(500):
                await observer.refresh()
                seen.append(observer.status())
                if seen[-1].cross_player_all_writers_total:
                    return
                await asyncio.sleep(0.02)

        await observed()
        await journal.stop()
        await client.aclose()
        assert dict(seen[-1].cross_player_all_writers_total) == {"admin": 1}
        assert seen[-1].last_flush_s > 0 and seen[-1].pending_records == 0
        return status

    status = run(scenario())
    assert dict(status.cross_player_total) == {"admin": 1}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.get(keymap_key("t1", "admin:own")) == "carol"
    assert client.get(keymap_key("t1", "admin:shared")) in ("alice", "bob")
    ttl_s = client.ttl(keymap_key("t1", "admin:own"))
    assert config.idempotency.ttl_s - 60 < ttl_s <= config.idempotency.ttl_s
    client.close()


def test_layout_change_is_refused(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal")

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        first = JournalWriter(client, WriterSettings.from_config(config))
        await first.start()
        await first.stop()
        other = JournalWriter(client, WriterSettings.from_config(config, shards=2))
        with pytest.raises(JournalLayoutError):
            await other.start()
        await client.aclose()

    run(scenario())


def test_record_conversion_edge_cases() -> None:
    fields = {
        b"ts": b"1700000000123456",
        b"tenant": b"t",
        b"player": b"p",
        b"currency": b"usd",
        b"seq": b"7",
        b"kind": b"pay",
        b"key": b"bill-1",
        b"delta": b"-100",
        b"bal": b"900",
        b"proto": b"midas",
        b"result": b"90013",
        b"fp": b"abc",
        b"refs": b"[]",
        b"fx": b"{}",
        b"gdelta": b"-5",
        b"gbal": b"20",
        b"round": b"r9",
    }
    record = journal_record(3, "1700000000123-0", fields, 12)
    assert record["ts"] == "2023-11-14T22:13:20.123456Z"
    assert parse_ts(record["ts"]) == 1700000000123456
    assert record["result"] == 90013 and record["refs"] == {} and record["fx"] == []
    assert (record["gen_delta_units"], record["gen_after_units"]) == (-5, 20)
    assert record["extra"] == {"round": "r9"}
    assert (
        journal_record(3, "1-0", {**fields, b"result": b"INSUFFICIENT_FUNDS"}, 1)["result"]
        == "INSUFFICIENT_FUNDS"
    )
    with pytest.raises(MalformedEntry):
        journal_record(3, "1-0", {**fields, b"fx": b'[["acct","bal:usd",1e+15,"0"]]'}, 1)
    with pytest.raises(MalformedEntry):
        journal_record(3, "1-0", {k: v for k, v in fields.items() if k != b"seq"}, 1)


def test_a_stalled_writer_cannot_write_after_losing_its_lease(
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writer A stalls between reading a batch and writing it, past its lease. Writer B may take
    the lease but not the shard's file lock while A holds it; A finds its lease untrusted and
    gives the shard up unwritten, and whichever writer takes it next writes the batch. Every
    record is on disk exactly once."""
    config = journal_config(redis_url, tmp_path / "journal", buckets=1, flush_interval_ms=20)
    overrides = {"shards": 1, "lease_ms": 600}

    async def scenario() -> tuple[dict[str, tuple[str, int]], list[int]]:
        ledger = ledger_for(config)
        clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
        first = JournalWriter(
            clients[0], WriterSettings.from_config(config, **overrides), writer_id="a"
        )
        second = JournalWriter(
            clients[1], WriterSettings.from_config(config, **overrides), writer_id="b"
        )
        outcomes = await apply_operations(ledger, plan_operations(50, seed=30), 8)
        await first.start()
        await wait_until(lambda: pending_count(redis_url, 1) == 0, 10, "writer a to drain")
        stalled = asyncio.Event()
        real_read = first._reader.read

        async def read_then_stall(*args: Any) -> Any:
            pages = await real_read(*args)
            if pages and not stalled.is_set():
                stalled.set()
                await asyncio.sleep(2.0)  # far past the 600 ms lease
            return pages

        monkeypatch.setattr(first._reader, "read", read_then_stall)
        await second.start()
        outcomes.update(await apply_operations(ledger, plan_operations(50, seed=31), 8))
        await wait_until(stalled.is_set, 10, "writer a to stall")
        await wait_until(lambda: pending_count(redis_url, 1) == 0, 20, "writer b to drain")
        written = [first.status().records_written_total, second.status().records_written_total]
        await first.stop()
        await second.stop()
        for client in clients:
            await client.aclose()
        await ledger.runner.close()
        return outcomes, written

    outcomes, written = run(scenario())
    assert "lost the lease of shard 0" in caplog.text
    assert sum(written) == journaled_count(outcomes)
    assert_each_record_once(disk_records(config.journal.dir), journaled_count(outcomes))


def test_the_writer_drains_a_redis_that_is_over_maxmemory(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """Over maxmemory (noeviction) Redis refuses the money scripts, and the pending streams are
    what fills it: the writer's reads, leases, key map and deletes must still run."""
    config = journal_config(fresh_redis.url, tmp_path / "journal")
    operations = plan_operations(300, seed=51)

    async def apply() -> dict[str, tuple[str, int]]:
        ledger = ledger_for(config)
        outcomes = await apply_operations(ledger, operations)
        await ledger.runner.close()
        return outcomes

    outcomes = run(apply())
    admin = redis.Redis.from_url(fresh_redis.url)
    used_bytes = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", str(used_bytes - 64 * 1024))
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        admin.set("wg:{probe}:x", "1")
    run(drain(config))
    assert pending_count(fresh_redis.url) == 0
    assert_each_record_once(disk_records(config.journal.dir), journaled_count(outcomes))
    admin.close()


def test_the_observer_gives_no_start_grace_once_the_writer_was_restarted(
    redis_url: str, tmp_path: Path
) -> None:
    """A worker that starts while `walletgate serve` keeps restarting a crashing journal writer
    must not call it alive for its first two leases, as it does on a fresh start."""
    config = journal_config(redis_url, tmp_path / "journal")
    settings = WriterSettings.from_config(config, lease_ms=1000)
    state_path = tmp_path / "journal-sidecar.json"

    async def status_with(state: bytes | None) -> writer.JournalStatus:
        if state is not None:
            state_path.write_bytes(state)
        async_client = redis.asyncio.Redis.from_url(redis_url)
        observer = JournalObserver(async_client, settings, state_path)
        await observer.refresh()  # just started, and no writer ever reported
        await async_client.aclose()
        return observer.status()

    fresh = run(status_with(None))
    assert fresh.alive and fresh.writer_restarts_total == 0
    first = run(status_with(b'{"restarts": 0}'))
    assert first.alive
    crashing = run(status_with(b'{"restarts": 3}'))
    assert not crashing.alive and crashing.writer_restarts_total == 3
    metrics = Metrics()
    record_journal_status(metrics, crashing)
    assert "walletgate_journal_writer_restarts_total 3" in metrics.render()


def test_the_observer_counts_a_shard_nobody_reported(redis_url: str, tmp_path: Path) -> None:
    """A worker must not call the journal current while a shard's figures are missing (they
    expired, or no writer ever took it): that shard's records are counted in Redis, and its
    wait is the oldest one's. A shard with none is not late (it once counted as waiting since
    the worker started, which failed /readyz on an idle gateway)."""
    config = journal_config(redis_url, tmp_path / "journal")
    settings = WriterSettings.from_config(config, lease_ms=1000)
    client = redis.Redis.from_url(redis_url)
    now_ms = int(time.time() * 1000)
    fresh = {"pending": 0, "oldest_ms": 0, "updated_ms": now_ms - 5, "flush_s": 0.001}
    client.hset(writer.STATS_KEY, "0", orjson.dumps(fresh))
    # Shard 1 reported later but never flushed: the last flush is still shard 0's.
    idle = {"pending": 0, "oldest_ms": 0, "updated_ms": now_ms, "flush_s": 0.0}
    client.hset(writer.STATS_KEY, "1", orjson.dumps(idle))

    async def scenario() -> writer.JournalStatus:
        async_client = redis.asyncio.Redis.from_url(redis_url)
        observer = JournalObserver(async_client, settings)
        observer._started_s -= 10  # started 10 s ago, more than two leases
        await observer.refresh()
        await async_client.aclose()
        return observer.status()

    status = run(scenario())
    assert status.alive  # shards 0 and 1 reported just now
    assert status.last_flush_s == 0.001
    assert (status.pending_records, status.oldest_pending_age_s) == (0, 0)  # nothing waits

    # Shards 2 and 3 never reported: two records wait in shard 2's streams, the older one
    # written 30 s ago.
    shard_streams = writer.shard_stream_names(settings)
    assert len(shard_streams) >= 4
    client.xadd(shard_streams[2][0], {"r": "old"}, id=f"{now_ms - 30_000}-0")
    client.xadd(shard_streams[2][-1], {"r": "new"})
    client.close()
    status = run(scenario())
    assert status.pending_records == 2
    assert 30 <= status.oldest_pending_age_s < 40


def test_the_observer_counts_figures_its_writer_stopped_refreshing_as_lag(
    redis_url: str, tmp_path: Path
) -> None:
    """A writer killed (or stopped, or stuck on its disk) right after it drained every shard
    leaves figures saying "nothing pending". A live owner republishes them every few hundred
    milliseconds, so figures older than ``stale_after_ms`` mean the records that arrived since
    may have waited that long: /readyz must see that lag (failing once it passes max_lag_ms)
    instead of waiting a lease (10 s, twice the default max_lag_ms). Only after a lease does
    the writer count as down: a slow cycle is not a dead writer."""
    config = journal_config(redis_url, tmp_path / "journal")
    settings = WriterSettings.from_config(config)
    assert settings.stale_after_ms < settings.lease_ms
    silence_ms = settings.stale_after_ms + 1000
    client = redis.Redis.from_url(redis_url)
    now_ms = int(time.time() * 1000)
    drained = {"pending": 0, "oldest_ms": 0, "updated_ms": now_ms - silence_ms, "flush_s": 0.001}
    for number in range(writer.shard_count_of(settings)):
        client.hset(writer.STATS_KEY, str(number), orjson.dumps(drained))
    # Records that reached the streams after the owner's last figures: the pending gauge must
    # count them (it once kept the stale "0"), and the lag is the wait of the oldest.
    shard_streams = writer.shard_stream_names(settings)
    assert len(shard_streams) >= 2 and all(shard_streams)
    arrived_ms = now_ms - silence_ms + 100
    for stream, records in ((shard_streams[0][0], 3), (shard_streams[-1][-1], 2)):
        for index in range(records):
            client.xadd(stream, {"r": str(index)}, id=f"{arrived_ms}-{index + 1}")
    client.close()

    async def scenario() -> writer.JournalStatus:
        async_client = redis.asyncio.Redis.from_url(redis_url)
        observer = JournalObserver(async_client, settings)
        observer._started_s -= 3 * settings.lease_ms / 1000  # past the start grace
        await observer.refresh()
        await async_client.aclose()
        return observer.status()

    status = run(scenario())
    assert status.alive
    assert status.oldest_pending_age_s >= (silence_ms - 100) / 1000
    assert status.pending_records == 5

    # Silent for more than a lease: the writer is down.
    client = redis.Redis.from_url(redis_url)
    gone = {**drained, "updated_ms": int(time.time() * 1000) - settings.lease_ms - 1000}
    for number in range(writer.shard_count_of(settings)):
        client.hset(writer.STATS_KEY, str(number), orjson.dumps(gone))
    client.close()
    status = run(scenario())
    assert not status.alive
    assert status.oldest_pending_age_s >= (silence_ms - 100) / 1000
    assert status.pending_records == 5

    # A silent writer with nothing waiting behind it: no lag (an idle gateway whose writer
    # was restarted stays ready), though the writer counts as down.
    client = redis.Redis.from_url(redis_url)
    for stream in {shard_streams[0][0], shard_streams[-1][-1]}:
        client.delete(stream)
    client.close()
    status = run(scenario())
    assert not status.alive
    assert (status.pending_records, status.oldest_pending_age_s) == (0, 0)


def test_a_stop_that_times_out_still_gives_the_shards_back(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stuck in a cycle (a hung disk, say) is cancelled when stop() times out. Its
    cleanup must still release the leases, so the other writers take the shards over at once;
    it once ran after the file thread was shut down, failed, and left them held."""
    config = journal_config(redis_url, tmp_path / "journal")
    settings = WriterSettings.from_config(config, lease_ms=60_000, shards=2)

    async def scenario() -> list[Any]:
        client = redis.asyncio.Redis.from_url(redis_url)
        journal = JournalWriter(client, settings, writer_id="stuck")
        stuck = asyncio.Event()

        async def hang(self: JournalWriter) -> bool:
            stuck.set()
            await asyncio.sleep(3600)
            return False

        await journal.start()
        await wait_until(lambda: len(journal._owned) == 2, 10, "the writer to own its shards")
        monkeypatch.setattr(JournalWriter, "_flush_owned", hang)
        await asyncio.wait_for(stuck.wait(), 10)
        await journal.stop(timeout_s=0.2)
        leases = [await client.get(writer.lease_key(number)) for number in range(2)]
        registered = await client.zscore(writer.WRITERS_KEY, "stuck")
        await client.aclose()
        return [*leases, registered]

    assert run(scenario()) == [None, None, None]


def test_shards_a_registered_writer_cannot_open_are_taken_over(
    tmp_path: Path, redis_url: str
) -> None:
    """A second writer registers but cannot open any shard (its host sees the files as another
    user's, say). It still counts for the fair share, so the first writer once stopped at half
    the shards and the other half never drained. Shards nobody holds for two lease periods are
    now taken beyond the share."""
    config = journal_config(redis_url, tmp_path / "journal")
    settings = WriterSettings.from_config(config, lease_ms=600, shards=4)

    async def scenario() -> tuple[list[int], list[int], int, dict[str, tuple[str, int]]]:
        ledger = ledger_for(config)
        outcomes = await apply_operations(ledger, plan_operations(400, seed=41), 16)
        await ledger.runner.close()
        clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
        able = JournalWriter(clients[0], settings, writer_id="able")
        unable = JournalWriter(clients[1], settings, writer_id="unable")
        in_file_thread = unable._in_file_thread

        async def refuse_to_open(function: Any, *args: Any) -> Any:
            if getattr(function, "__name__", "") == "open":
                raise PermissionError("the shard's files belong to another user")
            return await in_file_thread(function, *args)

        unable._in_file_thread = refuse_to_open  # type: ignore[method-assign]
        # The one that cannot open starts first, so both count before either takes a shard.
        await unable.start()
        await able.start()
        await wait_until(lambda: pending_count(redis_url) == 0, 30, "every shard to drain")
        owned = [list(able.status().owned_shards), list(unable.status().owned_shards)]
        errors = unable.status().errors_total
        await unable.stop()
        await able.stop()
        for client in clients:
            await client.aclose()
        return owned[0], owned[1], errors, outcomes

    able_shards, unable_shards, errors, outcomes = run(scenario())
    assert (able_shards, unable_shards) == ([0, 1, 2, 3], [])
    assert errors > 0
    assert_each_record_once(disk_records(config.journal.dir), journaled_count(outcomes))


def test_silent_shards_are_recounted_at_most_every_interval_and_a_failed_count_falls_back(
    redis_url: str, tmp_path: Path
) -> None:
    """Counting every stream costs Redis, and every worker asks each second: a count is reused
    for a while. A count that fails (a node that does not answer) must not fail the figures:
    the silent shards' wait then counts from when they fell silent."""
    config = journal_config(redis_url, tmp_path / "journal")
    settings = WriterSettings.from_config(config)
    shard_streams = writer.shard_stream_names(settings)
    client = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        async_client = redis.asyncio.Redis.from_url(redis_url)
        counter = writer.RecordCounter(async_client, interval_s=0.3)
        streams = shard_streams[0]
        assert await counter(streams) == (0, 0)
        client.xadd(streams[0], {"r": "1"}, id="1000-1")
        assert await counter(streams) == (0, 0)  # reused
        assert (await counter(shard_streams[1] + streams))[0] == 1  # other streams: counted
        await asyncio.sleep(0.35)
        assert await counter(streams) == (1, 1000)

        async def failing(streams: Sequence[str]) -> tuple[int, int]:
            raise redis.exceptions.ConnectionError("node down")

        silence_ms = settings.stale_after_ms + 3000
        stale = {"pending": 0, "oldest_ms": 0, "updated_ms": 0, "flush_s": 0.001}
        stale["updated_ms"] = int(time.time() * 1000) - silence_ms
        for number in range(len(shard_streams)):
            client.hset(writer.STATS_KEY, str(number), orjson.dumps(stale))
        figures = await writer.read_journal_figures(
            async_client, shard_streams, settings.lease_ms, 0, settings.stale_after_ms, failing
        )
        assert figures.oldest_pending_age_ms >= silence_ms
        assert figures.pending_records == 0  # not known
        await async_client.aclose()

    run(scenario())
    client.close()
