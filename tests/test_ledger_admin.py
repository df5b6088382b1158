from __future__ import annotations

import asyncio

import redis

from ledger_helpers import make_ledger
from walletgate.ledger.admin import adjust


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_adjust_credit_replay_conflict_and_debit(redis_url: str) -> None:
    async def scenario() -> None:
        ledger = make_ledger(redis_url)
        first = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=1_000_000,
            ref="r1",
            kind="adjust",
        )
        assert (first.outcome, first.balance_units) == ("applied", 1_000_000)
        second = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=500,
            ref="r2",
            kind="adjust",
        )
        assert second.balance_units == 1_000_500
        replay = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=1_000_000,
            ref="r1",
            kind="adjust",
        )
        assert (replay.outcome, replay.balance_units) == ("replay", 1_000_000)
        conflict = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=7,
            ref="r1",
            kind="adjust",
        )
        assert conflict.outcome == "conflict"
        too_much = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=-2_000_000,
            ref="r3",
            kind="adjust",
        )
        assert (too_much.outcome, too_much.balance_units) == ("insufficient", 1_000_500)
        await ledger.runner.close()

    run(scenario())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget("wg:{t1:p1}:acct", "bal:usd") == "1000500"
    assert client.hget("wg:{t1:p1}:acct", "seq:usd") == "2"
    streams = [k for k in client.keys("wg:{j*}:journal")]
    records = [entry for stream in streams for entry in client.xrange(stream)]
    assert len(records) == 2


def test_adjust_overflow_is_rejected_not_wrapped(redis_url: str) -> None:
    async def scenario() -> None:
        ledger = make_ledger(redis_url)
        top = await adjust(
            ledger,
            tenant="t1",
            player="p2",
            currency="usd",
            amount_units=2**63 - 1,
            ref="max",
            kind="adjust",
        )
        assert top.balance_units == 2**63 - 1
        over = await adjust(
            ledger,
            tenant="t1",
            player="p2",
            currency="usd",
            amount_units=1,
            ref="one-more",
            kind="adjust",
        )
        assert (over.outcome, over.balance_units) == ("overflow", 2**63 - 1)
        await ledger.runner.close()

    run(scenario())
