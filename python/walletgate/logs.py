"""Structured JSON logs: one line per request, written in batches off the request path.

The access log takes only what handlers put into ``scope["wg.log"]`` (family, endpoint, result,
reference ids), so keys, tokens, session keys and signatures never reach it. Lines are queued
in memory (bounded) and written by one flusher task every ``flush_interval_ms``; when the queue
is full, lines are dropped and counted rather than slowing the gateway down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

ACCESS_LOG_QUEUE_MAX_LINES = 65_536
ACCESS_LOG_FLUSH_INTERVAL_MS = 100
WALLET_V2_PATH_PREFIX = "/wallet/v2/"
ADMIN_PATH_PREFIX = "/admin/v1/"


def loggable_tenant(tenant: str, secret_tenants: frozenset[str]) -> str:
    """A tenant id as application logs may show it. A Wallet v2 agent's tenant id is its
    wallet_token, the secret in its callback URL (``secret_tenants``): logs show a digest of it
    instead, which an operator can match against ``sha256(token)``."""
    if tenant in secret_tenants:
        digest = hashlib.sha256(tenant.encode()).hexdigest()[:12]
        return f"wallet_v2 agent sha256:{digest}"
    return tenant


def tenant_redactor(secret_tenants: frozenset[str]) -> Callable[[str], str]:
    """A function that replaces every secret tenant id in a text by its loggable form, for
    reports that name accounts as ``tenant/player/currency`` (journal verify and rebuild).
    Tenant ids are ``[A-Za-z0-9_]`` words, so only whole words are replaced."""
    if not secret_tenants:
        return lambda text: text
    alternatives = "|".join(re.escape(t) for t in sorted(secret_tenants, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9_])(?:{alternatives})(?![A-Za-z0-9_])")
    return lambda text: pattern.sub(lambda m: loggable_tenant(m.group(0), secret_tenants), text)


def loggable_path(path: str) -> str:
    """A request path as application logs may show it: Wallet v2 paths carry the wallet_token
    and admin paths may carry it as a tenant, so only their fixed part is kept."""
    if path.startswith(WALLET_V2_PATH_PREFIX):
        return WALLET_V2_PATH_PREFIX + "…"
    if path.startswith(ADMIN_PATH_PREFIX):
        resource = path[len(ADMIN_PATH_PREFIX) :].split("/", 1)[0]
        return f"{ADMIN_PATH_PREFIX}{resource}/…"
    return path


class AccessLog:
    def __init__(self, fd: int | None = None, enabled: bool = True) -> None:
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.enabled = enabled
        self.lines: list[bytes] = []
        self.dropped_lines = 0
        self._task: asyncio.Task[None] | None = None

    def emit(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if len(self.lines) >= ACCESS_LOG_QUEUE_MAX_LINES:
            self.dropped_lines += 1
            return
        self.lines.append(orjson.dumps(record) + b"\n")

    def flush(self) -> None:
        if not self.lines:
            return
        data = b"".join(self.lines)
        self.lines.clear()
        with contextlib.suppress(OSError):
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_LOG_FLUSH_INTERVAL_MS / 1000)
            self.flush()

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()


class JsonFormatter(logging.Formatter):
    """Application log records (not requests) as JSON lines, tracebacks included as text."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload).decode()


# Granian's own loggers (its start, worker and shutdown lines), as dictConfig takes them: JSON on
# stderr like the application logs, so that stdout carries the access log's JSON lines only.
# Granian merges this over its defaults table by table, so both handlers are given in full.
GRANIAN_LOG_CONFIG: dict[str, Any] = {
    "formatters": {"json": {"()": "walletgate.logs.JsonFormatter"}},
    "handlers": {
        name: {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
        for name in ("console", "access")
    },
}


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("walletgate")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
