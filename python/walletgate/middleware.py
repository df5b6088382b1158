"""Pure ASGI middleware: the access log, request metrics, a last-resort error answer, and the
direct dispatch of the protocol endpoints.

The protocol endpoints are POST routes at fixed paths. Dispatching them here, with one dict
lookup, skips Starlette's route matching and its per-route wrappers, which cost more per request
than everything else the gateway adds; every other path (admin, health, path parameters, wrong
methods) goes through the Starlette router as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from walletgate.logs import AccessLog
from walletgate.metrics import Metrics
from walletgate.protocols.common import LOG_SCOPE_KEY

logger = logging.getLogger("walletgate")
FALLBACK_BODY = b'{"error":"internal"}'
Endpoint = Callable[[Request], Awaitable[Response]]


class AccessMiddleware:
    """Times each HTTP request, counts it, and emits one JSON access-log line.

    Handlers catch their own errors and answer in their protocol's envelope; an exception that
    still escapes is logged here and answered with a bare 500 without details, never a trace.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        access_log: AccessLog,
        post_endpoints: Mapping[str, Endpoint] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.post_endpoints = dict(post_endpoints or {})

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call a protocol endpoint directly when the path and method are its own."""
        endpoint = self.post_endpoints.get(scope["path"]) if scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
            await send(message)

        try:
            await self._dispatch(scope, receive, send_wrapper)
        except Exception:
            logger.exception("unhandled error on %s", scope.get("path", "?"))
            if status_holder[0] == 0:
                status_holder[0] = 500
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": FALLBACK_BODY})
        elapsed_s = time.perf_counter() - started
        info: dict[str, Any] | None = scope.get(LOG_SCOPE_KEY)
        if info is None:
            return
        family = str(info["family"])
        endpoint = str(info["endpoint"])
        labels = (("family", family), ("endpoint", endpoint))
        self.metrics.inc("requests_total", (*labels, ("result", str(info["result"]))))
        self.metrics.observe("request_duration_seconds", labels, elapsed_s)
        record = {
            "ts": time.time(),
            "family": family,
            "endpoint": endpoint,
            "result": info["result"],
            "status": status_holder[0],
            "latency_ms": round(elapsed_s * 1000, 3),
        }
        record.update(info["refs"])
        self.access_log.emit(record)
