"""Helpers of the acceptance tests (test_ledger_acceptance.py, test_journal_mixed.py).

* :class:`Backend`: one way to build ledgers, clients and configs on a standalone Redis (the
  hot-path FastRedisRunner) or on a Redis Cluster (ClusterRunner, journal buckets per slot).
* Journal access: the pending records of some streams, the records on disk, and a
  :class:`~walletgate.journal.writer.JournalWriter` run until those streams are empty.
* :class:`Op` and :func:`send`: one operation of any family (MINI.GAME, transfer, Wallet v2,
  Midas, admin) that can be sent, sent again, and compared by its protocol answer.
* :func:`player_state`: every player-tagged key of a Redis (fields and TTL), to compare a
  rebuilt Redis with the original.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio

from walletgate.config import Config, RedisConfig, parse_config
from walletgate.journal import replay
from walletgate.journal.streams import connect
from walletgate.journal.writer import JournalWriter, WriterSettings
from walletgate.ledger import admin, keys, midas, minigame, transfer, wallet_v2
from walletgate.ledger.connect import make_runner
from walletgate.ledger.core import Ledger, LedgerSettings
from walletgate.ledger.sessions import register_session

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
STANDALONE_BUCKETS = 4
ADMIN_TOKEN = "acceptance-admin-token-0123456789abcdef"
IDEMPOTENCY_TTL_S = 604_800
MIDAS_TTL_S = 172_800
TTL_SLACK_S = 5

# Tenants of the four families (as in the family tests).
MG_T = "10013"
TR_T = "1005"
WV_T = "agent_1"
MD_APP = "wx1234567"
MD_SESSION_KEY = "V7Q38/i2KXaqrQyl2Yx9Hg=="
MD_DIGEST = midas.session_digest(MD_SESSION_KEY)
UNIT = 10_000  # one major unit, one Midas coin
CENT = 100  # one Wallet v2 cent


# --- Backends --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A Redis to run the ledger on: standalone or a cluster (seed ``url``)."""

    name: str
    url: str
    cluster: bool
    idempotency_ttl_s: int = IDEMPOTENCY_TTL_S
    midas_ttl_s: int = MIDAS_TTL_S

    @property
    def buckets(self) -> int:
        return keys.CLUSTER_SLOTS if self.cluster else STANDALONE_BUCKETS

    @property
    def settings(self) -> LedgerSettings:
        return LedgerSettings(
            journal_buckets=self.buckets,
            cluster=self.cluster,
            idempotency_ttl_s=self.idempotency_ttl_s,
            midas_ttl_s=self.midas_ttl_s,
        )

    def with_ttls(self, idempotency_ttl_s: int, midas_ttl_s: int) -> Backend:
        return dataclasses.replace(
            self, idempotency_ttl_s=idempotency_ttl_s, midas_ttl_s=midas_ttl_s
        )

    def redis_config(self, connections: int = 1) -> RedisConfig:
        return RedisConfig(url=self.url, cluster=self.cluster, connections=connections)

    def ledger(self, connections: int = 1) -> Ledger:
        """A ledger on the gateway's hot-path runner (make_runner)."""
        return Ledger(make_runner(self.redis_config(connections)), self.settings)

    def client(self) -> Any:
        """A synchronous redis-py client that decodes replies (RedisCluster on a cluster)."""
        if self.cluster:
            return redis.RedisCluster.from_url(self.url, decode_responses=True)
        return redis.Redis.from_url(self.url, decode_responses=True)

    def config(self, journal_dir: Path) -> Config:
        return parse_config(
            {
                "redis": {"url": self.url, "cluster": self.cluster},
                "journal": {
                    "dir": str(journal_dir),
                    "buckets": STANDALONE_BUCKETS,
                    "flush_interval_ms": 20,
                },
                "idempotency": {"ttl_s": self.idempotency_ttl_s, "midas_ttl_s": self.midas_ttl_s},
                "admin": {"token": ADMIN_TOKEN},
            }
        )

    def stream_of(self, tenant: str, player: str) -> str:
        """The pending-journal stream of one player (the ledger's own choice)."""
        bucket = keys.journal_bucket(tenant, player, self.buckets, self.cluster)
        return keys.journal_stream_key(bucket, self.cluster)

    def streams_of(self, players: Iterable[tuple[str, str]]) -> list[str]:
        return sorted({self.stream_of(tenant, player) for tenant, player in players})


async def close_all(ledgers: Iterable[Ledger]) -> None:
    for ledger in ledgers:
        await ledger.runner.close()


# --- Journal ---------------------------------------------------------------------------------


def pending_records(client: Any, streams: Iterable[str]) -> list[dict[str, str]]:
    """Every record still in the given pending-journal streams."""
    return [fields for stream in sorted(set(streams)) for _, fields in client.xrange(stream)]


def records_of(
    records: Iterable[Mapping[str, Any]], tenant: str, player: str, currency: str | None = None
) -> list[dict[str, Any]]:
    """One player's (or account's) records in seq order."""
    chosen = [
        dict(record)
        for record in records
        if record["tenant"] == tenant
        and record["player"] == player
        and (currency is None or record["currency"] == currency)
    ]
    return sorted(chosen, key=lambda record: (record["currency"], int(record["seq"])))


def player_journal(
    backend: Backend, tenant: str, player: str, currency: str | None = None
) -> list[dict[str, Any]]:
    """A player's pending records, read from its own stream."""
    client = backend.client()
    try:
        stream = backend.stream_of(tenant, player)
        return records_of(pending_records(client, [stream]), tenant, player, currency)
    finally:
        client.close()


def disk_records(directory: Path) -> list[dict[str, Any]]:
    """Every complete line of every segment (no dedupe: the tests count records)."""
    records = []
    for path in replay.segment_paths(directory):
        for line in path.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                records.append(orjson.loads(line))
    return records


async def pending_count(client: Any, streams: Sequence[str]) -> int:
    total = 0
    for stream in streams:
        total += int(await client.xlen(stream))
    return total


class WriterRun:
    """A journal writer of the test's own: started, then stopped once ``streams`` are empty."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = connect(config.redis)
        self.writer = JournalWriter(self.client, WriterSettings.from_config(config))

    async def start(self) -> WriterRun:
        await self.writer.start()
        return self

    async def drain_and_stop(self, streams: Sequence[str], timeout_s: float = 30.0) -> None:
        try:
            deadline = time.monotonic() + timeout_s
            while await pending_count(self.client, streams):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the journal writer did not drain in {timeout_s} s")
                await asyncio.sleep(0.02)
            status = self.writer.status()
            assert status.alive and status.sequence_violations_total == 0, status
        finally:
            await self.writer.stop()
            await self.client.aclose()


async def drain_journal(config: Config, streams: Sequence[str]) -> None:
    """Run a writer until nothing is pending in ``streams``, then stop it."""
    run = await WriterRun(config).start()
    await run.drain_and_stop(streams)


def drop_writer_keys(client: Any) -> None:
    """The writer's own coordination keys (leases, stats) are not journaled state."""
    for name in list(client.scan_iter(match="wg:{journal-*")):
        client.delete(name)


# --- Operations of every family --------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One request as the ledger sees it. ``account`` is (tenant, player, currency)."""

    kind: str
    tenant: str
    player: str
    currency: str
    key: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def account(self) -> tuple[str, str, str]:
        return (self.tenant, self.player, self.currency)


@dataclass(frozen=True)
class Reply:
    """``outcome``: "stored" (a new stored outcome), "replay", or the ledger's other outcomes
    (conflict, overflow, bad_cancel, insufficient, win, not_found, repeat, ...).
    ``answer``: what the protocol answers from it (code, balance, msg, ptx_id, created_us, ...).
    """

    outcome: str
    answer: tuple[Any, ...]


def mg(
    order_id: str,
    type_: int,
    money: int,
    *,
    player: str,
    bet: int = 0,
    session: str = "",
    end_round: bool = False,
    cancel: str = "",
    awards: Sequence[str] = (),
    currency: str = "usdt",
    tenant: str = MG_T,
    protocol: str = "minigame",
) -> Op:
    return Op(
        "mg",
        tenant,
        player,
        currency,
        order_id,
        {
            "type": type_,
            "money": money,
            "bet": bet,
            "session": session,
            "end_round": end_round,
            "cancel": cancel,
            "awards": tuple(awards),
            "protocol": protocol,
        },
    )


def tr(tx_id: str, amount: int, *, player: str, currency: str = "usdt", tenant: str = TR_T) -> Op:
    return Op("tr", tenant, player, currency, tx_id, {"amount": amount})


def wv_bet(
    bet_id: int,
    units: int,
    *,
    player: str,
    round_id: int | None = None,
    currency: str = "USD",
    tenant: str = WV_T,
) -> Op:
    key = wallet_v2.bet_key(currency, bet_id)
    return Op(
        "wv_bet", tenant, player, currency, key, {"id": bet_id, "units": units, "round": round_id}
    )


def wv_win(
    win_id: int,
    units: int,
    *,
    player: str,
    round_id: int | None = None,
    currency: str = "USD",
    tenant: str = WV_T,
) -> Op:
    key = wallet_v2.bet_key(currency, win_id)
    return Op(
        "wv_win", tenant, player, currency, key, {"id": win_id, "units": units, "round": round_id}
    )


def wv_cancel(bet_id: int, *, player: str, currency: str = "USD", tenant: str = WV_T) -> Op:
    key = wallet_v2.cancel_key(currency, bet_id)
    return Op("wv_cancel", tenant, player, currency, key, {"id": bet_id})


def _md(
    kind: str, bill_no: str, units: int, player: str, zone: str, sandbox: bool, appid: str
) -> Op:
    currency = midas.currency_for(zone, sandbox)
    params = {"units": units, "zone": zone, "sandbox": sandbox}
    return Op(kind, appid, player, currency, bill_no, params)


def md_pay(
    bill_no: str,
    units: int,
    *,
    player: str,
    zone: str = "1",
    sandbox: bool = False,
    appid: str = MD_APP,
) -> Op:
    return _md("md_pay", bill_no, units, player, zone, sandbox, appid)


def md_present(
    bill_no: str,
    units: int,
    *,
    player: str,
    zone: str = "1",
    sandbox: bool = False,
    appid: str = MD_APP,
) -> Op:
    return _md("md_present", bill_no, units, player, zone, sandbox, appid)


def md_cancel(
    bill_no: str, *, player: str, zone: str = "1", sandbox: bool = False, appid: str = MD_APP
) -> Op:
    return _md("md_cancel", bill_no, 0, player, zone, sandbox, appid)


def adm(
    ref: str, amount: int, *, tenant: str, player: str, currency: str, kind: str = "adjust"
) -> Op:
    return Op(
        "adm",
        tenant,
        player,
        currency,
        "admin:" + ref,
        {"ref": ref, "amount": amount, "kind": kind},
    )


_NEW = frozenset({"applied", "rejected", "stored"})


def _normal(outcome: str) -> str:
    return "stored" if outcome in _NEW else outcome


async def send(ledger: Ledger, op: Op) -> Reply:
    """Send ``op`` once through the ledger and reduce the result to its protocol answer."""
    p = op.params
    if op.kind == "mg":
        change = await minigame.change_balance(
            ledger,
            tenant=op.tenant,
            player=op.player,
            currency=op.currency,
            protocol=p["protocol"],
            order_id=op.key,
            type_=p["type"],
            money_units=p["money"],
            bet_units=p["bet"],
            session_id=p["session"],
            end_round=p["end_round"],
            cancel_order_id=p["cancel"],
            award_order_ids=list(p["awards"]),
            refs={"order_id": op.key},
        )
        return Reply(_normal(change.status), (change.code, change.balance_units, change.msg))
    if op.kind == "tr":
        moved = await transfer.transfer(
            ledger,
            tenant=op.tenant,
            player=op.player,
            currency=op.currency,
            amount_units=p["amount"],
            tx_id=op.key,
            refs={"tx_id": op.key},
            pending_ttl_s=30,
        )
        answer = (moved.state, moved.code, moved.ptx_id, moved.balance_units)
        return Reply(_normal(moved.outcome), answer)
    if op.kind in ("wv_bet", "wv_win", "wv_cancel"):
        common = {"tenant": op.tenant, "player": op.player, "currency": op.currency}
        if op.kind == "wv_bet":
            result = await wallet_v2.bet(
                ledger, **common, bet_id=p["id"], amount_units=p["units"], round_id=p["round"]
            )
        elif op.kind == "wv_win":
            result = await wallet_v2.win(
                ledger, **common, win_id=p["id"], amount_units=p["units"], round_id=p["round"]
            )
        else:
            result = await wallet_v2.cancel(ledger, **common, bet_id=p["id"])
        answer = (result.code, result.balance_units, result.created_us)
        return Reply(_normal(result.outcome), answer)
    if op.kind in ("md_pay", "md_present", "md_cancel"):
        where = {
            "appid": op.tenant,
            "openid": op.player,
            "zone_id": p["zone"],
            "sandbox": p["sandbox"],
            "bill_no": op.key,
            "digest": MD_DIGEST,
        }
        if op.kind == "md_pay":
            money = await midas.pay(ledger, **where, amount_units=p["units"])
        elif op.kind == "md_present":
            money = await midas.present(ledger, **where, amount_units=p["units"])
        else:
            money = await midas.cancel_pay(ledger, **where)
            answer = (money.code, money.paid_units, money.gen_units, money.used_gen_units)
            return Reply(money.outcome, answer)
        answer = (money.code, money.paid_units, money.gen_units, money.used_gen_units)
        return Reply(_normal(money.outcome), answer)
    assert op.kind == "adm", op.kind
    adjusted = await admin.adjust(
        ledger,
        tenant=op.tenant,
        player=op.player,
        currency=op.currency,
        amount_units=p["amount"],
        ref=p["ref"],
        kind=p["kind"],
    )
    outcome = adjusted.outcome
    if outcome == "insufficient" and adjusted.rejected:
        # A stored rejection, which a resend replays. Without "rejected" it is the debit of an
        # account that does not exist: nothing stored, as for an unknown player.
        outcome = "stored"
    return Reply(_normal(outcome), (adjusted.balance_units,))


def expected_resend(op: Op, first: Reply) -> Reply | None:
    """What sending ``op`` again must answer, given its first answer; ``None`` when the first
    outcome was not stored and a retry is evaluated afresh (its answer may differ)."""
    if op.kind == "md_cancel":
        if first.outcome in ("applied", "repeat"):
            return Reply("repeat", (90015, 0, 0, 0))
        return first if first.outcome == "not_found" else None
    if first.outcome in ("stored", "replay"):
        return Reply("replay", first.answer)
    if first.outcome == "conflict":
        return Reply("conflict", ())  # the answer carries the current balance: compared apart
    return None


def same_answer(expected: Reply, actual: Reply) -> bool:
    if expected.outcome == "conflict":
        return actual.outcome == "conflict"
    return expected == actual


async def register_midas(ledger: Ledger, player: str, zone: str = "1") -> None:
    await register_session(
        ledger,
        tenant=MD_APP,
        player=player,
        currency=zone,
        token="handle-" + player,
        ttl_s=3600,
        session_key=MD_SESSION_KEY,
    )


# --- State of a Redis ------------------------------------------------------------------------

_NOT_PLAYER_STATE = ("wg:{sess:", "wg:{ttok:", "wg:{journal-", "wg:{keymap:")


def player_state(backend: Backend) -> dict[str, tuple[dict[str, str], int]]:
    """Every hash under a player tag (fields, TTL in s), except the Midas session_key (sessions
    are not journaled). Account hashes drop ``known`` and zero fields (a zero balance opened by
    authorize or a session is not journaled state, and reads as zero when absent)."""
    client = backend.client()
    state: dict[str, tuple[dict[str, str], int]] = {}
    try:
        for name in client.scan_iter(match="wg:{*", count=1000):
            if name.startswith(_NOT_PLAYER_STATE) or name.endswith(":midas_session"):
                continue
            if client.type(name) != "hash":
                continue
            fields = client.hgetall(name)
            if name.endswith(":acct"):
                fields = {k: v for k, v in fields.items() if k != "known" and v != "0"}
            state[name] = (fields, client.ttl(name))
    finally:
        client.close()
    return state


def keymap_state(backend: Backend) -> dict[str, tuple[dict[str, str], int]]:
    """The journal's key-to-player map: entry -> ({"player": player}, TTL in s)."""
    client = backend.client()
    try:
        return {
            name: ({"player": client.get(name)}, client.ttl(name))
            for name in client.scan_iter(match="wg:{keymap:*", count=1000)
        }
    finally:
        client.close()


def state_differences(
    before: Mapping[str, tuple[dict[str, str], int]],
    after: Mapping[str, tuple[dict[str, str], int]],
) -> list[str]:
    """Human-readable differences (fields exact, TTLs within a few seconds)."""
    problems = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            problems.append(f"{name}: missing after rebuild {before[name]}")
            continue
        if name not in before:
            problems.append(f"{name}: only after rebuild {after[name]}")
            continue
        (fields_a, ttl_a), (fields_b, ttl_b) = before[name], after[name]
        if fields_a != fields_b:
            changed = {
                k: (fields_a.get(k), fields_b.get(k))
                for k in set(fields_a) | set(fields_b)
                if fields_a.get(k) != fields_b.get(k)
            }
            problems.append(f"{name}: fields differ {changed}")
        if (ttl_a < 0) != (ttl_b < 0) or abs(ttl_a - ttl_b) > TTL_SLACK_S:
            problems.append(f"{name}: ttl {ttl_a} != {ttl_b}")
    return problems
