"""The write pipeline over a durable store: concurrent writers share fsyncs (group commit),
nothing is visible or published before it is durable, and checks still see every ordered write.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from arrwdb.adapters.bus.inprocess import InProcessEventBus
from arrwdb.adapters.embedders.hashing import HashingEmbedder
from arrwdb.adapters.index import make_index
from arrwdb.adapters.storage._segments import SegmentFile
from arrwdb.adapters.storage.disk import DiskRepository
from arrwdb.domain.errors import AlreadyExistsError, LibraryNotFoundError, StorageError
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


@pytest.fixture
def disk() -> Disk:
    return Disk()


@pytest.fixture
def store(tmp_path: Path, disk: Disk) -> DiskRepository:
    return DiskRepository(tmp_path / "data", fsync="always", open_segment=disk.segment)


@pytest.fixture
def service(store: DiskRepository) -> Iterator[VectorDBService]:
    svc = VectorDBService(
        store, InProcessEventBus(history_size=100_000), make_index, {"hashing": HashingEmbedder()}
    )
    svc.load()
    yield svc
    svc.close()


def chunk(seed: int) -> list[dict[str, object]]:
    vec = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return [{"text": str(seed), "embedding": vec}]


def run_all(*targets: object) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(fn: object) -> None:
        barrier.wait()
        try:
            fn()  # type: ignore[operator]
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
    service: VectorDBService, store: DiskRepository, disk: Disk
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
    assert [int(e.id) for e in events] == list(range(1, 162))
    titles = [e.data["title"] for e in events if e.type == "document.added"]
    for n in range(8):  # each writer's writes in its own order
        assert [t for t in titles if t.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(20)]


def test_a_write_is_invisible_and_unpublished_until_durable(
    service: VectorDBService, disk: Disk
) -> None:
    lib = service.create_library("l", dimension=DIM, index="flat")
    sub = service.subscribe(lib.id, since=None)
    disk.held.clear()
    disk.syncing.clear()
    done = threading.Event()

    def write() -> None:
        service.add_document(lib.id, {"title": "t", "chunks": chunk(1)})
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert disk.syncing.wait(10)
    query = SearchQuery(vector=np.ones(DIM, dtype=np.float32), k=5)
    assert not done.is_set()
    assert service.get_library(lib.id).document_count == 0
    assert service.search(lib.id, query).results == []
    assert sub.poll() is None
    disk.held.set()
    thread.join(10)
    assert done.is_set()
    assert service.get_library(lib.id).document_count == 1
    assert len(service.search(lib.id, query).results) == 1
    event = sub.get(timeout=5)
    assert event is not None
    assert event.type == "document.added"


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


def test_a_failed_fsync_fails_every_pending_write_and_keeps_reads(
    service: VectorDBService, disk: Disk
) -> None:
    lib = service.create_library("l", dimension=DIM, index="flat")
    service.add_document(lib.id, {"title": "kept", "chunks": chunk(1)})
    sub = service.subscribe(lib.id, since=None)
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
    assert sub.poll() is None
