"""The ``Store`` contract (a change log and the tables it leaves): one suite, run against every
adapter.

Adding an adapter means adding one entry to ``ADAPTERS``. Crashes, damaged files and OS failures
are the disk adapter's own business (``tests/property/test_disk_crash.py``); what every store
promises is here: positions (consecutive from 1, without gaps, in commit order), writes checked
against every ordered write, reads of the tables, the log read back, and (for a store that keeps
its log) the event history read back.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import pg
from arrwdb.adapters.storage.disk import DiskStore
from arrwdb.adapters.storage.memory import InMemoryStore
from arrwdb.domain.changes import (
    Batch,
    Change,
    DocumentDeleted,
    DocumentSaved,
    LibraryCreated,
    LibraryDeleted,
    LibraryUpdated,
    WriteKey,
)
from arrwdb.domain.errors import (
    AlreadyExistsError,
    HistoryLostError,
    IdempotencyMismatchError,
    InvalidArgumentError,
)
from arrwdb.domain.filters import compile_filter
from arrwdb.domain.models import Chunk, Document, Library, new_id, utcnow
from arrwdb.domain.ports import EventHistory, Head, Store


@dataclass(frozen=True)
class Adapter:
    make: Callable[[Path], Store]
    durable: bool


_SCHEMAS: dict[Path, str] = {}


def _postgres(path: Path) -> Store:
    from arrwdb.adapters.storage.postgres import PostgresStore

    schema = _SCHEMAS.setdefault(path, pg.new_schema())  # one per test: reopened as it was
    return PostgresStore(pg.url(), schema=schema, history_size=100_000, poll_interval=0.05)


ADAPTERS = {
    "memory": Adapter(lambda _: InMemoryStore(history_size=100_000), durable=False),
    "disk": Adapter(lambda path: DiskStore(path / "store", fsync="never"), durable=True),
    "postgres": Adapter(_postgres, durable=True),
}


@pytest.fixture(params=list(ADAPTERS))
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Adapter]:
    if request.param == "postgres":
        pg.require()
    yield ADAPTERS[request.param]
    schema = _SCHEMAS.pop(tmp_path, None)
    if schema is not None:
        pg.drop(schema)


@pytest.fixture
def store(adapter: Adapter, tmp_path: Path) -> Iterator[Store]:
    opened = adapter.make(tmp_path)
    opened.start()
    yield opened
    opened.stop()


def commit(store: Store, *changes: Change) -> Batch:
    return store.write(lambda head: changes).wait()


def library(name: str, dimension: int | None = 4) -> Library:
    return Library(id=new_id(), name=name, dimension=dimension)


def document(library_id: str, title: str = "doc", chunks: int = 2, seed: int = 0) -> Document:
    rng = np.random.default_rng(seed)
    doc_id = new_id()
    return Document(
        id=doc_id,
        library_id=library_id,
        title=title,
        metadata={"seed": seed, "tags": ["a", "b"]},
        num_chunks=chunks,
        chunks=tuple(
            Chunk(
                id=new_id(),
                document_id=doc_id,
                position=i,
                text=f"{title} part {i}",
                metadata={"i": i},
                embedding=rng.standard_normal(4).astype(np.float32),
            )
            for i in range(chunks)
        ),
    )


def create(store: Store, name: str = "lib", dimension: int | None = 4) -> Library:
    lib = library(name, dimension)
    commit(store, LibraryCreated(lib, utcnow()))
    return lib


def save(store: Store, *docs: Document, replaced: bool = False) -> Batch:
    at = utcnow()
    return commit(store, *(DocumentSaved(d, replaced, at) for d in docs))


def stored_library(store: Store, library_id: str) -> Library:
    found = [lib for lib in store.list_libraries() if lib.id == library_id]
    assert len(found) == 1
    return found[0]


def same_chunks(a: Document, b: Document) -> None:
    assert [(c.id, c.document_id, c.position, c.text, dict(c.metadata)) for c in a.chunks] == [
        (c.id, c.document_id, c.position, c.text, dict(c.metadata)) for c in b.chunks
    ]
    for x, y in zip(a.chunks, b.chunks, strict=True):
        assert x.embedding is not None
        assert y.embedding is not None
        assert x.embedding.dtype == np.float32
        np.testing.assert_array_equal(x.embedding, y.embedding)


def view(batch: Batch) -> tuple[object, ...]:
    """A batch as comparable values (numpy arrays do not compare with ``==``)."""
    out: list[object] = [batch.first]
    for change in batch.changes:
        if isinstance(change, DocumentSaved):
            doc = change.document
            chunks = tuple(
                (
                    c.id,
                    c.text,
                    dict(c.metadata),
                    None if c.embedding is None else c.embedding.tobytes(),
                )
                for c in doc.chunks
            )
            out.append(("saved", replace(doc, chunks=()), chunks, change.replaced, change.at))
        else:
            out.append(change)
    return tuple(out)


# -- positions ---------------------------------------------------------------------------------


def test_positions_are_consecutive_from_one_in_commit_order(store: Store) -> None:
    assert store.head == 0
    lib = create(store)
    assert store.head == 1
    docs = [document(lib.id, f"d{i}", seed=i) for i in range(3)]
    batch = save(store, *docs)
    assert (batch.first, batch.last) == (2, 4)
    assert [e.id for e in batch.events()] == ["2", "3", "4"]
    assert [e.type for e in batch.events()] == ["document.added"] * 3
    deleted = commit(store, DocumentDeleted(lib.id, docs[0].id, "d0", utcnow()))
    assert deleted.first == 5
    assert store.head == 5


def test_a_build_that_raises_or_returns_nothing_writes_nothing(store: Store) -> None:
    create(store)

    def refuse(head: Head) -> Sequence[Change]:
        raise AlreadyExistsError("no")

    with pytest.raises(AlreadyExistsError):
        store.write(refuse)
    empty = store.write(lambda head: []).wait()
    assert (empty.first, len(empty)) == (2, 0)
    assert store.head == 1
    assert create(store, "next") is not None
    assert store.head == 2  # no position was used


def test_a_build_sees_every_earlier_write(store: Store) -> None:
    lib = create(store, "taken")
    seen: dict[str, object] = {}

    def look(head: Head) -> Sequence[Change]:
        seen["by_id"] = head.library(lib.id)
        seen["by_name"] = head.library_named("taken")
        seen["missing"] = head.library_named("nope")
        return []

    store.write(look).wait()
    assert seen == {"by_id": lib, "by_name": lib, "missing": None}
    doc = document(lib.id)
    save(store, doc)

    def read_doc(head: Head) -> Sequence[Change]:
        found = head.document(lib.id, doc.id)
        assert found is not None
        same_chunks(found, doc)
        assert head.document(lib.id, "nope") is None
        return []

    store.write(read_doc).wait()


def test_concurrent_read_modify_writes_never_lose_one(store: Store) -> None:
    """Each write reads a counter under the store's ordering and writes it plus one: with 8
    threads x 25 writes, the last value is 200 and positions have no gap or duplicate."""
    lib = create(store)
    doc = document(lib.id, "0", chunks=1)
    save(store, doc)

    def increment(head: Head) -> Sequence[Change]:
        current = head.document(lib.id, doc.id)
        assert current is not None
        return [DocumentSaved(replace(current, title=str(int(current.title) + 1)), True, utcnow())]

    firsts: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            batch = store.write(increment).wait()
            with lock:
                firsts.append(batch.first)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    got = store.get_document(lib.id, doc.id)
    assert got is not None
    assert got.title == "200"
    assert sorted(firsts) == list(range(3, 203))
    assert store.head == 202


def test_wait_for_returns_once_the_head_passes(store: Store) -> None:
    lib = create(store)
    assert store.wait_for(0, timeout=0) == 1
    assert store.wait_for(1, timeout=0.05) == 1  # times out
    timer = threading.Timer(0.05, lambda: save(store, document(lib.id)))
    timer.start()
    assert store.wait_for(1, timeout=5) == 2
    timer.join()


# -- the log read back -------------------------------------------------------------------------


def test_read_returns_whole_batches_after_a_position(store: Store) -> None:
    lib = create(store)
    written = [save(store, *(document(lib.id, seed=s) for s in range(n))) for n in (1, 3, 2)]
    all_batches = store.read(0, 1000)
    assert [view(b) for b in all_batches[1:]] == [view(b) for b in written]
    assert all_batches[0].changes[0] == LibraryCreated(lib, all_batches[0].changes[0].at)
    assert [b.first for b in store.read(2, 1000)] == [3, 6]
    assert [b.first for b in store.read(1, 4)] == [2, 3]  # whole batches, up to 4 changes
    assert [b.first for b in store.read(1, 3)] == [2]
    assert [b.first for b in store.read(2, 1)] == [3]  # at least one, however large
    assert store.read(store.head, 10) == []


def test_read_of_a_trimmed_log_is_history_lost() -> None:
    store = InMemoryStore(history_size=3)
    store.start()
    lib = create(store)
    for i in range(5):
        save(store, document(lib.id, seed=i))
    with pytest.raises(HistoryLostError) as info:
        store.read(0, 10)
    assert info.value.code == "history_lost"
    assert [b.first for b in store.read(3, 10)] == [4, 5, 6]


def test_the_event_history_reads_the_log_back(store: Store) -> None:
    if not isinstance(store, EventHistory):
        pytest.skip("this store keeps no event history: the hub's memory is all there is")
    a, b = create(store, "a"), create(store, "b")
    batches = [save(store, *(document(lib.id, seed=i) for i in range(3))) for lib in (a, b, a)]
    deleted = commit(store, LibraryDeleted(b.id, "b", utcnow()))
    everything = [e for batch in [*batches, deleted] for e in batch.events()]
    assert store.earliest == 1
    events, through = store.events_after(2, 1000, None, store.head)
    assert events == everything
    assert through == store.head
    of_a, through = store.events_after(2, 1000, a.id, store.head)
    assert of_a == [e for e in everything if e.library_id == a.id]
    assert through == store.head
    page, through = store.events_after(2, 2, a.id, store.head)  # paged
    assert page == of_a[:2]
    rest, _ = store.events_after(through, 1000, a.id, store.head)
    assert page + rest == of_a
    capped, through = store.events_after(2, 1000, None, 6)  # never past ``until``
    assert [e.seq for e in capped] == [3, 4, 5, 6]
    assert through == 6


# -- the tables --------------------------------------------------------------------------------


def test_libraries_are_listed_in_creation_order_and_updated_in_place(store: Store) -> None:
    first, second, third = (create(store, n) for n in ("zeta", "alpha", "mid"))
    assert store.list_libraries() == [first, second, third]
    renamed = replace(second, name="b2", description="new", metadata={"k": [1, "x"]})
    commit(store, LibraryUpdated(renamed, ("description", "name"), utcnow()))
    updated = stored_library(store, second.id)
    assert (updated.name, updated.description, dict(updated.metadata)) == ("b2", "new", {})
    assert [lib.id for lib in store.list_libraries()] == [first.id, second.id, third.id]

    def names(head: Head) -> Sequence[Change]:
        assert head.library_named("alpha") is None
        assert head.library_named("b2") == updated
        return []

    store.write(names).wait()


def test_deleting_a_library_deletes_its_documents(store: Store) -> None:
    keep, gone = create(store, "keep"), create(store, "gone")
    kept_doc, gone_doc = document(keep.id), document(gone.id)
    save(store, kept_doc)
    save(store, gone_doc)
    commit(store, LibraryDeleted(gone.id, "gone", utcnow()))
    assert [lib.id for lib in store.list_libraries()] == [keep.id]
    assert store.get_document(gone.id, gone_doc.id) is None
    assert store.list_documents(gone.id, 10, None).documents == []
    assert list(store.iter_documents(gone.id)) == []
    assert store.get_document(keep.id, kept_doc.id) is not None


def test_a_saved_document_replaces_its_version_in_its_listing_place(store: Store) -> None:
    lib = create(store)
    docs = [document(lib.id, f"d{i}", seed=i) for i in range(3)]
    save(store, *docs)
    updated = replace(document(lib.id, "d1 v2", chunks=3, seed=9), id=docs[1].id)
    updated = replace(
        updated, chunks=tuple(replace(c, document_id=docs[1].id) for c in updated.chunks)
    )
    save(store, updated, replaced=True)
    listed = store.list_documents(lib.id, 10, None).documents
    assert [d.id for d in listed] == [d.id for d in docs]
    assert [d.title for d in listed] == ["d0", "d1 v2", "d2"]
    got = store.get_document(lib.id, docs[1].id)
    assert got is not None
    assert got.num_chunks == 3
    same_chunks(got, updated)


def test_the_library_record_follows_its_documents(store: Store) -> None:
    lib = create(store, dimension=None)
    docs = [document(lib.id, chunks=2, seed=i) for i in range(3)]
    batch = save(store, *docs)
    stored = stored_library(store, lib.id)
    assert (stored.document_count, stored.chunk_count, stored.dimension) == (3, 6, 4)
    assert isinstance(batch.changes[-1], DocumentSaved)
    assert stored.updated_at == batch.changes[-1].at
    bigger = replace(docs[0], chunks=docs[0].chunks * 2, num_chunks=4)
    save(store, bigger, replaced=True)
    commit(store, DocumentDeleted(lib.id, docs[2].id, docs[2].title, utcnow()))
    stored = stored_library(store, lib.id)
    assert (stored.document_count, stored.chunk_count) == (2, 6)


def test_get_document_returns_its_chunks_with_their_embeddings(store: Store) -> None:
    lib = create(store)
    doc = document(lib.id, "with chunks", chunks=4, seed=3)
    save(store, doc)
    got = store.get_document(lib.id, doc.id)
    assert got is not None
    assert (got.id, got.title, dict(got.metadata), got.num_chunks) == (
        doc.id,
        doc.title,
        dict(doc.metadata),
        4,
    )
    same_chunks(got, doc)
    assert store.get_document(lib.id, "nope") is None
    assert store.get_document("nope", doc.id) is None


def test_list_documents_pages_through_every_document_once_in_insertion_order(
    store: Store,
) -> None:
    lib = create(store)
    docs = [document(lib.id, f"d{i:02}", chunks=1, seed=i) for i in range(25)]
    for start in range(0, 25, 4):  # several writes, so the listing spans batches
        save(store, *docs[start : start + 4])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = store.list_documents(lib.id, 7, cursor)
        pages += 1
        assert len(page.documents) <= 7
        assert all(item.chunks == () for item in page.documents)
        seen.extend(item.id for item in page.documents)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [d.id for d in docs]
    assert pages == 4
    whole = store.list_documents(lib.id, 100, None)
    assert [d.id for d in whole.documents] == seen
    assert whole.next_cursor is None


def test_documents_are_listed_and_counted_by_their_metadata(store: Store) -> None:
    lib = create(store)
    docs = [document(lib.id, f"d{i:02}", chunks=1, seed=i) for i in range(12)]
    save(store, *docs[:6])
    save(store, *docs[6:])
    even = compile_filter({"seed": {"$in": list(range(0, 12, 2))}})
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list_documents(lib.id, 4, cursor, even)
        assert len(page.documents) <= 4
        assert all(item.chunks == () for item in page.documents)
        seen.extend(item.id for item in page.documents)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [d.id for d in docs[::2]]
    assert store.count_documents(lib.id, even) == 6
    # a replaced document keeps its place; one whose metadata no longer matches drops out
    save(store, replace(docs[0], metadata={"seed": 1}), replaced=True)
    assert [d.id for d in store.list_documents(lib.id, 100, None, even).documents] == seen[1:]
    assert store.count_documents(lib.id, even) == 5
    assert store.count_documents("nope", even) == 0
    assert store.list_documents("nope", 10, None, even).documents == []


def test_a_write_sees_every_document_of_a_library_in_its_head(store: Store) -> None:
    lib = create(store)
    docs = [document(lib.id, f"d{i}", chunks=1, seed=i) for i in range(5)]
    save(store, *docs[:3])
    save(store, *docs[3:])
    commit(store, DocumentDeleted(lib.id, docs[1].id, docs[1].title, utcnow()))
    seen: list[list[str]] = []

    def build(head: Head) -> Sequence[Change]:
        seen.append([d.id for d in head.documents(lib.id)])
        assert all(len(d.chunks) == 1 for d in head.documents(lib.id))
        assert list(head.documents("nope")) == []
        return []

    store.write(build).wait()
    assert seen == [[d.id for i, d in enumerate(docs) if i != 1]]


@pytest.mark.parametrize("cursor", ["not-a-cursor", "٣", "9" * 4_400])
def test_list_documents_rejects_a_cursor_it_did_not_issue(store: Store, cursor: str) -> None:
    lib = create(store)
    save(store, document(lib.id))
    with pytest.raises(InvalidArgumentError):
        store.list_documents(lib.id, 10, cursor)


def test_iter_documents_yields_every_document_with_chunks(store: Store) -> None:
    lib = create(store)
    docs = [document(lib.id, f"d{i}", chunks=i + 1, seed=i) for i in range(4)]
    save(store, *docs[:2])
    save(store, *docs[2:])
    got = list(store.iter_documents(lib.id))
    assert [d.id for d in got] == [d.id for d in docs]
    for mine, theirs in zip(docs, got, strict=True):
        same_chunks(theirs, mine)
    assert list(store.iter_documents("nope")) == []


def test_check_passes_while_open_and_stop_is_idempotent(adapter: Adapter, tmp_path: Path) -> None:
    store = adapter.make(tmp_path)
    store.start()
    store.check()
    create(store)
    store.stop()
    store.stop()


def test_a_durable_store_reopens_with_its_tables_and_positions(
    adapter: Adapter, tmp_path: Path
) -> None:
    if not adapter.durable:
        pytest.skip("an in-memory store keeps nothing")
    store = adapter.make(tmp_path)
    store.start()
    lib = create(store)
    docs = [document(lib.id, seed=i) for i in range(3)]
    written = [save(store, d) for d in docs]
    store.stop()
    again = adapter.make(tmp_path)
    again.start()
    try:
        assert again.head == 4
        assert [d.id for d in again.iter_documents(lib.id)] == [d.id for d in docs]
        assert [view(b) for b in again.read(1, 100)] == [view(b) for b in written]
        ids = itertools.count(5)
        batch = save(again, document(lib.id, seed=9))
        assert batch.first == next(ids)
    finally:
        again.stop()


# -- idempotent writes -------------------------------------------------------------------------


def _refuse(head: Head) -> Sequence[Change]:
    raise AssertionError("a repeated keyed write must not run its rule")


def test_a_write_made_again_with_its_key_writes_nothing_and_answers_as_the_first(
    store: Store,
) -> None:
    lib = create(store)
    doc = document(lib.id, "keyed")
    key = WriteKey("retry-me", "fingerprint-1")
    first = store.write(lambda head: [DocumentSaved(doc, False, utcnow())], key).wait()
    again = store.write(_refuse, key).wait()
    assert (again.first, again.last) == (first.first, first.last)
    saved = again.changes[0]
    assert isinstance(saved, DocumentSaved)
    assert replace(saved.document, chunks=()) == replace(doc, chunks=())
    assert store.head == first.last  # nothing written
    with pytest.raises(IdempotencyMismatchError) as info:
        store.write(_refuse, WriteKey("retry-me", "another request"))
    assert info.value.code == "idempotency_mismatch"
    other = store.write(lambda head: [DocumentDeleted(lib.id, doc.id, "keyed", utcnow())])
    assert other.wait().first == first.last + 1  # unkeyed writes go on


def test_a_durable_store_remembers_keys_across_a_restart(adapter: Adapter, tmp_path: Path) -> None:
    if not adapter.durable:
        pytest.skip("an in-memory store keeps nothing")
    store = adapter.make(tmp_path)
    store.start()
    lib = create(store)
    key = WriteKey("k", "f")
    first = store.write(lambda head: [DocumentSaved(document(lib.id), False, utcnow())], key)
    batch = first.wait()
    if isinstance(store, DiskStore):
        store.snapshot()  # the key is in the snapshot, no longer only in the log
    store.stop()
    again = adapter.make(tmp_path)
    again.start()
    try:
        repeated = again.write(_refuse, key).wait()
        assert (repeated.first, repeated.last) == (batch.first, batch.last)
        assert again.head == batch.last
    finally:
        again.stop()
