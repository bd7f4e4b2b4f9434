"""The data calls in process: upsert (created or replaced, decided under the write's ordering),
reads by ids and filter, counts, deletes in one commit, merge-patched metadata, searches
grouped by document, ``include``, and the async twins."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import numpy as np
import pytest

import arrwdb
from arrwdb.domain import _grouping
from arrwdb.domain._rules import merge_metadata
from arrwdb.domain.errors import (
    DimensionMismatchError,
    DocumentNotFoundError,
    InvalidArgumentError,
    InvalidFilterError,
    LibraryNotFoundError,
    PayloadTooLargeError,
)

DIM = 4


def vec(*values: float) -> list[float]:
    return [*values] + [0.0] * (DIM - len(values))


def chunks(text: str = "t", embedding: list[float] | None = None) -> list[dict[str, object]]:
    return [{"text": text, "embedding": embedding or vec(1)}]


@pytest.fixture
def db() -> Iterator[arrwdb.Database]:
    database = arrwdb.open(max_metadata_bytes=200)
    yield database
    database.close()


@pytest.fixture
def lib(db: arrwdb.Database) -> arrwdb.LibraryHandle:
    return db.create_library("data", dimension=DIM, index="flat", embedder=None)


def kinds(lib: arrwdb.LibraryHandle) -> list[tuple[str, str]]:
    return [
        (e.type, e.data["document_id"])
        for e in lib.events(since="earliest", timeout=0.1)
        if e.type.startswith("document.")
    ]


def test_upsert_adds_then_replaces(lib: arrwdb.LibraryHandle) -> None:
    made = lib.upsert_document(id="a", title="one", chunks=chunks("x"), metadata={"k": 1})
    again = lib.upsert_document("a", "two", chunks=chunks("y", vec(0, 1)))
    assert (made.id, again.id, again.title, again.metadata) == ("a", "a", "two", {})
    assert again.created_at == made.created_at
    assert again.updated_at > made.updated_at
    full = lib.get_document("a")
    assert [c.text for c in full.chunks] == ["y"]
    assert full.chunks[0].embedding is None  # no embeddings unless asked for
    assert lib.get_document("a", include_embedding=True).chunks[0].embedding is not None
    lib.upsert_documents([{"id": "a", "chunks": chunks()}, {"id": "b", "chunks": chunks()}])
    assert kinds(lib) == [
        ("document.added", "a"),
        ("document.updated", "a"),
        ("document.updated", "a"),
        ("document.added", "b"),
    ]
    assert lib.document_count == 2


def test_upsert_errors(lib: arrwdb.LibraryHandle) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        lib.upsert_documents([{"id": "a", "chunks": chunks()}, {"chunks": chunks()}])
    assert info.value.details["field"] == "documents[1].id"
    with pytest.raises(InvalidArgumentError) as info:
        lib.upsert_documents([{"id": "a", "chunks": chunks()}, {"id": "a", "chunks": chunks()}])
    assert info.value.details["field"] == "documents[1].id"
    for bad in ("", "a/b", "x" * 257, "count"):
        with pytest.raises(InvalidArgumentError) as info:
            lib.upsert_document(bad, chunks=chunks())
        assert info.value.details["field"] == "id"
    with pytest.raises(DimensionMismatchError):
        lib.upsert_document("a", chunks=[{"text": "t", "embedding": [1.0, 0.0]}])
    assert lib.document_count == 0


def test_concurrent_upserts_of_one_id_add_it_once(lib: arrwdb.LibraryHandle) -> None:
    barrier = threading.Barrier(8)

    def upsert(i: int) -> None:
        barrier.wait()
        for j in range(5):
            lib.upsert_document("same", f"{i}-{j}", chunks=chunks(f"{i}-{j}"))

    threads = [threading.Thread(target=upsert, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = kinds(lib)
    assert events[0] == ("document.added", "same")
    assert events[1:] == [("document.updated", "same")] * 39
    assert lib.count() == 1
    assert lib.chunk_count == 1


def test_get_and_query_documents(lib: arrwdb.LibraryHandle) -> None:
    for i in range(6):
        lib.upsert_document(f"d{i}", chunks=chunks(), metadata={"n": i, "odd": i % 2 == 1})
    page = lib.get_documents(["d4", "nope", "d0", "d4"])
    assert [d.id for d in page] == ["d4", "d0"]  # in the order asked, each once
    assert len(page) == 2
    assert page[0].chunks == ()
    assert page.next_cursor is None
    first = lib.query_documents(filter={"odd": True}, limit=2)
    assert [d.id for d in first.documents] == ["d1", "d3"]
    rest = lib.query_documents(filter={"odd": True}, limit=2, cursor=first.next_cursor)
    assert ([d.id for d in rest], rest.next_cursor) == (["d5"], None)
    by_ids = lib.query_documents(ids=["d5", "d2", "d3"], filter={"odd": True}, limit=1)
    assert [d.id for d in by_ids] == ["d5"]
    follow = lib.query_documents(
        ids=["d5", "d2", "d3"], filter={"odd": True}, cursor=by_ids.next_cursor
    )
    assert [d.id for d in follow] == ["d3"]
    assert [d.id for d in lib.query_documents()] == [f"d{i}" for i in range(6)]
    assert lib.count() == 6
    assert lib.count({"n": {"$gte": 4}}) == 2
    assert lib.count({}) == 6
    with pytest.raises(InvalidArgumentError) as info:
        lib.get_documents("d1")  # type: ignore[arg-type]
    assert info.value.details["field"] == "ids"
    with pytest.raises(InvalidArgumentError) as info:
        lib.query_documents(limit=0)
    assert info.value.details["field"] == "limit"
    with pytest.raises(InvalidArgumentError) as info:
        lib.query_documents(filter={"odd": True}, cursor=by_ids.next_cursor)
    assert info.value.details["field"] == "cursor"
    with pytest.raises(InvalidFilterError):
        lib.count({"n": {"$near": 1}})


def test_filters_are_on_document_metadata(lib: arrwdb.LibraryHandle) -> None:
    lib.upsert_document(
        "d", chunks=[{"text": "t", "embedding": vec(1), "metadata": {"part": "intro"}}]
    )
    assert lib.count({"part": "intro"}) == 0  # a chunk's metadata is not the document's
    assert len(lib.search(vec(1), filter={"part": "intro"})) == 1  # but search sees it


def test_delete_documents_is_one_commit(db: arrwdb.Database, lib: arrwdb.LibraryHandle) -> None:
    for i in range(5):
        lib.upsert_document(f"d{i}", chunks=chunks(), metadata={"keep": i == 2})
    head = db.service.last_event_id
    assert lib.delete_documents(filter={"keep": False}) == 4
    batches = db.service._store.read(head, 100)
    assert [len(b) for b in batches] == [4]
    assert [e.type for e in batches[0].events()] == ["document.deleted"] * 4
    assert lib.delete_documents(["d2", "d2", "nope"]) == 1
    assert lib.delete_documents([]) == 0
    assert lib.count() == 0
    for ids, where, field in ((None, None, "ids"), (["a"], {}, "filter")):
        with pytest.raises(InvalidArgumentError) as info:
            lib.delete_documents(ids, filter=where)
        assert info.value.details["field"] == field
    with pytest.raises(LibraryNotFoundError):
        db.service.delete_documents("nope", ids=["a"])


def test_delete_by_filter_takes_what_is_there_when_it_is_ordered(
    lib: arrwdb.LibraryHandle,
) -> None:
    stop = threading.Event()
    added: list[str] = []

    def adder() -> None:
        i = 0
        while not stop.is_set():
            lib.upsert_document(f"n{i}", chunks=chunks(), metadata={"tmp": True})
            added.append(f"n{i}")
            i += 1

    thread = threading.Thread(target=adder)
    thread.start()
    deleted = 0
    try:
        for _ in range(20):
            deleted += lib.delete_documents(filter={"tmp": True})
    finally:
        stop.set()
        thread.join()
    deleted += lib.delete_documents(filter={"tmp": True})
    assert deleted == len(added)
    assert lib.count() == 0


def test_update_merges_metadata(lib: arrwdb.LibraryHandle) -> None:
    lib.upsert_document("d", chunks=chunks(), metadata={"a": 1, "b": [1, 2], "c": "x"})
    merged = lib.update_document("d", metadata={"a": None, "c": "y", "new": True})
    assert merged.metadata == {"b": [1, 2], "c": "y", "new": True}
    assert lib.update_document("d", metadata={"gone": None}).metadata == merged.metadata
    content = lib.update_document("d", chunks=chunks("new"), metadata={"b": None})
    assert content.metadata == {"c": "y", "new": True}
    with pytest.raises(PayloadTooLargeError) as info:  # the limit is on the merged result
        lib.update_document("d", metadata={"big": "z" * 190})
    assert info.value.details["field"] == "metadata"
    assert lib.update_document("d", metadata={"c": None, "new": None, "big": "z" * 190}).metadata
    with pytest.raises(DocumentNotFoundError):
        lib.update_document("nope", metadata={"a": 1})
    assert [k for k, _ in kinds(lib)].count("document.updated") == 3  # the no-op wrote nothing


def test_merge_metadata() -> None:
    assert merge_metadata({"a": 1}, None) == {"a": 1}
    assert merge_metadata({"a": 1}, {}) == {"a": 1}
    assert merge_metadata({"a": 1, "b": 2}, {"a": None, "c": [3]}) == {"b": 2, "c": [3]}
    with pytest.raises(PayloadTooLargeError):
        merge_metadata({"a": "x" * 10}, {"b": "y" * 10}, max_bytes=15)


# -- search grouped by document -------------------------------------------------------------


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_group_by_document(
    db: arrwdb.Database, index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_grouping, "WIDEN_UP_TO", 64)  # reach the search that leaves out
    lib = db.create_library(f"g-{index}", dimension=DIM, index=index, embedder=None)
    long = [{"text": f"c{i}", "embedding": vec(1, 0.001 * i)} for i in range(400)]
    lib.upsert_document("long", chunks=long, metadata={"kind": "book"})
    for i in range(4):
        lib.upsert_document(f"s{i}", chunks=chunks(f"s{i}", vec(1, 0.6 + 0.1 * i)))
    assert {h.document_id for h in lib.search(vec(1), k=5)} == {"long"}
    hits = lib.search(vec(1), k=3, group_by="document")
    assert [h.document_id for h in hits] == ["long", "s0", "s1"]
    assert hits[0].text == "c0"
    everything = lib.search(vec(1), k=50, group_by="document", include=["text", "embedding"])
    assert [h.document_id for h in everything] == ["long", "s0", "s1", "s2", "s3"]
    assert all(h.embedding is not None and h.text is not None for h in everything)
    batch = lib.search_many(
        np.asarray([vec(1), vec(1, 1)], dtype=np.float32), k=2, group_by="document"
    )
    assert [[h.document_id for h in r] for r in batch] == [["long", "s0"], ["s3", "s2"]]
    only = lib.search(vec(1), k=3, group_by="document", filter={"kind": {"$exists": False}})
    assert [h.document_id for h in only] == ["s0", "s1", "s2"]
    with pytest.raises(InvalidArgumentError) as info:
        lib.search(vec(1), group_by="chunk")
    assert info.value.details["field"] == "group_by"


def test_search_include_in_process(lib: arrwdb.LibraryHandle) -> None:
    lib.upsert_document("d", chunks=chunks("hello"), metadata={"a": 1})
    hit = lib.search(vec(1), include=["metadata"])[0]
    assert (hit.text, hit.metadata, hit.embedding) == (None, {"a": 1}, None)
    hit = lib.search(vec(1), include=[])[0]
    assert (hit.text, hit.metadata) == (None, None)
    assert lib.search(vec(1), include=["text", "embedding"])[0].embedding is not None
    with pytest.raises(InvalidArgumentError) as info:
        lib.search(vec(1), include=["score"])
    assert info.value.details["field"] == "include"


def test_async_twins() -> None:
    async def run() -> None:
        async with arrwdb.open_async() as adb:
            lib = await adb.create_library("a", dimension=DIM, index="flat", embedder=None)
            await lib.upsert_document("d1", "one", chunks=chunks(), metadata={"n": 1})
            await lib.upsert_documents([{"id": "d2", "chunks": chunks(), "metadata": {"n": 2}}])
            assert [d.id for d in await lib.get_documents(["d2", "d1"])] == ["d2", "d1"]
            page = await lib.query_documents(filter={"n": {"$gt": 1}})
            assert [d.id for d in page.documents] == ["d2"]
            assert await lib.count() == 2
            assert (await lib.update_document("d1", metadata={"n": None})).metadata == {}
            assert [h.document_id for h in await lib.search(vec(1), group_by="document")] == [
                "d1",
                "d2",
            ]
            assert (await lib.get_document("d1")).chunks[0].embedding is None
            assert await lib.delete_documents(filter={"n": 2}) == 1
            assert await lib.delete_documents(["d1"]) == 1

    anyio.run(run)
