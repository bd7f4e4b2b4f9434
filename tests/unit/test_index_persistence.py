"""Saved indexes: an HNSW index is saved with the store and read back on open, not rebuilt.

A saved index is a cache: whatever state it is in (current, stale, damaged, missing, for other
settings), a reopened store must answer exactly as the stored documents say.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrwdb.adapters.index.hnsw import GRAPH_FILE, HnswIndex
from arrwdb.adapters.storage.index_files import FileIndexStore
from arrwdb.config import Settings
from arrwdb.container import build_container
from arrwdb.domain.models import IndexParams, Library, SearchQuery, new_id
from arrwdb.domain.service import VectorDBService

DIM = 8


def open_service(data_dir: Path) -> tuple[Any, VectorDBService]:
    container = build_container(
        Settings(storage="disk", data_dir=str(data_dir), index_save_interval=0)
    )
    container.init_resources()
    return container, container.service()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)


def add(service: VectorDBService, library_id: str, seed: int, chunks: int, **doc: Any) -> str:
    rows = vectors(seed, chunks)
    document = service.add_document(
        library_id,
        {
            "title": doc.get("title", f"doc {seed}"),
            "metadata": doc.get("metadata", {"seed": seed}),
            "chunks": [{"text": f"{seed}/{i}", "embedding": row} for i, row in enumerate(rows)],
        },
    )
    return document.id


def everything(service: VectorDBService, library_id: str) -> dict[str, tuple[str, Any]]:
    """Every chunk a search can reach: chunk id -> (document title, metadata)."""
    library = service.get_library(library_id)
    if library.chunk_count == 0:
        return {}
    query = vectors(12345, 1)[0]
    found = service.search(
        library_id, SearchQuery(vector=query, k=library.chunk_count + 5, ef=4096)
    ).results
    return {hit.chunk_id: (hit.document_title, hit.metadata) for hit in found}


def stored(service: VectorDBService, library_id: str) -> dict[str, tuple[str, Any]]:
    """The same, from the documents as stored (the truth)."""
    out = {}
    cursor = None
    while True:
        page = service.list_documents(library_id, limit=1000, cursor=cursor)
        for listed in page.documents:
            doc = service.get_document(library_id, listed.id)
            for chunk in doc.chunks:
                out[chunk.id] = (doc.title, {**doc.metadata, **chunk.metadata})
        cursor = page.next_cursor
        if cursor is None:
            return out


def reopened_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "arrwdb.projection"]


def test_reopening_reads_the_saved_index_instead_of_rebuilding(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    container, service = open_service(store_dir)
    lib = service.create_library("l", dimension=DIM)
    for seed in range(30):
        add(service, lib.id, seed, 3)
    queries = vectors(99, 20)
    before = [[(h.chunk_id, h.score) for h in r.results] for r in _search(service, lib, queries)]
    container.shutdown_resources()
    assert [p.name for p in (store_dir / "indexes" / lib.id).iterdir()] == ["1"]

    caplog.set_level(logging.INFO, logger="arrwdb.projection")
    container, service = open_service(store_dir)
    after = [[(h.chunk_id, h.score) for h in r.results] for r in _search(service, lib, queries)]
    container.shutdown_resources()
    assert after == before
    assert any("saved index loaded, 0 label(s)" in m for m in reopened_log(caplog))


def _search(service: VectorDBService, lib: Library, queries: np.ndarray) -> list[Any]:
    return service.search_vectors(lib.id, queries, k=5)


def test_an_unchanged_index_is_not_saved_again(store_dir: Path) -> None:
    container, service = open_service(store_dir)
    lib = service.create_library("l", dimension=DIM)
    add(service, lib.id, 1, 4)
    assert service.save_indexes() == 1
    assert service.save_indexes() == 0
    add(service, lib.id, 2, 4)
    assert service.save_indexes() == 1
    container.shutdown_resources()
    assert sorted(p.name for p in (store_dir / "indexes" / lib.id).iterdir()) == ["2"]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 10_000), st.integers(1, 3)),
        st.tuples(st.just("delete"), st.integers(0, 100), st.just(0)),
        st.tuples(st.just("replace"), st.integers(0, 100), st.integers(1, 3)),
        st.tuples(st.just("retitle"), st.integers(0, 100), st.just(0)),
    ),
    max_size=12,
)


@settings(max_examples=25)
@given(before=operations, after=operations)
def test_a_stale_saved_index_is_brought_up_to_date(
    tmp_path_factory: pytest.TempPathFactory,
    before: list[tuple[str, int, int]],
    after: list[tuple[str, int, int]],
) -> None:
    """Save after ``before``, apply ``after`` (as if the process died before saving again),
    reopen with the stale save: the index holds exactly the stored chunks, with their current
    titles and metadata, and each chunk is its own best match."""
    data = tmp_path_factory.mktemp("stale") / "data"
    container, service = open_service(data)
    lib = service.create_library("l", dimension=DIM)
    docs: list[str] = [add(service, lib.id, 0, 2)]
    _apply(service, lib.id, docs, before)
    service.save_indexes()
    stale = data.parent / "stale-indexes"
    shutil.copytree(data / "indexes", stale)
    _apply(service, lib.id, docs, after)
    container.shutdown_resources()
    shutil.rmtree(data / "indexes")
    shutil.copytree(stale, data / "indexes")

    container, service = open_service(data)
    try:
        truth = stored(service, lib.id)
        assert everything(service, lib.id) == truth
        for doc_id in docs:
            for chunk in service.get_document(lib.id, doc_id, include_embedding=True).chunks:
                best = service.search(
                    lib.id, SearchQuery(vector=chunk.embedding, k=1, ef=4096)
                ).results
                assert best[0].chunk_id == chunk.id
        # and it keeps working: a write after the reconcile lands in the same index
        add(service, lib.id, 77_777, 2)
        assert everything(service, lib.id) == stored(service, lib.id)
    finally:
        container.shutdown_resources()


_seeds = itertools.count(1_000_000)


def _apply(
    service: VectorDBService, library_id: str, docs: list[str], ops: list[tuple[str, int, int]]
) -> None:
    for op, number, chunks in ops:
        seed = next(_seeds)  # every embedding distinct: each chunk is its own best match
        if op == "add":
            docs.append(add(service, library_id, seed, chunks))
            continue
        if not docs:
            continue
        doc_id = docs[number % len(docs)]
        if op == "delete":
            service.delete_document(library_id, doc_id)
            docs.remove(doc_id)
        elif op == "replace":
            rows = vectors(seed, chunks)
            service.update_document(
                library_id,
                doc_id,
                chunks=[{"text": f"r{i}", "embedding": row} for i, row in enumerate(rows)],
            )
        else:
            service.update_document(
                library_id, doc_id, title=f"title {number}", metadata={"n": number}
            )


def test_a_damaged_save_is_ignored_with_a_warning_and_rebuilt(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    container, service = open_service(store_dir)
    lib = service.create_library("l", dimension=DIM)
    for seed in range(10):
        add(service, lib.id, seed, 2)
    container.shutdown_resources()
    graph = store_dir / "indexes" / lib.id / "1" / GRAPH_FILE
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])

    caplog.set_level(logging.WARNING, logger="arrwdb.storage")
    container, service = open_service(store_dir)
    try:
        assert everything(service, lib.id) == stored(service, lib.id)
        assert len(everything(service, lib.id)) == 20
    finally:
        container.shutdown_resources()
    warnings = [r.getMessage() for r in caplog.records if r.name == "arrwdb.storage"]
    assert any("not usable" in w and "rebuilding" in w for w in warnings), warnings
    # the rebuilt index was saved anew on close
    assert (store_dir / "indexes" / lib.id / "2" / GRAPH_FILE).exists()


def test_a_same_size_edit_of_a_saved_vector_is_caught_and_rebuilt(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A saved file edited without changing its size (a flipped byte among the vectors) is
    not loaded: every search still finds each chunk itself, never a wrong one."""
    container, service = open_service(store_dir)
    lib = service.create_library("l", dimension=DIM)
    for seed in range(10):
        add(service, lib.id, seed, 2)
    container.shutdown_resources()
    vectors_file = store_dir / "indexes" / lib.id / "1" / "vectors.npy"
    data = bytearray(vectors_file.read_bytes())
    data[-4:] = bytes(4) if data[-4:] != bytes(4) else b"\x00\x00\x80\x3f"
    vectors_file.write_bytes(bytes(data))

    caplog.set_level(logging.WARNING, logger="arrwdb.storage")
    container, service = open_service(store_dir)
    try:
        assert everything(service, lib.id) == stored(service, lib.id)
    finally:
        container.shutdown_resources()
    warnings = [r.getMessage() for r in caplog.records if r.name == "arrwdb.storage"]
    assert any("checksum" in w and "rebuilding" in w for w in warnings), warnings


def test_a_save_for_other_settings_or_another_library_is_not_used(tmp_path: Path) -> None:
    store = FileIndexStore(tmp_path)
    library = Library(id=new_id(), name="l", dimension=DIM, index_params=IndexParams(m=8))
    index = HnswIndex(DIM, "cosine", library.index_params)
    index.add(np.arange(5, dtype=np.int64), vectors(1, 5))
    store.save(library, index, [f"c{i}" for i in range(5)])
    assert store.load(library) is not None
    other_params = Library(id=library.id, name="l", dimension=DIM, index_params=IndexParams(m=16))
    assert store.load(other_params) is None
    other_metric = Library(
        id=library.id, name="l", dimension=DIM, metric="l2", index_params=IndexParams(m=8)
    )
    assert store.load(other_metric) is None
    flat = Library(id=library.id, name="l", dimension=DIM, index="flat")
    assert store.load(flat) is None


def test_leftovers_of_a_crash_and_of_deleted_libraries_are_removed(store_dir: Path) -> None:
    container, service = open_service(store_dir)
    keep = service.create_library("keep", dimension=DIM)
    gone = service.create_library("gone", dimension=DIM)
    add(service, keep.id, 1, 2)
    add(service, gone.id, 2, 2)
    service.save_indexes()
    assert (store_dir / "indexes" / gone.id).exists()
    service.delete_library(gone.id)
    assert not (store_dir / "indexes" / gone.id).exists()
    container.shutdown_resources()
    # a save interrupted by a crash, and the index of a library deleted while it was saved
    (store_dir / "indexes" / keep.id / "7.tmp").mkdir()
    (store_dir / "indexes" / new_id()).mkdir()

    container, service = open_service(store_dir)
    try:
        assert len(everything(service, keep.id)) == 2
        assert sorted(p.name for p in (store_dir / "indexes").iterdir()) == [keep.id]
        assert sorted(p.name for p in (store_dir / "indexes" / keep.id).iterdir()) == ["1"]
    finally:
        container.shutdown_resources()


def test_a_failed_save_keeps_the_previous_one_and_does_not_fail_close(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    container, service = open_service(store_dir)
    lib = service.create_library("l", dimension=DIM)
    add(service, lib.id, 1, 2)
    service.save_indexes()
    add(service, lib.id, 2, 2)

    def disk_full(self: HnswIndex, directory: Path) -> list[Path]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(HnswIndex, "save", disk_full)
    with pytest.raises(Exception, match="No space left"):
        service.save_indexes()
    container.shutdown_resources()  # logs, does not raise
    assert any("could not save the indexes" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in (store_dir / "indexes" / lib.id).iterdir()) == ["1"]
    monkeypatch.undo()

    container, service = open_service(store_dir)
    try:
        assert everything(service, lib.id) == stored(service, lib.id)
        assert len(stored(service, lib.id)) == 4
    finally:
        container.shutdown_resources()


@settings(max_examples=30)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["add", "remove"]), st.lists(st.integers(0, 40), max_size=8)),
        max_size=10,
    ),
    metric=st.sampled_from(["cosine", "l2", "ip"]),
)
def test_hnsw_index_save_and_load_give_the_same_index(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, list[int]]], metric: Any
) -> None:
    index = HnswIndex(DIM, metric, IndexParams(m=8, ef_construction=50))
    rng = np.random.default_rng(3)
    for op, labels in steps:
        array = np.asarray(sorted(set(labels)), dtype=np.int64)
        if op == "add":
            index.add(array, rng.standard_normal((len(array), DIM), dtype=np.float32))
        else:
            index.remove(array)
    directory = tmp_path_factory.mktemp("hnsw")
    index.save(directory)
    loaded = HnswIndex.load(directory, DIM, metric, IndexParams(m=8, ef_construction=50))
    assert len(loaded) == len(index)
    live = np.asarray([label for label in range(41) if label in index], dtype=np.int64)
    assert [label for label in range(41) if label in loaded] == live.tolist()
    if len(live):
        assert np.array_equal(loaded.get_vectors(live), index.get_vectors(live))
    queries = rng.standard_normal((5, DIM), dtype=np.float32)
    expected = index.search(queries, 5, ef=64)
    got = loaded.search(queries, 5, ef=64)
    assert np.array_equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    # the loaded index keeps growing and removing as before
    loaded.add(np.asarray([100], dtype=np.int64), queries[:1])
    assert 100 in loaded
    if metric != "ip":  # (under the inner product a vector need not be its own best match)
        assert loaded.search(queries[:1], 1)[0][0, 0] == 100


def test_an_online_backup_opens_on_its_own_while_writes_go_on(tmp_path: Path) -> None:
    import threading

    import arrwdb

    db = arrwdb.open(str(tmp_path / "live"))
    lib = db.create_library("l", dimension=DIM)
    for seed in range(20):
        lib.add_document(title=str(seed), chunks=[{"text": "x", "embedding": vectors(seed, 1)[0]}])
    stop = threading.Event()

    def keep_writing() -> None:
        seed = 1000
        while not stop.is_set():
            lib.add_document(title="w", chunks=[{"text": "x", "embedding": vectors(seed, 1)[0]}])
            seed += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        assert db.backup(tmp_path / "copy") == tmp_path / "copy"
    finally:
        stop.set()
        writer.join()
    at_backup_time = db.get_library("l").document_count
    db.close()
    copy = arrwdb.open(str(tmp_path / "copy"))
    try:
        restored = copy.get_library("l")
        assert 20 <= restored.document_count <= at_backup_time
        hits = restored.search(vectors(3, 1)[0], k=1)
        assert hits[0].document_title == "3"
        events = [int(e.id) for e in copy.events(since="earliest", timeout=0.1)]
        assert events == list(range(1, len(events) + 1))
        assert len(events) == 1 + restored.document_count
    finally:
        copy.close()
    with arrwdb.open() as memory, pytest.raises(arrwdb.ValidationError, match="in memory"):
        memory.backup(tmp_path / "nothing")
