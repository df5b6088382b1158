"""The journal writer: drains the pending-journal Redis streams into fsynced segment files.

Every money operation appends one record to a pending-journal stream in the same Lua call that
applies it (``ledger/lua/_prelude.lua``). The writer appends those records to JSON Lines segments
under ``[journal] dir`` and deletes a record from Redis only after the file holding it has been
fsynced, so at every instant a record is in Redis, on disk, or both.

Ownership. Streams are partitioned into shards (``bucket % shards``). A writer processes a shard
only while it holds both of:

* a Redis lease ``wg:{journal-lease:<shard>}`` (``SET NX PX``, renewed by compare-and-renew),
  which spreads the shards over every writer of every process and host, and
* an exclusive ``flock`` on ``shard-<NN>/.lock``, which keeps two writers out of the same files
  even when one stalls past its lease; the kernel drops the lock when a process dies.

All writers must therefore share one ``[journal] dir`` (a local disk for one host's workers, or
storage shared by every host that runs a writer).

Crash safety. Per shard, batches are strictly sequential: read, write, fsync, map keys, XDEL, and
the next batch is read only once the previous XDEL succeeded. The only records that can be both
on disk and in Redis are thus those of the shard's last batch, which every line names in its
``batch`` field. On taking a shard, a writer truncates a torn last line, reads the last batch
back and finishes its key-map and XDEL steps before it reads anything new. A writer killed at any
point and restarted loses nothing and writes nothing twice.

Key-to-player map. Once a record is on disk, ``wg:{keymap:<tenant>:<key>}`` maps its transaction
key to its player (first player wins, expiring with the record's retention); a key seen for a
second player is logged and counted in ``JournalStatus.cross_player_total``.

Redis round trips. Reads, key-map updates and deletes are one Lua call per node (and bounded
chunk), not one command per stream or record: a cluster has 16384 streams, and redis-py spends
far more CPU packing commands than Redis spends running them. On a standalone Redis a read is a
script that finds the non-empty streams, then one pipeline of XRANGEs (see StreamReader): Redis
spends about four times as much turning entries into Lua tables and back as reading them. The
scripts read keys of several slots of their own node (``allow-cross-slot-keys``), which needs
Redis 7. A cycle reads all of a
writer's shards at once and writes, maps and deletes their batches together, so its round trips
(and trips to the file thread) do not grow with the number of shards. Its key-map and delete
calls carry a bounded amount of work each (``MAP_KEYS_PER_CALL``, ``DELETE_IDS_PER_CALL``) and
go one after the other, so the gateway's money scripts never wait behind a long one. Records
are encoded by the native core (``rust/journal.rs``), which leaves odd and malformed entries to
the Python path.

Modules. This module runs the writer: its settings and status, the leases and the cycle. What a
record looks like is :mod:`walletgate.journal.records`, the files on disk are
:mod:`walletgate.journal.segments`, the reads and script calls are
:mod:`walletgate.journal.streams`, and the Lua scripts are ``journal/lua/*.lua`` (read by
:mod:`walletgate.journal.scripts`).

Usage in a gateway worker::

    writer = JournalWriter(client, WriterSettings.from_config(config))
    await writer.start()          # raises JournalLayoutError on a foreign journal directory
    ...                           # writer.status() feeds /readyz and /metrics
    await writer.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import orjson
from redis.exceptions import RedisError

from walletgate.config import Config, ConfigError, load_config
from walletgate.journal.records import (
    RecordMeta,
    StreamEntry,
    family_of,
    keymap_key,
    meta_of,
    text,
)
from walletgate.journal.replication import ReplicaCheck
from walletgate.journal.scripts import (
    ACQUIRE_LEASE_LUA,
    COUNT_RECORDS_LUA,
    DELETE_ENTRIES_LUA,
    MAP_KEYS_LUA,
    PUBLISH_STATS_LUA,
    REGISTER_WRITER_LUA,
    RELEASE_LEASE_LUA,
    RENEW_LEASE_LUA,
)
from walletgate.journal.segments import (
    JournalCorrupt,
    JournalLayoutError,
    LostPages,
    ShardBusy,
    ShardFiles,
    check_layout,
    shard_directory_name,
    write_batch,
)
from walletgate.journal.streams import (
    MAX_STREAMS_PER_READ,
    RedisClient,
    StreamPage,
    StreamReader,
    connect,
    run_per_node,
    run_pipeline,
    stream_id_ms,
    stream_id_order,
)
from walletgate.ledger import keys
from walletgate.ledger.fastredis import RedisAddress, parse_redis_url
from walletgate.logs import configure_logging, loggable_tenant
from walletgate.supervision import watch_supervisor

logger = logging.getLogger("walletgate.journal")

WRITERS_KEY = "wg:{journal-writers}"
# A shard no writer has held for this many lease periods is taken by any writer, beyond its
# fair share; one held that way for ADOPTED_HOLD_LEASES periods is given back, so that the
# writer whose share it is takes it once it can.
ORPHAN_AFTER_LEASES = 2
ADOPTED_HOLD_LEASES = 30
# How long a stop that timed out waits for the cancelled writer task to give its shards back.
STOP_CLEANUP_TIMEOUT_S = 5.0
STATS_KEY = "wg:{journal-stats}"
# Keys reused by a second player, per family, counted by every writer since the journal began
# (HINCRBY, no expiry): the figure every worker reports, whichever writer saw the reuse.
CROSS_PLAYER_KEY = "wg:{journal-stats}:cross-player"
MAX_SHARDS = 256
# Redis runs one script at a time, and every gateway command waits behind it. Measured in
# bench/run (1 worker, 64 connections, about 9,500 req/s, SLOWLOG): a key-map call of 1,000
# keys ran 2.7 to 2.9 ms and a delete of about 2,900 ids 2.8 ms, several per cycle, which put
# the gateway's p99 about 4 ms above a run without the writer. So each call carries a bounded
# amount of work (about 0.3 ms), and a cycle sends its calls one after the other, letting
# Redis serve the gateway in between; a cycle of 2,000 records makes about 25 round trips.
MAP_KEYS_PER_CALL = 128
DELETE_IDS_PER_CALL = 256
# A lease is trusted only for this share of its length after the renewal was sent, which leaves
# room for clock drift between this host and Redis and for the time a batch takes to write.
LEASE_TRUST_FRACTION = 0.7


def lease_key(shard: int) -> str:
    return "wg:{journal-lease:" + str(shard) + "}"


# --- Settings and status ---------------------------------------------------------------------

# Added to the republish period of a shard's figures before they count as stale (see
# WriterSettings.stale_after_ms).
STALE_MARGIN_MS: Final = 1000


@dataclass(frozen=True, slots=True)
class WriterSettings:
    directory: Path
    buckets: int
    cluster: bool
    flush_interval_ms: int = 200
    batch_records: int = 5000
    segment_max_bytes: int = 64 * 1024 * 1024
    # Key-map entries live as long as the longest TTL a record wrote; this is the fallback.
    keymap_ttl_s: int = 604_800
    shards: int = 16
    lease_ms: int = 10_000
    status_interval_ms: int = 1000
    # Bound on the accounts whose last written seq is remembered to check continuity.
    tracked_accounts: int = 1_000_000
    max_backoff_ms: int = 5000
    # Tenant ids that are secrets (Wallet v2 wallet_tokens): logs show a digest instead.
    secret_tenants: frozenset[str] = frozenset()
    # [redis] replica_acks: records are written out only once that many replicas hold them
    # (see walletgate.journal.replication), asked at this address (its credentials included).
    replica_acks: int = 0
    replica_ack_timeout_ms: int = 100
    replica_address: RedisAddress | None = None
    redis_connect_timeout_ms: int = 1000
    redis_command_timeout_ms: int = 2000

    @property
    def stale_after_ms(self) -> int:
        """How long a shard's published figures may go unrefreshed before its owner counts as
        stuck: a live owner republishes every cycle, unchanged figures at least every half
        status interval, so this is two of the longer of the two plus a margin for a slow
        cycle (a flush, an fsync)."""
        return 2 * max(self.status_interval_ms, self.flush_interval_ms) + STALE_MARGIN_MS

    def __post_init__(self) -> None:
        assert 1 <= self.shards <= MAX_SHARDS, "shards out of range"
        assert self.batch_records >= 1, "batch_records must be positive"
        assert self.flush_interval_ms >= 1, "flush_interval_ms must be positive"
        assert self.lease_ms >= 500, "lease_ms must be at least 500"

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> WriterSettings:
        settings = cls(
            directory=config.journal.dir,
            buckets=config.journal.buckets,
            cluster=config.redis.cluster,
            flush_interval_ms=config.journal.flush_interval_ms,
            batch_records=config.journal.batch_records,
            segment_max_bytes=config.journal.segment_max_bytes,
            keymap_ttl_s=config.idempotency.ttl_s,
            secret_tenants=frozenset(config.wallet_v2_agents),
            replica_acks=config.redis.replica_acks,
            replica_ack_timeout_ms=config.redis.replica_ack_timeout_ms,
            replica_address=(
                parse_redis_url(config.redis.url) if config.redis.replica_acks else None
            ),
            redis_connect_timeout_ms=config.redis.connect_timeout_ms,
            redis_command_timeout_ms=config.redis.command_timeout_ms,
        )
        return replace(settings, **overrides)


@dataclass(frozen=True, slots=True)
class JournalStatus:
    """What /readyz and /metrics need from the writer of this process.

    ``pending_records`` and ``oldest_pending_age_s`` cover every shard, whichever writer owns it,
    so any worker can report the journal's lag.
    """

    alive: bool
    writer_id: str
    owned_shards: tuple[int, ...]
    pending_records: int
    oldest_pending_age_s: float
    last_flush_s: float
    records_written_total: int
    # Reused keys this writer saw, and those all writers saw (CROSS_PLAYER_KEY, as last read).
    cross_player_total: Mapping[str, int]
    cross_player_all_writers_total: Mapping[str, int]
    sequence_violations_total: int
    errors_total: int
    last_error: str | None
    # Times `walletgate serve` restarted the journal writer process (observers only).
    writer_restarts_total: int = 0


# --- The writer ------------------------------------------------------------------------------


@dataclass(slots=True)
class OwnedShard:
    number: int
    stream_names: list[str]
    files: ShardFiles
    lease_trusted_until: float
    next_batch: int
    last_seq: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # Records on disk whose key-map and XDEL steps have not completed yet.
    unfinished: list[RecordMeta] | None = None
    # Per stream of the shard, the newest entry id this writer has on disk (from the last
    # batch when it took the shard, then from every batch it writes); see _drop_written.
    written_ids: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class ShardStats:
    pending: int
    oldest_ms: int
    updated_ms: int
    # The duration of the shard's last write and fsync (0 until it has written one).
    flush_s: float = 0.0


def parse_shard_stats(value: Any) -> ShardStats | None:
    """A shard's published figures (see JournalWriter._queue_stats), or None when unreadable."""
    try:
        decoded = orjson.loads(value)
        return ShardStats(
            int(decoded["pending"]),
            int(decoded["oldest_ms"]),
            int(decoded["updated_ms"]),
            float(decoded.get("flush_s", 0.0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
        return None


def parse_counts(raw: Mapping[Any, Any]) -> dict[str, int]:
    """A hash of counters as read from Redis (bytes or str), unreadable fields left out."""
    counts: dict[str, int] = {}
    for name, value in raw.items():
        try:
            counts[text(name)] = int(value)
        except (ValueError, TypeError, UnicodeDecodeError):
            continue
    return counts


@dataclass(slots=True)
class ShardRead:
    """A shard's batch as read in one cycle: the batch number it gets once written, whether the
    shard has more waiting, and its backlog after this batch (entries left, and a bound on the
    oldest one's stream time)."""

    shard: OwnedShard
    entries: list[StreamEntry]
    batch: int
    more: bool = False
    pending: int = 0
    oldest_ms: int = 0
    # How long its write and fsync took, once written.
    flush_s: float = 0.0


@dataclass(slots=True)
class ShardWrite:
    """What the file thread did with a :class:`ShardRead`: its records' metadata once fsynced,
    None when its lease was no longer trusted (nothing written), or the disk error."""

    metas: list[RecordMeta] | None = None
    flush_s: float = 0.0
    error: OSError | None = None


def write_batches(reads: Sequence[ShardRead], keymap_ttl_s: int) -> list[ShardWrite]:
    """Write several shards' batches in one trip to the file thread, each in its own files.

    A shard's lease is checked just before its batch is written, as when the loop wrote one
    shard at a time; a disk error gives up that shard's batch only.
    """
    outcomes: list[ShardWrite] = []
    for read in reads:
        if time.monotonic() >= read.shard.lease_trusted_until:
            outcomes.append(ShardWrite())
            continue
        try:
            metas, flush_s = write_batch(read.shard.files, read.entries, read.batch, keymap_ttl_s)
        except OSError as error:
            outcomes.append(ShardWrite(error=error))
            continue
        outcomes.append(ShardWrite(metas, flush_s))
    return outcomes


class JournalWriter:
    """Moves records from the pending-journal streams to segment files; see the module doc.

    Run it inside a gateway worker with :meth:`start` and :meth:`stop`, or in the foreground
    with :meth:`run` (``python -m walletgate.journal.writer --config FILE``).
    """

    def __init__(
        self, client: RedisClient, settings: WriterSettings, *, writer_id: str | None = None
    ) -> None:
        self._client = client
        self._settings = settings
        self.writer_id = writer_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        )
        streams = keys.all_journal_stream_keys(settings.buckets, settings.cluster)
        self.shard_count = shard_count_of(settings)
        self._shard_stream_names = shard_stream_names(settings)
        self._stream_of_bucket = dict(enumerate(streams))
        self._bucket_of_stream = {stream: bucket for bucket, stream in enumerate(streams)}
        self._reader = StreamReader(client)
        self._record_counter = RecordCounter(client)
        self._replica_check: ReplicaCheck | None = None
        if settings.replica_acks and settings.replica_address is not None:
            self._replica_check = ReplicaCheck(
                client,
                settings.replica_address,
                replica_acks=settings.replica_acks,
                ack_timeout_ms=settings.replica_ack_timeout_ms,
                connect_timeout_ms=settings.redis_connect_timeout_ms,
                command_timeout_ms=settings.redis_command_timeout_ms,
            )
        self._rotation = 0
        # One thread does every file operation in order, so the event loop never waits on disk.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-files")
        self._owned: dict[int, OwnedShard] = {}
        self._retry_after: dict[int, float] = {}
        # Shards held beyond the fair share because nobody held them (number -> when taken),
        # and when each shard held by nobody was first seen free (see _adopt_orphans).
        self._adopted: dict[int, float] = {}
        self._free_since: dict[int, float] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started_monotonic = time.monotonic()
        self._heartbeat_monotonic = 0.0
        self._next_lease_check = 0.0
        self._next_status_refresh = 0.0
        self._stats: dict[int, ShardStats] = {}
        self._stats_to_publish: dict[int, bytes] = {}
        self._pending_records = 0
        self._oldest_pending_age_s = 0.0
        self._last_flush_s = 0.0
        self._records_written_total = 0
        self._cross_player_total: dict[str, int] = {}
        # Counted here but not yet added to CROSS_PLAYER_KEY (done with the next stats).
        self._cross_player_unpublished: dict[str, int] = {}
        self._cross_player_all_writers_total: dict[str, int] = {}
        self._sequence_violations_total = 0
        self._errors_total = 0
        self._last_error: str | None = None
        self._fatal = False

    # -- Lifecycle --

    async def start(self) -> None:
        """Check the directory layout (raising :class:`JournalLayoutError`) and start the task."""
        assert self._task is None, "the writer was already started"
        settings = self._settings
        await self._in_file_thread(
            check_layout, settings.directory, self.shard_count, settings.buckets, settings.cluster
        )
        self._task = asyncio.create_task(self._run(), name=f"journal-writer {self.writer_id}")

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the current batch, release every shard and the leases, and end the task."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                logger.error("journal: the writer did not stop within %.1f s", timeout_s)
                # The cancelled task still gives its shards back (closing files in the file
                # thread, releasing the leases): let it, for a bounded time, before that
                # thread goes away, or the other writers wait a lease period for them.
                await asyncio.wait({self._task}, timeout=STOP_CLEANUP_TIMEOUT_S)
            except Exception:
                logger.exception("journal: the writer task failed")
        # The task has ended, so no file operation is queued; do not block the loop on it.
        self._executor.shutdown(wait=False)
        if self._replica_check is not None:
            await self._replica_check.close()

    async def run(self) -> None:
        await self.start()
        assert self._task is not None
        try:
            await self._task
        finally:
            self._executor.shutdown(wait=False)
            if self._replica_check is not None:
                await self._replica_check.close()

    def status(self) -> JournalStatus:
        now = time.monotonic()
        heartbeat_limit_s = max(
            self._settings.lease_ms / 1000, 10 * self._settings.flush_interval_ms / 1000
        )
        alive = (
            self._task is not None
            and not self._task.done()
            and not self._fatal
            and now - self._heartbeat_monotonic < heartbeat_limit_s
        )
        return JournalStatus(
            alive=alive,
            writer_id=self.writer_id,
            owned_shards=tuple(sorted(self._owned)),
            pending_records=self._pending_records,
            oldest_pending_age_s=self._oldest_pending_age_s,
            last_flush_s=self._last_flush_s,
            records_written_total=self._records_written_total,
            cross_player_total=dict(self._cross_player_total),
            cross_player_all_writers_total=dict(self._cross_player_all_writers_total),
            sequence_violations_total=self._sequence_violations_total,
            errors_total=self._errors_total,
            last_error=self._last_error,
        )

    async def _in_file_thread(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _run(self) -> None:
        """Supervise the flush loop: a bug in one cycle restarts the loop (after giving every
        shard back) instead of silently ending the journal for this process."""
        self._heartbeat_monotonic = time.monotonic()
        while not self._stop.is_set():
            try:
                await self._loop()
            except Exception as error:
                self._fatal = True
                self._note_error(f"writer loop failed, restarting: {error!r}")
                logger.exception("journal: writer loop failed")
            finally:
                await self._release_everything()
            self._next_lease_check = 0.0
            await self._sleep(self._settings.max_backoff_ms)

    async def _loop(self) -> None:
        backoff_ms = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                more = await self._cycle()
                backoff_ms = 0
                self._fatal = False
            except (RedisError, OSError) as error:
                self._note_error(f"cycle failed: {error!r}")
                more = False
                with contextlib.suppress(RedisError, OSError):
                    # A slot may have moved: find every stream's node again before retrying.
                    await self._reader.refresh_topology()
                backoff_ms = min(
                    self._settings.max_backoff_ms,
                    max(self._settings.flush_interval_ms, backoff_ms * 2),
                )
            self._heartbeat_monotonic = time.monotonic()
            if more and not backoff_ms:
                continue
            elapsed_ms = (time.monotonic() - started) * 1000
            await self._sleep(backoff_ms or max(0.0, self._settings.flush_interval_ms - elapsed_ms))

    async def _sleep(self, delay_ms: float) -> None:
        """Wait, but wake at once when a stop is requested."""
        if self._stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay_ms / 1000)

    def _note_error(self, message: str) -> None:
        self._errors_total += 1
        self._last_error = message
        logger.error("journal: %s", message)

    async def _release_everything(self) -> None:
        for shard in list(self._owned.values()):
            try:
                await self._drop(shard, release_lease=True)
            except OSError as error:
                logger.warning("journal: cannot close shard %d: %r", shard.number, error)
        try:
            await self._client.zrem(WRITERS_KEY, self.writer_id)
        except RedisError as error:
            logger.warning("journal: cannot leave the writer registry: %r", error)

    # -- One cycle --

    async def _cycle(self) -> bool:
        """Flush one batch of every owned shard; True when some shard has more waiting."""
        await self._maybe_maintain_leases()
        more = False
        if self._owned and not self._stop.is_set():
            more = await self._flush_owned()
        await self._publish_stats()
        self._heartbeat_monotonic = time.monotonic()
        if time.monotonic() >= self._next_status_refresh:
            await self._refresh_status()
        return more

    async def _flush_owned(self) -> bool:
        """Read every owned shard's streams at once, write each shard's batch in its own files
        (one trip to the file thread), then map keys and delete entries for all of them (one
        call per node each).

        Every round trip costs far more CPU than a record does, so a load spread over many
        shards costs a few round trips per cycle rather than a few per shard. Per shard nothing
        changes: read, write, fsync, map keys, XDEL, and it is read again only after its XDEL
        succeeded. One read takes about ``batch_records`` entries in all (and at least one of
        every non-empty stream), so no shard's batch is larger than when shards were read one by
        one; streams are visited from a rotating start, so the budget favours none for long.
        """
        unfinished = [shard for shard in self._owned.values() if shard.unfinished is not None]
        if unfinished:
            # A batch on disk whose key-map or XDEL step failed is finished before its shard is
            # read again.
            try:
                await self._finish(unfinished)
            except OSError as error:
                for shard in unfinished:
                    await self._disk_error(shard, error)
        numbers = tuple(sorted(self._owned))
        shards = [self._owned[number] for number in numbers]
        if not shards:
            return False
        read_started_ms = int(time.time() * 1000)
        self._rotation += 1
        try:
            pages = await self._reader.read(
                numbers,
                [stream for shard in shards for stream in shard.stream_names],
                self._settings.batch_records,
                self._rotation,
            )
        except OSError as error:
            for shard in shards:
                await self._disk_error(shard, error)
            return False
        held_back: set[str] = set()
        if self._replica_check is not None and pages:
            pages = await self._drop_written(pages)
            confirmed = await self._replica_check.confirmed(list(pages))
            held_back = set(pages) - confirmed
        reads = {shard.number: ShardRead(shard, [], shard.next_batch) for shard in shards}
        bucket_of_stream = self._bucket_of_stream
        for stream, (length, page) in pages.items():
            bucket = bucket_of_stream[stream]
            read = reads[bucket % self.shard_count]
            read.pending += length
            if stream in held_back:
                # Not on enough replicas yet: it stays in Redis, waits, and is read again.
                first_ms = stream_id_ms(page[0][0])
                read.oldest_ms = min(read.oldest_ms or first_ms, first_ms)
                continue
            read.entries += [StreamEntry(bucket, stream, sid, fields) for sid, fields in page]
            if len(page) < length:
                read.more = True
                # The next entry is younger than the last one read, so this bounds its age.
                last_ms = stream_id_ms(page[-1][0])
                read.oldest_ms = min(read.oldest_ms or last_ms, last_ms)
        group: list[ShardRead] = []
        for read in reads.values():
            read.pending = max(0, read.pending - len(read.entries))
            if read.pending and not read.oldest_ms:
                read.oldest_ms = read_started_ms
            if read.entries:
                group.append(read)
            else:
                self._queue_stats(read)
        if not group:
            return False
        return await self._write_group(group)

    async def _drop_written(self, pages: dict[str, StreamPage]) -> dict[str, StreamPage]:
        """``pages`` without the entries this writer already has on disk, which are deleted
        from Redis instead of being written again.

        Only with replica_acks, where a record is written out once the replicas hold it: a
        failover may then bring back entries whose XDEL the old primary had not replicated
        yet, and the new primary, having every record written, numbers its new entries above
        them. Without replica_acks a written record may have been lost in the failover and a
        new entry get a lower id than it, so this would drop records never written.
        """
        kept: dict[str, StreamPage] = {}
        stale: list[tuple[str, list[str]]] = []
        for stream, (length, page) in pages.items():
            shard = self._owned.get(self._bucket_of_stream[stream] % self.shard_count)
            limit = None if shard is None else shard.written_ids.get(stream)
            if limit is None or stream_id_order(page[0][0]) > limit:
                kept[stream] = (length, page)
                continue
            old_ids = [sid for sid, _ in page if stream_id_order(sid) <= limit]
            stale.append((stream, old_ids))
            rest = page[len(old_ids) :]
            if rest:
                kept[stream] = (length - len(old_ids), rest)
        if stale:
            logger.warning(
                "journal: %d entries already on disk came back to Redis (a failover); deleted, "
                "not written again",
                sum(len(ids) for _, ids in stale),
            )
            await self._delete_entries(stale)
        return kept

    async def _delete_entries(self, by_stream: Sequence[tuple[str, list[str]]]) -> None:
        # Lua's unpack() has a bounded stack, so one XDEL names a bounded number of ids.
        groups = [
            (stream, ids[start : start + DELETE_IDS_PER_CALL])
            for stream, ids in by_stream
            for start in range(0, len(ids), DELETE_IDS_PER_CALL)
        ]
        await run_per_node(
            self._client,
            DELETE_ENTRIES_LUA,
            groups,
            ordered=True,
            max_weight_per_call=DELETE_IDS_PER_CALL,
            weigh=_id_count,
        )

    async def _disk_error(self, shard: OwnedShard, error: OSError) -> None:
        """A failed write or fsync leaves the page cache in doubt: give the shard up, so it is
        taken again later through recovery, which reads what the disk really holds."""
        self._note_error(f"shard {shard.number}: disk error {error!r}")
        await self._drop(shard, release_lease=True)
        self._retry_after[shard.number] = time.monotonic() + self._settings.max_backoff_ms / 1000

    async def _write_group(self, group: Sequence[ShardRead]) -> bool:
        """Write the batches read (each only while its lease is trusted), then finish them;
        True when one of the shards written has more waiting.

        A slow disk can make one trip to the file thread outlast the lease trust of the shards
        written last. Those come back unwritten, have their leases renewed one by one, and go
        in the next trip; a shard whose lease another writer took meanwhile is given up. Each
        trip starts right after the renewals, so it writes at least one batch unless a single
        write outlasts a whole trust window; the trips are bounded by the group's size.
        """
        # Never touch the files of a shard given up since it was read.
        waiting = [read for read in group if self._owned.get(read.shard.number) is read.shard]
        written: list[ShardRead] = []
        for _ in range(len(waiting)):
            if not waiting:
                break
            outcomes: list[ShardWrite] = await self._in_file_thread(
                write_batches, waiting, self._settings.keymap_ttl_s
            )
            untrusted: list[ShardRead] = []
            for read, outcome in zip(waiting, outcomes, strict=True):
                shard = read.shard
                if outcome.error is not None:
                    await self._disk_error(shard, outcome.error)
                    continue
                if outcome.metas is None:
                    untrusted.append(read)
                    continue
                shard.next_batch = read.batch + 1
                shard.unfinished = outcome.metas
                _note_written(shard, outcome.metas)
                self._last_flush_s = outcome.flush_s
                read.flush_s = outcome.flush_s
                self._records_written_total += len(outcome.metas)
                self._check_sequences(shard, outcome.metas)
                written.append(read)
            waiting = [read for read in untrusted if await self._renew_lease(read.shard)]
        if waiting:
            # Not written this cycle: their entries stay in Redis and are read again.
            logger.warning(
                "journal: shards %s not written: the disk is slower than the lease trust window",
                [read.shard.number for read in waiting],
            )
        try:
            await self._finish([read.shard for read in written])
        except OSError as error:
            for read in written:
                await self._disk_error(read.shard, error)
            return False
        for read in written:
            self._queue_stats(read)
        return any(read.more for read in written)

    async def _renew_lease(self, shard: OwnedShard) -> bool:
        """Renew one shard's lease; when another writer holds it now, give the shard up."""
        settings = self._settings
        sent = time.monotonic()
        renewed = await self._client.eval(
            RENEW_LEASE_LUA, 1, lease_key(shard.number), self.writer_id, settings.lease_ms
        )
        if int(renewed) == 1:
            shard.lease_trusted_until = sent + LEASE_TRUST_FRACTION * settings.lease_ms / 1000
            return True
        logger.warning("journal: lost the lease of shard %d", shard.number)
        await self._drop(shard, release_lease=False)
        return False

    async def _finish(self, shards: Sequence[OwnedShard]) -> None:
        """Map the keys of the records just written, then delete them from Redis: every key of
        every shard given is mapped before any entry is deleted."""
        batches = [shard.unfinished for shard in shards if shard.unfinished is not None]
        if not batches:
            return
        await self._map_keys(batches)
        by_stream: dict[str, list[str]] = {}
        for metas in batches:
            for meta in metas:
                by_stream.setdefault(meta.stream, []).append(meta.sid)
        await self._delete_entries(list(by_stream.items()))
        for shard in shards:
            shard.unfinished = None

    async def _map_keys(self, batches: Sequence[Sequence[RecordMeta]]) -> None:
        """Keep the transaction key -> player map for records on disk, and count keys that a
        second player reused (the first player stays mapped).

        Batches are mapped in order, each as if alone, so a key that two shards' batches name
        for two players is caught as when the shards were finished one after the other. Within
        a batch the first record of a key gives its player (a later record of another player
        is counted here) and the latest expiry of its records gives the entry's life.
        """
        now_s = int(time.time())
        items: list[tuple[str, str, str]] = []
        # The items' own identities: two batches may send equal items for different records.
        origin_of_item: dict[int, tuple[RecordMeta, str]] = {}
        for metas in batches:
            first: dict[str, tuple[RecordMeta, str]] = {}
            expire_at_s: dict[str, int] = {}
            for meta in metas:
                if meta.malformed or meta.keymap_expire_at_s <= now_s:
                    continue
                for key in (meta.key, *meta.other_keys):
                    name = keymap_key(meta.tenant, key)
                    earlier = first.get(name)
                    if earlier is None:
                        first[name] = (meta, key)
                        expire_at_s[name] = meta.keymap_expire_at_s
                        continue
                    expire_at_s[name] = max(expire_at_s[name], meta.keymap_expire_at_s)
                    if meta.player != earlier[0].player:
                        self._note_reuse(meta, key, earlier[0].player, meta.player)
            for name, origin in first.items():
                item = (name, origin[0].player, str(expire_at_s[name]))
                items.append(item)
                origin_of_item[id(item)] = origin
        replies = await run_per_node(
            self._client, MAP_KEYS_LUA, items, ordered=True, max_weight_per_call=MAP_KEYS_PER_CALL
        )
        for chunk, reply in replies:
            for index in range(0, len(reply), 2):
                item = chunk[int(reply[index]) - 1]
                meta, key = origin_of_item[id(item)]
                self._note_reuse(meta, key, text(reply[index + 1]), item[1])

    def _note_reuse(self, meta: RecordMeta, key: str, first_player: str, player: str) -> None:
        """Count and log a transaction key that a second player used."""
        family = family_of(meta.protocol)
        self._cross_player_total[family] = self._cross_player_total.get(family, 0) + 1
        unpublished = self._cross_player_unpublished
        unpublished[family] = unpublished.get(family, 0) + 1
        logger.warning(
            "journal: transaction key %r of tenant %s is used by player %s and player %s",
            key,
            loggable_tenant(meta.tenant, self._settings.secret_tenants),
            first_player,
            player,
        )

    def _check_sequences(self, shard: OwnedShard, metas: Sequence[RecordMeta]) -> None:
        """Per account, the seqs this writer writes must go up by exactly one."""
        limit = max(1, self._settings.tracked_accounts // self.shard_count)
        last_seq = shard.last_seq
        for meta in metas:
            if meta.malformed:
                continue
            account = (meta.tenant, meta.player, meta.currency)
            previous = last_seq.pop(account, None)
            if previous is not None and meta.seq != previous + 1:
                self._sequence_violations_total += 1
                logger.error(
                    "journal: %s/%s/%s seq %d follows %d (stream entry %s)",
                    loggable_tenant(meta.tenant, self._settings.secret_tenants),
                    meta.player,
                    meta.currency,
                    meta.seq,
                    previous,
                    meta.sid,
                )
            last_seq[account] = meta.seq
            if len(last_seq) > limit:
                # Dicts keep insertion order and an update re-inserts, so this drops the account
                # written longest ago.
                del last_seq[next(iter(last_seq))]

    # -- Leases --

    async def _maybe_maintain_leases(self) -> None:
        now = time.monotonic()
        if now < self._next_lease_check:
            return
        self._next_lease_check = now + self._settings.lease_ms / 3000
        await self._maintain_leases()

    async def _maintain_leases(self) -> None:
        settings = self._settings
        registered = await self._client.eval(
            REGISTER_WRITER_LUA,
            1,
            WRITERS_KEY,
            self.writer_id,
            settings.lease_ms,
            2 * settings.lease_ms,
        )
        live_writers = max(1, int(registered))
        target = math.ceil(self.shard_count / live_writers)
        for shard in list(self._owned.values()):
            await self._renew_lease(shard)
        for number in [number for number in self._adopted if number not in self._owned]:
            del self._adopted[number]
        # Give shards back when more writers joined, so every writer carries a fair share.
        shared = sorted(number for number in self._owned if number not in self._adopted)
        while len(shared) > target:
            await self._drop(self._owned[shared.pop()], release_lease=True)
        # An adopted shard within the share (a writer left) is an ordinary one now; one held
        # long enough goes back, for a writer whose share it is and who can open it by now.
        now = time.monotonic()
        hold_s = ADOPTED_HOLD_LEASES * settings.lease_ms / 1000
        for number, adopted_at in sorted(self._adopted.items()):
            if len(shared) < target:
                del self._adopted[number]
                shared.append(number)
            elif now - adopted_at >= hold_s:
                del self._adopted[number]
                await self._drop(self._owned[number], release_lease=True)
        if len(shared) < target:
            await self._acquire(target)
        await self._adopt_orphans()

    async def _acquire(self, target: int) -> None:
        """Take free shards until this writer holds ``target`` of them (adopted ones aside)."""
        offset = int.from_bytes(self.writer_id.encode(), "big") % self.shard_count
        for step in range(self.shard_count):
            if len(self._owned) - len(self._adopted) >= target:
                return
            number = (offset + step) % self.shard_count
            if number in self._owned or time.monotonic() < self._retry_after.get(number, 0.0):
                continue
            await self._take(number)

    async def _adopt_orphans(self) -> None:
        """Take, beyond the fair share, every shard nobody has held for ORPHAN_AFTER_LEASES
        lease periods (as this writer saw it, free at each look).

        The share counts every registered writer, also one that cannot open its shards (files
        of another user, a failing mount on its host): without this, the records of its share
        would wait in Redis for as long as it stays registered, and readiness fails everywhere.
        """
        unowned = [number for number in range(self.shard_count) if number not in self._owned]
        for number in [number for number in self._free_since if number in self._owned]:
            del self._free_since[number]
        if not unowned:
            return
        held = await asyncio.gather(*(self._client.exists(lease_key(n)) for n in unowned))
        now = time.monotonic()
        patience_s = ORPHAN_AFTER_LEASES * self._settings.lease_ms / 1000
        for number, is_held in zip(unowned, held, strict=True):
            if is_held:
                self._free_since.pop(number, None)
                continue
            free_since = self._free_since.setdefault(number, now)
            if now - free_since < patience_s or now < self._retry_after.get(number, 0.0):
                continue
            if await self._take(number):
                del self._free_since[number]
                self._adopted[number] = now
                logger.warning(
                    "journal: writer %s took shard %d beyond its share: no writer held it for "
                    "%d lease periods",
                    self.writer_id,
                    number,
                    ORPHAN_AFTER_LEASES,
                )

    async def _take(self, number: int) -> bool:
        """Lease shard ``number``, open its files and finish its last batch; False when the
        lease is held or the files cannot be opened now (retried later)."""
        settings = self._settings
        sent = time.monotonic()
        taken = await self._client.eval(
            ACQUIRE_LEASE_LUA, 1, lease_key(number), self.writer_id, settings.lease_ms
        )
        if int(taken) != 1:
            return False
        files = ShardFiles(
            settings.directory / shard_directory_name(number), settings.segment_max_bytes
        )
        try:
            try:
                last_records, last_batch = await self._in_file_thread(files.open)
            except LostPages as lost:
                last_records, last_batch = await self._cut_lost_pages(files, lost)
        except ShardBusy:
            # A writer that lost its lease still finishes its batch; try again later.
            await self._release_lease(number)
            return False
        except (OSError, JournalCorrupt, LostPages) as error:
            self._note_error(f"shard {number}: cannot open: {error!r}")
            await self._release_lease(number)
            self._retry_after[number] = time.monotonic() + settings.max_backoff_ms / 1000
            return False
        try:
            last_metas = [
                meta_of(record, self._stream_of_bucket[record["bucket"]], settings.keymap_ttl_s)
                for record in last_records
            ]
        except (KeyError, TypeError, ValueError) as error:
            self._note_error(f"shard {number}: unreadable last batch: {error!r}")
            await self._in_file_thread(files.close)
            await self._release_lease(number)
            self._retry_after[number] = time.monotonic() + settings.max_backoff_ms / 1000
            return False
        shard = OwnedShard(
            number=number,
            stream_names=list(self._shard_stream_names[number]),
            files=files,
            lease_trusted_until=sent + LEASE_TRUST_FRACTION * settings.lease_ms / 1000,
            next_batch=last_batch + 1,
        )
        self._owned[number] = shard
        if last_metas:
            # The last batch may still be in Redis (a writer died between fsync and XDEL):
            # finish its steps, which are idempotent, before anything new is read.
            shard.unfinished = last_metas
            _note_written(shard, last_metas)
            self._check_sequences(shard, last_metas)
            await self._finish([shard])
        logger.info(
            "journal: writer %s took shard %d (batch %d next)",
            self.writer_id,
            number,
            shard.next_batch,
        )
        return True

    async def _cut_lost_pages(
        self, files: ShardFiles, lost: LostPages
    ) -> tuple[list[dict[str, Any]], int]:
        """Cut a hole a power loss left in a shard's last batch, but only once Redis shows that
        the batch was never finished: every complete line of it still has its stream entry
        pending, so the whole batch is written again. Otherwise the hole is in records Redis no
        longer has, and cutting would take them out of the journal: the shard stays stalled
        (JournalCorrupt, retried later) for an operator to look at."""
        try:
            pending = 0
            for bucket, sid in lost.entries:
                stream = self._stream_of_bucket.get(bucket)
                if stream is not None and await self._client.xrange(stream, sid, sid, count=1):
                    pending += 1
        except BaseException:
            await self._in_file_thread(files.close)
            raise
        if not lost.entries or pending < len(lost.entries):
            await self._in_file_thread(files.close)
            raise JournalCorrupt(
                f"{lost}; {pending} of its {len(lost.entries)} complete lines are still pending "
                "in Redis, so it is not cut"
            )
        return await self._in_file_thread(files.cut_lost_pages, lost)  # type: ignore[no-any-return]

    async def _drop(self, shard: OwnedShard, *, release_lease: bool) -> None:
        self._owned.pop(shard.number, None)
        await self._in_file_thread(shard.files.close)
        if release_lease:
            try:
                await self._release_lease(shard.number)
            except RedisError as error:
                logger.warning("journal: cannot release shard %d: %r", shard.number, error)

    async def _release_lease(self, number: int) -> None:
        await self._client.eval(RELEASE_LEASE_LUA, 1, lease_key(number), self.writer_id)

    # -- Status --

    def _queue_stats(self, read: ShardRead) -> None:
        """Note a shard's backlog after its read (or its write) for :meth:`_publish_stats`;
        unchanged stats are republished only once they are half a status interval old."""
        number = read.shard.number
        now_ms = int(time.time() * 1000)
        previous = self._stats.get(number)
        flush_s = read.flush_s or (previous.flush_s if previous is not None else 0.0)
        if (
            previous is not None
            and previous.pending == read.pending
            and previous.oldest_ms == read.oldest_ms
            and now_ms - previous.updated_ms < self._settings.status_interval_ms / 2
        ):
            return
        self._stats[number] = ShardStats(read.pending, read.oldest_ms, now_ms, flush_s)
        self._stats_to_publish[number] = orjson.dumps(
            {
                "pending": read.pending,
                "oldest_ms": read.oldest_ms,
                "updated_ms": now_ms,
                "flush_s": round(flush_s, 6),
            }
        )

    async def _publish_stats(self) -> None:
        """Publish the stats queued in this cycle and the reused keys counted since the last
        publication, in one pipeline."""
        if not self._stats_to_publish and not self._cross_player_unpublished:
            return
        values, self._stats_to_publish = self._stats_to_publish, {}
        counts, self._cross_player_unpublished = self._cross_player_unpublished, {}
        try:
            await self._client.eval(
                PUBLISH_STATS_LUA,
                2,
                STATS_KEY,
                CROSS_PLAYER_KEY,
                10 * self._settings.lease_ms,
                orjson.dumps({str(n): v.decode() for n, v in values.items()}),
                orjson.dumps(counts),
            )
        except BaseException:
            # Stats are republished anyway; counts must not be lost, so they wait for the next
            # try (the script is atomic, so none was added).
            for family, n in counts.items():
                self._cross_player_unpublished[family] = (
                    self._cross_player_unpublished.get(family, 0) + n
                )
            raise

    async def _refresh_status(self) -> None:
        """Read every shard's last published stats, so this worker reports the whole journal."""
        self._next_status_refresh = time.monotonic() + self._settings.status_interval_ms / 1000
        uptime_ms = int((time.monotonic() - self._started_monotonic) * 1000)
        settings = self._settings
        figures = await read_journal_figures(
            self._client,
            self._shard_stream_names,
            settings.lease_ms,
            uptime_ms,
            settings.stale_after_ms,
            self._record_counter,
        )
        self._pending_records = figures.pending_records
        self._oldest_pending_age_s = figures.oldest_pending_age_ms / 1000
        self._cross_player_all_writers_total = figures.cross_player_all_writers_total


@dataclass(frozen=True, slots=True)
class JournalFigures:
    """The whole journal's figures, from what every shard owner publishes in Redis."""

    pending_records: int
    oldest_pending_age_ms: int
    # When the shard heard from last reported (0: none has), and the duration of the last flush
    # of the shards that have flushed.
    freshest_update_ms: int
    last_flush_s: float
    cross_player_all_writers_total: dict[str, int]


def _note_written(shard: OwnedShard, metas: Sequence[RecordMeta]) -> None:
    """Remember, per stream, the newest entry id of ``metas`` (now on disk)."""
    written = shard.written_ids
    for meta in metas:
        order = stream_id_order(meta.sid)
        if order > written.get(meta.stream, (-1, -1)):
            written[meta.stream] = order


def shard_count_of(settings: WriterSettings) -> int:
    """How many shards the writers split the pending streams into."""
    streams = keys.CLUSTER_SLOTS if settings.cluster else settings.buckets
    return min(settings.shards, streams)


def shard_stream_names(settings: WriterSettings) -> list[list[str]]:
    """The pending-journal streams of each shard (bucket b belongs to shard b mod shards)."""
    count = shard_count_of(settings)
    names: list[list[str]] = [[] for _ in range(count)]
    for bucket, stream in enumerate(
        keys.all_journal_stream_keys(settings.buckets, settings.cluster)
    ):
        names[bucket % count].append(stream)
    return names


async def count_records(client: RedisClient, streams: Sequence[str]) -> tuple[int, int]:
    """How many records ``streams`` hold now, and the time (unix ms, by Redis's clock) of the
    oldest of them, or 0 when there is none; read from Redis, one call per node and per
    :data:`MAX_STREAMS_PER_READ` streams, one after the other. Streams of a slot that is
    migrating are not counted."""
    replies = await run_per_node(
        client,
        COUNT_RECORDS_LUA,
        [(stream,) for stream in streams],
        ordered=True,
        max_weight_per_call=MAX_STREAMS_PER_READ,
    )
    records = sum(int(reply[0]) for _, reply in replies)
    oldest = [int(reply[2]) for _, reply in replies if int(reply[2]) > 0]
    return records, min(oldest, default=0)


# How long a count of silent shards' records is reused. Every worker's observer reads the
# journal figures each status interval; counting all 16,384 streams of a cluster costs Redis
# about 14 ms, which every worker of every host would otherwise spend each second while a
# writer is down. A record that arrives meanwhile is seen this much later.
RECOUNT_INTERVAL_S: Final = 2.0


class RecordCounter:
    """:func:`count_records` for :func:`read_journal_figures`, reused for
    :data:`RECOUNT_INTERVAL_S` while the same streams are asked for."""

    def __init__(self, client: RedisClient, interval_s: float = RECOUNT_INTERVAL_S) -> None:
        self._client = client
        self._interval_s = interval_s
        self._streams: tuple[str, ...] = ()
        self._counted_at = float("-inf")
        self._result = (0, 0)

    async def __call__(self, streams: Sequence[str]) -> tuple[int, int]:
        wanted = tuple(streams)
        now = time.monotonic()
        if wanted != self._streams or now - self._counted_at >= self._interval_s:
            self._result = await count_records(self._client, wanted)
            self._streams, self._counted_at = wanted, now
        return self._result


async def read_journal_figures(
    client: RedisClient,
    shard_streams: Sequence[Sequence[str]],
    lease_ms: int,
    uptime_ms: int,
    stale_ms: int,
    counter: Callable[[Sequence[str]], Awaitable[tuple[int, int]]],
) -> JournalFigures:
    """Sum up every shard's published stats (writers and workers alike report these).

    ``shard_streams`` names each shard's streams (:func:`shard_stream_names`). Two kinds of
    shard have figures that say nothing of now: one nobody has reported once ``uptime_ms``
    (how long the caller has been watching) exceeds two leases, the time a live writer needs
    to take a shard; and one whose figures are older than ``stale_ms``, whose owner is dead or
    stuck. Their records are counted in Redis instead, and the oldest one's age is their lag:
    records that keep arriving while nobody writes them out show their real wait, and a shard
    with none shows none (a restarted writer on an idle gateway is not "lagging"). When that
    count fails (a node that does not answer), their wait is counted from when they fell
    silent, as before there was a count, and their records are not known.
    """
    raw, cross_player = await run_pipeline(
        client, [("hgetall", (STATS_KEY,), {}), ("hgetall", (CROSS_PLAYER_KEY,), {})]
    )
    now_ms = int(time.time() * 1000)
    published: dict[int, ShardStats] = {}
    for name, value in raw.items():
        stats = parse_shard_stats(value)
        if stats is not None and text(name).isdigit():
            published[int(text(name))] = stats
    pending = 0
    oldest_age_ms = 0
    freshest_ms = 0
    flushed_ms = 0
    last_flush_s = 0.0
    # Shards whose figures say nothing of now: their records are counted in Redis, and how
    # long each has been silent, should the count fail.
    unreported: list[int] = []
    silent_ms = 0
    for number in range(len(shard_streams)):
        stats = published.get(number)
        if stats is None:
            if uptime_ms > 2 * lease_ms:
                unreported.append(number)
                silent_ms = max(silent_ms, uptime_ms)
            continue
        freshest_ms = max(freshest_ms, stats.updated_ms)
        if stats.flush_s > 0 and stats.updated_ms > flushed_ms:
            # Of the shards that have flushed, the one heard from last gives the journal's last
            # flush (an idle shard that never flushed reports 0, which says nothing).
            flushed_ms, last_flush_s = stats.updated_ms, stats.flush_s
        if now_ms - stats.updated_ms > stale_ms:
            # The owner stopped reporting (killed, stopped, stuck on its disk): what reached
            # the shard since may have waited all that time, whatever its last figures said.
            # Waiting a lease for another writer to take the shard would hide that for longer
            # than max_lag_ms.
            unreported.append(number)
            silent_ms = max(silent_ms, now_ms - stats.updated_ms)
            continue
        pending += stats.pending
        if stats.pending and stats.oldest_ms:
            oldest_age_ms = max(oldest_age_ms, now_ms - stats.oldest_ms)
    if unreported:
        try:
            records, oldest_ms = await counter(
                [stream for number in unreported for stream in shard_streams[number]]
            )
        except RedisError:
            oldest_age_ms = max(oldest_age_ms, silent_ms)
        else:
            pending += records
            if oldest_ms:
                oldest_age_ms = max(oldest_age_ms, now_ms - oldest_ms)
    return JournalFigures(
        pending_records=pending,
        oldest_pending_age_ms=max(0, oldest_age_ms),
        freshest_update_ms=freshest_ms,
        last_flush_s=last_flush_s,
        cross_player_all_writers_total=parse_counts(cross_player),
    )


# --- Foreground entry point ------------------------------------------------------------------


async def run_foreground(
    config: Config, writer_id: str | None, overrides: Mapping[str, Any]
) -> None:
    client = connect(config.redis)
    writer = JournalWriter(
        client, WriterSettings.from_config(config, **overrides), writer_id=writer_id
    )
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, writer.request_stop)
    # A sidecar whose serve was killed stops as on SIGTERM (nobody would restart it).
    watch_supervisor(lambda: loop.call_soon_threadsafe(writer.request_stop))
    try:
        await writer.run()
    finally:
        await client.aclose()


def _id_count(group: tuple[Any, ...]) -> int:
    """The weight of a delete group (stream, ids): its number of ids."""
    return len(group[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m walletgate.journal.writer",
        description="Run a walletgate journal writer in the foreground until SIGTERM or SIGINT.",
    )
    parser.add_argument("--config", required=True, help="the walletgate TOML config")
    parser.add_argument("--writer-id", default=None, help="a name for this writer's leases")
    parser.add_argument("--shards", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lease-ms", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    configure_logging()
    try:
        config = load_config(arguments.config)
    except ConfigError as error:
        print(f"walletgate journal writer: {error}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    if arguments.shards is not None:
        overrides["shards"] = arguments.shards
    if arguments.lease_ms is not None:
        overrides["lease_ms"] = arguments.lease_ms
    try:
        asyncio.run(run_foreground(config, arguments.writer_id, overrides))
    except JournalLayoutError as error:
        print(f"walletgate journal writer: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
