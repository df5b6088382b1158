"""Redis-side cost of one wallet operation: what a change_balance bet costs the Redis server.

``bench/run`` shows Redis using about as much CPU per request as the gateway's own Python, on the
same two cores. This benchmark says where that CPU goes. It runs real MINI.GAME bets through the
gateway's own ledger code (``walletgate.ledger.minigame.change_balance`` on
:class:`~walletgate.ledger.fastredis.FastRedisRunner`, each bet in a round of its own, as
``bench/run`` sends them) against a throwaway redis-server, then reads Redis's own accounting:

* server CPU µs per call (``INFO cpu``, user + system of the main process: the script, the
  protocol, the AOF writes);
* ``EVALSHA`` µs per call and each nested command's µs per call (``INFO commandstats``), which
  leaves the Lua interpreter's own share as the difference;
* reference rows with the same client: ``empty``, the bet's exact KEYS and ARGV sent to a script
  that returns at once (the fixed price of an EVALSHA of this size), and ``small debit``, the
  ledger micro-benchmark's idempotent debit (a GET, a HINCRBY and a SET).

Each variant runs on a fresh server, with AOF on (``appendfsync everysec``, as ``bench/run``) and
off; the table shows the median round. The client's own speed does not enter the figures.

    PYTHONPATH=python python bench/script_cost.py            # 40k bets per variant, 3 rounds
    PYTHONPATH=python python bench/script_cost.py --quick    # CI: a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ledger_micro import DEBIT, own_redis_server, run_loop
from walletgate.config import IDEMPOTENCY_TTL_MIN_S, MIDAS_TTL_MIN_S
from walletgate.ledger import admin as ledger_admin
from walletgate.ledger import minigame
from walletgate.ledger.core import Ledger, LedgerSettings
from walletgate.ledger.fastredis import FastRedisRunner
from walletgate.ledger.runner import ScriptArg, ScriptRunner
from walletgate.ledger.scripts import Script

TENANT = "bench"
CURRENCY = "USD"
PROTOCOL = "minigame"
FUNDING_UNITS = 10**12
BET_UNITS = 5_000
PLAYERS = 2_000
# The [journal] buckets and [idempotency] TTLs a default config gives the gateway.
SETTINGS = LedgerSettings(
    journal_buckets=16,
    cluster=False,
    idempotency_ttl_s=IDEMPOTENCY_TTL_MIN_S,
    midas_ttl_s=MIDAS_TTL_MIN_S,
)
CONCURRENCY = 64
MAX_IN_FLIGHT = 1024
EMPTY_SOURCE = "return {'applied', '1', '0'}\n"
BET_AND_REFERENCES = ("change_balance bet", "empty", "small debit")


@dataclass(frozen=True, slots=True)
class Cost:
    """Redis's accounting for one variant's measured calls."""

    calls: int
    server_cpu_us: float
    evalsha_us: float
    nested_us: dict[str, float]


class SwappingRunner:
    """Runs ``replacement`` wherever the ledger runs the script of the same name: measures an
    edited script (``--script-file``) through unchanged ledger code."""

    def __init__(self, inner: ScriptRunner, replacement: Script) -> None:
        self._inner = inner
        self._replacement = replacement

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        if script.name == self._replacement.name:
            script = self._replacement
        return await self._inner.run(script, keys, args)

    async def close(self) -> None:
        await self._inner.close()


class CapturingRunner:
    """A ScriptRunner that runs nothing: it keeps the last call's script, KEYS and ARGV."""

    def __init__(self) -> None:
        self.last: tuple[Script, list[str], list[ScriptArg]] | None = None

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        self.last = (script, list(keys), list(args))
        return [b"applied", b"1", b"0", b"ok", b"debit", b"0", b"0", b"0"]

    async def close(self) -> None:
        return None


def player_name(index: int) -> str:
    return f"p{index % PLAYERS}"


async def bet(ledger: Ledger, index: int, tag: str) -> bool:
    """One type 1 bet of BET_UNITS in a round of its own; True when it was applied."""
    result = await minigame.change_balance(
        ledger,
        tenant=TENANT,
        player=player_name(index),
        currency=CURRENCY,
        protocol=PROTOCOL,
        order_id=f"{tag}-o{index}",
        type_=1,
        money_units=-BET_UNITS,
        bet_units=BET_UNITS,
        session_id=f"{tag}-r{index}",
        end_round=False,
        cancel_order_id="",
        award_order_ids=(),
        refs={"order_id": f"{tag}-o{index}", "trace_id": f"{index:032x}"},
    )
    return result.status == "applied"


def bet_call_shape(index: int, tag: str) -> tuple[list[str], list[ScriptArg]]:
    """The KEYS and ARGV the ledger sends for bet(index, tag), without running it."""
    capturing = CapturingRunner()
    asyncio.run(bet(Ledger(capturing, SETTINGS), index, tag))
    assert capturing.last is not None
    _, keys, args = capturing.last
    return keys, args


async def fund(ledger: Ledger) -> None:
    for index in range(PLAYERS):
        await ledger_admin.adjust(
            ledger,
            tenant=TENANT,
            player=player_name(index),
            currency=CURRENCY,
            amount_units=FUNDING_UNITS,
            ref=f"fund-{index}",
            kind="adjust",
        )


async def drive(calls: int, operation: Callable[[int], Awaitable[bool]]) -> None:
    """``CONCURRENCY`` callers share ``calls`` operations; every one must succeed."""
    next_index = iter(range(calls)).__next__

    async def caller() -> int:
        done = 0
        while True:
            try:
                index = next_index()
            except StopIteration:
                return done
            done += await operation(index)

    succeeded = sum(await asyncio.gather(*(caller() for _ in range(CONCURRENCY))))
    if succeeded != calls:
        raise RuntimeError(f"{calls - succeeded} of {calls} operations failed")


def server_cpu_s(admin: redis.Redis) -> float:
    cpu = admin.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


def measure(url: str, variant: str, calls: int, replacement: Script | None) -> Cost:
    """Fund the players, warm up, then run ``calls`` operations of ``variant`` and read INFO."""
    admin = redis.Redis.from_url(url)
    empty = admin.script_load(EMPTY_SOURCE)
    admin.script_load(DEBIT.source)
    shape_keys, shape_args = bet_call_shape(0, "shape")

    async def main() -> Cost:
        runner: ScriptRunner = FastRedisRunner.from_url(
            url, max_in_flight=MAX_IN_FLIGHT, connections=1
        )
        if replacement is not None:
            runner = SwappingRunner(runner, replacement)
        ledger = Ledger(runner, SETTINGS)
        empty_script = Script(name="empty", source=EMPTY_SOURCE.encode(), sha=empty)

        async def operation(index: int, tag: str) -> bool:
            if variant == "change_balance bet":
                return await bet(ledger, index, tag)
            if variant == "empty":
                reply = await runner.run(empty_script, shape_keys, shape_args)
            else:
                account, record = f"bench:{{{index:012d}}}:acct", f"bench:{tag}:{index:012d}"
                reply = await runner.run(DEBIT, [account, record], ["-5", "3600"])
            return bool(reply[0] == b"applied")

        try:
            await fund(ledger)
            await drive(min(calls, 2_000), lambda index: operation(index, "warm"))
            admin.config_resetstat()
            cpu_before_s = server_cpu_s(admin)
            await drive(calls, lambda index: operation(index, "run"))
            cpu_s = server_cpu_s(admin) - cpu_before_s
        finally:
            await runner.close()
        stats = admin.info("commandstats")
        evalsha = stats["cmdstat_evalsha"]
        assert int(evalsha["calls"]) == calls, evalsha
        nested = {
            name.removeprefix("cmdstat_"): float(values["usec_per_call"])
            * int(values["calls"])
            / calls
            for name, values in stats.items()
            if name not in ("cmdstat_evalsha", "cmdstat_config|resetstat", "cmdstat_info")
        }
        return Cost(calls, cpu_s * 1e6 / calls, float(evalsha["usec_per_call"]), nested)

    try:
        return run_loop(main)
    finally:
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--calls", type=int, default=40_000, help="calls per variant")
    parser.add_argument("--rounds", type=int, default=3, help="the median round is shown")
    parser.add_argument("--quick", action="store_true", help="5k calls, one round (for CI)")
    parser.add_argument(
        "--script-file",
        type=Path,
        help="measure this text (prelude and includes already in it) as minigame_change",
    )
    parser.add_argument("--aof", choices=("on", "off", "both"), default="both")
    parser.add_argument("--bet-only", action="store_true", help="skip the reference rows")
    options = parser.parse_args()
    if options.quick:
        options.calls, options.rounds = 5_000, 1
    replacement = None
    if options.script_file is not None:
        source = options.script_file.read_bytes()
        sha = hashlib.sha1(source, usedforsecurity=False).hexdigest()
        replacement = Script(name="minigame_change", source=source, sha=sha)
    variants = ("change_balance bet",) if options.bet_only else BET_AND_REFERENCES
    aof_modes = {"on": (True,), "off": (False,), "both": (True, False)}[options.aof]
    rows: list[tuple[str, Cost]] = []
    for appendonly in aof_modes:
        for variant in variants:
            costs: list[Cost] = []
            for round_index in range(options.rounds):
                with own_redis_server(appendonly=appendonly) as url:
                    costs.append(measure(url, variant, options.calls, replacement))
                print(
                    f"round {round_index + 1}: AOF {'on' if appendonly else 'off'} {variant:<19}"
                    f" server {costs[-1].server_cpu_us:6.1f} µs/call",
                    file=sys.stderr,
                    flush=True,
                )
            median = sorted(costs, key=lambda cost: cost.server_cpu_us)[len(costs) // 2]
            rows.append((f"AOF {'on ' if appendonly else 'off'} {variant}", median))

    print(
        f"\nRedis-side cost per call: {options.calls:,} calls per variant, median of "
        f"{options.rounds} round(s), {CONCURRENCY} callers, {PLAYERS:,} players"
    )
    header = f"{'server µs':>10} {'EVALSHA µs':>11} {'nested µs':>10} {'Lua+glue µs':>12}"
    print(f"{'variant':<28} {header}")
    for name, cost in rows:
        nested_us = sum(cost.nested_us.values())
        print(
            f"{name:<28} {cost.server_cpu_us:>10.1f} {cost.evalsha_us:>11.1f} "
            f"{nested_us:>10.1f} {cost.evalsha_us - nested_us:>12.1f}"
        )
    name, bet_cost = rows[0]
    mode = name.removesuffix(" change_balance bet").strip()
    print(f"\nnested commands of one bet ({mode}), µs per bet:")
    for command, micros in sorted(bet_cost.nested_us.items(), key=lambda item: -item[1]):
        print(f"  {command:<10} {micros:6.2f}")
    if not statistics.fmean(cost.server_cpu_us for _, cost in rows) > 0:
        raise RuntimeError("Redis reported no CPU")


if __name__ == "__main__":
    main()
