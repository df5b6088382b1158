"""Wire-level builders shared by the cross-cutting tests (fuzz, served process, outage, admin).

Requests are signed here with the standard library (hashlib, hmac), independently of
``walletgate._native``. :class:`AsgiGateway` drives the whole app of ``create_app`` (routes,
middleware and lifespan, so the journal writer runs too) on one event loop owned by the test,
from synchronous code such as a hypothesis test body.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import redis

from gateway_helpers import (
    ADMIN_TOKEN,
    LUCK_KEY,
    MIDAS_ACCESS_TOKEN,
    MIDAS_APP_KEY,
    MIDAS_SANDBOX_KEY,
    MINIGAME_KEY,
    TRANSFER_KEY,
    WALLET_TOKEN,
)

T = TypeVar("T")

MINIGAME_APP_ID = "10013"
LUCK_APP_ID = "10014"
TRANSFER_APPID = "1005"
MIDAS_APPID = "wx1234567"
MIDAS_OFFER_ID = "12345678"
TRACE_QUERY = "trace_id=wg-test-0001"

MINIGAME_PATHS = (
    "/api/user/verify_session",
    "/api/balance/get_balance",
    "/api/balance/change_balance",
)
LUCK_PATHS = tuple(path.replace("/api/", "/api/luck/", 1) for path in MINIGAME_PATHS)
TRANSFER_PATHS = (
    "/api/player/v1/authorize",
    "/api/cash/v1/transfer",
    "/api/cash/v1/transfer/status",
    "/api/cash/v1/getPlayerWallet",
)
MIDAS_APIS = ("getbalance", "pay", "cancelpay", "present")
MIDAS_PATHS = tuple(
    base + api for base in ("/cgi-bin/midas/", "/cgi-bin/midas/sandbox/") for api in MIDAS_APIS
)
WALLET_V2_PATH = f"/wallet/v2/{WALLET_TOKEN}"

# Keys the journal writer maintains on its own schedule (leases, stats, the key-to-player map):
# they change while the gateway idles, so state comparisons leave them out.
WRITER_KEY_PREFIXES = (b"wg:{journal-", b"wg:{keymap:")

# Text that would reveal an exception if it reached a response body.
EXCEPTION_MARKERS = (
    b"Traceback",
    b'File "',
    b"Exception",
    b"Error:",
    b"Error(",
    b"raise ",
    b"walletgate/",
    b".py",
)


# -- signing ---------------------------------------------------------------------------------


def md5_sign(query: str | bytes, body: bytes, key: str) -> str:
    """The MINI.GAME / transfer ``sign`` header: md5(raw query + raw body + key)."""
    raw_query = query.encode() if isinstance(query, str) else query
    return hashlib.md5(raw_query + body + key.encode()).hexdigest()


def signed_post(
    path: str, body: bytes, key: str, query: str = TRACE_QUERY
) -> tuple[str, bytes, dict[str, str]]:
    """(url, content, headers) of a correctly signed MINI.GAME or transfer call."""
    headers = {"content-type": "application/json", "sign": md5_sign(query, body, key)}
    return f"{path}?{query}" if query else path, body, headers


def _hmac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def _joined(pairs: Mapping[str, Any]) -> str:
    return "&".join(f"{name}={value}" for name, value in sorted(pairs.items()))


def midas_sign(
    params: Mapping[str, Any],
    path: str,
    *,
    session_key: str,
    app_key: str | None = None,
    access_token: str = MIDAS_ACCESS_TOKEN,
) -> dict[str, Any]:
    """``params`` plus ``sig`` (the AppKey, or the sandbox AppKey on the sandbox) and ``mp_sig``."""
    if app_key is None:
        app_key = MIDAS_SANDBOX_KEY if "/sandbox/" in path else MIDAS_APP_KEY
    signed = {k: v for k, v in params.items() if k not in ("sig", "mp_sig", "access_token")}
    sig = _hmac(app_key, _joined(signed) + f"&org_loc={path}&method=POST&secret={app_key}")
    mp_params = {**signed, "access_token": access_token, "sig": sig}
    mp_sig = _hmac(
        session_key,
        _joined(mp_params) + f"&org_loc={path}&method=POST&session_key={session_key}",
    )
    return {**params, "sig": sig, "mp_sig": mp_sig}


def midas_params(openid: str, zone_id: str = "1", **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "openid": openid,
        "appid": MIDAS_APPID,
        "offer_id": MIDAS_OFFER_ID,
        "ts": 1507530737,
        "zone_id": zone_id,
        "pf": "android",
    }
    params.update(extra)
    return params


def midas_url(path: str, access_token: str = MIDAS_ACCESS_TOKEN) -> str:
    return f"{path}?access_token={access_token}"


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def compact(value: Any) -> bytes:
    """JSON without spaces; Python ints of any size stay exact."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# -- Redis state -----------------------------------------------------------------------------


def redis_state(client: redis.Redis) -> dict[bytes, bytes]:
    """Every ``wg:*`` key (writer bookkeeping left out) with its DUMP serialisation.

    Two equal results mean every balance, idempotency record, session, round and pending
    journal record is byte-identical.
    """
    names = sorted(
        name
        for name in client.scan_iter(match=b"wg:*", count=1000)
        if not name.startswith(WRITER_KEY_PREFIXES)
    )
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.dump(name)
    dumps = pipe.execute()
    return {name: value for name, value in zip(names, dumps, strict=True) if value is not None}


def account_state(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    """Every account hash ``wg:{T:P}:acct`` with all its fields."""
    names = sorted(client.scan_iter(match=b"wg:*:acct", count=1000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    return dict(zip(names, pipe.execute(), strict=True))


def state_difference(before: Mapping[bytes, bytes], after: Mapping[bytes, bytes]) -> list[str]:
    """The keys that appeared, vanished or changed, for assertion messages."""
    changed = [name for name in before.keys() & after.keys() if before[name] != after[name]]
    return (
        [f"+{name!r}" for name in sorted(after.keys() - before.keys())]
        + [f"-{name!r}" for name in sorted(before.keys() - after.keys())]
        + [f"~{name!r}" for name in sorted(changed)]
    )


# -- config as TOML --------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the characters used in tests
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(raw: Mapping[str, Any]) -> str:
    """The TOML text of a config dict shaped like ``gateway_helpers.config_dict``."""
    lines: list[str] = []
    for section, table in raw.items():
        scalars = {k: v for k, v in table.items() if not _is_table_array(v)}
        if scalars:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
            lines.append("")
        for kind, entries in table.items():
            if not _is_table_array(entries):
                continue
            for entry in entries:
                lines.append(f"[[{section}.{kind}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
                lines.append("")
    return "\n".join(lines)


def write_config(path: Path, raw: Mapping[str, Any]) -> Path:
    path.write_text(to_toml(raw), encoding="utf-8")
    return path


# -- the app on a test-owned event loop ------------------------------------------------------


class AsgiGateway:
    """The app of ``create_app`` with its lifespan entered, driven from synchronous code.

    Every request runs on one private event loop, so the gateway's Redis connections and its
    background tasks (journal writer, metrics publisher) live as long as the ``with`` block.
    Background tasks progress only while a request or :meth:`idle` runs.
    """

    def __init__(self, app: Any, client_address: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=app, client=client_address, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://wg")
        self._lifespan: Any = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def __enter__(self) -> AsgiGateway:
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.run(self._lifespan.__aenter__())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            self.run(self.client.aclose())
            if self._lifespan is not None:
                self.run(self._lifespan.__aexit__(None, None, None))
        finally:
            self.loop.close()

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        return self.run(self.client.request(method, url, **options))

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def idle(self, seconds: float) -> None:
        """Let background tasks run for ``seconds``."""
        self.run(asyncio.sleep(seconds))

    # -- typed shortcuts (each asserts the call succeeded) -----------------------------------

    def admin(self, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN) -> Any:
        content = None if body is None else compact(body)
        return self.request(
            method, "/admin/v1" + path, content=content, headers=admin_headers(token)
        )

    def register(self, tenant: str, player: str, currency: str, token: str, **extra: Any) -> None:
        body = {"tenant": tenant, "player": player, "currency": currency, "token": token, **extra}
        answer = self.admin("POST", "/sessions", body)
        assert answer.status_code == 201, answer.text

    def fund(
        self, tenant: str, player: str, currency: str, amount: str, ref: str, kind: str = "adjust"
    ) -> str:
        answer = self.admin(
            "POST",
            f"/accounts/{tenant}/{player}/{currency}/adjust",
            {"amount": amount, "ref": ref, "kind": kind},
        )
        assert answer.status_code == 200, answer.text
        balance = answer.json()["balance"]
        assert isinstance(balance, str)
        return balance

    def signed(self, path: str, fields: Mapping[str, Any], key: str) -> httpx.Response:
        url, content, headers = signed_post(path, compact(dict(fields)), key)
        return self.post(url, content=content, headers=headers)

    def midas(self, path: str, params: Mapping[str, Any], session_key: str) -> httpx.Response:
        body = midas_sign(params, path, session_key=session_key)
        return self.post(midas_url(path), content=compact(body))


def minigame_key(app_id: str) -> str:
    return {MINIGAME_APP_ID: MINIGAME_KEY, LUCK_APP_ID: LUCK_KEY}[app_id]


def contains_any(haystack: bytes, needles: Iterable[str | bytes]) -> list[str]:
    found = []
    for needle in needles:
        raw = needle.encode() if isinstance(needle, str) else needle
        if raw and raw in haystack:
            found.append(raw.decode(errors="replace"))
    return found


__all__ = [
    "ADMIN_TOKEN",
    "LUCK_KEY",
    "MIDAS_ACCESS_TOKEN",
    "MINIGAME_KEY",
    "TRANSFER_KEY",
    "WALLET_TOKEN",
]
