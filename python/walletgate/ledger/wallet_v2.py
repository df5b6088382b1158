"""Wallet API v.2 ledger operations: balance, bet, win, cancel, and a session-lookup cache.

Keys (tenant = wallet_token; the currency is part of every key because ``id`` is unique per
currency): a bet or win is stored under ``tx:<currency>:<id>``, a cancel under
``tx:<currency>:<id>:cancel`` (the transaction-key format of the admin API), and a round under
``round:<currency>:<round>``. Each money operation is exactly one script call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from walletgate.ledger import keys
from walletgate.ledger.core import Ledger, as_str, fingerprint
from walletgate.ledger.scripts import load_script
from walletgate.ledger.sessions import SessionInfo, lookup_session

PROTOCOL = "wallet_v2"
SUCCESS_CODE = "1"

Outcome = Literal["stored", "replay", "conflict", "cancelled", "unknown", "overflow", "win"]
_OUTCOMES = frozenset({"stored", "replay", "conflict", "cancelled", "unknown", "overflow", "win"})


@dataclass(frozen=True, slots=True)
class WalletResult:
    """One script reply.

    ``outcome``: ``stored`` (a new stored outcome, ``code`` "1" or a stored rejection),
    ``replay`` (the stored ``code``, ``balance_units`` and ``created_us``), ``conflict`` (the key
    holds another fingerprint), ``cancelled`` (the key holds the stored ``CANCELLED`` of another
    request on a tombstone: refused the same way, nothing written), ``unknown`` (no account),
    ``overflow`` (the balance would leave int64; nothing written) or ``win`` (a cancel whose
    target is a win; nothing written).
    ``balance_units`` is the current balance for the outcomes that write nothing.
    ``kind`` is the journal kind written (``bet``, ``win``, ``close``, ``cancel``, ``tombstone``,
    ``reject``) or ``""``.
    """

    outcome: Outcome
    code: str
    balance_units: int
    created_us: int
    kind: str


def bet_key(currency: str, bet_id: int) -> str:
    return f"{currency}:{bet_id}"


def cancel_key(currency: str, bet_id: int) -> str:
    return f"{currency}:{bet_id}:cancel"


def _round_key(tenant: str, player: str, currency: str, round_id: int) -> str:
    return keys.round_key(tenant, player, f"{currency}:{round_id}")


def _result(reply: Any) -> WalletResult:
    outcome = as_str(reply[0])
    assert outcome in _OUTCOMES, outcome
    return WalletResult(
        outcome=outcome,  # type: ignore[arg-type]
        code=as_str(reply[1]),
        balance_units=int(as_str(reply[2])),
        created_us=int(as_str(reply[3])),
        kind=as_str(reply[4]),
    )


def _refs(bet_id: int, round_id: int | None) -> dict[str, int]:
    refs = {"id": bet_id}
    if round_id is not None:
        refs["round_id"] = round_id
    return refs


async def balance(ledger: Ledger, *, tenant: str, player: str, currency: str) -> int | None:
    """The balance in units, or ``None`` when the player's account does not exist."""
    reply = await ledger.runner.run(
        load_script("wallet_v2_balance"), [keys.account_key(tenant, player)], [currency]
    )
    if as_str(reply[0]) != "1":
        return None
    return int(as_str(reply[1]))


async def bet(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    bet_id: int,
    amount_units: int,
    round_id: int | None,
) -> WalletResult:
    """Debit ``amount_units`` (>= 0); the bet joins round ``round_id``, else its own id."""
    assert amount_units >= 0
    key = bet_key(currency, bet_id)
    round_text = "" if round_id is None else str(round_id)
    joined = bet_id if round_id is None else round_id
    reply = await ledger.call(
        "wallet_v2_bet",
        tenant=tenant,
        player=player,
        currency=currency,
        protocol=PROTOCOL,
        key=key,
        fingerprint=fingerprint("bet", player, str(amount_units), round_text),
        refs=_refs(bet_id, round_id),
        retention_s=ledger.settings.idempotency_ttl_s,
        extra_keys=[
            keys.transaction_key(tenant, player, key),
            _round_key(tenant, player, currency, joined),
        ],
        extra_args=[str(amount_units), str(bet_id), str(joined)],
    )
    return _result(reply)


async def win(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    win_id: int,
    amount_units: int,
    round_id: int | None,
) -> WalletResult:
    """Credit ``amount_units`` (>= 0); with ``round_id`` R, settle the bets of R."""
    assert amount_units >= 0
    key = bet_key(currency, win_id)
    extra_keys = [keys.transaction_key(tenant, player, key)]
    if round_id is not None:
        extra_keys.append(_round_key(tenant, player, currency, round_id))
    reply = await ledger.call(
        "wallet_v2_win",
        tenant=tenant,
        player=player,
        currency=currency,
        protocol=PROTOCOL,
        key=key,
        fingerprint=fingerprint(
            "win", player, str(amount_units), "" if round_id is None else str(round_id)
        ),
        refs=_refs(win_id, round_id),
        retention_s=ledger.settings.idempotency_ttl_s,
        extra_keys=extra_keys,
        extra_args=[str(amount_units), str(win_id), "" if round_id is None else str(round_id)],
    )
    return _result(reply)


async def cancel(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    bet_id: int,
    round_id: int | None = None,
) -> WalletResult:
    """Apply the cancel model to the bet ``bet_id`` (``round_id`` is only logged)."""
    key = cancel_key(currency, bet_id)
    reply = await ledger.call(
        "wallet_v2_cancel",
        tenant=tenant,
        player=player,
        currency=currency,
        protocol=PROTOCOL,
        key=key,
        fingerprint=fingerprint("cancel", player),
        refs=_refs(bet_id, round_id),
        retention_s=ledger.settings.idempotency_ttl_s,
        extra_keys=[
            keys.transaction_key(tenant, player, key),
            keys.transaction_key(tenant, player, bet_key(currency, bet_id)),
        ],
        extra_args=[str(bet_id)],
    )
    return _result(reply)


class SessionCache:
    """A bounded LRU of ``code`` lookups, so most requests make one Redis round trip, not two.

    The cached part of a session (token -> player, currency) never changes once registered
    (session_put refuses a token for another player); only ``expires_at`` can grow when the
    session is registered again. So an entry is used for ``ttl_s`` seconds, expiry is checked
    against its cached ``expires_at``, and an entry that looks expired where an unexpired session
    is needed is looked up again (a just-extended session is never refused). Unknown tokens are
    not cached. Each worker process has its own cache.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_entries: int = 100_000,
        ttl_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert max_entries > 0 and ttl_s >= 0
        self._ledger = ledger
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[SessionInfo, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(
        self, tenant: str, token: str, *, need_unexpired: bool, now_s: float | None = None
    ) -> SessionInfo | None:
        """The session behind ``token`` (expired or not), or ``None`` when unknown."""
        cache_key = (tenant, token)
        now = self._clock()
        entry = self._entries.get(cache_key)
        if entry is not None:
            info, fetched_at = entry
            if now - fetched_at < self._ttl_s and not (need_unexpired and info.expired(now_s)):
                self._entries.move_to_end(cache_key)
                return info
        info_or_none = await lookup_session(self._ledger, tenant=tenant, token=token)
        if info_or_none is None:
            self._entries.pop(cache_key, None)
            return None
        self._entries[cache_key] = (info_or_none, now)
        self._entries.move_to_end(cache_key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return info_or_none
