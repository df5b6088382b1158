"""``create_app(config)``: routes, middleware and lifespan. Wiring only.

Each worker process builds one app: one fast Redis script runner, one metrics registry, one
access log and one journal writer task (writers of all workers and hosts share the pending
records through leases, so exactly one writes each record).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypedDict

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from walletgate.admin import admin_routes
from walletgate.config import Config, load_config
from walletgate.health import health_routes, record_journal_disk, record_journal_status
from walletgate.heap import freeze_startup_heap
from walletgate.journal.observer import SIDECAR_STATE_FILE, JournalObserver
from walletgate.journal.records import keymap_key
from walletgate.journal.writer import JournalWriter, WriterSettings
from walletgate.ledger.connect import make_admin_client, make_runner
from walletgate.ledger.core import Ledger, LedgerSettings, as_str
from walletgate.logs import AccessLog, configure_logging
from walletgate.metrics import Metrics
from walletgate.middleware import AccessMiddleware, Endpoint
from walletgate.openapi import openapi_routes
from walletgate.protocols import midas, minigame, transfer, wallet_v2
from walletgate.protocols.common import GatewayContext
from walletgate.supervision import watch_supervisor

CONFIG_ENV = "WALLETGATE_CONFIG"
METRICS_DIR_ENV = "WALLETGATE_METRICS_DIR"
ACCESS_LOG_ENV = "WALLETGATE_ACCESS_LOG"
JOURNAL_SIDECAR_ENV = "WALLETGATE_JOURNAL_SIDECAR"
METRICS_PUBLISH_INTERVAL_MS = 1000


class State(TypedDict):
    context: GatewayContext
    journal_writer: JournalWriter | JournalObserver | None


def ledger_settings(config: Config) -> LedgerSettings:
    return LedgerSettings(
        journal_buckets=config.journal.buckets,
        cluster=config.redis.cluster,
        idempotency_ttl_s=config.idempotency.ttl_s,
        midas_ttl_s=config.idempotency.midas_ttl_s,
    )


def create_app(
    config: Config,
    *,
    metrics_dir: Path | None = None,
    access_log: AccessLog | None = None,
    run_journal_writer: bool | None = None,
    journal_sidecar: bool = False,
) -> Starlette:
    """The gateway app. ``journal_sidecar``: the journal writer runs as a process of its own
    (``walletgate serve`` starts it), and this app only reports its status."""
    metrics = Metrics(snapshot_dir=metrics_dir)
    access_log = access_log if access_log is not None else AccessLog()
    runner = make_runner(config.redis)
    admin_client = make_admin_client(config.redis)
    ledger = Ledger(runner, ledger_settings(config))
    context = GatewayContext(config=config, ledger=ledger, metrics=metrics)
    writer_enabled = config.journal.enabled if run_journal_writer is None else run_journal_writer
    writer: JournalWriter | JournalObserver | None = None
    if writer_enabled:
        writer = JournalWriter(admin_client, WriterSettings.from_config(config))
    elif config.journal.enabled and journal_sidecar:
        writer = JournalObserver(
            admin_client,
            WriterSettings.from_config(config),
            metrics_dir / SIDECAR_STATE_FILE if metrics_dir is not None else None,
        )

    async def key_to_player(tenant: str, key: str) -> str | None:
        """The journal writer's key-to-player map: a key is there once its record is on disk."""
        player = await admin_client.get(keymap_key(tenant, key))
        return as_str(player) if player is not None else None

    renderers = {
        "minigame": minigame.render_stored,
        "transfer": transfer.render_stored,
        "wallet_v2": wallet_v2.render_stored,
        "midas": midas.render_stored,
    }
    routes: list[BaseRoute] = []
    routes += minigame.routes(context)
    routes += transfer.routes(context)
    routes += wallet_v2.routes(context)
    routes += midas.routes(context)
    routes += admin_routes(context, admin_client, renderers, key_to_player)
    routes += health_routes(context, writer.status if writer is not None else None)
    routes += openapi_routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        access_log.start()
        if writer is not None:
            await writer.start()
        journal_status = writer.status if writer is not None else None
        publisher = asyncio.get_running_loop().create_task(
            _publish_metrics(metrics, journal_status, config.journal.dir)
        )
        # Everything the app built so far lives as long as the worker: keep it out of the
        # collector's full passes (see walletgate.heap for the measured pauses).
        freeze_startup_heap()
        try:
            yield {"context": context, "journal_writer": writer}
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            if writer is not None:
                await writer.stop()
            await access_log.stop()
            metrics.remove_snapshot()
            await runner.close()
            await admin_client.aclose()

    return Gateway(
        routes=routes,
        outer_middleware=Middleware(
            AccessMiddleware,
            metrics=metrics,
            access_log=access_log,
            post_endpoints=post_endpoints(routes),
            max_body_bytes=config.server.max_body_bytes,
        ),
        lifespan=lifespan,
    )


class Gateway(Starlette):
    """Starlette with one middleware outside its own error middleware.

    Starlette always wraps user middleware in ``ServerErrorMiddleware``; the access middleware
    goes outside it instead, so that the protocol endpoints it dispatches directly pay for no
    wrapper at all. It answers escaped exceptions itself (a bare 500, never a trace).
    """

    def __init__(self, *, outer_middleware: Middleware, **options: Any) -> None:
        super().__init__(**options)
        # No redirect to the path with or without a trailing slash: an API client that POSTs to
        # a wrong path gets 404 at once (an unknown Wallet v2 token included, as the spec
        # says), not a 307 that replays its body elsewhere.
        self.router.redirect_slashes = False
        self.outer_middleware = outer_middleware

    def build_middleware_stack(self) -> ASGIApp:
        factory, args, kwargs = self.outer_middleware
        outer: ASGIApp = factory(super().build_middleware_stack(), *args, **kwargs)
        return outer


def post_endpoints(routes: list[BaseRoute]) -> dict[str, Endpoint]:
    """The POST-only routes at fixed paths (every protocol endpoint but Wallet v2's)."""
    endpoints: dict[str, Endpoint] = {}
    for route in routes:
        if isinstance(route, Route) and "{" not in route.path and route.methods == {"POST"}:
            endpoints[route.path] = route.endpoint
    return endpoints


async def _publish_metrics(
    metrics: Metrics, journal_status: Callable[[], Any] | None, journal_dir: Path
) -> None:
    while True:
        await asyncio.sleep(METRICS_PUBLISH_INTERVAL_MS / 1000)
        # Fresh journal figures in every snapshot, not only in the worker that served /metrics
        # last: /metrics takes their maximum over the workers.
        if journal_status is not None:
            record_journal_status(metrics, journal_status())
            record_journal_disk(metrics, journal_dir)
        with contextlib.suppress(OSError):
            metrics.publish()


def app_from_env() -> Any:
    """Granian's factory target: each worker reads the config named by WALLETGATE_CONFIG."""
    configure_logging()
    # A worker orphaned by a killed serve stops as on SIGTERM, gracefully. Watched from here,
    # the worker's start, since serve may die while the worker is still starting.
    watch_supervisor(lambda: os.kill(os.getpid(), signal.SIGTERM))
    config = load_config(os.environ[CONFIG_ENV])
    metrics_dir = os.environ.get(METRICS_DIR_ENV)
    access_log = AccessLog(enabled=os.environ.get(ACCESS_LOG_ENV, "1") != "0")
    sidecar = os.environ.get(JOURNAL_SIDECAR_ENV) == "1"
    return create_app(
        config,
        metrics_dir=Path(metrics_dir) if metrics_dir else None,
        access_log=access_log,
        run_journal_writer=False if sidecar else None,
        journal_sidecar=sidecar,
    )
