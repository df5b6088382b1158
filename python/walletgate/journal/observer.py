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
from pathlib import Path
from typing import Any

import orjson

from walletgate.journal.writer import (
    JournalStatus,
    RecordCounter,
    WriterSettings,
    read_journal_figures,
    shard_stream_names,
)

logger = logging.getLogger("walletgate.journal")

# In the metrics directory: {"restarts": N}, written by `walletgate serve` when it starts the
# journal writer process (0) and each time that process exits (it is then restarted).
SIDECAR_STATE_FILE = "journal-sidecar.json"


def read_sidecar_restarts(path: Path | None) -> int:
    """How often `walletgate serve` restarted its journal writer; 0 when not known."""
    if path is None:
        return 0
    try:
        restarts = orjson.loads(path.read_bytes()).get("restarts")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return 0
    return restarts if isinstance(restarts, int) and restarts >= 0 else 0


class JournalObserver:
    """Reads the published shard figures every ``status_interval_ms``; never writes anything."""

    def __init__(
        self, client: Any, settings: WriterSettings, sidecar_state_path: Path | None = None
    ) -> None:
        self._client = client
        self._settings = settings
        self._sidecar_state_path = sidecar_state_path
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
        self._shard_streams = shard_stream_names(settings)
        self._record_counter = RecordCounter(client)

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
        lease_ms = self._settings.lease_ms
        now_ms = int(time.time() * 1000)
        uptime_ms = now_ms - int(self._started_s * 1000)
        stale_ms = self._settings.stale_after_ms
        figures = await read_journal_figures(
            self._client, self._shard_streams, lease_ms, uptime_ms, stale_ms, self._record_counter
        )
        freshest_ms = figures.freshest_update_ms
        restarts = read_sidecar_restarts(self._sidecar_state_path)
        # The writer is alive when some shard owner reported within a lease. Staleness shorter
        # than that makes the records of the silent shards count, with their real wait, as lag
        # (read_journal_figures), which fails readiness once it exceeds max_lag_ms, but does
        # not make a writer that is merely slow (a long fsync, the takeover of many
        # shards in one cycle, a clock a second off between hosts) look dead. A fresh start has
        # two leases' grace before that is required (the shards of a writer that was killed
        # are taken only once its leases run out), but not once the writer process had to be
        # restarted: a worker started meanwhile would call a crash-looping writer alive.
        starting = uptime_ms < 2 * lease_ms and restarts == 0
        alive = starting or (freshest_ms > 0 and now_ms - freshest_ms < lease_ms)
        self._status = _with(
            self._status,
            alive=alive,
            writer_restarts_total=restarts,
            pending_records=figures.pending_records,
            oldest_pending_age_s=figures.oldest_pending_age_ms / 1000,
            last_flush_s=figures.last_flush_s,
            cross_player_all_writers_total=figures.cross_player_all_writers_total,
            last_error=None,
        )


def _with(status: JournalStatus, **changes: Any) -> JournalStatus:
    from dataclasses import replace

    return replace(status, **changes)
