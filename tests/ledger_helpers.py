"""Builders shared by the ledger tests: a Ledger on a real Redis with the default runner."""

from __future__ import annotations

import redis.asyncio

from walletgate.ledger.core import Ledger, LedgerSettings
from walletgate.ledger.runner import RedisPyRunner

TEST_SETTINGS = LedgerSettings(
    journal_buckets=4, cluster=False, idempotency_ttl_s=604_800, midas_ttl_s=172_800
)


def make_ledger(url: str, settings: LedgerSettings = TEST_SETTINGS) -> Ledger:
    client = redis.asyncio.Redis.from_url(url, max_connections=256)
    return Ledger(RedisPyRunner(client), settings)
