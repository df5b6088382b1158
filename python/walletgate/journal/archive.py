"""``walletgate journal archive``: compress the journal's closed segments in place.

The journal is the audit trail and the only source ``journal rebuild`` restores Redis from, so
walletgate never deletes a record from it; what grows without bound is disk (about 0.6 KB per
money operation). A closed segment, one no writer appends to again, compresses several times over
with gzip and stays readable by ``journal verify``, ``journal rebuild`` and plain ``zcat``.

A segment is archived in steps that leave the journal complete at every instant:

1. its lines are compressed into a temporary file, which is fsynced;
2. the temporary file is decompressed again and must hold exactly the segment's bytes (SHA-256);
3. it is renamed to ``segment-NNNNNNNNN.jsonl.gz`` and the directory is fsynced;
4. only then is the plain segment removed (and the directory fsynced again).

A crash between 3 and 4 leaves both files with the same records: readers take the plain one, and
the next run archives it again. Which segments are closed follows from how a writer recovers a
shard (:meth:`ShardFiles._recover <walletgate.journal.segments.ShardFiles>`): it appends to the
newest segment and reads the last batch back from the newest segment that holds a complete line,
so that segment and every newer one stay plain; every older one is closed. This holds while a
writer runs, so the command needs no pause of the gateway. Concurrent runs exclude each other
with a lock file.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from walletgate.journal.segments import (
    SEGMENT_PATTERN,
    SHARD_PATTERN,
    complete_end,
    fsync_directory,
    segment_name,
    segment_numbers,
)

ARCHIVE_SUFFIX = ".gz"
ARCHIVE_LOCK_FILE = ".archive.lock"
TEMPORARY_PREFIX = ".archiving-"
# gzip records the uncompressed size modulo 2**32 in its trailer, which readers use to size their
# partitions; a larger segment (only possible with segment_max_bytes above 4 GiB) stays plain.
MAX_ARCHIVED_SEGMENT_BYTES = (1 << 32) - 1
COPY_CHUNK_BYTES = 1 << 20
DEFAULT_COMPRESS_LEVEL = 6


class ArchiveError(RuntimeError):
    """A segment could not be archived; the plain segment is left as it was."""


class ArchiveBusy(RuntimeError):
    """Another ``journal archive`` holds the journal directory's archive lock."""


@dataclass(frozen=True, slots=True)
class ArchivedSegment:
    path: Path
    plain_bytes: int
    archived_bytes: int


def archive_name(number: int) -> str:
    return segment_name(number) + ARCHIVE_SUFFIX


def archived_size(path: Path) -> int:
    """The uncompressed size of an archived segment, from gzip's trailer (ISIZE)."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def shard_directories(directory: Path) -> list[Path]:
    """The shard directories of a journal directory, in shard order."""
    shards = []
    for entry in os.scandir(directory):
        match = SHARD_PATTERN.match(entry.name)
        if match and entry.is_dir():
            shards.append((int(match.group(1)), Path(entry.path)))
    return [path for _, path in sorted(shards)]


def closed_segments(shard_directory: Path) -> list[int]:
    """The plain segments no writer appends to or recovers from again, oldest first: those older
    than the newest segment holding a complete line."""
    numbers = segment_numbers(shard_directory)
    for position in range(len(numbers) - 1, -1, -1):
        path = shard_directory / segment_name(numbers[position])
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            holds_a_line = complete_end(descriptor, os.fstat(descriptor).st_size) > 0
        finally:
            os.close(descriptor)
        if holds_a_line:
            return numbers[:position]
    return []


@contextmanager
def archive_lock(directory: Path) -> Iterator[None]:
    descriptor = os.open(
        directory / ARCHIVE_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
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
    # Readable by the same users as the segments themselves (the writer creates them 0640).
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    with open(source, "rb") as plain, open(descriptor, "wb") as raw:
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
    with gzip.open(path, "rb") as compressed:
        while chunk := compressed.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def archive_segment(shard_directory: Path, number: int, level: int) -> ArchivedSegment:
    """Compress one closed segment and remove the plain file (steps 1 to 4 above)."""
    plain_path = shard_directory / segment_name(number)
    archive_path = shard_directory / archive_name(number)
    plain_bytes = plain_path.stat().st_size
    if plain_bytes > MAX_ARCHIVED_SEGMENT_BYTES:
        raise ArchiveError(f"{plain_path} is larger than 4 GiB; it stays plain")
    temporary = shard_directory / f"{TEMPORARY_PREFIX}{number:09d}.{secrets.token_hex(4)}"
    try:
        expected = _compress(plain_path, temporary, level)
        if plain_path.stat().st_size != plain_bytes:
            raise ArchiveError(f"{plain_path} changed while it was archived; is it closed?")
        if _digest_of_archive(temporary) != expected:
            raise ArchiveError(f"{temporary} does not decompress to {plain_path}")
        os.replace(temporary, archive_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(shard_directory)
    plain_path.unlink()
    fsync_directory(shard_directory)
    return ArchivedSegment(archive_path, plain_bytes, archive_path.stat().st_size)


def remove_leftovers(shard_directory: Path) -> None:
    """Temporary files of a run that crashed before its rename hold nothing else's data."""
    for entry in os.scandir(shard_directory):
        if entry.name.startswith(TEMPORARY_PREFIX):
            os.unlink(entry.path)


def archive_journal(
    directory: Path,
    *,
    level: int = DEFAULT_COMPRESS_LEVEL,
    min_age_s: float = 0.0,
    on_segment: Callable[[ArchivedSegment], None] | None = None,
) -> list[ArchivedSegment]:
    """Archive every closed segment of every shard whose last change is at least ``min_age_s``
    old. Raises :class:`ArchiveBusy`, :class:`ArchiveError` or ``OSError``; the segments archived
    before an error stay archived."""
    assert 1 <= level <= 9, level
    assert min_age_s >= 0, min_age_s
    if not directory.is_dir():
        raise FileNotFoundError(f"journal directory {directory} does not exist")
    archived: list[ArchivedSegment] = []
    with archive_lock(directory):
        newest_change_s = time.time() - min_age_s
        for shard_directory in shard_directories(directory):
            remove_leftovers(shard_directory)
            for number in closed_segments(shard_directory):
                path = shard_directory / segment_name(number)
                if path.stat().st_mtime > newest_change_s:
                    continue
                segment = archive_segment(shard_directory, number, level)
                archived.append(segment)
                if on_segment is not None:
                    on_segment(segment)
    return archived


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIX)


def readable_segments(shard_directory: Path) -> list[Path]:
    """A shard's segments in order, plain or archived; where both exist (an archive run that
    stopped between its rename and the removal), the plain one."""
    by_number: dict[int, Path] = {}
    for entry in os.scandir(shard_directory):
        name = entry.name
        plain_name = name[: -len(ARCHIVE_SUFFIX)] if name.endswith(ARCHIVE_SUFFIX) else name
        match = SEGMENT_PATTERN.match(plain_name)
        if match is None:
            continue
        number = int(match.group(1))
        if name == plain_name or number not in by_number:
            by_number[number] = Path(entry.path)
    return [by_number[number] for number in sorted(by_number)]


def _archived_twin(path: Path) -> Path:
    return path.with_name(path.name + ARCHIVE_SUFFIX)


def segment_bytes(path: Path) -> int:
    """A segment's uncompressed size, plain or archived (also when a concurrent archive run
    compressed it since it was listed)."""
    if is_archive(path):
        return archived_size(path)
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return archived_size(_archived_twin(path))


def open_segment(path: Path) -> io.BufferedIOBase:
    """A segment's bytes for reading, plain or archived (also when a concurrent archive run
    compressed it since it was listed)."""
    if is_archive(path):
        return gzip.open(path, "rb")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return gzip.open(_archived_twin(path), "rb")
