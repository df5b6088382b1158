"""``journal verify`` and ``journal rebuild`` against a real redis-server."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import redis
import redis.asyncio

from conftest import RedisServer, free_port
from gateway_helpers import WALLET_TOKEN
from gateway_helpers import config_dict as gateway_config_dict
from test_journal_writer import (
    JOURNALED_OUTCOMES,
    Operation,
    apply_operations,
    disk_records,
    drain,
    journal_config,
    journaled_count,
    ledger_for,
    pending_count,
    plan_operations,
    write_config_file,
)
from walletgate.config import Config, parse_config
from walletgate.journal import replay, writer
from walletgate.journal.commands import rebuild_command, verify_command
from walletgate.journal.records import journal_record, keymap_key, parse_ts
from walletgate.journal.replay import JournalRecord
from walletgate.journal.streams import StreamReader
from walletgate.ledger import keys
from walletgate.ledger.admin import adjust
from walletgate.ledger.connect import make_runner
from walletgate.ledger.core import Ledger, LedgerSettings
from walletgate.logs import loggable_tenant

if TYPE_CHECKING:
    from cluster import RedisCluster as ClusterFixture

# The 3-primary cluster fixture (a plugin registered once, even if conftest also lists it).
pytest_plugins = ["cluster"]


def verify(config: Config, **options: Any) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = asyncio.run(replay.verify(config, out=out, err=io.StringIO(), **options))
    return code, out.getvalue().splitlines()


def rebuild(config: Config, **options: Any) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    code = asyncio.run(replay.rebuild(config, out=out, err=err, **options))
    return code, out.getvalue().splitlines(), err.getvalue()


def populate(
    config: Config, operations: list[Operation], *, write: bool = True
) -> dict[str, tuple[str, int]]:
    async def scenario() -> dict[str, tuple[str, int]]:
        ledger = ledger_for(config)
        outcomes = await apply_operations(ledger, operations)
        await ledger.runner.close()
        if write:
            await drain(config)
        return outcomes

    return dict(asyncio.run(scenario()))


def snapshot(url: str, *, cluster: bool = False) -> dict[str, tuple[dict[str, str], int]]:
    """Every player key (hash fields and TTL in seconds), key-map entry and adjustment claim."""
    client: Any = (
        redis.RedisCluster.from_url(url, decode_responses=True)
        if cluster
        else redis.Redis.from_url(url, decode_responses=True)
    )
    state: dict[str, tuple[dict[str, str], int]] = {}
    for name in client.scan_iter(match="wg:*", count=1000):
        kind = client.type(name)
        if kind == "hash":
            state[name] = (client.hgetall(name), client.ttl(name))
        elif name.startswith("wg:{keymap:"):
            state[name] = ({"player": client.get(name)}, client.ttl(name))
        elif name.startswith("wg:{adm:"):
            # A live claim also holds the token of the call that took it; a rebuilt one not.
            state[name] = ({"fp": client.get(name).split(" ")[0]}, client.ttl(name))
    client.close()
    return state


def assert_same_state(
    before: dict[str, tuple[dict[str, str], int]], after: dict[str, tuple[dict[str, str], int]]
) -> None:
    assert sorted(before) == sorted(after)
    for name, (fields, ttl_s) in before.items():
        assert after[name][0] == fields, name
        if ttl_s < 0:
            assert after[name][1] == ttl_s, name
        else:
            assert abs(after[name][1] - ttl_s) <= 5, (name, ttl_s, after[name][1])


def assert_rebuild_restores(config: Config, **options: Any) -> None:
    """Empty Redis, rebuild it from the journal, and find every journaled key as it was."""
    client = redis.Redis.from_url(config.redis.url, decode_responses=True)
    # The writer's own coordination keys are not journaled state.
    for name in client.scan_iter(match="wg:{journal-*"):
        client.delete(name)
    before = snapshot(config.redis.url)
    client.flushall()
    client.close()
    assert rebuild(config, **options)[:2] == (0, [])
    assert_same_state(before, snapshot(config.redis.url))


def test_verify_agrees_then_detects_a_tampered_balance(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal")
    populate(config, plan_operations(300, seed=11))
    assert verify(config) == (0, [])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    record = disk_records(config.journal.dir)[0]
    account = f"wg:{{{record['tenant']}:{record['player']}}}:acct"
    client.hincrby(account, f"bal:{record['currency']}", 1)
    code, lines = verify(config)
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(
        f"{record['tenant']}/{record['player']}/{record['currency']}: redis balance"
    )
    client.hincrby(account, f"bal:{record['currency']}", -1)
    assert verify(config) == (0, [])
    # An account that only Redis knows is a difference too.
    client.hset("wg:{t9:ghost}:acct", mapping={"bal:usd": "5"})
    code, lines = verify(config)
    assert code == 1 and lines == [
        "t9/ghost/usd: in redis (balance 5, seq missing) but not in the journal"
    ]
    client.close()


def test_verify_counts_records_still_pending(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal")
    populate(config, plan_operations(100, seed=12))
    populate(config, plan_operations(100, seed=13), write=False)
    assert pending_count(redis_url) > 0
    assert verify(config) == (0, [])


def test_verify_reports_gaps_duplicates_and_torn_lines(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal", buckets=1)
    populate(config, plan_operations(50, seed=14, players=2))
    segment = replay.segment_paths(config.journal.dir)[-1]
    lines = segment.read_bytes().splitlines(keepends=True)
    # A duplicate of the same stream entry (a writer crash) is dropped; a torn tail is ignored.
    segment.write_bytes(b"".join(lines) + lines[5] + lines[6][:20])
    assert verify(config) == (0, [])
    # A record lost from the journal shows as a seq gap and a balance difference. The lines'
    # order across accounts depends on timing; the record removed must have a later one in its
    # account (the last one missing is no gap, only a difference).
    records = [orjson.loads(line) for line in lines]
    accounts = [(r["tenant"], r["player"], r["currency"]) for r in records]
    gap_at = next(i for i in range(10, len(lines) - 1) if accounts[i] in accounts[i + 1 :])
    removed = records[gap_at]
    segment.write_bytes(b"".join(lines[:gap_at] + lines[gap_at + 1 :]))
    code, output = verify(config)
    name = f"{removed['tenant']}/{removed['player']}/{removed['currency']}"
    assert code == 1
    assert f"{name}: seq {removed['seq']} missing from the journal" in output
    # Two different records with one seq are reported.
    other = records[gap_at + 1]
    forged = {
        **other,
        "sid": "1-1",
        "tenant": removed["tenant"],
        "player": removed["player"],
        "currency": removed["currency"],
        "seq": removed["seq"] + 1,
    }
    segment.write_bytes(b"".join(lines) + orjson.dumps(forged) + b"\n")
    code, output = verify(config)
    assert code == 1 and any("is held by two records" in line for line in output)


def test_rebuild_restores_every_balance_seq_and_idempotent_answer(
    redis_url: str, tmp_path: Path
) -> None:
    config = journal_config(redis_url, tmp_path / "journal")
    operations = plan_operations(400, seed=15)
    outcomes = populate(config, operations)
    assert pending_count(redis_url) == 0
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # The writer's own coordination keys are not journaled state.
    for name in client.scan_iter(match="wg:{journal-*"):
        client.delete(name)
    before = snapshot(redis_url)
    client.flushall()
    code, problems, progress = rebuild(config)
    assert (code, problems) == (0, [])
    assert "restored" in progress
    assert_same_state(before, snapshot(redis_url))

    async def replay_refs() -> None:
        ledger = ledger_for(config)
        for tenant, player, currency, amount, ref, kind in operations:
            outcome, balance = outcomes[ref]
            if outcome not in JOURNALED_OUTCOMES:
                continue  # overflows are not stored: a retry is evaluated afresh
            result = await adjust(
                ledger,
                tenant=tenant,
                player=player,
                currency=currency,
                amount_units=amount,
                ref=ref,
                kind=kind,
            )
            assert (result.outcome, result.balance_units) == ("replay", balance), ref
            assert result.rejected == (outcome == "insufficient"), ref
        # A restored claim keeps each ref its first player's: another player's use conflicts.
        tenant, player, currency, amount, ref, kind = operations[0]
        assert outcomes[ref][0] in JOURNALED_OUTCOMES
        stranger = await adjust(
            ledger,
            tenant=tenant,
            player=player + "-other",
            currency=currency,
            amount_units=amount,
            ref=ref,
            kind=kind,
        )
        assert stranger.outcome == "conflict"
        # A new operation continues each account's seq.
        seq_before = int(client.hget(f"wg:{{{tenant}:{player}}}:acct", f"seq:{currency}") or 0)
        await adjust(
            ledger,
            tenant=tenant,
            player=player,
            currency=currency,
            amount_units=1,
            ref="after-rebuild",
            kind="adjust",
        )
        assert client.hget(f"wg:{{{tenant}:{player}}}:acct", f"seq:{currency}") == str(
            seq_before + 1
        )
        await ledger.runner.close()
        await drain(config)

    asyncio.run(replay_refs())
    assert verify(config) == (0, [])
    client.close()
    assert journaled_count(outcomes) == len(disk_records(config.journal.dir)) - 1


def test_rebuild_refuses_a_non_empty_redis(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal")
    populate(config, plan_operations(20, seed=16))
    before = snapshot(redis_url)
    code, _, err = rebuild(config)
    assert code == 2 and "rebuild needs an empty Redis" in err
    assert_same_state(before, snapshot(redis_url))


def test_partitioned_replay_matches_in_memory(redis_url: str, tmp_path: Path) -> None:
    config = journal_config(redis_url, tmp_path / "journal", segment_max_bytes=8192)
    populate(config, plan_operations(600, seed=17, players=40))
    small = {"partition_bytes": 16_384, "work_directory": tmp_path}
    assert verify(config, **small) == (0, [])
    assert_rebuild_restores(config, **small)
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("walletgate-replay-")]


def record(
    seq: int, ts_us: int, fx: list[tuple[str, str, str, str]], currency: str = "usd"
) -> JournalRecord:
    return JournalRecord(
        ts_us=ts_us,
        tenant="t",
        player="p",
        currency=currency,
        seq=seq,
        kind="bet",
        key=f"{currency}-{seq}",
        delta_units=0,
        balance_after_units=0,
        gen_delta_units=None,
        gen_after_units=None,
        protocol="minigame",
        result=1,
        fp="f",
        refs={},
        fx=tuple(fx),
        sid=f"{ts_us // 1000}-0",
        bucket=0,
        origin="test",
    )


def test_replay_simulates_expiry_and_deletes() -> None:
    second = 1_000_000
    records = {
        "usd": [
            record(
                1, 100 * second, [("round:r1", "state", "open", "10"), ("tx:a", "fp", "x", "10")]
            ),
            # round:r1 expired at 110 s, so this write starts a fresh hash without "state".
            record(2, 120 * second, [("round:r1", "bets", "1", "10"), ("tx:a", "", "", "del")]),
        ],
        "eur": [record(1, 115 * second, [("tx:b", "fp", "y", "0")], currency="eur")],
    }
    states, keymap = replay.replay_player(records, 604_800)
    assert states["round:r1"].fields == {"bets": "1"}
    assert states["round:r1"].expire_at_us == 130 * second
    assert "tx:a" not in states
    assert states["tx:b"].fields == {"fp": "y"} and states["tx:b"].expire_at_us is None
    assert keymap["usd-1"] == ("p", 110, 100 * second)
    assert keymap["usd-2"] == ("p", 130, 120 * second)
    # A record without any TTL keeps its map entry for the idempotency retention.
    assert keymap["eur-1"] == ("p", 115 + 604_800, 115 * second)
    items = replay.player_restore_items("t", "p", states, now_us=125 * second)
    names = [item[0] for item in items]
    assert "wg:{t:p}:round:r1" in names
    global_keymap: replay.GlobalKeymap = {}
    replay.merge_keymap(global_keymap, "t", keymap)
    map_names = [item[0] for item in replay.keymap_restore_items(global_keymap, 125 * second)]
    assert "wg:{keymap:t:usd-1}" not in map_names and "wg:{keymap:t:usd-2}" in map_names


def test_commands_exit_codes(redis_url: str, tmp_path: Path, capsys: Any) -> None:
    directory = tmp_path / "journal"
    config_path = write_config_file(tmp_path / "walletgate.toml", redis_url, directory)
    config = journal_config(redis_url, directory)
    populate(config, plan_operations(30, seed=18))
    assert verify_command(str(config_path)) == 0
    assert rebuild_command(str(config_path)) == 2
    assert "agree" in capsys.readouterr().out
    unreachable = write_config_file(
        tmp_path / "down.toml", f"redis://127.0.0.1:{free_port()}/0", directory
    )
    assert verify_command(str(unreachable)) == 2
    assert rebuild_command(str(unreachable)) == 2
    assert verify_command(str(tmp_path / "missing.toml")) == 2


def test_verify_fails_with_2_when_redis_goes_down(fresh_redis: RedisServer, tmp_path: Path) -> None:
    config = journal_config(fresh_redis.url, tmp_path / "journal")
    populate(config, plan_operations(30, seed=19))
    assert verify(config)[0] == 0
    fresh_redis.stop()
    assert verify(config)[0] == 2
    fresh_redis.start()
    writer_records = disk_records(config.journal.dir)
    assert len(writer_records) > 0
    assert parse_ts(writer_records[0]["ts"]) > 0


def test_verify_rechecks_accounts_that_move_while_it_reads(
    redis_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """Operations applied after verify read the journal, but before it read the accounts, make
    Redis look ahead: verify reads those players again instead of reporting them."""
    config = journal_config(redis_url, tmp_path / "journal")
    operations = plan_operations(50, seed=20)
    populate(config, operations)
    real_read_segments = replay.read_segments
    calls: list[int] = []

    def read_then_apply(*args: Any) -> None:
        real_read_segments(*args)
        calls.append(1)
        if len(calls) > 1:
            return

        async def late_operations() -> None:
            ledger = ledger_for(config)
            tenant, player, currency = operations[0][:3]
            for ref, who in (("late-1", player), ("late-2", "newcomer")):
                result = await adjust(
                    ledger,
                    tenant=tenant,
                    player=who,
                    currency=currency,
                    amount_units=10,
                    ref=ref,
                    kind="adjust",
                )
                assert result.outcome == "applied"
            await ledger.runner.close()

        asyncio.run(late_operations())

    monkeypatch.setattr(replay, "read_segments", read_then_apply)
    assert verify(config) == (0, [])
    assert len(calls) == 2


@pytest.mark.cluster
def test_cluster_writer_verify_and_rebuild(redis_cluster: ClusterFixture, tmp_path: Path) -> None:
    redis_cluster.flushall()
    url = redis_cluster.url
    config = parse_config(
        {
            "redis": {"url": url, "cluster": True},
            "journal": {"dir": str(tmp_path / "journal"), "flush_interval_ms": 50},
            "admin": {"token": "t" * 40},
        }
    )
    settings = LedgerSettings(
        journal_buckets=config.journal.buckets,
        cluster=True,
        idempotency_ttl_s=604_800,
        midas_ttl_s=172_800,
    )
    operations = plan_operations(400, seed=21, players=60)
    streams = keys.all_journal_stream_keys(config.journal.buckets, True)

    async def write_journal() -> dict[str, tuple[str, int]]:
        ledger = Ledger(make_runner(config.redis), settings)
        outcomes = await apply_operations(ledger, operations)
        await ledger.runner.close()
        client = redis.asyncio.RedisCluster.from_url(url)
        reader = StreamReader(client)
        assert await reader.read("all", streams, 100_000)  # records are pending
        journal = writer.JournalWriter(client, writer.WriterSettings.from_config(config))
        await journal.start()
        deadline = time.monotonic() + 30
        while await reader.read("all", streams, 1):
            assert time.monotonic() < deadline, "the writer did not drain the cluster"
            await asyncio.sleep(0.1)
        await journal.stop()
        for name in [name async for name in client.scan_iter(match="wg:{journal-*")]:
            await client.delete(name)
        await client.aclose()
        return outcomes

    outcomes = asyncio.run(write_journal())
    assert len(disk_records(config.journal.dir)) == journaled_count(outcomes)
    assert verify(config) == (0, [])
    client = redis.RedisCluster.from_url(url, decode_responses=True)
    # An applied record: an account whose only record is a stored rejection has no balance
    # field, which the tampering below would create.
    first = next(r for r in disk_records(config.journal.dir) if r["kind"] != "reject")
    tenant, player, currency = first["tenant"], first["player"], first["currency"]
    client.hincrby(f"wg:{{{tenant}:{player}}}:acct", f"bal:{currency}", 3)
    code, lines = verify(config)
    assert code == 1 and lines[0].startswith(f"{tenant}/{player}/{currency}: redis balance")
    client.hincrby(f"wg:{{{tenant}:{player}}}:acct", f"bal:{currency}", -3)
    before = snapshot(url, cluster=True)
    assert rebuild(config)[0] == 2
    redis_cluster.flushall()
    code, problems, _ = rebuild(config)
    assert (code, problems) == (0, [])
    assert_same_state(before, snapshot(url, cluster=True))
    assert verify(config) == (0, [])

    async def replay_one() -> None:
        ledger = Ledger(make_runner(config.redis), settings)
        for tenant, player, currency, amount, ref, kind in operations[:50]:
            outcome, balance = outcomes[ref]
            if outcome in JOURNALED_OUTCOMES:
                result = await adjust(
                    ledger,
                    tenant=tenant,
                    player=player,
                    currency=currency,
                    amount_units=amount,
                    ref=ref,
                    kind=kind,
                )
                assert (result.outcome, result.balance_units) == ("replay", balance)
        await ledger.runner.close()

    asyncio.run(replay_one())
    client.close()


def synthetic_entry(
    seq: int, ts_us: int, delta: int, balance: int, fx: list[list[str]]
) -> dict[bytes, bytes]:
    """A stream entry as the Lua prelude's wg_journal writes it, for any script's state."""
    fields = {
        "ts": str(ts_us),
        "tenant": "t7",
        "player": "p7",
        "currency": "usd",
        "seq": str(seq),
        "kind": "bet",
        "key": f"o{seq}",
        "delta": str(delta),
        "bal": str(balance),
        "proto": "minigame",
        "result": "1",
        "fp": "f",
        "refs": '{"order_id":"o"}',
        "fx": orjson.dumps(fx).decode(),
    }
    return {name.encode(): value.encode() for name, value in fields.items()}


def test_rebuild_restores_any_script_state_with_its_expiry(redis_url: str, tmp_path: Path) -> None:
    """Rebuild knows no script: big hashes, deletes and expiries come from fx alone."""
    config = journal_config(redis_url, tmp_path / "journal", buckets=1)
    now_us = int(time.time() * 1_000_000)
    day_us = 86_400 * 1_000_000
    round_fields = [["round:r1", f"bet:{index}", "open", "604800"] for index in range(1200)]
    entries = [
        synthetic_entry(
            1,
            now_us - 2 * day_us,
            1000,
            1000,
            [
                ["acct", "bal:usd", "1000", "0"],
                ["tx:o1", "state", "applied", "604800"],
                ["tx:old", "state", "applied", "60"],
                *round_fields,
            ],
        ),
        synthetic_entry(
            2,
            now_us - day_us,
            0,
            1000,
            [
                ["tx:o1", "", "", "del"],
                ["tx:o2", "state", "tombstone", "604800"],
            ],
        ),
    ]
    directory = config.journal.dir / "shard-00"
    directory.mkdir(parents=True)
    lines = [
        orjson.dumps(journal_record(0, f"{index + 1}-0", entry, 1)) + b"\n"
        for index, entry in enumerate(entries)
    ]
    (directory / "segment-000000001.jsonl").write_bytes(b"".join(lines))
    code, problems, _ = rebuild(config)
    assert (code, problems) == (0, [])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hgetall("wg:{t7:p7}:acct") == {"bal:usd": "1000", "seq:usd": "2"}
    assert client.ttl("wg:{t7:p7}:acct") == -1
    assert client.hlen("wg:{t7:p7}:round:r1") == 1200
    assert abs(client.ttl("wg:{t7:p7}:round:r1") - 5 * 86_400) <= 5
    assert not client.exists("wg:{t7:p7}:tx:o1", "wg:{t7:p7}:tx:old")
    assert client.hgetall("wg:{t7:p7}:tx:o2") == {"state": "tombstone"}
    assert abs(client.ttl("wg:{t7:p7}:tx:o2") - 6 * 86_400) <= 5
    assert client.get(keymap_key("t7", "o2")) == "p7"
    client.close()
    assert verify(config) == (0, [])


def test_verify_names_a_wallet_v2_account_by_its_token_digest(
    redis_url: str, tmp_path: Path
) -> None:
    """A Wallet v2 tenant id is the agent's wallet_token, the secret of its callback URL: the
    verify report names such accounts by a digest, as the writer's logs do."""
    raw = gateway_config_dict(tmp_path / "journal")
    raw["redis"]["url"] = redis_url
    config = parse_config(raw)
    Path(config.journal.dir).mkdir(parents=True, exist_ok=True)
    client = redis.Redis.from_url(redis_url)
    client.hset(f"wg:{{{WALLET_TOKEN}:ghost}}:acct", mapping={"bal:USD": "5"})
    client.close()
    code, lines = verify(config)
    expected = f"{loggable_tenant(WALLET_TOKEN, frozenset({WALLET_TOKEN}))}/ghost/USD: in redis"
    assert code == 1 and len(lines) == 1 and lines[0].startswith(expected), lines
    assert WALLET_TOKEN not in "\n".join(lines)
