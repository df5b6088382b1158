"""``walletgate backfill-claims --config FILE``: tenant-wide claims for the adjustments stored
before claims existed.

An adjustment ref belongs to its tenant: ``admin_claim.lua`` holds the fingerprint of the
adjustment that owns it, so that another player's use of the ref is a conflict. Adjustments
stored before that script existed have no claim, so another player could use their ref again.
Run this once after upgrading, while or before the gateway serves: it gives each stored
adjustment of a ref without a claim one (the oldest adjustment of a ref owns it, for what is left
of its record's retention), never touches an existing claim, and lists the refs that two players
already used, for the operator to look at.
"""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from walletgate.config import ConfigError, load_config
from walletgate.journal.records import text
from walletgate.journal.streams import RedisClient, connect, run_pipeline
from walletgate.ledger import keys

Command = tuple[str, tuple[Any, ...], dict[str, Any]]

# wg:{tenant:player}:adm:<ref>, and where adjustments were kept before: wg:{T:P}:tx:admin:<ref>.
ADMIN_RECORD_PATTERN = re.compile(r"^wg:\{([^{}:]+):([^{}:]+)\}:(adm:|tx:admin:)(.+)\Z", re.S)
SCAN_PATTERNS = ("wg:{*}:adm:*", "wg:{*}:tx:admin:*")
SCAN_BATCH_KEYS = 1000


@dataclass
class BackfillReport:
    """What a backfill did: claims written, records seen, refs two players already used."""

    written: int = 0
    records: int = 0
    shared_refs: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Use:
    created_us: int
    player: str
    fp: str
    ttl_ms: int


async def backfill_claims(client: RedisClient, *, default_ttl_s: int) -> BackfillReport:
    """Write the missing claims (``SET … NX``). A record without an expiry gives its claim
    ``default_ttl_s``; a record that expired while the scan ran gives none."""
    assert default_ttl_s > 0, "a claim always expires"
    uses: dict[tuple[str, str], list[_Use]] = {}
    report = BackfillReport()
    for pattern in SCAN_PATTERNS:
        batch: list[str] = []
        async for raw_name in client.scan_iter(match=pattern, count=SCAN_BATCH_KEYS):
            name = text(raw_name)
            if ADMIN_RECORD_PATTERN.match(name):
                batch.append(name)
            if len(batch) >= SCAN_BATCH_KEYS:
                await _read_uses(client, batch, uses, report)
                batch = []
        if batch:
            await _read_uses(client, batch, uses, report)
    commands: list[Command] = []
    for (tenant, ref), found in sorted(uses.items()):
        owner = min(found, key=lambda use: use.created_us)
        if len({use.player for use in found}) > 1:
            report.shared_refs.append((tenant, ref))
        ttl_ms = owner.ttl_ms if owner.ttl_ms > 0 else default_ttl_s * 1000
        commands.append(
            ("set", (keys.admin_claim_key(tenant, ref), owner.fp), {"px": ttl_ms, "nx": True})
        )
    replies = await run_pipeline(client, commands)
    report.written = sum(1 for reply in replies if reply)
    return report


async def _read_uses(
    client: RedisClient,
    names: list[str],
    uses: dict[tuple[str, str], list[_Use]],
    report: BackfillReport,
) -> None:
    commands: list[Command] = []
    for name in names:
        commands.append(("hmget", (name, "fp", "protocol", "created_us"), {}))
        commands.append(("pttl", (name,), {}))
    replies = await run_pipeline(client, commands)
    for index, name in enumerate(names):
        match = ADMIN_RECORD_PATTERN.match(name)
        assert match is not None
        tenant, player, place, ref = match.groups()
        fp, protocol, created_us = (None if v is None else text(v) for v in replies[2 * index])
        ttl_ms = int(replies[2 * index + 1])
        # A transfer tx_id or an order_id may be "admin:<ref>" too: only adjustments count.
        if fp is None or ttl_ms == -2 or (place == "tx:admin:" and protocol != "admin"):
            continue
        report.records += 1
        use = _Use(int(created_us or 0), player, fp, ttl_ms)
        uses.setdefault((tenant, ref), []).append(use)


def backfill_command(config_path: str) -> int:
    """The CLI command: 0 done, 1 done but some refs are shared by two players, 2 error."""
    try:
        config = load_config(config_path, check_journal_dir=False)
    except ConfigError as error:
        print(f"backfill-claims: {error}", file=sys.stderr)
        return 2

    async def run() -> BackfillReport:
        client = connect(config.redis)
        try:
            return await backfill_claims(client, default_ttl_s=config.idempotency.ttl_s)
        finally:
            await client.aclose()

    try:
        report = asyncio.run(run())
    except RedisError as error:
        print(f"backfill-claims: redis error: {error}", file=sys.stderr)
        return 2
    print(
        f"backfill-claims: {report.written} claims written for {report.records} stored adjustments"
    )
    for tenant, ref in report.shared_refs:
        print(f"backfill-claims: ref {ref!r} of tenant {tenant} is used by two players")
    return 1 if report.shared_refs else 0
