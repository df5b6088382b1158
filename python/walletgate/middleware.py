"""Pure ASGI middleware: the access log, request metrics, a last-resort error answer, and the
direct dispatch of the protocol endpoints.

The protocol endpoints are POST routes at fixed paths. Dispatching them here, with one dict
lookup, skips Starlette's error middleware, route matching and per-route wrappers, and its
request stream and response sending, which together cost more per request than the protocol
work itself; every other path (admin, health, path parameters, wrong methods) goes through the
Starlette router as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from walletgate.logs import AccessLog, loggable_path
from walletgate.metrics import Metrics
from walletgate.protocols.common import (
    LOG_SCOPE_KEY,
    BodyRequest,
    declared_too_large,
    declares_body,
    read_bounded,
)

logger = logging.getLogger("walletgate")
FALLBACK_BODY = b'{"error":"internal"}'
CONNECTION_CLOSE = (b"connection", b"close")
Endpoint = Callable[[Request], Awaitable[Response]]


class AccessMiddleware:
    """Times each HTTP request, counts it, and emits one JSON access-log line.

    It is the outermost layer (``app.Gateway`` puts it outside Starlette's error middleware), so
    the protocol endpoints it dispatches directly see Granian's own ``receive`` and ``send``.
    Handlers catch their own errors and answer in their protocol's envelope; an exception that
    still escapes is logged here and answered with a bare 500 without details, never a trace.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        access_log: AccessLog,
        post_endpoints: Mapping[str, Endpoint] | None = None,
        max_body_bytes: int = 0,
    ) -> None:
        assert max_body_bytes > 0 or not post_endpoints, "direct dispatch needs a body bound"
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.post_endpoints = dict(post_endpoints or {})
        self.max_body_bytes = max_body_bytes

    async def _direct(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send, status: list[int]
    ) -> None:
        """Read the body, call the endpoint, send its answer; ``status`` gets the status sent
        (before sending, so that a failed send is not followed by a second answer)."""
        # A declared length over the bound is answered without reading the body at all.
        body = (
            None
            if declared_too_large(scope["headers"], self.max_body_bytes)
            else await read_bounded(receive, self.max_body_bytes)
        )
        response = await endpoint(BodyRequest(scope, receive, body))
        status[0] = response.status_code
        headers = response.raw_headers
        if body is None:
            # The rest of the body was never read, so this connection cannot carry another
            # request: say so, or a keep-alive client sends its next one into a connection the
            # server then drops.
            headers = [*headers, CONNECTION_CLOSE]
        await send({"type": "http.response.start", "status": status[0], "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _routed(self, scope: Scope, receive: Receive, send: Send, status: list[int]) -> None:
        """Everything else goes through the Starlette router; ``status`` gets the status sent."""

        # Whether the request's body is still (partly) unread. A route may answer without
        # reading it (an unknown token, a body over the bound): then the connection cannot
        # carry another request, and the answer says so.
        body_unread = declares_body(scope["headers"])

        async def receive_wrapper() -> Message:
            nonlocal body_unread
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_unread = False
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if body_unread:
                    message = {**message, "headers": [*message["headers"], CONNECTION_CLOSE]}
            await send(message)

        await self.app(scope, receive_wrapper if body_unread else receive, send_wrapper)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]
        endpoint = self.post_endpoints.get(scope["path"]) if scope["method"] == "POST" else None
        try:
            if endpoint is not None:
                await self._direct(endpoint, scope, receive, send, status)
            else:
                await self._routed(scope, receive, send, status)
        except Exception:
            logger.exception("unhandled error on %s", loggable_path(scope.get("path", "?")))
            if status[0] == 0:
                status[0] = 500
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        # Whether the request's body was read to its end is not known here:
                        # the connection is not reused, as for any answer sent before it was.
                        "headers": [(b"content-type", b"application/json"), CONNECTION_CLOSE],
                    }
                )
                await send({"type": "http.response.body", "body": FALLBACK_BODY})
        elapsed_s = time.perf_counter() - started
        info: dict[str, Any] | None = scope.get(LOG_SCOPE_KEY)
        if info is None:
            return
        family = str(info["family"])
        endpoint_name = str(info["endpoint"])
        labels = (("family", family), ("endpoint", endpoint_name))
        self.metrics.inc("requests_total", (*labels, ("result", str(info["result"]))))
        self.metrics.observe("request_duration_seconds", labels, elapsed_s)
        if not self.access_log.enabled:
            return
        record = {
            "ts": time.time(),
            "family": family,
            "endpoint": endpoint_name,
            "result": info["result"],
            "status": status[0],
            "latency_ms": round(elapsed_s * 1000, 3),
        }
        record.update(info["refs"])
        self.access_log.emit(record)
