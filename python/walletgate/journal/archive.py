"""``walletgate journal archive``: compress the journal's closed segments in place.

The journal is the audit trail and the only source ``journal rebuild`` restores Redis from, so
walletgate never deletes a record from it; what grows without bound is disk (about 1.3 KB per
MINI.GAME bet). A closed segment, one no writer appends to or recovers from again, compresses
about ten times over with gzip and stays readable by ``journal verify``, ``journal rebuild`` and
plain ``zcat`` (:func:`walletgate.journal.segments.open_segment`).

A segment is archived in steps that leave the journal complete at every instant:

1. its lines are compressed into a temporary file, which is fsynced;
2. the temporary file is decompressed again and must hold exactly the segment's bytes (SHA-256);
3. it gets the segment's mode, owner and times, is renamed to ``segment-NNNNNNNNN.jsonl.gz``,
   and the directory is fsynced;
4. only then is the plain segment removed (and the directory fsynced again).

A crash between 3 and 4 leaves both files with the same records: readers take the plain one, and
the next run archives it again. A reader listing the directory while 3 and 4 happen may see
neither name; segment numbers have no gaps, so readers list again when one is missing
(:func:`walletgate.journal.replay.segment_paths`).

Which segments are closed follows from how a writer uses a shard
(:class:`~walletgate.journal.segments.ShardFiles`): it appends to the newest segment, rotates to
a new one only after the previous one's last batch was fsynced, and recovers the last batch from
the newest segment that holds a complete line. A newer segment's lines may still be in the page
cache only (a failed fsync cuts them back), so the newest segment holding a line, the one before
it and every newer one stay plain; every older one is closed, also while a writer runs, so the
command needs no pause of the gateway. Concurrent runs exclude each other with a lock file.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import secrets
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from walletgate.journal.segments import (
    archived_segment_name,
    complete_end,
    fsync_directory,
    segment_name,
    segment_numbers,
    shard_directories,
)

ARCHIVE_LOCK_FILE = ".archive.lock"
TEMPORARY_PREFIX = ".archiving-"
# gzip records the uncompressed size modulo 2**32 in its trailer, which readers use to size their
# partitions; a larger segment (only possible with segment_max_bytes above 4 GiB) stays plain.
MAX_ARCHIVED_SEGMENT_BYTES = (1 << 32) - 1
COPY_CHUNK_BYTES = 1 << 20
DEFAULT_COMPRESS_LEVEL = 6
# The newest segment holding a line and the one before it stay plain (see the module's doc).
PLAIN_SEGMENTS_KEPT = 2


class ArchiveError(RuntimeError):
    """One segment could not be archived; it is left plain, as it was."""


class ArchiveBusy(RuntimeError):
    """Another ``journal archive`` holds the journal directory's archive lock."""


@dataclass(frozen=True, slots=True)
class ArchivedSegment:
    path: Path
    plain_bytes: int
    archived_bytes: int


@dataclass(slots=True)
class ArchiveReport:
    archived: list[ArchivedSegment] = field(default_factory=list)
    # Segments left plain by an ArchiveError, with the reason.
    failed: list[tuple[Path, str]] = field(default_factory=list)


def closed_segments(shard_directory: Path) -> list[int]:
    """The plain segments no writer appends to or recovers from again, oldest first."""
    numbers = segment_numbers(shard_directory)
    for position in range(len(numbers) - 1, -1, -1):
        path = shard_directory / segment_name(numbers[position])
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            holds_a_line = complete_end(descriptor, os.fstat(descriptor).st_size) > 0
        finally:
            os.close(descriptor)
        if holds_a_line:
            return numbers[: max(0, position + 1 - PLAIN_SEGMENTS_KEPT)]
    return []


@contextmanager
def archive_lock(directory: Path) -> Iterator[None]:
    # flock needs no write access, so a run as another user than the first one still works.
    descriptor = os.open(
        directory / ARCHIVE_LOCK_FILE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o640
    )
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveBusy(f"another journal archive is running on {directory}") from None
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the flock


def _compress(source: Path, target: Path, level: int) -> str:
    """Write source compressed to target (fsynced); the SHA-256 of source's bytes."""
    digest = hashlib.sha256()
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(descriptor, "wb") as raw, open(source, "rb") as plain:
        # No file name and a fixed time in the header: an archive depends only on its records.
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0
        ) as compressed:
            while chunk := plain.read(COPY_CHUNK_BYTES):
                digest.update(chunk)
                compressed.write(chunk)
        raw.flush()
        os.fsync(raw.fileno())
    return digest.hexdigest()


def _digest_of_archive(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as compressed:
            while chunk := compressed.read(COPY_CHUNK_BYTES):
                digest.update(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ArchiveError(f"{path} does not decompress: {error}") from None
    return digest.hexdigest()


def archive_segment(shard_directory: Path, number: int, level: int) -> ArchivedSegment:
    """Compress one closed segment and remove the plain file (steps 1 to 4 above)."""
    plain_path = shard_directory / segment_name(number)
    archive_path = shard_directory / archived_segment_name(number)
    before = plain_path.stat()
    if before.st_size > MAX_ARCHIVED_SEGMENT_BYTES:
        raise ArchiveError(f"{plain_path} is larger than 4 GiB; it stays plain")
    temporary = shard_directory / f"{TEMPORARY_PREFIX}{number:09d}.{secrets.token_hex(4)}"
    try:
        expected = _compress(plain_path, temporary, level)
        after = plain_path.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise ArchiveError(f"{plain_path} changed while it was archived; is it closed?")
        if _digest_of_archive(temporary) != expected:
            raise ArchiveError(f"{temporary} does not decompress to {plain_path}")
        # Readable by the same users as the segment, and as old as it for age-based tools.
        if os.geteuid() == 0:
            os.chown(temporary, before.st_uid, before.st_gid)
        os.chmod(temporary, before.st_mode & 0o777)
        os.utime(temporary, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(temporary, archive_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(shard_directory)
    plain_path.unlink()
    fsync_directory(shard_directory)
    return ArchivedSegment(archive_path, before.st_size, archive_path.stat().st_size)


def remove_leftovers(shard_directory: Path) -> None:
    """Temporary files of a run that crashed before its rename hold nothing else's data."""
    for entry in os.scandir(shard_directory):
        if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)


def archive_journal(
    directory: Path,
    *,
    level: int = DEFAULT_COMPRESS_LEVEL,
    min_age_s: float = 0.0,
    on_segment: Callable[[ArchivedSegment], None] | None = None,
    on_failure: Callable[[Path, str], None] | None = None,
) -> ArchiveReport:
    """Archive every closed segment of every shard whose last change is at least ``min_age_s``
    old. A segment that cannot be archived (:class:`ArchiveError`) is reported and left plain,
    and the run goes on; :class:`ArchiveBusy` and ``OSError`` (a full disk, say) stop it, and
    the segments archived before stay archived."""
    if not 1 <= level <= 9:
        raise ValueError(f"gzip level {level} is not within 1..9")
    if min_age_s < 0:
        raise ValueError(f"min_age_s {min_age_s} is negative")
    if not directory.is_dir():
        raise FileNotFoundError(f"journal directory {directory} does not exist")
    report = ArchiveReport()
    with archive_lock(directory):
        cutoff_mtime_s = time.time() - min_age_s
        for shard_directory in shard_directories(directory):
            remove_leftovers(shard_directory)
            for number in closed_segments(shard_directory):
                path = shard_directory / segment_name(number)
                if path.stat().st_mtime > cutoff_mtime_s:
                    continue
                try:
                    segment = archive_segment(shard_directory, number, level)
                except ArchiveError as error:
                    report.failed.append((path, str(error)))
                    if on_failure is not None:
                        on_failure(path, str(error))
                    continue
                report.archived.append(segment)
                if on_segment is not None:
                    on_segment(segment)
    return report
