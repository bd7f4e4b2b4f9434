"""The disk store against crashes, damage and OS failures.

A hypothesis state machine applies random library/document writes to a ``DiskRepository`` and to
a model (plain dicts). Its crash step lets go of the files as a killed process would, cuts the
newest log segment at a random byte (and may leave junk after the cut), and reopens: the store
must then equal the model as it was after the last record that survived whole. The unit tests
below cover what random runs reach rarely: damage in the middle, a second opener, a full disk,
a refused file, a failed fsync, backups, group commit, retention.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from arrwdb.adapters.storage._lockfile import lock_directory
from arrwdb.adapters.storage._segments import SegmentFile
from arrwdb.adapters.storage._wal import WriteAheadLog
from arrwdb.adapters.storage.disk import DiskRepository
from arrwdb.domain.errors import StorageError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Chunk, Document, Library, new_id, utcnow

DIM = 3


def make_document(
    library_id: str, title: str, chunks: int, seed: int, doc_id: str = ""
) -> Document:
    rng = np.random.default_rng(seed)
    doc_id = doc_id or new_id()
    return Document(
        id=doc_id,
        library_id=library_id,
        title=title,
        metadata={"seed": seed, "mixed": [1, 2.5, None, True, "x"]},
        num_chunks=chunks,
        chunks=tuple(
            Chunk(
                id=new_id(),
                document_id=doc_id,
                position=i,
                text=f"{title} {i}",
                embedding=None if (seed + i) % 5 == 0 else rng.random(DIM, dtype=np.float32),
            )
            for i in range(chunks)
        ),
    )


def view(doc: Document) -> tuple[object, ...]:
    """A document as comparable values (numpy arrays do not compare with ``==``)."""
    chunks = tuple(
        (
            c.id,
            c.position,
            c.text,
            dict(c.metadata),
            None if c.embedding is None else c.embedding.tobytes(),
        )
        for c in doc.chunks
    )
    return (
        doc.id,
        doc.library_id,
        doc.title,
        dict(doc.metadata),
        doc.num_chunks,
        doc.created_at,
        chunks,
    )


def counted(lib: Library, docs: dict[str, Document]) -> Library:
    return replace(
        lib, document_count=len(docs), chunk_count=sum(d.num_chunks for d in docs.values())
    )


@dataclass
class Model:
    libraries: dict[str, Library] = field(default_factory=dict)
    documents: dict[str, dict[str, Document]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def copy(self) -> Model:
        docs = {lib_id: dict(docs) for lib_id, docs in self.documents.items()}
        return Model(dict(self.libraries), docs, list(self.events))


class DiskCrashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="arrwdb-crash-"))
        self.repo = self.open()
        self.model = Model()
        self.history = [self.model.copy()]  # history[n]: the state after n records
        self.positions: list[tuple[str, int]] = []  # record n+1 ends in segment, at byte
        self.event_ids = itertools.count(1)

    def open(self) -> DiskRepository:
        return DiskRepository(
            self.dir,
            fsync="never",
            segment_bytes=1500,
            snapshot_every=7,
            background_snapshots=False,
        )

    def event(self, kind: str, library_id: str) -> Event:
        return Event(id=str(next(self.event_ids)), type=kind, library_id=library_id)

    def committed(self, new: Model) -> None:
        """Record one write that returned: it is one log record, ending at the newest
        segment's current size."""
        newest = max(self.dir.glob("wal-*.log"))
        self.model = new
        self.history.append(new.copy())
        self.positions.append((newest.name, newest.stat().st_size))

    def pick(self, index: int, with_documents: bool = False) -> Library:
        ids = [i for i in self.model.libraries if not with_documents or self.model.documents[i]]
        return self.model.libraries[ids[index % len(ids)]]

    def has_documents(self) -> bool:
        return any(self.model.documents.values())

    @rule(name=st.text(max_size=6))
    def create_library(self, name: str) -> None:
        lib = Library(id=new_id(), name=name, dimension=DIM, metadata={"name": name})
        new, ev = self.model.copy(), self.event("library.created", lib.id)
        new.libraries[lib.id], new.documents[lib.id] = lib, {}
        new.events.append(ev)
        self.repo.save_library(lib, ev).wait()
        self.committed(new)

    @precondition(lambda self: self.model.libraries)
    @rule(index=st.integers(0, 9), description=st.text(max_size=6), with_event=st.booleans())
    def update_library(self, index: int, description: str, with_event: bool) -> None:
        lib = replace(self.pick(index), description=description)
        new, ev = self.model.copy(), self.event("library.updated", lib.id) if with_event else None
        new.libraries[lib.id] = lib
        new.events.extend([ev] if ev else [])
        self.repo.save_library(lib, ev).wait()
        self.committed(new)

    @precondition(lambda self: self.model.libraries)
    @rule(index=st.integers(0, 9))
    def delete_library(self, index: int) -> None:
        lib, new = self.pick(index), self.model.copy()
        ev = self.event("library.deleted", lib.id)
        del new.libraries[lib.id], new.documents[lib.id]
        new.events.append(ev)
        self.repo.delete_library(lib.id, ev).wait()
        self.committed(new)

    @precondition(lambda self: self.model.libraries)
    @rule(
        index=st.integers(0, 9),
        sizes=st.lists(st.integers(0, 3), min_size=1, max_size=3),
        seed=st.integers(0, 99),
    )
    def add_documents(self, index: int, sizes: list[int], seed: int) -> None:
        lib, new = self.pick(index), self.model.copy()
        docs = [make_document(lib.id, f"t{seed}", n, seed + i) for i, n in enumerate(sizes)]
        new.documents[lib.id].update((d.id, d) for d in docs)
        lib = new.libraries[lib.id] = counted(lib, new.documents[lib.id])
        events = [self.event("document.added", lib.id) for _ in docs]
        new.events.extend(events)
        self.repo.save_documents(lib, docs, events).wait()
        self.committed(new)

    @precondition(has_documents)
    @rule(
        index=st.integers(0, 9),
        which=st.integers(0, 9),
        chunks=st.integers(0, 3),
        seed=st.integers(0, 99),
    )
    def replace_document(self, index: int, which: int, chunks: int, seed: int) -> None:
        lib, new = self.pick(index, with_documents=True), self.model.copy()
        docs = new.documents[lib.id]
        old_id = list(docs)[which % len(docs)]
        doc = docs[old_id] = make_document(lib.id, f"r{seed}", chunks, seed, doc_id=old_id)
        lib = new.libraries[lib.id] = counted(lib, docs)
        ev = self.event("document.updated", lib.id)
        new.events.append(ev)
        self.repo.save_documents(lib, [doc], [ev]).wait()
        self.committed(new)

    @precondition(has_documents)
    @rule(index=st.integers(0, 9), which=st.integers(0, 9))
    def delete_document(self, index: int, which: int) -> None:
        lib, new = self.pick(index, with_documents=True), self.model.copy()
        docs = new.documents[lib.id]
        doc_id = list(docs)[which % len(docs)]
        del docs[doc_id]
        lib = new.libraries[lib.id] = counted(lib, docs)
        ev = self.event("document.deleted", lib.id)
        new.events.append(ev)
        self.repo.delete_document(lib, doc_id, ev).wait()
        self.committed(new)

    @rule(cut=st.floats(0, 1), junk=st.binary(max_size=30), stray_snapshot=st.booleans())
    def crash(self, cut: float, junk: bytes, stray_snapshot: bool) -> None:
        self.repo._abandon()
        newest = max(self.dir.glob("wal-*.log"))
        offset = int(cut * newest.stat().st_size)
        with newest.open("r+b") as file:
            file.truncate(offset)
            file.seek(offset)
            file.write(junk)
        if stray_snapshot:  # a snapshot the crash interrupted
            (self.dir / f"snapshot-{10**19:020d}.snap.tmp").write_bytes(b"AWS1 half")
        survived = 0
        for segment, end in self.positions:
            if segment == newest.name and end > offset:
                break
            survived += 1
        event(f"crash kept {'all' if survived == len(self.positions) else 'fewer'} records")
        self.model = self.history[survived].copy()
        del self.history[survived + 1 :], self.positions[survived:]
        last = self.model.events[-1].seq if self.model.events else 0
        self.event_ids = itertools.count(last + 1)
        self.repo = self.open()

    @rule()
    def reopen(self) -> None:
        self.repo.close()
        self.repo = self.open()

    @invariant()
    def equals_the_model(self) -> None:
        repo, model = self.repo, self.model
        assert repo.statistics().last_seq == len(self.history) - 1
        assert repo.list_libraries() == list(model.libraries.values())
        for lib_id, docs in model.documents.items():
            assert [d.id for d in repo.list_documents(lib_id, 1000, None).items] == list(docs)
            stored = {d.id: view(d) for d in repo.iter_documents(lib_id)}
            assert stored == {doc_id: view(d) for doc_id, d in docs.items()}
        assert repo.recent_events(10_000) == model.events

    def teardown(self) -> None:
        self.repo.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestDiskCrashes = DiskCrashMachine.TestCase
TestDiskCrashes.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---- unit tests ------------------------------------------------------------------------------


def fill(repo: DiskRepository, documents: int, chunks: int = 2) -> tuple[Library, list[Document]]:
    """One library, then one write per document."""
    ids = itertools.count(len(repo.recent_events(10**6)) + 1)
    lib = Library(id=new_id(), name="lib", dimension=DIM)
    repo.save_library(lib, Event(str(next(ids)), "library.created", lib.id)).wait()
    docs: list[Document] = []
    for i in range(documents):
        docs.append(make_document(lib.id, f"d{i}", chunks, seed=i + 1))
        lib = replace(lib, document_count=len(docs), chunk_count=chunks * len(docs))
        repo.save_documents(
            lib, docs[-1:], [Event(str(next(ids)), "document.added", lib.id)]
        ).wait()
    return lib, docs


def stored_views(repo: DiskRepository, lib: Library) -> list[tuple[object, ...]]:
    return [view(d) for d in repo.iter_documents(lib.id)]


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


@pytest.mark.parametrize("segment", ["first of several", "last, with records after"])
def test_damage_in_the_middle_of_the_log_refuses_to_open(tmp_path: Path, segment: str) -> None:
    several = segment == "first of several"
    with DiskRepository(tmp_path, segment_bytes=4096 if several else 2**20) as repo:
        fill(repo, 20)
    segments = sorted(tmp_path.glob("wal-*.log"))
    assert (len(segments) > 1) == several
    damaged = segments[0]
    second = frame_offsets(damaged)[1]
    flip_byte(damaged, second + 30)
    with pytest.raises(StorageError, match=f"{damaged} at byte {second}:") as error:
        DiskRepository(tmp_path)
    assert error.value.details["offset"] == second
    os.close(lock_directory(tmp_path))  # the failed open let go of the directory


@pytest.mark.parametrize("tail", ["half a record", "junk", "zeros"])
def test_a_torn_tail_is_cut_off_with_a_warning(
    tmp_path: Path, tail: str, caplog: pytest.LogCaptureFixture
) -> None:
    with DiskRepository(tmp_path) as repo:
        lib, docs = fill(repo, 5)
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
        caplog.at_level(logging.WARNING, logger="arrwdb.storage"),
        DiskRepository(tmp_path) as repo,
    ):
        assert [view(d) for d in docs] == stored_views(repo, lib)
        lib, more = fill(repo, 1)
    assert any(
        str(segment) in r.getMessage() and "torn tail" in r.getMessage() for r in caplog.records
    )
    assert segment.stat().st_size > len(data)  # appending went on where the log was cut
    with DiskRepository(tmp_path) as repo:
        assert len(repo.list_libraries()) == 2
        assert stored_views(repo, lib) == [view(more[0])]


def test_a_second_store_on_the_directory_is_refused(tmp_path: Path) -> None:
    with DiskRepository(tmp_path):
        with pytest.raises(StorageError, match=f"{tmp_path} is already in use"):
            DiskRepository(tmp_path)
        code = "import sys\nfrom arrwdb.adapters.storage.disk import DiskRepository\n"
        code += "DiskRepository(sys.argv[1])"
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
        )
        assert other.returncode != 0
        assert (
            f"{tmp_path} is already in use by another arrwDB store (process {os.getpid()})"
            in other.stderr
        )
    DiskRepository(tmp_path).close()


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
    repo = DiskRepository(tmp_path, segment_bytes=600, open_segment=faults.segment)
    lib, docs = fill(repo, 3)
    setattr(faults, fault, errno.ENOSPC if fault == "write" else errno.EACCES)
    lost = make_document(lib.id, "lost", 2, seed=50)
    with pytest.raises(StorageError, match=message):
        repo.save_documents(lib, [lost], []).wait()
    repo.check()  # not poisoned: the failed record was taken back
    assert repo.get_document(lib.id, lost.id) is None
    assert stored_views(repo, lib) == [view(d) for d in docs]
    setattr(faults, fault, None)
    kept = make_document(lib.id, "kept", 2, seed=51)
    repo.save_documents(lib, [kept], []).wait()
    repo.close()
    with (
        caplog.at_level(logging.WARNING, logger="arrwdb.storage"),
        DiskRepository(tmp_path) as again,
    ):
        assert stored_views(again, lib) == [view(d) for d in [*docs, kept]]
    assert not caplog.records  # nothing torn was left behind


def test_a_failed_fsync_stops_writes_but_not_reads(tmp_path: Path) -> None:
    faults = Faults()
    repo = DiskRepository(tmp_path, open_segment=faults.segment)
    lib, docs = fill(repo, 2)
    faults.sync = errno.EIO
    lost = make_document(lib.id, "lost", 1, seed=60)
    with pytest.raises(StorageError, match="Input/output error"):
        repo.save_documents(lib, [lost], []).wait()
    with pytest.raises(StorageError, match="cannot write"):
        repo.check()
    with pytest.raises(StorageError):
        repo.save_library(replace(lib, name="x"), None).wait()
    assert repo.get_document(lib.id, lost.id) is None
    assert stored_views(repo, lib) == [view(d) for d in docs]
    repo.close()
    with DiskRepository(tmp_path) as again:
        assert stored_views(again, lib) == [view(d) for d in docs]


def test_a_backup_opens_on_its_own(tmp_path: Path) -> None:
    with DiskRepository(tmp_path / "live") as repo:
        lib, docs = fill(repo, 4)
        repo.snapshot_to(tmp_path / "backup")
        events = repo.recent_events(100)
        fill(repo, 2)  # after the backup: not in it
        with pytest.raises(StorageError, match="not empty"):
            repo.snapshot_to(tmp_path / "backup")
    with DiskRepository(tmp_path / "backup") as backup:
        assert [x.id for x in backup.list_libraries()] == [lib.id]
        assert stored_views(backup, lib) == [view(d) for d in docs]
        assert backup.recent_events(100) == events
        fill(backup, 1)  # and it takes writes
    with DiskRepository(tmp_path / "backup") as backup:
        assert len(backup.list_libraries()) == 2


@pytest.mark.parametrize("how", ["log only", "snapshot", "backup"])
def test_list_cursors_stay_valid_across_a_restart(tmp_path: Path, how: str) -> None:
    """A page cursor issued before a restart continues at the same place after it, whether the
    state comes back from the log, from a snapshot or from a backup (positions are kept, not
    numbered afresh, so deleted documents do not shift them)."""
    path = tmp_path / "live"
    with DiskRepository(path) as repo:
        lib, docs = fill(repo, 6)
        lib = replace(lib, document_count=5, chunk_count=10)
        repo.delete_document(lib, docs[1].id, Event("99", "document.deleted", lib.id)).wait()
        first = repo.list_documents(lib.id, 2, None)
        assert [d.id for d in first.items] == [docs[0].id, docs[2].id]
        if how == "snapshot":
            repo.snapshot()
        elif how == "backup":
            repo.snapshot_to(tmp_path / "backup")
            path = tmp_path / "backup"
    with DiskRepository(path) as repo:
        rest = repo.list_documents(lib.id, 10, first.next_cursor)
        assert [d.id for d in rest.items] == [d.id for d in docs[3:]]
        later = make_document(lib.id, "later", 1, seed=77)
        repo.save_documents(replace(lib, document_count=6), [later], []).wait()
        rest = repo.list_documents(lib.id, 10, first.next_cursor)
        assert [d.id for d in rest.items] == [d.id for d in docs[3:]] + [later.id]


@pytest.mark.parametrize("background", [False, True])
def test_snapshots_compact_the_log(tmp_path: Path, background: bool) -> None:
    with DiskRepository(
        tmp_path, segment_bytes=2048, snapshot_every=5, background_snapshots=background
    ) as repo:
        lib, docs = fill(repo, 40)
    assert len(list(tmp_path.glob("snapshot-*.snap"))) == 1
    if not background:  # in the background, how many are skipped depends on timing
        assert len(list(tmp_path.glob("wal-*.log"))) <= 4  # of ~20 written
    with DiskRepository(tmp_path) as repo:
        assert repo.statistics().snapshot_seq > (35 if not background else 0)
        assert stored_views(repo, lib) == [view(d) for d in docs]


def test_a_damaged_snapshot_refuses_to_open(tmp_path: Path) -> None:
    with DiskRepository(tmp_path) as repo:
        fill(repo, 3)
        repo.snapshot()
    (snapshot,) = tmp_path.glob("snapshot-*.snap")
    flip_byte(snapshot, snapshot.stat().st_size // 2)
    with pytest.raises(StorageError, match=f"corrupt snapshot {snapshot} at byte"):
        DiskRepository(tmp_path)


def test_events_survive_restarts_within_the_retention(tmp_path: Path) -> None:
    with DiskRepository(tmp_path, event_retention=5) as repo:
        fill(repo, 7)
        events = repo.recent_events(100)
    assert [e.seq for e in events] == [4, 5, 6, 7, 8]
    with DiskRepository(tmp_path, event_retention=5) as repo:
        assert repo.recent_events(100) == events
        repo.snapshot()
    with DiskRepository(tmp_path, event_retention=5) as repo:
        assert repo.recent_events(3) == events[-3:]


def test_events_older_than_the_maximum_age_are_dropped(tmp_path: Path) -> None:
    old, new = (
        Event(str(n), "library.created", None, timestamp=utcnow() - timedelta(hours=hours))
        for n, hours in ((1, 2), (2, 0))
    )
    with DiskRepository(tmp_path, event_max_age=timedelta(hours=1)) as repo:
        repo.save_library(Library(id="a", name="a"), old).wait()
        repo.save_library(Library(id="b", name="b"), new).wait()
        assert repo.recent_events(10) == [new]
        repo.snapshot()
    with DiskRepository(tmp_path) as repo:  # the snapshot kept only the young one
        assert repo.recent_events(10) == [new]


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
    repo = DiskRepository(tmp_path, open_segment=slow_disk.segment)
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        for i in range(10):
            lib = Library(id=f"{n}-{i}", name=f"lib {n}-{i}")
            repo.save_library(lib, Event(str(n * 100 + i), "library.created", lib.id)).wait()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    live, events = repo.list_libraries(), repo.recent_events(1000)
    assert len(live) == 80
    assert repo.statistics().wal.fsyncs < 80
    assert [e.library_id for e in events] == [lib.id for lib in live]
    repo.close()
    with DiskRepository(tmp_path) as again:
        assert again.list_libraries() == live
        assert again.recent_events(1000) == events
