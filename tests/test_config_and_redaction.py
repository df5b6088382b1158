"""Config checks at startup, and secrets kept out of logs (Wallet v2 tenant ids are wallet_tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_helpers import WALLET_TOKEN, config_dict
from walletgate.config import ConfigError, parse_config
from walletgate.logs import loggable_path, loggable_tenant


def test_paths_that_carry_a_token_keep_only_their_fixed_part() -> None:
    assert loggable_path(f"/wallet/v2/{WALLET_TOKEN}") == "/wallet/v2/…"
    admin = f"/admin/v1/accounts/{WALLET_TOKEN}/p1/USD/adjust"
    assert loggable_path(admin) == "/admin/v1/accounts/…"
    assert loggable_path("/api/balance/change_balance") == "/api/balance/change_balance"


def test_secret_tenants_are_shown_as_a_digest() -> None:
    shown = loggable_tenant(WALLET_TOKEN, frozenset({WALLET_TOKEN}))
    assert WALLET_TOKEN not in shown and shown.startswith("wallet_v2 agent sha256:")
    assert loggable_tenant("10013", frozenset({WALLET_TOKEN})) == "10013"


def test_a_repeated_wallet_token_is_refused_without_printing_it(tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "journal")
    agents = raw["wallet_v2"]["agents"]
    agents.append({**agents[0]})
    with pytest.raises(ConfigError) as refused:
        parse_config(raw)
    assert "already used by wallet_v2.agents[0]" in str(refused.value)
    assert WALLET_TOKEN not in str(refused.value)
    # Other tenant ids are not secrets and are named.
    raw = config_dict(tmp_path / "journal")
    merchants = raw["minigame"]["merchants"]
    merchants.append({**merchants[0]})
    with pytest.raises(ConfigError, match=repr(merchants[0]["app_id"])):
        parse_config(raw)


def test_a_prefix_that_is_not_a_string_is_a_config_error(tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "journal")
    raw["minigame"]["merchants"][0]["prefix"] = ["api"]
    with pytest.raises(ConfigError, match=r"minigame.merchants\[0\].prefix"):
        parse_config(raw)
