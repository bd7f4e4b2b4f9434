"""Segment files of the write-ahead log: naming, writing through the OS, reading back.

Kept apart from the log's concurrency (``_wal``) so that each can be read on its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from arrwdb.adapters.storage._codec import (
    HEADER,
    MAX_HEAD_BYTES,
    OLD_WAL_MAGIC,
    WAL_MAGIC,
    FrameError,
    intact_frame_in,
    iter_frames,
)
from arrwdb.domain.errors import StorageError

logger = logging.getLogger("arrwdb.storage")


def segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """``(first sequence, path)`` of every segment in ``directory``, oldest first."""
    found = []
    for path in directory.glob("wal-*.log"):
        digits = path.name[4:-4]
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def fsync_directory(directory: Path) -> None:
    """Make created, renamed and deleted names in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Make ``data`` the content of ``path``, all or nothing, and durably: written to
    ``<path>.tmp``, fsynced, renamed over ``path``, the directory fsynced. Raises ``OSError``."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


class SegmentFile:
    """An open segment: the only place the log writes to the OS.

    Tests subclass it to inject ``OSError``s (a full disk, a failing fsync)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def write(self, data: memoryview) -> int:
        return os.write(self._fd, data)

    def sync(self) -> None:
        os.fsync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def close(self) -> None:
        os.close(self._fd)


class WalRecord(NamedTuple):
    seq: int
    #: the whole payload, or only its first ``MAX_HEAD_BYTES`` when ``complete`` is false
    payload: bytes
    path: Path
    #: where the record's frame starts in the file
    offset: int
    #: the payload's length
    length: int
    complete: bool = True


def read_segment(path: Path, expected: int, *, last: bool) -> Generator[WalRecord, None, int]:
    """Yield the records of one segment, checked; return the next number.

    ``expected`` is the number its first record must have. Damage in the ``last`` segment with
    nothing intact after it is a torn tail: cut off with a warning. Any other damage raises
    ``StorageError`` naming the file and the byte offset."""
    try:
        with path.open("rb") as file:
            _check_format(path, file)
            try:
                for frame in iter_frames(file, WAL_MAGIC):
                    if frame.seq != expected:
                        raise StorageError(
                            f"corrupt write-ahead log {path} at byte {frame.offset}: record "
                            f"{frame.seq} where record {expected} was expected",
                            path=str(path),
                            offset=frame.offset,
                        )
                    expected += 1
                    yield WalRecord(
                        frame.seq, frame.payload, path, frame.offset, len(frame.payload)
                    )
            except FrameError as exc:
                file.seek(exc.offset + 1)
                if not last or intact_frame_in(file.read(), WAL_MAGIC, expected) is not None:
                    raise StorageError(
                        f"corrupt write-ahead log {path} at byte {exc.offset}: {exc.reason}",
                        path=str(path),
                        offset=exc.offset,
                    ) from None
                _cut_tail(path, exc)
    except OSError as exc:
        raise storage_error("could not read the write-ahead log", path, exc) from exc
    return expected


def scan_heads(path: Path, expected: int) -> Generator[WalRecord, None, int]:
    """Yield the records of a segment that a snapshot covers, reading only the start of each
    payload (``complete`` false; checksums are not verified: these records are only read
    back for their events, which have a checksum of their own). Stops with a warning at the
    first frame that cannot be read. Returns the number after the last one yielded."""
    try:
        with path.open("rb") as file:
            _check_format(path, file)
            offset = 0
            while True:
                file.seek(offset)
                head = file.read(HEADER.size)
                if not head:
                    return expected
                if len(head) < HEADER.size:
                    break
                magic, length, seq, _ = HEADER.unpack(head)
                if magic != WAL_MAGIC or seq != expected:
                    break
                start = file.read(min(length, MAX_HEAD_BYTES))
                yield WalRecord(seq, start, path, offset, length, complete=False)
                expected += 1
                offset += HEADER.size + length
    except OSError as exc:
        raise storage_error("could not read the write-ahead log", path, exc) from exc
    logger.warning(
        "write-ahead log %s: unreadable record at byte %d; history before it is lost", path, offset
    )
    return expected


def _check_format(path: Path, file: BinaryIO) -> None:
    """Refuse a segment of the earlier format: one that starts with an intact frame of it (a
    torn record that merely starts with its magic is damage, handled as such). Leaves the
    file at its start."""
    head = file.read(HEADER.size)
    if head[: len(OLD_WAL_MAGIC)] == OLD_WAL_MAGIC and len(head) == HEADER.size:
        length = HEADER.unpack(head)[1]
        file.seek(0)
        if intact_frame_in(file.read(HEADER.size + length), OLD_WAL_MAGIC, 0) == 0:
            raise StorageError(
                f"the write-ahead log {path} was written by an earlier development format of "
                "arrwDB that this version does not read; export the data with the version "
                "that wrote it, or start with an empty data directory",
                path=str(path),
            )
    file.seek(0)


def _cut_tail(path: Path, damage: FrameError) -> None:
    logger.warning(
        "write-ahead log %s: %s at byte %d; cutting off the torn tail (%d bytes: a write "
        "that a crash interrupted; with fsync=always it was not acknowledged)",
        path,
        damage.reason,
        damage.offset,
        path.stat().st_size - damage.offset,
    )
    with path.open("r+b") as tail:
        tail.truncate(damage.offset)
        os.fsync(tail.fileno())


def storage_error(what: str, path: Path, exc: OSError, then: str = "") -> StorageError:
    """``StorageError`` for an ``OSError``: what failed, on which file, why (and what follows)."""
    reason = exc.strerror or str(exc)
    return StorageError(f"{what} {path}: {reason}{then}", path=str(path), errno=exc.errno)
