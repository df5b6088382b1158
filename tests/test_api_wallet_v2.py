from __future__ import annotations

import asyncio
import calendar
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway_helpers import WALLET_TOKEN, config_dict, make_app, make_config, make_context
from walletgate.config import ConfigError, parse_config
from walletgate.ledger import wallet_v2 as ledger_v2
from walletgate.ledger.admin import adjust
from walletgate.ledger.sessions import register_session
from walletgate.protocols import wallet_v2
from walletgate.protocols.common import GatewayContext

URL = f"/wallet/v2/{WALLET_TOKEN}"
PLAYER = "usr-1122334455"
CODE = "sess_code_1"
UINT64_MAX = 2**64 - 1

Scenario = Callable[[httpx.AsyncClient, GatewayContext], Awaitable[None]]


class LogCapture:
    """Wraps the app and keeps what protocols.common.note left in each request's scope."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.notes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.notes.append(scope.get("wg.log", {}))


def run(
    tmp_path: Path,
    redis_url: str,
    scenario: Scenario,
    *,
    client_addr: tuple[str, int] = ("127.0.0.1", 40000),
    capture: list[LogCapture] | None = None,
) -> GatewayContext:
    config = make_config(tmp_path / "journal", redis_url)
    ctx = make_context(config)
    app = LogCapture(make_app(wallet_v2.routes(ctx)))
    if capture is not None:
        capture.append(app)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, client=client_addr)
        async with httpx.AsyncClient(transport=transport, base_url="http://wg") as client:
            try:
                await scenario(client, ctx)
            finally:
                await ctx.ledger.runner.close()

    asyncio.run(main())
    return ctx


async def session(
    ctx: GatewayContext,
    *,
    code: str = CODE,
    player: str = PLAYER,
    currency: str = "USD",
    cents: int = 0,
    ttl_s: int = 3600,
    tenant: str = WALLET_TOKEN,
) -> None:
    expires = await register_session(
        ctx.ledger, tenant=tenant, player=player, currency=currency, token=code, ttl_s=ttl_s
    )
    assert expires is not None
    if cents:
        funded = await adjust(
            ctx.ledger,
            tenant=tenant,
            player=player,
            currency=currency,
            amount_units=cents * 100,
            ref=f"fund-{player}-{currency}-{cents}",
            kind="adjust",
        )
        assert funded.outcome == "applied"


async def post(
    client: httpx.AsyncClient, body: Any, url: str = URL, **kwargs: Any
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # big ints too
    return await client.post(url, content=content, **kwargs)


async def call(client: httpx.AsyncClient, body: Any, url: str = URL) -> dict[str, Any]:
    response = await post(client, body, url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    parsed = response.json()
    assert isinstance(parsed, dict)
    return parsed


def strip_time(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "time"}


def err(code: str, desc: str, credit: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"result": 0, "err_code": code, "err_desc": desc}
    if credit is not None:
        body["credit"] = credit
    return body


def journal_kinds(url: str) -> list[str]:
    c = redis.Redis.from_url(url, decode_responses=True)
    records = [entry for stream in c.keys("wg:{j*}:journal") for _, entry in c.xrange(stream)]
    return [r["kind"] for r in sorted(records, key=lambda r: (r["currency"], int(r["seq"])))]


def counter(ctx: GatewayContext, name: str) -> float:
    return ctx.metrics.counters.get((name, (("family", "wallet_v2"),)), 0)


# -- the seed document's own examples ---------------------------------------------------------


def test_seed_examples_credit_bet_win(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=100_000)
        credit = await call(client, {"code": CODE, "type": "credit", "time": "21-09-2023 03:23:23"})
        assert list(credit) == ["credit", "player_id", "result", "time", "currency"]
        assert strip_time(credit) == {
            "credit": 100_000,
            "player_id": PLAYER,
            "result": 1,
            "currency": "USD",
        }
        stamp = calendar.timegm(time.strptime(credit["time"], "%d-%m-%Y %H:%M:%S"))
        assert abs(stamp - time.time()) < 5  # UTC (seed inconsistency 5)
        bet = await call(
            client,
            {
                "bet": 500,
                "code": CODE,
                "game": 1012,
                "id": 3,
                "type": "bet",
                "time": "21-09-2023 03:23:23",
            },
        )
        assert list(bet) == ["credit", "result", "time"]
        assert strip_time(bet) == {"credit": 99_500, "result": 1}
        win = await call(
            client,
            {
                "code": CODE,
                "game": 1012,
                "id": 4,
                "type": "win",
                "win": 1000,
                "time": "21-09-2023 03:23:23",
            },
        )
        assert strip_time(win) == {"credit": 100_500, "result": 1}

    run(tmp_path, redis_url, scenario)
    assert journal_kinds(redis_url) == ["adjust", "bet", "win"]


def test_seed_cancel_example_unknown_id_gets_result_1_and_tombstone(
    tmp_path: Path, redis_url: str
) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=100_000)
        cancel = await call(
            client, {"code": CODE, "id": 5, "type": "cancel", "time": "21-09-2023 03:23:23"}
        )
        assert strip_time(cancel) == {"credit": 100_000, "result": 1}
        assert counter(ctx, "tombstones_total") == 1
        late = await call(client, {"bet": 100, "code": CODE, "game": 1, "id": 5, "type": "bet"})
        assert strip_time(late) == err("CANCELLED", "transaction cancelled", 100_000)
        # The key holds the bet's stored rejection now, and stays cancelled for other requests.
        other = await call(client, {"code": CODE, "game": 1, "id": 5, "type": "win", "win": 1})
        assert strip_time(other) == err("CANCELLED", "transaction cancelled", 100_000)
        await call(client, {"code": CODE, "id": 6, "type": "cancel"})
        late_win = await call(client, {"code": CODE, "game": 1, "id": 6, "type": "win", "win": 100})
        assert strip_time(late_win) == err("CANCELLED", "transaction cancelled", 100_000)

    run(tmp_path, redis_url, scenario)
    assert journal_kinds(redis_url) == ["adjust", "tombstone", "reject", "tombstone", "reject"]


def test_seed_round_sample_and_inconsistencies_3_and_4(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=1_000)
        bet = await call(
            client,
            {
                "bet": 100,
                "code": CODE,
                "game": 1053,
                "id": 85,
                "round_id": 85,
                "type": "bet",
                "time": "21-09-2023 07:27:44",
            },
        )
        assert strip_time(bet) == {"credit": 900, "result": 1}
        win = await call(
            client,
            {
                "code": CODE,
                "game": 1053,
                "id": 86,
                "round_id": 85,
                "type": "win",
                "win": 50,
                "time": "21-09-2023 07:27:45",
            },
        )
        assert strip_time(win) == {"credit": 950, "result": 1}
        # Inconsistency 4: the alternative sample (win 0) arriving second is a duplicate id.
        alt = await call(
            client,
            {
                "code": CODE,
                "game": 1053,
                "id": 86,
                "round_id": 85,
                "type": "win",
                "win": 0,
                "time": "21-09-2023 07:27:45",
            },
        )
        assert strip_time(alt) == err("DUPLICATE_ID", "duplicate transaction id", 950)
        assert counter(ctx, "idempotency_conflicts_total") == 1
        # Inconsistency 3: the cancel targets id 5 (unknown), not bet 85.
        cancel = await call(
            client,
            {
                "code": CODE,
                "id": 5,
                "type": "cancel",
                "round_id": 85,
                "time": "21-09-2023 07:27:45",
            },
        )
        assert strip_time(cancel) == {"credit": 950, "result": 1}
        assert counter(ctx, "tombstones_total") == 1
        # Bet 85 itself is settled by win 86.
        settled = await call(client, {"code": CODE, "id": 85, "type": "cancel"})
        assert strip_time(settled) == err("SETTLED", "bet already settled", 950)
        again = await call(client, {"code": CODE, "id": 85, "type": "cancel"})
        assert again == settled
        assert counter(ctx, "idempotent_replays_total") == 1

    run(tmp_path, redis_url, scenario)
    assert journal_kinds(redis_url) == ["adjust", "bet", "win", "tombstone", "reject"]


def test_zero_win_closes_the_round(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=1_000)
        await call(
            client, {"bet": 100, "code": CODE, "game": 1, "id": 85, "round_id": 85, "type": "bet"}
        )
        zero = await call(
            client, {"code": CODE, "game": 1, "id": 86, "round_id": 85, "type": "win", "win": 0}
        )
        assert strip_time(zero) == {"credit": 900, "result": 1}
        settled = await call(client, {"code": CODE, "id": 85, "type": "cancel"})
        assert settled["err_code"] == "SETTLED"

    run(tmp_path, redis_url, scenario)
    assert journal_kinds(redis_url) == ["adjust", "bet", "close", "reject"]


def test_seed_inconsistency_1_and_2_valid_json_and_token_separate_from_code(
    tmp_path: Path, redis_url: str
) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        # The seed reuses the wallet token as code: as a registered code it works ...
        await session(ctx, code=WALLET_TOKEN, cents=10)
        response = await post(client, {"code": WALLET_TOKEN, "type": "credit"})
        assert orjson.loads(response.content)["player_id"] == PLAYER
        # ... but the wallet token is not a session by itself.
        other = await call(
            client, {"code": WALLET_TOKEN, "type": "credit"}, url="/wallet/v2/locked_agent"
        )
        assert strip_time(other) == err("INVALID_SESSION", "session not found")

    run(tmp_path, redis_url, scenario, client_addr=("203.0.113.9", 1))


def test_seed_inconsistency_6_win_never_refused_for_balance(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx)
        win = await call(
            client,
            {
                "code": CODE,
                "game": 1,
                "id": 4,
                "type": "win",
                "win": 1000,
                "time": "not a time at all",
            },
        )
        assert strip_time(win) == {"credit": 1000, "result": 1}

    run(tmp_path, redis_url, scenario)


# -- the err_code table -----------------------------------------------------------------------


def test_invalid_session_rows(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        invalid = err("INVALID_SESSION", "session not found")
        unknown = await call(client, {"code": "nope", "type": "credit"})
        assert strip_time(unknown) == invalid
        # An expired session: refused on credit and bet, accepted on win and cancel.
        await session(ctx, code="old", cents=1_000)
        await session(ctx, code="fresh")
        bet = {"bet": 100, "code": "fresh", "game": 1, "id": 1, "type": "bet"}
        assert (await call(client, bet))["result"] == 1
        r = redis.Redis.from_url(ctx.config.redis.url)
        r.hset(f"wg:{{sess:{WALLET_TOKEN}:old}}", "expires_at", "1000")
        # The account behind an expired session is known: the error carries its credit.
        expired = {**invalid, "credit": 900}
        assert strip_time(await call(client, {"code": "old", "type": "credit"})) == expired
        assert strip_time(await call(client, {**bet, "code": "old", "id": 2})) == expired
        win = await call(
            client, {"code": "old", "game": 1, "id": 3, "type": "win", "win": 50, "round_id": 1}
        )
        assert strip_time(win) == {"credit": 950, "result": 1}
        cancel = await call(client, {"code": "old", "id": 77, "type": "cancel"})
        assert strip_time(cancel) == {"credit": 950, "result": 1}
        # Registering the session again extends it at once (the cache re-checks expired ones).
        await session(ctx, code="old")
        assert (await call(client, {**bet, "code": "old", "id": 2}))["credit"] == 850
        # A session whose currency the agent does not serve.
        await session(ctx, code="eur", currency="EUR", player="p-eur")
        assert strip_time(await call(client, {"code": "eur", "type": "credit"})) == invalid
        # A code of another agent (tenant) is unknown here.
        await session(ctx, code="elsewhere", tenant="locked_agent")
        assert strip_time(await call(client, {"code": "elsewhere", "type": "credit"})) == invalid

    run(tmp_path, redis_url, scenario)
    assert journal_kinds(redis_url) == ["adjust", "bet", "win", "tombstone", "bet"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"code":"sess_code_1","type":"credit"', "body"),
        (b'{"code":"sess_code_1","type":"credit","type":"bet"}', "body"),
        (b'["credit"]', "body"),
        (b"", "body"),
        (b'{"code":"sess_code_1","type":"credit","x":"\xff"}', "body"),
        (b'{"code":"sess_code_1"}', "type"),
        (b'{"code":"sess_code_1","type":"refund"}', "type"),
        (b'{"code":"sess_code_1","type":1}', "type"),
        (b'{"type":"credit"}', "code"),
        (b'{"type":"credit","code":12}', "code"),
        (b'{"type":"credit","code":""}', "code"),
    ],
)
def test_bad_request_before_the_session(
    tmp_path: Path, redis_url: str, raw: bytes, field: str
) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=100)
        body = await call(client, raw)
        assert strip_time(body) == err("BAD_REQUEST", f"bad request: {field}")

    run(tmp_path, redis_url, scenario)


BET = {"bet": 100, "code": CODE, "game": 1012, "id": 3, "type": "bet"}
WIN = {"win": 100, "code": CODE, "game": 1012, "id": 4, "type": "win"}
CANCEL = {"code": CODE, "id": 3, "type": "cancel"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BET, "id": -1}, "id"),
        ({**BET, "id": UINT64_MAX + 1}, "id"),
        ({**BET, "id": str(UINT64_MAX + 1)}, "id"),
        ({**BET, "id": "01"}, "id"),
        ({**BET, "id": "1e3"}, "id"),
        ({**BET, "id": True}, "id"),
        ({**BET, "id": None}, "id"),
        ({k: v for k, v in BET.items() if k != "id"}, "id"),
        ({**BET, "round_id": -5}, "round_id"),
        ({**BET, "round_id": "x"}, "round_id"),
        ({**BET, "bet": -1}, "bet"),
        ({**BET, "bet": "1.5"}, "bet"),
        ({**BET, "bet": 2**63}, "bet"),
        ({**BET, "bet": 2**63 // 100 + 1}, "bet"),
        ({k: v for k, v in BET.items() if k != "bet"}, "bet"),
        ({k: v for k, v in BET.items() if k != "game"}, "game"),
        ({**BET, "game": "g"}, "game"),
        # Only id and round_id may be digit strings: amounts and game are JSON integers.
        ({**BET, "bet": "500"}, "bet"),
        ({**BET, "game": "1012"}, "game"),
        ({**BET, "game": 2**63}, "game"),
        ({**BET, "game": True}, "game"),
        ({**WIN, "win": "100"}, "win"),
        ({**WIN, "win": None}, "win"),
        ({**WIN, "win": False}, "win"),
        ({**CANCEL, "id": "abc"}, "id"),
        ({k: v for k, v in CANCEL.items() if k != "id"}, "id"),
        # Digit strings longer than Python's int() accepts are out of range, not a failure.
        ({**CANCEL, "id": "1" * 5000}, "id"),
        ({**BET, "round_id": "9" * 5000}, "round_id"),
    ],
)
def test_bad_request_fields_carry_credit(
    tmp_path: Path, redis_url: str, body: dict[str, Any], field: str
) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=400)
        answer = await call(client, body)
        assert strip_time(answer) == err("BAD_REQUEST", f"bad request: {field}", 400)

    run(tmp_path, redis_url, scenario)
    assert journal_kinds(redis_url) == ["adjust"]


def test_bad_request_decimal_number_and_body_too_large(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=400)
        raw = b'{"bet":1.0,"code":"sess_code_1","game":1,"id":3,"type":"bet"}'
        assert (await call(client, raw))["err_desc"] == "bad request: bet"
        raw = b'{"bet":1,"code":"sess_code_1","game":1,"id":3.0,"type":"bet"}'
        assert (await call(client, raw))["err_desc"] == "bad request: id"
        # Integers are `0|[1-9][0-9]*`: a minus zero is not one.
        raw = b'{"bet":-0,"code":"sess_code_1","game":1,"id":3,"type":"bet"}'
        assert (await call(client, raw))["err_desc"] == "bad request: bet"
        raw = b'{"bet":1,"code":"sess_code_1","game":1,"id":-0,"type":"bet"}'
        assert (await call(client, raw))["err_desc"] == "bad request: id"
        huge = orjson.dumps({**BET, "pad": "x" * 70_000})
        assert strip_time(await call(client, huge)) == err("BAD_REQUEST", "bad request: body")

    run(tmp_path, redis_url, scenario)


def test_cancel_of_a_win_is_bad_request(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=400)
        await call(client, WIN)
        answer = await call(client, {**CANCEL, "id": 4})
        assert strip_time(answer) == err("BAD_REQUEST", "bad request: id", 500)

    run(tmp_path, redis_url, scenario)
    assert journal_kinds(redis_url) == ["adjust", "win"]


def test_insufficient_funds_is_stored_and_replayed(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=400)
        first = await call(client, {**BET, "bet": 500})
        assert strip_time(first) == err("INSUFFICIENT_FUNDS", "insufficient funds", 400)
        assert list(first) == ["result", "err_code", "err_desc", "credit", "time"]
        await adjust(
            ctx.ledger,
            tenant=WALLET_TOKEN,
            player=PLAYER,
            currency="USD",
            amount_units=100_000,
            ref="topup",
            kind="adjust",
        )
        again = await call(client, {**BET, "bet": 500})
        assert again == first  # the original response, time included
        cancel = await call(client, CANCEL)  # a rejected bet: nothing to refund
        assert strip_time(cancel) == {"credit": 1_400, "result": 1}

    run(tmp_path, redis_url, scenario)
    assert journal_kinds(redis_url) == ["adjust", "reject", "adjust", "cancel"]


def test_duplicate_id_and_replays(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=1_000)
        first = await call(client, BET)
        assert (await call(client, {**BET, "game": 999, "time": "x"})) == first  # game not in fp
        dup = err("DUPLICATE_ID", "duplicate transaction id", 900)
        assert strip_time(await call(client, {**BET, "bet": 101})) == dup
        assert strip_time(await call(client, {**BET, "round_id": 3})) == dup
        assert strip_time(await call(client, {**WIN, "id": 3})) == dup
        # Another player (another session) with the same id in the same currency.
        await session(ctx, code="other", player="usr-2", cents=1_000)
        assert (await call(client, {**BET, "code": "other"}))["credit"] == 900
        # The same id in another currency is another key.
        await session(ctx, code="uah", player=PLAYER, currency="UAH", cents=1_000)
        assert (await call(client, {**BET, "code": "uah"}))["credit"] == 900
        refund = await call(client, CANCEL)
        assert strip_time(refund) == {"credit": 1_000, "result": 1}
        assert (await call(client, CANCEL)) == refund
        assert counter(ctx, "idempotent_replays_total") == 2
        assert counter(ctx, "idempotency_conflicts_total") == 3

    run(tmp_path, redis_url, scenario)


def test_uint64_ids_parsed_exactly_as_integer_or_string(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=1_000)
        first = await call(client, {**BET, "id": UINT64_MAX, "round_id": UINT64_MAX})
        assert first["credit"] == 900
        as_string = await call(client, {**BET, "id": str(UINT64_MAX), "round_id": str(UINT64_MAX)})
        assert as_string == first  # the same key and fingerprint: a replay
        neighbour = await call(client, {**BET, "id": UINT64_MAX - 1})
        assert neighbour["credit"] == 800  # not collapsed through a float
        settle = await call(client, {**WIN, "id": 1, "win": 0, "round_id": str(UINT64_MAX)})
        assert settle["result"] == 1
        cancel = await call(client, {**CANCEL, "id": UINT64_MAX})
        assert cancel["err_code"] == "SETTLED"

    run(tmp_path, redis_url, scenario)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert r.exists(f"wg:{{{WALLET_TOKEN}:{PLAYER}}}:tx:USD:{UINT64_MAX}")


def test_cents_floored_toward_zero(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx)
        await adjust(
            ctx.ledger,
            tenant=WALLET_TOKEN,
            player=PLAYER,
            currency="USD",
            amount_units=12_399,
            ref="odd",
            kind="adjust",
        )
        credit = await call(client, {"code": CODE, "type": "credit"})
        assert credit["credit"] == 123
        refused = await call(client, {**BET, "bet": 124})
        assert refused["err_code"] == "INSUFFICIENT_FUNDS" and refused["credit"] == 123

    run(tmp_path, redis_url, scenario)


def test_internal_error_when_redis_is_unavailable(tmp_path: Path, redis_url: str) -> None:
    from conftest import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        for body in ({"code": CODE, "type": "credit"}, BET, WIN, CANCEL):
            answer = await call(client, body)
            assert strip_time(answer) == err("INTERNAL_ERROR", "temporary failure, retry")

    ctx = run(tmp_path, dead, scenario)
    assert ctx.metrics.counters[("redis_errors_total", ())] == 4


def test_internal_error_on_unexpected_exception(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=1_000)
        monkeypatch.setattr(ledger_v2, "bet", broken)
        answer = await call(client, BET)
        assert strip_time(answer) == err("INTERNAL_ERROR", "temporary failure, retry")

    run(tmp_path, redis_url, scenario)
    assert "boom" in caplog.text and CODE not in caplog.text and WALLET_TOKEN not in caplog.text


# -- agent, network, method -------------------------------------------------------------------


def test_unknown_or_malformed_wallet_token_is_404_empty(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=100)
        for url in (
            "/wallet/v2/nobody",
            "/wallet/v2/bad-token!",
            "/wallet/v2/" + "a" * 41,
            f"/wallet/v2/{WALLET_TOKEN}x",
            "/wallet/v2/",
            f"{URL}/extra",
        ):
            response = await post(client, {"code": CODE, "type": "credit"}, url)
            assert (response.status_code, response.content) == (404, b""), url
        response = await client.get(URL)
        assert response.status_code == 405

    run(tmp_path, redis_url, scenario)


def test_a_wallet_token_with_a_trailing_newline_is_refused_at_startup(tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "journal")
    [agent] = [a for a in raw["wallet_v2"]["agents"] if a["wallet_token"] == WALLET_TOKEN]
    parse_config(raw)
    # A regular expression's "$" also matches before a final newline; the token check must not.
    agent["wallet_token"] = WALLET_TOKEN + "\n"
    with pytest.raises(ConfigError, match="wallet_token"):
        parse_config(raw)


def test_ip_allowlist_403_and_forwarded_for(tmp_path: Path, redis_url: str) -> None:
    locked = "/wallet/v2/locked_agent"
    body = {"code": "lk", "type": "credit"}

    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, code="lk", tenant="locked_agent", cents=5)
        # The peer 127.0.0.1 is a trusted proxy: the forwarded client decides.
        response = await post(client, body, locked)
        assert (response.status_code, response.content) == (403, b"")
        ok = await post(client, body, locked, headers={"X-Forwarded-For": "203.0.113.7"})
        assert ok.status_code == 200 and ok.json()["credit"] == 5
        chain = await post(
            client,
            body,
            locked,
            headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 127.0.0.1"},
        )
        assert chain.status_code == 200
        spoof = await post(
            client, body, locked, headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.1"}
        )
        assert (spoof.status_code, spoof.content) == (403, b"")
        garbage = await post(client, body, locked, headers={"X-Forwarded-For": "nonsense"})
        assert garbage.status_code == 403
        # A proxy that adds a line of its own instead of appending to the client's: the lines
        # count in order, so the client's claimed address (first line) decides nothing.
        two_lines = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.9")]
        added = await post(client, body, locked, headers=two_lines)
        assert (added.status_code, added.content) == (403, b"")
        honest = [("X-Forwarded-For", "198.51.100.9"), ("X-Forwarded-For", "203.0.113.7")]
        assert (await post(client, body, locked, headers=honest)).status_code == 200
        # Agents without an allowlist accept anyone.
        await session(ctx, cents=1)
        assert (await post(client, {"code": CODE, "type": "credit"})).status_code == 200

    run(tmp_path, redis_url, scenario)


def test_untrusted_peer_cannot_spoof_forwarded_for(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, code="lk", tenant="locked_agent", cents=5)
        spoof = await post(
            client,
            {"code": "lk", "type": "credit"},
            "/wallet/v2/locked_agent",
            headers={"X-Forwarded-For": "203.0.113.7"},
        )
        assert (spoof.status_code, spoof.content) == (403, b"")

    run(tmp_path, redis_url, scenario, client_addr=("198.51.100.20", 5555))


def test_allowed_peer_directly(tmp_path: Path, redis_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, code="lk", tenant="locked_agent", cents=5)
        ok = await post(client, {"code": "lk", "type": "credit"}, "/wallet/v2/locked_agent")
        assert ok.status_code == 200 and ok.json()["result"] == 1

    run(tmp_path, redis_url, scenario, client_addr=("203.0.113.200", 5555))


def test_an_ipv4_peer_seen_by_a_dual_stack_listener_is_matched(
    tmp_path: Path, redis_url: str
) -> None:
    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, code="lk", tenant="locked_agent", cents=5)
        ok = await post(client, {"code": "lk", "type": "credit"}, "/wallet/v2/locked_agent")
        assert ok.status_code == 200 and ok.json()["result"] == 1

    run(tmp_path, redis_url, scenario, client_addr=("::ffff:203.0.113.200", 5555))


# -- stored outcomes, logging ------------------------------------------------------------------


def test_render_stored_rebuilds_the_original_responses(tmp_path: Path, redis_url: str) -> None:
    answers: dict[str, dict[str, Any]] = {}

    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=1_000)
        answers["USD:3"] = await call(client, {**BET, "round_id": 9})
        answers["USD:7"] = await call(client, {**BET, "id": 7, "bet": 5_000})
        answers["USD:3:cancel"] = await call(client, CANCEL)
        answers["USD:4"] = await call(client, {**WIN, "round_id": 9})
        answers["USD:5:cancel"] = await call(client, {**CANCEL, "id": 5})
        answers["USD:6"] = await call(client, {**BET, "id": 6, "round_id": 9})
        answers["USD:6:cancel"] = await call(client, {**CANCEL, "id": 6})

    run(tmp_path, redis_url, scenario)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for key, answer in answers.items():
        record = r.hgetall(f"wg:{{{WALLET_TOKEN}:{PLAYER}}}:tx:{key}")
        assert record["protocol"] == "wallet_v2"
        assert wallet_v2.render_stored(record) == answer, key
    assert answers["USD:6:cancel"]["err_code"] == "SETTLED"
    tombstone = r.hgetall(f"wg:{{{WALLET_TOKEN}:{PLAYER}}}:tx:USD:5")
    assert tombstone["state"] == "tombstone"
    assert wallet_v2.render_stored(tombstone) == answers["USD:5:cancel"]


def test_note_carries_refs_but_no_secrets(tmp_path: Path, redis_url: str) -> None:
    captured: list[LogCapture] = []

    async def scenario(client: httpx.AsyncClient, ctx: GatewayContext) -> None:
        await session(ctx, cents=1_000)
        await call(client, {**BET, "round_id": 85})
        await call(client, {**BET, "bet": 5_000, "id": 9})
        await post(client, BET, "/wallet/v2/nobody")
        # A refused session still logs the request's id.
        await call(client, {**BET, "code": "nobody-code", "id": 11})

    run(tmp_path, redis_url, scenario, capture=captured)
    notes = captured[0].notes
    assert notes[0] == {
        "family": "wallet_v2",
        "endpoint": "bet",
        "result": 1,
        "refs": {"id": 3, "round_id": 85, "game": 1012},
    }
    assert notes[1]["result"] == "INSUFFICIENT_FUNDS"
    assert notes[2]["result"] == 404
    assert (notes[3]["result"], notes[3]["refs"]) == ("INVALID_SESSION", {"id": 11})
    assert CODE not in repr(notes) and WALLET_TOKEN not in repr(notes)
