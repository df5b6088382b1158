"""This module keeps the journal's files: per shard, a lock and numbered JSON Lines segments.

It records the journal directory's layout, takes a shard's ``flock``, appends and fsyncs a batch,
rotates segments, and recovers a shard's tail (a torn last line, the last batch) when a writer
takes the shard. The writer calls all of it from its file thread. It also lists and opens a
shard's segments for the readers, plain or archived (gzipped by ``journal archive``, see
:mod:`walletgate.journal.archive`).
"""

from __future__ import annotations

import fcntl
import gzip
import io
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from walletgate.journal.records import RecordMeta, StreamEntry, encode_batch

logger = logging.getLogger("walletgate.journal")

LAYOUT_FILE = "layout.json"
LAYOUT_FORMAT = 1
LOCK_FILE = ".lock"
SEGMENT_PATTERN = re.compile(r"^segment-(\d{9})\.jsonl\Z")
ARCHIVE_SUFFIX = ".gz"
ARCHIVED_SEGMENT_PATTERN = re.compile(r"^segment-(\d{9})\.jsonl\.gz\Z")
SHARD_PATTERN = re.compile(r"^shard-(\d{2,})\Z")
TAIL_READ_CHUNK_BYTES = 1 << 16
# The end of every journal line (records.encode_batch writes these keys last): what survives of
# a line whose first pages a power loss turned into zeros still names its record and batch.
LINE_TAIL_PATTERN = re.compile(rb'"sid":"([0-9]+-[0-9]+)","bucket":([0-9]+),"batch":([0-9]+)}\Z')


class JournalLayoutError(RuntimeError):
    """The journal directory was written with other shards, buckets or cluster settings."""


class JournalCorrupt(RuntimeError):
    """A complete line at the tail of a segment is not a journal record."""


class ShardBusy(RuntimeError):
    """Another writer holds the shard's file lock."""


class LostPages(Exception):
    """The newest segment's last batch holds a hole of zeros that a power loss left.

    Raised by :meth:`ShardFiles.open` with the shard still locked. Cutting is safe only if that
    batch was never finished, that is if the stream entries of its complete lines (``entries``,
    as ``(bucket, stream id)``) are all still pending in Redis; the writer checks, then calls
    :meth:`ShardFiles.cut_lost_pages` or :meth:`ShardFiles.close`.
    """

    def __init__(self, path: Path, offset: int, entries: list[tuple[int, str]]) -> None:
        super().__init__(f"{path}: a hole of zeros at byte {offset}, in its last batch")
        self.path = path
        self.offset = offset
        self.entries = entries


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def segment_name(number: int) -> str:
    return f"segment-{number:09d}.jsonl"


def shard_directory_name(shard: int) -> str:
    return f"shard-{shard:02d}"


def archived_segment_name(number: int) -> str:
    return segment_name(number) + ARCHIVE_SUFFIX


def _numbers(directory: Path, pattern: re.Pattern[str]) -> list[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = (pattern.match(name) for name in names)
    return sorted(int(match.group(1)) for match in found if match)


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of a shard's plain segments, in order."""
    return _numbers(directory, SEGMENT_PATTERN)


def archived_segment_numbers(directory: Path) -> list[int]:
    """The numbers of a shard's archived (gzipped) segments, in order."""
    return _numbers(directory, ARCHIVED_SEGMENT_PATTERN)


def shard_directories(directory: Path) -> list[Path]:
    """The shard directories of a journal directory, in shard order."""
    shards = []
    for entry in os.scandir(directory):
        match = SHARD_PATTERN.match(entry.name)
        if match and entry.is_dir():
            shards.append((int(match.group(1)), Path(entry.path)))
    return [path for _, path in sorted(shards)]


def readable_segments(shard_directory: Path) -> dict[int, Path]:
    """A shard's segments by number, plain or archived; where both exist (an archive run that
    stopped between its rename and the removal of the plain file), the plain one."""
    by_number: dict[int, Path] = {}
    for entry in os.scandir(shard_directory):
        match = SEGMENT_PATTERN.match(entry.name)
        if match is not None:
            by_number[int(match.group(1))] = Path(entry.path)
            continue
        match = ARCHIVED_SEGMENT_PATTERN.match(entry.name)
        if match is not None:
            by_number.setdefault(int(match.group(1)), Path(entry.path))
    return by_number


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIX)


def _archived_twin(path: Path) -> Path:
    return path.with_name(path.name + ARCHIVE_SUFFIX)


def archived_plain_bytes(path: Path) -> int:
    """The uncompressed size of an archived segment, from gzip's trailer (ISIZE, the size modulo
    2**32: ``journal archive`` leaves larger segments plain)."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def segment_bytes(path: Path) -> int:
    """A segment's uncompressed size, plain or archived (also when an archive run compressed it
    since it was listed)."""
    if is_archive(path):
        return archived_plain_bytes(path)
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return archived_plain_bytes(_archived_twin(path))


def open_segment(path: Path) -> io.BufferedIOBase:
    """A segment's bytes for reading, plain or archived (also when an archive run compressed it
    since it was listed)."""
    if is_archive(path):
        return gzip.open(path, "rb")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return gzip.open(_archived_twin(path), "rb")


def lines_backward(descriptor: int, end: int) -> Iterator[tuple[int, bytes]]:
    """The complete lines of ``[0, end)`` from last to first, each with the offset where it
    starts; ``end`` must follow a newline."""
    position = end
    remainder = b""
    while position > 0:
        size = min(TAIL_READ_CHUNK_BYTES, position)
        position -= size
        block = os.pread(descriptor, size, position) + remainder
        parts = block.split(b"\n")
        remainder = parts[0]
        cursor = position + len(block)
        for line in reversed(parts[1:]):
            start = cursor - len(line)
            if line:
                yield start, line
            cursor = start - 1  # the newline before the line
    if remainder:
        yield 0, remainder


def find_lost_pages(path: Path, descriptor: int, end: int) -> LostPages | None:
    """A hole that a power loss may have left in the last batch of ``[0, end)``, or None.

    A filesystem may keep a file's new size but not all of the data written before a power
    loss, and read the pages it lost back as zeros. A journal line never holds a NUL byte (JSON
    escapes control characters), so a line holding one is such a hole. The candidate cut is the
    start of the earliest hole among the lines of the newest batch (the batch of the last
    complete line, or of the lines just before the hole when none follows it); its complete
    lines are returned for the writer to check against Redis. A hole followed by a line of an
    older batch is damage to fsynced data, which is never cut: the readers report it.

    When the newest line is itself in the hole (a batch of one line, or the hole at its end),
    the bytes after its zeros still name its batch and record (LINE_TAIL_PATTERN): that batch
    is the newest, and that record is checked against Redis with the batch's other lines. Once
    a batch of one line that began in the block it shared with the batch before lost that
    block, the lines before the hole were taken for the newest batch: those were finished, so
    the hole was never cut and the shard never drained again.
    """
    newest_batch: int | None = None
    earliest_hole: int | None = None
    entries: list[tuple[int, str]] = []
    for offset, line in lines_backward(descriptor, end):
        if b"\0" in line:
            earliest_hole = offset
            if newest_batch is None:
                tail = LINE_TAIL_PATTERN.search(line, line.rfind(b"\0") + 1)
                if tail is not None:
                    newest_batch = int(tail.group(3))
                    entries.append((int(tail.group(2)), tail.group(1).decode("ascii")))
            continue
        record = _record_or_none(line)
        batch = record.get("batch") if record is not None else None
        if record is None or not isinstance(batch, int):
            # Not a lost page: the caller reports the unreadable line.
            return None
        if newest_batch is None:
            newest_batch = batch
        if batch < newest_batch:
            # An older batch, fsynced before the newest was written: no hole is before it.
            break
        if batch > newest_batch:
            return None
        bucket, sid = record.get("bucket"), record.get("sid")
        if not isinstance(bucket, int) or not isinstance(sid, str):
            return None
        entries.append((bucket, sid))
    if earliest_hole is None:
        return None
    return LostPages(path, earliest_hole, entries)


def _record_or_none(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def complete_end(descriptor: int, size: int) -> int:
    """The offset just after the last newline (0 when there is none)."""
    position = size
    while position > 0:
        length = min(TAIL_READ_CHUNK_BYTES, position)
        position -= length
        block = os.pread(descriptor, length, position)
        index = block.rfind(b"\n")
        if index >= 0:
            return position + index + 1
    return 0


class ShardFiles:
    """One shard's lock and open segment. Every method runs in the writer's file thread."""

    def __init__(self, directory: Path, segment_max_bytes: int) -> None:
        self.directory = directory
        self.segment_max_bytes = segment_max_bytes
        self.lock_descriptor: int | None = None
        self.segment_descriptor: int | None = None
        self.segment_number = 0
        self.segment_size = 0

    def open(self) -> tuple[list[dict[str, Any]], int]:
        """Lock the shard and recover its tail: returns the last batch's records and its number.

        Raises :class:`ShardBusy` when another writer holds the lock.
        """
        created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_directory(self.directory.parent)
        descriptor = os.open(
            self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ShardBusy(str(self.directory)) from None
        self.lock_descriptor = descriptor
        try:
            fsync_directory(self.directory)
            return self._recover()
        except LostPages:
            raise  # still locked: the writer decides (see LostPages)
        except BaseException:
            self.close()
            raise

    def cut_lost_pages(self, lost: LostPages) -> tuple[list[dict[str, Any]], int]:
        """Move the bytes from ``lost.offset`` on aside, then recover the shard's tail again;
        for the writer, once it has seen that the hole's batch was never finished."""
        try:
            descriptor = os.open(lost.path, os.O_RDWR | os.O_CLOEXEC)
            try:
                self._move_aside(lost.path, descriptor, lost.offset, os.fstat(descriptor).st_size)
            finally:
                os.close(descriptor)
            return self._recover()
        except BaseException:
            # A second hole (or any failure) gives the shard up; the next take starts over.
            self.close()
            raise

    def _recover(self) -> tuple[list[dict[str, Any]], int]:
        numbers = segment_numbers(self.directory)
        last_records: list[dict[str, Any]] = []
        last_batch = 0
        for number in reversed(numbers):
            # Only the newest segment can hold an unfinished batch: a segment is closed when
            # the next batch is written, which happens only after the one before was finished.
            records, batch = self._recover_segment(
                self.directory / segment_name(number), newest=number == numbers[-1]
            )
            if batch is not None:
                last_records, last_batch = records, batch
                break
        newest_archived = max(archived_segment_numbers(self.directory), default=0)
        if numbers and numbers[-1] > newest_archived:
            newest = numbers[-1]
            path = self.directory / segment_name(newest)
            self.segment_descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self.segment_number = newest
            self.segment_size = os.fstat(self.segment_descriptor).st_size
        elif newest_archived:
            # `journal archive` always leaves the newest segments plain, so this is a directory
            # someone tidied by hand: never reuse an archived number (readers would take the
            # plain file of that number and skip the archive); the next append starts a new one.
            logger.warning(
                "journal: %s holds no plain segment after %s; starting a new one",
                self.directory,
                archived_segment_name(newest_archived),
            )
            self.segment_number = newest_archived
        return last_records, last_batch

    def _recover_segment(
        self, path: Path, *, newest: bool
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Truncate a torn last line, then read back the lines of the segment's last batch.
        Raises :class:`LostPages` when the newest segment's last batch holds a hole."""
        descriptor = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(descriptor).st_size
            end = complete_end(descriptor, size)
            if newest:
                lost = find_lost_pages(path, descriptor, end)
                if lost is not None:
                    raise lost
            if end < size:
                # The bytes after the last newline are a record cut short by a crash (or zeros
                # left by a power loss). Its stream entry was never deleted, so it is written
                # again from Redis.
                logger.warning(
                    "journal: truncating %d torn bytes at the end of %s", size - end, path
                )
                os.ftruncate(descriptor, end)
                os.fsync(descriptor)
            if end:
                # The lines may have reached only the page cache of a writer that died before
                # its fsync; they must be durable before their stream entries are deleted.
                os.fsync(descriptor)
            batch: int | None = None
            records: list[dict[str, Any]] = []
            for _, line in lines_backward(descriptor, end):
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise JournalCorrupt(f"{path}: an unreadable line near the end") from None
                if not isinstance(record, dict) or not isinstance(record.get("batch"), int):
                    raise JournalCorrupt(f"{path}: a line near the end has no batch number")
                if batch is None:
                    batch = record["batch"]
                elif record["batch"] != batch:
                    break
                records.append(record)
            records.reverse()
            return records, batch
        finally:
            os.close(descriptor)

    def _move_aside(self, path: Path, descriptor: int, start: int, size: int) -> None:
        """Copy ``[start, size)`` of the segment to a ``.lost-pages`` file, make the copy
        durable, then cut the segment at ``start``."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.lost-pages-{stamp}-{secrets.token_hex(4)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        aside_descriptor = os.open(aside, flags, 0o640)
        try:
            position = start
            while position < size:
                block = os.pread(descriptor, min(TAIL_READ_CHUNK_BYTES, size - position), position)
                if not block:
                    break
                view = memoryview(block)
                while view:
                    view = view[os.write(aside_descriptor, view) :]
                position += len(block)
            os.fsync(aside_descriptor)
        finally:
            os.close(aside_descriptor)
        fsync_directory(self.directory)
        os.ftruncate(descriptor, start)
        os.fsync(descriptor)
        logger.warning(
            "journal: %s lost pages in its last, unsynced batch; moved its last %d bytes to %s "
            "and will write that batch again from Redis",
            path,
            size - start,
            aside.name,
        )

    def append(self, data: bytes) -> float:
        """Append whole lines and fsync; returns the seconds the write and fsync took.

        A batch never spans two segments: rotation happens only before a batch, which keeps the
        last batch in one file for recovery (a segment exceeds the bound by at most one batch).
        On any error the segment is cut back to its previous size and the error is raised.
        """
        started = time.perf_counter()
        if self.segment_descriptor is None or self.segment_size >= self.segment_max_bytes:
            self._rotate()
        descriptor = self.segment_descriptor
        assert descriptor is not None
        previous_size = self.segment_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        except OSError:
            try:
                os.ftruncate(descriptor, previous_size)
                os.fsync(descriptor)
            except OSError:
                logger.exception("journal: cannot cut %s back after a failed write", self.directory)
            raise
        self.segment_size += len(data)
        return time.perf_counter() - started

    def _rotate(self) -> None:
        if self.segment_descriptor is not None:
            os.close(self.segment_descriptor)
            self.segment_descriptor = None
        self.segment_number += 1
        path = self.directory / segment_name(self.segment_number)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self.segment_descriptor = os.open(path, flags, 0o640)
        self.segment_size = 0
        # The new name must survive a power loss as well as the lines written into it.
        fsync_directory(self.directory)

    def close(self) -> None:
        if self.segment_descriptor is not None:
            os.close(self.segment_descriptor)
            self.segment_descriptor = None
        if self.lock_descriptor is not None:
            os.close(self.lock_descriptor)  # closing the descriptor releases the flock
            self.lock_descriptor = None


def write_batch(
    files: ShardFiles, entries: Sequence[StreamEntry], batch: int, keymap_ttl_s: int
) -> tuple[list[RecordMeta], float]:
    """Encode a batch and append it (one trip to the file thread): its metadata and the seconds
    the write and fsync took."""
    data, metas = encode_batch(entries, batch, keymap_ttl_s)
    return metas, files.append(data)


def check_layout(directory: Path, shards: int, buckets: int, cluster: bool) -> None:
    """Record the shard layout on first use and refuse a directory written with another one.

    A bucket moving to another shard would hide its last batch from recovery, so the layout of a
    journal directory never changes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {"format": LAYOUT_FORMAT, "shards": shards, "buckets": buckets, "cluster": cluster}
    path = directory / LAYOUT_FILE
    try:
        found = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        temporary = directory / f".{LAYOUT_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        with open(temporary, "wb") as handle:
            handle.write(orjson.dumps(wanted) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(directory)
        return
    if found != wanted:
        raise JournalLayoutError(f"{path} records {found}, but this writer uses {wanted}")
