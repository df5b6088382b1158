"""MINI.GAME seamless wallet operations: change_balance (types 1-7) and balance reads.

``change_balance`` is one call of ``lua/minigame_change.lua``: idempotency, debit/credit,
cancel model, award bookkeeping, round close, the stored outcome and its journal record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from walletgate.ledger import keys
from walletgate.ledger.core import Ledger, as_str, fingerprint
from walletgate.ledger.scripts import load_script

ChangeStatus = Literal[
    "applied", "rejected", "replay", "conflict", "unknown_player", "bad_cancel", "overflow"
]
_STATUSES = frozenset(
    ("applied", "rejected", "replay", "conflict", "unknown_player", "bad_cancel", "overflow")
)


class ChangeResult(NamedTuple):
    """What the script did (a named tuple: built once per request, and a frozen dataclass costs
    several times more to construct).

    ``code``/``msg``/``balance_units`` are the response to send for applied, rejected and replay
    (the stored ones on a replay). ``effect`` is debit|credit|refund|noop|tombstone on applied.
    """

    status: ChangeStatus
    code: int
    balance_units: int
    msg: str
    effect: str = ""
    amount_mismatch: bool = False
    unknown_bets: int = 0
    already_awarded: int = 0
    replay_closed_round: bool = False
    stored_type: int = 0


def change_fingerprint(
    player: str, currency: str, money_units: int, bet_units: int, cancel_order_id: str
) -> str:
    """The change_balance fingerprint: (uname, currency, money, bet, cancel_order_id)."""
    return fingerprint(player, currency, str(money_units), str(bet_units), cancel_order_id)


async def change_balance(
    ledger: Ledger,
    *,
    tenant: str,
    player: str,
    currency: str,
    protocol: str,
    order_id: str,
    type_: int,
    money_units: int,
    bet_units: int,
    session_id: str,
    end_round: bool,
    cancel_order_id: str,
    award_order_ids: Sequence[str],
    refs: Mapping[str, Any],
) -> ChangeResult:
    """Apply one change_balance request (already validated by the protocol layer).

    ``award_order_ids`` is only looked at for types 3 and 4; ``cancel_order_id`` must be
    non-empty for type 2. Amount rules (sign, bet equality, enabled types) are checked before.
    """
    prefix = keys.player_prefix(tenant, player)
    account = prefix + "acct"
    extra_keys = [
        prefix + "tx:" + order_id,
        prefix + "round:" + session_id if session_id else account,
        prefix + "tx:" + cancel_order_id if type_ == 2 else account,
    ]
    if type_ in (3, 4):
        extra_keys.extend(prefix + "tx:" + award for award in award_order_ids)
    reply = await ledger.call(
        "minigame_change",
        tenant=tenant,
        player=player,
        currency=currency,
        protocol=protocol,
        key=order_id,
        fingerprint=change_fingerprint(player, currency, money_units, bet_units, cancel_order_id),
        refs=refs,
        retention_s=ledger.settings.idempotency_ttl_s,
        extra_keys=extra_keys,
        extra_args=[
            str(type_),
            str(money_units),
            str(abs(money_units)),
            "1" if end_round else "0",
            session_id,
            cancel_order_id,
        ],
    )
    return _change_result(reply)


def _text(value: Any) -> str:
    return value.decode() if type(value) is bytes else as_str(value)


def _change_result(reply: Sequence[Any]) -> ChangeResult:
    status = _text(reply[0])
    assert status in _STATUSES, status
    if status == "applied":
        # The hot path: a debit or credit answers "1", its balance and "ok"; only the effect
        # and the anomaly counters need reading.
        return ChangeResult(
            "applied",
            int(reply[1]),
            int(reply[2]),
            _text(reply[3]),
            _text(reply[4]),
            reply[5] in (b"1", "1"),
            int(reply[6]),
            int(reply[7]),
        )
    code, balance, msg, *rest = [_text(value) for value in reply[1:]]
    if status == "replay":
        stored_type = rest[1]
        return ChangeResult(
            "replay",
            int(code),
            int(balance),
            msg,
            replay_closed_round=rest[0] == "1",
            stored_type=int(stored_type) if stored_type.isdigit() else 0,
        )
    return ChangeResult(status, int(code), int(balance), msg)  # type: ignore[arg-type]


async def balances(
    ledger: Ledger, *, tenant: str, player: str, currencies: Sequence[str]
) -> list[int] | None:
    """The player's balances in ``currencies`` (units), or ``None`` when the player is unknown."""
    reply = await ledger.runner.run(
        load_script("minigame_balance"), [keys.account_key(tenant, player)], list(currencies)
    )
    if not reply:
        return None
    return [int(as_str(value)) for value in reply]
