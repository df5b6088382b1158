"""Pure ASGI middleware: the access log, request metrics, and a last-resort error answer."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from walletgate.logs import AccessLog
from walletgate.metrics import Metrics
from walletgate.protocols.common import LOG_SCOPE_KEY

logger = logging.getLogger("walletgate")
FALLBACK_BODY = b'{"error":"internal"}'


class AccessMiddleware:
    """Times each HTTP request, counts it, and emits one JSON access-log line.

    Handlers catch their own errors and answer in their protocol's envelope; an exception that
    still escapes is logged here and answered with a bare 500 without details, never a trace.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

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
            await self.app(scope, receive, send_wrapper)
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
