"""Admin operations on the ledger: idempotent adjust and Midas save."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from walletgate.ledger import keys
from walletgate.ledger.core import Ledger, as_str, fingerprint

AdjustOutcome = Literal["applied", "replay", "conflict", "insufficient", "overflow"]


@dataclass(frozen=True, slots=True)
class AdjustResult:
    outcome: AdjustOutcome
    balance_units: int


async def adjust(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    amount_units: int,
    ref: str,
    kind: Literal["adjust", "save"],
) -> AdjustResult:
    """Credit (amount > 0) or debit (amount < 0) an account, idempotent on (tenant, ref)."""
    assert amount_units != 0, "a zero adjustment is rejected before the ledger"
    assert kind == "adjust" or amount_units > 0, "save only credits"
    key = "admin:" + ref
    reply = await ledger.call(
        "admin_adjust",
        tenant=tenant,
        player=player,
        currency=currency,
        protocol="admin",
        key=key,
        fingerprint=fingerprint(player, currency, str(amount_units), kind),
        refs={"ref": ref},
        retention_s=ledger.settings.idempotency_ttl_s,
        extra_keys=[
            keys.admin_record_key(tenant, player, ref),
            # Where adjustments were kept before they had keys of their own; read only.
            keys.transaction_key(tenant, player, key),
        ],
        extra_args=[str(amount_units), kind],
    )
    outcome = as_str(reply[0])
    assert outcome in ("applied", "replay", "conflict", "insufficient", "overflow"), outcome
    return AdjustResult(outcome=outcome, balance_units=int(as_str(reply[1])))  # type: ignore[arg-type]
