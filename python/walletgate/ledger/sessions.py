"""Session tokens registered through the admin API and read on the request path.

A token maps to (player, currency). Reads go through the same fast script runner as money
operations; a token record outlives its expiry by the idempotency retention so that Wallet v2
wins and cancels that arrive late still find their player.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from walletgate.ledger import keys
from walletgate.ledger.core import Ledger, as_str
from walletgate.ledger.scripts import load_script


@dataclass(frozen=True, slots=True)
class SessionInfo:
    player: str
    currency: str
    expires_at_s: int
    session_key: str

    def expired(self, now_s: float | None = None) -> bool:
        return (time.time() if now_s is None else now_s) >= self.expires_at_s


async def register_session(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    token: str,
    ttl_s: int,
    session_key: str = "",
) -> int | None:
    """Register or extend ``token``; returns ``expires_at`` (UNIX s), or ``None`` on conflict.

    The expiry returned is the one in force: registering again with a shorter ``ttl_s`` keeps
    a later expiry already stored (session_put never shortens a session).
    """
    assert ttl_s > 0
    now_s = int(time.time())
    keep_s = ttl_s + ledger.settings.idempotency_ttl_s
    reply = await ledger.runner.run(
        load_script("session_put"),
        [keys.session_key(tenant, token)],
        [player, currency, str(now_s + ttl_s), str(keep_s), session_key],
    )
    if as_str(reply[0]) == "conflict":
        return None
    expires_at_s = int(as_str(reply[1]))
    assert expires_at_s >= now_s + ttl_s, "session_put shortened a session"
    await touch_player(ledger, tenant=tenant, player=player, currency=currency, open_account=False)
    if session_key:
        # The Midas key record follows the token's expiry in force, so both expire together.
        await ledger.runner.run(
            load_script("midas_session_put"),
            [keys.midas_session_key(tenant, player)],
            [session_key, str(expires_at_s), str(expires_at_s - now_s)],
        )
    return expires_at_s


async def touch_player(
    ledger: Ledger, *, tenant: str, player: str, currency: str, open_account: bool
) -> None:
    """Make the player known to the tenant, optionally with a zero balance in ``currency``."""
    await ledger.runner.run(
        load_script("player_touch"),
        [keys.account_key(tenant, player)],
        [currency, "1" if open_account else "0"],
    )


async def lookup_session(ledger: Ledger, *, tenant: str, token: str) -> SessionInfo | None:
    """The session behind ``token``, expired or not, or ``None`` when unknown."""
    reply = await ledger.runner.run(
        load_script("session_get"), [keys.session_key(tenant, token)], []
    )
    if not reply:
        return None
    return SessionInfo(
        player=as_str(reply[0]),
        currency=as_str(reply[1]),
        expires_at_s=int(as_str(reply[2])),
        session_key=as_str(reply[3]) if reply[3] is not None else "",
    )
