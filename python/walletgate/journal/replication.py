"""With ``[redis] replica_acks``, the journal writer writes out only records the replicas hold.

The gateway answers a call only once enough replicas hold it (``walletgate.ledger.fastredis.
ReplicaGate``), but the writer reads the pending streams from the primary as soon as a record
is there. A record it wrote out and the primary then lost in a failover is applied again by the
client's retry on the new primary: the journal on disk would hold that movement twice. So after
each read the writer asks every node it read from, on a connection of its own, to write a probe
key and ``WAIT`` for the replicas; the streams of a node that does not confirm stay in Redis and
are read again next cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from walletgate.ledger.errors import LedgerUnavailable
from walletgate.ledger.fastredis import FastConnection, RedisAddress, ReplicaProbe
from walletgate.ledger.keys import replication_probe_key


class ReplicaCheck:
    """Which of the streams just read have every record on ``replica_acks`` replicas."""

    def __init__(
        self,
        client: Any,
        address: RedisAddress,
        *,
        replica_acks: int,
        ack_timeout_ms: int,
        connect_timeout_ms: int,
        command_timeout_ms: int,
    ) -> None:
        self._client = client
        self._address = address
        self._probe = ReplicaProbe(replica_acks, ack_timeout_ms)
        self._connect_timeout_s = connect_timeout_ms / 1000
        self._command_timeout_s = command_timeout_ms / 1000
        # One connection per node ("" for a standalone Redis), opened on first use.
        self._connections: dict[str, FastConnection] = {}

    async def confirmed(self, streams: Sequence[str]) -> set[str]:
        """The streams whose node's replicas hold everything that node had applied when this
        was asked, which includes every record read from them before."""
        # Per node: its address, a probe key it may write (the gateway's probe key of a
        # stream's slot on a cluster, the standalone one otherwise), and its streams.
        by_node: dict[str, tuple[RedisAddress, str, list[str]]] = {}
        client = self._client
        for stream in streams:
            if isinstance(client, RedisCluster):
                node = client.get_node_from_key(stream)
                if node is None:
                    continue
                address = self._address.with_endpoint(node.host, int(node.port))
                endpoint = address.endpoint
                probe_key = replication_probe_key(key_slot(stream.encode()))
            else:
                address, endpoint = self._address, ""
                probe_key = replication_probe_key(None)
            by_node.setdefault(endpoint, (address, probe_key, []))[2].append(stream)
        confirmed: set[str] = set()
        for endpoint, (address, probe_key, names) in by_node.items():
            if await self._ask(endpoint, address, probe_key):
                confirmed.update(names)
        return confirmed

    async def _ask(self, endpoint: str, address: RedisAddress, probe_key: str) -> bool:
        connection = self._connections.get(endpoint)
        if connection is None:
            connection = FastConnection(
                address,
                connect_timeout_s=self._connect_timeout_s,
                command_timeout_s=self._command_timeout_s,
                select_db=not endpoint,
            )
            self._connections[endpoint] = connection
        try:
            refused, _ = await self._probe.ask(connection, probe_key)
        except LedgerUnavailable:
            return False
        return refused is None

    async def close(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            await connection.close()
