"""Retrieval quality: three sets of plain-English questions over two sets of documents.

``tests/data/retrieval/documents.jsonl`` holds 1,200 documents (the first paragraph of the
docstrings of module-level functions and classes of the standard library, near-copies left
out; written by ``tests/data/make_retrieval.py``); ``queries.json`` holds 85 questions written
by hand, each a paraphrase of one document that avoids that document's key words where it can
("largest whole number whose square does not exceed n" for ``math.isqrt``, "Return the integer
part of the square root of the input"), with that document's id. Many of its documents are
near-neighbours (``math.dist`` beside ``math.hypot``): a hard set.

``tests/data/retrieval_topics/`` is the other set: 1,267 documents that are distinct topics, as
in a RAG corpus (the opening of the module docstrings of the standard library and of installed
packages, near-copies left out; written by ``tests/data/make_retrieval_topics.py``), and 87
hand-written questions, each a paraphrase of what one module is for, again avoiding its key
words ("make Firefox or Chrome show a page" for ``webbrowser``, "Interfaces for launching and
remotely controlling web browsers"); written, with their targets chosen, before any
measurement, and not reworded since.

``tests/data/retrieval_questions/queries.json`` is a third set of questions over the topics
set's documents, built as a retrieval benchmark of a RAG product is: 91 questions as a user
would type them into a search box, about what one module is for, in the writer's own words,
keeping a word or two of the document where a user would ("match file paths against
.gitignore patterns" for ``pathspec``) but no run of four words of it. The targets follow a
rule fixed first: one a band of 14 documents in file order, the band's first that says what it
is for (six documents passed over: a deprecation notice, a sample session, ...), so terse and
internal modules (``mypy.typestate``, ``mypyc.transform.spill``) are among them. Questions and
targets were written and committed before any measurement, and not reworded since
(``tests/data/make_retrieval_questions.py`` checks the rule and writes the file).

Both embedders index the same documents in an in-process library (exact ``flat`` index) and
answer every question; a question counts for top-1 when its document comes first, for top-5
when it is among the first five. Measured (CPython 3.11, int8 model): on the first set minilm
top-1 0.42 and top-5 0.81, hashing 0.13 and 0.22; on the topics set minilm top-1 0.37 and
top-5 0.66, hashing 0.03 and 0.06; on the search-box questions minilm top-1 0.58 and top-5
0.79, hashing 0.27 and 0.43. The target of top-1 >= 0.8 is not met on any of the three. What
is asserted, with a margin below those figures: on the first set minilm finds the document
among its first five for at least 80% of the questions; on all three it comes first at least
twice as often as hashing, and at least 35% (first set), 32% (topics) and 52% (search-box
questions) of the time.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import arrwdb
import embed_model

DATA = Path(__file__).resolve().parents[1] / "data" / "retrieval"
TOPICS = Path(__file__).resolve().parents[1] / "data" / "retrieval_topics"
#: questions only: its documents are the topics set's
QUESTIONS = Path(__file__).resolve().parents[1] / "data" / "retrieval_questions"


def load(data: Path = DATA) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The documents and the questions of the set in ``data`` (the topics set's documents for
    a folder of questions only)."""
    documents_file = data / "documents.jsonl"
    if not documents_file.exists():
        documents_file = TOPICS / "documents.jsonl"
    with documents_file.open(encoding="utf-8") as f:
        documents = [json.loads(line) for line in f]
    queries = json.loads((data / "queries.json").read_text(encoding="utf-8"))
    return documents, queries


@pytest.mark.parametrize(
    ("data", "least"),
    [(DATA, 50), (TOPICS, 60), (QUESTIONS, 80)],
    ids=["docstrings", "topics", "questions"],
)
def test_the_retrieval_set_is_as_described(data: Path, least: int) -> None:
    documents, queries = load(data)
    ids = [d["id"] for d in documents]
    assert len(documents) >= 1_000
    assert len(set(ids)) == len(ids)
    assert len(queries) >= least
    assert len({q["id"] for q in queries}) == len(queries)  # one question per document
    assert {q["id"] for q in queries} <= set(ids)
    for documents_file in data.glob("documents.jsonl"):
        assert documents_file.stat().st_size < 1_000_000


def test_the_search_box_questions_follow_their_rule() -> None:
    """Each target is where the rule puts it, no question copies four consecutive words of its
    document, and ``queries.json`` is what the generator writes."""
    spec = importlib.util.spec_from_file_location(
        "make_retrieval_questions", QUESTIONS.parent / "make_retrieval_questions.py"
    )
    assert spec is not None
    assert spec.loader is not None
    made = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(made)
    documents, queries = load(QUESTIONS)
    assert made.check(documents) == []
    assert queries == [{"query": q, "id": t} for t, q in made.QUESTIONS]


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


def measure(data: Path) -> tuple[dict[str, tuple[float, float]], str]:
    """Top-1 and top-5 of each embedder over the set in ``data``, and a line that says so."""
    documents, queries = load(data)
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
    print(f"\n{data.name}: {len(documents)} documents, {len(queries)} questions: {summary}")
    return figures, summary


def test_minilm_finds_what_the_question_means_where_hashing_needs_its_words() -> None:
    embed_model.require()
    figures, summary = measure(DATA)
    (minilm_top1, minilm_top5), (hashing_top1, _) = figures["minilm"], figures["hashing"]
    assert minilm_top5 >= 0.8, summary
    assert minilm_top1 >= 2 * hashing_top1, summary
    assert minilm_top1 >= 0.35, summary  # (measured 0.42: a regression guard)


def test_minilm_finds_the_topic_a_question_is_about() -> None:
    """Over distinct topics (module docstrings), as in a RAG corpus. The target is top-1 >= 0.8;
    measured 0.368 (top-5 0.655), so what is asserted is what holds, with a margin."""
    embed_model.require()
    figures, summary = measure(TOPICS)
    (minilm_top1, minilm_top5), (hashing_top1, _) = figures["minilm"], figures["hashing"]
    assert minilm_top1 >= 2 * hashing_top1, summary
    assert minilm_top1 >= 0.32, summary  # (measured 0.368: a regression guard)
    assert minilm_top5 >= 0.6, summary  # (measured 0.655)


def test_minilm_answers_search_box_questions() -> None:
    """Questions as a user types them into a search box, over the topics set's documents. The
    target is top-1 >= 0.8; measured 0.582 (53 of 91; top-5 0.791), hashing 0.275 (25 of 91;
    top-5 0.429): the target is not met, so what is asserted is what holds, with a margin."""
    embed_model.require()
    figures, summary = measure(QUESTIONS)
    (minilm_top1, minilm_top5), (hashing_top1, _) = figures["minilm"], figures["hashing"]
    assert minilm_top1 >= 2 * hashing_top1, summary  # (measured 0.582 against 2 x 0.275)
    assert minilm_top1 >= 0.52, summary  # (measured 0.582: a regression guard)
    assert minilm_top5 >= 0.72, summary  # (measured 0.791)


@pytest.mark.parametrize("embedder", ["hashing"])
def test_every_document_is_found_by_its_own_text(embedder: str) -> None:
    """A sanity check of the set and of the library: each document's own text finds it."""
    documents, _ = load()
    sample = documents[::40]
    r = ranks(embedder, documents, [{"query": d["text"], "id": d["id"]} for d in sample])
    assert sum(x == 1 for x in r) >= 0.95 * len(r)
