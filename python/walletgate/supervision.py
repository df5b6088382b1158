"""The processes of ``walletgate serve`` (Granian workers, the journal writer) stop with it.

``serve`` supervises its children: it respawns a failed worker and restarts the journal writer.
When ``serve`` itself dies without stopping them (``kill -9``, an OOM kill), they would live on
as orphans: workers that keep answering from a gateway nobody supervises, holding the port a
restarted ``serve`` needs, and a writer nobody restarts. A parent-death signal (``prctl``)
fires when the *thread* that forked the child exits, which may be any of Granian's threads, so
each child instead checks its parent once a second and stops itself gracefully when it has
been reparented.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Final

SUPERVISOR_PID_ENV: Final = "WALLETGATE_SUPERVISOR_PID"
ORPHAN_CHECK_INTERVAL_S: Final = 1.0

logger = logging.getLogger("walletgate")


def supervisor_pid() -> int | None:
    """The pid of the ``serve`` process that started this one, or ``None`` when there is none
    (a writer or an app started on its own, the tests)."""
    text = os.environ.get(SUPERVISOR_PID_ENV, "")
    return int(text) if text.isdigit() else None


async def stop_when_orphaned(supervisor: int, stop: Callable[[], None]) -> None:
    """Call ``stop`` once this process's parent is no longer ``supervisor``, then return."""
    # Polled: no event tells a process that its parent died (see the module's docstring).
    while True:
        if os.getppid() != supervisor:
            break
        await asyncio.sleep(ORPHAN_CHECK_INTERVAL_S)
    logger.warning("walletgate serve (pid %d) is gone; this process stops", supervisor)
    stop()


def watch_supervisor(stop: Callable[[], None]) -> asyncio.Task[None] | None:
    """Start :func:`stop_when_orphaned` on the running loop when a supervisor is named."""
    supervisor = supervisor_pid()
    if supervisor is None:
        return None
    return asyncio.get_running_loop().create_task(stop_when_orphaned(supervisor, stop))
