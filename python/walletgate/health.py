"""``/healthz`` (the process serves), ``/readyz`` (Redis, scripts, journal) and ``/metrics``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from walletgate.ledger.core import ping
from walletgate.ledger.errors import NotReplicated
from walletgate.metrics import Metrics
from walletgate.protocols.common import GatewayContext, json_response

READY_PROBE_TIMEOUT_S = 1.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def record_journal_status(metrics: Metrics, status: Any) -> None:
    """Copy the journal's figures into this worker's metrics. They describe the whole journal
    (every worker reads the same ones from Redis), so /metrics takes their maximum over the
    workers, not their sum; each worker records them before every snapshot it publishes."""
    metrics.set_gauge("journal_pending_records", (), status.pending_records)
    metrics.set_gauge("journal_oldest_pending_seconds", (), status.oldest_pending_age_s)
    metrics.set_gauge("journal_flush_seconds", (), status.last_flush_s)
    for family, count in status.cross_player_all_writers_total.items():
        metrics.counters[("idempotency_cross_player_total", (("family", family),))] = count
    if status.writer_restarts_total:
        metrics.counters[("journal_writer_restarts_total", ())] = status.writer_restarts_total


def record_journal_disk(metrics: Metrics, directory: Path) -> None:
    """The journal never deletes a record, so a full disk stops it (and with it /readyz, once
    the lag passes max_lag_ms): this gauge lets operators alert, and archive, well before."""
    try:
        usage = os.statvfs(directory)
    except OSError:
        return
    metrics.set_gauge("journal_disk_free_bytes", (), usage.f_bavail * usage.f_frsize)


def health_routes(ctx: GatewayContext, journal_status: Callable[[], Any] | None) -> list[BaseRoute]:
    max_lag_s = ctx.config.journal.max_lag_ms / 1000

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, Any] = {}
        try:
            offset_us = await asyncio.wait_for(ping(ctx.ledger), READY_PROBE_TIMEOUT_S)
            checks["redis"] = "ok"
            # Script calls carry deadlines from this host's clock, which Redis checks against
            # its own: operators watch this to keep them close (see [redis] command_timeout_ms).
            checks["redis_clock_offset_ms"] = round(offset_us / 1000, 1)
        except Exception as error:  # Any failure of the probe means "not ready", never a 500.
            checks["redis"] = "unavailable"
            if isinstance(error, NotReplicated):
                # Redis answers, but [redis] replica_acks cannot be met: every money call is
                # answered busy (though applied on the primary) until the replicas catch up.
                checks["redis"] = f"replicas do not confirm: {error}"
            elif "WGLATE" in str(error):
                # The probe itself started past its deadline: the clocks disagree by more than
                # the fence, or the server stalled; every money call is refused alike.
                checks["redis"] = "calls arrive late: Redis clock ahead of this host, or stalled"
        if journal_status is not None:
            status = journal_status()
            checks["journal_writer"] = "ok" if status.alive else "down"
            checks["journal_lag_s"] = round(status.oldest_pending_age_s, 3)
            if status.oldest_pending_age_s > max_lag_s:
                checks["journal_writer"] = "lagging"
        else:
            checks["journal_writer"] = "disabled"
        ready = checks["redis"] == "ok" and checks["journal_writer"] in ("ok", "disabled")
        return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def metrics(request: Request) -> Response:
        if journal_status is not None:
            record_journal_status(ctx.metrics, journal_status())
            record_journal_disk(ctx.metrics, ctx.config.journal.dir)
        # Rendering reads the other workers' small snapshot files; it runs on the loop thread so
        # that this worker's own counters are not read while handlers change them.
        body = ctx.metrics.render()
        return PlainTextResponse(body, media_type=PROMETHEUS_CONTENT_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
