"""Durable ingest against in-memory ingest on the same bulk load, and open (recovery) time.

    python bench/durability_bench.py                       # 100k x 384, flat and hnsw
    python bench/durability_bench.py --n 20000 --index flat

For each index kind, the same vectors are loaded with ``lib.add_documents`` (batches of
``--batch`` single-chunk documents with given embeddings) into ``arrwdb.open()`` (memory) and
into ``arrwdb.open(dir, fsync=...)`` for every fsync policy; then the durable store is closed
(which saves its HNSW indexes) and opened again, timing the close, the open and the first
search. For the first policy it also times an open after a crash that left no saved index (the
``indexes/`` folder removed: a rebuild from the stored vectors), the worst case.
Target (issue 4/5): durable ingest with ``always`` / in-memory ingest >= 0.5.

Then small concurrent writes: ``--writers`` threads each adding single-document writes, into
memory and into ``fsync=always``, showing what group commit buys (writers share fsyncs).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import arrwdb
from _common import F32, clustered, markdown_table, write_json


def _documents(vectors: F32, start: int, stop: int) -> list[dict[str, Any]]:
    return [
        {"title": f"d{i}", "chunks": [{"text": f"chunk {i}", "embedding": vectors[i]}]}
        for i in range(start, stop)
    ]


def _ingest(db: arrwdb.Database, index: str, vectors: F32, batch: int) -> float:
    lib = db.create_library("bench", index=index, dimension=int(vectors.shape[1]))
    batches = [
        _documents(vectors, s, min(s + batch, len(vectors))) for s in range(0, len(vectors), batch)
    ]
    started = time.perf_counter()
    for docs in batches:
        lib.add_documents(docs)
    return time.perf_counter() - started


def _small_writes(db: arrwdb.Database, vectors: F32, writers: int, per_writer: int) -> float:
    lib = db.create_library("small", index="flat", dimension=int(vectors.shape[1]))
    barrier = threading.Barrier(writers + 1)

    def write(w: int) -> None:
        barrier.wait()
        for i in range(per_writer):
            row = vectors[(w * per_writer + i) % len(vectors)]
            lib.add_document(title=f"{w}/{i}", chunks=[{"text": "x", "embedding": row}])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return writers * per_writer / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--index", default="flat,hnsw")
    parser.add_argument("--fsync", default="always,interval,never")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--small-writes", type=int, default=4_000, help="in all, per store")
    args = parser.parse_args()

    data = clustered(args.n, args.dim, 10)
    query = data.queries[0]
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for index in args.index.split(","):
        with arrwdb.open() as db:
            memory_s = _ingest(db, index, data.vectors, args.batch)
        rows.append([index, "memory", args.n / memory_s, 1.0, None, None, None, None, None])
        results.append({"index": index, "storage": "memory", "chunks_per_s": args.n / memory_s})
        for number, policy in enumerate(args.fsync.split(",")):
            folder = Path(tempfile.mkdtemp(prefix="arrwdb-bench-"))
            try:
                db = arrwdb.open(str(folder / "data"), fsync=policy)
                disk_s = _ingest(db, index, data.vectors, args.batch)
                started = time.perf_counter()
                db.close()
                close_s = time.perf_counter() - started
                size = sum(p.stat().st_size for p in (folder / "data").rglob("*") if p.is_file())
                started = time.perf_counter()
                db = arrwdb.open(str(folder / "data"), fsync=policy)
                open_s = time.perf_counter() - started
                started = time.perf_counter()
                hits = db.get_library("bench").search(query, k=10)
                first_search_s = time.perf_counter() - started
                assert len(hits) == 10
                assert db.get_library("bench").chunk_count == args.n
                db.close()
                rebuild_s = None
                if number == 0:  # a crash before any index save: the worst case
                    shutil.rmtree(folder / "data" / "indexes", ignore_errors=True)
                    started = time.perf_counter()
                    db = arrwdb.open(str(folder / "data"), fsync=policy)
                    rebuild_s = time.perf_counter() - started
                    assert (
                        db.get_library("bench").search(query, k=10)[0].chunk_id == hits[0].chunk_id
                    )
                    db.close()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            ratio = memory_s / disk_s
            rows.append(
                [
                    index,
                    f"disk fsync={policy}",
                    args.n / disk_s,
                    ratio,
                    close_s,
                    open_s,
                    rebuild_s,
                    first_search_s,
                    size / 2**20,
                ]
            )
            results.append(
                {
                    "index": index,
                    "storage": f"disk-{policy}",
                    "chunks_per_s": args.n / disk_s,
                    "ratio_to_memory": ratio,
                    "close_s": close_s,
                    "open_s": open_s,
                    "open_without_saved_index_s": rebuild_s,
                    "first_search_s": first_search_s,
                    "data_mib": size / 2**20,
                }
            )
    print(f"\n## Durability: {args.n:,} chunks x {args.dim}, batches of {args.batch}\n")
    print(
        markdown_table(
            [
                "index",
                "storage",
                "ingest chunks/s",
                "ratio to memory (target >= 0.5 for always)",
                "close s",
                "open s",
                "open s, no saved index",
                "first search s",
                "data MiB",
            ],
            rows,
        )
    )
    small: list[list[Any]] = []
    per_writer = max(1, args.small_writes // args.writers)
    with arrwdb.open() as db:
        memory_wps = _small_writes(db, data.vectors, args.writers, per_writer)
    small.append(["memory", memory_wps, 1.0])
    for policy in args.fsync.split(","):
        folder = Path(tempfile.mkdtemp(prefix="arrwdb-bench-"))
        try:
            with arrwdb.open(str(folder / "data"), fsync=policy) as db:
                wps = _small_writes(db, data.vectors, args.writers, per_writer)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        small.append([f"disk fsync={policy}", wps, wps / memory_wps])
        results.append({"small_writes": policy, "writes_per_s": wps, "writers": args.writers})
    results.append({"small_writes": "memory", "writes_per_s": memory_wps})
    print(f"\n## Small writes: {args.writers} writers, one document per call\n")
    print(markdown_table(["storage", "writes/s", "ratio to memory"], small))
    path = write_json("durability", {"args": vars(args), "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
