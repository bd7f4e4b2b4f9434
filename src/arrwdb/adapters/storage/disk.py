"""Durable repository: a write-ahead log and snapshots in one data directory.

State is served from memory (an ``InMemoryRepository`` held inside); the disk is for surviving
restarts. Every write is encoded as one log record holding the change *and* its events, written
to the log, made durable as the fsync policy promises, and only then applied in memory: a write
that returned survives a crash, one that raised ``StorageError`` is not visible (see the caveat
under "Failures"), and readers never see a change the log does not hold.

Data directory
--------------
``LOCK``
    Held with ``fcntl.flock`` (exclusive, non-blocking) while a store is open; holds the pid.
    A second store on the directory, in this process or another, fails with ``StorageError``.
``wal-<first record>.log``
    Log segments (format: ``_segments``/``_wal``): frames of 20-byte header (magic ``AWL1``,
    u32 length, u64 record number, u32 crc32) + msgpack payload, numbered from 1 without gaps.
    A payload is one of ``save_library``, ``delete_library``, ``save_documents``,
    ``delete_document`` (``_codec``), carrying the domain records and their events; embeddings
    are raw little-endian float32 bytes. A segment is closed at ``segment_bytes`` (64 MiB).
``snapshot-<last record>.snap``
    The whole state after that record plus the retained events (format: ``_snapshot``), written
    to a ``.tmp`` file, fsynced, renamed atomically, directory fsynced. Taken every
    ``snapshot_every`` records or ``snapshot_bytes`` of log (in a background thread unless
    ``background_snapshots=False``); then older snapshots and the log segments whose records
    are all in it are deleted.

Recovery on open: load the newest snapshot, replay the log records after it. A torn record at
the end of the last segment (a crash mid-write) is cut off with a warning on the
``arrwdb.storage`` logger. Damage anywhere else (a snapshot, a middle record, a gap in the
numbering) refuses to open with ``StorageError`` naming the file and byte offset: nothing is
silently dropped that a later record depends on.

Guarantees by ``fsync`` policy
------------------------------
``always`` (default)
    A write returns after its record is fsynced: it survives a process kill and a power loss.
    Concurrent writers share fsyncs (group commit).
``interval``
    Survives a process kill; a power loss may lose the last ``fsync_interval_ms`` of writes.
``never``
    Survives a process kill; after a power loss the OS decides what was kept.

Failures
--------
A write that cannot be appended (disk full, permission denied) raises ``StorageError``; its
partial bytes are truncated away, nothing is applied, and the store keeps serving reads and
accepting later writes. A failed fsync is different: the kernel may have dropped the data, so
the store stops accepting writes (``check()`` raises) and keeps serving reads. The unacknowledged
record is cut off on a best-effort basis; if that fails too, it may reappear after a restart.

Events: the last ``event_retention`` events (and, with ``event_max_age``, only those younger)
are kept across snapshots and returned by ``recent_events``, so event ids continue after a
restart. ``snapshot_to(dir)`` writes a consistent backup that opens as a store on its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import msgspec

from arrwdb.adapters.storage._codec import (
    ENCODER,
    OPERATION_DECODER,
    DeleteDocument,
    DeleteLibrary,
    DocumentsItem,
    EventsItem,
    LibraryItem,
    Operation,
    SaveDocuments,
    SaveLibrary,
    SnapshotHeader,
)
from arrwdb.adapters.storage._lockfile import lock_directory
from arrwdb.adapters.storage._segments import SegmentFile, WalRecord, logger, storage_error
from arrwdb.adapters.storage._snapshot import (
    SnapshotState,
    list_snapshots,
    read_snapshot,
    remove_temporaries,
    write_snapshot,
)
from arrwdb.adapters.storage._wal import (
    DEFAULT_SEGMENT_BYTES,
    FsyncPolicy,
    WalStatistics,
    WriteAheadLog,
)
from arrwdb.adapters.storage.memory import InMemoryRepository
from arrwdb.domain.errors import StorageError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library, Page, utcnow


@dataclass(frozen=True, slots=True)
class DiskStatistics:
    last_seq: int
    snapshot_seq: int
    wal: WalStatistics


class DiskRepository:
    """Implements ``arrwdb.domain.ports.Repository`` durably in the directory ``path``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "always",
        fsync_interval_ms: int = 100,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        snapshot_every: int = 10_000,
        snapshot_bytes: int = 256 * 1024 * 1024,
        background_snapshots: bool = True,
        event_retention: int = 10_000,
        event_max_age: timedelta | None = None,
        open_segment: Callable[[Path], SegmentFile] = SegmentFile,
    ) -> None:
        self.path = Path(path)
        self._snapshot_every = snapshot_every
        self._snapshot_bytes = snapshot_bytes
        self._background = background_snapshots
        self._event_max_age = event_max_age
        self._mem = InMemoryRepository()
        self._events: deque[Event] = deque(maxlen=event_retention)
        # Records are applied in log order; _state guards _applied, _events and the counters.
        self._state = threading.Condition(threading.Lock())
        self._applied = 0
        self._since_snapshot = 0
        self._snapshot_seq = 0
        self._snapshot_mark = 0  # log bytes written when the last snapshot was captured
        self._snapshot_lock = threading.Lock()
        self._snapshotter: threading.Thread | None = None
        self._closed = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error("could not create the data directory", self.path, exc) from exc
        self._wal = WriteAheadLog(
            self.path,
            fsync=fsync,
            interval_ms=fsync_interval_ms,
            segment_bytes=segment_bytes,
            open_segment=open_segment,
        )
        self._lock_fd = lock_directory(self.path)
        try:
            self._recover()
        except BaseException:
            self._wal.abandon()
            os.close(self._lock_fd)
            raise

    # ---- opening -----------------------------------------------------------------------------

    def _recover(self) -> None:
        remove_temporaries(self.path)
        snapshots = list_snapshots(self.path)
        if snapshots:
            self._snapshot_seq = self._load_snapshot(snapshots[-1][1])
        for record in self._wal.recover(after=self._snapshot_seq):
            self._apply(_decode(record))
            self._since_snapshot += 1
        self._applied = self._wal.last_seq
        for _, path in snapshots[:-1]:
            path.unlink(missing_ok=True)

    def _load_snapshot(self, path: Path) -> int:
        last_seq = position = 0
        libraries: dict[str, Library] = {}
        for item in read_snapshot(path):
            if isinstance(item, SnapshotHeader):
                last_seq, position = item.last_seq, item.document_seq
            elif isinstance(item, LibraryItem):
                libraries[item.library.id] = item.library
                self._mem.save_library(item.library, None)
            elif isinstance(item, DocumentsItem):
                library = libraries.get(item.library_id)
                if library is None:
                    raise StorageError(
                        f"corrupt snapshot {path}: documents of unknown library "
                        f"{item.library_id!r}",
                        path=str(path),
                    )
                if item.positions is None or len(item.positions) != len(item.documents):
                    self._mem.save_documents(library, item.documents, ())  # an older file
                else:
                    entries = list(zip(item.positions, item.documents, strict=True))
                    self._mem.restore_entries(library, entries)
            elif isinstance(item, EventsItem):
                self._events.extend(item.events)
        self._mem.continue_after(position)
        return last_seq

    # ---- writes ------------------------------------------------------------------------------

    def save_library(self, library: Library, event: Event | None) -> PendingWrite:
        return self._commit(SaveLibrary(library=library, event=event))

    def delete_library(self, library_id: str, event: Event) -> PendingWrite:
        return self._commit(DeleteLibrary(library_id=library_id, event=event))

    def save_documents(
        self, library: Library, documents: Sequence[Document], events: Sequence[Event]
    ) -> PendingWrite:
        return self._commit(
            SaveDocuments(library=library, documents=list(documents), events=list(events))
        )

    def delete_document(self, library: Library, document_id: str, event: Event) -> PendingWrite:
        return self._commit(DeleteDocument(library=library, document_id=document_id, event=event))

    def _commit(self, operation: Operation) -> PendingWrite:
        """Append the record (in call order); ``PendingWrite.wait`` does the rest."""
        payload = ENCODER.encode(operation)
        if self._closed:
            raise StorageError(f"the store at {self.path} is closed")
        return PendingWrite(self, self._wal.write(payload), operation)

    def _finish(self, seq: int, operation: Operation) -> None:
        """Wait until record ``seq`` is durable (sharing the fsync with the records appended
        meanwhile), then apply it in memory after every earlier record."""
        failure: StorageError | None = None
        try:
            self._wal.durable(seq)
        except StorageError as exc:
            failure = exc
        with self._state:
            while self._applied < seq - 1:  # an earlier record is still being made durable
                self._state.wait()
            try:
                if failure is None:
                    self._apply(operation)
                    self._since_snapshot += 1
            finally:
                self._applied = seq
                self._state.notify_all()
        if failure is not None:
            raise failure
        self._maybe_snapshot()

    def _apply(self, operation: Operation) -> None:
        mem = self._mem
        if isinstance(operation, SaveLibrary):
            mem.save_library(operation.library, operation.event)
            events = [] if operation.event is None else [operation.event]
        elif isinstance(operation, DeleteLibrary):
            mem.delete_library(operation.library_id, operation.event)
            events = [operation.event]
        elif isinstance(operation, SaveDocuments):
            mem.save_documents(operation.library, operation.documents, operation.events)
            events = operation.events
        else:
            mem.delete_document(operation.library, operation.document_id, operation.event)
            events = [operation.event]
        self._events.extend(events)

    # ---- reads -------------------------------------------------------------------------------

    def get_library(self, library_id: str) -> Library | None:
        return self._mem.get_library(library_id)

    def list_libraries(self) -> list[Library]:
        return self._mem.list_libraries()

    def get_document(self, library_id: str, document_id: str) -> Document | None:
        return self._mem.get_document(library_id, document_id)

    def list_documents(self, library_id: str, limit: int, cursor: str | None) -> Page:
        return self._mem.list_documents(library_id, limit, cursor)

    def iter_documents(self, library_id: str) -> Iterator[Document]:
        return self._mem.iter_documents(library_id)

    def recent_events(self, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        with self._state:
            events = self._retained_events()
        return events[-limit:]

    def _retained_events(self) -> list[Event]:
        if self._event_max_age is None:
            return list(self._events)
        oldest = utcnow() - self._event_max_age
        return [event for event in self._events if event.timestamp >= oldest]

    # ---- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> int:
        """Write a snapshot of the current state now; return the last record it covers."""
        with self._snapshot_lock:
            if self._closed:
                raise StorageError(f"the store at {self.path} is closed")
            state = self._capture()
            if state.last_seq == self._snapshot_seq:
                return state.last_seq
            with contextlib.suppress(StorageError):  # a new segment only speeds up cleanup
                self._wal.roll()
            write_snapshot(self.path, state)
            previous, self._snapshot_seq = self._snapshot_seq, state.last_seq
            self._wal.drop_before(state.last_seq + 1)
            with contextlib.suppress(OSError):
                for seq, path in list_snapshots(self.path):
                    if seq <= previous:
                        path.unlink()
            return state.last_seq

    def snapshot_to(self, destination: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of the store into the empty (or new) directory
        ``destination``; it opens as a ``DiskRepository`` on its own. Returns the file."""
        target = Path(destination)
        if self._closed:
            raise StorageError(f"the store at {self.path} is closed")
        try:
            target.mkdir(parents=True, exist_ok=True)
            if any(target.iterdir()):
                raise StorageError(f"backup directory {target} is not empty", path=str(target))
        except OSError as exc:
            raise storage_error("could not create backup directory", target, exc) from exc
        return write_snapshot(target, self._capture())

    def _capture(self) -> SnapshotState:
        with self._state:
            libraries = self._mem.list_libraries()
            documents = {lib.id: self._mem.entries(lib.id) for lib in libraries}
            self._since_snapshot = 0
            self._snapshot_mark = self._wal.bytes_written
            return SnapshotState(
                self._applied,
                libraries,
                documents,
                self._retained_events(),
                document_seq=self._mem.position,
            )

    def _maybe_snapshot(self) -> None:
        with self._state:
            due = (
                self._since_snapshot >= self._snapshot_every
                or self._wal.bytes_written - self._snapshot_mark >= self._snapshot_bytes
            )
            if not due or self._closed:
                return
            if self._background:
                if self._snapshotter is not None and self._snapshotter.is_alive():
                    return
                self._snapshotter = threading.Thread(
                    target=self._snapshot_logging_errors, name="arrwdb-snapshot", daemon=True
                )
                self._snapshotter.start()
                return
        self._snapshot_logging_errors()

    def _snapshot_logging_errors(self) -> None:
        # The write that triggered it already succeeded; a failed snapshot only delays cleanup.
        try:
            self.snapshot()
        except StorageError as exc:
            if not self._closed:
                logger.error("snapshot of %s failed: %s", self.path, exc)

    # ---- lifecycle ---------------------------------------------------------------------------

    def statistics(self) -> DiskStatistics:
        return DiskStatistics(
            last_seq=self._applied, snapshot_seq=self._snapshot_seq, wal=self._wal.statistics()
        )

    def check(self) -> None:
        if self._closed:
            raise StorageError(f"the store at {self.path} is closed")
        failure = self._wal.failure
        if failure is not None:
            raise StorageError(f"the store at {self.path} cannot write: {failure}")

    def close(self) -> None:
        """Wait for a running snapshot, fsync the log, release the directory. Idempotent."""
        if not self._shut_down():
            return
        try:
            self._wal.close()
        finally:
            os.close(self._lock_fd)

    def _abandon(self) -> None:
        """Let go of the directory as a killed process would: no fsync (for crash tests)."""
        if self._shut_down():
            self._wal.abandon()
            os.close(self._lock_fd)

    def _shut_down(self) -> bool:
        with self._state:
            if self._closed:
                return False
            self._closed = True
            snapshotter = self._snapshotter
        if snapshotter is not None:
            snapshotter.join()
        with self._snapshot_lock:  # one that a caller started is done too
            return True

    def __enter__(self) -> DiskRepository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PendingWrite:
    """The ``Commit`` of a disk write: appended to the log, durable and visible after ``wait``.

    Every pending write must be waited for, in any order: records are applied in log order, so
    one that is never waited for holds back every later one."""

    __slots__ = ("_operation", "_repository", "_waited", "seq")

    def __init__(self, repository: DiskRepository, seq: int, operation: Operation) -> None:
        self._repository = repository
        self.seq = seq
        self._operation = operation
        self._waited = False

    def wait(self) -> None:
        if self._waited:
            return
        self._waited = True
        self._repository._finish(self.seq, self._operation)


def _decode(record: WalRecord) -> Operation:
    try:
        return OPERATION_DECODER.decode(record.payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StorageError(
            f"corrupt write-ahead log {record.path} at byte {record.offset}: record "
            f"{record.seq} is unreadable ({exc})",
            path=str(record.path),
            offset=record.offset,
        ) from None
