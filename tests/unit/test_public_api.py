"""``import arrwdb``: the spec's in-process API, sync and async."""

from __future__ import annotations

import threading

import anyio
import numpy as np
import pytest

import arrwdb


@pytest.fixture
def db():  # type: ignore[no-untyped-def]
    database = arrwdb.open(history_size=50)
    yield database
    database.close()


def test_spec_example_in_memory(db: arrwdb.Database) -> None:
    vec = np.random.default_rng(1).random(384, dtype=np.float32)
    lib = db.create_library("papers", index="hnsw", metric="cosine")
    doc = lib.add_document(
        title="Attention", text="Transformers use attention.", metadata={"year": 2017}
    )
    docs = lib.add_documents(
        [
            {"title": "a", "chunks": [{"text": "x", "embedding": vec}]},
            {"title": "b", "chunks": [{"text": "y", "embedding": vec.tolist()}]},
        ]
    )
    assert [d.title for d in docs] == ["a", "b"]
    hits = lib.search("transformers", k=5, filter={"year": {"$gte": 2015}})
    assert [h.document_id for h in hits] == [doc.id]
    hits = lib.search(vec, k=5)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert {hits[0].document_id, hits[1].document_id} == {d.id for d in docs}
    assert (hits[0].chunk_id, hits[0].text, hits[0].metadata) is not None
    assert lib.get_document(doc.id).num_chunks == 1
    lib.delete_document(doc.id)
    assert db.get_library("papers").id == lib.id
    assert db.get_library(lib.id).name == "papers"
    assert [x.name for x in db.list_libraries()] == ["papers"]
    assert lib.document_count == 2
    events = list(lib.events(since="earliest", timeout=0.2))
    assert [e.type for e in events] == [
        "library.created",
        "document.added",
        "document.added",
        "document.added",
        "document.deleted",
    ]
    assert [int(e.id) for e in events] == [1, 2, 3, 4, 5]
    db.delete_library("papers")
    with pytest.raises(arrwdb.LibraryNotFoundError) as info:
        db.get_library("papers")
    assert info.value.code == "not_found"


def test_events_are_registered_when_the_call_returns(db: arrwdb.Database) -> None:
    lib = db.create_library("live")
    stream = lib.events(timeout=2)  # live only
    lib.add_document(title="after", text="written after the stream opened")
    first = next(iter(stream))
    assert first.type == "document.added"
    assert first.data["title"] == "after"
    stream.close()


def test_events_follow_live_writes_from_another_thread(db: arrwdb.Database) -> None:
    lib = db.create_library("threads")
    stream = lib.events(timeout=2)
    t = threading.Timer(0.05, lambda: lib.add_document(title="t", text="hello"))
    t.start()
    event = next(iter(stream))
    assert event.data["title"] == "t"
    t.join()


def test_a_lost_start_point_yields_a_reset_then_live(db: arrwdb.Database) -> None:
    lib = db.create_library("reset")
    for i in range(60):  # history_size=50
        lib.add_document(title=str(i), text="x")
    stream = lib.events(since="2", timeout=0.2)
    first = next(iter(stream))
    assert first.type == "stream.reset"
    lib.add_document(title="new", text="y")
    assert [e.data["title"] for e in stream] == ["new"]


def test_in_process_errors_carry_codes(db: arrwdb.Database) -> None:
    lib = db.create_library("errs", dimension=3)
    with pytest.raises(arrwdb.DimensionMismatchError) as info:
        lib.search([1.0, 2.0], k=1)
    assert info.value.code == "dimension_mismatch"
    with pytest.raises(arrwdb.InvalidFilterError) as finfo:
        lib.search([1.0, 2.0, 3.0], filter={"x": {"$near": 1}})
    assert finfo.value.code == "invalid_filter"
    assert "$near" in str(finfo.value)
    with pytest.raises(arrwdb.AlreadyExistsError):
        db.create_library("errs")


def test_async_twin() -> None:
    async def main() -> None:
        db = arrwdb.open_async()
        lib = await db.create_library("papers", index="flat")
        stream = lib.events(since="earliest", timeout=0.2)
        doc = await lib.add_document(title="Attention", text="attention is all you need")
        hits = await lib.search("attention", k=3)
        assert hits[0].document_id == doc.id
        got = await lib.get_document(doc.id)
        assert got.num_chunks == 1
        await lib.delete_document(doc.id)
        types = [e.type async for e in stream]
        assert types == ["library.created", "document.added", "document.deleted"]
        assert [x.name for x in await db.list_libraries()] == ["papers"]
        await db.delete_library("papers")
        await db.close()

    anyio.run(main)


def test_add_document_takes_chunks_as_plain_dicts(db: arrwdb.Database) -> None:
    vec = np.random.default_rng(2).random(8, dtype=np.float32)
    lib = db.create_library("dicts", dimension=8)
    doc = lib.add_document(
        title="t", chunks=[{"text": "a", "embedding": vec}, {"text": "b", "embedding": -vec}]
    )
    assert lib.get_document(doc.id).num_chunks == 2
    assert lib.search(vec, k=1)[0].text == "a"
    with pytest.raises(arrwdb.ValidationError) as info:
        lib.add_document(title="t", chunks=[{"text": "a", "vector": vec.tolist()}])
    assert "vector" in str(info.value)
