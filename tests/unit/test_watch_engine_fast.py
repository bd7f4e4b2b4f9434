"""The watch engine against a brute-force top-k: random batches of adds, updates and deletes on a
2,000-chunk library with 200 watches (top-k with and without a filter and a floor, and match
watches); after every batch each top-k watch holds what a numpy scan of the live chunks ranks
first, and each match watch was told of exactly the chunks the batch saved that reach its
threshold. Guards the engine's fast paths (bars kept as an array, the blocked product)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import arrwdb

DIM = 24
TOL = 1e-5  # scores this close to the k-th are ties: either chunk may hold the last place


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Model:
    """The library as the test knows it: chunk id -> (vector, metadata, document id)."""

    def __init__(self) -> None:
        self.chunks: dict[str, tuple[np.ndarray, dict[str, Any], str]] = {}
        self.docs: dict[str, list[str]] = {}

    def saved(self, lib: arrwdb.LibraryHandle, doc_id: str, vectors: np.ndarray, meta: Any) -> None:
        self.deleted(doc_id)
        doc = lib.get_document(doc_id)
        ids = [chunk.id for chunk in doc.chunks]
        assert len(ids) == len(vectors)
        self.docs[doc_id] = ids
        for chunk_id, vector in zip(ids, vectors, strict=True):
            self.chunks[chunk_id] = (_unit(vector), dict(meta), doc_id)

    def deleted(self, doc_id: str) -> None:
        for chunk_id in self.docs.pop(doc_id, ()):
            del self.chunks[chunk_id]

    def snapshot(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        ids = list(self.chunks)
        vectors = np.stack([self.chunks[c][0] for c in ids])
        groups = np.asarray([self.chunks[c][1]["g"] for c in ids])
        return ids, vectors, groups


def _check_top_k(
    got: list[str],
    snapshot: tuple[list[str], np.ndarray, np.ndarray],
    query: np.ndarray,
    k: int,
    low: bool,
    floor: float,
) -> None:
    """``got`` is what an exact scan ranks first (score, then chunk id), ties with the k-th
    aside."""
    ids, vectors, groups = snapshot
    scores = vectors @ _unit(query)
    keep = np.flatnonzero((scores >= floor) & ((groups < 2) if low else True))
    top = keep[np.argsort(-scores[keep], kind="stable")[: k + 8]].tolist()
    ranked = sorted((-float(scores[i]), ids[i]) for i in top)
    want = [c for _, c in ranked[:k]]
    assert len(got) == len(want)
    if set(got) == set(want):
        return
    row = {c: i for i, c in enumerate(ids)}
    kth = -ranked[k - 1][0]
    for chunk_id in set(got) ^ set(want):  # only ties with the k-th may differ
        assert chunk_id in row, (got, want)
        assert abs(float(scores[row[chunk_id]]) - kth) <= TOL, (got, want)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
@pytest.mark.parametrize("updates", [False, True])
def test_watches_match_brute_force(index: str, updates: bool) -> None:
    rng = np.random.default_rng(7)
    db = arrwdb.open()
    try:
        lib = db.create_library("w", index=index, dimension=DIM, embedder=None)
        model = Model()
        serial = 0

        def new_docs(count: int) -> list[tuple[np.ndarray, dict[str, Any]]]:
            return [
                (
                    rng.standard_normal((int(rng.integers(1, 4)), DIM), dtype=np.float32),
                    {"g": int(rng.integers(0, 4))},
                )
                for _ in range(count)
            ]

        def add(items: list[tuple[np.ndarray, dict[str, Any]]]) -> list[str]:
            nonlocal serial
            payload = []
            for vectors, meta in items:
                serial += 1
                payload.append(
                    {
                        "title": f"d{serial}",
                        "metadata": meta,
                        "chunks": [
                            {"text": f"c{serial}.{j}", "embedding": v}
                            for j, v in enumerate(vectors)
                        ],
                    }
                )
            docs = lib.add_documents(payload)
            for doc, (vectors, meta) in zip(docs, items, strict=True):
                model.saved(lib, doc.id, vectors, meta)
            return [doc.id for doc in docs]

        while len(model.chunks) < 2_000:
            add(new_docs(200))

        watches: list[tuple[Any, dict[str, Any]]] = []
        for i in range(200):
            query = rng.standard_normal(DIM, dtype=np.float32)
            spec: dict[str, Any] = {"query": query, "k": int(rng.choice([1, 3, 10, 25]))}
            if i % 5 == 1:
                spec["filter"] = {"g": {"$lt": 2}}
            if i % 7 == 2:
                spec["threshold"] = 0.3
            if i % 10 == 3:
                spec = {"query": query, "k": None, "threshold": 0.55}
            handle = lib.watch(
                spec["query"], spec["k"], filter=spec.get("filter"), threshold=spec.get("threshold")
            )
            events = handle.events(timeout=0)
            assert next(iter(events)).type == "watch.ready"
            watches.append((handle, spec | {"events": events}))

        for step in range(30):
            kind = step % 3 if updates else step % 2
            if kind == 0:  # adds
                saved = add(new_docs(int(rng.integers(20, 80))))
            elif kind == 1:  # deletes (and a few adds in the same library)
                victims = rng.choice(
                    sorted(model.docs), size=int(rng.integers(10, 60)), replace=False
                ).tolist()
                lib.delete_documents(victims)
                for doc_id in victims:
                    model.deleted(doc_id)
                saved = []
            else:  # updates: other chunks, other metadata
                targets = rng.choice(
                    sorted(model.docs), size=int(rng.integers(10, 40)), replace=False
                ).tolist()
                items = new_docs(len(targets))
                lib.upsert_documents(
                    [
                        {
                            "id": doc_id,
                            "title": "u",
                            "metadata": meta,
                            "chunks": [{"text": "u", "embedding": v} for v in vectors],
                        }
                        for doc_id, (vectors, meta) in zip(targets, items, strict=True)
                    ]
                )
                for doc_id, (vectors, meta) in zip(targets, items, strict=True):
                    model.saved(lib, doc_id, vectors, meta)
                saved = targets
            saved_chunks = {c for d in saved for c in model.docs.get(d, ())}
            snapshot = model.snapshot()
            for handle, spec in watches:
                floor = spec.get("threshold")
                floor = -np.inf if floor is None else floor
                live = db.service.watching.get(handle.id)
                if spec["k"] is None:
                    listener = spec["events"]._listener
                    got = set()
                    while (event := listener.poll()) is not None:
                        assert event.type == "watch.match"
                        got.add(event.data["chunk_id"])
                    query = _unit(spec["query"])
                    score = {c: float(model.chunks[c][0] @ query) for c in saved_chunks}
                    assert {c for c, s in score.items() if s >= floor + TOL} <= got
                    assert got <= {c for c, s in score.items() if s >= floor - TOL}
                    continue
                with live.feed.lock:
                    got_ids = live.chunk_ids()
                _check_top_k(got_ids, snapshot, spec["query"], spec["k"], "filter" in spec, floor)
        for handle, _ in watches:
            handle.close()
    finally:
        db.close()
