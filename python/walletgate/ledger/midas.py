"""WeChat Midas v1 on the ledger: balance read, pay, present, cancelpay, session_key lookup.

Accounts are one per (appid, openid, zone_id): the account hash ``wg:{appid:openid}:acct`` with
the currency ``zone_id`` (``sandbox-<zone_id>`` on the sandbox path). The paid part is the field
``bal:<currency>`` (so admin adjust and save act on it), the gifted part ``gen:<currency>``,
and the counters ``save_amt``, ``save_sum``, ``cost_sum``, ``present_sum`` and ``first_save``
are ``<name>:<currency>`` fields of the same hash.

Idempotency records live at ``wg:{appid:openid}:tx:<bill_no>`` for ``[idempotency]
midas_ttl_s``; pay and present share them, and cancelpay marks the pay's record.

mp_sig must be verified before a money script runs, and it needs the session_key, so the lookup
of (appid, openid) -> session_key is cached in-process (:class:`SessionCache`, bounded LRU with
a few seconds' TTL): a hit costs no round trip. A stale entry can never let a revoked or rotated
session through, because every money script re-checks in Redis that the session is still
registered, unexpired and has the digest of the key Python verified with ("session" outcome).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from walletgate.ledger import keys
from walletgate.ledger.core import Ledger, as_str, fingerprint
from walletgate.ledger.scripts import load_script

PROTOCOL: Final = "midas"
PROTOCOL_SANDBOX: Final = "midas_sandbox"
SANDBOX_CURRENCY_PREFIX: Final = "sandbox-"
SESSION_CACHE_MAX_ENTRIES: Final = 100_000
SESSION_CACHE_TTL_S: Final = 3.0

PayOutcome = Literal["applied", "rejected", "replay", "conflict", "session", "overflow"]
CancelOutcome = Literal["applied", "not_found", "repeat", "session", "overflow"]


def currency_for(zone_id: str, sandbox: bool) -> str:
    """The account currency of a zone: ``zone_id``, or ``sandbox-<zone_id>`` on the sandbox."""
    return SANDBOX_CURRENCY_PREFIX + zone_id if sandbox else zone_id


def protocol_for(sandbox: bool) -> str:
    return PROTOCOL_SANDBOX if sandbox else PROTOCOL


def _environment(sandbox: bool) -> str:
    return "sandbox" if sandbox else "production"


def session_digest(session_key: str) -> str:
    """What a money script compares with the stored session_key (the key itself never goes)."""
    return hashlib.sha1(session_key.encode("utf-8"), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class MidasSession:
    session_key: str
    expires_at_s: int
    digest: str

    def expired(self, now_s: float | None = None) -> bool:
        return (time.time() if now_s is None else now_s) >= self.expires_at_s


def _session(session_key: str, expires_at_s: int) -> MidasSession:
    return MidasSession(session_key, expires_at_s, session_digest(session_key))


class SessionCache:
    """A bounded LRU of (appid, openid) -> session, each entry trusted for ``ttl_s`` seconds.

    Only found sessions are cached (a session registered right after a miss is seen at once).
    """

    def __init__(
        self,
        max_entries: int = SESSION_CACHE_MAX_ENTRIES,
        ttl_s: float = SESSION_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert max_entries > 0
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, MidasSession]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, appid: str, openid: str) -> MidasSession | None:
        key = (appid, openid)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry[0] > self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, appid: str, openid: str, session: MidasSession) -> None:
        key = (appid, openid)
        self._entries[key] = (self._clock(), session)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, appid: str, openid: str) -> None:
        self._entries.pop((appid, openid), None)


async def read_session(ledger: Ledger, *, appid: str, openid: str) -> MidasSession | None:
    """The session registered for (appid, openid), expired or not, or ``None``."""
    reply = await ledger.runner.run(
        load_script("midas_session_get"), [keys.midas_session_key(appid, openid)], []
    )
    if not reply:
        return None
    return _session(as_str(reply[0]), int(as_str(reply[1])))


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's parts and counters in units (a new account reads zeros, first_save 1)."""

    paid_units: int
    gen_units: int
    first_save: int
    save_amt_units: int
    save_sum_units: int
    cost_sum_units: int
    present_sum_units: int


async def read_balance(
    ledger: Ledger, *, appid: str, openid: str, currency: str
) -> tuple[MidasSession | None, Balance]:
    """getbalance's single round trip: the session of (appid, openid) and the account."""
    reply = await ledger.runner.run(
        load_script("midas_balance"),
        [keys.account_key(appid, openid), keys.midas_session_key(appid, openid)],
        [currency],
    )
    values = [as_str(item) for item in reply]
    session = _session(values[0], int(values[1])) if values[0] else None
    first_save = 2 if values[4] == "2" else 1
    return session, Balance(
        paid_units=int(values[2]),
        gen_units=int(values[3]),
        first_save=first_save,
        save_amt_units=int(values[5]),
        save_sum_units=int(values[6]),
        cost_sum_units=int(values[7]),
        present_sum_units=int(values[8]),
    )


@dataclass(frozen=True, slots=True)
class MoneyResult:
    """A script's answer. ``code`` is the errcode of a stored or repeated outcome (0, 90013,
    90000, 90012, 90015). The parts are those after the operation, or as first returned."""

    outcome: str
    code: int
    paid_units: int
    gen_units: int
    used_gen_units: int


def _result(reply: Sequence[Any], allowed: tuple[str, ...]) -> MoneyResult:
    outcome = as_str(reply[0])
    assert outcome in allowed, outcome
    return MoneyResult(
        outcome=outcome,
        code=int(as_str(reply[1])),
        paid_units=int(as_str(reply[2])),
        gen_units=int(as_str(reply[3])),
        used_gen_units=int(as_str(reply[4])),
    )


_PAY_OUTCOMES = ("applied", "rejected", "replay", "conflict", "session", "overflow")
_CANCEL_OUTCOMES = ("applied", "not_found", "repeat", "session", "overflow")


async def _credit_or_debit(
    script: str,
    api: str,
    ledger: Ledger,
    *,
    appid: str,
    openid: str,
    zone_id: str,
    sandbox: bool,
    bill_no: str,
    amount_units: int,
    digest: str,
) -> MoneyResult:
    assert amount_units > 0
    return _result(
        await ledger.call(
            script,
            tenant=appid,
            player=openid,
            currency=currency_for(zone_id, sandbox),
            protocol=protocol_for(sandbox),
            key=bill_no,
            fingerprint=fingerprint(api, _environment(sandbox), openid, zone_id, str(amount_units)),
            refs={"bill_no": bill_no},
            retention_s=ledger.settings.midas_ttl_s,
            extra_keys=[
                keys.transaction_key(appid, openid, bill_no),
                keys.midas_session_key(appid, openid),
            ],
            extra_args=[str(amount_units), digest, bill_no],
        ),
        _PAY_OUTCOMES,
    )


async def pay(
    ledger: Ledger,
    *,
    appid: str,
    openid: str,
    zone_id: str,
    sandbox: bool,
    bill_no: str,
    amount_units: int,
    digest: str,
) -> MoneyResult:
    """Deduct ``amount_units`` (gifted part first), idempotent on (appid, bill_no).

    ``digest`` is :func:`session_digest` of the session_key mp_sig was verified with.
    """
    return await _credit_or_debit(
        "midas_pay",
        "pay",
        ledger,
        appid=appid,
        openid=openid,
        zone_id=zone_id,
        sandbox=sandbox,
        bill_no=bill_no,
        amount_units=amount_units,
        digest=digest,
    )


async def present(
    ledger: Ledger,
    *,
    appid: str,
    openid: str,
    zone_id: str,
    sandbox: bool,
    bill_no: str,
    amount_units: int,
    digest: str,
) -> MoneyResult:
    """Gift ``amount_units`` to the gifted part, idempotent on (appid, bill_no) like pay."""
    return await _credit_or_debit(
        "midas_present",
        "present",
        ledger,
        appid=appid,
        openid=openid,
        zone_id=zone_id,
        sandbox=sandbox,
        bill_no=bill_no,
        amount_units=amount_units,
        digest=digest,
    )


async def cancel_pay(
    ledger: Ledger,
    *,
    appid: str,
    openid: str,
    zone_id: str,
    sandbox: bool,
    bill_no: str,
    digest: str,
) -> MoneyResult:
    """Roll back the applied pay ``bill_no`` of this environment, openid and zone."""
    return _result(
        await ledger.call(
            "midas_cancelpay",
            tenant=appid,
            player=openid,
            currency=currency_for(zone_id, sandbox),
            protocol=protocol_for(sandbox),
            key=bill_no,
            fingerprint=fingerprint("cancelpay", _environment(sandbox), openid, zone_id),
            refs={"bill_no": bill_no},
            retention_s=ledger.settings.midas_ttl_s,
            extra_keys=[
                keys.transaction_key(appid, openid, bill_no),
                keys.midas_session_key(appid, openid),
            ],
            extra_args=[digest],
        ),
        _CANCEL_OUTCOMES,
    )
