"""Midas v1 ledger operations on a real Redis: pay, present, cancelpay, balance, sessions."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from ledger_helpers import make_ledger
from walletgate.ledger import midas
from walletgate.ledger.admin import AdjustResult, adjust
from walletgate.ledger.core import Ledger
from walletgate.ledger.fastredis import FastRedisRunner
from walletgate.ledger.scripts import PRELUDE_NAME, Script, _read
from walletgate.ledger.sessions import register_session

APPID = "wx1234567"
OPENID = "odkx20ENSNa2w5y3g_qOkOvBNM1g"
SESSION_KEY = "V7Q38/i2KXaqrQyl2Yx9Hg=="
DIGEST = midas.session_digest(SESSION_KEY)
COIN = 10_000
INT64_MAX = 2**63 - 1
ACCT = "wg:{wx1234567:odkx20ENSNa2w5y3g_qOkOvBNM1g}:acct"


def tx(bill_no: str, openid: str = OPENID) -> str:
    return "wg:{" + APPID + ":" + openid + "}:tx:" + bill_no


def run_with_ledger(redis_url: str, body: Callable[[Ledger], Awaitable[None]]) -> None:
    async def scenario() -> None:
        ledger = make_ledger(redis_url)
        try:
            await body(ledger)
        finally:
            await ledger.runner.close()

    asyncio.run(scenario())


def journal(redis_url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    records = [fields for key in client.keys("wg:{j*}:journal") for _, fields in client.xrange(key)]
    client.close()
    return sorted(records, key=lambda r: (r["currency"], int(r["seq"])))


def raw(redis_url: str) -> Any:
    return redis.Redis.from_url(redis_url, decode_responses=True)


async def setup(
    ledger: Ledger,
    *,
    paid: int = 0,
    gen: int = 0,
    zone: str = "1",
    sandbox: bool = False,
    openid: str = OPENID,
) -> None:
    """Register the session and fund the parts (paid by admin save, gifted by present)."""
    await register_session(
        ledger,
        tenant=APPID,
        player=openid,
        currency=zone,
        token="handle-" + openid,
        ttl_s=3600,
        session_key=SESSION_KEY,
    )
    currency = midas.currency_for(zone, sandbox)
    if paid:
        result = await adjust(
            ledger,
            tenant=APPID,
            player=openid,
            currency=currency,
            amount_units=paid,
            ref=f"fund-{currency}-{paid}",
            kind="save",
        )
        assert result.outcome == "applied"
    if gen:
        result = await present(
            ledger, f"seed-gift-{currency}", gen, zone=zone, sandbox=sandbox, openid=openid
        )
        assert result.outcome == "applied"


async def pay(
    ledger: Ledger,
    bill_no: str,
    units: int,
    *,
    zone: str = "1",
    sandbox: bool = False,
    openid: str = OPENID,
    digest: str = DIGEST,
) -> midas.MoneyResult:
    return await midas.pay(
        ledger,
        appid=APPID,
        openid=openid,
        zone_id=zone,
        sandbox=sandbox,
        bill_no=bill_no,
        amount_units=units,
        digest=digest,
    )


async def present(
    ledger: Ledger,
    bill_no: str,
    units: int,
    *,
    zone: str = "1",
    sandbox: bool = False,
    openid: str = OPENID,
    digest: str = DIGEST,
) -> midas.MoneyResult:
    return await midas.present(
        ledger,
        appid=APPID,
        openid=openid,
        zone_id=zone,
        sandbox=sandbox,
        bill_no=bill_no,
        amount_units=units,
        digest=digest,
    )


async def cancel(
    ledger: Ledger,
    bill_no: str,
    *,
    zone: str = "1",
    sandbox: bool = False,
    openid: str = OPENID,
    digest: str = DIGEST,
) -> midas.MoneyResult:
    return await midas.cancel_pay(
        ledger,
        appid=APPID,
        openid=openid,
        zone_id=zone,
        sandbox=sandbox,
        bill_no=bill_no,
        digest=digest,
    )


async def admin_adjust(ledger: Ledger, ref: str, units: int) -> AdjustResult:
    """An admin adjustment of the paid part (zone 1)."""
    return await adjust(
        ledger,
        tenant=APPID,
        player=OPENID,
        currency="1",
        amount_units=units,
        ref=ref,
        kind="adjust",
    )


async def balance(ledger: Ledger, zone: str = "1", sandbox: bool = False) -> midas.Balance:
    _, view = await midas.read_balance(
        ledger, appid=APPID, openid=OPENID, currency=midas.currency_for(zone, sandbox)
    )
    return view


def test_pay_uses_gifted_first_then_paid_and_is_journaled(redis_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=100 * COIN, gen=10 * COIN)
        first = await pay(ledger, "BILL0001", 4 * COIN)
        assert (first.outcome, first.code) == ("applied", 0)
        assert (first.paid_units, first.gen_units, first.used_gen_units) == (
            100 * COIN,
            6 * COIN,
            4 * COIN,
        )
        second = await pay(ledger, "BILL0002", 16 * COIN)
        assert (second.paid_units, second.gen_units, second.used_gen_units) == (
            90 * COIN,
            0,
            6 * COIN,
        )
        third = await pay(ledger, "BILL0003", 5 * COIN)
        assert (third.paid_units, third.gen_units, third.used_gen_units) == (85 * COIN, 0, 0)
        view = await balance(ledger)
        assert view == midas.Balance(
            paid_units=85 * COIN,
            gen_units=0,
            first_save=2,
            save_amt_units=100 * COIN,
            save_sum_units=100 * COIN,
            cost_sum_units=25 * COIN,
            present_sum_units=10 * COIN,
        )

    run_with_ledger(redis_url, body)
    client = raw(redis_url)
    record = client.hgetall(tx("BILL0002"))
    assert record["state"] == "applied" and record["code"] == "0" and record["op"] == "pay"
    assert record["protocol"] == "midas" and record["currency"] == "1"
    assert (record["delta"], record["bal"], record["gdelta"], record["gbal"]) == (
        "-100000",
        "900000",
        "-60000",
        "0",
    )
    assert (record["amt"], record["used_gen"], record["paid_used"]) == ("160000", "60000", "100000")
    assert record["bill_no"] == "BILL0002" and record["player"] == OPENID
    assert 172_700 < client.ttl(tx("BILL0002")) <= 172_800
    records = journal(redis_url)
    # save, present (seed), 3 pays
    assert [r["kind"] for r in records] == ["save", "present", "pay", "pay", "pay"]
    assert [r["seq"] for r in records] == ["1", "2", "3", "4", "5"]
    pay2 = records[3]
    assert (pay2["delta"], pay2["bal"], pay2["gdelta"], pay2["gbal"]) == (
        "-100000",
        "900000",
        "-60000",
        "0",
    )
    assert pay2["proto"] == "midas" and pay2["result"] == "0" and pay2["key"] == "BILL0002"


def test_pay_replay_conflict_and_stored_insufficient(redis_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=10 * COIN, gen=5 * COIN)
        first = await pay(ledger, "B1", 12 * COIN)
        assert (first.outcome, first.paid_units, first.gen_units) == ("applied", 3 * COIN, 0)
        await present(ledger, "P-later", 7 * COIN)
        replay = await pay(ledger, "B1", 12 * COIN)
        assert (replay.outcome, replay.code) == ("replay", 0)
        assert (replay.paid_units, replay.gen_units, replay.used_gen_units) == (
            3 * COIN,
            0,
            5 * COIN,
        )
        for other in (
            pay(ledger, "B1", 11 * COIN),
            pay(ledger, "B1", 12 * COIN, zone="2"),
            pay(ledger, "B1", 12 * COIN, sandbox=True),
            present(ledger, "B1", 12 * COIN),
        ):
            conflict = await other
            assert (conflict.outcome, conflict.code) == ("conflict", 90012)
        short = await pay(ledger, "B2", 10 * COIN + 1)
        assert (short.outcome, short.code) == ("rejected", 90013)
        assert (short.paid_units, short.gen_units) == (3 * COIN, 7 * COIN)
        await admin_adjust(ledger, "more", 100 * COIN)
        again = await pay(ledger, "B2", 10 * COIN + 1)
        assert (again.outcome, again.code) == ("replay", 90013)
        assert (again.paid_units, again.gen_units) == (3 * COIN, 7 * COIN)
        view = await balance(ledger)
        assert (view.paid_units, view.gen_units, view.cost_sum_units) == (
            103 * COIN,
            7 * COIN,
            12 * COIN,
        )

    run_with_ledger(redis_url, body)
    record = raw(redis_url).hgetall(tx("B2"))
    assert (record["state"], record["code"], record["delta"], record["gdelta"]) == (
        "rejected",
        "90013",
        "0",
        "0",
    )
    kinds = [r["kind"] for r in journal(redis_url)]
    # save, seed present, pay, present, reject, adjust: replays and conflicts write nothing
    assert kinds == ["save", "present", "pay", "present", "reject", "adjust"]
    reject = next(r for r in journal(redis_url) if r["kind"] == "reject")
    assert reject["result"] == "90013" and reject["gdelta"] == "0" and reject["gbal"] == "70000"


def test_cancelpay_restores_each_part_exactly_once(redis_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=100 * COIN, gen=10 * COIN)
        await pay(ledger, "BILL0001", 30 * COIN)
        await present(ledger, "P2", 5 * COIN)  # gifted grows in between
        done = await cancel(ledger, "BILL0001")
        assert (done.outcome, done.code) == ("applied", 0)
        assert (done.paid_units, done.gen_units, done.used_gen_units) == (
            100 * COIN,
            15 * COIN,
            10 * COIN,
        )
        view = await balance(ledger)
        assert (view.paid_units, view.gen_units, view.cost_sum_units, view.present_sum_units) == (
            100 * COIN,
            15 * COIN,
            0,
            15 * COIN,
        )
        repeat = await cancel(ledger, "BILL0001")
        assert (repeat.outcome, repeat.code) == ("repeat", 90015)
        replay = await pay(ledger, "BILL0001", 30 * COIN)
        assert (replay.outcome, replay.code, replay.paid_units, replay.gen_units) == (
            "replay",
            0,
            80 * COIN,
            0,
        )
        assert (await balance(ledger)).paid_units == 100 * COIN

    run_with_ledger(redis_url, body)
    record = raw(redis_url).hgetall(tx("BILL0001"))
    assert record["cancelled"] == "1" and record["state"] == "applied"
    records = journal(redis_url)
    assert [r["kind"] for r in records] == ["save", "present", "pay", "present", "cancelpay"]
    cancel_record = records[-1]
    assert (cancel_record["delta"], cancel_record["bal"]) == ("200000", "1000000")
    assert (cancel_record["gdelta"], cancel_record["gbal"]) == ("100000", "150000")
    assert cancel_record["key"] == "BILL0001" and record["cancel_seq"] == cancel_record["seq"]


def test_cancelpay_without_a_matching_pay_is_90000_and_writes_nothing(redis_url: str) -> None:
    other = "other-openid"

    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=50 * COIN)
        await setup(ledger, openid=other)
        await setup(ledger, zone="2")
        await setup(ledger, sandbox=True, paid=50 * COIN)
        await pay(ledger, "PAID", 1 * COIN)
        await present(ledger, "GIFT", 1 * COIN)
        failed = await pay(ledger, "FAILED", 1000 * COIN)
        assert failed.outcome == "rejected"
        await pay(ledger, "SANDBOXPAY", 1 * COIN, sandbox=True)
        before = len(journal(redis_url))
        for attempt in (
            cancel(ledger, "NEVER"),
            cancel(ledger, "GIFT"),
            cancel(ledger, "FAILED"),
            cancel(ledger, "PAID", zone="2"),
            cancel(ledger, "PAID", sandbox=True),
            cancel(ledger, "SANDBOXPAY"),
            cancel(ledger, "PAID", openid=other),
        ):
            outcome = await attempt
            assert (outcome.outcome, outcome.code) == ("not_found", 90000)
        assert len(journal(redis_url)) == before
        sandbox_cancel = await cancel(ledger, "SANDBOXPAY", sandbox=True)
        assert sandbox_cancel.outcome == "applied"
        assert (await balance(ledger, sandbox=True)).paid_units == 50 * COIN
        assert (await balance(ledger)).paid_units == 49 * COIN

    run_with_ledger(redis_url, body)
    assert not raw(redis_url).exists(tx("NEVER"))
    last = journal(redis_url)
    assert any(r["proto"] == "midas_sandbox" and r["currency"] == "sandbox-1" for r in last)


def test_expired_record_answers_90000(redis_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=5 * COIN)
        await pay(ledger, "OLD", 1 * COIN)
        raw(redis_url).delete(tx("OLD"))  # what the TTL does after midas_ttl_s
        outcome = await cancel(ledger, "OLD")
        assert outcome.code == 90000

    run_with_ledger(redis_url, body)


def test_present_counts_replays_and_conflicts(redis_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=100 * COIN)
        first = await present(ledger, "P0001", 10 * COIN)
        assert (first.outcome, first.paid_units, first.gen_units) == (
            "applied",
            100 * COIN,
            10 * COIN,
        )
        replay = await present(ledger, "P0001", 10 * COIN)
        assert (replay.outcome, replay.gen_units) == ("replay", 10 * COIN)
        conflict = await pay(ledger, "P0001", 10 * COIN)
        assert conflict.outcome == "conflict"
        view = await balance(ledger)
        assert (view.gen_units, view.present_sum_units) == (10 * COIN, 10 * COIN)

    run_with_ledger(redis_url, body)
    record = raw(redis_url).hgetall(tx("P0001"))
    assert (record["op"], record["gdelta"], record["gbal"], record["bal"]) == (
        "present",
        "100000",
        "100000",
        "1000000",
    )
    present_record = journal(redis_url)[-1]
    assert present_record["kind"] == "present" and present_record["delta"] == "0"


def test_session_check_inside_the_script(redis_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=5 * COIN)
        wrong = await pay(ledger, "B1", COIN, digest=midas.session_digest("rotated"))
        assert wrong.outcome == "session"
        unknown = await present(ledger, "B2", COIN, openid="nobody")
        assert unknown.outcome == "session"
        raw(redis_url).hset("wg:{" + APPID + ":" + OPENID + "}:midas_session", "expires_at", "1")
        expired = await cancel(ledger, "B1")
        assert expired.outcome == "session"
        assert (await balance(ledger)).paid_units == 5 * COIN

    run_with_ledger(redis_url, body)
    assert [r["kind"] for r in journal(redis_url)] == ["save"]


def test_int64_limits_exact_and_overflow_rejected(redis_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=INT64_MAX)
        whole = await pay(ledger, "ALL", INT64_MAX)
        assert (whole.outcome, whole.paid_units, whole.gen_units) == ("applied", 0, 0)
        back = await cancel(ledger, "ALL")
        assert (back.outcome, back.paid_units) == ("applied", INT64_MAX)
        # The balance is the paid part plus the gifted one, and it is an int64 too: a present
        # (or an admin credit) that would take the sum beyond it changes nothing. It once
        # answered a balance no int64 holds, which no pay could then spend.
        beyond = await present(ledger, "BEYOND", 1)
        assert (beyond.outcome, beyond.paid_units, beyond.gen_units) == (
            "overflow",
            INT64_MAX,
            0,
        )
        # Emptied by the admin (a pay would fill cost_sum, which the end of this test needs).
        drain = await admin_adjust(ledger, "DRAIN", -INT64_MAX)
        assert (drain.outcome, drain.balance_units) == ("applied", 0)
        top = await present(ledger, "TOP", INT64_MAX)
        assert (top.outcome, top.gen_units) == ("applied", INT64_MAX)
        over = await present(ledger, "OVER", 1)
        assert over.outcome == "overflow"
        credit = await admin_adjust(ledger, "OVER-ADMIN", 1)
        assert credit.outcome == "overflow"
        mixed = await pay(ledger, "MIXED", INT64_MAX)  # all of the gifted part
        assert (mixed.outcome, mixed.gen_units, mixed.used_gen_units) == ("applied", 0, INT64_MAX)
        # present_sum is at the limit: the gifted part is put back and nothing is stored.
        refill = await present(ledger, "REFILL", 1)
        assert refill.outcome == "overflow"
        assert (await balance(ledger)).gen_units == 0
        raw(redis_url).hset(ACCT, "gen:1", str(INT64_MAX - 1))
        # Restoring MIXED's gifted part would leave int64: nothing changes, nothing is stored.
        blocked = await cancel(ledger, "MIXED")
        assert blocked.outcome == "overflow"
        view = await balance(ledger)
        assert (view.paid_units, view.gen_units) == (0, INT64_MAX - 1)
        # cost_sum at the limit: a pay that would overflow it changes nothing.
        raw(redis_url).hset(ACCT, "cost_sum:1", str(INT64_MAX))
        blocked_pay = await pay(ledger, "COSTLY", COIN)
        assert blocked_pay.outcome == "overflow"
        view = await balance(ledger)
        assert (view.paid_units, view.gen_units, view.cost_sum_units) == (
            0,
            INT64_MAX - 1,
            INT64_MAX,
        )

    run_with_ledger(redis_url, body)
    client = raw(redis_url)
    for bill_no in ("BEYOND", "OVER", "REFILL", "COSTLY"):
        assert not client.exists(tx(bill_no))
    assert client.hget(tx("MIXED"), "cancelled") is None
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["save", "pay", "cancelpay", "adjust", "present", "pay"]


def test_balance_of_a_new_account_and_sandbox_isolation(redis_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        session, view = await midas.read_balance(ledger, appid=APPID, openid=OPENID, currency="1")
        assert session is None
        assert view == midas.Balance(0, 0, 1, 0, 0, 0, 0)
        await setup(ledger, paid=7 * COIN, gen=3 * COIN, sandbox=True)
        session, view = await midas.read_balance(
            ledger, appid=APPID, openid=OPENID, currency="sandbox-1"
        )
        assert session is not None and session.session_key == SESSION_KEY
        assert session.digest == DIGEST and not session.expired()
        assert (view.paid_units, view.gen_units, view.first_save) == (7 * COIN, 3 * COIN, 2)
        assert (await balance(ledger)).paid_units == 0
        found = await midas.read_session(ledger, appid=APPID, openid=OPENID)
        assert found == session
        assert await midas.read_session(ledger, appid=APPID, openid="nobody") is None

    run_with_ledger(redis_url, body)


def test_session_cache_is_bounded_and_expires() -> None:
    now = [0.0]
    cache = midas.SessionCache(max_entries=2, ttl_s=3.0, clock=lambda: now[0])
    a = midas.MidasSession("ka", 10, midas.session_digest("ka"))
    b = midas.MidasSession("kb", 10, midas.session_digest("kb"))
    c = midas.MidasSession("kc", 10, midas.session_digest("kc"))
    cache.put("app", "a", a)
    cache.put("app", "b", b)
    assert cache.get("app", "a") == a  # a is now the most recent
    cache.put("app", "c", c)
    assert len(cache) == 2 and cache.get("app", "b") is None
    now[0] = 3.5
    assert cache.get("app", "a") is None and len(cache) == 1
    cache.invalidate("app", "c")
    assert len(cache) == 0


def test_the_balance_bound_is_exact_next_to_int64_max(redis_url: str) -> None:
    """Paid plus gifted may reach int64's maximum exactly and not one unit more, whichever
    call adds to it (a present, an admin credit, the rollback of a pay), though doubles cannot
    tell those sums apart."""

    async def body(ledger: Ledger) -> None:
        await setup(ledger, paid=INT64_MAX - 2 * COIN)
        spent = await pay(ledger, "SPENT", COIN)
        assert (spent.outcome, spent.paid_units) == ("applied", INT64_MAX - 3 * COIN)
        edge = await present(ledger, "EDGE", 2 * COIN)
        assert (edge.outcome, edge.paid_units + edge.gen_units) == ("applied", INT64_MAX - COIN)
        # The rollback would give back COIN of paid part: exactly the maximum, so it applies...
        assert (await cancel(ledger, "SPENT")).outcome == "applied"
        view = await balance(ledger)
        assert view.paid_units + view.gen_units == INT64_MAX
        # ...and nothing more fits: not one unit by present, by the admin, or by a rollback.
        assert (await present(ledger, "ONE", 1)).outcome == "overflow"
        credit = await admin_adjust(ledger, "ONE-ADMIN", 1)
        assert credit.outcome == "overflow"
        assert (await pay(ledger, "AGAIN", COIN)).outcome == "applied"
        assert (await present(ledger, "REFILL", COIN)).outcome == "applied"
        assert (await cancel(ledger, "AGAIN")).outcome == "overflow"
        view = await balance(ledger)
        assert view.paid_units + view.gen_units == INT64_MAX

    run_with_ledger(redis_url, body)


def test_wg_total_fits_adds_exactly_and_leaves_out_what_is_not_a_part(redis_url: str) -> None:
    """The prelude's bound on a sum of parts: exact next to int64 max, where doubles are not;
    a negative or empty value (no part is ever one) is left out instead of being added as
    digits ('-' once counted as the digit -3)."""
    source = (
        _read(PRELUDE_NAME) + "\nreturn wg_total_fits(cjson.decode(ARGV[1])) and 1 or 0"
    ).encode()
    script = Script(name="fits", source=source, sha=hashlib.sha1(source).hexdigest())
    cases = [
        (["9223372036854775807"], 1),
        (["9223372036854775806", "1"], 1),
        (["9223372036854775807", "1"], 0),
        (["4611686018427387904", "4611686018427387904"], 0),  # 2^63
        (["4611686018427387904", "4611686018427387903"], 1),
        (["-1", "9223372036854775800", "9"], 0),
        (["", "4600000000000000000"], 1),
        (["5", "7"], 1),
    ]

    async def scenario() -> None:
        runner = FastRedisRunner.from_url(redis_url)
        for values, expected in cases:
            assert await runner.run(script, [], [json.dumps(values)]) == expected, values
        await runner.close()

    asyncio.run(scenario())
