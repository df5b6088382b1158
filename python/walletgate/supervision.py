"""The processes of ``walletgate serve`` (Granian workers, the journal writer) stop with it.

``serve`` supervises its children: it respawns a failed worker and restarts the journal writer.
When ``serve`` itself dies without stopping them (``kill -9``, an OOM kill), they would live on
as orphans: workers that keep answering from a gateway nobody supervises, holding the port a
restarted ``serve`` needs, and a writer nobody restarts. A parent-death signal (``prctl``)
fires when the *thread* that forked the child exits, which may be any of Granian's threads, so
each child instead checks its parent once a second, from a thread of its own that runs whatever
its event loop is doing (a worker may still be starting), asks itself to stop gracefully once
it has been reparented (again each second), and exits for good if that has not happened within
a grace period.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final

SUPERVISOR_PID_ENV: Final = "WALLETGATE_SUPERVISOR_PID"
ORPHAN_CHECK_INTERVAL_S: Final = 1.0
# A graceful stop (lifespan shutdown, the writer giving its shards back) takes a few seconds at
# most; an orphan still running after this exits without it.
ORPHAN_EXIT_GRACE_S: Final = 10.0

logger = logging.getLogger("walletgate")


def supervisor_pid() -> int | None:
    """The pid of the ``serve`` process that started this one, or ``None`` when there is none
    (a writer or an app started on its own, the tests)."""
    text = os.environ.get(SUPERVISOR_PID_ENV, "")
    return int(text) if text.isdigit() else None


def watch_supervisor(stop: Callable[[], Any]) -> threading.Thread | None:
    """Start the watch (a daemon thread) when a supervisor other than this process is named.

    ``stop`` is called from that thread once this process has been reparented: it must be
    thread-safe (a signal to this process, ``loop.call_soon_threadsafe``).
    """
    supervisor = supervisor_pid()
    if supervisor is None or supervisor == os.getpid():
        return None
    thread = threading.Thread(
        target=_watch, args=(supervisor, stop), name="walletgate-orphan-watch", daemon=True
    )
    thread.start()
    return thread


def _watch(supervisor: int, stop: Callable[[], Any]) -> None:
    # Polled: no event tells a process that its parent died (see the module's docstring).
    while os.getppid() == supervisor:
        time.sleep(ORPHAN_CHECK_INTERVAL_S)
    logger.warning("walletgate serve (pid %d) is gone; this process stops", supervisor)
    # Asked again each interval: a worker still starting may not handle SIGTERM yet (it keeps
    # the handler it was forked with, which only sets a flag in the dead parent's state).
    give_up_at = time.monotonic() + ORPHAN_EXIT_GRACE_S
    while time.monotonic() < give_up_at:
        stop()
        time.sleep(ORPHAN_CHECK_INTERVAL_S)
    logger.error("still running %.0f s after serve was gone; exiting now", ORPHAN_EXIT_GRACE_S)
    os._exit(1)
