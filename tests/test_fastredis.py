"""The pipelined hot-path client against a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import RedisServer, free_port
from walletgate.config import RedisConfig
from walletgate.ledger.admin import adjust
from walletgate.ledger.cluster_runner import ClusterRunner
from walletgate.ledger.connect import make_admin_client, make_runner
from walletgate.ledger.core import Ledger, LedgerSettings
from walletgate.ledger.errors import LedgerScriptError, LedgerUnavailable, OutcomeUnknown
from walletgate.ledger.fastredis import (
    FastRedisRunner,
    RedisAddress,
    parse_redis_url,
)
from walletgate.ledger.scripts import Script, all_script_names, load_script

SETTINGS = LedgerSettings(
    journal_buckets=4, cluster=False, idempotency_ttl_s=604_800, midas_ttl_s=172_800
)


def make_script(name: str, source: str) -> Script:
    encoded = source.encode()
    return Script(name=name, source=encoded, sha=hashlib.sha1(encoded).hexdigest())


ECHO = make_script("echo", "return {KEYS[1], ARGV[1], tonumber(ARGV[2])}")
# Busy-waits ARGV[1] milliseconds on the server clock (TIME advances inside a script).
SLOW = make_script(
    "slow",
    "local function now() local t = redis.call('TIME') "
    "return tonumber(t[1]) * 1000000 + tonumber(t[2]) end "
    "local start = now() "
    "while now() - start < tonumber(ARGV[1]) * 1000 do end "
    "return 'done'",
)
FAILING = make_script("failing", "return redis.error_reply('WGTEST broken invariant')")
CRASHING = make_script("crashing", "return nosuchglobal.field")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def runner_for(url: str, **options: Any) -> FastRedisRunner:
    return FastRedisRunner.from_url(url, **options)


def test_script_calls_return_their_replies(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url)
        assert await runner.run(ECHO, ["k1"], ["v1", 42]) == [b"k1", b"v1", 42]
        assert await runner.run(ECHO, ["k2"], [b"\x00\xff", "-7"]) == [b"k2", b"\x00\xff", -7]
        assert await runner.command("SET", "plain", "value") == b"OK"
        assert await runner.command("GET", "plain") == b"value"
        assert await runner.command("GET", "missing") is None
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


def test_ledger_admin_adjust_through_the_fast_runner(redis_url: str) -> None:
    async def scenario() -> None:
        ledger = Ledger(runner_for(redis_url), SETTINGS)
        first = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=1_000_000,
            ref="r1",
            kind="adjust",
        )
        assert (first.outcome, first.balance_units) == ("applied", 1_000_000)
        replay = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=1_000_000,
            ref="r1",
            kind="adjust",
        )
        assert (replay.outcome, replay.balance_units) == ("replay", 1_000_000)
        short = await adjust(
            ledger,
            tenant="t1",
            player="p1",
            currency="usd",
            amount_units=-2_000_000,
            ref="r2",
            kind="adjust",
        )
        assert (short.outcome, short.balance_units) == ("insufficient", 1_000_000)
        await ledger.runner.close()

    run(scenario)


@pytest.mark.parametrize("connections", [1, 3])
def test_many_concurrent_calls_each_get_their_own_reply(redis_url: str, connections: int) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url, connections=connections, max_in_flight=4096)
        replies = await asyncio.gather(
            *(runner.run(ECHO, [f"key{i}"], [f"value{i}", i]) for i in range(2000))
        )
        assert replies == [[f"key{i}".encode(), f"value{i}".encode(), i] for i in range(2000)]
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


def test_cancelled_callers_do_not_shift_the_replies_of_others(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url)
        tasks = [
            asyncio.ensure_future(runner.run(ECHO, [f"key{i}"], [f"value{i}", i]))
            for i in range(200)
        ]
        await asyncio.sleep(0)  # Every call has been sent; now cancel every third one.
        for task in tasks[::3]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 3 == 0:
                assert isinstance(result, asyncio.CancelledError)
            else:
                assert result == [f"key{i}".encode(), f"value{i}".encode(), i]
        assert runner.in_flight == 0
        assert await runner.run(ECHO, ["after"], ["x", 1]) == [b"after", b"x", 1]
        await runner.close()

    run(scenario)


def test_noscript_after_script_flush_recovers(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url)
        assert await runner.run(ECHO, ["a"], ["1", 1]) == [b"a", b"1", 1]
        await runner.command("SCRIPT", "FLUSH")
        assert await runner.command("SCRIPT", "EXISTS", ECHO.sha) == [0]
        replies = await asyncio.gather(*(runner.run(ECHO, ["b"], ["2", i]) for i in range(50)))
        assert replies == [[b"b", b"2", i] for i in range(50)]
        # The EVAL fallback cached the script again, so EVALSHA works from now on.
        assert await runner.command("SCRIPT", "EXISTS", ECHO.sha) == [1]
        await runner.close()

    run(scenario)


def test_script_errors_raise_ledger_script_error(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url)
        with pytest.raises(LedgerScriptError, match="WGTEST broken invariant"):
            await runner.run(FAILING, ["k"], [])
        with pytest.raises(LedgerScriptError, match="nosuchglobal"):
            await runner.run(CRASHING, ["k"], [])
        with pytest.raises(LedgerScriptError, match="wrong number of arguments"):
            await runner.command("GET")
        # The connection is still good after errors: they are replies, not protocol failures.
        assert await runner.run(ECHO, ["k"], ["v", 1]) == [b"k", b"v", 1]
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


def test_redis_down_fails_fast_and_service_resumes_by_itself(fresh_redis: RedisServer) -> None:
    async def scenario() -> None:
        runner = runner_for(fresh_redis.url, connect_timeout_ms=500, command_timeout_ms=2000)
        assert await runner.run(ECHO, ["k"], ["v", 1]) == [b"k", b"v", 1]

        fresh_redis.stop()
        for _ in range(20):
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable):
                await runner.run(ECHO, ["k"], ["v", 1])
            assert time.monotonic() - started < 1.0
        burst_started = time.monotonic()
        results = await asyncio.gather(
            *(runner.run(ECHO, ["k"], ["v", i]) for i in range(500)), return_exceptions=True
        )
        assert all(isinstance(result, LedgerUnavailable) for result in results)
        assert time.monotonic() - burst_started < 1.0
        assert runner.in_flight == 0

        fresh_redis.start()
        deadline = time.monotonic() + 5.0
        while True:
            try:
                assert await runner.run(ECHO, ["k"], ["v", 2]) == [b"k", b"v", 2]
                break
            except LedgerUnavailable:
                assert time.monotonic() < deadline, "the runner did not reconnect"
                await asyncio.sleep(0.05)
        await runner.close()

    run(scenario)


def test_calls_in_flight_when_redis_dies_fail_promptly(fresh_redis: RedisServer) -> None:
    async def scenario() -> None:
        runner = runner_for(fresh_redis.url, command_timeout_ms=10_000)
        slow = asyncio.ensure_future(runner.run(SLOW, ["k"], [3000]))
        others = [asyncio.ensure_future(runner.run(ECHO, ["k"], ["v", i])) for i in range(10)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        assert fresh_redis.process is not None
        fresh_redis.process.kill()  # No graceful shutdown: the socket just closes.
        fresh_redis.process.wait()
        fresh_redis.process = None
        for call in [slow, *others]:
            with pytest.raises(LedgerUnavailable):
                await call
        assert time.monotonic() - started < 1.0
        await runner.close()

    run(scenario)


def test_command_timeout_breaks_the_connection_and_the_next_call_reconnects(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url, command_timeout_ms=100)
        # Cache both scripts first, so the slow one is the head of the batch below (a NOSCRIPT
        # retry would send it after the others).
        assert await runner.run(SLOW, ["k"], [0]) == b"done"
        assert await runner.run(ECHO, ["k"], ["v", 0]) == [b"k", b"v", 0]
        started = time.monotonic()
        results = await asyncio.gather(
            runner.run(SLOW, ["k"], [400]),
            *(runner.run(ECHO, ["k"], ["v", i]) for i in range(5)),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(result, LedgerUnavailable) for result in results), results
        assert "no reply from Redis within 100 ms" in str(results[0])
        assert elapsed < 0.35
        await asyncio.sleep(0.5)  # Let the slow script finish on the server.
        assert await runner.run(ECHO, ["k"], ["v", 9]) == [b"k", b"v", 9]
        await runner.close()

    run(scenario)


async def silent_server() -> tuple[asyncio.Server, int]:
    """A TCP server that accepts connections and never answers: a hung Redis."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_handshake_bounded_by_the_connect_timeout() -> None:
    async def scenario() -> None:
        server, port = await silent_server()
        runner = runner_for(f"redis://:pw@127.0.0.1:{port}/0", connect_timeout_ms=200)
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="timed out"):
            await runner.run(ECHO, ["k"], ["v", 1])
        assert 0.15 < time.monotonic() - started < 0.6
        # Within the reconnect backoff the next call fails without trying again.
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="backoff"):
            await runner.run(ECHO, ["k"], ["v", 1])
        assert time.monotonic() - started < 0.05
        await runner.close()
        server.close()

    run(scenario)


def test_a_hung_server_is_bounded_by_the_command_timeout() -> None:
    async def scenario() -> None:
        server, port = await silent_server()
        runner = runner_for(f"redis://127.0.0.1:{port}/0", command_timeout_ms=150)
        started = time.monotonic()
        results = await asyncio.gather(
            *(runner.run(ECHO, ["k"], ["v", i]) for i in range(100)), return_exceptions=True
        )
        assert all(isinstance(result, LedgerUnavailable) for result in results)
        assert 0.1 < time.monotonic() - started < 0.5
        assert runner.in_flight == 0
        await runner.close()
        server.close()

    run(scenario)


def test_close_during_a_connect_fails_callers_cleanly() -> None:
    async def scenario() -> None:
        server, port = await silent_server()
        runner = runner_for(f"redis://:pw@127.0.0.1:{port}/0", connect_timeout_ms=5000)
        calls = [asyncio.ensure_future(runner.run(ECHO, ["k"], ["v", i])) for i in range(5)]
        await asyncio.sleep(0.1)
        await runner.close()
        for call in calls:
            with pytest.raises(LedgerUnavailable):
                await call
        server.close()

    run(scenario)


def test_saturation_without_queue_wait_fails_at_once(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url, max_in_flight=4, queue_wait_ms=0)
        started = time.monotonic()
        results = await asyncio.gather(
            *(runner.run(SLOW, ["k"], [50]) for _ in range(10)), return_exceptions=True
        )
        assert results[:4] == [b"done"] * 4
        assert all(isinstance(result, LedgerUnavailable) for result in results[4:])
        assert "saturated" in str(results[4])
        assert time.monotonic() - started < 1.0
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


def test_saturation_waits_at_most_queue_wait(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url, max_in_flight=4, queue_wait_ms=30)
        started = time.monotonic()
        results = await asyncio.gather(
            *(runner.run(SLOW, ["k"], [50]) for _ in range(8)), return_exceptions=True
        )
        assert results[:4] == [b"done"] * 4
        rejected = results[4:]
        assert all(isinstance(result, LedgerUnavailable) for result in rejected)
        assert "within 30 ms" in str(rejected[0])
        assert time.monotonic() - started < 1.0
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


def test_waiters_get_slots_in_order_when_the_wait_is_long_enough(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url, max_in_flight=2, queue_wait_ms=5000, max_waiters=64)
        replies = await asyncio.gather(*(runner.run(ECHO, ["k"], ["v", i]) for i in range(50)))
        assert replies == [[b"k", b"v", i] for i in range(50)]
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


def test_waiter_bound_rejects_beyond_max_waiters(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url, max_in_flight=2, queue_wait_ms=5000, max_waiters=3)
        results = await asyncio.gather(
            *(runner.run(SLOW, ["k"], [20]) for _ in range(8)), return_exceptions=True
        )
        assert results[:5] == [b"done"] * 5
        assert all(isinstance(result, LedgerUnavailable) for result in results[5:])
        assert runner.in_flight == 0
        await runner.close()

    run(scenario)


def test_auth_and_select_from_the_url(fresh_redis: RedisServer) -> None:
    fresh_redis.stop()
    fresh_redis.start("--requirepass", "s3cret-pw")

    async def scenario() -> None:
        url = f"redis://:s3cret-pw@127.0.0.1:{fresh_redis.port}/3"
        runner = runner_for(url)
        assert await runner.command("SET", "where", "db3") == b"OK"
        await runner.close()

        wrong = runner_for(f"redis://:not-it@127.0.0.1:{fresh_redis.port}/0")
        with pytest.raises(LedgerUnavailable) as raised:
            await wrong.run(ECHO, ["k"], ["v", 1])
        assert "not-it" not in str(raised.value)
        await wrong.close()

    run(scenario)
    client = redis.Redis(port=fresh_redis.port, password="s3cret-pw", db=3)
    assert client.get("where") == b"db3"
    client.close()


def test_unix_socket(fresh_redis: RedisServer, tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    fresh_redis.stop()
    fresh_redis.start("--unixsocket", str(socket_path), "--unixsocketperm", "700")

    async def scenario() -> None:
        runner = runner_for(f"unix://{socket_path}?db=2")
        assert await runner.run(ECHO, ["k"], ["unix", 5]) == [b"k", b"unix", 5]
        assert await runner.command("SET", "via", "unix") == b"OK"
        await runner.close()

    run(scenario)
    client = redis.Redis(port=fresh_redis.port, db=2)
    assert client.get("via") == b"unix"
    client.close()


def test_closed_runner_refuses_calls(redis_url: str) -> None:
    async def scenario() -> None:
        runner = runner_for(redis_url)
        assert await runner.run(ECHO, ["k"], ["v", 1]) == [b"k", b"v", 1]
        await runner.close()
        with pytest.raises(LedgerUnavailable):
            await runner.run(ECHO, ["k"], ["v", 1])

    run(scenario)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/2", RedisAddress(host="127.0.0.1", port=6380, db=2)),
        ("redis://localhost", RedisAddress(host="localhost", port=6379, db=0)),
        (
            "redis://:p%40ss@10.0.0.1:7000/0",
            RedisAddress(host="10.0.0.1", port=7000, password="p@ss"),
        ),
        (
            "redis://user:pw@h:1/4",
            RedisAddress(host="h", port=1, db=4, username="user", password="pw"),
        ),
        ("rediss://h:6390", RedisAddress(host="h", port=6390, tls=True)),
        (
            "unix:///run/redis.sock?db=3&password=pw",
            RedisAddress(path="/run/redis.sock", db=3, password="pw"),
        ),
    ],
)
def test_parse_redis_url(url: str, expected: RedisAddress) -> None:
    assert parse_redis_url(url) == expected


def test_parse_redis_url_rejects_garbage_without_echoing_secrets() -> None:
    with pytest.raises(ValueError, match="scheme"):
        parse_redis_url("http://:topsecret@h:1")
    with pytest.raises(ValueError, match="database") as raised:
        parse_redis_url("redis://:topsecret@h:1/x")
    assert "topsecret" not in str(raised.value)
    assert "topsecret" not in repr(parse_redis_url("redis://:topsecret@h:1/0"))


def test_make_runner_and_admin_client(redis_url: str) -> None:
    async def scenario() -> None:
        config = RedisConfig(url=redis_url)
        runner = make_runner(config)
        assert isinstance(runner, FastRedisRunner)
        assert await runner.run(ECHO, ["k"], ["v", 1]) == [b"k", b"v", 1]
        await runner.close()
        assert isinstance(make_runner(RedisConfig(url=redis_url, cluster=True)), ClusterRunner)

        admin = make_admin_client(config)
        assert await admin.ping() is True
        await admin.aclose()

    run(scenario)


def test_a_primary_demoted_to_a_replica_breaks_the_connection_and_fails_the_probe(
    fresh_redis: RedisServer, redis_url: str
) -> None:
    """A failover that moves the address (DNS, a virtual IP) may leave our socket open on the
    old primary, now a replica. Its READONLY answers break the connection, so the next call
    connects again (and reaches whatever the address names now), and the readiness ping, which
    runs fine on a replica without its shebang, is refused there."""
    write = make_script("write", "return redis.call('INCR', KEYS[1])")
    ping = load_script("ping")
    admin = redis.Redis.from_url(fresh_redis.url)
    other_port = redis_url.rsplit(":", 1)[1].split("/")[0]

    def connections_received() -> int:
        return int(admin.info("stats")["total_connections_received"])

    async def scenario() -> None:
        runner = runner_for(fresh_redis.url)
        assert await runner.run(write, ["n"], []) == 1
        assert int(await runner.run(ping, [], [])) > 0  # the server's time
        admin.replicaof("127.0.0.1", other_port)
        before = connections_received()
        with pytest.raises(LedgerUnavailable, match="READONLY"):
            await runner.run(write, ["n"], [])
        with pytest.raises(LedgerUnavailable, match="READONLY"):
            await runner.run(ping, [], [])
        assert connections_received() == before + 1  # the second call connected again
        admin.replicaof("no", "one")
        assert int(await runner.run(ping, [], [])) > 0
        await runner.close()

    try:
        run(scenario)
    finally:
        admin.replicaof("no", "one")
        admin.close()


def test_a_server_that_accepts_then_refuses_is_retried_with_backoff(tmp_path: Path) -> None:
    """At maxclients Redis accepts, writes an error and closes. That must count as a failed
    connect (backoff, "unavailable"), not as an open connection whose unsolicited error is
    handed to the first caller as its script's reply, reconnecting at once after every close."""
    server = RedisServer(port=free_port(), directory=tmp_path / "redis")
    server.start("--maxclients", "1")
    holder = redis.Redis.from_url(server.url)
    try:
        # Take the only client slot, once the start-up probe's connection has gone.
        deadline = time.monotonic() + 5
        while True:
            try:
                holder.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "the client slot never came free"
                time.sleep(0.05)

        def rejected() -> int:
            return int(holder.info("stats")["rejected_connections"])

        async def scenario() -> None:
            runner = runner_for(server.url)
            before = rejected()
            errors: list[BaseException] = []
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    await runner.run(ECHO, ["k"], ["v", 1])
                except (LedgerUnavailable, LedgerScriptError) as error:
                    errors.append(error)
                await asyncio.sleep(0.001)
            await runner.close()
            assert errors and all(isinstance(error, LedgerUnavailable) for error in errors)
            # Backoff from 50 ms, doubling: a handful of attempts in a second, not hundreds.
            assert rejected() - before <= 10, rejected() - before

        run(scenario)
    finally:
        holder.close()
        server.stop()


def test_the_prelude_refuses_a_call_past_its_deadline_and_one_without_a_deadline(
    redis_url: str,
) -> None:
    """The runners append the deadline after a script's own arguments; the prelude takes it
    off ARGV (the script sees only its own) and refuses the call, writing nothing, once the
    server's clock is past it."""
    client = redis.Redis.from_url(redis_url)
    source = load_script("player_touch").source
    key = "wg:{fence:p1}:acct"
    own_args = ["usd", "1"]  # player_touch: the currency, and "1" to create its balance
    past_us = (time.time_ns() // 1000) - 1
    with pytest.raises(redis.ResponseError, match=r"^WGLATE"):
        client.eval(source, 1, key, *own_args, str(past_us))
    with pytest.raises(redis.ResponseError, match=r"^WGARG"):
        client.eval(source, 1, key, *own_args, "not-a-deadline")
    with pytest.raises(redis.ResponseError, match=r"^WGARG"):
        client.eval(source, 0)
    assert client.exists(key) == 0
    future_us = (time.time_ns() // 1000) + 5_000_000
    client.eval(source, 1, key, *own_args, str(future_us))
    assert client.hgetall(key) == {b"known": b"1", b"bal:usd": b"0"}
    client.delete(key)

    async def scenario() -> None:
        # Through the runner, the same call succeeds (it appends a fresh deadline), and a
        # WGLATE reply is "unavailable" (busy, nothing applied), not a script error.
        runner = runner_for(redis_url)
        await runner.run(load_script("player_touch"), [key], own_args)
        assert client.hgetall(key) == {b"known": b"1", b"bal:usd": b"0"}
        late = make_script("late", "return redis.error_reply('WGLATE too late')")
        with pytest.raises(LedgerUnavailable):
            await runner.run(late, ["k"], [])
        await runner.close()

    run(scenario)
    client.close()


class ReplyDroppingProxy:
    """A loopback TCP proxy in front of Redis that can drop a connection at the worst moment:
    Redis has run the command, and its reply is thrown away instead of being passed on."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.drop_next_reply = False
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        redis_in, redis_out = await asyncio.open_connection("127.0.0.1", self.redis_port)

        async def to_redis() -> None:
            while data := await client_in.read(65536):
                redis_out.write(data)
                await redis_out.drain()

        async def to_client() -> None:
            while data := await redis_in.read(65536):
                if self.drop_next_reply:
                    self.drop_next_reply = False
                    break  # Redis ran the command; its reply never arrives
                client_out.write(data)
                await client_out.drain()

        pump = asyncio.create_task(to_redis())
        await to_client()
        pump.cancel()
        for writer in (client_out, redis_out):
            writer.transport.abort()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


def test_a_call_whose_reply_is_lost_with_its_connection_is_sent_once_more(
    redis_url: str,
) -> None:
    """A connection that breaks after Redis ran a call but before its reply arrived leaves the
    outcome unknown. Answering "busy, nothing applied" would be false; the runner sends the
    call once more on a fresh connection, and the idempotent script replays its outcome."""
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    store = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        proxy = ReplyDroppingProxy(redis_port)
        port = await proxy.start()
        runner = runner_for(f"redis://127.0.0.1:{port}/0")
        ledger = Ledger(runner, SETTINGS)

        async def credit(ref: str) -> Any:
            return await adjust(
                ledger,
                tenant="t1",
                player="p-drop",
                currency="usd",
                amount_units=500,
                ref=ref,
                kind="adjust",
            )

        assert (await credit("warm")).outcome == "applied"  # the connection is open
        proxy.drop_next_reply = True
        answer = await credit("dropped")
        # An adjustment is two script calls (the ref's claim, then the credit); whichever lost
        # its reply ran before the drop, and its second sending replayed it: the credit is
        # applied exactly once.
        assert answer.outcome in ("applied", "replay") and answer.balance_units == 1_000
        assert proxy.connections == 2
        await runner.close()
        await proxy.close()

    run(scenario)
    assert store.hget("wg:{t1:p-drop}:acct", "bal:usd") == b"1000"
    store.close()


def test_a_script_marked_resend_unsafe_is_never_sent_twice(redis_url: str) -> None:
    """Midas cancelpay keeps no outcome to replay: run twice, it answers "already rolled back"
    to a client whose rollback the first run made. Its header marks it, and a dropped
    connection then ends in OutcomeUnknown (busy), with the call run at most once."""
    unsafe = {name for name in all_script_names() if not load_script(name).resend_safe}
    assert unsafe == {"midas_cancelpay"}
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    store = redis.Redis.from_url(redis_url)
    source = b"return redis.call('INCR', KEYS[1])"
    counted = Script(
        name="count", source=source, sha=hashlib.sha1(source).hexdigest(), resend_safe=False
    )

    async def scenario() -> None:
        proxy = ReplyDroppingProxy(redis_port)
        runner = runner_for(f"redis://127.0.0.1:{await proxy.start()}/0")
        assert await runner.run(counted, ["resend:count"], []) == 1
        proxy.drop_next_reply = True
        with pytest.raises(OutcomeUnknown):
            await runner.run(counted, ["resend:count"], [])
        assert await runner.run(counted, ["resend:count"], []) == 3
        await runner.close()
        await proxy.close()

    run(scenario)
    store.close()
