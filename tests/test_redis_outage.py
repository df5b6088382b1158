"""The gateway while its Redis is stopped and restarted (whole ASGI app, journal writer on).

* During the outage every family answers its "system busy" code within 2 s (MINI.GAME and
  transfer 10015, Wallet v2 INTERNAL_ERROR, Midas -1, admin 503), ``/readyz`` answers 503 and
  ``/healthz`` still 200.
* Nothing is half-applied: after the restart the keyspace is byte-identical to the one before
  the outage, and requests that were in flight when Redis stopped are applied exactly once
  after a retry with the same key (the journal then agrees with Redis).
* Service resumes by itself: retried requests succeed within a bounded loop and ``/readyz``
  returns to 200.

Redis runs with AOF (``appendfsync always``) here, so a restart keeps every acknowledged write.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import redis

import gateway_helpers
from conftest import RedisServer
from walletgate.app import create_app
from walletgate.config import Config, parse_config
from walletgate.journal.commands import verify_command
from walletgate.logs import AccessLog
from wire_helpers import (
    LUCK_APP_ID,
    LUCK_KEY,
    LUCK_PATHS,
    MIDAS_APPID,
    MIDAS_PATHS,
    MINIGAME_APP_ID,
    MINIGAME_KEY,
    MINIGAME_PATHS,
    TRANSFER_APPID,
    TRANSFER_KEY,
    TRANSFER_PATHS,
    WALLET_TOKEN,
    WALLET_V2_PATH,
    AsgiGateway,
    admin_headers,
    compact,
    midas_params,
    midas_sign,
    midas_url,
    redis_state,
    signed_post,
    state_difference,
    write_config,
)

T = TypeVar("T")
PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "always")
BUSY_LIMIT_S = 2.0
RESUME_TIMEOUT_S = 20.0
FLUSH_TIMEOUT_S = 15.0
PLAYER = "out-player"
OPENID = "out-openid"
SESSION_KEY = "outSessionKey0123456789=="
ADMIN_CONCURRENCY = 8


@pytest.fixture
def persistent_redis(fresh_redis: RedisServer) -> RedisServer:
    """The test's own redis-server, restarted with AOF so a stop and start keep the data."""
    fresh_redis.stop()
    fresh_redis.start(*PERSISTENCE)
    return fresh_redis


@pytest.fixture
def config_file(tmp_path: Path, persistent_redis: RedisServer) -> Path:
    raw = gateway_helpers.config_dict(tmp_path / "journal")
    raw["redis"]["url"] = persistent_redis.url
    return write_config(tmp_path / "walletgate.toml", raw)


def load(config_file: Path) -> Config:
    import tomllib

    return parse_config(tomllib.loads(config_file.read_text()))


@pytest.fixture
def gateway(config_file: Path) -> Iterator[AsgiGateway]:
    app = create_app(
        load(config_file), run_journal_writer=True, access_log=AccessLog(enabled=False)
    )
    with AsgiGateway(app) as gw:
        yield gw


def journal_streams(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match=b"wg:{j*}:journal", count=1000))


def wait_for_flush(gw: AsgiGateway, url: str) -> None:
    """Run the gateway until the writer has moved every pending record to disk."""
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while time.monotonic() < deadline:
            if sum(client.xlen(stream) for stream in journal_streams(client)) == 0:
                return
            gw.idle(0.05)
        raise AssertionError(f"journal records still pending after {FLUSH_TIMEOUT_S} s")
    finally:
        client.close()


def journal_lines(directory: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(directory.glob("shard-*/segment-*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                records.append(orjson.loads(line))
    return records


def check_journal(directory: Path) -> list[dict[str, Any]]:
    """No malformed line, no duplicate seq, and every account's seqs are 1..n."""
    records = journal_lines(directory)
    assert not [r for r in records if "malformed" in r]
    seqs: dict[tuple[str, str, str], list[int]] = {}
    for record in records:
        account = (record["tenant"], record["player"], record["currency"])
        seqs.setdefault(account, []).append(record["seq"])
    for account, numbers in seqs.items():
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), (account, sorted(numbers))
    return records


# -- one request per family, and what "busy" looks like in each ----------------------------------


def seed(gw: AsgiGateway) -> str:
    """Sessions and money for every family; returns the transfer token."""
    gw.register(MINIGAME_APP_ID, PLAYER, "usdt", "out-mg")
    gw.register(LUCK_APP_ID, PLAYER, "USDT", "out-luck")
    gw.fund(MINIGAME_APP_ID, PLAYER, "usdt", "1000", "fund-mg")
    gw.fund(LUCK_APP_ID, PLAYER, "USDT", "1000", "fund-luck")
    gw.register(WALLET_TOKEN, PLAYER, "USD", "out-code")
    gw.fund(WALLET_TOKEN, PLAYER, "USD", "1000", "fund-v2")
    gw.register(MIDAS_APPID, OPENID, "1", "out-h", session_key=SESSION_KEY)
    gw.fund(MIDAS_APPID, OPENID, "1", "1000", "fund-midas", kind="save")
    gw.fund(MIDAS_APPID, OPENID, "sandbox-1", "1000", "fund-midas-sb", kind="save")
    authorize = {"appid": TRANSFER_APPID, "timestamp": 1, "uname": PLAYER, "nickname": "n"}
    answer = gw.signed(TRANSFER_PATHS[0], authorize, TRANSFER_KEY).json()
    assert answer["code"] == 0, answer
    gw.fund(TRANSFER_APPID, PLAYER, "usdt", "1000", "fund-transfer")
    token = answer["data"]["token"]
    assert isinstance(token, str)
    return token


class Probe:
    """One request of one family: how to send it, what "busy" and "done" look like."""

    def __init__(
        self,
        name: str,
        request: Callable[[], tuple[str, str, bytes, dict[str, str]]],
        busy: Callable[[httpx.Response], bool],
        done: Callable[[httpx.Response], bool],
    ) -> None:
        self.name = name
        self.request = request
        self.busy = busy
        self.done = done

    def send(self, gw: AsgiGateway) -> tuple[httpx.Response, float]:
        method, url, content, headers = self.request()
        started = time.monotonic()
        answer = gw.request(method, url, content=content, headers=headers)
        return answer, time.monotonic() - started


def code_is(field: str, value: Any) -> Callable[[httpx.Response], bool]:
    def check(answer: httpx.Response) -> bool:
        if answer.status_code != 200:
            return False
        payload = answer.json()
        return isinstance(payload, dict) and payload.get(field) == value

    return check


def status_is(*statuses: int) -> Callable[[httpx.Response], bool]:
    return lambda answer: answer.status_code in statuses


def md5_probe(name: str, path: str, fields: dict[str, Any], key: str, ok: int) -> Probe:
    def request() -> tuple[str, str, bytes, dict[str, str]]:
        url, content, headers = signed_post(path, compact(fields), key)
        return "POST", url, content, headers

    return Probe(name, request, code_is("code", 10015), code_is("code", ok))


def midas_probe(name: str, path: str, **extra: Any) -> Probe:
    def request() -> tuple[str, str, bytes, dict[str, str]]:
        body = midas_sign(midas_params(OPENID, **extra), path, session_key=SESSION_KEY)
        return "POST", midas_url(path), compact(body), {}

    return Probe(name, request, code_is("errcode", -1), code_is("errcode", 0))


def admin_probe(name: str, method: str, path: str, body: Any, ok: int) -> Probe:
    def request() -> tuple[str, str, bytes, dict[str, str]]:
        return method, "/admin/v1" + path, b"" if body is None else compact(body), admin_headers()

    def busy(answer: httpx.Response) -> bool:
        return answer.status_code == 503 and set(answer.json()) == {"error", "detail"}

    return Probe(name, request, busy, status_is(ok))


def probes(token: str, tag: str) -> list[Probe]:
    """A money operation of every family (new idempotency keys per ``tag``), then reads."""
    bet = {
        "app_id": MINIGAME_APP_ID,
        "uname": PLAYER,
        "money": "-1.5",
        "bet": "1.5",
        "type": 1,
        "order_id": f"{tag}-mg",
        "session_id": f"{tag}-round",
        "timestamp": 1,
    }
    luck = {**bet, "app_id": LUCK_APP_ID, "order_id": f"{tag}-luck"}
    transfer = {
        "appid": TRANSFER_APPID,
        "timestamp": 1,
        "token": token,
        "currency": "usdt",
        "amount": "-2",
        "tx_id": f"{tag}-tx",
    }
    v2_bet = {
        "type": "bet",
        "code": "out-code",
        "id": zlib.crc32(tag.encode()),
        "game": 1,
        "bet": 300,
    }
    balance = {"app_id": MINIGAME_APP_ID, "uname": PLAYER, "timestamp": 1}
    wallet = {"appid": TRANSFER_APPID, "timestamp": 1, "token": token, "currency": "usdt"}

    def v2(body: dict[str, Any]) -> Callable[[], tuple[str, str, bytes, dict[str, str]]]:
        return lambda: ("POST", WALLET_V2_PATH, compact(body), {})

    v2_busy = code_is("err_code", "INTERNAL_ERROR")
    return [
        md5_probe("minigame change_balance", MINIGAME_PATHS[2], bet, MINIGAME_KEY, 1),
        md5_probe("luck change_balance", LUCK_PATHS[2], luck, LUCK_KEY, 1),
        md5_probe("transfer", TRANSFER_PATHS[1], transfer, TRANSFER_KEY, 0),
        Probe("wallet v2 bet", v2(v2_bet), v2_busy, code_is("result", 1)),
        midas_probe("midas pay", MIDAS_PATHS[1], bill_no=f"{tag}-bill", amt=7),
        midas_probe(
            "midas sandbox present", MIDAS_PATHS[7], bill_no=f"{tag}-gift", present_counts=3
        ),
        admin_probe(
            "admin adjust",
            "POST",
            f"/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt/adjust",
            {"amount": "4", "ref": f"{tag}-adj"},
            200,
        ),
        # Reads and non-money calls reach Redis too.
        md5_probe("minigame get_balance", MINIGAME_PATHS[1], balance, MINIGAME_KEY, 1),
        md5_probe(
            "minigame verify_session",
            MINIGAME_PATHS[0],
            {"app_id": MINIGAME_APP_ID, "timestamp": 1, "operator_player_session": "out-mg"},
            MINIGAME_KEY,
            1,
        ),
        md5_probe("transfer getPlayerWallet", TRANSFER_PATHS[3], wallet, TRANSFER_KEY, 0),
        md5_probe(
            "transfer authorize",
            TRANSFER_PATHS[0],
            {"appid": TRANSFER_APPID, "timestamp": 1, "uname": PLAYER, "nickname": "n"},
            TRANSFER_KEY,
            0,
        ),
        Probe(
            "wallet v2 credit",
            v2({"type": "credit", "code": "out-code"}),
            v2_busy,
            code_is("result", 1),
        ),
        midas_probe("midas getbalance", MIDAS_PATHS[0]),
        admin_probe(
            "admin account", "GET", f"/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt", None, 200
        ),
        admin_probe(
            "admin sessions",
            "POST",
            "/sessions",
            {"tenant": MINIGAME_APP_ID, "player": PLAYER, "currency": "usdt", "token": "out-mg"},
            201,
        ),
        admin_probe(
            "admin transaction",
            "GET",
            f"/transactions/{MINIGAME_APP_ID}/admin:fund-mg?player={PLAYER}",
            None,
            200,
        ),
    ]


MONEY_PROBES = 7  # the first seven probes move money


def balances(gw: AsgiGateway) -> dict[str, Any]:
    """Every account this module touches, read through the admin API."""
    found: dict[str, Any] = {}
    for tenant, player, currency in (
        (MINIGAME_APP_ID, PLAYER, "usdt"),
        (LUCK_APP_ID, PLAYER, "USDT"),
        (TRANSFER_APPID, PLAYER, "usdt"),
        (WALLET_TOKEN, PLAYER, "USD"),
        (MIDAS_APPID, OPENID, "1"),
        (MIDAS_APPID, OPENID, "sandbox-1"),
    ):
        answer = gw.admin("GET", f"/accounts/{tenant}/{player}/{currency}")
        assert answer.status_code == 200, answer.text
        found[f"{tenant}/{currency}"] = answer.json()
    return found


def eventually(read: Callable[[], T]) -> T:
    """``read()``, retried while it fails, for at most RESUME_TIMEOUT_S."""
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    while True:
        try:
            return read()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def redis_errors(gw: AsgiGateway) -> float:
    """``walletgate_redis_errors_total``, summed over its labels."""
    counted = re.findall(
        r"^walletgate_redis_errors_total(?:\{[^}]*\})? (\S+)$",
        gw.get("/metrics").text,
        re.MULTILINE,
    )
    return sum(float(value) for value in counted)


def wait_until_ready(gw: AsgiGateway) -> float:
    started = time.monotonic()
    while time.monotonic() - started < RESUME_TIMEOUT_S:
        if gw.get("/readyz").status_code == 200:
            return time.monotonic() - started
        gw.idle(0.1)
    raise AssertionError(f"/readyz not 200 within {RESUME_TIMEOUT_S} s of the restart")


# -- the tests ----------------------------------------------------------------------------------


def test_busy_answers_during_an_outage_then_service_resumes_by_itself(
    gateway: AsgiGateway, persistent_redis: RedisServer, config_file: Path, tmp_path: Path
) -> None:
    gw = gateway
    token = seed(gw)
    for probe in probes(token, "before"):  # each family works before the outage
        answer, _ = probe.send(gw)
        assert probe.done(answer), (probe.name, answer.status_code, answer.text)
    wait_until_ready(gw)
    wait_for_flush(gw, persistent_redis.url)
    accounts_before = balances(gw)
    store = redis.Redis.from_url(persistent_redis.url)
    state_before = redis_state(store)
    store.close()

    persistent_redis.stop()
    outage = probes(token, "outage")
    for attempt in range(2):  # the second round runs while the client is in reconnect backoff
        for probe in outage:
            answer, elapsed_s = probe.send(gw)
            assert probe.busy(answer), (attempt, probe.name, answer.status_code, answer.text)
            assert elapsed_s < BUSY_LIMIT_S, (attempt, probe.name, elapsed_s)
        started = time.monotonic()
        ready = gw.get("/readyz")
        assert ready.status_code == 503 and time.monotonic() - started < BUSY_LIMIT_S, ready.text
        assert gw.get("/healthz").status_code == 200
        gw.idle(0.5)
    assert redis_errors(gw) >= MONEY_PROBES

    persistent_redis.start(*PERSISTENCE)
    store = redis.Redis.from_url(persistent_redis.url)
    state_after = redis_state(store)
    store.close()
    # Nothing from the outage was applied, not even in part.
    assert state_after == state_before, state_difference(state_before, state_after)

    # Service resumes by itself: the busy requests, retried with the same keys, succeed.
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    pending = list(outage)
    while pending and time.monotonic() < deadline:
        retry = []
        for probe in pending:
            answer, _ = probe.send(gw)
            if not probe.done(answer):
                assert probe.busy(answer), (probe.name, answer.status_code, answer.text)
                retry.append(probe)
        pending = retry
        if pending:
            gw.idle(0.2)
    assert not pending, [probe.name for probe in pending]
    assert wait_until_ready(gw) < RESUME_TIMEOUT_S
    # Each money request of the outage applied exactly once: a second retry is a replay.
    for probe in outage[:MONEY_PROBES]:
        again, _ = probe.send(gw)
        assert probe.done(again), (probe.name, again.text)
    after = balances(gw)
    assert after[f"{MINIGAME_APP_ID}/usdt"]["balance"] == _plus(
        accounts_before[f"{MINIGAME_APP_ID}/usdt"]["balance"], "-1.5", "4"
    )
    assert after[f"{LUCK_APP_ID}/USDT"]["balance"] == _plus(
        accounts_before[f"{LUCK_APP_ID}/USDT"]["balance"], "-1.5"
    )
    assert after[f"{TRANSFER_APPID}/usdt"]["balance"] == _plus(
        accounts_before[f"{TRANSFER_APPID}/usdt"]["balance"], "-2"
    )
    assert after[f"{WALLET_TOKEN}/USD"]["balance"] == _plus(
        accounts_before[f"{WALLET_TOKEN}/USD"]["balance"], "-3"
    )
    assert after[f"{MIDAS_APPID}/1"]["paid"] == accounts_before[f"{MIDAS_APPID}/1"]["paid"] - 7
    assert (
        after[f"{MIDAS_APPID}/sandbox-1"]["gen_balance"]
        == accounts_before[f"{MIDAS_APPID}/sandbox-1"]["gen_balance"] + 3
    )

    wait_for_flush(gw, persistent_redis.url)
    records = check_journal(tmp_path / "journal")
    keys = Counter(record["key"] for record in records)
    for key in (
        "outage-mg",
        "outage-luck",
        "outage-tx",
        "outage-bill",
        "outage-gift",
        "admin:outage-adj",
    ):
        assert keys[key] == 1, (key, keys[key])
    assert verify_command(str(config_file)) == 0


def _plus(balance: str, *deltas: str) -> str:
    from decimal import Decimal

    total = Decimal(balance) + sum((Decimal(d) for d in deltas), Decimal(0))
    text = format(total.normalize(), "f")
    return text


def test_requests_in_flight_when_redis_stops_apply_once_after_a_retry(
    gateway: AsgiGateway, persistent_redis: RedisServer, config_file: Path, tmp_path: Path
) -> None:
    """Bets stream on eight concurrent callers while Redis is stopped under them. Each bet
    answered busy is retried with the same order_id after the restart; in the end every bet
    is applied exactly once, whatever the moment Redis went away."""
    gw = gateway
    seed(gw)
    start_balance = balances(gw)[f"{MINIGAME_APP_ID}/usdt"]["balance"]
    bodies: dict[str, tuple[str, bytes, dict[str, str]]] = {}
    answers: dict[str, int] = {}

    def bet(order_id: str) -> tuple[str, bytes, dict[str, str]]:
        fields = {
            "app_id": MINIGAME_APP_ID,
            "uname": PLAYER,
            "money": "-0.01",
            "bet": "0.01",
            "type": 1,
            "order_id": order_id,
            "session_id": "burst",
            "timestamp": 1,
        }
        return signed_post(MINIGAME_PATHS[2], compact(fields), MINIGAME_KEY)

    async def stream(caller: int, stopped: asyncio.Event) -> None:
        busy_after_stop = 0
        for number in range(5000):
            order_id = f"burst-{caller}-{number}"
            bodies[order_id] = bet(order_id)
            url, content, headers = bodies[order_id]
            answer = await gw.client.post(url, content=content, headers=headers)
            code = answer.json()["code"]
            answers[order_id] = code
            assert code in (1, 10015), (order_id, answer.text)
            if stopped.is_set() and code == 10015:
                busy_after_stop += 1
                if busy_after_stop >= 3:
                    return

    async def burst() -> None:
        stopped = asyncio.Event()

        async def stopper() -> None:
            await asyncio.sleep(0.3)
            await asyncio.get_running_loop().run_in_executor(None, persistent_redis.stop)
            stopped.set()

        await asyncio.gather(stopper(), *(stream(caller, stopped) for caller in range(8)))

    gw.run(burst())
    outcome = Counter(answers.values())
    assert outcome[1] > 0 and outcome[10015] >= 8 * 3, outcome

    persistent_redis.start(*PERSISTENCE)
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    pending = sorted(order for order, code in answers.items() if code != 1)
    while pending and time.monotonic() < deadline:
        retry = []
        for order_id in pending:
            url, content, headers = bodies[order_id]
            payload = gw.post(url, content=content, headers=headers).json()
            assert payload["code"] in (1, 10015), (order_id, payload)
            if payload["code"] != 1:
                retry.append(order_id)
        pending = retry
        if pending:
            gw.idle(0.2)
    assert not pending, f"{len(pending)} bets still busy {RESUME_TIMEOUT_S} s after the restart"

    final = eventually(lambda: balances(gw))[f"{MINIGAME_APP_ID}/usdt"]["balance"]
    assert final == _plus(start_balance, f"-{len(answers) * 0.01:.2f}"), (len(answers), final)
    wait_for_flush(gw, persistent_redis.url)
    records = check_journal(tmp_path / "journal")
    applied = Counter(record["key"] for record in records if record["key"].startswith("burst-"))
    assert set(applied) == set(answers) and set(applied.values()) == {1}
    assert verify_command(str(config_file)) == 0


def test_the_admin_api_answers_at_once_after_redis_restarts(
    gateway: AsgiGateway, persistent_redis: RedisServer
) -> None:
    """Once the hot path serves again after a restart, admin calls must not fail on pooled
    connections that died with the old Redis process (Redis is up: a 503 would be wrong)."""
    gw = gateway
    seed(gw)
    path = f"/admin/v1/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt"

    async def concurrent_reads() -> list[int]:
        # Concurrent calls each hold a pooled connection, so the pool keeps several of them.
        answers = await asyncio.gather(
            *(gw.client.get(path, headers=admin_headers()) for _ in range(ADMIN_CONCURRENCY))
        )
        return [answer.status_code for answer in answers]

    assert gw.run(concurrent_reads()) == [200] * ADMIN_CONCURRENCY
    persistent_redis.stop()
    persistent_redis.start(*PERSISTENCE)
    balance = {"app_id": MINIGAME_APP_ID, "uname": PLAYER, "timestamp": 1}
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    while gw.signed(MINIGAME_PATHS[1], balance, MINIGAME_KEY).json()["code"] != 1:
        assert time.monotonic() < deadline, "the hot path did not reconnect"
        gw.idle(0.1)
    assert gw.run(concurrent_reads()) == [200] * ADMIN_CONCURRENCY


def test_a_redis_that_refuses_writes_gets_busy_answers_for_credits_too(
    gateway: AsgiGateway, persistent_redis: RedisServer, config_file: Path
) -> None:
    """A Redis that answers but refuses writes (a primary demoted to a replica by a failover
    answers READONLY) must look like an outage to the platforms: "retry", never a business
    outcome. Credits and refunds are the case to watch, since their first write is the
    balance's HINCRBY, whose refusal the scripts once took for an int64 overflow (Wallet v2
    answered BAD_REQUEST, which a platform does not retry, so the win would be lost)."""
    gw = gateway
    token = seed(gw)
    v2_bet = {"type": "bet", "code": "out-code", "id": 71, "game": 1, "bet": 500}
    assert gw.post(WALLET_V2_PATH, content=compact(v2_bet)).json()["result"] == 1
    for probe in probes(token, "before"):
        answer, _ = probe.send(gw)
        assert probe.done(answer), (probe.name, answer.status_code, answer.text)
    wait_until_ready(gw)
    win = {
        "app_id": MINIGAME_APP_ID,
        "uname": PLAYER,
        "money": "2.5",
        "type": 3,
        "order_id": "ro-win",
        "session_id": "before-round",
        "award_order_ids": [{"order_id": "before-mg", "money": "2.5"}],
        "timestamp": 1,
    }
    deposit = {
        "appid": TRANSFER_APPID,
        "timestamp": 1,
        "token": token,
        "currency": "usdt",
        "amount": "3",
        "tx_id": "ro-deposit",
    }

    def v2(body: dict[str, Any]) -> Callable[[], tuple[str, str, bytes, dict[str, str]]]:
        return lambda: ("POST", WALLET_V2_PATH, compact(body), {})

    v2_busy = code_is("err_code", "INTERNAL_ERROR")
    credits = [
        md5_probe("minigame payout", MINIGAME_PATHS[2], win, MINIGAME_KEY, 1),
        md5_probe("transfer deposit", TRANSFER_PATHS[1], deposit, TRANSFER_KEY, 0),
        Probe(
            "wallet v2 win",
            v2(
                {"type": "win", "code": "out-code", "id": 72, "round_id": 71, "game": 1, "win": 900}
            ),
            v2_busy,
            code_is("result", 1),
        ),
        Probe(
            "wallet v2 cancel",
            v2({"type": "cancel", "code": "out-code", "id": 70}),  # unknown: a tombstone
            v2_busy,
            code_is("result", 1),
        ),
        midas_probe("midas present", MIDAS_PATHS[3], bill_no="ro-gift", present_counts=4),
        *probes(token, "readonly")[:MONEY_PROBES],
    ]
    errors_before = redis_errors(gw)
    store = redis.Redis.from_url(persistent_redis.url)
    # A primary at a port nothing listens on (1): the replica keeps its data and never syncs.
    store.replicaof("127.0.0.1", "1")
    try:
        state_before = redis_state(store)
        for probe in credits:
            answer, _ = probe.send(gw)
            assert probe.busy(answer), (probe.name, answer.status_code, answer.text)
        assert redis_state(store) == state_before, state_difference(
            state_before, redis_state(store)
        )
        # Each refusal is counted as a Redis error (not left to the last-resort handler).
        assert redis_errors(gw) - errors_before >= len(credits)
    finally:
        store.replicaof("no", "one")
        store.close()
    # Back to a primary, the same requests apply, and once.
    pending = list(credits)
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        pending = [probe for probe in pending if not probe.done(probe.send(gw)[0])]
        if pending:
            gw.idle(0.2)
    assert not pending, [probe.name for probe in pending]
    account = balances(gw)[f"{WALLET_TOKEN}/USD"]["balance"]
    # Funded 1000, then bets of 5, 3 ("before") and 3 ("readonly"), then the win of 9.
    assert account == "998", account
    assert verify_command(str(config_file)) == 0


STALL_COMMAND_TIMEOUT_MS = 600


def test_calls_that_reach_a_stalled_redis_late_write_nothing(
    persistent_redis: RedisServer, tmp_path: Path
) -> None:
    """A Redis that stalls (SIGSTOP: a frozen primary, a long fork) keeps the calls already on
    its socket and runs them when it resumes, after the gateway answered them "busy, nothing
    applied". The prelude refuses every call that starts after its deadline (WGLATE), so the
    keyspace stays byte-identical and the retries apply each request once."""
    raw = gateway_helpers.config_dict(tmp_path / "journal")
    raw["redis"]["url"] = persistent_redis.url
    raw["redis"]["command_timeout_ms"] = STALL_COMMAND_TIMEOUT_MS
    config_path = write_config(tmp_path / "walletgate.toml", raw)
    app = create_app(
        load(config_path), run_journal_writer=True, access_log=AccessLog(enabled=False)
    )
    process = persistent_redis.process
    assert process is not None
    store = redis.Redis.from_url(persistent_redis.url)
    with AsgiGateway(app) as gw:
        token = seed(gw)
        # Each family once first, so that Redis has every script cached: a late EVALSHA of an
        # unknown script only gets NOSCRIPT, which would prove nothing here.
        for probe in probes(token, "before"):
            answer, _ = probe.send(gw)
            assert probe.done(answer), (probe.name, answer.status_code, answer.text)
        wait_until_ready(gw)
        wait_for_flush(gw, persistent_redis.url)
        accounts_before = balances(gw)
        state_before = redis_state(store)
        late_before = _late_refusals(store)

        money = probes(token, "stall")[:MONEY_PROBES]

        async def all_at_once() -> list[tuple[httpx.Response, float]]:
            # Concurrent, so that they are written to Redis's socket together before it stalls
            # them all.
            return await asyncio.gather(*(_send_async(gw, probe) for probe in money))

        process.send_signal(signal.SIGSTOP)
        try:
            answers = gw.run(all_at_once())
        finally:
            process.send_signal(signal.SIGCONT)
        for probe, (answer, _) in zip(money, answers, strict=True):
            assert probe.busy(answer), (probe.name, answer.status_code, answer.text)

        # Redis now runs what waited on its socket: every money call is refused as late.
        eventually(lambda: _assert_at_least(_late_refusals(store) - late_before, MONEY_PROBES))
        state_after = redis_state(store)
        assert state_after == state_before, state_difference(state_before, state_after)

        # The retries apply each request once.
        deadline = time.monotonic() + RESUME_TIMEOUT_S
        pending = list(money)
        while pending and time.monotonic() < deadline:
            pending = [probe for probe in pending if not probe.done(probe.send(gw)[0])]
            if pending:
                gw.idle(0.2)
        assert not pending, [probe.name for probe in pending]
        after = balances(gw)
        assert after[f"{MINIGAME_APP_ID}/usdt"]["balance"] == _plus(
            accounts_before[f"{MINIGAME_APP_ID}/usdt"]["balance"], "-1.5", "4"
        )
        assert after[f"{WALLET_TOKEN}/USD"]["balance"] == _plus(
            accounts_before[f"{WALLET_TOKEN}/USD"]["balance"], "-3"
        )
    store.close()


async def _send_async(gw: AsgiGateway, probe: Probe) -> tuple[httpx.Response, float]:
    method, url, content, headers = probe.request()
    started = time.monotonic()
    answer = await gw.client.request(method, url, content=content, headers=headers)
    return answer, time.monotonic() - started


def _late_refusals(store: redis.Redis) -> int:
    """How many script calls Redis answered WGLATE (its error statistics)."""
    stats = store.info("errorstats")
    entry = stats.get("errorstat_WGLATE", {"count": 0})
    return int(entry["count"])


def _assert_at_least(value: int, minimum: int) -> None:
    assert value >= minimum, (value, minimum)
