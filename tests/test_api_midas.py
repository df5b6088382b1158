"""Midas v1 through the ASGI app: the spec's examples, its errcode table and seed inconsistencies.

Requests are signed here with the standard library's HMAC (not with walletgate._native), so the
gateway's signature checks are tested against an independent implementation of the recipe.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from conftest import free_port
from gateway_helpers import (
    MIDAS_ACCESS_TOKEN,
    MIDAS_APP_KEY,
    MIDAS_SANDBOX_KEY,
    config_dict,
    make_app,
    make_config,
    make_context,
)
from walletgate.config import parse_config
from walletgate.ledger.admin import adjust
from walletgate.ledger.sessions import register_session
from walletgate.protocols.common import GatewayContext
from walletgate.protocols.midas import render_stored, routes

APPID = "wx1234567"
OPENID = "odkx20ENSNa2w5y3g_qOkOvBNM1g"
SESSION_KEY = "V7Q38/i2KXaqrQyl2Yx9Hg=="
COIN = 10_000
GETBALANCE = "/cgi-bin/midas/getbalance"
PAY = "/cgi-bin/midas/pay"
CANCELPAY = "/cgi-bin/midas/cancelpay"
PRESENT = "/cgi-bin/midas/present"
SANDBOX = "/cgi-bin/midas/sandbox/"
TUTORIAL_SIG = "1ad64e8dcb2ec1dc486b7fdf01f4a15159fc623dc3422470e51cf6870734726b"
TUTORIAL_MP_SIG = "ff4c5bb39dea1002a8f03be0438724e1a8bcea5ebce8f221f9b9fea3bcf3bf76"
SEED_SIG = "d1f0a41272f9b85618361323e1b19cd8cb0213f21b935aeaa39c160892031e97"


def base_params(**extra: Any) -> dict[str, Any]:
    """The tutorial's parameters, in the seed document's order, plus ``extra``."""
    params: dict[str, Any] = {
        "openid": OPENID,
        "appid": APPID,
        "offer_id": "12345678",
        "ts": 1507530737,
        "zone_id": "1",
        "pf": "android",
    }
    params.update(extra)
    return params


def _hmac(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def _joined(pairs: dict[str, Any]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(pairs.items()))


def make_sig(params: dict[str, Any], path: str, app_key: str = MIDAS_APP_KEY) -> str:
    signed = {k: v for k, v in params.items() if k not in ("sig", "mp_sig", "access_token")}
    return _hmac(app_key, _joined(signed) + f"&org_loc={path}&method=POST&secret={app_key}")


def make_mp_sig(
    params: dict[str, Any],
    path: str,
    sig: str,
    session_key: str = SESSION_KEY,
    token: str = MIDAS_ACCESS_TOKEN,
) -> str:
    signed = {k: v for k, v in params.items() if k not in ("sig", "mp_sig", "access_token")}
    signed.update(access_token=token, sig=sig)
    return _hmac(
        session_key, _joined(signed) + f"&org_loc={path}&method=POST&session_key={session_key}"
    )


def signed(
    params: dict[str, Any],
    path: str,
    *,
    app_key: str = MIDAS_APP_KEY,
    session_key: str = SESSION_KEY,
    sig: str | None = None,
    mp_sig: str | None = None,
) -> dict[str, Any]:
    body = dict(params)
    body["sig"] = sig if sig is not None else make_sig(params, path, app_key)
    body["mp_sig"] = (
        mp_sig if mp_sig is not None else make_mp_sig(params, path, body["sig"], session_key)
    )
    return body


@dataclass
class Gateway:
    ctx: GatewayContext
    client: httpx.AsyncClient

    async def post(
        self,
        path: str,
        body: dict[str, Any] | bytes,
        *,
        query: str = "access_token=" + MIDAS_ACCESS_TOKEN,
    ) -> dict[str, Any]:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        url = path + ("?" + query if query else "")
        response = await self.client.post(
            url, content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text
        payload = response.json()
        assert isinstance(payload, dict)
        return payload

    async def call(self, path: str, params: dict[str, Any], **sign: Any) -> dict[str, Any]:
        return await self.post(path, signed(params, path, **sign))

    async def session(
        self, openid: str = OPENID, session_key: str = SESSION_KEY, ttl_s: int = 3600
    ) -> None:
        expires = await register_session(
            self.ctx.ledger,
            tenant=APPID,
            player=openid,
            currency="1",
            token="h-" + openid,
            ttl_s=ttl_s,
            session_key=session_key,
        )
        assert expires is not None

    async def save(self, coins: int, currency: str = "1", openid: str = OPENID) -> None:
        result = await adjust(
            self.ctx.ledger,
            tenant=APPID,
            player=openid,
            currency=currency,
            amount_units=coins * COIN,
            ref=f"save-{currency}-{coins}",
            kind="save",
        )
        assert result.outcome == "applied"

    def counter(self, name: str) -> float:
        return self.ctx.metrics.counters.get((name, (("family", "midas"),)), 0.0)


def run_gateway(
    tmp_path: Path,
    redis_url: str,
    body: Callable[[Gateway], Awaitable[None]],
    raw_config: dict[str, Any] | None = None,
    notes: list[dict[str, Any]] | None = None,
) -> None:
    """``notes`` (when given) gets what each request left for the access log."""

    async def scenario() -> None:
        if raw_config is None:
            config = make_config(tmp_path / "journal", redis_url)
        else:
            raw_config["redis"]["url"] = redis_url
            config = parse_config(raw_config)
        ctx = make_context(config)
        app = make_app(routes(ctx))

        async def noting(scope: Any, receive: Any, send: Any) -> None:
            await app(scope, receive, send)
            if notes is not None and scope["type"] == "http":
                notes.append(scope.get("wg.log", {}))

        transport = httpx.ASGITransport(app=noting)
        async with httpx.AsyncClient(transport=transport, base_url="http://walletgate") as client:
            try:
                await body(Gateway(ctx, client))
            finally:
                await ctx.ledger.runner.close()

    asyncio.run(scenario())


def journal_kinds(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    records = [fields for key in client.keys("wg:{j*}:journal") for _, fields in client.xrange(key)]
    client.close()
    return [r["kind"] for r in sorted(records, key=lambda r: (r["currency"], int(r["seq"])))]


def error(code: int, message: str) -> dict[str, Any]:
    return {"errcode": code, "errmsg": message}


# --- the spec's examples and the signature vectors ------------------------------------------


def test_signer_reproduces_the_official_and_derived_vectors() -> None:
    assert make_sig(base_params(), GETBALANCE) == TUTORIAL_SIG
    assert make_mp_sig(base_params(), GETBALANCE, TUTORIAL_SIG) == TUTORIAL_MP_SIG
    pay = base_params(amt=10, bill_no="BILL0001")
    assert make_sig(pay, PAY) == "14706e70591862f7d6123db4ca13dc407790034db5ca2f48656349943fb66b99"


def test_tutorial_getbalance_and_the_spec_example(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        request = dict(base_params(), sig=TUTORIAL_SIG, mp_sig=TUTORIAL_MP_SIG)
        assert await gw.post(GETBALANCE, request) == {
            "errcode": 0,
            "errmsg": "ok",
            "balance": 0,
            "gen_balance": 0,
            "first_save": 1,
            "save_amt": 0,
            "save_sum": 0,
            "cost_sum": 0,
            "present_sum": 0,
        }
        await gw.save(100)
        gift = await gw.call(PRESENT, base_params(bill_no="P0001", present_counts=10))
        assert gift == {"errcode": 0, "errmsg": "ok", "balance": 110, "bill_no": "P0001"}
        # seed inconsistency 2: first_save is the integer 2 after a save
        assert await gw.post(GETBALANCE, request) == {
            "errcode": 0,
            "errmsg": "ok",
            "balance": 110,
            "gen_balance": 10,
            "first_save": 2,
            "save_amt": 100,
            "save_sum": 100,
            "cost_sum": 0,
            "present_sum": 10,
        }

    run_gateway(tmp_path, redis_url, body)


def test_seed_getbalance_example_fails_its_sig(tmp_path: Path, redis_url: str) -> None:
    """Seed inconsistency 1: the API page's sig cannot be reproduced, so 90011."""

    async def body(gw: Gateway) -> None:
        await gw.session()
        seed = (
            b'{\n    "openid":"odkx20ENSNa2w5y3g_qOkOvBNM1g",\n    "appid":"wx1234567",\n'
            b'    "offer_id":"12345678",\n    "ts":1507530737,\n    "zone_id":"1",\n'
            b'    "pf":"android",\n    "sig":"' + SEED_SIG.encode() + b'",\n'
            b'    "mp_sig":"' + TUTORIAL_MP_SIG.encode() + b'"\n}'
        )
        assert await gw.post(GETBALANCE, seed) == error(90011, "sig error")
        placeholder_mp = "1314420754fee7a7a149790d10fd0b2dc9b2fdc54eed0d1ee2d282ad5bb01e44"
        again = dict(base_params(), sig=SEED_SIG, mp_sig=placeholder_mp)
        assert await gw.post(GETBALANCE, again) == error(90011, "sig error")
        assert gw.counter("signature_failures_total") == 2

    run_gateway(tmp_path, redis_url, body)


def test_pay_vector_cancelpay_and_replays(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.save(90)
        await gw.call(PRESENT, base_params(bill_no="GIFT10", present_counts=10))
        pay = dict(
            base_params(amt=10, bill_no="BILL0001"),
            sig="14706e70591862f7d6123db4ca13dc407790034db5ca2f48656349943fb66b99",
            mp_sig="c53c5b4f57e94dee76989622eb6590dea9ab161ff0d84bf5cb89c51f1e6cae25",
        )
        expected = {
            "errcode": 0,
            "errmsg": "ok",
            "bill_no": "BILL0001",
            "balance": 90,
            "used_gen_amt": 10,
        }
        assert await gw.post(PAY, pay) == expected
        # seed inconsistency 4: an identical retry replays 0 with the original balance
        await gw.save(5)
        assert await gw.post(PAY, pay) == expected
        assert gw.counter("idempotent_replays_total") == 1
        cancel = base_params(bill_no="BILL0001")
        assert await gw.call(CANCELPAY, cancel) == {
            "errcode": 0,
            "errmsg": "ok",
            "bill_no": "BILL0001",
        }
        assert await gw.call(CANCELPAY, cancel) == error(90015, "order already rolled back")
        assert await gw.post(PAY, pay) == expected  # still the original answer
        balance = await gw.call(GETBALANCE, base_params())
        assert (balance["balance"], balance["gen_balance"], balance["cost_sum"]) == (105, 10, 0)

    run_gateway(tmp_path, redis_url, body)
    assert journal_kinds(redis_url) == ["save", "present", "pay", "save", "cancelpay"]


def test_pay_item_and_app_remark_are_logged_once_signed(tmp_path: Path, redis_url: str) -> None:
    """The spec logs a pay's pay_item and app_remark: they reach the access log (cut to a
    bound, being free text), and only from a request whose signature held."""
    notes: list[dict[str, Any]] = []

    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.save(10)
        params = base_params(amt=1, bill_no="LOG1", pay_item="item-42", app_remark="r" * 300)
        assert (await gw.call(PAY, params))["errcode"] == 0
        unsigned = dict(signed(dict(params, bill_no="LOG2"), PAY), pay_item="forged")
        assert (await gw.post(PAY, unsigned))["errcode"] == 90011

    run_gateway(tmp_path, redis_url, body, notes=notes)
    assert notes[0]["refs"] == {"bill_no": "LOG1", "pay_item": "item-42", "app_remark": "r" * 256}
    assert notes[1]["result"] == 90011 and "pay_item" not in notes[1]["refs"]


def test_stored_outcomes_render_the_original_bodies(tmp_path: Path, redis_url: str) -> None:
    answers: dict[str, dict[str, Any]] = {}

    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.save(100)
        answers["P1"] = await gw.call(PRESENT, base_params(bill_no="P1", present_counts=3))
        answers["B1"] = await gw.call(PAY, base_params(bill_no="B1", amt=20))
        answers["B2"] = await gw.call(PAY, base_params(bill_no="B2", amt=1000))

    run_gateway(tmp_path, redis_url, body)
    assert answers["B2"] == error(90013, "balance not enough")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for bill_no, answer in answers.items():
        record = client.hgetall("wg:{" + APPID + ":" + OPENID + "}:tx:" + bill_no)
        assert render_stored(record) == answer


# --- the errcode table -----------------------------------------------------------------------


def test_present_example_and_insufficient_balance(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.save(100)
        present = base_params(bill_no="P0001", present_counts=10)
        assert await gw.call(PRESENT, present) == {
            "errcode": 0,
            "errmsg": "ok",
            "balance": 110,
            "bill_no": "P0001",
        }
        short = base_params(bill_no="BIG", amt=111)
        assert await gw.call(PAY, short) == error(90013, "balance not enough")
        await gw.save(1000)
        # stored: still 90013 (seed inconsistency 4: never -1 for insufficient funds)
        assert await gw.call(PAY, short) == error(90013, "balance not enough")
        exact = await gw.call(PAY, base_params(bill_no="ALL", amt=1110))
        assert exact == {
            "errcode": 0,
            "errmsg": "ok",
            "bill_no": "ALL",
            "balance": 0,
            "used_gen_amt": 10,
        }

    run_gateway(tmp_path, redis_url, body)
    assert journal_kinds(redis_url) == ["save", "present", "reject", "save", "pay"]


def test_bill_no_reuse_with_another_payload_is_90012(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.save(100)
        assert (await gw.call(PAY, base_params(bill_no="B1", amt=5)))["errcode"] == 0
        conflict = error(90012, "order already exists")
        assert await gw.call(PAY, base_params(bill_no="B1", amt=6)) == conflict
        assert await gw.call(PAY, base_params(bill_no="B1", amt=5, zone_id="2")) == conflict
        assert await gw.call(PRESENT, base_params(bill_no="B1", present_counts=5)) == conflict
        assert (
            await gw.call(
                SANDBOX + "pay", base_params(bill_no="B1", amt=5), app_key=MIDAS_SANDBOX_KEY
            )
            == conflict
        )
        # fields outside the fingerprint do not conflict
        replay = await gw.call(
            PAY, base_params(bill_no="B1", amt=5, ts=1507539999, pay_item="sword")
        )
        assert replay == {
            "errcode": 0,
            "errmsg": "ok",
            "bill_no": "B1",
            "balance": 95,
            "used_gen_amt": 0,
        }
        assert gw.counter("idempotency_conflicts_total") == 4

    run_gateway(tmp_path, redis_url, body)


def test_cancelpay_without_matching_pay_is_90000(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.session(openid="another")
        await gw.save(100)
        await gw.call(PAY, base_params(bill_no="PAID", amt=1))
        await gw.call(PRESENT, base_params(bill_no="GIFT", present_counts=1))
        await gw.call(PAY, base_params(bill_no="FAILED", amt=10_000))
        missing = error(90000, "order not exist")
        for bill_no in ("NEVER", "GIFT", "FAILED"):
            assert await gw.call(CANCELPAY, base_params(bill_no=bill_no)) == missing
        assert await gw.call(CANCELPAY, base_params(bill_no="PAID", zone_id="2")) == missing
        assert (
            await gw.call(
                SANDBOX + "cancelpay", base_params(bill_no="PAID"), app_key=MIDAS_SANDBOX_KEY
            )
            == missing
        )
        assert await gw.call(CANCELPAY, base_params(bill_no="PAID", openid="another")) == missing

    run_gateway(tmp_path, redis_url, body)
    assert journal_kinds(redis_url) == ["save", "pay", "present", "reject"]


def test_credentials_40001_and_offer_id_90017(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        good = signed(base_params(), GETBALANCE)
        invalid = error(40001, "invalid credential")
        assert await gw.post(GETBALANCE, dict(good, appid="wx0000000")) == invalid
        assert await gw.post(GETBALANCE, {k: v for k, v in good.items() if k != "appid"}) == invalid
        assert await gw.post(GETBALANCE, good, query="access_token=WRONG") == invalid
        assert await gw.post(GETBALANCE, good, query="") == invalid
        both = "access_token=ACCESSTOKEN&access_token=ACCESSTOKEN"
        assert await gw.post(GETBALANCE, good, query=both) == invalid
        # seed inconsistency 3: a body access_token is ignored (never read, never signed)
        assert (
            await gw.post(GETBALANCE, dict(good, access_token=MIDAS_ACCESS_TOKEN), query="")
            == invalid
        )
        answer = await gw.post(GETBALANCE, dict(good, access_token="anything"))
        assert answer["errcode"] == 0
        # check order: credentials before offer_id, offer_id before field validation
        assert await gw.post(GETBALANCE, dict(good, offer_id="1"), query="") == invalid
        no_perm = error(90017, "no permission")
        assert await gw.call(GETBALANCE, base_params(offer_id="87654321")) == no_perm
        assert await gw.call(GETBALANCE, base_params(offer_id=12345678)) == no_perm
        no_offer = {k: v for k, v in base_params().items() if k != "offer_id"}
        assert await gw.call(GETBALANCE, no_offer) == no_perm
        assert await gw.call(GETBALANCE, base_params(offer_id="x", openid=None)) == error(
            90018, "parameter error"
        )  # a null value fails step 1 first
        assert await gw.call(GETBALANCE, base_params(offer_id="x", pf="")) == no_perm

    run_gateway(tmp_path, redis_url, body)


def test_parameter_errors_90018(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.save(100)
        bad = error(90018, "parameter error")
        for raw in (
            b"",
            b"[]",
            b"not json",
            b'{"appid":"wx1234567","appid":"wx1234567"}',
            b'"x"',
            b"\xff",
        ):
            assert await gw.post(GETBALANCE, raw) == bad
        for value in (1.5, True, None, [1], {"a": 1}):
            assert await gw.post(GETBALANCE, signed(base_params(user_ip=value), GETBALANCE)) == bad
        too_large = orjson.dumps(signed(base_params(pf="x" * 70_000), GETBALANCE))
        assert await gw.post(GETBALANCE, too_large) == bad
        invalid_common = [
            {"openid": ""},
            {"openid": "a:b"},
            {"openid": 5},
            {"zone_id": 1},
            {"zone_id": ""},
            {"zone_id": "sandbox-1"},
            {"zone_id": "z" * 65},
            {"ts": "1507530737"},
            {"ts": -1},
            {"pf": ""},
            {"pf": 1},
            {"user_ip": 1},
        ]
        for change in invalid_common:
            assert await gw.call(GETBALANCE, {**base_params(), **change}) == bad, change
        for drop in ("openid", "ts", "zone_id", "pf"):
            params = {k: v for k, v in base_params().items() if k != drop}
            assert await gw.call(GETBALANCE, params) == bad, drop
        unsigned = base_params()
        assert await gw.post(GETBALANCE, dict(unsigned, mp_sig="00")) == bad
        assert await gw.post(GETBALANCE, dict(unsigned, sig=TUTORIAL_SIG)) == bad
        invalid_pay = [
            {"amt": 0},
            {"amt": -1},
            {"amt": "10"},
            {"amt": 922337203685478},
            {"bill_no": "B" * 64},
            {"bill_no": ""},
            {"bill_no": "B 1"},
            {"bill_no": "B:1"},
            {"bill_no": "B\n1"},
            {"bill_no": 12},
            {"pay_item": 3},
        ]
        for change in invalid_pay:
            params = {**base_params(bill_no="B1", amt=1), **change}
            assert await gw.call(PAY, params) == bad, change
        assert await gw.call(PAY, base_params(bill_no="B1")) == bad
        assert await gw.call(PRESENT, base_params(bill_no="P1", amt=1)) == bad
        assert await gw.call(PRESENT, base_params(bill_no="P1", present_counts=0)) == bad
        assert await gw.call(CANCELPAY, base_params()) == bad
        # the extremes that are valid
        longest = "aZ09_-|*@" * 7
        assert len(longest) == 63
        answer = await gw.call(PAY, base_params(bill_no=longest, amt=1))
        assert answer["errcode"] == 0 and answer["bill_no"] == longest
        assert (await gw.call(GETBALANCE, base_params(ts=0, zone_id="1_role7")))["errcode"] == 0

    run_gateway(tmp_path, redis_url, body)
    assert journal_kinds(redis_url) == ["save", "pay"]


def test_sig_errors_90011_and_check_order(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        sig_error = error(90011, "sig error")
        assert await gw.call(GETBALANCE, base_params(), sig="0" * 64) == sig_error
        assert await gw.call(GETBALANCE, base_params(), sig=TUTORIAL_SIG.upper()) == sig_error
        # production key on the sandbox path, sandbox key on production, wrong org_loc
        assert await gw.call(SANDBOX + "getbalance", base_params()) == sig_error
        assert await gw.call(GETBALANCE, base_params(), app_key=MIDAS_SANDBOX_KEY) == sig_error
        body = signed(base_params(), PAY)
        assert await gw.post(GETBALANCE, body) == sig_error
        # every body field is signed, unknown ones too
        with_extra = signed(base_params(note="x"), GETBALANCE)
        assert (await gw.post(GETBALANCE, with_extra))["errcode"] == 0
        assert await gw.post(GETBALANCE, dict(with_extra, note="y")) == sig_error
        assert await gw.post(GETBALANCE, dict(signed(base_params(), GETBALANCE), extra=1)) == (
            sig_error
        )
        # sig before the session check: no session for this openid, still 90011
        assert await gw.call(GETBALANCE, base_params(openid="nobody"), sig="1" * 64) == sig_error
        assert gw.counter("signature_failures_total") == 8

    run_gateway(tmp_path, redis_url, body)


def test_session_90010_and_mp_sig_90009(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        expired = error(90010, "session expired")
        mp_error = error(90009, "mp_sig error")
        assert await gw.call(GETBALANCE, base_params()) == expired
        assert await gw.call(PAY, base_params(bill_no="B1", amt=1)) == expired
        await gw.session()
        await gw.save(10)
        tutorial = dict(base_params(), sig=TUTORIAL_SIG)
        wrong = {
            "0d76d830ebd02e962238de44788ff419d2af047ae9ca8479567506aec82e96ad",  # no access_token
            "5234e586f55f41810281cb8144066328d6505e090b8c5e37689e59acb36063db",  # decoded key
            TUTORIAL_MP_SIG.upper(),
        }
        for mp_sig in wrong:
            assert await gw.post(GETBALANCE, dict(tutorial, mp_sig=mp_sig)) == mp_error
        assert (
            await gw.call(PAY, base_params(bill_no="B1", amt=1), session_key="another") == mp_error
        )
        assert (await gw.call(PAY, base_params(bill_no="B1", amt=1)))["errcode"] == 0
        # a session whose expiry has passed (the key itself may still exist)
        client = redis.Redis.from_url(gw.ctx.config.redis.url)
        client.hset("wg:{" + APPID + ":" + OPENID + "}:midas_session", "expires_at", "1")
        client.close()
        assert await gw.call(PAY, base_params(bill_no="B2", amt=1)) == expired
        assert await gw.call(GETBALANCE, base_params()) == expired
        assert await gw.call(CANCELPAY, base_params(bill_no="B1")) == expired

    run_gateway(tmp_path, redis_url, body)
    assert journal_kinds(redis_url) == ["save", "pay"]


def test_session_rotation_is_seen_despite_the_cache(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.save(10)
        assert (await gw.call(PAY, base_params(bill_no="B1", amt=1)))["errcode"] == 0
        await gw.session(session_key="rotated-key==")
        # the cached old key no longer verifies: re-read, the new key is used
        answer = await gw.call(PAY, base_params(bill_no="B2", amt=1), session_key="rotated-key==")
        assert answer["errcode"] == 0
        await gw.session(session_key=SESSION_KEY)
        # the cache still holds the rotated key; a request signed with it verifies in
        # Python, but the script sees the session changed: re-read, and it no longer verifies
        assert await gw.call(
            PAY, base_params(bill_no="B3", amt=1), session_key="rotated-key=="
        ) == error(90009, "mp_sig error")
        assert (await gw.call(PAY, base_params(bill_no="B3", amt=1)))["errcode"] == 0

    run_gateway(tmp_path, redis_url, body)


def test_sandbox_vector_and_isolation(tmp_path: Path, redis_url: str) -> None:
    raw_config = config_dict(tmp_path / "journal")
    raw_config["midas"]["apps"][0]["sandbox_app_key"] = MIDAS_APP_KEY  # the derived vector's key

    async def body(gw: Gateway) -> None:
        await gw.session()
        await gw.save(50, currency="sandbox-1")
        vector = dict(
            base_params(),
            sig="f8f9f6ac64eb1cf4a5f2f0235f72fe69af0d2ceb2b26bed5a024244140643bb4",
            mp_sig="ba1b7d2bce2e824cadf56c143fab6739e843f7b5578c079ec1432f12e5120b6c",
        )
        sandbox_balance = await gw.post(SANDBOX + "getbalance", vector)
        assert (sandbox_balance["errcode"], sandbox_balance["balance"]) == (0, 50)
        pay = await gw.call(SANDBOX + "pay", base_params(bill_no="S1", amt=20))
        assert (pay["errcode"], pay["balance"]) == (0, 30)
        assert (await gw.call(GETBALANCE, base_params()))["balance"] == 0
        assert await gw.call(PAY, base_params(bill_no="S2", amt=1)) == error(
            90013, "balance not enough"
        )
        # seed inconsistency 5: the sandbox org_loc is the sandbox path
        production_loc = signed(base_params(), GETBALANCE)
        assert await gw.post(SANDBOX + "getbalance", production_loc) == error(90011, "sig error")

    run_gateway(tmp_path, redis_url, body, raw_config)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget("wg:{" + APPID + ":" + OPENID + "}:tx:S1", "protocol") == "midas_sandbox"


def test_redis_unavailable_is_system_busy(tmp_path: Path) -> None:
    dead_url = f"redis://127.0.0.1:{free_port()}/0"

    async def body(gw: Gateway) -> None:
        busy = error(-1, "system busy")
        assert await gw.call(GETBALANCE, base_params()) == busy
        assert await gw.call(PAY, base_params(bill_no="B1", amt=1)) == busy
        assert gw.ctx.metrics.counters[("redis_errors_total", ())] == 2
        # bad input is still answered without Redis
        assert await gw.call(PAY, base_params(bill_no="B1")) == error(90018, "parameter error")

    run_gateway(tmp_path, dead_url, body)


def test_only_post_is_routed(tmp_path: Path, redis_url: str) -> None:
    async def body(gw: Gateway) -> None:
        for path in (GETBALANCE, PAY, CANCELPAY, PRESENT, SANDBOX + "present"):
            response = await gw.client.get(path)
            assert response.status_code == 405
        assert (await gw.client.post("/cgi-bin/midas/confirm")).status_code == 404

    run_gateway(tmp_path, redis_url, body)
