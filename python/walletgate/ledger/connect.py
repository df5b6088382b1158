"""Builders for the two Redis clients of the gateway, from ``[redis]`` of the config.

* :func:`make_runner`: the hot path, every money operation (one script call each), on the
  pipelined client of :mod:`walletgate.ledger.fastredis` or its cluster router.
* :func:`make_admin_client`: redis-py's asyncio client, for the admin API and tooling, whose
  calls are rare and varied (scans, journal reads) and need no special speed.
"""

from __future__ import annotations

from typing import Final

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from walletgate.config import RedisConfig
from walletgate.ledger.cluster_runner import ClusterRunner
from walletgate.ledger.fastredis import FastRedisRunner
from walletgate.ledger.runner import ScriptRunner

# Connections the admin client may open (per node on a cluster). Admin and tooling traffic is
# light; a small bound keeps it from competing with the hot path for Redis's file descriptors.
ADMIN_MAX_CONNECTIONS: Final = 16
ADMIN_RETRIES: Final = 1

AdminClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


def make_runner(config: RedisConfig) -> ScriptRunner:
    """The hot-path script runner: the cluster router or the standalone pipelined client."""
    if config.cluster:
        return ClusterRunner.from_config(config)
    return FastRedisRunner.from_config(config)


def cluster_seed_nodes(config: RedisConfig) -> list[redis.asyncio.cluster.ClusterNode]:
    """``[redis] seeds`` as redis-py's startup nodes; it adds the url's own node to them and
    takes credentials and TLS for all of them from the url."""
    return [redis.asyncio.cluster.ClusterNode(host, port) for host, port in config.seeds]


def make_admin_client(
    config: RedisConfig, *, max_connections: int = ADMIN_MAX_CONNECTIONS
) -> AdminClient:
    """A redis-py asyncio client with explicit timeouts and a bounded number of connections.

    Standalone, a blocking pool makes a caller wait (at most ``queue_wait_ms``) for a free
    connection instead of failing at once or opening more. The caller closes the client with
    ``await client.aclose()``.
    """
    connect_timeout_s = config.connect_timeout_ms / 1000
    command_timeout_s = config.command_timeout_ms / 1000
    if config.cluster:
        return redis.asyncio.RedisCluster.from_url(
            config.url,
            startup_nodes=cluster_seed_nodes(config),
            max_connections=max_connections,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=command_timeout_s,
            require_full_coverage=True,
            decode_responses=False,
            retry=Retry(NoBackoff(), ADMIN_RETRIES),
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        config.url,
        max_connections=max_connections,
        timeout=config.queue_wait_ms / 1000,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=command_timeout_s,
        decode_responses=False,
        # A pooled connection that Redis closed (a restart) fails on first use; one immediate
        # retry on a fresh connection hides that from admin callers and the journal writer.
        retry=Retry(NoBackoff(), ADMIN_RETRIES),
        retry_on_error=[redis.exceptions.ConnectionError],
    )
    return redis.asyncio.Redis.from_pool(pool)
