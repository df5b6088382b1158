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
(and trips to the file thread) do not grow with the number of shards. Records are encoded by the
native core (``rust/journal.rs``), which leaves odd and malformed entries to the Python path.

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
import fcntl
import logging
import math
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from walletgate import _native
from walletgate.config import Config, ConfigError, RedisConfig, load_config
from walletgate.ledger import keys

logger = logging.getLogger("walletgate.journal")

# redis-py's asyncio methods are annotated as returning ``Awaitable[T] | T``, which mypy cannot
# await, and ``Redis`` and ``RedisCluster`` share no typed base. The journal therefore keeps the
# client untyped at this boundary and turns every reply into a typed value at once.
RedisClient = Any

LAYOUT_FILE = "layout.json"
LAYOUT_FORMAT = 1
LOCK_FILE = ".lock"
SEGMENT_PATTERN = re.compile(r"^segment-(\d{9})\.jsonl$")
SHARD_PATTERN = re.compile(r"^shard-(\d{2,})$")
WRITERS_KEY = "wg:{journal-writers}"
STATS_KEY = "wg:{journal-stats}"
MAX_SHARDS = 256
MAX_DELETE_IDS_PER_COMMAND = 1000
MAX_PIPELINE_COMMANDS = 2048
TAIL_READ_CHUNK_BYTES = 1 << 16
# A lease is trusted only for this share of its length after the renewal was sent, which leaves
# room for clock drift between this host and Redis and for the time a batch takes to write.
LEASE_TRUST_FRACTION = 0.7

# Take a free lease, or keep one this writer still holds (after it stopped trusting it in time).
ACQUIRE_LEASE_LUA = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RENEW_LEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# The stream fields every record carries (see wg_journal in the Lua prelude).
REQUIRED_STREAM_FIELDS = (
    "ts", "tenant", "player", "currency", "seq", "kind", "key", "delta", "bal", "proto",
    "result", "fp", "refs", "fx",
)  # fmt: skip
OPTIONAL_INTEGER_FIELDS = {"gdelta": "gen_delta_units", "gbal": "gen_after_units"}
KNOWN_STREAM_FIELDS = frozenset(REQUIRED_STREAM_FIELDS) | frozenset(OPTIONAL_INTEGER_FIELDS)
INTEGER_TEXT = re.compile(r"^-?(0|[1-9][0-9]*)$")
FAMILY_OF_PROTOCOL = {
    "minigame": "minigame",
    "minigame_luck": "minigame",
    "transfer": "transfer",
    "wallet_v2": "wallet_v2",
    "midas": "midas",
    "midas_sandbox": "midas",
    "admin": "admin",
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

FxEntry = tuple[str, str, str, str]


class MalformedEntry(ValueError):
    """A stream entry that does not follow the prelude's record layout."""


class JournalLayoutError(RuntimeError):
    """The journal directory was written with other shards, buckets or cluster settings."""


class JournalCorrupt(RuntimeError):
    """A complete line at the tail of a segment is not a journal record."""


class ShardBusy(RuntimeError):
    """Another writer holds the shard's file lock."""


# --- Record format ---------------------------------------------------------------------------


def lease_key(shard: int) -> str:
    return "wg:{journal-lease:" + str(shard) + "}"


def keymap_key(tenant: str, transaction_key: str) -> str:
    """The key-to-player map entry of one transaction key (a string holding the player).

    Each entry is its own key, with the transaction's retention as TTL, so the map expires with
    the idempotency records and spreads over every slot of a cluster.
    """
    return "wg:{keymap:" + tenant + ":" + transaction_key + "}"


def family_of(protocol: str) -> str:
    return FAMILY_OF_PROTOCOL.get(protocol, protocol)


# The last second formatted: records come in bursts within one second, and formatting a date is
# most of the cost of a record. A tuple is replaced whole, so threads never see it half-written.
_last_second: tuple[int, str] = (-1, "")


# The times format_ts can print: 0001-01-01T00:00:00Z up to the end of 9999, in microseconds.
MIN_TS_US = -62_135_596_800_000_000
MAX_TS_US = 253_402_300_800_000_000


def format_ts(ts_us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC with six fraction digits."""
    global _last_second
    seconds, micros = divmod(ts_us, 1_000_000)
    cached_seconds, prefix = _last_second
    if cached_seconds != seconds:
        prefix = f"{EPOCH + timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}"
        _last_second = (seconds, prefix)
    return f"{prefix}.{micros:06d}Z"


def parse_ts(text: str) -> int:
    """The inverse of :func:`format_ts`, exact to the microsecond."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no zone")
    return (moment - EPOCH) // ONE_MICROSECOND


def stream_id_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def stream_id_order(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"unexpected reply element of type {type(value).__name__}")


def _integer(fields: Mapping[str, str], name: str) -> int:
    value = fields[name]
    if not INTEGER_TEXT.match(value):
        raise MalformedEntry(f"field {name} is not an integer: {value!r}")
    number = int(value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise MalformedEntry(f"field {name} leaves int64: {value!r}")
    return number


def _result(value: str) -> int | str:
    """Protocol codes that are integers in the wire format stay integers in the journal."""
    return int(value) if INTEGER_TEXT.match(value) and len(value) <= 18 else value


def _fx_part(value: Any) -> str:
    if isinstance(value, str):
        return value
    # cjson prints Lua numbers with 14 significant digits, so an integer reaches here exactly only
    # below 10^14; anything else lost digits inside Redis and must not be replayed.
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**14:
        return str(value)
    raise MalformedEntry(f"fx holds a non-string value {value!r}")


def parse_fx(raw: str) -> list[FxEntry]:
    """The ``fx`` list of a record: cjson encodes an empty Lua table as ``{}``, read as no entry."""
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MalformedEntry(f"fx is not JSON: {error}") from None
    if decoded == {}:
        return []
    if not isinstance(decoded, list):
        raise MalformedEntry("fx is not a list")
    entries: list[FxEntry] = []
    for item in decoded:
        if (
            type(item) is list
            and len(item) == 4
            and all(type(part) is str for part in item)
            and (item[3] == "del" or (item[3].isascii() and item[3].isdigit()))
        ):
            # The usual case, checked in one pass: four strings and a TTL in seconds.
            entries.append((item[0], item[1], item[2], item[3]))
            continue
        if not isinstance(item, list) or len(item) != 4:
            raise MalformedEntry(f"fx entry {item!r} is not [key, field, value, ttl]")
        suffix, field_name, value, ttl = (_fx_part(part) for part in item)
        if ttl != "del" and not INTEGER_TEXT.match(ttl):
            raise MalformedEntry(f"fx ttl {ttl!r} is neither seconds nor 'del'")
        entries.append((suffix, field_name, value, ttl))
    return entries


RawFields = Mapping[Any, Any] | Sequence[Any]


def decode_fields(raw_fields: RawFields) -> dict[str, str]:
    """A stream entry's fields, from redis-py's dict or a script's flat [name, value, ...] list."""
    if isinstance(raw_fields, Mapping):
        return {text(name): text(value) for name, value in raw_fields.items()}
    if raw_fields and isinstance(raw_fields[0], bytes):
        decoded = [part.decode() for part in raw_fields]
    else:
        decoded = [text(part) for part in raw_fields]
    return dict(zip(decoded[0::2], decoded[1::2], strict=True))


def journal_record(
    bucket: int, sid: str, raw_fields: RawFields, batch: int | None
) -> dict[str, Any]:
    """Turn one stream entry into the journal line's object (field order as in the spec).

    ``sid``, ``bucket`` and ``batch`` follow the spec's fields: replay and a restarted writer use
    them to drop duplicates and to find the last batch of a shard.
    """
    return journal_record_and_ts(bucket, sid, raw_fields, batch)[0]


def journal_record_and_ts(
    bucket: int, sid: str, raw_fields: RawFields, batch: int | None
) -> tuple[dict[str, Any], int]:
    """:func:`journal_record` and the record's time in microseconds (not parsed back)."""
    fields = decode_fields(raw_fields)
    missing = [name for name in REQUIRED_STREAM_FIELDS if name not in fields]
    if missing:
        raise MalformedEntry(f"missing fields {', '.join(missing)}")
    ts_us = _integer(fields, "ts")
    if not MIN_TS_US <= ts_us < MAX_TS_US:
        # Redis' clock never gives such a time, but a record the journal cannot print must be
        # quarantined like any malformed entry, not stop the writer on every retry.
        raise MalformedEntry(f"ts {ts_us} is outside the years 1 to 9999")
    seq = _integer(fields, "seq")
    if seq < 1:
        raise MalformedEntry(f"seq {seq} is below 1")
    try:
        refs = orjson.loads(fields["refs"])
    except orjson.JSONDecodeError as error:
        raise MalformedEntry(f"refs is not JSON: {error}") from None
    if refs == []:
        refs = {}
    if not isinstance(refs, dict):
        raise MalformedEntry("refs is not an object")
    record: dict[str, Any] = {
        "ts": format_ts(ts_us),
        "tenant": fields["tenant"],
        "player": fields["player"],
        "currency": fields["currency"],
        "seq": seq,
        "kind": fields["kind"],
        "key": fields["key"],
        "delta_units": _integer(fields, "delta"),
        "balance_after_units": _integer(fields, "bal"),
    }
    for stream_name, journal_name in OPTIONAL_INTEGER_FIELDS.items():
        if stream_name in fields:
            record[journal_name] = _integer(fields, stream_name)
    record["protocol"] = fields["proto"]
    record["result"] = _result(fields["result"])
    record["fp"] = fields["fp"]
    record["refs"] = refs
    record["fx"] = parse_fx(fields["fx"])
    extra = {name: value for name, value in fields.items() if name not in KNOWN_STREAM_FIELDS}
    if extra:
        # Fields a script added beyond the prelude's layout are kept verbatim, never dropped.
        record["extra"] = extra
    record["sid"] = sid
    record["bucket"] = bucket
    if batch is not None:
        record["batch"] = batch
    return record, ts_us


def quarantine_record(
    bucket: int, sid: str, raw_fields: RawFields, batch: int | None, error: str
) -> dict[str, Any]:
    """A line for an entry that is not a valid record: kept on disk so nothing is lost, and
    reported by ``journal verify`` instead of stalling the journal behind it."""
    if not isinstance(raw_fields, Mapping):
        pairs = list(raw_fields)
        raw_fields = dict(zip(pairs[0::2], pairs[1::2], strict=False))
    fields: dict[str, str] = {}
    for name, value in raw_fields.items():
        try:
            fields[text(name)] = text(value)
        except (TypeError, UnicodeDecodeError):
            fields[repr(name)] = repr(value)
    record: dict[str, Any] = {"malformed": fields, "error": error, "sid": sid, "bucket": bucket}
    if batch is not None:
        record["batch"] = batch
    return record


def max_ttl_s(fx: Sequence[Sequence[str]]) -> int:
    longest = 0
    for entry in fx:
        if entry[3] != "del":
            longest = max(longest, int(entry[3]))
    return longest


# --- Settings and status ---------------------------------------------------------------------


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
    cross_player_total: Mapping[str, int]
    sequence_violations_total: int
    errors_total: int
    last_error: str | None


# --- Files (called only from the writer's file thread) ---------------------------------------


@dataclass(slots=True)
class RecordMeta:
    """What the writer does after a record is on disk: map its key and delete it from Redis."""

    stream: str
    sid: str
    tenant: str
    player: str
    currency: str
    seq: int
    key: str
    protocol: str
    keymap_expire_at_s: int
    malformed: bool = False
    # Other transaction keys the record wrote (a cancel's tombstone on the bet's key), which
    # the admin API must find without ?player= as well.
    other_keys: tuple[str, ...] = ()


@dataclass(slots=True)
class StreamEntry:
    bucket: int
    stream: str
    sid: str
    fields: RawFields


TRANSACTION_SUFFIX = "tx:"


def other_transaction_keys(record_key: str, fx: Sequence[Sequence[str]]) -> list[str]:
    """The transaction keys besides ``record_key`` whose records the call wrote (a cancel's
    tombstone on the bet's key), which the key-to-player map covers as well."""
    return sorted(
        {
            entry[0][len(TRANSACTION_SUFFIX) :]
            for entry in fx
            if entry[0].startswith(TRANSACTION_SUFFIX)
            and entry[0] != TRANSACTION_SUFFIX + record_key
        }
    )


def meta_of(
    record: Mapping[str, Any], stream: str, keymap_ttl_s: int, ts_us: int | None = None
) -> RecordMeta:
    if "malformed" in record:
        return RecordMeta(stream, record["sid"], "", "", "", 0, "", "", 0, malformed=True)
    ttl_s = max_ttl_s(record["fx"]) or keymap_ttl_s
    if ts_us is None:
        ts_us = parse_ts(record["ts"])
    expire_at_s = ts_us // 1_000_000 + ttl_s
    return RecordMeta(
        stream=stream,
        sid=record["sid"],
        tenant=record["tenant"],
        player=record["player"],
        currency=record["currency"],
        seq=record["seq"],
        key=record["key"],
        protocol=record["protocol"],
        keymap_expire_at_s=expire_at_s,
        other_keys=tuple(other_transaction_keys(record["key"], record["fx"])),
    )


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def segment_name(number: int) -> str:
    return f"segment-{number:09d}.jsonl"


def shard_directory_name(shard: int) -> str:
    return f"shard-{shard:02d}"


def segment_numbers(directory: Path) -> list[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = (SEGMENT_PATTERN.match(name) for name in names)
    return sorted(int(match.group(1)) for match in found if match)


def lines_backward(descriptor: int, end: int) -> Iterator[bytes]:
    """The complete lines of ``[0, end)`` from last to first; ``end`` must follow a newline."""
    position = end
    remainder = b""
    while position > 0:
        size = min(TAIL_READ_CHUNK_BYTES, position)
        position -= size
        block = os.pread(descriptor, size, position) + remainder
        parts = block.split(b"\n")
        remainder = parts[0]
        for line in reversed(parts[1:]):
            if line:
                yield line
    if remainder:
        yield remainder


def complete_end(descriptor: int, size: int) -> int:
    """The offset just after the last newline (0 when there is none)."""
    position = size
    while position > 0:
        length = min(TAIL_READ_CHUNK_BYTES, position)
        position -= length
        block = os.pread(descriptor, length, position)
        index = block.rfind(b"\n")
        if index >= 0:
            return position + index + 1
    return 0


class ShardFiles:
    """One shard's lock and open segment. Every method runs in the writer's file thread."""

    def __init__(self, directory: Path, segment_max_bytes: int) -> None:
        self.directory = directory
        self.segment_max_bytes = segment_max_bytes
        self.lock_descriptor: int | None = None
        self.segment_descriptor: int | None = None
        self.segment_number = 0
        self.segment_size = 0

    def open(self) -> tuple[list[dict[str, Any]], int]:
        """Lock the shard and recover its tail: returns the last batch's records and its number.

        Raises :class:`ShardBusy` when another writer holds the lock.
        """
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_directory(self.directory.parent)
        descriptor = os.open(
            self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ShardBusy(str(self.directory)) from None
        self.lock_descriptor = descriptor
        try:
            fsync_directory(self.directory)
            return self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> tuple[list[dict[str, Any]], int]:
        numbers = segment_numbers(self.directory)
        last_records: list[dict[str, Any]] = []
        last_batch = 0
        for number in reversed(numbers):
            records, batch = self._recover_segment(self.directory / segment_name(number))
            if batch is not None:
                last_records, last_batch = records, batch
                break
        if numbers:
            newest = numbers[-1]
            path = self.directory / segment_name(newest)
            self.segment_descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self.segment_number = newest
            self.segment_size = os.fstat(self.segment_descriptor).st_size
        return last_records, last_batch

    def _recover_segment(self, path: Path) -> tuple[list[dict[str, Any]], int | None]:
        """Truncate a torn last line, then read back the lines of the segment's last batch."""
        descriptor = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(descriptor).st_size
            end = complete_end(descriptor, size)
            if end < size:
                # The bytes after the last newline are a record cut short by a crash (or zeros
                # left by a power loss). Its stream entry was never deleted, so it is written
                # again from Redis.
                logger.warning(
                    "journal: truncating %d torn bytes at the end of %s", size - end, path
                )
                os.ftruncate(descriptor, end)
                os.fsync(descriptor)
            if end:
                # The lines may have reached only the page cache of a writer that died before
                # its fsync; they must be durable before their stream entries are deleted.
                os.fsync(descriptor)
            batch: int | None = None
            records: list[dict[str, Any]] = []
            for line in lines_backward(descriptor, end):
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise JournalCorrupt(f"{path}: an unreadable line near the end") from None
                if not isinstance(record, dict) or not isinstance(record.get("batch"), int):
                    raise JournalCorrupt(f"{path}: a line near the end has no batch number")
                if batch is None:
                    batch = record["batch"]
                elif record["batch"] != batch:
                    break
                records.append(record)
            records.reverse()
            return records, batch
        finally:
            os.close(descriptor)

    def append(self, data: bytes) -> float:
        """Append whole lines and fsync; returns the seconds the write and fsync took.

        A batch never spans two segments: rotation happens only before a batch, which keeps the
        last batch in one file for recovery (a segment exceeds the bound by at most one batch).
        On any error the segment is cut back to its previous size and the error is raised.
        """
        started = time.perf_counter()
        if self.segment_descriptor is None or self.segment_size >= self.segment_max_bytes:
            self._rotate()
        descriptor = self.segment_descriptor
        assert descriptor is not None
        previous_size = self.segment_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        except OSError:
            try:
                os.ftruncate(descriptor, previous_size)
                os.fsync(descriptor)
            except OSError:
                logger.exception("journal: cannot cut %s back after a failed write", self.directory)
            raise
        self.segment_size += len(data)
        return time.perf_counter() - started

    def _rotate(self) -> None:
        if self.segment_descriptor is not None:
            os.close(self.segment_descriptor)
            self.segment_descriptor = None
        self.segment_number += 1
        path = self.directory / segment_name(self.segment_number)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self.segment_descriptor = os.open(path, flags, 0o640)
        self.segment_size = 0
        # The new name must survive a power loss as well as the lines written into it.
        fsync_directory(self.directory)

    def close(self) -> None:
        if self.segment_descriptor is not None:
            os.close(self.segment_descriptor)
            self.segment_descriptor = None
        if self.lock_descriptor is not None:
            os.close(self.lock_descriptor)  # closing the descriptor releases the flock
            self.lock_descriptor = None


def encode_entry(entry: StreamEntry, batch: int, keymap_ttl_s: int) -> tuple[bytes, RecordMeta]:
    """One entry's journal line (without its newline) and metadata, the reference way: build the
    record (or its quarantine line, logged, when the entry is malformed) and let orjson write it.
    """
    ts_us: int | None = None
    try:
        record, ts_us = journal_record_and_ts(entry.bucket, entry.sid, entry.fields, batch)
    except (MalformedEntry, UnicodeDecodeError, TypeError, ValueError) as error:
        logger.error(
            "journal: stream entry %s of bucket %d is malformed: %s",
            entry.sid,
            entry.bucket,
            error,
        )
        record = quarantine_record(entry.bucket, entry.sid, entry.fields, batch, str(error))
    return orjson.dumps(record), meta_of(record, entry.stream, keymap_ttl_s, ts_us)


def encode_batch_reference(
    entries: Sequence[StreamEntry], batch: int, keymap_ttl_s: int
) -> tuple[bytes, list[RecordMeta]]:
    """:func:`encode_batch` by the reference path alone (for tests and ``bench/``)."""
    lines: list[bytes] = []
    metas: list[RecordMeta] = []
    for entry in entries:
        line, meta = encode_entry(entry, batch, keymap_ttl_s)
        lines.append(line)
        metas.append(meta)
    lines.append(b"")
    return b"\n".join(lines), metas


def encode_batch(
    entries: Sequence[StreamEntry], batch: int, keymap_ttl_s: int
) -> tuple[bytes, list[RecordMeta]]:
    """The lines of a batch, each ended by a newline, and each record's metadata.

    The native encoder writes the lines of well-formed entries straight from the stream's
    bytes, as :func:`encode_entry` would (``tests/test_journal_encode.py`` holds it to the same
    bytes); it hands every entry it cannot prove it handles identically, malformed ones
    included, to :func:`encode_entry`.
    """

    def fallback(entry: StreamEntry) -> tuple[bytes, RecordMeta]:
        return encode_entry(entry, batch, keymap_ttl_s)

    return _native.encode_journal_batch(entries, batch, keymap_ttl_s, RecordMeta, fallback)


def write_batch(
    files: ShardFiles, entries: Sequence[StreamEntry], batch: int, keymap_ttl_s: int
) -> tuple[list[RecordMeta], float]:
    """Encode a batch and append it (one trip to the file thread): its metadata and the seconds
    the write and fsync took."""
    data, metas = encode_batch(entries, batch, keymap_ttl_s)
    return metas, files.append(data)


def check_layout(directory: Path, shards: int, buckets: int, cluster: bool) -> None:
    """Record the shard layout on first use and refuse a directory written with another one.

    A bucket moving to another shard would hide its last batch from recovery, so the layout of a
    journal directory never changes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {"format": LAYOUT_FORMAT, "shards": shards, "buckets": buckets, "cluster": cluster}
    path = directory / LAYOUT_FILE
    try:
        found = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        temporary = directory / f".{LAYOUT_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        with open(temporary, "wb") as handle:
            handle.write(orjson.dumps(wanted) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(directory)
        return
    if found != wanted:
        raise JournalLayoutError(f"{path} records {found}, but this writer uses {wanted}")


# --- Redis helpers ---------------------------------------------------------------------------


def connect(redis_config: RedisConfig, *, max_connections: int = 32) -> RedisClient:
    """A redis-py asyncio client for the journal tools (a cluster client when configured)."""
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": redis_config.connect_timeout_ms / 1000,
        "socket_timeout": max(redis_config.command_timeout_ms / 1000, 10.0),
    }
    if redis_config.cluster:
        return RedisCluster.from_url(redis_config.url, **timeouts)
    from redis.asyncio import Redis

    return Redis.from_url(redis_config.url, max_connections=max_connections, **timeouts)


async def run_pipeline(
    client: RedisClient, commands: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> list[Any]:
    """Run commands in non-transactional pipelines of bounded length; a cluster client splits
    each pipeline by node."""
    results: list[Any] = []
    for start in range(0, len(commands), MAX_PIPELINE_COMMANDS):
        pipe = client.pipeline(transaction=False)
        for name, args, kwargs in commands[start : start + MAX_PIPELINE_COMMANDS]:
            getattr(pipe, name)(*args, **kwargs)
        results.extend(await pipe.execute())
    return results


READ_STREAMS_LUA = """#!lua flags=allow-cross-slot-keys
-- ARGV[1]: the most entries to return in all; ARGV[2]: where to start among the streams;
-- ARGV[3]: the stream names, separated by newlines, all served by this node.
-- For each non-empty stream: its position among the names (from 1), its length and its first
-- entries (at least one, so every stream progresses and its oldest entry's age is known).
local budget = tonumber(ARGV[1])
local names = {}
for name in string.gmatch(ARGV[3], '[^\\n]+') do
  names[#names + 1] = name
end
local out = {}
local start = tonumber(ARGV[2]) % #names
for step = 0, #names - 1 do
  local position = (start + step) % #names + 1
  local length = redis.call('XLEN', names[position])
  if length > 0 then
    local entries = redis.call('XRANGE', names[position], '-', '+', 'COUNT', math.max(budget, 1))
    budget = budget - #entries
    out[#out + 1] = position
    out[#out + 1] = length
    out[#out + 1] = entries
  end
end
return out
"""
STREAM_LENGTHS_LUA = """#!lua flags=allow-cross-slot-keys
-- ARGV[1]: the stream names, separated by newlines, all served by this node.
-- For each non-empty stream: its position among the names (from 1) and its length.
local out = {}
local position = 0
for name in string.gmatch(ARGV[1], '[^\\n]+') do
  position = position + 1
  local length = redis.call('XLEN', name)
  if length > 0 then
    out[#out + 1] = position
    out[#out + 1] = length
  end
end
return out
"""
MAX_STREAMS_PER_READ = 2048
MAX_CACHED_STREAM_GROUPS = 8

StreamPage = tuple[int, list[tuple[str, list[Any]]]]


@dataclass(frozen=True, slots=True)
class StreamGroup:
    """Streams served by one node (``None`` when standalone), read by one script call."""

    node: Any
    names: list[str]
    joined_names: bytes


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


class StreamReader:
    """Reads the length and first entries of many streams with one script call per node.

    On a cluster there is one stream per slot (16384): a pipeline of one XRANGE each costs
    redis-py about a second of CPU, while a script per node visits its streams in milliseconds.
    The script names its streams in ARGV and reads only keys of its own node
    (``allow-cross-slot-keys``), so it needs Redis 7. Which node serves each stream is computed
    once per stream group and kept until :meth:`refresh_topology`.

    A standalone Redis (a few streams, ``[journal] buckets``) is read differently: a script
    finds the non-empty streams and their lengths, then one pipeline of plain XRANGEs reads
    their entries. Entries read inside a script are converted to Lua tables and back, which
    costs Redis about four times the XRANGE itself (``bench/run``'s Redis table: the journal's
    EVAL); the writer reads every record once, so that conversion was a fixed share of Redis's
    CPU per money operation.
    """

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._groups: dict[Hashable, list[StreamGroup]] = {}
        # XRANGE replies as the server sent them ([[id, [field, value, ...]], ...]): the
        # native encoder takes the flat field lists, which redis-py's callback would turn into
        # dicts. A client of its own over the same connection pool keeps the callbacks of the
        # caller's client untouched.
        self._raw: Any = None
        if not isinstance(client, RedisCluster):
            from redis.asyncio import Redis

            self._raw = Redis(connection_pool=client.connection_pool)
            self._raw.set_response_callback("XRANGE", _raw_reply)

    async def refresh_topology(self) -> None:
        """Forget the node of every stream and reload the slot map (after a failed read)."""
        self._groups.clear()
        if isinstance(self._client, RedisCluster):
            await self._client.nodes_manager.initialize()

    async def _group(self, group: Hashable, streams: Sequence[str]) -> list[StreamGroup]:
        cached = self._groups.get(group)
        if cached is not None:
            return cached
        client = self._client
        if isinstance(client, RedisCluster):
            # The slot map is loaded on first use; before that, no node is known.
            await client.initialize()
            by_node: dict[str, tuple[Any, list[str]]] = {}
            for stream in streams:
                node = client.get_node_from_key(stream)
                if node is None:
                    raise RedisError(f"no cluster node serves {stream}")
                by_node.setdefault(node.name, (node, []))[1].append(stream)
            slices = [
                (node, names[start : start + MAX_STREAMS_PER_READ])
                for node, names in by_node.values()
                for start in range(0, len(names), MAX_STREAMS_PER_READ)
            ]
        else:
            slices = [
                (None, list(streams[start : start + MAX_STREAMS_PER_READ]))
                for start in range(0, len(streams), MAX_STREAMS_PER_READ)
            ]
        # Names travel as one newline-separated argument: packing thousands of arguments
        # would cost redis-py more CPU than Redis spends reading the streams.
        groups = [StreamGroup(node, names, "\n".join(names).encode()) for node, names in slices]
        if len(self._groups) >= MAX_CACHED_STREAM_GROUPS:
            # A writer reads under the set of shards it owns, which changes as writers come and go.
            self._groups.clear()
        self._groups[group] = groups
        return groups

    async def read(
        self, group: Hashable, streams: Sequence[str], budget_records: int, rotation: int = 0
    ) -> dict[str, StreamPage]:
        """Every non-empty stream of ``streams`` (cached under ``group``) with its length and
        first entries: about ``budget_records`` entries in all, plus at most one per stream.
        Each call starts ``rotation`` streams further, so the budget favours no stream for long.
        """
        calls = await self._group(group, streams)
        budget_per_call = max(1, budget_records // max(1, len(calls)))
        if self._raw is not None:
            pages: dict[str, StreamPage] = {}
            for stream_group in calls:
                pages.update(await self._read_standalone(stream_group, budget_per_call, rotation))
            return pages

        async def call(stream_group: StreamGroup) -> Any:
            args = (0, budget_per_call, rotation, stream_group.joined_names)
            if stream_group.node is None:
                return await self._client.eval(READ_STREAMS_LUA, *args)
            return await self._client.execute_command(
                "EVAL", READ_STREAMS_LUA, *args, target_nodes=stream_group.node
            )

        if len(calls) == 1:
            replies = [await call(calls[0])]
        else:
            replies = await asyncio.gather(*(call(stream_group) for stream_group in calls))
        pages = {}
        for stream_group, reply in zip(calls, replies, strict=True):
            for index in range(0, len(reply), 3):
                stream = stream_group.names[int(reply[index]) - 1]
                # Fields stay a flat list here; the file thread decodes them off the event loop.
                entries = [(text(raw_sid), flat) for raw_sid, flat in reply[index + 2]]
                pages[stream] = (int(reply[index + 1]), entries)
        return pages

    async def _read_standalone(
        self, stream_group: StreamGroup, budget: int, rotation: int
    ) -> dict[str, StreamPage]:
        """READ_STREAMS_LUA's reading, with the entries read by plain XRANGEs: lengths first,
        then the same share of the budget per stream, in the same rotating order."""
        reply = await self._client.eval(STREAM_LENGTHS_LUA, 0, stream_group.joined_names)
        lengths = {
            int(reply[index]) - 1: int(reply[index + 1]) for index in range(0, len(reply), 2)
        }
        count_names = len(stream_group.names)
        reads: list[tuple[str, int, int]] = []
        for step in range(count_names):
            position = (rotation + step) % count_names
            length = lengths.get(position, 0)
            if length > 0:
                count = max(budget, 1)
                reads.append((stream_group.names[position], length, count))
                budget -= min(length, count)
        if not reads:
            return {}
        commands = [("xrange", (name, "-", "+"), {"count": count}) for name, _, count in reads]
        replies = await run_pipeline(self._raw, commands)
        pages: dict[str, StreamPage] = {}
        for (name, length, _), page in zip(reads, replies, strict=True):
            if not page:
                continue  # Emptied since its length was read (another reader took over).
            entries = [(text(raw_sid), flat) for raw_sid, flat in page]
            # The stream may have grown between the two reads; never report fewer than read.
            pages[name] = (max(length, len(entries)), entries)
        return pages


MAP_KEYS_LUA = """#!lua flags=allow-cross-slot-keys
-- ARGV[1]: JSON list of [map key, player, expire at (unix seconds)], all keys on this node.
-- The first player of a key stays; a later record only lengthens the entry's life.
-- Returns [position (from 1), player already mapped, ...] for keys mapped to another player.
local conflicts = {}
for position, item in ipairs(cjson.decode(ARGV[1])) do
  local previous = redis.call('SET', item[1], item[2], 'NX', 'GET', 'EXAT', item[3])
  if previous then
    redis.call('EXPIREAT', item[1], item[3], 'GT')
    if previous ~= item[2] then
      conflicts[#conflicts + 1] = position
      conflicts[#conflicts + 1] = previous
    end
  end
end
return conflicts
"""

DELETE_ENTRIES_LUA = """#!lua flags=allow-cross-slot-keys
-- ARGV[1]: JSON list of [stream, [entry id, ...]], all streams on this node.
local deleted = 0
for _, group in ipairs(cjson.decode(ARGV[1])) do
  deleted = deleted + redis.call('XDEL', group[1], unpack(group[2]))
end
return deleted
"""
MAX_ITEMS_PER_SCRIPT = 1000


async def run_per_node(
    client: RedisClient, script: str, items: Sequence[tuple[Any, ...]], *, ordered: bool = False
) -> list[tuple[list[Any], Any]]:
    """Run ``script`` once per node (and per ``MAX_ITEMS_PER_SCRIPT`` items) with the JSON list
    of the items whose key (the first element) that node serves; returns (items, reply) pairs.

    One script call replaces a command per record, which redis-py would spend far more CPU
    packing and parsing than Redis spends running them. Nodes run concurrently, and so do the
    chunks of one node unless ``ordered``, which runs them one after the other in item order.
    """
    by_node: dict[str, tuple[Any, list[Any]]] = {}
    if isinstance(client, RedisCluster):
        await client.initialize()
        for item in items:
            node = client.get_node_from_key(item[0])
            if node is None:
                raise RedisError(f"no cluster node serves {item[0]}")
            by_node.setdefault(node.name, (node, []))[1].append(item)
    elif items:
        by_node[""] = (None, list(items))
    chunks_of_node = [
        (
            node,
            [
                grouped[start : start + MAX_ITEMS_PER_SCRIPT]
                for start in range(0, len(grouped), MAX_ITEMS_PER_SCRIPT)
            ],
        )
        for node, grouped in by_node.values()
    ]

    async def call(node: Any, chunk: list[Any]) -> tuple[list[Any], Any]:
        argument = orjson.dumps(chunk)
        if node is None:
            return chunk, await client.eval(script, 0, argument)
        return chunk, await client.execute_command("EVAL", script, 0, argument, target_nodes=node)

    async def in_order(node: Any, chunks: list[list[Any]]) -> list[tuple[list[Any], Any]]:
        return [await call(node, chunk) for chunk in chunks]

    if ordered:
        runs = [in_order(node, chunks) for node, chunks in chunks_of_node]
    else:
        runs = [in_order(node, [chunk]) for node, chunks in chunks_of_node for chunk in chunks]
    if len(runs) == 1:
        # One call needs no task of its own (a task is not free, at a few calls per cycle).
        return await runs[0]
    return [pair for pairs in await asyncio.gather(*runs) for pair in pairs]


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


@dataclass(slots=True)
class ShardStats:
    pending: int
    oldest_ms: int
    updated_ms: int


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
        self.shard_count = min(settings.shards, len(streams))
        self._shard_streams: list[list[tuple[int, str]]] = [[] for _ in range(self.shard_count)]
        for bucket, stream in enumerate(streams):
            self._shard_streams[bucket % self.shard_count].append((bucket, stream))
        self._stream_of_bucket = dict(enumerate(streams))
        self._bucket_of_stream = {stream: bucket for bucket, stream in enumerate(streams)}
        self._reader = StreamReader(client)
        self._rotation = 0
        # One thread does every file operation in order, so the event loop never waits on disk.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-files")
        self._owned: dict[int, OwnedShard] = {}
        self._retry_after: dict[int, float] = {}
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
            except Exception:
                logger.exception("journal: the writer task failed")
        # The task has ended, so no file operation is queued; do not block the loop on it.
        self._executor.shutdown(wait=False)

    async def run(self) -> None:
        await self.start()
        assert self._task is not None
        await self._task
        self._executor.shutdown(wait=False)

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
        reads = {shard.number: ShardRead(shard, [], shard.next_batch) for shard in shards}
        bucket_of_stream = self._bucket_of_stream
        for stream, (length, page) in pages.items():
            bucket = bucket_of_stream[stream]
            read = reads[bucket % self.shard_count]
            read.pending += length
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

    async def _disk_error(self, shard: OwnedShard, error: OSError) -> None:
        """A failed write or fsync leaves the page cache in doubt: give the shard up, so it is
        taken again later through recovery, which reads what the disk really holds."""
        self._note_error(f"shard {shard.number}: disk error {error!r}")
        await self._drop(shard, release_lease=True)
        self._retry_after[shard.number] = time.monotonic() + self._settings.max_backoff_ms / 1000

    async def _write_group(self, group: Sequence[ShardRead]) -> bool:
        """Write the batches read (each only while its lease is trusted), then finish them;
        True when one of the shards written has more waiting."""
        # Never touch the files of a shard given up since it was read.
        group = [read for read in group if self._owned.get(read.shard.number) is read.shard]
        if not group:
            return False
        outcomes: list[ShardWrite] = await self._in_file_thread(
            write_batches, group, self._settings.keymap_ttl_s
        )
        written: list[ShardRead] = []
        for read, outcome in zip(group, outcomes, strict=True):
            shard = read.shard
            if outcome.error is not None:
                await self._disk_error(shard, outcome.error)
                continue
            if outcome.metas is None:
                logger.warning(
                    "journal: shard %d lease not confirmed in time; giving it up", shard.number
                )
                await self._drop(shard, release_lease=False)
                continue
            shard.next_batch = read.batch + 1
            shard.unfinished = outcome.metas
            self._last_flush_s = outcome.flush_s
            self._records_written_total += len(outcome.metas)
            self._check_sequences(shard, outcome.metas)
            written.append(read)
        try:
            await self._finish([read.shard for read in written])
        except OSError as error:
            for read in written:
                await self._disk_error(read.shard, error)
            return False
        for read in written:
            self._queue_stats(read)
        return any(read.more for read in written)

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
        # Lua's unpack() has a bounded stack, so one XDEL names a bounded number of ids.
        groups = [
            (stream, ids[start : start + MAX_DELETE_IDS_PER_COMMAND])
            for stream, ids in by_stream.items()
            for start in range(0, len(ids), MAX_DELETE_IDS_PER_COMMAND)
        ]
        await run_per_node(self._client, DELETE_ENTRIES_LUA, groups)
        for shard in shards:
            shard.unfinished = None

    async def _map_keys(self, batches: Sequence[Sequence[RecordMeta]]) -> None:
        """Keep the transaction key -> player map for records on disk, and count keys that a
        second player reused (the first player stays mapped).

        Batches are mapped in order, each as if alone (within a batch the last record of a key
        gives the item), so a key that two shards' batches name for two players is caught as
        when the shards were finished one after the other.
        """
        now_s = int(time.time())
        items: list[tuple[str, str, str]] = []
        # The items' own identities: two batches may send equal items for different records.
        meta_of_item: dict[int, RecordMeta] = {}
        for metas in batches:
            meta_of_key = {
                keymap_key(meta.tenant, key): meta
                for meta in metas
                if not meta.malformed and meta.keymap_expire_at_s > now_s
                for key in (meta.key, *meta.other_keys)
            }
            for name, meta in meta_of_key.items():
                item = (name, meta.player, str(meta.keymap_expire_at_s))
                items.append(item)
                meta_of_item[id(item)] = meta
        replies = await run_per_node(self._client, MAP_KEYS_LUA, items, ordered=True)
        for chunk, reply in replies:
            for index in range(0, len(reply), 2):
                item = chunk[int(reply[index]) - 1]
                player = item[1]
                previous = text(reply[index + 1])
                meta = meta_of_item[id(item)]
                family = family_of(meta.protocol)
                self._cross_player_total[family] = self._cross_player_total.get(family, 0) + 1
                logger.warning(
                    "journal: transaction key %r of tenant %s is used by player %s and player %s",
                    meta.key,
                    meta.tenant,
                    previous,
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
                    meta.tenant,
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
        now_ms = int(time.time() * 1000)
        replies = await run_pipeline(
            self._client,
            [
                ("zadd", (WRITERS_KEY, {self.writer_id: now_ms + settings.lease_ms}), {}),
                ("zremrangebyscore", (WRITERS_KEY, "-inf", now_ms), {}),
                ("zcard", (WRITERS_KEY,), {}),
                ("pexpire", (WRITERS_KEY, 2 * settings.lease_ms), {}),
            ],
        )
        live_writers = max(1, int(replies[2]))
        target = math.ceil(self.shard_count / live_writers)
        for shard in list(self._owned.values()):
            sent = time.monotonic()
            renewed = await self._client.eval(
                RENEW_LEASE_LUA, 1, lease_key(shard.number), self.writer_id, settings.lease_ms
            )
            if int(renewed) == 1:
                shard.lease_trusted_until = sent + LEASE_TRUST_FRACTION * settings.lease_ms / 1000
            else:
                logger.warning("journal: lost the lease of shard %d", shard.number)
                await self._drop(shard, release_lease=False)
        # Give shards back when more writers joined, so every writer carries a fair share.
        for number in sorted(self._owned, reverse=True):
            if len(self._owned) <= target:
                break
            await self._drop(self._owned[number], release_lease=True)
        if len(self._owned) < target:
            await self._acquire(target)

    async def _acquire(self, target: int) -> None:
        settings = self._settings
        offset = int.from_bytes(self.writer_id.encode(), "big") % self.shard_count
        for step in range(self.shard_count):
            if len(self._owned) >= target:
                return
            number = (offset + step) % self.shard_count
            if number in self._owned or time.monotonic() < self._retry_after.get(number, 0.0):
                continue
            sent = time.monotonic()
            taken = await self._client.eval(
                ACQUIRE_LEASE_LUA, 1, lease_key(number), self.writer_id, settings.lease_ms
            )
            if int(taken) != 1:
                continue
            files = ShardFiles(
                settings.directory / shard_directory_name(number), settings.segment_max_bytes
            )
            try:
                last_records, last_batch = await self._in_file_thread(files.open)
            except ShardBusy:
                # A writer that lost its lease still finishes its batch; try again later.
                await self._release_lease(number)
                continue
            except (OSError, JournalCorrupt) as error:
                self._note_error(f"shard {number}: cannot open: {error!r}")
                await self._release_lease(number)
                self._retry_after[number] = time.monotonic() + settings.max_backoff_ms / 1000
                continue
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
                continue
            shard = OwnedShard(
                number=number,
                stream_names=[stream for _, stream in self._shard_streams[number]],
                files=files,
                lease_trusted_until=sent + LEASE_TRUST_FRACTION * settings.lease_ms / 1000,
                next_batch=last_batch + 1,
            )
            self._owned[number] = shard
            if last_metas:
                # The last batch may still be in Redis (a writer died between fsync and XDEL):
                # finish its steps, which are idempotent, before anything new is read.
                shard.unfinished = last_metas
                self._check_sequences(shard, last_metas)
                await self._finish([shard])
            logger.info(
                "journal: writer %s took shard %d (batch %d next)",
                self.writer_id,
                number,
                shard.next_batch,
            )

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
        if (
            previous is not None
            and previous.pending == read.pending
            and previous.oldest_ms == read.oldest_ms
            and now_ms - previous.updated_ms < self._settings.status_interval_ms / 2
        ):
            return
        self._stats[number] = ShardStats(read.pending, read.oldest_ms, now_ms)
        self._stats_to_publish[number] = orjson.dumps(
            {"pending": read.pending, "oldest_ms": read.oldest_ms, "updated_ms": now_ms}
        )

    async def _publish_stats(self) -> None:
        """Publish the stats queued in this cycle, in one pipeline."""
        if not self._stats_to_publish:
            return
        values, self._stats_to_publish = self._stats_to_publish, {}
        await run_pipeline(
            self._client,
            [
                ("hset", (STATS_KEY,), {"mapping": {str(n): v for n, v in values.items()}}),
                ("pexpire", (STATS_KEY, 10 * self._settings.lease_ms), {}),
            ],
        )

    async def _refresh_status(self) -> None:
        """Read every shard's last published stats, so this worker reports the whole journal."""
        settings = self._settings
        self._next_status_refresh = time.monotonic() + settings.status_interval_ms / 1000
        raw = await self._client.hgetall(STATS_KEY)
        now_ms = int(time.time() * 1000)
        uptime_ms = int((time.monotonic() - self._started_monotonic) * 1000)
        published: dict[int, ShardStats] = {}
        for name, value in raw.items():
            try:
                decoded = orjson.loads(value)
                published[int(text(name))] = ShardStats(
                    int(decoded["pending"]), int(decoded["oldest_ms"]), int(decoded["updated_ms"])
                )
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                continue
        pending = 0
        oldest_age_ms = 0
        for number in range(self.shard_count):
            stats = published.get(number)
            if stats is None:
                # Nobody has reported this shard since this writer started: count the wait once
                # it is longer than a lease, the time a live writer needs to take a shard.
                if uptime_ms > 2 * settings.lease_ms:
                    oldest_age_ms = max(oldest_age_ms, uptime_ms)
                continue
            pending += stats.pending
            age_ms = now_ms - stats.oldest_ms if stats.pending and stats.oldest_ms else 0
            silence_ms = now_ms - stats.updated_ms
            if silence_ms > settings.lease_ms:
                # No owner has made progress for longer than a lease: the shard is stuck.
                age_ms = max(age_ms, silence_ms)
            oldest_age_ms = max(oldest_age_ms, age_ms)
        self._pending_records = pending
        self._oldest_pending_age_s = max(0, oldest_age_ms) / 1000


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
    try:
        await writer.run()
    finally:
        await client.aclose()


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
