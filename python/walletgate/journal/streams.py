"""This module reads the pending-journal streams and runs the journal's scripts in Redis.

It connects the journal tools to Redis, runs bounded pipelines, reads the length and first
entries of many streams with one script call per node (:class:`StreamReader`), and runs a script
once per node for many items (:func:`run_per_node`), so that round trips do not grow with the
number of streams or records. It also reads the times and order of stream entry ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from walletgate.config import RedisConfig
from walletgate.journal.records import text
from walletgate.journal.scripts import READ_STREAMS_LUA, STREAM_LENGTHS_LUA
from walletgate.ledger.connect import cluster_seed_nodes

# redis-py's asyncio methods are annotated as returning ``Awaitable[T] | T``, which mypy cannot
# await, and ``Redis`` and ``RedisCluster`` share no typed base. The journal therefore keeps the
# client untyped at this boundary and turns every reply into a typed value at once.
RedisClient = Any

MAX_PIPELINE_COMMANDS = 2048
# Streams one read script visits. Redis runs nothing else meanwhile, so this bounds how long a
# money call may wait behind the writer: visiting a stream costs about 0.5 µs (an XLEN of an
# empty one), so 512 keep a call near 0.3 ms, where 2048 took 1.1 ms (a cluster node serves
# about 5,500 slot streams out of 16,384 with three primaries).
MAX_STREAMS_PER_READ = 512
MAX_CACHED_STREAM_GROUPS = 8


def stream_id_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def stream_id_order(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def connect(redis_config: RedisConfig, *, max_connections: int = 32) -> RedisClient:
    """A redis-py asyncio client for the journal tools (a cluster client when configured)."""
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": redis_config.connect_timeout_ms / 1000,
        "socket_timeout": max(redis_config.command_timeout_ms / 1000, 10.0),
    }
    if redis_config.cluster:
        return RedisCluster.from_url(
            redis_config.url, startup_nodes=cluster_seed_nodes(redis_config), **timeouts
        )
    from redis.asyncio import Redis

    return Redis.from_url(redis_config.url, max_connections=max_connections, **timeouts)


async def run_pipeline(
    client: RedisClient, commands: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> list[Any]:
    """Run commands in non-transactional pipelines of bounded length; a cluster client splits
    each pipeline by node."""
    results: list[Any] = []
    for start in range(0, len(commands), MAX_PIPELINE_COMMANDS):
        pipe = client.pipeline(transaction=False)
        for name, args, kwargs in commands[start : start + MAX_PIPELINE_COMMANDS]:
            getattr(pipe, name)(*args, **kwargs)
        results.extend(await pipe.execute())
    return results


StreamPage = tuple[int, list[tuple[str, list[Any]]]]


@dataclass(frozen=True, slots=True)
class StreamGroup:
    """Streams served by one node (``None`` when standalone), read by one script call."""

    node: Any
    names: list[str]
    joined_names: bytes


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


class StreamReader:
    """Reads the length and first entries of many streams with one script call per node.

    On a cluster there is one stream per slot (16384): a pipeline of one XRANGE each costs
    redis-py about a second of CPU, while a script per node visits its streams in milliseconds.
    The script names its streams in ARGV and reads only keys of its own node
    (``allow-cross-slot-keys``), so it needs Redis 7. Which node serves each stream is computed
    once per stream group and kept until :meth:`refresh_topology`.

    A standalone Redis (a few streams, ``[journal] buckets``) is read differently: a script
    finds the non-empty streams and their lengths, then one pipeline of plain XRANGEs reads
    their entries. Entries read inside a script are converted to Lua tables and back, which
    costs Redis about four times the XRANGE itself (``bench/run``'s Redis table: the journal's
    EVAL); the writer reads every record once, so that conversion was a fixed share of Redis's
    CPU per money operation.
    """

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._groups: dict[Hashable, list[StreamGroup]] = {}
        # XRANGE replies as the server sent them ([[id, [field, value, ...]], ...]): the
        # native encoder takes the flat field lists, which redis-py's callback would turn into
        # dicts. A client of its own over the same connection pool keeps the callbacks of the
        # caller's client untouched.
        self._raw: Any = None
        if not isinstance(client, RedisCluster):
            from redis.asyncio import Redis

            self._raw = Redis(connection_pool=client.connection_pool)
            self._raw.set_response_callback("XRANGE", _raw_reply)

    async def refresh_topology(self) -> None:
        """Forget the node of every stream and reload the slot map (after a failed read)."""
        self._groups.clear()
        if isinstance(self._client, RedisCluster):
            await self._client.nodes_manager.initialize()

    async def _group(self, group: Hashable, streams: Sequence[str]) -> list[StreamGroup]:
        cached = self._groups.get(group)
        if cached is not None:
            return cached
        client = self._client
        if isinstance(client, RedisCluster):
            # The slot map is loaded on first use; before that, no node is known.
            await client.initialize()
            by_node: dict[str, tuple[Any, list[str]]] = {}
            for stream in streams:
                node = client.get_node_from_key(stream)
                if node is None:
                    raise RedisError(f"no cluster node serves {stream}")
                by_node.setdefault(node.name, (node, []))[1].append(stream)
            slices = [
                (node, names[start : start + MAX_STREAMS_PER_READ])
                for node, names in by_node.values()
                for start in range(0, len(names), MAX_STREAMS_PER_READ)
            ]
        else:
            slices = [
                (None, list(streams[start : start + MAX_STREAMS_PER_READ]))
                for start in range(0, len(streams), MAX_STREAMS_PER_READ)
            ]
        # Names travel as one newline-separated argument: packing thousands of arguments
        # would cost redis-py more CPU than Redis spends reading the streams.
        groups = [StreamGroup(node, names, "\n".join(names).encode()) for node, names in slices]
        if len(self._groups) >= MAX_CACHED_STREAM_GROUPS:
            # A writer reads under the set of shards it owns, which changes as writers come and go.
            self._groups.clear()
        self._groups[group] = groups
        return groups

    async def read(
        self,
        group: Hashable,
        streams: Sequence[str],
        budget_records: int,
        rotation: int = 0,
        *,
        every_stream: bool = False,
    ) -> dict[str, StreamPage]:
        """Every non-empty stream of ``streams`` (cached under ``group``) with its length and
        first entries: about ``budget_records`` entries in all, plus at most one per stream.
        Each call starts ``rotation`` streams further, so the budget favours no stream for long.

        On a cluster, a stream its node no longer serves (a slot migrating or moved) is left
        out and the slot map is reloaded for the next read; with ``every_stream`` (a reader
        that must see everything, as ``journal verify``) that raises :class:`RedisError`.
        """
        calls = await self._group(group, streams)
        budget_per_call = max(1, budget_records // max(1, len(calls)))
        if self._raw is not None:
            pages: dict[str, StreamPage] = {}
            for stream_group in calls:
                pages.update(await self._read_standalone(stream_group, budget_per_call, rotation))
            return pages

        # Only a cluster gets here, so every group names the node that serves its streams.
        async def call(stream_group: StreamGroup) -> Any:
            args = (0, budget_per_call, rotation, stream_group.joined_names)
            return await self._client.execute_command(
                "EVAL", READ_STREAMS_LUA, *args, target_nodes=stream_group.node
            )

        async def in_order(node_calls: list[StreamGroup]) -> list[Any]:
            # One node's calls one after the other, so that Redis serves the gateway between
            # them instead of running them back to back.
            return [await call(stream_group) for stream_group in node_calls]

        by_node: dict[int, list[StreamGroup]] = {}
        for stream_group in calls:
            by_node.setdefault(id(stream_group.node), []).append(stream_group)
        if len(by_node) == 1:
            node_replies = [await in_order(calls)]
        else:
            node_replies = await asyncio.gather(*(in_order(group) for group in by_node.values()))
        calls = [stream_group for group in by_node.values() for stream_group in group]
        replies = [reply for group_replies in node_replies for reply in group_replies]
        pages = {}
        not_served: list[str] = []
        for stream_group, reply in zip(calls, replies, strict=True):
            for index in range(0, len(reply), 3):
                position = int(reply[index])
                if position < 0:
                    not_served.append(stream_group.names[-position - 1])
                    continue
                stream = stream_group.names[position - 1]
                # Fields stay a flat list here; the file thread decodes them off the event loop.
                entries = [(text(raw_sid), flat) for raw_sid, flat in reply[index + 2]]
                pages[stream] = (int(reply[index + 1]), entries)
        if not_served:
            # Their records stay in Redis and are read once the map names their node again
            # (after a migration, the slot map reloaded here names it).
            await self.refresh_topology()
            if every_stream:
                raise RedisError(
                    f"{len(not_served)} journal streams (first {not_served[0]}) are not on the "
                    "node the slot map names: a slot is migrating; read again once it is done"
                )
        return pages

    async def _read_standalone(
        self, stream_group: StreamGroup, budget: int, rotation: int
    ) -> dict[str, StreamPage]:
        """READ_STREAMS_LUA's reading, with the entries read by plain XRANGEs: lengths first,
        then the same share of the budget per stream, in the same rotating order."""
        reply = await self._client.eval(STREAM_LENGTHS_LUA, 0, stream_group.joined_names)
        lengths = {
            int(reply[index]) - 1: int(reply[index + 1]) for index in range(0, len(reply), 2)
        }
        count_names = len(stream_group.names)
        reads: list[tuple[str, int, int]] = []
        for step in range(count_names):
            position = (rotation + step) % count_names
            length = lengths.get(position, 0)
            if length > 0:
                count = max(budget, 1)
                reads.append((stream_group.names[position], length, count))
                budget -= min(length, count)
        if not reads:
            return {}
        commands = [("xrange", (name, "-", "+"), {"count": count}) for name, _, count in reads]
        replies = await run_pipeline(self._raw, commands)
        pages: dict[str, StreamPage] = {}
        for (name, length, _), page in zip(reads, replies, strict=True):
            if not page:
                continue  # Emptied since its length was read (another reader took over).
            entries = [(text(raw_sid), flat) for raw_sid, flat in page]
            # The stream may have grown between the two reads; never report fewer than read.
            pages[name] = (max(length, len(entries)), entries)
        return pages


MAX_ITEMS_PER_SCRIPT = 1000


def _weigh_one(item: tuple[Any, ...]) -> int:
    return 1


def _chunks(
    items: list[Any], max_weight: int, weigh: Callable[[tuple[Any, ...]], int]
) -> list[list[Any]]:
    """Consecutive runs of items whose weights add up to at most ``max_weight`` (an item heavier
    than that alone makes a run of its own)."""
    chunks: list[list[Any]] = []
    current: list[Any] = []
    current_weight = 0
    for item in items:
        weight = weigh(item)
        assert weight >= 0, "an item weighs nothing or more"
        if current and current_weight + weight > max_weight:
            chunks.append(current)
            current, current_weight = [], 0
        current.append(item)
        current_weight += weight
    if current:
        chunks.append(current)
    return chunks


async def run_per_node(
    client: RedisClient,
    script: str,
    items: Sequence[tuple[Any, ...]],
    *,
    ordered: bool = False,
    max_weight_per_call: int = MAX_ITEMS_PER_SCRIPT,
    weigh: Callable[[tuple[Any, ...]], int] = _weigh_one,
) -> list[tuple[list[Any], Any]]:
    """Run ``script`` once per node (and per chunk of items weighing ``max_weight_per_call`` in
    all, one per item unless ``weigh`` says otherwise) with the JSON list of the items whose key
    (the first element) that node serves; returns (items, reply) pairs.

    One script call replaces a command per record, which redis-py would spend far more CPU
    packing and parsing than Redis spends running them. Nodes run concurrently, and so do the
    chunks of one node unless ``ordered``, which runs them one after the other in item order:
    then Redis serves other clients between two chunks, so a small ``max_weight_per_call``
    bounds how long they wait behind this script.
    """
    assert max_weight_per_call >= 1, "a call carries at least one item"
    by_node: dict[str, tuple[Any, list[Any]]] = {}
    if isinstance(client, RedisCluster):
        await client.initialize()
        for item in items:
            node = client.get_node_from_key(item[0])
            if node is None:
                raise RedisError(f"no cluster node serves {item[0]}")
            by_node.setdefault(node.name, (node, []))[1].append(item)
    elif items:
        by_node[""] = (None, list(items))
    chunks_of_node = [
        (node, _chunks(grouped, max_weight_per_call, weigh)) for node, grouped in by_node.values()
    ]

    async def call(node: Any, chunk: list[Any]) -> tuple[list[Any], Any]:
        argument = orjson.dumps(chunk)
        if node is None:
            return chunk, await client.eval(script, 0, argument)
        return chunk, await client.execute_command("EVAL", script, 0, argument, target_nodes=node)

    async def in_order(node: Any, chunks: list[list[Any]]) -> list[tuple[list[Any], Any]]:
        return [await call(node, chunk) for chunk in chunks]

    if ordered:
        runs = [in_order(node, chunks) for node, chunks in chunks_of_node]
    else:
        runs = [in_order(node, [chunk]) for node, chunks in chunks_of_node for chunk in chunks]
    if len(runs) == 1:
        # One call needs no task of its own (a task is not free, at a few calls per cycle).
        return await runs[0]
    return [pair for pairs in await asyncio.gather(*runs) for pair in pairs]
