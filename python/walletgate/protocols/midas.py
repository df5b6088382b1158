"""WeChat Midas v1: getbalance, pay, cancelpay and present, production and sandbox.

``POST /cgi-bin/midas/{api}?access_token=…`` and ``/cgi-bin/midas/sandbox/{api}``. Every answer
is HTTP 200 with ``{"errcode":…,"errmsg":…}``. The checks run in the spec's order:

1. one JSON object, no duplicate keys, only string or integer values, else 90018;
2. ``appid`` configured and the query's ``access_token`` one of its tokens, else 40001;
3. ``offer_id`` matches, else 90017;
4. required fields valid, else 90018;
5. ``sig`` (``app_key``, or ``sandbox_app_key`` on the sandbox; ``org_loc`` = the path called),
   else 90011;
6. a session_key registered for (appid, openid) and unexpired, else 90010;
7. ``mp_sig``, else 90009;
8. apply (one ledger script).

Steps 6 and 7 read the session_key through a per-process :class:`SessionCache` (bounded LRU,
a few seconds' TTL), so a money request costs one round trip when the entry is warm; the money
script re-checks the session in Redis, so a stale entry never lets a revoked key through.
getbalance reads the session and the account in one script and verifies mp_sig before answering.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from walletgate import _native
from walletgate.config import MidasApp
from walletgate.ledger import keys
from walletgate.ledger import midas as ledger_midas
from walletgate.ledger.core import INT64_MAX
from walletgate.ledger.errors import LedgerUnavailable
from walletgate.ledger.midas import MidasSession, MoneyResult, SessionCache
from walletgate.protocols.common import (
    MAX_LOGGED_TEXT_CHARS,
    BodyTooLarge,
    GatewayContext,
    JsonResponse,
    is_int,
    note,
    parse_object,
    read_body,
)

FAMILY: Final = "midas"
LABELS: Final = (("family", FAMILY),)
APIS: Final = ("getbalance", "pay", "cancelpay", "present")
BASE_PATH: Final = "/cgi-bin/midas/"
SANDBOX_PATH: Final = "/cgi-bin/midas/sandbox/"

ERRMSG: Final[dict[int, str]] = {
    0: "ok",
    -1: "system busy",
    40001: "invalid credential",
    90000: "order not exist",
    90009: "mp_sig error",
    90010: "session expired",
    90011: "sig error",
    90012: "order already exists",
    90013: "balance not enough",
    90015: "order already rolled back",
    90017: "no permission",
    90018: "parameter error",
}
_ERROR_BODIES: Final = {
    code: orjson.dumps({"errcode": code, "errmsg": message}) for code, message in ERRMSG.items()
}
BILL_NO_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-|*@]{1,63}")
NOT_SIGNED: Final = frozenset({"sig", "mp_sig", "access_token"})
MAX_ZONE_CHARS: Final = 64
UNITS_PER_COIN: Final = 10_000

logger = logging.getLogger("walletgate")


class _Reject(Exception):
    """Answer with an errcode that is not stored (bad input, auth)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def coins(units: int) -> int:
    """Units to whole coins, truncating toward zero (exact for any Python int)."""
    return units // UNITS_PER_COIN if units >= 0 else -((-units) // UNITS_PER_COIN)


def render_stored(record: dict[str, str]) -> dict[str, Any]:
    """The original response of a stored pay or present outcome (its tx record)."""
    code = int(record.get("code", "0"))
    if code != 0:
        return {"errcode": code, "errmsg": ERRMSG.get(code, "error")}
    total = int(record.get("bal", "0")) + int(record.get("gbal", "0"))
    bill_no = record.get("bill_no", "")
    if record.get("op") == "present":
        return {"errcode": 0, "errmsg": "ok", "balance": coins(total), "bill_no": bill_no}
    return {
        "errcode": 0,
        "errmsg": "ok",
        "bill_no": bill_no,
        "balance": coins(total),
        "used_gen_amt": coins(int(record.get("used_gen", "0"))),
    }


@dataclass(frozen=True, slots=True)
class _Request:
    """A request that passed steps 1 to 4."""

    app: MidasApp
    params: dict[str, Any]
    access_token: str
    openid: str
    zone_id: str
    ts: int
    bill_no: str | None
    amount_units: int | None


def _json_int(value: Any) -> int | None:
    """A JSON integer's value (``bool`` is not one), or ``None``."""
    return value if is_int(value) else None


def _valid_string(value: Any) -> bool:
    return isinstance(value, str) and value != "" and value.isprintable()


class _Midas:
    """The handlers of one app instance; lookup tables and the session cache are built once."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.metrics = ctx.metrics
        self.max_body_bytes = ctx.config.server.max_body_bytes
        self.apps: dict[str, MidasApp] = dict(ctx.config.midas_apps)
        self.sessions = SessionCache()

    def endpoint(self, api: str, sandbox: bool) -> Callable[[Request], Awaitable[Response]]:
        label = ("sandbox/" if sandbox else "") + api

        async def handle(request: Request) -> Response:
            refs: dict[str, str] = {}
            try:
                code, payload = await self._process(request, api, sandbox, refs)
            except _Reject as reject:
                code, payload = reject.code, None
            except LedgerUnavailable:
                self.metrics.inc("redis_errors_total")
                code, payload = -1, None
            except Exception:
                logger.exception("midas %s failed", label)
                code, payload = -1, None
            note(request, FAMILY, label, code, **refs)
            body = _ERROR_BODIES[code] if payload is None else orjson.dumps(payload)
            return JsonResponse(body)

        return handle

    # Steps 1 to 4 ---------------------------------------------------------------------------

    def _access_token(self, request: Request) -> str | None:
        values = request.query_params.getlist("access_token")
        return values[0] if len(values) == 1 else None

    def _parse(self, raw: bytes, request: Request, api: str, sandbox: bool) -> _Request:
        params = parse_object(raw)
        if params is None:
            raise _Reject(90018)
        for value in params.values():
            if not (isinstance(value, str) or is_int(value)):
                raise _Reject(90018)
        appid = params.get("appid")
        app = self.apps.get(appid) if isinstance(appid, str) else None
        token = self._access_token(request)
        if app is None or token is None:
            raise _Reject(40001)
        accepted = False
        for configured in app.access_tokens:
            accepted |= _native.constant_time_eq(token, configured)
        if not accepted:
            raise _Reject(40001)
        if params.get("offer_id") != app.offer_id:
            raise _Reject(90017)
        openid = params.get("openid")
        zone_id = params.get("zone_id")
        ts = _json_int(params.get("ts"))
        if not (isinstance(openid, str) and keys.valid_identifier(openid)):
            raise _Reject(90018)
        if not (
            isinstance(zone_id, str)
            and len(zone_id) <= MAX_ZONE_CHARS
            and keys.valid_identifier(zone_id)
            and (sandbox or not zone_id.startswith(ledger_midas.SANDBOX_CURRENCY_PREFIX))
        ):
            raise _Reject(90018)
        if ts is None or not 0 <= ts <= INT64_MAX:
            raise _Reject(90018)
        if not _valid_string(params.get("pf")):
            raise _Reject(90018)
        if "user_ip" in params and not isinstance(params["user_ip"], str):
            raise _Reject(90018)
        if not (isinstance(params.get("sig"), str) and isinstance(params.get("mp_sig"), str)):
            raise _Reject(90018)
        bill_no: str | None = None
        amount_units: int | None = None
        if api != "getbalance":
            bill_no = params.get("bill_no")
            if not (isinstance(bill_no, str) and BILL_NO_PATTERN.fullmatch(bill_no)):
                raise _Reject(90018)
            for optional in ("pay_item", "app_remark"):
                if optional in params and not isinstance(params[optional], str):
                    raise _Reject(90018)
        if api in ("pay", "present"):
            count = _json_int(params.get("amt" if api == "pay" else "present_counts"))
            if count is None or count <= 0:
                raise _Reject(90018)
            try:
                amount_units = _native.coins_to_units(count)
            except (OverflowError, ValueError):
                raise _Reject(90018) from None
        return _Request(
            app=app,
            params=params,
            access_token=token,
            openid=openid,
            zone_id=zone_id,
            ts=ts,
            bill_no=bill_no,
            amount_units=amount_units,
        )

    # Steps 5 to 7 ---------------------------------------------------------------------------

    def _check_sig(self, req: _Request, org_loc: str, sandbox: bool) -> list[tuple[str, str]]:
        """Step 5; returns the mp_sig parameters (the signed ones, access_token and sig)."""
        signed = [
            (name, value if isinstance(value, str) else str(value))
            for name, value in req.params.items()
            if name not in NOT_SIGNED
        ]
        key = req.app.sandbox_app_key if sandbox else req.app.app_key
        sig = req.params["sig"]
        if not _native.verify_midas_sig(signed, org_loc, key, sig):
            self.metrics.inc("signature_failures_total", LABELS)
            raise _Reject(90011)
        signed.append(("access_token", req.access_token))
        signed.append(("sig", sig))
        return signed

    def _check_mp_sig(
        self,
        req: _Request,
        session: MidasSession | None,
        mp_params: list[tuple[str, str]],
        org_loc: str,
    ) -> MidasSession:
        """Steps 6 and 7 on a session read from Redis (which then refreshes the cache)."""
        if session is None or session.expired():
            self.sessions.invalidate(req.app.appid, req.openid)
            raise _Reject(90010)
        self.sessions.put(req.app.appid, req.openid, session)
        if not _native.verify_midas_mp_sig(
            mp_params, org_loc, session.session_key, req.params["mp_sig"]
        ):
            self.metrics.inc("signature_failures_total", LABELS)
            raise _Reject(90009)
        self.metrics.set_gauge("clock_skew_seconds", LABELS, req.ts - time.time())
        return session

    async def _verified_session(
        self,
        req: _Request,
        mp_params: list[tuple[str, str]],
        org_loc: str,
        *,
        use_cache: bool = True,
    ) -> MidasSession:
        if use_cache:
            cached = self.sessions.get(req.app.appid, req.openid)
            if (
                cached is not None
                and not cached.expired()
                and _native.verify_midas_mp_sig(
                    mp_params, org_loc, cached.session_key, req.params["mp_sig"]
                )
            ):
                self.metrics.set_gauge("clock_skew_seconds", LABELS, req.ts - time.time())
                return cached
        # A miss, or a cached key that does not verify (it may have been rotated): ask Redis.
        fresh = await ledger_midas.read_session(self.ledger, appid=req.app.appid, openid=req.openid)
        return self._check_mp_sig(req, fresh, mp_params, org_loc)

    # Step 8 ---------------------------------------------------------------------------------

    async def _process(
        self, request: Request, api: str, sandbox: bool, refs: dict[str, str]
    ) -> tuple[int, dict[str, Any] | None]:
        try:
            raw = await read_body(request, self.max_body_bytes)
        except BodyTooLarge:
            raise _Reject(90018) from None
        req = self._parse(raw, request, api, sandbox)
        if req.bill_no is not None:
            refs["bill_no"] = req.bill_no
        org_loc: str = request.scope["path"]
        mp_params = self._check_sig(req, org_loc, sandbox)
        if api == "pay":
            # The spec logs these; only once signed, and cut to a bound (they are free text).
            for optional in ("pay_item", "app_remark"):
                text = req.params.get(optional)
                if isinstance(text, str):
                    refs[optional] = text[:MAX_LOGGED_TEXT_CHARS]
        if api == "getbalance":
            return await self._getbalance(req, mp_params, org_loc, sandbox)
        session = await self._verified_session(req, mp_params, org_loc)
        result = await self._apply(req, api, sandbox, session)
        if result.outcome == "session":
            # The cached session was rotated, expired or removed: re-read and re-verify once.
            self.sessions.invalidate(req.app.appid, req.openid)
            session = await self._verified_session(req, mp_params, org_loc, use_cache=False)
            result = await self._apply(req, api, sandbox, session)
            if result.outcome == "session":
                self.sessions.invalidate(req.app.appid, req.openid)
                raise _Reject(90010)
        return self._answer(req, api, result)

    async def _getbalance(
        self, req: _Request, mp_params: list[tuple[str, str]], org_loc: str, sandbox: bool
    ) -> tuple[int, dict[str, Any]]:
        session, view = await ledger_midas.read_balance(
            self.ledger,
            appid=req.app.appid,
            openid=req.openid,
            currency=ledger_midas.currency_for(req.zone_id, sandbox),
        )
        self._check_mp_sig(req, session, mp_params, org_loc)
        return 0, {
            "errcode": 0,
            "errmsg": "ok",
            "balance": coins(view.paid_units + view.gen_units),
            "gen_balance": coins(view.gen_units),
            "first_save": view.first_save,
            "save_amt": coins(view.save_amt_units),
            "save_sum": coins(view.save_sum_units),
            "cost_sum": coins(view.cost_sum_units),
            "present_sum": coins(view.present_sum_units),
        }

    async def _apply(
        self, req: _Request, api: str, sandbox: bool, session: MidasSession
    ) -> MoneyResult:
        assert req.bill_no is not None
        if api == "cancelpay":
            return await ledger_midas.cancel_pay(
                self.ledger,
                appid=req.app.appid,
                openid=req.openid,
                zone_id=req.zone_id,
                sandbox=sandbox,
                bill_no=req.bill_no,
                digest=session.digest,
            )
        assert req.amount_units is not None
        operation = ledger_midas.pay if api == "pay" else ledger_midas.present
        return await operation(
            self.ledger,
            appid=req.app.appid,
            openid=req.openid,
            zone_id=req.zone_id,
            sandbox=sandbox,
            bill_no=req.bill_no,
            amount_units=req.amount_units,
            digest=session.digest,
        )

    def _answer(
        self, req: _Request, api: str, result: MoneyResult
    ) -> tuple[int, dict[str, Any] | None]:
        outcome = result.outcome
        if outcome == "overflow":
            raise _Reject(90018)
        if outcome == "conflict":
            self.metrics.inc("idempotency_conflicts_total", LABELS)
            return 90012, None
        if outcome == "replay":
            self.metrics.inc("idempotent_replays_total", LABELS)
        if result.code != 0:
            return result.code, None
        if api == "cancelpay":
            return 0, {"errcode": 0, "errmsg": "ok", "bill_no": req.bill_no}
        total = coins(result.paid_units + result.gen_units)
        if api == "present":
            return 0, {"errcode": 0, "errmsg": "ok", "balance": total, "bill_no": req.bill_no}
        return 0, {
            "errcode": 0,
            "errmsg": "ok",
            "bill_no": req.bill_no,
            "balance": total,
            "used_gen_amt": coins(result.used_gen_units),
        }


def routes(ctx: GatewayContext) -> list[Route]:
    """The eight Midas routes (POST only; Starlette answers 405 to other methods)."""
    handlers = _Midas(ctx)
    return [
        Route(base + api, handlers.endpoint(api, sandbox), methods=["POST"])
        for sandbox, base in ((False, BASE_PATH), (True, SANDBOX_PATH))
        for api in APIS
    ]
