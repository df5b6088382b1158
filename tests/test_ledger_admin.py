from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis

from ledger_helpers import make_ledger
from test_journal_writer import write_config_file
from walletgate.journal import replay
from walletgate.ledger import admin, claims, core, keys, transfer
from walletgate.ledger.admin import AdjustResult, adjust
from walletgate.ledger.core import Ledger


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def usd_adjust(
    ledger: Ledger, tenant: str, player: str, ref: str, amount_units: int
) -> AdjustResult:
    """A plain adjustment in usd."""
    return await adjust(
        ledger,
        tenant=tenant,
        player=player,
        currency="usd",
        amount_units=amount_units,
        ref=ref,
        kind="adjust",
    )


def test_adjust_credit_replay_conflict_and_debit(redis_url: str) -> None:
    async def scenario() -> None:
        ledger = make_ledger(redis_url)
        first = await usd_adjust(ledger, "t1", "p1", "r1", 1_000_000)
        assert (first.outcome, first.balance_units) == ("applied", 1_000_000)
        second = await usd_adjust(ledger, "t1", "p1", "r2", 500)
        assert second.balance_units == 1_000_500
        replay = await usd_adjust(ledger, "t1", "p1", "r1", 1_000_000)
        assert (replay.outcome, replay.balance_units) == ("replay", 1_000_000)
        conflict = await usd_adjust(ledger, "t1", "p1", "r1", 7)
        assert conflict.outcome == "conflict"
        too_much = await usd_adjust(ledger, "t1", "p1", "r3", -2_000_000)
        assert (too_much.outcome, too_much.balance_units) == ("insufficient", 1_000_500)
        assert too_much.rejected and not replay.rejected
        # The rejection is stored: once the balance covers the debit, the ref still answers it.
        await usd_adjust(ledger, "t1", "p1", "r4", 5_000_000)
        again = await usd_adjust(ledger, "t1", "p1", "r3", -2_000_000)
        assert (again.outcome, again.balance_units, again.rejected) == ("replay", 1_000_500, True)
        other = await usd_adjust(ledger, "t1", "p1", "r3", -1)
        assert other.outcome == "conflict"
        await ledger.runner.close()

    run(scenario())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget("wg:{t1:p1}:acct", "bal:usd") == "6000500"
    assert client.hget("wg:{t1:p1}:acct", "seq:usd") == "4"
    rejection = client.hgetall(keys.admin_record_key("t1", "p1", "r3"))
    assert (rejection["state"], rejection["code"], rejection["delta"], rejection["bal"]) == (
        "rejected",
        "insufficient_funds",
        "0",
        "1000500",
    )
    assert client.ttl(keys.admin_record_key("t1", "p1", "r3")) > 0
    streams = [k for k in client.keys("wg:{j*}:journal")]
    records = [entry[1] for stream in streams for entry in client.xrange(stream)]
    assert [(r["kind"], r["result"]) for r in records] == [
        ("adjust", "ok"),
        ("adjust", "ok"),
        ("reject", "insufficient_funds"),
        ("adjust", "ok"),
    ]


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


def test_adjustments_and_protocol_keys_named_admin_never_collide(redis_url: str) -> None:
    """A transfer tx_id (or an order_id) may be "admin:<ref>", the transaction key of an
    adjustment: neither may answer for the other or block it. Adjustments stored before they
    had keys of their own (under tx:admin:<ref>) still replay."""

    async def credit(ref: str, amount_units: int = 50_000) -> str:
        result = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=amount_units,
            ref=ref,
            kind="adjust",
        )
        return result.outcome

    async def move(tx_id: str) -> tuple[str, int]:
        result = await transfer.transfer(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=-5_000,
            tx_id=tx_id,
            refs={"tx_id": tx_id},
            pending_ttl_s=30,
        )
        return result.outcome, result.code

    async def scenario() -> None:
        nonlocal ledger
        ledger = make_ledger(redis_url)
        assert await credit("r1") == "applied"
        assert await move("admin:r1") == ("applied", 0)
        assert await move("admin:r2") == ("applied", 0)
        assert await credit("r2") == "applied"
        assert await credit("r2") == "replay"
        # An adjustment kept the old way, with the fingerprint adjust() computes.
        fingerprint = core.fingerprint("p1", "usd", "70000", "adjust")
        client.hset(
            keys.transaction_key("t1", "p1", "admin:r3"),
            mapping={"fp": fingerprint, "bal": "7", "seq": "1", "protocol": "admin"},
        )
        assert await credit("r3", 70_000) == "replay"
        assert await credit("r3", 1) == "conflict"
        await ledger.runner.close()

    ledger: Any = None
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run(scenario())
        # 50k + 50k - 5k - 5k: both transfers and both new adjustments applied once.
        assert client.hget(keys.account_key("t1", "p1"), "bal:usd") == "90000"
        assert client.hget(keys.admin_record_key("t1", "p1", "r2"), "protocol") == "admin"
        assert client.hget(keys.transaction_key("t1", "p1", "admin:r2"), "protocol") != "admin"
    finally:
        client.close()


def test_a_ref_is_the_tenants_not_the_players(redis_url: str) -> None:
    """The idempotency key is (tenant, ref) and the player is part of the fingerprint: the
    same ref for a second player of the tenant is a conflict and moves nothing, while another
    tenant may use it. A claim left by a failure before admin_adjust ran is the retry's own."""

    async def credit(tenant: str, player: str, ref: str, amount_units: int = 10_000) -> str:
        return (await usd_adjust(ledger, tenant, player, ref, amount_units)).outcome

    async def scenario() -> None:
        nonlocal ledger
        ledger = make_ledger(redis_url)
        assert await credit("t1", "pA", "r1") == "applied"
        assert await credit("t1", "pB", "r1") == "conflict"
        assert await credit("t1", "pB", "r1", 20_000) == "conflict"
        assert await credit("t1", "pA", "r1") == "replay"
        assert await credit("t2", "pB", "r1") == "applied"  # another tenant's ref
        # A claim made just before a failure (the adjust script never ran): the retry applies.
        fp = core.fingerprint("pC", "usd", "10000", "adjust")
        client.set(keys.admin_claim_key("t1", "r2"), fp, ex=60)
        assert await credit("t1", "pC", "r2") == "applied"
        assert await credit("t1", "pC", "r2") == "replay"
        await ledger.runner.close()

    ledger: Any = None
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run(scenario())
        assert client.hget(keys.account_key("t1", "pA"), "bal:usd") == "10000"
        assert not client.exists(keys.account_key("t1", "pB"))
        assert client.hget(keys.account_key("t2", "pB"), "bal:usd") == "10000"
        assert client.hget(keys.account_key("t1", "pC"), "bal:usd") == "10000"
        claim_ttl_s = client.ttl(keys.admin_claim_key("t1", "r1"))
        record_ttl_s = client.ttl(keys.admin_record_key("t1", "pA", "r1"))
        assert abs(claim_ttl_s - record_ttl_s) <= 1, (claim_ttl_s, record_ttl_s)
    finally:
        client.close()


def test_a_claim_never_outlives_an_unstored_outcome(redis_url: str) -> None:
    """An overflow stores nothing, so the same ref with a smaller amount is evaluated afresh;
    an adjustment stored before claims existed keeps its ref for its own fingerprint."""

    async def credit(ref: str, amount_units: int) -> str:
        return (await usd_adjust(ledger, "t1", "p1", ref, amount_units)).outcome

    async def scenario() -> None:
        nonlocal ledger
        ledger = make_ledger(redis_url)
        assert await credit("top", 2**63 - 1) == "applied"
        assert await credit("over", 1) == "overflow"
        assert not client.exists(keys.admin_claim_key("t1", "over"))
        assert await credit("over", -1) == "applied"
        client.hset(
            keys.admin_record_key("t1", "p1", "old"),
            mapping={"fp": core.fingerprint("p1", "usd", "5", "adjust"), "bal": "5", "seq": "1"},
        )
        assert await credit("old", 6) == "conflict"
        assert await credit("old", 5) == "replay"
        await ledger.runner.close()

    ledger: Any = None
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run(scenario())
        assert client.hget(keys.account_key("t1", "p1"), "bal:usd") == str(2**63 - 2)
    finally:
        client.close()


def test_a_late_release_never_drops_a_claim_an_identical_call_took_over(redis_url: str) -> None:
    """Call 1 overflows and releases its claim late, after an identical call 2 took the claim
    over (and may have applied): the claim stays, so another player's use is still refused."""
    fp = core.fingerprint("pA", "usd", "100", "adjust")

    async def scenario() -> None:
        ledger = make_ledger(redis_url)
        assert await admin._claim(ledger, "t1", "r1", fp, "call1", "claim") == "claimed"
        assert await admin._claim(ledger, "t1", "r1", fp, "call2", "claim") == "owned"
        assert await admin._claim(ledger, "t1", "r1", fp, "call1", "release") == "kept"
        assert (await usd_adjust(ledger, "t1", "pA", "r1", 100)).outcome == "applied"
        assert (await usd_adjust(ledger, "t1", "pB", "r1", 100)).outcome == "conflict"
        # The call that holds the claim may release it (its outcome stored nothing).
        assert await admin._claim(ledger, "t1", "r2", fp, "call3", "claim") == "claimed"
        assert await admin._claim(ledger, "t1", "r2", fp, "call3", "release") == "released"
        await ledger.runner.close()

    run(scenario())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # The applying call took the claim over in turn; the late release left it alone.
    assert client.get(keys.admin_claim_key("t1", "r1")).split(" ")[0] == fp
    assert not client.exists(keys.account_key("t1", "pB"))
    client.close()


def test_a_debit_of_an_account_that_does_not_exist_stores_nothing(redis_url: str) -> None:
    """As for an unknown player, nothing is stored: no account hash (which would make the
    player known to every protocol), no record, no journal entry, and no claim is taken."""

    async def scenario() -> None:
        ledger = make_ledger(redis_url)
        refused = await usd_adjust(ledger, "t1", "ghost", "d1", -500)
        assert (refused.outcome, refused.rejected) == ("insufficient", False)
        assert not client.exists(keys.account_key("t1", "ghost"))
        assert not client.exists(keys.admin_claim_key("t1", "d1"))
        assert not client.exists(keys.admin_record_key("t1", "ghost", "d1"))
        assert (await usd_adjust(ledger, "t1", "ghost", "fund", 1_000)).outcome == "applied"
        # Evaluated afresh once the account exists.
        assert (await usd_adjust(ledger, "t1", "ghost", "d1", -500)).outcome == "applied"
        await ledger.runner.close()

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run(scenario())
        assert client.hget(keys.account_key("t1", "ghost"), "bal:usd") == "500"
        streams = list(client.scan_iter(match="wg:{j*}:journal"))
        kinds = [entry[1]["kind"] for stream in streams for entry in client.xrange(stream)]
        assert kinds == ["adjust", "adjust"]
    finally:
        client.close()


def test_a_rebuilt_claim_belongs_to_the_last_owner_whose_claim_had_not_expired() -> None:
    hour_us = 3_600 * 1_000_000
    # A's claim expired (after an hour) before B used the ref: B owns it.
    assert replay.claim_owner([(2 * hour_us, "B", 7_200 + 3_600), (0, "A", 3_600)]) == (
        "B",
        10_800,
    )
    # A use while A's claim was live (an adjustment stored before claims existed) owns nothing.
    assert replay.claim_owner([(0, "A", 3_600), (hour_us // 2, "B", 5_400)]) == ("A", 3_600)


def test_backfill_gives_adjustments_stored_before_claims_their_claim(
    redis_url: str, tmp_path: Path, capsys: Any
) -> None:
    """After an upgrade, stored adjustments without a claim get one (the oldest use of a ref
    owns it), existing claims stay, and a transfer tx_id named admin:<ref> is no adjustment."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    fp_b = core.fingerprint("pB", "usd", "7", "adjust")

    async def before_the_upgrade() -> None:
        ledger = make_ledger(redis_url)
        assert (await usd_adjust(ledger, "t1", "pA", "r1", 100)).outcome == "applied"
        assert (await usd_adjust(ledger, "t1", "pA", "kept", 100)).outcome == "applied"
        await ledger.runner.close()

    run(before_the_upgrade())
    client.delete(keys.admin_claim_key("t1", "r1"))  # stored before claims existed
    kept = client.get(keys.admin_claim_key("t1", "kept"))
    # The older layout, an adjustment of pB, and a transfer whose tx_id is "admin:r3".
    legacy = keys.transaction_key("t1", "pB", "admin:r2")
    client.hset(legacy, mapping={"fp": fp_b, "protocol": "admin", "created_us": "1", "bal": "7"})
    client.expire(legacy, 3_600)
    client.hset(keys.transaction_key("t1", "pB", "admin:r3"), mapping={"fp": "x", "protocol": "t"})
    config_path = write_config_file(tmp_path / "walletgate.toml", redis_url, tmp_path / "journal")
    assert claims.backfill_command(str(config_path)) == 0
    assert "2 claims written for 3 stored adjustments" in capsys.readouterr().out
    assert client.get(keys.admin_claim_key("t1", "kept")) == kept
    assert 3_500 < client.ttl(keys.admin_claim_key("t1", "r2")) <= 3_600
    assert not client.exists(keys.admin_claim_key("t1", "r3"))

    async def after_the_upgrade() -> None:
        ledger = make_ledger(redis_url)
        assert (await usd_adjust(ledger, "t1", "pC", "r1", 100)).outcome == "conflict"
        assert (await usd_adjust(ledger, "t1", "pA", "r1", 100)).outcome == "replay"
        assert (await usd_adjust(ledger, "t1", "pC", "r2", 7)).outcome == "conflict"
        assert (await usd_adjust(ledger, "t1", "pC", "r3", 7)).outcome == "applied"
        await ledger.runner.close()

    run(after_the_upgrade())
    # A second run writes nothing; a ref two players used is reported (exit 1).
    client.hset(
        keys.admin_record_key("t1", "pD", "r1"),
        mapping={"fp": "y", "created_us": "5", "state": "applied"},
    )
    assert claims.backfill_command(str(config_path)) == 1
    out = capsys.readouterr().out
    assert "0 claims written" in out and "ref 'r1' of tenant t1 is used by two players" in out
    client.close()
