"""The database API contract (``arrwdb.api``), run over the in-process database
(``arrwdb.open()``) and the client of a server (``arrwdb.connect(url)``), sync and async: the
same calls give the same results, of the same types, and raise the same exceptions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

import arrwdb
from arrwdb.api import AsyncDatabaseAPI, DatabaseAPI
from arrwdb.config import Settings
from arrwdb.server import BackgroundServer

WAYS = ["in-process", "client"]


@pytest.fixture(scope="module")
def served() -> Iterator[BackgroundServer]:
    with BackgroundServer(Settings(), log_level="warning") as live:
        yield live


@pytest.fixture(params=WAYS)
def db(request: pytest.FixtureRequest, served: BackgroundServer) -> Iterator[DatabaseAPI]:
    database: DatabaseAPI = (
        arrwdb.open() if request.param == "in-process" else arrwdb.connect(served.url)
    )
    yield database
    database.close()


@pytest.fixture(params=WAYS)
async def adb(
    request: pytest.FixtureRequest, served: BackgroundServer
) -> AsyncIterator[AsyncDatabaseAPI]:
    database: AsyncDatabaseAPI = (
        arrwdb.open_async() if request.param == "in-process" else arrwdb.connect_async(served.url)
    )
    yield database
    await database.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def name() -> str:
    return f"lib-{uuid.uuid4().hex[:10]}"


def unit(*values: float) -> list[float]:
    v = np.asarray(values, dtype=np.float32)
    return (v / np.linalg.norm(v)).tolist()


def test_the_api_example_runs(db: DatabaseAPI) -> None:
    """The API's example, as written for the in-process library."""
    lib = db.create_library(name(), index="hnsw", metric="cosine")
    doc = lib.add_document(
        title="Attention", text="Attention is all you need.", metadata={"year": 2017}
    )
    vec = np.random.default_rng(0).random(lib.info.dimension or 256).astype(np.float32)
    docs = lib.add_documents([{"title": "a", "chunks": [{"text": "x", "embedding": vec}]}])
    hits = lib.search("attention", k=5, filter={"year": {"$gte": 2015}})
    assert (hits[0].document_id, hits[0].text, hits[0].metadata["year"]) == (
        doc.id,
        "Attention is all you need.",
        2017,
    )
    assert hits[0].chunk_id
    assert hits[0].score > 0
    hits = lib.search(vec, k=5)
    assert hits[0].document_id == docs[0].id
    assert lib.get_document(doc.id).id == doc.id
    lib.delete_document(doc.id)
    types = [e.type for e in lib.events(since="earliest", timeout=1.0)]
    assert types == ["library.created", "document.added", "document.added", "document.deleted"]
    assert db.get_library(lib.info.name).id == lib.id
    assert lib.id in [x.id for x in db.list_libraries()]
    db.delete_library(lib.info.name)
    with pytest.raises(arrwdb.LibraryNotFoundError):
        db.get_library(lib.id)


def test_libraries(db: DatabaseAPI) -> None:
    n = name()
    lib = db.create_library(
        n, description="d", metadata={"team": "x"}, dimension=3, metric="l2", index="flat"
    )
    info = lib.info
    assert isinstance(info, arrwdb.Library)
    assert (info.name, info.description, dict(info.metadata), info.dimension) == (
        n,
        "d",
        {"team": "x"},
        3,
    )
    assert (info.metric, info.index, info.document_count, info.chunk_count) == ("l2", "flat", 0, 0)
    assert db.get_library(n).id == db.get_library(lib.id).id == lib.id
    assert lib.update(description="e").description == "e"
    with pytest.raises(arrwdb.AlreadyExistsError) as exists:
        db.create_library(n)
    assert exists.value.code == "already_exists"
    assert db.get_or_create_library(n, dimension=3, metric="l2", index="flat").id == lib.id
    with pytest.raises(arrwdb.AlreadyExistsError):
        db.get_or_create_library(n, dimension=3, metric="cosine", index="flat")
    db.delete_library(lib.id)
    with pytest.raises(arrwdb.LibraryNotFoundError) as missing:
        db.get_library(n)
    assert missing.value.code == "not_found"


def test_documents_and_pages(db: DatabaseAPI) -> None:
    lib = db.create_library(name(), dimension=2, index="flat")
    added = lib.add_documents(
        [
            {
                "title": f"d{i}",
                "metadata": {"i": i},
                "chunks": [{"text": f"t{i}", "embedding": np.array([1.0, i], dtype=np.float32)}],
            }
            for i in range(7)
        ]
    )
    assert [d.title for d in added] == [f"d{i}" for i in range(7)]
    assert all(isinstance(d, arrwdb.Document) for d in added)
    seen: list[str] = []
    cursor = None
    while True:
        page = lib.list_documents(limit=3, cursor=cursor)
        assert isinstance(page, arrwdb.Page)
        seen += [d.id for d in page.documents]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [d.id for d in added]
    got = lib.get_document(added[2].id, include_embedding=True)
    assert got.metadata == {"i": 2}
    assert got.num_chunks == 1
    (chunk,) = got.chunks
    assert chunk.text == "t2"
    assert chunk.position == 0
    assert isinstance(chunk.embedding, np.ndarray)
    assert chunk.embedding.dtype == np.float32
    assert chunk.embedding.tolist() == [1.0, 2.0]
    assert lib.get_document(added[2].id, include_embedding=False).chunks[0].embedding is None
    changed = lib.update_document(added[2].id, title="new")
    assert changed.title == "new"
    assert lib.get_document(added[2].id).title == "new"
    lib.delete_document(added[2].id)
    with pytest.raises(arrwdb.DocumentNotFoundError) as missing:
        lib.get_document(added[2].id)
    assert missing.value.code == "not_found"
    assert lib.info.document_count == 6


def test_search(db: DatabaseAPI) -> None:
    lib = db.create_library(name(), dimension=2, index="flat")
    lib.add_documents(
        [
            {
                "title": f"d{i}",
                "metadata": {"even": i % 2 == 0},
                "chunks": [{"text": f"t{i}", "embedding": unit(1.0, i / 10)}],
            }
            for i in range(10)
        ]
    )
    result = lib.search([1.0, 0.0], k=3)
    assert isinstance(result, arrwdb.SearchResult)
    assert isinstance(result[0], arrwdb.SearchHit)
    assert [h.text for h in result] == ["t0", "t1", "t2"]
    assert [h.text for h in lib.search(np.array([1.0, 0.0]), k=3, filter={"even": False})] == [
        "t1",
        "t3",
        "t5",
    ]
    hit = lib.search([1.0, 0.0], k=1, include_embedding=True)[0]
    assert isinstance(hit.embedding, np.ndarray)
    assert hit.embedding.shape == (2,)
    many = lib.search_many([[1.0, 0.0], [0.0, 1.0]], k=2)
    assert [[h.text for h in r] for r in many] == [["t0", "t1"], ["t9", "t8"]]
    rows = lib.search_many(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), k=2)
    assert [[h.text for h in r] for r in rows] == [["t0", "t1"], ["t9", "t8"]]


@pytest.mark.parametrize(
    ("call", "error", "code"),
    [
        (lambda lib: lib.search([1.0, 0.0], k=0), arrwdb.InvalidArgumentError, "invalid_argument"),
        (
            lambda lib: lib.search([1.0, 0.0, 0.0]),
            arrwdb.DimensionMismatchError,
            "dimension_mismatch",
        ),
        (
            lambda lib: lib.search([1.0, 0.0], filter={"a": {"$near": 1}}),
            arrwdb.InvalidFilterError,
            "invalid_filter",
        ),
        (lambda lib: lib.search("text"), arrwdb.ValidationError, "embedder_required"),
        (
            lambda lib: lib.add_document(title="t", text="needs an embedder"),
            arrwdb.ValidationError,
            "embedder_required",
        ),
        (
            lambda lib: lib.add_document(chunks=[{"text": "x", "embedding": [float("nan"), 1.0]}]),
            arrwdb.InvalidVectorError,
            "invalid_vector",
        ),
        (
            lambda lib: lib.get_document(str(uuid.uuid4())),
            arrwdb.DocumentNotFoundError,
            "not_found",
        ),
        (
            lambda lib: lib.delete_document(str(uuid.uuid4())),
            arrwdb.DocumentNotFoundError,
            "not_found",
        ),
    ],
)
def test_errors_carry_the_same_class_and_code(
    db: DatabaseAPI, call: Any, error: type[Exception], code: str
) -> None:
    lib = db.create_library(name(), dimension=2, index="flat", embedder=None)
    with pytest.raises(error) as raised:
        call(lib)
    assert raised.value.code == code  # type: ignore[attr-defined]
    assert str(raised.value)


def test_events_replay_and_filter(db: DatabaseAPI) -> None:
    lib = db.create_library(name(), dimension=2, index="flat")
    stream = lib.events(timeout=2.0)  # live: open when it returns
    doc = lib.add_document(title="a", chunks=[{"text": "x", "embedding": [1.0, 0.0]}])
    lib.update_document(doc.id, metadata={"k": 1})
    first = next(iter(stream))
    assert isinstance(first, arrwdb.Event)
    assert (first.type, first.library_id, first.data["document_id"]) == (
        "document.added",
        lib.id,
        doc.id,
    )
    assert next(stream).type == "document.updated"
    assert stream.last_id is not None
    stream.close()
    replay = list(lib.events(since="earliest", types=["document.updated"], timeout=1.0))
    assert [e.type for e in replay] == ["document.updated"]
    everything = list(lib.events(since="earliest", timeout=1.0))
    ids = [int(e.id) for e in everything]
    assert ids == sorted(ids)
    assert len(ids) == 3
    after = list(lib.events(since=everything[0].id, timeout=1.0))
    assert [e.id for e in after] == [e.id for e in everything[1:]]
    assert everything[0].timestamp.tzinfo is not None


@pytest.mark.anyio
async def test_the_async_twin(adb: AsyncDatabaseAPI) -> None:
    lib = await adb.create_library(name(), dimension=2, index="flat")
    stream = lib.events(timeout=2.0)
    doc = await lib.add_document(title="a", chunks=[{"text": "x", "embedding": [1.0, 0.0]}])
    docs = await lib.add_documents(
        [{"title": "b", "chunks": [{"text": "y", "embedding": [0.0, 1.0]}]}]
    )
    hits = await lib.search([1.0, 0.0], k=2)
    assert [h.document_id for h in hits] == [doc.id, docs[0].id]
    assert (await lib.get_document(doc.id)).title == "a"
    page = await lib.list_documents(limit=1)
    assert len(page.documents) == 1
    assert page.next_cursor is not None
    await lib.update_document(doc.id, title="c")
    assert (await lib.get_info()).document_count == 2
    seen = []
    async for event in stream:
        seen.append(event.type)
        if len(seen) == 3:
            break
    stream.close()
    assert seen == ["document.added", "document.added", "document.updated"]
    with pytest.raises(arrwdb.DocumentNotFoundError):
        await lib.delete_document(str(uuid.uuid4()))
    assert (await adb.get_library(lib.id)).id == lib.id
    await adb.delete_library(lib.id)
    with pytest.raises(arrwdb.LibraryNotFoundError):
        await adb.get_library(lib.id)


def test_data_calls(db: DatabaseAPI) -> None:
    lib = db.create_library(name(), dimension=3, index="flat", embedder=None)

    def chunks(*v: float) -> list[dict[str, Any]]:
        return [{"text": "x", "embedding": list(v)}]

    first = lib.upsert_document("n1", "one", chunks=chunks(1, 0, 0), metadata={"n": 1, "tag": "a"})
    assert isinstance(first, arrwdb.Document)
    assert (first.id, first.title) == ("n1", "one")
    many = lib.upsert_documents(
        [
            {"id": "n2", "title": "two", "chunks": chunks(0.2, 1, 0), "metadata": {"n": 2}},
            {"id": "n3", "title": "three", "chunks": chunks(0, 0, 1), "metadata": {"n": 3}},
        ]
    )
    assert [d.id for d in many] == ["n2", "n3"]
    again = lib.upsert_document("n1", "one again", chunks=chunks(1, 1, 0), metadata={"n": 1})
    assert again.title == "one again"
    assert lib.info.document_count == 3
    page = lib.get_documents(["n3", "unknown", "n1"])
    assert [d.id for d in page.documents] == ["n3", "n1"]
    assert page.next_cursor is None
    seen: list[str] = []
    cursor = None
    while True:
        page = lib.query_documents(filter={"n": {"$gte": 2}}, limit=1, cursor=cursor)
        seen += [d.id for d in page.documents]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["n2", "n3"]
    assert (lib.count(), lib.count(filter={"n": 3})) == (3, 1)
    patched = lib.update_document("n2", metadata={"n": None, "seen": True})
    assert dict(patched.metadata) == {"seen": True}
    grouped = lib.search([1, 0, 0], k=2, group_by="document", include=["metadata"])
    assert [h.document_id for h in grouped] == ["n1", "n2"]
    assert grouped[0].text is None
    assert grouped[0].metadata is not None
    assert lib.delete_documents(filter={"n": 3}) == 1
    assert lib.delete_documents(ids=["n1", "unknown"]) == 1
    assert [d.id for d in lib.list_documents().documents] == ["n2"]
    with pytest.raises(arrwdb.ValidationError) as both:
        lib.delete_documents(ids=["n2"], filter={"n": 1})
    assert both.value.code == "invalid_argument"
    types = [e.type for e in lib.events(since="earliest", timeout=1.0)]
    assert types == [
        "library.created",
        "document.added",
        "document.added",
        "document.added",
        "document.updated",
        "document.updated",
        "document.deleted",
        "document.deleted",
    ]


@pytest.mark.anyio
async def test_the_async_data_calls(adb: AsyncDatabaseAPI) -> None:
    lib = await adb.create_library(name(), dimension=2, index="flat", embedder=None)
    await lib.upsert_document("a", "A", chunks=[{"text": "x", "embedding": [1, 0]}])
    await lib.upsert_documents([{"id": "b", "chunks": [{"text": "y", "embedding": [0, 1]}]}])
    assert await lib.count() == 2
    assert [d.id for d in (await lib.get_documents(["b", "a"])).documents] == ["b", "a"]
    assert [d.id for d in (await lib.query_documents(filter={})).documents] == ["a", "b"]
    assert await lib.delete_documents(ids=["a"]) == 1
    assert await lib.count() == 1


# -- live queries ---------------------------------------------------------------------------


def near_and_far(lib: Any) -> tuple[arrwdb.Document, arrwdb.Document]:
    near = lib.add_document(title="near", chunks=[{"text": "n", "embedding": unit(1.0, 0.5)}])
    far = lib.add_document(title="far", chunks=[{"text": "f", "embedding": [0.0, 1.0]}])
    return near, far


def change_ids(lib: Any) -> list[str]:
    return [e.id for e in lib.events(since="earliest", timeout=0.5)]


def test_a_top_k_watch_follows_adds_updates_and_deletes(db: DatabaseAPI) -> None:
    lib = db.create_library(name(), dimension=2, index="flat", embedder=None)
    near, far = near_and_far(lib)
    w = lib.watch([1.0, 0.0], k=1, filter={"keep": {"$ne": False}})
    assert isinstance(w.info, arrwdb.Watch)
    assert (w.id, w.info.library_id, w.info.k, w.info.threshold) == (w.info.id, lib.id, 1, None)
    assert w.info.filter == {"keep": {"$ne": False}}
    events = w.events(timeout=5.0)
    ready = next(events)
    assert isinstance(ready, arrwdb.WatchEvent)
    assert (ready.type, ready.library_id, ready.watch_id) == ("watch.ready", lib.id, w.id)
    assert [h["document_id"] for h in ready.data["results"]] == [near.id]
    assert ready.data["event_id"] == ready.id == change_ids(lib)[-1]
    best = lib.add_document(title="best", chunks=[{"text": "b", "embedding": [1.0, 0.0]}])
    left, entered = next(events), next(events)
    caused_by = change_ids(lib)[-1]  # the document.added of best
    assert (left.type, left.data["document_id"], left.data["reason"], left.data["rank"]) == (
        "watch.left",
        near.id,
        "outranked",
        0,
    )
    assert (entered.type, entered.data["document_id"], entered.data["rank"]) == (
        "watch.entered",
        best.id,
        0,
    )
    assert entered.data["score"] == pytest.approx(1.0)
    assert left.data["event_id"] == entered.data["event_id"] == caused_by
    assert (left.id, entered.id) == (f"{caused_by}.0", f"{caused_by}.1")
    lib.update_document(best.id, metadata={"keep": False})
    gone, back = next(events), next(events)
    assert (gone.data["document_id"], gone.data["reason"]) == (best.id, "filtered")
    assert (back.type, back.data["document_id"]) == ("watch.entered", near.id)
    lib.delete_document(near.id)
    deleted, refill = next(events), next(events)
    assert (deleted.type, deleted.data["reason"]) == ("watch.left", "deleted")
    assert (refill.type, refill.data["document_id"]) == ("watch.entered", far.id)
    assert events.last_id == refill.id
    # resumed from an id: exactly the events after it
    seen = [left, entered, gone, back, deleted, refill]
    again = w.events(since=ready.id, timeout=5.0)
    assert [next(again).id for _ in seen] == [e.id for e in seen]
    assert again.poll() is None
    again.close()
    w.close()
    closed = next(events)
    assert (closed.type, closed.data["reason"]) == ("stream.closed", "watch_deleted")
    assert list(events) == []


def test_a_match_watch_reports_chunks_that_reach_its_threshold(db: DatabaseAPI) -> None:
    lib = db.create_library(name(), dimension=2, index="flat", embedder=None)
    with lib.watch([1.0, 0.0], k=None, threshold=0.9) as w:
        assert (w.info.k, w.info.threshold) == (None, 0.9)
        events = w.events(timeout=5.0)
        ready = next(events)
        assert (ready.type, ready.data["results"]) == ("watch.ready", [])
        _, far = near_and_far(lib)  # near scores 0.89: below
        hit = lib.add_document(title="hit", chunks=[{"text": "h", "embedding": unit(1.0, 0.1)}])
        match = next(events)
        assert (match.type, match.data["document_id"]) == ("watch.match", hit.id)
        assert match.data["score"] == pytest.approx(0.995, abs=1e-3)
        assert match.data["event_id"] == change_ids(lib)[-1]
        lib.update_document(far.id, chunks=[{"text": "f", "embedding": [1.0, 0.0]}])
        updated = next(events)
        assert (updated.type, updated.data["document_id"]) == ("watch.match", far.id)
    assert next(events).data["reason"] == "watch_deleted"
    with pytest.raises(arrwdb.WatchNotFoundError) as missing:
        w.events()
    assert missing.value.code == "not_found"
    w.close()  # idempotent


def test_resuming_from_an_id_no_longer_kept_is_a_reset_then_a_fresh_ready(
    db: DatabaseAPI,
) -> None:
    lib = db.create_library(name(), dimension=2, index="flat", embedder=None)
    near, _ = near_and_far(lib)
    with lib.watch([1.0, 0.0], k=1) as w:
        events = w.events(since="1", timeout=5.0)  # from before the watch was made
        reset, ready = next(events), next(events)
        events.close()
        with pytest.raises(arrwdb.InvalidArgumentError) as bad:
            w.events(since="not an id")
        assert bad.value.details["field"] == "since"
    assert (reset.type, reset.data["reason"], reset.data["requested"]) == (
        "stream.reset",
        "history_lost",
        "1",
    )
    assert ready.type == "watch.ready"
    assert reset.id == ready.id == reset.data["resume_from"]
    assert [h["document_id"] for h in ready.data["results"]] == [near.id]


@pytest.mark.parametrize(
    ("query", "options", "error", "code", "field"),
    [
        ([1.0, 0.0], {"k": 0}, arrwdb.InvalidArgumentError, "invalid_argument", "k"),
        ([1.0, 0.0], {"k": 1001}, arrwdb.InvalidArgumentError, "invalid_argument", "k"),
        ([1.0, 0.0], {"k": None}, arrwdb.InvalidArgumentError, "invalid_argument", "k"),
        (
            [1.0, 0.0],
            {"k": 3, "threshold": "high"},
            arrwdb.InvalidArgumentError,
            "invalid_argument",
            "threshold",
        ),
        ([1.0, 0.0, 0.0], {}, arrwdb.DimensionMismatchError, "dimension_mismatch", None),
        (
            [1.0, 0.0],
            {"filter": {"a": {"$near": 1}}},
            arrwdb.InvalidFilterError,
            "invalid_filter",
            None,
        ),
        ("text", {}, arrwdb.ValidationError, "embedder_required", "query_text"),
    ],
)
def test_a_refused_watch_raises_as_search_does(
    db: DatabaseAPI,
    query: Any,
    options: dict[str, Any],
    error: type[arrwdb.ArrwdbError],
    code: str,
    field: str | None,
) -> None:
    lib = db.create_library(name(), dimension=2, index="flat", embedder=None)
    with pytest.raises(error) as raised:
        lib.watch(query, **options)
    assert raised.value.code == code
    if field is not None:
        assert raised.value.details["field"] == field
    if "threshold" not in options and options.get("k", 10) is not None:  # search: same code
        with pytest.raises(error) as searched:
            lib.search(query, k=options.get("k", 10), filter=options.get("filter"))
        assert searched.value.code == code


def test_a_watch_of_a_deleted_library(db: DatabaseAPI) -> None:
    lib = db.create_library(name(), dimension=2, index="flat", embedder=None)
    w = lib.watch([1.0, 0.0], k=2)
    events = w.events(timeout=5.0)
    assert next(events).type == "watch.ready"
    db.delete_library(lib.id)
    closed = next(events)
    assert (closed.type, closed.data["reason"]) == ("stream.closed", "library_deleted")
    with pytest.raises(arrwdb.WatchNotFoundError):
        w.events()
    w.close()
    with pytest.raises(arrwdb.LibraryNotFoundError):
        lib.watch([1.0, 0.0], k=2)


@pytest.mark.anyio
async def test_the_async_watch(adb: AsyncDatabaseAPI) -> None:
    lib = await adb.create_library(name(), dimension=2, index="flat", embedder=None)
    async with await lib.watch([1.0, 0.0], k=1) as w:
        assert (w.info.library_id, w.info.k) == (lib.id, 1)
        events = w.events(timeout=5.0)
        doc = await lib.add_document(title="a", chunks=[{"text": "a", "embedding": [1.0, 0.0]}])
        seen: list[arrwdb.WatchEvent] = []
        async for event in events:
            seen.append(event)
            if len(seen) == 2:
                break
        assert [e.type for e in seen] == ["watch.ready", "watch.entered"]
        assert seen[0].data["results"] == []  # open before the add
        assert seen[1].data["document_id"] == doc.id
        events.close()
    with pytest.raises(arrwdb.WatchNotFoundError):
        async for _ in w.events(timeout=1.0):
            pass
    with pytest.raises(arrwdb.InvalidArgumentError):
        await lib.watch([1.0, 0.0], k=0)
