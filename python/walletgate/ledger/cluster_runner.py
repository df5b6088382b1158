"""The hot-path runner for Redis Cluster: one pipelined connection per primary, routed by slot.

Every script's keys share one hash slot (the ``{tenant:player}`` tag, and a journal bucket
chosen to hash to the same slot), so a call goes to the primary that owns the slot of
``keys[0]``. The slot map comes from ``CLUSTER SLOTS``; it is loaded on first use and reloaded
in the background when Redis answers MOVED or a node stops answering, at most once per
:data:`MIN_REFRESH_INTERVAL_S`. A MOVED reply names the new owner, so the call is re-sent there
at once instead of waiting for the reload; ASK (a slot half-way through a migration) sends
ASKING and the command to the named node, without touching the map.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from walletgate.config import RedisConfig
from walletgate.ledger.errors import LedgerUnavailable, NotReplicated
from walletgate.ledger.fastredis import (
    REPLICA_ERROR_CODES,
    WAITERS_PER_IN_FLIGHT,
    BoundedRunner,
    FastConnection,
    InFlightLimiter,
    RedisAddress,
    ReplyError,
    consume_outcome,
    error_code,
    join_shared,
    pack_command,
    parse_redis_url,
    script_deadline,
    script_failure,
    script_fence_us,
)
from walletgate.ledger.keys import replication_probe_key
from walletgate.ledger.runner import ScriptArg
from walletgate.ledger.scripts import Script

# Topology reloads are coalesced and spaced by at least this long, so a storm of MOVED replies
# (every in-flight call of a migrated slot gets one) or a dead node cannot turn into a storm of
# CLUSTER SLOTS calls.
MIN_REFRESH_INTERVAL_S: Final = 0.2

# Redirects one call may follow: a MOVED and then an ASK is the longest legitimate chain (a slot
# that moved owner and is migrating again). More means the map and the cluster disagree for
# now; the caller gets LedgerUnavailable and its retry is safe because scripts are idempotent.
MAX_REDIRECTS: Final = 2

_ASKING: Final = pack_command(("ASKING",))
_EVALSHA: Final = b"EVALSHA"
_EVAL: Final = b"EVAL"


class ClusterRunner(BoundedRunner):
    """A :class:`~walletgate.ledger.runner.ScriptRunner` over a Redis Cluster's primaries."""

    def __init__(
        self,
        seeds: Sequence[RedisAddress],
        *,
        max_in_flight: int = 1024,
        queue_wait_ms: int = 200,
        connect_timeout_ms: int = 1000,
        command_timeout_ms: int = 2000,
        max_waiters: int | None = None,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 0,
    ) -> None:
        if not seeds:
            raise ValueError("a cluster runner needs at least one seed node")
        self._seeds = list(seeds)
        self._connect_timeout_s = connect_timeout_ms / 1000
        self._command_timeout_s = command_timeout_ms / 1000
        self._fence_us = script_fence_us(command_timeout_ms)
        self._replica_acks = replica_acks
        self._replica_ack_timeout_ms = replica_ack_timeout_ms
        self._limiter = InFlightLimiter(
            max_in_flight,
            queue_wait_ms / 1000,
            WAITERS_PER_IN_FLIGHT * max_in_flight if max_waiters is None else max_waiters,
        )
        # Slot -> connection to its primary; None until the topology is known.
        self.slots: list[FastConnection | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        # "host:port" -> connection, for every primary of the current map (and seeds in use).
        self.nodes: dict[str, FastConnection] = {}
        # Nodes the last reload found owning no slot (closed if the next one does too).
        self._out_of_map: set[str] = set()
        self._refresh_task: asyncio.Task[None] | None = None
        self._last_refresh = float("-inf")
        self._closed = False

    @classmethod
    def from_config(cls, config: RedisConfig) -> ClusterRunner:
        url_node = parse_redis_url(config.url)
        seeds = [url_node, *(url_node.with_endpoint(host, port) for host, port in config.seeds)]
        return cls(
            seeds,
            max_in_flight=config.max_in_flight,
            queue_wait_ms=config.queue_wait_ms,
            connect_timeout_ms=config.connect_timeout_ms,
            command_timeout_ms=config.command_timeout_ms,
            replica_acks=config.replica_acks,
            replica_ack_timeout_ms=config.replica_ack_timeout_ms,
        )

    # -- script calls (run() is BoundedRunner's) ---------------------------------------------

    async def _call(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        # A script without keys (the readiness ping) may run on any primary: slot 0's.
        slot = key_slot(keys[0].encode()) if keys else 0
        connection = self.slots[slot]
        if connection is None:
            await self.refresh()
            connection = self.slots[slot]
            if connection is None:
                raise LedgerUnavailable(f"no cluster primary serves slot {slot}")
        # The deadline goes last, after the script's own arguments (see script_deadline).
        args = (*args, script_deadline(self._fence_us))
        packed = pack_command((_EVALSHA, script.sha, len(keys), *keys, *args))
        asking = False
        for _ in range(MAX_REDIRECTS + 1):
            reply = await self._send_script(connection, packed, script, keys, args, asking)
            if not isinstance(reply, ReplyError):
                return reply
            code = error_code(reply)
            if code == "MOVED":
                connection = self._redirect_target(reply, connection)
                if self._replica_acks and connection.probe_key is None:
                    # A node not in the map yet: it owns this slot, so its probe can live there.
                    connection.set_probe(replication_probe_key(slot))
                # The reply is authoritative for this slot: use it now, reload the rest.
                self.slots[slot] = connection
                self._refresh_soon()
                asking = False
            elif code == "ASK":
                # A migration in progress: only keys already moved live on the target, and
                # the slot still belongs to the source, so the map stays as it is.
                connection = self._redirect_target(reply, connection)
                asking = True
            else:
                if code in REPLICA_ERROR_CODES:
                    # This node was demoted: the next calls go where the map says now.
                    self._refresh_soon()
                raise script_failure(reply)
        raise LedgerUnavailable(f"slot {slot} redirected more than {MAX_REDIRECTS} times")

    async def _send_script(
        self,
        connection: FastConnection,
        packed: bytes,
        script: Script,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        asking: bool,
    ) -> Any:
        """``packed`` EVALSHA, then EVAL once on NOSCRIPT, on one node.

        Returns the reply, error replies included (as objects), for the caller to act on.
        """
        reply = await self._send(connection, packed, asking)
        if isinstance(reply, ReplyError) and error_code(reply) == "NOSCRIPT":
            source_packed = pack_command((_EVAL, script.source, len(keys), *keys, *args))
            reply = await self._send(connection, source_packed, asking)
        return reply

    async def _send(self, connection: FastConnection, packed: bytes, asking: bool) -> Any:
        wire = connection.wire
        try:
            if wire is None or wire.broken:
                wire = await connection.ready_wire()
            if not asking:
                return await wire.send(packed)
            # ASKING and the command are sent back to back, so they are written contiguously
            # on the wire and nothing can come between them.
            wire.send(_ASKING).add_done_callback(consume_outcome)
            return await wire.send(packed)
        except LedgerUnavailable as error:
            # A primary that cannot be reached may have failed over: look again, in the
            # background and rate-limited, so the next calls go to its replacement. Replicas
            # that do not confirm (replica_acks) say nothing of where the slot is.
            if not isinstance(error, NotReplicated):
                self._refresh_soon()
            raise

    def _redirect_target(self, reply: Exception, current: FastConnection) -> FastConnection:
        """The connection for the node of ``MOVED <slot> <host>:<port>`` or ``ASK ...``."""
        parts = str(reply).split(" ")
        if len(parts) != 3 or ":" not in parts[2]:
            raise LedgerUnavailable(f"malformed cluster redirect: {reply}")
        host, _, port_text = parts[2].rpartition(":")
        if not port_text.isdigit():
            raise LedgerUnavailable(f"malformed cluster redirect: {reply}")
        if not host or host == "?":
            # The node does not know its own address; it is the one that answered.
            host = current.address.host
        return self._node(host, int(port_text))

    def _node(self, host: str, port: int) -> FastConnection:
        endpoint = f"{host}:{port}"
        connection = self.nodes.get(endpoint)
        if connection is None:
            connection = FastConnection(
                self._seeds[0].with_endpoint(host, port),
                connect_timeout_s=self._connect_timeout_s,
                command_timeout_s=self._command_timeout_s,
                select_db=False,
                replica_acks=self._replica_acks,
                replica_ack_timeout_ms=self._replica_ack_timeout_ms,
            )
            self.nodes[endpoint] = connection
        return connection

    # -- topology ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the slot map now instead of on the first call (optional)."""
        await self.refresh()

    async def refresh(self) -> None:
        """Reload the slot map, or join a reload in progress; raises LedgerUnavailable.

        Within :data:`MIN_REFRESH_INTERVAL_S` of the last attempt this returns at once, so when
        the cluster is down the callers of an unknown slot fail fast instead of each trying
        every node in turn.
        """
        if self._closed:
            raise LedgerUnavailable("the Redis client is closed")
        task = self._refresh_task
        if task is None:
            loop = asyncio.get_running_loop()
            if loop.time() - self._last_refresh < MIN_REFRESH_INTERVAL_S:
                return
            self._last_refresh = loop.time()
            task = loop.create_task(self._load_topology())
            task.add_done_callback(self._refresh_done)
            self._refresh_task = task
        await join_shared(task)

    def _refresh_soon(self) -> None:
        if self._closed or self._refresh_task is not None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_refresh < MIN_REFRESH_INTERVAL_S:
            return
        self._last_refresh = loop.time()
        task = loop.create_task(self._load_topology())
        task.add_done_callback(self._refresh_done)
        self._refresh_task = task

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        self._refresh_task = None
        # Retrieve the outcome: a background reload that failed is retried on the next trigger,
        # and waiters (if any) got the exception through the shield.
        if not task.cancelled():
            task.exception()

    async def _load_topology(self) -> None:
        """Ask known primaries, then the seeds, for CLUSTER SLOTS; apply the first answer."""
        candidates = list(self.nodes.items())
        for seed in self._seeds:
            endpoint = f"{seed.host}:{seed.port}"
            if endpoint not in self.nodes:
                candidates.append((endpoint, self._node(seed.host, seed.port)))
        last_error = "no node to ask"
        for _, connection in candidates:
            try:
                reply = await connection.command("CLUSTER", "SLOTS")
            except LedgerUnavailable as error:
                last_error = str(error)
                continue
            if isinstance(reply, ReplyError) or not isinstance(reply, list):
                last_error = f"CLUSTER SLOTS failed on {connection.address.endpoint}: {reply}"
                continue
            await self._apply_topology(reply, connection.address.host)
            return
        raise LedgerUnavailable(f"cannot load the Redis Cluster topology: {last_error}")

    async def _apply_topology(self, reply: list[Any], answered_by: str) -> None:
        slots: list[FastConnection | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        primaries: set[str] = set()
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            if not host or host == "?":
                host = answered_by
            port = int(primary[1])
            connection = self._node(host, port)
            endpoint = f"{host}:{port}"
            if self._replica_acks and endpoint not in primaries:
                # Its first slot of this map: the node may write only keys of its own slots.
                connection.set_probe(replication_probe_key(start))
            primaries.add(endpoint)
            for slot in range(start, end + 1):
                slots[slot] = connection
        self.slots = slots
        # Drop connections to nodes that own no slots (removed nodes, demoted primaries and
        # seeds that are replicas), so the pool tracks the cluster instead of growing; but only
        # at the second reload that finds them out of the map. A node that gets its first slot
        # by migration is not in the map until that ends, while calls already follow ASK to
        # it: closing its connection at once would fail them.
        out_of_map = {endpoint for endpoint in self.nodes if endpoint not in primaries}
        for endpoint in out_of_map & self._out_of_map:
            await self.nodes.pop(endpoint).close()
        self._out_of_map = out_of_map - self._out_of_map

    async def primary_slots(self) -> list[int]:
        """One slot owned by each primary of the slot map (loaded first when incomplete).

        Raises :class:`LedgerUnavailable` when a slot has no primary even after a reload: the
        players whose keys hash there cannot be served, so the cluster is not ready.
        """
        if any(connection is None for connection in self.slots):
            await self.refresh()
        first_slots: dict[int, int] = {}
        for slot, connection in enumerate(self.slots):
            if connection is None:
                raise LedgerUnavailable(f"no cluster primary serves slot {slot}")
            first_slots.setdefault(id(connection), slot)
        return list(first_slots.values())

    async def close(self) -> None:
        self._closed = True
        task = self._refresh_task
        if task is not None:
            task.cancel()
        nodes = list(self.nodes.values())
        self.nodes.clear()
        self.slots = [None] * REDIS_CLUSTER_HASH_SLOTS
        for connection in nodes:
            await connection.close()
