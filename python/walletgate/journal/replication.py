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
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

from walletgate.ledger.errors import LedgerUnavailable
from walletgate.ledger.fastredis import FastConnection, RedisAddress, ReplyError, pack_command

# The probe lives in the slot of the stream it stands for: "wg:{j7}:journal" gives
# "wg:{j7}:replication-probe", which a cluster node that serves the stream may write.
_STREAM_SUFFIX: Final = ":journal"
_PROBE_SUFFIX: Final = ":replication-probe"


def probe_key_for(stream: str) -> str:
    assert stream.endswith(_STREAM_SUFFIX), stream
    return stream.removesuffix(_STREAM_SUFFIX) + _PROBE_SUFFIX


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
        assert replica_acks >= 1 and ack_timeout_ms >= 1
        self._client = client
        self._address = address
        self._replica_acks = replica_acks
        self._wait_packed = pack_command(("WAIT", replica_acks, ack_timeout_ms))
        self._connect_timeout_s = connect_timeout_ms / 1000
        self._command_timeout_s = command_timeout_ms / 1000
        # One connection per node ("" for a standalone Redis), opened on first use.
        self._connections: dict[str, FastConnection] = {}

    async def confirmed(self, streams: Sequence[str]) -> set[str]:
        """The streams whose node's replicas hold everything that node had applied when this
        was asked, which includes every record read from them before."""
        by_node: dict[str, tuple[RedisAddress, list[str]]] = {}
        client = self._client
        for stream in streams:
            if isinstance(client, RedisCluster):
                node = client.get_node_from_key(stream)
                if node is None:
                    continue
                address = self._address.with_endpoint(node.host, int(node.port))
                endpoint = address.endpoint
            else:
                address, endpoint = self._address, ""
            by_node.setdefault(endpoint, (address, []))[1].append(stream)
        confirmed: set[str] = set()
        for endpoint, (address, names) in by_node.items():
            if await self._ask(endpoint, address, probe_key_for(names[0])):
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
            wire = await connection.ready_wire()
            # Written together: the WAIT follows the probe on the same connection, and WAIT
            # waits for the replicas to reach that connection's last write.
            probe = wire.send(pack_command(("SET", probe_key, "1")))
            waited = wire.send(self._wait_packed)
            probe_reply = await probe
            wait_reply = await waited
        except LedgerUnavailable:
            return False
        if isinstance(probe_reply, ReplyError):
            # A demoted primary or a moved slot: ask from a new connection next time.
            if connection.wire is not None:
                connection.wire.fail(f"the probe write was refused: {probe_reply}")
            return False
        return isinstance(wait_reply, int) and wait_reply >= self._replica_acks

    async def close(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            await connection.close()
