"""Ledger micro-benchmark: script calls per second through the gateway's Redis client paths.

One run measures, against the same redis-server and with the same Lua script text:

* ``fast``: :class:`walletgate.ledger.fastredis.FastRedisRunner`, the hot path (per number of
  pipelined connections given with ``--connections``); with ``--replica`` the server gets a
  replica, and each fast variant runs once more with ``replica_acks = 1`` (every batch waits
  for the replica, see ``[redis] replica_acks``);
* ``redis-py``: redis-py's asyncio client through ``RedisPyRunner``, for reference;
* ``redis-benchmark``: the C tool running ``EVALSHA`` of the same script, ``-c`` clients and
  no pipelining (``-P 1``), every operation's keys randomised with ``__rand_int__``.

Python callers are ``--concurrency`` coroutines that each await one call at a time, which is
what ``redis-benchmark -c C -P 1`` does with C connections. Each round runs every variant on a
flushed database; the table shows the median round. The issue's acceptance is the fast path at
60 % or more of redis-benchmark.

    PYTHONPATH=python python bench/ledger_micro.py            # 200k ops x 3 rounds
    PYTHONPATH=python python bench/ledger_micro.py --quick    # CI: a few seconds
    PYTHONPATH=python python bench/ledger_micro.py --replica  # + the cost of replica_acks
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import redis
import redis.asyncio

from walletgate.ledger.fastredis import FastRedisRunner, parse_redis_url
from walletgate.ledger.runner import RedisPyRunner, ScriptRunner
from walletgate.ledger.scripts import Script

# A small idempotent debit: the shape of every ledger operation (look up the idempotency record,
# change the balance, store the outcome) at its smallest. KEYS[1] account hash, KEYS[2]
# idempotency record; ARGV[1] signed amount in units, ARGV[2] record TTL in seconds.
DEBIT_SOURCE = """\
local stored = redis.call('GET', KEYS[2])
if stored then
  return {'replay', stored}
end
local balance = redis.call('HINCRBY', KEYS[1], 'bal', ARGV[1])
redis.call('SET', KEYS[2], balance, 'EX', ARGV[2])
return {'applied', balance}
"""
DEBIT = Script(
    name="bench_debit",
    source=DEBIT_SOURCE.encode(),
    sha=hashlib.sha1(DEBIT_SOURCE.encode(), usedforsecurity=False).hexdigest(),
)
AMOUNT = "-5"
TTL_S = "3600"
# redis-benchmark replaces each __rand_int__ with a 12-digit number below this, so its keys are
# (almost) all distinct, like the Python side's, and of the same length.
KEYSPACE = 100_000_000
WARMUP_OPS = 2_000
Result = TypeVar("Result")
REDIS_START_TIMEOUT_S = 10.0
# With --replica: long enough that a loaded 2-core machine never times a WAIT out (a timed-out
# call is not applied twice, but the bench counts only applied debits).
REPLICA_ACK_TIMEOUT_MS = 500


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_server(binary: str, directory: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--dir", directory, "--protected-mode", "no", *extra),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)


def _wait_for_replica(url: str) -> None:
    """Until a write is confirmed by the replica (WAIT counts only a synced, online one)."""
    primary = redis.Redis.from_url(url)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    try:
        while int(primary.execute_command("WAIT", 1, 100)) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not sync")
            primary.set("bench:replication-probe", "1")
    finally:
        primary.close()


@contextmanager
def own_redis_server(*, appendonly: bool = False, replica: bool = False) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port: no RDB, AOF (``everysec``) only when
    ``appendonly``, and with ``replica`` a second server replicating it."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed; install it or pass --redis-url")
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ledger-micro-") as directory:
        try:
            processes.append(
                _start_server(
                    *(binary, directory, port),
                    *("--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec"),
                    *("--repl-diskless-sync-delay", "0"),
                )
            )
            url = f"redis://127.0.0.1:{port}/0"
            if replica:
                replica_dir = f"{directory}/replica"
                os.mkdir(replica_dir)
                processes.append(
                    _start_server(
                        *(binary, replica_dir, free_port()),
                        *("--appendonly", "no", "--replicaof", "127.0.0.1", str(port)),
                    )
                )
                _wait_for_replica(url)
            yield url
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=10)


def run_loop(main: Callable[[], Coroutine[Any, Any, Result]]) -> Result:
    """Run on uvloop when it is installed: the gateway runs on it (a granian extra)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


async def drive(runner: ScriptRunner, ops: int, concurrency: int, tag: str) -> float:
    """``concurrency`` callers share ``ops`` debits; returns operations per second."""
    next_op = iter(range(ops)).__next__

    async def caller() -> int:
        applied = 0
        run = runner.run
        while True:
            try:
                op = next_op()
            except StopIteration:
                return applied
            reply = await run(
                DEBIT, [f"bench:{{{op:012d}}}:acct", f"bench:{tag}:{op:012d}"], [AMOUNT, TTL_S]
            )
            applied += reply[0] == b"applied"

    started = time.perf_counter()
    applied = sum(await asyncio.gather(*(caller() for _ in range(concurrency))))
    elapsed = time.perf_counter() - started
    if applied != ops:
        raise RuntimeError(f"{ops - applied} of {ops} debits were not applied")
    return ops / elapsed


def bench_python(
    make: Callable[[], ScriptRunner], ops: int, concurrency: int
) -> Callable[[], Coroutine[Any, Any, float]]:
    async def main() -> float:
        runner = make()
        try:
            await drive(runner, min(WARMUP_OPS, ops), concurrency, "warm")
            return await drive(runner, ops, concurrency, "tx")
        finally:
            await runner.close()

    return main


def bench_redis_benchmark(url: str, ops: int, concurrency: int) -> float:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        sys.exit("redis-benchmark is not installed (it comes with redis-server / redis-tools)")
    address = parse_redis_url(url)
    command = [binary, "-h", address.host, "-p", str(address.port)]
    if address.password is not None:
        command += ["-a", address.password]
    if address.db:
        command += ["--dbnum", str(address.db)]
    command += ["-n", str(ops), "-c", str(concurrency), "-P", "1", "-r", str(KEYSPACE), "--csv"]
    command += ["EVALSHA", DEBIT.sha, "2", "bench:{__rand_int__}:acct", "bench:tx:__rand_int__"]
    command += [AMOUNT, TTL_S]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    # --csv prints a header and one row: "test","rps","avg_latency_ms",...
    row = done.stdout.strip().splitlines()[-1]
    return float(row.split(",")[1].strip('"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("-n", "--ops", type=int, default=200_000, help="operations per variant")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="the median round is shown")
    parser.add_argument(
        "--connections",
        default="1,2",
        help="comma-separated pipelined connection counts for the fast runner",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="start a replica too, and run each fast variant again with replica_acks = 1",
    )
    parser.add_argument("--quick", action="store_true", help="20k ops, one round (for CI)")
    options = parser.parse_args()
    if options.replica and options.redis_url:
        parser.error("--replica starts its own primary and replica; it takes no --redis-url")
    if options.quick:
        options.ops, options.rounds = 20_000, 1
    connection_counts = [int(count) for count in options.connections.split(",")]

    server: AbstractContextManager[str] = (
        nullcontext(options.redis_url)
        if options.redis_url
        else own_redis_server(replica=options.replica)
    )
    ops, concurrency = options.ops, options.concurrency
    with server as url:
        admin = redis.Redis.from_url(url)
        admin.script_load(DEBIT_SOURCE)

        def fast(connections: int, replica_acks: int = 0) -> Callable[[], float]:
            def make() -> ScriptRunner:
                return FastRedisRunner.from_url(
                    url,
                    max_in_flight=max(1024, concurrency),
                    connections=connections,
                    replica_acks=replica_acks,
                    replica_ack_timeout_ms=REPLICA_ACK_TIMEOUT_MS,
                )

            return lambda: run_loop(bench_python(make, ops, concurrency))

        def redis_py_asyncio() -> float:
            def make() -> ScriptRunner:
                return RedisPyRunner(redis.asyncio.Redis.from_url(url, max_connections=concurrency))

            return run_loop(bench_python(make, ops, concurrency))

        def benchmark() -> float:
            rate = bench_redis_benchmark(url, ops, concurrency)
            # redis-benchmark counts error replies as requests too; each applied debit leaves
            # two keys, so check the script really ran (a few random keys may collide).
            if int(admin.dbsize()) < 1.9 * ops:
                raise RuntimeError("redis-benchmark's EVALSHA did not apply its debits")
            return rate

        variants: dict[str, Callable[[], float]] = {
            f"fast runner ({count} conn)": fast(count) for count in connection_counts
        }
        if options.replica:
            for count in connection_counts:
                variants[f"fast ({count} conn, acks 1)"] = fast(count, replica_acks=1)
        variants["redis-py asyncio"] = redis_py_asyncio
        variants["redis-benchmark"] = benchmark

        results: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(options.rounds):
            for name, measure in variants.items():
                admin.flushdb()
                results[name].append(measure())
                print(
                    f"round {round_index + 1}: {name:<22} {results[name][-1]:>10,.0f} ops/s",
                    file=sys.stderr,
                    flush=True,
                )
        admin.flushdb()
        admin.close()

    median = {name: statistics.median(values) for name, values in results.items()}
    reference = median["redis-benchmark"]
    redis_py = median["redis-py asyncio"]
    print(
        f"\nledger micro-benchmark: {ops:,} debits x {options.rounds} round(s), "
        f"concurrency {concurrency}, script {DEBIT.sha[:12]}"
    )
    print(f"{'client':<24} {'ops/s':>10} {'vs redis-benchmark':>19} {'vs redis-py':>12}")
    for name, value in median.items():
        print(f"{name:<24} {value:>10,.0f} {value / reference:>18.0%} {value / redis_py:>11.1f}x")


if __name__ == "__main__":
    main()
