"""A real 3-primary Redis Cluster on loopback for the tests, and its session fixture.

Register the fixture with ``pytest_plugins = ["cluster"]`` in tests/conftest.py (or run pytest
with ``-p cluster`` and ``tests`` on the path).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CLUSTER_NODES = 3
# A cluster node also listens on port + 10000 (the cluster bus), so both must be free.
CLUSTER_BUS_OFFSET = 10_000
PORT_ATTEMPTS = 200
START_TIMEOUT_S = 10.0
STATE_OK_TIMEOUT_S = 20.0


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A loopback port that is free, and whose cluster-bus port (port + 10000) is free too."""
    for _ in range(PORT_ATTEMPTS):
        port = random.randint(20_000, 55_000 - CLUSTER_BUS_OFFSET)
        if port in taken or port + CLUSTER_BUS_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError(f"no free port pair found in {PORT_ATTEMPTS} attempts")


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install -y redis-server redis-tools)")
    return path


@dataclass
class RedisCluster:
    """Three redis-server primaries with ``--cluster-enabled yes``, no replicas."""

    directory: Path
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A seed node's url, as ``[redis] url`` takes it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def start(self) -> None:
        server = _binary("redis-server")
        taken: set[int] = set()
        for index in range(CLUSTER_NODES):
            port = free_cluster_port(taken)
            taken.update({port, port + CLUSTER_BUS_OFFSET})
            node_dir = self.directory / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                        "--protected-mode",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.ports.append(port)
        for port in self.ports:
            _wait_for_port(port, START_TIMEOUT_S)
        subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *self.endpoints,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            [_binary("redis-cli"), "-p", str(port), *args],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return done.stdout.decode()

    def wait_ok(self, timeout_s: float = STATE_OK_TIMEOUT_S) -> None:
        """Bounded wait until every node reports cluster_state:ok and sees every other node."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [self.cli(port, "CLUSTER", "INFO") for port in self.ports]
            if all(
                "cluster_state:ok" in state and f"cluster_known_nodes:{CLUSTER_NODES}" in state
                for state in states
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok after {timeout_s} s")
            time.sleep(0.1)

    def node_ids(self) -> dict[int, str]:
        """Port -> node id."""
        return {port: self.cli(port, "CLUSTER", "MYID").strip() for port in self.ports}

    def owner_port(self, slot: int) -> int:
        """The port of the primary that owns ``slot`` (as the first node sees it)."""
        for line in self.cli(self.ports[0], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2]:
                continue
            for part in fields[8:]:
                if part.startswith("["):
                    continue
                low, _, high = part.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(fields[1].split(":")[1].split("@")[0])
        raise LookupError(f"no primary owns slot {slot}")

    def begin_migration(self, slot: int, target_port: int) -> int:
        """Mark ``slot`` as migrating to ``target_port``; returns the source port."""
        source_port = self.owner_port(slot)
        ids = self.node_ids()
        self.cli(target_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source_port])
        self.cli(source_port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target_port])
        return source_port

    def finish_migration(self, slot: int, source_port: int, target_port: int) -> None:
        """Move the slot's remaining keys and hand the slot to the target on every node."""
        while True:
            keys = self.cli(source_port, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
            if not keys:
                break
            self.cli(
                source_port,
                "MIGRATE",
                "127.0.0.1",
                str(target_port),
                "",
                "0",
                "5000",
                "KEYS",
                *keys,
            )
        target_id = self.node_ids()[target_port]
        for port in (target_port, source_port, *self.ports):
            self.cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        self.wait_ok()

    def move_slot(self, slot: int, target_port: int) -> None:
        """Reshard one slot, keys included, to the primary at ``target_port``."""
        source_port = self.begin_migration(slot, target_port)
        self.finish_migration(slot, source_port, target_port)

    def flushall(self) -> None:
        for port in self.ports:
            self.cli(port, "FLUSHALL")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self.processes.clear()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One 3-primary cluster for the session; tests flush what they use."""
    cluster = RedisCluster(directory=tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
