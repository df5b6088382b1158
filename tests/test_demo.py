"""`walletgate demo`'s own Redis: reused only when it is this demo's."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conftest import RedisServer, free_port
from walletgate.demo import _start_redis


def test_the_demo_reuses_only_its_own_redis(tmp_path: Path) -> None:
    """Two demos with different --dir once shared whichever Redis held the port first: one
    ledger, and a journal split between two writers' directories."""
    mine = tmp_path / "mine"
    server = RedisServer(port=free_port(), directory=mine / "redis")
    server.start()
    try:
        assert _start_redis(mine, server.port) is None  # an earlier run of this --dir
        with pytest.raises(SystemExit, match="taken by another server"):
            _start_redis(tmp_path / "other", server.port)
    finally:
        server.stop()


def test_the_demo_refuses_a_port_held_by_something_else(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        with pytest.raises(SystemExit, match="stop it, or pass --redis-url"):
            _start_redis(tmp_path, port)
