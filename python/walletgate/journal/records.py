"""This module turns pending-journal stream entries into journal lines.

It parses and validates an entry's fields, builds the line's object (or the quarantine line of an
entry that is not a valid record), formats and parses record times, and encodes whole batches:
natively where the core can (``rust/journal.rs``), by the reference path here otherwise. It also
names the key-to-player map entry of a transaction key. It opens no file and no connection.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from walletgate import _native
from walletgate.config import MAX_TTL_S
from walletgate.ledger.core import INT64_MAX, INT64_MIN

logger = logging.getLogger("walletgate.journal")

# The stream fields every record carries (see wg_journal in the Lua prelude).
REQUIRED_STREAM_FIELDS = (
    "ts", "tenant", "player", "currency", "seq", "kind", "key", "delta", "bal", "proto",
    "result", "fp", "refs", "fx",
)  # fmt: skip
OPTIONAL_INTEGER_FIELDS = {"gdelta": "gen_delta_units", "gbal": "gen_after_units"}
KNOWN_STREAM_FIELDS = frozenset(REQUIRED_STREAM_FIELDS) | frozenset(OPTIONAL_INTEGER_FIELDS)
INTEGER_TEXT = re.compile(r"^-?(0|[1-9][0-9]*)\Z")
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

FxEntry = tuple[str, str, str, str]


class MalformedEntry(ValueError):
    """A stream entry that does not follow the prelude's record layout."""


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
            and (
                item[3] == "del"
                or (item[3].isascii() and item[3].isdigit() and int(item[3]) <= MAX_TTL_S)
            )
        ):
            # The usual case, checked in one pass: four strings and a TTL in seconds.
            entries.append((item[0], item[1], item[2], item[3]))
            continue
        if not isinstance(item, list) or len(item) != 4:
            raise MalformedEntry(f"fx entry {item!r} is not [key, field, value, ttl]")
        suffix, field_name, value, ttl = (_fx_part(part) for part in item)
        if ttl != "del" and not INTEGER_TEXT.match(ttl):
            raise MalformedEntry(f"fx ttl {ttl!r} is neither seconds nor 'del'")
        if ttl != "del" and int(ttl) > MAX_TTL_S:
            # No config sets such a retention, and Redis would refuse the key map's expiry.
            raise MalformedEntry(f"fx ttl {ttl} is longer than {MAX_TTL_S} s")
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


def encode_entry(entry: StreamEntry, batch: int, keymap_ttl_s: int) -> tuple[bytes, RecordMeta]:
    """One entry's journal line (without its newline) and metadata, the reference way: build the
    record (or its quarantine line, logged, when the entry is malformed) and let orjson write it.
    """
    ts_us: int | None = None
    try:
        record, ts_us = journal_record_and_ts(entry.bucket, entry.sid, entry.fields, batch)
        # Inside the try: orjson refuses what it read but cannot write (refs nested past 255).
        line = orjson.dumps(record)
    except (MalformedEntry, UnicodeDecodeError, TypeError, ValueError) as error:
        logger.error(
            "journal: stream entry %s of bucket %d is malformed: %s",
            entry.sid,
            entry.bucket,
            error,
        )
        record = quarantine_record(entry.bucket, entry.sid, entry.fields, batch, str(error))
        line = orjson.dumps(record)
        ts_us = None
    return line, meta_of(record, entry.stream, keymap_ttl_s, ts_us)


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
