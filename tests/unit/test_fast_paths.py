"""The performance fast paths give exactly what the plain paths give (issue 5).

Batched search equals one search after the other; hits built slot by slot equal the
constructor's; checks done in bulk raise what the one-by-one checks raise; HNSW searches at any
``ef`` (no shared ``ef`` any more) equal hnswlib's own ``set_ef`` search; ids made in bulk are
UUID4s. No timing is asserted here: the benchmarks in ``bench/`` measure speed.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
import warnings
from typing import Any

import hnswlib
import numpy as np
import pytest

import arrwdb
from arrwdb.adapters.index.exact import ExactIndex
from arrwdb.adapters.index.hnsw import HnswIndex
from arrwdb.domain import _search as search_module
from arrwdb.domain import validation as v
from arrwdb.domain._documents import new_ids
from arrwdb.domain._rwlock import RWLock
from arrwdb.domain.errors import (
    ArrwdbError,
    DimensionMismatchError,
    InvalidArgumentError,
    InvalidFilterError,
    InvalidVectorError,
)
from arrwdb.domain.models import SearchHit, SearchQuery, SearchResult
from arrwdb.domain.service import VectorDBService

DIM = 16


def _library(service: VectorDBService, index: str, docs: int = 60, per_doc: int = 5) -> str:
    lib = service.create_library(f"fast-{index}", dimension=DIM, index=index)
    rng = np.random.default_rng(11)
    vecs = rng.standard_normal((docs * per_doc, DIM)).astype(np.float32)
    service.add_documents(
        lib.id,
        [
            {
                "title": f"doc {d}",
                "metadata": {"group": d % 3},
                "chunks": [
                    {
                        "text": f"chunk {d}.{c} words",
                        "embedding": vecs[d * per_doc + c],
                        "metadata": {"c": c} if c % 2 else {},
                    }
                    for c in range(per_doc)
                ],
            }
            for d in range(docs)
        ],
    )
    return lib.id


def _without_took(results: list[SearchResult]) -> list[list[SearchHit]]:
    return [r.results for r in results]


def _same_hits(a: list[SearchResult], b: list[SearchResult]) -> None:
    """Equal hits; scores equal up to float32 rounding (a batched matrix product may round the
    last bit differently from a single one: the exact index computes scores in float32)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert [dataclasses.replace(h, score=0.0) for h in ra.results] == [
            dataclasses.replace(h, score=0.0) for h in rb.results
        ]
        np.testing.assert_allclose(
            [h.score for h in ra.results], [h.score for h in rb.results], rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_search_many_equals_one_search_after_the_other(
    service: VectorDBService, index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small blocks, so that one call makes several blocks and several lock holds
    monkeypatch.setattr(search_module, "SEARCH_BLOCK", 4)
    monkeypatch.setattr(search_module, "PIPELINE_BLOCKS", 3)
    lib_id = _library(service, index)
    rng = np.random.default_rng(5)
    shared_filter = {"group": {"$in": [0, 2]}}
    queries = []
    for i in range(40):
        vector: Any = rng.standard_normal(DIM).astype(np.float32)
        if i % 5 == 1:
            vector = vector.tolist()  # a list: checked one by one
        if i % 7 == 3:
            vector = vector if isinstance(vector, list) else vector.astype(np.float64)
        queries.append(
            SearchQuery(
                vector=vector if i % 9 != 4 else None,
                text="chunk words" if i % 9 == 4 else None,
                k=[10, 3, 25][i % 3],
                ef=[None, 4, 200][i % 3 if i % 2 else 0],
                filter=shared_filter if i % 4 == 0 else ({"c": 1} if i % 8 == 6 else None),
                include_embedding=i % 10 == 0,
            )
        )
    batched = service.search_many(lib_id, queries)
    single = [service.search(lib_id, q) for q in queries]
    _same_hits(batched, single)
    assert all(r.took_ms >= 0 for r in batched)
    assert any(r.results and r.results[0].embedding is not None for r in batched)


def test_search_many_on_a_library_without_vectors(service: VectorDBService) -> None:
    lib = service.create_library("empty")  # no dimension yet
    results = service.search_many(lib.id, [SearchQuery(text="x"), SearchQuery(vector=[1.0, 2.0])])
    assert [r.results for r in results] == [[], []]
    assert service.search_many(lib.id, []) == []


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (SearchQuery(vector=np.full(DIM, np.nan, dtype=np.float32)), InvalidVectorError),
        (SearchQuery(vector=np.zeros(DIM, dtype=np.float32)), InvalidVectorError),
        (SearchQuery(vector=np.ones(DIM + 1, dtype=np.float32)), DimensionMismatchError),
        (SearchQuery(vector=np.ones(DIM, dtype=np.float32), k=0), InvalidArgumentError),
        (SearchQuery(vector=np.ones(DIM, dtype=np.float32), ef=True), InvalidArgumentError),
        (SearchQuery(vector=np.ones(DIM, dtype=np.float32), filter={"$x": 1}), InvalidFilterError),
        (SearchQuery(text="a", vector=np.ones(DIM, dtype=np.float32)), InvalidArgumentError),
    ],
)
def test_search_many_raises_what_the_first_bad_query_raises(
    service: VectorDBService, bad: SearchQuery, error: type[ArrwdbError]
) -> None:
    lib_id = _library(service, "hnsw", docs=5)
    good = SearchQuery(vector=np.ones(DIM, dtype=np.float32))
    later_bad = SearchQuery(vector=[1.0] * DIM, k=5000)  # a different error, after it
    with pytest.raises(error) as batched:
        service.search_many(lib_id, [good, bad, good, later_bad])
    service.search(lib_id, good)
    with pytest.raises(error) as single:
        service.search(lib_id, bad)
    assert str(batched.value) == str(single.value)
    assert batched.value.code == single.value.code


def test_the_public_search_many_takes_a_matrix_vectors_or_texts() -> None:
    with arrwdb.open() as db:
        lib = db.create_library("many", dimension=DIM, index="flat")
        rng = np.random.default_rng(2)
        vecs = rng.standard_normal((20, DIM)).astype(np.float32)
        lib.add_documents(
            [{"title": str(i), "chunks": [{"text": "t", "embedding": vecs[i]}]} for i in range(20)]
        )
        by_matrix = lib.search_many(vecs[:5], k=3)
        by_list = lib.search_many([row.tolist() for row in vecs[:5]], k=3)
        _same_hits(by_matrix, by_list)
        assert [r.results[0].document_id for r in by_matrix] == [
            lib.search(row, k=1).results[0].document_id for row in vecs[:5]
        ]
        assert len(lib.search_many(["t", "x"], k=2)) == 2
        for wrong in (vecs[0], "text"):
            with pytest.raises(InvalidArgumentError):
                lib.search_many(wrong)


def test_hits_are_the_objects_the_constructor_makes(service: VectorDBService) -> None:
    lib_id = _library(service, "flat", docs=3)
    hit = service.search(lib_id, SearchQuery(vector=np.ones(DIM, dtype=np.float32))).results[0]
    rebuilt = SearchHit(**{f.name: getattr(hit, f.name) for f in dataclasses.fields(SearchHit)})
    assert hit == rebuilt
    assert type(hit) is SearchHit
    assert hit.embedding is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.score = 0.0  # type: ignore[misc]


NUMERIC_CASES: list[tuple[object, str]] = [
    (np.ones(4, dtype=np.float32), "ok"),
    (np.ones(8, dtype=np.float32)[::2], "ok"),  # strided: a contiguous copy
    (np.arange(1, 5), "ok"),
    (np.array([True, False, True, True]), "ok"),
    ([1.0, 2, 3, 4], "ok"),
    ((1.0, 2.0, 3.0, 4.0), "ok"),
    ([np.float32(1), 2.0, 3.0, 4.0], "ok"),
    (np.array([1e-30, 0, 0, 0], dtype=np.float32), "ok"),  # its square underflows float32
    (np.array([1e-45, 0, 0, 0], dtype=np.float32), "ok"),
    (np.array([1e20, 1e20, 1, 1], dtype=np.float32), "ok"),  # its square overflows float32
    (np.zeros(4, dtype=np.float32), "zero"),
    (np.array([1e-50, 0, 0, 0]), "zero"),  # float64 that float32 rounds to zero
    ([float("nan"), 1.0, 1.0, 1.0], InvalidVectorError),
    (np.array([1, 1, 1, -np.inf], dtype=np.float32), InvalidVectorError),
    ([True, 1, 1, 1], InvalidVectorError),
    ([1, 2, "3", 4], InvalidVectorError),
    ("abcd", InvalidVectorError),
    (np.ones((2, 2)), InvalidVectorError),
    ([], InvalidVectorError),
    ([1.0, 2.0, 3.0], DimensionMismatchError),
]


@pytest.mark.parametrize(("vector", "expected"), NUMERIC_CASES)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_as_vector_checks_every_rule(vector: object, expected: object, metric: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if expected == "zero" and metric == "cosine":
            with pytest.raises(InvalidVectorError, match="zero vector"):
                v.as_vector(vector, 4, metric, "query_vector")  # type: ignore[arg-type]
            return
        if isinstance(expected, type):
            with pytest.raises(expected):
                v.as_vector(vector, 4, metric, "query_vector")  # type: ignore[arg-type]
            return
        out = v.as_vector(vector, 4, metric, "query_vector")  # type: ignore[arg-type]
    assert out.dtype == np.float32
    assert out.shape == (4,)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.asarray(vector, dtype=np.float32))


def test_ids_made_in_bulk_are_fresh_uuid4s() -> None:
    ids = new_ids(5000)
    assert len(set(ids)) == 5000
    for text in ids[:500]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert new_ids(0) == []


def test_exact_add_appends_new_labels_and_replaces_known_ones() -> None:
    index = ExactIndex(3, "l2", initial_capacity=2)
    index.add(np.array([1, 2, 3]), np.eye(3, dtype=np.float32))
    index.add(np.array([3, 4]), np.array([[5, 5, 5], [6, 6, 6]], dtype=np.float32))
    index.add(np.array([7, 7]), np.array([[1, 1, 1], [2, 2, 2]], dtype=np.float32))
    assert len(index) == 5
    np.testing.assert_array_equal(index.get_vectors(np.array([3, 4])), [[5, 5, 5], [6, 6, 6]])
    np.testing.assert_array_equal(index.get_vectors(np.array([7])), [[2, 2, 2]])
    labels, _ = index.search(np.zeros((1, 3), dtype=np.float32), 5)
    assert sorted(labels[0].tolist()) == [1, 2, 3, 4, 7]


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_hnsw_search_at_any_ef_is_hnswlibs_own(metric: str) -> None:
    """The graph's ef stays at 1 and each search asks for max(ef, k) results: the very
    search hnswlib makes after set_ef(ef), built the same way (one thread, same seed)."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal((3000, DIM)).astype(np.float32)
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    ours = HnswIndex(DIM, metric, add_threads=1, initial_capacity=len(data))  # type: ignore[arg-type]
    ours.add(np.arange(len(data), dtype=np.int64), data)
    raw = hnswlib.Index(space=metric, dim=DIM)
    raw.init_index(max_elements=len(data), M=16, ef_construction=200, random_seed=100)
    raw.add_items(data, np.arange(len(data)), num_threads=1)
    for ef in (1, 5, 10, 64, 300):
        raw.set_ef(ef)
        expected, _ = raw.knn_query(queries, k=10, num_threads=1)
        found, _ = ours.search(queries, 10, ef=ef)
        assert found.tolist() == expected.astype(np.int64).tolist(), ef


def test_hnsw_searches_at_different_ef_run_together() -> None:
    rng = np.random.default_rng(4)
    data = rng.standard_normal((2000, DIM)).astype(np.float32)
    queries = rng.standard_normal((30, DIM)).astype(np.float32)
    index = HnswIndex(DIM, "cosine")
    index.add(np.arange(len(data), dtype=np.int64), data)
    expected = {ef: index.search(queries, 10, ef=ef)[0].tolist() for ef in (2, 16, 128)}
    mismatches: list[int] = []

    def search(ef: int) -> None:
        for _ in range(20):
            if index.search(queries, 10, ef=ef)[0].tolist() != expected[ef]:
                mismatches.append(ef)

    threads = [threading.Thread(target=search, args=(ef,)) for ef in (2, 16, 128) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not mismatches


def test_rwlock_readers_share_and_a_waiting_writer_goes_first() -> None:
    lock = RWLock()
    order: list[str] = []
    with lock.read(), lock.read():  # readers share (re-entrant use of the same object)
        order.append("two readers")
    reader_in = threading.Event()
    release_reader = threading.Event()

    def reader(name: str, hold: threading.Event | None) -> None:
        with lock.read():
            order.append(name)
            reader_in.set()
            if hold is not None:
                hold.wait()

    def writer() -> None:
        with lock.write():
            order.append("writer")

    first = threading.Thread(target=reader, args=("reader 1", release_reader))
    first.start()
    reader_in.wait()
    w = threading.Thread(target=writer)
    w.start()
    while not lock._writers_waiting:  # the writer is queued behind reader 1
        threading.Event().wait(0.001)
    late = threading.Thread(target=reader, args=("reader 2", None))
    late.start()
    threading.Event().wait(0.05)
    assert order == ["two readers", "reader 1"]  # reader 2 waits behind the waiting writer
    release_reader.set()
    for thread in (first, w, late):
        thread.join()
    assert order == ["two readers", "reader 1", "writer", "reader 2"]
    with pytest.raises(RuntimeError), lock.write():
        raise RuntimeError("released on error")
    with lock.read():  # the failed write let go
        pass


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_search_vectors_equals_search_many_of_its_rows(
    service: VectorDBService, index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_module, "SEARCH_BLOCK", 3)
    monkeypatch.setattr(search_module, "PIPELINE_BLOCKS", 2)
    lib_id = _library(service, index)
    matrix = np.random.default_rng(9).standard_normal((17, DIM)).astype(np.float32)
    for options in ({}, {"k": 4, "ef": 3}, {"filter": {"group": 1}, "include_embedding": True}):
        rows = [SearchQuery(vector=row, **options) for row in matrix]  # type: ignore[arg-type]
        _same_hits(
            service.search_vectors(lib_id, matrix, **options),  # type: ignore[arg-type]
            service.search_many(lib_id, rows),
        )
    as_float64 = service.search_vectors(lib_id, matrix.astype(np.float64))  # checked by row
    _same_hits(as_float64, service.search_vectors(lib_id, matrix))
    assert len(service.search_vectors(lib_id, matrix[:1])) == 1
    assert service.search_vectors(lib_id, matrix[:0]) == []


@pytest.mark.parametrize(
    ("change", "options", "error"),
    [
        ("nan", {}, InvalidVectorError),
        ("zero", {}, InvalidVectorError),
        ("wide", {}, DimensionMismatchError),
        (None, {"k": 0}, InvalidArgumentError),
        ("nan", {"k": 0}, InvalidArgumentError),  # each query checks k before its vector
        (None, {"ef": 0}, InvalidArgumentError),
        (None, {"filter": {"$bad": 1}}, InvalidFilterError),
    ],
)
def test_search_vectors_raises_what_the_rows_one_by_one_raise(
    service: VectorDBService, change: str | None, options: dict[str, Any], error: type
) -> None:
    lib_id = _library(service, "hnsw", docs=5)
    matrix = np.ones((4, DIM + (change == "wide")), dtype=np.float32)
    if change == "nan":
        matrix[2, 3] = np.nan
    if change == "zero":
        matrix[1] = 0.0
    with pytest.raises(error) as batched:
        service.search_vectors(lib_id, matrix, **options)
    with pytest.raises(error) as rows:
        service.search_many(lib_id, [SearchQuery(vector=r, **options) for r in matrix])
    assert str(batched.value) == str(rows.value)
    with pytest.raises(InvalidArgumentError):
        service.search_vectors(lib_id, matrix[0])
