"""Hypothesis fuzzing of every endpoint through the whole ASGI app (routes, middleware, lifespan).

Each family gets malformed JSON, bodies over ``max_body_bytes``, wrongly typed fields, random
mutations of valid bodies (dropped, duplicated and renamed keys, huge numbers, floats,
exponents, unicode, nested objects, flipped and truncated bytes), random headers and queries.
Signatures are sometimes recomputed over the mutated bytes, so the validation behind the
signature check is reached too; otherwise they are missing, stale, random or made with another
key.

Every answer must be below 500, free of exception text, in the family's envelope (or the empty
404/403 of Wallet v2, or the admin API's error JSON), and must not reveal a configured secret.
State: before and after every request the whole ``wg:*`` keyspace is dumped; an answer that is
neither a success nor a stored business rejection must leave it byte-identical (balances,
idempotency records, sessions and pending journal records alike). Requests with a bad
signature, a bad admin token, or a body that cannot be parsed are additionally collected in a
phase of their own, after which the keyspace must equal the snapshot taken before it.

Examples per family: ``WALLETGATE_FUZZ_EXAMPLES`` (default 350). The runs are derandomized, so
a failure reproduces; set ``WALLETGATE_FUZZ_RANDOM=1`` to explore new inputs.
"""

from __future__ import annotations

import json
import os
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway_helpers
from walletgate.app import create_app
from walletgate.config import Config, parse_config
from walletgate.logs import AccessLog
from walletgate.openapi import DOCUMENT_PATH, openapi_document, openapi_routes
from wire_helpers import (
    ADMIN_TOKEN,
    EXCEPTION_MARKERS,
    LUCK_APP_ID,
    LUCK_KEY,
    LUCK_PATHS,
    MIDAS_ACCESS_TOKEN,
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
    compact,
    md5_sign,
    midas_params,
    midas_sign,
    redis_state,
    state_difference,
)

EXAMPLES = int(os.environ.get("WALLETGATE_FUZZ_EXAMPLES", "350"))
RANDOMIZE = os.environ.get("WALLETGATE_FUZZ_RANDOM") == "1"
MAX_BODY_BYTES = 2048
PLAYER = "fz-player"
MIDAS_OPENID = "fz-openid"
MIDAS_SESSION_KEY = "fzSessionKey0123456789=="
MG_SESSION = "fz-mg-session"
LUCK_SESSION = "fz-luck-session"
V2_CODE = "fz-v2-code"

MINIGAME_CODES = {
    1,
    10001,
    10002,
    10005,
    10009,
    10010,
    10011,
    10012,
    10013,
    10015,
    10019,
    10021,
    10023,
}
TRANSFER_CODES = {0, 10001, 10002, 10005, 10009, 10011, 10015, 10019, 10020, 10021, 10022, 10023}
WALLET_V2_ERRORS = {
    "INVALID_SESSION",
    "BAD_REQUEST",
    "INSUFFICIENT_FUNDS",
    "DUPLICATE_ID",
    "CANCELLED",
    "SETTLED",
    "INTERNAL_ERROR",
}
MIDAS_CODES = {0, -1, 40001, 90000, 90009, 90010, 90011, 90012, 90013, 90015, 90017, 90018}

# Outcomes that may change state: successes and the stored business rejections of the spec.
MINIGAME_MAY_CHANGE = {1, 10001, 10010}
TRANSFER_MAY_CHANGE = {0, 10001}
WALLET_V2_MAY_CHANGE = {"INSUFFICIENT_FUNDS", "CANCELLED", "SETTLED"}
MIDAS_MAY_CHANGE = {0, 90013}

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOMIZE,
    database=None,
    suppress_health_check=list(HealthCheck),
)


# -- JSON text strategies ----------------------------------------------------------------------

# Literals that are invalid JSON, or valid JSON that the money and id rules must reject.
ODD_LITERALS = [
    "1e5",
    "1E-2",
    "-0",
    "-0.0",
    "0.00001",
    "1.00000",
    "01",
    "1.",
    ".5",
    "NaN",
    "Infinity",
    "-Infinity",
    "+1",
    "9" * 40,
    "-" + "9" * 40,
    "1" + "0" * 19,
    "18446744073709551616",
    "18446744073709551615",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "922337203685477.5807",
    "922337203685477.5808",
    "0.0001",
    "-0.0001",
    "1.5",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    '""',
    '" "',
    '"\\u0000"',
    '"\\ud800"',
    '"\\ud83d\\ude00"',
    '"1e5"',
    '"-3"',
    '"+3"',
    '"3.00000"',
    '" 3"',
    '"0x10"',
    '"１２"',
    '"Ⅻ"',
    '"\u0663"',
    '"a:b"',
    '"{x}"',
    '"\\n"',
    '"é"',
    "[" * 40 + "]" * 40,
    '{"a":{"b":{"c":[1,2,{"d":null}]}}}',
    '{"order_id":"x","money":"1"}',
    "[" * 3000 + "]" * 3000,
    '"' + "x" * 300 + '"',
]

scalar_text = st.one_of(
    st.sampled_from(ODD_LITERALS),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=40).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(max_size=20).map(json.dumps),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.just("null"),
)


def _container(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arrays = st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
    objects = st.lists(st.tuples(st.text(max_size=8).map(json.dumps), children), max_size=4).map(
        lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    )
    return st.one_of(arrays, objects)


value_text = st.recursive(scalar_text, _container, max_leaves=8)


Pairs = list[tuple[str, str]]  # (key, JSON text of the value): duplicates allowed


def encode_pairs(pairs: Pairs) -> bytes:
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}").encode(
        "utf-8", "surrogatepass"
    )


def to_pairs(fields: dict[str, Any]) -> Pairs:
    return [(name, json.dumps(value, ensure_ascii=False)) for name, value in fields.items()]


def rarely(data: st.DataObject, one_in: int, label: str) -> bool:
    """True about once in ``one_in`` draws. The simplest draw (0, which hypothesis favours and
    shrinks toward) means False, so a shrunk failure keeps only the rare choices it needs."""
    return data.draw(st.integers(0, one_in - 1), label=label) == one_in - 1


def odd_method(data: st.DataObject, usual: str = "POST") -> str:
    if not rarely(data, 20, "odd method"):
        return usual
    return data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), label="method")


def mutate_pairs(data: st.DataObject, pairs: Pairs) -> Pairs:
    """One to four structural mutations of a body's (key, value) list."""
    pairs = list(pairs)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(
            st.sampled_from(
                ["drop", "duplicate", "replace", "add", "rename", "retype", "wrap", "none"]
            ),
            label="mutation",
        )
        if not pairs:
            kind = "add"
        index = data.draw(st.integers(0, max(0, len(pairs) - 1)), label="index")
        if kind == "drop":
            del pairs[index]
        elif kind == "duplicate":
            name = pairs[index][0]
            value = data.draw(st.one_of(st.just(pairs[index][1]), value_text), label="dup")
            pairs.insert(data.draw(st.integers(0, len(pairs))), (name, value))
        elif kind == "replace":
            pairs[index] = (pairs[index][0], data.draw(value_text, label="value"))
        elif kind == "add":
            name = data.draw(st.text(max_size=12), label="new key")
            pairs.append((name, data.draw(value_text, label="new value")))
        elif kind == "rename":
            name = pairs[index][0]
            renamed = data.draw(
                st.sampled_from([name.upper(), name + " ", " " + name, name[:-1], name + "\u0301"])
            )
            pairs[index] = (renamed, pairs[index][1])
        elif kind == "retype":
            text = pairs[index][1]
            retyped = [f"[{text}]", f'{{"v":{text}}}', json.dumps(text)]
            if text.startswith('"') and text.endswith('"') and len(text) > 1:
                retyped.append(text[1:-1] or "0")
            pairs[index] = (pairs[index][0], data.draw(st.sampled_from(retyped)))
        elif kind == "wrap":
            return [("body", "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}")]
    return pairs


def mutate_bytes(data: st.DataObject, body: bytes) -> bytes:
    """Byte-level damage: flips, truncation, insertion, BOM, trailing data, array wrapping."""
    if not body or not rarely(data, 3, "damage bytes"):
        return body
    kind = data.draw(
        st.sampled_from(["flip", "truncate", "insert", "bom", "trailing", "array", "pad"]),
        label="bytes",
    )
    position = data.draw(st.integers(0, len(body) - 1), label="position")
    if kind == "flip":
        flipped = body[position] ^ data.draw(st.integers(1, 255), label="xor")
        return body[:position] + bytes([flipped]) + body[position + 1 :]
    if kind == "truncate":
        return body[:position]
    if kind == "insert":
        return body[:position] + data.draw(st.binary(min_size=1, max_size=8)) + body[position:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + body
    if kind == "trailing":
        return body + data.draw(st.sampled_from([b"x", b",}", b" {}", b"\x00", b"\n\n"]))
    if kind == "array":
        return b"[" + body + b"]"
    # "pad": a body just over the limit, with the keys still in front.
    return body[:-1] + b',"pad":"' + b"x" * MAX_BODY_BYTES + b'"}'


header_name = st.one_of(
    st.sampled_from(
        [
            "content-type",
            "accept",
            "x-forwarded-for",
            "authorization",
            "sign",
            "cookie",
            "user-agent",
            "x-real-ip",
            "accept-encoding",
            "content-length",
            "expect",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20),
)
header_value = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/json; charset=latin-1",
            "203.0.113.7",
            "127.0.0.1, 203.0.113.7",
            "0",
            "abc",
            "-1",
            "99999999",
            "1e3",
            "Bearer",
            "",
            "*/*",
            "gzip",
            "100-continue",
        ]
    ),
    st.text(alphabet=string.printable.strip() + " ", max_size=40),
)
random_headers = st.lists(st.tuples(header_name, header_value), max_size=4)


# -- one request, and the checks every answer gets ---------------------------------------------


@dataclass
class Case:
    method: str
    url: str
    content: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Whether the request could pass authentication; False puts it into the no-change phase.
    authentic: bool = True
    # The path as the OpenAPI document names it, when it differs from the URL's path.
    template: str | None = None


@dataclass
class Answer:
    status: int
    body: bytes
    payload: Any  # parsed JSON, or None


Envelope = Callable[[Answer], bool]  # asserts the envelope; returns "may change state"


def send(gateway: AsgiGateway, case: Case) -> Answer:
    headers = [(name.encode(), value.encode()) for name, value in case.headers]
    response = gateway.request(case.method, case.url, content=case.content, headers=headers)
    payload: Any = None
    if response.headers.get("content-type", "").startswith("application/json"):
        payload = json.loads(response.content)
    return Answer(response.status_code, response.content, payload)


def outcome_label(answer: Answer) -> str:
    payload = answer.payload
    if isinstance(payload, dict):
        for name in ("code", "err_code", "errcode", "error", "result"):
            if name in payload:
                return f"{answer.status}:{payload[name]}"
    return str(answer.status)


def check_common(case: Case, answer: Answer, secrets: list[str]) -> None:
    assert answer.status < 500, (case, answer)
    # Echoed input (a tx_id, an admin path segment) may legitimately carry any text.
    sent = case.url.encode() + unquote(case.url).encode("utf-8", "replace") + case.content
    for marker in EXCEPTION_MARKERS:
        assert marker not in answer.body or marker in sent, (marker, case, answer)
    for secret in secrets:
        raw = secret.encode()
        assert raw not in answer.body or raw in sent, ("secret in answer", case, answer)


def wrong_method(answer: Answer) -> bool:
    assert answer.status == 405, answer
    return False


def minigame_envelope(answer: Answer) -> bool:
    if answer.status != 200:
        return wrong_method(answer)
    payload = answer.payload
    assert isinstance(payload, dict), answer
    assert set(payload) <= {"data", "code", "msg"}, payload
    assert payload["code"] in MINIGAME_CODES and isinstance(payload["msg"], str), payload
    assert ("data" in payload) == (payload["code"] == 1), payload
    return payload["code"] in MINIGAME_MAY_CHANGE


def transfer_envelope(answer: Answer) -> bool:
    if answer.status != 200:
        return wrong_method(answer)
    payload = answer.payload
    assert isinstance(payload, dict), answer
    assert set(payload) <= {"data", "code", "msg"}, payload
    assert payload["code"] in TRANSFER_CODES and isinstance(payload["msg"], str), payload
    if payload["code"] == 0:
        assert isinstance(payload["data"], dict), payload
    return payload["code"] in TRANSFER_MAY_CHANGE


def wallet_v2_envelope(answer: Answer) -> bool:
    if answer.status in (403, 404):
        assert answer.body == b"", answer
        return False
    if answer.status != 200:
        return wrong_method(answer)
    payload = answer.payload
    assert isinstance(payload, dict), answer
    assert isinstance(payload.get("time"), str), payload
    if payload["result"] == 1:
        assert isinstance(payload["credit"], int), payload
        return True
    assert payload["result"] == 0, payload
    assert payload["err_code"] in WALLET_V2_ERRORS, payload
    assert isinstance(payload["err_desc"], str), payload
    return payload["err_code"] in WALLET_V2_MAY_CHANGE


def midas_envelope(answer: Answer) -> bool:
    if answer.status != 200:
        return wrong_method(answer)
    payload = answer.payload
    assert isinstance(payload, dict), answer
    assert payload["errcode"] in MIDAS_CODES and isinstance(payload["errmsg"], str), payload
    return payload["errcode"] in MIDAS_MAY_CHANGE


def admin_envelope(answer: Answer) -> bool:
    if answer.status == 401:
        assert answer.payload == {
            "error": "unauthorized",
            "detail": "send Authorization: Bearer <[admin] token>",
        }, answer
        return False
    if answer.status == 405:
        return False
    if answer.status == 404 and answer.payload is None:
        assert answer.body == b"Not Found", answer  # no route: Starlette's plain answer
        return False
    assert isinstance(answer.payload, dict), answer
    if answer.status in (200, 201):
        return True
    assert set(answer.payload) == {"error", "detail"}, answer
    assert answer.status in (400, 404, 409, 503), answer
    return False


class DocumentedAnswers:
    """Checks a JSON answer against the schema ``/openapi.json`` gives for it (when jsonschema
    is installed): the document and the gateway must agree."""

    def __init__(self) -> None:
        self.document = openapi_document()
        self.validators: dict[tuple[str, str, int], Any] = {}
        try:
            from jsonschema import Draft202012Validator
        except ImportError:
            self.make: Callable[[dict[str, Any]], Any] | None = None
        else:
            self.make = Draft202012Validator

    def check(self, case: Case, answer: Answer) -> None:
        if self.make is None or answer.payload is None:
            return
        template = case.template or case.url.split("?", 1)[0]
        key = (template, case.method.lower(), answer.status)
        if key not in self.validators:
            operation = self.document["paths"][template].get(case.method.lower(), {})
            documented = operation.get("responses", {}).get(str(answer.status), {})
            schema = documented.get("content", {}).get("application/json", {}).get("schema")
            if not operation and answer.status in (401, 405) and template.startswith("/admin/"):
                # A method the path has no operation for: the admin API answers its error body
                # (401 first without the token, as on every admin path).
                schema = {"$ref": "#/components/schemas/AdminError"}
            assert schema is not None, f"{key} answered JSON the document does not describe"
            root = {**schema, "components": self.document["components"]}
            self.validators[key] = self.make(root)
        errors = [error.message for error in self.validators[key].iter_errors(answer.payload)]
        assert not errors, (key, answer.payload, errors[:3])


DOCUMENTED = DocumentedAnswers()


# -- the harness ----------------------------------------------------------------------------


@dataclass
class Harness:
    gateway: AsgiGateway
    redis: redis.Redis
    secrets: list[str]
    envelope: Envelope
    sent: int = 0
    may_change: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def exercise(self, case: Case) -> Answer:
        before = redis_state(self.redis)
        answer = send(self.gateway, case)
        after = redis_state(self.redis)
        self.sent += 1
        check_common(case, answer, self.secrets)
        changes = self.envelope(answer)
        DOCUMENTED.check(case, answer)
        self.outcomes[outcome_label(answer)] += 1
        if changes and case.authentic:
            self.may_change += 1
        else:
            assert before == after, (case, answer, state_difference(before, after))
        return answer


def fuzz_config(journal_dir: Path, redis_url: str) -> Config:
    raw = gateway_helpers.config_dict(journal_dir)
    raw["redis"]["url"] = redis_url
    raw["server"]["max_body_bytes"] = MAX_BODY_BYTES
    return parse_config(raw)


@dataclass
class Fuzzer:
    """A seeded gateway; :meth:`run` fuzzes one family on it."""

    gateway: AsgiGateway
    redis: redis.Redis
    secrets: list[str]
    transfer_token: str

    def run(self, envelope: Envelope, build: Callable[[st.DataObject], Case]) -> Harness:
        """Fuzz ``build``'s cases, then replay the unauthentic ones in a row."""
        h = Harness(self.gateway, self.redis, self.secrets, envelope)
        unauthentic: list[Case] = []

        @FUZZ_SETTINGS
        @given(data=st.data())
        def explore(data: st.DataObject) -> None:
            case = build(data)
            h.exercise(case)
            if not case.authentic and len(unauthentic) < 200:
                unauthentic.append(case)

        explore()
        # The no-change phase: every collected request with a bad signature, token or body, in
        # a row, must leave the whole keyspace exactly as it was.
        baseline = redis_state(h.redis)
        for case in unauthentic:
            h.exercise(case)
        assert redis_state(h.redis) == baseline
        assert h.sent >= EXAMPLES
        assert h.may_change > 0 or EXAMPLES < 100  # some requests were valid and applied
        if os.environ.get("WALLETGATE_FUZZ_STATS") == "1":
            print(f"\n{h.sent} requests, {h.may_change} may have changed state:")
            for label, count in h.outcomes.most_common():
                print(f"  {label:>32} {count}")
        return h


@pytest.fixture
def fuzzer(tmp_path: Path, redis_url: str) -> Iterator[Fuzzer]:
    config = fuzz_config(tmp_path / "journal", redis_url)
    app = create_app(config, run_journal_writer=False, access_log=AccessLog(enabled=False))
    client = redis.Redis.from_url(redis_url)
    with AsgiGateway(app) as gateway:
        token = seed(gateway)
        yield Fuzzer(gateway, client, config.secrets(), token)
    client.close()


def seed(gw: AsgiGateway) -> str:
    """Known players with money and one applied operation per family, so cancels, awards,
    status lookups and replays have something to find. Returns the transfer token."""
    gw.register(MINIGAME_APP_ID, PLAYER, "usdt", MG_SESSION)
    gw.register(LUCK_APP_ID, PLAYER, "USDT", LUCK_SESSION)
    gw.fund(MINIGAME_APP_ID, PLAYER, "usdt", "1000", "seed-mg")
    gw.fund(LUCK_APP_ID, PLAYER, "USDT", "1000", "seed-luck")
    bet = gw.signed(MINIGAME_PATHS[2], minigame_fields("change_balance"), MINIGAME_KEY)
    assert bet.json()["code"] == 1, bet.text
    authorized = gw.signed(TRANSFER_PATHS[0], transfer_fields("authorize", ""), TRANSFER_KEY)
    assert authorized.json()["code"] == 0, authorized.text
    token = authorized.json()["data"]["token"]
    assert isinstance(token, str)
    gw.fund(TRANSFER_APPID, PLAYER, "usdt", "1000", "seed-transfer")
    moved = gw.signed(TRANSFER_PATHS[1], transfer_fields("transfer", token), TRANSFER_KEY)
    assert moved.json()["code"] == 0, moved.text
    gw.register(WALLET_TOKEN, PLAYER, "USD", V2_CODE)
    gw.fund(WALLET_TOKEN, PLAYER, "USD", "1000", "seed-v2")
    placed = gw.post(WALLET_V2_PATH, content=compact(wallet_v2_fields("bet")))
    assert placed.json()["result"] == 1, placed.text
    gw.register(MIDAS_APPID, MIDAS_OPENID, "1", "fz-midas", session_key=MIDAS_SESSION_KEY)
    gw.fund(MIDAS_APPID, MIDAS_OPENID, "1", "1000", "seed-midas", kind="save")
    gw.fund(MIDAS_APPID, MIDAS_OPENID, "sandbox-1", "1000", "seed-midas-sb", kind="save")
    paid = gw.midas(MIDAS_PATHS[1], midas_fields("pay"), MIDAS_SESSION_KEY)
    assert paid.json()["errcode"] == 0, paid.text
    return token


# -- valid bodies per endpoint ---------------------------------------------------------------


def minigame_fields(endpoint: str, app_id: str = MINIGAME_APP_ID) -> dict[str, Any]:
    session = LUCK_SESSION if app_id == LUCK_APP_ID else MG_SESSION
    if endpoint == "verify_session":
        return {
            "app_id": app_id,
            "timestamp": 1721130791,
            "operator_player_session": session,
            "ip": "203.0.113.9",
            "custom_parameter": "x",
            "game_id": 99,
        }
    if endpoint == "get_balance":
        return {
            "app_id": app_id,
            "uname": PLAYER,
            "currency": "usdt",
            "player_login_token": "t",
            "game_id": 74,
            "timestamp": 1721130791,
        }
    return {
        "app_id": app_id,
        "bet": "3",
        "game_id": 74,
        "money": "-3",
        "order_id": "fz-order-1",
        "player_login_token": "t",
        "session_id": "fz-round-1",
        "timestamp": 1721130791,
        "uname": PLAYER,
        "end_round": False,
        "type": 1,
        "cancel_order_id": "",
        "award_order_ids": None,
    }


MINIGAME_VARIANTS: list[dict[str, Any]] = [
    {},
    {
        "order_id": "fz-order-2",
        "type": 2,
        "money": "3",
        "bet": "0",
        "cancel_order_id": "fz-order-1",
    },
    {
        "order_id": "fz-order-3",
        "type": 3,
        "money": "5.1",
        "bet": "0",
        "award_order_ids": [{"order_id": "fz-order-1", "money": "5.1"}],
    },
    {"order_id": "fz-order-4", "type": 4, "money": "0", "bet": "0", "end_round": True},
    {"order_id": "fz-order-5", "type": 5, "money": "1.25", "bet": "0"},
    {"order_id": "fz-order-6", "type": 6, "money": "-0.5", "bet": "0"},
    {"order_id": "fz-order-7", "type": 7, "money": "2", "bet": "0"},
]


def transfer_fields(endpoint: str, token: str) -> dict[str, Any]:
    base: dict[str, Any] = {"appid": TRANSFER_APPID, "timestamp": 1711954264}
    if endpoint == "authorize":
        return {**base, "uname": PLAYER, "nickname": "玩家"}
    if endpoint == "transfer":
        return {**base, "token": token, "currency": "usdt", "amount": "-10.5", "tx_id": "fz-tx-1"}
    if endpoint == "transfer/status":
        return {**base, "token": token, "tx_id": "fz-tx-1"}
    return {**base, "token": token, "currency": "usdt"}


def wallet_v2_fields(op: str) -> dict[str, Any]:
    body: dict[str, Any] = {"type": op, "code": V2_CODE, "time": "21-09-2023 03:23:23"}
    if op != "credit":
        body.update(id=1, round_id=1)
    if op in ("bet", "win"):
        body.update(game=12)
        body[op] = 500
    return body


def midas_fields(api: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if api == "pay":
        extra = {"amt": 10, "bill_no": "fz-bill-1", "pay_item": "gem"}
    elif api == "cancelpay":
        extra = {"bill_no": "fz-bill-1"}
    elif api == "present":
        extra = {"bill_no": "fz-present-1", "present_counts": 3}
    return midas_params(MIDAS_OPENID, **extra)


# -- the MD5-signed families -------------------------------------------------------------------


def query_text(data: st.DataObject) -> str:
    kind = data.draw(st.sampled_from(["trace", "trace", "none", "odd", "extra"]), label="query")
    if kind == "none":
        return ""
    if kind == "odd":
        return "trace_id=" + quote(data.draw(st.text(max_size=300)), safe="")
    if kind == "extra":
        return "trace_id=fz&trace_id=again&x=%zz&y"
    return "trace_id=fz-trace"


def md5_signed_case(
    data: st.DataObject, path: str, fields: dict[str, Any], key: str, wrong_keys: list[str]
) -> Case:
    pairs = to_pairs(fields)
    original = encode_pairs(pairs)
    if data.draw(st.booleans(), label="mutate structure"):
        pairs = mutate_pairs(data, pairs)
    body = mutate_bytes(data, encode_pairs(pairs))
    if rarely(data, 10, "garbage"):
        body = data.draw(st.binary(max_size=200), label="garbage body")
    url = path + ("?" + query if (query := query_text(data)) else "")
    raw_query = httpx.URL(url).query
    valid = md5_sign(raw_query, body, key)
    mode = data.draw(
        st.sampled_from(
            ["valid", "valid", "valid", "upper", "missing", "random", "stale", "wrong key", "twice"]
        ),
        label="sign",
    )
    headers = data.draw(random_headers, label="headers")
    headers = [(name, value) for name, value in headers if name.lower() != "sign"]
    authentic = mode in ("valid", "upper", "twice")
    if mode == "valid":
        headers.append(("sign", valid))
    elif mode == "upper":
        headers.append(("sign", valid.upper()))
    elif mode == "random":
        headers.append(("sign", data.draw(st.text(alphabet="0123456789abcdef", max_size=40))))
    elif mode == "stale":
        authentic = body == original and raw_query == b"trace_id=fz-trace"
        headers.append(("sign", md5_sign(b"trace_id=fz-trace", original, key)))
    elif mode == "wrong key":
        headers.append(("sign", md5_sign(raw_query, body, data.draw(st.sampled_from(wrong_keys)))))
    elif mode == "twice":
        headers += [("sign", valid), ("sign", "0" * 32)]
    method = odd_method(data)
    return Case(method, url, body, headers, authentic=authentic)


def test_fuzz_minigame_seamless(fuzzer: Fuzzer) -> None:
    paths = [(path, MINIGAME_APP_ID, MINIGAME_KEY) for path in MINIGAME_PATHS]
    paths += [(path, LUCK_APP_ID, LUCK_KEY) for path in LUCK_PATHS]
    paths += [(path, MINIGAME_APP_ID, MINIGAME_KEY) for path in LUCK_PATHS]  # both prefixes
    paths += [(path, LUCK_APP_ID, LUCK_KEY) for path in MINIGAME_PATHS]  # prefix off: 10012

    def build(data: st.DataObject) -> Case:
        path, app_id, key = data.draw(st.sampled_from(paths), label="path")
        endpoint = path.rsplit("/", 1)[1]
        fields = minigame_fields(endpoint, app_id)
        if endpoint == "change_balance":
            fields.update(data.draw(st.sampled_from(MINIGAME_VARIANTS), label="variant"))
            fields["order_id"] = data.draw(
                st.sampled_from([fields["order_id"], "fz-new-order"]), label="order"
            )
        return md5_signed_case(data, path, fields, key, [TRANSFER_KEY, LUCK_KEY + "x"])

    fuzzer.run(minigame_envelope, build)


def test_fuzz_transfer(fuzzer: Fuzzer) -> None:
    def build(data: st.DataObject) -> Case:
        path = data.draw(st.sampled_from(TRANSFER_PATHS), label="path")
        endpoint = path.split("/v1/", 1)[1]
        token = data.draw(st.sampled_from([fuzzer.transfer_token, "fz-unknown-token"]), label="tok")
        fields = transfer_fields(endpoint, token)
        if "tx_id" in fields:
            fields["tx_id"] = data.draw(st.sampled_from(["fz-tx-1", "fz-tx-2"]), label="tx")
        if rarely(data, 10, "tenant"):
            fields["appid"] = data.draw(st.sampled_from([MINIGAME_APP_ID, "9999", ""]))
        return md5_signed_case(data, path, fields, TRANSFER_KEY, [MINIGAME_KEY])

    fuzzer.run(transfer_envelope, build)


# -- Wallet API v.2 ----------------------------------------------------------------------------


def test_fuzz_wallet_v2(fuzzer: Fuzzer) -> None:
    other_tokens = st.one_of(
        st.just("locked_agent"),  # allowlisted to 203.0.113.0/24: 403 unless forwarded
        st.sampled_from(["unknown_agent", "", "a/b", WALLET_TOKEN + "/x", WALLET_TOKEN.lower()]),
        st.text(max_size=50),
    )

    def build(data: st.DataObject) -> Case:
        token = WALLET_TOKEN
        if rarely(data, 4, "other agent"):
            token = data.draw(other_tokens, label="wallet_token")
        op = data.draw(st.sampled_from(["credit", "bet", "win", "cancel"]), label="type")
        fields = wallet_v2_fields(op)
        if op != "credit":
            fields["id"] = data.draw(st.sampled_from([1, 2, "3", 2**64 - 1]), label="id")
        fields["code"] = data.draw(st.sampled_from([V2_CODE, V2_CODE, "fz-unknown"]), label="c")
        pairs = to_pairs(fields)
        if data.draw(st.booleans(), label="mutate structure"):
            pairs = mutate_pairs(data, pairs)
        body = mutate_bytes(data, encode_pairs(pairs))
        if rarely(data, 10, "garbage"):
            body = data.draw(st.binary(max_size=200), label="garbage body")
        url = "/wallet/v2/" + quote(token, safe="/")
        method = odd_method(data)
        headers = data.draw(random_headers, label="headers")
        # Wallet v2 is not signed: a wrong agent token or address is its authentication.
        authentic = token == WALLET_TOKEN or (token == "locked_agent")
        return Case(method, url, body, headers, authentic, "/wallet/v2/{wallet_token}")

    fuzzer.run(wallet_v2_envelope, build)


# -- WeChat Midas ------------------------------------------------------------------------------

midas_value = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(["", "sandbox-1", "a:b", "{x}", "1" * 70, "BILL|*@-_", "0", "-5"]),
)


def test_fuzz_midas(fuzzer: Fuzzer) -> None:
    def build(data: st.DataObject) -> Case:
        path = data.draw(st.sampled_from(MIDAS_PATHS), label="path")
        api = path.rsplit("/", 1)[1]
        params = midas_fields(api)
        if "bill_no" in params:
            params["bill_no"] = data.draw(
                st.sampled_from(["fz-bill-1", "fz-bill-2", "fz-present-1"]), label="bill"
            )
        # Typed mutations the signature still covers (values stay strings or integers).
        typed_mutations = data.draw(st.integers(1, 3)) if rarely(data, 2, "typed") else 0
        for _ in range(typed_mutations):
            name = data.draw(st.sampled_from([*params, "extra", "access_token"]), label="field")
            if rarely(data, 4, "drop field"):
                params.pop(name, None)
            else:
                params[name] = data.draw(midas_value, label="typed value")
        sign = data.draw(
            st.sampled_from(["valid", "valid", "valid", "sig only", "random", "sandbox key"]),
            label="sign",
        )
        session_key = MIDAS_SESSION_KEY
        app_key = None
        if sign == "sig only":
            session_key = "another-session-key"
        elif sign == "sandbox key":
            app_key = gateway_helpers.MIDAS_SANDBOX_KEY + "x"
        signed = midas_sign(params, path, session_key=session_key, app_key=app_key)
        if sign == "random":
            signed["sig"] = data.draw(st.text(alphabet="0123456789abcdef", max_size=64))
        pairs = to_pairs(signed)
        if rarely(data, 3, "untyped"):
            pairs = mutate_pairs(data, pairs)  # floats, nesting, duplicates: 90018 first
        body = mutate_bytes(data, encode_pairs(pairs))
        token = data.draw(
            st.sampled_from(
                [f"access_token={MIDAS_ACCESS_TOKEN}"] * 4
                + [
                    "",
                    "access_token=wrong",
                    f"access_token={MIDAS_ACCESS_TOKEN}" * 2,
                    f"access_token={MIDAS_ACCESS_TOKEN}&access_token={MIDAS_ACCESS_TOKEN}",
                    "access_token=%00",
                ]
            ),
            label="query",
        )
        url = path + ("?" + token if token else "")
        method = odd_method(data)
        headers = data.draw(random_headers, label="headers")
        authentic = sign == "valid" and token == f"access_token={MIDAS_ACCESS_TOKEN}"
        return Case(method, url, body, headers, authentic=authentic)

    fuzzer.run(midas_envelope, build)


# -- admin ----------------------------------------------------------------------------------

path_segment = st.one_of(
    st.sampled_from(
        [
            MINIGAME_APP_ID,
            LUCK_APP_ID,
            TRANSFER_APPID,
            WALLET_TOKEN,
            MIDAS_APPID,
            PLAYER,
            MIDAS_OPENID,
            "usdt",
            "USD",
            "1",
            "sandbox-1",
            "unknown",
            "a:b",
            "{x}",
            "%",
            "",
        ]
    ),
    st.text(max_size=20),
)
admin_tokens = st.sampled_from(
    [f"Bearer {ADMIN_TOKEN}"] * 4
    + [
        None,
        "",
        "Bearer",
        f"Bearer  {ADMIN_TOKEN}",
        f"bearer {ADMIN_TOKEN}",
        f"Basic {ADMIN_TOKEN}",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN.upper()}",
        "Bearer é",
    ]
)
admin_bodies = st.fixed_dictionaries(
    {},
    optional={
        "amount": st.one_of(
            st.sampled_from(["1", "-1", "0.5", "1e3", "1.00000", ""]),
            st.integers(-5, 5),
            st.text(max_size=10),
        ),
        "ref": st.one_of(st.text(max_size=10), st.integers(), st.just("x" * 200)),
        "kind": st.sampled_from(["adjust", "save", "other", 1]),
        "tenant": path_segment,
        "player": path_segment,
        "currency": path_segment,
        "token": path_segment,
        "session_key": st.one_of(st.text(max_size=10), st.integers()),
        "ttl_s": st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([True, "60", 1.5])),
    },
)


ADMIN_ACCOUNTS = [
    (MINIGAME_APP_ID, PLAYER, "usdt"),
    (LUCK_APP_ID, PLAYER, "USDT"),
    (TRANSFER_APPID, PLAYER, "usdt"),
    (WALLET_TOKEN, PLAYER, "USD"),
    (MIDAS_APPID, MIDAS_OPENID, "1"),
    (MIDAS_APPID, MIDAS_OPENID, "sandbox-1"),
]
ADMIN_TEMPLATES = {
    "adjust": "/admin/v1/accounts/{tenant}/{player}/{currency}/adjust",
    "account": "/admin/v1/accounts/{tenant}/{player}/{currency}",
    "sessions": "/admin/v1/sessions",
    "transactions": "/admin/v1/transactions/{tenant}/{key}",
}
ADMIN_KEYS = ["fz-order-1", "fz-tx-1", "USD:1", "USD:1:cancel", "fz-bill-1", "admin:seed-mg"]


def test_fuzz_admin(fuzzer: Fuzzer) -> None:
    def build(data: st.DataObject) -> Case:
        route = data.draw(st.sampled_from(["adjust", "account", "sessions", "transactions"]))
        account = list(data.draw(st.sampled_from(ADMIN_ACCOUNTS), label="account"))
        for index in range(3):
            if rarely(data, 6, "random segment"):
                account[index] = data.draw(path_segment, label="segment")
        tenant, player, currency = (quote(part, safe="") for part in account)
        fields: dict[str, Any] = {}
        template = ADMIN_TEMPLATES[route]
        if route == "adjust":
            method, url = "POST", f"/admin/v1/accounts/{tenant}/{player}/{currency}/adjust"
            fields = {
                "amount": data.draw(st.sampled_from(["1", "-1", "0.5", "7"]), label="amount"),
                "ref": data.draw(st.sampled_from(["fz-ref-1", "fz-ref-2", "seed-mg"])),
                "kind": data.draw(st.sampled_from(["adjust", "save"]), label="kind"),
            }
        elif route == "account":
            method, url = "GET", f"/admin/v1/accounts/{tenant}/{player}/{currency}"
        elif route == "sessions":
            method, url = "POST", "/admin/v1/sessions"
            fields = dict(zip(("tenant", "player", "currency"), account, strict=True))
            fields["token"] = data.draw(st.sampled_from([MG_SESSION, "fz-new-token"]))
            if account[0] == MIDAS_APPID:
                fields["session_key"] = MIDAS_SESSION_KEY
        else:
            key = data.draw(st.one_of(st.sampled_from(ADMIN_KEYS), path_segment), label="key")
            method, url = "GET", f"/admin/v1/transactions/{tenant}/{quote(key, safe=':')}"
            if data.draw(st.booleans(), label="with player"):
                url += "?player=" + player
        method = odd_method(data, method)
        if rarely(data, 4, "random body"):
            fields = data.draw(admin_bodies, label="body")
        pairs = to_pairs(fields)
        if data.draw(st.booleans(), label="mutate structure"):
            pairs = mutate_pairs(data, pairs)
        body = mutate_bytes(data, encode_pairs(pairs)) if method == "POST" else b""
        authorization: str | None = f"Bearer {ADMIN_TOKEN}"
        if rarely(data, 3, "bad token"):
            authorization = data.draw(admin_tokens, label="authorization")
        headers = [
            (name, value)
            for name, value in data.draw(random_headers, label="headers")
            if name.lower() != "authorization"
        ]
        if authorization is not None:
            headers.append(("authorization", authorization))
        authentic = authorization == f"Bearer {ADMIN_TOKEN}"
        return Case(method, url, body, headers, authentic, template)

    fuzzer.run(admin_envelope, build)


# -- coverage: every route is fuzzed and described ----------------------------------------------


def test_every_route_is_fuzzed_and_in_the_openapi_document(tmp_path: Path, redis_url: str) -> None:
    from starlette.routing import Route

    config = fuzz_config(tmp_path / "journal", redis_url)
    app = create_app(config, run_journal_writer=False, access_log=AccessLog(enabled=False))
    served = {route.path for route in app.routes if isinstance(route, Route)}
    served = {p.replace("{wallet_token:path}", "{wallet_token}") for p in served}
    served = {p.replace("{key:path}", "{key}") for p in served}
    # The admin catch-all answers only errors (401, 404, 405), so it is no documented operation.
    served.discard("/admin/v1/{rest:path}")
    fuzzed = {
        *MINIGAME_PATHS,
        *LUCK_PATHS,
        *TRANSFER_PATHS,
        *MIDAS_PATHS,
        "/wallet/v2/{wallet_token}",
        *ADMIN_TEMPLATES.values(),
    }
    operations = {"/healthz", "/readyz", "/metrics", DOCUMENT_PATH}
    assert served - operations == fuzzed
    documented = set(openapi_document()["paths"])
    assert documented == fuzzed | operations
    # The document holds no configuration: no key, token or tenant id of the config.
    text = orjson.dumps(openapi_document()).decode()
    assert not [secret for secret in config.secrets() if secret in text]
    with AsgiGateway(app) as gateway:
        if DOCUMENT_PATH in served:  # wired by the app: served as built
            answer = gateway.get(DOCUMENT_PATH)
            assert answer.status_code == 200 and answer.json() == openapi_document()

    try:
        from openapi_spec_validator import validate
    except ImportError:  # optional: the structure checks above still ran
        return
    validate(openapi_document())


def test_openapi_routes_serve_the_document() -> None:
    from starlette.applications import Starlette

    with AsgiGateway(Starlette(routes=openapi_routes())) as gateway:
        answer = gateway.get(DOCUMENT_PATH)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == openapi_document()
        assert gateway.request("POST", DOCUMENT_PATH).status_code == 405
    copy = openapi_document()
    copy["paths"].clear()  # a caller's copy is its own
    assert openapi_document()["paths"]
    with pytest.raises(ValueError):
        openapi_document(config_free=False)
