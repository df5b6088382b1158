"""The OpenAPI 3.1 description of every public endpoint, served as ``GET /openapi.json``.

The document is built once, at import, from the spec (docs ``spec/*.md``): request bodies with
their fields and JSON types, the ``sign`` header, the ``trace_id`` and ``access_token`` query
parameters, and each family's envelope as the HTTP 200 answer. It carries no configuration: no
tenant ids, keys or tokens, so it can be published to integrators as it is.

A schema describes what walletgate accepts on the wire; the checks that are not expressible in
JSON Schema (the signatures, duplicate keys, the money rules per ``type``) are named in the
descriptions. Schemas do not forbid extra fields, because the gateway ignores unknown fields
(Midas signs them, so they must still be sent as given).
"""

from __future__ import annotations

import copy
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

OPENAPI_VERSION: Final = "3.1.0"
DOCUMENT_PATH: Final = "/openapi.json"
JSON: Final = "application/json"

Schema = dict[str, Any]

# -- shared schemas ----------------------------------------------------------------------------

DECIMAL_PATTERN: Final = r"^-?(0|[1-9][0-9]*)(\.[0-9]{1,4})?$"
OUTPUT_DECIMAL_PATTERN: Final = r"^(?!-0$)-?(0|[1-9][0-9]*)(\.[0-9]{0,3}[1-9])?$"
DIGITS_PATTERN: Final = r"^(0|[1-9][0-9]*)$"
UINT64_MAX: Final = 18_446_744_073_709_551_615
INT64_MAX: Final = 9_223_372_036_854_775_807


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], required: list[str], description: str = "") -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "required": required}
    if description:
        schema["description"] = description
    return schema


def _string(description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def _integer(description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": "integer", **extra}
    if description:
        schema["description"] = description
    return schema


def _json_body(schema: Schema, description: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"required": True, "content": {JSON: {"schema": schema}}}
    if description:
        body["description"] = description
    return body


def _json_answer(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


COMMON_SCHEMAS: Final[dict[str, Schema]] = {
    "Decimal": {
        "description": (
            "A decimal amount in the major unit, at most 4 decimal places, as a JSON string or a "
            "JSON number (its literal text is converted exactly; exponents, NaN, Infinity, a "
            "leading + and more than 4 decimals are rejected). Range: "
            "±922337203685477.5807."
        ),
        "oneOf": [
            {"type": "string", "pattern": DECIMAL_PATTERN},
            {"type": "number"},
        ],
    },
    "DecimalText": {
        "type": "string",
        "pattern": DECIMAL_PATTERN,
        "description": "A decimal amount in the major unit as a string, at most 4 decimals.",
    },
    "DecimalString": {
        "type": "string",
        "pattern": OUTPUT_DECIMAL_PATTERN,
        "description": "An amount walletgate writes: no trailing zeros (4289.1, 0, 33.66).",
    },
    "Uint64": {
        "description": "0 … 18446744073709551615 as a JSON integer or a digit string (exact).",
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": UINT64_MAX},
            {"type": "string", "pattern": DIGITS_PATTERN, "maxLength": 20},
        ],
    },
    "Timestamp": {
        "type": "integer",
        "minimum": 0,
        "maximum": INT64_MAX,
        "description": "UNIX seconds. Logged; never rejected for its age.",
    },
}

# -- MINI.GAME seamless (walletgate is the integrator) -----------------------------------------

MINIGAME_CODES: Final = [
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
]

MINIGAME_SCHEMAS: Final[dict[str, Schema]] = {
    "MinigameError": _object(
        {
            "code": _integer(enum=MINIGAME_CODES[1:]),
            "msg": _string("For example `sign invalid`, `illegal parameter`."),
        },
        ["code", "msg"],
        "A MINI.GAME error (HTTP 200). 10015: Redis unavailable, nothing applied; retry.",
    ),
    "MinigameBalanceAnswer": _object(
        {
            "data": _object({"balance": _ref("DecimalString")}, ["balance"]),
            "code": _integer(enum=[1]),
            "msg": _string(enum=["ok"]),
        },
        ["data", "code", "msg"],
    ),
    "MinigameVerifyAnswer": _object(
        {
            "data": _object(
                {
                    "uname": _string(),
                    "nickname": _string("Equal to uname."),
                    "balance": {
                        "description": (
                            "On /api/: one entry per merchant currency, default first, the "
                            "amount a JSON number written exactly. On /api/luck/: the balance "
                            "in the session's currency as a decimal string."
                        ),
                        "oneOf": [
                            {
                                "type": "array",
                                "items": _object(
                                    {"currency": _string(), "amount": {"type": "number"}},
                                    ["currency", "amount"],
                                ),
                            },
                            _ref("DecimalString"),
                        ],
                    },
                },
                ["uname", "nickname", "balance"],
            ),
            "code": _integer(enum=[1]),
            "msg": _string(enum=["ok"]),
        },
        ["data", "code", "msg"],
    ),
    "MinigameVerifySession": _object(
        {
            "app_id": _string("The merchant id; chooses the signing key."),
            "timestamp": _ref("Timestamp"),
            "operator_player_session": _string(
                "A token registered with POST /admin/v1/sessions.", minLength=1, maxLength=512
            ),
            "ip": _string("Logged."),
            "custom_parameter": _string("Logged."),
            "game_id": _integer("Not validated."),
        },
        ["app_id", "timestamp", "operator_player_session"],
    ),
    "MinigameGetBalance": _object(
        {
            "app_id": _string(),
            "uname": _string("The player.", minLength=1, maxLength=128),
            "currency": _string("Case-insensitive; absent: the merchant's default currency."),
            "player_login_token": _string("Not validated."),
            "game_id": _integer(),
            "timestamp": _ref("Timestamp"),
        },
        ["app_id", "uname", "timestamp"],
    ),
    "MinigameAwardItem": _object(
        {"order_id": _string(minLength=1, maxLength=64), "money": _ref("Decimal")},
        ["order_id", "money"],
    ),
    "MinigameChangeBalance": _object(
        {
            "app_id": _string(),
            "uname": _string(minLength=1, maxLength=128),
            "currency": _string("Absent: the merchant's default currency."),
            "money": {
                "allOf": [_ref("Decimal")],
                "description": (
                    "The signed change. type 1: < 0 (and |money| == bet when bet is non-zero); "
                    "2: any valid decimal, only compared; 3, 4, 5, 7: >= 0; 6: != 0."
                ),
            },
            "bet": {"allOf": [_ref("Decimal")], "description": "Positive; sent on bets."},
            "type": _integer(
                "1 bet, 2 cancel, 3 in-round payout, 4 settlement, 5/7 OMG credits, "
                "6 OMG position fee (5-7 only if enabled for the merchant).",
                enum=[1, 2, 3, 4, 5, 6, 7],
            ),
            "order_id": _string("The idempotency key with app_id.", minLength=1, maxLength=64),
            "session_id": _string("Required for types 1-4: the round.", maxLength=128),
            "end_round": {"type": "boolean", "description": "Absent means false."},
            "cancel_order_id": _string('Type 2: the bet to cancel; "" means none.', maxLength=64),
            "award_order_ids": {
                "type": ["array", "null"],
                "items": _ref("MinigameAwardItem"),
                "description": "Types 3 and 4: the bets awarded; null, absent and [] are equal.",
            },
            "timestamp": _ref("Timestamp"),
            "player_login_token": _string("Logged."),
            "game_id": _integer("Logged."),
            "round_id": {"type": ["string", "integer"], "description": "Logged."},
        },
        ["app_id", "uname", "money", "type", "order_id", "timestamp"],
    ),
}


def _signed_parameters(tenant_field: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "trace_id",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "The caller's trace id; logged only. Part of the signed raw query.",
        },
        {
            "name": "sign",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
            "description": (
                "lowercase_hex(md5(raw_query + raw_body + key)) over the exact bytes sent, with "
                f"the key of the merchant named by `{tenant_field}`. Missing or wrong: 10002."
            ),
        },
    ]


def _minigame_operation(summary: str, body: str, answer: str, luck: bool) -> dict[str, Any]:
    where = "OMG (/api/luck/)" if luck else "MINI.GAME (/api/)"
    return {
        "post": {
            "tags": ["MINI.GAME seamless"],
            "summary": f"{summary}, {where}",
            "operationId": ("luck_" if luck else "") + summary.replace(" ", "_"),
            "parameters": _signed_parameters("app_id"),
            "requestBody": _json_body(_ref(body)),
            "responses": {
                "200": _json_answer(
                    {"anyOf": [_ref(answer), _ref("MinigameError")]},
                    "Always HTTP 200: code 1 on success, or an error code.",
                ),
                "405": {"description": "Wrong method."},
            },
        }
    }


MINIGAME_ENDPOINTS: Final = (
    ("user/verify_session", "verify session", "MinigameVerifySession", "MinigameVerifyAnswer"),
    ("balance/get_balance", "get balance", "MinigameGetBalance", "MinigameBalanceAnswer"),
    ("balance/change_balance", "change balance", "MinigameChangeBalance", "MinigameBalanceAnswer"),
)

MINIGAME_PATHS: Final[dict[str, Any]] = {
    f"{base}/{suffix}": _minigame_operation(summary, body, answer, luck=base == "/api/luck")
    for base in ("/api", "/api/luck")
    for suffix, summary, body, answer in MINIGAME_ENDPOINTS
}

# -- MINI.GAME transfer (walletgate is the platform) -------------------------------------------

TRANSFER_CODES: Final = [
    10001,
    10002,
    10005,
    10009,
    10011,
    10015,
    10019,
    10020,
    10021,
    10022,
    10023,
]


def _transfer_ok(data: Schema) -> Schema:
    return _object(
        {"data": data, "code": _integer(enum=[0]), "msg": _string(enum=["ok"])},
        ["data", "code", "msg"],
    )


TRANSFER_SCHEMAS: Final[dict[str, Schema]] = {
    "TransferError": _object(
        {"code": _integer(enum=TRANSFER_CODES), "msg": _string()},
        ["code", "msg"],
        "A transfer error (HTTP 200). 10015: Redis unavailable, nothing applied; retry.",
    ),
    "TransferAuthorize": _object(
        {
            "appid": _string("The merchant id; chooses the signing key."),
            "timestamp": _ref("Timestamp"),
            "uname": _string("Created with a 0 account on first use.", minLength=1, maxLength=128),
            "nickname": _string("At most 40 UTF-8 bytes; logged."),
        },
        ["appid", "timestamp", "uname", "nickname"],
    ),
    "TransferAuthorizeAnswer": _transfer_ok(
        _object(
            {
                "token": _string("Opaque; bound to (appid, uname), valid token_ttl_s."),
                "balance": _ref("DecimalString"),
                "appid": _string(),
            },
            ["token", "balance", "appid"],
        )
    ),
    "TransferTransfer": _object(
        {
            "appid": _string(),
            "token": _string(),
            "timestamp": _ref("Timestamp"),
            "currency": _string(),
            "amount": {
                "allOf": [_ref("Decimal")],
                "description": "Non-zero: positive moves funds into the game wallet.",
            },
            "tx_id": _string("The idempotency key with appid.", minLength=1, maxLength=64),
        },
        ["appid", "token", "timestamp", "currency", "amount", "tx_id"],
    ),
    "TransferTransferAnswer": _object(
        {
            "data": _object(
                {
                    "tx_id": _string(),
                    "ptx_id": _string("walletgate's transaction id (decimal string)."),
                    "state": _integer("0 failed, 1 succeeded, 2 pending.", enum=[0, 1, 2]),
                },
                ["tx_id", "ptx_id", "state"],
            ),
            "code": _integer("0, or 10001 (stored with state 0).", enum=[0, 10001]),
            "msg": _string(),
        },
        ["data", "code", "msg"],
    ),
    "TransferStatus": _object(
        {
            "appid": _string(),
            "timestamp": _ref("Timestamp"),
            "token": _string(),
            "tx_id": _string(minLength=1, maxLength=64),
        },
        ["appid", "timestamp", "token", "tx_id"],
    ),
    "TransferStatusAnswer": _transfer_ok(
        _object(
            {
                "currency": _string(),
                "amount": _ref("DecimalString"),
                "state": _integer(enum=[0, 1, 2]),
            },
            ["currency", "amount", "state"],
        )
    ),
    "TransferWallet": _object(
        {
            "appid": _string(),
            "timestamp": _ref("Timestamp"),
            "token": _string(),
            "currency": _string(),
        },
        ["appid", "timestamp", "token", "currency"],
    ),
    "TransferWalletAnswer": _transfer_ok(
        _object({"currency": _string(), "balance": _ref("DecimalString")}, ["currency", "balance"])
    ),
}


def _transfer_operation(summary: str, body: str, answer: str) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["MINI.GAME transfer"],
            "summary": summary,
            "operationId": "transfer_" + summary.replace(" ", "_").replace("/", "_"),
            "parameters": _signed_parameters("appid"),
            "requestBody": _json_body(_ref(body)),
            "responses": {
                "200": _json_answer(
                    {"anyOf": [_ref(answer), _ref("TransferError")]},
                    "Always HTTP 200: code 0 on success, or an error code.",
                ),
                "405": {"description": "Wrong method."},
            },
        }
    }


TRANSFER_PATHS: Final[dict[str, Any]] = {
    "/api/player/v1/authorize": _transfer_operation(
        "authorize", "TransferAuthorize", "TransferAuthorizeAnswer"
    ),
    "/api/cash/v1/transfer": _transfer_operation(
        "transfer", "TransferTransfer", "TransferTransferAnswer"
    ),
    "/api/cash/v1/transfer/status": _transfer_operation(
        "transfer/status", "TransferStatus", "TransferStatusAnswer"
    ),
    "/api/cash/v1/getPlayerWallet": _transfer_operation(
        "getPlayerWallet", "TransferWallet", "TransferWalletAnswer"
    ),
}

# -- Wallet API v.2 (walletgate is the server of credits) --------------------------------------

WALLET_V2_ERRORS: Final = [
    "INVALID_SESSION",
    "BAD_REQUEST",
    "INSUFFICIENT_FUNDS",
    "DUPLICATE_ID",
    "CANCELLED",
    "SETTLED",
    "INTERNAL_ERROR",
]
WALLET_V2_TIME: Final = _string(
    "UTC, DD-MM-YYYY HH:MM:SS.", pattern=r"^\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2}$"
)
CENTS: Final = _integer("Integer cents >= 0.", minimum=0, maximum=INT64_MAX)

WALLET_V2_SCHEMAS: Final[dict[str, Schema]] = {
    "WalletV2Request": _object(
        {
            "type": _string(enum=["credit", "bet", "win", "cancel"]),
            "code": _string(
                "A session token registered with POST /admin/v1/sessions.",
                minLength=1,
                maxLength=256,
            ),
            "time": _string("DD-MM-YYYY HH:MM:SS; not validated."),
            "id": {"allOf": [_ref("Uint64")], "description": "Required for bet, win, cancel."},
            "round_id": {"allOf": [_ref("Uint64")], "description": "The round's first bet id."},
            "game": _integer("Required for bet and win; logged."),
            "bet": {**CENTS, "description": "Required for bet: integer cents >= 0."},
            "win": {**CENTS, "description": "Required for win: integer cents >= 0."},
        },
        ["type", "code"],
        "`type` picks the operation. Not signed: the URL is the credential.",
    ),
    "WalletV2Credit": _object(
        {
            "credit": _integer("Balance in integer cents, floored toward zero."),
            "player_id": _string(),
            "result": _integer(enum=[1]),
            "time": WALLET_V2_TIME,
            "currency": _string(),
        },
        ["credit", "player_id", "result", "time", "currency"],
    ),
    "WalletV2Success": _object(
        {"credit": _integer(), "result": _integer(enum=[1]), "time": WALLET_V2_TIME},
        ["credit", "result", "time"],
    ),
    "WalletV2Error": _object(
        {
            "result": _integer(enum=[0]),
            "err_code": _string(enum=WALLET_V2_ERRORS),
            "err_desc": _string(),
            "credit": _integer("Present when the account is known."),
            "time": WALLET_V2_TIME,
        },
        ["result", "err_code", "err_desc", "time"],
        "INTERNAL_ERROR: Redis unavailable, nothing applied; retry.",
    ),
}

WALLET_V2_PATHS: Final[dict[str, Any]] = {
    "/wallet/v2/{wallet_token}": {
        "post": {
            "tags": ["Wallet API v.2"],
            "summary": "credit, bet, win or cancel (the body's type)",
            "operationId": "wallet_v2",
            "parameters": [
                {
                    "name": "wallet_token",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,40}$"},
                    "description": "The agent's secret token (keep the URL secret, HTTPS only).",
                }
            ],
            "requestBody": _json_body(_ref("WalletV2Request")),
            "responses": {
                "200": _json_answer(
                    {
                        "anyOf": [
                            _ref("WalletV2Credit"),
                            _ref("WalletV2Success"),
                            _ref("WalletV2Error"),
                        ]
                    },
                    "result 1 on success, result 0 with err_code on error.",
                ),
                "403": {"description": "The client address is not allowlisted (empty body)."},
                "404": {"description": "Unknown wallet_token (empty body)."},
                "405": {"description": "Wrong method."},
            },
        }
    }
}

# -- WeChat Midas v1 ---------------------------------------------------------------------------

MIDAS_CODES: Final = [-1, 40001, 90000, 90009, 90010, 90011, 90012, 90013, 90015, 90017, 90018]
MIDAS_COMMON: Final[dict[str, Schema]] = {
    "openid": _string("The player.", minLength=1, maxLength=128),
    "appid": _string("The app; chooses the AppKey."),
    "offer_id": _string("Must equal the configured offer_id (else 90017)."),
    "ts": {"allOf": [_ref("Timestamp")]},
    "zone_id": _string('"1" when there are no zones.', minLength=1, maxLength=64),
    "pf": _string("For example android.", minLength=1),
    "user_ip": _string(),
    "sig": _string(
        "HMAC-SHA256 with the AppKey (sandbox AppKey on the sandbox).", pattern="^[0-9a-f]{64}$"
    ),
    "mp_sig": _string("HMAC-SHA256 with the player's session_key.", pattern="^[0-9a-f]{64}$"),
}
MIDAS_REQUIRED: Final = ["openid", "appid", "offer_id", "ts", "zone_id", "pf", "sig", "mp_sig"]
BILL_NO: Final = _string("The idempotency key with appid.", pattern=r"^[A-Za-z0-9_\-|*@]{1,63}$")
MIDAS_VALUES_NOTE: Final = (
    "Values must be JSON strings or integers (else 90018); every body field except sig and "
    "mp_sig is signed. access_token is read from the query only."
)


def _midas_request(extra: dict[str, Schema], required: list[str]) -> Schema:
    return _object({**MIDAS_COMMON, **extra}, MIDAS_REQUIRED + required, MIDAS_VALUES_NOTE)


def _midas_ok(extra: dict[str, Schema], required: list[str]) -> Schema:
    return _object(
        {"errcode": _integer(enum=[0]), "errmsg": _string(enum=["ok"]), **extra},
        ["errcode", "errmsg", *required],
    )


MIDAS_SCHEMAS: Final[dict[str, Schema]] = {
    "MidasError": _object(
        {"errcode": _integer(enum=MIDAS_CODES), "errmsg": _string()},
        ["errcode", "errmsg"],
        "A Midas error (HTTP 200). -1 system busy: Redis unavailable, nothing applied; retry.",
    ),
    "MidasGetBalance": _midas_request({}, []),
    "MidasGetBalanceAnswer": _midas_ok(
        {
            "balance": _integer("Paid plus gifted coins."),
            "gen_balance": _integer("Gifted coins."),
            "first_save": _integer(enum=[1, 2]),
            "save_amt": _integer(),
            "save_sum": _integer(),
            "cost_sum": _integer(),
            "present_sum": _integer(),
        },
        ["balance", "gen_balance", "first_save", "save_amt", "save_sum", "cost_sum", "present_sum"],
    ),
    "MidasPay": _midas_request(
        {
            "amt": _integer("Coins to deduct (gifted first).", minimum=1),
            "bill_no": BILL_NO,
            "pay_item": _string("Logged."),
            "app_remark": _string("Logged."),
        },
        ["amt", "bill_no"],
    ),
    "MidasPayAnswer": _midas_ok(
        {"bill_no": _string(), "balance": _integer(), "used_gen_amt": _integer()},
        ["bill_no", "balance", "used_gen_amt"],
    ),
    "MidasCancelPay": _midas_request(
        {"bill_no": {**BILL_NO, "description": "The pay's bill_no."}, "pay_item": _string()},
        ["bill_no"],
    ),
    "MidasCancelPayAnswer": _midas_ok({"bill_no": _string()}, ["bill_no"]),
    "MidasPresent": _midas_request(
        {"bill_no": BILL_NO, "present_counts": _integer("Coins to gift.", minimum=1)},
        ["bill_no", "present_counts"],
    ),
    "MidasPresentAnswer": _midas_ok(
        {"balance": _integer(), "bill_no": _string()}, ["balance", "bill_no"]
    ),
}

MIDAS_APIS: Final = (
    ("getbalance", "MidasGetBalance", "MidasGetBalanceAnswer"),
    ("pay", "MidasPay", "MidasPayAnswer"),
    ("cancelpay", "MidasCancelPay", "MidasCancelPayAnswer"),
    ("present", "MidasPresent", "MidasPresentAnswer"),
)


def _midas_operation(api: str, body: str, answer: str, sandbox: bool) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["WeChat Midas v1"],
            "summary": api + (" (sandbox)" if sandbox else ""),
            "operationId": ("midas_sandbox_" if sandbox else "midas_") + api,
            "parameters": [
                {
                    "name": "access_token",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "One of the app's access tokens (else 40001); part of mp_sig.",
                }
            ],
            "requestBody": _json_body(_ref(body)),
            "responses": {
                "200": _json_answer(
                    {"anyOf": [_ref(answer), _ref("MidasError")]},
                    "Always HTTP 200: errcode 0 on success, or an errcode.",
                ),
                "405": {"description": "Wrong method."},
            },
        }
    }


MIDAS_PATHS: Final[dict[str, Any]] = {
    f"{base}{api}": _midas_operation(api, body, answer, sandbox=sandbox)
    for sandbox, base in ((False, "/cgi-bin/midas/"), (True, "/cgi-bin/midas/sandbox/"))
    for api, body, answer in MIDAS_APIS
}

# -- Admin, health, metrics --------------------------------------------------------------------

ADMIN_SCHEMAS: Final[dict[str, Schema]] = {
    "AdminError": _object(
        {"error": _string("A stable code, for example unknown_tenant."), "detail": _string()},
        ["error", "detail"],
    ),
    "AdminAdjust": _object(
        {
            "amount": {
                "allOf": [_ref("DecimalText")],
                "description": "Non-zero; positive credits. Midas: whole coins.",
            },
            "ref": _string("The idempotency key with the tenant.", minLength=1, maxLength=128),
            "kind": _string("save: Midas only, amount > 0.", enum=["adjust", "save"]),
        },
        ["amount", "ref"],
    ),
    "AdminAdjustAnswer": _object(
        {"balance": _ref("DecimalString"), "ref": _string()}, ["balance", "ref"]
    ),
    "AdminAccount": _object(
        {
            "tenant": _string(),
            "player": _string(),
            "currency": _string(),
            "balance": _ref("DecimalString"),
            "paid": _integer("Midas only."),
            "gen_balance": _integer("Midas only."),
            "first_save": _integer("Midas only.", enum=[1, 2]),
            "save_amt": _integer("Midas only."),
            "save_sum": _integer("Midas only."),
            "cost_sum": _integer("Midas only."),
            "present_sum": _integer("Midas only."),
        },
        ["tenant", "player", "currency", "balance"],
    ),
    "AdminSession": _object(
        {
            "tenant": _string(),
            "player": _string(minLength=1, maxLength=128),
            "currency": _string("Midas: the zone_id (or sandbox-<zone_id>)."),
            "token": _string("MINI.GAME operator_player_session, Wallet v2 code, Midas handle."),
            "session_key": _string("Midas only, and required there."),
            "ttl_s": _integer("Default 604800.", minimum=1),
        },
        ["tenant", "player", "currency", "token"],
    ),
    "AdminSessionAnswer": _object(
        {"token": _string(), "expires_at": _integer("UNIX seconds.")}, ["token", "expires_at"]
    ),
    "StoredOutcome": _object(
        {
            "tenant": _string(),
            "key": _string(),
            "protocol": _string(),
            "op": _string(),
            "player": _string(),
            "currency": _string(),
            "state": _string(enum=["applied", "rejected", "tombstone"]),
            "delta": _ref("DecimalString"),
            "balance_after": _ref("DecimalString"),
            "response": {"description": "The original answer the family gave."},
            "created_at": _string(format="date-time"),
            "expires_at": {"type": ["string", "null"], "format": "date-time"},
            "cancelled_by": _string(),
            "settled_by": _string(),
        },
        ["tenant", "key", "protocol", "op", "player", "currency", "state", "response"],
    ),
}


def _admin_errors(*statuses: str) -> dict[str, Any]:
    answers: dict[str, Any] = {
        "401": _json_answer(
            _ref("AdminError"), "Missing or wrong bearer token (error `unauthorized`)."
        )
    }
    for status in statuses:
        answers[status] = _json_answer(_ref("AdminError"), "See the error code.")
    return answers


TENANT_PARAMETERS: Final = [
    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    for name in ("tenant", "player", "currency")
]

ADMIN_PATHS: Final[dict[str, Any]] = {
    "/admin/v1/accounts/{tenant}/{player}/{currency}/adjust": {
        "post": {
            "tags": ["Admin"],
            "summary": "Credit or debit an account (idempotent on tenant and ref)",
            "operationId": "admin_adjust",
            "security": [{"adminBearer": []}],
            "parameters": TENANT_PARAMETERS,
            "requestBody": _json_body(_ref("AdminAdjust")),
            "responses": {
                "200": _json_answer(_ref("AdminAdjustAnswer"), "Applied, or the original answer."),
                **_admin_errors("400", "404", "409", "503"),
            },
        }
    },
    "/admin/v1/accounts/{tenant}/{player}/{currency}": {
        "get": {
            "tags": ["Admin"],
            "summary": "Read an account (Midas adds its parts and counters)",
            "operationId": "admin_account",
            "security": [{"adminBearer": []}],
            "parameters": TENANT_PARAMETERS,
            "responses": {
                "200": _json_answer(_ref("AdminAccount"), "The account."),
                **_admin_errors("404", "503"),
            },
        }
    },
    "/admin/v1/sessions": {
        "post": {
            "tags": ["Admin"],
            "summary": "Register a session token, or extend its expiry",
            "operationId": "admin_session",
            "security": [{"adminBearer": []}],
            "requestBody": _json_body(_ref("AdminSession")),
            "responses": {
                "201": _json_answer(_ref("AdminSessionAnswer"), "Registered or extended."),
                **_admin_errors("400", "404", "409", "503"),
            },
        }
    },
    "/admin/v1/transactions/{tenant}/{key}": {
        "get": {
            "tags": ["Admin"],
            "summary": "The stored outcome of an idempotency key",
            "operationId": "admin_transaction",
            "security": [{"adminBearer": []}],
            "parameters": [
                {"name": "tenant", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "key",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": (
                        "order_id, tx_id, <currency>:<id>[:cancel], bill_no or admin:<ref>."
                    ),
                },
                {
                    "name": "player",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Without it, the journal writer's key-to-player map is used.",
                },
            ],
            "responses": {
                "200": _json_answer(_ref("StoredOutcome"), "The stored outcome."),
                **_admin_errors("404", "503"),
            },
        }
    },
}

HEALTH_PATHS: Final[dict[str, Any]] = {
    "/healthz": {
        "get": {
            "tags": ["Operations"],
            "summary": "The process serves",
            "operationId": "healthz",
            "responses": {"200": _json_answer({"type": "object"}, "Serving.")},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["Operations"],
            "summary": "Redis answers, scripts loaded, journal writer alive and not lagging",
            "operationId": "readyz",
            "responses": {
                "200": _json_answer({"type": "object"}, "Ready."),
                "503": _json_answer({"type": "object"}, "Not ready; the checks say why."),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["Operations"],
            "summary": "Prometheus text, aggregated across workers (internal networks only)",
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "Prometheus exposition format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    DOCUMENT_PATH: {
        "get": {
            "tags": ["Operations"],
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": _json_answer({"type": "object"}, "OpenAPI 3.1.")},
        }
    },
}

DOCUMENT: Final[dict[str, Any]] = {
    "openapi": OPENAPI_VERSION,
    "info": {
        "title": "walletgate",
        "version": "1",
        "description": (
            "Four game-wallet protocols over one ledger: MINI.GAME seamless (integrator), "
            "MINI.GAME transfer (platform), Wallet API v.2 (server of credits) and WeChat Midas "
            "v1 (virtual currency), plus the operator's admin API. A protocol outcome is HTTP "
            "200 in its family's envelope; money is exact (4 decimal places)."
        ),
    },
    "tags": [
        {"name": "MINI.GAME seamless"},
        {"name": "MINI.GAME transfer"},
        {"name": "Wallet API v.2"},
        {"name": "WeChat Midas v1"},
        {"name": "Admin"},
        {"name": "Operations"},
    ],
    "paths": {
        **MINIGAME_PATHS,
        **TRANSFER_PATHS,
        **WALLET_V2_PATHS,
        **MIDAS_PATHS,
        **ADMIN_PATHS,
        **HEALTH_PATHS,
    },
    "components": {
        "schemas": {
            **COMMON_SCHEMAS,
            **MINIGAME_SCHEMAS,
            **TRANSFER_SCHEMAS,
            **WALLET_V2_SCHEMAS,
            **MIDAS_SCHEMAS,
            **ADMIN_SCHEMAS,
        },
        "securitySchemes": {
            "adminBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "[admin].token, compared in constant time.",
            }
        },
    },
}
DOCUMENT_BYTES: Final = orjson.dumps(DOCUMENT)


def openapi_document(config_free: bool = True) -> dict[str, Any]:
    """A copy of the document (the caller may change it freely).

    The document never holds configuration (tenant ids, keys, tokens, hosts), so
    ``config_free`` must stay true; it exists so that callers state that expectation.
    """
    if not config_free:
        raise ValueError("the OpenAPI document is always free of configuration")
    return copy.deepcopy(DOCUMENT)


def openapi_routes() -> list[Route]:
    """``GET /openapi.json``, answered from bytes serialised once at import."""

    async def serve_document(request: Request) -> Response:
        return Response(DOCUMENT_BYTES, media_type=JSON)

    return [Route(DOCUMENT_PATH, serve_document, methods=["GET"])]
