"""Filtered search: what a metadata filter costs an HNSW search, against our own unfiltered search
and raw hnswlib with the filter as a Python callable, on the same data in one run.

    python bench/filter_bench.py                 # 50k x 384 clustered (~2 min)
    python bench/filter_bench.py --n 20000       # a quick look

Data: ``--n`` clustered synthetic vectors (``_common.clustered``), one single-chunk document
each, with metadata ``tag = i % 4`` (a filter ``{"tag": 1}`` keeps 25%) and ``bucket = i % 100``
(``{"bucket": 7}`` keeps 1%). One arrwDB HNSW library and one raw hnswlib index, both M=16,
ef_construction=200, searched at ef=64 (``--ef``), k=10, one query at a time (QPS over
``--queries`` queries, best of ``--repeats``, interleaved). Recall@10 is against the exact
filtered top 10 (numpy over the allowed rows). Raw hnswlib's filtered search passes
``filter=lambda label: tag[label] == 1`` (a Python list lookup per candidate).

Targets: filtered QPS at 25% / own unfiltered >= 0.5 with recall@10 >= 0.95; at 1% >= 1.0;
filtered QPS at 25% / raw hnswlib with the callable >= 2.0.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
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
    log,
    markdown_table,
    normalised,
    recall_at_k,
    run_and_report,
)

FILTERS: dict[str, tuple[dict[str, Any], Callable[[int], bool]]] = {
    "25%": ({"tag": 1}, lambda i: i % 4 == 1),
    "1%": ({"bucket": 7}, lambda i: i % 100 == 7),
}


def exact_filtered(vectors: F32, queries: F32, allowed: I64, k: int) -> I64:
    v = normalised(vectors[allowed])
    scores = normalised(queries) @ v.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out: I64 = allowed[top]
    return out


def run(args: Any) -> dict[str, Any]:
    k, ef = args.k, args.ef
    log(f"data: {args.n:,} x {args.dim} clustered, {args.queries} queries")
    ds = clustered(args.n, args.dim, args.queries, seed=args.seed)
    vectors, queries = ds.vectors, ds.queries
    labels = np.arange(args.n)

    log("raw hnswlib: build")
    raw = hnswlib.Index(space="cosine", dim=args.dim)
    raw.init_index(max_elements=args.n, M=args.m, ef_construction=args.ef_construction)
    raw.add_items(vectors, labels)
    raw.set_ef(ef)

    log("arrwDB: ingest")
    db = arrwdb.open()
    lib = db.create_library(
        "filters",
        dimension=args.dim,
        metric="cosine",
        index="hnsw",
        index_params={"m": args.m, "ef_construction": args.ef_construction},
        embedder=None,
    )
    for s in range(0, args.n, 1000):
        lib.add_documents(
            [
                {
                    "id": str(i),
                    "title": "",
                    "metadata": {"tag": i % 4, "bucket": i % 100},
                    "chunks": [{"text": "", "embedding": vectors[i]}],
                }
                for i in range(s, min(s + 1000, args.n))
            ]
        )
    gc.collect()
    qs = list(queries)

    def ours(spec: dict[str, Any] | None) -> Callable[[], I64]:
        def go() -> I64:
            out = np.full((len(qs), k), -1, dtype=np.int64)
            for row, q in enumerate(qs):
                hits = lib.search(q, k=k, filter=spec, ef=ef)
                out[row, : len(hits)] = [int(h.document_id) for h in hits]
            return out

        return go

    def raw_search(admit: Callable[[int], bool] | None) -> Callable[[], I64]:
        def go() -> I64:
            out = np.full((len(qs), k), -1, dtype=np.int64)
            for row, q in enumerate(qs):
                found, _ = raw.knn_query(q, k, 1, admit)
                out[row, : found.shape[1]] = found[0]
            return out

        return go

    tag = [i % 4 for i in range(args.n)]
    cases: list[tuple[str, Callable[[], I64], I64]] = []
    truth_all = exact_filtered(vectors, queries, labels, k)
    cases.append(("arrwDB unfiltered", ours(None), truth_all))
    cases.append(("raw hnswlib unfiltered", raw_search(None), truth_all))
    for name, (spec, test) in FILTERS.items():
        allowed = np.asarray([i for i in range(args.n) if test(i)], dtype=np.int64)
        truth = exact_filtered(vectors, queries, allowed, k)
        cases.append((f"arrwDB filtered {name}", ours(spec), truth))
        if name == "25%":
            cases.append(
                (f"raw hnswlib + callable {name}", raw_search(lambda i: tag[i] == 1), truth)
            )
    for _, fn, _ in cases:  # warm up (the columns are made on the first filtered search)
        fn()
    log(f"timing {len(cases)} cases x {args.repeats}")
    timings = best_of([fn for _, fn, _ in cases], args.repeats)
    rows: dict[str, dict[str, float]] = {}
    for (name, _, truth), (seconds, found) in zip(cases, timings, strict=True):
        rows[name] = {"qps": len(qs) / seconds, "recall": recall_at_k(found, truth)}
    db.close()

    def ratio(a: str, b: str) -> float:
        return rows[a]["qps"] / rows[b]["qps"]

    checks = [
        {
            "measure": "filtered 25% / own unfiltered (recall >= 0.95)",
            "ratio": ratio("arrwDB filtered 25%", "arrwDB unfiltered"),
            "target": 0.5,
            "recall": rows["arrwDB filtered 25%"]["recall"],
        },
        {
            "measure": "filtered 1% / own unfiltered",
            "ratio": ratio("arrwDB filtered 1%", "arrwDB unfiltered"),
            "target": 1.0,
            "recall": rows["arrwDB filtered 1%"]["recall"],
        },
        {
            "measure": "filtered 25% / raw hnswlib + callable",
            "ratio": ratio("arrwDB filtered 25%", "raw hnswlib + callable 25%"),
            "target": 2.0,
            "recall": rows["arrwDB filtered 25%"]["recall"],
        },
    ]
    for c in checks:
        c["met"] = c["ratio"] >= c["target"] and c["recall"] >= 0.95
    return {"args": vars(args), "cases": rows, "checks": checks, "at": time.time()}


def report(result: dict[str, Any]) -> str:
    a = result["args"]
    lines = [
        f"## Filtered search: {a['n']:,} x {a['dim']} clustered, HNSW M={a['m']}, "
        f"ef_construction={a['ef_construction']}, ef={a['ef']}, k={a['k']}, single queries",
        "",
        markdown_table(
            ["case", "QPS", "recall@10"],
            [[name, r["qps"], r["recall"]] for name, r in result["cases"].items()],
        ),
        "",
        markdown_table(
            ["measure", "ratio", "recall@10", "target", "met"],
            [
                [c["measure"], c["ratio"], c["recall"], f">= {c['target']}", c["met"]]
                for c in result["checks"]
            ],
        ),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    args = parser.parse_args()
    return run_and_report("filter", lambda: run(args), report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
