"""Embedding throughput: the ``minilm`` model against the ``hashing`` embedder, same texts.

    python bench/embed_bench.py                 # 2,048 sentences, batches of 64 (~30 s, 2 cores)
    python bench/embed_bench.py --n 512         # a quick look

Texts are the retrieval set's documents (``tests/data/retrieval/documents.jsonl``: standard-library
docstrings, 10-80 words), cycled to ``--n``. Measured per embedder, best of ``--repeats``:

* batched: ``embed`` over all texts in calls of ``--batch`` texts (the bulk-load path);
  sentences/s;
* single: one text per call (a text query), ``--singles`` calls; p50/p99 latency in ms;
* through a library: ``add_documents`` of the texts into an in-process ``flat`` library (chunk,
  embed, index, commit); documents/s.

The ratio hashing/minilm says what a semantic embedder costs; ``minilm`` needs the ``embed`` extra.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import arrwdb
from _common import base_parser, best_of, log, markdown_table, run_and_report
from arrwdb.adapters.embedders.hashing import HashingEmbedder
from arrwdb.adapters.embedders.minilm import MiniLMEmbedder, available_cores
from arrwdb.domain.ports import Embedder

DOCUMENTS = Path(__file__).resolve().parents[1] / "tests/data/retrieval/documents.jsonl"


def parse_args(argv: Sequence[str] | None = None) -> Any:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "embed bench")
    p.add_argument("--n", type=int, default=2_048, help="texts embedded per batched run")
    p.add_argument("--batch", type=int, default=64, help="texts per embed call")
    p.add_argument("--singles", type=int, default=300, help="one-text calls timed")
    p.add_argument("--library-docs", type=int, default=1_024, help="documents added to a library")
    return p.parse_args(argv)


def texts(n: int) -> list[str]:
    with DOCUMENTS.open(encoding="utf-8") as f:
        pool = [json.loads(line)["text"] for line in f]
    return [pool[i % len(pool)] for i in range(n)]


def batched(embedder: Embedder, data: list[str], batch: int) -> None:
    for start in range(0, len(data), batch):
        embedder.embed(data[start : start + batch])


def singles(embedder: Embedder, data: list[str], count: int) -> list[float]:
    out = []
    for i in range(count):
        start = time.perf_counter()
        embedder.embed([data[i % len(data)]])
        out.append((time.perf_counter() - start) * 1000)
    return out


def through_library(name: str, data: list[str]) -> float:
    with arrwdb.open() as db:
        lib = db.create_library(name, embedder=name, index="flat")
        start = time.perf_counter()
        lib.add_documents([{"text": t} for t in data])
        return time.perf_counter() - start


def text_queries(name: str, data: list[str], count: int, repeats: int) -> tuple[float, float]:
    """Seconds for ``count`` text queries as one ``search_many`` and one ``search`` each."""
    with arrwdb.open() as db:
        lib = db.create_library(name, embedder=name, index="flat")
        lib.add_documents([{"text": t} for t in data[:256]])
        queries = data[-count:]
        lib.search_many(queries[:2], k=5)  # warm up
        together = alone = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            lib.search_many(queries, k=5)
            together = min(together, time.perf_counter() - start)
            start = time.perf_counter()
            for query in queries:
                lib.search(query, k=5)
            alone = min(alone, time.perf_counter() - start)
        return together, alone


def run(args: Any) -> dict[str, Any]:
    data = texts(args.n)
    words = [len(t.split()) for t in data]
    embedders: dict[str, Embedder] = {"minilm": MiniLMEmbedder(), "hashing": HashingEmbedder()}
    result: dict[str, Any] = {
        "texts": len(data),
        "batch": args.batch,
        "words_per_text_mean": float(np.mean(words)),
        "threads": available_cores(),
    }
    for embedder in embedders.values():  # warm up (the first run builds caches)
        batched(embedder, data[: args.batch * 2], args.batch)
    log(f"batched: {len(data)} texts in calls of {args.batch}, best of {args.repeats}")
    names = list(embedders)
    best = best_of(
        [lambda e=embedders[name]: batched(e, data, args.batch) for name in names], args.repeats
    )
    result["batched_sentences_per_s"] = {
        name: len(data) / seconds for name, (seconds, _) in zip(names, best, strict=True)
    }
    log(f"single: {args.singles} one-text calls each")
    result["single_ms"] = {}
    for name, embedder in embedders.items():
        latencies = singles(embedder, data, args.singles)
        result["single_ms"][name] = {
            "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)),
        }
    log(f"through a library: add_documents of {args.library_docs} texts")
    docs = data[: args.library_docs]
    result["library_docs_per_s"] = {
        name: len(docs) / min(through_library(name, docs) for _ in range(max(1, args.repeats)))
        for name in names
    }
    log(f"text queries: {args.batch} as one search_many, then one search each")
    result["text_queries_ms"] = {}
    for name in names:
        together, alone = text_queries(name, data, args.batch, args.repeats)
        result["text_queries_ms"][name] = {
            "search_many": together * 1000,
            "one_by_one": alone * 1000,
        }
    return result


def report(result: dict[str, Any]) -> str:
    batched_rate = result["batched_sentences_per_s"]
    single = result["single_ms"]
    library = result["library_docs_per_s"]
    rows = [
        [
            name,
            batched_rate[name],
            1000 / batched_rate[name],
            single[name]["p50"],
            single[name]["p99"],
            library[name],
        ]
        for name in ("minilm", "hashing")
    ]
    rows.append(
        [
            "hashing: times faster",
            batched_rate["hashing"] / batched_rate["minilm"],
            None,
            single["minilm"]["p50"] / single["hashing"]["p50"],
            None,
            library["hashing"] / library["minilm"],
        ]
    )
    headers = [
        "embedder",
        f"sentences/s (batch {result['batch']})",
        "ms/sentence",
        "single p50 ms",
        "single p99 ms",
        "library add docs/s",
    ]
    queries = result["text_queries_ms"]
    query_rows = [
        [
            name,
            queries[name]["search_many"],
            queries[name]["one_by_one"],
            queries[name]["one_by_one"] / queries[name]["search_many"],
        ]
        for name in ("minilm", "hashing")
    ]
    query_headers = [
        "embedder",
        f"search_many of {result['batch']} texts ms",
        "one search each ms",
        "search_many: times faster",
    ]
    return (
        f"## Embedding throughput ({result['texts']} texts of ~"
        f"{result['words_per_text_mean']:.0f} words, {result['threads']} threads)\n\n"
        + markdown_table(headers, rows)
        + "\n\n## Text queries: embedded together by search_many, or one by one\n\n"
        + markdown_table(query_headers, query_rows)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report("embed_bench", lambda: run(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
