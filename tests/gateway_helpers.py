"""Builders for protocol tests: a test config, a GatewayContext on a real Redis, an ASGI app.

Protocol tests drive the ASGI app with httpx's ASGITransport (or Starlette's TestClient), so
requests pass through the real routing, body reading, signature checks and Lua scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from ledger_helpers import make_ledger
from walletgate.config import Config, parse_config
from walletgate.ledger.core import LedgerSettings
from walletgate.metrics import Metrics
from walletgate.protocols.common import GatewayContext

ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123"
MINIGAME_KEY = "39a6581c31ef3203a22edb2daa2ab6d1"
LUCK_KEY = "luck-merchant-key-5b1e0c7d9a2f4e68"
TRANSFER_KEY = "transfer-key-3f9a7c1e5d2b4a6c8e0f"
WALLET_TOKEN = "hmeu134_56eEYeGgre"
MIDAS_APP_KEY = "zNLgAGgqsEWJOg1nFVaO5r7fAlIQxr1u"
MIDAS_SANDBOX_KEY = "sandbox-app-key-7d1c3b5a9e2f4d6c"
MIDAS_ACCESS_TOKEN = "ACCESSTOKEN"


def config_dict(journal_dir: Path) -> dict[str, Any]:
    return {
        "server": {"max_body_bytes": 65536, "trusted_proxies": ["127.0.0.1/32"]},
        "redis": {"url": "redis://127.0.0.1:6379/0"},
        "journal": {"dir": str(journal_dir), "flush_interval_ms": 50, "buckets": 4},
        "admin": {"token": ADMIN_TOKEN},
        "minigame": {
            "merchants": [
                {
                    "app_id": "10013",
                    "key": MINIGAME_KEY,
                    "default_currency": "usdt",
                    "currencies": ["usdt", "usd"],
                    "enabled_types": [5, 6, 7],
                    "prefix": "both",
                },
                {
                    "app_id": "10014",
                    "key": LUCK_KEY,
                    "default_currency": "USDT",
                    "currencies": ["USDT"],
                    "enabled_types": [5],
                    "prefix": "luck",
                },
            ]
        },
        "transfer": {
            "merchants": [
                {
                    "appid": "1005",
                    "key": TRANSFER_KEY,
                    "default_currency": "usdt",
                    "currencies": ["usdt", "usd"],
                },
            ]
        },
        "wallet_v2": {
            "agents": [
                {"wallet_token": WALLET_TOKEN, "currencies": ["USD", "UAH"], "ip_allowlist": []},
                {
                    "wallet_token": "locked_agent",
                    "currencies": ["USD"],
                    "ip_allowlist": ["203.0.113.0/24"],
                },
            ]
        },
        "midas": {
            "apps": [
                {
                    "appid": "wx1234567",
                    "offer_id": "12345678",
                    "app_key": MIDAS_APP_KEY,
                    "sandbox_app_key": MIDAS_SANDBOX_KEY,
                    "access_tokens": [MIDAS_ACCESS_TOKEN],
                },
            ]
        },
    }


def make_config(journal_dir: Path, redis_url: str) -> Config:
    raw = config_dict(journal_dir)
    raw["redis"]["url"] = redis_url
    return parse_config(raw)


def make_context(config: Config) -> GatewayContext:
    settings = LedgerSettings(
        journal_buckets=config.journal.buckets,
        cluster=config.redis.cluster,
        idempotency_ttl_s=config.idempotency.ttl_s,
        midas_ttl_s=config.idempotency.midas_ttl_s,
    )
    return GatewayContext(
        config=config, ledger=make_ledger(config.redis.url, settings), metrics=Metrics()
    )


def make_app(routes: Sequence[BaseRoute]) -> Starlette:
    return Starlette(routes=list(routes))
