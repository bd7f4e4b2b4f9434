"""The ``Repository`` contract: one suite, run against every adapter.

Adding an adapter means adding one entry to ``ADAPTERS``. Durability itself (crashes, reopening,
damaged files) is the disk adapter's own business: ``tests/property/test_disk_crash.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from arrwdb.adapters.storage.disk import DiskRepository
from arrwdb.adapters.storage.memory import InMemoryRepository
from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Chunk, Document, Library, new_id
from arrwdb.domain.ports import Repository


@dataclass(frozen=True)
class Adapter:
    make: Callable[[Path], Repository]
    keeps_events: bool


ADAPTERS = {
    "memory": Adapter(lambda _: InMemoryRepository(), keeps_events=False),
    "disk": Adapter(lambda path: DiskRepository(path / "store"), keeps_events=True),
}


@pytest.fixture(params=list(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> Adapter:
    return ADAPTERS[request.param]


@pytest.fixture
def repo(adapter: Adapter, tmp_path: Path) -> Iterator[Repository]:
    store = adapter.make(tmp_path)
    yield store
    store.close()


_ids = itertools.count(1)


def event(kind: str, library_id: str | None, **data: object) -> Event:
    return Event(id=str(next(_ids)), type=kind, library_id=library_id, data=data)


def library(name: str) -> Library:
    return Library(id=new_id(), name=name, dimension=4)


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


def create(repo: Repository, name: str = "lib") -> Library:
    lib = library(name)
    repo.save_library(lib, event("library.created", lib.id)).wait()
    return lib


def add(repo: Repository, lib: Library, *docs: Document) -> Library:
    """Save ``docs`` with the library record's counts updated, as the service would."""
    current = {d.id: d for d in repo.iter_documents(lib.id)} | {d.id: d for d in docs}
    lib = replace(
        lib,
        document_count=len(current),
        chunk_count=sum(d.num_chunks for d in current.values()),
    )
    repo.save_documents(lib, docs, [event("document.added", lib.id, id=d.id) for d in docs]).wait()
    return lib


def same_chunks(a: Document, b: Document) -> None:
    assert [(c.id, c.document_id, c.position, c.text, dict(c.metadata)) for c in a.chunks] == [
        (c.id, c.document_id, c.position, c.text, dict(c.metadata)) for c in b.chunks
    ]
    for x, y in zip(a.chunks, b.chunks, strict=True):
        assert x.embedding is not None
        assert y.embedding is not None
        assert x.embedding.dtype == np.float32
        np.testing.assert_array_equal(x.embedding, y.embedding)


def test_libraries_are_saved_got_and_listed_in_creation_order(repo: Repository) -> None:
    libs = [create(repo, name) for name in ("zeta", "alpha", "mid")]
    assert repo.list_libraries() == libs
    for lib in libs:
        assert repo.get_library(lib.id) == lib
    assert repo.get_library("nope") is None


def test_saving_a_library_again_replaces_it_in_place(repo: Repository) -> None:
    first, second, third = (create(repo, n) for n in ("a", "b", "c"))
    renamed = replace(second, name="b2", description="new", metadata={"k": [1, "x"]})
    repo.save_library(renamed, event("library.updated", second.id)).wait()
    assert repo.get_library(second.id) == renamed
    assert [lib.id for lib in repo.list_libraries()] == [first.id, second.id, third.id]
    repo.save_library(replace(third, name="c2"), None).wait()  # a write without an event
    assert repo.get_library(third.id) == replace(third, name="c2")


def test_deleting_a_library_deletes_its_documents(repo: Repository) -> None:
    keep, gone = create(repo, "keep"), create(repo, "gone")
    kept_doc = document(keep.id)
    add(repo, keep, kept_doc)
    gone_doc = document(gone.id)
    add(repo, gone, gone_doc)
    repo.delete_library(gone.id, event("library.deleted", gone.id)).wait()
    assert repo.get_library(gone.id) is None
    assert [lib.id for lib in repo.list_libraries()] == [keep.id]
    assert repo.get_document(gone.id, gone_doc.id) is None
    assert repo.list_documents(gone.id, 10, None).items == []
    assert list(repo.iter_documents(gone.id)) == []
    assert repo.get_document(keep.id, kept_doc.id) is not None


def test_save_documents_adds_and_replaces_keeping_the_listing_position(
    repo: Repository,
) -> None:
    lib = create(repo)
    docs = [document(lib.id, f"d{i}", seed=i) for i in range(3)]
    lib = add(repo, lib, *docs)
    updated = replace(document(lib.id, "d1 v2", chunks=3, seed=9), id=docs[1].id)
    updated = replace(
        updated, chunks=tuple(replace(c, document_id=docs[1].id) for c in updated.chunks)
    )
    add(repo, lib, updated)
    listed = repo.list_documents(lib.id, 10, None).items
    assert [d.id for d in listed] == [d.id for d in docs]
    assert [d.title for d in listed] == ["d0", "d1 v2", "d2"]
    got = repo.get_document(lib.id, docs[1].id)
    assert got is not None
    assert got.num_chunks == 3
    same_chunks(got, updated)


def test_delete_document_removes_only_that_document(repo: Repository) -> None:
    lib = create(repo)
    docs = [document(lib.id, f"d{i}", seed=i) for i in range(3)]
    lib = add(repo, lib, *docs)
    lib = replace(lib, document_count=2, chunk_count=4)
    repo.delete_document(lib, docs[0].id, event("document.deleted", lib.id, id=docs[0].id)).wait()
    assert repo.get_document(lib.id, docs[0].id) is None
    assert [d.id for d in repo.iter_documents(lib.id)] == [docs[1].id, docs[2].id]
    assert repo.get_library(lib.id) == lib


def test_get_document_returns_chunks_with_their_embeddings(repo: Repository) -> None:
    lib = create(repo)
    doc = document(lib.id, "with chunks", chunks=4, seed=3)
    add(repo, lib, doc)
    got = repo.get_document(lib.id, doc.id)
    assert got is not None
    assert (got.id, got.title, dict(got.metadata), got.num_chunks) == (
        doc.id,
        doc.title,
        dict(doc.metadata),
        4,
    )
    same_chunks(got, doc)
    assert repo.get_document(lib.id, "nope") is None
    assert repo.get_document("nope", doc.id) is None


def test_list_documents_pages_through_every_document_once_in_insertion_order(
    repo: Repository,
) -> None:
    lib = create(repo)
    docs = [document(lib.id, f"d{i:02}", chunks=1, seed=i) for i in range(25)]
    for start in range(0, 25, 4):  # several writes, so insertion order spans records
        lib = add(repo, lib, *docs[start : start + 4])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = repo.list_documents(lib.id, 7, cursor)
        pages += 1
        assert len(page.items) <= 7
        assert all(item.chunks == () for item in page.items)
        seen.extend(item.id for item in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [d.id for d in docs]
    assert pages == 4
    whole = repo.list_documents(lib.id, 100, None)
    assert [d.id for d in whole.items] == seen
    assert whole.next_cursor is None


def test_list_documents_rejects_a_cursor_it_did_not_issue(repo: Repository) -> None:
    lib = create(repo)
    add(repo, lib, document(lib.id))
    with pytest.raises(InvalidArgumentError):
        repo.list_documents(lib.id, 10, "not-a-cursor")


def test_iter_documents_yields_every_document_with_chunks(repo: Repository) -> None:
    lib = create(repo)
    docs = [document(lib.id, f"d{i}", chunks=i + 1, seed=i) for i in range(4)]
    lib = add(repo, lib, *docs[:2])
    add(repo, lib, *docs[2:])
    got = list(repo.iter_documents(lib.id))
    assert [d.id for d in got] == [d.id for d in docs]
    for mine, theirs in zip(docs, got, strict=True):
        same_chunks(theirs, mine)
    assert list(repo.iter_documents("nope")) == []


def test_library_record_follows_document_writes(repo: Repository) -> None:
    lib = create(repo)
    docs = [document(lib.id, chunks=2, seed=i) for i in range(3)]
    lib = add(repo, lib, *docs)
    assert repo.get_library(lib.id) == lib
    assert (lib.document_count, lib.chunk_count) == (3, 6)
    lib = replace(lib, document_count=2, chunk_count=4)
    repo.delete_document(lib, docs[2].id, event("document.deleted", lib.id)).wait()
    stored = repo.get_library(lib.id)
    assert stored is not None
    assert (stored.document_count, stored.chunk_count) == (2, 4)


def test_recent_events_are_those_given_to_writes_oldest_first(
    repo: Repository, adapter: Adapter
) -> None:
    lib = library("events")
    given = [event("library.created", lib.id)]
    repo.save_library(lib, given[0]).wait()
    docs = [document(lib.id, seed=i) for i in range(2)]
    batch = [event("document.added", lib.id, id=d.id) for d in docs]
    repo.save_documents(replace(lib, document_count=2, chunk_count=4), docs, batch).wait()
    given += batch
    given.append(event("library.deleted", lib.id))
    repo.delete_library(lib.id, given[-1]).wait()
    if adapter.keeps_events:
        assert repo.recent_events(100) == given
        assert repo.recent_events(2) == given[-2:]
    else:
        assert repo.recent_events(100) == []
    assert repo.recent_events(0) == []


def test_check_passes_while_open_and_close_is_idempotent(adapter: Adapter, tmp_path: Path) -> None:
    store = adapter.make(tmp_path)
    store.check()
    create(store)
    store.close()
    store.close()
