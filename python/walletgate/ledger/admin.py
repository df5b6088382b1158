"""Admin operations on the ledger: idempotent adjust and Midas save."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from walletgate.ledger import keys
from walletgate.ledger.core import Ledger, as_str, fingerprint
from walletgate.ledger.scripts import load_script

AdjustOutcome = Literal["applied", "replay", "conflict", "insufficient", "overflow"]
ClaimAction = Literal["claim", "release"]


@dataclass(frozen=True, slots=True)
class AdjustResult:
    """``rejected``: the outcome is a stored rejection (insufficient funds), new or replayed.
    ``balance_units`` is the paid part of a Midas account and ``gen_units`` its gifted part
    (0 for the other families): the balance a Midas caller sees is their sum."""

    outcome: AdjustOutcome
    balance_units: int
    rejected: bool = False
    gen_units: int = 0


async def _claim(
    ledger: Ledger, tenant: str, ref: str, fp: str, token: str, action: ClaimAction
) -> str:
    """Run ``admin_claim.lua`` on the tenant's claim of ``ref``; its one key routes the call."""
    reply = await ledger.runner.run(
        load_script("admin_claim"),
        [keys.admin_claim_key(tenant, ref)],
        [fp, action, token, ledger.settings.idempotency_ttl_s],
    )
    return as_str(reply[0])


async def _account_exists(ledger: Ledger, tenant: str, player: str) -> bool:
    reply = await ledger.runner.run(
        load_script("account_exists"), [keys.account_key(tenant, player)], []
    )
    return int(reply) == 1


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
    """Credit (amount > 0) or debit (amount < 0) an account, idempotent on (tenant, ref).

    Two round trips: the tenant's claim on ``ref`` first (a ref another player's adjustment
    owns is a conflict, although that player's stored outcome is under another hash tag), then
    the player's script, which applies or replays. A failure between the two leaves a claim
    with this fingerprint, so the retry finds it its own and applies.
    """
    assert amount_units != 0, "a zero adjustment is rejected before the ledger"
    assert kind == "adjust" or amount_units > 0, "save only credits"
    key = keys.ADMIN_KEY_PREFIX + ref
    if amount_units < 0 and not await _account_exists(ledger, tenant, player):
        # As for an unknown player, nothing is stored, and a retry is evaluated afresh. Checked
        # before the claim, so none is taken: only stored outcomes hold a ref.
        return AdjustResult(outcome="insufficient", balance_units=0)
    fp = fingerprint(player, currency, str(amount_units), kind)
    token = secrets.token_hex(8)
    if await _claim(ledger, tenant, ref, fp, token, "claim") == "conflict":
        return AdjustResult(outcome="conflict", balance_units=0)
    reply = await ledger.call(
        "admin_adjust",
        tenant=tenant,
        player=player,
        currency=currency,
        protocol="admin",
        key=key,
        fingerprint=fp,
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
    stored_state = as_str(reply[3])
    if stored_state == "":
        # Nothing is stored for this fingerprint (an overflow, or an adjustment of this player
        # stored before claims existed holds the ref): the claim must not keep the ref, or a
        # retry would not be evaluated afresh.
        await _claim(ledger, tenant, ref, fp, token, "release")
    return AdjustResult(
        outcome=outcome,  # type: ignore[arg-type]
        balance_units=int(as_str(reply[1])),
        rejected=stored_state == "rejected",
        gen_units=int(as_str(reply[4])),
    )
