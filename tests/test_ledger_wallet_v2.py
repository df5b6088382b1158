from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from ledger_helpers import make_ledger
from walletgate.ledger import keys, wallet_v2
from walletgate.ledger.admin import adjust
from walletgate.ledger.core import Ledger
from walletgate.ledger.sessions import register_session

T = "agent_1"
P = "usr-1"
CUR = "USD"
UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1


def run(scenario: Callable[[Ledger], Awaitable[None]], url: str) -> None:
    async def main() -> None:
        ledger = make_ledger(url)
        try:
            await scenario(ledger)
        finally:
            await ledger.runner.close()

    asyncio.run(main())


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def journal(url: str) -> list[dict[str, str]]:
    c = client(url)
    records = [entry for stream in c.keys("wg:{j*}:journal") for _, entry in c.xrange(stream)]
    return sorted(records, key=lambda r: int(r["seq"]))


def tx(url: str, key: str, player: str = P) -> dict[str, str]:
    return client(url).hgetall(f"wg:{{{T}:{player}}}:tx:{key}")


def bal(url: str, player: str = P, currency: str = CUR) -> int:
    return int(client(url).hget(f"wg:{{{T}:{player}}}:acct", f"bal:{currency}") or 0)


async def fund(ledger: Ledger, units: int, player: str = P, currency: str = CUR) -> None:
    result = await adjust(
        ledger,
        tenant=T,
        player=player,
        currency=currency,
        amount_units=units,
        ref=f"fund-{player}-{currency}-{units}",
        kind="adjust",
    )
    assert result.outcome == "applied"


async def do_bet(
    ledger: Ledger,
    bet_id: int,
    cents: int,
    round_id: int | None = None,
    player: str = P,
    currency: str = CUR,
) -> wallet_v2.WalletResult:
    return await wallet_v2.bet(
        ledger,
        tenant=T,
        player=player,
        currency=currency,
        bet_id=bet_id,
        amount_units=cents * 100,
        round_id=round_id,
    )


async def do_win(
    ledger: Ledger,
    win_id: int,
    cents: int,
    round_id: int | None = None,
    player: str = P,
    currency: str = CUR,
) -> wallet_v2.WalletResult:
    return await wallet_v2.win(
        ledger,
        tenant=T,
        player=player,
        currency=currency,
        win_id=win_id,
        amount_units=cents * 100,
        round_id=round_id,
    )


async def do_cancel(
    ledger: Ledger, bet_id: int, player: str = P, currency: str = CUR
) -> wallet_v2.WalletResult:
    return await wallet_v2.cancel(ledger, tenant=T, player=player, currency=currency, bet_id=bet_id)


def test_balance_unknown_and_known(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        assert await wallet_v2.balance(ledger, tenant=T, player=P, currency=CUR) is None
        await register_session(ledger, tenant=T, player=P, currency=CUR, token="c1", ttl_s=60)
        assert await wallet_v2.balance(ledger, tenant=T, player=P, currency=CUR) == 0
        await fund(ledger, 1_000_000)
        assert await wallet_v2.balance(ledger, tenant=T, player=P, currency=CUR) == 1_000_000

    run(scenario, redis_url)
    assert journal(redis_url)[-1]["kind"] == "adjust"


def test_bet_happy_replay_conflict(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000 * 100)
        first = await do_bet(ledger, 3, 500)
        assert (first.outcome, first.code, first.balance_units, first.kind) == (
            "stored",
            "1",
            99_500 * 100,
            "bet",
        )
        replay = await do_bet(ledger, 3, 500)
        assert (replay.outcome, replay.code, replay.balance_units) == ("replay", "1", 99_500 * 100)
        assert replay.created_us == first.created_us
        other_amount = await do_bet(ledger, 3, 501)
        assert (other_amount.outcome, other_amount.code) == ("conflict", "DUPLICATE_ID")
        assert other_amount.balance_units == 99_500 * 100
        other_round = await do_bet(ledger, 3, 500, round_id=3)
        assert other_round.outcome == "conflict"
        as_win = await do_win(ledger, 3, 500)
        assert as_win.outcome == "conflict"

    run(scenario, redis_url)
    assert bal(redis_url) == 99_500 * 100
    records = journal(redis_url)
    assert [r["kind"] for r in records] == ["adjust", "bet"]
    bet_record = records[1]
    assert bet_record["key"] == "USD:3" and bet_record["proto"] == "wallet_v2"
    assert bet_record["delta"] == "-50000" and bet_record["result"] == "1"
    assert json.loads(bet_record["refs"]) == {"id": 3}
    stored = tx(redis_url, "USD:3")
    assert stored["state"] == "applied" and stored["code"] == "1" and stored["op"] == "bet"
    assert stored["round"] == "3" and stored["amount"] == "50000"
    assert client(redis_url).hget(f"wg:{{{T}:{P}}}:round:USD:3", "bet:3") == "open"
    assert client(redis_url).ttl(f"wg:{{{T}:{P}}}:tx:USD:3") > 600_000


def test_bet_insufficient_funds_is_stored(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 400 * 100)
        refused = await do_bet(ledger, 7, 500)
        assert (refused.outcome, refused.code, refused.balance_units, refused.kind) == (
            "stored",
            "INSUFFICIENT_FUNDS",
            40_000,
            "reject",
        )
        await fund(ledger, 1_000 * 100)
        again = await do_bet(ledger, 7, 500)
        assert (again.outcome, again.code, again.balance_units) == (
            "replay",
            "INSUFFICIENT_FUNDS",
            40_000,
        )
        exact = await do_bet(ledger, 8, 1_400)
        assert (exact.code, exact.balance_units) == ("1", 0)
        zero = await do_bet(ledger, 9, 0)
        assert (zero.code, zero.balance_units) == ("1", 0)

    run(scenario, redis_url)
    assert bal(redis_url) == 0
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["adjust", "reject", "adjust", "bet", "bet"]
    assert tx(redis_url, "USD:7")["state"] == "rejected"


def test_unknown_player_writes_nothing(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        assert (await do_bet(ledger, 1, 0)).outcome == "unknown"
        assert (await do_win(ledger, 2, 10, round_id=1)).outcome == "unknown"
        assert (await do_cancel(ledger, 1)).outcome == "unknown"

    run(scenario, redis_url)
    assert client(redis_url).dbsize() == 0


def test_win_credits_and_settles_round(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 1_000 * 100)
        await do_bet(ledger, 85, 100, round_id=85)
        await do_bet(ledger, 87, 100, round_id=85)
        won = await do_win(ledger, 86, 50, round_id=85)
        assert (won.outcome, won.code, won.balance_units, won.kind) == (
            "stored",
            "1",
            850 * 100,
            "win",
        )
        assert (await do_win(ledger, 86, 50, round_id=85)).outcome == "replay"
        zero_alternative = await do_win(ledger, 86, 0, round_id=85)
        assert (zero_alternative.outcome, zero_alternative.code) == ("conflict", "DUPLICATE_ID")
        settled = await do_cancel(ledger, 85)
        assert (settled.outcome, settled.code, settled.balance_units, settled.kind) == (
            "stored",
            "SETTLED",
            850 * 100,
            "reject",
        )
        assert (await do_cancel(ledger, 85)).code == "SETTLED"
        # A bet joining a round that is already settled is settled from the start.
        await do_bet(ledger, 88, 10, round_id=85)
        assert (await do_cancel(ledger, 88)).code == "SETTLED"

    run(scenario, redis_url)
    assert bal(redis_url) == 840 * 100
    assert tx(redis_url, "USD:85")["settled_by"] == "USD:86"
    assert tx(redis_url, "USD:87")["settled_by"] == "USD:86"
    assert tx(redis_url, "USD:88")["settled_by"] == "USD:86"
    assert tx(redis_url, "USD:85:cancel")["state"] == "rejected"
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["adjust", "bet", "bet", "win", "reject", "bet", "reject"]


def test_zero_win_closes_round_and_win_without_round_settles_nothing(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 1_000 * 100)
        await do_bet(ledger, 10, 100)  # round 10 (its own id)
        await do_bet(ledger, 20, 100)  # round 20
        free = await do_win(ledger, 11, 300)  # no round_id: settles nothing
        assert (free.code, free.balance_units, free.kind) == ("1", 1_100 * 100, "win")
        close = await do_win(ledger, 12, 0, round_id=10)
        assert (close.code, close.balance_units, close.kind) == ("1", 1_100 * 100, "close")
        assert (await do_cancel(ledger, 10)).code == "SETTLED"
        refund = await do_cancel(ledger, 20)
        assert (refund.code, refund.balance_units, refund.kind) == ("1", 1_200 * 100, "cancel")

    run(scenario, redis_url)
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["adjust", "bet", "bet", "win", "close", "reject", "cancel"]


def test_cancel_refunds_original_bet_and_replays(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000 * 100)
        await do_bet(ledger, 3, 500, round_id=1)
        first = await do_cancel(ledger, 3)
        assert (first.outcome, first.code, first.balance_units, first.kind) == (
            "stored",
            "1",
            100_000 * 100,
            "cancel",
        )
        await do_bet(ledger, 4, 100)
        repeat = await do_cancel(ledger, 3)
        assert (repeat.outcome, repeat.code, repeat.balance_units) == ("replay", "1", 100_000 * 100)
        # The bet itself still replays its original answer.
        assert (await do_bet(ledger, 3, 500, round_id=1)).outcome == "replay"
        # A later win in the bet's round does not mark the cancelled bet settled.
        await do_win(ledger, 5, 10, round_id=1)

    run(scenario, redis_url)
    assert bal(redis_url) == (100_000 - 100 + 10) * 100
    bet_record = tx(redis_url, "USD:3")
    assert bet_record["cancelled_by"] == "USD:3:cancel" and "settled_by" not in bet_record
    assert client(redis_url).hget(f"wg:{{{T}:{P}}}:round:USD:1", "bet:3") == "cancelled"
    cancel_record = tx(redis_url, "USD:3:cancel")
    assert cancel_record["delta"] == "50000" and cancel_record["target"] == "USD:3"
    assert [r["kind"] for r in journal(redis_url)] == ["adjust", "bet", "cancel", "bet", "win"]


def test_cancel_unknown_writes_tombstone_then_bet_and_win_get_cancelled(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 1_000 * 100)
        tomb = await do_cancel(ledger, 5)
        assert (tomb.outcome, tomb.code, tomb.balance_units, tomb.kind) == (
            "stored",
            "1",
            1_000 * 100,
            "tombstone",
        )
        late_bet = await do_bet(ledger, 5, 100, round_id=85)
        assert (late_bet.outcome, late_bet.code, late_bet.balance_units, late_bet.kind) == (
            "stored",
            "CANCELLED",
            1_000 * 100,
            "reject",
        )
        assert (await do_bet(ledger, 5, 100, round_id=85)).outcome == "replay"
        # The key stays cancelled for every other request too, not a DUPLICATE_ID.
        other = await do_bet(ledger, 5, 200, round_id=85)
        assert (other.outcome, other.code, other.balance_units) == (
            "cancelled",
            "CANCELLED",
            1_000 * 100,
        )
        assert (await do_win(ledger, 5, 70, round_id=85)).outcome == "cancelled"
        # The first request's stored answer survives the others: its retry is a replay.
        assert (await do_bet(ledger, 5, 100, round_id=85)).outcome == "replay"
        assert (await do_cancel(ledger, 5)).outcome == "replay"
        await do_cancel(ledger, 6)
        late_win = await do_win(ledger, 6, 70, round_id=85)
        assert (late_win.code, late_win.balance_units) == ("CANCELLED", 1_000 * 100)

    run(scenario, redis_url)
    assert bal(redis_url) == 1_000 * 100
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["adjust", "tombstone", "reject", "tombstone", "reject"]
    bet_record = tx(redis_url, "USD:5")
    assert bet_record["state"] == "rejected" and bet_record["code"] == "CANCELLED"
    assert (bet_record["op"], bet_record["tombstoned"]) == ("tombstone", "1")
    assert bet_record["cancelled_by"] == "USD:5:cancel"
    # The tombstone record (before the bet) is what the journal's fx carries.
    fx = json.loads(journal(redis_url)[1]["fx"])
    assert ["tx:USD:5", "state", "tombstone", "604800"] in fx


def test_cancel_of_win_is_bad_request_and_of_rejection_is_noop(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100 * 100)
        await do_win(ledger, 4, 1_000)
        of_win = await do_cancel(ledger, 4)
        assert (of_win.outcome, of_win.code, of_win.balance_units) == (
            "win",
            "BAD_REQUEST",
            1_100 * 100,
        )
        await do_bet(ledger, 9, 5_000)  # INSUFFICIENT_FUNDS, stored
        noop = await do_cancel(ledger, 9)
        assert (noop.outcome, noop.code, noop.balance_units, noop.kind) == (
            "stored",
            "1",
            1_100 * 100,
            "cancel",
        )

    run(scenario, redis_url)
    assert not tx(redis_url, "USD:4:cancel")
    kinds = [r["kind"] for r in journal(redis_url)]
    assert kinds == ["adjust", "win", "reject", "cancel"]


def test_currency_is_part_of_the_key(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 1_000 * 100, currency="USD")
        await fund(ledger, 1_000 * 100, currency="UAH")
        assert (await do_bet(ledger, 123, 100, currency="USD")).code == "1"
        uah = await do_bet(ledger, 123, 200, currency="UAH")
        assert (uah.outcome, uah.balance_units) == ("stored", 800 * 100)

    run(scenario, redis_url)
    assert bal(redis_url, currency="USD") == 900 * 100
    assert bal(redis_url, currency="UAH") == 800 * 100


def test_uint64_ids_exact_and_int64_limits(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, INT64_MAX - 100)
        top = await do_bet(ledger, UINT64_MAX, 1, round_id=UINT64_MAX - 1)
        assert top.balance_units == INT64_MAX - 200
        near = await do_bet(ledger, UINT64_MAX - 1, 1)
        assert near.outcome == "stored"  # a different id, not a float-collapsed duplicate
        max_win = await wallet_v2.win(
            ledger, tenant=T, player=P, currency=CUR, win_id=1, amount_units=300, round_id=None
        )
        assert (max_win.code, max_win.balance_units) == ("1", INT64_MAX)
        over = await wallet_v2.win(
            ledger, tenant=T, player=P, currency=CUR, win_id=2, amount_units=1, round_id=None
        )
        assert (over.outcome, over.balance_units) == ("overflow", INT64_MAX)
        # A refund that would overflow is not applied either.
        over_cancel = await do_cancel(ledger, UINT64_MAX)
        assert (over_cancel.outcome, over_cancel.balance_units) == ("overflow", INT64_MAX)

    run(scenario, redis_url)
    assert bal(redis_url) == INT64_MAX
    assert tx(redis_url, f"USD:{UINT64_MAX}")["round"] == str(UINT64_MAX - 1)
    assert not tx(redis_url, "USD:2") and not tx(redis_url, f"USD:{UINT64_MAX}:cancel")
    assert [r["kind"] for r in journal(redis_url)] == ["adjust", "bet", "bet", "win"]


def test_every_key_stays_under_the_player_tag(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 1_000 * 100)
        await do_bet(ledger, 1, 10, round_id=1)
        await do_win(ledger, 2, 10, round_id=1)
        await do_cancel(ledger, 3)

    run(scenario, redis_url)
    # The funding adjustment's ref claim is the tenant's, under a tag of its own (one key per
    # claim script call, so that script is cluster-safe on its own).
    claim = keys.admin_claim_key(T, "")
    for key in client(redis_url).keys("*"):
        assert key.startswith((f"wg:{{{T}:{P}}}:", "wg:{j", claim)), key


def test_session_cache_hits_bounds_and_rechecks_expired(redis_url: str) -> None:
    now = [1000.0]
    calls: list[Any] = []

    async def scenario(ledger: Ledger) -> None:
        real_run = ledger.runner.run

        async def counting_run(script: Any, keys: Any, args: Any) -> Any:
            calls.append(script.name)
            return await real_run(script, keys, args)

        ledger.runner.run = counting_run  # type: ignore[method-assign]
        cache = wallet_v2.SessionCache(ledger, max_entries=2, ttl_s=3.0, clock=lambda: now[0])
        for token in ("a", "b", "c"):
            await register_session(ledger, tenant=T, player=P, currency=CUR, token=token, ttl_s=60)
        calls.clear()
        assert (await cache.lookup(T, "a", need_unexpired=True)).player == P  # type: ignore[union-attr]
        await cache.lookup(T, "a", need_unexpired=True)
        assert calls.count("session_get") == 1
        now[0] += 3.5  # past the cache TTL
        await cache.lookup(T, "a", need_unexpired=True)
        assert calls.count("session_get") == 2
        await cache.lookup(T, "b", need_unexpired=True)
        await cache.lookup(T, "c", need_unexpired=True)
        assert len(cache) == 2
        assert await cache.lookup(T, "zzz", need_unexpired=False) is None
        assert len(cache) == 2
        # An entry that looks expired is looked up again when an unexpired session is needed.
        calls.clear()
        later = 10**10
        await cache.lookup(T, "c", need_unexpired=False, now_s=later)
        assert calls.count("session_get") == 0
        info = await cache.lookup(T, "c", need_unexpired=True, now_s=later)
        assert calls.count("session_get") == 1 and info is not None and info.expired(later)

    run(scenario, redis_url)
