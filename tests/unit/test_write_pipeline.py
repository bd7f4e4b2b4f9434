"""The write pipeline over a durable store: concurrent writers share fsyncs (group commit),
nothing is visible or published before it is durable, and checks still see every ordered write.

The service writes through ``DiskStore.write`` (the rule is checked against the state every
ordered write leaves, under the store's ordering), waits for the commit to be durable, then the
projector applies the batch read back from the log and publishes its events to the hub.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from arrwdb.adapters.embedders.hashing import HashingEmbedder
from arrwdb.adapters.hub.local import LocalEventHub
from arrwdb.adapters.index import make_index
from arrwdb.adapters.storage._segments import SegmentFile
from arrwdb.adapters.storage.disk import DiskStore
from arrwdb.domain.errors import (
    AlreadyExistsError,
    DocumentNotFoundError,
    LibraryNotFoundError,
    StorageError,
)
from arrwdb.domain.events import Event
from arrwdb.domain.models import SearchQuery
from arrwdb.domain.service import VectorDBService

DIM = 4


class Disk:
    """Segment files whose fsync can be slowed, held or made to fail."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.fail: int | None = None
        self.held = threading.Event()
        self.held.set()
        self.syncing = threading.Event()

    def segment(self, path: Path) -> SegmentFile:
        disk = self

        class Segment(SegmentFile):
            def sync(self) -> None:
                disk.syncing.set()
                disk.held.wait()
                time.sleep(disk.delay)
                if disk.fail is not None:
                    raise OSError(disk.fail, os.strerror(disk.fail))
                super().sync()

        return Segment(path)

    def hold(self) -> None:
        """Hold the next fsync until ``release``."""
        self.syncing.clear()
        self.held.clear()

    def release(self) -> None:
        self.held.set()


@pytest.fixture
def disk() -> Disk:
    return Disk()


@pytest.fixture
def store(tmp_path: Path, disk: Disk) -> Iterator[DiskStore]:
    store = DiskStore(tmp_path / "data", fsync="always", open_segment=disk.segment)
    store.start()
    yield store
    disk.release()  # a test that failed while holding an fsync must not hang the stop
    store.stop()


@pytest.fixture
def hub(store: DiskStore) -> Iterator[LocalEventHub]:
    hub = LocalEventHub(history_size=100_000)
    hub.start(store.head, store)
    yield hub
    hub.stop()


@pytest.fixture
def service(store: DiskStore, hub: LocalEventHub) -> Iterator[VectorDBService]:
    svc = VectorDBService(store, hub, make_index, {"hashing": HashingEmbedder()})
    svc.load()
    yield svc
    svc.close()


def chunk(seed: int) -> list[dict[str, object]]:
    vec = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return [{"text": str(seed), "embedding": vec}]


def logged_events(store: DiskStore, library_id: str | None = None) -> list[Event]:
    """Every event the store's log holds, read back as a subscriber behind the hub would."""
    after, head, events = 0, store.head, []
    while after < head:
        found, after = store.events_after(after, 50, library_id, head)
        events.extend(found)
    return events


def run_all(*targets: Callable[[], object]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(fn: Callable[[], object]) -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as exc:  # collected for the test
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a writer hung"
    return errors


def test_concurrent_writers_share_fsyncs_and_keep_event_order(
    service: VectorDBService, store: DiskStore, disk: Disk
) -> None:
    lib = service.create_library("l", dimension=DIM, index="flat")
    sub = service.subscribe(lib.id, since="earliest", buffer=100_000)
    disk.delay = 0.003
    before = store.statistics().wal

    def writer(n: int) -> None:
        for i in range(20):
            service.add_document(lib.id, {"title": f"{n}:{i}", "chunks": chunk(n * 100 + i)})

    assert run_all(*(lambda n=n: writer(n) for n in range(8))) == []
    after = store.statistics().wal
    appends = after.appends - before.appends
    fsyncs = after.fsyncs - before.fsyncs
    assert appends == 160
    assert fsyncs <= appends // 2, (appends, fsyncs)  # one fsync covered several writers
    assert service.get_library(lib.id).document_count == 160
    events = []
    while (event := sub.poll()) is not None:
        events.append(event)
    # the ids are the store's positions: consecutive, and published in position order
    assert [int(e.id) for e in events] == list(range(1, 162))
    assert store.head == service.last_event_id == 161
    assert logged_events(store) == events  # what the hub published is what the log holds
    titles = [e.data["title"] for e in events if e.type == "document.added"]
    for n in range(8):  # each writer's writes in its own order
        assert [t for t in titles if t.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(20)]


def test_a_write_is_invisible_and_unpublished_until_durable(
    service: VectorDBService, store: DiskStore, disk: Disk
) -> None:
    lib = service.create_library("l", dimension=DIM, index="flat")
    sub = service.subscribe(lib.id, since=None)
    disk.hold()
    done = threading.Event()

    def write() -> None:
        service.add_document(lib.id, {"id": "doc-1", "title": "t", "chunks": chunk(1)})
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert disk.syncing.wait(10)
    query = SearchQuery(vector=np.ones(DIM, dtype=np.float32), k=5)
    assert not done.is_set()
    assert service.get_library(lib.id).document_count == 0
    assert service.search(lib.id, query).results == []
    with pytest.raises(DocumentNotFoundError):
        service.get_document(lib.id, "doc-1")
    assert service.list_documents(lib.id).documents == []
    assert sub.poll() is None
    # nor in the store: its head, its log replay and its event history stop before it
    assert store.head == service.last_event_id == 1
    assert store.read(1, 10) == []
    assert [e.seq for e in logged_events(store)] == [1]
    disk.release()
    thread.join(10)
    assert done.is_set()
    assert service.get_library(lib.id).document_count == 1
    assert len(service.search(lib.id, query).results) == 1
    assert service.get_document(lib.id, "doc-1").title == "t"
    event = sub.get(timeout=5)
    assert event is not None
    assert event.type == "document.added"
    assert event.id == "2"
    assert store.head == 2


def test_checks_see_writes_that_are_ordered_but_not_yet_durable(
    service: VectorDBService, disk: Disk
) -> None:
    lib = service.create_library("l", dimension=DIM, index="flat")
    disk.delay = 0.02
    outcomes: list[str] = []

    def create() -> None:
        service.create_library("same name")
        outcomes.append("created")

    def add_same_id() -> None:
        service.add_document(lib.id, {"id": "doc-1", "title": "x", "chunks": chunk(2)})
        outcomes.append("added")

    errors = run_all(create, create, create, add_same_id, add_same_id, add_same_id)
    assert sorted(outcomes) == ["added", "created"]
    assert len(errors) == 4
    assert all(isinstance(e, AlreadyExistsError) for e in errors)

    doomed = service.create_library("doomed", dimension=DIM)
    errors = run_all(
        lambda: service.delete_library(doomed.id),
        lambda: service.add_document(doomed.id, {"title": "late", "chunks": chunk(3)}),
    )
    # either the add came first (then the deletion removed it) or it found no library
    assert all(isinstance(e, LibraryNotFoundError) for e in errors)
    with pytest.raises(LibraryNotFoundError):
        service.get_library(doomed.id)
    assert service.get_library(lib.id).document_count == 1


def test_a_write_waiting_for_its_fsync_already_counts_for_the_checks(
    service: VectorDBService, disk: Disk
) -> None:
    """The same as above without timing: while one write's fsync is held, it is not visible,
    yet every other write is checked against it."""
    lib = service.create_library("l", dimension=DIM, index="flat")
    disk.hold()
    creating = threading.Thread(target=lambda: service.create_library("taken"))
    creating.start()
    assert disk.syncing.wait(10)
    with pytest.raises(LibraryNotFoundError):
        service.find_library("taken")  # not visible yet...
    with pytest.raises(AlreadyExistsError):
        service.create_library("taken")  # ...but its name is taken
    with pytest.raises(AlreadyExistsError):
        service.update_library(lib.id, name="taken")
    disk.release()
    creating.join(10)
    assert service.find_library("taken").name == "taken"

    doomed = service.create_library("doomed", dimension=DIM)
    disk.hold()
    deleting = threading.Thread(target=lambda: service.delete_library(doomed.id))
    deleting.start()
    assert disk.syncing.wait(10)
    assert service.get_library(doomed.id).id == doomed.id  # still visible...
    with pytest.raises(LibraryNotFoundError):  # ...but being deleted: it takes no writes
        service.add_document(doomed.id, {"title": "late", "chunks": chunk(3)})
    with pytest.raises(LibraryNotFoundError):
        service.update_library(doomed.id, description="late")
    with pytest.raises(LibraryNotFoundError):
        service.delete_library(doomed.id)
    disk.release()
    deleting.join(10)
    with pytest.raises(LibraryNotFoundError):
        service.get_library(doomed.id)
    assert [x.name for x in service.list_libraries()] == ["l", "taken"]


def test_a_failed_fsync_fails_every_pending_write_and_keeps_reads(
    service: VectorDBService, store: DiskStore, disk: Disk
) -> None:
    lib = service.create_library("l", dimension=DIM, index="flat")
    service.add_document(lib.id, {"title": "kept", "chunks": chunk(1)})
    sub = service.subscribe(lib.id, since=None)
    events = logged_events(store)
    disk.fail = errno.EIO
    disk.delay = 0.01
    errors = run_all(
        *(
            lambda n=n: service.add_document(lib.id, {"title": str(n), "chunks": chunk(n)})
            for n in range(10, 16)
        )
    )
    assert len(errors) == 6
    assert all(isinstance(e, StorageError) for e in errors)
    with pytest.raises(StorageError):
        service.add_document(lib.id, {"title": "later", "chunks": chunk(99)})
    with pytest.raises(StorageError):
        service.check_ready()
    assert service.get_library(lib.id).document_count == 1
    query = SearchQuery(vector=np.ones(DIM, dtype=np.float32), k=10)
    assert [hit.document_title for hit in service.search(lib.id, query).results] == ["kept"]
    assert [d.title for d in service.list_documents(lib.id).documents] == ["kept"]
    assert sub.poll() is None
    assert store.head == service.last_event_id == 2
    assert logged_events(store) == events
    # what never became durable is not held against later writes either: they are refused
    # for the failed log, before any rule runs (not "already exists", not at a later position)
    with pytest.raises(StorageError):
        service.create_library("l")
    with pytest.raises(StorageError):
        store.write(lambda head: []).wait()
    store.stop()  # and none of them comes back from the log
    with DiskStore(store.path) as again:
        assert [d.title for d in again.iter_documents(lib.id)] == ["kept"]
        assert logged_events(again) == events
