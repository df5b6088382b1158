"""Config checks at startup, and secrets kept out of logs (Wallet v2 tenant ids are tokens)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway_helpers import WALLET_TOKEN, config_dict
from walletgate import cli
from walletgate.config import ConfigError, parse_config
from walletgate.journal.observer import SIDECAR_STATE_FILE, read_sidecar_restarts
from walletgate.logs import loggable_path, loggable_tenant, tenant_redactor


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


def test_the_sidecar_is_restarted_and_stop_leaves_no_writer_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The supervisor restarts a writer that dies and publishes how often it did (for the
    workers' /readyz and /metrics); stop() ends the current one and the supervisor, even while
    a restart is due (the lock orders the two)."""
    monkeypatch.setattr(cli, "SIDECAR_RESTART_BACKOFF_S", (0.01,))
    state_path = tmp_path / SIDECAR_STATE_FILE
    sidecar = cli.JournalSidecar("unused.toml", state_path)
    # A writer that dies at once, many times over.
    sidecar.command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    sidecar.start()
    deadline = time.monotonic() + 30
    started = set()
    while len(started) < 5:
        assert time.monotonic() < deadline, "the supervisor did not restart the writer"
        process = sidecar.process
        assert process is not None
        started.add(process.pid)
        time.sleep(0.01)
    assert read_sidecar_restarts(state_path) >= 4
    # Now one that would run for a minute: stop() must end it.
    sidecar.command = [sys.executable, "-c", "import time; time.sleep(60)"]
    time.sleep(0.2)
    sidecar.stop()
    assert not sidecar.thread.is_alive()
    last = sidecar.process
    assert last is not None and last.poll() is not None


def test_reports_name_secret_tenants_by_their_digest_whole_words_only() -> None:
    redact = tenant_redactor(frozenset({"tok_A1", "tok"}))
    digest = loggable_tenant("tok_A1", frozenset({"tok_A1"}))
    assert redact("tok_A1/p1/USD: seq 3 missing") == f"{digest}/p1/USD: seq 3 missing"
    # A longer word that only contains a token is not one, and other tenants stay as they are.
    assert redact("tokens/10013/tok_A12") == "tokens/10013/tok_A12"
    assert tenant_redactor(frozenset())("tok_A1/p1") == "tok_A1/p1"


def test_unknown_keys_bad_hosts_and_bad_redis_ports_are_refused_by_name(tmp_path: Path) -> None:
    """A misspelt key once left its setting at the default in silence (a singular
    [[minigame.merchant]] served no merchant at all); a host name or a bad redis port failed
    only after Granian started. Each is refused now, naming the place, never a value that may
    be a secret."""
    raw = config_dict(tmp_path / "journal")
    parse_config(raw)
    merchant = raw["minigame"]["merchants"][0]
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {**raw, "minigame": {"merchant": raw["minigame"]["merchants"]}},
            r"\[minigame\]: .*merchant",
        ),
        ({**raw, "server": {"prot": 8081}}, r"\[server\]: unknown key\(s\) prot"),
        ({**raw, "minigame": {"merchants": [{**merchant, "kye": "x"}]}}, r"merchants\[0\]: .*kye"),
        ({**raw, "loging": {}}, r"the config: unknown key\(s\) loging"),
        ({**raw, "server": {"host": "localhost"}}, r"server.host must be an IP address"),
    ]
    secret_url = "redis://:hunter2-secret@127.0.0.1:notaport/0"
    cases.append(({**raw, "redis": {"url": secret_url}}, r"redis.url has a port"))
    for broken, message in cases:
        with pytest.raises(ConfigError, match=message) as refused:
            parse_config(broken)
        assert merchant["key"] not in str(refused.value) and "hunter2" not in str(refused.value)


def test_cluster_seeds_are_host_port_pairs_for_a_cluster_only(tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "journal")
    seeds = ["10.0.0.2:7001", "[::1]:7002", "redis-b.internal:6379"]
    config = parse_config({**raw, "redis": {"cluster": True, "seeds": seeds}})
    assert config.redis.seeds == (("10.0.0.2", 7001), ("::1", 7002), ("redis-b.internal", 6379))
    assert parse_config(raw).redis.seeds == ()
    refused: list[tuple[dict[str, Any], str]] = [
        ({"seeds": seeds}, r"redis.seeds needs redis.cluster = true"),
        ({"cluster": True, "seeds": ["10.0.0.2"]}, r"redis.seeds: '10.0.0.2' is not host:port"),
        ({"cluster": True, "seeds": ["10.0.0.2:0"]}, r"is not host:port"),
        ({"cluster": True, "seeds": ["10.0.0.2:65536"]}, r"is not host:port"),
        ({"cluster": True, "seeds": [":7001"]}, r"is not host:port"),
        ({"cluster": True, "seeds": "10.0.0.2:7001"}, r"redis.seeds must be a list"),
        ({"cluster": True, "seeds": [f"10.0.0.{i}:7001" for i in range(17)]}, r"more than 16"),
    ]
    for redis_raw, message in refused:
        with pytest.raises(ConfigError, match=message):
            parse_config({**raw, "redis": redis_raw})


def test_an_admin_token_no_client_could_present_is_refused(tmp_path: Path) -> None:
    """A header value reaches the gateway as latin-1 while the token is compared as UTF-8, so
    a token with other characters was accepted at startup and then refused every call; so was
    one with a space at an end, which HTTP parsers strip."""
    raw = config_dict(tmp_path / "journal")
    for token in ("pässwörd-" * 4, " a-long-enough-token-with-a-leading-space", "tab\t" * 8):
        with pytest.raises(ConfigError, match="printable ASCII") as refused:
            parse_config({**raw, "admin": {"token": token}})
        assert token not in str(refused.value)
    for printable in ("!~" + "x" * 30, "a long enough token with spaces inside"):
        assert parse_config({**raw, "admin": {"token": printable}}).admin.token == printable
