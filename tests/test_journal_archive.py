"""``walletgate journal archive``: closed segments compressed in place, the journal still whole."""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from test_journal_replay import assert_same_state, populate, rebuild, snapshot, verify
from test_journal_writer import (
    assert_each_record_once,
    disk_records,
    journal_config,
    plan_operations,
    write_config_file,
)
from walletgate.config import Config
from walletgate.journal import archive, replay
from walletgate.journal.archive import (
    ARCHIVE_LOCK_FILE,
    ArchiveBusy,
    ArchiveError,
    archive_journal,
    closed_segments,
    shard_directories,
)
from walletgate.journal.segments import segment_name, segment_numbers

SMALL_SEGMENT_BYTES = 8192


def small_segment_journal(redis_url: str, tmp_path: Path, operations: int, seed: int) -> Config:
    """A journal of several segments per shard: each populate() ends with a writer draining
    Redis in a batch or more, and a batch larger than a segment's bound rotates the next one."""
    config = journal_config(
        redis_url, tmp_path / "journal", buckets=2, segment_max_bytes=SMALL_SEGMENT_BYTES
    )
    rounds = 5
    for index in range(rounds):
        populate(config, plan_operations(operations // rounds, seed=seed * 100 + index, players=20))
    return config


def plain_and_archived(directory: Path) -> tuple[list[Path], list[Path]]:
    plain, archived = [], []
    for shard_directory in shard_directories(directory):
        for path in sorted(shard_directory.iterdir()):
            if path.name.endswith(".jsonl"):
                plain.append(path)
            elif path.name.endswith(".jsonl.gz"):
                archived.append(path)
    return plain, archived


def applied_records(config: Config) -> int:
    return len(disk_records(config.journal.dir))


def test_archive_compresses_closed_segments_and_replay_reads_them(
    redis_url: str, tmp_path: Path
) -> None:
    config = small_segment_journal(redis_url, tmp_path, 600, seed=31)
    directory = config.journal.dir
    records_before = disk_records(directory)
    plain_before, _ = plain_and_archived(directory)
    closed = {shard: closed_segments(shard) for shard in shard_directories(directory)}
    numbers_before = {shard: segment_numbers(shard) for shard in closed}
    assert sum(len(numbers) for numbers in closed.values()) >= 4, "the test needs closed segments"

    archived = archive_journal(directory)

    plain_after, archived_paths = plain_and_archived(directory)
    assert sorted(segment.path for segment in archived) == archived_paths
    # Each shard keeps exactly its newest segments plain: the one the writer recovers from.
    for shard, numbers in closed.items():
        assert segment_numbers(shard) == numbers_before[shard][len(numbers) :]
        assert segment_numbers(shard), "the newest segment stays plain"
        for number in numbers:
            assert (shard / f"{segment_name(number)}.gz").exists()
    assert len(plain_after) + len(archived_paths) == len(plain_before)
    for segment in archived:
        assert segment.archived_bytes * 3 < segment.plain_bytes, segment
        assert segment.path.stat().st_mode & 0o027 == 0, "no more access than the segments"
    # The archives hold exactly the lines that were there, in the same order; zcat reads them.
    assert disk_records(directory) == records_before
    with gzip.open(archived_paths[0], "rb") as handle:
        assert handle.readline().startswith(b'{"ts":')
    assert verify(config) == (0, [])

    # Rebuild restores the same state from archived and plain segments together.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for name in client.scan_iter(match="wg:{journal-*"):
        client.delete(name)
    before = snapshot(redis_url)
    client.flushall()
    client.close()
    assert rebuild(config)[:2] == (0, [])
    assert_same_state(before, snapshot(redis_url))
    # Nothing more is closed, so a second run archives nothing.
    assert archive_journal(directory) == []


def test_the_writer_goes_on_after_an_archive(redis_url: str, tmp_path: Path) -> None:
    config = small_segment_journal(redis_url, tmp_path, 300, seed=32)
    assert archive_journal(config.journal.dir)
    # The writer of this populate() recovers every shard from its plain tail.
    populate(config, plan_operations(300, seed=33, players=20))
    records = disk_records(config.journal.dir)
    assert_each_record_once(records, len(records))
    assert verify(config) == (0, [])
    # Segment numbers went on from the newest plain segment: no archive was overwritten.
    assert archive_journal(config.journal.dir)
    assert disk_records(config.journal.dir) == records


def test_an_empty_newer_segment_keeps_the_last_batch_plain(redis_url: str, tmp_path: Path) -> None:
    config = small_segment_journal(redis_url, tmp_path, 200, seed=34)
    shard = shard_directories(config.journal.dir)[0]
    numbers = segment_numbers(shard)
    # A writer that rotated and died before its first write leaves an empty newest segment.
    (shard / segment_name(numbers[-1] + 1)).touch()
    assert closed_segments(shard) == numbers[:-1]
    archive_journal(config.journal.dir)
    assert segment_numbers(shard) == [numbers[-1], numbers[-1] + 1]


def test_an_interrupted_archive_is_read_once_and_finished_later(
    redis_url: str, tmp_path: Path
) -> None:
    config = small_segment_journal(redis_url, tmp_path, 300, seed=35)
    directory = config.journal.dir
    records = disk_records(directory)
    shard = shard_directories(directory)[0]
    number = closed_segments(shard)[0]
    plain = shard / segment_name(number)
    saved = tmp_path / "saved-segment"
    shutil.copyfile(plain, saved)
    archive.archive_segment(shard, number, 6)
    # As if the run stopped after its rename, before removing the plain segment, and another
    # stopped before its rename.
    shutil.copyfile(saved, plain)
    (shard / f"{archive.TEMPORARY_PREFIX}{number + 1:09d}.dead").write_bytes(b"\x1f\x8b")
    assert plain in replay.segment_paths(directory)
    assert disk_records(directory) == records
    assert verify(config) == (0, [])
    archive_journal(directory)
    assert not plain.exists()
    assert not [path for path in shard.iterdir() if path.name.startswith(archive.TEMPORARY_PREFIX)]
    assert disk_records(directory) == records


def test_a_failed_check_leaves_the_segment_plain(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small_segment_journal(redis_url, tmp_path, 200, seed=36)
    shard = shard_directories(config.journal.dir)[0]
    number = closed_segments(shard)[0]
    before = sorted(path.name for path in shard.iterdir())
    monkeypatch.setattr(archive, "_digest_of_archive", lambda path: "0" * 64)
    with pytest.raises(ArchiveError, match="does not decompress"):
        archive_journal(config.journal.dir)
    assert sorted(path.name for path in shard.iterdir()) == before
    assert (shard / segment_name(number)).exists()


def test_one_archive_run_at_a_time_and_the_age_filter(redis_url: str, tmp_path: Path) -> None:
    config = small_segment_journal(redis_url, tmp_path, 200, seed=37)
    directory = config.journal.dir
    descriptor = os.open(directory / ARCHIVE_LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ArchiveBusy):
            archive_journal(directory)
    finally:
        os.close(descriptor)
    assert archive_journal(directory, min_age_s=3600) == []
    assert archive_journal(directory, min_age_s=0)


def test_archive_command(redis_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    config_path = write_config_file(
        tmp_path / "walletgate.toml",
        redis_url,
        directory,
        buckets=2,
        segment_max_bytes=SMALL_SEGMENT_BYTES,
    )
    small_segment_journal(redis_url, tmp_path, 300, seed=38)

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "walletgate.cli", "journal", *arguments],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    archived = run("archive", "--config", str(config_path), "--level", "9")
    assert archived.returncode == 0, archived.stderr
    summary = archived.stdout.splitlines()[-1]
    assert summary.startswith("journal archive: ") and "closed segment(s)" in summary
    assert int(summary.split()[2]) == len(plain_and_archived(directory)[1]) > 0
    assert run("verify", "--config", str(config_path)).returncode == 0
    assert run("archive", "--config", str(config_path), "--level", "0").returncode == 2
    assert run("archive", "--config", str(config_path), "--min-age-s", "-1").returncode == 2
    missing = run("archive", "--config", str(tmp_path / "missing.toml"))
    assert missing.returncode == 2 and "journal archive" in missing.stderr
