"""MINI.GAME transfer wallet on the ledger: tokens, transfer states, ptx_id, status, balances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from ledger_helpers import make_ledger
from walletgate.ledger import transfer as lt
from walletgate.ledger.admin import adjust
from walletgate.ledger.core import Ledger

T = "1005"
INT64_MAX = 2**63 - 1


def run(scenario: Callable[[Ledger], Awaitable[Any]], url: str) -> Any:
    async def wrapper() -> Any:
        ledger = make_ledger(url)
        try:
            return await scenario(ledger)
        finally:
            await ledger.runner.close()

    return asyncio.run(wrapper())


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def journal(url: str) -> list[dict[str, str]]:
    client = sync_client(url)
    records = [fields for key in client.keys("wg:{j*}:journal") for _, fields in client.xrange(key)]
    return sorted(records, key=lambda r: (r["player"], r["currency"], int(r["seq"])))


async def fund(ledger: Ledger, player: str, units: int, currency: str = "usdt") -> None:
    result = await adjust(
        ledger,
        tenant=T,
        player=player,
        currency=currency,
        amount_units=units,
        ref=f"fund-{player}-{units}",
        kind="adjust",
    )
    assert result.outcome == "applied"


async def move(
    ledger: Ledger,
    player: str,
    units: int,
    tx_id: str,
    currency: str = "usdt",
    mode: lt.TransferMode = "apply",
    pending_ttl_s: int = 30,
) -> lt.TransferResult:
    return await lt.transfer(
        ledger,
        tenant=T,
        player=player,
        currency=currency,
        amount_units=units,
        tx_id=tx_id,
        refs={"tx_id": tx_id},
        pending_ttl_s=pending_ttl_s,
        mode=mode,
    )


def test_player_code_is_injective_and_decimal() -> None:
    assert lt.player_code("1006417") == "11006417"
    assert lt.player_code("p1") == "2112049"
    assert lt.player_code("é") == "2195169"
    codes = {lt.player_code(p) for p in ["1", "01", "10", "a", "b", "ab", "1a", "112049", "p1"]}
    assert len(codes) == 9
    assert all(code.isdigit() for code in codes)


def test_authorize_creates_player_once_and_issues_new_tokens(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        cache = lt.TokenCache()
        first = await lt.authorize(
            ledger, tenant=T, player="u1", default_currency="usdt", ttl_s=604_800, cache=cache
        )
        assert first.balance_units == 0
        await fund(ledger, "u1", 427_662_500)
        second = await lt.authorize(
            ledger, tenant=T, player="u1", default_currency="usdt", ttl_s=604_800
        )
        assert second.balance_units == 427_662_500
        assert first.token != second.token
        # Both tokens stay valid; the second one is not cached, so it comes from Redis.
        assert await lt.lookup_token(ledger, tenant=T, token=first.token, cache=cache) == "u1"
        assert await lt.lookup_token(ledger, tenant=T, token=second.token, cache=cache) == "u1"
        assert len(cache) == 2
        assert await lt.lookup_token(ledger, tenant=T, token=second.token) == "u1"
        # Bound to the appid, and unknown or key-breaking tokens are refused without a lookup.
        assert await lt.lookup_token(ledger, tenant="10013", token=first.token) is None
        assert await lt.lookup_token(ledger, tenant=T, token="nope") is None
        assert await lt.lookup_token(ledger, tenant=T, token="a}b") is None
        assert await lt.lookup_token(ledger, tenant=T, token="") is None

    run(scenario, redis_url)
    client = sync_client(redis_url)
    assert client.hget("wg:{1005:u1}:acct", "bal:usdt") == "427662500"
    tokens = client.keys("wg:{ttok:1005:*}")
    assert len(tokens) == 2
    assert 604_790 <= client.ttl(tokens[0]) <= 604_800
    # authorize moves no money: only the funding is journaled.
    assert [r["kind"] for r in journal(redis_url)] == ["adjust"]


def test_expired_token_is_refused_even_from_the_cache(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> None:
        cache = lt.TokenCache()
        cache.put(T, "old", lt.TokenInfo(player="u1", expires_at_s=int(time.time()) - 1))
        assert await lt.lookup_token(ledger, tenant=T, token="old", cache=cache) is None
        assert len(cache) == 0
        client = sync_client(redis_url)
        client.hset("wg:{ttok:1005:stale}", mapping={"player": "u1", "expires_at": "1"})
        assert await lt.lookup_token(ledger, tenant=T, token="stale", cache=cache) is None

    run(scenario, redis_url)


def test_token_cache_is_bounded() -> None:
    cache = lt.TokenCache(max_entries=3)
    far = int(time.time()) + 100
    for index in range(5):
        cache.put(T, f"t{index}", lt.TokenInfo(player="u", expires_at_s=far))
    assert len(cache) == 3
    now = time.time()
    assert cache.get(T, "t0", now) is None
    assert cache.get(T, "t4", now) is not None


def test_transfer_in_out_replay_conflict_and_rejection(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> list[lt.TransferResult]:
        await lt.authorize(ledger, tenant=T, player="u1", default_currency="usdt", ttl_s=60)
        results = [
            await move(ledger, "u1", 10_000_100, "etx-in"),  # +1000.01
            await move(ledger, "u1", -4_000_000, "etx-out"),  # -400
            await move(ledger, "u1", 10_000_100, "etx-in"),  # replay
            await move(ledger, "u1", 10_000_200, "etx-in"),  # conflict (amount)
            await move(ledger, "u1", 10_000_100, "etx-in", currency="usd"),  # conflict (currency)
            await move(ledger, "u1", -7_000_000, "etx-big"),  # 700 > 600.01: rejected, stored
            await move(ledger, "u1", -7_000_000, "etx-big"),  # replay of the rejection
            await move(ledger, "u1", 1, "etx-after"),
        ]
        return results

    results = run(scenario, redis_url)
    applied_in, applied_out, replay, conflict, conflict2, rejected, rejected_again, after = results
    assert (applied_in.outcome, applied_in.state, applied_in.code) == ("applied", "applied", 0)
    assert applied_in.balance_units == 10_000_100
    assert applied_in.ptx_id == "1" + "1" + lt.player_code("u1")
    assert (applied_out.outcome, applied_out.balance_units) == ("applied", 6_000_100)
    assert applied_out.ptx_id == "12" + lt.player_code("u1")
    assert (replay.outcome, replay.state, replay.code) == ("replay", "applied", 0)
    assert (replay.ptx_id, replay.balance_units) == (applied_in.ptx_id, 10_000_100)
    assert conflict.outcome == conflict2.outcome == "conflict"
    assert conflict.state is None
    assert (rejected.outcome, rejected.state, rejected.code) == ("rejected", "rejected", 10001)
    assert rejected.balance_units == 6_000_100
    assert rejected.ptx_id == "13" + lt.player_code("u1")
    assert (rejected_again.outcome, rejected_again.state, rejected_again.code) == (
        "replay",
        "rejected",
        10001,
    )
    assert rejected_again.ptx_id == rejected.ptx_id
    assert after.ptx_id == "14" + lt.player_code("u1")
    assert after.balance_units == 6_000_101

    client = sync_client(redis_url)
    assert client.hget("wg:{1005:u1}:acct", "bal:usdt") == "6000101"
    stored = client.hgetall("wg:{1005:u1}:tx:etx-big")
    assert stored["state"] == "rejected" and stored["code"] == "10001"
    assert stored["amount"] == "-7000000" and stored["delta"] == "0"
    assert stored["protocol"] == "transfer" and stored["op"] == "transfer"
    assert stored["tx_id"] == "etx-big" and stored["player"] == "u1"
    assert client.ttl("wg:{1005:u1}:tx:etx-big") > 604_000
    records = journal(redis_url)
    # Four stored outcomes; replays and conflicts write nothing.
    assert [(r["kind"], r["delta"], r["bal"], r["result"], r["key"]) for r in records] == [
        ("transfer", "10000100", "10000100", "0", "etx-in"),
        ("transfer", "-4000000", "6000100", "0", "etx-out"),
        ("reject", "0", "6000100", "10001", "etx-big"),
        ("transfer", "1", "6000101", "0", "etx-after"),
    ]
    assert [r["seq"] for r in records] == ["1", "2", "3", "4"]
    assert all(r["proto"] == "transfer" for r in records)


def test_exact_balance_can_be_transferred_out(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> lt.TransferResult:
        await fund(ledger, "u2", 5)
        return await move(ledger, "u2", -5, "all")

    result = run(scenario, redis_url)
    assert (result.outcome, result.balance_units) == ("applied", 0)


def test_unknown_player_writes_nothing(redis_url: str) -> None:
    result = run(lambda ledger: move(ledger, "ghost", 100, "t1"), redis_url)
    assert result.outcome == "unknown"
    assert sync_client(redis_url).keys("*") == []


def test_int64_limits_exact_and_overflow_rejected(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> list[lt.TransferResult]:
        await lt.authorize(ledger, tenant=T, player="big", default_currency="usdt", ttl_s=60)
        return [
            await move(ledger, "big", INT64_MAX, "max"),
            await move(ledger, "big", 1, "one-more"),
            await move(ledger, "big", -INT64_MAX, "all-out"),
            await move(ledger, "big", -(2**63), "min"),
        ]

    top, over, out, too_much = run(scenario, redis_url)
    assert (top.outcome, top.balance_units) == ("applied", INT64_MAX)
    assert (over.outcome, over.balance_units) == ("overflow", INT64_MAX)
    assert (out.outcome, out.balance_units) == ("applied", 0)
    assert (too_much.outcome, too_much.state, too_much.balance_units) == ("rejected", "rejected", 0)
    client = sync_client(redis_url)
    assert client.hget("wg:{1005:big}:acct", "bal:usdt") == "0"
    assert not client.exists("wg:{1005:big}:tx:one-more")
    assert [r["kind"] for r in journal(redis_url)] == ["transfer", "transfer", "reject"]


def test_ptx_ids_are_unique_per_tenant_across_players(redis_url: str) -> None:
    players = ["1", "11", "111", "1a", "a", "u1"]

    async def scenario(ledger: Ledger) -> list[str]:
        ids = []
        for player in players:
            await fund(ledger, player, 1_000)
            for index in range(12):
                ids.append((await move(ledger, player, 1, f"tx{index}")).ptx_id)
        return ids

    ids = run(scenario, redis_url)
    assert len(ids) == len(set(ids)) == 72
    assert all(ptx.isdigit() and ptx[0] != "0" for ptx in ids)


def test_ptx_counter_exhaustion_writes_nothing(redis_url: str) -> None:
    client = sync_client(redis_url)

    async def scenario(ledger: Ledger) -> lt.TransferResult:
        await fund(ledger, "u3", 100)
        client.hset("wg:{1005:u3}:acct", "ptx_n", "999999999")
        return await move(ledger, "u3", 1, "late")

    assert run(scenario, redis_url).outcome == "exhausted"
    assert client.hget("wg:{1005:u3}:acct", "bal:usdt") == "100"
    assert not client.exists("wg:{1005:u3}:tx:late")


def test_status_reads_the_stored_state_for_the_owner_only(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> list[Any]:
        await fund(ledger, "u1", 10_000)
        await fund(ledger, "u2", 10_000)
        await move(ledger, "u1", 10_000_100, "ok")
        await move(ledger, "u1", -99_999_999, "fail")
        return [
            await lt.transfer_status(ledger, tenant=T, player="u1", tx_id="ok"),
            await lt.transfer_status(ledger, tenant=T, player="u1", tx_id="fail"),
            await lt.transfer_status(ledger, tenant=T, player="u2", tx_id="ok"),
            await lt.transfer_status(ledger, tenant=T, player="u1", tx_id="never"),
            await lt.wallet_balance(ledger, tenant=T, player="u1", currency="usdt"),
            await lt.wallet_balance(ledger, tenant=T, player="u1", currency="usd"),
            await lt.wallet_balance(ledger, tenant=T, player="nobody", currency="usdt"),
        ]

    ok, fail, other, never, balance, other_currency, unknown = run(scenario, redis_url)
    assert ok == lt.TransferStatus(state="applied", currency="usdt", amount_units=10_000_100)
    assert fail == lt.TransferStatus(state="rejected", currency="usdt", amount_units=-99_999_999)
    assert other is None and never is None
    assert balance == 10_010_100
    assert other_currency == 0
    assert unknown is None


def test_pending_marker_answers_state_2_until_commit(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> list[Any]:
        await fund(ledger, "u1", 50_000)
        admitted = await move(ledger, "u1", -20_000, "p1", mode="admit")
        during = await move(ledger, "u1", -20_000, "p1")  # a retry while pending
        conflict = await move(ledger, "u1", -20_001, "p1")
        status_during = await lt.transfer_status(ledger, tenant=T, player="u1", tx_id="p1")
        balance_during = await lt.wallet_balance(ledger, tenant=T, player="u1", currency="usdt")
        committed = await move(ledger, "u1", -20_000, "p1", mode="commit")
        status_after = await lt.transfer_status(ledger, tenant=T, player="u1", tx_id="p1")
        replay = await move(ledger, "u1", -20_000, "p1")
        next_one = await move(ledger, "u1", 1, "p2")
        return [
            admitted,
            during,
            conflict,
            status_during,
            balance_during,
            committed,
            status_after,
            replay,
            next_one,
        ]

    (
        admitted,
        during,
        conflict,
        status_during,
        balance_during,
        committed,
        status_after,
        replay,
        next_one,
    ) = run(scenario, redis_url)
    assert (admitted.outcome, admitted.state, admitted.code) == ("pending", "pending", 0)
    assert (during.outcome, during.state, during.ptx_id) == ("pending", "pending", admitted.ptx_id)
    assert conflict.outcome == "conflict"
    assert status_during.state == "pending" and status_during.amount_units == -20_000
    assert balance_during == 50_000
    assert (committed.outcome, committed.state) == ("applied", "applied")
    assert committed.ptx_id == admitted.ptx_id
    assert committed.balance_units == 30_000
    assert status_after.state == "applied"
    assert (replay.outcome, replay.ptx_id) == ("replay", admitted.ptx_id)
    assert next_one.ptx_id == "12" + lt.player_code("u1")
    client = sync_client(redis_url)
    assert client.ttl("wg:{1005:u1}:tx:p1") > 604_000
    records = journal(redis_url)
    assert [r["kind"] for r in records] == ["adjust", "transfer", "transfer"]
    # The commit records the ptx counter, so a rebuild does not hand the number out again.
    assert '"ptx_n","1"' in records[1]["fx"]


def test_pending_marker_expires_then_tx_id_may_be_sent_again(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> list[Any]:
        await fund(ledger, "u1", 50_000)
        admitted = await move(ledger, "u1", 5, "gone", mode="admit", pending_ttl_s=1)
        await asyncio.sleep(1.2)
        status = await lt.transfer_status(ledger, tenant=T, player="u1", tx_id="gone")
        again = await move(ledger, "u1", 5, "gone")
        return [admitted, status, again]

    admitted, status, again = run(scenario, redis_url)
    assert admitted.outcome == "pending"
    assert status is None
    assert (again.outcome, again.balance_units) == ("applied", 50_005)
    assert again.ptx_id != admitted.ptx_id


def test_concurrent_retries_apply_once(redis_url: str) -> None:
    async def scenario(ledger: Ledger) -> list[lt.TransferResult]:
        await fund(ledger, "u1", 1_000)
        return list(await asyncio.gather(*(move(ledger, "u1", -600, "race") for _ in range(20))))

    results = run(scenario, redis_url)
    assert sorted(r.outcome for r in results) == ["applied"] + ["replay"] * 19
    assert {r.ptx_id for r in results} == {results[0].ptx_id}
    assert sync_client(redis_url).hget("wg:{1005:u1}:acct", "bal:usdt") == "400"
