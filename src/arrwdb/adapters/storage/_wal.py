"""The write-ahead log: numbered, checksummed records in append-only segment files.

Records are frames (``_codec``) numbered 1, 2, 3, ... without gaps. A segment file is named for
its first record, ``wal-<seq, 20 digits>.log``, and a new one is started when the current one
would grow past ``segment_bytes``. Bytes go to the kernel with ``os.write`` (no user-space
buffer), so a process crash loses nothing that ``write`` returned; ``fsync`` decides power loss:

``always``
    ``append`` returns only once its record is fsynced. Group commit: writers append under a
    lock; one of them (the leader) fsyncs, outside the lock, everything written so far while the
    others wait on a condition variable, so concurrent writers share one fsync.
``interval``
    A background thread fsyncs every ``interval_ms``; a power loss can lose that much.
``never``
    The OS flushes when it likes; safe against process crashes only.

Recovery (``recover``) reads every segment after a snapshot's sequence. A torn or corrupt record
at the tail of the last segment (nothing intact after it) is cut off with a warning on the
``arrwdb.storage`` logger; damage anywhere else raises ``StorageError`` naming file and offset.
A failed write is truncated away so the log stays readable; a failed fsync poisons the log (the
kernel may have dropped the dirty pages): every later append raises ``StorageError``.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from arrwdb.adapters.storage._codec import HEADER, MAX_PAYLOAD, WAL_MAGIC, frame_header
from arrwdb.adapters.storage._segments import (
    SegmentFile,
    WalRecord,
    fsync_directory,
    list_segments,
    read_segment,
    scan_heads,
    segment_name,
    storage_error,
)
from arrwdb.domain.errors import StorageError

FsyncPolicy = Literal["always", "interval", "never"]
FSYNC_POLICIES: Final[tuple[FsyncPolicy, ...]] = ("always", "interval", "never")
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
HEADER_SIZE: Final = HEADER.size
#: Records up to this size are joined into one buffer and written with one system call.
_JOIN_BELOW: Final = 64 * 1024

logger = logging.getLogger("arrwdb.storage")


@dataclass(frozen=True, slots=True)
class RecordLocation:
    """Where ``write`` put a record: its number, its segment file, the offset of its frame
    and the length of its payload."""

    seq: int
    path: Path
    offset: int
    length: int


#: Upper bounds (seconds) of the fsync latency histogram.
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


@dataclass(frozen=True, slots=True)
class WalStatistics:
    appends: int
    fsyncs: int
    bytes_written: int
    last_seq: int
    synced_seq: int
    segments: int
    #: how long the fsyncs took: in all, and how many took at most each of ``FSYNC_BUCKETS``
    fsync_seconds: float = 0.0
    fsync_buckets: tuple[int, ...] = ()


class WriteAheadLog:
    """The log of one data directory. Call ``recover`` (and exhaust it) before appending."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = "always",
        interval_ms: int = 100,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        open_segment: Callable[[Path], SegmentFile] = SegmentFile,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.directory = directory
        self.policy: FsyncPolicy = fsync
        self._interval = interval_ms / 1000
        self._segment_bytes = segment_bytes
        self._open_segment = open_segment
        self._cond = threading.Condition(threading.Lock())
        self._segments: list[tuple[int, Path]] = []
        self._file: SegmentFile | None = None
        self._size = 0  # bytes in the current segment
        self._synced_size = 0  # of which fsynced
        self._next_seq = 1
        self._synced = 0  # highest record known to be fsynced
        self._syncing = False  # a leader is fsyncing outside the lock
        self._failure: StorageError | None = None
        self._append_error: StorageError | None = None
        self._closed = False
        self._appends = self._fsyncs = self._bytes = 0
        self._fsync_seconds = 0.0
        self._fsync_counts = [0] * len(FSYNC_BUCKETS)
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # ---- recovery ----------------------------------------------------------------------------

    def recover(self, after: int) -> Iterator[WalRecord]:
        """Yield every record kept, in order, then make the log ready to append: those a
        snapshot covers (numbered up to ``after``) as far as they are kept (in whole segments
        only their heads: ``complete`` false), then every later record, checked. Cuts off a
        torn tail; raises ``StorageError`` on damage elsewhere after ``after``, or on a gap."""
        if self._file is not None or self._closed:
            raise RuntimeError("the log is already open")
        segments = list_segments(self.directory)
        start = 0
        for index in range(1, len(segments)):
            if segments[index][0] <= after + 1:
                start = index  # every record before this segment is in the snapshot
        covered, segments = segments[:start], segments[start:]
        expected = segments[0][0] if segments else after + 1
        if expected > after + 1:
            raise StorageError(
                f"the write-ahead log in {self.directory} lacks records {after + 1} to "
                f"{expected - 1}: they are in neither the snapshot nor the log",
                path=str(self.directory),
            )
        for first, path in covered:
            # only read back for their events: a damaged one ends what is yielded of it (the
            # reader sees the gap in the numbers), it does not stop the store from opening
            yield from scan_heads(path, first)
        for index, (first, path) in enumerate(segments):
            if first != expected:
                raise StorageError(
                    f"corrupt write-ahead log {path} at byte 0: it should start with record "
                    f"{expected}",
                    path=str(path),
                    offset=0,
                )
            last = index == len(segments) - 1
            expected = yield from read_segment(path, expected, last=last)
        if expected - 1 > after:
            logger.info(
                "write-ahead log: replayed %d records after the snapshot (%d to %d)",
                expected - 1 - after,
                after + 1,
                expected - 1,
            )
        if expected <= after:
            # The snapshot is ahead of the log (fsync=never and a power loss): start after it.
            for _, path in [*covered, *segments]:
                path.unlink(missing_ok=True)
            covered, segments, expected = [], [], after + 1
        self._start([*covered, *segments], expected)

    def _start(self, segments: list[tuple[int, Path]], next_seq: int) -> None:
        try:
            if not segments:
                segments = [(next_seq, self.directory / segment_name(next_seq))]
            self._file = self._open_segment(segments[-1][1])
            if self.policy != "never":
                self._file.sync()
                fsync_directory(self.directory)
        except OSError as exc:
            raise storage_error("could not open the write-ahead log", self.directory, exc) from exc
        self._segments = segments
        self._size = self._synced_size = self._file.size()
        self._next_seq = next_seq
        self._synced = next_seq - 1
        if self.policy == "interval":
            self._flusher = threading.Thread(
                target=self._flush_periodically, name="arrwdb-wal-flush", daemon=True
            )
            self._flusher.start()

    # ---- appending ---------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Write one record and wait until it is as durable as the policy promises."""
        seq = self.write(payload).seq
        self.durable(seq)
        return seq

    def write(self, payload: bytes | Sequence[bytes]) -> RecordLocation:
        """Hand one record to the OS (survives a process crash); return where it is. The
        payload may come in parts (written one after the other: a large record is not copied
        into one buffer first)."""
        parts = [payload] if isinstance(payload, bytes) else list(payload)
        length = sum(len(part) for part in parts)
        if length > MAX_PAYLOAD:
            raise StorageError(f"a write of {length} bytes exceeds the record size limit")
        payload_crc = 0
        for part in parts:
            payload_crc = zlib.crc32(part, payload_crc)
        size = HEADER_SIZE + length
        with self._cond:
            self._check_writable()
            try:
                while self._size > 0 and self._size + size > self._segment_bytes:
                    if self._syncing:  # never close a file under a leader's fsync
                        self._cond.wait()
                        self._check_writable()
                    else:
                        self._roll()
                seq = self._next_seq
                offset = self._size
                header = frame_header(WAL_MAGIC, seq, length, payload_crc)
                if length <= _JOIN_BELOW:  # one system call for a small record
                    self._write_all((b"".join((header, *parts)),))
                else:
                    self._write_all((header, *parts))
            except StorageError as exc:
                self._append_error = exc  # until an append succeeds (readiness says so)
                raise
            self._append_error = None
            self._next_seq = seq + 1
            self._size += size
            self._appends += 1
            self._bytes += size
            assert self._file is not None
            return RecordLocation(seq, self._file.path, offset, length)

    def durable(self, seq: int) -> None:
        """Return once record ``seq`` is as durable as the policy promises (``always``: fsynced,
        sharing the fsync with concurrent writers)."""
        if self.policy == "always":
            with self._cond:
                self._sync_to(seq)

    def sync(self) -> None:
        """Fsync everything written so far, whatever the policy."""
        with self._cond:
            self._check_writable()
            self._sync_to(self._next_seq - 1)

    def roll(self) -> None:
        """Start a new segment unless the current one is empty (so older ones can be dropped)."""
        with self._cond:
            self._check_writable()
            while self._syncing:
                self._cond.wait()
            if self._size > 0:
                self._roll()

    def drop_before(self, seq: int) -> int:
        """Delete the closed segments whose records are all numbered below ``seq``; return
        the number of the first record still kept."""
        with self._cond:
            keep = 0
            for index in range(1, len(self._segments)):
                if self._segments[index][0] <= seq:
                    keep = index
            dropped, self._segments = self._segments[:keep], self._segments[keep:]
        for _, path in dropped:
            path.unlink(missing_ok=True)
        with self._cond:
            return self._segments[0][0] if self._segments else self._next_seq

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed or self._file is None:
            raise StorageError(f"the write-ahead log in {self.directory} is closed")

    def _write_all(self, parts: tuple[bytes, ...]) -> None:
        file = self._file
        assert file is not None
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    written = file.write(view)
                    if written <= 0:
                        raise OSError(errno.EIO, "write accepted no bytes")
                    view = view[written:]
        except OSError as exc:
            try:
                file.truncate(self._size)  # take back the partial record
            except OSError as undo:
                self._failure = storage_error(
                    "could not remove a partial record from",
                    file.path,
                    undo,
                    "; the log accepts no more writes",
                )
                logger.error("%s", self._failure)
            raise storage_error("could not append to", file.path, exc) from exc

    def _roll(self) -> None:
        old = self._file
        assert old is not None
        if self.policy != "never" and self._synced_size < self._size:
            self._sync_file(old, self._next_seq - 1, self._size)
        path = self.directory / segment_name(self._next_seq)
        try:
            new = self._open_segment(path)
        except OSError as exc:
            raise storage_error("could not start log segment", path, exc) from exc
        try:
            if self.policy != "never":
                fsync_directory(self.directory)
        except OSError as exc:
            new.close()
            path.unlink(missing_ok=True)
            raise storage_error("could not start log segment", path, exc) from exc
        old.close()
        self._segments.append((self._next_seq, path))
        self._file, self._size, self._synced_size = new, 0, 0

    def _sync_to(self, seq: int) -> None:
        # Called holding the lock. Leader/follower: the first waiter fsyncs (with the lock
        # released) everything written so far; the others wait for it and are covered.
        while self._synced < seq:
            if self._failure is not None:
                raise self._failure
            if self._syncing:
                self._cond.wait()
                continue
            file = self._file
            assert file is not None
            self._syncing = True
            target, end = self._next_seq - 1, self._size
            self._cond.release()
            error: OSError | None = None
            started = time.perf_counter()
            try:
                file.sync()
            except OSError as exc:
                error = exc
            finally:
                self._cond.acquire()
                self._syncing = False
                self._cond.notify_all()
            if error is not None:
                self._sync_failed(file, error)
            self._timed(time.perf_counter() - started)
            self._synced, self._synced_size = max(self._synced, target), max(self._synced_size, end)

    def _timed(self, seconds: float) -> None:
        """Count one fsync that took ``seconds`` (under the lock)."""
        self._fsyncs += 1
        self._fsync_seconds += seconds
        bucket = bisect.bisect_left(FSYNC_BUCKETS, seconds)
        if bucket < len(FSYNC_BUCKETS):  # slower than the last bound: in the sum and count only
            self._fsync_counts[bucket] += 1

    def _sync_file(self, file: SegmentFile, target: int, end: int) -> None:
        started = time.perf_counter()
        try:
            file.sync()
        except OSError as exc:
            self._sync_failed(file, exc)
        self._timed(time.perf_counter() - started)
        self._synced, self._synced_size = target, end
        self._cond.notify_all()

    def _sync_failed(self, file: SegmentFile, exc: OSError) -> None:
        self._failure = storage_error(
            "could not fsync", file.path, exc, "; the log accepts no more writes"
        )
        logger.error("%s", self._failure)
        if self.policy == "always":
            # Nothing past the last good fsync was acknowledged: try not to resurrect it later.
            with contextlib.suppress(OSError):
                file.truncate(self._synced_size)
        self._cond.notify_all()
        raise self._failure

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self._interval):
            with self._cond:
                if self._closed or self._failure is not None:
                    return
                try:
                    self._sync_to(self._next_seq - 1)
                except StorageError:
                    return  # logged by _sync_failed; appends now raise

    # ---- state -------------------------------------------------------------------------------

    @property
    def append_error(self) -> StorageError | None:
        """Why the last append failed, if it did (a full disk): cleared by the next one that
        succeeds."""
        return self._append_error

    @property
    def failure(self) -> StorageError | None:
        """Why the log accepts no more writes, if it does not."""
        return self._failure

    @property
    def durable_seq(self) -> int:
        """The last record as durable as the policy promises (``always``: fsynced; otherwise
        handed to the OS)."""
        return self._synced if self.policy == "always" else self._next_seq - 1

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def bytes_written(self) -> int:
        return self._bytes

    def statistics(self) -> WalStatistics:
        with self._cond:
            return WalStatistics(
                appends=self._appends,
                fsyncs=self._fsyncs,
                bytes_written=self._bytes,
                last_seq=self._next_seq - 1,
                synced_seq=self._synced,
                segments=len(self._segments),
                fsync_seconds=self._fsync_seconds,
                fsync_buckets=tuple(itertools.accumulate(self._fsync_counts)),
            )

    def close(self) -> None:
        """Fsync what was written (unless the policy is ``never``) and close. Idempotent."""
        self._stop_flusher()
        with self._cond:
            while self._syncing:
                self._cond.wait()
            if self._closed:
                return
            try:
                if self.policy != "never" and self._failure is None and self._file is not None:
                    self._sync_to(self._next_seq - 1)
            finally:
                self._release()

    def abandon(self) -> None:
        """Close without any fsync, as a crashed process would (for tests)."""
        self._stop_flusher()
        with self._cond:
            while self._syncing:
                self._cond.wait()
            self._release()

    def _stop_flusher(self) -> None:
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()

    def _release(self) -> None:
        self._closed = True
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()
        self._cond.notify_all()
