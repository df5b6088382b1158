"""Journal replay: ``walletgate journal verify`` and ``walletgate journal rebuild``.

Both read every segment of every shard directory in order, tolerate a torn final line, and drop
duplicates on (tenant, player, currency, seq): a record written again after a writer crash is
the same stream entry (same ``sid``), while two different records with one seq are reported.

Memory is bounded: when the journal is larger than ``partition_bytes``, a first pass spreads its
lines over partition files by player, and each partition is then replayed on its own. Every
record of a player is in one partition, which is all either command needs at once.

* :func:`verify` also reads the records still pending in Redis (so it works while the writer
  lags), checks every account's seqs (1, 2, 3, ...) and balance chain, and compares the result
  with the account hashes in Redis. Reads go pending streams first, then disk, then accounts: a
  record moves from Redis to disk only after it is on disk, so none is missed in between.
* :func:`rebuild` restores every journaled key of an empty Redis from the records' ``fx``:
  balances, Midas parts, counters, round and settlement state, idempotency records and
  tombstones, each with the expiry it had, and the ``seq:<currency>`` counters.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from walletgate.config import Config
from walletgate.journal.records import (
    MalformedEntry,
    RawFields,
    journal_record,
    keymap_key,
    max_ttl_s,
    other_transaction_keys,
    parse_ts,
    quarantine_record,
    text,
)
from walletgate.journal.segments import (
    open_segment,
    readable_segments,
    segment_bytes,
    shard_directories,
)
from walletgate.journal.streams import (
    RedisClient,
    StreamReader,
    connect,
    run_per_node,
    run_pipeline,
    stream_id_order,
)
from walletgate.ledger import keys
from walletgate.logs import tenant_redactor

DEFAULT_PARTITION_BYTES = 128 * 1024 * 1024
PENDING_PAGE_RECORDS = 1000
PENDING_FIRST_READ_RECORDS = 20_000
PIPELINE_CHUNK_COMMANDS = 2000
SEGMENT_LISTING_RETRIES = 3
SEGMENT_LISTING_RETRY_S = 0.2
RESTORE_CHUNK_ITEMS = 20_000
PROGRESS_INTERVAL_S = 1.0
PROGRESS_CHECK_EVERY_RECORDS = 2048
# Rechecks of accounts whose Redis state moved past the journal while verify read it.
VERIFY_RECHECKS = 2
ACCOUNT_KEY_PATTERN = re.compile(r"^wg:\{([^{}:]+):([^{}:]+)\}:acct\Z")
ACCOUNT_FIELD_PREFIXES = ("bal:", "seq:", "gen:")

Account = tuple[str, str, str]
Player = tuple[str, str]
Command = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class JournalRecord:
    ts_us: int
    tenant: str
    player: str
    currency: str
    seq: int
    kind: str
    key: str
    delta_units: int
    balance_after_units: int
    gen_delta_units: int | None
    gen_after_units: int | None
    protocol: str
    result: int | str
    fp: str
    refs: Mapping[str, Any]
    fx: tuple[tuple[str, str, str, str], ...]
    sid: str
    bucket: int
    origin: str = field(compare=False)

    @property
    def account(self) -> Account:
        return (self.tenant, self.player, self.currency)

    def same_entry(self, other: JournalRecord) -> bool:
        """A duplicate written again after a crash is the very same stream entry."""
        return (self.bucket, self.sid, self.ts_us, self.delta_units, self.balance_after_units) == (
            other.bucket,
            other.sid,
            other.ts_us,
            other.delta_units,
            other.balance_after_units,
        )


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} is not an integer")
    return value


def _optional_int(value: Any, name: str) -> int | None:
    return None if value is None else _int(value, name)


def parse_record(obj: Mapping[str, Any], origin: str) -> JournalRecord:
    """A journal line's object as a typed record; raises ``ValueError`` on any deviation."""
    try:
        fx_raw = obj["fx"]
        if not isinstance(fx_raw, list):
            raise ValueError("fx is not a list")
        fx: list[tuple[str, str, str, str]] = []
        for entry in fx_raw:
            if not (isinstance(entry, list | tuple) and len(entry) == 4):
                raise ValueError("an fx entry is not [key, field, value, ttl]")
            suffix, name, value, ttl = (_string(part, "fx") for part in entry)
            if ttl != "del" and not ttl.isdigit():
                raise ValueError(f"fx ttl {ttl!r}")
            fx.append((suffix, name, value, ttl))
        refs = obj["refs"]
        if not isinstance(refs, dict):
            raise ValueError("refs is not an object")
        result = obj["result"]
        if isinstance(result, bool) or not isinstance(result, int | str):
            raise ValueError("result is neither an integer nor a string")
        seq = _int(obj["seq"], "seq")
        if seq < 1:
            raise ValueError("seq below 1")
        return JournalRecord(
            ts_us=parse_ts(_string(obj["ts"], "ts")),
            tenant=_string(obj["tenant"], "tenant"),
            player=_string(obj["player"], "player"),
            currency=_string(obj["currency"], "currency"),
            seq=seq,
            kind=_string(obj["kind"], "kind"),
            key=_string(obj["key"], "key"),
            delta_units=_int(obj["delta_units"], "delta_units"),
            balance_after_units=_int(obj["balance_after_units"], "balance_after_units"),
            gen_delta_units=_optional_int(obj.get("gen_delta_units"), "gen_delta_units"),
            gen_after_units=_optional_int(obj.get("gen_after_units"), "gen_after_units"),
            protocol=_string(obj["protocol"], "protocol"),
            result=result,
            fp=_string(obj["fp"], "fp"),
            refs=refs,
            fx=tuple(fx),
            sid=_string(obj["sid"], "sid"),
            bucket=_int(obj["bucket"], "bucket"),
            origin=origin,
        )
    except KeyError as error:
        raise ValueError(f"missing field {error.args[0]}") from None


# --- Progress --------------------------------------------------------------------------------


class Progress:
    """A progress line on stderr at most once per ``interval_s`` (done / total, rate)."""

    def __init__(
        self, label: str, total: int, unit: str, stream: TextIO, interval_s: float
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.last_print = self.started
        self.since_check = 0

    def advance(self, count: int = 1) -> None:
        self.done += count
        self.since_check += count
        if self.since_check < PROGRESS_CHECK_EVERY_RECORDS:
            return
        self.since_check = 0
        now = time.monotonic()
        if now - self.last_print >= self.interval_s:
            self.last_print = now
            self._print(now)

    def finish(self) -> None:
        if time.monotonic() - self.started >= self.interval_s:
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-9)
        print(
            f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.0f}/s)", file=self.stream
        )
        self.stream.flush()


# --- Reading the journal ---------------------------------------------------------------------


class DamagedSegment(OSError):
    """An archived segment that does not decompress (cut short, or not gzip at all)."""


def _list_segments(directory: Path) -> tuple[list[Path], list[str]]:
    paths: list[Path] = []
    gaps: list[str] = []
    for shard_directory in shard_directories(directory):
        by_number = readable_segments(shard_directory)
        if by_number:
            first, last = min(by_number), max(by_number)
            gaps += [
                f"{shard_directory}: segment {number} is missing (neither plain nor archived)"
                for number in range(first, last + 1)
                if number not in by_number
            ]
        paths += [by_number[number] for number in sorted(by_number)]
    return paths, gaps


def segment_paths(directory: Path, problems: Problems | None = None) -> list[Path]:
    """Every segment of every shard directory, plain or archived, shards in number order,
    segments in order.

    A shard's segment numbers run without gaps. A directory listed while ``journal archive``
    renames an archive in and removes the plain segment may show neither name, so a gap is
    listed again a few times before it is reported (to ``problems``, when given).
    """
    paths, gaps = _list_segments(directory)
    for _ in range(SEGMENT_LISTING_RETRIES):
        if not gaps:
            break
        time.sleep(SEGMENT_LISTING_RETRY_S)
        paths, gaps = _list_segments(directory)
    if problems is not None:
        for gap in gaps:
            problems.add(None, gap)
    return paths


@dataclass(slots=True)
class Problems:
    """Everything found wrong, one message per line, keyed by player for the verify rechecks."""

    messages: list[tuple[Player | None, str]] = field(default_factory=list)
    redis_ahead: set[Player] = field(default_factory=set)

    def add(self, player: Player | None, message: str) -> None:
        self.messages.append((player, message))

    def lines(self) -> list[str]:
        return [message for _, message in self.messages]


def _player_of(obj: Any) -> Player | None:
    if isinstance(obj, dict):
        tenant, player = obj.get("tenant"), obj.get("player")
        if isinstance(tenant, str) and isinstance(player, str):
            return (tenant, player)
    return None


class Partitions:
    """Journal lines grouped by player: in memory, or in partition files when they are large."""

    def __init__(self, count: int, work_directory: Path | None) -> None:
        self.count = count
        self.records = 0
        self._memory: list[JournalRecord] = []
        self._directory: Path | None = None
        self._files: list[Any] = []
        if count > 1:
            self._directory = Path(
                tempfile.mkdtemp(prefix="walletgate-replay-", dir=work_directory)
            )
            self._files = [
                open(self._directory / f"part-{index:05d}", "wb")  # noqa: SIM115
                for index in range(count)
            ]

    def add(self, player: Player, origin: str, line: bytes, record: JournalRecord) -> None:
        self.records += 1
        if self.count == 1:
            self._memory.append(record)
            return
        index = zlib.crc32(f"{player[0]}\x1f{player[1]}".encode()) % self.count
        # Lines are JSON without raw newlines, and a path holds no NUL byte.
        self._files[index].write(origin.encode() + b"\x00" + line + b"\n")

    def __iter__(self) -> Iterator[list[JournalRecord]]:
        if self.count == 1:
            yield self._memory
            return
        assert self._directory is not None
        for handle in self._files:
            handle.close()
        for index in range(self.count):
            records: list[JournalRecord] = []
            with open(self._directory / f"part-{index:05d}", "rb") as handle:
                for raw in handle:
                    origin, _, line = raw.rstrip(b"\n").partition(b"\x00")
                    records.append(parse_record(orjson.loads(line), origin.decode()))
            yield records

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def _accept(
    obj: Any,
    origin: str,
    line: bytes,
    partitions: Partitions,
    problems: Problems,
    players: set[Player] | None,
) -> None:
    player = _player_of(obj)
    if players is not None and player not in players:
        return
    if isinstance(obj, dict) and "malformed" in obj:
        problems.add(
            player, f"{origin}: malformed stream entry {obj.get('sid')}: {obj.get('error')}"
        )
        return
    try:
        record = parse_record(obj, origin)
    except ValueError as error:
        problems.add(player, f"{origin}: unreadable record: {error}")
        return
    partitions.add((record.tenant, record.player), origin, line, record)


def read_segments(
    paths: Iterable[Path],
    partitions: Partitions,
    problems: Problems,
    players: set[Player] | None,
    progress: Progress,
) -> None:
    for path in paths:
        try:
            _read_segment(path, partitions, problems, players, progress)
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise DamagedSegment(f"{path} does not decompress: {error}") from None


def _read_segment(
    path: Path,
    partitions: Partitions,
    problems: Problems,
    players: set[Player] | None,
    progress: Progress,
) -> None:
    with open_segment(path) as handle:
        for number, raw in enumerate(handle, 1):
            origin = f"{path}:{number}"
            progress.advance(len(raw))
            if not raw.endswith(b"\n"):
                # A line cut short by a crash: its stream entry was never deleted, so the
                # record is either still pending in Redis or was written again later.
                print(f"journal: ignoring a torn last line at {origin}", file=sys.stderr)
                continue
            line = raw[:-1]
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                problems.add(None, f"{origin}: unreadable line")
                continue
            _accept(obj, origin, line, partitions, problems, players)


async def read_pending(
    client: RedisClient,
    config: Config,
    partitions: Partitions,
    problems: Problems,
    players: set[Player] | None,
) -> int:
    """Add the records still waiting in the pending-journal streams; returns how many."""
    cluster = config.redis.cluster
    streams = keys.all_journal_stream_keys(config.journal.buckets, cluster)
    if players is not None:
        wanted = {
            keys.journal_bucket(tenant, player, config.journal.buckets, cluster)
            for tenant, player in players
        }
        streams = [stream for bucket, stream in enumerate(streams) if bucket in wanted]
    bucket_of = {
        stream: bucket
        for bucket, stream in enumerate(
            keys.all_journal_stream_keys(config.journal.buckets, cluster)
        )
    }
    found = 0

    def accept(name: str, sid: str, fields: RawFields) -> None:
        origin = f"redis {name} {sid}"
        try:
            obj = journal_record(bucket_of[name], sid, fields, None)
        except (MalformedEntry, UnicodeDecodeError, TypeError, ValueError) as error:
            obj = quarantine_record(bucket_of[name], sid, fields, None, str(error))
        _accept(obj, origin, orjson.dumps(obj), partitions, problems, players)

    # One script call per node finds the non-empty streams among thousands (a cluster has one
    # per slot); the rest of a long stream is then read page by page.
    pages = await StreamReader(client).read(
        "pending", streams, PENDING_FIRST_READ_RECORDS, every_stream=True
    )
    starts: dict[str, str] = {}
    for name, (length, entries) in pages.items():
        for sid, fields in entries:
            accept(name, sid, fields)
        found += len(entries)
        if len(entries) < length:
            starts[name] = "(" + entries[-1][0]
    while starts:
        names = list(starts)
        commands: list[Command] = [
            ("xrange", (name, starts[name], "+"), {"count": PENDING_PAGE_RECORDS}) for name in names
        ]
        replies = await run_pipeline(client, commands)
        next_starts: dict[str, str] = {}
        for name, page in zip(names, replies, strict=True):
            for raw_sid, fields in page:
                accept(name, text(raw_sid), fields)
            found += len(page)
            if len(page) >= PENDING_PAGE_RECORDS:
                next_starts[name] = "(" + text(page[-1][0])
        starts = next_starts
    return found


@dataclass(slots=True)
class Collected:
    partitions: Partitions
    problems: Problems


async def collect(
    config: Config,
    client: RedisClient | None,
    *,
    players: set[Player] | None,
    partition_bytes: int,
    work_directory: Path | None,
    err: TextIO,
    label: str,
) -> Collected:
    """Read pending records (when ``client`` is given) and then every segment."""
    directory = config.journal.dir
    if not directory.is_dir():
        raise FileNotFoundError(f"journal directory {directory} does not exist")
    problems = Problems()
    # This listing only sizes the partitions: the segments are listed again after the pending
    # records are read, since a record that leaves Redis meanwhile may be in a segment created
    # meanwhile (pending first, then disk, so that none is missed).
    total_bytes = sum(segment_bytes(path) for path in segment_paths(directory))
    count = max(1, -(-total_bytes // partition_bytes))
    if work_directory is None and os.access(directory, os.W_OK):
        work_directory = directory
    partitions = Partitions(count, work_directory)
    try:
        if client is not None:
            await read_pending(client, config, partitions, problems, players)
        paths = segment_paths(directory, problems)
        total_bytes = sum(segment_bytes(path) for path in paths)
        progress = Progress(f"{label}: reading", total_bytes, "bytes", err, PROGRESS_INTERVAL_S)
        await asyncio.to_thread(read_segments, paths, partitions, problems, players, progress)
        progress.finish()
    except BaseException:
        partitions.close()
        raise
    return Collected(partitions, problems)


# --- Accounts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountSummary:
    last_seq: int
    balance_units: int
    gen_units: int | None


def account_name(account: Account) -> str:
    return "/".join(account)


def chain_account(
    account: Account, records: Iterable[JournalRecord], problems: Problems
) -> tuple[list[JournalRecord], AccountSummary]:
    """Drop duplicates, order by seq and check seqs 1, 2, 3, ... and each balance step."""
    name = account_name(account)
    player = (account[0], account[1])
    by_seq: dict[int, JournalRecord] = {}
    for record in records:
        existing = by_seq.get(record.seq)
        if existing is None:
            by_seq[record.seq] = record
        elif not existing.same_entry(record):
            problems.add(
                player,
                f"{name}: seq {record.seq} is held by two records "
                f"({existing.origin} and {record.origin})",
            )
    ordered = [by_seq[seq] for seq in sorted(by_seq)]
    expected_seq = 1
    balance = 0
    gen: int | None = None
    for record in ordered:
        if record.seq != expected_seq:
            last = record.seq - 1
            missing = str(expected_seq) if last == expected_seq else f"{expected_seq}..{last}"
            problems.add(player, f"{name}: seq {missing} missing from the journal")
            # Continue from this record's own balance, so one gap is reported once.
            balance = record.balance_after_units - record.delta_units
            if record.gen_after_units is not None and record.gen_delta_units is not None:
                gen = record.gen_after_units - record.gen_delta_units
        balance += record.delta_units
        if balance != record.balance_after_units:
            problems.add(
                player,
                f"{name}: seq {record.seq}: balance_after_units {record.balance_after_units} "
                f"!= previous balance + delta_units ({balance})",
            )
            balance = record.balance_after_units
        if record.gen_after_units is not None:
            gen = (gen or 0) + (record.gen_delta_units or 0)
            if gen != record.gen_after_units:
                problems.add(
                    player,
                    f"{name}: seq {record.seq}: gen_after_units {record.gen_after_units} "
                    f"!= previous gifted balance + gen_delta_units ({gen})",
                )
                gen = record.gen_after_units
        expected_seq = record.seq + 1
    summary = AccountSummary(len(ordered) and ordered[-1].seq, balance, gen)
    return ordered, summary


def group_by_player(
    records: Iterable[JournalRecord],
) -> dict[Player, dict[str, list[JournalRecord]]]:
    grouped: dict[Player, dict[str, list[JournalRecord]]] = {}
    for record in records:
        player = grouped.setdefault((record.tenant, record.player), {})
        player.setdefault(record.currency, []).append(record)
    return grouped


# --- Verify ----------------------------------------------------------------------------------


def _optional_int_text(value: Any) -> int | None:
    return None if value is None else int(text(value))


async def compare_with_redis(
    client: RedisClient, summaries: Mapping[Account, AccountSummary], problems: Problems
) -> None:
    accounts = list(summaries)
    for start in range(0, len(accounts), PIPELINE_CHUNK_COMMANDS):
        chunk = accounts[start : start + PIPELINE_CHUNK_COMMANDS]
        commands: list[Command] = [
            (
                "hmget",
                (
                    keys.account_key(tenant, player),
                    [f"bal:{currency}", f"seq:{currency}", f"gen:{currency}"],
                ),
                {},
            )
            for tenant, player, currency in chunk
        ]
        replies = await run_pipeline(client, commands)
        for account, reply in zip(chunk, replies, strict=True):
            summary = summaries[account]
            name = account_name(account)
            player = (account[0], account[1])
            balance, seq, gen = (_optional_int_text(value) for value in reply)
            if seq is None or seq < summary.last_seq:
                problems.add(
                    player,
                    f"{name}: redis seq {seq if seq is not None else 'missing'} "
                    f"!= journal seq {summary.last_seq}",
                )
                continue
            if seq > summary.last_seq:
                problems.add(
                    player, f"{name}: redis seq {seq} is ahead of journal seq {summary.last_seq}"
                )
                problems.redis_ahead.add(player)
                continue
            # A field that only ever took zero deltas was never created: it reads as zero.
            if (balance or 0) != summary.balance_units:
                problems.add(
                    player,
                    f"{name}: redis balance {balance or 0} != journal balance "
                    f"{summary.balance_units} (seq {seq})",
                )
            if summary.gen_units is not None and (gen or 0) != summary.gen_units:
                problems.add(
                    player,
                    f"{name}: redis gifted balance {gen or 0} != journal gifted balance "
                    f"{summary.gen_units} (seq {seq})",
                )


async def find_accounts_missing_from_journal(
    client: RedisClient,
    journal_accounts: set[Account],
    problems: Problems,
    players: set[Player] | None,
) -> None:
    """Accounts Redis holds that the journal never mentions: every account hash (SCAN visits
    every primary), or only those of ``players`` on a recheck."""

    async def check(names: list[str]) -> None:
        replies = await run_pipeline(client, [("hgetall", (name,), {}) for name in names])
        for name, fields in zip(names, replies, strict=True):
            match = ACCOUNT_KEY_PATTERN.match(name)
            assert match is not None
            tenant, player = match.group(1), match.group(2)
            currencies: dict[str, dict[str, str]] = {}
            for raw_field, raw_value in fields.items():
                field_name = text(raw_field)
                if field_name.startswith(ACCOUNT_FIELD_PREFIXES):
                    kind, _, currency = field_name.partition(":")
                    currencies.setdefault(currency, {})[kind] = text(raw_value)
            for currency, values in sorted(currencies.items()):
                if (tenant, player, currency) in journal_accounts:
                    continue
                if "seq" in values or any(values.get(kind, "0") != "0" for kind in ("bal", "gen")):
                    problems.add(
                        (tenant, player),
                        f"{tenant}/{player}/{currency}: in redis (balance "
                        f"{values.get('bal', '0')}, seq {values.get('seq', 'missing')}) "
                        "but not in the journal",
                    )
                    if "seq" in values:
                        # Its first record may have been applied after verify read the journal.
                        problems.redis_ahead.add((tenant, player))

    if players is not None:
        names = sorted(keys.account_key(tenant, player) for tenant, player in players)
        for start in range(0, len(names), PIPELINE_CHUNK_COMMANDS):
            await check(names[start : start + PIPELINE_CHUNK_COMMANDS])
        return
    batch: list[str] = []
    async for raw_name in client.scan_iter(match="wg:{*}:acct", count=1000):
        name = text(raw_name)
        if ACCOUNT_KEY_PATTERN.match(name):
            batch.append(name)
        if len(batch) >= PIPELINE_CHUNK_COMMANDS:
            await check(batch)
            batch = []
    if batch:
        await check(batch)


async def verify_pass(
    client: RedisClient,
    config: Config,
    *,
    players: set[Player] | None,
    partition_bytes: int,
    work_directory: Path | None,
    err: TextIO,
) -> Problems:
    collected = await collect(
        config,
        client,
        players=players,
        partition_bytes=partition_bytes,
        work_directory=work_directory,
        err=err,
        label="verify",
    )
    problems = collected.problems
    journal_accounts: set[Account] = set()
    try:
        progress = Progress(
            "verify: checking", collected.partitions.records, "records", err, PROGRESS_INTERVAL_S
        )
        for records in collected.partitions:
            summaries: dict[Account, AccountSummary] = {}
            for (tenant, player), currencies in group_by_player(records).items():
                for currency, account_records in currencies.items():
                    account = (tenant, player, currency)
                    _, summaries[account] = chain_account(account, account_records, problems)
                    progress.advance(len(account_records))
            journal_accounts.update(summaries)
            await compare_with_redis(client, summaries, problems)
        progress.finish()
    finally:
        collected.partitions.close()
    await find_accounts_missing_from_journal(client, journal_accounts, problems, players)
    return problems


async def verify(
    config: Config,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    partition_bytes: int = DEFAULT_PARTITION_BYTES,
    work_directory: Path | None = None,
) -> int:
    """Exit 0 when the journal and Redis agree, 1 with differences (printed), 2 on error."""
    try:
        client = connect(config.redis)
    except (RedisError, ValueError) as error:
        print(f"journal verify: cannot connect to redis: {error}", file=err)
        return 2
    try:
        problems = await verify_pass(
            client,
            config,
            players=None,
            partition_bytes=partition_bytes,
            work_directory=work_directory,
            err=err,
        )
        for _ in range(VERIFY_RECHECKS):
            if not problems.redis_ahead:
                break
            # The accounts changed while verify read them: read those players again once the
            # writer had time to move their new records.
            await asyncio.sleep(2 * config.journal.flush_interval_ms / 1000)
            again = await verify_pass(
                client,
                config,
                players=set(problems.redis_ahead),
                partition_bytes=partition_bytes,
                work_directory=work_directory,
                err=err,
            )
            kept = [
                (player, message)
                for player, message in problems.messages
                if player is None or player not in problems.redis_ahead
            ]
            problems = Problems(kept + again.messages, again.redis_ahead)
    except RedisError as error:
        print(f"journal verify: redis error: {error}", file=err)
        return 2
    except OSError as error:
        print(f"journal verify: cannot read the journal: {error}", file=err)
        return 2
    finally:
        await client.aclose()
    # A Wallet v2 tenant id is the agent's wallet_token, a secret: the report names its digest.
    redact = tenant_redactor(frozenset(config.wallet_v2_agents))
    for line in problems.lines():
        print(redact(line), file=out)
    return 1 if problems.messages else 0


# --- Rebuild ---------------------------------------------------------------------------------


@dataclass(slots=True)
class KeyState:
    fields: dict[str, str]
    expire_at_us: int | None = None


def replay_player(
    accounts: Mapping[str, list[JournalRecord]], keymap_ttl_s: int
) -> tuple[dict[str, KeyState], dict[str, tuple[str, int, int]]]:
    """A player's final key states from its records' ``fx``, and its key-map entries.

    Each account's records are applied in seq order; accounts of one player interleave by time
    (one player's records share a stream, whose ids follow the order of the calls). Expiry is
    simulated: a key whose TTL ran out before a later record touched it starts afresh, as it did
    in Redis.
    """
    ordered = heapq.merge(
        *accounts.values(), key=lambda record: (record.ts_us, stream_id_order(record.sid))
    )
    states: dict[str, KeyState] = {}
    keymap: dict[str, tuple[str, int, int]] = {}
    for record in ordered:
        for suffix, name, value, ttl in record.fx:
            state = states.get(suffix)
            if (
                state is not None
                and state.expire_at_us is not None
                and state.expire_at_us <= record.ts_us
            ):
                del states[suffix]
                state = None
            if ttl == "del":
                states.pop(suffix, None)
                continue
            if state is None:
                state = states[suffix] = KeyState({})
            state.fields[name] = value
            if int(ttl) > 0:
                state.expire_at_us = record.ts_us + int(ttl) * 1_000_000
        # As the writer does: the map entry lives as long as the record's longest TTL, and
        # covers the other transaction keys the record wrote (a cancel's tombstone).
        expire_at_s = record.ts_us // 1_000_000 + (max_ttl_s(record.fx) or keymap_ttl_s)
        for transaction_key in (record.key, *other_transaction_keys(record.key, record.fx)):
            known = keymap.get(transaction_key)
            if known is None:
                keymap[transaction_key] = (record.player, expire_at_s, record.ts_us)
            elif known[1] < expire_at_s:
                keymap[transaction_key] = (known[0], expire_at_s, known[2])
    return states, keymap


# (tenant, transaction key) -> (player, expire at in unix s, first use in unix us)
GlobalKeymap = dict[tuple[str, str], tuple[str, int, int]]


def merge_keymap(
    into: GlobalKeymap, tenant: str, keymap: Mapping[str, tuple[str, int, int]]
) -> None:
    """Merge one player's entries: the player who used a key first keeps it, as in the writer."""
    for transaction_key, (player, expire_at_s, first_us) in keymap.items():
        known = into.get((tenant, transaction_key))
        if known is None:
            into[(tenant, transaction_key)] = (player, expire_at_s, first_us)
            continue
        first_player, first_seen_us = (
            (player, first_us) if first_us < known[2] else (known[0], known[2])
        )
        into[(tenant, transaction_key)] = (first_player, max(expire_at_s, known[1]), first_seen_us)


# (tenant, ref) -> every journaled use: (time in unix us, fingerprint, expire at in unix s)
GlobalClaims = dict[tuple[str, str], list[tuple[int, str, int]]]


def merge_claims(
    into: GlobalClaims, tenant: str, records: Iterable[JournalRecord], ttl_s: int
) -> None:
    """Collect the uses of admin adjustment refs, from which the tenant-wide claims
    (``admin_claim.lua``) are restored: a claim is no account state, so no record's fx carries
    it. A ref has one use in the common case (a retry replays and journals nothing)."""
    for record in records:
        if record.protocol != "admin" or not record.key.startswith(keys.ADMIN_KEY_PREFIX):
            continue
        ref = record.key.removeprefix(keys.ADMIN_KEY_PREFIX)
        expire_at_s = record.ts_us // 1_000_000 + (max_ttl_s(record.fx) or ttl_s)
        into.setdefault((tenant, ref), []).append((record.ts_us, record.fp, expire_at_s))


def claim_owner(uses: Sequence[tuple[int, str, int]]) -> tuple[str, int]:
    """The fingerprint that holds a ref's claim after its uses, and when the claim expires: a
    use owns the ref once the previous owner's claim has expired, as admin_claim.lua decides."""
    owner_fp, owner_expire_at_s = "", 0
    for used_us, fp, expire_at_s in sorted(uses):
        if not owner_fp or owner_expire_at_s * 1_000_000 <= used_us:
            owner_fp, owner_expire_at_s = fp, expire_at_s
    assert owner_fp, "a ref with uses has an owner"
    return owner_fp, owner_expire_at_s


def claim_restore_items(claims: GlobalClaims, now_us: int) -> list[RestoreItem]:
    items: list[RestoreItem] = []
    for (tenant, ref), uses in claims.items():
        fp, expire_at_s = claim_owner(uses)
        if expire_at_s * 1_000_000 > now_us:
            items.append((keys.admin_claim_key(tenant, ref), "map", fp, str(expire_at_s)))
    return items


def keymap_restore_items(keymap: GlobalKeymap, now_us: int) -> list[RestoreItem]:
    return [
        (keymap_key(tenant, transaction_key), "map", player, str(expire_at_s))
        for (tenant, transaction_key), (player, expire_at_s, _) in keymap.items()
        if expire_at_s * 1_000_000 > now_us
    ]


RESTORE_LUA = """#!lua flags=allow-cross-slot-keys
-- ARGV[1]: JSON list of [key, "hash", [field, value, ...], expire at (unix ms) or "0"] and
-- [key, "map", player, expire at (unix s)], all keys on this node.
for _, item in ipairs(cjson.decode(ARGV[1])) do
  if item[2] == 'hash' then
    redis.call('HSET', item[1], unpack(item[3]))
    if item[4] ~= '0' then
      redis.call('PEXPIREAT', item[1], item[4])
    end
  else
    redis.call('SET', item[1], item[3], 'EXAT', item[4])
  end
end
return 0
"""
# Lua's unpack() has a bounded stack: a large hash is restored in several HSETs.
MAX_FIELDS_PER_HSET = 500

RestoreItem = tuple[str, str, Any, str]


def player_restore_items(
    tenant: str,
    player: str,
    states: Mapping[str, KeyState],
    now_us: int,
) -> list[RestoreItem]:
    """What one player's keys need written, skipping what has expired."""
    prefix = keys.player_prefix(tenant, player)
    items: list[RestoreItem] = []
    for suffix, state in states.items():
        if not state.fields:
            continue
        if state.expire_at_us is not None and state.expire_at_us <= now_us:
            continue  # expired since: Redis would have dropped it by now
        expire_at_ms = "0" if state.expire_at_us is None else str(state.expire_at_us // 1000)
        pairs = list(state.fields.items())
        for start in range(0, len(pairs), MAX_FIELDS_PER_HSET):
            flat = [part for pair in pairs[start : start + MAX_FIELDS_PER_HSET] for part in pair]
            items.append((prefix + suffix, "hash", flat, expire_at_ms))
    return items


async def primary_key_counts(client: RedisClient) -> dict[str, int]:
    """DBSIZE of every primary (raises ``RedisError`` when none is known)."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        counts: dict[str, int] = {}
        for node in client.get_primaries():
            counts[node.name] = int(await client.execute_command("DBSIZE", target_nodes=node))
        if not counts:
            raise RedisError("the cluster reports no primary")
        return counts
    return {"redis": int(await client.dbsize())}


async def rebuild(
    config: Config,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    partition_bytes: int = DEFAULT_PARTITION_BYTES,
    work_directory: Path | None = None,
) -> int:
    """Restore an empty Redis from the journal. Exit 2 unless every primary is empty; 1 when
    the journal had problems (printed; everything else is restored); 0 otherwise."""
    try:
        client = connect(config.redis)
    except (RedisError, ValueError) as error:
        print(f"journal rebuild: cannot connect to redis: {error}", file=err)
        return 2
    try:
        counts = await primary_key_counts(client)
        busy = {node: count for node, count in counts.items() if count}
        if busy:
            for node, count in sorted(busy.items()):
                print(
                    f"journal rebuild: {node} holds {count} keys; rebuild needs an empty Redis",
                    file=err,
                )
            return 2
        collected = await collect(
            config,
            None,
            players=None,
            partition_bytes=partition_bytes,
            work_directory=work_directory,
            err=err,
            label="rebuild",
        )
        problems = collected.problems
        restored_accounts = 0
        try:
            progress = Progress(
                "rebuild: applying",
                collected.partitions.records,
                "records",
                err,
                PROGRESS_INTERVAL_S,
            )
            now_us = time.time_ns() // 1000
            pending: list[RestoreItem] = []
            global_keymap: GlobalKeymap = {}
            global_claims: GlobalClaims = {}
            for records in collected.partitions:
                for (tenant, player), currencies in group_by_player(records).items():
                    ordered: dict[str, list[JournalRecord]] = {}
                    last_seqs: dict[str, int] = {}
                    for currency, account_records in currencies.items():
                        chain, summary = chain_account(
                            (tenant, player, currency), account_records, problems
                        )
                        ordered[currency] = chain
                        last_seqs[currency] = summary.last_seq
                        progress.advance(len(account_records))
                    states, keymap = replay_player(ordered, config.idempotency.ttl_s)
                    account_state = states.setdefault("acct", KeyState({}))
                    for currency, last_seq in last_seqs.items():
                        # wg_next_seq increments this counter outside fx; the last seq restores it.
                        account_state.fields[f"seq:{currency}"] = str(last_seq)
                    restored_accounts += len(last_seqs)
                    merge_keymap(global_keymap, tenant, keymap)
                    for chain in ordered.values():
                        merge_claims(global_claims, tenant, chain, config.idempotency.ttl_s)
                    pending.extend(player_restore_items(tenant, player, states, now_us))
                    if len(pending) >= RESTORE_CHUNK_ITEMS:
                        await run_per_node(client, RESTORE_LUA, pending)
                        pending = []
            # The key map and the adjustment claims are restored last, from every partition at
            # once, so that a key used by two players goes to the one who used it first
            # (memory: one entry per key or ref).
            pending.extend(keymap_restore_items(global_keymap, now_us))
            pending.extend(claim_restore_items(global_claims, now_us))
            for start in range(0, len(pending), RESTORE_CHUNK_ITEMS):
                chunk = pending[start : start + RESTORE_CHUNK_ITEMS]
                await run_per_node(client, RESTORE_LUA, chunk)
            progress.finish()
        finally:
            collected.partitions.close()
    except RedisError as error:
        print(f"journal rebuild: redis error: {error}", file=err)
        return 2
    except OSError as error:
        print(f"journal rebuild: cannot read the journal: {error}", file=err)
        return 2
    finally:
        await client.aclose()
    redact = tenant_redactor(frozenset(config.wallet_v2_agents))
    for line in problems.lines():
        print(redact(line), file=out)
    print(
        f"journal rebuild: restored {restored_accounts} accounts from "
        f"{collected.partitions.records} records",
        file=err,
    )
    return 1 if problems.messages else 0
