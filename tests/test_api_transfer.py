"""MINI.GAME transfer wallet through the ASGI app: every error code, seed rows and examples."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

import gateway_helpers
from conftest import RedisServer
from gateway_helpers import MINIGAME_KEY, TRANSFER_KEY, make_app, make_context
from walletgate import _native
from walletgate.config import parse_config
from walletgate.ledger import transfer as lt
from walletgate.ledger.admin import adjust
from walletgate.protocols import transfer as proto
from walletgate.protocols.common import GatewayContext

APPID = "1005"
OTHER_APPID = "1006"
OTHER_KEY = "other-transfer-key-0a1b2c3d4e5f"
QUERY = b"trace_id=tr-0001"
AUTHORIZE = "/api/player/v1/authorize"
TRANSFER = "/api/cash/v1/transfer"
STATUS = "/api/cash/v1/transfer/status"
WALLET = "/api/cash/v1/getPlayerWallet"
TS = 1711954264
FAMILY = (("family", "transfer"),)


class Gateway:
    def __init__(self, ctx: GatewayContext, client: httpx.AsyncClient) -> None:
        self.ctx = ctx
        self.client = client

    async def raw(
        self,
        path: str,
        body: bytes,
        *,
        key: str | None = TRANSFER_KEY,
        query: bytes = QUERY,
        sign: str | None = None,
    ) -> Any:
        headers = {"content-type": "application/json; charset=utf-8"}
        if sign is None and key is not None:
            sign = _native.minigame_sign(query, body, key.encode())
        if sign is not None:
            headers["sign"] = sign
        url = path + ("?" + query.decode() if query else "")
        response = await self.client.post(url, content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return orjson.loads(response.content)

    async def post(self, path: str, fields: dict[str, Any], **options: Any) -> Any:
        body = {"appid": APPID, "timestamp": TS, **fields}
        return await self.raw(path, orjson.dumps(body), **options)

    async def authorize(self, uname: str, appid: str = APPID, key: str = TRANSFER_KEY) -> str:
        answer = await self.post(
            AUTHORIZE, {"appid": appid, "uname": uname, "nickname": "nick"}, key=key
        )
        assert answer["code"] == 0, answer
        token = answer["data"]["token"]
        assert isinstance(token, str)
        return token

    async def fund(self, uname: str, amount: str, currency: str = "usdt") -> None:
        result = await adjust(
            self.ctx.ledger,
            tenant=APPID,
            player=uname,
            currency=currency,
            amount_units=_native.parse_money(amount),
            ref=f"f-{uname}-{amount}",
            kind="adjust",
        )
        assert result.outcome == "applied"

    def counter(self, name: str, labels: tuple[tuple[str, str], ...] = FAMILY) -> float:
        return self.ctx.metrics.counters.get((name, labels), 0)


def config_raw(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    raw = gateway_helpers.config_dict(tmp_path / "journal")
    raw["redis"]["url"] = redis_url
    raw["transfer"]["merchants"].append(
        {"appid": OTHER_APPID, "key": OTHER_KEY, "default_currency": "USDT", "currencies": ["usdt"]}
    )
    raw["server"]["max_body_bytes"] = 1024
    return raw


Scenario = Callable[[Gateway], Awaitable[None]]


def run(
    tmp_path: Path,
    redis_url: str,
    scenario: Scenario,
    tweak: Callable[[dict[str, Any]], None] | None = None,
) -> Gateway:
    raw = config_raw(tmp_path, redis_url)
    if tweak is not None:
        tweak(raw)
    ctx = make_context(parse_config(raw))
    app = make_app(proto.routes(ctx))

    async def main() -> Gateway:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://wg") as client:
            gateway = Gateway(ctx, client)
            try:
                await scenario(gateway)
            finally:
                await ctx.ledger.runner.close()
            return gateway

    return asyncio.run(main())


def journal(redis_url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return [fields for key in client.keys("wg:{j*}:journal") for _, fields in client.xrange(key)]


def error(code: int, msg: str) -> dict[str, Any]:
    return {"code": code, "msg": msg}


# -- authorize ------------------------------------------------------------------------------


def test_authorize_creates_the_player_and_reports_the_default_balance(
    tmp_path: Path, redis_url: str
) -> None:
    async def scenario(gw: Gateway) -> None:
        first = await gw.post(AUTHORIZE, {"uname": "1003803", "nickname": "玩家一号"})
        assert first["code"] == 0 and first["msg"] == "ok"
        assert first["data"]["balance"] == "0"
        assert first["data"]["appid"] == APPID  # seed row 5: a string
        await gw.fund("1003803", "42766.25")
        second = await gw.post(AUTHORIZE, {"uname": "1003803", "nickname": "x"})
        assert second["data"] == {
            "token": second["data"]["token"],
            "balance": "42766.25",
            "appid": APPID,
        }
        assert second["data"]["token"] != first["data"]["token"]
        # Both tokens stay valid.
        for token in (first["data"]["token"], second["data"]["token"]):
            wallet = await gw.post(WALLET, {"token": token, "currency": "usdt"})
            assert wallet == {
                "data": {"currency": "usdt", "balance": "42766.25"},
                "code": 0,
                "msg": "ok",
            }
        # The default currency is created with its configured spelling ("USDT" -> "usdt").
        other = await gw.post(
            AUTHORIZE, {"appid": OTHER_APPID, "uname": "p", "nickname": "n"}, key=OTHER_KEY
        )
        assert other["data"]["balance"] == "0"

    run(tmp_path, redis_url, scenario)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hgetall("wg:{1006:p}:acct") == {"known": "1", "bal:usdt": "0"}
    assert [r["kind"] for r in journal(redis_url)] == ["adjust"]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"nickname": "n"}, 10009),  # uname missing
        ({"uname": 1003803, "nickname": "n"}, 10023),
        ({"uname": "a:b", "nickname": "n"}, 10009),
        ({"uname": "", "nickname": "n"}, 10009),
        ({"uname": "u"}, 10009),  # nickname missing
        ({"uname": "u", "nickname": None}, 10023),
        ({"uname": "u", "nickname": "n" * 41}, 10009),
        ({"uname": "u", "nickname": "é" * 21}, 10009),  # 42 bytes
        ({"uname": "u", "nickname": "é" * 20}, 0),  # 40 bytes
        ({"uname": "u", "nickname": "n", "timestamp": "1711954264"}, 10023),
        ({"uname": "u", "nickname": "n", "timestamp": 1.5}, 10009),
        ({"uname": "u", "nickname": "n", "timestamp": -1}, 10009),
    ],
)
def test_authorize_validation(
    tmp_path: Path, redis_url: str, fields: dict[str, Any], code: int
) -> None:
    async def scenario(gw: Gateway) -> None:
        answer = await gw.post(AUTHORIZE, fields)
        assert answer["code"] == code, answer
        if code:
            assert set(answer) == {"code", "msg"}

    run(tmp_path, redis_url, scenario)


def test_authorize_missing_timestamp_and_seed_row_4_invalid_json(
    tmp_path: Path, redis_url: str
) -> None:
    async def scenario(gw: Gateway) -> None:
        body = b'{"appid":"1005","uname":"u","nickname":"n"}'
        assert await gw.raw(AUTHORIZE, body) == error(10009, "illegal parameter")
        # The seed example: a trailing comma and an extra "}".
        seed = b'{\n"appid": "1005",\n"timestamp": 1711954264,\n"uname": "u",\n"nickname": "n",\n}}'
        assert await gw.raw(AUTHORIZE, seed) == error(10009, "illegal parameter")

    run(tmp_path, redis_url, scenario)


# -- tenant and signature (every endpoint) --------------------------------------------------


@pytest.mark.parametrize("path", [AUTHORIZE, TRANSFER, STATUS, WALLET])
def test_tenant_and_sign_errors_on_every_endpoint(
    tmp_path: Path, redis_url: str, path: str
) -> None:
    async def scenario(gw: Gateway) -> None:
        fields = {
            "uname": "u",
            "nickname": "n",
            "token": "t",
            "tx_id": "x",
            "currency": "usdt",
            "amount": "1",
        }
        assert await gw.post(path, {**fields, "appid": "9999"}) == error(
            10022, "merchant not found"
        )
        assert await gw.post(path, {**fields, "appid": "10013"}, key=MINIGAME_KEY) == error(
            10021, "wrong wallet type"
        )
        assert await gw.post(path, {**fields, "appid": 1005}) == error(10009, "illegal parameter")
        assert await gw.post(path, {k: v for k, v in fields.items()}, key=None) == error(
            10002, "sign invalid"
        )
        assert await gw.post(path, fields, key="wrong-key") == error(10002, "sign invalid")
        assert await gw.post(path, fields, key=OTHER_KEY) == error(10002, "sign invalid")
        assert await gw.raw(path, b"[1,2]") == error(10009, "illegal parameter")
        assert await gw.raw(path, b"not json") == error(10009, "illegal parameter")
        assert await gw.raw(path, b"") == error(10009, "illegal parameter")
        big = orjson.dumps({"appid": APPID, "pad": "x" * 2000})
        assert await gw.raw(path, big) == error(10009, "illegal parameter")
        # The signature covers the raw query as received.
        body = orjson.dumps({"appid": APPID, "timestamp": TS, **fields})
        signed_other_query = _native.minigame_sign(b"trace_id=other", body, TRANSFER_KEY.encode())
        assert await gw.raw(path, body, sign=signed_other_query) == error(10002, "sign invalid")
        assert gw.counter("signature_failures_total") == 4
        # Duplicate keys are checked after the sign: unsigned, the answer is only 10002.
        twice = orjson.dumps({"appid": APPID, "timestamp": TS, **fields})[:-1] + b',"uname":"v"}'
        assert await gw.raw(path, twice, key="wrong-key") == error(10002, "sign invalid")
        assert await gw.raw(path, twice) == error(10009, "illegal parameter")
        assert gw.counter("signature_failures_total") == 5
        # So is JSON that orjson refuses but that names its merchant (an integer beyond a
        # double, a lone surrogate escape).
        for extra in (b',"x":' + b"9" * 400, b',"x":"\\ud800"'):
            odd = orjson.dumps({"appid": APPID, "timestamp": TS, **fields})[:-1] + extra + b"}"
            assert await gw.raw(path, odd, key="wrong-key") == error(10002, "sign invalid")
        assert gw.counter("signature_failures_total") == 7
        # An uppercase hex sign is accepted.
        upper = _native.minigame_sign(QUERY, body, TRANSFER_KEY.encode()).upper()
        answer = await gw.raw(path, body, sign=upper)
        assert answer["code"] != 10002
        response = await gw.client.get(path)
        assert response.status_code == 405

    run(tmp_path, redis_url, scenario)


# -- transfer -------------------------------------------------------------------------------


def test_transfer_success_failure_replay_conflict_and_status(
    tmp_path: Path, redis_url: str
) -> None:
    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("1003803")
        base = {"token": token, "currency": "usdt"}
        ok = await gw.post(TRANSFER, {**base, "amount": "1000.01", "tx_id": "etx0917yn"})
        assert ok["code"] == 0 and ok["msg"] == "ok"
        assert ok["data"]["tx_id"] == "etx0917yn" and ok["data"]["state"] == 1
        ptx_id = ok["data"]["ptx_id"]
        assert isinstance(ptx_id, str) and ptx_id.isdigit()
        fail = await gw.post(TRANSFER, {**base, "amount": "-1000.02", "tx_id": "etx0917yo"})
        assert fail["code"] == 10001 and fail["msg"] == "balance is not enough"
        assert fail["data"]["state"] == 0 and fail["data"]["tx_id"] == "etx0917yo"
        assert fail["data"]["ptx_id"] != ptx_id
        # Replays give the original answers, whatever happened since.
        out = await gw.post(TRANSFER, {**base, "amount": -1000.01, "tx_id": "out-all"})
        assert out["data"]["state"] == 1
        assert await gw.post(TRANSFER, {**base, "amount": "1000.01", "tx_id": "etx0917yn"}) == ok
        assert await gw.post(TRANSFER, {**base, "amount": 1000.0100, "tx_id": "etx0917yn"}) == ok
        assert await gw.post(TRANSFER, {**base, "amount": "-1000.02", "tx_id": "etx0917yo"}) == fail
        assert gw.counter("idempotent_replays_total") == 3
        # Another fingerprint: amount or currency.
        assert await gw.post(
            TRANSFER, {**base, "amount": "1000.02", "tx_id": "etx0917yn"}
        ) == error(10005, "duplicate order")
        assert await gw.post(
            TRANSFER, {**base, "currency": "usd", "amount": "1000.01", "tx_id": "etx0917yn"}
        ) == error(10005, "duplicate order")
        assert gw.counter("idempotency_conflicts_total") == 2
        # Status, with the sign of the request.
        status = await gw.post(STATUS, {"token": token, "tx_id": "etx0917yn"})
        assert status == {
            "data": {"currency": "usdt", "amount": "1000.01", "state": 1},
            "code": 0,
            "msg": "ok",
        }
        status = await gw.post(STATUS, {"token": token, "tx_id": "etx0917yo"})
        assert status == {
            "data": {"currency": "usdt", "amount": "-1000.02", "state": 0},
            "code": 0,
            "msg": "ok",
        }
        assert await gw.post(STATUS, {"token": token, "tx_id": "nope"}) == error(
            10020, "transaction not found"
        )
        # Another player's tx_id is unknown to this one.
        other = await gw.authorize("someone-else")
        assert await gw.post(STATUS, {"token": other, "tx_id": "etx0917yn"}) == error(
            10020, "transaction not found"
        )
        wallet = await gw.post(WALLET, {"token": token, "currency": "usdt"})
        assert wallet["data"]["balance"] == "0"
        # The stored record renders the original answer (GET /admin/v1/transactions).
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        record = await client.hgetall(f"wg:{{{APPID}:1003803}}:tx:etx0917yn")
        assert proto.render_stored(record) == ok
        record = await client.hgetall(f"wg:{{{APPID}:1003803}}:tx:etx0917yo")
        assert proto.render_stored(record) == fail
        await client.aclose()

    run(tmp_path, redis_url, scenario)
    records = journal(redis_url)
    assert sorted((r["kind"], r["result"]) for r in records) == [
        ("reject", "10001"),
        ("transfer", "0"),
        ("transfer", "0"),
    ]
    assert all(r["proto"] == "transfer" for r in records)
    refs = [orjson.loads(r["refs"]) for r in records]
    assert all(ref["trace_id"] == "tr-0001" for ref in refs)
    assert sorted(ref["tx_id"] for ref in refs) == ["etx0917yn", "etx0917yo", "out-all"]


def test_seed_status_example_and_answer(tmp_path: Path, redis_url: str) -> None:
    async def scenario(gw: Gateway) -> None:
        # Seed row 1: the status example repeats "token" and has no tx_id.
        seed = (
            b'{\n    "appid": "1005",\n    "timestamp": 1711954264,\n'
            b'    "token": "50f15a92-ee8d-11ee-9a61-00ff3fae08f7",\n'
            b'    "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"\n}'
        )
        assert await gw.raw(STATUS, seed) == error(10009, "illegal parameter")
        token = await gw.authorize("u1")
        assert await gw.post(STATUS, {"token": token}) == error(10009, "illegal parameter")
        # The seed's answer, reproduced: amount is a string with no trailing zeros.
        await gw.post(
            TRANSFER, {"token": token, "currency": "USDT", "amount": 4299.10, "tx_id": "seed-tx"}
        )
        assert await gw.post(STATUS, {"token": token, "tx_id": "seed-tx"}) == {
            "data": {"currency": "usdt", "amount": "4299.1", "state": 1},
            "code": 0,
            "msg": "ok",
        }

    run(tmp_path, redis_url, scenario)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"amount": "0"}, 10009),
        ({"amount": 0}, 10009),
        ({"amount": "-0"}, 10009),
        ({"amount": "1.00000"}, 10009),
        ({"amount": "1e2"}, 10009),
        ({"amount": "+1"}, 10009),
        ({"amount": " 1"}, 10009),
        ({"amount": ""}, 10009),
        ({"amount": "922337203685477.5808"}, 10009),
        ({"amount": "-922337203685477.5808"}, 10009),
        ({"amount": True}, 10023),
        ({"amount": None}, 10023),
        ({"amount": [1]}, 10023),
        ({"amount": {"v": 1}}, 10023),
        ({"tx_id": "x" * 65}, 10009),
        ({"tx_id": ""}, 10009),
        ({"tx_id": "a\nb"}, 10009),
        ({"tx_id": 17}, 10023),
        ({"currency": "eur"}, 10019),
        ({"currency": 1}, 10023),
        ({"token": 5}, 10023),
        ({"token": "unknown-token"}, 10011),
        ({"token": "a{b}c"}, 10011),
        ({"token": "t" * 600}, 10011),
        ({"timestamp": "1"}, 10023),
        ({"timestamp": None}, 10023),
    ],
)
def test_transfer_validation(
    tmp_path: Path, redis_url: str, fields: dict[str, Any], code: int
) -> None:
    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        await gw.fund("u1", "10")
        body = {"token": token, "currency": "usdt", "amount": "1", "tx_id": "v1", **fields}
        answer = await gw.post(TRANSFER, body)
        assert answer == error(code, proto.MESSAGES[code])
        # Nothing applied, nothing stored: the same tx_id then works.
        ok = await gw.post(
            TRANSFER, {"token": token, "currency": "usdt", "amount": "1", "tx_id": "v1"}
        )
        assert ok["code"] == 0 and ok["data"]["state"] == 1

    run(tmp_path, redis_url, scenario)


@pytest.mark.parametrize("missing", ["token", "currency", "amount", "tx_id", "timestamp"])
def test_transfer_missing_field(tmp_path: Path, redis_url: str, missing: str) -> None:
    async def scenario(gw: Gateway) -> None:
        body = {
            "appid": APPID,
            "timestamp": TS,
            "token": "t",
            "currency": "usdt",
            "amount": "1",
            "tx_id": "m",
        }
        del body[missing]
        assert await gw.raw(TRANSFER, orjson.dumps(body)) == error(10009, "illegal parameter")

    run(tmp_path, redis_url, scenario)


def test_transfer_faults_answer_in_the_seamless_step_order(tmp_path: Path, redis_url: str) -> None:
    """Transfer follows the seamless steps: with several faults in one request, a wrong JSON
    type (10023) answers before a missing field or a bad format (10009), and those before the
    token (10011) and the currency (10019)."""

    async def scenario(gw: Gateway) -> None:
        body = {"appid": APPID, "timestamp": "x", "currency": "usdt", "amount": "1", "tx_id": "o"}
        assert await gw.raw(TRANSFER, orjson.dumps(body)) == error(10023, proto.MESSAGES[10023])
        body["timestamp"] = TS
        assert await gw.raw(TRANSFER, orjson.dumps(body)) == error(10009, "illegal parameter")
        body["token"] = 5
        assert await gw.raw(TRANSFER, orjson.dumps(body)) == error(10023, proto.MESSAGES[10023])
        # An unknown token and an unsupported currency: the token (the player) answers first.
        stranger = {**body, "token": "no-such-token", "currency": "eur"}
        assert await gw.post(TRANSFER, stranger) == error(10011, "token invalid")
        assert await gw.post(WALLET, {"token": "no-such-token", "currency": "eur"}) == error(
            10011, "token invalid"
        )

    run(tmp_path, redis_url, scenario)


def test_amount_as_string_or_number_seed_row_6(tmp_path: Path, redis_url: str) -> None:
    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        base = {"token": token, "currency": "usdt"}
        raw = orjson.dumps({"appid": APPID, "timestamp": TS, **base, "tx_id": "n1"})
        raw = raw[:-1] + b',"amount":12.3400}'
        assert (await gw.raw(TRANSFER, raw))["code"] == 0
        assert (await gw.post(TRANSFER, {**base, "amount": "-2.34", "tx_id": "n2"}))["code"] == 0
        assert (await gw.post(TRANSFER, {**base, "amount": 5, "tx_id": "n3"}))["code"] == 0
        wallet = await gw.post(WALLET, {"token": token, "currency": "USDT"})
        assert wallet == {"data": {"currency": "usdt", "balance": "15"}, "code": 0, "msg": "ok"}

    run(tmp_path, redis_url, scenario)


def test_token_of_another_appid_or_expired_is_refused(tmp_path: Path, redis_url: str) -> None:
    async def scenario(gw: Gateway) -> None:
        foreign = await gw.authorize("u1", appid=OTHER_APPID, key=OTHER_KEY)
        for path, fields in [
            (TRANSFER, {"currency": "usdt", "amount": "1", "tx_id": "f1"}),
            (STATUS, {"tx_id": "f1"}),
            (WALLET, {"currency": "usdt"}),
        ]:
            assert await gw.post(path, {"token": foreign, **fields}) == error(
                10011, "token invalid"
            )
        client = redis.asyncio.Redis.from_url(redis_url)
        await gw.authorize("u2")
        await client.hset("wg:{ttok:1005:old}", mapping={"player": "u2", "expires_at": "1000"})
        await client.aclose()
        assert await gw.post(WALLET, {"token": "old", "currency": "usdt"}) == error(
            10011, "token invalid"
        )

    run(tmp_path, redis_url, scenario)


def test_token_expires_after_token_ttl(tmp_path: Path, redis_url: str) -> None:
    def short_ttl(raw: dict[str, Any]) -> None:
        raw["transfer"]["token_ttl_s"] = 60

    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        ttl = await client.ttl(f"wg:{{ttok:1005:{token}}}")
        await client.aclose()
        assert 55 <= ttl <= 60
        expires_at = int(time.time()) + 60
        real_time = time.time
        try:
            lt.time.time = lambda: expires_at + 1.0  # type: ignore[attr-defined]
            assert await gw.post(WALLET, {"token": token, "currency": "usdt"}) == error(
                10011, "token invalid"
            )
        finally:
            lt.time.time = real_time  # type: ignore[attr-defined]

    run(tmp_path, redis_url, scenario, short_ttl)


def test_transfer_overflow_is_refused_and_not_stored(tmp_path: Path, redis_url: str) -> None:
    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        base = {"token": token, "currency": "usdt"}
        top = await gw.post(TRANSFER, {**base, "amount": "922337203685477.5807", "tx_id": "max"})
        assert top["code"] == 0
        assert await gw.post(TRANSFER, {**base, "amount": "0.0001", "tx_id": "over"}) == error(
            10009, "illegal parameter"
        )
        assert await gw.post(STATUS, {"token": token, "tx_id": "over"}) == error(
            10020, "transaction not found"
        )
        wallet = await gw.post(WALLET, {"token": token, "currency": "usdt"})
        assert wallet["data"]["balance"] == "922337203685477.5807"

    run(tmp_path, redis_url, scenario)


def test_pending_state_2_seed_row_3(tmp_path: Path, redis_url: str) -> None:
    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        await gw.fund("u1", "10")
        admitted = await lt.admit_transfer(
            gw.ctx.ledger,
            tenant=APPID,
            player="u1",
            currency="usdt",
            amount_units=-50_000,
            tx_id="pend",
            refs={},
            pending_ttl_s=30,
        )
        body = {"token": token, "currency": "usdt", "amount": "-5", "tx_id": "pend"}
        pending = await gw.post(TRANSFER, body)
        assert pending == {
            "data": {"tx_id": "pend", "ptx_id": admitted.ptx_id, "state": 2},
            "code": 0,
            "msg": "ok",
        }
        assert await gw.post(STATUS, {"token": token, "tx_id": "pend"}) == {
            "data": {"currency": "usdt", "amount": "-5", "state": 2},
            "code": 0,
            "msg": "ok",
        }
        assert (await gw.post(TRANSFER, {**body, "amount": "-6"}))["code"] == 10005
        await lt.commit_transfer(
            gw.ctx.ledger,
            tenant=APPID,
            player="u1",
            currency="usdt",
            amount_units=-50_000,
            tx_id="pend",
            refs={},
            pending_ttl_s=30,
        )
        assert await gw.post(TRANSFER, body) == {
            "data": {"tx_id": "pend", "ptx_id": admitted.ptx_id, "state": 1},
            "code": 0,
            "msg": "ok",
        }
        assert (await gw.post(STATUS, {"token": token, "tx_id": "pend"}))["data"]["state"] == 1

    run(tmp_path, redis_url, scenario)


# -- getPlayerWallet ------------------------------------------------------------------------


def test_get_player_wallet(tmp_path: Path, redis_url: str) -> None:
    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        await gw.fund("u1", "999.999")
        assert await gw.post(WALLET, {"token": token, "currency": "usdt"}) == {
            "data": {"currency": "usdt", "balance": "999.999"},
            "code": 0,
            "msg": "ok",
        }
        assert await gw.post(WALLET, {"token": token, "currency": "USD"}) == {
            "data": {"currency": "usd", "balance": "0"},
            "code": 0,
            "msg": "ok",
        }
        assert await gw.post(WALLET, {"token": token, "currency": "eur"}) == error(
            10019, "unsupported currency"
        )
        assert await gw.post(WALLET, {"token": token}) == error(10009, "illegal parameter")
        assert await gw.post(WALLET, {"token": token, "currency": ["usdt"]}) == error(
            10023, "parameter type mismatch"
        )
        assert await gw.post(WALLET, {"currency": "usdt"}) == error(10009, "illegal parameter")
        assert await gw.post(WALLET, {"token": "zz", "currency": "usdt"}) == error(
            10011, "token invalid"
        )

    run(tmp_path, redis_url, scenario)


# -- failures -------------------------------------------------------------------------------


def test_redis_unavailable_answers_10015(tmp_path: Path, fresh_redis: RedisServer) -> None:
    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        fresh_redis.stop()
        for path, fields in [
            (AUTHORIZE, {"uname": "u2", "nickname": "n"}),
            (TRANSFER, {"token": token, "currency": "usdt", "amount": "1", "tx_id": "r"}),
            (STATUS, {"token": token, "tx_id": "r"}),
            (WALLET, {"token": token, "currency": "usdt"}),
        ]:
            assert await gw.post(path, fields) == error(10015, "internal error")
        assert gw.counter("redis_errors_total", ()) == 4

    run(tmp_path, fresh_redis.url, scenario)


def test_unexpected_error_answers_10015_without_details(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        monkeypatch.setattr(lt, "transfer", broken)
        response = await gw.client.post(
            TRANSFER + "?trace_id=x",
            content=(
                body := orjson.dumps(
                    {
                        "appid": APPID,
                        "timestamp": TS,
                        "token": token,
                        "currency": "usdt",
                        "amount": "1",
                        "tx_id": "e",
                    }
                )
            ),
            headers={"sign": _native.minigame_sign(b"trace_id=x", body, TRANSFER_KEY.encode())},
        )
        assert response.status_code == 200
        assert orjson.loads(response.content) == error(10015, "internal error")
        assert b"secret" not in response.content

    run(tmp_path, redis_url, scenario)


def test_clock_skew_gauge_and_log_note(tmp_path: Path, redis_url: str) -> None:
    async def scenario(gw: Gateway) -> None:
        token = await gw.authorize("u1")
        await gw.post(
            TRANSFER,
            {
                "token": token,
                "currency": "usdt",
                "amount": "1",
                "tx_id": "k",
                "timestamp": int(time.time()) - 100,
            },
        )
        skew = gw.ctx.metrics.gauges[("clock_skew_seconds", FAMILY)]
        assert -102 < skew < -98

    run(tmp_path, redis_url, scenario)
