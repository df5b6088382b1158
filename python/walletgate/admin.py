"""The admin API (``/admin/v1``): adjust balances, read accounts, register sessions, look up
stored outcomes. Every call needs ``Authorization: Bearer <[admin].token>`` (constant time)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from walletgate import _native
from walletgate.config import Config
from walletgate.ledger import keys
from walletgate.ledger.admin import adjust
from walletgate.ledger.core import INT64_MAX, INT64_MIN, as_str
from walletgate.ledger.errors import LedgerUnavailable, OutcomeUnknown
from walletgate.ledger.sessions import register_session
from walletgate.protocols.common import (
    BodyTooLarge,
    GatewayContext,
    json_response,
    note,
    parse_object,
    read_body,
)
from walletgate.protocols.midas import UNITS_PER_COIN

logger = logging.getLogger("walletgate")
DEFAULT_SESSION_TTL_S = 604_800
MAX_SESSION_TTL_S = 10 * 365 * 86_400
MAX_REF_CHARS = 128
MIDAS_EXTRA_FIELDS = ("save_amt", "save_sum", "cost_sum", "present_sum")
INSUFFICIENT_FUNDS = "insufficient_funds"
INSUFFICIENT_FUNDS_DETAIL = "balance is lower than the debit"


def _format_sum_units(units: int) -> str:
    """``format_units`` for a sum of two int64 parts (Midas paid plus gifted), which may leave
    int64 when both parts are near the top: the native formatter would refuse it."""
    if INT64_MIN <= units <= INT64_MAX:
        return _native.format_units(units)
    whole, fraction = divmod(abs(units), UNITS_PER_COIN)
    text = f"{whole}.{fraction:04d}".rstrip("0").rstrip(".")
    return f"-{text}" if units < 0 else text


Renderer = Callable[[dict[str, str]], Any]


@dataclass(frozen=True, slots=True)
class TenantInfo:
    family: str
    currencies: tuple[str, ...] | None  # None: any zone (Midas)

    def currency(self, requested: str) -> str | None:
        if self.currencies is None:
            zone = requested.removeprefix("sandbox-")
            return requested if zone and zone.isprintable() and ":" not in zone else None
        lowered = requested.lower()
        return next((c for c in self.currencies if c.lower() == lowered), None)


def tenant_table(config: Config) -> dict[str, TenantInfo]:
    table: dict[str, TenantInfo] = {}
    for app_id, merchant in config.minigame_merchants.items():
        table[app_id] = TenantInfo("minigame", merchant.currencies)
    for appid, transfer in config.transfer_merchants.items():
        table[appid] = TenantInfo("transfer", transfer.currencies)
    for token, agent in config.wallet_v2_agents.items():
        table[token] = TenantInfo("wallet_v2", agent.currencies)
    for appid in config.midas_apps:
        table[appid] = TenantInfo("midas", None)
    return table


def error(status_code: int, code: str, detail: str) -> Response:
    return json_response({"error": code, "detail": detail}, status_code)


def unauthorized() -> Response:
    """The 401 of every admin call without the right token: the spec's error body, the same
    for every path (it says nothing of the tenant or account), and the scheme to use."""
    response = error(401, "unauthorized", "send Authorization: Bearer <[admin] token>")
    response.headers["www-authenticate"] = 'Bearer realm="walletgate-admin"'
    return response


def admin_routes(
    ctx: GatewayContext,
    admin_client: Any,
    renderers: Mapping[str, Renderer],
    key_to_player: Callable[[str, str], Any],
) -> list[BaseRoute]:
    """Build the admin routes. ``renderers`` map a family to its ``render_stored``;
    ``key_to_player(tenant, key)`` is an awaitable lookup in the journal writer's map."""
    token = ctx.config.admin.token.encode()
    tenants = tenant_table(ctx.config)
    max_body_bytes = ctx.config.server.max_body_bytes

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and _native.constant_time_eq(presented.encode(), token)

    def resolve(
        request: Request, *, read: bool = False
    ) -> tuple[str, str, str, TenantInfo] | Response:
        """The account a path names. ``read``: a malformed player id names no account, which
        GET answers with its only error, 404 (an adjustment refuses it as bad input, 400)."""
        tenant = request.path_params["tenant"]
        player = request.path_params["player"]
        info = tenants.get(tenant)
        if info is None:
            return error(404, "unknown_tenant", "no such tenant")
        if not keys.valid_identifier(player):
            if read:
                return error(404, "unknown_account", "no such account")
            return error(400, "invalid_player", "player id is malformed")
        currency = info.currency(request.path_params["currency"])
        if currency is None:
            return error(404, "unknown_currency", "currency is not configured for this tenant")
        return tenant, player, currency, info

    async def read_json(request: Request) -> dict[str, Any] | Response:
        try:
            raw = await read_body(request, max_body_bytes)
        except BodyTooLarge:
            return error(400, "invalid_body", "body too large")
        body = parse_object(raw)
        if body is None:
            return error(400, "invalid_body", "body must be one JSON object without duplicate keys")
        return body

    async def post_adjust(request: Request, refs: dict[str, object]) -> Response:
        if not authorized(request):
            return unauthorized()
        resolved = resolve(request)
        if isinstance(resolved, Response):
            return resolved
        tenant, player, currency, info = resolved
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        kind = body.get("kind", "adjust")
        ref = body.get("ref")
        if kind not in ("adjust", "save") or (kind == "save" and info.family != "midas"):
            return error(400, "invalid_kind", "kind must be adjust, or save for Midas")
        if not isinstance(ref, str) or not 0 < len(ref) <= MAX_REF_CHARS or not ref.isprintable():
            return error(
                400, "invalid_ref", f"ref must be a string of 1 to {MAX_REF_CHARS} characters"
            )
        refs["ref"] = ref
        amount = body.get("amount")
        if not isinstance(amount, str):
            return error(400, "invalid_amount", "amount must be a decimal string")
        try:
            amount_units = _native.parse_money(amount)
        except ValueError:
            return error(400, "invalid_amount", "amount is not a valid decimal")
        if amount_units == 0 or (kind == "save" and amount_units < 0):
            return error(400, "invalid_amount", "amount must be non-zero (positive for save)")
        if info.family == "midas" and amount_units % _native.UNITS_PER_MAJOR:
            return error(400, "invalid_amount", "Midas coins must be whole numbers")
        try:
            result = await adjust(
                ctx.ledger,
                tenant=tenant,
                player=player,
                currency=currency,
                amount_units=amount_units,
                ref=ref,
                kind=kind,
            )
        except OutcomeUnknown:
            ctx.metrics.inc("redis_errors_total")
            # Its connection broke after it was sent, and it could not be sent again.
            return error(
                503, "unavailable", "redis unavailable, outcome unknown: retry with the same ref"
            )
        except LedgerUnavailable:
            ctx.metrics.inc("redis_errors_total")
            return error(503, "unavailable", "redis unavailable, nothing applied")
        if result.outcome == "conflict":
            ctx.metrics.inc("idempotency_conflicts_total", (("family", "admin"),))
            return error(409, "ref_conflict", "ref was used for another adjustment")
        if result.outcome == "overflow":
            return error(400, "invalid_amount", "the balance would leave the int64 range")
        if result.outcome == "replay":
            ctx.metrics.inc("idempotent_replays_total", (("family", "admin"),))
        if result.outcome == "insufficient" or result.rejected:
            # Stored: the same ref and fingerprint answer this again, whatever the balance is.
            return error(409, INSUFFICIENT_FUNDS, INSUFFICIENT_FUNDS_DETAIL)
        balance_units = result.balance_units
        if info.family == "midas":
            # The paid part plus the gifted one, as GET account answers (their sum is kept within
            # int64, but parts stored before that was checked may pass it).
            balance_units += result.gen_units
        return json_response({"balance": _format_sum_units(balance_units), "ref": ref})

    async def get_account(request: Request, refs: dict[str, object]) -> Response:
        if not authorized(request):
            return unauthorized()
        resolved = resolve(request, read=True)
        if isinstance(resolved, Response):
            return resolved
        tenant, player, currency, info = resolved
        fields = [f"bal:{currency}", "known"]
        if info.family == "midas":
            fields += [f"gen:{currency}", f"first_save:{currency}"]
            fields += [f"{name}:{currency}" for name in MIDAS_EXTRA_FIELDS]
        try:
            values = await admin_client.hmget(keys.account_key(tenant, player), fields)
        except Exception:  # redis-py raises several unrelated classes when Redis is down.
            logger.warning("admin account read failed", exc_info=True)
            ctx.metrics.inc("redis_errors_total")
            return error(503, "unavailable", "redis unavailable")
        if values[0] is None and values[1] is None:
            return error(404, "unknown_account", "no such account")
        units = [int(as_str(v)) if v is not None else 0 for v in values]
        payload: dict[str, Any] = {
            "tenant": tenant,
            "player": player,
            "currency": currency,
            "balance": _native.format_units(units[0]),
        }
        if info.family == "midas":
            payload["paid"] = _native.units_to_coins(units[0])
            payload["gen_balance"] = _native.units_to_coins(units[2])
            payload["balance"] = _format_sum_units(units[0] + units[2])
            payload["first_save"] = units[3] or 1
            for index, name in enumerate(MIDAS_EXTRA_FIELDS):
                payload[name] = _native.units_to_coins(units[4 + index])
        return json_response(payload)

    async def post_session(request: Request, refs: dict[str, object]) -> Response:
        if not authorized(request):
            return unauthorized()
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        tenant, player = body.get("tenant"), body.get("player")
        currency, session_token = body.get("currency"), body.get("token")
        ttl_s = body.get("ttl_s", DEFAULT_SESSION_TTL_S)
        session_key = body.get("session_key", "")
        if not all(
            isinstance(v, str) for v in (tenant, player, currency, session_token, session_key)
        ):
            return error(400, "invalid_body", "tenant, player, currency and token must be strings")
        assert isinstance(tenant, str) and isinstance(player, str) and isinstance(currency, str)
        assert isinstance(session_token, str) and isinstance(session_key, str)
        info = tenants.get(tenant)
        if info is None:
            return error(404, "unknown_tenant", "no such tenant")
        configured = info.currency(currency)
        if configured is None:
            return error(404, "unknown_currency", "currency is not configured for this tenant")
        if not keys.valid_identifier(player) or not keys.valid_identifier(session_token):
            return error(400, "invalid_body", "player and token must be printable, without : { }")
        if (
            isinstance(ttl_s, bool)
            or not isinstance(ttl_s, int)
            or not 0 < ttl_s <= MAX_SESSION_TTL_S
        ):
            return error(400, "invalid_body", "ttl_s must be a positive integer")
        if (info.family == "midas") != bool(session_key):
            return error(400, "invalid_body", "session_key is required for Midas and only there")
        try:
            expires_at = await register_session(
                ctx.ledger,
                tenant=tenant,
                player=player,
                currency=configured,
                token=session_token,
                ttl_s=ttl_s,
                session_key=session_key,
            )
        except LedgerUnavailable:
            ctx.metrics.inc("redis_errors_total")
            return error(503, "unavailable", "redis unavailable")
        if expires_at is None:
            return error(409, "token_conflict", "token belongs to another player or currency")
        return json_response({"token": session_token, "expires_at": expires_at}, 201)

    async def get_transaction(request: Request, refs: dict[str, object]) -> Response:
        if not authorized(request):
            return unauthorized()
        tenant = request.path_params["tenant"]
        key = request.path_params["key"]
        info = tenants.get(tenant)
        if info is None:
            return error(404, "unknown_tenant", "no such tenant")
        player = request.query_params.get("player")
        try:
            if player is None:
                player = await key_to_player(tenant, key)
            if player is None or not keys.valid_identifier(player):
                return error(404, "unknown_transaction", "no such transaction")
            record_key = keys.transaction_key(tenant, player, key)
            raw = {}
            if key.startswith(keys.ADMIN_KEY_PREFIX):
                # An adjustment first; then tx:, which holds adjustments made before they had
                # keys of their own, or a protocol request whose key happens to be admin:….
                admin_key = keys.admin_record_key(
                    tenant, player, key.removeprefix(keys.ADMIN_KEY_PREFIX)
                )
                raw = await admin_client.hgetall(admin_key)
                if raw:
                    record_key = admin_key
            if not raw:
                raw = await admin_client.hgetall(record_key)
            ttl_s = await admin_client.ttl(record_key)
        except Exception:  # redis-py raises several unrelated classes when Redis is down.
            logger.warning("admin transaction read failed", exc_info=True)
            ctx.metrics.inc("redis_errors_total")
            return error(503, "unavailable", "redis unavailable")
        if not raw:
            return error(404, "unknown_transaction", "no such transaction")
        record = {as_str(k): as_str(v) for k, v in raw.items()}
        return json_response(stored_outcome(tenant, key, record, ttl_s, renderers.get(info.family)))

    def guarded(
        name: str, handler: Callable[[Request, dict[str, object]], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Any failure the handler did not expect (a script error, a client gone mid-body, a
        stored value it cannot read) answers the spec's error body with 503, never a bare 500:
        a retry with the same ref or token is safe, since both calls are idempotent, and the
        reads change nothing. The log names the handler, never the path (it may
        hold a wallet_token as its tenant).

        Every call, refused ones included, gets its access-log line and request metrics as
        ``family=admin, endpoint=name`` with the HTTP status as the result; the handler adds
        reference ids to ``refs`` (an adjustment's ``ref``), never a tenant, token or key.
        """

        async def endpoint(request: Request) -> Response:
            refs: dict[str, object] = {}
            try:
                response = await handler(request, refs)
            except Exception:
                logger.exception("admin: %s failed", handler.__name__)
                response = error(
                    503, "unavailable", "temporary failure; retry with the same request"
                )
            note(request, "admin", name, response.status_code, **refs)
            return response

        return endpoint

    prefix = "/admin/v1"
    routes: list[Route] = [
        Route(
            prefix + "/accounts/{tenant}/{player}/{currency}/adjust",
            guarded("adjust", post_adjust),
            methods=["POST"],
        ),
        Route(
            prefix + "/accounts/{tenant}/{player}/{currency}",
            guarded("account", get_account),
            methods=["GET"],
        ),
        Route(prefix + "/sessions", guarded("sessions", post_session), methods=["POST"]),
        Route(
            prefix + "/transactions/{tenant}/{key:path}",
            guarded("transaction", get_transaction),
            methods=["GET"],
        ),
    ]

    async def other(request: Request, refs: dict[str, object]) -> Response:
        """Any other path or method under the prefix: 401 without the token, as every admin
        call; otherwise the spec's error body, 405 when the path is an admin route's."""
        if not authorized(request):
            return unauthorized()
        allowed = sorted(
            method
            for route in routes
            if route.matches(request.scope)[0] == Match.PARTIAL
            for method in route.methods or ()
        )
        if allowed:
            response = error(405, "method_not_allowed", f"use {', '.join(allowed)}")
            response.headers["allow"] = ", ".join(allowed)
            return response
        return error(404, "not_found", "no such admin route")

    # Last, so that it answers only what no route above matches in full.
    every_method = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [*routes, Route(prefix + "/{rest:path}", guarded("other", other), methods=every_method)]


def stored_outcome(
    tenant: str, key: str, record: dict[str, str], ttl_s: int, renderer: Renderer | None
) -> dict[str, Any]:
    created_us = int(record.get("created_us", "0") or 0)
    created_s = created_us / 1_000_000
    import time

    outcome: dict[str, Any] = {
        "tenant": tenant,
        "key": key,
        "protocol": record.get("protocol"),
        "op": record.get("op"),
        "player": record.get("player"),
        "currency": record.get("currency"),
        "state": record.get("state"),
        # Midas records keep the paid part in "delta" and "bal", the gifted part in "gdelta"
        # and "gbal": the outcome reports their sums, as GET account does, and a sum may leave
        # int64 although each part fits.
        "delta": _format_sum_units(_units(record, "delta") + _units(record, "gdelta")),
        "balance_after": _format_sum_units(_units(record, "bal") + _units(record, "gbal")),
        "response": _render(key, record, renderer),
        "created_at": _rfc3339(created_s),
        "expires_at": _rfc3339(time.time() + ttl_s) if ttl_s > 0 else None,
    }
    for extra in ("cancelled_by", "settled_by"):
        if record.get(extra):
            outcome[extra] = record[extra]
    return outcome


def _render(key: str, record: dict[str, str], renderer: Renderer | None) -> Any:
    if record.get("protocol") == "admin" or renderer is None:
        if record.get("protocol") == "admin" and record.get("state") == "rejected":
            # A stored rejection answered the 409 body, the only one an adjustment stores.
            return {"error": INSUFFICIENT_FUNDS, "detail": INSUFFICIENT_FUNDS_DETAIL}
        # The adjust answer was {"balance", "ref"}; the ref is the key without "admin:". For a
        # Midas account the balance is paid plus gifted ("gbal" is absent elsewhere).
        return {
            "balance": _format_sum_units(_units(record, "bal") + _units(record, "gbal")),
            "ref": key.removeprefix(keys.ADMIN_KEY_PREFIX),
        }
    try:
        return renderer(record)
    except Exception:  # A record a renderer cannot read must not break the admin API.
        logger.warning("could not render a stored outcome", exc_info=True)
        return None


def _units(record: dict[str, str], field: str) -> int:
    """An integer field of a stored record; absent or empty is 0."""
    return int(record.get(field, "0") or 0)


def _rfc3339(seconds: float) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
