"""Locust load profile for walletgate: one FastHttpUser class per protocol family.

    WALLETGATE_CONFIG=/path/walletgate.toml \\
        locust -f bench/locustfile.py --config bench/locust.conf --headless --csv out/wg

The server's TOML config (``WALLETGATE_CONFIG``) gives the tenants and their keys; players are
created and funded through the admin API when the test starts (``events.test_start``, on every
process that runs users). Every request is signed as the spec says: MINI.GAME and transfer
``sign`` = md5(raw query + raw body + key), Midas ``sig`` and ``mp_sig``; Wallet v2 is unsigned.

* MinigameUser: rounds of 1-3 bets (type 1), sometimes a cancel (type 2) of the last bet, an
  in-round payout (type 3) naming bets in ``award_order_ids``, then a settlement (type 4) that
  closes the round; and get_balance.
* WalletV2User: rounds of bets with ``round_id``, sometimes a cancel, then a win; and credit.
* MidasUser: pay (sometimes followed by cancelpay), present, getbalance.
* TransferUser: authorize once (for the token), then transfers in and out, each followed by a
  transfer/status poll, and getPlayerWallet.

Environment (all optional except the config):

* ``WALLETGATE_BENCH_DUP_RATE`` (0.05): share of money requests sent a second time with the same
  signed bytes, as a platform's retry; the answer must equal the first one (Wallet v2: apart from
  ``time``). Reported as "[retry] ...".
* ``WALLETGATE_BENCH_BAD_SIGN_RATE`` (0.02): share of requests preceded by a copy with a broken
  signature (Wallet v2: an unknown wallet_token). The expected rejection (10002, 90011, 90009,
  HTTP 404) counts as a success; anything else is a failure. Reported as "[bad sign] ...".
* ``WALLETGATE_BENCH_PLAYERS`` (20): players per family and per process.
* ``WALLETGATE_BENCH_WAIT`` (0): each user waits up to this many seconds between tasks.

``--processes N`` works: ids are unique per process (a uuid4 tag taken after the fork), and each
process funds its own players.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import random
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from locust import FastHttpUser, between, constant, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner

try:
    from walletgate import _native
    from walletgate.config import load_config
except ImportError:  # running from a checkout without an installed walletgate
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
    from walletgate import _native
    from walletgate.config import load_config

logger = logging.getLogger("walletgate.bench")

DUP_RATE = float(os.environ.get("WALLETGATE_BENCH_DUP_RATE", "0.05"))
BAD_SIGN_RATE = float(os.environ.get("WALLETGATE_BENCH_BAD_SIGN_RATE", "0.02"))
PLAYERS = int(os.environ.get("WALLETGATE_BENCH_PLAYERS", "20"))
WAIT_S = float(os.environ.get("WALLETGATE_BENCH_WAIT", "0"))
FUNDING = "100000"  # major units per player (Midas: coins)
MIDAS_ZONE = "1"
CONFIG_PATH = os.environ.get("WALLETGATE_CONFIG")
if not CONFIG_PATH:
    raise RuntimeError("set WALLETGATE_CONFIG to the served walletgate's TOML config")
CONFIG = load_config(CONFIG_PATH, check_journal_dir=False)
JSON_HEADERS = {"Content-Type": "application/json"}


# -- per-process state (rebuilt after a fork) --------------------------------------------------


@dataclass
class ProcessState:
    """Unique ids and funded players of this process; --processes forks after import."""

    pid: int
    tag: str
    ids: itertools.count[int] = field(default_factory=itertools.count)
    users: itertools.count[int] = field(default_factory=itertools.count)
    players: dict[str, list[str]] = field(default_factory=dict)
    wallet_codes: dict[str, str] = field(default_factory=dict)
    session_keys: dict[str, str] = field(default_factory=dict)
    id_base: int = 0

    def next_id(self) -> str:
        return f"{self.tag}{next(self.ids):x}"

    def next_uint(self) -> int:
        """A Wallet v2 ``id``: a random 39-bit process prefix and a 24-bit counter."""
        return self.id_base | (next(self.ids) & 0xFFFFFF)

    def player_for(self, family: str) -> str:
        players = self.players.get(family)
        if not players:
            raise StopUser()
        return players[next(self.users) % len(players)]


_state: ProcessState | None = None


def state() -> ProcessState:
    global _state
    if _state is None or _state.pid != os.getpid():
        tag = uuid.uuid4().hex[:10]
        _state = ProcessState(pid=os.getpid(), tag=tag)
        _state.id_base = (uuid.uuid4().int & ((1 << 39) - 1)) << 24
    return _state


# -- tenants ------------------------------------------------------------------------------------


def _minigame() -> tuple[str, bytes, str, str] | None:
    """(app_id, key, path base, currency) of the first MINI.GAME merchant."""
    for merchant in CONFIG.minigame_merchants.values():
        base = "/api" if merchant.prefix in ("api", "both") else "/api/luck"
        return merchant.app_id, merchant.key.encode(), base, merchant.default_currency
    return None


def _wallet_agent() -> tuple[str, str] | None:
    """(wallet_token, currency) of the first agent open to loopback."""
    for agent in CONFIG.wallet_v2_agents.values():
        if not agent.ip_allowlist or any(
            net.version == 4 and net.overlaps(_LOOPBACK) for net in agent.ip_allowlist
        ):
            return agent.wallet_token, agent.currencies[0]
    return None


def _transfer() -> tuple[str, bytes, str] | None:
    for merchant in CONFIG.transfer_merchants.values():
        return merchant.appid, merchant.key.encode(), merchant.default_currency
    return None


def _midas() -> tuple[str, str, str, str] | None:
    """(appid, offer_id, app_key, access_token) of the first Midas app."""
    for app in CONFIG.midas_apps.values():
        return app.appid, app.offer_id, app.app_key, app.access_tokens[0]
    return None


_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
MINIGAME = _minigame()
WALLET = _wallet_agent()
TRANSFER = _transfer()
MIDAS = _midas()


# -- funding through the admin API ------------------------------------------------------------


def _admin(host: str, method: str, path: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        host.rstrip("/") + path,
        data=orjson.dumps(payload),
        method=method,
        headers={
            "Authorization": f"Bearer {CONFIG.admin.token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"admin {path}: HTTP {error.code} {error.read()[:200]!r}") from None


def fund_players(host: str) -> None:
    """Create and fund this process's players of every configured family."""
    process = state()
    if process.players:
        return
    for family, available in (
        ("minigame", MINIGAME),
        ("wallet_v2", WALLET),
        ("transfer", TRANSFER),
        ("midas", MIDAS),
    ):
        if available is None:
            continue
        names = [f"lc{process.tag}{family[:2]}{index}" for index in range(PLAYERS)]
        for name in names:
            if family == "minigame" and MINIGAME is not None:
                tenant, currency = MINIGAME[0], MINIGAME[3]
            elif family == "wallet_v2" and WALLET is not None:
                tenant, currency = WALLET
                code = f"code{process.tag}{name}"
                _admin(
                    host,
                    "POST",
                    "/admin/v1/sessions",
                    {"tenant": tenant, "player": name, "currency": currency, "token": code},
                )
                process.wallet_codes[name] = code
            elif family == "transfer" and TRANSFER is not None:
                tenant, currency = TRANSFER[0], TRANSFER[2]
            elif MIDAS is not None:
                tenant, currency = MIDAS[0], MIDAS_ZONE
                session_key = uuid.uuid4().hex
                _admin(
                    host,
                    "POST",
                    "/admin/v1/sessions",
                    {
                        "tenant": tenant,
                        "player": name,
                        "currency": currency,
                        "token": f"h{process.tag}{name}",
                        "session_key": session_key,
                    },
                )
                process.session_keys[name] = session_key
            else:
                continue
            _admin(
                host,
                "POST",
                f"/admin/v1/accounts/{tenant}/{name}/{currency}/adjust",
                {
                    "amount": FUNDING,
                    "ref": f"fund-{name}",
                    "kind": "save" if family == "midas" else "adjust",
                },
            )
        process.players[family] = names
    logger.info("process %s funded %d players per family", process.tag, PLAYERS)


def on_test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the master runs no users; each worker funds its own players
    if not environment.host:
        raise RuntimeError("no host: pass --host or set host in locust.conf")
    fund_players(environment.host)


events.test_start.add_listener(on_test_start)  # type: ignore[no-untyped-call]


# -- checks -------------------------------------------------------------------------------------

Check = Callable[[int, Any], str | None]


def _json(content: bytes | None) -> Any:
    try:
        return orjson.loads(content or b"")
    except orjson.JSONDecodeError:
        return None


def expect_field(name: str, wanted: Any) -> Check:
    def check(status: int, answer: Any) -> str | None:
        if status != 200:
            return f"HTTP {status}"
        if not isinstance(answer, dict) or answer.get(name) != wanted:
            return f"expected {name} {wanted}, got {str(answer)[:200]}"
        return None

    return check


MINIGAME_OK = expect_field("code", 1)
TRANSFER_OK = expect_field("code", 0)
WALLET_OK = expect_field("result", 1)
MIDAS_OK = expect_field("errcode", 0)


def expect_status(wanted: int) -> Check:
    def check(status: int, answer: Any) -> str | None:
        return None if status == wanted else f"expected HTTP {wanted}, got {status}"

    return check


def _without_time(answer: Any) -> Any:
    if isinstance(answer, dict):
        return {k: v for k, v in answer.items() if k != "time"}
    return answer


def _flip(signature: str) -> str:
    """The same signature with its first hex digit changed."""
    first = "0" if signature[0] != "0" else "1"
    return first + signature[1:]


# -- users ------------------------------------------------------------------------------------


class WalletUser(FastHttpUser):
    """Sends requests with optional retries of the same bytes and bad-signature probes."""

    abstract = True
    wait_time = between(0, WAIT_S) if WAIT_S > 0 else constant(0)

    def post(
        self, url: str, body: bytes, headers: dict[str, str], name: str
    ) -> ResponseContextManager:
        """POST the exact bytes (FastHttpSession sends bytes unchanged; its annotation says str)."""
        return self.client.post(
            url,
            data=body,  # type: ignore[arg-type]
            headers=headers,
            name=name,
            catch_response=True,
        )

    def send(
        self,
        name: str,
        url: str,
        body: bytes,
        headers: dict[str, str],
        check: Check,
        *,
        retry: bool = False,
        normalize: Callable[[Any], Any] = lambda answer: answer,
    ) -> Any:
        """POST and check the answer; with ``retry``, sometimes resend the very same bytes."""
        with self.post(url, body, headers, name) as response:
            answer = _json(response.content)
            problem = check(response.status_code, answer)
            if problem:
                response.failure(problem)
            else:
                response.success()
        if retry and random.random() < DUP_RATE:
            with self.post(url, body, headers, f"[retry] {name}") as again:
                repeated = _json(again.content)
                if again.status_code != response.status_code or normalize(repeated) != normalize(
                    answer
                ):
                    again.failure(f"a retry got {str(repeated)[:200]}, first {str(answer)[:200]}")
                else:
                    again.success()
        return answer

    def probe(
        self, name: str, url: str, body: bytes, headers: dict[str, str], check: Check
    ) -> None:
        """Sometimes send a request that must be rejected for its signature (nothing applied)."""
        if random.random() >= BAD_SIGN_RATE:
            return
        with self.post(url, body, headers, f"[bad sign] {name}") as response:
            problem = check(response.status_code, _json(response.content))
            if problem:
                response.failure(problem)
            else:
                response.success()


class MinigameUser(WalletUser):
    """MINI.GAME seamless: bet rounds with cancels, in-round payouts and settlements."""

    def on_start(self) -> None:
        if MINIGAME is None:
            raise StopUser()
        self.app_id, self.key, self.base, self.currency = MINIGAME
        self.player = state().player_for("minigame")

    def call(self, endpoint: str, name: str, fields: dict[str, Any], *, retry: bool) -> Any:
        process = state()
        body = orjson.dumps({"app_id": self.app_id, "timestamp": int(time.time()), **fields})
        query = f"trace_id={process.next_id()}"
        sign = _native.minigame_sign(query.encode(), body, self.key)
        url = f"{self.base}/{endpoint}?{query}"
        self.probe(
            name, url, body, {**JSON_HEADERS, "sign": _flip(sign)}, expect_field("code", 10002)
        )
        return self.send(name, url, body, {**JSON_HEADERS, "sign": sign}, MINIGAME_OK, retry=retry)

    def change(self, name: str, **fields: Any) -> Any:
        process = state()
        order_id = fields.pop("order_id", None) or process.next_id()
        payload = {
            "uname": self.player,
            "currency": self.currency,
            "order_id": order_id,
            "end_round": False,
            "cancel_order_id": "",
            "award_order_ids": None,
            "game_id": 74,
            **fields,
        }
        return self.call("balance/change_balance", f"minigame {name}", payload, retry=True)

    @task(6)
    def round(self) -> None:
        process = state()
        session_id = process.next_id()
        bets: list[tuple[str, str]] = []
        for _ in range(random.randint(1, 3)):
            amount = _native.format_units(random.randint(100, 10_000))  # 0.01 .. 1
            order_id = process.next_id()
            self.change(
                "bet (type 1)",
                order_id=order_id,
                type=1,
                money=f"-{amount}",
                bet=amount,
                session_id=session_id,
            )
            bets.append((order_id, amount))
        if len(bets) > 1 and random.random() < 0.2:
            cancelled, amount = bets.pop()
            self.change(
                "cancel (type 2)",
                type=2,
                money=amount,
                bet="0",
                session_id=session_id,
                cancel_order_id=cancelled,
            )
        won = bets[: random.randint(0, len(bets))]
        if won:
            awards = [
                {"order_id": order_id, "money": _native.format_units(2 * _units(amount))}
                for order_id, amount in won
            ]
            total = sum(_units(a["money"]) for a in awards)
            self.change(
                "payout (type 3)",
                type=3,
                money=_native.format_units(total),
                bet="0",
                session_id=session_id,
                award_order_ids=awards,
            )
        self.change(
            "settle (type 4)",
            type=4,
            money="0",
            bet="0",
            session_id=session_id,
            end_round=True,
        )

    @task(2)
    def balance(self) -> None:
        self.call(
            "balance/get_balance",
            "minigame get_balance",
            {"uname": self.player, "currency": self.currency},
            retry=False,
        )


def _units(amount: str) -> int:
    return _native.parse_money(amount)


class WalletV2User(WalletUser):
    """Wallet API v.2: bet rounds (round_id = the first bet's id), cancels, wins, credit."""

    def on_start(self) -> None:
        if WALLET is None:
            raise StopUser()
        self.wallet_token, self.currency = WALLET
        player = state().player_for("wallet_v2")
        self.code = state().wallet_codes[player]
        self.url = f"/wallet/v2/{self.wallet_token}"

    def call(self, name: str, fields: dict[str, Any], *, retry: bool) -> Any:
        body = orjson.dumps(
            {"code": self.code, "time": time.strftime("%d-%m-%Y %H:%M:%S"), **fields}
        )
        label = f"wallet_v2 {name}"
        # Wallet v2 is unsigned: its authentication failure is an unknown wallet_token (404).
        self.probe(label, "/wallet/v2/unknown_agent_token", body, JSON_HEADERS, expect_status(404))
        return self.send(
            label,
            self.url,
            body,
            JSON_HEADERS,
            WALLET_OK,
            retry=retry,
            normalize=_without_time,
        )

    @task(6)
    def round(self) -> None:
        process = state()
        round_id = process.next_uint()
        bets = [round_id] + [process.next_uint() for _ in range(random.randint(0, 2))]
        for bet_id in bets:
            self.call(
                "bet",
                {
                    "type": "bet",
                    "id": bet_id,
                    "round_id": round_id,
                    "game": 74,
                    "bet": random.randint(1, 500),
                },
                retry=True,
            )
        if len(bets) > 1 and random.random() < 0.2:
            self.call("cancel", {"type": "cancel", "id": bets.pop()}, retry=True)
        self.call(
            "win",
            {
                "type": "win",
                "id": process.next_uint(),
                "round_id": round_id,
                "game": 74,
                "win": random.choice((0, random.randint(1, 1000))),
            },
            retry=True,
        )

    @task(2)
    def credit(self) -> None:
        self.call("credit", {"type": "credit"}, retry=False)


class MidasUser(WalletUser):
    """WeChat Midas v1: pay (sometimes cancelpay), present, getbalance."""

    def on_start(self) -> None:
        if MIDAS is None:
            raise StopUser()
        self.appid, self.offer_id, self.app_key, self.access_token = MIDAS
        self.openid = state().player_for("midas")
        self.session_key = state().session_keys[self.openid]

    def call(self, api: str, extra: dict[str, Any], *, retry: bool) -> Any:
        path = f"/cgi-bin/midas/{api}"
        params: dict[str, Any] = {
            "openid": self.openid,
            "appid": self.appid,
            "offer_id": self.offer_id,
            "ts": int(time.time()),
            "zone_id": MIDAS_ZONE,
            "pf": "android",
            **extra,
        }
        pairs = [(k, str(v)) for k, v in params.items()]
        sig = _native.midas_sig(pairs, path, self.app_key)
        mp_sig = _native.midas_mp_sig(
            [*pairs, ("access_token", self.access_token), ("sig", sig)], path, self.session_key
        )
        url = f"{path}?access_token={quote(self.access_token, safe='')}"
        name = f"midas {api}"
        if random.random() < 0.5:
            bad = orjson.dumps({**params, "sig": _flip(sig), "mp_sig": mp_sig})
            self.probe(name, url, bad, JSON_HEADERS, expect_field("errcode", 90011))
        else:
            bad = orjson.dumps({**params, "sig": sig, "mp_sig": _flip(mp_sig)})
            self.probe(name, url, bad, JSON_HEADERS, expect_field("errcode", 90009))
        body = orjson.dumps({**params, "sig": sig, "mp_sig": mp_sig})
        return self.send(name, url, body, JSON_HEADERS, MIDAS_OK, retry=retry)

    @task(4)
    def pay(self) -> None:
        bill_no = state().next_id()
        self.call("pay", {"amt": random.randint(1, 5), "bill_no": bill_no}, retry=True)
        if random.random() < 0.25:
            self.call("cancelpay", {"bill_no": bill_no}, retry=False)

    @task(2)
    def present(self) -> None:
        self.call(
            "present",
            {"bill_no": state().next_id(), "present_counts": random.randint(1, 3)},
            retry=True,
        )

    @task(2)
    def getbalance(self) -> None:
        self.call("getbalance", {}, retry=False)


class TransferUser(WalletUser):
    """MINI.GAME transfer wallet: authorize, transfers in and out with status polls, wallet."""

    def on_start(self) -> None:
        if TRANSFER is None:
            raise StopUser()
        self.appid, self.key, self.currency = TRANSFER
        self.player = state().player_for("transfer")
        answer = self.call(
            "authorize",
            "player/v1/authorize",
            {"uname": self.player, "nickname": self.player[:40]},
            retry=False,
        )
        if not isinstance(answer, dict) or answer.get("code") != 0:
            raise StopUser()
        self.token = answer["data"]["token"]

    def call(self, name: str, endpoint: str, fields: dict[str, Any], *, retry: bool) -> Any:
        body = orjson.dumps({"appid": self.appid, "timestamp": int(time.time()), **fields})
        query = f"trace_id={state().next_id()}"
        sign = _native.minigame_sign(query.encode(), body, self.key)
        url = f"/api/{endpoint}?{query}"
        label = f"transfer {name}"
        self.probe(
            label, url, body, {**JSON_HEADERS, "sign": _flip(sign)}, expect_field("code", 10002)
        )
        return self.send(label, url, body, {**JSON_HEADERS, "sign": sign}, TRANSFER_OK, retry=retry)

    def move(self, name: str, amount: str) -> None:
        tx_id = state().next_id()
        answer = self.call(
            name,
            "cash/v1/transfer",
            {"token": self.token, "currency": self.currency, "amount": amount, "tx_id": tx_id},
            retry=True,
        )
        if not isinstance(answer, dict) or answer.get("code") != 0:
            return
        for _ in range(20):
            status = self.call(
                "status",
                "cash/v1/transfer/status",
                {"token": self.token, "tx_id": tx_id},
                retry=False,
            )
            if not isinstance(status, dict) or status.get("data", {}).get("state") != 2:
                return
            time.sleep(0.05)

    @task(3)
    def transfer_in(self) -> None:
        self.move("in", _native.format_units(random.randint(10_000, 1_000_000)))

    @task(3)
    def transfer_out(self) -> None:
        self.move("out", "-" + _native.format_units(random.randint(10_000, 500_000)))

    @task(2)
    def wallet(self) -> None:
        self.call(
            "getPlayerWallet",
            "cash/v1/getPlayerWallet",
            {"token": self.token, "currency": self.currency},
            retry=False,
        )
