"""MINI.GAME seamless wallet callbacks: verify_session, get_balance, change_balance.

Served under ``/api/`` (protocol ``minigame``) and ``/api/luck/`` (OMG, protocol
``minigame_luck``), per merchant ``prefix``. Order per request: read the raw body once, parse it
once (native, strict), read ``app_id`` to pick the merchant, check the md5 ``sign`` over the raw
query + raw body, validate, then one ledger call. Every outcome is HTTP 200 with the family's
envelope; see docs/spec minigame-seamless.md for the codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from walletgate import _native
from walletgate.config import MinigameMerchant
from walletgate.ledger import keys
from walletgate.ledger import minigame as ledger_minigame
from walletgate.ledger.core import INT64_MAX
from walletgate.ledger.errors import LedgerUnavailable
from walletgate.ledger.sessions import lookup_session
from walletgate.protocols.common import (
    JSON_AMOUNT,
    JSON_TEXT,
    JSON_WHOLE,
    BodyTooLarge,
    GatewayContext,
    JsonResponse,
    has_wrong_json_type,
    is_int,
    logged_ref,
    merchant_id_only,
    note,
    parse_object,
    read_body,
)

FAMILY = "minigame"
LABELS = (("family", FAMILY),)
MAX_ORDER_ID_CHARS = 64
MAX_SESSION_ID_CHARS = 128
MAX_TOKEN_CHARS = 512
MAX_TRACE_ID_CHARS = 128

MESSAGES: dict[int, str] = {
    1: "ok",
    10001: "balance is not enough",
    10002: "sign invalid",
    10005: "duplicate order",
    10009: "illegal parameter",
    10010: "order cancelled",
    10011: "token invalid",
    10012: "illegal app_id",
    10013: "player not found",
    10015: "internal error",
    10019: "unsupported currency",
    10021: "wrong wallet type",
    10023: "parameter type mismatch",
}
_ERROR_BODIES: dict[int, bytes] = {
    code: orjson.dumps({"code": code, "msg": msg}) for code, msg in MESSAGES.items() if code != 1
}
_OK_HEAD = b'{"data":{"balance":"'
_OK_TAIL = b'"},"code":1,"msg":"ok"}'
_PROTOCOLS = {"api": "minigame", "luck": "minigame_luck"}

logger = logging.getLogger("walletgate")


class _Reject(Exception):
    """Validation failed: answer ``code`` (10009, 10023, 10019 ...), apply nothing."""

    def __init__(self, code: int) -> None:
        self.code = code


@dataclass(frozen=True, slots=True)
class _Merchant:
    """A merchant's request-path view, precomputed at start-up."""

    app_id: str
    key: bytes
    default_currency: str
    currencies: tuple[str, ...]  # default first
    by_lower: Mapping[str, str]
    enabled_types: frozenset[int]

    @classmethod
    def build(cls, merchant: MinigameMerchant) -> _Merchant:
        default = next(
            c for c in merchant.currencies if c.lower() == merchant.default_currency.lower()
        )
        ordered = (default, *(c for c in merchant.currencies if c != default))
        return cls(
            app_id=merchant.app_id,
            key=merchant.key.encode("utf-8"),
            default_currency=default,
            currencies=ordered,
            by_lower={c.lower(): c for c in merchant.currencies},
            enabled_types=frozenset((1, 2, 3, 4)) | merchant.enabled_types,
        )

    def currency(self, value: Any) -> str:
        """The configured spelling of the requested currency (absent: the default)."""
        if value is None:
            return self.default_currency
        if type(value) is not str:
            raise _Reject(10023)
        configured = self.by_lower.get(value.lower())
        if configured is None:
            raise _Reject(10019)
        return configured


# -- responses ---------------------------------------------------------------------------------


def error_response(code: int) -> Response:
    return JsonResponse(_ERROR_BODIES[code])


def balance_response(units: int) -> Response:
    body = _OK_HEAD + _native.format_units(units).encode("ascii") + _OK_TAIL
    return JsonResponse(body)


def stored_response(code: int, msg: str, units: int) -> Response:
    if code == 1:
        return balance_response(units)
    return JsonResponse(orjson.dumps({"code": code, "msg": msg}))


def render_stored(record: Mapping[str, str]) -> dict[str, Any]:
    """Rebuild the original change_balance response body from a stored tx record."""
    if record.get("state") == "tombstone":
        return {"code": 10010, "msg": MESSAGES[10010]}
    code = int(record.get("code") or 0)
    if code == 1:
        units = int(record.get("bal") or 0)
        return {"data": {"balance": _native.format_units(units)}, "code": 1, "msg": "ok"}
    return {"code": code, "msg": record.get("msg") or MESSAGES.get(code, "")}


# -- field readers (raise _Reject) -------------------------------------------------------------


def _str(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        raise _Reject(10009)
    if type(value) is not str:
        raise _Reject(10023)
    return value


# The JSON types each endpoint's fields may have (see has_wrong_json_type).
VERIFY_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "timestamp": JSON_WHOLE,
    "operator_player_session": JSON_TEXT,
    "ip": JSON_TEXT,
    "custom_parameter": JSON_TEXT,
}
BALANCE_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "uname": JSON_TEXT,
    "currency": JSON_TEXT,
    "timestamp": JSON_WHOLE,
    "game_id": JSON_WHOLE,
    "player_login_token": JSON_TEXT,
}
CHANGE_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "order_id": JSON_TEXT,
    "uname": JSON_TEXT,
    "currency": JSON_TEXT,
    "type": JSON_WHOLE,
    "money": JSON_AMOUNT,
    "bet": JSON_AMOUNT,
    "timestamp": JSON_WHOLE,
    "session_id": JSON_TEXT,
    "end_round": (bool,),
    "cancel_order_id": JSON_TEXT,
    "award_order_ids": (list,),
}


def _check_json_types(data: Mapping[str, Any], types: Mapping[str, tuple[type, ...]]) -> None:
    """The spec's validation order puts a wrong JSON type (10023) before every other fault
    (10009, then 10013 and 10019). An absent or null field is left to the format checks."""
    if has_wrong_json_type(data, types, null_is_missing=True):
        raise _Reject(10023)


def _opt_str(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and type(value) is not str:
        raise _Reject(10023)
    return value


def _integer(value: Any) -> int:
    """A present JSON integer field's value. A number that is not an integer literal (``1.5``,
    ``1.0``, ``1e0``, ``-0``) has the right JSON type but breaks the spec's integer grammar:
    10009, as any bad format; a string or a bool is the wrong JSON type: 10023."""
    if type(value) is _native.JsonDecimal:
        raise _Reject(10009)
    if type(value) is not int:
        raise _Reject(10023)
    return value


def _int(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if value is None:
        raise _Reject(10009)
    number = _integer(value)
    if not 0 <= number <= INT64_MAX:
        raise _Reject(10009)
    return number


def _optional_game_id(data: Mapping[str, Any]) -> None:
    """get_balance's optional game_id, when present, follows the spec's integer grammar
    (``0|[1-9][0-9]*``, within int64) as timestamp does (its JSON type was checked with the
    others)."""
    if data.get("game_id") is not None:
        _int(data, "game_id")


def _money(value: Any) -> int:
    if value is None:
        raise _Reject(10009)
    if type(value) not in (str, int, _native.JsonDecimal):
        raise _Reject(10023)
    try:
        return _native.parse_money(value)
    except ValueError:
        raise _Reject(10009) from None


def _ref_id(value: str, limit: int) -> str:
    """An order/session id: 1..limit printable characters (no control characters)."""
    if not 0 < len(value) <= limit or not value.isprintable():
        raise _Reject(10009)
    return value


def _player(data: Mapping[str, Any]) -> str:
    player = _str(data, "uname")
    if not player or not player.isprintable():
        raise _Reject(10009)
    return player


def _awards(value: Any) -> tuple[list[str], int]:
    """award_order_ids as (order ids, sum of their money in units); null/absent/[] are empty."""
    if value is None:
        return [], 0
    if type(value) is not list:
        raise _Reject(10023)
    ids: list[str] = []
    total = 0
    for item in value:
        if type(item) is not dict:
            raise _Reject(10023)
        ids.append(_ref_id(_str(item, "order_id"), MAX_ORDER_ID_CHARS))
        total += _money(item.get("money"))
    return ids, total


def _trace_id(query: bytes) -> str | None:
    for part in query.split(b"&"):
        if part.startswith(b"trace_id="):
            return part[9 : 9 + MAX_TRACE_ID_CHARS].decode("latin-1")
    return None


def _sign_header(request: Request) -> bytes | None:
    for name, value in request.scope["headers"]:
        if name == b"sign":
            return bytes(value)
    return None


# -- routes ------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def routes(ctx: GatewayContext) -> list[Route]:
    """POST routes for /api/... and /api/luck/..., with per-merchant lookups built once."""
    config = ctx.config
    transfer_ids = frozenset(config.transfer_merchants)
    built = {app_id: _Merchant.build(m) for app_id, m in config.minigame_merchants.items()}
    result: list[Route] = []
    for prefix, base in (("api", "/api"), ("luck", "/api/luck")):
        merchants = {
            app_id: built[app_id]
            for app_id, m in config.minigame_merchants.items()
            if m.serves_prefix(prefix)
        }
        handlers = _Handlers(ctx, prefix, merchants, transfer_ids)
        result += [
            Route(base + "/user/verify_session", handlers.verify_session, methods=["POST"]),
            Route(base + "/balance/get_balance", handlers.get_balance, methods=["POST"]),
            Route(base + "/balance/change_balance", handlers.change_balance, methods=["POST"]),
        ]
    return result


class _Handlers:
    """The three endpoints for one prefix (``api`` or ``luck``)."""

    def __init__(
        self,
        ctx: GatewayContext,
        prefix: str,
        merchants: Mapping[str, _Merchant],
        transfer_ids: frozenset[str],
    ) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.metrics = ctx.metrics
        self.luck = prefix == "luck"
        self.protocol = _PROTOCOLS[prefix]
        self.merchants = merchants
        self.transfer_ids = transfer_ids
        self.max_body = ctx.config.server.max_body_bytes
        name = "luck_" if self.luck else ""
        self.ep_verify = name + "verify_session"
        self.ep_balance = name + "get_balance"
        self.ep_change = name + "change_balance"

    async def _open(
        self, request: Request, endpoint: str
    ) -> tuple[dict[str, Any], _Merchant, str | None] | Response:
        """Read, parse, pick the merchant and check ``sign``: (body, merchant, trace_id)."""
        query: bytes = request.scope.get("query_string", b"")
        trace_id = _trace_id(query) if query else None
        try:
            body = await read_body(request, self.max_body)
        except BodyTooLarge:
            note(request, FAMILY, endpoint, 10009, trace_id=trace_id)
            return error_response(10009)
        data = parse_object(body)
        app_id = data.get("app_id") if data is not None else merchant_id_only(body, "app_id")
        if type(app_id) is not str:
            note(request, FAMILY, endpoint, 10009, trace_id=trace_id)
            return error_response(10009)
        merchant = self.merchants.get(app_id)
        if merchant is None:
            code = 10021 if app_id in self.transfer_ids else 10012
            note(request, FAMILY, endpoint, code, trace_id=trace_id)
            return error_response(code)
        if not _native.verify_minigame_sign(query, body, merchant.key, _sign_header(request)):
            self.metrics.inc("signature_failures_total", LABELS)
            note(request, FAMILY, endpoint, 10002, trace_id=trace_id)
            return error_response(10002)
        if data is None:
            # Signed, but not strict JSON (duplicate keys, say): step 4 of the spec's checks.
            note(request, FAMILY, endpoint, 10009, trace_id=trace_id)
            return error_response(10009)
        return data, merchant, trace_id

    def _skew(self, timestamp: int) -> None:
        self.metrics.set_gauge("clock_skew_seconds", LABELS, timestamp - time.time())

    def _failed(self, request: Request, endpoint: str, error: Exception, **refs: Any) -> Response:
        if isinstance(error, _Reject):
            note(request, FAMILY, endpoint, error.code, **refs)
            return error_response(error.code)
        if isinstance(error, LedgerUnavailable):
            self.metrics.inc("redis_errors_total")
        else:
            logger.exception("minigame %s failed (trace_id=%s)", endpoint, refs.get("trace_id"))
        note(request, FAMILY, endpoint, 10015, **refs)
        return error_response(10015)

    # -- verify_session ------------------------------------------------------------------------

    async def verify_session(self, request: Request) -> Response:
        endpoint = self.ep_verify
        opened = await self._open(request, endpoint)
        if isinstance(opened, Response):
            return opened
        data, merchant, trace_id = opened
        try:
            _check_json_types(data, VERIFY_TYPES)
            timestamp = _int(data, "timestamp")
            token = _str(data, "operator_player_session")
            if not 0 < len(token) <= MAX_TOKEN_CHARS or not token.isprintable():
                raise _Reject(10011)
            self._skew(timestamp)
            session = await lookup_session(self.ledger, tenant=merchant.app_id, token=token)
            if session is None or session.expired():
                raise _Reject(10011)
            player = session.player
            if self.luck:
                currency = merchant.by_lower.get(session.currency.lower(), session.currency)
                currencies: tuple[str, ...] = (currency,)
            else:
                currencies = merchant.currencies
            units = await ledger_minigame.balances(
                self.ledger, tenant=merchant.app_id, player=player, currencies=currencies
            )
            if units is None:  # a session makes the player known; an emptied account reads 0
                units = [0] * len(currencies)
        except Exception as error:  # every failure has a protocol answer
            return self._failed(request, endpoint, error, trace_id=trace_id)
        balance: Any
        if self.luck:
            balance = _native.format_units(units[0])
        else:
            balance = [
                {"currency": c, "amount": orjson.Fragment(_native.format_units(u).encode("ascii"))}
                for c, u in zip(currencies, units, strict=True)
            ]
        note(request, FAMILY, endpoint, 1, trace_id=trace_id)
        payload = {
            "data": {"uname": player, "nickname": player, "balance": balance},
            "code": 1,
            "msg": "ok",
        }
        return JsonResponse(orjson.dumps(payload))

    async def _player_currency(self, merchant: _Merchant, value: Any, player: str) -> str:
        """The configured currency the request names, once the player is one that can exist;
        called after every other field is valid.

        The spec ranks an unknown player (10013) before a currency that is not configured
        (10019): on that error path only, one read tells which of the two it is.
        """
        if not keys.valid_identifier(player):
            # A well-formed name that no player can have (":", "{", "}" or too long for a key)
            # is answered as any other name nobody registered, once the fields are valid.
            raise _Reject(10013)
        try:
            return merchant.currency(value)
        except _Reject as reject:
            if reject.code == 10019:
                known = await ledger_minigame.balances(
                    self.ledger,
                    tenant=merchant.app_id,
                    player=player,
                    currencies=(merchant.default_currency,),
                )
                if known is None:
                    raise _Reject(10013) from None
            raise

    # -- get_balance ---------------------------------------------------------------------------

    async def get_balance(self, request: Request) -> Response:
        endpoint = self.ep_balance
        opened = await self._open(request, endpoint)
        if isinstance(opened, Response):
            return opened
        data, merchant, trace_id = opened
        try:
            _check_json_types(data, BALANCE_TYPES)
            player = _player(data)
            timestamp = _int(data, "timestamp")
            _optional_game_id(data)
            currency = await self._player_currency(merchant, data.get("currency"), player)
            self._skew(timestamp)
            units = await ledger_minigame.balances(
                self.ledger, tenant=merchant.app_id, player=player, currencies=(currency,)
            )
            if units is None:
                raise _Reject(10013)
        except Exception as error:
            return self._failed(request, endpoint, error, trace_id=trace_id)
        note(request, FAMILY, endpoint, 1, trace_id=trace_id)
        return balance_response(units[0])

    # -- change_balance ------------------------------------------------------------------------

    async def change_balance(self, request: Request) -> Response:
        endpoint = self.ep_change
        opened = await self._open(request, endpoint)
        if isinstance(opened, Response):
            return opened
        data, merchant, trace_id = opened
        order_id: str | None = None
        try:
            _check_json_types(data, CHANGE_TYPES)
            order_id = _ref_id(_str(data, "order_id"), MAX_ORDER_ID_CHARS)
            player = _player(data)
            type_ = data.get("type")
            if type_ is None:
                raise _Reject(10009)
            if _integer(type_) not in merchant.enabled_types:
                raise _Reject(10009)
            money = _money(data.get("money"))
            bet_raw = data.get("bet")
            bet = 0 if bet_raw is None else _money(bet_raw)
            timestamp = _int(data, "timestamp")
            session_id = _opt_str(data, "session_id") or ""
            if session_id:
                _ref_id(session_id, MAX_SESSION_ID_CHARS)
            elif type_ <= 4:
                raise _Reject(10009)
            end_round: bool = data.get("end_round") or False  # a bool or absent: types checked
            cancel_order_id = _opt_str(data, "cancel_order_id") or ""
            if cancel_order_id:
                _ref_id(cancel_order_id, MAX_ORDER_ID_CHARS)
            award_ids, award_sum = _awards(data.get("award_order_ids"))
            _check_rules(type_, money, bet, cancel_order_id, order_id)
            currency = await self._player_currency(merchant, data.get("currency"), player)
            self._skew(timestamp)
            refs: dict[str, Any] = {"order_id": order_id}
            if session_id:
                refs["session_id"] = session_id
            if trace_id is not None:
                refs["trace_id"] = trace_id
            if cancel_order_id:
                refs["cancel_order_id"] = cancel_order_id
            if award_ids:
                refs["award_order_ids"] = award_ids
            round_id = data.get("round_id")
            if type(round_id) is str or is_int(round_id):
                refs["round_id"] = logged_ref(round_id)
            result = await ledger_minigame.change_balance(
                self.ledger,
                tenant=merchant.app_id,
                player=player,
                currency=currency,
                protocol=self.protocol,
                order_id=order_id,
                type_=type_,
                money_units=money,
                bet_units=bet,
                session_id=session_id,
                end_round=end_round,
                cancel_order_id=cancel_order_id,
                award_order_ids=award_ids,
                refs=refs,
            )
        except Exception as error:
            return self._failed(request, endpoint, error, trace_id=trace_id, order_id=order_id)
        status = result.status
        if status == "applied":
            if type_ in (3, 4):
                self._award_anomalies(result, award_ids, award_sum, money, order_id)
            elif type_ == 2:
                if result.effect == "tombstone":
                    self.metrics.inc("tombstones_total", LABELS)
                elif result.amount_mismatch:
                    self.metrics.inc("cancel_amount_mismatch_total", LABELS)
                    logger.warning(
                        "minigame cancel amount differs from the bet: order_id=%s "
                        "cancel_order_id=%s",
                        order_id,
                        cancel_order_id,
                    )
            elif type_ == 6 and money > 0:
                # The platform does not say which sign a fee has; a positive one is debited like
                # a negative one, and counted so that operators see how often it happens.
                self.metrics.inc("minigame_positive_fees_total")
                logger.warning("minigame position fee with a positive sign: order_id=%s", order_id)
            note(request, FAMILY, endpoint, 1, trace_id=trace_id, order_id=order_id)
            return balance_response(result.balance_units)
        if status == "replay":
            self.metrics.inc("idempotent_replays_total", LABELS)
            # A replay that differs only in type, as a type 4 or with end_round: counted each
            # time (the spec), whether or not a round was left to close.
            if result.stored_type != type_ and (type_ == 4 or end_round):
                self.metrics.inc("minigame_type_replays_total")
            note(request, FAMILY, endpoint, result.code, trace_id=trace_id, order_id=order_id)
            return stored_response(result.code, result.msg, result.balance_units)
        if status == "rejected":
            note(request, FAMILY, endpoint, result.code, trace_id=trace_id, order_id=order_id)
            return stored_response(result.code, result.msg, result.balance_units)
        if status == "conflict":
            self.metrics.inc("idempotency_conflicts_total", LABELS)
            code = 10005
        elif status == "unknown_player":
            code = 10013
        else:  # bad_cancel, overflow
            code = 10009
        note(request, FAMILY, endpoint, code, trace_id=trace_id, order_id=order_id)
        return error_response(code)

    def _award_anomalies(
        self,
        result: ledger_minigame.ChangeResult,
        award_ids: list[str],
        award_sum: int,
        money: int,
        order_id: str,
    ) -> None:
        reasons: list[tuple[str, int]] = []
        if award_ids and award_sum != money:
            reasons.append(("sum", 1))
        if result.unknown_bets:
            reasons.append(("unknown_bet", result.unknown_bets))
        if result.already_awarded:
            reasons.append(("already_awarded", result.already_awarded))
        for reason, count in reasons:
            self.metrics.inc("minigame_award_anomalies_total", (("reason", reason),), count)
            logger.warning("minigame award anomaly %s: order_id=%s", reason, order_id)


def _check_rules(type_: int, money: int, bet: int, cancel_order_id: str, order_id: str) -> None:
    """The per-type money rules of the change_balance table (all 10009)."""
    if bet < 0:
        raise _Reject(10009)
    if type_ == 1:
        if money >= 0 or (bet != 0 and -money != bet):
            raise _Reject(10009)
    elif type_ == 6:
        if money == 0:
            raise _Reject(10009)
    elif type_ == 2:
        if not cancel_order_id or cancel_order_id == order_id:
            raise _Reject(10009)
    elif money < 0:  # 3, 4, 5, 7
        raise _Reject(10009)
