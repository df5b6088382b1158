"""The ``walletgate journal verify|rebuild|archive --config FILE`` commands (wired into cli.py).

Each loads the config, runs the replay and returns the process exit code: 0 success, 1
differences or journal problems (printed one per line on stdout), 2 error (on stderr).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from walletgate.config import Config, ConfigError, load_config
from walletgate.journal import replay
from walletgate.journal.archive import ArchiveBusy, ArchivedSegment, archive_journal


def _load(config_path: str, command: str) -> Config | None:
    try:
        # The journal is only read here, so a missing directory is reported, not created.
        return load_config(config_path, check_journal_dir=False)
    except ConfigError as error:
        print(f"journal {command}: {error}", file=sys.stderr)
        return None


def verify_command(config_path: str) -> int:
    """Recompute every account from the journal and compare it with Redis."""
    config = _load(config_path, "verify")
    if config is None:
        return 2
    code = asyncio.run(replay.verify(config))
    if code == 0:
        print("journal verify: the journal and redis agree")
    elif code == 1:
        print("journal verify: differences found (listed above)", file=sys.stderr)
    return code


def rebuild_command(config_path: str) -> int:
    """Restore an empty Redis (every primary at DBSIZE 0) from the journal."""
    config = _load(config_path, "rebuild")
    if config is None:
        return 2
    code = asyncio.run(replay.rebuild(config))
    if code == 0:
        print("journal rebuild: done; register sessions again (they are not journaled)")
    elif code == 1:
        print("journal rebuild: done, but the journal has problems (listed above)", file=sys.stderr)
    return code


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / (1 << 20):,.1f} MiB"


def archive_command(config_path: str, *, level: int, min_age_s: float) -> int:
    """Compress the closed segments of every shard in place (see walletgate.journal.archive).

    Exit 0 when every closed segment old enough was archived, 2 when one could not be (it is
    left plain and named on stderr) or the run stopped on an error.
    """
    config = _load(config_path, "archive")
    if config is None:
        return 2

    def archived(segment: ArchivedSegment) -> None:
        print(
            f"journal archive: {segment.path}: {_mib(segment.plain_bytes)} -> "
            f"{_mib(segment.archived_bytes)}",
            flush=True,
        )

    def failed(path: Path, reason: str) -> None:
        print(f"journal archive: {path} stays plain: {reason}", file=sys.stderr, flush=True)

    try:
        report = archive_journal(
            config.journal.dir,
            level=level,
            min_age_s=min_age_s,
            on_segment=archived,
            on_failure=failed,
        )
    except (ArchiveBusy, OSError) as error:
        print(f"journal archive: {error}", file=sys.stderr)
        return 2
    plain_bytes = sum(segment.plain_bytes for segment in report.archived)
    archived_bytes = sum(segment.archived_bytes for segment in report.archived)
    print(
        f"journal archive: {len(report.archived)} closed segment(s), {_mib(plain_bytes)} -> "
        f"{_mib(archived_bytes)}" + (f"; {len(report.failed)} left plain" if report.failed else "")
    )
    return 2 if report.failed else 0
