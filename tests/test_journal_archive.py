"""``walletgate journal archive``: closed segments compressed in place, the journal still whole."""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_journal_replay import assert_rebuild_restores, populate, verify
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
    archive_journal,
    closed_segments,
)
from walletgate.journal.commands import archive_command
from walletgate.journal.segments import (
    ShardFiles,
    open_segment,
    segment_bytes,
    segment_name,
    segment_numbers,
    shard_directories,
)

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

    segment_mode = (shard_directories(directory)[0] / segment_name(1)).stat().st_mode
    archived = archive_journal(directory).archived

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
        assert segment.path.stat().st_mode == segment_mode, "the segment's own mode"
    # The archives hold exactly the lines that were there, in the same order; zcat reads them.
    assert disk_records(directory) == records_before
    with gzip.open(archived_paths[0], "rb") as handle:
        assert handle.readline().startswith(b'{"ts":')
    assert verify(config) == (0, [])

    # Rebuild restores the same state from archived and plain segments together.
    assert_rebuild_restores(config)
    # Nothing more is closed, so a second run archives nothing.
    assert archive_journal(directory).archived == []


def test_the_writer_goes_on_after_an_archive(redis_url: str, tmp_path: Path) -> None:
    config = small_segment_journal(redis_url, tmp_path, 300, seed=32)
    assert archive_journal(config.journal.dir).archived
    # The writer of this populate() recovers every shard from its plain tail.
    populate(config, plan_operations(300, seed=33, players=20))
    records = disk_records(config.journal.dir)
    assert_each_record_once(records, len(records))
    assert verify(config) == (0, [])
    # Segment numbers went on from the newest plain segment: no archive was overwritten.
    assert archive_journal(config.journal.dir).archived
    assert disk_records(config.journal.dir) == records


def test_an_empty_newer_segment_keeps_the_last_batch_plain(redis_url: str, tmp_path: Path) -> None:
    config = small_segment_journal(redis_url, tmp_path, 200, seed=34)
    shard = shard_directories(config.journal.dir)[0]
    numbers = segment_numbers(shard)
    # A writer that rotated and died before its first write leaves an empty newest segment.
    (shard / segment_name(numbers[-1] + 1)).touch()
    # Or one that holds only the start of a line, cut short by a crash.
    (shard / segment_name(numbers[-1] + 2)).write_bytes(b'{"ts":"2026-')
    # The newest segment holding a line stays plain, and so does the one before it, whose lines
    # are the last ones sure to be on disk should the newest one's fsync fail.
    assert closed_segments(shard) == numbers[:-2]
    archive_journal(config.journal.dir)
    assert segment_numbers(shard) == [*numbers[-2:], numbers[-1] + 1, numbers[-1] + 2]


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
    report = archive_journal(config.journal.dir)
    assert report.archived == [] and report.failed
    assert all("does not decompress" in reason for _, reason in report.failed)
    assert (shard / segment_name(number), report.failed[0][1]) in report.failed
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
    assert archive_journal(directory, min_age_s=3600).archived == []
    assert archive_journal(directory, min_age_s=0).archived


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


def test_an_oversized_segment_stays_plain_and_the_run_goes_on(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = small_segment_journal(redis_url, tmp_path, 300, seed=39)
    directory = config.journal.dir
    closed = [
        shard / segment_name(number)
        for shard in shard_directories(directory)
        for number in closed_segments(shard)
    ]
    sizes = sorted(path.stat().st_size for path in closed)
    limit = sizes[len(sizes) // 2]
    assert sizes[0] <= limit < sizes[-1], "the test needs segments on both sides of the limit"
    monkeypatch.setattr(archive, "MAX_ARCHIVED_SEGMENT_BYTES", limit)
    config_path = write_config_file(
        tmp_path / "walletgate.toml",
        redis_url,
        directory,
        buckets=2,
        segment_max_bytes=SMALL_SEGMENT_BYTES,
    )
    assert archive_command(str(config_path), level=6, min_age_s=0) == 2
    err = capsys.readouterr().err
    left_plain = [path for path in closed if path.exists()]
    assert left_plain and all(path.stat().st_size > limit for path in left_plain)
    for path in left_plain:
        assert f"journal archive: {path} stays plain" in err
    assert len(left_plain) < len(closed), "the smaller segments were archived all the same"
    assert verify(config) == (0, [])


def test_a_missing_segment_is_listed_again_then_reported(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small_segment_journal(redis_url, tmp_path, 300, seed=40)
    directory = config.journal.dir
    archive_journal(directory)
    complete = replay.segment_paths(directory)
    shard = shard_directories(directory)[0]
    # A listing taken while an archive replaces a segment may show neither of its names.
    real_listing = replay.readable_segments
    calls = 0

    def racing_listing(shard_directory: Path) -> dict[int, Path]:
        nonlocal calls
        calls += 1
        found = real_listing(shard_directory)
        if calls == 1:
            del found[min(found) + 1]
        return found

    monkeypatch.setattr(replay, "readable_segments", racing_listing)
    problems = replay.Problems()
    assert replay.segment_paths(directory, problems) == complete
    assert problems.messages == []
    monkeypatch.setattr(replay, "readable_segments", real_listing)
    # A segment that is really gone is reported: its records cannot be replayed.
    gone = replay.readable_segments(shard)[2]
    gone.rename(tmp_path / gone.name)
    code, lines = verify(config)
    assert code == 1
    assert f"{shard}: segment 2 is missing (neither plain nor archived)" in lines


def test_a_damaged_archive_fails_verify_with_2(redis_url: str, tmp_path: Path) -> None:
    config = small_segment_journal(redis_url, tmp_path, 200, seed=41)
    archived = archive_journal(config.journal.dir).archived[0].path
    data = archived.read_bytes()
    archived.write_bytes(data[: len(data) // 2])
    out, err = io.StringIO(), io.StringIO()
    code = asyncio.run(replay.verify(config, out=out, err=err))
    assert code == 2
    assert f"{archived} does not decompress" in err.getvalue()
    assert "Traceback" not in err.getvalue() + out.getvalue()


def test_a_segment_archived_after_it_was_listed_is_still_read(
    redis_url: str, tmp_path: Path
) -> None:
    config = small_segment_journal(redis_url, tmp_path, 200, seed=42)
    shard = shard_directories(config.journal.dir)[0]
    number = closed_segments(shard)[0]
    listed = shard / segment_name(number)
    data = listed.read_bytes()
    archive_journal(config.journal.dir)
    assert not listed.exists()
    assert segment_bytes(listed) == len(data)
    with open_segment(listed) as handle:
        assert handle.read() == data


def test_the_writer_never_reuses_an_archived_number(redis_url: str, tmp_path: Path) -> None:
    config = small_segment_journal(redis_url, tmp_path, 200, seed=43)
    archive_journal(config.journal.dir)
    shard = shard_directories(config.journal.dir)[0]
    archived_numbers = sorted(
        int(path.name[8:17]) for path in shard.iterdir() if path.name.endswith(".jsonl.gz")
    )
    # A directory tidied by hand: every plain segment moved away, only archives left.
    for number in segment_numbers(shard):
        (shard / segment_name(number)).rename(tmp_path / segment_name(number))
    files = ShardFiles(shard, SMALL_SEGMENT_BYTES)
    files.open()
    try:
        files.append(b'{"batch":1}\n')
    finally:
        files.close()
    assert segment_numbers(shard) == [archived_numbers[-1] + 1]
