"""Retrieval quality: plain-English questions over standard-library docstrings.

``tests/data/retrieval/documents.jsonl`` holds 1,200 documents (the first paragraph of the
docstrings of module-level functions and classes of the standard library, near-copies left
out; written by ``tests/data/make_retrieval.py``); ``queries.json`` holds 85 questions written
by hand, each a paraphrase of one document that avoids that document's key words where it can
("largest whole number whose square does not exceed n" for ``math.isqrt``, "Return the integer
part of the square root of the input"), with that document's id.

Both embedders index the same documents in an in-process library (exact ``flat`` index) and
answer every question; a question counts for top-1 when its document comes first, for top-5
when it is among the first five. Measured (CPython 3.11, int8 model): minilm top-1 0.42 and
top-5 0.81; hashing 0.13 and 0.22. What is asserted, with a margin below those figures: minilm
finds the document among its first five for at least 80% of the questions, and comes first at
least twice as often as hashing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import arrwdb
import embed_model

DATA = Path(__file__).resolve().parents[1] / "data" / "retrieval"


def load() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    with (DATA / "documents.jsonl").open(encoding="utf-8") as f:
        documents = [json.loads(line) for line in f]
    queries = json.loads((DATA / "queries.json").read_text(encoding="utf-8"))
    return documents, queries


def test_the_retrieval_set_is_as_described() -> None:
    documents, queries = load()
    ids = [d["id"] for d in documents]
    assert len(documents) >= 1_000
    assert len(set(ids)) == len(ids)
    assert len(queries) >= 50
    assert len({q["id"] for q in queries}) == len(queries)  # one question per document
    assert {q["id"] for q in queries} <= set(ids)
    assert (DATA / "documents.jsonl").stat().st_size < 1_000_000


def ranks(
    embedder: str, documents: list[dict[str, str]], queries: list[dict[str, str]]
) -> list[int]:
    """The rank (1: first) of each question's document, or 6 when not in the first five."""
    with arrwdb.open() as db:
        lib = db.create_library(embedder, embedder=embedder, index="flat")
        lib.add_documents([{"id": d["id"], "text": d["text"]} for d in documents])
        results = lib.search_many([q["query"] for q in queries], k=5)
    out = []
    for query, result in zip(queries, results, strict=True):
        found = [hit.document_id for hit in result.results]
        out.append(found.index(query["id"]) + 1 if query["id"] in found else 6)
    return out


def test_minilm_finds_what_the_question_means_where_hashing_needs_its_words() -> None:
    embed_model.require()
    documents, queries = load()
    figures = {}
    for embedder in ("minilm", "hashing"):
        r = ranks(embedder, documents, queries)
        figures[embedder] = (
            sum(x == 1 for x in r) / len(r),
            sum(x <= 5 for x in r) / len(r),
        )
    summary = ", ".join(
        f"{name} top-1 {top1:.3f} top-5 {top5:.3f}" for name, (top1, top5) in figures.items()
    )
    print(f"\nretrieval over {len(documents)} documents, {len(queries)} questions: {summary}")
    (minilm_top1, minilm_top5), (hashing_top1, _) = figures["minilm"], figures["hashing"]
    assert minilm_top5 >= 0.8, summary
    assert minilm_top1 >= 2 * hashing_top1, summary
    assert minilm_top1 >= 0.35, summary  # (measured 0.42: a regression guard)


@pytest.mark.parametrize("embedder", ["hashing"])
def test_every_document_is_found_by_its_own_text(embedder: str) -> None:
    """A sanity check of the set and of the library: each document's own text finds it."""
    documents, _ = load()
    sample = documents[::40]
    r = ranks(embedder, documents, [{"query": d["text"], "id": d["id"]} for d in sample])
    assert sum(x == 1 for x in r) >= 0.95 * len(r)
