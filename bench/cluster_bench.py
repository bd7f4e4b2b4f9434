"""Several servers over PostgreSQL: ingest against the disk store, cross-server visibility,
catch-up, and search with one server against three.

    python bench/cluster_bench.py                    # 20k x 384, the machine's PostgreSQL
    python bench/cluster_bench.py --n 5000 --seconds 5

1. **Ingest** (in process): the same ``lib.add_documents`` bulk load (batches of ``--batch``
   single-chunk documents with given embeddings) into ``arrwdb.open(dir)`` (disk, fsync
   ``always``) and into ``arrwdb.open(storage="postgres")``, interleaved, best of
   ``--repeats``. Target: postgres / disk >= 0.5.
2. **Visibility**: two servers (child processes) on one schema; writers add single documents
   on server A at ``--rate`` writes/s (an open-loop schedule) while an SSE client reads server
   B's stream: the time from sending a write to A to its event arriving from B. Target: p99
   <= 50 ms at 200 writes/s.
3. **Catch-up**: a new server's two ways to reach the head: loading the tables (what a
   restart does) and replaying the change log from the start (what a follower that fell
   behind does), in process.
4. **Search**: REST searches from ``--clients`` concurrent clients against one server, then
   spread over three (all on this machine's cores).

Uses ``ARRWDB_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``), in a
schema of its own that is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from httpx_sse import connect_sse

import arrwdb
from _common import F32, clustered, markdown_table, write_json
from _server import ServerProcess
from arrwdb.adapters.hub.local import LocalEventHub
from arrwdb.adapters.index import make_index
from arrwdb.adapters.storage._pg_schema import drop_schema
from arrwdb.adapters.storage.postgres import PostgresStore
from arrwdb.domain.projection import Projection, Projector

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _documents(vectors: F32, start: int, stop: int) -> list[dict[str, Any]]:
    return [
        {"title": f"d{i}", "chunks": [{"text": f"chunk {i}", "embedding": vectors[i]}]}
        for i in range(start, stop)
    ]


def _ingest(db: arrwdb.Database, index: str, vectors: F32, batch: int) -> float:
    lib = db.create_library(f"bench-{uuid.uuid4().hex[:6]}", index=index, dimension=384)
    started = time.perf_counter()
    for s in range(0, len(vectors), batch):
        lib.add_documents(_documents(vectors, s, min(s + batch, len(vectors))))
    return len(vectors) / (time.perf_counter() - started)


def ingest(args: argparse.Namespace, url: str, vectors: F32) -> tuple[list[list[Any]], str]:
    """Chunks/s on disk and on postgres; the schema of the last postgres run is kept (and
    returned) for the next steps."""
    disk: list[float] = []
    pg: list[float] = []
    kept = ""
    for r in range(args.repeats):
        folder = Path(tempfile.mkdtemp(prefix="arrwdb-cluster-"))
        try:
            with arrwdb.open(str(folder / "data"), fsync="always") as db:
                disk.append(_ingest(db, args.index, vectors, args.batch))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        schema = f"arrwdb_bench_{uuid.uuid4().hex[:8]}"
        with arrwdb.open(
            storage="postgres",
            postgres_url=url,
            postgres_schema=schema,
            history_size=len(vectors) + 100,
        ) as db:
            pg.append(_ingest(db, args.index, vectors, args.batch))
        if kept:
            _drop(url, kept)
        kept = schema
        print(f"  run {r + 1}: disk {disk[-1]:,.0f} chunks/s, postgres {pg[-1]:,.0f} chunks/s")
    rows = [
        ["disk (fsync always)", max(disk), 1.0],
        ["postgres", max(pg), max(pg) / max(disk)],
    ]
    return rows, kept


def visibility(args: argparse.Namespace, url: str) -> dict[str, Any]:
    schema = f"arrwdb_bench_{uuid.uuid4().hex[:8]}"
    storage = ("--storage", "postgres", "--postgres-url", url, "--postgres-schema", schema)
    a, b = ServerProcess(storage=storage), ServerProcess(storage=storage)
    try:
        a.wait_ready()
        b.wait_ready()
        with httpx.Client(base_url=a.url, timeout=10) as http:
            library = http.post("/v1/libraries", json={"name": "vis", "dimension": 4}).json()
        total = int(args.rate * args.seconds)
        arrived: dict[str, float] = {}
        sent: dict[str, float] = {}
        ready = threading.Event()

        def read() -> None:
            timeout = httpx.Timeout(10, read=30)
            with (
                httpx.Client(timeout=timeout) as http,
                connect_sse(http, "GET", f"{b.url}/v1/libraries/{library['id']}/events") as src,
            ):
                ready.set()
                for sse in src.iter_sse():
                    if sse.event == "document.added":
                        arrived[json.loads(sse.data)["data"]["title"]] = time.perf_counter()
                        if len(arrived) >= total:
                            return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        ready.wait(10)
        time.sleep(0.2)
        start = time.perf_counter() + 0.1
        lock = threading.Lock()
        counter = iter(range(total))

        def write() -> None:
            with httpx.Client(base_url=a.url, timeout=10) as http:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    due = start + i / args.rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    title = f"v{i}"
                    sent[title] = time.perf_counter()
                    body = {"title": title, "chunks": [{"text": "x", "embedding": [1, 0, 0, 0]}]}
                    http.post(f"/v1/libraries/{library['id']}/documents", json=body)

        writers = [threading.Thread(target=write) for _ in range(args.writers)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        elapsed = time.perf_counter() - start
        reader.join(timeout=30)
        latencies = np.array([arrived[t] - sent[t] for t in sent if t in arrived]) * 1000
        return {
            "writes": total,
            "rate_achieved": total / elapsed,
            "received": len(latencies),
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "max_ms": float(latencies.max()),
        }
    finally:
        a.stop()
        b.stop()
        _drop(url, schema)


def catch_up(url: str, schema: str, n: int) -> list[list[Any]]:
    started = time.perf_counter()
    store = PostgresStore(url, schema=schema, history_size=n + 100)
    store.start()
    loaded = time.perf_counter() - started
    try:
        head = store.head
        hub = LocalEventHub()
        hub.start(0, None)
        projection = Projection(make_index)
        projector = Projector(projection, store, hub)
        started = time.perf_counter()
        # a follower that is behind by the whole log: read from PostgreSQL, not memory
        store._tail.clear()
        projector.catch_up(head)
        replayed = time.perf_counter() - started
        hub.stop()
    finally:
        store.stop()
    return [
        ["load the tables (start-up)", n, loaded, n / loaded],
        ["replay the log from position 0 (follower)", head, replayed, head / replayed],
    ]


async def _search_load(urls: list[str], clients: int, seconds: float, queries: F32) -> float:
    stop = time.perf_counter() + seconds
    done = 0

    async def client(c: int) -> None:
        nonlocal done
        url = urls[c % len(urls)]
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            library = (await http.get("/v1/libraries")).json()["libraries"][0]["id"]
            i = c
            while time.perf_counter() < stop:
                body = {"query_vector": queries[i % len(queries)].tolist(), "k": 10}
                response = await http.post(f"/v1/libraries/{library}/search", json=body)
                response.raise_for_status()
                done += 1
                i += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return done / (time.perf_counter() - started)


def search(args: argparse.Namespace, url: str, schema: str, queries: F32) -> list[list[Any]]:
    storage = ("--storage", "postgres", "--postgres-url", url, "--postgres-schema", schema)
    servers = [ServerProcess(storage=storage) for _ in range(3)]
    try:
        for server in servers:
            server.wait_ready(timeout=300)
        one = asyncio.run(_search_load([servers[0].url], args.clients, args.seconds, queries))
        three = asyncio.run(
            _search_load([s.url for s in servers], args.clients, args.seconds, queries)
        )
    finally:
        for server in servers:
            server.stop()
    return [["1 server", one, 1.0], ["3 servers", three, three / one]]


def _drop(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        drop_schema(conn, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--index", default="flat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200.0, help="writes/s for visibility")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    url = os.environ.get("ARRWDB_POSTGRES_URL", DEFAULT_URL)
    data = clustered(args.n, 384, 200)
    results: dict[str, Any] = {"args": vars(args)}

    print(f"## Ingest: {args.n:,} x 384, batches of {args.batch:,}, {args.index} index\n")
    rows, schema = ingest(args, url, data.vectors)
    print(markdown_table(["storage", "chunks/s", "ratio (target >= 0.5)"], rows))
    results["ingest"] = rows
    try:
        print(f"\n## Cross-server visibility at {args.rate:g} writes/s\n")
        vis = visibility(args, url)
        print(
            markdown_table(
                ["writes", "rate held", "received", "p50 ms", "p99 ms (target <= 50)", "max ms"],
                [
                    [
                        vis["writes"],
                        vis["rate_achieved"],
                        vis["received"],
                        vis["p50_ms"],
                        vis["p99_ms"],
                        vis["max_ms"],
                    ]
                ],
            )
        )
        results["visibility"] = vis

        print("\n## Catch-up\n")
        rows = catch_up(url, schema, args.n)
        print(markdown_table(["how", "changes", "seconds", "changes/s"], rows))
        results["catch_up"] = rows

        print(f"\n## REST search, {args.clients} clients, {args.seconds:g} s\n")
        rows = search(args, url, schema, data.queries)
        print(markdown_table(["servers", "searches/s", "ratio"], rows))
        results["search"] = rows
    finally:
        _drop(url, schema)
    path = write_json("cluster", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
