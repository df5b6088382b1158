"""The admin API (``/admin/v1``) through the whole app: every call and error of the spec's table.

adjust (200, replay of the original body, 400 invalid_amount, 404 unknown_tenant and
unknown_currency, 409 insufficient_funds and ref_conflict), GET accounts (Midas fields
included), POST sessions (201, 400, 404, 409 token_conflict, extension of the expiry), and GET
transactions, with ``?player=`` for a stored record of each family (its ``response`` must equal
the answer the family gave) and without it once the journal writer has flushed. Every route
answers 401 without the right bearer token, and then changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import gateway_helpers
from walletgate import admin as walletgate_admin
from walletgate.app import create_app
from walletgate.config import parse_config
from walletgate.ledger import keys
from walletgate.ledger.errors import LedgerScriptError
from walletgate.logs import AccessLog
from wire_helpers import (
    ADMIN_TOKEN,
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
    redis_state,
    state_difference,
)

PLAYER = "adm-player"
OPENID = "adm-openid"
SESSION_KEY = "admSessionKey0123456789=="
FLUSH_TIMEOUT_S = 15.0
TOMBSTONE_KEYS = frozenset({"mg-unknown"})

GatewayFactory = Callable[..., AsgiGateway]


@pytest.fixture
def gateways(tmp_path: Path, redis_url: str) -> Iterator[GatewayFactory]:
    """``gateways(writer=False)`` enters a gateway on the flushed test Redis."""
    opened: list[AsgiGateway] = []

    def make(writer: bool = False) -> AsgiGateway:
        raw = gateway_helpers.config_dict(tmp_path / "journal")
        raw["redis"]["url"] = redis_url
        app = create_app(
            parse_config(raw), run_journal_writer=writer, access_log=AccessLog(enabled=False)
        )
        gateway = AsgiGateway(app).__enter__()
        opened.append(gateway)
        return gateway

    yield make
    for gateway in reversed(opened):
        gateway.__exit__(None, None, None)


@pytest.fixture
def gw(gateways: GatewayFactory) -> AsgiGateway:
    return gateways()


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def adjust(
    gw: AsgiGateway,
    tenant: str,
    player: str,
    currency: str,
    body: Any,
    token: str = ADMIN_TOKEN,
) -> tuple[int, Any]:
    answer = gw.admin("POST", f"/accounts/{tenant}/{player}/{currency}/adjust", body, token)
    return answer.status_code, answer.json() if answer.content else None


def account(gw: AsgiGateway, tenant: str, player: str, currency: str) -> tuple[int, Any]:
    answer = gw.admin("GET", f"/accounts/{tenant}/{player}/{currency}")
    return answer.status_code, answer.json() if answer.content else None


def session(gw: AsgiGateway, body: Any, token: str = ADMIN_TOKEN) -> tuple[int, Any]:
    answer = gw.admin("POST", "/sessions", body, token)
    return answer.status_code, answer.json() if answer.content else None


def transaction(gw: AsgiGateway, tenant: str, key: str, player: str | None) -> tuple[int, Any]:
    query = "" if player is None else f"?player={player}"
    answer = gw.admin("GET", f"/transactions/{tenant}/{key}{query}")
    return answer.status_code, answer.json() if answer.content else None


def error(code: str) -> Callable[[Any], bool]:
    def matches(payload: Any) -> bool:
        return (
            isinstance(payload, dict)
            and set(payload) == {"error", "detail"}
            and (payload["error"] == code)
        )

    return matches


# -- authentication --------------------------------------------------------------------------

ROUTES = [
    (
        "POST",
        f"/admin/v1/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt/adjust",
        {"amount": "5", "ref": "auth-1"},
    ),
    ("GET", f"/admin/v1/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt", None),
    (
        "POST",
        "/admin/v1/sessions",
        {"tenant": MINIGAME_APP_ID, "player": PLAYER, "currency": "usdt", "token": "auth-tok"},
    ),
    ("GET", f"/admin/v1/transactions/{MINIGAME_APP_ID}/admin:seed?player={PLAYER}", None),
]
BAD_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {ADMIN_TOKEN[:-1]}",
    f"Bearer {ADMIN_TOKEN}x",
    f"Bearer {ADMIN_TOKEN.upper()}",
    f"Basic {ADMIN_TOKEN}",
    ADMIN_TOKEN,
    f"Token {ADMIN_TOKEN}",
]


UNAUTHORIZED_BODY = compact(
    {"error": "unauthorized", "detail": "send Authorization: Bearer <[admin] token>"}
)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_answers_401_without_the_token_and_changes_nothing(
    gw: AsgiGateway, store: redis.Redis, method: str, path: str, body: Any
) -> None:
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "10", "ref": "seed"})[0] == 200
    before = redis_state(store)
    for authorization in BAD_AUTHORIZATIONS:
        headers = {} if authorization is None else {"authorization": authorization}
        content = None if body is None else compact(body)
        answer = gw.request(method, path, content=content, headers=headers)
        assert answer.status_code == 401, (authorization, answer.text)
        # The same answer whatever the path: nothing about the tenant or the account.
        assert answer.content == UNAUTHORIZED_BODY, answer.text
        assert answer.headers["www-authenticate"] == 'Bearer realm="walletgate-admin"'
        assert ADMIN_TOKEN not in str(answer.headers)
    after = redis_state(store)
    assert before == after, state_difference(before, after)
    # The same call with the token works, so the 401 came from the token alone.
    good = gw.request(
        method, path, content=None if body is None else compact(body), headers=admin_headers()
    )
    assert good.status_code in (200, 201), good.text


def test_other_paths_and_methods_get_401_then_the_json_error_body(gw: AsgiGateway) -> None:
    """Under /admin/v1, a path no route has or a method a route does not take answers 401
    without the token (as every admin call), and with it the spec's error body: 404, or 405
    with Allow."""
    account = f"/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt"
    for method, path in (("GET", "/nope"), ("GET", "/sessions"), ("DELETE", account)):
        refused = gw.admin(method, path, token="wrong-token-0123456789abcdef0123456")
        assert (refused.status_code, refused.content) == (401, UNAUTHORIZED_BODY), (method, path)
    missing = gw.admin("GET", "/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    for method, path, allowed in (("GET", "/sessions", "POST"), ("DELETE", account, "GET, HEAD")):
        answer = gw.admin(method, path)
        assert answer.status_code == 405 and answer.json()["error"] == "method_not_allowed"
        assert answer.headers["allow"] == allowed, answer.headers


# -- adjust ----------------------------------------------------------------------------------


def test_adjust_credits_debits_creates_the_account_and_replays_the_original_body(
    gw: AsgiGateway,
) -> None:
    assert account(gw, MINIGAME_APP_ID, PLAYER, "usdt")[0] == 404
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "100.5", "ref": "r1"}) == (
        200,
        {"balance": "100.5", "ref": "r1"},
    )
    assert account(gw, MINIGAME_APP_ID, PLAYER, "usdt") == (
        200,
        {"tenant": MINIGAME_APP_ID, "player": PLAYER, "currency": "usdt", "balance": "100.5"},
    )
    assert adjust(
        gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "-0.5", "ref": "r2", "kind": "adjust"}
    ) == (200, {"balance": "100", "ref": "r2"})
    # A repeated ref returns the original body (the balance as first returned), applying nothing.
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "100.5", "ref": "r1"}) == (
        200,
        {"balance": "100.5", "ref": "r1"},
    )
    assert account(gw, MINIGAME_APP_ID, PLAYER, "usdt")[1]["balance"] == "100"
    # Currencies match case-insensitively and are reported as configured.
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "USDT", {"amount": "0.0001", "ref": "r3"}) == (
        200,
        {"balance": "100.0001", "ref": "r3"},
    )
    assert account(gw, MINIGAME_APP_ID, PLAYER, "USDT")[1]["currency"] == "usdt"
    # Accounts per currency are separate.
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "usd", {"amount": "7", "ref": "r4"})[1] == {
        "balance": "7",
        "ref": "r4",
    }


def test_adjust_conflicts_and_insufficient_funds_are_409_and_apply_nothing(
    gw: AsgiGateway, store: redis.Redis
) -> None:
    assert adjust(gw, TRANSFER_APPID, PLAYER, "usdt", {"amount": "10", "ref": "c1"})[0] == 200
    before = redis_state(store)
    for body in (
        {"amount": "11", "ref": "c1"},  # another amount
        {"amount": "-10", "ref": "c1"},  # another sign
    ):
        status, payload = adjust(gw, TRANSFER_APPID, PLAYER, "usdt", body)
        assert status == 409 and error("ref_conflict")(payload), payload
    after = redis_state(store)
    assert before == after, state_difference(before, after)
    debit = {"amount": "-10.0001", "ref": "c2"}
    status, payload = adjust(gw, TRANSFER_APPID, PLAYER, "usdt", debit)
    assert status == 409 and error("insufficient_funds")(payload), payload
    assert account(gw, TRANSFER_APPID, PLAYER, "usdt")[1]["balance"] == "10"
    # insufficient_funds is a stored outcome: the same ref answers it again once the money is
    # there, and moves nothing; the ref with another amount is a conflict.
    assert adjust(gw, TRANSFER_APPID, PLAYER, "usdt", {"amount": "1", "ref": "c3"})[0] == 200
    status, payload = adjust(gw, TRANSFER_APPID, PLAYER, "usdt", debit)
    assert status == 409 and error("insufficient_funds")(payload), payload
    assert payload == {"error": "insufficient_funds", "detail": payload["detail"]}
    status, payload = adjust(gw, TRANSFER_APPID, PLAYER, "usdt", {"amount": "-1", "ref": "c2"})
    assert status == 409 and error("ref_conflict")(payload), payload
    # The ref is the tenant's: another player's use of it conflicts (a credit: a debit of an
    # account that does not exist is refused before the ref is looked at).
    status, payload = adjust(gw, TRANSFER_APPID, "another", "usdt", {"amount": "5", "ref": "c2"})
    assert status == 409 and error("ref_conflict")(payload), payload
    assert account(gw, TRANSFER_APPID, PLAYER, "usdt")[1]["balance"] == "11"
    status, outcome = transaction(gw, TRANSFER_APPID, "admin:c2", PLAYER)
    assert status == 200, outcome
    assert (outcome["state"], outcome["delta"], outcome["balance_after"]) == ("rejected", "0", "10")
    # A debit of an account that does not exist is refused the same way, and stays refused,
    # without making the account.
    for _ in range(2):
        status, payload = adjust(gw, TRANSFER_APPID, "ghost", "usdt", {"amount": "-5", "ref": "g"})
        assert status == 409 and error("insufficient_funds")(payload), payload
    assert account(gw, TRANSFER_APPID, "ghost", "usdt")[0] == 404
    assert error("insufficient_funds")(outcome["response"]), outcome


def test_adjust_ref_used_for_another_player_is_409_ref_conflict(
    gw: AsgiGateway, store: redis.Redis
) -> None:
    """The ref is the tenant's: the player is part of the fingerprint, not of the key."""
    credit = {"amount": "10", "ref": "shared"}
    assert adjust(gw, MINIGAME_APP_ID, "pl-a", "usdt", credit) == (
        200,
        {"balance": "10", "ref": "shared"},
    )
    before = redis_state(store)
    for player, currency in (("pl-b", "usdt"), ("pl-b", "usd")):
        status, payload = adjust(gw, MINIGAME_APP_ID, player, currency, credit)
        assert status == 409 and error("ref_conflict")(payload), (player, currency, payload)
    after = redis_state(store)
    assert before == after, state_difference(before, after)
    # Counted as every family's key reuse is.
    scraped = gw.get("/metrics").text
    assert 'walletgate_idempotency_conflicts_total{family="admin"} 2' in scraped, scraped
    assert account(gw, MINIGAME_APP_ID, "pl-b", "usdt")[0] == 404
    assert adjust(gw, MINIGAME_APP_ID, "pl-a", "usdt", credit)[1] == {
        "balance": "10",
        "ref": "shared",
    }
    # Another tenant has refs of its own.
    assert adjust(gw, TRANSFER_APPID, "pl-b", "usdt", credit)[0] == 200


INVALID_AMOUNTS = [
    "1.00000",
    "1e3",
    "1E3",
    "",
    " 1",
    "1 ",
    "+1",
    "1.",
    ".5",
    "abc",
    "0",
    "-0",
    "0.0000",
    "NaN",
    "Infinity",
    "01",
    "922337203685477.5808",
    "-922337203685477.5808",
    "-922337203685477.5809",
    "1,5",
    "１",
    5,
    1.5,
    None,
    True,
    ["1"],
    {"v": "1"},
]


@pytest.mark.parametrize("amount", INVALID_AMOUNTS, ids=repr)
def test_adjust_rejects_a_bad_amount_with_400_invalid_amount(
    gw: AsgiGateway, store: redis.Redis, amount: Any
) -> None:
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "1", "ref": "base"})[0] == 200
    before = redis_state(store)
    status, payload = adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": amount, "ref": "x"})
    assert status == 400 and error("invalid_amount")(payload), payload
    assert redis_state(store) == before


def test_adjust_midas_amount_rules_and_int64_overflow(gw: AsgiGateway, store: redis.Redis) -> None:
    before = redis_state(store)
    for body in (
        {"amount": "1.5", "ref": "m1"},  # coins must be whole
        {"amount": "0.0001", "ref": "m1"},
        {"amount": "-5", "ref": "m1", "kind": "save"},  # save only credits
    ):
        status, payload = adjust(gw, MIDAS_APPID, OPENID, "1", body)
        assert status == 400 and error("invalid_amount")(payload), (body, payload)
    assert redis_state(store) == before
    top = "922337203685477.5807"
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": top, "ref": "o1"})[0] == 200
    status, payload = adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "0.0001", "ref": "o2"})
    assert status == 400 and error("invalid_amount")(payload), payload
    assert account(gw, MINIGAME_APP_ID, PLAYER, "usdt")[1]["balance"] == top


def test_adjust_other_400s_and_the_404s(gw: AsgiGateway, store: redis.Redis) -> None:
    before = redis_state(store)
    cases: list[tuple[str, str, str, Any, int, str | None]] = [
        ("nope", PLAYER, "usdt", {"amount": "1", "ref": "a"}, 404, "unknown_tenant"),
        (MINIGAME_APP_ID, PLAYER, "eur", {"amount": "1", "ref": "a"}, 404, "unknown_currency"),
        (WALLET_TOKEN, PLAYER, "usdt", {"amount": "1", "ref": "a"}, 404, "unknown_currency"),
        (MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "1"}, 400, None),  # no ref
        (MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "1", "ref": ""}, 400, None),
        (MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "1", "ref": 7}, 400, None),
        (MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "1", "ref": "a", "kind": "save"}, 400, None),
        (MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "1", "ref": "a", "kind": "x"}, 400, None),
        (MINIGAME_APP_ID, PLAYER, "usdt", [1], 400, None),
        (MINIGAME_APP_ID, "a:b", "usdt", {"amount": "1", "ref": "a"}, 400, None),
    ]
    for tenant, player, currency, body, status, code in cases:
        got_status, payload = adjust(gw, tenant, player, currency, body)
        assert got_status == status, (tenant, currency, body, payload)
        assert isinstance(payload, dict) and set(payload) == {"error", "detail"}, payload
        assert code is None or payload["error"] == code, payload
    # Bodies that are not one JSON object, or repeat a key.
    for raw in (b"", b"{", b'{"amount":"1","ref":"a","ref":"b"}', b"\xff", b"[]"):
        answer = gw.request(
            "POST",
            f"/admin/v1/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt/adjust",
            content=raw,
            headers=admin_headers(),
        )
        assert answer.status_code == 400 and set(answer.json()) == {"error", "detail"}, raw
    assert redis_state(store) == before


# -- accounts --------------------------------------------------------------------------------


def midas_call(gw: AsgiGateway, path: str, **extra: Any) -> Any:
    answer = gw.midas(path, midas_params(OPENID, **extra), SESSION_KEY)
    assert answer.status_code == 200
    return answer.json()


def test_get_account_midas_fields_follow_save_present_pay_and_cancelpay(gw: AsgiGateway) -> None:
    assert account(gw, MIDAS_APPID, OPENID, "1")[0] == 404
    status, _ = session(
        gw,
        {
            "tenant": MIDAS_APPID,
            "player": OPENID,
            "currency": "1",
            "token": "h1",
            "session_key": SESSION_KEY,
        },
    )
    assert status == 201
    fresh = {
        "tenant": MIDAS_APPID,
        "player": OPENID,
        "currency": "1",
        "balance": "0",
        "paid": 0,
        "gen_balance": 0,
        "first_save": 1,
        "save_amt": 0,
        "save_sum": 0,
        "cost_sum": 0,
        "present_sum": 0,
    }
    assert account(gw, MIDAS_APPID, OPENID, "1") == (200, fresh)  # a session makes it known
    assert adjust(gw, MIDAS_APPID, OPENID, "1", {"amount": "100", "ref": "s1", "kind": "save"}) == (
        200,
        {"balance": "100", "ref": "s1"},
    )
    assert midas_call(gw, MIDAS_PATHS[3], bill_no="P1", present_counts=10)["errcode"] == 0
    paid = midas_call(gw, MIDAS_PATHS[1], bill_no="B1", amt=15)
    assert paid == {
        "errcode": 0,
        "errmsg": "ok",
        "bill_no": "B1",
        "balance": 95,
        "used_gen_amt": 10,
    }
    expected = {
        **fresh,
        "balance": "95",
        "paid": 95,
        "gen_balance": 0,
        "first_save": 2,
        "save_amt": 100,
        "save_sum": 100,
        "cost_sum": 15,
        "present_sum": 10,
    }
    assert account(gw, MIDAS_APPID, OPENID, "1") == (200, expected)
    balance = midas_call(gw, MIDAS_PATHS[0])
    assert balance == {
        "errcode": 0,
        "errmsg": "ok",
        "balance": 95,
        "gen_balance": 0,
        "first_save": 2,
        "save_amt": 100,
        "save_sum": 100,
        "cost_sum": 15,
        "present_sum": 10,
    }
    assert midas_call(gw, MIDAS_PATHS[2], bill_no="B1")["errcode"] == 0
    restored = {**expected, "balance": "110", "paid": 100, "gen_balance": 10, "cost_sum": 0}
    assert account(gw, MIDAS_APPID, OPENID, "1") == (200, restored)
    # A plain adjust acts on the paid part, and answers paid plus gifted as the balance does;
    # the sandbox is another currency.
    assert adjust(gw, MIDAS_APPID, OPENID, "1", {"amount": "-30", "ref": "s2"})[1]["balance"] == (
        "80"
    )
    assert account(gw, MIDAS_APPID, OPENID, "1")[1]["paid"] == 70
    sandbox = account(gw, MIDAS_APPID, OPENID, "sandbox-1")[1]
    assert (sandbox["balance"], sandbox["first_save"]) == ("0", 1), sandbox  # untouched


def test_adjust_midas_answers_paid_plus_gifted_as_get_account_does(gw: AsgiGateway) -> None:
    """The adjustment moves the paid part only; its answer, its replay and its stored outcome
    report the balance as GET account does: paid plus gifted, as it was at the time."""
    body = {"tenant": MIDAS_APPID, "player": OPENID, "currency": "1", "token": "h1"}
    assert session(gw, {**body, "session_key": SESSION_KEY})[0] == 201
    save = {"amount": "100", "ref": "s1", "kind": "save"}
    assert adjust(gw, MIDAS_APPID, OPENID, "1", save) == (200, {"balance": "100", "ref": "s1"})
    assert midas_call(gw, MIDAS_PATHS[3], bill_no="P1", present_counts=50)["errcode"] == 0
    credit = {"amount": "10", "ref": "a1"}
    assert adjust(gw, MIDAS_APPID, OPENID, "1", credit) == (200, {"balance": "160", "ref": "a1"})
    got = account(gw, MIDAS_APPID, OPENID, "1")[1]
    assert (got["balance"], got["paid"], got["gen_balance"]) == ("160", 110, 50), got
    assert midas_call(gw, MIDAS_PATHS[3], bill_no="P2", present_counts=5)["errcode"] == 0
    assert adjust(gw, MIDAS_APPID, OPENID, "1", credit) == (200, {"balance": "160", "ref": "a1"})
    status, outcome = transaction(gw, MIDAS_APPID, "admin:a1", OPENID)
    assert status == 200, outcome
    assert (outcome["delta"], outcome["balance_after"]) == ("10", "160"), outcome
    assert outcome["response"] == {"balance": "160", "ref": "a1"}
    # A debit beyond the paid part is refused, although paid plus gifted would cover it.
    status, payload = adjust(gw, MIDAS_APPID, OPENID, "1", {"amount": "-111", "ref": "a2"})
    assert status == 409 and error("insufficient_funds")(payload), payload
    status, outcome = transaction(gw, MIDAS_APPID, "admin:a2", OPENID)
    assert (outcome["delta"], outcome["balance_after"]) == ("0", "165"), outcome


def test_get_account_midas_balance_past_int64_is_exact(gw: AsgiGateway, store: redis.Redis) -> None:
    """The balance, paid plus gifted, is kept within int64: a present beyond it is refused.
    Parts stored before that was checked may still add up past it, and the account reads."""
    top_coins = (2**63 - 1) // 10_000
    body = {"tenant": MIDAS_APPID, "player": OPENID, "currency": "1", "token": "h1"}
    assert session(gw, {**body, "session_key": SESSION_KEY})[0] == 201
    save = {"amount": str(top_coins), "ref": "s1", "kind": "save"}
    assert adjust(gw, MIDAS_APPID, OPENID, "1", save)[0] == 200
    refused = midas_call(gw, MIDAS_PATHS[3], bill_no="P1", present_counts=top_coins)
    assert refused["errcode"] == 90018, refused
    assert account(gw, MIDAS_APPID, OPENID, "1")[1]["gen_balance"] == 0
    store.hset(f"wg:{{{MIDAS_APPID}:{OPENID}}}:acct", "gen:1", str(top_coins * 10_000))
    status, payload = account(gw, MIDAS_APPID, OPENID, "1")
    assert status == 200, payload
    assert (payload["paid"], payload["gen_balance"]) == (top_coins, top_coins)
    assert payload["balance"] == str(2 * top_coins)
    assert midas_call(gw, MIDAS_PATHS[0])["balance"] == 2 * top_coins


def test_get_account_404s(gw: AsgiGateway) -> None:
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "1", "ref": "g1"})[0] == 200
    for tenant, player, currency, code in (
        ("nope", PLAYER, "usdt", "unknown_tenant"),
        (MINIGAME_APP_ID, PLAYER, "eur", "unknown_currency"),
        (MINIGAME_APP_ID, "never-seen", "usdt", None),
        (TRANSFER_APPID, PLAYER, "usdt", None),  # the same player id at another tenant
        # A malformed player id names no account: GET's only error is 404.
        (MINIGAME_APP_ID, "a{b", "usdt", "unknown_account"),
        (MINIGAME_APP_ID, "a:b", "usdt", "unknown_account"),
        (MINIGAME_APP_ID, "a}b", "usdt", "unknown_account"),
    ):
        status, payload = account(gw, tenant, player, currency)
        assert status == 404, (tenant, player, currency, payload)
        assert set(payload) == {"error", "detail"} and (code is None or payload["error"] == code)


# -- sessions --------------------------------------------------------------------------------


def test_sessions_register_extend_and_serve_the_protocols(
    gw: AsgiGateway, store: redis.Redis
) -> None:
    body = {"tenant": MINIGAME_APP_ID, "player": PLAYER, "currency": "usdt", "token": "tok-1"}
    now = int(time.time())
    status, first = session(gw, {**body, "ttl_s": 60})
    assert status == 201 and first["token"] == "tok-1", first
    assert now + 59 <= first["expires_at"] <= now + 62, first
    # Registering the same triple again extends the expiry.
    status, second = session(gw, {**body, "ttl_s": 3600})
    assert status == 201 and second["expires_at"] >= now + 3599, second
    status, default = session(gw, body)
    assert status == 201 and default["expires_at"] >= now + 604_799, default  # ttl_s default
    # ... and never shortens it: a shorter ttl_s keeps the later expiry, which is answered.
    status, shorter = session(gw, {**body, "ttl_s": 60})
    assert status == 201 and shorter["expires_at"] == default["expires_at"], (shorter, default)
    record_key = keys.session_key(MINIGAME_APP_ID, "tok-1")
    assert store.hget(record_key, "expires_at") == str(default["expires_at"]).encode()
    assert store.ttl(record_key) > 604_000, "the record's keep was shortened too"
    # The player is known (0 balances) and the token verifies.
    verify = gw.signed(
        MINIGAME_PATHS[0],
        {"app_id": MINIGAME_APP_ID, "timestamp": 1, "operator_player_session": "tok-1"},
        MINIGAME_KEY,
    ).json()
    assert verify["code"] == 1 and verify["data"]["uname"] == PLAYER, verify
    balance = gw.signed(
        MINIGAME_PATHS[1],
        {"app_id": MINIGAME_APP_ID, "uname": PLAYER, "timestamp": 1},
        MINIGAME_KEY,
    ).json()
    assert balance == {"data": {"balance": "0"}, "code": 1, "msg": "ok"}
    # Wallet v2: the token is the code.
    v2 = {"tenant": WALLET_TOKEN, "player": PLAYER, "currency": "UAH", "token": "code-1"}
    assert session(gw, v2)[0] == 201
    credit = gw.post(WALLET_V2_PATH, content=compact({"type": "credit", "code": "code-1"})).json()
    assert credit["result"] == 1 and credit["currency"] == "UAH" and credit["player_id"] == PLAYER


def test_sessions_conflicts_and_errors(gw: AsgiGateway, store: redis.Redis) -> None:
    body = {"tenant": MINIGAME_APP_ID, "player": PLAYER, "currency": "usdt", "token": "tok-c"}
    assert session(gw, body)[0] == 201
    before = redis_state(store)
    for other in ({"player": "someone-else"}, {"currency": "usd"}):
        status, payload = session(gw, {**body, **other})
        assert status == 409 and error("token_conflict")(payload), (other, payload)
    midas = {"tenant": MIDAS_APPID, "player": OPENID, "currency": "1", "token": "h"}
    bad_requests: list[Any] = [
        {k: v for k, v in body.items() if k != "token"},
        {k: v for k, v in body.items() if k != "player"},
        {k: v for k, v in body.items() if k != "currency"},
        {k: v for k, v in body.items() if k != "tenant"},
        {**body, "token": 5},
        {**body, "player": ["x"]},
        {**body, "player": "a:b"},
        {**body, "player": ""},
        {**body, "token": ""},
        {**body, "ttl_s": 0},
        {**body, "ttl_s": -1},
        {**body, "ttl_s": "60"},
        {**body, "ttl_s": True},
        {**body, "ttl_s": 1.5},
        {**body, "session_key": "k"},  # only Midas takes a session_key
        midas,  # and Midas requires one
        {**midas, "session_key": ""},
        [body],
    ]
    for bad in bad_requests:
        status, payload = session(gw, bad)
        assert status == 400 and set(payload) == {"error", "detail"}, (bad, payload)
    for missing, code in (
        ({**body, "tenant": "nope"}, "unknown_tenant"),
        ({**body, "currency": "eur"}, "unknown_currency"),
    ):
        status, payload = session(gw, missing)
        assert status == 404 and error(code)(payload), (missing, payload)
    after = redis_state(store)
    assert before == after, state_difference(before, after)


# -- transactions ----------------------------------------------------------------------------


def produce_one_record_per_family(gw: AsgiGateway) -> list[tuple[str, str, str, Any]]:
    """(tenant, key, player, the answer the family gave) for one stored record of each family."""
    gw.register(MINIGAME_APP_ID, PLAYER, "usdt", "mg-tok")
    gw.register(LUCK_APP_ID, PLAYER, "USDT", "luck-tok")
    gw.fund(MINIGAME_APP_ID, PLAYER, "usdt", "50", "fund-mg")
    gw.fund(LUCK_APP_ID, PLAYER, "USDT", "50", "fund-luck")
    gw.register(WALLET_TOKEN, PLAYER, "USD", "v2-code")
    gw.fund(WALLET_TOKEN, PLAYER, "USD", "20", "fund-v2")
    gw.register(MIDAS_APPID, OPENID, "1", "h", session_key=SESSION_KEY)
    gw.fund(MIDAS_APPID, OPENID, "1", "100", "fund-midas", kind="save")
    records: list[tuple[str, str, str, Any]] = []

    def change(path: str, app_id: str, key: str, order_id: str, money: str, type_: int) -> None:
        fields = {
            "app_id": app_id,
            "uname": PLAYER,
            "money": money,
            "type": type_,
            "order_id": order_id,
            "session_id": "round-1",
            "timestamp": 1,
        }
        if type_ == 1:
            fields["bet"] = money.lstrip("-")
        answer = gw.signed(path, fields, key).json()
        records.append((app_id, order_id, PLAYER, answer))

    change(MINIGAME_PATHS[2], MINIGAME_APP_ID, MINIGAME_KEY, "mg-bet-1", "-3", 1)
    change(MINIGAME_PATHS[2], MINIGAME_APP_ID, MINIGAME_KEY, "mg-bet-2", "-1000", 1)  # 10001
    change(MINIGAME_PATHS[2], MINIGAME_APP_ID, MINIGAME_KEY, "mg-bet-3", "-1", 1)
    change(LUCK_PATHS[2], LUCK_APP_ID, LUCK_KEY, "luck-win-1", "2.5", 5)
    for cancel_id, target in (("mg-cancel-3", "mg-bet-3"), ("mg-cancel-1", "mg-unknown")):
        cancel = {
            "app_id": MINIGAME_APP_ID,
            "uname": PLAYER,
            "money": "0",
            "type": 2,
            "order_id": cancel_id,
            "cancel_order_id": target,
            "session_id": "round-1",
            "timestamp": 1,
        }
        answer = gw.signed(MINIGAME_PATHS[2], cancel, MINIGAME_KEY).json()
        records.append((MINIGAME_APP_ID, cancel_id, PLAYER, answer))
    # The tombstone written for the unknown bet carries the answer a later bet would get.
    records.append(
        (MINIGAME_APP_ID, "mg-unknown", PLAYER, {"code": 10010, "msg": "order cancelled"})
    )

    authorize = {"appid": TRANSFER_APPID, "timestamp": 1, "uname": PLAYER, "nickname": "n"}
    token = gw.signed(TRANSFER_PATHS[0], authorize, TRANSFER_KEY).json()["data"]["token"]
    gw.fund(TRANSFER_APPID, PLAYER, "usdt", "10", "fund-transfer")
    for tx_id, amount in (("tx-in-1", "5"), ("tx-out-1", "-100")):
        fields = {
            "appid": TRANSFER_APPID,
            "timestamp": 1,
            "token": token,
            "currency": "usdt",
            "amount": amount,
            "tx_id": tx_id,
        }
        records.append(
            (
                TRANSFER_APPID,
                tx_id,
                PLAYER,
                gw.signed(TRANSFER_PATHS[1], fields, TRANSFER_KEY).json(),
            )
        )

    def v2(body: dict[str, Any], key: str) -> None:
        answer = gw.post(WALLET_V2_PATH, content=compact({"code": "v2-code", **body})).json()
        records.append((WALLET_TOKEN, key, PLAYER, answer))

    v2({"type": "bet", "id": 7, "round_id": 7, "game": 1, "bet": 500}, "USD:7")
    v2({"type": "bet", "id": 8, "game": 1, "bet": 999_999}, "USD:8")  # INSUFFICIENT_FUNDS
    v2({"type": "cancel", "id": 7}, "USD:7:cancel")
    v2({"type": "win", "id": 9, "round_id": 7, "game": 1, "win": 250}, "USD:9")

    for path, extra in (
        (MIDAS_PATHS[1], {"bill_no": "bill-1", "amt": 30}),
        (MIDAS_PATHS[1], {"bill_no": "bill-2", "amt": 1000}),  # 90013, stored
        (MIDAS_PATHS[3], {"bill_no": "gift-1", "present_counts": 4}),
        (MIDAS_PATHS[5], {"bill_no": "sb-bill-1", "amt": 1, "zone_id": "1"}),  # sandbox: 90013
    ):
        answer = midas_call(gw, path, **extra)
        records.append((MIDAS_APPID, extra["bill_no"], OPENID, answer))

    original = gw.admin(
        "POST", f"/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt/adjust", {"amount": "1", "ref": "adm-1"}
    ).json()
    records.append((MINIGAME_APP_ID, "admin:adm-1", PLAYER, original))
    return records


def check_outcome(outcome: Any, tenant: str, key: str, player: str, answer: Any) -> None:
    assert isinstance(outcome, dict), outcome
    required = {
        "tenant",
        "key",
        "protocol",
        "op",
        "player",
        "currency",
        "state",
        "delta",
        "balance_after",
        "response",
        "created_at",
        "expires_at",
    }
    assert required <= set(outcome), outcome
    assert set(outcome) - required <= {"cancelled_by", "settled_by"}, outcome
    assert (outcome["tenant"], outcome["key"], outcome["player"]) == (tenant, key, player)
    assert outcome["state"] in ("applied", "rejected", "tombstone"), outcome
    assert outcome["created_at"].endswith("Z") and outcome["expires_at"].endswith("Z"), outcome
    assert outcome["response"] == answer, (key, outcome["response"], answer)


def test_transactions_with_player_return_each_familys_original_answer(gw: AsgiGateway) -> None:
    records = [r for r in produce_one_record_per_family(gw) if not r[1].startswith("admin:")]
    for tenant, key, player, answer in records:
        status, outcome = transaction(gw, tenant, key, player)
        assert status == 200, (tenant, key, outcome)
        check_outcome(outcome, tenant, key, player, answer)
    states = {
        key: transaction(gw, tenant, key, player)[1]["state"] for tenant, key, player, _ in records
    }
    assert states["mg-bet-1"] == "applied" and states["mg-bet-2"] == "rejected"
    assert states["mg-unknown"] == "tombstone" and states["USD:8"] == "rejected"
    protocols = {
        key: transaction(gw, tenant, key, player)[1]["protocol"]
        for tenant, key, player, _ in records
    }
    assert protocols["mg-bet-1"] == "minigame" and protocols["luck-win-1"] == "minigame_luck"
    assert protocols["tx-in-1"] == "transfer" and protocols["USD:7"] == "wallet_v2"
    assert protocols["bill-1"] == "midas" and protocols["sb-bill-1"] == "midas_sandbox"
    bet = transaction(gw, MINIGAME_APP_ID, "mg-bet-1", PLAYER)[1]
    assert (bet["delta"], bet["balance_after"], bet["currency"]) == ("-3", "47", "usdt")
    cancelled = transaction(gw, MINIGAME_APP_ID, "mg-bet-3", PLAYER)[1]
    assert cancelled.get("cancelled_by") == "mg-cancel-3", cancelled


def test_transactions_admin_record_carries_the_original_adjust_body(gw: AsgiGateway) -> None:
    """The stored outcome's ``response`` is the original answer, for an adjust too."""
    (record,) = [r for r in produce_one_record_per_family(gw) if r[1].startswith("admin:")]
    tenant, key, player, answer = record
    assert answer == {"balance": "48", "ref": "adm-1"}
    status, outcome = transaction(gw, tenant, key, player)
    assert status == 200 and outcome["protocol"] == "admin" and outcome["state"] == "applied"
    assert (outcome["delta"], outcome["balance_after"]) == ("1", "48")
    check_outcome(outcome, tenant, key, player, answer)


def test_transactions_midas_outcomes_report_paid_plus_gifted(gw: AsgiGateway) -> None:
    """delta and balance_after are paid plus gifted, as GET account's balance: a present moves
    the gifted part only, a pay takes the gifted part first."""
    body = {"tenant": MIDAS_APPID, "player": OPENID, "currency": "1", "token": "h1"}
    assert session(gw, {**body, "session_key": SESSION_KEY})[0] == 201
    save = {"amount": "100", "ref": "s1", "kind": "save"}
    assert adjust(gw, MIDAS_APPID, OPENID, "1", save)[0] == 200
    assert midas_call(gw, MIDAS_PATHS[3], bill_no="P1", present_counts=10)["errcode"] == 0
    assert midas_call(gw, MIDAS_PATHS[1], bill_no="B1", amt=20)["errcode"] == 0
    sums = {}
    for key in ("P1", "B1"):
        status, outcome = transaction(gw, MIDAS_APPID, key, OPENID)
        assert status == 200, outcome
        sums[key] = (outcome["delta"], outcome["balance_after"])
    assert sums == {"P1": ("10", "110"), "B1": ("-20", "90")}
    assert account(gw, MIDAS_APPID, OPENID, "1")[1]["balance"] == "90"


def test_transactions_midas_outcome_past_int64_reads_exactly(
    gw: AsgiGateway, store: redis.Redis
) -> None:
    """Parts stored before the balance (their sum) was kept within int64 may add up past it:
    the outcome still reads exactly."""
    body = {"tenant": MIDAS_APPID, "player": OPENID, "currency": "1", "token": "h1"}
    assert session(gw, {**body, "session_key": SESSION_KEY})[0] == 201
    top_coins = (2**63 - 1) // 10_000
    present = midas_call(gw, MIDAS_PATHS[3], bill_no="TOP", present_counts=top_coins)
    assert present["errcode"] == 0, present
    # 90 coins of paid part that arrived before the bound: the sum passes int64.
    store.hset(f"wg:{{{MIDAS_APPID}:{OPENID}}}:tx:TOP", "bal", str(90 * 10_000))
    status, outcome = transaction(gw, MIDAS_APPID, "TOP", OPENID)
    assert status == 200, outcome
    assert (outcome["delta"], outcome["balance_after"]) == (str(top_coins), str(top_coins + 90))


def test_an_unreadable_stored_value_is_a_503_with_the_error_body(
    gw: AsgiGateway, store: redis.Redis
) -> None:
    """The reads never answer a bare 500: a value they cannot parse is the spec's error body."""
    assert adjust(gw, MINIGAME_APP_ID, PLAYER, "usdt", {"amount": "1", "ref": "u1"})[0] == 200
    store.hset(f"wg:{{{MINIGAME_APP_ID}:{PLAYER}}}:adm:u1", "delta", "not-a-number")
    store.hset(f"wg:{{{MINIGAME_APP_ID}:{PLAYER}}}:acct", "bal:usdt", "not-a-number")
    status, payload = transaction(gw, MINIGAME_APP_ID, "admin:u1", PLAYER)
    assert status == 503 and error("unavailable")(payload), (status, payload)
    status, payload = account(gw, MINIGAME_APP_ID, PLAYER, "usdt")
    assert status == 503 and error("unavailable")(payload), (status, payload)


def test_transactions_404s(gw: AsgiGateway) -> None:
    records = produce_one_record_per_family(gw)
    for tenant, key, player in (
        ("nope", "mg-bet-1", PLAYER),
        (MINIGAME_APP_ID, "never", PLAYER),
        (MINIGAME_APP_ID, "mg-bet-1", "someone-else"),
        (TRANSFER_APPID, "mg-bet-1", PLAYER),  # another tenant's key
        (WALLET_TOKEN, "UAH:7", PLAYER),  # the currency is part of the key
        (MINIGAME_APP_ID, "mg-bet-1", "a:b"),
    ):
        status, payload = transaction(gw, tenant, key, player)
        assert status == 404 and set(payload) == {"error", "detail"}, (tenant, key, payload)
    assert records


def wait_until_visible_without_player(
    gw: AsgiGateway, records: list[tuple[str, str, str, Any]]
) -> list[tuple[str, str, str, Any]]:
    """Run the gateway until every record's key resolves without ``?player=``; returns the
    records still invisible after FLUSH_TIMEOUT_S."""
    deadline = time.monotonic() + FLUSH_TIMEOUT_S
    pending = list(records)
    while pending and time.monotonic() < deadline:
        gw.idle(0.1)
        still: list[tuple[str, str, str, Any]] = []
        for record in pending:
            status, _ = transaction(gw, record[0], record[1], None)
            if status != 200:
                assert status == 404
                still.append(record)
        pending = still
    return pending


def test_transactions_without_player_once_the_journal_writer_has_flushed(
    gateways: GatewayFactory,
) -> None:
    gw = gateways(writer=True)
    records = [r for r in produce_one_record_per_family(gw) if r[1] not in TOMBSTONE_KEYS]
    pending = wait_until_visible_without_player(gw, records)
    assert not pending, f"not visible without ?player= after {FLUSH_TIMEOUT_S} s: {pending}"
    for tenant, key, player, answer in records:
        status, outcome = transaction(gw, tenant, key, None)
        assert status == 200
        with_player = transaction(gw, tenant, key, player)[1]
        assert {k: v for k, v in outcome.items() if k != "expires_at"} == {
            k: v for k, v in with_player.items() if k != "expires_at"
        }
        if not key.startswith("admin:"):  # the admin record's response has its own test
            check_outcome(outcome, tenant, key, player, answer)


def test_tombstone_keys_are_found_without_player_once_flushed(gateways: GatewayFactory) -> None:
    """A cancel of an unknown bet stores a tombstone on the bet's key; that key is a
    transaction key like any other, so the key map must know its player too."""
    gw = gateways(writer=True)
    records = produce_one_record_per_family(gw)
    answer = gw.post(
        WALLET_V2_PATH, content=compact({"type": "cancel", "code": "v2-code", "id": 77})
    ).json()
    assert answer["result"] == 1, answer
    records.append((WALLET_TOKEN, "USD:77:cancel", PLAYER, answer))
    # The cancels' own keys become visible: their journal records are on disk.
    cancels = [r for r in records if r[1] in ("mg-cancel-1", "USD:77:cancel")]
    assert not wait_until_visible_without_player(gw, cancels)
    tombstones = [
        (MINIGAME_APP_ID, "mg-unknown", PLAYER),
        (WALLET_TOKEN, "USD:77", PLAYER),
    ]
    for tenant, key, player in tombstones:
        with_player = transaction(gw, tenant, key, player)
        assert with_player[0] == 200 and with_player[1]["state"] == "tombstone", with_player
    missing = [key for tenant, key, _ in tombstones if transaction(gw, tenant, key, None)[0] != 200]
    assert not missing, f"tombstone keys unknown to the key map: {missing}"


def test_an_unexpected_failure_is_a_503_with_the_error_body(
    gw: AsgiGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A script error or a client gone mid-body must not surface as a plain-text 500, and the
    log line must not carry the path (a Wallet v2 tenant id is its wallet_token)."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise LedgerScriptError("WGTEST broken")

    monkeypatch.setattr(walletgate_admin, "adjust", broken)
    monkeypatch.setattr(walletgate_admin, "register_session", broken)
    with caplog.at_level(logging.ERROR, "walletgate"):
        answer = gw.admin(
            "POST", f"/accounts/{WALLET_TOKEN}/{PLAYER}/USD/adjust", {"amount": "1", "ref": "x"}
        )
        assert answer.status_code == 503 and error("unavailable")(answer.json())
        status, body = session(
            gw, {"tenant": WALLET_TOKEN, "player": PLAYER, "currency": "USD", "token": "t-x"}
        )
        assert status == 503 and error("unavailable")(body)
    assert "admin: post_adjust failed" in caplog.text
    assert "admin: post_session failed" in caplog.text
    assert WALLET_TOKEN not in caplog.text


def test_an_order_id_named_like_an_adjustment_is_its_own_record(gw: AsgiGateway) -> None:
    """ "admin:<ref>" names an adjustment, but a platform's order_id may be the same text: the
    bet applies (no 'duplicate'), the adjustment applies, and the lookup answers the adjustment
    first, the bet when no adjustment has that ref."""
    gw.register(MINIGAME_APP_ID, PLAYER, "usdt", "mg-tok")
    gw.fund(MINIGAME_APP_ID, PLAYER, "usdt", "50", "x1")

    def bet(order_id: str) -> Any:
        fields = {
            "app_id": MINIGAME_APP_ID,
            "uname": PLAYER,
            "money": "-1",
            "bet": "1",
            "type": 1,
            "order_id": order_id,
            "session_id": "round-1",
            "timestamp": 1,
        }
        return gw.signed(MINIGAME_PATHS[2], fields, MINIGAME_KEY).json()

    assert bet("admin:x1")["code"] == 1
    assert bet("admin:only")["code"] == 1
    status, outcome = transaction(gw, MINIGAME_APP_ID, "admin:x1", PLAYER)
    assert status == 200 and outcome["protocol"] == "admin" and outcome["delta"] == "50"
    status, outcome = transaction(gw, MINIGAME_APP_ID, "admin:only", PLAYER)
    assert status == 200 and outcome["protocol"] == "minigame" and outcome["delta"] == "-1"
    assert account(gw, MINIGAME_APP_ID, PLAYER, "usdt")[1]["balance"] == "48"
