"""Journal status for workers that do not write the journal themselves.

``walletgate serve`` runs the journal writer as a process of its own next to the Granian
workers, so that encoding and fsync never compete with request handling for a worker's GIL.
The workers still answer ``/readyz`` and ``/metrics`` about the journal: they read the per-shard
figures that every shard owner publishes in Redis (``STATS_KEY``), as writers do for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from walletgate.journal.records import text
from walletgate.journal.streams import run_pipeline
from walletgate.journal.writer import (
    CROSS_PLAYER_KEY,
    STATS_KEY,
    JournalStatus,
    ShardStats,
    WriterSettings,
    parse_counts,
    parse_shard_stats,
)
from walletgate.ledger import keys

logger = logging.getLogger("walletgate.journal")


class JournalObserver:
    """Reads the published shard figures every ``status_interval_ms``; never writes anything."""

    def __init__(self, client: Any, settings: WriterSettings) -> None:
        self._client = client
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._status = JournalStatus(
            alive=False,
            writer_id="observer",
            owned_shards=(),
            pending_records=0,
            oldest_pending_age_s=0.0,
            last_flush_s=0.0,
            records_written_total=0,
            cross_player_total={},
            cross_player_all_writers_total={},
            sequence_violations_total=0,
            errors_total=0,
            last_error=None,
        )
        self._started_s = time.time()
        # As many shards as the writers use (walletgate.journal.writer.JournalWriter).
        streams = keys.all_journal_stream_keys(settings.buckets, settings.cluster)
        self._shard_count = min(settings.shards, len(streams))

    def status(self) -> JournalStatus:
        return self._status

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as error:  # Redis down: the writer is not known to be alive.
                self._status = _with(self._status, alive=False, last_error=type(error).__name__)
            await asyncio.sleep(self._settings.status_interval_ms / 1000)

    async def refresh(self) -> None:
        raw, cross_player = await run_pipeline(
            self._client, [("hgetall", (STATS_KEY,), {}), ("hgetall", (CROSS_PLAYER_KEY,), {})]
        )
        now_ms = int(time.time() * 1000)
        lease_ms = self._settings.lease_ms
        pending = 0
        oldest_age_ms = 0
        freshest_ms = 0
        last_flush_s = 0.0
        uptime_ms = now_ms - int(self._started_s * 1000)
        published: dict[int, ShardStats] = {}
        for name, value in raw.items():
            stats = parse_shard_stats(value)
            if stats is not None and text(name).isdigit():
                published[int(text(name))] = stats
        for number in range(self._shard_count):
            stats = published.get(number)
            if stats is None:
                # A shard nobody has reported (the figures expired, or a writer never got to
                # it): its records may be waiting since before this worker started, so once a
                # writer has had time to take it, its wait counts from then, as a writer's own
                # status does.
                if uptime_ms > 2 * lease_ms:
                    oldest_age_ms = max(oldest_age_ms, uptime_ms)
                continue
            shard_pending, oldest_ms, updated_ms = stats.pending, stats.oldest_ms, stats.updated_ms
            pending += shard_pending
            if updated_ms > freshest_ms:
                # The flush of the shard heard from last is the journal's last flush.
                freshest_ms, last_flush_s = updated_ms, stats.flush_s
            age_ms = now_ms - oldest_ms if shard_pending and oldest_ms else 0
            if now_ms - updated_ms > lease_ms:
                # No owner has reported this shard for longer than a lease: it is stuck.
                age_ms = max(age_ms, now_ms - updated_ms)
            oldest_age_ms = max(oldest_age_ms, age_ms)
        # The writer is alive when some shard owner reported within a lease; a fresh start has
        # a lease's grace before that is required.
        starting = now_ms - self._started_s * 1000 < 2 * lease_ms
        alive = starting or (freshest_ms > 0 and now_ms - freshest_ms < lease_ms)
        self._status = _with(
            self._status,
            alive=alive,
            pending_records=pending,
            oldest_pending_age_s=oldest_age_ms / 1000,
            last_flush_s=last_flush_s,
            cross_player_all_writers_total=parse_counts(cross_player),
            last_error=None,
        )


def _with(status: JournalStatus, **changes: Any) -> JournalStatus:
    from dataclasses import replace

    return replace(status, **changes)
