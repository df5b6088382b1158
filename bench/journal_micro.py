"""Journal writer micro-benchmark: CPU per record of the journal writer.

Two measurements, both on generated stream entries shaped like the ones the Lua prelude's
``wg_journal`` writes (mostly MINI.GAME bets: the balance, 14 transaction fields and the round
in ``fx``; some payouts that also touch the bet's transaction, wallet_v2, admin and Midas
records with the ``gdelta``/``gbal`` pair):

* ``encode`` (default): :func:`walletgate.journal.records.encode_batch` (decode, validate and
  encode the entries into journal lines, plus each record's key-map and delete metadata) in
  batches of ``--batch`` entries, the best of ``--rounds`` rounds. When the module also has
  ``encode_batch_reference`` (the original pure-Python path, kept as the reference), it is timed
  on the same entries, and the two outputs are compared first.
* ``sidecar``: a real ``python -m walletgate.journal.writer`` process (16 shards, default
  settings) against a throwaway redis-server, fed ``--rate`` records per second over 16 buckets
  after ``--warmup`` seconds; prints the writer process's CPU time (user + system, from /proc)
  per record written, Redis's CPU time (the producer's XADDs included), and the time Redis spent
  in the writer's scripts and reads (``INFO commandstats``).

    PYTHONPATH=python python bench/journal_micro.py                     # encode, 20k records
    PYTHONPATH=python python bench/journal_micro.py --quick             # CI: a second or two
    PYTHONPATH=python python bench/journal_micro.py sidecar --rate 3000 --seconds 20

To measure another version of the writer (the sidecar inherits the environment), put a copy of
that version's ``walletgate`` package first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import redis

from walletgate.journal import records
from walletgate.ledger import keys

RETENTION_S = "604800"
KEYMAP_TTL_S = 604_800
BUCKETS = 16
REDIS_START_TIMEOUT_S = 10.0
TX_FIELDS = (
    "fp", "state", "code", "msg", "op", "type", "protocol", "player", "currency", "delta", "bal",
    "seq", "created_us", "round",
)  # fmt: skip


def cjson_encode(value: Any) -> str:
    """What Lua's cjson.encode prints for tables of strings: compact, UTF-8 kept, '/' escaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")


class EntryMaker:
    """Generates stream entries (flat ``[name, value, ...]`` lists of bytes, as the writer's
    stream reader hands them over) for a few thousand players."""

    def __init__(self, seed: int, players: int = 2000) -> None:
        self.rng = random.Random(seed)
        self.players = players
        self.seq: dict[str, int] = {}
        self.balance: dict[str, int] = {}
        self.bets: list[tuple[str, str, str]] = []  # (player, order_id, round) of open bets
        self.count = 0

    def _order_id(self) -> str:
        self.count += 1
        return f"2024071619{self.count:08d}{self.rng.getrandbits(32):08x}"

    def entry(self, ts_us: int) -> tuple[int, list[bytes]]:
        """A record of ``ts_us`` and its bucket (the player's, as the ledger picks it)."""
        roll = self.rng.random()
        if roll < 0.70:
            return self._minigame(ts_us, payout=False)
        if roll < 0.85:
            return self._minigame(ts_us, payout=True)
        if roll < 0.93:
            return self._wallet_v2(ts_us)
        if roll < 0.97:
            return self._midas(ts_us)
        return self._admin(ts_us)

    def _account(self, player: str, currency: str) -> tuple[int, int]:
        account = player + ":" + currency
        seq = self.seq.get(account, 0) + 1
        self.seq[account] = seq
        return seq, self.balance.get(account, 1_000_000)

    def _fields(
        self,
        ts_us: int,
        tenant: str,
        player: str,
        currency: str,
        seq: int,
        kind: str,
        key: str,
        delta: int,
        balance: int,
        protocol: str,
        refs: dict[str, Any],
        fx: list[list[str]],
        extra: Sequence[str] = (),
    ) -> tuple[int, list[bytes]]:
        self.balance[player + ":" + currency] = balance
        fields = [
            "ts", str(ts_us), "tenant", tenant, "player", player, "currency", currency,
            "seq", str(seq), "kind", kind, "key", key, "delta", str(delta), "bal", str(balance),
            "proto", protocol, "result", "1", "fp", self.rng.randbytes(12).hex(),
            "refs", orjson.dumps(refs).decode(), "fx", cjson_encode(fx) if fx else "{}",
            *extra,
        ]  # fmt: skip
        bucket = keys.journal_bucket(tenant, player, BUCKETS, False)
        return bucket, [part.encode() for part in fields]

    def _minigame(self, ts_us: int, *, payout: bool) -> tuple[int, list[bytes]]:
        player = str(1_000_000 + self.rng.randrange(self.players))
        currency = "CNY"
        order_id = self._order_id()
        seq, balance = self._account(player, currency)
        refs: dict[str, Any] = {"order_id": order_id, "trace_id": self.rng.randbytes(6).hex()}
        fx: list[list[str]] = []
        awarded = [bet for bet in self.bets[-50:] if bet[0] == player][:1] if payout else []
        if payout:
            kind, amount, round_id = "win", self.rng.randrange(1, 500), ""
            if awarded:
                round_id = awarded[0][2]
                refs["award_order_ids"] = [awarded[0][1]]
        else:
            kind, amount = "bet", -self.rng.randrange(1, 100)
            round_id = f"18131800745266{self.rng.randrange(10**5):05d}"
            refs["session_id"] = round_id
        balance += amount
        fx.append(["acct", "bal:" + currency, str(balance), "0"])
        for _, bet_order, _ in awarded:
            for name in ("awarded_by", "settled_by"):
                fx.append(["tx:" + bet_order, name, order_id, RETENTION_S])
        values = [
            refs["trace_id"], "applied", "1", "ok", kind, "3" if payout else "1", "minigame",
            player, currency, str(amount), str(balance), str(seq), str(ts_us), round_id,
        ]  # fmt: skip
        fx.extend(
            ["tx:" + order_id, n, v, RETENTION_S] for n, v in zip(TX_FIELDS, values, strict=True)
        )
        if not payout:
            fx.append(["round:" + round_id, "bet:" + order_id, "1", RETENTION_S])
            self.bets.append((player, order_id, round_id))
        return self._fields(
            ts_us, "10013", player, currency, seq, kind, order_id, amount, balance,
            "minigame", refs, fx,
        )  # fmt: skip

    def _wallet_v2(self, ts_us: int) -> tuple[int, list[bytes]]:
        player = f"agent7/player{self.rng.randrange(self.players)}"
        currency = "USD"
        bet_id = self.rng.randrange(10**12)
        seq, balance = self._account(player, currency)
        amount = -self.rng.randrange(1, 10_000)
        balance += amount
        key = f"bet:{bet_id}"
        tx = [
            ("fp", "x"), ("state", "applied"), ("delta", str(amount)), ("bal", str(balance)),
            ("seq", str(seq)), ("round", "r1"),
        ]  # fmt: skip
        fx = [["acct", "bal:" + currency, str(balance), "0"]]
        fx += [["tx:" + key, name, value, RETENTION_S] for name, value in tx]
        refs = {"id": bet_id, "round_id": self.rng.randrange(10**9)}
        return self._fields(
            ts_us, "agent7", player, currency, seq, "bet", key, amount, balance, "wallet_v2",
            refs, fx, ("round", "r1"),
        )  # fmt: skip

    def _midas(self, ts_us: int) -> tuple[int, list[bytes]]:
        player = "odkx20ENSNa2w5y3g_qOkOvBN" + str(self.rng.randrange(self.players))
        currency = "coin"
        bill = f"BILL{self._order_id()}"
        seq, balance = self._account(player, currency)
        amount = -self.rng.randrange(1, 100) * 10_000
        balance += amount
        fx = [
            ["acct", "bal:" + currency, str(balance), "0"],
            ["acct", "gen:" + currency, "0", "0"],
            ["bill:" + bill, "state", "paid", "7776000"],
            ["bill:" + bill, "amt", str(-amount), "7776000"],
        ]
        return self._fields(
            ts_us, "wx1234567", player, currency, seq, "pay", bill, amount, balance,
            "midas", {"bill_no": bill}, fx, ("gdelta", "0", "gbal", "0"),
        )  # fmt: skip

    def _admin(self, ts_us: int) -> tuple[int, list[bytes]]:
        player = str(1_000_000 + self.rng.randrange(self.players))
        seq, balance = self._account(player, "CNY")
        amount = self.rng.randrange(1, 10**6)
        balance += amount
        fx = [["acct", "bal:CNY", str(balance), "0"]]
        ref = f"adm-{self._order_id()}"
        return self._fields(
            ts_us, "10013", player, "CNY", seq, "adjust", ref, amount, balance, "admin",
            {"ref": ref}, fx,
        )  # fmt: skip


def make_entries(count: int, seed: int = 7) -> list[records.StreamEntry]:
    maker = EntryMaker(seed)
    streams = keys.all_journal_stream_keys(BUCKETS, False)
    ts_us = 1_721_130_791_000_000
    entries = []
    for _ in range(count):
        ts_us += maker.rng.randrange(0, 700)
        bucket, flat = maker.entry(ts_us)
        entries.append(records.StreamEntry(bucket, streams[bucket], f"{ts_us // 1000}-0", flat))
    return entries


# --- encode ----------------------------------------------------------------------------------

Encoder = Callable[
    [Sequence[records.StreamEntry], int, int], tuple[bytes, list[records.RecordMeta]]
]


def time_encoder(encode: Encoder, batches: list[list[records.StreamEntry]], rounds: int) -> float:
    """Best round's µs per record."""
    record_count = sum(len(batch) for batch in batches)
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time_ns()
        for number, batch in enumerate(batches):
            encode(batch, number + 1, KEYMAP_TTL_S)
        best = min(best, (time.process_time_ns() - started) / 1000 / record_count)
    return best


def run_encode(options: argparse.Namespace) -> None:
    entries = make_entries(options.records)
    size = options.batch
    batches = [entries[start : start + size] for start in range(0, len(entries), size)]
    encoders: list[tuple[str, Encoder]] = []
    reference = getattr(records, "encode_batch_reference", None)
    if reference is not None:
        encoders.append(("reference (pure Python)", reference))
    encoders.append(("encode_batch", records.encode_batch))
    if reference is not None:
        for batch in batches[:50]:
            if records.encode_batch(batch, 1, KEYMAP_TTL_S) != reference(batch, 1, KEYMAP_TTL_S):
                sys.exit("encode_batch and encode_batch_reference disagree")
    line_bytes = len(records.encode_batch(entries, 1, KEYMAP_TTL_S)[0]) / len(entries)
    print(
        f"{len(entries)} records in batches of {size}, {line_bytes:.0f} bytes per journal line, "
        f"best of {options.rounds} rounds"
    )
    results = [(name, time_encoder(encode, batches, options.rounds)) for name, encode in encoders]
    for name, micros in results:
        print(f"  {name:<26} {micros:8.2f} µs/record")
    if len(results) == 2:
        print(f"  speed-up {results[0][1] / results[1][1]:.1f}x")


# --- sidecar ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def own_redis_server(directory: Path) -> Iterator[tuple[str, int]]:
    """A throwaway redis-server on a free loopback port, without persistence: (url, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(directory), "--protected-mode", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def script_usec(client: redis.Redis) -> tuple[int, int]:
    """Calls and microseconds Redis spent on the writer's commands: its scripts (reads,
    key-map updates, deletes, leases) and the XRANGEs it reads a standalone Redis with (the
    producer only sends XADD)."""
    stats = client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_xrange"):
        if name in stats:
            calls += int(stats[name]["calls"])
            usec += int(stats[name]["usec"])
    return calls, usec


def journal_lines(directory: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in directory.glob("shard-*/segment-*"))


def run_sidecar(options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="journal-micro-") as temporary:
        work = Path(temporary)
        journal_dir = work / "journal"
        with own_redis_server(work) as (url, redis_pid):
            config = work / "walletgate.toml"
            config.write_text(
                f'[redis]\nurl = "{url}"\n\n[journal]\ndir = "{journal_dir}"\n'
                f"buckets = {BUCKETS}\nflush_interval_ms = {options.flush_interval_ms}\n\n"
                f'[admin]\ntoken = "{"t" * 40}"\n',
                encoding="utf-8",
            )
            sidecar = subprocess.Popen(
                [sys.executable, "-m", "walletgate.journal.writer", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=None if options.verbose else subprocess.DEVNULL,
            )
            try:
                produce(options, url, sidecar.pid, redis_pid, journal_dir)
            finally:
                sidecar.terminate()
                sidecar.wait(timeout=30)


def produce(
    options: argparse.Namespace, url: str, sidecar_pid: int, redis_pid: int, journal_dir: Path
) -> None:
    client = redis.Redis.from_url(url)
    streams = keys.all_journal_stream_keys(BUCKETS, False)
    maker = EntryMaker(11)
    tick_s = 0.01
    warmup_s = options.warmup
    total_s = warmup_s + options.seconds
    started = time.monotonic()
    produced = 0
    snapshot: tuple[float, float, int, float, tuple[int, int]] | None = None
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= total_s:
            break
        if snapshot is None and elapsed >= warmup_s:
            snapshot = (
                cpu_seconds(sidecar_pid),
                cpu_seconds(redis_pid),
                journal_lines(journal_dir),
                time.monotonic(),
                script_usec(client),
            )
        due = int(elapsed * options.rate) - produced
        if due > 0:
            pipe = client.pipeline(transaction=False)
            ts_us = time.time_ns() // 1000
            for _ in range(due):
                bucket, flat = maker.entry(ts_us)
                pipe.xadd(streams[bucket], dict(zip(flat[0::2], flat[1::2], strict=True)))
            pipe.execute()
            produced += due
        time.sleep(tick_s)
    assert snapshot is not None
    cpu_end, redis_end = cpu_seconds(sidecar_pid), cpu_seconds(redis_pid)
    lines_end, ended = journal_lines(journal_dir), time.monotonic()
    calls_end, usec_end = script_usec(client)
    cpu_start, redis_start, lines_start, began, (calls_start, usec_start) = snapshot
    pending = sum(int(client.xlen(stream)) for stream in streams)
    client.close()
    written = lines_end - lines_start
    if written <= 0:
        sys.exit("the writer wrote nothing; run with --verbose to see its log")
    window = ended - began
    print(
        f"sidecar: {written} records in {window:.1f} s ({written / window:.0f}/s, target "
        f"{options.rate}/s), {pending} still pending"
    )
    print(
        f"  writer CPU {cpu_end - cpu_start:.2f} s = {(cpu_end - cpu_start) / window:.3f} cores,"
        f" {(cpu_end - cpu_start) / written * 1e6:.1f} µs/record"
    )
    print(
        f"  redis CPU  {redis_end - redis_start:.2f} s = {(redis_end - redis_start) / window:.3f}"
        f" cores (XADDs included), {(redis_end - redis_start) / written * 1e6:.1f} µs/record"
    )
    calls, usec = calls_end - calls_start, usec_end - usec_start
    print(
        f"  writer commands in redis {calls / window:.0f} calls/s, {usec / 1e6:.2f} s = "
        f"{usec / written:.1f} µs/record inside Redis"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=("encode", "sidecar"), default="encode")
    parser.add_argument("--records", type=int, default=20_000, help="encode: entries generated")
    parser.add_argument("--batch", type=int, default=40, help="encode: entries per batch")
    parser.add_argument("--rounds", type=int, default=5, help="encode: the best round is shown")
    parser.add_argument("--quick", action="store_true", help="encode: 2k records, 2 rounds")
    parser.add_argument("--rate", type=int, default=3000, help="sidecar: records per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="sidecar: measured time")
    parser.add_argument("--warmup", type=float, default=5.0, help="sidecar: unmeasured start")
    parser.add_argument("--flush-interval-ms", type=int, default=200, help="sidecar: [journal]")
    parser.add_argument("--verbose", action="store_true", help="sidecar: show the writer's log")
    options = parser.parse_args()
    if options.quick:
        options.records, options.rounds = 2_000, 2
    if options.mode == "sidecar":
        run_sidecar(options)
    else:
        run_encode(options)


if __name__ == "__main__":
    main()
