"""The native journal encoder against the reference path (``encode_batch_reference``): the same
bytes and the same metadata for every entry, well-formed or not, and no detour through the
reference path for the entries the ledger's scripts really write."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_helpers import TEST_SETTINGS, make_ledger
from walletgate import _native
from walletgate.journal import records
from walletgate.journal.records import RecordMeta, StreamEntry
from walletgate.journal.streams import StreamReader
from walletgate.ledger import keys, minigame
from walletgate.ledger.admin import adjust

KEYMAP_TTL_S = 604_800
ODD_CHARS = '"\\/\x00\x01\x08\t\n\x0c\r\x1f\x7f é€\u2028😀'
BASE_TS_US = 1_721_130_791_123_456


def cjson(value: Any) -> str:
    """What Lua's cjson.encode prints for tables of strings: compact, UTF-8 kept, '/' escaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")


def flat(pairs: list[tuple[str, str]]) -> list[bytes]:
    return [part.encode() for pair in pairs for part in pair]


def minigame_bet(index: int, rng: random.Random) -> list[tuple[str, str]]:
    """A MINI.GAME bet as minigame_change.lua journals it: balance, 14 tx fields, round."""
    order = f"2024071619{index:08d}"
    player = str(1_000_000 + rng.randrange(500))
    balance = str(rng.randrange(10**9))
    ts = str(BASE_TS_US + index * 977)
    tx = [
        ("fp", "ab12"), ("state", "applied"), ("code", "1"), ("msg", "ok"), ("op", "bet"),
        ("type", "1"), ("protocol", "minigame"), ("player", player), ("currency", "CNY"),
        ("delta", "-5"), ("bal", balance), ("seq", str(index + 1)), ("created_us", ts),
        ("round", "r1"),
    ]  # fmt: skip
    fx = [["acct", "bal:CNY", balance, "0"]]
    fx += [["tx:" + order, name, value, "604800"] for name, value in tx]
    fx.append(["round:r1", "bet:" + order, "1", "604800"])
    if index % 3 == 0:
        # A payout also settles an earlier bet: another transaction key in fx.
        fx.append(["tx:" + f"2024071619{index - 1:08d}", "settled_by", order, "604800"])
    refs: dict[str, Any] = {"order_id": order, "session_id": "r1", "trace_id": f"t{index}"}
    if index % 5 == 0:
        refs["award_order_ids"] = [f"2024071619{index - 2:08d}"]
    return [
        ("ts", ts), ("tenant", "10013"), ("player", player), ("currency", "CNY"),
        ("seq", str(index + 1)), ("kind", "bet"), ("key", order), ("delta", "-5"),
        ("bal", balance), ("proto", "minigame"), ("result", "1"), ("fp", "ab12"),
        ("refs", orjson.dumps(refs).decode()), ("fx", cjson(fx)),
    ]  # fmt: skip


def midas_pay(index: int) -> list[tuple[str, str]]:
    bill = f"BILL/{index}"
    fx = [["acct", "bal:coin", "100", "0"], ["bill:" + bill, "state", "paid", "7776000"]]
    return [
        ("ts", str(BASE_TS_US + index)), ("tenant", "wx1234567"), ("player", "odkx20EN"),
        ("currency", "coin"), ("seq", "3"), ("kind", "pay"), ("key", bill),
        ("delta", "-10000"), ("bal", "100"), ("proto", "midas_sandbox"), ("result", "0"),
        ("fp", "f"), ("refs", orjson.dumps({"bill_no": bill}).decode()), ("fx", cjson(fx)),
        ("gdelta", "0"), ("gbal", "-0"), ("ext", "kept"),
    ]  # fmt: skip


def entries_of(raw: list[Any]) -> list[StreamEntry]:
    return [
        StreamEntry(index % 7, f"wg:{{j{index % 7}}}:journal", f"{1_700_000_000_000 + index}-0", r)
        for index, r in enumerate(raw)
    ]


def assert_same(entries: list[StreamEntry], batch: int = 5) -> None:
    expected = records.encode_batch_reference(entries, batch, KEYMAP_TTL_S)
    assert records.encode_batch(entries, batch, KEYMAP_TTL_S) == expected


def count_fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[StreamEntry]:
    seen: list[StreamEntry] = []
    real = records.encode_entry

    def counting(entry: StreamEntry, batch: int, keymap_ttl_s: int) -> tuple[bytes, RecordMeta]:
        seen.append(entry)
        return real(entry, batch, keymap_ttl_s)

    monkeypatch.setattr(records, "encode_entry", counting)
    return seen


def test_real_records_are_encoded_natively_and_identically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(1)
    raw = [flat(minigame_bet(index, rng)) for index in range(1, 400)]
    raw += [flat(midas_pay(index)) for index in range(50)]
    entries = entries_of(raw)
    expected = records.encode_batch_reference(entries, 9, KEYMAP_TTL_S)
    fallbacks = count_fallbacks(monkeypatch)
    data, metas = records.encode_batch(entries, 9, KEYMAP_TTL_S)
    assert fallbacks == []
    assert (data, metas) == expected
    assert data.endswith(b"\n") and data.count(b"\n") == len(entries)
    assert metas[2].other_keys == ("202407161900000002",)  # the bet of index 3
    assert metas[0].keymap_expire_at_s == BASE_TS_US // 1_000_000 + 604_800
    assert orjson.loads(data.split(b"\n")[-2])["gen_after_units"] == 0


def test_records_of_the_real_scripts(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries as the ledger's Lua scripts write them (bets, payouts, a refund, a tombstone, odd
    order ids whose fx cjson escapes) take the native path and match the reference."""

    async def scenario() -> list[StreamEntry]:
        ledger = make_ledger(redis_url)
        for player in ("1006417", "p/é"):
            await adjust(
                ledger,
                tenant="10013",
                player=player,
                currency="usdt",
                amount_units=10**9,
                ref="fund-" + player,  # a ref is the tenant's: one per player
                kind="adjust",
            )
        orders = [
            ("b1", 1, -500, "s1", False, "", ()),
            ("b/2", 1, -700, "s1", False, "", ()),
            ('b"3é', 1, -900, "s2", False, "", ()),
            ("w1", 3, 1200, "s1", False, "", ("b1",)),
            ("c1", 2, 700, "", False, "b/2", ()),
            ("c2", 2, 0, "", False, "never-placed", ()),
            ("w2", 4, 50, "s2", True, "", ('b"3é',)),
        ]
        for player in ("1006417", "p/é"):
            for order_id, type_, money, session, end_round, cancel, awards in orders:
                await minigame.change_balance(
                    ledger,
                    tenant="10013",
                    player=player,
                    currency="usdt",
                    protocol="minigame",
                    order_id=order_id,
                    type_=type_,
                    money_units=money,
                    bet_units=abs(money) if type_ == 2 else 0,
                    session_id=session,
                    end_round=end_round,
                    cancel_order_id=cancel,
                    award_order_ids=list(awards),
                    refs={"order_id": order_id, "award_order_ids": list(awards)},
                )
        await ledger.runner.close()
        client = redis.asyncio.Redis.from_url(redis_url)
        streams = keys.all_journal_stream_keys(TEST_SETTINGS.journal_buckets, False)
        pages = await StreamReader(client).read("all", streams, 100_000)
        await client.aclose()
        return [
            StreamEntry(streams.index(stream), stream, sid, fields)
            for stream, (_, page) in pages.items()
            for sid, fields in page
        ]

    entries = asyncio.run(scenario())
    assert len(entries) == 2 * (1 + 7)
    expected = records.encode_batch_reference(entries, 4, KEYMAP_TTL_S)
    fallbacks = count_fallbacks(monkeypatch)
    assert records.encode_batch(entries, 4, KEYMAP_TTL_S) == expected
    assert fallbacks == []
    assert not any(meta.malformed for meta in expected[1])
    assert {key for meta in expected[1] for key in meta.other_keys} == {
        "b1",
        "b/2",
        'b"3é',
        "never-placed",
    }


def test_an_empty_batch() -> None:
    assert records.encode_batch([], 1, KEYMAP_TTL_S) == (b"", [])


# --- Odd entries, one change at a time ------------------------------------------------------

BASE = dict(minigame_bet(3, random.Random(2)))
VARIANTS: list[tuple[str, str | None]] = [
    # (field, value); None removes the field.
    ("ts", "0"), ("ts", "-1"), ("ts", "01"), ("ts", "1e6"), ("ts", "5\n"), ("ts", ""),
    ("ts", "253402300799999999"),
    ("seq", "0"), ("seq", "-3"), ("seq", "1\n"), ("seq", "9223372036854775808"),
    ("delta", "-0"), ("delta", "-9223372036854775808"), ("delta", "+5"), ("delta", " 5"),
    ("bal", "9223372036854775807"), ("bal", "x"),
    ("gdelta", "7"), ("gbal", "-2"), ("gdelta", "07"),
    ("result", "-0"), ("result", "007"), ("result", "123456789012345678"),
    ("result", "1234567890123456789"), ("result", "5\n"), ("result", "OK"), ("result", ""),
    ("result", "-"), ("result", "١٢"),
    ("refs", "[]"), ("refs", "{}"), ("refs", " { } "), ("refs", "[ ]"), ("refs", "[1]"),
    ("refs", '"x"'), ("refs", "null"), ("refs", "{"), ("refs", '{"a":1.5}'),
    ("refs", '{"a":1e3}'), ("refs", '{"a":-0}'), ("refs", '{"a":18446744073709551615}'),
    ("refs", '{"a":18446744073709551616}'), ("refs", '{"a":123456789012345678}'),
    ("refs", '{"a":1,"a":2}'), ("refs", '{"a":{"b":[true,false,null,"\\u00e9\\/"]}}'),
    ("refs", '{"\\ud83d\\ude00":"\\u2028"}'), ("refs", '{"a":"\\ud800"}'),
    ("refs", '{"a":"\\udc00x"}'), ("refs", '{"a":"\x01"}'), ("refs", '{"a" : "b" , "c":[ ]}'),
    ("refs", '{"a":1}x'), ("refs", "[" * 70 + "]" * 70), ("refs", '{"a":' * 70 + "1" + "}" * 70),
    ("fx", "{}"), ("fx", "{ }"), ("fx", "[]"), ("fx", " [ ] "), ("fx", '{"a":1}'),
    ("fx", '"x"'), ("fx", "["), ("fx", "[[]]"), ("fx", '[["a","b","c"]]'),
    ("fx", '[["a","b","c","0","e"]]'), ("fx", '[["a","b","c",0]]'), ("fx", '[["a","b",5,"0"]]'),
    ("fx", '[["a","b",1e15,"0"]]'), ("fx", '[["a","b",null,"0"]]'), ("fx", '[["a","b","c","-1"]]'),
    ("fx", '[["a","b","c",""]]'), ("fx", '[["a","b","c","007"]]'), ("fx", '[["a","b","c","٣"]]'),
    ("fx", '[["a","b","c","del"]]'), ("fx", '[["a","","","DEL"]]'),
    ("fx", '[["a","b","c","99999999999999999999"]]'), ("fx", '[["a","b","c","0"],]'),
    ("fx", '[["a","b","c","315360000"]]'), ("fx", '[["a","b","c","315360001"]]'),
    ("fx", '[["a","b","c","999999999999"]]'), ("refs", '{"a":' * 300 + "1" + "}" * 300),
    ("fx", '[ [ "tx:k" , "b" , "c" , "5" ] , [ "tx:k", "b", "c", "6" ] ]'),
    ("fx", '[["tx:\\u00e9","b\\/c","\\"\\\\\\b\\f\\n\\r\\t\\u0001","1"]]'),
    ("fx", '[["\\ud800","b","c","1"]]'), ("fx", '[["a\x01","b","c","1"]]'),
    ("fx", '[["a","b","c","1"]] x'), ("fx", '[["tx:","b","c","1"],["tx:tx:","b","c","2"]]'),
    ("fp", None), ("refs", None), ("fx", None), ("gbal", None),
    ("round", "extra"), ("extra", '"quoted"'), ("sid", "a field named sid"),
    ("é\u2028", "\x00\x1f\x7f"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), VARIANTS)
def test_one_odd_field(name: str, value: str | None) -> None:
    fields = dict(BASE)
    if value is None:
        fields.pop(name, None)
    else:
        fields[name] = value
    if name == "fx" and value is not None and "tx:k" in value:
        fields["key"] = "k"
    assert_same(entries_of([flat(list(fields.items()))]))


@pytest.mark.parametrize(
    "ts",
    ["253402300800000000", "9223372036854775807", "-62135596800000001", "-9223372036854775808"],
)
def test_unprintable_timestamps_are_quarantined(ts: str) -> None:
    """A time outside the years 1-9999 cannot be printed: both paths quarantine the entry."""
    fields = {**BASE, "ts": ts}
    entries = entries_of([flat(list(fields.items()))])
    expected = records.encode_batch_reference(entries, 1, KEYMAP_TTL_S)
    assert [meta.malformed for meta in expected[1]] == [True]
    assert b"outside the years 1 to 9999" in expected[0]
    assert records.encode_batch(entries, 1, KEYMAP_TTL_S) == expected


def test_entries_that_are_not_flat_byte_lists() -> None:
    pairs = list(BASE.items())
    raw: list[Any] = [
        dict((name.encode(), value.encode()) for name, value in pairs),  # redis-py's dict
        [part.decode() for part in flat(pairs)],  # str fields
        flat(pairs)[:-1],  # odd length
        [*flat(pairs), b"seq", b"8"],  # a duplicate field
        [*flat(pairs), b"\xff", b"x"],  # a name that is not UTF-8
        [*flat(pairs), b"x", b"\xc3("],  # a value that is not UTF-8
        [*flat(pairs), b"x", b"\xed\xa0\x80"],  # an encoded surrogate
        tuple(flat(pairs)),
        [],
    ]
    assert_same(entries_of(raw))
    odd_bucket = StreamEntry(True, "s", "1-0", flat(pairs))  # orjson writes true
    odd_sid = StreamEntry(2, "s", '1-"0"\n', flat(pairs))
    assert_same([odd_sid, StreamEntry(2**63 - 1, "s", "1-0", flat(pairs)), odd_bucket])
    # orjson cannot write a lone surrogate nor a 70-bit integer: both paths raise.
    for entry in [StreamEntry(2, "s", "\ud800-0", flat(pairs)), StreamEntry(2**70, "s", "1-0", [])]:
        with pytest.raises(TypeError):
            records.encode_batch_reference([entry], 1, KEYMAP_TTL_S)
        with pytest.raises(TypeError):
            records.encode_batch([entry], 1, KEYMAP_TTL_S)


def test_malformed_entries_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    entries = entries_of([flat([("ts", "1")]), flat(list(BASE.items()))])
    with caplog.at_level(logging.ERROR, "walletgate.journal"):
        data, metas = records.encode_batch(entries, 1, KEYMAP_TTL_S)
    assert [m.malformed for m in metas] == [True, False]
    assert caplog.text.count("is malformed") == 1
    assert b'"malformed"' in data.split(b"\n")[0]


def test_native_arguments_that_it_does_not_handle_go_to_the_fallback() -> None:
    entries = entries_of([flat(list(BASE.items()))])
    calls: list[StreamEntry] = []

    def fallback(entry: StreamEntry) -> tuple[bytes, RecordMeta]:
        calls.append(entry)
        return records.encode_entry(entry, 1, KEYMAP_TTL_S)

    for batch, ttl in [(True, KEYMAP_TTL_S), (1, 2**80), (1.0, KEYMAP_TTL_S)]:
        _native.encode_journal_batch(entries, batch, ttl, RecordMeta, fallback)  # type: ignore[arg-type]
    assert len(calls) == 3
    data, _ = _native.encode_journal_batch(entries, None, KEYMAP_TTL_S, RecordMeta, fallback)
    assert b'"batch"' not in data and len(calls) == 3
    with pytest.raises(ZeroDivisionError):
        _native.encode_journal_batch(
            entries_of([[b"x"]]), 1, 1, RecordMeta, lambda entry: (b"", 1 / 0)
        )


# --- Random entries -----------------------------------------------------------------------


def odd_text(rng: random.Random, size: int = 6) -> str:
    alphabet = "abc:tx" + ODD_CHARS
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(size)))


def odd_integer(rng: random.Random) -> str:
    return rng.choice(
        [
            str(rng.randrange(-(10**6), 10**6)),
            str(rng.randrange(-(2**63), 2**63)),
            "-0",
            "0",
            "007",
            "+1",
            "1\n",
            " 1",
            "",
            "9223372036854775808",
            "1.5",
            "x",
        ]
    )


def odd_json_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return odd_text(rng)
    if roll < 0.45:
        return rng.choice([0, -1, 2**62, 2**64 - 1, -(2**63), 10**20, 1.5, True, False, None])
    if roll < 0.7:
        return [odd_json_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {odd_text(rng, 4): odd_json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def dump_json(rng: random.Random, value: Any) -> str:
    style = rng.randrange(4)
    if style == 0:
        try:
            return orjson.dumps(value).decode()
        except TypeError:  # an integer beyond 64 bits
            style = 2
    if style == 1:
        return cjson(value)
    if style == 2:
        return json.dumps(value)  # spaces and \\u escapes
    return json.dumps(value, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)


def odd_fx(rng: random.Random, key: str) -> str:
    roll = rng.random()
    if roll < 0.1:
        return rng.choice(["{}", "[]", "{ }", '{"a":1}', "[", '"x"', "null"])
    entries: list[list[Any]] = []
    for _ in range(rng.randrange(6)):
        name = rng.choice(["acct", "tx:" + key, "tx:" + odd_text(rng), "round:r", odd_text(rng)])
        ttl: Any = rng.choice(["0", "604800", "del", "007", "", "-1", "99999999999999999999"])
        entry: list[Any] = [name, odd_text(rng), odd_text(rng), ttl]
        if rng.random() < 0.05:
            entry[rng.randrange(4)] = rng.choice([5, 1e15, None, True, ["x"]])
        if rng.random() < 0.03:
            entry = entry[: rng.randrange(4)]
        entries.append(entry)
    return dump_json(rng, entries) if roll < 0.9 else cjson(entries)


def odd_entry(rng: random.Random) -> list[Any]:
    fields = dict(minigame_bet(rng.randrange(1, 10**6), rng))
    for _ in range(rng.randrange(4)):
        name = rng.choice([*fields, "gdelta", "gbal", odd_text(rng, 4)])
        roll = rng.random()
        if roll < 0.1:
            fields.pop(name, None)
        elif name == "ts":
            # Now and then a time outside the years 1-9999, which both paths quarantine.
            fields[name] = (
                odd_integer(rng) if roll < 0.15 else str(rng.randrange(-(10**12), 10**17))
            )
        elif name in ("seq", "delta", "bal", "gdelta", "gbal", "result"):
            fields[name] = odd_integer(rng)
        elif name == "refs":
            fields[name] = dump_json(rng, odd_json_value(rng)) if roll < 0.9 else "{"
        elif name == "fx":
            fields[name] = odd_fx(rng, fields.get("key", "k"))
        else:
            fields[name] = odd_text(rng)
    if rng.random() < 0.3:
        fields["fx"] = odd_fx(rng, fields.get("key", "k"))
    raw = flat(list(fields.items()))
    if rng.random() < 0.02:
        raw[rng.randrange(len(raw))] += b"\xff"
    return raw


def test_random_entries() -> None:
    rng = random.Random(20240716)
    native = 0
    for round_number in range(300):
        entries = entries_of([odd_entry(rng) for _ in range(40)])
        expected = records.encode_batch_reference(entries, round_number, KEYMAP_TTL_S)
        got = records.encode_batch(entries, round_number, KEYMAP_TTL_S)
        assert got[0].split(b"\n") == expected[0].split(b"\n")
        assert got == expected
        native += sum(not meta.malformed for meta in got[1])
    assert native > 3000  # most random entries are still records


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    refs=st.one_of(
        st.text(alphabet=st.sampled_from('{}[]":,01-.e ' + "abé\\/u\ud83d\ude00")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
            max_leaves=8,
        ).map(lambda value: json.dumps(value, ensure_ascii=False)),
    ),
    fx=st.one_of(
        st.text(alphabet=st.sampled_from('{}[]":,0d l"\\/u' + "tx:é")),
        st.lists(
            st.lists(st.text() | st.sampled_from(["del", "0", "12", "tx:k"]), max_size=5),
            max_size=4,
        ).map(cjson),
    ),
    value=st.text(),
)
def test_random_json_fields(refs: str, fx: str, value: str) -> None:
    fields = {**BASE, "refs": refs, "fx": fx, "kind": value}
    pairs = list(fields.items())
    try:
        raw = flat(pairs)
    except UnicodeEncodeError:  # a lone surrogate: not something a stream holds
        return
    assert_same(entries_of([raw]))


def test_the_bench_generator_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/journal_micro.py's entries, which mimic every family, take the native path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "journal_micro.py"
    spec = importlib.util.spec_from_file_location("journal_micro", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    make_entries: Callable[[int], list[StreamEntry]] = module.make_entries
    entries = make_entries(2000)
    expected = records.encode_batch_reference(entries, 3, KEYMAP_TTL_S)
    fallbacks = count_fallbacks(monkeypatch)
    assert records.encode_batch(entries, 3, KEYMAP_TTL_S) == expected
    assert fallbacks == []


@pytest.mark.parametrize(
    ("name", "value", "malformed"),
    [
        ("fx", '[["a","b","c","315360000"]]', False),
        ("fx", '[["a","b","c","315360001"]]', True),
        ("refs", '{"a":' * 300 + "1" + "}" * 300, True),
    ],
)
def test_what_redis_or_orjson_would_refuse_is_quarantined(
    name: str, value: str, malformed: bool
) -> None:
    """A TTL longer than any config sets would make the key map's SET ... EXAT fail, and refs
    nested past orjson's depth limit cannot be written: either would stall the writer on every
    retry, so both paths quarantine such an entry instead."""
    entries = entries_of([flat(list({**BASE, name: value}.items()))])
    expected = records.encode_batch_reference(entries, 1, KEYMAP_TTL_S)
    assert [meta.malformed for meta in expected[1]] == [malformed]
    assert records.encode_batch(entries, 1, KEYMAP_TTL_S) == expected
