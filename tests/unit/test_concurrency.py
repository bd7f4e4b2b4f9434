"""Thread safety: documents appear to search atomically; searches run while writes happen."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from arrwdb.domain.models import NewChunk, NewDocument, SearchQuery
from arrwdb.domain.service import VectorDBService

CHUNKS_PER_DOC = 7
DIM = 16


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_a_search_never_sees_half_a_document(service: VectorDBService, index: str) -> None:
    lib = service.create_library("atomic", dimension=DIM, index=index)
    rng = np.random.default_rng(3)
    stop = threading.Event()
    torn: list[Counter[str]] = []
    errors: list[BaseException] = []
    searches = [0]

    def writer(offset: int) -> None:
        try:
            for i in range(40):
                vecs = rng.standard_normal((CHUNKS_PER_DOC, DIM)).astype(np.float32)
                doc = NewDocument(
                    title=f"{offset}-{i}",
                    chunks=[
                        NewChunk(text=str(j), embedding=vecs[j]) for j in range(CHUNKS_PER_DOC)
                    ],
                )
                added = service.add_document(lib.id, doc)
                if i % 3 == 0:
                    service.delete_document(lib.id, added.id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reader() -> None:
        query = np.ones(DIM, dtype=np.float32)
        try:
            while not stop.is_set():
                # k above the total number of chunks: every visible chunk comes back (exact for
                # flat; for hnsw a small graph with ef=1000 is searched exhaustively)
                result = service.search(lib.id, SearchQuery(vector=query, k=1000, ef=1000))
                counts = Counter(hit.document_id for hit in result.results)
                bad = Counter({d: c for d, c in counts.items() if c != CHUNKS_PER_DOC})
                if bad:
                    torn.append(bad)
                searches[0] += 1
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert not torn
    assert searches[0] > 0
    lib_now = service.get_library(lib.id)
    assert lib_now.document_count == 2 * (40 - 14)
    assert lib_now.chunk_count == lib_now.document_count * CHUNKS_PER_DOC


def test_event_ids_follow_commit_order_under_concurrent_writers(service: VectorDBService) -> None:
    libs = [service.create_library(f"l{i}", dimension=4, index="flat") for i in range(3)]
    sub = service.subscribe(None, since="earliest", buffer=100_000)

    def write(lib_id: str) -> None:
        for i in range(50):
            service.add_document(lib_id, {"title": str(i), "text": f"doc {i}"})

    threads = [threading.Thread(target=write, args=(lib.id,)) for lib in libs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = []
    per_lib: dict[str, list[str]] = {}
    while (event := sub.poll()) is not None:
        ids.append(int(event.id))
        if event.type == "document.added":
            per_lib.setdefault(event.library_id or "", []).append(event.data["title"])
    assert ids == list(range(1, 3 + 150 + 1))
    for titles in per_lib.values():
        assert titles == [str(i) for i in range(50)]
