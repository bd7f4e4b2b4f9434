"""In-process index benchmark: arrwDB against its floors, side by side, on the same data.

    python bench/index_bench.py                      # 100k x 384, 1,000 queries (~3-4 min, 2 cores)
    python bench/index_bench.py --n 20000 --dim 128  # a quick look

Measures, in one run:

* HNSW search: ``lib.search`` (one query per call) and ``lib.search_many`` (all queries in one
  call) against raw ``hnswlib`` ``knn_query`` with the same parameters, sweeping ``ef``; QPS and
  recall@k against the exact answer. The target compares QPS at the same recall (interpolated on
  each ef curve at ``--target-recall``). As a diagnostic, raw ``knn_query`` is also timed on
  arrwDB's own graph, which isolates arrwDB's per-query overhead from graph-to-graph noise.
* Exact search: a ``flat`` library against a plain numpy matrix-product scan + ``argpartition``.
* Ingest: ``add_documents`` (embeddings given) against raw ``hnswlib.Index.add_items`` on the same
  vectors in the same batches, and a ``flat`` library against appending to a numpy matrix.

Prints Markdown tables (targets of issue 5 first) and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import arrwdb
from _common import (
    F32,
    I64,
    base_parser,
    best_of,
    clustered,
    exact_top_k,
    log,
    machine,
    markdown_table,
    normalised,
    recall_at_k,
    run_and_report,
    timed,
)

TARGETS = {
    "hnsw_search_single": 0.90,
    "hnsw_search_batched": 0.90,
    "exact_search_single": 0.80,
    "exact_search_batched": 0.80,
    "hnsw_add_documents": 0.80,
}


def parse_args(argv: Sequence[str] | None = None) -> Any:
    p = base_parser(__doc__.split("\n\n")[0] if __doc__ else "index benchmark")
    p.add_argument("--n", type=int, default=100_000, help="vectors in the index")
    p.add_argument("--dim", type=int, default=384, help="dimension")
    p.add_argument("--queries", type=int, default=1000, help="queries (HNSW, batched exact)")
    p.add_argument("--exact-queries", type=int, default=200, help="single queries, exact")
    p.add_argument("--k", type=int, default=10, help="neighbours per query")
    p.add_argument("--efs", default="16,32,64,128,256", help="ef values to sweep")
    p.add_argument("--m", type=int, default=16, help="HNSW M")
    p.add_argument("--ef-construction", type=int, default=200, help="HNSW ef_construction")
    p.add_argument("--batch", type=int, default=10_000, help="chunks per add_documents call")
    p.add_argument("--ingest-repeats", type=int, default=1, help="HNSW builds each (best kept)")
    p.add_argument("--chunks-per-doc", type=int, default=10, help="chunks per document")
    p.add_argument("--clusters", type=int, default=100, help="data: cluster centres")
    p.add_argument("--intrinsic", type=int, default=64, help="data: intrinsic dimension")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall for the QPS ratio")
    p.add_argument("--skip-flat", action="store_true", help="skip the exact (flat) part")
    p.add_argument("--skip-hnsw", action="store_true", help="skip the HNSW part")
    return p.parse_args(argv)


# -- documents -------------------------------------------------------------------------------


def call_rows(n: int, per_doc: int, batch: int) -> list[range]:
    """The rows of each ``add_documents`` call: whole documents of ``per_doc`` chunks, about
    ``batch`` chunks a call. Raw hnswlib gets the same rows in the same calls."""
    step = max(1, batch // per_doc) * per_doc
    return [range(s, min(s + step, n)) for s in range(0, n, step)]


def documents(vectors: F32, rows: range, per_doc: int) -> list[dict[str, Any]]:
    """The documents of one call, as a caller would send them: ``per_doc`` chunks each, with
    their embeddings given (numpy rows). Document ``d<j>`` holds rows ``j * per_doc ...``, so
    ``rows_of`` maps hits back to rows. Built per call (untimed) and dropped after it, so the
    benchmark keeps no Python objects of its own alive for the collector to walk."""
    docs = []
    for start in range(rows.start, rows.stop, per_doc):
        j = start // per_doc
        chunk_rows = range(start, min(start + per_doc, rows.stop))
        docs.append(
            {
                "id": f"d{j}",
                "title": f"document {j}",
                "metadata": {"group": j % 10},
                "chunks": [{"text": f"chunk {r}", "embedding": vectors[r]} for r in chunk_rows],
            }
        )
    return docs


def ingest(lib: Any, vectors: F32, calls: list[range], per_doc: int) -> float:
    """Seconds spent in ``add_documents`` (document building excluded)."""
    spent = 0.0
    for rows in calls:
        docs = documents(vectors, rows, per_doc)
        start = time.perf_counter()
        lib.add_documents(docs)
        spent += time.perf_counter() - start
        del docs
    return spent


def rows_of(results: Sequence[Any], k: int, per_doc: int) -> I64:
    """Data row of every hit (``-1`` for a missing one), from document id and chunk position."""
    out = np.full((len(results), k), -1, dtype=np.int64)
    for i, result in enumerate(results):
        for j, hit in enumerate(result.results[:k]):
            out[i, j] = int(hit.document_id[1:]) * per_doc + hit.position
    return out


# -- baselines -------------------------------------------------------------------------------


def raw_hnsw_build(vectors: F32, calls: list[range], m: int, efc: int) -> hnswlib.Index:
    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=m, ef_construction=efc, random_seed=100)
    for rows in calls:
        index.add_items(vectors[rows.start : rows.stop], np.arange(rows.start, rows.stop))
    return index


class NumpyAppend:
    """The floor of a flat ingest: normalise each batch and copy it into a growing matrix."""

    def __init__(self, dim: int) -> None:
        self.data = np.empty((1024, dim), dtype=np.float32)
        self.n = 0

    def add(self, batch: F32) -> None:
        need = self.n + len(batch)
        if need > len(self.data):
            grown = np.empty((max(need, 2 * len(self.data)), self.data.shape[1]), np.float32)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : need] = normalised(batch)
        self.n = need


def numpy_scan_single(v: F32, q: F32, k: int) -> I64:
    """One query at a time: the matrix-vector product, argpartition, sort the k."""
    out = np.empty((len(q), k), dtype=np.int64)
    for i in range(len(q)):
        query = q[i]
        query = query / np.linalg.norm(query)
        scores = v @ query
        top = np.argpartition(scores, -k)[-k:]
        out[i] = top[np.argsort(-scores[top])]
    return out


def numpy_scan_batched(v: F32, q: F32, k: int, budget: int = 64 * 2**20) -> I64:
    """Blocks of queries whose score matrix takes ``budget`` bytes (arrwDB's exact index uses
    the same 64 MiB by default): the same memory for both, so neither wins by using more."""
    block = max(1, budget // (4 * len(v)))
    qn = normalised(q)
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), block):
        scores = qn[s : s + block] @ v.T
        top = np.argpartition(scores, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[s : s + block] = np.take_along_axis(top, order, axis=1)
    return out


# -- helpers ---------------------------------------------------------------------------------


def qps_at_recall(points: list[tuple[float, float]], target: float) -> float | None:
    """QPS at ``target`` recall on a curve of ``(recall, qps)`` ordered by growing ef:
    log-linear between the two points around ``target``; the first point's QPS when it already
    reaches ``target``; ``None`` when no point does."""
    for i, (rec, qps) in enumerate(points):
        if rec >= target:
            if i == 0:
                return qps
            r0, q0 = points[i - 1]
            if rec <= r0:
                return qps
            f = (target - r0) / (rec - r0)
            return math.exp(math.log(q0) + f * (math.log(qps) - math.log(q0)))
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def graph_of(db: Any, lib: Any) -> hnswlib.Index | None:
    """arrwDB's own hnswlib graph (a diagnostic peek at internals; ``None`` if they moved)."""
    try:
        return db.service.projection.state(lib.id).index._graph
    except (AttributeError, KeyError):
        return None


# -- the benchmark ---------------------------------------------------------------------------


def run(args: Any) -> dict[str, Any]:
    efs = [int(e) for e in args.efs.split(",")]
    k = args.k
    log(f"data: {args.n:,} x {args.dim} clustered, {args.queries:,} queries (seed {args.seed})")
    ds = clustered(
        args.n,
        args.dim,
        args.queries,
        clusters=args.clusters,
        intrinsic=args.intrinsic,
        seed=args.seed,
    )
    vectors, queries = ds.vectors, ds.queries
    truth = exact_top_k(vectors, queries, k)
    calls = call_rows(len(vectors), args.chunks_per_doc, args.batch)
    result: dict[str, Any] = {
        "params": {
            key: getattr(args, key)
            for key in (
                "n",
                "dim",
                "queries",
                "exact_queries",
                "k",
                "m",
                "ef_construction",
                "batch",
                "ingest_repeats",
                "chunks_per_doc",
                "clusters",
                "intrinsic",
                "seed",
                "repeats",
                "target_recall",
            )
        }
        | {"efs": efs},
    }
    summary: list[dict[str, Any]] = []
    db = arrwdb.open()
    try:
        if not args.skip_hnsw:
            run_hnsw(args, db, vectors, queries, truth, calls, efs, result, summary)
        if not args.skip_flat:
            run_flat(args, db, vectors, queries, truth, calls, result, summary)
    finally:
        db.close()
    result["summary"] = summary
    return result


def run_hnsw(
    args: Any,
    db: Any,
    vectors: F32,
    queries: F32,
    truth: I64,
    calls: list[range],
    efs: list[int],
    result: dict[str, Any],
    summary: list[dict[str, Any]],
) -> None:
    k, per_doc = args.k, args.chunks_per_doc
    n_chunks = len(vectors)
    # -- ingest: a build is ~30 s at 100k x 384 on 2 cores, and hnswlib's multi-threaded build
    # time varies by +-10% from run to run: --ingest-repeats > 1 alternates builds, keeps the best
    options = {"m": args.m, "ef_construction": args.ef_construction}
    raw_s = ours_s = float("inf")
    raw: hnswlib.Index | None = None
    lib: Any = None
    for attempt in range(max(1, args.ingest_repeats)):
        log(f"hnsw ingest {attempt + 1}: raw hnswlib add_items")
        raw = None
        gc.collect()
        seconds, raw = timed(lambda: raw_hnsw_build(vectors, calls, args.m, args.ef_construction))
        raw_s = min(raw_s, seconds)
        log(f"  {seconds:.1f} s ({n_chunks / seconds:,.0f} vectors/s)")
        log(f"hnsw ingest {attempt + 1}: arrwdb add_documents")
        if lib is not None:
            db.delete_library(lib.id)
        lib = db.create_library(
            "bench-hnsw", dimension=args.dim, metric="cosine", index="hnsw", index_params=options
        )
        gc.collect()
        seconds = ingest(lib, vectors, calls, per_doc)
        ours_s = min(ours_s, seconds)
        log(f"  {seconds:.1f} s ({n_chunks / seconds:,.0f} chunks/s)")
    assert raw is not None
    assert lib.chunk_count == n_chunks
    result["hnsw_ingest"] = {
        "raw_add_items_per_s": n_chunks / raw_s,
        "add_documents_chunks_per_s": n_chunks / ours_s,
        "raw_seconds": raw_s,
        "arrwdb_seconds": ours_s,
    }
    summary.append(
        {
            "measure": "add_documents / raw hnswlib add_items (chunks/s)",
            "arrwdb": n_chunks / ours_s,
            "floor": n_chunks / raw_s,
            "ratio": raw_s / ours_s,
            "target": TARGETS["hnsw_add_documents"],
        }
    )

    # -- search sweep --------------------------------------------------------------------------
    same_graph = graph_of(db, lib)
    rows = []
    q_rows = [queries[i : i + 1] for i in range(len(queries))]
    q_vecs = list(queries)

    def raw_single(index: hnswlib.Index) -> Callable[[], None]:
        def go() -> None:
            for q in q_rows:
                index.knn_query(q, k=k)

        return go

    def raw_batched(index: hnswlib.Index) -> Callable[[], I64]:
        return lambda: index.knn_query(queries, k=k, num_threads=-1)[0].astype(np.int64)

    def ours_single(ef: int) -> Callable[[], None]:
        # each result is dropped as a caller's loop would; recall is taken in a second pass
        def go() -> None:
            for q in q_vecs:
                lib.search(q, k=k, ef=ef)

        return go

    def ours_batched(ef: int) -> Callable[[], list[Any]]:
        return lambda: lib.search_many(queries, k=k, ef=ef)

    for ef in efs:
        raw.set_ef(ef)
        contenders: list[Callable[[], Any]] = [
            raw_single(raw),
            ours_single(ef),
            raw_batched(raw),
            ours_batched(ef),
        ]
        if same_graph is not None:
            # ``ef`` is set on arrwDB's graph only around these calls, never during its searches
            def with_ef(fn: Callable[[], Any], ef: int = ef) -> Callable[[], Any]:
                def go() -> Any:
                    before = same_graph.ef
                    same_graph.set_ef(ef)
                    try:
                        return fn()
                    finally:
                        same_graph.set_ef(before)

                return go

            contenders += [with_ef(raw_single(same_graph)), with_ef(raw_batched(same_graph))]
        gc.collect()
        timings = best_of(contenders, args.repeats)
        raw_found = np.stack([raw.knn_query(q, k=k)[0][0] for q in q_rows]).astype(np.int64)
        ours_found = rows_of([lib.search(q, k=k, ef=ef) for q in q_vecs], k, per_doc)
        nq = len(queries)
        row: dict[str, Any] = {
            "ef": ef,
            "raw_single_qps": nq / timings[0][0],
            "raw_single_recall": recall_at_k(raw_found, truth),
            "arrwdb_single_qps": nq / timings[1][0],
            "arrwdb_single_recall": recall_at_k(ours_found, truth),
            "raw_batched_qps": nq / timings[2][0],
            "raw_batched_recall": recall_at_k(timings[2][1], truth),
            "arrwdb_batched_qps": nq / timings[3][0],
            "arrwdb_batched_recall": recall_at_k(rows_of(timings[3][1], k, per_doc), truth),
        }
        if same_graph is not None:
            row["same_graph_single_qps"] = nq / timings[4][0]
            row["same_graph_batched_qps"] = nq / timings[5][0]
        rows.append(row)
        log(
            f"  ef={ef}: single {row['arrwdb_single_qps']:,.0f} vs {row['raw_single_qps']:,.0f} "
            f"QPS (recall {row['arrwdb_single_recall']:.3f} vs {row['raw_single_recall']:.3f}); "
            f"batched {row['arrwdb_batched_qps']:,.0f} vs {row['raw_batched_qps']:,.0f}"
        )
    result["hnsw_search"] = rows
    target = args.target_recall
    for mode in ("single", "batched"):
        ours = qps_at_recall(
            [(r[f"arrwdb_{mode}_recall"], r[f"arrwdb_{mode}_qps"]) for r in rows], target
        )
        floor = qps_at_recall(
            [(r[f"raw_{mode}_recall"], r[f"raw_{mode}_qps"]) for r in rows], target
        )
        summary.append(
            {
                "measure": f"HNSW search QPS / raw hnswlib, {mode}, at recall@{k} {target}",
                "arrwdb": ours,
                "floor": floor,
                "ratio": ratio(ours, floor),
                "target": TARGETS[f"hnsw_search_{mode}"],
            }
        )
    del raw
    db.delete_library(lib.id)  # the flat part runs without the HNSW library's objects around
    gc.collect()


def run_flat(
    args: Any,
    db: Any,
    vectors: F32,
    queries: F32,
    truth: I64,
    calls: list[range],
    result: dict[str, Any],
    summary: list[dict[str, Any]],
) -> None:
    k, per_doc = args.k, args.chunks_per_doc
    n_chunks = len(vectors)
    log("flat ingest: numpy append vs arrwdb add_documents")
    flat = db.create_library("bench-flat", dimension=args.dim, metric="cosine", index="flat")

    def numpy_ingest() -> NumpyAppend:
        store = NumpyAppend(args.dim)
        for rows in calls:
            store.add(vectors[rows.start : rows.stop])
        return store

    gc.collect()
    np_s, store = timed(numpy_ingest)
    ours_s = ingest(flat, vectors, calls, per_doc)
    result["flat_ingest"] = {
        "numpy_append_per_s": n_chunks / np_s,
        "add_documents_chunks_per_s": n_chunks / ours_s,
    }
    log(f"  numpy {n_chunks / np_s:,.0f}/s, arrwdb {n_chunks / ours_s:,.0f} chunks/s")
    summary.append(
        {
            "measure": "flat add_documents / numpy append (chunks/s; no target)",
            "arrwdb": n_chunks / ours_s,
            "floor": n_chunks / np_s,
            "ratio": np_s / ours_s,
            "target": None,
        }
    )
    v = store.data[: store.n]
    single_q = queries[: args.exact_queries]
    log(f"exact search: {len(single_q)} single queries, {len(queries)} batched")
    gc.collect()
    timings = best_of(
        [
            lambda: numpy_scan_single(v, single_q, k),
            lambda: [flat.search(q, k=k) for q in single_q],
            lambda: numpy_scan_batched(v, queries, k),
            lambda: flat.search_many(queries, k=k),
        ],
        args.repeats,
    )
    db.delete_library(flat.id)
    ns, nb = len(single_q), len(queries)
    exact = {
        "numpy_single_qps": ns / timings[0][0],
        "arrwdb_single_qps": ns / timings[1][0],
        "numpy_batched_qps": nb / timings[2][0],
        "arrwdb_batched_qps": nb / timings[3][0],
        "numpy_single_recall": recall_at_k(timings[0][1], truth[:ns]),
        "arrwdb_single_recall": recall_at_k(rows_of(timings[1][1], k, per_doc), truth[:ns]),
        "numpy_batched_recall": recall_at_k(timings[2][1], truth),
        "arrwdb_batched_recall": recall_at_k(rows_of(timings[3][1], k, per_doc), truth),
    }
    result["exact_search"] = exact
    log(
        f"  single {exact['arrwdb_single_qps']:,.0f} vs {exact['numpy_single_qps']:,.0f} QPS; "
        f"batched {exact['arrwdb_batched_qps']:,.0f} vs {exact['numpy_batched_qps']:,.0f}"
    )
    for mode in ("single", "batched"):
        summary.append(
            {
                "measure": f"exact search QPS / numpy scan, {mode}",
                "arrwdb": exact[f"arrwdb_{mode}_qps"],
                "floor": exact[f"numpy_{mode}_qps"],
                "ratio": exact[f"arrwdb_{mode}_qps"] / exact[f"numpy_{mode}_qps"],
                "target": TARGETS[f"exact_search_{mode}"],
            }
        )


def met(s: dict[str, Any]) -> bool | None:
    if s["target"] is None or s["ratio"] is None:
        return None
    return bool(s["ratio"] >= s["target"])


def report(result: dict[str, Any]) -> str:
    p = result["params"]
    parts = [
        f"### Index benchmark: {p['n']:,} x {p['dim']} (clustered, seed {p['seed']}), "
        f"{p['queries']:,} queries, k={p['k']}, M={p['m']}, ef_construction="
        f"{p['ef_construction']}, best of {p['repeats']}",
        "",
        markdown_table(
            ["measure", "arrwDB", "floor", "ratio", "target", "met"],
            [
                [
                    s["measure"],
                    s["arrwdb"],
                    s["floor"],
                    s["ratio"],
                    None if s["target"] is None else f">= {s['target']:.2f}",
                    None
                    if s["target"] is None or s["ratio"] is None
                    else s["ratio"] >= s["target"],
                ]
                for s in result["summary"]
            ],
        ),
    ]
    if "hnsw_search" in result:
        rows = result["hnsw_search"]
        same = "same_graph_single_qps" in rows[0]
        headers = [
            "ef",
            "raw QPS (1)",
            "arrwDB QPS (1)",
            "ratio (1)",
            "raw recall",
            "arrwDB recall",
            "raw QPS (batch)",
            "arrwDB QPS (batch)",
            "ratio (batch)",
        ]
        if same:
            headers += ["overhead ratio (1), same graph", "overhead ratio (batch), same graph"]
        table = []
        for r in rows:
            line = [
                r["ef"],
                r["raw_single_qps"],
                r["arrwdb_single_qps"],
                r["arrwdb_single_qps"] / r["raw_single_qps"],
                r["raw_single_recall"],
                r["arrwdb_single_recall"],
                r["raw_batched_qps"],
                r["arrwdb_batched_qps"],
                r["arrwdb_batched_qps"] / r["raw_batched_qps"],
            ]
            if same:
                line += [
                    r["arrwdb_single_qps"] / r["same_graph_single_qps"],
                    r["arrwdb_batched_qps"] / r["same_graph_batched_qps"],
                ]
            table.append(line)
        parts += [
            "",
            "HNSW sweep ((1) = one query per call; batch = all queries in one call):",
            "",
            markdown_table(headers, table),
        ]
    if "exact_search" in result:
        e = result["exact_search"]
        parts += [
            "",
            f"Exact recall@{p['k']}: arrwDB {e['arrwdb_single_recall']:.3f} (single), "
            f"{e['arrwdb_batched_recall']:.3f} (batched); numpy {e['numpy_batched_recall']:.3f}.",
        ]
    m = machine()
    parts += [
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, numpy {m['numpy']}, "
        f"BLAS {m['blas']}, OPENBLAS_CORETYPE={m['OPENBLAS_CORETYPE']}",
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report("index", lambda: run(args), report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
