"""MINI.GAME transfer wallet: the platform APIs walletgate serves to transfer-mode merchants.

Routes (all ``POST …?trace_id=…`` with the header ``sign``): ``/api/player/v1/authorize``,
``/api/cash/v1/transfer``, ``/api/cash/v1/transfer/status``, ``/api/cash/v1/getPlayerWallet``.

Handling, in order: read the raw body (over the limit: 10009); parse it strictly and read
``appid`` only to choose the key (not an object, duplicate keys or no string ``appid``: 10009;
unknown: 10022; a seamless merchant: 10021); check ``sign`` (10002); validate the fields in the
table order (wrong JSON type 10023, missing or bad format 10009, currency not configured 10019);
resolve the token (10011); then one ledger call. Every answer is HTTP 200 in the envelope
``{"data":{…},"code":0,"msg":"ok"}`` or ``{"code":N,"msg":"…"}``.

State 2 (pending) is never produced by these routes on their own: a transfer is checked and
committed by one script call. A pending marker written by
:func:`walletgate.ledger.transfer.admit_transfer` is answered with state 2 by transfer and
transfer/status until its commit, or until it expires (then 10020).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from walletgate import _native
from walletgate.config import TransferMerchant
from walletgate.ledger import keys
from walletgate.ledger import transfer as ledger_transfer
from walletgate.ledger.core import INT64_MAX
from walletgate.ledger.errors import LedgerUnavailable
from walletgate.protocols.common import (
    JSON_AMOUNT,
    JSON_TEXT,
    JSON_WHOLE,
    BodyTooLarge,
    GatewayContext,
    JsonResponse,
    has_wrong_json_type,
    is_int,
    json_response,
    merchant_id_only,
    note,
    parse_object,
    raw_query,
    read_body,
)

logger = logging.getLogger("walletgate")

FAMILY = "transfer"
MAX_TX_ID_CHARS = 64
MAX_NICKNAME_BYTES = 40
MAX_TRACE_ID_CHARS = 128

OK = 0
BALANCE_NOT_ENOUGH = 10001
SIGN_INVALID = 10002
DUPLICATE_ORDER = 10005
ILLEGAL_PARAMETER = 10009
TOKEN_INVALID = 10011
INTERNAL_ERROR = 10015
UNSUPPORTED_CURRENCY = 10019
TRANSACTION_NOT_FOUND = 10020
WRONG_WALLET_TYPE = 10021
MERCHANT_NOT_FOUND = 10022
TYPE_MISMATCH = 10023

MESSAGES: dict[int, str] = {
    OK: "ok",
    BALANCE_NOT_ENOUGH: "balance is not enough",
    SIGN_INVALID: "sign invalid",
    DUPLICATE_ORDER: "duplicate order",
    ILLEGAL_PARAMETER: "illegal parameter",
    TOKEN_INVALID: "token invalid",
    INTERNAL_ERROR: "internal error",
    UNSUPPORTED_CURRENCY: "unsupported currency",
    TRANSACTION_NOT_FOUND: "transaction not found",
    WRONG_WALLET_TYPE: "wrong wallet type",
    MERCHANT_NOT_FOUND: "merchant not found",
    TYPE_MISMATCH: "parameter type mismatch",
}
_ERROR_BODIES: dict[int, bytes] = {
    code: orjson.dumps({"code": code, "msg": msg}) for code, msg in MESSAGES.items() if code
}
STATE_NUMBERS: dict[str, int] = {"rejected": 0, "applied": 1, "pending": 2}
_MISSING: Any = object()

Body = dict[str, Any]
Refs = dict[str, Any]


class _Reject(Exception):
    """Ends a request with an error code (never stored, nothing applied)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def transfer_body(tx_id: str, ptx_id: str, state: str, code: int) -> dict[str, Any]:
    """The transfer answer for a (stored or pending) outcome."""
    return {
        "data": {"tx_id": tx_id, "ptx_id": ptx_id, "state": STATE_NUMBERS[state]},
        "code": code,
        "msg": MESSAGES[code],
    }


def render_stored(record: dict[str, str]) -> dict[str, Any]:
    """Rebuild the original transfer answer from its stored record (``wg:{T:P}:tx:<tx_id>``)."""
    return transfer_body(
        record["tx_id"], record["ptx_id"], record["state"], int(record.get("code") or 0)
    )


def _ok(data: dict[str, Any]) -> dict[str, Any]:
    return {"data": data, "code": OK, "msg": "ok"}


def _string(body: Body, name: str) -> str:
    value = body.get(name, _MISSING)
    if value is _MISSING:
        raise _Reject(ILLEGAL_PARAMETER)
    if not isinstance(value, str):
        raise _Reject(TYPE_MISMATCH)
    return value


def _timestamp(body: Body) -> int:
    value = body.get("timestamp", _MISSING)
    if value is _MISSING:
        raise _Reject(ILLEGAL_PARAMETER)
    if is_int(value):
        if 0 <= value <= INT64_MAX:
            return int(value)
        raise _Reject(ILLEGAL_PARAMETER)
    if isinstance(value, _native.JsonDecimal):  # a number, but not an integer
        raise _Reject(ILLEGAL_PARAMETER)
    raise _Reject(TYPE_MISMATCH)


def _amount(body: Body) -> int:
    value = body.get("amount", _MISSING)
    if value is _MISSING:
        raise _Reject(ILLEGAL_PARAMETER)
    if isinstance(value, bool) or not isinstance(value, str | int | _native.JsonDecimal):
        raise _Reject(TYPE_MISMATCH)
    try:
        units = _native.parse_money(value)
    except ValueError:
        raise _Reject(ILLEGAL_PARAMETER) from None
    if units == 0:
        raise _Reject(ILLEGAL_PARAMETER)
    return units


def _tx_id(body: Body) -> str:
    tx_id = _string(body, "tx_id")
    if not 0 < len(tx_id) <= MAX_TX_ID_CHARS or not tx_id.isprintable():
        raise _Reject(ILLEGAL_PARAMETER)
    return tx_id


def _currency(merchant: TransferMerchant, requested: str) -> str:
    currency = merchant.currency(requested)
    if currency is None:
        raise _Reject(UNSUPPORTED_CURRENCY)
    return currency


# The JSON types each endpoint's fields may have (the seamless steps: a wrong type, 10023,
# answers before any format fault). A null is a wrong type here, as the field checks treat it.
AUTHORIZE_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "timestamp": JSON_WHOLE,
    "uname": JSON_TEXT,
    "nickname": JSON_TEXT,
}
TRANSFER_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "token": JSON_TEXT,
    "timestamp": JSON_WHOLE,
    "currency": JSON_TEXT,
    "amount": JSON_AMOUNT,
    "tx_id": JSON_TEXT,
}
STATUS_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "timestamp": JSON_WHOLE,
    "token": JSON_TEXT,
    "tx_id": JSON_TEXT,
}
WALLET_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "timestamp": JSON_WHOLE,
    "token": JSON_TEXT,
    "currency": JSON_TEXT,
}


def _check_json_types(body: Body, types: Mapping[str, tuple[type, ...]]) -> None:
    if has_wrong_json_type(body, types, null_is_missing=False):
        raise _Reject(TYPE_MISMATCH)


Work = Callable[[TransferMerchant, Body, Refs], Awaitable[dict[str, Any]]]


class _TransferApi:
    """The four endpoints, with everything that can be built at start-up built once."""

    def __init__(self, ctx: GatewayContext) -> None:
        config = ctx.config
        self.ledger = ctx.ledger
        self.metrics = ctx.metrics
        self.merchants: dict[str, tuple[TransferMerchant, bytes]] = {
            appid: (merchant, merchant.key.encode("utf-8"))
            for appid, merchant in config.transfer_merchants.items()
        }
        # The default currency as spelled in ``currencies`` (the config matches it ignoring case),
        # so authorize's zero account is the one transfers and getPlayerWallet use.
        self.default_currency: dict[str, str] = {
            appid: merchant.currency(merchant.default_currency) or merchant.default_currency
            for appid, merchant in config.transfer_merchants.items()
        }
        self.seamless_ids = frozenset(config.minigame_merchants)
        self.max_body_bytes = config.server.max_body_bytes
        self.token_ttl_s = config.transfer.token_ttl_s
        self.pending_ttl_s = config.transfer.pending_ttl_s
        self.tokens = ledger_transfer.TokenCache()
        self.labels = (("family", FAMILY),)

    # -- the shared steps -------------------------------------------------------------------

    async def _handle(self, request: Request, endpoint: str, work: Work) -> Response:
        trace_id = request.query_params.get("trace_id")
        refs: Refs = {"trace_id": trace_id[:MAX_TRACE_ID_CHARS] if trace_id else None}
        code = INTERNAL_ERROR
        try:
            merchant, body = await self._authenticate(request)
            payload = await work(merchant, body, refs)
            code = payload["code"]
            response = json_response(payload)
        except _Reject as reject:
            code = reject.code
            response = self._error(code)
        except LedgerUnavailable:
            self.metrics.inc("redis_errors_total")
            response = self._error(INTERNAL_ERROR)
        except Exception:
            logger.exception("transfer %s failed (trace_id=%s)", endpoint, refs["trace_id"])
            response = self._error(INTERNAL_ERROR)
        note(request, FAMILY, endpoint, code, **refs)
        return response

    @staticmethod
    def _error(code: int) -> Response:
        return JsonResponse(_ERROR_BODIES[code])

    async def _authenticate(self, request: Request) -> tuple[TransferMerchant, Body]:
        try:
            raw = await read_body(request, self.max_body_bytes)
        except BodyTooLarge:
            raise _Reject(ILLEGAL_PARAMETER) from None
        body = parse_object(raw)
        appid = body.get("appid") if body is not None else merchant_id_only(raw, "appid")
        if not isinstance(appid, str):
            raise _Reject(ILLEGAL_PARAMETER)
        entry = self.merchants.get(appid)
        if entry is None:
            raise _Reject(WRONG_WALLET_TYPE if appid in self.seamless_ids else MERCHANT_NOT_FOUND)
        merchant, key = entry
        if not _native.verify_minigame_sign(
            raw_query(request), raw, key, request.headers.get("sign")
        ):
            self.metrics.inc("signature_failures_total", self.labels)
            raise _Reject(SIGN_INVALID)
        if body is None:
            # Signed, but not strict JSON (duplicate keys, say): checked after the sign.
            raise _Reject(ILLEGAL_PARAMETER)
        return merchant, body

    def _timestamp(self, body: Body) -> int:
        timestamp = _timestamp(body)
        self.metrics.set_gauge("clock_skew_seconds", self.labels, timestamp - time.time())
        return timestamp

    async def _player(self, merchant: TransferMerchant, token: str) -> str:
        player = await ledger_transfer.lookup_token(
            self.ledger, tenant=merchant.appid, token=token, cache=self.tokens
        )
        if player is None:
            raise _Reject(TOKEN_INVALID)
        return player

    # -- the endpoints ----------------------------------------------------------------------

    async def _authorize(
        self, merchant: TransferMerchant, body: Body, refs: Refs
    ) -> dict[str, Any]:
        _check_json_types(body, AUTHORIZE_TYPES)
        self._timestamp(body)
        uname = _string(body, "uname")
        nickname = _string(body, "nickname")
        if not keys.valid_identifier(uname):
            raise _Reject(ILLEGAL_PARAMETER)
        if len(nickname.encode("utf-8")) > MAX_NICKNAME_BYTES:
            raise _Reject(ILLEGAL_PARAMETER)
        refs["uname"] = uname
        refs["nickname"] = nickname
        granted = await ledger_transfer.authorize(
            self.ledger,
            tenant=merchant.appid,
            player=uname,
            default_currency=self.default_currency[merchant.appid],
            ttl_s=self.token_ttl_s,
            cache=self.tokens,
        )
        return _ok(
            {
                "token": granted.token,
                "balance": _native.format_units(granted.balance_units),
                "appid": merchant.appid,
            }
        )

    async def _transfer(self, merchant: TransferMerchant, body: Body, refs: Refs) -> dict[str, Any]:
        _check_json_types(body, TRANSFER_TYPES)
        token = _string(body, "token")
        self._timestamp(body)
        requested_currency = _string(body, "currency")
        amount_units = _amount(body)
        tx_id = _tx_id(body)
        refs["tx_id"] = tx_id
        # The player (10011) before the currency (10019), as the seamless steps rank them.
        player = await self._player(merchant, token)
        currency = _currency(merchant, requested_currency)
        result = await ledger_transfer.transfer(
            self.ledger,
            tenant=merchant.appid,
            player=player,
            currency=currency,
            amount_units=amount_units,
            tx_id=tx_id,
            refs={k: v for k, v in refs.items() if v is not None},
            pending_ttl_s=self.pending_ttl_s,
        )
        outcome = result.outcome
        if result.state is not None:
            if outcome == "replay":
                self.metrics.inc("idempotent_replays_total", self.labels)
            return transfer_body(tx_id, result.ptx_id, result.state, result.code)
        if outcome == "conflict":
            self.metrics.inc("idempotency_conflicts_total", self.labels)
            raise _Reject(DUPLICATE_ORDER)
        if outcome == "unknown":
            raise _Reject(TOKEN_INVALID)
        if outcome == "overflow":
            raise _Reject(ILLEGAL_PARAMETER)
        logger.error("transfer: outcome %s for tx_id=%s", outcome, tx_id)
        raise _Reject(INTERNAL_ERROR)

    async def _status(self, merchant: TransferMerchant, body: Body, refs: Refs) -> dict[str, Any]:
        _check_json_types(body, STATUS_TYPES)
        self._timestamp(body)
        token = _string(body, "token")
        tx_id = _tx_id(body)
        refs["tx_id"] = tx_id
        player = await self._player(merchant, token)
        status = await ledger_transfer.transfer_status(
            self.ledger, tenant=merchant.appid, player=player, tx_id=tx_id
        )
        if status is None:
            raise _Reject(TRANSACTION_NOT_FOUND)
        return _ok(
            {
                "currency": status.currency,
                "amount": _native.format_units(status.amount_units),
                "state": STATE_NUMBERS[status.state],
            }
        )

    async def _wallet(self, merchant: TransferMerchant, body: Body, refs: Refs) -> dict[str, Any]:
        _check_json_types(body, WALLET_TYPES)
        self._timestamp(body)
        token = _string(body, "token")
        requested_currency = _string(body, "currency")
        player = await self._player(merchant, token)
        currency = _currency(merchant, requested_currency)
        balance_units = await ledger_transfer.wallet_balance(
            self.ledger, tenant=merchant.appid, player=player, currency=currency
        )
        if balance_units is None:
            raise _Reject(TOKEN_INVALID)
        return _ok({"currency": currency, "balance": _native.format_units(balance_units)})

    # -- Starlette endpoints ----------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        return await self._handle(request, "authorize", self._authorize)

    async def transfer(self, request: Request) -> Response:
        return await self._handle(request, "transfer", self._transfer)

    async def status(self, request: Request) -> Response:
        return await self._handle(request, "transfer_status", self._status)

    async def wallet(self, request: Request) -> Response:
        return await self._handle(request, "get_player_wallet", self._wallet)


def routes(ctx: GatewayContext) -> list[Route]:
    api = _TransferApi(ctx)
    return [
        Route("/api/player/v1/authorize", api.authorize, methods=["POST"]),
        Route("/api/cash/v1/transfer", api.transfer, methods=["POST"]),
        Route("/api/cash/v1/transfer/status", api.status, methods=["POST"]),
        Route("/api/cash/v1/getPlayerWallet", api.wallet, methods=["POST"]),
    ]
