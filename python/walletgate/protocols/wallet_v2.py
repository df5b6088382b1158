"""Wallet API v.2, walletgate as server of credits: ``POST /wallet/v2/{wallet_token}``.

Check order: wallet_token (404, empty body), IP allowlist (403, empty body), body (at most
``max_body_bytes``, one strict JSON object), ``type``, ``code``, session (``INVALID_SESSION``),
the type's fields (``BAD_REQUEST``), then one ledger call. The ``code`` lookup goes through a
per-worker :class:`walletgate.ledger.wallet_v2.SessionCache`, so a money request usually makes a
single Redis round trip.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from functools import lru_cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from walletgate import _native
from walletgate.config import WALLET_TOKEN_PATTERN, IpNetwork, WalletV2Agent
from walletgate.ledger import wallet_v2 as ledger_v2
from walletgate.ledger.core import INT64_MAX, INT64_MIN
from walletgate.ledger.errors import LedgerUnavailable
from walletgate.ledger.sessions import SessionInfo
from walletgate.protocols.common import (
    BodyTooLarge,
    GatewayContext,
    empty_response,
    is_int,
    json_response,
    note,
    parse_object,
    parse_uint,
    read_body,
)

FAMILY = "wallet_v2"
LABELS = (("family", FAMILY),)
TYPES = frozenset({"credit", "bet", "win", "cancel"})
MAX_CODE_CHARS = 256
SESSION_CACHE_ENTRIES = 100_000
SESSION_CACHE_TTL_S = 3.0

ERR_DESC: dict[str, str] = {
    "INVALID_SESSION": "session not found",
    "BAD_REQUEST": "bad request",
    "INSUFFICIENT_FUNDS": "insufficient funds",
    "DUPLICATE_ID": "duplicate transaction id",
    "CANCELLED": "transaction cancelled",
    "SETTLED": "bet already settled",
    "INTERNAL_ERROR": "temporary failure, retry",
}

logger = logging.getLogger("walletgate")


@lru_cache(maxsize=8)
def format_time(epoch_s: int) -> str:
    """UTC ``DD-MM-YYYY HH:MM:SS`` (cached: consecutive responses share the second)."""
    return time.strftime("%d-%m-%Y %H:%M:%S", time.gmtime(epoch_s))


def _now_text() -> str:
    return format_time(int(time.time()))


def success_body(balance_units: int, time_text: str) -> dict[str, Any]:
    return {"credit": _native.units_to_cents(balance_units), "result": 1, "time": time_text}


def error_body(
    err_code: str, balance_units: int | None, time_text: str, field: str = ""
) -> dict[str, Any]:
    """An error response; ``credit`` only when the account is known (``balance_units``)."""
    desc = ERR_DESC[err_code]
    if field:
        desc = f"{desc}: {field}"
    body: dict[str, Any] = {"result": 0, "err_code": err_code, "err_desc": desc}
    if balance_units is not None:
        body["credit"] = _native.units_to_cents(balance_units)
    body["time"] = time_text
    return body


def render_stored(record: dict[str, str]) -> dict[str, Any]:
    """The original response body of a stored outcome (a wg:{T:P}:tx:<key> hash)."""
    time_text = format_time(int(record["created_us"]) // 1_000_000)
    balance_units = int(record["bal"])
    code = record["code"]
    if code == ledger_v2.SUCCESS_CODE:
        return success_body(balance_units, time_text)
    return error_body(code, balance_units, time_text)


def _result_body(result: ledger_v2.WalletResult) -> dict[str, Any]:
    time_text = format_time(result.created_us // 1_000_000)
    if result.code == ledger_v2.SUCCESS_CODE:
        return success_body(result.balance_units, time_text)
    return error_body(result.code, result.balance_units, time_text)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, with an IPv4-mapped IPv6 one (a dual-stack listener's view of an IPv4
    peer, ``::ffff:203.0.113.7``) read as the IPv4 address it is, so that IPv4 networks match."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _BadField(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _uint_field(body: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _BadField(name)
        return None
    parsed = parse_uint(value)
    if parsed is None:
        raise _BadField(name)
    return parsed


def _cents_field(body: dict[str, Any], name: str) -> int:
    """A required amount in integer cents >= 0, returned in units.

    The spec types amounts as JSON integers: unlike ``id`` and ``round_id``, a digit string is
    malformed, so a platform that quotes its amounts finds out on its first call.
    """
    cents = body.get(name)
    if not is_int(cents) or not 0 <= cents <= INT64_MAX:
        raise _BadField(name)
    try:
        return _native.cents_to_units(cents)
    except OverflowError:
        raise _BadField(name) from None


def _game_field(body: dict[str, Any]) -> int:
    """The game id, a JSON integer; it is only logged, so it is bounded to what logs can hold."""
    value = body.get("game")
    if not is_int(value) or not INT64_MIN <= value <= INT64_MAX:
        raise _BadField("game")
    return value


def _valid_code(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_CODE_CHARS
        and value.isprintable()
        and "{" not in value
        and "}" not in value
    )


class WalletV2Handler:
    """The single endpoint; built once per app by :func:`routes`."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.metrics = ctx.metrics
        self.agents: dict[str, WalletV2Agent] = dict(ctx.config.wallet_v2_agents)
        self.currencies: dict[str, frozenset[str]] = {
            token: frozenset(agent.currencies) for token, agent in self.agents.items()
        }
        self.trusted_proxies: tuple[IpNetwork, ...] = ctx.config.server.trusted_proxies
        self.max_body_bytes = ctx.config.server.max_body_bytes
        self.sessions = ledger_v2.SessionCache(
            ctx.ledger, max_entries=SESSION_CACHE_ENTRIES, ttl_s=SESSION_CACHE_TTL_S
        )

    # -- tenant and network checks ------------------------------------------------------------

    def _client_address(
        self, request: Request
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        address = _address(request.client.host if request.client is not None else "")
        if address is None or not any(address in network for network in self.trusted_proxies):
            return address
        # Every X-Forwarded-For line, in order: a proxy may add a line of its own instead of
        # appending to the client's, and the client's line comes first, so reading only the
        # first line would take the address the client claims.
        lines = request.headers.getlist("x-forwarded-for")
        if not lines:
            return address
        # Walk from the right: the first hop that is not a trusted proxy is the client.
        hops = [hop.strip() for hop in ",".join(lines).split(",")]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                return None
            if not any(address in network for network in self.trusted_proxies):
                return address
        return address

    def _allowed(self, request: Request, agent: WalletV2Agent) -> bool:
        address = self._client_address(request)
        return address is not None and any(address in network for network in agent.ip_allowlist)

    # -- the request --------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        token = request.path_params.get("wallet_token", "")
        agent = self.agents.get(token) if WALLET_TOKEN_PATTERN.match(token) else None
        if agent is None:
            note(request, FAMILY, "unknown", 404)
            return empty_response(404)
        if agent.ip_allowlist and not self._allowed(request, agent):
            note(request, FAMILY, "unknown", 403)
            return empty_response(403)
        state: dict[str, Any] = {"endpoint": "unknown", "refs": {}}
        try:
            body = await self._process(request, agent, state)
        except LedgerUnavailable:
            self.metrics.inc("redis_errors_total")
            body = error_body("INTERNAL_ERROR", None, _now_text())
        except Exception:
            logger.exception("wallet_v2 %s failed", state["endpoint"])
            body = error_body("INTERNAL_ERROR", None, _now_text())
        result = body["result"] if body["result"] == 1 else body["err_code"]
        note(request, FAMILY, state["endpoint"], result, **state["refs"])
        return json_response(body)

    async def _process(
        self, request: Request, agent: WalletV2Agent, state: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            raw = await read_body(request, self.max_body_bytes)
        except BodyTooLarge:
            return error_body("BAD_REQUEST", None, _now_text(), "body")
        body = parse_object(raw)
        if body is None:
            return error_body("BAD_REQUEST", None, _now_text(), "body")
        op = body.get("type")
        if not isinstance(op, str) or op not in TYPES:
            return error_body("BAD_REQUEST", None, _now_text(), "type")
        state["endpoint"] = op
        code = body.get("code")
        if not _valid_code(code):
            return error_body("BAD_REQUEST", None, _now_text(), "code")
        assert isinstance(code, str)
        # The id goes into the access log even when the session is refused below (it is
        # checked, with its own error, only after the session).
        logged_id = parse_uint(body.get("id"))
        if logged_id is not None:
            state["refs"]["id"] = logged_id
        tenant = agent.wallet_token
        need_unexpired = op in ("credit", "bet")
        session = await self.sessions.lookup(tenant, code, need_unexpired=need_unexpired)
        if session is None or session.currency not in self.currencies[tenant]:
            return error_body("INVALID_SESSION", None, _now_text())
        if need_unexpired and session.expired():
            # The account behind an expired session is known, so the error carries its credit
            # (one balance read, on this error path only).
            balance_units = await ledger_v2.balance(
                self.ledger, tenant=tenant, player=session.player, currency=session.currency
            )
            return error_body("INVALID_SESSION", balance_units, _now_text())
        if op == "credit":
            return await self._credit(tenant, session)
        try:
            item_id = _uint_field(body, "id", required=True)
            assert item_id is not None
            state["refs"]["id"] = item_id
            round_id = _uint_field(body, "round_id", required=False)
            if round_id is not None:
                state["refs"]["round_id"] = round_id
            amount_units = 0
            if op != "cancel":
                state["refs"]["game"] = _game_field(body)
                amount_units = _cents_field(body, op)
        except _BadField as bad:
            return await self._bad_request(tenant, session, bad.field)
        if op == "bet":
            result = await ledger_v2.bet(
                self.ledger,
                tenant=tenant,
                player=session.player,
                currency=session.currency,
                bet_id=item_id,
                amount_units=amount_units,
                round_id=round_id,
            )
        elif op == "win":
            result = await ledger_v2.win(
                self.ledger,
                tenant=tenant,
                player=session.player,
                currency=session.currency,
                win_id=item_id,
                amount_units=amount_units,
                round_id=round_id,
            )
        else:
            result = await ledger_v2.cancel(
                self.ledger,
                tenant=tenant,
                player=session.player,
                currency=session.currency,
                bet_id=item_id,
                round_id=round_id,
            )
        return self._answer(result, op)

    async def _credit(self, tenant: str, session: SessionInfo) -> dict[str, Any]:
        balance_units = await ledger_v2.balance(
            self.ledger, tenant=tenant, player=session.player, currency=session.currency
        )
        if balance_units is None:
            # The session's player has no account (Redis lost it): as unknown as a bad code.
            return error_body("INVALID_SESSION", None, _now_text())
        return {
            "credit": _native.units_to_cents(balance_units),
            "player_id": session.player,
            "result": 1,
            "time": _now_text(),
            "currency": session.currency,
        }

    async def _bad_request(self, tenant: str, session: SessionInfo, field: str) -> dict[str, Any]:
        """``BAD_REQUEST`` after the session was accepted: the account is known, so add credit."""
        balance_units = await ledger_v2.balance(
            self.ledger, tenant=tenant, player=session.player, currency=session.currency
        )
        return error_body("BAD_REQUEST", balance_units, _now_text(), field)

    def _answer(self, result: ledger_v2.WalletResult, op: str) -> dict[str, Any]:
        outcome = result.outcome
        if outcome == "stored":
            if result.kind == "tombstone":
                self.metrics.inc("tombstones_total", LABELS)
            return _result_body(result)
        if outcome == "replay":
            self.metrics.inc("idempotent_replays_total", LABELS)
            return _result_body(result)
        if outcome == "conflict":
            self.metrics.inc("idempotency_conflicts_total", LABELS)
            return error_body("DUPLICATE_ID", result.balance_units, _now_text())
        if outcome == "cancelled":
            return error_body("CANCELLED", result.balance_units, _now_text())
        if outcome == "win":
            return error_body("BAD_REQUEST", result.balance_units, _now_text(), "id")
        if outcome == "overflow":
            field = op if op in ("bet", "win") else "id"
            return error_body("BAD_REQUEST", result.balance_units, _now_text(), field)
        assert outcome == "unknown", outcome
        return error_body("INVALID_SESSION", None, _now_text())


def routes(ctx: GatewayContext) -> list[Route]:
    """POST /wallet/v2/{wallet_token}. The ``path`` convertor sends every path under
    /wallet/v2/ here, so an empty or nested token also gets the empty-bodied 404."""
    handler = WalletV2Handler(ctx)
    return [Route("/wallet/v2/{wallet_token:path}", handler.handle, methods=["POST"])]
