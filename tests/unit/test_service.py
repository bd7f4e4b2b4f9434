"""The application service: use cases, errors with codes, nothing partially written."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arrwdb.domain.errors import (
    AlreadyExistsError,
    ArrwdbError,
    DimensionMismatchError,
    DocumentNotFoundError,
    InvalidArgumentError,
    InvalidFilterError,
    InvalidVectorError,
    LibraryNotFoundError,
)
from arrwdb.domain.models import NewChunk, NewDocument, SearchQuery
from arrwdb.domain.service import VectorDBService

DIM = 8


def _vec(seed: int, dim: int = DIM) -> list[float]:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32).tolist()


def _doc(title: str, seed: int, n: int = 2, **metadata: object) -> dict[str, object]:
    chunks = [{"text": f"{title} {i}", "embedding": _vec(seed * 100 + i)} for i in range(n)]
    return {"title": title, "chunks": chunks, "metadata": metadata}


def _snapshot(service: VectorDBService, library_id: str) -> tuple[object, ...]:
    """Everything observable about a library, to prove a failed call changed nothing."""
    lib = service.get_library(library_id)
    docs = service.list_documents(library_id, limit=1000).documents
    hits = service.search(library_id, SearchQuery(vector=_vec(1), k=1000)).results
    return (
        lib.document_count,
        lib.chunk_count,
        lib.dimension,
        [d.id for d in docs],
        sorted(h.chunk_id for h in hits),
        service.last_event_id,
    )


@pytest.fixture(params=["flat", "hnsw"])
def lib_id(request: pytest.FixtureRequest, service: VectorDBService) -> str:
    lib = service.create_library("lib", dimension=DIM, index=request.param)
    service.add_documents(lib.id, [_doc("a", 1, year=2017), _doc("b", 2, year=2020)])
    return lib.id


@pytest.mark.parametrize(
    ("documents", "error", "code"),
    [
        (
            [_doc("ok", 3), {"title": "bad", "chunks": [{"text": "x", "embedding": [1.0, 2.0]}]}],
            DimensionMismatchError,
            "dimension_mismatch",
        ),
        (
            [
                _doc("ok", 3),
                {"title": "nan", "chunks": [{"text": "x", "embedding": [math.nan] * DIM}]},
            ],
            InvalidVectorError,
            "invalid_vector",
        ),
        (
            [
                {
                    "title": "inf",
                    "chunks": [{"text": "x", "embedding": [math.inf] + [0.0] * (DIM - 1)}],
                }
            ],
            InvalidVectorError,
            "invalid_vector",
        ),
        ([_doc("ok", 3), {"title": "neither"}], InvalidArgumentError, "invalid_argument"),
        ([{"title": "both", "text": "t", "chunks": []}], InvalidArgumentError, "invalid_argument"),
        (
            [{"title": "nested", "text": "t", "metadata": {"a": {"b": 1}}}],
            InvalidArgumentError,
            "invalid_argument",
        ),
        ([{"title": "x", "text": "t", "unknown": 1}], InvalidArgumentError, "invalid_argument"),
    ],
)
def test_bad_documents_raise_their_code_and_write_nothing(
    service: VectorDBService, lib_id: str, documents: list, error: type, code: str
) -> None:
    before = _snapshot(service, lib_id)
    with pytest.raises(error) as info:
        service.add_documents(lib_id, documents)
    assert info.value.code == code
    assert _snapshot(service, lib_id) == before


def test_the_offending_chunk_is_named(service: VectorDBService, lib_id: str) -> None:
    bad = {
        "title": "bad",
        "chunks": [
            {"text": "x", "embedding": _vec(1)},
            {"text": "y", "embedding": [1.0, 2.0, 3.0]},
        ],
    }
    with pytest.raises(DimensionMismatchError, match=r"documents\[1\]\.chunks\[1\]\.embedding"):
        service.add_documents(lib_id, [_doc("ok", 5), bad])


def test_a_taken_document_id_is_rejected(service: VectorDBService, lib_id: str) -> None:
    doc = service.add_document(lib_id, _doc("c", 9))
    before = _snapshot(service, lib_id)
    with pytest.raises(AlreadyExistsError):
        service.add_documents(lib_id, [_doc("d", 10), {**_doc("e", 11), "id": doc.id}])
    assert _snapshot(service, lib_id) == before


@pytest.mark.parametrize(
    ("query", "error", "code"),
    [
        (SearchQuery(vector=_vec(1), k=0), InvalidArgumentError, "invalid_argument"),
        (SearchQuery(vector=_vec(1), k=1001), InvalidArgumentError, "invalid_argument"),
        (SearchQuery(vector=_vec(1), k=True), InvalidArgumentError, "invalid_argument"),
        (SearchQuery(vector=_vec(1), ef=0), InvalidArgumentError, "invalid_argument"),
        (SearchQuery(vector=[1.0] * (DIM + 1)), DimensionMismatchError, "dimension_mismatch"),
        (SearchQuery(vector=[math.nan] * DIM), InvalidVectorError, "invalid_vector"),
        (SearchQuery(vector=[0.0] * DIM), InvalidVectorError, "invalid_vector"),
        (
            SearchQuery(vector=_vec(1), filter={"year": {"$regex": "x"}}),
            InvalidFilterError,
            "invalid_filter",
        ),
        (SearchQuery(), InvalidArgumentError, "invalid_argument"),
        (SearchQuery(text="x", vector=_vec(1)), InvalidArgumentError, "invalid_argument"),
    ],
)
def test_bad_searches_raise_their_code(
    service: VectorDBService, lib_id: str, query: SearchQuery, error: type, code: str
) -> None:
    with pytest.raises(error) as info:
        service.search(lib_id, query)
    assert info.value.code == code


def test_unknown_filter_operator_is_named(service: VectorDBService, lib_id: str) -> None:
    with pytest.raises(InvalidFilterError, match=r"\$regex"):
        service.search(lib_id, SearchQuery(vector=_vec(1), filter={"a": {"$regex": "x"}}))


def test_unknown_library_and_document(service: VectorDBService, lib_id: str) -> None:
    for call in (
        lambda: service.get_library("nope"),
        lambda: service.search("nope", SearchQuery(vector=_vec(1))),
        lambda: service.add_document("nope", _doc("x", 1)),
        lambda: service.delete_library("nope"),
        lambda: service.subscribe("nope"),
    ):
        with pytest.raises(LibraryNotFoundError) as info:
            call()
        assert info.value.code == "not_found"
    before = _snapshot(service, lib_id)
    for call in (
        lambda: service.get_document(lib_id, "nope"),
        lambda: service.delete_document(lib_id, "nope"),
        lambda: service.update_document(lib_id, "nope", title="t"),
    ):
        with pytest.raises(DocumentNotFoundError) as info:
            call()
        assert info.value.code == "not_found"
    assert _snapshot(service, lib_id) == before


def test_duplicate_library_name(service: VectorDBService, lib_id: str) -> None:
    events = service.last_event_id
    with pytest.raises(AlreadyExistsError) as info:
        service.create_library("lib")
    assert info.value.code == "already_exists"
    other = service.create_library("other")
    with pytest.raises(AlreadyExistsError):
        service.update_library(other.id, name="lib")
    assert service.get_library(other.id).name == "other"
    assert len(service.list_libraries()) == 2
    assert service.last_event_id == events + 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"metric": "hamming"}, "metric"),
        ({"index": "ivf"}, "index"),
        ({"dimension": 0}, "dimension"),
        ({"index_params": {"m": 1}}, "m"),
        ({"index_params": {"bogus": 1}}, "bogus"),
        ({"embedder": "nope"}, "embedder"),
    ],
)
def test_bad_library_options(service: VectorDBService, options: dict, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        service.create_library("x", **options)
    assert service.list_libraries() == []


def test_errors_share_one_tree() -> None:
    for cls in (AlreadyExistsError, InvalidFilterError, LibraryNotFoundError):
        assert issubclass(cls, ArrwdbError)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_text_search_ranks_documents_with_the_query_words_first(
    service: VectorDBService, index: str
) -> None:
    lib = service.create_library("texts", index=index)
    corpus = {
        "cats": "Cats are small domesticated felines that purr and chase mice.",
        "rockets": "Rockets burn propellant to reach orbit around the planet.",
        "bread": "Bread is baked from flour, water, salt and yeast.",
        "rivers": "Rivers carry fresh water from mountains down to the sea.",
        "chess": "Chess is a board game of strategy between two players.",
    }
    ids = {
        d.title: d.id
        for d in service.add_documents(lib.id, [{"title": t, "text": x} for t, x in corpus.items()])
    }
    for title, query in [
        ("rockets", "propellant orbit"),
        ("chess", "board game strategy"),
        ("cats", "felines purr"),
    ]:
        hits = service.search(lib.id, SearchQuery(text=query, k=5)).results
        assert hits[0].document_id == ids[title]
        assert hits[0].score > hits[1].score


def test_filtered_search_returns_the_k_best_matching(service: VectorDBService) -> None:
    rng = np.random.default_rng(7)
    for index in ("flat", "hnsw"):
        lib = service.create_library(f"f-{index}", dimension=16, index=index)
        vecs = rng.standard_normal((2000, 16)).astype(np.float32)
        docs = [
            NewDocument(
                title=str(i),
                chunks=[NewChunk(text=str(i), embedding=vecs[i])],
                metadata={"rare": i % 200 == 0, "i": i},
            )
            for i in range(2000)
        ]
        service.add_documents(lib.id, docs)
        query = rng.standard_normal(16).astype(np.float32)
        hits = service.search(lib.id, SearchQuery(vector=query, k=5, filter={"rare": True}))
        rare = np.arange(0, 2000, 200)
        sims = vecs[rare] @ query / np.linalg.norm(vecs[rare], axis=1) / np.linalg.norm(query)
        expected = [str(i) for i in rare[np.argsort(-sims)][:5]]
        assert [h.document_title for h in hits.results] == expected


def test_document_lifecycle_and_events(service: VectorDBService) -> None:
    lib = service.create_library("docs", dimension=DIM, index="flat")
    sub = service.subscribe(lib.id, since="earliest")
    doc = service.add_document(lib.id, _doc("first", 1, n=3, year=2001))
    assert doc.num_chunks == 3
    full = service.get_document(lib.id, doc.id, include_embedding=True)
    assert [c.position for c in full.chunks] == [0, 1, 2]
    assert full.chunks[0].embedding is not None
    assert service.get_document(lib.id, doc.id).chunks[0].embedding is None  # the default
    service.update_document(lib.id, doc.id, title="renamed", metadata={"year": 2002})
    hits = service.search(lib.id, SearchQuery(vector=_vec(100), k=1, filter={"year": 2002}))
    assert hits.results[0].document_title == "renamed"
    service.update_document(lib.id, doc.id, text="all new text here")
    assert service.get_library(lib.id).chunk_count == 1
    service.delete_document(lib.id, doc.id)
    assert service.get_library(lib.id).document_count == 0
    assert service.search(lib.id, SearchQuery(vector=_vec(1), k=10)).results == []
    types = []
    while (event := sub.poll()) is not None:
        types.append(event.type)
    assert types == [
        "library.created",
        "document.added",
        "document.updated",
        "document.updated",
        "document.deleted",
    ]


def test_list_documents_pages_through_everything(service: VectorDBService) -> None:
    lib = service.create_library("pages", dimension=DIM)
    added = service.add_documents(lib.id, [_doc(str(i), i, n=1) for i in range(23)])
    seen, cursor = [], None
    while True:
        page = service.list_documents(lib.id, limit=5, cursor=cursor)
        seen += [d.id for d in page.documents]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [d.id for d in added]
    with pytest.raises(InvalidArgumentError):
        service.list_documents(lib.id, limit=0)
    with pytest.raises(InvalidArgumentError):
        service.list_documents(lib.id, cursor="garbage")


def test_dimension_is_fixed_by_the_first_vector(service: VectorDBService) -> None:
    lib = service.create_library("free")
    assert lib.dimension is None
    assert service.search(lib.id, SearchQuery(text="anything")).results == []
    service.add_document(
        lib.id, {"title": "v", "chunks": [{"text": "x", "embedding": [1.0, 0.0, 0.0]}]}
    )
    assert service.get_library(lib.id).dimension == 3
    with pytest.raises(DimensionMismatchError):
        service.add_document(
            lib.id, {"title": "w", "chunks": [{"text": "x", "embedding": [1.0, 0.0]}]}
        )
    # text is embedded at the library's dimension by the default (hashing) embedder
    service.add_document(lib.id, {"title": "t", "text": "some words"})
    assert (
        service.search(lib.id, SearchQuery(text="some words", k=1)).results[0].document_title == "t"
    )


def test_delete_library_removes_everything(service: VectorDBService, lib_id: str) -> None:
    service.delete_library(lib_id)
    with pytest.raises(LibraryNotFoundError):
        service.get_library(lib_id)
    service.create_library("lib")  # the name is free again


def test_a_keyed_write_made_again_answers_as_the_first_even_after_a_delete(service) -> None:  # type: ignore[no-untyped-def]
    from arrwdb.domain.changes import WriteKey
    from arrwdb.domain.errors import IdempotencyMismatchError

    lib = service.create_library("keyed", dimension=2, index="flat")
    doc = {"title": "a", "chunks": [{"text": "a", "embedding": [1, 0]}]}
    with service.idempotent(WriteKey("add", "f1")):
        first = service.add_document(lib.id, doc)
        again = service.add_document(lib.id, doc)
    assert again == first
    assert service.get_library(lib.id).document_count == 1
    other = {"title": "b", "chunks": [{"text": "b", "embedding": [0, 1]}]}
    with (
        service.idempotent(WriteKey("add", "another request")),
        pytest.raises(IdempotencyMismatchError),
    ):
        service.add_document(lib.id, other)
    with service.idempotent(WriteKey("drop", "f2")):
        service.delete_library(lib.id)
        service.delete_library(lib.id)  # a retry of a delete that was made: no 404


def test_a_patch_that_changes_nothing_writes_nothing(service) -> None:  # type: ignore[no-untyped-def]
    lib = service.create_library("same", dimension=2, index="flat", metadata={"a": 1})
    doc = service.add_document(
        lib.id, {"title": "t", "metadata": {"k": 1}, "chunks": [{"text": "a", "embedding": [1, 0]}]}
    )
    before = service.last_event_id
    again = service.update_document(lib.id, doc.id, title="t", metadata={"k": 1})
    assert again == doc
    assert service.update_library(lib.id, name="same", metadata={"a": 1}) == service.get_library(
        lib.id
    )
    assert service.last_event_id == before  # no change, no event
    changed = service.update_document(lib.id, doc.id, title="u")
    assert changed.title == "u"
    assert service.last_event_id == before + 1


def test_a_patch_to_a_value_python_calls_equal_is_still_a_change(service) -> None:  # type: ignore[no-untyped-def]
    lib = service.create_library("types", dimension=2, index="flat")
    doc = service.add_document(
        lib.id, {"title": "t", "metadata": {"k": 1}, "chunks": [{"text": "a", "embedding": [1, 0]}]}
    )
    for value in (True, 1.0, [1]):
        changed = service.update_document(lib.id, doc.id, metadata={"k": value})
        assert changed.metadata == {"k": value}
        assert type(changed.metadata["k"]) is type(value)
