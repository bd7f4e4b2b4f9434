"""Durable ingest against in-memory ingest on the same bulk load, and open (recovery) time.

    python bench/durability_bench.py                       # 100k x 384, flat and hnsw
    python bench/durability_bench.py --n 20000 --index flat

For each index kind, the same vectors are loaded with ``lib.add_documents`` (batches of
``--batch`` single-chunk documents with given embeddings) into ``arrwdb.open()`` (memory) and
into ``arrwdb.open(dir, fsync=...)`` for every fsync policy; then the durable store is closed
and opened again, timing the open and the first search. Target (issue 4/5): durable ingest with
``always`` / in-memory ingest >= 0.5.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--index", default="flat,hnsw")
    parser.add_argument("--fsync", default="always,interval,never")
    args = parser.parse_args()

    data = clustered(args.n, args.dim, 10)
    query = data.queries[0]
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for index in args.index.split(","):
        with arrwdb.open() as db:
            memory_s = _ingest(db, index, data.vectors, args.batch)
        rows.append([index, "memory", args.n / memory_s, 1.0, None, None, None])
        results.append({"index": index, "storage": "memory", "chunks_per_s": args.n / memory_s})
        for policy in args.fsync.split(","):
            folder = Path(tempfile.mkdtemp(prefix="arrwdb-bench-"))
            try:
                db = arrwdb.open(str(folder / "data"), fsync=policy)
                disk_s = _ingest(db, index, data.vectors, args.batch)
                db.close()
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
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            ratio = memory_s / disk_s
            rows.append(
                [
                    index,
                    f"disk fsync={policy}",
                    args.n / disk_s,
                    ratio,
                    open_s,
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
                    "open_s": open_s,
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
                "open s",
                "first search s",
                "data MiB",
            ],
            rows,
        )
    )
    path = write_json("durability", {"args": vars(args), "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
