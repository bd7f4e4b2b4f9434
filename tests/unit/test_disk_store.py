"""The disk store against damage, OS failures and restarts: what the crash state machine
(``tests/property/test_disk_crash.py``) reaches rarely."""

from __future__ import annotations

import errno
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from pathlib import Path

import msgspec
import pytest

from arrwdb.adapters.storage._codec import (
    ENCODER,
    OLD_WAL_MAGIC,
    RECORD_HEAD,
    SNAPSHOT_DECODER,
    SNAPSHOT_MAGIC,
    WAL_MAGIC,
    SnapshotHeader,
    frame_header,
)
from arrwdb.adapters.storage._lockfile import lock_directory
from arrwdb.adapters.storage._segments import SegmentFile
from arrwdb.adapters.storage._wal import WriteAheadLog
from arrwdb.adapters.storage.disk import DiskStore
from arrwdb.domain.changes import (
    DocumentDeleted,
    DocumentSaved,
    LibraryCreated,
    LibraryUpdated,
)
from arrwdb.domain.errors import HistoryLostError, StorageError
from arrwdb.domain.models import Document, Library, new_id, utcnow
from store_helpers import (
    DIM,
    KEEP_ALL,
    batch_view,
    batches_from,
    commit,
    events_from,
    make_document,
    view,
)


def started(store: DiskStore) -> DiskStore:
    store.start()
    return store


def fill(store: DiskStore, documents: int, chunks: int = 2) -> tuple[Library, list[Document]]:
    """One library, then one write per document."""
    lib = Library(id=new_id(), name="lib", dimension=DIM)
    commit(store, LibraryCreated(lib, lib.created_at))
    docs: list[Document] = []
    for i in range(documents):
        docs.append(make_document(lib.id, f"d{i}", chunks, seed=i + 1))
        commit(store, DocumentSaved(docs[-1], False, utcnow()))
    return lib, docs


def stored_views(store: DiskStore, lib: Library) -> list[tuple[object, ...]]:
    return [view(d) for d in store.iter_documents(lib.id)]


def frame_offsets(path: Path) -> list[int]:
    """Where each record of a segment starts (header: magic, u32 length, u64 seq, u32 crc)."""
    data, offsets, pos = path.read_bytes(), [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 20 + struct.unpack_from("<I", data, pos + 4)[0]
    return offsets


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "LOCK"}


@pytest.mark.parametrize("segment", ["first of several", "last, with records after"])
def test_damage_in_the_middle_of_the_log_refuses_to_open(tmp_path: Path, segment: str) -> None:
    several = segment == "first of several"
    with DiskStore(tmp_path, segment_bytes=4096 if several else 2**20) as store:
        fill(store, 20)
    segments = sorted(tmp_path.glob("wal-*.log"))
    assert (len(segments) > 1) == several
    damaged = segments[0]
    second = frame_offsets(damaged)[1]
    flip_byte(damaged, second + 30)
    with pytest.raises(StorageError, match=f"{damaged} at byte {second}:") as error:
        DiskStore(tmp_path).start()
    assert error.value.details["offset"] == second
    os.close(lock_directory(tmp_path))  # the failed open let go of the directory


@pytest.mark.parametrize("tail", ["half a record", "junk", "zeros"])
def test_a_torn_tail_is_cut_off_with_a_warning(
    tmp_path: Path, tail: str, caplog: pytest.LogCaptureFixture
) -> None:
    with DiskStore(tmp_path) as store:
        lib, docs = fill(store, 5)
    segment = max(tmp_path.glob("wal-*.log"))
    data = segment.read_bytes()
    last = frame_offsets(segment)[-1]
    extra = {
        "half a record": data[last : (last + len(data)) // 2],
        "junk": b"\x93garbage",
        "zeros": bytes(300),
    }
    with segment.open("ab") as file:
        file.write(extra[tail])
    with (
        caplog.at_level(logging.INFO, logger="arrwdb.storage"),
        DiskStore(tmp_path) as store,
    ):
        assert [view(d) for d in docs] == stored_views(store, lib)
        assert store.head == 6
        lib, more = fill(store, 1)
        assert store.head == 8  # positions go on where the log was cut
    assert any(
        str(segment) in r.getMessage() and "torn tail" in r.getMessage() for r in caplog.records
    )
    # the recovery counts records, not only bytes: the 6 kept, and the cut one's bytes
    assert any("replayed 6 records" in r.getMessage() for r in caplog.records)
    assert segment.stat().st_size > len(data)  # appending went on where the log was cut
    with DiskStore(tmp_path) as store:
        assert len(store.list_libraries()) == 2
        assert stored_views(store, lib) == [view(more[0])]
        assert [e.seq for e in events_from(store, 0)] == list(range(1, 9))


def test_a_second_store_on_the_directory_is_refused(tmp_path: Path) -> None:
    with DiskStore(tmp_path) as store:
        with pytest.raises(StorageError, match=f"{tmp_path} is already in use"):
            DiskStore(tmp_path).start()
        code = "import sys\nfrom arrwdb.adapters.storage.disk import DiskStore\n"
        code += "DiskStore(sys.argv[1]).start()"
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
        )
        assert other.returncode != 0
        assert (
            f"{tmp_path} is already in use by another arrwDB store (process {os.getpid()})"
            in other.stderr
        )
        fill(store, 1)  # the refused openers took nothing from the one that holds it
    with DiskStore(tmp_path) as store:
        assert store.head == 2


@dataclass
class Faults:
    """OS failures to inject into a store's segment files; ``None`` means no failure."""

    write: int | None = None
    create: int | None = None
    sync: int | None = None
    sync_delay: float = 0.0

    def segment(self, path: Path) -> SegmentFile:
        faults = self

        class Faulty(SegmentFile):
            def write(self, data: memoryview) -> int:
                if faults.write is not None:
                    super().write(data[: len(data) // 2])  # a partial write, then the error
                    raise OSError(faults.write, os.strerror(faults.write))
                return super().write(data)

            def sync(self) -> None:
                time.sleep(faults.sync_delay)
                if faults.sync is not None:
                    raise OSError(faults.sync, os.strerror(faults.sync))
                super().sync()

        if self.create is not None and not path.exists():
            raise OSError(self.create, os.strerror(self.create), str(path))
        return Faulty(path)


@pytest.mark.parametrize(
    ("fault", "message"),
    [("write", "No space left on device"), ("create", "Permission denied")],
)
def test_a_failed_append_raises_and_the_store_keeps_serving(
    tmp_path: Path, fault: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    faults = Faults()
    store = started(DiskStore(tmp_path, segment_bytes=600, open_segment=faults.segment))
    lib, docs = fill(store, 3)
    setattr(faults, fault, errno.ENOSPC if fault == "write" else errno.EACCES)
    lost = make_document(lib.id, "lost", 2, seed=50)
    with pytest.raises(StorageError, match=message):
        commit(store, DocumentSaved(lost, False, utcnow()))
    with pytest.raises(StorageError, match="its last write failed"):
        store.check()  # not ready while writes fail (not poisoned: the record was taken back)
    assert store.get_document(lib.id, lost.id) is None
    assert stored_views(store, lib) == [view(d) for d in docs]
    assert store.head == 4
    setattr(faults, fault, None)
    kept = make_document(lib.id, "kept", 2, seed=51)
    assert commit(store, DocumentSaved(kept, False, utcnow())).first == 5  # no position used
    store.check()  # ready again once a write succeeds
    store.stop()
    with (
        caplog.at_level(logging.WARNING, logger="arrwdb.storage"),
        DiskStore(tmp_path) as again,
    ):
        assert stored_views(again, lib) == [view(d) for d in [*docs, kept]]
        assert [e.seq for e in events_from(again, 0)] == [1, 2, 3, 4, 5]
    assert not caplog.records  # nothing torn was left behind


def test_a_failed_fsync_stops_writes_but_not_reads(tmp_path: Path) -> None:
    faults = Faults()
    store = started(DiskStore(tmp_path, open_segment=faults.segment))
    lib, docs = fill(store, 2)
    events = events_from(store, 0)
    faults.sync = errno.EIO
    lost = make_document(lib.id, "lost", 1, seed=60)
    with pytest.raises(StorageError, match="Input/output error"):
        commit(store, DocumentSaved(lost, False, utcnow()))
    with pytest.raises(StorageError, match="cannot write"):
        store.check()
    with pytest.raises(StorageError):
        commit(store, LibraryUpdated(replace(lib, name="x"), ("name",), utcnow()))
    assert store.get_document(lib.id, lost.id) is None
    assert stored_views(store, lib) == [view(d) for d in docs]
    assert store.head == 3
    assert events_from(store, 0) == events
    assert store.read(3, 10) == []
    store.stop()
    with DiskStore(tmp_path) as again:
        assert stored_views(again, lib) == [view(d) for d in docs]
        assert events_from(again, 0) == events
        # never acknowledged, so its position was never used
        later = make_document(lib.id, "later", 1, seed=61)
        assert commit(again, DocumentSaved(later, False, utcnow())).first == 4


@pytest.mark.parametrize("history_size", [KEEP_ALL, 3])
def test_a_backup_opens_on_its_own_with_its_events(tmp_path: Path, history_size: int) -> None:
    with DiskStore(tmp_path / "live", history_size=history_size) as store:
        lib, docs = fill(store, 4)
        store.snapshot_to(tmp_path / "backup")
        events = events_from(store, store.earliest - 1)
        fill(store, 2)  # after the backup: not in it
        with pytest.raises(StorageError, match="not empty"):
            store.snapshot_to(tmp_path / "backup")
    with DiskStore(tmp_path / "backup", history_size=history_size) as backup:
        assert [x.id for x in backup.list_libraries()] == [lib.id]
        assert stored_views(backup, lib) == [view(d) for d in docs]
        assert backup.head == 5
        earliest = backup.earliest
        assert earliest == max(1, 5 - history_size + 1)  # the last history_size positions
        assert events_from(backup, earliest - 1) == events[earliest - events[0].seq :]
        fill(backup, 1)  # and it takes writes, at the positions after its own
        assert backup.head == 7
    with DiskStore(tmp_path / "backup", history_size=history_size) as backup:
        assert len(backup.list_libraries()) == 2
        assert [e.seq for e in events_from(backup, backup.earliest - 1)][-2:] == [6, 7]


@pytest.mark.parametrize("how", ["log only", "snapshot", "backup"])
def test_list_cursors_stay_valid_across_a_restart(tmp_path: Path, how: str) -> None:
    """A page cursor issued before a restart continues at the same place after it, whether the
    state comes back from the log, from a snapshot or from a backup (positions are kept, not
    numbered afresh, so deleted documents do not shift them)."""
    path = tmp_path / "live"
    with DiskStore(path) as store:
        lib, docs = fill(store, 6)
        commit(store, DocumentDeleted(lib.id, docs[1].id, docs[1].title, utcnow()))
        first = store.list_documents(lib.id, 2, None)
        assert [d.id for d in first.documents] == [docs[0].id, docs[2].id]
        if how == "snapshot":
            store.snapshot()
        elif how == "backup":
            store.snapshot_to(tmp_path / "backup")
            path = tmp_path / "backup"
    with DiskStore(path) as store:
        rest = store.list_documents(lib.id, 10, first.next_cursor)
        assert [d.id for d in rest.documents] == [d.id for d in docs[3:]]
        later = make_document(lib.id, "later", 1, seed=77)
        commit(store, DocumentSaved(later, False, utcnow()))
        rest = store.list_documents(lib.id, 10, first.next_cursor)
        assert [d.id for d in rest.documents] == [d.id for d in docs[3:]] + [later.id]


@pytest.mark.parametrize("background", [False, True])
def test_snapshots_compact_the_log(tmp_path: Path, background: bool) -> None:
    store_at = partial(
        DiskStore,
        tmp_path,
        segment_bytes=2048,
        snapshot_every=5,
        background_snapshots=background,
        history_size=5,
    )
    with store_at() as store:
        lib, docs = fill(store, 40)
        events = events_from(store, 36)
    assert len(list(tmp_path.glob("snapshot-*.snap"))) == 1
    if not background:  # in the background, how many are skipped depends on timing
        assert len(list(tmp_path.glob("wal-*.log"))) <= 4  # of ~20 written
    with store_at() as store:
        assert store.statistics().snapshot_seq > (35 if not background else 0)
        assert stored_views(store, lib) == [view(d) for d in docs]
        assert store.earliest <= 37  # the last five positions
        assert events_from(store, 36) == events


def test_snapshots_keep_the_segments_the_event_history_needs(tmp_path: Path) -> None:
    store_at = partial(
        DiskStore, tmp_path, segment_bytes=2048, snapshot_every=5, background_snapshots=False
    )
    with store_at() as store:
        lib, docs = fill(store, 40)
        batches = batches_from(store, 0)
        events = events_from(store, 0)
        assert store.statistics().snapshot_seq == 40
    assert len(events) == 41
    assert len(list(tmp_path.glob("wal-*.log"))) > 10  # none dropped: the history needs them
    with store_at() as store:
        assert stored_views(store, lib) == [view(d) for d in docs]
        assert store.earliest == 1
        assert events_from(store, 0) == events
        assert [batch_view(b) for b in batches_from(store, 0)] == [batch_view(b) for b in batches]


def test_a_damaged_snapshot_refuses_to_open(tmp_path: Path) -> None:
    with DiskStore(tmp_path) as store:
        fill(store, 3)
        store.snapshot()
    (snapshot,) = tmp_path.glob("snapshot-*.snap")
    flip_byte(snapshot, snapshot.stat().st_size // 2)
    with pytest.raises(StorageError, match=f"corrupt snapshot {snapshot} at byte"):
        DiskStore(tmp_path).start()


def test_damage_in_a_segment_kept_only_for_the_history_does_not_stop_the_store(
    tmp_path: Path,
) -> None:
    """A segment that a snapshot covers is read back only for its events: damage there loses
    (some of) them, never the state, and never gives a wrong event."""
    with DiskStore(tmp_path, segment_bytes=4096) as store:
        lib, docs = fill(store, 20)
        events = events_from(store, 0)
        store.snapshot()
    damaged = min(tmp_path.glob("wal-*.log"))
    events_start = 20 + RECORD_HEAD.size + len(lib.id)  # frame header, record head, library
    flip_byte(damaged, frame_offsets(damaged)[1] + events_start + 4)  # the events of record 2
    with DiskStore(tmp_path, segment_bytes=4096) as store:
        assert stored_views(store, lib) == [view(d) for d in docs]
        for after in range(len(events)):
            try:
                found, through = store.events_after(after, 100, None, store.head)
            except HistoryLostError:
                continue
            assert found == events[after:through]
        assert events_from(store, 2) == events[2:]
        fill(store, 1)  # and it takes writes


def test_events_survive_restarts_within_the_retention(tmp_path: Path) -> None:
    store_at = partial(DiskStore, tmp_path, history_size=5, segment_bytes=1)  # a record a segment
    with store_at() as store:
        fill(store, 7)
        events = events_from(store, 3)
        assert [e.seq for e in events] == [4, 5, 6, 7, 8]
    with store_at() as store:
        assert events_from(store, 3) == events
        store.snapshot()
        assert 1 < store.earliest <= 4  # what is older is dropped with its segments
    with store_at() as store:
        assert 1 < store.earliest <= 4
        assert events_from(store, 3) == events
        assert store.events_after(5, 3, None, store.head) == (events[-3:], 8)
        with pytest.raises(HistoryLostError):
            store.events_after(0, 10, None, store.head)


@pytest.mark.parametrize("history_size", [1, 4, 7])
def test_a_snapshot_that_drops_segments_keeps_the_last_history_size_events(
    tmp_path: Path, history_size: int
) -> None:
    """Batches of three changes, one record a segment: the record that holds the oldest of
    the last ``history_size`` positions is kept whole, and so is every record after it."""
    store_at = partial(DiskStore, history_size=history_size, segment_bytes=1)
    with store_at(tmp_path / "live") as store:
        lib = Library(id=new_id(), name="lib", dimension=DIM)
        batches = [commit(store, LibraryCreated(lib, lib.created_at))]
        for n in range(5):
            docs = [make_document(lib.id, f"b{n}", 1, seed=n * 3 + i) for i in range(3)]
            batches.append(commit(store, *(DocumentSaved(d, False, utcnow()) for d in docs)))
        events = [e for batch in batches for e in batch.events()]
        assert store.head == len(events) == 16
        segments = len(list((tmp_path / "live").glob("wal-*.log")))
        store.snapshot()
        assert len(list((tmp_path / "live").glob("wal-*.log"))) < segments
        keep = 16 - history_size + 1
        holding = next(b for b in batches if b.first <= keep <= b.last)
        assert store.earliest == holding.first
        assert events_from(store, store.earliest - 1) == events[holding.first - 1 :]
        with pytest.raises(HistoryLostError):
            store.read(0, 10)
        kept = [batch_view(b) for b in batches if b.last >= keep]
        assert [batch_view(b) for b in batches_from(store, keep - 1)] == kept
        store.snapshot_to(tmp_path / "backup")
    for where in ("live", "backup"):
        with store_at(tmp_path / where) as store:
            assert 1 < store.earliest <= keep
            assert events_from(store, store.earliest - 1) == events[store.earliest - 1 :]
    with store_at(tmp_path / "backup") as backup:
        assert backup.earliest == keep  # exactly the last history_size events
        with pytest.raises(HistoryLostError):
            backup.read(keep - 1, 10)  # a backup has no batches: a projection loads its state


def test_events_older_than_the_maximum_age_are_dropped(tmp_path: Path) -> None:
    old = Library(id="a", name="a", created_at=utcnow() - timedelta(hours=2))
    new = Library(id="b", name="b")
    # one record a segment, so that the old record's segment can go
    with DiskStore(tmp_path, history_max_age=3600.0, segment_bytes=1) as store:
        commit(store, LibraryCreated(old, old.created_at))
        (young,) = commit(store, LibraryCreated(new, new.created_at)).events()
        assert store.earliest == 2
        assert events_from(store, 1) == [young]
        with pytest.raises(HistoryLostError):
            store.events_after(0, 10, None, 2)
        store.snapshot()
    with DiskStore(tmp_path) as store:  # the snapshot and the log kept only the young one
        assert store.earliest == 2
        assert events_from(store, 1) == [young]
        assert [x.id for x in store.list_libraries()] == ["a", "b"]


def rewrite_frames(path: Path, magic: bytes, payload: Callable[[int, bytes], bytes]) -> None:
    """Rewrite every frame of ``path`` with ``magic`` and ``payload(number, old payload)``."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        _, length, seq, _ = struct.unpack_from("<4sIQI", data, pos)
        new = payload(seq, data[pos + 20 : pos + 20 + length])
        out += [frame_header(magic, seq, len(new), zlib.crc32(new)), new]
        pos += 20 + length
    path.write_bytes(b"".join(out))


def as_format_1(seq: int, payload: bytes) -> bytes:
    if seq:
        return payload
    header = SNAPSHOT_DECODER.decode(payload)
    assert isinstance(header, SnapshotHeader)
    return ENCODER.encode(msgspec.structs.replace(header, format=1))


@pytest.mark.parametrize("what", ["log segment", "snapshot"])
def test_data_of_an_earlier_format_is_refused_as_such(tmp_path: Path, what: str) -> None:
    """A directory written before positions (log magic ``AWL1``, snapshot format 1) is refused
    with an error that says so, not as damage, and is left as it was."""
    with DiskStore(tmp_path) as store:
        fill(store, 3)
        if what == "snapshot":
            store.snapshot()
    if what == "log segment":
        (old,) = tmp_path.glob("wal-*.log")
        assert old.read_bytes().startswith(WAL_MAGIC)
        rewrite_frames(old, OLD_WAL_MAGIC, lambda seq, payload: payload)
        assert old.read_bytes().startswith(b"AWL1")
    else:
        (old,) = tmp_path.glob("snapshot-*.snap")
        rewrite_frames(old, SNAPSHOT_MAGIC, as_format_1)
    before = files(tmp_path)
    with pytest.raises(StorageError, match="earlier development format") as error:
        DiskStore(tmp_path).start()
    assert str(old) in str(error.value)
    assert "corrupt" not in str(error.value)
    assert files(tmp_path) == before  # nothing cut, nothing deleted
    os.close(lock_directory(tmp_path))  # the failed open let go of the directory


def test_group_commit_shares_fsyncs_between_writers(tmp_path: Path) -> None:
    slow_disk = Faults(sync_delay=0.002)
    wal = WriteAheadLog(tmp_path, fsync="always", open_segment=slow_disk.segment)
    assert list(wal.recover(after=0)) == []
    start = threading.Barrier(8)
    returned: list[int] = []

    def writer(n: int) -> None:
        start.wait()
        for i in range(25):
            returned.append(wal.append(f"{n}:{i}".encode()))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = wal.statistics()
    assert sorted(returned) == list(range(1, 201))
    assert (stats.appends, stats.synced_seq) == (200, 200)
    assert stats.fsyncs < stats.appends
    wal.close()
    reopened = WriteAheadLog(tmp_path)
    records = list(reopened.recover(after=0))
    reopened.close()
    assert [r.seq for r in records] == list(range(1, 201))
    assert len({r.payload for r in records}) == 200


def test_the_interval_policy_fsyncs_in_the_background(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, fsync="interval", interval_ms=10)
    list(wal.recover(after=0))
    wal.append(b"x")
    deadline = time.monotonic() + 5
    while wal.statistics().synced_seq < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert wal.statistics().synced_seq == 1
    wal.close()
    assert not [t for t in threading.enumerate() if t.name == "arrwdb-wal-flush"]


def test_concurrent_writers_are_applied_in_log_order(tmp_path: Path) -> None:
    slow_disk = Faults(sync_delay=0.002)
    store = started(DiskStore(tmp_path, open_segment=slow_disk.segment))
    start = threading.Barrier(8)
    positions: dict[int, list[int]] = {n: [] for n in range(8)}

    def writer(n: int) -> None:
        start.wait()
        for i in range(10):
            lib = Library(id=f"{n}-{i}", name=f"lib {n}-{i}")
            positions[n].append(commit(store, LibraryCreated(lib, lib.created_at)).first)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    live, events = store.list_libraries(), events_from(store, 0)
    assert len(live) == 80
    assert store.statistics().wal.fsyncs < 80
    assert sorted(p for mine in positions.values() for p in mine) == list(range(1, 81))
    assert all(mine == sorted(mine) for mine in positions.values())
    assert [e.seq for e in events] == list(range(1, 81))
    assert [e.library_id for e in events] == [lib.id for lib in live]
    replayed = batches_from(store, 0)
    assert [c.library_id for b in replayed for c in b.changes] == [lib.id for lib in live]
    store.stop()
    with DiskStore(tmp_path) as again:
        assert again.list_libraries() == live
        assert events_from(again, 0) == events
        assert [batch_view(b) for b in batches_from(again, 0)] == [batch_view(b) for b in replayed]


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_backup_leaves_nothing_that_blocks_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    import arrwdb.adapters.storage.disk as disk_module

    real = disk_module.write_snapshot

    def full_disk(directory: Path, state: object) -> Path:
        (directory / "snapshot-00000000000000000001.snap.tmp").write_bytes(b"half")
        raise StorageError("No space left on device")

    with DiskStore(tmp_path / "live") as store:
        fill(store, 2)
        target = tmp_path / "backup"
        if existing:
            target.mkdir()  # an empty directory the caller made: it stays, empty
        monkeypatch.setattr(disk_module, "write_snapshot", full_disk)
        with pytest.raises(StorageError, match="No space"):
            store.snapshot_to(target)
        assert target.exists() == existing
        assert not existing or not any(target.iterdir())
        monkeypatch.setattr(disk_module, "write_snapshot", real)
        assert store.snapshot_to(target).exists()  # the same name works once there is room


def test_a_store_directory_without_its_log_opens_empty_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "indexes").mkdir()  # what a store leaves beside its log
    with caplog.at_level("WARNING", logger="arrwdb.storage"), DiskStore(tmp_path) as store:
        assert store.list_libraries() == []
    assert any("no write-ahead log" in r.getMessage() for r in caplog.records)
