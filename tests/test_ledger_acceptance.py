"""Issue 3 acceptance on real redis-servers, on both backends: a standalone Redis through the
hot-path FastRedisRunner and a 3-primary Redis Cluster through the ClusterRunner (journal
buckets per slot).

* 400 concurrent debits against a balance of 100 debits;
* 100 operations of every family, each sent 4 times at once;
* each family's happy path, replay, conflict, rejection and tombstone (the family tests'
  scenarios, which run on redis-py and a standalone Redis only);
* int64 limits through each family's units, and overflows rejected without a trace;
* retention of idempotency records and tombstones.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import test_ledger_midas as md_tests
import test_ledger_minigame as mg_tests
import test_ledger_transfer as tr_tests
import test_ledger_wallet_v2 as wv_tests
from acceptance_helpers import (
    CENT,
    INT64_MAX,
    INT64_MIN,
    MD_APP,
    MG_T,
    TR_T,
    TTL_SLACK_S,
    UNIT,
    WV_T,
    Backend,
    Op,
    Reply,
    adm,
    close_all,
    disk_records,
    drain_journal,
    md_cancel,
    md_pay,
    md_present,
    mg,
    pending_records,
    player_journal,
    records_of,
    register_midas,
    send,
    tr,
    wv_bet,
    wv_cancel,
    wv_win,
)
from walletgate import _native
from walletgate.ledger import keys, midas, minigame, transfer
from walletgate.ledger.admin import adjust
from walletgate.ledger.core import Ledger
from walletgate.ledger.sessions import register_session, touch_player

SCENARIO_TIMEOUT_S = 60


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """A flushed Redis of either kind (the cluster fixture only starts for cluster cases)."""
    if request.param == "standalone":
        return Backend("standalone", request.getfixturevalue("redis_url"), cluster=False)
    cluster = request.getfixturevalue("redis_cluster")
    cluster.flushall()
    return Backend("cluster", cluster.url, cluster=True)


def run(backend: Backend, scenario: Callable[[Ledger], Awaitable[Any]]) -> Any:
    """Run ``scenario`` on a fresh hot-path ledger of ``backend``."""

    async def main() -> Any:
        ledger = backend.ledger()
        try:
            return await asyncio.wait_for(scenario(ledger), SCENARIO_TIMEOUT_S)
        finally:
            await ledger.runner.close()

    return asyncio.run(main())


def hget(backend: Backend, key: str, field: str) -> str | None:
    client = backend.client()
    try:
        return client.hget(key, field)
    finally:
        client.close()


def hgetall(backend: Backend, key: str) -> dict[str, str]:
    client = backend.client()
    try:
        return dict(client.hgetall(key))
    finally:
        client.close()


def acct(tenant: str, player: str) -> str:
    return f"wg:{{{tenant}:{player}}}:acct"


def txk(tenant: str, player: str, key: str) -> str:
    return f"wg:{{{tenant}:{player}}}:tx:{key}"


def kinds(records: list[dict[str, Any]]) -> list[str]:
    return [record["kind"] for record in records]


# --- 1a. 400 concurrent debits against 100 ---------------------------------------------------

RACE_PLAYER = "race-1"
RACE_DEBITS = 400
RACE_AFFORDABLE = 100
RACE_BET = 1 * UNIT  # money "-1"
RACE_SPREAD_S = 1.0  # the debits start at random times within this window, and overlap


def test_400_concurrent_debits_against_a_balance_of_100(backend: Backend, tmp_path: Path) -> None:
    rng = random.Random(7)
    samples: list[int] = []

    async def scenario(ledger: Ledger) -> tuple[list[Reply], int]:
        funded = await adjust(
            ledger,
            tenant=MG_T,
            player=RACE_PLAYER,
            currency="usdt",
            amount_units=RACE_AFFORDABLE * RACE_BET,
            ref="race-fund",
            kind="adjust",
        )
        assert (funded.outcome, funded.balance_units) == ("applied", 100 * UNIT)
        # Four more hot-path clients send the debits; one more reads the balance meanwhile.
        senders = [backend.ledger(connections=2) for _ in range(4)]
        reader = backend.ledger()
        running = True

        async def sample() -> None:
            while running:
                read = await minigame.balances(
                    reader, tenant=MG_T, player=RACE_PLAYER, currencies=["usdt"]
                )
                assert read is not None
                samples.append(read[0])
                await asyncio.sleep(0)

        async def debit(index: int) -> Reply:
            await asyncio.sleep(rng.random() * RACE_SPREAD_S)
            op = mg(
                f"race-{index}",
                1,
                -RACE_BET,
                bet=RACE_BET,
                session=f"r{index % 8}",
                player=RACE_PLAYER,
            )
            return await send(senders[index % len(senders)], op)

        try:
            for client in [*senders, reader]:  # connected, and the cluster's slot map loaded
                await minigame.balances(client, tenant=MG_T, player=RACE_PLAYER, currencies=[])
            sampler = asyncio.create_task(sample())
            replies = await asyncio.gather(*(debit(index) for index in range(RACE_DEBITS)))
            running = False
            await sampler
            final = await minigame.balances(
                reader, tenant=MG_T, player=RACE_PLAYER, currencies=["usdt"]
            )
            assert final is not None
        finally:
            await close_all([*senders, reader])
        return list(replies), final[0]

    replies, final = run(backend, scenario)
    assert Counter(reply.outcome for reply in replies) == {"stored": RACE_DEBITS}
    applied = [reply.answer for reply in replies if reply.answer[0] == 1]
    rejected = [reply.answer for reply in replies if reply.answer[0] != 1]
    assert len(applied) == RACE_AFFORDABLE
    # Each success saw its own balance: 99, 98, ..., 0 bets' worth, each exactly once.
    assert sorted(balance for _, balance, _ in applied) == [
        n * RACE_BET for n in range(RACE_AFFORDABLE)
    ]
    assert {msg for _, _, msg in applied} == {"ok"}
    assert len(rejected) == RACE_DEBITS - RACE_AFFORDABLE
    assert set(rejected) == {(10001, 0, "balance is not enough")}
    assert final == 0
    # Sampled while the debits ran: never negative, only going down, whole bets.
    assert any(0 < sample < RACE_AFFORDABLE * RACE_BET for sample in samples), samples
    assert min(samples) >= 0
    assert samples == sorted(samples, reverse=True)
    assert all(sample % RACE_BET == 0 for sample in samples)
    assert hget(backend, acct(MG_T, RACE_PLAYER), "bal:usdt") == "0"

    # The journal: pending now, then on disk once a writer has run to completion.
    stream = backend.stream_of(MG_T, RACE_PLAYER)
    client = backend.client()
    try:
        pending = records_of(pending_records(client, [stream]), MG_T, RACE_PLAYER)
    finally:
        client.close()
    check_race_journal(pending)
    config = backend.config(tmp_path / "journal")
    asyncio.run(drain_journal(config, [stream]))
    client = backend.client()
    try:
        assert client.xlen(stream) == 0
    finally:
        client.close()
    on_disk = records_of(disk_records(config.journal.dir), MG_T, RACE_PLAYER)
    check_race_journal(on_disk)
    assert [
        (r["seq"], r["kind"], r["key"], r["delta_units"], r["balance_after_units"]) for r in on_disk
    ] == [(int(r["seq"]), r["kind"], r["key"], int(r["delta"]), int(r["bal"])) for r in pending]


def check_race_journal(records: list[dict[str, Any]]) -> None:
    """1 funding + exactly 100 debits + exactly 300 stored rejections, seq 1..401."""
    assert Counter(kinds(records)) == {
        "adjust": 1,
        "bet": RACE_AFFORDABLE,
        "reject": RACE_DEBITS - RACE_AFFORDABLE,
    }
    assert [int(r["seq"]) for r in records] == list(range(1, RACE_DEBITS + 2))
    bets = [r for r in records if r["kind"] == "bet"]
    rejects = [r for r in records if r["kind"] == "reject"]

    def number(record: dict[str, Any], disk: str, stream: str) -> int:
        return int(record[disk] if disk in record else record[stream])

    assert {number(r, "delta_units", "delta") for r in bets} == {-RACE_BET}
    assert sorted(number(r, "balance_after_units", "bal") for r in bets) == [
        n * RACE_BET for n in range(RACE_AFFORDABLE)
    ]
    assert {(number(r, "delta_units", "delta"), str(r["result"])) for r in rejects} == {
        (0, "10001")
    }
    assert len({r["key"] for r in records}) == RACE_DEBITS + 1


# --- 1b. 100 operations each sent 4 times at once --------------------------------------------

DUP_COPIES = 4


def duplicate_plan() -> tuple[list[Op], list[Op]]:
    """(setup, operations): 100 distinct operations over every family, mostly applied, a few
    stored rejections. Funds cover every ordering of the applied ones."""
    setup = [
        adm("mg-fund", 1_000 * UNIT, tenant=MG_T, player="dup-mg", currency="usdt"),
        adm("tr-fund", 1_000 * UNIT, tenant=TR_T, player="dup-tr", currency="usdt"),
        adm("wv-fund", 100_000 * CENT, tenant=WV_T, player="dup-wv", currency="USD"),
        adm("md-fund", 1_000 * UNIT, tenant=MD_APP, player="dup-md", currency="1", kind="save"),
        adm("adm-fund", 1_000 * UNIT, tenant=MG_T, player="dup-adm", currency="usd"),
    ]
    ops: list[Op] = []
    for i in range(14):
        ops.append(
            mg(f"dmb{i}", 1, -(i + 1) * UNIT, bet=(i + 1) * UNIT, session=f"d{i}", player="dup-mg")
        )
    for i in range(5):
        ops.append(mg(f"dmw{i}", 3, (i + 1) * 1234, session=f"dw{i}", player="dup-mg"))
    ops.append(mg("dmb-big", 1, -(10**7) * UNIT, bet=10**7 * UNIT, session="dbig", player="dup-mg"))
    for i in range(10):
        ops.append(tr(f"dti{i}", (i + 1) * 1111, player="dup-tr"))
    for i in range(9):
        ops.append(tr(f"dto{i}", -(i + 1) * UNIT, player="dup-tr"))
    ops.append(tr("dto-big", -(10**7) * UNIT, player="dup-tr"))
    for i in range(10):
        ops.append(wv_bet(1000 + i, (i + 1) * 10 * CENT, player="dup-wv"))
    for i in range(9):
        ops.append(wv_win(2000 + i, (i + 1) * 7 * CENT, player="dup-wv"))
    ops.append(wv_bet(1999, 10**9 * CENT, player="dup-wv"))
    for i in range(10):
        ops.append(md_pay(f"DMP{i}", (i + 1) * UNIT, player="dup-md"))
    for i in range(9):
        ops.append(md_present(f"DMG{i}", (i + 1) * UNIT, player="dup-md"))
    ops.append(md_pay("DMP-BIG", 10**7 * UNIT, player="dup-md"))
    for i in range(10):
        ops.append(adm(f"dac{i}", (i + 1) * 333, tenant=MG_T, player="dup-adm", currency="usd"))
    for i in range(10):
        ops.append(adm(f"dad{i}", -(i + 1) * UNIT, tenant=MG_T, player="dup-adm", currency="usd"))
    assert len(ops) == 100 and len({(op.tenant, op.key) for op in ops}) == 100
    return setup, ops


BIG_KEYS = {"dmb-big", "dto-big", "USD:1999", "DMP-BIG"}


def succeeded(op: Op, reply: Reply) -> bool:
    """The answer is the family's success (a stored rejection is not)."""
    if op.kind == "tr":
        return reply.answer[:2] == ("applied", 0)
    if op.kind == "adm":
        return reply.outcome in ("stored", "replay")
    return reply.answer[0] in {"mg": (1,), "wv_bet": ("1",), "wv_win": ("1",)}.get(op.kind, (0,))


def balance_delta(op: Op) -> int:
    """The change of paid + gifted when ``op`` is applied."""
    p = op.params
    if op.kind in ("mg",):
        return int(p["money"])
    if op.kind in ("tr", "adm"):
        return int(p["amount"])
    if op.kind in ("wv_bet", "md_pay"):
        return -int(p["units"])
    assert op.kind in ("wv_win", "md_present"), op.kind
    return int(p["units"])


def test_100_operations_each_sent_4_times_apply_once(backend: Backend) -> None:
    setup, ops = duplicate_plan()
    rng = random.Random(11)

    async def scenario(ledger: Ledger) -> list[list[Reply]]:
        await register_midas(ledger, "dup-md")
        await transfer.authorize(
            ledger, tenant=TR_T, player="dup-tr", default_currency="usdt", ttl_s=600
        )
        for op in setup:
            assert (await send(ledger, op)).outcome == "stored"
        senders = [backend.ledger(connections=2) for _ in range(4)]
        copies = [(index, copy) for index in range(len(ops)) for copy in range(DUP_COPIES)]
        rng.shuffle(copies)

        async def one(index: int, copy: int) -> tuple[int, Reply]:
            await asyncio.sleep(rng.random() * 0.02)
            return index, await send(senders[copy], ops[index])

        try:
            results = await asyncio.gather(*(one(index, copy) for index, copy in copies))
        finally:
            await close_all(senders)
        by_op: list[list[Reply]] = [[] for _ in ops]
        for index, reply in results:
            by_op[index].append(reply)
        return by_op

    by_op = run(backend, scenario)
    for op, replies in zip(ops, by_op, strict=True):
        assert sorted(reply.outcome for reply in replies) == ["replay"] * 3 + ["stored"], op
        assert len({reply.answer for reply in replies}) == 1, (op, replies)
        assert succeeded(op, replies[0]) == (op.key not in BIG_KEYS), (op, replies[0])
    applied = [op for op in ops if op.key not in BIG_KEYS]

    expected: Counter[tuple[str, str, str]] = Counter()
    for op in [*setup, *applied]:
        expected[op.account] += balance_delta(op)
    client = backend.client()
    try:
        for (tenant, player, currency), total in expected.items():
            fields = client.hgetall(acct(tenant, player))
            held = int(fields.get(f"bal:{currency}", 0)) + int(fields.get(f"gen:{currency}", 0))
            assert held == total, (tenant, player, currency)
        midas_fields = client.hgetall(acct(MD_APP, "dup-md"))
        pays = sum(op.params["units"] for op in applied if op.kind == "md_pay")
        gifts = sum(op.params["units"] for op in applied if op.kind == "md_present")
        assert int(midas_fields["cost_sum:1"]) == pays
        assert int(midas_fields["present_sum:1"]) == gifts
        assert int(midas_fields["save_sum:1"]) == 1_000 * UNIT
        streams = backend.streams_of({op.account[:2] for op in ops})
        journal = pending_records(client, streams)
    finally:
        client.close()
    # The journal holds each stored outcome once: every operation's key exactly once.
    keys_seen = Counter((r["tenant"], r["player"], r["key"]) for r in journal)
    for op in [*setup, *ops]:
        assert keys_seen[(op.tenant, op.player, op.key)] == 1, op
    assert sum(keys_seen.values()) == len(setup) + len(ops)
    rejected_kinds = {r["key"]: r["kind"] for r in journal if r["key"] in BIG_KEYS}
    assert rejected_kinds == dict.fromkeys(BIG_KEYS, "reject")


# --- 1c. The family scenarios on both backends -----------------------------------------------
# The scenarios and assertions of tests/test_ledger_{minigame,transfer,wallet_v2,midas,admin}.py
# with their helpers, on the hot-path runner of each backend; Redis is read with RedisCluster on
# the cluster and the journal from the player's own stream.


def mg_journal(backend: Backend, player: str = mg_tests.P) -> list[dict[str, Any]]:
    return player_journal(backend, mg_tests.T, player)


def mg_tx(backend: Backend, order_id: str) -> dict[str, str]:
    return hgetall(backend, txk(mg_tests.T, mg_tests.P, order_id))


def mg_balance(backend: Backend, currency: str = "usdt") -> int:
    return int(hget(backend, acct(mg_tests.T, mg_tests.P), f"bal:{currency}") or 0)


def test_minigame_happy_path(backend: Backend) -> None:
    change, fund = mg_tests.change, mg_tests.fund

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

    run(backend, scenario)
    assert mg_balance(backend) == 406_600
    bet = mg_tx(backend, "b1")
    assert bet["state"] == "applied" and bet["op"] == "bet" and bet["delta"] == "-30000"
    assert bet["awarded_by"] == "w1" and bet["settled_by"] == "w1"
    assert hget(backend, f"wg:{{{mg_tests.T}:{mg_tests.P}}}:round:r1", "closed") == "w2"
    records = mg_journal(backend)
    assert kinds(records) == ["adjust", "bet", "win", "win"]
    assert [r["seq"] for r in records] == ["1", "2", "3", "4"]
    assert records[1]["delta"] == "-30000" and records[1]["bal"] == "70000"
    assert ["round:r1", "closed", "w2", "604800"] in json.loads(records[3]["fx"])


def test_minigame_replay_conflict_and_type_replay(backend: Backend) -> None:
    change, fund = mg_tests.change, mg_tests.fund

    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        await change(ledger, "b1", 1, -10_000, bet=10_000, session_id="24713")
        first = await change(ledger, "o1", 3, 336_600, session_id="24713", awards=("b1",))
        assert first.balance_units == 426_600
        await fund(ledger, 1, ref="more")
        replay = await change(ledger, "o1", 3, 336_600, session_id="24713", awards=("b1",))
        assert (replay.status, replay.code, replay.balance_units) == ("replay", 1, 426_600)
        type4 = await change(ledger, "o1", 4, 336_600, session_id="24713", awards=("b1",))
        assert (type4.status, type4.balance_units, type4.stored_type) == ("replay", 426_600, 3)
        assert type4.replay_closed_round
        again = await change(ledger, "o1", 4, 336_600, session_id="24713")
        assert again.status == "replay" and not again.replay_closed_round
        conflict = await change(ledger, "o1", 3, 336_601, session_id="24713")
        assert (conflict.status, conflict.balance_units) == ("conflict", 0)
        assert (await change(ledger, "o1", 3, 336_600, currency="usd")).status == "conflict"

    run(backend, scenario)
    assert mg_balance(backend) == 426_601
    assert hget(backend, f"wg:{{{mg_tests.T}:{mg_tests.P}}}:round:24713", "closed") == "o1"
    assert kinds(mg_journal(backend)) == ["adjust", "bet", "win", "adjust", "close"]


def test_minigame_insufficient_funds_is_stored(backend: Backend) -> None:
    change, fund = mg_tests.change, mg_tests.fund

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
        assert (await change(ledger, "f1", 6, -1_000, session_id="")).code == 10001
        fee_ok = await change(ledger, "f2", 6, 100, session_id="")
        assert (fee_ok.code, fee_ok.balance_units) == (1, 5)

    run(backend, scenario)
    assert mg_tx(backend, "b1")["state"] == "rejected" and mg_tx(backend, "b1")["code"] == "10001"
    assert kinds(mg_journal(backend)) == ["adjust", "reject", "adjust", "reject", "bet"]


def test_minigame_cancel_refund_tombstone_and_settled(backend: Backend) -> None:
    change, fund = mg_tests.change, mg_tests.fund

    async def scenario(ledger: Ledger) -> None:
        await fund(ledger, 100_000)
        await change(ledger, "b1", 1, -30_000, bet=30_000, session_id="r1")
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
        assert (second.status, second.effect) == ("applied", "noop")
        # Tombstone: a cancel that arrives first rejects the later bet for good.
        tomb = await change(ledger, "c3", 2, 30_000, cancel="late")
        assert (tomb.status, tomb.effect, tomb.balance_units) == ("applied", "tombstone", 100_000)
        late = await change(ledger, "late", 1, -30_000, bet=30_000)
        assert (late.status, late.code, late.msg) == ("rejected", 10010, "order cancelled")
        retry = await change(ledger, "late", 1, -30_000, bet=30_000)
        assert (retry.status, retry.code, retry.msg) == ("replay", 10010, "order cancelled")
        assert (await change(ledger, "c4", 2, 30_000, cancel="late")).effect == "noop"
        # Settled: by an award, a type 4 and end_round; the cancel is rejected and stored.
        await change(ledger, "s1", 1, -10_000, bet=10_000, session_id="q1")
        await change(ledger, "s2", 1, -10_000, bet=10_000, session_id="q2")
        await change(ledger, "s3", 1, -10_000, bet=10_000, session_id="q3", end_round=True)
        await change(ledger, "sw1", 3, 5_000, session_id="q1", awards=("s1",))
        await change(ledger, "sw2", 4, 0, session_id="q2")
        for cancel_id, bet_id in (("x1", "s1"), ("x2", "s2"), ("x3", "s3")):
            result = await change(ledger, cancel_id, 2, 10_000, cancel=bet_id)
            assert (result.status, result.code, result.msg) == ("rejected", 10010, "order settled")
        replay = await change(ledger, "x1", 2, 10_000, cancel="s1")
        assert (replay.status, replay.code, replay.msg) == ("replay", 10010, "order settled")

    run(backend, scenario)
    assert mg_balance(backend) == 100_000 - 30_000 + 5_000
    assert mg_tx(backend, "b1")["cancelled_by"] == "c1"
    assert mg_tx(backend, "late")["state"] == "rejected"
    assert mg_tx(backend, "late")["cancelled_by"] == "c3"
    assert (
        mg_tx(backend, "s2")["settled_by"] == "sw2" and mg_tx(backend, "s3")["settled_by"] == "s3"
    )
    assert kinds(mg_journal(backend)) == [
        "adjust",
        "bet",
        "cancel",
        "cancel",
        "tombstone",
        "reject",
        "cancel",
        "bet",
        "bet",
        "bet",
        "win",
        "win",
        "reject",
        "reject",
        "reject",
    ]


def tr_journal(backend: Backend, player: str) -> list[dict[str, Any]]:
    return player_journal(backend, TR_T, player)


def test_transfer_in_out_replay_conflict_and_rejection(backend: Backend) -> None:
    move = tr_tests.move

    async def scenario(ledger: Ledger) -> list[transfer.TransferResult]:
        await transfer.authorize(
            ledger, tenant=TR_T, player="u1", default_currency="usdt", ttl_s=60
        )
        return [
            await move(ledger, "u1", 10_000_100, "etx-in"),
            await move(ledger, "u1", -4_000_000, "etx-out"),
            await move(ledger, "u1", 10_000_100, "etx-in"),
            await move(ledger, "u1", 10_000_200, "etx-in"),
            await move(ledger, "u1", 10_000_100, "etx-in", currency="usd"),
            await move(ledger, "u1", -7_000_000, "etx-big"),
            await move(ledger, "u1", -7_000_000, "etx-big"),
            await move(ledger, "u1", 1, "etx-after"),
        ]

    applied_in, applied_out, replay, conflict, conflict2, rejected, again, after = run(
        backend, scenario
    )
    code = transfer.player_code("u1")
    assert (applied_in.outcome, applied_in.state, applied_in.code) == ("applied", "applied", 0)
    assert (applied_in.balance_units, applied_in.ptx_id) == (10_000_100, "11" + code)
    assert (applied_out.outcome, applied_out.balance_units, applied_out.ptx_id) == (
        "applied",
        6_000_100,
        "12" + code,
    )
    assert (replay.outcome, replay.state, replay.ptx_id, replay.balance_units) == (
        "replay",
        "applied",
        applied_in.ptx_id,
        10_000_100,
    )
    assert conflict.outcome == conflict2.outcome == "conflict" and conflict.state is None
    assert (rejected.outcome, rejected.state, rejected.code, rejected.balance_units) == (
        "rejected",
        "rejected",
        10001,
        6_000_100,
    )
    assert (again.outcome, again.state, again.code, again.ptx_id) == (
        "replay",
        "rejected",
        10001,
        rejected.ptx_id,
    )
    assert (after.ptx_id, after.balance_units) == ("14" + code, 6_000_101)
    assert hget(backend, acct(TR_T, "u1"), "bal:usdt") == "6000101"
    stored = hgetall(backend, txk(TR_T, "u1", "etx-big"))
    assert (stored["state"], stored["code"], stored["amount"], stored["delta"]) == (
        "rejected",
        "10001",
        "-7000000",
        "0",
    )
    assert [
        (r["kind"], r["delta"], r["bal"], r["result"], r["key"]) for r in tr_journal(backend, "u1")
    ] == [
        ("transfer", "10000100", "10000100", "0", "etx-in"),
        ("transfer", "-4000000", "6000100", "0", "etx-out"),
        ("reject", "0", "6000100", "10001", "etx-big"),
        ("transfer", "1", "6000101", "0", "etx-after"),
    ]


def wv_journal(backend: Backend) -> list[dict[str, Any]]:
    return player_journal(backend, WV_T, wv_tests.P)


def wv_tx(backend: Backend, key: str) -> dict[str, str]:
    return hgetall(backend, txk(WV_T, wv_tests.P, key))


def wv_balance(backend: Backend, currency: str = "USD") -> int:
    return int(hget(backend, acct(WV_T, wv_tests.P), f"bal:{currency}") or 0)


def test_wallet_v2_bet_replay_conflict_and_insufficient(backend: Backend) -> None:
    do_bet, do_win, fund = wv_tests.do_bet, wv_tests.do_win, wv_tests.fund

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
        conflict = await do_bet(ledger, 3, 501)
        assert (conflict.outcome, conflict.code, conflict.balance_units) == (
            "conflict",
            "DUPLICATE_ID",
            99_500 * 100,
        )
        assert (await do_bet(ledger, 3, 500, round_id=3)).outcome == "conflict"
        assert (await do_win(ledger, 3, 500)).outcome == "conflict"
        refused = await do_bet(ledger, 7, 100_000)
        assert (refused.outcome, refused.code, refused.balance_units, refused.kind) == (
            "stored",
            "INSUFFICIENT_FUNDS",
            99_500 * 100,
            "reject",
        )
        again = await do_bet(ledger, 7, 100_000)
        assert (again.outcome, again.code, again.created_us) == (
            "replay",
            "INSUFFICIENT_FUNDS",
            refused.created_us,
        )

    run(backend, scenario)
    assert wv_balance(backend) == 99_500 * 100
    records = wv_journal(backend)
    assert kinds(records) == ["adjust", "bet", "reject"]
    assert records[1]["key"] == "USD:3" and records[1]["delta"] == "-50000"
    assert json.loads(records[1]["refs"]) == {"id": 3}
    assert wv_tx(backend, "USD:3")["round"] == "3"
    assert wv_tx(backend, "USD:7")["state"] == "rejected"


def test_wallet_v2_win_settles_cancel_refunds_and_tombstones(backend: Backend) -> None:
    do_bet, do_win, do_cancel, fund = (
        wv_tests.do_bet,
        wv_tests.do_win,
        wv_tests.do_cancel,
        wv_tests.fund,
    )

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
        assert (await do_win(ledger, 86, 0, round_id=85)).outcome == "conflict"
        settled = await do_cancel(ledger, 85)
        assert (settled.outcome, settled.code, settled.kind) == ("stored", "SETTLED", "reject")
        assert (await do_cancel(ledger, 85)).code == "SETTLED"
        # A refund of an unsettled bet, replayed.
        await do_bet(ledger, 20, 100)
        refund = await do_cancel(ledger, 20)
        assert (refund.outcome, refund.code, refund.balance_units, refund.kind) == (
            "stored",
            "1",
            850 * 100,
            "cancel",
        )
        assert (await do_cancel(ledger, 20)).outcome == "replay"
        # Tombstone: a cancel first, then the bet and a win on tombstoned ids are CANCELLED.
        tomb = await do_cancel(ledger, 5)
        assert (tomb.outcome, tomb.code, tomb.kind) == ("stored", "1", "tombstone")
        late_bet = await do_bet(ledger, 5, 100, round_id=85)
        assert (late_bet.outcome, late_bet.code, late_bet.balance_units, late_bet.kind) == (
            "stored",
            "CANCELLED",
            850 * 100,
            "reject",
        )
        assert (await do_bet(ledger, 5, 100, round_id=85)).code == "CANCELLED"
        assert (await do_bet(ledger, 5, 200, round_id=85)).code == "CANCELLED"
        await do_cancel(ledger, 6)
        late_win = await do_win(ledger, 6, 70, round_id=85)
        assert (late_win.code, late_win.balance_units) == ("CANCELLED", 850 * 100)

    run(backend, scenario)
    assert wv_balance(backend) == 850 * 100
    assert wv_tx(backend, "USD:85")["settled_by"] == "USD:86"
    assert wv_tx(backend, "USD:87")["settled_by"] == "USD:86"
    assert wv_tx(backend, "USD:20")["cancelled_by"] == "USD:20:cancel"
    assert wv_tx(backend, "USD:5")["code"] == "CANCELLED"
    assert kinds(wv_journal(backend)) == [
        "adjust",
        "bet",
        "bet",
        "win",
        "reject",
        "bet",
        "cancel",
        "tombstone",
        "reject",
        "tombstone",
        "reject",
    ]


def md_journal(backend: Backend) -> list[dict[str, Any]]:
    return player_journal(backend, MD_APP, md_tests.OPENID)


def test_midas_pay_replay_conflict_insufficient_and_cancelpay(backend: Backend) -> None:
    coin = md_tests.COIN
    setup, pay, present, cancel, balance = (
        md_tests.setup,
        md_tests.pay,
        md_tests.present,
        md_tests.cancel,
        md_tests.balance,
    )

    async def scenario(ledger: Ledger) -> None:
        await setup(ledger, paid=100 * coin, gen=10 * coin)
        first = await pay(ledger, "BILL0001", 4 * coin)
        assert (first.outcome, first.paid_units, first.gen_units, first.used_gen_units) == (
            "applied",
            100 * coin,
            6 * coin,
            4 * coin,
        )
        second = await pay(ledger, "BILL0002", 16 * coin)
        assert (second.paid_units, second.gen_units, second.used_gen_units) == (
            90 * coin,
            0,
            6 * coin,
        )
        await present(ledger, "P2", 5 * coin)
        replay = await pay(ledger, "BILL0002", 16 * coin)
        assert (replay.outcome, replay.paid_units, replay.gen_units, replay.used_gen_units) == (
            "replay",
            90 * coin,
            0,
            6 * coin,
        )
        for other in (
            pay(ledger, "BILL0002", 15 * coin),
            pay(ledger, "BILL0002", 16 * coin, zone="2"),
            pay(ledger, "BILL0002", 16 * coin, sandbox=True),
            present(ledger, "BILL0002", 16 * coin),
        ):
            conflict = await other
            assert (conflict.outcome, conflict.code) == ("conflict", 90012)
        short = await pay(ledger, "B-SHORT", 95 * coin + 1)
        assert (short.outcome, short.code, short.paid_units, short.gen_units) == (
            "rejected",
            90013,
            90 * coin,
            5 * coin,
        )
        assert (await pay(ledger, "B-SHORT", 95 * coin + 1)).outcome == "replay"
        done = await cancel(ledger, "BILL0002")
        assert (done.outcome, done.code, done.paid_units, done.gen_units, done.used_gen_units) == (
            "applied",
            0,
            100 * coin,
            11 * coin,
            6 * coin,
        )
        assert (await cancel(ledger, "BILL0002")).code == 90015
        assert (await cancel(ledger, "NEVER")).code == 90000
        assert (await cancel(ledger, "P2")).code == 90000
        view = await balance(ledger)
        assert view == midas.Balance(
            paid_units=100 * coin,
            gen_units=11 * coin,
            first_save=2,
            save_amt_units=100 * coin,
            save_sum_units=100 * coin,
            cost_sum_units=4 * coin,
            present_sum_units=15 * coin,
        )

    run(backend, scenario)
    record = hgetall(backend, txk(MD_APP, md_tests.OPENID, "BILL0002"))
    assert (record["state"], record["cancelled"], record["used_gen"], record["paid_used"]) == (
        "applied",
        "1",
        "60000",
        "100000",
    )
    records = md_journal(backend)
    assert kinds(records) == ["save", "present", "pay", "pay", "present", "reject", "cancelpay"]
    assert (
        records[-1]["delta"],
        records[-1]["bal"],
        records[-1]["gdelta"],
        records[-1]["gbal"],
    ) == (
        "100000",
        "1000000",
        "60000",
        "110000",
    )


def test_admin_adjust_credit_replay_conflict_and_debit(backend: Backend) -> None:
    async def scenario(ledger: Ledger) -> list[Any]:
        results = []
        for amount, ref in (
            (1_000_000, "r1"),
            (500, "r2"),
            (1_000_000, "r1"),
            (7, "r1"),
            (-2_000_000, "r3"),
            (-500, "r4"),
        ):
            results.append(
                await adjust(
                    ledger,
                    tenant="t1",
                    player="p1",
                    currency="usd",
                    amount_units=amount,
                    ref=ref,
                    kind="adjust",
                )
            )
        return [(result.outcome, result.balance_units) for result in results]

    outcomes = run(backend, scenario)
    assert outcomes[0] == ("applied", 1_000_000)
    assert outcomes[1] == ("applied", 1_000_500)
    assert outcomes[2] == ("replay", 1_000_000)
    assert outcomes[3][0] == "conflict"
    assert outcomes[4] == ("insufficient", 1_000_500)
    assert outcomes[5] == ("applied", 1_000_000)
    assert hget(backend, acct("t1", "p1"), "bal:usd") == "1000000"
    # The shortfall is a stored rejection: journaled, with a seq of its own.
    assert hget(backend, acct("t1", "p1"), "seq:usd") == "4"
    assert kinds(player_journal(backend, "t1", "p1")) == ["adjust", "adjust", "reject", "adjust"]


# --- 1d. int64 limits ------------------------------------------------------------------------

MAX_DECIMAL = "922337203685477.5807"
MAX_CENTS = INT64_MAX // CENT  # 92233720368547758 cents
MAX_COINS = INT64_MAX // UNIT  # 922337203685477 coins


def journal_length(backend: Backend, tenant: str, player: str) -> int:
    return len(player_journal(backend, tenant, player))


def assert_no_trace(backend: Backend, tenant: str, player: str, key: str, records: int) -> None:
    """An overflow wrote no idempotency record and no journal record."""
    client = backend.client()
    try:
        assert not client.exists(txk(tenant, player, key)), key
    finally:
        client.close()
    assert journal_length(backend, tenant, player) == records, key


def test_int64_limits_minigame_decimal(backend: Backend) -> None:
    player = "big-mg"
    top = _native.parse_money(MAX_DECIMAL)
    assert top == INT64_MAX

    async def scenario(ledger: Ledger) -> None:
        await touch_player(ledger, tenant=MG_T, player=player, currency="usdt", open_account=False)
        near = _native.parse_money("922337203685477.5806")
        first = await send(ledger, mg("w1", 5, near, player=player))
        second = await send(ledger, mg("w2", 5, _native.parse_money("0.0001"), player=player))
        assert (first.answer[1], second.answer[1]) == (INT64_MAX - 1, INT64_MAX)
        assert _native.format_units(second.answer[1]) == MAX_DECIMAL
        records = journal_length(backend, MG_T, player)
        over = await send(ledger, mg("w3", 5, _native.parse_money("0.0001"), player=player))
        assert over.outcome == "overflow"
        assert_no_trace(backend, MG_T, player, "w3", records)
        assert hget(backend, acct(MG_T, player), "bal:usdt") == str(INT64_MAX)
        # All of it as one bet, exactly; then a refund that would overflow is refused too.
        all_in = await send(ledger, mg("b1", 1, -top, bet=top, session="r1", player=player))
        assert all_in == Reply("stored", (1, 0, "ok"))
        huge = await send(ledger, mg("b2", 1, INT64_MIN, bet=0, player=player))
        assert huge.answer[:2] == (10001, 0)
        await send(ledger, mg("w4", 5, top, player=player))
        records = journal_length(backend, MG_T, player)
        refund = await send(ledger, mg("c1", 2, top, cancel="b1", player=player))
        assert refund.outcome == "overflow"
        assert_no_trace(backend, MG_T, player, "c1", records)
        assert "cancelled_by" not in hgetall(backend, txk(MG_T, player, "b1"))

    run(backend, scenario)
    assert hget(backend, acct(MG_T, player), "bal:usdt") == str(INT64_MAX)
    records = player_journal(backend, MG_T, player)
    assert [(r["kind"], r["bal"]) for r in records] == [
        ("win", str(INT64_MAX - 1)),
        ("win", str(INT64_MAX)),
        ("bet", "0"),
        ("reject", "0"),
        ("win", str(INT64_MAX)),
    ]
    assert records[2]["delta"] == str(-INT64_MAX)


def test_int64_limits_transfer_and_admin(backend: Backend) -> None:
    async def scenario(ledger: Ledger) -> None:
        await transfer.authorize(
            ledger, tenant=TR_T, player="big-tr", default_currency="usdt", ttl_s=60
        )
        top = await send(ledger, tr("max", _native.parse_money(MAX_DECIMAL), player="big-tr"))
        assert top.answer[3] == INT64_MAX
        records = journal_length(backend, TR_T, "big-tr")
        over = await send(ledger, tr("one-more", 1, player="big-tr"))
        assert (over.outcome, over.answer[3]) == ("overflow", INT64_MAX)
        assert_no_trace(backend, TR_T, "big-tr", "one-more", records)
        out = await send(ledger, tr("all-out", -INT64_MAX, player="big-tr"))
        assert out.answer == ("applied", 0, out.answer[2], 0)
        # Admin: the decimal maximum exactly, then one unit more is refused.
        credit = await send(
            ledger,
            adm(
                "max",
                _native.parse_money(MAX_DECIMAL),
                tenant=MG_T,
                player="big-adm",
                currency="usd",
            ),
        )
        assert credit == Reply("stored", (INT64_MAX,))
        records = journal_length(backend, MG_T, "big-adm")
        over_admin = await send(
            ledger, adm("over", 1, tenant=MG_T, player="big-adm", currency="usd")
        )
        assert over_admin == Reply("overflow", (INT64_MAX,))
        assert_no_trace(backend, MG_T, "big-adm", "admin:over", records)
        debit = await send(
            ledger, adm("all", -INT64_MAX, tenant=MG_T, player="big-adm", currency="usd")
        )
        assert debit == Reply("stored", (0,))

    run(backend, scenario)
    assert hget(backend, acct(TR_T, "big-tr"), "bal:usdt") == "0"
    assert hget(backend, acct(MG_T, "big-adm"), "bal:usd") == "0"
    assert [r["bal"] for r in player_journal(backend, TR_T, "big-tr")] == [str(INT64_MAX), "0"]
    assert [r["bal"] for r in player_journal(backend, MG_T, "big-adm")] == [str(INT64_MAX), "0"]


def test_int64_limits_wallet_v2_cents(backend: Backend) -> None:
    player = "big-wv"
    top_units = _native.cents_to_units(MAX_CENTS)
    with pytest.raises(OverflowError):
        _native.cents_to_units(MAX_CENTS + 1)

    async def scenario(ledger: Ledger) -> None:
        await register_session(
            ledger, tenant=WV_T, player=player, currency="USD", token="big", ttl_s=60
        )
        won = await send(ledger, wv_win(1, top_units, player=player))
        assert won.answer[:2] == ("1", top_units)
        assert _native.units_to_cents(won.answer[1]) == MAX_CENTS
        records = journal_length(backend, WV_T, player)
        over = await send(ledger, wv_win(2, CENT, player=player))
        assert (over.outcome, over.answer[1]) == ("overflow", top_units)
        assert_no_trace(backend, WV_T, player, "USD:2", records)
        all_in = await send(ledger, wv_bet(3, top_units, player=player))
        assert all_in.answer[:2] == ("1", 0)
        await send(ledger, wv_win(4, top_units, player=player))
        records = journal_length(backend, WV_T, player)
        refund = await send(ledger, wv_cancel(3, player=player))
        assert (refund.outcome, refund.answer[1]) == ("overflow", top_units)
        assert_no_trace(backend, WV_T, player, "USD:3:cancel", records)

    run(backend, scenario)
    assert hget(backend, acct(WV_T, player), "bal:USD") == str(top_units)
    assert [(r["kind"], r["bal"]) for r in player_journal(backend, WV_T, player)] == [
        ("win", str(top_units)),
        ("bet", "0"),
        ("win", str(top_units)),
    ]


def test_int64_limits_midas_coins(backend: Backend) -> None:
    player = "big-md"
    top_units = _native.coins_to_units(MAX_COINS)
    with pytest.raises(OverflowError):
        _native.coins_to_units(MAX_COINS + 1)

    async def scenario(ledger: Ledger) -> None:
        await register_midas(ledger, player)
        for zone in ("1", "2"):
            save = adm(
                f"save-{zone}", top_units, tenant=MD_APP, player=player, currency=zone, kind="save"
            )
            assert await send(ledger, save) == Reply("stored", (top_units,))
        # Zone 1: the balance (paid plus gifted) at the limit, one unit more refused, spent
        # and given back. The paid part is at the top already, so the gifted part fills the
        # rest: the answer's balance is their sum, and it is an int64 too.
        rest = INT64_MAX - top_units
        gift = await send(ledger, md_present("TOP", rest, player=player))
        assert gift == Reply("stored", (0, top_units, rest, 0))
        assert gift.answer[1] + gift.answer[2] == INT64_MAX
        records = journal_length(backend, MD_APP, player)
        over = await send(ledger, md_present("OVER", 1, player=player))
        assert over.outcome == "overflow"
        assert_no_trace(backend, MD_APP, player, "OVER", records)
        spent = await send(ledger, md_pay("GEN", top_units, player=player))
        assert spent == Reply("stored", (0, rest, 0, rest))
        back = await send(ledger, md_cancel("GEN", player=player))
        assert back == Reply("applied", (0, top_units, rest, rest))
        # Zone 2: the paid part at the limit, spent whole and given back.
        paid = await send(ledger, md_pay("PAID", top_units, player=player, zone="2"))
        assert paid == Reply("stored", (0, 0, 0, 0))
        again = await send(ledger, md_cancel("PAID", player=player, zone="2"))
        assert again == Reply("applied", (0, top_units, 0, 0))
        for zone, gen in (("1", INT64_MAX - top_units), ("2", 0)):
            _, view = await midas.read_balance(ledger, appid=MD_APP, openid=player, currency=zone)
            assert (view.paid_units, view.gen_units, view.cost_sum_units) == (top_units, gen, 0)
            assert _native.units_to_coins(view.paid_units) == MAX_COINS

    run(backend, scenario)
    records = player_journal(backend, MD_APP, player)
    assert [(r["currency"], r["kind"], r["bal"], r.get("gbal")) for r in records] == [
        ("1", "save", str(top_units), None),
        ("1", "present", str(top_units), str(INT64_MAX - top_units)),
        ("1", "pay", str(INT64_MAX - top_units), "0"),
        ("1", "cancelpay", str(top_units), str(INT64_MAX - top_units)),
        ("2", "save", str(top_units), None),
        ("2", "pay", "0", "0"),
        ("2", "cancelpay", str(top_units), "0"),
    ]


# --- 1e. Retention ---------------------------------------------------------------------------

TTL_S = 700_000
MIDAS_TTL_S = 200_000


def test_retention_of_records_and_tombstones(backend: Backend) -> None:
    backend = backend.with_ttls(TTL_S, MIDAS_TTL_S)

    async def scenario(ledger: Ledger) -> None:
        for op in (
            adm("fund-mg", 100 * UNIT, tenant=MG_T, player="ret", currency="usdt"),
            adm("fund-wv", 100 * UNIT, tenant=WV_T, player="ret", currency="USD"),
            adm("fund-md", 100 * UNIT, tenant=MD_APP, player="ret", currency="1", kind="save"),
        ):
            assert (await send(ledger, op)).outcome == "stored"
        await transfer.authorize(
            ledger, tenant=TR_T, player="ret", default_currency="usdt", ttl_s=60
        )
        await register_midas(ledger, "ret")
        plan = [
            mg("m-bet", 1, -UNIT, bet=UNIT, session="r1", player="ret"),
            mg("m-low", 1, -1000 * UNIT, bet=1000 * UNIT, player="ret"),
            mg("m-cancel", 2, UNIT, cancel="m-ghost", player="ret"),
            tr("t-in", UNIT, player="ret"),
            tr("t-low", -1000 * UNIT, player="ret"),
            wv_bet(1, UNIT, player="ret"),
            wv_win(2, UNIT, player="ret"),
            wv_bet(3, 1000 * UNIT, player="ret"),
            wv_cancel(9, player="ret"),
            md_pay("M-PAY", UNIT, player="ret"),
            md_present("M-GIFT", UNIT, player="ret"),
            md_pay("M-LOW", 1000 * UNIT, player="ret"),
            md_pay("M-PAY2", UNIT, player="ret"),
        ]
        for op in plan:
            assert (await send(ledger, op)).outcome == "stored", op
        assert (await send(ledger, md_cancel("M-PAY2", player="ret"))).outcome == "applied"

    run(backend, scenario)
    expected = {
        keys.admin_record_key(MG_T, "ret", "fund-mg"): TTL_S,
        txk(MG_T, "ret", "m-bet"): TTL_S,
        txk(MG_T, "ret", "m-low"): TTL_S,
        txk(MG_T, "ret", "m-cancel"): TTL_S,
        txk(MG_T, "ret", "m-ghost"): TTL_S,  # the tombstone
        txk(TR_T, "ret", "t-in"): TTL_S,
        txk(TR_T, "ret", "t-low"): TTL_S,
        keys.admin_record_key(WV_T, "ret", "fund-wv"): TTL_S,
        txk(WV_T, "ret", "USD:1"): TTL_S,
        txk(WV_T, "ret", "USD:2"): TTL_S,
        txk(WV_T, "ret", "USD:3"): TTL_S,
        txk(WV_T, "ret", "USD:9:cancel"): TTL_S,
        txk(WV_T, "ret", "USD:9"): TTL_S,  # the tombstone
        keys.admin_record_key(MD_APP, "ret", "fund-md"): TTL_S,
        txk(MD_APP, "ret", "M-PAY"): MIDAS_TTL_S,
        txk(MD_APP, "ret", "M-GIFT"): MIDAS_TTL_S,
        txk(MD_APP, "ret", "M-LOW"): MIDAS_TTL_S,
        txk(MD_APP, "ret", "M-PAY2"): MIDAS_TTL_S,
    }
    client = backend.client()
    try:
        ttls = {name: client.ttl(name) for name in expected}
        states = {name: client.hget(name, "state") for name in expected}
    finally:
        client.close()
    assert states[txk(MG_T, "ret", "m-ghost")] == "tombstone"
    assert states[txk(WV_T, "ret", "USD:9")] == "tombstone"
    assert states[txk(MG_T, "ret", "m-low")] == "rejected"
    wrong = {
        name: (ttl, expected[name])
        for name, ttl in ttls.items()
        if not expected[name] - TTL_SLACK_S <= ttl <= expected[name]
    }
    assert not wrong, wrong
