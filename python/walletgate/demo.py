"""``walletgate demo``: a local redis-server, a demo config, funded players, example requests.

Everything lives under one folder (default ``.run/demo``). The demo's secrets are generated
once and kept in its config, so the printed examples stay valid across restarts.
"""

from __future__ import annotations

import asyncio
import atexit
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import orjson

from walletgate import _native
from walletgate.config import Config, load_config

DEMO_REDIS_PORT = 6399
REDIS_START_TIMEOUT_S = 10.0
DEMO_PLAYERS = ("demo-player-1", "demo-player-2", "demo-player-3")
DEMO_FUNDING = "10000"


def _write_config(directory: Path, port: int, redis_url: str) -> Path:
    path = directory / "walletgate.toml"
    if path.exists():
        return path
    keys = {
        name: secrets.token_hex(16) for name in ("minigame", "luck", "transfer", "midas", "sandbox")
    }
    text = f"""# walletgate demo config, written by `walletgate demo`. Secrets here are demo-only.
[server]
host = "127.0.0.1"
port = {port}
workers = 1
max_body_bytes = 65536

[redis]
url = "{redis_url}"

[journal]
dir = "{(directory / "journal").resolve()}"
flush_interval_ms = 200

[admin]
token = "{secrets.token_hex(24)}"

[[minigame.merchants]]
app_id = "10013"
key = "{keys["minigame"]}"
default_currency = "usdt"
currencies = ["usdt", "usd"]
enabled_types = [5, 6, 7]
prefix = "both"

[[transfer.merchants]]
appid = "1005"
key = "{keys["transfer"]}"
default_currency = "usdt"
currencies = ["usdt"]

[[wallet_v2.agents]]
wallet_token = "demo_wallet_{secrets.token_hex(6)}"
currencies = ["USD"]
ip_allowlist = []

[[midas.apps]]
appid = "wx1234567"
offer_id = "12345678"
app_key = "{keys["midas"]}"
sandbox_app_key = "{keys["sandbox"]}"
access_tokens = ["demo-access-token"]
"""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _data_dir_of_redis_on(port: int) -> str | None:
    """The data directory of the Redis listening on ``port`` (None: not a Redis that says)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # One try, bounded: a server that accepts and never answers is not a Redis to use.
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        answer = client.config_get("dir")
    except redis.RedisError:
        return None
    finally:
        client.close()
    found = answer.get("dir")
    return found if isinstance(found, str) else None


def _start_redis(directory: Path, port: int = DEMO_REDIS_PORT) -> subprocess.Popen[bytes] | None:
    data = (directory / "redis").resolve()
    if _port_open(port):
        # Only this demo's own Redis (an earlier run of the same --dir) is reused: another
        # demo's would mix two ledgers, and its journal writers would split one journal.
        found = _data_dir_of_redis_on(port)
        if found is None or Path(found).resolve() != data:
            raise SystemExit(
                f"walletgate demo: 127.0.0.1:{port} is taken by another server, not this demo's "
                f"Redis (whose data is in {data}); stop it, or pass --redis-url"
            )
        print(f"using this demo's redis-server, already running on 127.0.0.1:{port}")
        return None
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    data.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while not _port_open(port):
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)
    atexit.register(process.terminate)
    return process


async def _seed(config: Config) -> None:
    from walletgate.app import ledger_settings
    from walletgate.ledger.admin import adjust
    from walletgate.ledger.connect import make_runner
    from walletgate.ledger.core import Ledger
    from walletgate.ledger.sessions import register_session

    ledger = Ledger(make_runner(config.redis), ledger_settings(config))
    try:
        amount_units = _native.parse_money(DEMO_FUNDING)

        async def fund(
            tenant: str,
            currency: str,
            token: str | None,
            session_key: str = "",
            kind: Literal["adjust", "save"] = "adjust",
        ) -> None:
            """Every demo player: a session (when the family has one), then its funding."""
            for player in DEMO_PLAYERS:
                if token is not None:
                    await register_session(
                        ledger,
                        tenant=tenant,
                        player=player,
                        currency=currency,
                        token=f"{player}-{token}",
                        ttl_s=604_800,
                        session_key=session_key and f"{player}-{session_key}",
                    )
                await adjust(
                    ledger,
                    tenant=tenant,
                    player=player,
                    currency=currency,
                    amount_units=amount_units,
                    ref=f"demo-{'save' if kind == 'save' else 'funding'}-{player}",
                    kind=kind,
                )

        for merchant in config.minigame_merchants.values():
            await fund(merchant.app_id, merchant.default_currency, "session")
        for transfer in config.transfer_merchants.values():
            await fund(transfer.appid, transfer.default_currency, None)
        for agent in config.wallet_v2_agents.values():
            await fund(agent.wallet_token, agent.currencies[0], "code")
        for app in config.midas_apps.values():
            await fund(app.appid, "1", "midas", session_key="session-key", kind="save")
    finally:
        await ledger.runner.close()


def example_requests(config: Config, port: int) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    merchant = next(iter(config.minigame_merchants.values()))
    query = "trace_id=demo-trace-1"
    body = orjson.dumps(
        {
            "app_id": merchant.app_id,
            "uname": DEMO_PLAYERS[0],
            "currency": merchant.default_currency,
            "money": "-3",
            "bet": "3",
            "type": 1,
            "order_id": f"demo-{secrets.token_hex(6)}",
            "session_id": "demo-round-1",
            "timestamp": int(time.time()),
            "end_round": False,
        }
    )
    sign = _native.minigame_sign(query.encode(), body, merchant.key.encode())
    lines.append("# MINI.GAME seamless change_balance (a bet of 3 usdt):")
    lines.append(
        f"curl -s -X POST '{base}/api/balance/change_balance?{query}' "
        f"-H 'content-type: application/json' -H 'sign: {sign}' "
        f"--data-raw {shlex.quote(body.decode())}"
    )
    transfer = next(iter(config.transfer_merchants.values()), None)
    if transfer is not None:
        body = orjson.dumps(
            {
                "appid": transfer.appid,
                "timestamp": int(time.time()),
                "uname": DEMO_PLAYERS[0],
                "nickname": "demo",
            }
        )
        sign = _native.minigame_sign(query.encode(), body, transfer.key.encode())
        lines.append("# MINI.GAME transfer authorize:")
        lines.append(
            f"curl -s -X POST '{base}/api/player/v1/authorize?{query}' "
            f"-H 'sign: {sign}' --data-raw {shlex.quote(body.decode())}"
        )
    agent = next(iter(config.wallet_v2_agents.values()), None)
    if agent is not None:
        body = orjson.dumps({"type": "credit", "code": f"{DEMO_PLAYERS[0]}-code"})
        lines.append("# Wallet API v.2 credit:")
        lines.append(
            f"curl -s -X POST '{base}/wallet/v2/{agent.wallet_token}' "
            f"--data-raw {shlex.quote(body.decode())}"
        )
    app = next(iter(config.midas_apps.values()), None)
    if app is not None:
        path = "/cgi-bin/midas/getbalance"
        params = {
            "openid": DEMO_PLAYERS[0],
            "appid": app.appid,
            "offer_id": app.offer_id,
            "ts": int(time.time()),
            "zone_id": "1",
            "pf": "android",
        }
        pairs = [(k, str(v)) for k, v in params.items()]
        sig = _native.midas_sig(pairs, path, app.app_key)
        access_token = app.access_tokens[0]
        mp_sig = _native.midas_mp_sig(
            [*pairs, ("access_token", access_token), ("sig", sig)],
            path,
            f"{DEMO_PLAYERS[0]}-session-key",
        )
        body = orjson.dumps({**params, "sig": sig, "mp_sig": mp_sig})
        lines.append("# WeChat Midas getbalance:")
        lines.append(
            f"curl -s -X POST '{base}{path}?access_token={access_token}' "
            f"--data-raw {shlex.quote(body.decode())}"
        )
    return lines


def run_demo(directory: Path, *, port: int, workers: int, redis_url: str | None) -> int:
    from walletgate.cli import serve

    directory.mkdir(parents=True, exist_ok=True)
    if redis_url is None:
        _start_redis(directory)
        redis_url = f"redis://127.0.0.1:{DEMO_REDIS_PORT}/0"
    config_path = _write_config(directory, port, redis_url)
    config = load_config(config_path)
    if config.redis.url != redis_url:
        # The config was written by an earlier run with another Redis: seeding and serving
        # would use that one, not the one asked for now.
        print(
            f"walletgate demo: {config_path} uses Redis {config.redis.url}, not {redis_url}; "
            "remove it, or give another --dir",
            file=sys.stderr,
        )
        return 2
    asyncio.run(_seed(config))
    print(f"walletgate demo: config {config_path}, Redis {config.redis.url}")
    print(f"players {', '.join(DEMO_PLAYERS)} funded with {DEMO_FUNDING} on every tenant\n")
    for line in example_requests(config, port):
        print(line)
    print(f"\nadmin token: see [admin] token in {config_path}\n", flush=True)
    sys.stdout.flush()
    serve(
        str(config_path.resolve()), config, host=None, port=port, workers=workers, access_log=True
    )
    return 0
