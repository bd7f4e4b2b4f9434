"""The durable store: a write-ahead log of changes and snapshots in one data directory.

The log is the truth. A write is ordered (its rule checked against ``_head``, the state every
ordered write leaves, and its changes given their positions), encoded as one record, written to
the log, made durable as the fsync policy promises, and only then applied to ``_visible``, the
tables reads are served from (in memory): a write that returned survives a crash, one that
raised ``StorageError`` is not visible (see the caveat under "Failures"), and readers never see a
change the log does not hold.

Data directory
--------------
``LOCK``
    Held with ``fcntl.flock`` (exclusive, non-blocking) while a store is open; holds the pid.
    A second store on the directory, in this process or another, fails with ``StorageError``.
``wal-<first record>.log``
    Log segments (format: ``_segments``/``_wal``): frames of 20-byte header (magic ``AWL1``,
    u32 length, u64 record number, u32 crc32) + msgpack payload, numbered from 1 without gaps.
    A payload is one committed batch of changes at consecutive positions, with their change
    events in a part of their own (``_codec``); embeddings are raw little-endian float32
    bytes. A segment is closed at ``segment_bytes`` (64 MiB).
``snapshot-<last record>.snap``
    The whole state after that record and its position (format: ``_snapshot``), written to a
    ``.tmp`` file, fsynced, renamed atomically, directory fsynced. Taken every
    ``snapshot_every`` records or ``snapshot_bytes`` of log (in a background thread unless
    ``background_snapshots=False``); then older snapshots are deleted, and so are the log
    segments whose records are all in it and that the event history no longer needs (it keeps
    at least the last ``history_size`` positions, of age below ``history_max_age`` if set).

Recovery on open: load the newest snapshot, replay the log records after it, index the records
kept for the event history. A torn record at the end of the last segment (a crash mid-write) is
cut off with a warning on the ``arrwdb.storage`` logger. Damage anywhere else after the snapshot
(a snapshot, a middle record, a gap in the numbering) refuses to open with ``StorageError``
naming the file and byte offset: nothing is silently dropped that a later record depends on.

The change stream reads the log back (``EventHistory``, ``_records``): a subscriber that fell
behind the hub's memory reads the events of the records kept.

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

Positions (event ids) continue after a restart. ``snapshot_to(dir)`` writes a consistent
backup that opens as a store on its own, with the latest ``history_size`` events (but no log:
``read`` from before its position raises ``HistoryLostError``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arrwdb.adapters.storage._codec import (
    MAX_HEAD_BYTES,
    DocumentsItem,
    EventsItem,
    LibraryItem,
    ReceiptsItem,
    RecordHead,
    SnapshotHeader,
    decode_receipt,
    decode_record,
    encode_record,
)
from arrwdb.adapters.storage._lockfile import lock_directory
from arrwdb.adapters.storage._records import RecordIndex
from arrwdb.adapters.storage._segments import (
    SegmentFile,
    WalRecord,
    list_segments,
    logger,
    storage_error,
)
from arrwdb.adapters.storage._snapshot import (
    SnapshotState,
    list_snapshots,
    read_snapshot,
    remove_temporaries,
    write_snapshot,
)
from arrwdb.adapters.storage._tables import CatalogReads, tail_batches
from arrwdb.adapters.storage._wal import (
    DEFAULT_SEGMENT_BYTES,
    FSYNC_BUCKETS,
    FsyncPolicy,
    RecordLocation,
    WalStatistics,
    WriteAheadLog,
)
from arrwdb.adapters.storage.memory import Done
from arrwdb.domain.catalog import Catalog, Entry
from arrwdb.domain.changes import Batch, Receipt, WriteKey
from arrwdb.domain.errors import IdempotencyMismatchError, StorageError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Library
from arrwdb.domain.ports import Build, Measurement

#: Recent durable batches kept in memory for the projector (older ones are read from the log).
TAIL_BATCHES = 16


@dataclass(frozen=True, slots=True)
class DiskStatistics:
    last_seq: int
    snapshot_seq: int
    position: int
    wal: WalStatistics


class DiskStore(CatalogReads):
    """Implements ``arrwdb.domain.ports.Store``, ``EventHistory`` and ``Backup`` durably in the
    directory ``path``. ``start()`` (or ``with``) opens it."""

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
        history_size: int = 10_000,
        history_max_age: float | None = None,
        open_segment: Callable[[Path], SegmentFile] = SegmentFile,
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._fsync_interval_ms = fsync_interval_ms
        self._segment_bytes = segment_bytes
        self._open_segment = open_segment
        self._snapshot_every = snapshot_every
        self._snapshot_bytes = snapshot_bytes
        self._background = background_snapshots
        self._history_size = max(1, history_size)
        self._history_max_age = history_max_age
        self._order = threading.Lock()  # writes are put in order under it
        self._head = Catalog()  # the state every ordered write leaves
        # Records are applied in log order; _state guards _visible, _applied, _tail, counters.
        self._state = threading.Condition(threading.Lock())
        self._visible = Catalog()
        # the recent durable batches by first position (read without a lock: dict reads are
        # atomic), for the projector; older ones are read from the log
        self._tail: dict[int, Batch] = {}
        self._tail_order: deque[int] = deque()
        self._queue: deque[PendingWrite] = deque()  # appended, not yet visible, in log order
        self._index = RecordIndex(history_max_age)
        self._applied = 0
        self._since_snapshot = 0
        self._snapshot_seq = 0
        self._snapshot_mark = 0  # log bytes written when the last snapshot was captured
        self._snapshot_lock = threading.Lock()
        self._snapshotter: threading.Thread | None = None
        self._wal: WriteAheadLog | None = None
        self._lock_fd: int | None = None
        self._closed = False

    # ---- opening -----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the directory: take its lock, load the newest snapshot, replay the log.
        Raises ``StorageError``."""
        if self._wal is not None or self._closed:
            raise RuntimeError("a DiskStore is started once")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error("could not create the data directory", self.path, exc) from exc
        wal = WriteAheadLog(
            self.path,
            fsync=self._fsync,
            interval_ms=self._fsync_interval_ms,
            segment_bytes=self._segment_bytes,
            open_segment=self._open_segment,
        )
        self._lock_fd = lock_directory(self.path)
        self._wal = wal
        try:
            self._recover(wal)
        except BaseException:
            wal.abandon()
            os.close(self._lock_fd)
            self._closed = True
            raise

    def _recover(self, wal: WriteAheadLog) -> None:
        remove_temporaries(self.path)
        snapshots = list_snapshots(self.path)
        if snapshots:
            self._snapshot_seq = self._load_snapshot(snapshots[-1][1])
        elif not list_segments(self.path) and any(
            (self.path / name).exists() for name in ("indexes", "keys.json")
        ):
            logger.warning(
                "%s has no write-ahead log and no snapshot, but files of an arrwDB store: "
                "opening it empty (if it held data, its log is missing)",
                self.path,
            )
        visible = self._visible
        for record in wal.recover(after=self._snapshot_seq):
            self._index.add(
                record.seq,
                record.payload[:MAX_HEAD_BYTES],
                record.path,
                record.offset,
                record.length,
            )
            if record.seq <= self._snapshot_seq:
                continue
            batch = _decode(record)
            if batch.first != visible.position + 1:
                raise StorageError(
                    f"corrupt write-ahead log {record.path} at byte {record.offset}: record "
                    f"{record.seq} starts at position {batch.first}, where "
                    f"{visible.position + 1} was expected",
                    path=str(record.path),
                    offset=record.offset,
                )
            visible.apply(batch)
            self._since_snapshot += 1
        self._applied = wal.last_seq
        self._index.drop_before(wal.drop_before(0))  # records whose segments are gone
        self._head = visible.copy()
        for _, path in snapshots[:-1]:
            path.unlink(missing_ok=True)
        self._drop_history()

    def _load_snapshot(self, path: Path) -> int:
        last_seq = position = 0
        libraries: list[Library] = []
        entries: dict[str, list[Entry]] = {}
        events: list[Event] = []
        receipts: list[tuple[str, Receipt]] = []
        for item in read_snapshot(path):
            if isinstance(item, SnapshotHeader):
                last_seq, position = item.last_seq, item.position
            elif isinstance(item, LibraryItem):
                libraries.append(item.library)
                entries[item.library.id] = []
            elif isinstance(item, DocumentsItem):
                if item.library_id not in entries or len(item.positions) != len(item.documents):
                    raise StorageError(
                        f"corrupt snapshot {path}: documents of unknown library "
                        f"{item.library_id!r}",
                        path=str(path),
                    )
                entries[item.library_id].extend(zip(item.positions, item.documents, strict=True))
            elif isinstance(item, EventsItem):
                events.extend(item.events)
            elif isinstance(item, ReceiptsItem):
                receipts.extend(_receipt(path, data) for data in item.receipts)
        self._visible.restore(position, libraries, entries)
        for key, receipt in receipts:
            self._visible.remember(key, receipt)
        if events and events[-1].seq == position:
            self._index.seed(events)
        return last_seq

    # ---- the change log ----------------------------------------------------------------------

    def write(self, build: Build, key: WriteKey | None = None) -> PendingWrite | Done:
        """Order a write (``ports.ChangeLog.write``); its record is appended under the ordering
        lock, so the log holds records in position order."""
        with self._order:
            wal = self._accepting()
            if key is not None:
                repeated = self._repeated(key)
                if repeated is not None:
                    return repeated
            batch = Batch(self._head.position + 1, tuple(build(self._head)), key)
            if not batch.changes:
                return Done(batch)
            payload, head = encode_record(batch)
            location = wal.write(payload)  # StorageError: nothing happened
            self._head.apply(batch)
            pending = PendingWrite(self, location, batch, head)
            self._queue.append(pending)  # in log order, to be made visible once durable
        return pending

    def _repeated(self, key: WriteKey) -> PendingWrite | Done | None:
        """(Caller holds ``_order``.) The answer to a write made again with ``key``: the first
        one's receipt, once that one is durable."""
        receipt = self._head.receipt(key.key)
        if receipt is None:
            return None
        if receipt.fingerprint != key.fingerprint:
            raise IdempotencyMismatchError(key.key)
        for pending in self._queue:  # not durable yet: wait for it as its writer does
            if pending.batch.first == receipt.batch.first:
                return PendingWrite(self, pending.location, receipt.batch, pending.head)
        return Done(receipt.batch)

    def _writable(self) -> WriteAheadLog:
        if self._wal is None or self._closed:
            raise StorageError(f"the store at {self.path} is not open")
        return self._wal

    def _accepting(self) -> WriteAheadLog:
        """The log, if it takes writes: after a failed fsync it refuses them all, before any
        rule runs (the ordered state may hold writes that never became durable)."""
        wal = self._writable()
        if wal.failure is not None:
            raise wal.failure
        return wal

    def _finish(self, pending: PendingWrite) -> Batch:
        """Wait until the record is durable (sharing the fsync with the records appended
        meanwhile), then make it visible, after every earlier record: whoever gets here first
        makes every durable record visible, in log order, so concurrent writers do not queue
        up to take turns."""
        wal = self._writable()
        seq = pending.location.seq
        wal.durable(seq)  # StorageError: it never becomes visible, nor does anything after it
        with self._state:
            if self._applied < seq:
                durable = wal.durable_seq
                queue = self._queue
                while queue and queue[0].location.seq <= durable:
                    self._make_visible(queue.popleft())
                self._state.notify_all()
        self._maybe_snapshot()
        return pending.batch

    def _make_visible(self, pending: PendingWrite) -> None:
        """(Caller holds ``_state``.) The next durable record, in log order."""
        location, batch = pending.location, pending.batch
        self._visible.apply(batch)
        self._keep_in_tail(batch)
        self._index.add_head(
            location.seq, pending.head, location.path, location.offset, location.length
        )
        self._since_snapshot += 1
        self._applied = location.seq

    def _keep_in_tail(self, batch: Batch) -> None:
        """(Caller holds ``_state``.)"""
        self._tail[batch.first] = batch
        self._tail_order.append(batch.first)
        if len(self._tail_order) > TAIL_BATCHES:
            self._tail.pop(self._tail_order.popleft(), None)

    def read(self, after: int, limit: int) -> list[Batch]:
        head = self._visible.position
        # the usual reader, the projector, wants the batches just made durable: from memory
        # (as long as the log still holds them: what it no longer holds is history lost)
        kept = self._index.first_position
        out = tail_batches(self._tail, after, head, limit) if kept and after >= kept - 1 else []
        if out or after >= head:
            return out
        with self._state:
            tail = dict(self._tail)
        return self._index.batches_after(after, limit, head, tail.get)

    @property
    def head(self) -> int:
        return self._visible.position

    def wait_for(self, after: int, timeout: float | None = None) -> int:
        with self._state:
            self._state.wait_for(lambda: self._visible.position > after or self._closed, timeout)
            return self._visible.position

    # ---- the event history -------------------------------------------------------------------

    @property
    def earliest(self) -> int:
        return self._index.earliest(self.head)

    def events_after(
        self, after: int, limit: int, library_id: str | None, until: int
    ) -> tuple[list[Event], int]:
        return self._index.events_after(after, limit, library_id, until, self.head)

    # ---- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> int:
        """Write a snapshot of the current state now; return the last record it covers."""
        with self._snapshot_lock:
            wal = self._writable()
            state = self._capture()
            if state.last_seq == self._snapshot_seq:
                return state.last_seq
            with contextlib.suppress(StorageError):  # a new segment only speeds up cleanup
                wal.roll()
            write_snapshot(self.path, state)
            previous, self._snapshot_seq = self._snapshot_seq, state.last_seq
            self._drop_history()
            with contextlib.suppress(OSError):
                for seq, path in list_snapshots(self.path):
                    if seq <= previous:
                        path.unlink()
            return state.last_seq

    def _drop_history(self) -> None:
        """Delete the log segments that the snapshot covers and the event history no longer
        needs (it keeps the last ``history_size`` positions, younger than the maximum age)."""
        wal = self._wal
        if wal is None:
            return
        needed = self._index.seq_needed(self.head, self._history_size)
        first = self._snapshot_seq + 1 if needed is None else min(needed, self._snapshot_seq + 1)
        self._index.drop_before(wal.drop_before(first))

    def snapshot_to(self, destination: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of the store into the empty (or new) directory
        ``destination``; it opens as a ``DiskStore`` on its own. Returns the file."""
        target = Path(destination)
        self._writable()
        created = not target.exists()
        try:
            target.mkdir(parents=True, exist_ok=True)
            if any(target.iterdir()):
                raise StorageError(f"backup directory {target} is not empty", path=str(target))
        except OSError as exc:
            raise storage_error("could not create backup directory", target, exc) from exc
        try:
            return write_snapshot(target, self._capture())
        except BaseException:
            # leave nothing behind: a failed backup must not keep its name taken
            if created:
                shutil.rmtree(target, ignore_errors=True)
            else:
                remove_temporaries(target)
            raise

    def _capture(self) -> SnapshotState:
        wal = self._writable()
        with self._state:
            visible = self._visible
            libraries = visible.libraries()
            documents = {lib.id: visible.entries(lib.id) for lib in libraries}
            self._since_snapshot = 0
            self._snapshot_mark = wal.bytes_written
            position, applied = visible.position, self._applied
            receipts = visible.receipts()
        # read outside the lock: the log's records, up to what the snapshot covers
        events = self._index.latest_events(position, self._history_size)
        return SnapshotState(applied, libraries, documents, position, events, receipts)

    def _maybe_snapshot(self) -> None:
        wal = self._wal
        if not self._snapshot_due(wal):  # (read without the lock: a hint; checked again)
            return
        with self._state:
            if not self._snapshot_due(wal) or self._closed:
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

    def _snapshot_due(self, wal: WriteAheadLog | None) -> bool:
        return self._since_snapshot >= self._snapshot_every or (
            wal is not None and wal.bytes_written - self._snapshot_mark >= self._snapshot_bytes
        )

    def _snapshot_logging_errors(self) -> None:
        # The write that triggered it already succeeded; a failed snapshot only delays cleanup.
        try:
            self.snapshot()
        except StorageError as exc:
            if not self._closed:
                logger.error("snapshot of %s failed: %s", self.path, exc)

    # ---- lifecycle ---------------------------------------------------------------------------

    def statistics(self) -> DiskStatistics:
        wal = self._writable()
        return DiskStatistics(
            last_seq=self._applied,
            snapshot_seq=self._snapshot_seq,
            position=self.head,
            wal=wal.statistics(),
        )

    def measurements(self) -> list[Measurement]:
        """``Measured``: the write-ahead log's appends, bytes and fsync latency."""
        wal = self.statistics().wal
        buckets = tuple(zip(FSYNC_BUCKETS, wal.fsync_buckets, strict=True))
        return [
            Measurement(
                "arrwdb_wal_appends", "Records appended to the WAL.", "counter", wal.appends
            ),
            Measurement(
                "arrwdb_wal_bytes", "Bytes written to the WAL.", "counter", wal.bytes_written
            ),
            Measurement(
                "arrwdb_wal_fsync_seconds",
                "How long each WAL fsync took.",
                "histogram",
                wal.fsync_seconds,
                buckets=(*buckets, (float("inf"), wal.fsyncs)),
            ),
        ]

    def check(self) -> None:
        """Raise ``StorageError`` when the store cannot write: after a failed fsync (until a
        restart), or while appends fail (a full disk: until one succeeds)."""
        wal = self._writable()
        failure = wal.failure
        if failure is not None:
            raise StorageError(f"the store at {self.path} cannot write: {failure}")
        failed = wal.append_error
        if failed is not None:
            raise StorageError(
                f"the store at {self.path} cannot write: its last write failed: {failed}"
            )

    def stop(self) -> None:
        """Wait for a running snapshot, fsync the log, release the directory. Idempotent."""
        if not self._shut_down():
            return
        wal, lock_fd = self._wal, self._lock_fd
        assert wal is not None
        assert lock_fd is not None
        try:
            wal.close()
        finally:
            os.close(lock_fd)

    def _abandon(self) -> None:
        """Let go of the directory as a killed process would: no fsync (for crash tests)."""
        if self._shut_down():
            wal, lock_fd = self._wal, self._lock_fd
            assert wal is not None
            assert lock_fd is not None
            wal.abandon()
            os.close(lock_fd)

    def _shut_down(self) -> bool:
        with self._state:
            if self._closed or self._wal is None:
                self._closed = True
                return False
            self._closed = True
            snapshotter = self._snapshotter
            self._state.notify_all()
        if snapshotter is not None:
            snapshotter.join()
        with self._snapshot_lock:  # one that a caller started is done too
            return True

    def __enter__(self) -> DiskStore:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PendingWrite:
    """The ``Commit`` of a disk write: appended to the log, durable and visible after ``wait``.

    Pending writes may be waited for in any order: the first writer whose record is durable
    makes every durable record visible, in log order."""

    __slots__ = ("_repository", "batch", "head", "location")

    def __init__(
        self, repository: DiskStore, location: RecordLocation, batch: Batch, head: RecordHead
    ) -> None:
        self._repository = repository
        self.location = location
        self.batch = batch
        self.head = head

    def wait(self) -> Batch:
        return self._repository._finish(self)


def _decode(record: WalRecord) -> Batch:
    try:
        return decode_record(record.payload)
    except ValueError as exc:
        raise StorageError(
            f"corrupt write-ahead log {record.path} at byte {record.offset}: record "
            f"{record.seq} is unreadable ({exc})",
            path=str(record.path),
            offset=record.offset,
        ) from None


def _receipt(path: Path, data: bytes) -> tuple[str, Receipt]:
    try:
        return decode_receipt(data)
    except ValueError as exc:
        raise StorageError(f"corrupt snapshot {path}: {exc}", path=str(path)) from None
