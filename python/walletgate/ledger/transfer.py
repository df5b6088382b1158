"""MINI.GAME transfer wallet on the ledger: tokens, transfers, status and balances.

* **Tokens.** ``authorize`` issues an opaque random token bound to (appid, uname), stored as
  ``wg:{ttok:<appid>:<token>}`` with the player and its expiry, kept ``token_ttl_s``. Tokens are
  never revoked, so :class:`TokenCache` may keep a looked-up token in process until it expires.
* **Transfers.** One script call (``transfer_apply``) checks, applies, stores the outcome under
  ``wg:{T:P}:tx:<tx_id>`` and journals it. ``ptx_id`` is derived inside that script from the
  player's transfer counter and :func:`player_code` (see the script's header), so it is unique
  per tenant without a tenant-wide key.
* **State 2.** The HTTP path commits in the same call, so it never leaves a transfer pending.
  :func:`admit_transfer` writes a pending marker (kept ``pending_ttl_s``) that
  :func:`commit_transfer` replaces atomically; meanwhile ``transfer`` and ``transfer/status``
  answer state 2, and once the marker expires the ``tx_id`` is unknown and may be sent again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from walletgate.ledger import keys
from walletgate.ledger.core import Ledger, as_str, fingerprint
from walletgate.ledger.scripts import load_script

PROTOCOL = "transfer"
TOKEN_BYTES = 24
MAX_TOKEN_CHARS = 512
TOKEN_CACHE_ENTRIES = 50_000

TransferOutcome = Literal[
    "applied", "rejected", "pending", "replay", "conflict", "unknown", "overflow", "exhausted"
]
TransferState = Literal["applied", "rejected", "pending"]
TransferMode = Literal["apply", "admit", "commit"]
_OUTCOMES = frozenset(
    ("applied", "rejected", "pending", "replay", "conflict", "unknown", "overflow", "exhausted")
)
_STATES = frozenset(("applied", "rejected", "pending"))


def player_code(player: str) -> str:
    """Decimal digits that identify ``player`` (injective): ``1`` + the uname when it is all ASCII
    digits, else ``2`` + each UTF-8 byte as three digits."""
    if player.isascii() and player.isdigit():
        return "1" + player
    return "2" + "".join(f"{byte:03d}" for byte in player.encode("utf-8"))


def valid_token(token: str) -> bool:
    """A token that can be looked up: it must not break the ``{ttok:...}`` hash tag."""
    return (
        0 < len(token) <= MAX_TOKEN_CHARS
        and token.isprintable()
        and "{" not in token
        and "}" not in token
    )


@dataclass(frozen=True, slots=True)
class TokenInfo:
    player: str
    expires_at_s: int

    def expired(self, now_s: float | None = None) -> bool:
        return (time.time() if now_s is None else now_s) >= self.expires_at_s


class TokenCache:
    """Known tokens of this process, (appid, token) -> TokenInfo, bounded (oldest out first).

    Only tokens that exist are cached (a token issued by another worker must be found), and an
    entry is dropped once expired; tokens are never revoked, so an entry cannot go stale.
    """

    def __init__(self, max_entries: int = TOKEN_CACHE_ENTRIES) -> None:
        assert max_entries > 0
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], TokenInfo] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tenant: str, token: str, now_s: float) -> TokenInfo | None:
        info = self._entries.get((tenant, token))
        if info is not None and info.expired(now_s):
            del self._entries[(tenant, token)]
            return None
        return info

    def put(self, tenant: str, token: str, info: TokenInfo) -> None:
        entries = self._entries
        entries[(tenant, token)] = info
        if len(entries) > self.max_entries:
            entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Authorization:
    token: str
    expires_at_s: int
    balance_units: int


async def authorize(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    default_currency: str,
    ttl_s: int,
    cache: TokenCache | None = None,
) -> Authorization:
    """Make the player known (zero account in ``default_currency`` on first use) and issue a new
    token valid ``ttl_s``. The account step and the token step run concurrently; if either
    fails, the token is never handed out, so a stored one is harmless."""
    assert ttl_s > 0
    expires_at_s = int(time.time()) + ttl_s
    opened, token = await asyncio.gather(
        ledger.runner.run(
            load_script("transfer_open"), [keys.account_key(tenant, player)], [default_currency]
        ),
        _store_new_token(ledger, tenant, player, expires_at_s, ttl_s),
    )
    if cache is not None:
        cache.put(tenant, token, TokenInfo(player=player, expires_at_s=expires_at_s))
    return Authorization(
        token=token, expires_at_s=expires_at_s, balance_units=int(as_str(opened[0]))
    )


async def _store_new_token(
    ledger: Ledger, tenant: str, player: str, expires_at_s: int, ttl_s: int
) -> str:
    script = load_script("transfer_token_put")
    while True:  # a collision of 192 random bits does not happen; the loop only makes it safe
        token = secrets.token_urlsafe(TOKEN_BYTES)
        stored = await ledger.runner.run(
            script, [keys.transfer_token_key(tenant, token)], [player, str(expires_at_s), ttl_s]
        )
        if int(stored) == 1:
            return token


async def lookup_token(
    ledger: Ledger, *, tenant: str, token: str, cache: TokenCache | None = None
) -> str | None:
    """The player behind a valid, unexpired ``token`` of ``tenant``, else ``None``."""
    if not valid_token(token):
        return None
    now_s = time.time()
    if cache is not None:
        cached = cache.get(tenant, token, now_s)
        if cached is not None:
            return cached.player
    reply = await ledger.runner.run(
        load_script("transfer_token_get"), [keys.transfer_token_key(tenant, token)], []
    )
    if not reply:
        return None
    info = TokenInfo(player=as_str(reply[0]), expires_at_s=int(as_str(reply[1])))
    if info.expired(now_s):
        return None
    if cache is not None:
        cache.put(tenant, token, info)
    return info.player


@dataclass(frozen=True, slots=True)
class TransferResult:
    outcome: TransferOutcome
    state: TransferState | None
    """The (stored) state: set for applied, rejected, pending and replay outcomes."""
    code: int
    """0 or 10001 when ``state`` is set."""
    ptx_id: str
    balance_units: int

    @property
    def replayed(self) -> bool:
        return self.outcome == "replay"


async def transfer(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    amount_units: int,
    tx_id: str,
    refs: dict[str, Any],
    pending_ttl_s: int,
    mode: TransferMode = "apply",
) -> TransferResult:
    """Move ``amount_units`` into (> 0) or out of (< 0) the game wallet, idempotent on
    (tenant, tx_id). ``mode`` "apply" is the one-call HTTP path; see the module docstring."""
    assert amount_units != 0, "a zero amount is rejected before the ledger"
    reply = await ledger.call(
        "transfer_apply",
        tenant=tenant,
        player=player,
        currency=currency,
        protocol=PROTOCOL,
        key=tx_id,
        fingerprint=transfer_fingerprint(player, currency, amount_units),
        refs=refs,
        retention_s=ledger.settings.idempotency_ttl_s,
        extra_keys=[keys.transaction_key(tenant, player, tx_id)],
        extra_args=[str(amount_units), tx_id, mode, pending_ttl_s, player_code(player)],
    )
    outcome = as_str(reply[0])
    assert outcome in _OUTCOMES, outcome
    state = as_str(reply[1]) or None
    assert state is None or state in _STATES, state
    code = as_str(reply[2])
    return TransferResult(
        outcome=outcome,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        code=int(code) if code else 0,
        ptx_id=as_str(reply[3]),
        balance_units=int(as_str(reply[4]) or "0"),
    )


async def admit_transfer(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    amount_units: int,
    tx_id: str,
    refs: dict[str, Any],
    pending_ttl_s: int,
) -> TransferResult:
    """Write a pending marker (state 2) for a later :func:`commit_transfer`. Not on the HTTP
    path; the marker expires after ``pending_ttl_s`` if the commit never runs."""
    return await transfer(
        ledger,
        tenant=tenant,
        player=player,
        currency=currency,
        amount_units=amount_units,
        tx_id=tx_id,
        refs=refs,
        pending_ttl_s=pending_ttl_s,
        mode="admit",
    )


async def commit_transfer(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    amount_units: int,
    tx_id: str,
    refs: dict[str, Any],
    pending_ttl_s: int,
) -> TransferResult:
    """Commit an admitted transfer (or apply it afresh if its marker expired)."""
    return await transfer(
        ledger,
        tenant=tenant,
        player=player,
        currency=currency,
        amount_units=amount_units,
        tx_id=tx_id,
        refs=refs,
        pending_ttl_s=pending_ttl_s,
        mode="commit",
    )


def transfer_fingerprint(player: str, currency: str, amount_units: int) -> str:
    return fingerprint(player, currency, str(amount_units))


@dataclass(frozen=True, slots=True)
class TransferStatus:
    state: TransferState
    currency: str
    amount_units: int


async def transfer_status(
    ledger: Ledger, *, tenant: str, player: str, tx_id: str
) -> TransferStatus | None:
    """The outcome of ``tx_id`` for ``player``, or ``None`` (unknown, another player's, expired
    pending marker, or past retention)."""
    reply = await ledger.runner.run(
        load_script("transfer_status"), [keys.transaction_key(tenant, player, tx_id)], []
    )
    if not reply:
        return None
    state = as_str(reply[0])
    if state not in _STATES:
        return None
    return TransferStatus(
        state=state,  # type: ignore[arg-type]
        currency=as_str(reply[1]),
        amount_units=int(as_str(reply[2])),
    )


async def wallet_balance(ledger: Ledger, *, tenant: str, player: str, currency: str) -> int | None:
    """The player's balance in ``currency`` (0 when never funded), or ``None`` if unknown."""
    reply = await ledger.runner.run(
        load_script("transfer_wallet"), [keys.account_key(tenant, player)], [currency]
    )
    if not reply:
        return None
    return int(as_str(reply[0]))
