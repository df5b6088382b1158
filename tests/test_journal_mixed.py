"""Issue 3 acceptance: the journal of a mixed run of every family verifies, and rebuilds into an
empty Redis every balance (Midas parts and counters included) and every idempotency answer.

The run: MINI.GAME bets, wins, type 4 settlements, end_round, cancels (refund, no-op, settled,
tombstone), a type 4 replay that closes its round, a fee and a luck credit; transfers in and out
with stored rejections; Wallet v2 bets, wins settling rounds, zero wins, cancels (refund,
tombstone, SETTLED, no-op); Midas save, pay, present, cancelpay (and its repeat), a stored 90013
and the sandbox; admin adjustments. A scripted part with checked outcomes, then a seeded random
part (players in parallel), all while a journal writer flushes to a tmp directory.

After ``verify`` passes, the journal is rebuilt into a second, empty Redis (a second
redis-server, or a second cluster) and compared with the original: every player key (fields and
TTL), then every operation is sent again on the rebuilt Redis and must replay its original
answer; tombstoned keys still reject bets, settled bets still refuse cancels, unsettled ones
still refund. The rebuilt Redis and the grown journal then verify again.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from acceptance_helpers import (
    CENT,
    MD_APP,
    MG_T,
    TR_T,
    UNIT,
    WV_T,
    Backend,
    Op,
    Reply,
    WriterRun,
    adm,
    drain_journal,
    drop_writer_keys,
    expected_resend,
    keymap_state,
    md_cancel,
    md_pay,
    md_present,
    mg,
    player_state,
    register_midas,
    same_answer,
    send,
    state_differences,
    tr,
    wv_bet,
    wv_cancel,
    wv_win,
)
from cluster import RedisCluster as ClusterProcess
from conftest import RedisServer, free_port
from walletgate.config import Config
from walletgate.journal import replay
from walletgate.ledger import keys, midas, transfer
from walletgate.ledger.core import Ledger

# An expectation: the outcome, or (outcome, first element of the answer).
Expect = str | tuple[str, Any]
Step = tuple[Op, Expect]

M = "mx-m"  # MINI.GAME player
T1, T2 = "mx-t1", "mx-t2"  # transfer players
W = "mx-w"  # Wallet v2 player
MO = "mx-o"  # Midas openid
A = "mx-a"  # admin-only account
SCENARIO_TIMEOUT_S = 60


def scripted_run() -> list[Step]:
    """Every case the acceptance names, in an order whose outcomes are known."""
    u = UNIT
    return [
        # MINI.GAME
        (adm("fund-m", 1_000 * u, tenant=MG_T, player=M, currency="usdt"), "stored"),
        (mg("b1", 1, -30 * u, bet=30 * u, session="r1", player=M), ("stored", 1)),
        (mg("b2", 1, -10 * u, bet=10 * u, session="r1", player=M), ("stored", 1)),
        (mg("w1", 3, 50 * u, session="r1", awards=["b1"], player=M), ("stored", 1)),
        (mg("b3", 1, -5 * u, bet=5 * u, session="r2", player=M), ("stored", 1)),
        (mg("w2", 4, 0, session="r2", player=M), ("stored", 1)),  # closes r2: b3 settled
        (mg("b4", 1, -7 * u, bet=7 * u, session="r3", end_round=True, player=M), ("stored", 1)),
        (mg("b5", 1, -9 * u, bet=9 * u, session="r4", player=M), ("stored", 1)),
        (mg("c1", 2, 9 * u, session="r4", cancel="b5", player=M), ("stored", 1)),  # refund
        (mg("c2", 2, 1 * u, cancel="ghost1", player=M), ("stored", 1)),  # tombstone
        (mg("c3", 2, 1 * u, cancel="ghost2", player=M), ("stored", 1)),  # tombstone
        (mg("ghost2", 1, -u, bet=u, player=M), ("stored", 10010)),  # order cancelled
        (mg("c4", 2, 30 * u, cancel="b1", player=M), ("stored", 10010)),  # order settled
        (mg("c6", 2, 30 * u, cancel="ghost2", player=M), ("stored", 1)),  # no-op
        (mg("b6", 1, -100_000 * u, bet=100_000 * u, session="r1", player=M), ("stored", 10001)),
        (mg("b7", 1, -2 * u, bet=2 * u, session="r5", player=M), ("stored", 1)),
        (mg("o1", 3, 336_600, session="r5", player=M), ("stored", 1)),
        (mg("o1", 4, 336_600, session="r5", player=M), ("replay", 1)),  # closes r5: b7 settled
        (mg("b8", 1, -3 * u, bet=3 * u, session="r1", player=M), ("stored", 1)),
        (mg("b1", 1, -31 * u, bet=31 * u, session="r1", player=M), "conflict"),
        (mg("b1", 1, -30 * u, bet=30 * u, session="r1", player=M), ("replay", 1)),
        (adm("fund-mu", 50 * u, tenant=MG_T, player=M, currency="usd"), "stored"),
        (mg("bu1", 1, -5 * u, bet=5 * u, currency="usd", player=M), ("stored", 1)),
        (mg("cu1", 2, 5 * u, cancel="bu1", player=M), ("stored", 1)),  # refunds in usd
        (mg("l1", 7, u, player=M, protocol="minigame_luck"), ("stored", 1)),
        (mg("f1", 6, -2 * u, player=M), ("stored", 1)),
        (mg("cf1", 2, 2 * u, cancel="f1", player=M), ("stored", 1)),
        # Transfer
        (tr("in1", 10_000_100, player=T1), ("stored", "applied")),
        (tr("out1", -400 * u, player=T1), ("stored", "applied")),
        (tr("in1", 10_000_100, player=T1), ("replay", "applied")),
        (tr("in1", 10_000_200, player=T1), "conflict"),
        (tr("big1", -700 * u, player=T1), ("stored", "rejected")),
        (tr("big1", -700 * u, player=T1), ("replay", "rejected")),
        (tr("in2", 1, player=T1), ("stored", "applied")),
        (tr("t2-out", -u, player=T2), ("stored", "rejected")),
        # Wallet v2
        (adm("fund-w", 100_000 * CENT, tenant=WV_T, player=W, currency="USD"), "stored"),
        (adm("fund-wu", 1_000 * CENT, tenant=WV_T, player=W, currency="UAH"), "stored"),
        (wv_bet(85, 100 * CENT, round_id=85, player=W), ("stored", "1")),
        (wv_bet(87, 100 * CENT, round_id=85, player=W), ("stored", "1")),
        (wv_win(86, 50 * CENT, round_id=85, player=W), ("stored", "1")),  # settles 85 and 87
        (wv_cancel(85, player=W), ("stored", "SETTLED")),
        (wv_bet(10, 100 * CENT, player=W), ("stored", "1")),
        (wv_win(12, 0, round_id=10, player=W), ("stored", "1")),  # zero win closes round 10
        (wv_bet(20, 100 * CENT, player=W), ("stored", "1")),
        (wv_cancel(20, player=W), ("stored", "1")),  # refund
        (wv_cancel(5, player=W), ("stored", "1")),  # tombstone
        (wv_bet(5, 100 * CENT, round_id=85, player=W), ("stored", "CANCELLED")),
        (wv_cancel(6, player=W), ("stored", "1")),  # tombstone, id 6 unused until the rebuild
        (wv_bet(7, 10**9 * CENT, player=W), ("stored", "INSUFFICIENT_FUNDS")),
        (wv_cancel(7, player=W), ("stored", "1")),  # no-op: the bet's outcome is a rejection
        (wv_win(11, 300 * CENT, player=W), ("stored", "1")),
        (wv_bet(30, 100 * CENT, round_id=30, player=W), ("stored", "1")),
        (wv_bet(85, 101 * CENT, round_id=85, player=W), "conflict"),
        (wv_bet(123, 100 * CENT, currency="UAH", player=W), ("stored", "1")),
        (wv_cancel(123, currency="UAH", player=W), ("stored", "1")),
        # Midas
        (adm("save-o", 100 * u, tenant=MD_APP, player=MO, currency="1", kind="save"), "stored"),
        (md_present("P1", 10 * u, player=MO), ("stored", 0)),
        (md_pay("B1", 4 * u, player=MO), ("stored", 0)),
        (md_pay("B2", 16 * u, player=MO), ("stored", 0)),
        (md_pay("B3", 5 * u, player=MO), ("stored", 0)),
        (md_cancel("B2", player=MO), ("applied", 0)),
        (md_cancel("B2", player=MO), ("repeat", 90015)),
        (md_pay("B4", 1_000 * u, player=MO), ("stored", 90013)),
        (md_pay("B1", 5 * u, player=MO), ("conflict", 90012)),
        (md_cancel("NEVER", player=MO), ("not_found", 90000)),
        (md_cancel("P1", player=MO), ("not_found", 90000)),
        (
            adm("save-os", 50 * u, tenant=MD_APP, player=MO, currency="sandbox-1", kind="save"),
            "stored",
        ),
        (md_pay("SB1", u, player=MO, sandbox=True), ("stored", 0)),
        (md_cancel("SB1", player=MO, sandbox=True), ("applied", 0)),
        (md_present("P2", 3 * u, player=MO), ("stored", 0)),
        (md_pay("B1", 4 * u, player=MO), ("replay", 0)),
        # Admin
        (adm("a1", 100 * u, tenant=MG_T, player=A, currency="usd"), "stored"),
        (adm("a2", -30 * u, tenant=MG_T, player=A, currency="usd"), "stored"),
        # A debit beyond the balance: a stored rejection.
        (adm("a3", -1_000 * u, tenant=MG_T, player=A, currency="usd"), "stored"),
        (adm("a1", 7, tenant=MG_T, player=A, currency="usd"), "conflict"),
        (adm("a1", 100 * u, tenant=MG_T, player=A, currency="usd"), "replay"),
    ]


def after_rebuild_run() -> list[tuple[Op, Expect, Callable[[Reply], bool] | None]]:
    """New operations on the rebuilt Redis: the state they depend on came from the journal."""
    u = UNIT
    cancelled = ("stored", 10010)
    return [
        # Tombstones still reject; settled bets still refuse cancels; unsettled ones refund.
        (
            mg("ghost1", 1, -u, bet=u, player=M),
            cancelled,
            lambda r: r.answer[2] == "order cancelled",
        ),
        (
            mg("cx1", 2, 30 * u, cancel="b1", player=M),
            cancelled,
            lambda r: r.answer[2] == "order settled",
        ),
        (
            mg("cx3", 2, 5 * u, cancel="b3", player=M),
            cancelled,
            lambda r: r.answer[2] == "order settled",
        ),
        (
            mg("cx4", 2, 7 * u, cancel="b4", player=M),
            cancelled,
            lambda r: r.answer[2] == "order settled",
        ),
        (
            mg("cx7", 2, 2 * u, cancel="b7", player=M),
            cancelled,
            lambda r: r.answer[2] == "order settled",
        ),
        (mg("cx2", 2, 10 * u, cancel="b2", player=M), ("stored", 1), None),
        (mg("cx8", 2, 3 * u, cancel="b8", player=M), ("stored", 1), None),
        (wv_bet(6, 100 * CENT, player=W), ("stored", "CANCELLED"), None),
        (wv_cancel(87, player=W), ("stored", "SETTLED"), None),
        (wv_cancel(10, player=W), ("stored", "SETTLED"), None),
        (wv_cancel(30, player=W), ("stored", "1"), None),
        (md_cancel("B3", player=MO), ("applied", 0), lambda r: r.answer[3] == 0),
        (md_cancel("B1", player=MO), ("applied", 0), lambda r: r.answer[3] == 4 * u),
        (md_pay("B5", u, player=MO), ("stored", 0), None),
        (adm("a4", u, tenant=MG_T, player=A, currency="usd"), "stored", None),
        (tr("in3", 1, player=T1), ("stored", "applied"), None),
    ]


def bulk_run(seed: int) -> list[list[Op]]:
    """Random operations, one list per player (sent in order; players run in parallel)."""
    rng = random.Random(seed)
    lists: list[list[Op]] = []
    for index in range(2):
        lists.append(bulk_minigame(rng, f"mxb-m{index}"))
        lists.append(bulk_wallet_v2(rng, f"mxb-w{index}", first_id=1000 * (index + 1)))
        lists.append(bulk_transfer(rng, f"mxb-t{index}"))
        lists.append(bulk_midas(rng, f"mxb-o{index}"))
        lists.append(bulk_admin(rng, f"mxb-a{index}"))
    return lists


BULK_STEPS = 30


def again_or_conflict(rng: random.Random, ops: list[Op], change: str) -> Op | None:
    """A previous op sent again, or with ``change`` (an amount param) altered: a conflict."""
    if not ops:
        return None
    previous = rng.choice(ops)
    if rng.random() < 0.5 or change not in previous.params:
        return previous
    params = dict(previous.params)
    params[change] = params[change] + 1
    return Op(
        previous.kind, previous.tenant, previous.player, previous.currency, previous.key, params
    )


def bulk_minigame(rng: random.Random, player: str) -> list[Op]:
    u = UNIT
    ops = [adm(f"{player}-fund", 500 * u, tenant=MG_T, player=player, currency="usdt")]
    bets: list[str] = []
    ghosts: list[str] = []
    for n in range(BULK_STEPS):
        key = f"{player}-{n}"
        session = f"s{rng.randrange(4)}"
        roll = rng.random()
        if roll < 0.35:
            amount = rng.randrange(1, 60) * u
            ops.append(
                mg(
                    key,
                    1,
                    -amount,
                    bet=amount,
                    session=session,
                    end_round=rng.random() < 0.1,
                    player=player,
                )
            )
            bets.append(key)
        elif roll < 0.5:
            awards = rng.sample(bets, min(len(bets), rng.randrange(3))) + ["nope"] * (
                rng.random() < 0.2
            )
            ops.append(
                mg(key, 3, rng.randrange(0, 80) * u, session=session, awards=awards, player=player)
            )
        elif roll < 0.55:
            ops.append(mg(key, 4, rng.randrange(0, 10) * u, session=session, player=player))
        elif roll < 0.75:
            if bets and rng.random() < 0.7:
                target = rng.choice(bets)
            else:
                target = f"{player}-ghost{n}"
                ghosts.append(target)
            ops.append(mg(key, 2, rng.randrange(1, 60) * u, cancel=target, player=player))
        elif roll < 0.85 and ghosts:
            ops.append(mg(ghosts.pop(), 1, -u, bet=u, session=session, player=player))
        else:
            again = again_or_conflict(rng, [op for op in ops if op.kind == "mg"], "money")
            if again is not None:
                ops.append(again)
    return ops


def bulk_wallet_v2(rng: random.Random, player: str, first_id: int) -> list[Op]:
    """Ids from ``first_id`` on (ids are unique per agent and currency, across players)."""
    ops = [adm(f"{player}-fund", 5_000 * CENT * 100, tenant=WV_T, player=player, currency="USD")]
    bets: list[int] = []
    wins: list[int] = []
    ghosts: list[int] = []
    for n in range(BULK_STEPS):
        ident = first_id + n
        round_id = rng.choice([None, 1, 2, 3])
        roll = rng.random()
        if roll < 0.4:
            cents = rng.randrange(0, 20_000) if rng.random() < 0.9 else 10**9
            ops.append(wv_bet(ident, cents * CENT, round_id=round_id, player=player))
            bets.append(ident)
        elif roll < 0.6:
            ops.append(
                wv_win(ident, rng.randrange(0, 5_000) * CENT, round_id=round_id, player=player)
            )
            wins.append(ident)
        elif roll < 0.8:
            choices = bets * 3 + wins
            if choices and rng.random() < 0.8:
                target = rng.choice(choices)
            else:
                target = first_id + 500 + n
                ghosts.append(target)
            ops.append(wv_cancel(target, player=player))
        elif roll < 0.87 and ghosts:
            ops.append(wv_bet(ghosts.pop(), 100 * CENT, player=player))
        else:
            again = again_or_conflict(rng, [op for op in ops if op.kind == "wv_bet"], "units")
            if again is not None:
                ops.append(again)
    return ops


def bulk_transfer(rng: random.Random, player: str) -> list[Op]:
    ops: list[Op] = []
    for n in range(BULK_STEPS):
        roll = rng.random()
        if roll < 0.85:
            amount = rng.randrange(1, 10**7) * rng.choice([1, -1])
            ops.append(tr(f"{player}-{n}", amount, player=player))
        else:
            again = again_or_conflict(rng, ops, "amount")
            if again is not None:
                ops.append(again)
    return ops


def bulk_midas(rng: random.Random, player: str) -> list[Op]:
    u = UNIT
    ops = [adm(f"{player}-save", 300 * u, tenant=MD_APP, player=player, currency="1", kind="save")]
    bills: list[str] = []
    for n in range(BULK_STEPS):
        bill = f"{player.upper()}-{n}"
        roll = rng.random()
        if roll < 0.4:
            ops.append(md_pay(bill, rng.randrange(1, 60) * u, player=player))
            bills.append(bill)
        elif roll < 0.6:
            ops.append(md_present(bill, rng.randrange(1, 30) * u, player=player))
            bills.append(bill)
        elif roll < 0.85:
            target = rng.choice(bills) if bills and rng.random() < 0.9 else f"NONE-{n}"
            ops.append(md_cancel(target, player=player))
        else:
            choices = [op for op in ops if op.kind in ("md_pay", "md_present")]
            again = again_or_conflict(rng, choices, "units")
            if again is not None:
                ops.append(again)
    return ops


def bulk_admin(rng: random.Random, player: str) -> list[Op]:
    ops: list[Op] = []
    for n in range(BULK_STEPS):
        if rng.random() < 0.85 or not ops:
            amount = rng.randrange(1, 10**6) * rng.choice([1, 1, -1])
            ops.append(adm(f"{player}-{n}", amount, tenant=WV_T, player=player, currency="EUR"))
        else:
            again = again_or_conflict(rng, ops, "amount")
            assert again is not None
            ops.append(again)
    return ops


def players_of(ops: list[Op]) -> set[tuple[str, str]]:
    return {(op.tenant, op.player) for op in ops}


def meets(reply: Reply, expect: Expect) -> bool:
    if isinstance(expect, str):
        return reply.outcome == expect
    return (reply.outcome, reply.answer[0]) == expect


async def prepare_players(ledger: Ledger, ops: list[Op]) -> None:
    """Sessions and transfer accounts (not journaled: registered again after a rebuild)."""
    for tenant, player in sorted(players_of(ops)):
        if tenant == MD_APP:
            await register_midas(ledger, player)
        elif tenant == TR_T:
            await transfer.authorize(
                ledger, tenant=TR_T, player=player, default_currency="usdt", ttl_s=3600
            )


async def send_lists(ledger: Ledger, lists: list[list[Op]]) -> list[list[Reply]]:
    async def one_player(ops: list[Op]) -> list[Reply]:
        return [await send(ledger, op) for op in ops]

    return list(await asyncio.gather(*(one_player(ops) for ops in lists)))


def verify(config: Config) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = asyncio.run(replay.verify(config, out=out, err=io.StringIO()))
    return code, out.getvalue().splitlines()


def rebuild(config: Config) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    code = asyncio.run(replay.rebuild(config, out=out, err=err))
    return code, out.getvalue().splitlines(), err.getvalue()


async def midas_views(ledger: Ledger) -> list[midas.Balance]:
    views = []
    for currency in ("1", "sandbox-1"):
        _, view = await midas.read_balance(ledger, appid=MD_APP, openid=MO, currency=currency)
        views.append(view)
    return views


@dataclass
class MixedRun:
    """Everything the mixed run observed; the tests below assert on parts of it."""

    scripted_failures: list[tuple[Op, Expect, Reply]] = field(default_factory=list)
    bulk_outcomes: set[tuple[str, str]] = field(default_factory=set)
    verify_original: tuple[int, list[str]] = (-1, [])
    rebuild: tuple[int, list[str], str] = (-1, [], "")
    state_differences: list[str] = field(default_factory=list)
    accounts: int = 0
    verify_rebuilt: tuple[int, list[str]] = (-1, [])
    midas_before: list[midas.Balance] = field(default_factory=list)
    midas_after: list[midas.Balance] = field(default_factory=list)
    resent: int = 0
    resend_mismatches: list[tuple[Op, Reply, Reply, Reply]] = field(default_factory=list)
    after_failures: list[tuple[Op, Expect, Reply]] = field(default_factory=list)
    verify_grown: tuple[int, list[str]] = (-1, [])
    keymap_differences: list[str] = field(default_factory=list)


def mixed_run(source: Backend, target: Backend, journal_dir: Path) -> MixedRun:
    """Run, verify, rebuild into ``target`` (empty), compare, send everything again there."""
    result = MixedRun()
    scripted = scripted_run()
    bulk = bulk_run(seed=2024)
    after_ops = after_rebuild_run()
    all_ops = [op for op, _ in scripted] + [op for ops in bulk for op in ops]
    streams = source.streams_of(players_of(all_ops) | players_of([op for op, _, _ in after_ops]))
    source_config = source.config(journal_dir)
    target_config = target.config(journal_dir)

    async def original() -> tuple[list[Reply], list[list[Reply]]]:
        ledger = source.ledger()
        run = await WriterRun(source_config).start()
        try:
            await prepare_players(ledger, all_ops)
            scripted_replies = []
            for op, expect in scripted:
                reply = await send(ledger, op)
                if not meets(reply, expect):
                    result.scripted_failures.append((op, expect, reply))
                scripted_replies.append(reply)
            bulk_replies = await send_lists(ledger, bulk)
            result.midas_before = await midas_views(ledger)
        finally:
            await ledger.runner.close()
            await run.drain_and_stop(streams)
        return scripted_replies, bulk_replies

    scripted_replies, bulk_replies = asyncio.run(asyncio.wait_for(original(), SCENARIO_TIMEOUT_S))
    sent = list(zip([op for op, _ in scripted], scripted_replies, strict=True))
    for ops, replies in zip(bulk, bulk_replies, strict=True):
        sent.extend(zip(ops, replies, strict=True))
        result.bulk_outcomes.update(
            (op.kind, reply.outcome) for op, reply in zip(ops, replies, strict=True)
        )

    result.verify_original = verify(source_config)
    client = source.client()
    try:
        drop_writer_keys(client)
    finally:
        client.close()
    before = player_state(source)
    keymap_before = keymap_state(source)
    result.accounts = sum(1 for name in before if name.endswith(":acct"))

    result.rebuild = rebuild(target_config)
    result.state_differences = state_differences(before, player_state(target))
    result.keymap_differences = state_differences(keymap_before, keymap_state(target))
    result.verify_rebuilt = verify(target_config)

    async def again() -> None:
        ledger = target.ledger()
        run = await WriterRun(target_config).start()
        try:
            await prepare_players(ledger, all_ops)
            result.midas_after = await midas_views(ledger)
            for op, first in sent:
                expected = expected_resend(op, first)
                if expected is None:
                    continue
                result.resent += 1
                reply = await send(ledger, op)
                if not same_answer(expected, reply):
                    result.resend_mismatches.append((op, first, expected, reply))
            known_ptx = {reply.answer[2] for op, reply in sent if op.kind == "tr"}
            for op, expect, extra in after_ops:
                reply = await send(ledger, op)
                fresh_ptx = op.kind != "tr" or reply.answer[2] not in known_ptx
                if not (meets(reply, expect) and (extra is None or extra(reply)) and fresh_ptx):
                    result.after_failures.append((op, expect, reply))
        finally:
            await ledger.runner.close()
            await run.drain_and_stop(streams)

    asyncio.run(asyncio.wait_for(again(), SCENARIO_TIMEOUT_S))
    result.verify_grown = verify(target_config)
    return result


@pytest.fixture(
    scope="module", params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)]
)
def mixed(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MixedRun]:
    """One mixed run per backend, rebuilt into a Redis of its own (a second redis-server, or a
    second 3-primary cluster), shared by the tests of this module."""
    journal_dir = tmp_path_factory.mktemp("journal-" + request.param)
    if request.param == "standalone":
        flushall(redis_server.url)
        rebuilt = RedisServer(port=free_port(), directory=tmp_path_factory.mktemp("rebuilt"))
        rebuilt.start()
        try:
            yield mixed_run(
                Backend("standalone", redis_server.url, cluster=False),
                Backend("rebuilt", rebuilt.url, cluster=False),
                journal_dir,
            )
        finally:
            rebuilt.stop()
        return
    cluster: ClusterProcess = request.getfixturevalue("redis_cluster")
    cluster.flushall()
    second = ClusterProcess(directory=tmp_path_factory.mktemp("rebuilt-cluster"))
    try:
        second.start()
        yield mixed_run(
            Backend("cluster", cluster.url, cluster=True),
            Backend("rebuilt-cluster", second.url, cluster=True),
            journal_dir,
        )
    finally:
        second.stop()


def flushall(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def test_the_run_produced_every_case(mixed: MixedRun) -> None:
    assert mixed.scripted_failures == []
    for wanted in (
        ("mg", "stored"),
        ("mg", "replay"),
        ("mg", "conflict"),
        ("wv_bet", "stored"),
        ("wv_win", "stored"),
        ("wv_cancel", "stored"),
        ("wv_cancel", "win"),
        ("md_pay", "stored"),
        ("md_present", "stored"),
        ("md_cancel", "applied"),
        ("md_cancel", "repeat"),
        ("tr", "stored"),
        ("tr", "conflict"),
        ("adm", "insufficient"),
    ):
        assert wanted in mixed.bulk_outcomes, wanted


def test_journal_verifies_against_the_original_redis(mixed: MixedRun) -> None:
    assert mixed.verify_original == (0, [])


def test_rebuild_restores_every_account_and_record(mixed: MixedRun) -> None:
    code, problems, progress = mixed.rebuild
    assert (code, problems) == (0, []), progress
    assert mixed.accounts >= 15
    assert not mixed.state_differences, "\n".join(mixed.state_differences)
    assert mixed.midas_after == mixed.midas_before
    assert mixed.verify_rebuilt == (0, [])


def test_every_operation_answers_as_before_after_rebuild(mixed: MixedRun) -> None:
    assert mixed.resent >= 350
    assert not mixed.resend_mismatches, mixed.resend_mismatches[:5]


def test_rebuilt_tombstones_settlements_and_counters_still_hold(mixed: MixedRun) -> None:
    assert not mixed.after_failures, mixed.after_failures
    # The new outcomes went to the same journal, after the rebuilt ones: still consistent.
    assert mixed.verify_grown == (0, [])


def test_rebuild_restores_the_key_to_player_map(mixed: MixedRun) -> None:
    """Admin lookups without ?player= go through this map; the writer maps every transaction
    key a record wrote (a cancel's tombstone on the bet's key too)."""
    assert not mixed.keymap_differences, "\n".join(mixed.keymap_differences)


def test_rebuild_keeps_the_first_player_of_a_reused_key(
    redis_url: str, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """A Wallet v2 id reused by a second player (not rejected online): the writer keeps the
    first player in the key map, and so must the rebuilt map. The second player is picked in a
    lower journal bucket than the first, so the rebuild reads its records first."""
    source = Backend("standalone", redis_url, cluster=False)
    target = Backend("rebuilt", fresh_redis.url, cluster=False)

    def bucket(player: str) -> int:
        return keys.journal_bucket(WV_T, player, source.buckets, False)

    first = next(f"kx-a{n}" for n in range(1000) if bucket(f"kx-a{n}") == source.buckets - 1)
    second = next(f"kx-b{n}" for n in range(1000) if bucket(f"kx-b{n}") == 0)
    config = source.config(tmp_path / "journal")
    streams = source.streams_of([(WV_T, first), (WV_T, second)])

    async def scenario() -> None:
        ledger = source.ledger()
        try:
            for player in (first, second):
                funding = adm(
                    "fund-" + player, 100 * UNIT, tenant=WV_T, player=player, currency="USD"
                )
                assert (await send(ledger, funding)).outcome == "stored"
                assert (await send(ledger, wv_bet(777, CENT, player=player))).outcome == "stored"
                await drain_journal(config, streams)  # the first player's record is mapped first
        finally:
            await ledger.runner.close()

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S))
    entry = "wg:{keymap:" + WV_T + ":USD:777}"
    assert keymap_state(source)[entry][0] == {"player": first}
    client = source.client()
    try:
        drop_writer_keys(client)
    finally:
        client.close()
    code, problems, progress = rebuild(target.config(tmp_path / "journal"))
    assert (code, problems) == (0, []), progress
    assert keymap_state(target)[entry][0] == {"player": first}
