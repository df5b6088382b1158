"""The ledger: the only code that knows Redis keys and scripts. Protocols call its functions.

:class:`Ledger` holds the script runner and the key layout; per-family modules
(``ledger/minigame.py``, ``ledger/transfer.py``, ...) build each operation's KEYS and ARGV and
turn the script's reply into a typed result. Every money operation is exactly one script call.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from walletgate.ledger import keys
from walletgate.ledger.cluster_runner import ClusterRunner
from walletgate.ledger.runner import ScriptArg, ScriptRunner
from walletgate.ledger.scripts import load_script

# Every balance and amount is a signed int64 count of units (Redis HINCRBY's range), and the
# protocols bound their other integers to it too: defined once here for every layer.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    journal_buckets: int
    cluster: bool
    idempotency_ttl_s: int
    midas_ttl_s: int


def as_str(value: Any) -> str:
    """A script reply element (bytes from hiredis, str from redis-py) as ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, str), f"unexpected reply element {value!r}"
    return value


def as_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(as_str(value))


class Ledger:
    """Builds the common KEYS/ARGV of every operation script and runs it in one round trip."""

    def __init__(self, runner: ScriptRunner, settings: LedgerSettings) -> None:
        self.runner = runner
        self.settings = settings

    def journal_stream(self, tenant: str, player: str) -> str:
        bucket = keys.journal_bucket(
            tenant, player, self.settings.journal_buckets, self.settings.cluster
        )
        return keys.journal_stream_key(bucket, self.settings.cluster)

    async def call(
        self,
        script_name: str,
        *,
        tenant: str,
        player: str,
        currency: str,
        protocol: str,
        key: str,
        fingerprint: str,
        refs: Mapping[str, Any],
        retention_s: int,
        extra_keys: Sequence[str] = (),
        extra_args: Sequence[ScriptArg] = (),
    ) -> Any:
        """Run ``lua/<script_name>.lua`` with the prelude's KEYS[1..2] and ARGV[1..8].

        ``extra_keys`` must all be under the player's ``{tenant:player}`` tag.
        """
        prefix = keys.player_prefix(tenant, player)
        assert all(extra.startswith(prefix) for extra in extra_keys), "key outside the player tag"
        script = load_script(script_name)
        script_keys = [keys.account_key(tenant, player), self.journal_stream(tenant, player)]
        script_keys.extend(extra_keys)
        args: list[ScriptArg] = [
            tenant,
            player,
            currency,
            protocol,
            key,
            fingerprint,
            orjson.dumps(refs),
            retention_s,
        ]
        args.extend(extra_args)
        return await self.runner.run(script, script_keys, args)


async def ping(ledger: Ledger) -> int:
    """The readiness probe: the ping script answers, on a cluster from every primary. Returns
    the largest offset of a server's clock from this host's, in microseconds (either sign).

    On a cluster each primary is probed with a key of a slot it owns. A keyless command skips
    the node's cluster-state check and reaches one node only, so a cluster that is down
    (CLUSTERDOWN) or a dead primary would still look ready while its players' money requests
    fail. Raises what the runner raises.
    """
    script = load_script("ping")
    runner = ledger.runner
    sent_us = time.time_ns() // 1000
    if not isinstance(runner, ClusterRunner):
        replies = [await runner.run(script, [], [])]
    else:
        slots = await runner.primary_slots()
        replies = await asyncio.gather(
            *(
                runner.run(script, [keys.journal_stream_key(slot, cluster=True)], [])
                for slot in slots
            )
        )
    # The servers read their clocks between sending and receiving: compare with the midpoint.
    midpoint_us = (sent_us + time.time_ns() // 1000) // 2
    offsets = [int(as_str(reply)) - midpoint_us for reply in replies]
    return max(offsets, key=abs)


def fingerprint(*parts: str) -> str:
    """A short, stable hash of the fields that make two requests "the same" for idempotency."""
    joined = "\x1f".join(parts).encode("utf-8")
    return hashlib.blake2b(joined, digest_size=12).hexdigest()
