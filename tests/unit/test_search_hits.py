"""A search's hits in process: built when read, they behave as the list of ``SearchHit`` they
stand for (length, indexing, slicing, iteration, equality, copies), and reading them after the
library changed still gives the chunks as they were when the search ran."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Sequence

import numpy as np
import pytest

import arrwdb
from arrwdb.domain.models import SearchHit


@pytest.fixture(params=["flat", "hnsw"])
def lib(request: pytest.FixtureRequest) -> arrwdb.LibraryHandle:
    db = arrwdb.open()
    library = db.create_library("hits", dimension=3, index=request.param, embedder=None)
    for i, vector in enumerate([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0]]):
        library.add_document(
            id=f"d{i}",
            title=f"t{i}",
            metadata={"n": i},
            chunks=[{"text": f"c{i}", "embedding": vector}],
        )
    return library


def test_hits_read_as_a_list_of_search_hits(lib: arrwdb.LibraryHandle) -> None:
    result = lib.search([1.0, 0.0, 0.0], k=5)
    hits = result.results
    assert isinstance(hits, Sequence)
    assert len(hits) == len(result) == 3  # fewer than k: the padding is left out
    listed = list(hits)
    assert all(type(hit) is SearchHit for hit in listed)
    assert [hit.document_id for hit in hits] == ["d0", "d1", "d2"]
    assert hits[0] is listed[0]  # built once
    assert hits[-1].document_title == "t2"
    assert hits[1:] == listed[1:]
    assert hits == listed
    assert hits == tuple(listed)
    assert hits != listed[:2]
    assert hits == lib.search([1.0, 0.0, 0.0], k=5).results
    assert repr(hits) == repr(listed)
    assert hits[0] == SearchHit(
        chunk_id=listed[0].chunk_id,
        document_id="d0",
        document_title="t0",
        text="c0",
        score=listed[0].score,
        metadata={"n": 0},
        position=0,
    )
    assert hits.index(listed[2]) == 2
    with pytest.raises(IndexError):
        hits[3]
    with pytest.raises(TypeError):
        hash(hits)


def test_hits_read_later_are_the_chunks_as_they_were(lib: arrwdb.LibraryHandle) -> None:
    result = lib.search([1.0, 0.0, 0.0], k=2)
    lib.update_document("d0", title="renamed", metadata={"n": 10})
    lib.delete_document("d1")
    assert [(h.document_id, h.document_title, h.metadata) for h in result] == [
        ("d0", "t0", {"n": 0}),
        ("d1", "t1", {"n": 1}),
    ]
    now = lib.search([1.0, 0.0, 0.0], k=2)
    assert [(h.document_id, h.document_title) for h in now] == [("d0", "renamed"), ("d2", "t2")]


def test_hits_copy_and_pickle_as_their_hits(lib: arrwdb.LibraryHandle) -> None:
    hits = lib.search(np.asarray([0.0, 1.0, 0.0], dtype=np.float32), k=2).results
    for copied in (copy.copy(hits), copy.deepcopy(hits), pickle.loads(pickle.dumps(hits))):
        assert copied == hits
        assert len(copied) == 2
        assert copied[0].document_id == "d2"


def test_batched_searches_give_the_same_hits(lib: arrwdb.LibraryHandle) -> None:
    queries = np.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    many = lib.search_many(queries, k=2)
    assert [r.results for r in many] == [lib.search(q, k=2).results for q in queries]
    assert [h.document_id for h in many[1]] == ["d2", "d1"]
