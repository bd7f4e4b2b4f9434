"""One system's measurement for ``bench/peers_bench.py``, run by that system's venv Python:

    python _peers_worker.py SYSTEM DATA_DIR PARAMS_JSON

Loads ``vectors.npy``, ``queries.npy`` and ``tags.npy`` from ``DATA_DIR``, ingests the vectors
(batches of ``batch``, up to a searchable index), times single queries unfiltered and with
``tag == 1`` (best of ``repeats``), and prints one JSON line: seconds, the ids found (row numbers,
``-1`` for a missing hit) and the peak RSS. Needs only numpy and the system's own package: only
the ``arrwdb`` system imports arrwdb.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Search = Callable[[Any], list[int]]  # one query vector -> row numbers, best first


def arrwdb_system(vectors: Any, tags: Any, p: dict[str, Any]) -> tuple[Search, Search, str]:
    import arrwdb

    db = arrwdb.open()
    lib = db.create_library(
        "peers",
        dimension=vectors.shape[1],
        metric="cosine",
        index="hnsw",
        index_params={"m": p["m"], "ef_construction": p["ef_construction"], "ef_search": p["ef"]},
        embedder=None,
    )
    n, batch, k, ef = len(vectors), p["batch"], p["k"], p["ef"]
    for s in range(0, n, batch):
        lib.add_documents(
            [
                {
                    "id": str(i),
                    "title": "",
                    "metadata": {"tag": int(tags[i])},
                    "chunks": [{"text": "", "embedding": vectors[i]}],
                }
                for i in range(s, min(s + batch, n))
            ]
        )
    only = {"tag": 1}

    def search(q: Any) -> list[int]:
        return [int(h.document_id) for h in lib.search(q, k=k, ef=ef)]

    def filtered(q: Any) -> list[int]:
        return [int(h.document_id) for h in lib.search(q, k=k, filter=only, ef=ef)]

    return search, filtered, "arrwdb.open() in memory; index_params m, ef_construction, ef_search"


def hnswlib_system(vectors: Any, tags: Any, p: dict[str, Any]) -> tuple[Search, Search, str]:
    import hnswlib

    n, batch, k = len(vectors), p["batch"], p["k"]
    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=n, M=p["m"], ef_construction=p["ef_construction"])
    for s in range(0, n, batch):
        index.add_items(vectors[s : s + batch], np.arange(s, min(s + batch, n)))
    index.set_ef(p["ef"])
    tag = tags.tolist()

    def admit(label: int) -> bool:
        return bool(tag[label] == 1)

    def search(q: Any) -> list[int]:
        labels, _ = index.knn_query(q, k, 1)
        return [int(x) for x in labels[0]]

    def filtered(q: Any) -> list[int]:
        labels, _ = index.knn_query(q, k, 1, admit)
        return [int(x) for x in labels[0]]

    return search, filtered, "filter: a Python callable tag[label] == 1"


def chroma_system(vectors: Any, tags: Any, p: dict[str, Any]) -> tuple[Search, Search, str]:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    col = client.create_collection(
        "peers",
        embedding_function=None,
        configuration={
            "hnsw": {
                "space": "cosine",
                "max_neighbors": p["m"],
                "ef_construction": p["ef_construction"],
                "ef_search": p["ef"],
            }
        },
    )
    n, batch, k = len(vectors), p["batch"], p["k"]
    for s in range(0, n, batch):
        rows = range(s, min(s + batch, n))
        col.add(
            ids=[str(i) for i in rows],
            embeddings=vectors[s : s + batch],
            metadatas=[{"tag": int(tags[i])} for i in rows],
        )

    def ids(result: Any) -> list[int]:
        return [int(x) for x in result["ids"][0]]

    def search(q: Any) -> list[int]:
        return ids(col.query(query_embeddings=[q], n_results=k, include=[]))

    def filtered(q: Any) -> list[int]:
        return ids(col.query(query_embeddings=[q], n_results=k, where={"tag": 1}, include=[]))

    return (
        search,
        filtered,
        "EphemeralClient (in memory); configuration hnsw max_neighbors, ef_construction, ef_search",
    )


def lancedb_system(vectors: Any, tags: Any, p: dict[str, Any]) -> tuple[Search, Search, str]:
    import lancedb
    import pyarrow as pa
    from lancedb.index import HnswFlat

    folder = tempfile.mkdtemp(prefix="peers-lancedb-")
    db = lancedb.connect(folder)
    n, batch, k, dim = len(vectors), p["batch"], p["k"], vectors.shape[1]

    def arrow(s: int) -> Any:
        e = min(s + batch, n)
        flat = pa.array(vectors[s:e].reshape(-1), type=pa.float32())
        return pa.table(
            {
                "id": pa.array(np.arange(s, e), type=pa.int64()),
                "tag": pa.array(tags[s:e], type=pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            }
        )

    table = db.create_table("peers", data=arrow(0))
    for s in range(batch, n, batch):
        table.add(arrow(s))
    config = HnswFlat(
        distance_type="cosine",
        num_partitions=1,
        m=p["m"],
        ef_construction=p["ef_construction"],
    )
    table.create_index("vector", config=config)
    ef = p["ef"]

    def search(q: Any) -> list[int]:
        hits = table.search(q).distance_type("cosine").ef(ef).limit(k).select(["id"]).to_arrow()
        return [int(x) for x in hits.column("id").to_pylist()]

    def filtered(q: Any) -> list[int]:
        hits = (
            table.search(q)
            .distance_type("cosine")
            .ef(ef)
            .where("tag = 1", prefilter=True)
            .limit(k)
            .select(["id"])
            .to_arrow()
        )
        return [int(x) for x in hits.column("id").to_pylist()]

    return (
        search,
        filtered,
        f"a table in a temporary folder; IVF_HNSW_FLAT (HnswFlat) num_partitions=1 m={p['m']} "
        f"ef_construction={p['ef_construction']}, query ef={ef}, where(prefilter=True)",
    )


IMPORTS = {
    "arrwdb": ["arrwdb"],
    "hnswlib": ["hnswlib"],
    "chroma": ["chromadb", "chromadb.config"],
    "lancedb": ["lancedb", "lancedb.index", "pyarrow"],
}

SYSTEMS = {
    "arrwdb": arrwdb_system,
    "hnswlib": hnswlib_system,
    "chroma": chroma_system,
    "lancedb": lancedb_system,
}


def peak_rss_mb() -> float:
    """This process's peak resident set, MiB: ``VmHWM`` of its memory map (``ru_maxrss`` will
    not do: Linux carries it over from the parent through fork and exec, so every worker would
    report at least the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed_queries(fn: Search, queries: list[Any], k: int, repeats: int) -> tuple[float, Any]:
    """Fastest of ``repeats`` passes over ``queries``, one call each; the last pass's ids."""
    best, found = float("inf"), None
    for _ in range(max(1, repeats)):
        out = np.full((len(queries), k), -1, dtype=np.int64)
        start = time.perf_counter()
        for row, q in enumerate(queries):
            hits = fn(q)
            out[row, : len(hits)] = hits[:k]
        best = min(best, time.perf_counter() - start)
        found = out
    return best, found


def main() -> int:
    system, folder, params = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    vectors = np.load(folder / "vectors.npy")
    queries = np.load(folder / "queries.npy")
    tags = np.load(folder / "tags.npy")
    qs = list(queries)
    for module in IMPORTS[system]:  # imported before the clock starts
        importlib.import_module(module)

    start = time.perf_counter()
    search, filtered, notes = SYSTEMS[system](vectors, tags, params)
    search(qs[0])  # searchable: whatever an index does lazily on its first query is ingest
    ingest_s = time.perf_counter() - start

    k, repeats = params["k"], params["repeats"]
    search_s, found = timed_queries(search, qs, k, repeats)
    filtered_s, found_filtered = timed_queries(filtered, qs, k, repeats)
    peak = peak_rss_mb()
    out = {
        "ingest_s": ingest_s,
        "search_s": search_s,
        "filtered_s": filtered_s,
        "peak_rss_mb": peak,
        "notes": notes,
        "found": found.tolist(),
        "found_filtered": found_filtered.tolist(),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
