"""The operator's TOML config, read into frozen dataclasses and validated once at start-up.

Every limit of the gateway is a field here, checked by :func:`load_config`, so nothing on the
request path has to validate configuration again. A config that fails validation raises
:class:`ConfigError` with a message that names the offending field.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

IDEMPOTENCY_TTL_MIN_S = 604_800
# The longest retention a config may set; a journal record naming a longer TTL is malformed.
MAX_TTL_S = 10 * 365 * 86400
MIDAS_TTL_MIN_S = 172_800
ADMIN_TOKEN_MIN_CHARS = 32
# Printable ASCII, spaces only inside (an HTTP parser strips them at the ends).
ADMIN_TOKEN_PATTERN = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
MAX_BODY_BYTES_LIMIT = 1_048_576
# Extra cluster seed nodes: a few per availability zone is plenty; the slot map names the rest.
MAX_REDIS_SEEDS = 16
# Replicas a call may wait for: more than any sensible replica count of one primary.
MAX_REPLICA_ACKS = 8
# \Z, not $: "$" also matches before a final newline, which no token may hold.
WALLET_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,40}\Z")
MINIGAME_OPTIONAL_TYPES = frozenset({5, 6, 7})
MINIGAME_PREFIXES = frozenset({"api", "luck", "both"})

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 65_536
    trusted_proxies: tuple[IpNetwork, ...] = ()
    backlog: int = 1024
    backpressure: int = 256


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    max_in_flight: int = 1024
    connect_timeout_ms: int = 1000
    command_timeout_ms: int = 2000
    queue_wait_ms: int = 200
    connections: int = 1
    # More cluster nodes ("host:port") to ask for the slot map besides the url's node, so that
    # any one of them answering is enough; credentials and TLS are the url's. Cluster only.
    seeds: tuple[tuple[str, int], ...] = ()
    # Replicas that must confirm each call before its answer goes out (WAIT after every batch);
    # 0 answers as soon as the primary has applied it, and a failover may then lose the last
    # moments of acknowledged movements (Redis replicates asynchronously).
    replica_acks: int = 0
    replica_ack_timeout_ms: int = 100


@dataclass(frozen=True, slots=True)
class JournalConfig:
    dir: Path = Path("/var/lib/walletgate/journal")
    flush_interval_ms: int = 200
    max_lag_ms: int = 5000
    enabled: bool = True
    buckets: int = 16
    batch_records: int = 5000
    segment_max_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class IdempotencyConfig:
    ttl_s: int = IDEMPOTENCY_TTL_MIN_S
    midas_ttl_s: int = MIDAS_TTL_MIN_S


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token: str = field(repr=False, default="")


@dataclass(frozen=True, slots=True)
class MinigameMerchant:
    app_id: str
    key: str = field(repr=False)
    default_currency: str
    currencies: tuple[str, ...]
    enabled_types: frozenset[int]
    prefix: str

    def serves_prefix(self, prefix: str) -> bool:
        return self.prefix in ("both", prefix)

    def currency(self, requested: str | None) -> str | None:
        """The configured spelling of ``requested`` (case-insensitive), or ``None``."""
        if requested is None:
            return self.default_currency
        lowered = requested.lower()
        for configured in self.currencies:
            if configured.lower() == lowered:
                return configured
        return None


@dataclass(frozen=True, slots=True)
class TransferMerchant:
    appid: str
    key: str = field(repr=False)
    default_currency: str
    currencies: tuple[str, ...]

    def currency(self, requested: str) -> str | None:
        lowered = requested.lower()
        for configured in self.currencies:
            if configured.lower() == lowered:
                return configured
        return None


@dataclass(frozen=True, slots=True)
class TransferConfig:
    token_ttl_s: int = 604_800
    pending_ttl_s: int = 30


@dataclass(frozen=True, slots=True)
class WalletV2Agent:
    wallet_token: str = field(repr=False)
    currencies: tuple[str, ...]
    ip_allowlist: tuple[IpNetwork, ...]


@dataclass(frozen=True, slots=True)
class MidasApp:
    appid: str
    offer_id: str
    app_key: str = field(repr=False)
    sandbox_app_key: str = field(repr=False)
    access_tokens: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    redis: RedisConfig
    journal: JournalConfig
    idempotency: IdempotencyConfig
    admin: AdminConfig
    transfer: TransferConfig
    minigame_merchants: Mapping[str, MinigameMerchant]
    transfer_merchants: Mapping[str, TransferMerchant]
    wallet_v2_agents: Mapping[str, WalletV2Agent]
    midas_apps: Mapping[str, MidasApp]

    def secrets(self) -> list[str]:
        """Every configured secret, so tests and log filters can check none leaks."""
        found = [self.admin.token]
        found += [m.key for m in self.minigame_merchants.values()]
        found += [m.key for m in self.transfer_merchants.values()]
        found += [a.wallet_token for a in self.wallet_v2_agents.values()]
        for app in self.midas_apps.values():
            found += [app.app_key, app.sandbox_app_key, *app.access_tokens]
        return [secret for secret in found if secret]


# Every key each table may hold: a key outside these is a typo ("prot" for "port", a singular
# [[minigame.merchant]]) that would otherwise leave its setting at the default, silently.
KNOWN_KEYS: Final[dict[str, frozenset[str]]] = {
    "": frozenset(
        {"server", "redis", "journal", "idempotency", "admin", "transfer", "minigame"}
        | {"wallet_v2", "midas"}
    ),
    "server": frozenset(
        {"host", "port", "workers", "max_body_bytes", "trusted_proxies", "backlog"}
        | {"backpressure"}
    ),
    "redis": frozenset(
        {"url", "cluster", "max_in_flight", "connect_timeout_ms", "command_timeout_ms"}
        | {"queue_wait_ms", "connections", "seeds", "replica_acks", "replica_ack_timeout_ms"}
    ),
    "journal": frozenset(
        {"dir", "flush_interval_ms", "max_lag_ms", "enabled", "buckets", "batch_records"}
        | {"segment_max_bytes"}
    ),
    "idempotency": frozenset({"ttl_s", "midas_ttl_s"}),
    "admin": frozenset({"token"}),
    "transfer": frozenset({"token_ttl_s", "pending_ttl_s", "merchants"}),
    "minigame": frozenset({"merchants"}),
    "wallet_v2": frozenset({"agents"}),
    "midas": frozenset({"apps"}),
    "minigame.merchants": frozenset(
        {"app_id", "key", "default_currency", "currencies", "enabled_types", "prefix"}
    ),
    "transfer.merchants": frozenset({"appid", "key", "default_currency", "currencies"}),
    "wallet_v2.agents": frozenset({"wallet_token", "currencies", "ip_allowlist"}),
    "midas.apps": frozenset({"appid", "offer_id", "app_key", "sandbox_app_key", "access_tokens"}),
}


def _check_known_keys(raw: Mapping[str, Any]) -> None:
    """Refuse a key no table has, naming where it is (names only: values may be secrets)."""

    def check(table: Mapping[str, Any], path: str, where: str) -> None:
        unknown = sorted(str(key) for key in table if key not in KNOWN_KEYS[path])
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")

    check(raw, "", "the config")
    for name in KNOWN_KEYS[""]:
        table = raw.get(name)
        if not isinstance(table, dict):
            continue  # absent, or refused with its own message by the parser
        check(table, name, f"[{name}]")
        for kind in ("merchants", "agents", "apps"):
            path = f"{name}.{kind}"
            entries = table.get(kind)
            if path in KNOWN_KEYS and isinstance(entries, list):
                for index, entry in enumerate(entries):
                    if isinstance(entry, dict):
                        check(entry, path, f"{path}[{index}]")


def _table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _int(
    section: Mapping[str, Any], name: str, default: int, low: int, high: int, where: str
) -> int:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{name} must be an integer")
    if not low <= value <= high:
        raise ConfigError(f"{where}.{name} must be between {low} and {high}, got {value}")
    return value


def _str(section: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = section.get(name, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{name} must be a non-empty string")
    return value


def _bool(section: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    value = section.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{name} must be true or false")
    return value


def _str_list(
    section: Mapping[str, Any], name: str, where: str, *, allow_empty: bool
) -> tuple[str, ...]:
    value = section.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{name} must be a list of non-empty strings")
    if not value and not allow_empty:
        raise ConfigError(f"{where}.{name} must not be empty")
    return tuple(value)


def bind_address(value: str, where: str) -> str:
    """An IP address to bind: Granian binds addresses, not host names (it fails after start)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(
            f"{where} must be an IP address (such as 0.0.0.0 or ::), got {value!r}"
        ) from None
    return value


def _endpoint(value: str, where: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for an IPv6 address) of a Redis node."""
    host, separator, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not separator or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where}: {value!r} is not host:port (a port from 1 to 65535)")
    return host, int(port_text)


def _networks(values: tuple[str, ...], where: str) -> tuple[IpNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def _currencies(section: Mapping[str, Any], where: str) -> tuple[str, tuple[str, ...]]:
    currencies = _str_list(section, "currencies", where, allow_empty=False)
    default = _str(section, "default_currency", where)
    if default.lower() not in {c.lower() for c in currencies}:
        raise ConfigError(f"{where}.default_currency {default!r} is not in currencies")
    if len({c.lower() for c in currencies}) != len(currencies):
        raise ConfigError(f"{where}.currencies repeats a currency")
    return default, currencies


def _entries(raw: Mapping[str, Any], family: str, kind: str) -> list[Mapping[str, Any]]:
    value = _table(raw, family).get(kind, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"[[{family}.{kind}]] must be an array of tables")
    return value


def parse_config(raw: Mapping[str, Any], *, check_journal_dir: bool = True) -> Config:
    """Validate a parsed TOML document; raises :class:`ConfigError`."""
    _check_known_keys(raw)
    server_raw = _table(raw, "server")
    server = ServerConfig(
        host=bind_address(_str(server_raw, "host", "server", "0.0.0.0"), "server.host"),
        port=_int(server_raw, "port", 8080, 0, 65535, "server"),
        workers=_int(server_raw, "workers", 1, 1, 64, "server"),
        max_body_bytes=_int(
            server_raw, "max_body_bytes", 65_536, 256, MAX_BODY_BYTES_LIMIT, "server"
        ),
        trusted_proxies=_networks(
            _str_list(server_raw, "trusted_proxies", "server", allow_empty=True),
            "server.trusted_proxies",
        ),
        backlog=_int(server_raw, "backlog", 1024, 16, 65535, "server"),
        backpressure=_int(server_raw, "backpressure", 256, 1, 100_000, "server"),
    )
    redis_raw = _table(raw, "redis")
    redis = RedisConfig(
        url=_str(redis_raw, "url", "redis", "redis://127.0.0.1:6379/0"),
        cluster=_bool(redis_raw, "cluster", False, "redis"),
        max_in_flight=_int(redis_raw, "max_in_flight", 1024, 1, 65_536, "redis"),
        connect_timeout_ms=_int(redis_raw, "connect_timeout_ms", 1000, 10, 60_000, "redis"),
        # At least 200 ms: half of it is the call deadline's margin for clock skew between the
        # gateway and Redis (see walletgate.ledger.fastredis.script_deadline).
        command_timeout_ms=_int(redis_raw, "command_timeout_ms", 2000, 200, 60_000, "redis"),
        queue_wait_ms=_int(redis_raw, "queue_wait_ms", 200, 0, 60_000, "redis"),
        connections=_int(redis_raw, "connections", 1, 1, 64, "redis"),
        seeds=tuple(
            _endpoint(seed, "redis.seeds")
            for seed in _str_list(redis_raw, "seeds", "redis", allow_empty=True)
        ),
        replica_acks=_int(redis_raw, "replica_acks", 0, 0, MAX_REPLICA_ACKS, "redis"),
        replica_ack_timeout_ms=_int(redis_raw, "replica_ack_timeout_ms", 100, 1, 60_000, "redis"),
    )
    # The WAIT runs on a connection of its own, which gives up after the command timeout: a
    # replica that is merely slow must get its ack timeout well within that.
    if redis.replica_acks and redis.replica_ack_timeout_ms * 4 > redis.command_timeout_ms:
        raise ConfigError(
            "redis.replica_ack_timeout_ms may be at most a quarter of redis.command_timeout_ms"
        )
    if redis.seeds and not redis.cluster:
        raise ConfigError("redis.seeds needs redis.cluster = true (a standalone Redis has one url)")
    if len(redis.seeds) > MAX_REDIS_SEEDS:
        raise ConfigError(f"redis.seeds holds more than {MAX_REDIS_SEEDS} nodes")
    if not redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url must start with redis://, rediss:// or unix://")
    try:
        # urlsplit checks the port only when asked; a bad one would fail every worker later.
        urllib.parse.urlsplit(redis.url).port  # noqa: B018
    except ValueError:
        # Not the url itself in the message: it may carry a password.
        raise ConfigError("redis.url has a port that is not a number from 0 to 65535") from None
    journal_raw = _table(raw, "journal")
    journal = JournalConfig(
        dir=Path(_str(journal_raw, "dir", "journal", "/var/lib/walletgate/journal")),
        flush_interval_ms=_int(journal_raw, "flush_interval_ms", 200, 1, 60_000, "journal"),
        max_lag_ms=_int(journal_raw, "max_lag_ms", 5000, 10, 3_600_000, "journal"),
        enabled=_bool(journal_raw, "enabled", True, "journal"),
        buckets=_int(journal_raw, "buckets", 16, 1, 1024, "journal"),
        batch_records=_int(journal_raw, "batch_records", 5000, 1, 100_000, "journal"),
        segment_max_bytes=_int(
            journal_raw, "segment_max_bytes", 64 * 1024 * 1024, 4096, 1 << 34, "journal"
        ),
    )
    if check_journal_dir:
        _check_writable(journal.dir)
    idem_raw = _table(raw, "idempotency")
    idempotency = IdempotencyConfig(
        ttl_s=_int(
            idem_raw,
            "ttl_s",
            IDEMPOTENCY_TTL_MIN_S,
            IDEMPOTENCY_TTL_MIN_S,
            MAX_TTL_S,
            "idempotency",
        ),
        midas_ttl_s=_int(
            idem_raw,
            "midas_ttl_s",
            MIDAS_TTL_MIN_S,
            MIDAS_TTL_MIN_S,
            MAX_TTL_S,
            "idempotency",
        ),
    )
    admin_raw = _table(raw, "admin")
    token = admin_raw.get("token", "")
    if not isinstance(token, str) or len(token) < ADMIN_TOKEN_MIN_CHARS:
        raise ConfigError(f"admin.token must be at least {ADMIN_TOKEN_MIN_CHARS} characters")
    if not ADMIN_TOKEN_PATTERN.fullmatch(token):
        # HTTP header values reach Starlette as latin-1 while the token is compared as UTF-8:
        # any other character would make a token that no client can present.
        raise ConfigError(
            "admin.token must be printable ASCII, spaces only inside (as an HTTP header carries it)"
        )
    transfer_raw = _table(raw, "transfer")
    transfer = TransferConfig(
        token_ttl_s=_int(transfer_raw, "token_ttl_s", 604_800, 60, 10 * 365 * 86400, "transfer"),
        pending_ttl_s=_int(transfer_raw, "pending_ttl_s", 30, 1, 86_400, "transfer"),
    )

    tenants: dict[str, str] = {}

    def claim(tenant: str, where: str) -> None:
        if tenant in tenants:
            # A Wallet v2 tenant id is a wallet_token, a secret: name the places, not the value.
            shown = "" if "wallet_v2" in where + tenants[tenant] else f" {tenant!r}"
            raise ConfigError(f"{where}: tenant id{shown} is already used by {tenants[tenant]}")
        if ":" in tenant or "{" in tenant or "}" in tenant:
            raise ConfigError(f"{where}: tenant id {tenant!r} must not contain ':', '{{' or '}}'")
        tenants[tenant] = where

    minigame: dict[str, MinigameMerchant] = {}
    for index, entry in enumerate(_entries(raw, "minigame", "merchants")):
        where = f"minigame.merchants[{index}]"
        app_id = _str(entry, "app_id", where)
        claim(app_id, where)
        default, currencies = _currencies(entry, where)
        types = entry.get("enabled_types", [])
        if not isinstance(types, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t in MINIGAME_OPTIONAL_TYPES
            for t in types
        ):
            raise ConfigError(f"{where}.enabled_types must be a subset of [5, 6, 7]")
        prefix = entry.get("prefix", "both")
        if not isinstance(prefix, str) or prefix not in MINIGAME_PREFIXES:
            raise ConfigError(f"{where}.prefix must be one of api, luck, both")
        minigame[app_id] = MinigameMerchant(
            app_id=app_id,
            key=_str(entry, "key", where),
            default_currency=default,
            currencies=currencies,
            enabled_types=frozenset(types),
            prefix=prefix,
        )
    transfer_merchants: dict[str, TransferMerchant] = {}
    for index, entry in enumerate(_entries(raw, "transfer", "merchants")):
        where = f"transfer.merchants[{index}]"
        appid = _str(entry, "appid", where)
        claim(appid, where)
        default, currencies = _currencies(entry, where)
        transfer_merchants[appid] = TransferMerchant(
            appid=appid,
            key=_str(entry, "key", where),
            default_currency=default,
            currencies=currencies,
        )
    agents: dict[str, WalletV2Agent] = {}
    for index, entry in enumerate(_entries(raw, "wallet_v2", "agents")):
        where = f"wallet_v2.agents[{index}]"
        wallet_token = _str(entry, "wallet_token", where)
        if not WALLET_TOKEN_PATTERN.match(wallet_token):
            raise ConfigError(f"{where}.wallet_token must match ^[A-Za-z0-9_]{{1,40}}$")
        claim(wallet_token, where)
        currencies = _str_list(entry, "currencies", where, allow_empty=False)
        agents[wallet_token] = WalletV2Agent(
            wallet_token=wallet_token,
            currencies=currencies,
            ip_allowlist=_networks(
                _str_list(entry, "ip_allowlist", where, allow_empty=True), f"{where}.ip_allowlist"
            ),
        )
    midas: dict[str, MidasApp] = {}
    for index, entry in enumerate(_entries(raw, "midas", "apps")):
        where = f"midas.apps[{index}]"
        appid = _str(entry, "appid", where)
        claim(appid, where)
        midas[appid] = MidasApp(
            appid=appid,
            offer_id=_str(entry, "offer_id", where),
            app_key=_str(entry, "app_key", where),
            sandbox_app_key=_str(entry, "sandbox_app_key", where),
            access_tokens=_str_list(entry, "access_tokens", where, allow_empty=False),
        )
    return Config(
        server=server,
        redis=redis,
        journal=journal,
        idempotency=idempotency,
        admin=AdminConfig(token=token),
        transfer=transfer,
        minigame_merchants=minigame,
        transfer_merchants=transfer_merchants,
        wallet_v2_agents=agents,
        midas_apps=midas,
    )


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"journal.dir {str(directory)!r} cannot be created: {error.strerror}"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"journal.dir {str(directory)!r} is not writable")


def load_config(path: str | os.PathLike[str], *, check_journal_dir: bool = True) -> Config:
    """Read and validate the TOML file at ``path``; raises :class:`ConfigError`."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config {str(path)!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {error}") from None
    return parse_config(raw, check_journal_dir=check_journal_dir)
