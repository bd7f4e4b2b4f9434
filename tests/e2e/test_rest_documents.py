"""REST documents and search: every route and status code of the spec, against a real server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import add_text, assert_problem, create_library

# -- documents ------------------------------------------------------------------------------


def test_document_crud(http: httpx.Client, library: dict[str, Any]) -> None:
    lib = library["id"]
    doc = add_text(http, lib, "Attention", "Transformers use attention.", metadata={"year": 2017})
    assert doc["title"] == "Attention"
    assert doc["num_chunks"] >= 1
    assert doc["library_id"] == lib
    assert "chunks" not in doc

    got = http.get(f"/v1/libraries/{lib}/documents/{doc['id']}")
    assert got.status_code == 200
    chunks = got.json()["chunks"]
    assert len(chunks) == doc["num_chunks"]
    assert chunks[0]["text"].startswith("Transformers")
    assert "embedding" not in chunks[0]
    with_vectors = http.get(
        f"/v1/libraries/{lib}/documents/{doc['id']}", params={"include_embedding": "true"}
    )
    assert len(with_vectors.json()["chunks"][0]["embedding"]) == 384

    patched = http.patch(
        f"/v1/libraries/{lib}/documents/{doc['id']}",
        json={"title": "Attention!", "metadata": {"year": 2018}},
    )
    assert patched.status_code == 200
    assert (patched.json()["title"], patched.json()["metadata"]) == ("Attention!", {"year": 2018})
    replaced = http.patch(
        f"/v1/libraries/{lib}/documents/{doc['id']}",
        json={"chunks": [{"text": "one"}, {"text": "two"}, {"text": "three"}]},
    )
    assert replaced.status_code == 200
    assert replaced.json()["num_chunks"] == 3

    assert http.delete(f"/v1/libraries/{lib}/documents/{doc['id']}").status_code == 204
    assert_problem(http.get(f"/v1/libraries/{lib}/documents/{doc['id']}"), 404, "not_found")
    assert_problem(http.delete(f"/v1/libraries/{lib}/documents/{doc['id']}"), 404, "not_found")
    assert_problem(
        http.patch(f"/v1/libraries/{lib}/documents/{doc['id']}", json={"title": "x"}),
        404,
        "not_found",
    )


def test_add_with_embeddings_and_in_bulk(http: httpx.Client) -> None:
    lib = create_library(http, dimension=4, index="flat")["id"]
    one = http.post(
        f"/v1/libraries/{lib}/documents",
        json={"title": "v", "chunks": [{"text": "a", "embedding": [1, 0, 0, 0]}]},
    )
    assert one.status_code == 201
    bulk = http.post(
        f"/v1/libraries/{lib}/documents",
        json=[
            {"title": f"d{i}", "chunks": [{"text": f"t{i}", "embedding": [0, 1, i, 0]}]}
            for i in range(5)
        ],
    )
    assert bulk.status_code == 201
    assert [d["title"] for d in bulk.json()] == [f"d{i}" for i in range(5)]
    wrong = http.post(
        f"/v1/libraries/{lib}/documents",
        json={"title": "w", "chunks": [{"text": "a", "embedding": [1, 0]}]},
    )
    assert_problem(wrong, 422, "dimension_mismatch")
    huge = http.post(
        f"/v1/libraries/{lib}/documents",
        content=b'{"title": "w", "chunks": [{"text": "a", "embedding": [1e999, 0, 0, 0]}]}',
        headers={"content-type": "application/json"},
    )
    # a number beyond float64 in an embedding: a bad vector, named as such
    problem = assert_problem(huge, 422, "invalid_vector")
    assert problem["field"] == "chunks[0].embedding[0]"
    neither = http.post(f"/v1/libraries/{lib}/documents", json={"title": "none"})
    assert_problem(neither, 422, "invalid_argument")
    assert_problem(
        http.post("/v1/libraries/nope/documents", json={"title": "x", "text": "y"}),
        404,
        "not_found",
    )
    # the bad requests wrote nothing
    listed = http.get(f"/v1/libraries/{lib}/documents").json()["documents"]
    assert len(listed) == 6


def test_list_documents_pages_with_cursor(http: httpx.Client, library: dict[str, Any]) -> None:
    lib = library["id"]
    titles = [f"doc-{i:02d}" for i in range(23)]
    http.post(f"/v1/libraries/{lib}/documents", json=[{"title": t, "text": t} for t in titles])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = http.get(f"/v1/libraries/{lib}/documents", params=params)
        assert page.status_code == 200
        body = page.json()
        seen += [d["title"] for d in body["documents"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == titles
    assert pages == 3
    assert_problem(
        http.get(f"/v1/libraries/{lib}/documents", params={"limit": 0}), 422, "invalid_argument"
    )
    wrong_type = assert_problem(
        http.get(f"/v1/libraries/{lib}/documents", params={"limit": "ten"}),
        422,
        "invalid_argument",
    )
    assert wrong_type["field"] == "limit"
    assert_problem(
        http.get(f"/v1/libraries/{lib}/documents", params={"cursor": "garbage"}),
        422,
        "invalid_argument",
    )


# -- search ---------------------------------------------------------------------------------


def test_text_search(http: httpx.Client, library: dict[str, Any]) -> None:
    lib = library["id"]
    add_text(http, lib, "cooking", "Pasta needs salt and boiling water.", metadata={"kind": "food"})
    target = add_text(
        http,
        lib,
        "ml",
        "Transformers changed natural language processing.",
        metadata={"kind": "ai"},
    )
    add_text(http, lib, "garden", "Tomatoes grow in the summer sun.", metadata={"kind": "plants"})
    response = http.post(
        f"/v1/libraries/{lib}/search", json={"query_text": "transformers language", "k": 3}
    )
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body["took_ms"], float)
    hits = body["results"]
    assert hits[0]["document_id"] == target["id"]
    for hit in hits:
        assert set(hit) >= {
            "chunk_id",
            "document_id",
            "document_title",
            "text",
            "score",
            "metadata",
        }
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    filtered = http.post(
        f"/v1/libraries/{lib}/search",
        json={
            "query_text": "transformers",
            "k": 3,
            "filter": {"kind": {"$in": ["food", "plants"]}},
        },
    ).json()["results"]
    assert {h["metadata"]["kind"] for h in filtered} <= {"food", "plants"}
    assert len(filtered) == 2


def test_vector_search_and_search_errors(http: httpx.Client) -> None:
    lib = create_library(http, dimension=8, index="flat", metric="l2")["id"]
    rng = np.random.default_rng(7)
    vectors: Sequence[list[float]] = rng.normal(size=(20, 8)).astype(np.float32).tolist()
    http.post(
        f"/v1/libraries/{lib}/documents",
        json=[
            {"title": str(i), "chunks": [{"text": str(i), "embedding": v}]}
            for i, v in enumerate(vectors)
        ],
    )
    hits = http.post(
        f"/v1/libraries/{lib}/search", json={"query_vector": vectors[5], "k": 1}
    ).json()["results"]
    assert hits[0]["document_title"] == "5"
    assert hits[0]["score"] == pytest.approx(0.0, abs=1e-4)

    url = f"/v1/libraries/{lib}/search"
    for k in (0, 1001):
        body = assert_problem(
            http.post(url, json={"query_text": "x", "k": k}), 422, "invalid_argument"
        )
        assert body["field"] == "k"
    unknown_op = assert_problem(
        http.post(url, json={"query_text": "x", "filter": {"a": {"$near": 1}}}),
        422,
        "invalid_filter",
    )
    assert "$near" in unknown_op["detail"]
    assert_problem(
        http.post(url, json={"query_text": "x", "query_vector": vectors[0]}),
        422,
        "invalid_argument",
    )
    assert_problem(http.post(url, json={"query_vector": [1.0, 2.0]}), 422, "dimension_mismatch")
    assert_problem(http.post(url, json={"k": 3}), 422, "invalid_argument")
    assert_problem(
        http.post(url, content=b"[1,2", headers={"content-type": "application/json"}),
        400,
        "bad_request",
    )
    assert_problem(
        http.post("/v1/libraries/nope/search", json={"query_text": "x"}), 404, "not_found"
    )
