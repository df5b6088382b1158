"""A real ``walletgate serve --workers 2`` process (Granian) on a free port, end to end.

Smoke set: one signed request per family succeeds, the admin API refuses a wrong token with an
empty 401, ``/readyz`` answers 200, ``/metrics`` sums both workers' counters exactly, and
nothing the server printed (access log on stdout, application log on stderr) contains a
configured secret, a session token, a session_key or a signature. The server stops on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import gateway_helpers
from conftest import free_port
from walletgate.config import Config, load_config
from wire_helpers import (
    LUCK_APP_ID,
    LUCK_KEY,
    LUCK_PATHS,
    MIDAS_APPID,
    MIDAS_PATHS,
    MINIGAME_APP_ID,
    MINIGAME_KEY,
    MINIGAME_PATHS,
    TRANSFER_APPID,
    TRANSFER_KEY,
    TRANSFER_PATHS,
    WALLET_V2_PATH,
    admin_headers,
    compact,
    midas_params,
    midas_sign,
    midas_url,
    signed_post,
    write_config,
)

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
START_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
METRICS_TIMEOUT_S = 10.0
HAMMER_REQUESTS = 400
HAMMER_CONNECTIONS = 8
PLAYER = "srv-player"
OPENID = "srv-openid"
SESSION_KEY = "srvSessionKey0123456789=="
REQUESTS_TOTAL = re.compile(r"^walletgate_requests_total(\{[^}]*\})? (\S+)$", re.MULTILINE)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    config: Config
    stdout: Path
    stderr: Path
    temporary: Path
    # Everything that must never appear in the server's output.
    secrets: set[str] = field(default_factory=set)
    # Requests sent to the four families (each is counted in walletgate_requests_total).
    family_requests: int = 0

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0)

    def output(self) -> bytes:
        return self.stdout.read_bytes() + self.stderr.read_bytes()

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a bounded wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
                raise AssertionError("the server ignored SIGTERM and was killed") from None
        return self.process.returncode


def wait_for_health(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"the server exited with {server.process.returncode}:\n"
                + server.output().decode(errors="replace")[-4000:]
            )
        try:
            if httpx.get(server.base_url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(
        f"/healthz not 200 within {START_TIMEOUT_S} s:\n"
        + server.output().decode(errors="replace")[-4000:]
    )


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[Server]:
    raw = gateway_helpers.config_dict(tmp_path / "journal")
    raw["redis"]["url"] = redis_url
    raw["server"].update(host="127.0.0.1", port=1, workers=1)  # the flags must override these
    config_path = write_config(tmp_path / "walletgate.toml", raw)
    port = free_port()
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "python"), *filter(None, [environment.get("PYTHONPATH")])]
    )
    environment.pop("WALLETGATE_CONFIG", None)
    environment["TMPDIR"] = str(tmp_path / "tmp")  # where serve puts the metrics snapshots
    (tmp_path / "tmp").mkdir()
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "walletgate.cli",
                "serve",
                "--config",
                str(config_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(WORKERS),
            ],
            stdout=out,
            stderr=err,
            env=environment,
            cwd=tmp_path,
            start_new_session=True,
        )
    config = load_config(config_path)
    running = Server(process, f"http://127.0.0.1:{port}", config, stdout, stderr, tmp_path / "tmp")
    running.secrets.update(config.secrets())
    try:
        wait_for_health(running)
        yield running
    finally:
        if process.poll() is None:
            # A failed test still stops the server (and its workers, in the same session).
            try:
                running.stop()
            except AssertionError:
                os.killpg(process.pid, signal.SIGKILL)


# -- requests ---------------------------------------------------------------------------------


def md5_call(
    server: Server, client: httpx.Client, path: str, fields: dict[str, Any], key: str
) -> Any:
    url, content, headers = signed_post(path, compact(fields), key)
    server.secrets.add(headers["sign"])
    answer = client.post(url, content=content, headers=headers)
    server.family_requests += 1
    assert answer.status_code == 200, answer.text
    return answer.json()


def midas_call(server: Server, client: httpx.Client, path: str, **extra: Any) -> Any:
    body = midas_sign(midas_params(OPENID, **extra), path, session_key=SESSION_KEY)
    server.secrets.update((body["sig"], body["mp_sig"]))
    answer = client.post(midas_url(path), content=compact(body))
    server.family_requests += 1
    assert answer.status_code == 200, answer.text
    return answer.json()


def admin(client: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
    content = None if body is None else compact(body)
    return client.request(method, "/admin/v1" + path, content=content, headers=admin_headers())


def register(server: Server, client: httpx.Client, **body: Any) -> None:
    server.secrets.add(body["token"])
    if "session_key" in body:
        server.secrets.add(body["session_key"])
    answer = admin(client, "POST", "/sessions", body)
    assert answer.status_code == 201, answer.text


def fund(client: httpx.Client, tenant: str, player: str, currency: str, **body: Any) -> None:
    answer = admin(client, "POST", f"/accounts/{tenant}/{player}/{currency}/adjust", body)
    assert answer.status_code == 200, answer.text


def requests_total(text: str, **labels: str) -> float:
    total = 0.0
    for label_text, value in REQUESTS_TOTAL.findall(text):
        if all(f'{name}="{wanted}"' in label_text for name, wanted in labels.items()):
            total += float(value)
    return total


def worker_snapshot_files(temporary: Path) -> list[Path]:
    """The workers' metrics snapshots (``walletgate serve`` makes its directory in TMPDIR)."""
    return sorted(temporary.glob("walletgate-metrics-*/worker-*.json"))


# -- the test ---------------------------------------------------------------------------------


def test_served_process_smoke_metrics_secrets_and_sigterm(server: Server) -> None:
    with server.client() as client:
        # Seed through the admin API.
        register(
            server,
            client,
            tenant=MINIGAME_APP_ID,
            player=PLAYER,
            currency="usdt",
            token="srv-mg-session",
        )
        register(
            server,
            client,
            tenant=LUCK_APP_ID,
            player=PLAYER,
            currency="USDT",
            token="srv-luck-session",
        )
        register(
            server,
            client,
            tenant=gateway_helpers.WALLET_TOKEN,
            player=PLAYER,
            currency="USD",
            token="srv-v2-code",
        )
        register(
            server,
            client,
            tenant=MIDAS_APPID,
            player=OPENID,
            currency="1",
            token="srv-midas-handle",
            session_key=SESSION_KEY,
        )
        fund(client, MINIGAME_APP_ID, PLAYER, "usdt", amount="100", ref="srv-1")
        fund(client, LUCK_APP_ID, PLAYER, "USDT", amount="100", ref="srv-2")
        fund(client, gateway_helpers.WALLET_TOKEN, PLAYER, "USD", amount="100", ref="srv-3")
        fund(client, MIDAS_APPID, OPENID, "1", amount="100", ref="srv-4", kind="save")

        # One signed request per family.
        bet = {
            "app_id": MINIGAME_APP_ID,
            "uname": PLAYER,
            "money": "-2.5",
            "bet": "2.5",
            "type": 1,
            "order_id": "srv-order-1",
            "session_id": "srv-round",
            "timestamp": 1,
        }
        assert md5_call(server, client, MINIGAME_PATHS[2], bet, MINIGAME_KEY) == {
            "data": {"balance": "97.5"},
            "code": 1,
            "msg": "ok",
        }
        verify = {
            "app_id": LUCK_APP_ID,
            "timestamp": 1,
            "operator_player_session": "srv-luck-session",
        }
        luck = md5_call(server, client, LUCK_PATHS[0], verify, LUCK_KEY)
        assert luck["code"] == 1 and luck["data"]["balance"] == "100", luck
        authorize = {"appid": TRANSFER_APPID, "timestamp": 1, "uname": PLAYER, "nickname": "n"}
        authorized = md5_call(server, client, TRANSFER_PATHS[0], authorize, TRANSFER_KEY)
        assert authorized["code"] == 0, authorized
        token = authorized["data"]["token"]
        server.secrets.add(token)
        deposit = {
            "appid": TRANSFER_APPID,
            "timestamp": 1,
            "token": token,
            "currency": "usdt",
            "amount": "10",
            "tx_id": "srv-tx-1",
        }
        moved = md5_call(server, client, TRANSFER_PATHS[1], deposit, TRANSFER_KEY)
        assert moved["code"] == 0 and moved["data"]["state"] == 1, moved
        v2_bet = {"type": "bet", "code": "srv-v2-code", "id": 1, "game": 1, "bet": 250}
        placed = client.post(WALLET_V2_PATH, content=compact(v2_bet)).json()
        server.family_requests += 1
        assert placed["result"] == 1 and placed["credit"] == 9750, placed
        paid = midas_call(server, client, MIDAS_PATHS[1], bill_no="srv-bill-1", amt=30)
        assert paid["errcode"] == 0 and paid["balance"] == 70, paid
        sandbox = midas_call(server, client, MIDAS_PATHS[4])
        assert sandbox["errcode"] == 0 and sandbox["balance"] == 0, sandbox

        # Admin with a wrong token: 401 and the same error body for every path.
        for authorization in ("Bearer wrong-token-0123456789abcdef0123", None):
            headers = {} if authorization is None else {"authorization": authorization}
            refused = client.get(
                f"/admin/v1/accounts/{MINIGAME_APP_ID}/{PLAYER}/usdt", headers=headers
            )
            assert refused.status_code == 401, refused.text
            assert refused.json() == {
                "error": "unauthorized",
                "detail": "send Authorization: Bearer <[admin] token>",
            }

        # Ready: Redis answers, the scripts run, the journal writer is alive.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (ready := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        # Redis runs on this host: its clock is this host's, within the probe's round trip.
        assert abs(ready.json()["checks"]["redis_clock_offset_ms"]) < 100, ready.text

    # Hammer get_balance over several connections; both workers take some of them.
    balance = compact({"app_id": MINIGAME_APP_ID, "uname": PLAYER, "timestamp": 1})
    url, content, headers = signed_post(MINIGAME_PATHS[1], balance, MINIGAME_KEY)
    server.secrets.add(headers["sign"])

    def hammer(count: int) -> int:
        ok = 0
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=server.base_url, timeout=10.0, limits=limits) as connection:
            for _ in range(count):
                answer = connection.post(url, content=content, headers=headers)
                ok += answer.status_code == 200 and answer.json()["code"] == 1
        return ok

    share = HAMMER_REQUESTS // HAMMER_CONNECTIONS
    with ThreadPoolExecutor(HAMMER_CONNECTIONS) as pool:
        answered = sum(pool.map(hammer, [share] * HAMMER_CONNECTIONS))
    assert answered == share * HAMMER_CONNECTIONS
    server.family_requests += answered

    # /metrics sums every worker's snapshot: once both have published (every second), the
    # counters equal what was sent, whichever worker answers the scrape.
    time.sleep(1.5)
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    scrapes: list[tuple[float, float]] = []
    while True:
        text = httpx.get(server.base_url + "/metrics", timeout=5.0).text  # a new connection
        # The admin calls that funded the players are counted too, under family="admin".
        family_total = requests_total(text) - requests_total(text, family="admin")
        counted = (family_total, requests_total(text, endpoint="get_balance"))
        scrapes.append(counted)
        assert counted[0] <= server.family_requests, (counted, server.family_requests)
        if counted == (server.family_requests, answered) and len(scrapes) >= 4:
            break
        assert time.monotonic() < deadline, (scrapes[-5:], server.family_requests, answered)
        time.sleep(0.3)
    assert 'family="minigame"' in text and 'family="midas"' in text
    assert requests_total(text, family="admin", endpoint="adjust", result="200") > 0
    assert "walletgate_request_duration_seconds_bucket" in text
    snapshots = worker_snapshot_files(server.temporary)
    assert len(snapshots) >= WORKERS, snapshots  # both workers publish their counters

    # SIGTERM stops the server and its workers within the bounded wait, and leaves no
    # temporary directory behind (one per run once piled up in /tmp).
    status = server.stop()
    assert status in (0, -signal.SIGTERM), status
    assert list(server.temporary.iterdir()) == []

    output = server.output()
    leaked = sorted(secret for secret in server.secrets if secret.encode() in output)
    assert not leaked, f"secrets in the server's output: {leaked}"
    assert b"Traceback" not in output, output.decode(errors="replace")[-4000:]
    # stdout is the access log alone (Granian's own lines go to stderr as JSON), so a log
    # shipper can parse every line of it.
    access = [orjson.loads(line) for line in server.stdout.read_bytes().splitlines() if line]
    application = [orjson.loads(line) for line in server.stderr.read_bytes().splitlines() if line]
    assert any(line.get("logger") == "_granian" for line in application)
    logged = [line for line in access if line.get("family") == "minigame"]
    assert len(logged) >= HAMMER_REQUESTS, len(logged)  # the access log is on, in JSON
    assert any(line.get("order_id") == "srv-order-1" for line in logged)
    assert any(line.get("trace_id") for line in logged)


def serve_and_exit(config_path: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    """``walletgate serve`` with this source tree, for a config it must refuse (it exits)."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "python"), *filter(None, [environment.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "walletgate.cli", "serve", "--config", str(config_path), *flags],
        capture_output=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_an_invalid_config_exits_non_zero_before_binding(tmp_path: Path) -> None:
    raw = gateway_helpers.config_dict(tmp_path / "journal")
    raw["admin"]["token"] = "too-short-secret"
    config_path = write_config(tmp_path / "walletgate.toml", raw)
    port = free_port()
    result = serve_and_exit(config_path, "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode != 0, result
    assert b"admin.token" in result.stderr, result.stderr
    assert b"too-short-secret" not in result.stdout + result.stderr  # not even a bad secret
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # nothing bound the port


def test_a_taken_port_or_a_typo_exits_2_with_a_message_before_starting(tmp_path: Path) -> None:
    """What an operator gets wrong first: a port already in use, a misspelt key, a host name
    where an address belongs. Each exits 2 with a one-line message naming it, before the
    journal writer or Granian starts (no traceback, no stack backtrace)."""
    raw = gateway_helpers.config_dict(tmp_path / "journal")
    good = write_config(tmp_path / "good.toml", raw)
    typo = write_config(
        tmp_path / "typo.toml", {**raw, "server": {**raw.get("server", {}), "prot": 9999}}
    )
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = [
        (good, ["--host", "127.0.0.1", "--port", str(port)], b"Address already in use"),
        (typo, ["--host", "127.0.0.1", "--port", str(free_port())], b"unknown key(s) prot"),
        (good, ["--host", "localhost", "--port", str(free_port())], b"must be an IP address"),
        (good, ["--host", "127.0.0.1", "--port", "70000"], b"--port must be between"),
    ]
    try:
        for config_path, flags, message in cases:
            result = serve_and_exit(config_path, *flags)
            assert result.returncode == 2, (flags, result)
            assert message in result.stderr and b"Traceback" not in result.stderr, result.stderr
            assert result.stderr.count(b"\n") == 1, result.stderr
    finally:
        taken.close()


def test_an_unread_body_closes_its_connection_and_the_next_request_is_answered(
    server: Server,
) -> None:
    """An over-limit body is answered without reading the rest of it (and an unknown wallet
    token without reading any), so the connection cannot carry another request: the answer
    must say ``connection: close``. Without it a keep-alive client sent its next request on a
    connection the server then dropped."""
    wallet_v2 = f"/wallet/v2/{gateway_helpers.WALLET_TOKEN}"  # routed (a path parameter)
    minigame = "/api/balance/change_balance"  # dispatched directly by the access middleware
    over_limit = b'{"type":"credit","pad":"' + b"x" * (server.config.server.max_body_bytes + 1)

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(over_limit), 8192):
            yield over_limit[start : start + 8192]

    with server.client() as client:
        for attempt in range(40):
            content: bytes | Iterator[bytes] = over_limit if attempt % 2 else chunked()
            path = wallet_v2 if attempt % 4 < 2 else minigame
            refused = client.post(path, content=content)
            assert refused.status_code == 200
            assert refused.json().get("err_code", refused.json().get("code")) in (
                "BAD_REQUEST",
                10009,
            )
            assert refused.headers.get("connection") == "close"
            after = client.post(wallet_v2, content=b'{"type":"credit","code":"no-such-code"}')
            assert after.json()["err_code"] == "INVALID_SESSION"
            # A body read to its end keeps the connection open.
            assert "connection" not in after.headers
            # An unknown wallet token is refused (404) before its body is read at all.
            unknown = client.post("/wallet/v2/no_such_agent", content=b"x" * 60_000)
            assert unknown.status_code == 404 and unknown.headers.get("connection") == "close"
            assert client.get("/healthz").status_code == 200


# The grace of walletgate.supervision, plus its polling and the time to exit.
ORPHAN_EXIT_TIMEOUT_S = 20.0


def _children(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_workers_and_the_writer_stop_when_serve_is_killed(server: Server) -> None:
    """``kill -9`` of serve once left its Granian workers answering and its journal writer
    running, unsupervised, holding the port a restarted serve needs. They now notice that
    they were reparented and stop by themselves."""
    children = _children(server.process.pid)
    # Two workers and the journal writer (the multiprocessing resource tracker, if any, is a
    # child too).
    assert len(children) >= WORKERS + 1, children
    assert httpx.get(server.base_url + "/healthz", timeout=2.0).status_code == 200
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=STOP_TIMEOUT_S)
    deadline = time.monotonic() + ORPHAN_EXIT_TIMEOUT_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.2)
    left = [pid for pid in children if _alive(pid)]
    for pid in left:  # do not leave them behind for the next tests
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after serve was killed: {left}"
    with pytest.raises(httpx.TransportError):
        httpx.get(server.base_url + "/healthz", timeout=2.0)
