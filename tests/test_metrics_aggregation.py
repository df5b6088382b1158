"""/metrics over several workers: a worker's own counters add up, the journal's figures do not.

Every worker publishes a snapshot of its metrics, and /metrics renders all of them together
(``walletgate.metrics.render_snapshots``). Request counters are each worker's own and are summed.
The journal's pending records and reused-key counts describe the whole journal, which every
worker reads from Redis: summing them would multiply them by the number of workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from walletgate.health import record_journal_disk, record_journal_status
from walletgate.metrics import Metrics, render_snapshots


def worker_snapshot(requests: int, pending: int, reused: int) -> dict[str, list[list[object]]]:
    metrics = Metrics()
    metrics.inc("requests_total", (("family", "minigame"),), requests)
    status = SimpleNamespace(
        pending_records=pending,
        oldest_pending_age_s=0.25,
        last_flush_s=0.004,
        cross_player_all_writers_total={"admin": reused},
        writer_restarts_total=reused,
    )
    record_journal_status(metrics, status)
    return metrics.snapshot()


def sample(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(f"walletgate_{name}")]
    return float(line.rsplit(" ", 1)[1])


def test_own_counters_add_up_and_journal_figures_do_not() -> None:
    text = render_snapshots(
        [worker_snapshot(3, pending=7, reused=2), worker_snapshot(4, pending=7, reused=2)]
    )
    assert sample(text, "requests_total") == 7
    assert sample(text, "journal_pending_records") == 7
    assert sample(text, 'idempotency_cross_player_total{family="admin"}') == 2
    assert sample(text, "journal_writer_restarts_total") == 2
    assert sample(text, "journal_oldest_pending_seconds") == 0.25
    # A worker that read Redis a moment later may report a newer, higher count: it wins.
    text = render_snapshots(
        [worker_snapshot(1, pending=7, reused=2), worker_snapshot(1, pending=9, reused=3)]
    )
    assert sample(text, "journal_pending_records") == 9
    assert sample(text, 'idempotency_cross_player_total{family="admin"}') == 3


def test_the_journal_disk_free_bytes_are_reported(tmp_path: Path) -> None:
    metrics = Metrics()
    record_journal_disk(metrics, tmp_path)
    usage = os.statvfs(tmp_path)
    free_bytes = sample(render_snapshots([metrics.snapshot()]), "journal_disk_free_bytes")
    # Other processes write to the same filesystem meanwhile: equal to within a few MiB.
    assert abs(free_bytes - usage.f_bavail * usage.f_frsize) < 64 << 20
    assert free_bytes > 0
    # A directory that cannot be read leaves the gauge out rather than failing the scrape.
    empty = Metrics()
    record_journal_disk(empty, tmp_path / "missing")
    lines = render_snapshots([empty.snapshot()]).splitlines()
    assert not [line for line in lines if line.startswith("walletgate_journal_disk_free_bytes")]
