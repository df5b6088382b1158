"""MINI.GAME seamless ledger operations on a real Redis: lua/minigame_change.lua and balances."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis

from ledger_helpers import make_ledger
from walletgate.ledger import minigame
from walletgate.ledger.admin import adjust
from walletgate.ledger.core import Ledger
from walletgate.ledger.minigame import ChangeResult
from walletgate.ledger.sessions import touch_player

T = "10013"
P = "1006417"
CUR = "usdt"
INT64_MAX = 2**63 - 1


def run(scenario: Callable[[Ledger], Awaitable[None]], url: str) -> None:
    async def main() -> None:
        ledger = make_ledger(url)
        try:
            await scenario(ledger)
        finally:
            await ledger.runner.close()

    asyncio.run(main())


async def fund(
    ledger: Ledger, units: int, player: str = P, currency: str = CUR, ref: str = "fund"
) -> None:
    result = await adjust(
        ledger,
        tenant=T,
        player=player,
        currency=currency,
        amount_units=units,
        ref=ref,
        kind="adjust",
    )
    assert result.outcome == "applied"


async def change(
    ledger: Ledger,
    order_id: str,
    type_: int,
    money: int,
    *,
    bet: int = 0,
    session_id: str = "s1",
    end_round: bool = False,
    cancel: str = "",
    awards: tuple[str, ...] = (),
    player: str = P,
    currency: str = CUR,
    protocol: str = "minigame",
) -> ChangeResult:
    return await minigame.change_balance(
        ledger,
        tenant=T,
        player=player,
        currency=currency,
        protocol=protocol,
        order_id=order_id,
        type_=type_,
        money_units=money,
        bet_units=bet,
        session_id=session_id,
        end_round=end_round,
        cancel_order_id=cancel,
        award_order_ids=list(awards),
        refs={"order_id": order_id},
    )


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def journal(url: str) -> list[dict[str, str]]:
    c = client(url)
    records = [fields for key in c.keys("wg:{j*}:journal") for _, fields in c.xrange(key)]
    return sorted(records, key=lambda r: (r["currency"], int(r["seq"])))


def tx(url: str, order_id: str, player: str = P) -> dict[str, str]:
    return client(url).hgetall(f"wg:{{{T}:{player}}}:tx:{order_id}")


def balance(url: str, player: str = P, currency: str = CUR) -> int:
    return int(client(url).hget(f"wg:{{{T}:{player}}}:acct", f"bal:{currency}") or 0)


def test_bet_win_settle_happy_path_and_journal(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        bet = await change(ledger, "b1", 1, -30_000, bet=30_000, session_id="r1")
        assert (bet.status, bet.code, bet.balance_units, bet.effect) == (
            "applied",
            1,
            70_000,
            "debit",
        )
        win = await change(ledger, "w1", 3, 336_600, session_id="r1", awards=("b1",))
        assert (win.status, win.balance_units, win.unknown_bets, win.already_awarded) == (
            "applied",
            406_600,
            0,
            0,
        )
        settle = await change(ledger, "w2", 4, 0, session_id="r1")
        assert (settle.status, settle.balance_units) == ("applied", 406_600)

    run(scenario, redis_url)
    assert balance(redis_url) == 406_600
    bet = tx(redis_url, "b1")
    assert bet["state"] == "applied" and bet["op"] == "bet" and bet["delta"] == "-30000"
    assert bet["awarded_by"] == "w1" and bet["settled_by"] == "w1"
    assert bet["protocol"] == "minigame" and bet["round"] == "r1"
    assert client(redis_url).hget(f"wg:{{{T}:{P}}}:round:r1", "closed") == "w2"
    records = journal(redis_url)
    # adjust + bet + win + zero-amount settlement
    assert [r["kind"] for r in records] == ["adjust", "bet", "win", "win"]
    assert [r["seq"] for r in records] == ["1", "2", "3", "4"]
    assert records[1]["delta"] == "-30000" and records[1]["bal"] == "70000"
    assert records[1]["proto"] == "minigame" and records[1]["result"] == "1"
    assert records[3]["delta"] == "0"
    fx = orjson.loads(records[3]["fx"])
    assert ["round:r1", "closed", "w2", "604800"] in fx


def test_replay_conflict_and_type_replay_closes_round(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        await change(ledger, "b1", 1, -10_000, bet=10_000, session_id="24713")
        first = await change(ledger, "o1", 3, 336_600, session_id="24713", awards=("b1",))
        assert first.balance_units == 426_600
        await fund(ledger, 1, ref="more")
        replay = await change(ledger, "o1", 3, 336_600, session_id="24713", awards=("b1",))
        assert (replay.status, replay.code, replay.balance_units) == ("replay", 1, 426_600)
        assert not replay.replay_closed_round
        # seed inconsistency 2: the type 4 reuses the type 3 order_id and money
        type4 = await change(ledger, "o1", 4, 336_600, session_id="24713", awards=("b1",))
        assert (type4.status, type4.balance_units, type4.stored_type) == ("replay", 426_600, 3)
        assert type4.replay_closed_round
        again = await change(ledger, "o1", 4, 336_600, session_id="24713")
        assert again.status == "replay" and not again.replay_closed_round
        conflict = await change(ledger, "o1", 3, 336_601, session_id="24713")
        assert (conflict.status, conflict.balance_units) == ("conflict", 0)
        other_currency = await change(ledger, "o1", 3, 336_600, currency="usd")
        assert other_currency.status == "conflict"

    run(scenario, redis_url)
    assert balance(redis_url) == 426_601
    assert client(redis_url).hget(f"wg:{{{T}:{P}}}:round:24713", "closed") == "o1"
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["adjust", "bet", "win", "adjust", "close"]


def test_insufficient_funds_is_stored(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 5)
        low = await change(ledger, "b1", 1, -6, bet=6)
        assert (low.status, low.code, low.msg, low.balance_units) == (
            "rejected",
            10001,
            "balance is not enough",
            5,
        )
        await fund(ledger, 100, ref="more")
        replay = await change(ledger, "b1", 1, -6, bet=6)
        assert (replay.status, replay.code, replay.balance_units) == ("replay", 10001, 5)
        # type 6 fee: too low as well, then fine
        fee = await change(ledger, "f1", 6, -1_000, session_id="")
        assert fee.code == 10001
        fee_ok = await change(ledger, "f2", 6, 100, session_id="")
        assert (fee_ok.code, fee_ok.balance_units) == (1, 5)

    run(scenario, redis_url)
    assert tx(redis_url, "b1")["state"] == "rejected"
    assert tx(redis_url, "b1")["code"] == "10001"
    assert [r["kind"] for r in journal(redis_url)] == [
        "adjust",
        "reject",
        "adjust",
        "reject",
        "bet",
    ]


def test_unknown_player_writes_nothing(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        result = await change(ledger, "b1", 1, -1, bet=1, player="ghost")
        assert result.status == "unknown_player"
        assert await minigame.balances(ledger, tenant=T, player="ghost", currencies=[CUR]) is None
        await touch_player(ledger, tenant=T, player="ghost", currency=CUR, open_account=False)
        assert await minigame.balances(
            ledger, tenant=T, player="ghost", currencies=[CUR, "usd"]
        ) == [0, 0]
        credit = await change(ledger, "w1", 5, 12_345, player="ghost", session_id="")
        assert (credit.status, credit.balance_units) == ("applied", 12_345)

    run(scenario, redis_url)
    assert len(journal(redis_url)) == 1
    assert tx(redis_url, "b1", "ghost") == {}


def test_cancel_refunds_original_debit_and_counts_mismatch(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        await change(ledger, "b1", 1, -30_000, bet=30_000, session_id="r1")
        # seed inconsistency 7: money "10000" on the cancel, the bet was 3
        cancel = await change(ledger, "c1", 2, 100_000_000, session_id="r1", cancel="b1")
        assert (cancel.status, cancel.effect, cancel.balance_units) == (
            "applied",
            "refund",
            100_000,
        )
        assert cancel.amount_mismatch
        again = await change(ledger, "c1", 2, 100_000_000, session_id="r1", cancel="b1")
        assert (again.status, again.balance_units) == ("replay", 100_000)
        second = await change(ledger, "c2", 2, 30_000, session_id="r1", cancel="b1")
        assert (second.status, second.effect, second.balance_units) == ("applied", "noop", 100_000)
        await change(ledger, "b2", 1, -30_000, bet=30_000, session_id="r1")
        exact = await change(ledger, "c3", 2, 30_000, session_id="r1", cancel="b2")
        assert exact.effect == "refund" and not exact.amount_mismatch

    run(scenario, redis_url)
    assert balance(redis_url) == 100_000
    assert tx(redis_url, "b1")["cancelled_by"] == "c1"
    assert tx(redis_url, "c1")["cancel_of"] == "b1"
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["adjust", "bet", "cancel", "cancel", "bet", "cancel"]


def test_cancel_of_unknown_bet_tombstones_then_bet_is_rejected(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        cancel = await change(ledger, "c1", 2, 30_000, cancel="late")
        assert (cancel.status, cancel.effect, cancel.balance_units) == (
            "applied",
            "tombstone",
            100_000,
        )
        late = await change(ledger, "late", 1, -30_000, bet=30_000)
        assert (late.status, late.code, late.msg) == ("rejected", 10010, "order cancelled")
        retry = await change(ledger, "late", 1, -30_000, bet=30_000)
        assert (retry.status, retry.code, retry.msg) == ("replay", 10010, "order cancelled")
        cancel_again = await change(ledger, "c2", 2, 30_000, cancel="late")
        assert cancel_again.effect == "noop"
        tomb2 = await change(ledger, "c3", 2, 1, cancel="never")
        assert tomb2.effect == "tombstone"
        noop = await change(ledger, "c4", 2, 1, cancel="never")
        assert noop.effect == "noop"

    run(scenario, redis_url)
    assert balance(redis_url) == 100_000
    assert tx(redis_url, "never")["state"] == "tombstone"
    assert tx(redis_url, "late")["state"] == "rejected"
    assert tx(redis_url, "late")["cancelled_by"] == "c1"
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["adjust", "tombstone", "reject", "cancel", "tombstone", "cancel"]


def test_a_tombstone_stays_one_after_the_first_request_that_hits_it(redis_url: str) -> None:
    """Every request on a tombstoned order_id gets 10010, whatever hit it first, and a cancel
    sent again later still finds a tombstone (code 1, nothing to refund)."""

    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        for cancel_id, bet_id in (("c1", "b1"), ("c2", "b2")):
            tombstone = await change(ledger, cancel_id, 2, 30_000, cancel=bet_id)
            assert tombstone.effect == "tombstone"
        # b1: first hit by a bet, then by a bet of another amount and by a payout.
        first = await change(ledger, "b1", 1, -30_000, bet=30_000)
        assert (first.status, first.code) == ("rejected", 10010)
        other = await change(ledger, "b1", 1, -40_000, bet=40_000)
        assert (other.status, other.code, other.msg) == ("rejected", 10010, "order cancelled")
        payout = await change(ledger, "b1", 3, 5_000, session_id="r1")
        assert (payout.status, payout.code) == ("rejected", 10010)
        # The first request's stored answer survives the others: its retry is a replay.
        first_again = await change(ledger, "b1", 1, -30_000, bet=30_000)
        assert (first_again.status, first_again.code) == ("replay", 10010)
        # b2: first hit by a payout, then the platform sends the cancel again with a new id.
        payout = await change(ledger, "b2", 3, 5_000, session_id="r2")
        assert (payout.status, payout.code) == ("rejected", 10010)
        again = await change(ledger, "c3", 2, 30_000, cancel="b2")
        assert (again.status, again.code, again.effect) == ("applied", 1, "noop")
        late = await change(ledger, "b2", 1, -30_000, bet=30_000)
        assert (late.status, late.code) == ("rejected", 10010)
        retry = await change(ledger, "b2", 3, 5_000, session_id="r2")
        assert (retry.status, retry.code) == ("replay", 10010)

    run(scenario, redis_url)
    assert balance(redis_url) == 100_000
    for bet_id, cancel_id, first_type in (("b1", "c1", "1"), ("b2", "c2", "3")):
        record = tx(redis_url, bet_id)
        assert (record["op"], record["cancelled_by"], record["code"], record["type"]) == (
            "tombstone",
            cancel_id,
            "10010",
            first_type,
        )
    # Only the first request on each tombstone stored (and journaled) its rejection.
    assert [r["kind"] for r in journal(redis_url)].count("reject") == 2


def test_cancel_of_settled_bet_is_rejected_and_stored(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        await change(ledger, "b1", 1, -10_000, bet=10_000, session_id="r1")
        await change(ledger, "b2", 1, -10_000, bet=10_000, session_id="r2")
        await change(ledger, "b3", 1, -10_000, bet=10_000, session_id="r3", end_round=True)
        await change(ledger, "w1", 3, 5_000, session_id="r1", awards=("b1",))
        await change(ledger, "w2", 4, 0, session_id="r2")
        for cancel_id, bet_id in (("c1", "b1"), ("c2", "b2"), ("c3", "b3")):
            result = await change(ledger, cancel_id, 2, 10_000, cancel=bet_id)
            assert (result.status, result.code, result.msg) == ("rejected", 10010, "order settled")
        replay = await change(ledger, "c1", 2, 10_000, cancel="b1")
        assert (replay.status, replay.code, replay.msg) == ("replay", 10010, "order settled")
        # a bet placed into a closed round is settled at once
        await change(ledger, "b4", 1, -1, bet=1, session_id="r2")
        late = await change(ledger, "c4", 2, 1, cancel="b4")
        assert late.code == 10010

    run(scenario, redis_url)
    assert balance(redis_url) == 100_000 - 30_000 + 5_000 - 1
    assert tx(redis_url, "b2")["settled_by"] == "w2"
    assert tx(redis_url, "b3")["settled_by"] == "b3"
    assert tx(redis_url, "b4")["settled_by"] == "w2"
    assert tx(redis_url, "c1")["state"] == "rejected"


def test_cancel_must_name_a_bet_or_fee(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        await change(ledger, "w1", 5, 100, session_id="")
        bad = await change(ledger, "c1", 2, 100, cancel="w1")
        assert bad.status == "bad_cancel"
        await change(ledger, "f1", 6, -100, session_id="")
        fee = await change(ledger, "c2", 2, 100, cancel="f1")
        assert (fee.effect, fee.balance_units) == ("refund", 100_100)
        cancel_of_cancel = await change(ledger, "c3", 2, 100, cancel="c2")
        assert cancel_of_cancel.status == "bad_cancel"

    run(scenario, redis_url)
    assert tx(redis_url, "c1") == {}
    assert [r["kind"] for r in journal(redis_url)] == ["adjust", "win", "bet", "cancel"]


def test_cancel_refunds_in_the_bets_currency(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 50_000, currency="usd")
        await change(ledger, "b1", 1, -20_000, bet=20_000, currency="usd")
        cancel = await change(ledger, "c1", 2, 20_000, cancel="b1")  # default currency usdt
        assert (cancel.effect, cancel.balance_units) == ("refund", 50_000)
        # A second cancel refunds nothing, and answers the same currency's balance.
        await fund(ledger, 7_000, ref="fund-usdt")  # so that the two balances differ
        again = await change(ledger, "c2", 2, 20_000, cancel="b1")
        assert (again.effect, again.balance_units) == ("noop", 50_000)

    run(scenario, redis_url)
    assert balance(redis_url, currency="usd") == 50_000
    assert tx(redis_url, "c1")["currency"] == "usd"
    assert tx(redis_url, "c2")["currency"] == "usd"


def test_award_anomalies(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        await change(ledger, "b1", 1, -10_000, bet=10_000, session_id="r1")
        await change(ledger, "b2", 1, -10_000, bet=10_000, session_id="r1")
        first = await change(ledger, "w1", 3, 1_000, session_id="r1", awards=("b1", "nope"))
        assert (first.unknown_bets, first.already_awarded) == (1, 0)
        second = await change(ledger, "w2", 4, 1_000, session_id="r1", awards=("b1", "b2", "w1"))
        assert (second.unknown_bets, second.already_awarded) == (1, 1)

    run(scenario, redis_url)
    assert tx(redis_url, "b1")["awarded_by"] == "w1"
    assert tx(redis_url, "b2")["awarded_by"] == "w2"
    assert tx(redis_url, "nope") == {}


def test_round_close_settles_only_unsettled_uncancelled_bets(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        await change(ledger, "b1", 1, -1_000, bet=1_000, session_id="r1")
        await change(ledger, "b2", 1, -1_000, bet=1_000, session_id="r1")
        await change(ledger, "c1", 2, 1_000, session_id="r1", cancel="b2")
        await change(ledger, "f1", 6, -500, session_id="r1")
        closed = await change(ledger, "x1", 5, 0, session_id="r1", end_round=True)
        assert closed.status == "applied"

    run(scenario, redis_url)
    assert tx(redis_url, "b1")["settled_by"] == "x1"
    assert "settled_by" not in tx(redis_url, "b2")
    assert tx(redis_url, "f1")["settled_by"] == "x1"


def test_stored_rejection_does_not_close_round(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 10)
        await change(ledger, "b1", 1, -5, bet=5, session_id="r1")
        low = await change(ledger, "b2", 1, -50, bet=50, session_id="r1", end_round=True)
        assert low.code == 10001
        replay = await change(ledger, "b2", 4, -50, bet=50, session_id="r1", end_round=True)
        assert replay.status == "replay" and not replay.replay_closed_round
        cancel = await change(ledger, "c1", 2, 5, cancel="b1")
        assert cancel.effect == "refund"

    run(scenario, redis_url)
    assert client(redis_url).hget(f"wg:{{{T}:{P}}}:round:r1", "closed") is None


def test_int64_limits(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, INT64_MAX - 10)
        top = await change(ledger, "w1", 5, 10, session_id="")
        assert top.balance_units == INT64_MAX
        over = await change(ledger, "w2", 5, 1, session_id="")
        assert (over.status, over.balance_units) == ("overflow", INT64_MAX)
        all_in = await change(ledger, "b1", 1, -INT64_MAX, bet=INT64_MAX)
        assert (all_in.status, all_in.balance_units) == ("applied", 0)
        huge = await change(ledger, "b2", 1, -(2**63), bet=0)
        assert huge.code == 10001
        await change(ledger, "w3", 5, INT64_MAX, session_id="")
        refund_over = await change(ledger, "c1", 2, 0, cancel="b1")
        assert refund_over.status == "overflow"

    run(scenario, redis_url)
    assert balance(redis_url) == INT64_MAX
    assert tx(redis_url, "w2") == {}
    assert tx(redis_url, "c1") == {}
    assert "cancelled_by" not in tx(redis_url, "b1")


def test_luck_protocol_recorded(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100)
        await change(ledger, "w1", 7, 100, session_id="", protocol="minigame_luck")

    run(scenario, redis_url)
    assert tx(redis_url, "w1")["protocol"] == "minigame_luck"
    assert journal(redis_url)[-1]["proto"] == "minigame_luck"


@pytest.mark.parametrize(
    "record",
    [
        {"state": "applied", "code": "1", "msg": "ok", "bal": "42891000"},
        {"state": "rejected", "code": "10001", "msg": "balance is not enough", "bal": "5"},
    ],
)
def test_stored_record_has_render_fields(record: dict[str, Any]) -> None:
    from walletgate.protocols.minigame import render_stored

    body = render_stored(record)
    if record["code"] == "1":
        assert body == {"data": {"balance": "4289.1"}, "code": 1, "msg": "ok"}
    else:
        assert body == {"code": 10001, "msg": "balance is not enough"}
