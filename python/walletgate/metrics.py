"""In-process metrics with Prometheus text output, aggregated across worker processes.

Each worker counts in plain dicts (a dict increment is the cheapest thing on the request path)
and every ``publish_interval_ms`` writes a snapshot file into a directory shared by the workers
of one host. ``/metrics`` sums the snapshots of every live worker, so any worker can answer.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import orjson

Labels = tuple[tuple[str, str], ...]
PREFIX = "walletgate_"
DURATION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SNAPSHOT_STALE_S = 30.0

HELP: dict[str, tuple[str, str]] = {
    "requests_total": ("counter", "Requests answered, by family, endpoint and result code."),
    "request_duration_seconds": ("histogram", "Time from request to response."),
    "idempotent_replays_total": ("counter", "Requests answered from a stored outcome."),
    "idempotency_conflicts_total": ("counter", "Keys reused with another fingerprint."),
    "idempotency_cross_player_total": ("counter", "Keys seen for two players by the journal."),
    "cancel_amount_mismatch_total": ("counter", "Cancels whose amount differs from the bet."),
    "tombstones_total": ("counter", "Cancels of unknown bets that wrote a tombstone."),
    "signature_failures_total": ("counter", "Requests with a missing or wrong signature."),
    "clock_skew_seconds": ("gauge", "Last observed request timestamp minus server time."),
    "minigame_award_anomalies_total": ("counter", "Award checks that failed (money credited)."),
    "minigame_type_replays_total": (
        "counter",
        "Replays that differed only in type and closed a round.",
    ),
    "minigame_positive_fees_total": (
        "counter",
        "Type 6 position fees sent with a positive sign (debited like negative ones).",
    ),
    "journal_pending_records": ("gauge", "Journal records in Redis not yet on disk."),
    "journal_oldest_pending_seconds": ("gauge", "Age of the oldest pending journal record."),
    "journal_flush_seconds": ("gauge", "Duration of the last journal flush."),
    "journal_disk_free_bytes": (
        "gauge",
        "Bytes free to unprivileged users on the journal directory's filesystem.",
    ),
    "journal_writer_restarts_total": (
        "counter",
        "Times the journal writer process of walletgate serve exited and was restarted.",
    ),
    "redis_errors_total": ("counter", "Requests that failed because Redis was unavailable."),
}
# Counters that every worker reports whole (the journal's, read from Redis): /metrics takes their
# maximum over the workers. Every other counter is the worker's own and is summed; gauges take
# the maximum.
WHOLE_COUNTERS = frozenset({"idempotency_cross_player_total", "journal_writer_restarts_total"})


class Metrics:
    """Counters, gauges and latency histograms of one worker process."""

    def __init__(self, snapshot_dir: Path | None = None) -> None:
        self.counters: dict[tuple[str, Labels], float] = defaultdict(float)
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], list[float]] = {}
        self.snapshot_dir = snapshot_dir
        self._snapshot_path = (
            snapshot_dir / f"worker-{os.getpid()}.json" if snapshot_dir is not None else None
        )

    def inc(self, name: str, labels: Labels = (), amount: float = 1) -> None:
        assert name in HELP, name
        self.counters[(name, labels)] += amount

    def set_gauge(self, name: str, labels: Labels, value: float) -> None:
        assert name in HELP, name
        self.gauges[(name, labels)] = value

    def observe(self, name: str, labels: Labels, seconds: float) -> None:
        """Record one latency: bucket counts, then the sum and the count."""
        key = (name, labels)
        row = self.histograms.get(key)
        if row is None:
            row = self.histograms[key] = [0.0] * (len(DURATION_BUCKETS_S) + 2)
        for index, bound in enumerate(DURATION_BUCKETS_S):
            if seconds <= bound:
                row[index] += 1
                break
        row[-2] += seconds
        row[-1] += 1

    def snapshot(self) -> dict[str, list[list[object]]]:
        return {
            "counters": [[n, _pairs(labels), v] for (n, labels), v in self.counters.items()],
            "gauges": [[n, _pairs(labels), v] for (n, labels), v in self.gauges.items()],
            "histograms": [
                [n, _pairs(labels), list(row)] for (n, labels), row in self.histograms.items()
            ],
        }

    def publish(self) -> None:
        """Write this worker's snapshot atomically (write, then rename)."""
        if self._snapshot_path is None:
            return
        temporary = self._snapshot_path.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(self.snapshot()))
        os.replace(temporary, self._snapshot_path)

    def remove_snapshot(self) -> None:
        if self._snapshot_path is not None:
            self._snapshot_path.unlink(missing_ok=True)

    def render(self) -> str:
        """Prometheus text for this host: every fresh worker snapshot summed (self included)."""
        snapshots = [self.snapshot()]
        if self.snapshot_dir is not None:
            self.publish()
            snapshots = list(_read_snapshots(self.snapshot_dir))
        return render_snapshots(snapshots)


def _read_snapshots(directory: Path) -> Iterable[dict[str, list[list[object]]]]:
    now = time.time()
    for path in sorted(directory.glob("worker-*.json")):
        try:
            if now - path.stat().st_mtime > SNAPSHOT_STALE_S:
                continue
            yield orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue


def _labels_text(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in items
    )
    return "{" + ",".join(escaped) + "}"


def render_snapshots(snapshots: Iterable[dict[str, list[list[object]]]]) -> str:
    counters: dict[tuple[str, Labels], float] = defaultdict(float)
    gauges: dict[tuple[str, Labels], float] = {}
    histograms: dict[tuple[str, Labels], list[float]] = {}
    for snapshot in snapshots:
        for name, labels, value in snapshot.get("counters", []):
            key = (str(name), _labels(labels))
            if name in WHOLE_COUNTERS:
                counters[key] = max(counters[key], float(value))  # type: ignore[arg-type]
            else:
                counters[key] += float(value)  # type: ignore[arg-type]
        for name, labels, value in snapshot.get("gauges", []):
            key = (str(name), _labels(labels))
            gauges[key] = max(gauges.get(key, float("-inf")), float(value))  # type: ignore[arg-type]
        for name, labels, row in snapshot.get("histograms", []):
            key = (str(name), _labels(labels))
            into = histograms.setdefault(key, [0.0] * (len(DURATION_BUCKETS_S) + 2))
            for index, value in enumerate(row):  # type: ignore[arg-type]
                into[index] += float(value)
    lines: list[str] = []
    by_name: dict[str, list[str]] = defaultdict(list)
    for (name, labels), value in sorted(counters.items()):
        by_name[name].append(f"{PREFIX}{name}{_labels_text(labels)} {_number(value)}")
    for (name, labels), value in sorted(gauges.items()):
        by_name[name].append(f"{PREFIX}{name}{_labels_text(labels)} {_number(value)}")
    for (name, labels), row in sorted(histograms.items()):
        cumulative = 0.0
        for index, bound in enumerate(DURATION_BUCKETS_S):
            cumulative += row[index]
            le = _labels_text(labels, ("le", repr(bound)))
            by_name[name].append(f"{PREFIX}{name}_bucket{le} {_number(cumulative)}")
        total = row[-1]
        by_name[name].append(
            f"{PREFIX}{name}_bucket{_labels_text(labels, ('le', '+Inf'))} {_number(total)}"
        )
        by_name[name].append(f"{PREFIX}{name}_sum{_labels_text(labels)} {row[-2]!r}")
        by_name[name].append(f"{PREFIX}{name}_count{_labels_text(labels)} {_number(total)}")
    for name in sorted(HELP):
        kind, text = HELP[name]
        lines.append(f"# HELP {PREFIX}{name} {text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.extend(by_name.get(name, []))
    return "\n".join(lines) + "\n"


def _pairs(labels: Labels) -> list[list[str]]:
    return [list(pair) for pair in labels]


def _labels(raw: object) -> Labels:
    assert isinstance(raw, list)
    return tuple((str(pair[0]), str(pair[1])) for pair in raw)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
