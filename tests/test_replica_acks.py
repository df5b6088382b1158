"""``[redis] replica_acks``: no answer before enough replicas hold the call, against a real
primary and a real replica (a second redis-server with ``--replicaof``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from conftest import RedisServer, free_port
from gateway_helpers import config_dict
from test_fastredis import ECHO, FAILING, SETTINGS, make_script, run, runner_for
from test_journal_writer import (
    apply_operations,
    disk_records,
    journal_config,
    ledger_for,
    pending_count,
    plan_operations,
    wait_until,
)
from walletgate.app import create_app
from walletgate.config import Config, ConfigError, parse_config
from walletgate.journal.writer import JournalWriter, WriterSettings
from walletgate.ledger import keys
from walletgate.ledger.admin import adjust
from walletgate.ledger.core import Ledger
from walletgate.ledger.errors import LedgerScriptError, NotReplicated, OutcomeUnknown
from walletgate.ledger.minigame import change_balance
from walletgate.logs import AccessLog
from wire_helpers import AsgiGateway

# Long enough that a replica on a busy 2-core machine always confirms in time, so only the
# frozen replica of a test is ever missing.
ACK_TIMEOUT_MS = 500
REPLICATION_UP_TIMEOUT_S = 10.0
INCR = make_script("incr", "return redis.call('INCR', KEYS[1])")


def wait_until_replicating(primary: redis.Redis, replica: redis.Redis) -> None:
    deadline = time.monotonic() + REPLICATION_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        link_up = replica.info("replication").get("master_link_status") == "up"
        listed = primary.info("replication").get("slave0")
        # Online: synced and acknowledging offsets (WAIT counts only such replicas).
        if link_up and isinstance(listed, dict) and listed.get("state") == "online":
            primary.set("replication-probe", "1")
            if int(primary.execute_command("WAIT", 1, 1000)) == 1:
                return
        time.sleep(0.05)
    raise TimeoutError("the replica did not connect to the primary")


class Pair:
    def __init__(self, primary: RedisServer, replica: RedisServer) -> None:
        self.primary = primary
        self.replica = replica
        self.primary_client = redis.Redis.from_url(primary.url)
        self.replica_client = redis.Redis.from_url(replica.url)

    def freeze_replica(self) -> None:
        assert self.replica.process is not None
        os.kill(self.replica.process.pid, signal.SIGSTOP)

    def thaw_replica(self) -> None:
        assert self.replica.process is not None
        os.kill(self.replica.process.pid, signal.SIGCONT)

    def wait_calls(self) -> int:
        return self._calls("cmdstat_wait")

    def set_calls(self) -> int:
        return self._calls("cmdstat_set")

    def _calls(self, name: str) -> int:
        stats = self.primary_client.info("commandstats").get(name)
        return int(stats["calls"]) if stats else 0


@contextlib.contextmanager
def replicated_pair(directory: Path) -> Iterator[Pair]:
    primary = RedisServer(port=free_port(), directory=directory / "primary")
    # No diskless-sync delay: the replica's first sync would otherwise wait 5 s.
    primary.start("--repl-diskless-sync-delay", "0")
    replica = RedisServer(port=free_port(), directory=directory / "replica")
    replica.start("--replicaof", "127.0.0.1", str(primary.port))
    both = Pair(primary, replica)
    try:
        wait_until_replicating(both.primary_client, both.replica_client)
        yield both
    finally:
        both.thaw_replica()
        both.primary_client.close()
        both.replica_client.close()
        replica.stop()
        primary.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with replicated_pair(tmp_path) as both:
        yield both


class SwitchableProxy:
    """A loopback TCP proxy whose target can move, as a virtual IP or a DNS name does at a
    failover: a switch cuts every proxied connection, and new ones reach the new target."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def switch(self, target_port: int) -> None:
        self.target_port = target_port
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_out, server_out]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pump(client_in, server_out), pump(server_in, client_out))

    async def close(self) -> None:
        assert self.server is not None
        self.switch(self.target_port)
        self.server.close()


def test_calls_are_answered_once_the_replica_holds_them_with_one_wait_per_batch(
    pair: Pair,
) -> None:
    async def scenario() -> None:
        runner = runner_for(pair.primary.url, replica_acks=1, replica_ack_timeout_ms=ACK_TIMEOUT_MS)
        assert await runner.run(INCR, ["n"], []) == 1
        # Answered only after the replica confirmed it: the replica has it already.
        assert pair.replica_client.get("n") == b"1"
        waits_before = pair.wait_calls()
        replies = await asyncio.gather(
            *(runner.run(ECHO, [f"k{i}"], [f"v{i}", i]) for i in range(400))
        )
        assert replies == [[f"k{i}".encode(), f"v{i}".encode(), i] for i in range(400)]
        waits = pair.wait_calls() - waits_before
        # Every batch waited, and a batch of several calls waited once.
        assert 1 <= waits < 400
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


def test_each_batch_writes_the_probe_before_its_wait(pair: Pair) -> None:
    """WAIT counts replicas that hold the connection's last write, and Redis 7.2 and later
    mark a connection's position only when it writes: a replay (which writes nothing) sent on
    a connection that never wrote would be confirmed at once, while the replicas may still lack
    the movement it replays. A write of the probe key before every WAIT puts each batch's
    position at the end of everything the primary has applied."""

    async def scenario() -> None:
        runner = runner_for(pair.primary.url, replica_acks=1, replica_ack_timeout_ms=ACK_TIMEOUT_MS)
        echo = make_script("read_only", "return redis.call('GET', KEYS[1])")
        assert await runner.run(echo, ["nothing"], []) is None  # connected, script loaded
        sets_before = pair.set_calls()
        waits_before = pair.wait_calls()
        assert await runner.run(echo, ["nothing"], []) is None  # writes nothing itself
        assert pair.wait_calls() - waits_before == 1
        assert pair.set_calls() - sets_before == 1  # the probe, in the same batch
        assert pair.replica_client.get(keys.replication_probe_key(None)) is not None
        await runner.close()

    run(scenario)


def test_a_bet_the_replica_does_not_confirm_is_not_acknowledged_and_its_retry_replays(
    pair: Pair,
) -> None:
    """A frozen replica: the bet is applied on the primary but answered "not replicated"
    (busy) after the ack timeout; once the replica is back, the caller's retry with the same
    order_id replays the outcome and is acknowledged, and nothing was applied twice."""

    async def bet(ledger: Ledger) -> tuple[str, int]:
        result = await change_balance(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            protocol="api",
            order_id="o1",
            type_=1,
            money_units=-250_000,
            bet_units=250_000,
            session_id="s1",
            end_round=False,
            cancel_order_id="",
            award_order_ids=(),
            refs={},
        )
        return result.status, result.balance_units

    def primary_balance_units() -> int:
        return int(pair.primary_client.hget(keys.account_key("t1", "p1"), "bal:usd") or 0)

    async def scenario() -> None:
        ledger = Ledger(
            runner_for(pair.primary.url, replica_acks=1, replica_ack_timeout_ms=ACK_TIMEOUT_MS),
            SETTINGS,
        )
        funded = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=1_000_000,
            ref="fund",
            kind="adjust",
        )
        assert funded.outcome == "applied"
        pair.freeze_replica()
        started = time.monotonic()
        with pytest.raises(NotReplicated, match="0 of 1 replicas"):
            await bet(ledger)
        assert time.monotonic() - started >= ACK_TIMEOUT_MS / 1000 * 0.9
        # Applied on the primary all the same: the retry must replay it, not apply it again.
        assert primary_balance_units() == 750_000
        pair.thaw_replica()
        assert await bet(ledger) == ("replay", 750_000)
        assert primary_balance_units() == 750_000
        assert int(pair.replica_client.hget(keys.account_key("t1", "p1"), "bal:usd")) == 750_000
        await ledger.runner.close()

    run(scenario)


def test_without_replica_acks_a_frozen_replica_delays_nothing(pair: Pair) -> None:
    async def scenario() -> None:
        runner = runner_for(pair.primary.url)
        waits_before = pair.wait_calls()
        pair.freeze_replica()
        started = time.monotonic()
        assert await runner.run(INCR, ["n"], []) == 1
        assert time.monotonic() - started < ACK_TIMEOUT_MS / 1000
        assert pair.wait_calls() == waits_before
        await runner.close()

    run(scenario)


def test_error_replies_pass_unchanged_when_the_replica_does_not_confirm(pair: Pair) -> None:
    """A script that failed wrote nothing that a failover could lose: its error is the answer,
    not "not replicated"."""

    async def scenario() -> None:
        runner = runner_for(pair.primary.url, replica_acks=1, replica_ack_timeout_ms=ACK_TIMEOUT_MS)
        assert await runner.run(INCR, ["n"], []) == 1  # connected, acks on
        pair.freeze_replica()
        failed, written = await asyncio.gather(
            runner.run(FAILING, ["x"], []),
            runner.run(INCR, ["n"], []),
            return_exceptions=True,
        )
        assert isinstance(failed, LedgerScriptError)
        assert isinstance(written, NotReplicated)
        await runner.close()

    run(scenario)


def test_connections_killed_while_waiting_for_the_replica_ask_it_again(pair: Pair) -> None:
    """The call ran, and the connections broke (its own and the gate's) before the replicas
    answered: the gate asks them again on a new connection, and the caller gets its reply."""
    put = make_script(
        "put_once", "redis.call('SET', KEYS[1], ARGV[1], 'NX') return redis.call('GET', KEYS[1])"
    )

    async def scenario() -> None:
        runner = runner_for(pair.primary.url, replica_acks=1, replica_ack_timeout_ms=ACK_TIMEOUT_MS)
        assert await runner.run(put, ["warm"], ["1"]) == b"1"
        pair.freeze_replica()
        call = asyncio.ensure_future(runner.run(put, ["k"], ["first"]))
        await asyncio.sleep(ACK_TIMEOUT_MS / 1000 / 3)
        killed = pair.primary_client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 2  # the calls' connection and the gate's
        pair.thaw_replica()
        assert await call == b"first"
        assert pair.replica_client.get("k") == b"first"
        await runner.close()

    run(scenario)


def test_a_lagging_replica_makes_calls_busy_after_one_ack_timeout_not_a_pile_up(
    pair: Pair,
) -> None:
    """Calls keep coming while the replica is frozen. A WAIT on the calls' own connection
    would hold every later command behind it, one WAIT per batch: batches piled up until the
    command timeout broke the connection (96 of 120 calls answered "no reply within 2000 ms",
    found by a review). The gate waits once for all replies held so far, off that connection,
    so every call is answered "not replicated" within a few ack timeouts."""
    ack_timeout_ms = 100

    async def scenario() -> None:
        runner = runner_for(
            pair.primary.url,
            replica_acks=1,
            replica_ack_timeout_ms=ack_timeout_ms,
            command_timeout_ms=2000,
        )
        assert await runner.run(INCR, ["warm"], []) == 1
        pair.freeze_replica()
        started = time.monotonic()
        calls = []
        for tick in range(60):
            calls += [
                asyncio.ensure_future(runner.run(INCR, [f"n{tick}-{i}"], [])) for i in range(2)
            ]
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        elapsed_s = time.monotonic() - started
        assert all(isinstance(outcome, NotReplicated) for outcome in outcomes), {
            type(outcome).__name__ for outcome in outcomes
        }
        assert elapsed_s < 10 * ack_timeout_ms / 1000, elapsed_s
        # Every one of them ran on the primary (a retry replays it).
        assert len(pair.primary_client.keys("n*")) == 120
        pair.thaw_replica()
        await runner.close()

    run(scenario)


def test_replica_ack_settings_are_bounded(tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "journal")
    assert parse_config(raw).redis.replica_acks == 0
    config = parse_config({**raw, "redis": {"replica_acks": 2, "replica_ack_timeout_ms": 50}})
    assert (config.redis.replica_acks, config.redis.replica_ack_timeout_ms) == (2, 50)
    # Without replica_acks the ack timeout bounds nothing (a short command timeout is fine).
    assert parse_config({**raw, "redis": {"command_timeout_ms": 200}}).redis.replica_acks == 0
    refused: list[tuple[dict[str, Any], str]] = [
        ({"replica_acks": 9}, "replica_acks"),
        ({"replica_acks": -1}, "replica_acks"),
        ({"replica_ack_timeout_ms": 0}, "replica_ack_timeout_ms"),
        (
            {"replica_acks": 1, "replica_ack_timeout_ms": 600, "command_timeout_ms": 2000},
            "a quarter",
        ),
    ]
    for redis_raw, message in refused:
        with pytest.raises(ConfigError, match=message):
            parse_config({**raw, "redis": redis_raw})


def test_readiness_names_replicas_that_do_not_confirm(pair: Pair, tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "journal")
    raw["redis"].update(url=pair.primary.url, replica_acks=1, replica_ack_timeout_ms=ACK_TIMEOUT_MS)
    app = create_app(
        parse_config(raw), run_journal_writer=False, access_log=AccessLog(enabled=False)
    )
    with AsgiGateway(app) as gateway:
        assert gateway.get("/readyz").json()["checks"]["redis"] == "ok"
        pair.freeze_replica()
        refused = gateway.get("/readyz")
        assert refused.status_code == 503
        assert refused.json()["checks"]["redis"].startswith("replicas do not confirm"), refused
        pair.thaw_replica()
        assert gateway.get("/readyz").json()["checks"]["redis"] == "ok"


def test_replies_are_not_confirmed_by_a_server_the_address_moved_to(
    pair: Pair, tmp_path: Path
) -> None:
    """A failover that moves the address (a virtual IP, a DNS name) while the gate waits: the
    gate's connection breaks and opens again, on another server. Its replicas confirmed the
    WAIT, but they never had the call, which ran on the old server: a helper's proxy-first
    failovers lost 7 and 12 bets answered "ok" this way. The gate compares the servers'
    run_ids, and such a reply is "not replicated" (busy; the retry learns the outcome)."""

    async def scenario(other: Pair) -> None:
        proxy = SwitchableProxy(pair.primary.port)
        proxy_port = await proxy.start()
        runner = runner_for(
            f"redis://127.0.0.1:{proxy_port}/0",
            replica_acks=1,
            replica_ack_timeout_ms=ACK_TIMEOUT_MS,
        )
        assert await runner.run(INCR, ["warm"], []) == 1
        pair.freeze_replica()  # the old server's write cannot be confirmed...
        call = asyncio.ensure_future(runner.run(INCR, ["moved"], []))
        await asyncio.sleep(ACK_TIMEOUT_MS / 1000 / 3)
        proxy.switch(other.primary.port)  # ...and the address now reaches another server
        with pytest.raises(NotReplicated, match="no longer reaches"):
            await call
        assert pair.primary_client.get("moved") == b"1"  # it ran, on the old server only
        assert other.primary_client.get("moved") is None
        # New calls run on the new server and are confirmed by its replicas.
        assert await runner.run(INCR, ["after"], []) == 1
        assert other.replica_client.get("after") == b"1"
        await runner.close()
        await proxy.close()

    with replicated_pair(tmp_path / "other") as other:
        run(lambda: scenario(other))


def acked_journal_config(url: str, directory: Path) -> Config:
    """The journal tests' config, with replica_acks = 1 (ack timeout 100 ms)."""
    config = journal_config(url, directory)
    redis_config = dataclasses.replace(config.redis, replica_acks=1, replica_ack_timeout_ms=100)
    return dataclasses.replace(config, redis=redis_config)


def test_the_journal_writer_writes_out_only_what_the_replicas_hold(
    pair: Pair, tmp_path: Path
) -> None:
    """A record the writer wrote out and the primary then lost in a failover comes back by
    the client's retry on the new primary: the journal on disk held that movement twice (a
    helper counted 38 to 87 such orders per lag-injected failover). With replica_acks the
    writer leaves in Redis what the replicas do not hold yet, and writes it once they do."""
    config = acked_journal_config(pair.primary.url, tmp_path / "journal")

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(pair.primary.url)
        journal = JournalWriter(client, WriterSettings.from_config(config))
        ledger = ledger_for(config)  # the calls themselves do not wait here
        await journal.start()
        try:
            first = await apply_operations(ledger, plan_operations(20, seed=1))
            await wait_until(lambda: pending_count(pair.primary.url) == 0, 10, "the first drain")
            on_disk = len(disk_records(config.journal.dir))
            assert on_disk == sum(1 for outcome, _ in first.values() if outcome != "unknown")

            pair.freeze_replica()
            held = await apply_operations(ledger, plan_operations(20, seed=2))
            held_count = sum(1 for outcome, _ in held.values() if outcome != "unknown")
            await asyncio.sleep(1.0)  # many flush intervals
            assert pending_count(pair.primary.url) == held_count
            assert len(disk_records(config.journal.dir)) == on_disk

            pair.thaw_replica()
            await wait_until(lambda: pending_count(pair.primary.url) == 0, 10, "the second drain")
            assert len(disk_records(config.journal.dir)) == on_disk + held_count
        finally:
            await journal.stop()
            await ledger.runner.close()
            await client.aclose()

    run(lambda: scenario())


def test_closing_the_runner_answers_the_calls_waiting_for_replicas(pair: Pair) -> None:
    """A call whose reply waits for the replicas when the runner closes gets "outcome
    unknown" (it ran); it must not wait for ever."""

    async def scenario() -> None:
        runner = runner_for(pair.primary.url, replica_acks=1, replica_ack_timeout_ms=ACK_TIMEOUT_MS)
        assert await runner.run(INCR, ["warm"], []) == 1
        pair.freeze_replica()
        call = asyncio.ensure_future(runner.run(INCR, ["n"], []))
        await asyncio.sleep(ACK_TIMEOUT_MS / 1000 / 3)  # its reply is held, the WAIT pending
        await runner.close()
        with pytest.raises(OutcomeUnknown, match="closed before the replicas"):
            await asyncio.wait_for(call, 5)
        pair.thaw_replica()

    run(scenario)


def test_entries_a_failover_brings_back_are_deleted_not_written_twice(
    pair: Pair, tmp_path: Path
) -> None:
    """The writer deletes a batch from the stream after writing it out; a failover before the
    replica got the XDEL brings the batch back on the new primary, with the same ids. A
    helper's failovers wrote 52 and 66 orders twice this way. The writer knows the newest id it
    has on disk per stream, and deletes such entries instead of writing them again."""
    config = acked_journal_config(pair.primary.url, tmp_path / "journal")
    streams = keys.all_journal_stream_keys(config.journal.buckets, False)

    async def scenario() -> None:
        ledger = ledger_for(config)
        first = await apply_operations(ledger, plan_operations(30, seed=1))
        written = sum(1 for outcome, _ in first.values() if outcome != "unknown")
        snapshot = {stream: pair.primary_client.xrange(stream) for stream in streams}
        assert sum(len(entries) for entries in snapshot.values()) == written
        client = redis.asyncio.Redis.from_url(pair.primary.url)
        journal = JournalWriter(client, WriterSettings.from_config(config))
        await journal.start()
        try:
            await wait_until(lambda: pending_count(pair.primary.url) == 0, 10, "the first drain")
            assert len(disk_records(config.journal.dir)) == written
            # As on a promoted replica that never got the XDELs: the entries are back.
            for stream, entries in snapshot.items():
                pair.primary_client.delete(stream)
                for sid, fields in entries:
                    pair.primary_client.xadd(stream, fields, id=sid)
            assert pending_count(pair.primary.url) == written
            await wait_until(lambda: pending_count(pair.primary.url) == 0, 10, "their deletion")
            assert len(disk_records(config.journal.dir)) == written
            # New records after them are written as usual.
            more = await apply_operations(ledger, plan_operations(10, seed=2))
            added = sum(1 for outcome, _ in more.values() if outcome != "unknown")
            await wait_until(lambda: pending_count(pair.primary.url) == 0, 10, "the last drain")
            assert len(disk_records(config.journal.dir)) == written + added
        finally:
            await journal.stop()
            await ledger.runner.close()
            await client.aclose()

    run(lambda: scenario())
