"""The cluster runner against a real 3-primary Redis Cluster (fixture ``redis_cluster``)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from cluster import RedisCluster
from walletgate.config import RedisConfig, parse_config
from walletgate.journal import writer as journal_writer
from walletgate.journal.streams import connect as journal_connect
from walletgate.ledger import keys
from walletgate.ledger.admin import adjust
from walletgate.ledger.cluster_runner import ClusterRunner
from walletgate.ledger.connect import make_admin_client, make_runner
from walletgate.ledger.core import Ledger, LedgerSettings, ping
from walletgate.ledger.errors import LedgerScriptError, LedgerUnavailable, NotReplicated
from walletgate.ledger.scripts import Script, load_script

CLUSTER_SETTINGS = LedgerSettings(
    journal_buckets=16384, cluster=True, idempotency_ttl_s=604_800, midas_ttl_s=172_800
)


def make_script(name: str, source: str) -> Script:
    encoded = source.encode()
    return Script(name=name, source=encoded, sha=hashlib.sha1(encoded).hexdigest())


SET_ONE = make_script("set_one", "redis.call('SET', KEYS[1], ARGV[1]) return 'stored'")
GET_ONE = make_script("get_one", "return redis.call('GET', KEYS[1])")
FAILING = make_script("failing", "return redis.error_reply('WGTEST broken')")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=120))


def cluster_runner(cluster: RedisCluster) -> ClusterRunner:
    runner = make_runner(RedisConfig(url=cluster.url, cluster=True))
    assert isinstance(runner, ClusterRunner)
    return runner


def key_in_slot_owned_by(cluster: RedisCluster, port: int, prefix: str) -> tuple[str, int]:
    """A key name (with its own hash tag) whose slot the primary at ``port`` owns."""
    for index in range(100_000):
        key = f"{prefix}:{{{index}}}"
        slot = key_slot(key.encode())
        if cluster.owner_port(slot) == port:
            return key, slot
    raise LookupError("no such key")


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    redis_cluster.flushall()
    return redis_cluster


@pytest.mark.cluster
def test_admin_adjust_for_players_on_every_primary(cluster: RedisCluster) -> None:
    players = [f"p{i}" for i in range(300)]
    owners = {cluster.owner_port(keys.slot_of("t1", player)) for player in players}
    assert owners == set(cluster.ports), "the players must be spread over all primaries"

    async def scenario() -> None:
        runner = cluster_runner(cluster)
        ledger = Ledger(runner, CLUSTER_SETTINGS)
        results = await asyncio.gather(
            *(
                adjust(
                    ledger,
                    tenant="t1",
                    player=player,
                    currency="usd",
                    amount_units=1000 + i,
                    ref=f"r-{player}",
                    kind="adjust",
                )
                for i, player in enumerate(players)
            )
        )
        assert [(r.outcome, r.balance_units) for r in results] == [
            ("applied", 1000 + i) for i in range(len(players))
        ]
        replays = await asyncio.gather(
            *(
                adjust(
                    ledger,
                    tenant="t1",
                    player=player,
                    currency="usd",
                    amount_units=1000 + i,
                    ref=f"r-{player}",
                    kind="adjust",
                )
                for i, player in enumerate(players)
            )
        )
        assert [(r.outcome, r.balance_units) for r in replays] == [
            ("replay", 1000 + i) for i in range(len(players))
        ]
        debits = await asyncio.gather(
            *(
                adjust(
                    ledger,
                    tenant="t1",
                    player=player,
                    currency="usd",
                    amount_units=-1000,
                    ref=f"d-{player}",
                    kind="adjust",
                )
                for player in players
            )
        )
        assert [r.balance_units for r in debits] == list(range(len(players)))
        assert set(runner.nodes) == set(cluster.endpoints)
        assert runner.in_flight == 0
        await runner.close()

        admin = make_admin_client(RedisConfig(url=cluster.url, cluster=True))
        for i, player in enumerate(players[:20]):
            assert await admin.hget(keys.account_key("t1", player), "bal:usd") == str(i).encode()
            stream = ledger.journal_stream("t1", player)
            assert await admin.xlen(stream) >= 2
        await admin.aclose()

    run(scenario)


@pytest.mark.cluster
def test_a_wrong_slot_map_is_corrected_by_moved(cluster: RedisCluster) -> None:
    async def scenario() -> None:
        runner = cluster_runner(cluster)
        await runner.start()
        key, slot = key_in_slot_owned_by(cluster, cluster.ports[0], "moved")
        right = runner.slots[slot]
        assert right is not None and right.address.port == cluster.ports[0]
        wrong = runner.nodes[cluster.endpoints[1]]
        runner.slots[slot] = wrong
        assert await runner.run(SET_ONE, [key], ["v1"]) == b"stored"
        assert runner.slots[slot] is right
        assert await runner.run(GET_ONE, [key], []) == b"v1"
        await runner.close()

    run(scenario)


@pytest.mark.cluster
def test_resharding_a_slot_with_keys_is_followed(cluster: RedisCluster) -> None:
    player = "mover"
    slot = keys.slot_of("t1", player)
    source = cluster.owner_port(slot)
    target = next(port for port in cluster.ports if port != source)

    async def scenario() -> None:
        runner = cluster_runner(cluster)
        ledger = Ledger(runner, CLUSTER_SETTINGS)
        first = await adjust(
            ledger,
            tenant="t1",
            player=player,
            currency="usd",
            amount_units=500,
            ref="before-move",
            kind="adjust",
        )
        assert first.outcome == "applied"
        stale = runner.slots[slot]
        assert stale is not None and stale.address.port == source

        await asyncio.to_thread(cluster.move_slot, slot, target)

        # The runner still routes the slot to the source, which answers MOVED.
        assert runner.slots[slot] is stale
        replay = await adjust(
            ledger,
            tenant="t1",
            player=player,
            currency="usd",
            amount_units=500,
            ref="before-move",
            kind="adjust",
        )
        assert (replay.outcome, replay.balance_units) == ("replay", 500)
        moved_to = runner.slots[slot]
        assert moved_to is not None and moved_to.address.port == target
        second = await adjust(
            ledger,
            tenant="t1",
            player=player,
            currency="usd",
            amount_units=1,
            ref="after-move",
            kind="adjust",
        )
        assert (second.outcome, second.balance_units) == ("applied", 501)
        await runner.close()

    run(scenario)


@pytest.mark.cluster
def test_ask_during_a_migration_is_followed(cluster: RedisCluster) -> None:
    async def scenario() -> None:
        runner = cluster_runner(cluster)
        await runner.start()
        key, slot = key_in_slot_owned_by(cluster, cluster.ports[2], "asking")
        target = cluster.ports[0]
        source = await asyncio.to_thread(cluster.begin_migration, slot, target)
        assert source == cluster.ports[2]
        # The key is not on the source, so the source answers ASK; the target has never run
        # this script, so it answers NOSCRIPT first (ASKING must precede the EVAL too).
        assert await runner.run(SET_ONE, [key], ["asked"]) == b"stored"
        owner = runner.slots[slot]
        assert owner is not None and owner.address.port == source, "ASK must not move the slot"

        # A multi-key script with some keys on each side cannot run mid-migration: Redis says
        # TRYAGAIN, which is "unavailable", not a script error.
        ledger = Ledger(runner, CLUSTER_SETTINGS)
        player = next(f"p{i}" for i in range(100_000) if keys.slot_of("t9", f"p{i}") == slot)
        await asyncio.to_thread(
            cluster.cli, source, "SET", keys.account_key("t9", player) + "x", "1"
        )
        with pytest.raises(LedgerUnavailable, match="TRYAGAIN"):
            await adjust(
                ledger,
                tenant="t9",
                player=player,
                currency="usd",
                amount_units=5,
                ref="mid",
                kind="adjust",
            )

        await asyncio.to_thread(cluster.finish_migration, slot, source, target)
        assert await runner.run(GET_ONE, [key], []) == b"asked"
        owner = runner.slots[slot]
        assert owner is not None and owner.address.port == target
        applied = await adjust(
            ledger,
            tenant="t9",
            player=player,
            currency="usd",
            amount_units=5,
            ref="mid",
            kind="adjust",
        )
        assert applied.outcome == "applied"
        await runner.close()

    run(scenario)


@pytest.mark.cluster
def test_script_errors_and_noscript_on_a_cluster(cluster: RedisCluster) -> None:
    async def scenario() -> None:
        runner = cluster_runner(cluster)
        with pytest.raises(LedgerScriptError, match="WGTEST broken"):
            await runner.run(FAILING, ["k{1}"], [])
        for port in cluster.ports:
            await asyncio.to_thread(cluster.cli, port, "SCRIPT", "FLUSH")
        stored = await asyncio.gather(
            *(runner.run(SET_ONE, [f"k{{{i}}}"], [str(i)]) for i in range(200))
        )
        assert stored == [b"stored"] * 200
        values = await asyncio.gather(*(runner.run(GET_ONE, [f"k{{{i}}}"], []) for i in range(200)))
        assert values == [str(i).encode() for i in range(200)]
        await runner.close()

    run(scenario)


def test_unreachable_cluster_fails_fast() -> None:
    async def scenario() -> None:
        runner = ClusterRunner.from_config(
            RedisConfig(url="redis://127.0.0.1:1/0", cluster=True, connect_timeout_ms=200)
        )
        for _ in range(10):
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable):
                await runner.run(SET_ONE, ["k"], ["v"])
            assert time.monotonic() - started < 1.0
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


@pytest.mark.cluster
def test_a_script_without_keys_runs_on_a_cluster(cluster: RedisCluster) -> None:
    """/readyz probes Redis with the keyless ping script; on a cluster it once failed with an
    IndexError (no key to take a slot from), so a cluster deployment never became ready."""

    async def scenario() -> None:
        runner = cluster_runner(cluster)
        assert await runner.run(load_script("ping"), [], []) is not None
        await runner.close()

    run(scenario)


@pytest.mark.cluster
def test_readiness_probes_every_primary(cluster: RedisCluster) -> None:
    """The readiness probe must reach every primary with a key (so each checks the cluster
    state too): a keyless ping went to slot 0's primary only, and a cluster with another
    primary hung or down still looked ready."""
    pause_ms = 1500

    async def scenario() -> None:
        runner = cluster_runner(cluster)
        ledger = Ledger(runner, CLUSTER_SETTINGS)
        await ping(ledger)
        slots = await runner.primary_slots()
        assert sorted(cluster.owner_port(slot) for slot in slots) == sorted(cluster.ports)
        # A primary that does not own slot 0 stops answering for a while.
        hung_port = next(port for port in cluster.ports if port != cluster.owner_port(0))
        cluster.cli(hung_port, "CLIENT", "PAUSE", str(pause_ms), "ALL")
        paused_at = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ping(ledger), pause_ms / 1000 / 3)
        await runner.close()
        # Leave the shared cluster as it was: answering again.
        await asyncio.sleep(max(0.0, pause_ms / 1000 - (time.monotonic() - paused_at)) + 0.1)
        fresh = cluster_runner(cluster)
        await ping(Ledger(fresh, CLUSTER_SETTINGS))
        await fresh.close()

    run(scenario)


def test_a_node_out_of_the_slot_map_is_closed_at_the_second_reload() -> None:
    """A node that receives its first slot by migration is not in CLUSTER SLOTS until the
    migration ends, while calls already follow ASK to it. A reload in that window once closed
    its connection under those calls (a spurious "unavailable"); now a node is closed only when
    two reloads in a row find it owning nothing."""

    def slots_reply(*ports: int) -> list[Any]:
        share = REDIS_CLUSTER_HASH_SLOTS // len(ports)
        return [
            [
                index * share,
                REDIS_CLUSTER_HASH_SLOTS - 1
                if index == len(ports) - 1
                else (index + 1) * share - 1,
                [b"127.0.0.1", port, b"node-id"],
            ]
            for index, port in enumerate(ports)
        ]

    async def scenario() -> None:
        runner = ClusterRunner.from_config(RedisConfig(url="redis://127.0.0.1:1/0", cluster=True))
        await runner._apply_topology(slots_reply(7001, 7002), "127.0.0.1")
        runner._node("127.0.0.1", 7003)  # an ASK target that owns no slot yet
        await runner._apply_topology(slots_reply(7001, 7002), "127.0.0.1")
        assert set(runner.nodes) == {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}
        # The migration ended: the node owns slots now and stays.
        await runner._apply_topology(slots_reply(7001, 7002, 7003), "127.0.0.1")
        await runner._apply_topology(slots_reply(7001, 7002, 7003), "127.0.0.1")
        assert "127.0.0.1:7003" in runner.nodes
        # A node removed from the cluster goes at the second reload that finds it out.
        await runner._apply_topology(slots_reply(7001, 7003), "127.0.0.1")
        assert "127.0.0.1:7002" in runner.nodes
        await runner._apply_topology(slots_reply(7001, 7003), "127.0.0.1")
        assert set(runner.nodes) == {"127.0.0.1:7001", "127.0.0.1:7003"}
        await runner.close()

    run(scenario)


@pytest.mark.cluster
def test_seed_nodes_stand_in_for_a_url_node_that_is_down(cluster: RedisCluster) -> None:
    """With the url's node down (port 1 refuses), the hot path, the admin client and the journal
    tools all find the cluster through ``[redis] seeds``, trying them in order."""
    config = RedisConfig(
        url="redis://127.0.0.1:1/0",
        cluster=True,
        connect_timeout_ms=200,
        seeds=(("127.0.0.1", 2), ("127.0.0.1", cluster.ports[1])),
    )

    async def scenario() -> None:
        runner = make_runner(config)
        assert isinstance(runner, ClusterRunner)
        owners = set()
        for port in cluster.ports:
            key, slot = key_in_slot_owned_by(cluster, port, "seeded")
            assert await runner.run(SET_ONE, [key], [str(slot)]) == b"stored"
            owners.add(port)
        assert owners == set(cluster.ports)
        assert await runner.primary_slots() and runner.in_flight == 0
        await runner.close()

        admin = make_admin_client(config)
        tools = journal_connect(config)
        for port in cluster.ports:
            key, slot = key_in_slot_owned_by(cluster, port, "seeded")
            assert await admin.get(key) == str(slot).encode()
            assert await tools.get(key) == str(slot).encode()
        await admin.aclose()
        await tools.aclose()

    run(scenario)

    # Without the seeds, the same url finds no cluster: the seeds are what made it work.
    async def without_seeds() -> None:
        runner = make_runner(RedisConfig(url=config.url, cluster=True, connect_timeout_ms=200))
        with pytest.raises(LedgerUnavailable):
            await runner.run(SET_ONE, ["seeded:{0}"], ["v"])
        await runner.close()

    run(without_seeds)


@pytest.mark.cluster
def test_replica_acks_reach_every_primary_connection(cluster: RedisCluster) -> None:
    """The test cluster has no replicas: with ``replica_acks = 1`` every primary's WAIT counts
    none, so a write is applied but never acknowledged (NotReplicated), on each node."""

    async def scenario() -> None:
        runner = make_runner(
            RedisConfig(url=cluster.url, cluster=True, replica_acks=1, replica_ack_timeout_ms=20)
        )
        for port in cluster.ports:
            key, _ = key_in_slot_owned_by(cluster, port, "acked")
            with pytest.raises(NotReplicated, match="0 of 1 replicas"):
                await runner.run(SET_ONE, [key], ["v"])
            assert cluster.cli(port, "GET", key).strip() == "v"
        # Each primary's batches wrote its probe key before the WAIT, in a slot it owns (a key
        # of another node's slot would have been refused with MOVED and written nothing).
        assert isinstance(runner, ClusterRunner)
        for port in cluster.ports:
            probe = runner.nodes[f"127.0.0.1:{port}"].probe_key
            assert probe is not None
            assert cluster.owner_port(key_slot(probe.encode())) == port
            assert cluster.cli(port, "GET", probe).strip() == "1", port
        await runner.close()

    run(scenario)


@pytest.mark.cluster
def test_count_records_sums_streams_on_every_node(cluster: RedisCluster) -> None:
    """What the journal figures use for shards whose writer stopped reporting: the records of
    streams spread over all primaries, more than one call's worth of streams."""
    streams = keys.all_journal_stream_keys(0, cluster=True)  # stream b lies in slot b
    filled = streams[::400]
    assert {cluster.owner_port(key_slot(stream.encode())) for stream in filled} == set(
        cluster.ports
    )

    async def scenario() -> None:
        tools = journal_connect(RedisConfig(url=cluster.url, cluster=True))
        for index, stream in enumerate(filled):
            for record in range(index % 3 + 1):
                await tools.xadd(stream, {"r": str(record)})
        expected = sum(index % 3 + 1 for index in range(len(filled)))
        records, oldest_ms = await journal_writer.count_records(tools, streams)
        assert records == expected
        assert abs(oldest_ms - time.time() * 1000) < 60_000  # by Redis's clock
        assert await journal_writer.count_records(tools, []) == (0, 0)
        await tools.aclose()

    run(scenario)


@pytest.mark.cluster
def test_the_journal_writer_asks_every_node_for_its_replicas(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """The test cluster has no replicas: with replica_acks the writer asks each node (a probe
    in a slot the node serves, then WAIT) and writes nothing out; without, it drains."""
    from test_journal_writer import disk_records

    config = parse_config(
        {
            "redis": {
                "url": cluster.url,
                "cluster": True,
                "replica_acks": 1,
                "replica_ack_timeout_ms": 20,
            },
            "journal": {"dir": str(tmp_path / "journal"), "flush_interval_ms": 50},
            "admin": {"token": "t" * 32},
        }
    )
    players = [f"jr{i}" for i in range(30)]
    assert {cluster.owner_port(keys.slot_of("t1", player)) for player in players} == set(
        cluster.ports
    )
    streams = keys.all_journal_stream_keys(0, cluster=True)

    async def scenario() -> None:
        ledger = Ledger(cluster_runner(cluster), CLUSTER_SETTINGS)
        for player in players:
            result = await adjust(
                ledger,
                tenant="t1",
                player=player,
                currency="usd",
                amount_units=100,
                ref=f"jr-{player}",
                kind="adjust",
            )
            assert result.outcome == "applied"
        await ledger.runner.close()
        tools = journal_connect(config.redis)
        waiting = journal_writer.JournalWriter(
            tools, journal_writer.WriterSettings.from_config(config)
        )
        await waiting.start()
        await asyncio.sleep(1.0)  # many flush intervals
        status = waiting.status()
        assert status.alive and status.errors_total == 0, status
        assert status.owned_shards  # it read its shards; it held their records back
        await waiting.stop()
        assert (await journal_writer.count_records(tools, streams))[0] == len(players)
        assert disk_records(config.journal.dir) == []
        draining = journal_writer.JournalWriter(
            tools, journal_writer.WriterSettings.from_config(config, replica_acks=0)
        )
        await draining.start()
        deadline = time.monotonic() + 20
        while (await journal_writer.count_records(tools, streams))[0]:
            assert time.monotonic() < deadline, "the writer did not drain"
            await asyncio.sleep(0.1)
        await draining.stop()
        await tools.aclose()
        assert len(disk_records(config.journal.dir)) == len(players)

    run(scenario)
