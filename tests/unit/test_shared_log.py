"""Several stores (servers) over one PostgreSQL schema: one order of positions, one set of rules,
each following the others' changes; and services that follow them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import pytest

import pg
from arrwdb.config import Settings
from arrwdb.container import build_container
from arrwdb.domain.changes import Change, DocumentSaved, LibraryCreated
from arrwdb.domain.errors import AlreadyExistsError, StorageError
from arrwdb.domain.models import Chunk, Document, Library, new_id, utcnow
from arrwdb.domain.ports import Head

PostgresStore = pytest.importorskip("arrwdb.adapters.storage.postgres").PostgresStore


@pytest.fixture
def stores(pg_schema: str) -> Iterator[Callable[..., PostgresStore]]:
    opened: list[PostgresStore] = []

    def open_one(**options: object) -> PostgresStore:
        store = PostgresStore(pg.url(), schema=pg_schema, poll_interval=0.05, **options)  # type: ignore[arg-type]
        store.start()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.stop()


def _document(library_id: str, title: str) -> Document:
    doc_id = new_id()
    vector = np.random.default_rng(len(title)).standard_normal(4).astype(np.float32)
    return Document(
        id=doc_id,
        library_id=library_id,
        title=title,
        num_chunks=1,
        chunks=(Chunk(new_id(), doc_id, 0, title, {}, vector),),
    )


def _create(store: PostgresStore, name: str) -> Library:
    def build(head: Head) -> Sequence[Change]:
        if head.library_named(name) is not None:
            raise AlreadyExistsError(f"a library named {name!r} already exists")
        return [LibraryCreated(Library(id=new_id(), name=name, dimension=4), utcnow())]

    batch = store.write(build).wait()
    change = batch.changes[0]
    assert isinstance(change, LibraryCreated)
    return change.library


def _save(store: PostgresStore, doc: Document) -> int:
    return store.write(lambda head: [DocumentSaved(doc, False, utcnow())]).wait().first


def test_a_second_store_follows_the_first_and_writes_after_it(stores) -> None:  # type: ignore[no-untyped-def]
    a, b = stores(), stores()
    lib = _create(a, "shared")
    doc = _document(lib.id, "one")
    assert _save(a, doc) == 2
    assert b.wait_for(1, timeout=5) == 2
    got = b.get_document(lib.id, doc.id)
    assert got is not None
    assert got.title == "one"
    # b writes after what a wrote: the rules see a's library, positions go on
    assert _save(b, _document(lib.id, "two")) == 3
    assert a.wait_for(2, timeout=5) == 3
    assert [d.title for d in a.iter_documents(lib.id)] == ["one", "two"]
    assert [batch.first for batch in a.read(0, 100)] == [1, 2, 3]


def test_two_stores_creating_one_name_at_once_one_wins(stores) -> None:  # type: ignore[no-untyped-def]
    a, b = stores(), stores()
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def create(store: PostgresStore) -> None:
        barrier.wait()
        try:
            _create(store, "same")
            outcomes.append("created")
        except AlreadyExistsError:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["created", "exists"]
    assert a.wait_for(0, timeout=5) == 1
    assert b.wait_for(0, timeout=5) == 1


def test_read_modify_writes_on_several_stores_lose_nothing(stores) -> None:  # type: ignore[no-untyped-def]
    """4 stores x 3 threads x 10 increments of one document's title: 120 at the end, and
    positions 3..122 each used once."""
    servers = [stores() for _ in range(4)]
    lib = _create(servers[0], "counter")
    doc = replace(_document(lib.id, "x"), title="0")
    _save(servers[0], doc)

    def increment(head: Head) -> Sequence[Change]:
        current = head.document(lib.id, doc.id)
        assert current is not None
        return [DocumentSaved(replace(current, title=str(int(current.title) + 1)), True, utcnow())]

    firsts: list[int] = []
    lock = threading.Lock()

    def work(store: PostgresStore) -> None:
        for _ in range(10):
            first = store.write(increment).wait().first
            with lock:
                firsts.append(first)

    threads = [threading.Thread(target=work, args=(s,)) for s in servers for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(firsts) == list(range(3, 123))
    for store in servers:
        assert store.wait_for(121, timeout=10) == 122
        got = store.get_document(lib.id, doc.id)
        assert got is not None
        assert got.title == "120"


def test_a_store_opens_with_the_tables_and_follows_without_notifications(stores) -> None:  # type: ignore[no-untyped-def]
    a = stores()
    lib = _create(a, "tables")
    for i in range(3):
        _save(a, _document(lib.id, f"d{i}"))
    b = stores(notify=False)  # polls only
    assert b.head == 4
    assert [d.title for d in b.iter_documents(lib.id)] == ["d0", "d1", "d2"]
    _save(a, _document(lib.id, "later"))
    started = time.monotonic()
    assert b.wait_for(4, timeout=5) == 5
    assert time.monotonic() - started < 5


def test_an_unreachable_database_fails_start_with_the_url_masked() -> None:
    store = PostgresStore("postgresql://someone:secret@127.0.0.1:1/nowhere", connect_timeout=1)
    with pytest.raises(StorageError) as info:
        store.start()
    message = str(info.value)
    assert "secret" not in message
    assert "postgresql://someone:***@127.0.0.1:1/nowhere" in message


def test_services_on_one_schema_see_each_others_writes(pg_schema: str) -> None:
    containers = []
    try:
        for _ in range(2):
            settings = Settings(
                storage="postgres",
                postgres_url=pg.url(),
                postgres_schema=pg_schema,
                postgres_poll_interval=0.05,
            )
            container = build_container(settings)
            container.init_resources()
            containers.append(container)
        a, b = (c.service() for c in containers)
        lib = a.create_library("seen", dimension=4, index="flat")
        vector = [1.0, 0.0, 0.0, 0.0]
        doc = a.add_document(
            lib.id, {"title": "hello", "chunks": [{"text": "hi", "embedding": vector}]}
        )
        deadline = time.monotonic() + 5
        while b.projection.applied < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        hits = b.search_vectors(lib.id, np.array([vector], dtype=np.float32), k=1)[0]
        assert [h.document_id for h in hits.results] == [doc.id]
        assert b.get_document(lib.id, doc.id).title == "hello"
    finally:
        for container in containers:
            container.shutdown_resources()


def test_a_schema_written_by_a_newer_version_is_refused(stores, pg_schema: str) -> None:  # type: ignore[no-untyped-def]
    stores().stop()  # creates the tables
    with pg.connect() as admin:
        admin.execute(f"UPDATE {pg_schema}.meta SET value = '99' WHERE key = 'schema_version'")
    store = PostgresStore(pg.url(), schema=pg_schema)
    with pytest.raises(StorageError) as info:
        store.start()
    assert "version 99" in str(info.value)
    assert "newer arrwDB" in str(info.value)


def test_without_the_extra_the_error_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "arrwdb.adapters.storage.postgres", raising=False)
    container = build_container(
        Settings(storage="postgres", postgres_url="postgresql://nobody@127.0.0.1:1/none")
    )
    with pytest.raises(StorageError) as info:
        container.init_resources()
    assert "pip install 'arrwdb[postgres]'" in str(info.value)
