"""The access middleware's direct dispatch of protocol endpoints, driven with raw ASGI messages.

``create_app`` puts the access middleware outside Starlette's error middleware and has it read
the body of a protocol POST straight from ``receive``. These tests send what an HTTP server
sends (a body split over several ``http.request`` messages, a body over the limit, a wrong
method) and check the answer, the access-log record and that nothing is applied on rejection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_helpers import ADMIN_TOKEN, MINIGAME_KEY, make_config
from walletgate import _native
from walletgate.app import create_app
from walletgate.ledger.admin import adjust
from walletgate.ledger.minigame import balances
from walletgate.logs import AccessLog
from walletgate.protocols.common import GatewayContext

BET_PATH = "/api/balance/change_balance"
QUERY = b"trace_id=dispatch-1"
TENANT = "10013"
PLAYER = "dispatch-player"
FUNDING_UNITS = 1_000_000
BET_UNITS = 10_000  # "money": "-1" is one whole unit of 4 decimals


class CapturedLog(AccessLog):
    """An access log that keeps its records instead of writing them."""

    def __init__(self) -> None:
        super().__init__(fd=-1, enabled=True)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def bet_body(order_id: str, padding: str = "") -> bytes:
    body: dict[str, Any] = {
        "app_id": TENANT,
        "uname": PLAYER,
        "currency": "usdt",
        "money": "-1",
        "bet": "1",
        "type": 1,
        "order_id": order_id,
        "session_id": "round-1",
        "timestamp": 1721130791,
        "end_round": False,
    }
    if padding:
        body["game_note"] = padding
    return orjson.dumps(body)


def scope_for(method: str, path: str, body: bytes, *, declare_length: bool) -> dict[str, Any]:
    headers = [
        (b"content-type", b"application/json"),
        (b"sign", _native.minigame_sign(QUERY, body, MINIGAME_KEY.encode()).encode()),
    ]
    if declare_length:
        headers.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": QUERY,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }


async def call(
    app: Any, scope: dict[str, Any], chunks: list[bytes]
) -> tuple[int, bytes, list[dict[str, Any]], int]:
    """Run one request: (status, body, the messages sent, how many receive() calls were made)."""
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)  # a client that sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, sent, received


@contextlib.asynccontextmanager
async def running_app(
    tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[Any, CapturedLog, GatewayContext]]:
    log = CapturedLog()
    app = create_app(
        make_config(tmp_path / "journal", redis_url), access_log=log, run_journal_writer=False
    )
    async with app.router.lifespan_context(app) as state:
        context: GatewayContext = state["context"]
        funded = await adjust(
            context.ledger,
            tenant=TENANT,
            player=PLAYER,
            currency="usdt",
            amount_units=FUNDING_UNITS,
            ref="fund-dispatch",
            kind="adjust",
        )
        assert funded.outcome == "applied"
        yield app, log, context


def test_body_in_several_messages_is_applied_once(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        async with running_app(tmp_path, redis_url) as (app, log, _):
            body = bet_body("split-1")
            chunks = [body[:10], body[10:40], body[40:]]
            status, answer, sent, _ = await call(
                app, scope_for("POST", BET_PATH, body, declare_length=False), chunks
            )
            assert status == 200
            parsed = orjson.loads(answer)
            assert parsed["code"] == 1, parsed
            assert parsed["data"]["balance"] == _native.format_units(FUNDING_UNITS - BET_UNITS)
            start = sent[0]
            headers = dict(start["headers"])
            assert headers[b"content-type"] == b"application/json"
            assert headers[b"content-length"] == str(len(answer)).encode()
            assert [r["result"] for r in log.records] == [1]
            assert log.records[0]["order_id"] == "split-1"
            assert log.records[0]["status"] == 200

    asyncio.run(scenario())


@pytest.mark.parametrize("declare_length", [True, False])
def test_body_over_the_limit_is_rejected_unread(
    tmp_path: Path, redis_url: str, declare_length: bool
) -> None:
    async def scenario() -> None:
        async with running_app(tmp_path, redis_url) as (app, log, context):
            limit = make_config(tmp_path / "j", redis_url).server.max_body_bytes
            body = bet_body("too-big-1", padding="x" * 2 * limit)
            assert len(body) > limit
            piece = limit // 4
            chunks = [body[i : i + piece] for i in range(0, len(body), piece)]
            status, answer, _, received = await call(
                app, scope_for("POST", BET_PATH, body, declare_length=declare_length), chunks
            )
            assert status == 200
            assert orjson.loads(answer)["code"] == 10009
            # A declared length over the limit is not read at all; otherwise reading stops at
            # the first chunk past the limit and the rest is never buffered.
            assert received == (0 if declare_length else 5)
            assert [r["result"] for r in log.records] == [10009]
            units = await balances(
                context.ledger, tenant=TENANT, player=PLAYER, currencies=("usdt",)
            )
            assert units == [FUNDING_UNITS]

    asyncio.run(scenario())


def test_a_content_length_of_thousands_of_digits_is_too_large(
    tmp_path: Path, redis_url: str
) -> None:
    """Python's int() refuses over 4,300 digits: such a header is answered as too large, in
    the protocol's envelope, not as an internal error."""

    async def scenario() -> None:
        async with running_app(tmp_path, redis_url) as (app, log, _):
            body = bet_body("long-length-1")
            scope = scope_for("POST", BET_PATH, body, declare_length=False)
            scope["headers"].append((b"content-length", b"1" * 5000))
            status, answer, _, received = await call(app, scope, [body])
            assert (status, orjson.loads(answer)["code"], received) == (200, 10009, 0)
            assert [r["result"] for r in log.records] == [10009]

    asyncio.run(scenario())


def test_other_methods_and_paths_go_through_the_router(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        async with running_app(tmp_path, redis_url) as (app, _, _):
            status, _, _, _ = await call(
                app, scope_for("GET", BET_PATH, b"", declare_length=True), [b""]
            )
            assert status == 405
            status, _, _, _ = await call(
                app, scope_for("GET", "/healthz", b"", declare_length=True), [b""]
            )
            assert status == 200
            # A path that misses or adds a trailing slash is never redirected: Wallet v2 with
            # no token is not found, an admin path without the admin token is refused.
            for path, expected in (("/wallet/v2", 404), ("/admin/v1/sessions/", 401)):
                status, _, sent, _ = await call(
                    app, scope_for("POST", path, b"{}", declare_length=True), [b"{}"]
                )
                headers = dict(sent[0]["headers"])
                assert (status, b"location" in headers) == (expected, False), path

    asyncio.run(scenario())


def test_an_escaping_exception_gets_a_bare_500(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with running_app(tmp_path, redis_url) as (app, _, _):
            middleware = app.build_middleware_stack()
            assert BET_PATH in middleware.post_endpoints

            async def broken(request: Any) -> Any:
                raise RuntimeError("secret detail that must not leak")

            monkeypatch.setitem(middleware.post_endpoints, BET_PATH, broken)
            body = bet_body("broken-1")
            status, answer, sent, _ = await call(
                middleware, scope_for("POST", BET_PATH, body, declare_length=True), [body]
            )
            assert status == 500
            assert b"secret" not in answer
            assert b"Traceback" not in answer
            assert orjson.loads(answer) == {"error": "internal"}
            # The body may not have been read to its end: the connection is not reused.
            assert (b"connection", b"close") in sent[0]["headers"]

    asyncio.run(scenario())


def test_startup_heap_is_frozen_out_of_full_collections(tmp_path: Path, redis_url: str) -> None:
    """Objects that exist when the app has started are no longer walked by the collector."""
    gc.unfreeze()
    built_before_start: list[object] = [[]]
    assert any(item is built_before_start for item in gc.get_objects())

    async def scenario() -> None:
        async with running_app(tmp_path, redis_url):
            assert gc.get_freeze_count() > 1000
            assert not any(item is built_before_start for item in gc.get_objects())

    try:
        asyncio.run(scenario())
    finally:
        gc.unfreeze()


def test_admin_calls_get_access_log_lines_without_tenant_or_token(
    tmp_path: Path, redis_url: str
) -> None:
    """Admin adjustments move money, so every admin call gets its access-log line (and request
    metrics), refused ones too: family admin, the endpoint, the HTTP status, and the
    adjustment's ref; never the tenant (it may be a wallet_token) or the bearer token."""

    def admin_scope(method: str, path: str, body: bytes, token: str) -> dict[str, Any]:
        scope = scope_for(method, path, body, declare_length=True)
        scope["query_string"] = b""
        scope["headers"] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ]
        return scope

    async def scenario() -> None:
        async with running_app(tmp_path, redis_url) as (app, log, _):
            path = f"/admin/v1/accounts/{TENANT}/{PLAYER}/usdt/adjust"
            body = orjson.dumps({"amount": "2.5", "ref": "logged-ref-1"})
            log.records.clear()
            for token in (ADMIN_TOKEN, "wrong-token"):
                status, _, _, _ = await call(app, admin_scope("POST", path, body, token), [body])
                assert status == (200 if token == ADMIN_TOKEN else 401)
            account = f"/admin/v1/accounts/{TENANT}/{PLAYER}/usdt"
            status, _, _, _ = await call(app, admin_scope("GET", account, b"", ADMIN_TOKEN), [b""])
            assert status == 200
            lines = [{k: r[k] for k in ("family", "endpoint", "result")} for r in log.records]
            assert lines == [
                {"family": "admin", "endpoint": "adjust", "result": 200},
                {"family": "admin", "endpoint": "adjust", "result": 401},
                {"family": "admin", "endpoint": "account", "result": 200},
            ]
            assert log.records[0]["ref"] == "logged-ref-1"
            text = orjson.dumps(log.records).decode()
            assert TENANT not in text and ADMIN_TOKEN not in text and "wrong-token" not in text

    asyncio.run(scenario())
