"""Server benchmark: arrwDB over the network (REST, WebSocket, NDJSON) against in-process calls.

    python bench/server_bench.py                 # 10k x 384, k=10 (~1-2 min on 2 cores)
    python bench/server_bench.py --n 2000        # a quick look
    python bench/server_bench.py --py-spy prof   # + a py-spy profile of the server (WS, 1 conn.)

Starts a real server in its own process (``python -m arrwdb.cli serve --storage memory`` on a
free loopback port), waits until ``/v1/health/ready`` answers, then measures, in one run:

* **NDJSON ingest**: the library is loaded through ``POST .../documents/stream`` (one document of
  ``--chunks-per-doc`` chunks with given embeddings per line), chunks/s from the first byte sent
  to the summary line; the baseline is in-process ``add_documents`` of the same documents
  (numpy embeddings) in calls of ``ndjson_batch`` documents, in this process.
* **REST search latency**: sequential ``POST .../search`` (``query_vector``, k) on one keep-alive
  httpx client, p50/p99 of each round trip; the baseline is in-process ``lib.search`` on the same
  data (p50/p99 of each call), and ``GET /v1/health`` gives the floor of an HTTP round trip.
* **WebSocket pipelined search**: a client in its own process (``websockets``) sends search
  requests (``{"type": "request", "action": "search", "request_id": i, "data": {...}}``) without
  waiting, reads the responses concurrently, checks each one (``type`` response, ``success``,
  its ``request_id``, k results) and counts requests/s, on one connection and on
  ``--ws-connections`` connections at once (aggregate).

Prints a Markdown table (targets of issue 5) and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import arrwdb
from _common import (
    F32,
    base_parser,
    clustered,
    log,
    machine,
    markdown_table,
    run_and_report,
)
from _server import ServerProcess, cpu_seconds

TARGETS = {
    "rest_p50_ms": 2.0,
    "rest_p99_ms": 10.0,
    "ws_one_rps": 2000.0,
}


def parse_args(argv: Sequence[str] | None = None) -> Any:
    p = base_parser(__doc__.split("\n\n")[0] if __doc__ else "server benchmark")
    p.add_argument("--n", type=int, default=10_000, help="vectors (chunks) in the library")
    p.add_argument("--dim", type=int, default=384, help="dimension")
    p.add_argument("--k", type=int, default=10, help="neighbours per query")
    p.add_argument("--queries", type=int, default=1000, help="distinct query vectors")
    p.add_argument("--clusters", type=int, default=100, help="data: cluster centres")
    p.add_argument("--intrinsic", type=int, default=64, help="data: intrinsic dimension")
    p.add_argument("--chunks-per-doc", type=int, default=10, help="chunks per document")
    p.add_argument("--ndjson-batch", type=int, default=256, help="server ndjson_batch (docs)")
    p.add_argument("--rest-requests", type=int, default=2000, help="timed REST searches")
    p.add_argument("--warmup", type=int, default=200, help="untimed requests before each part")
    p.add_argument("--ws-requests", type=int, default=5000, help="WS searches, one connection")
    p.add_argument("--ws-connections", type=int, default=32, help="connections, multi run")
    p.add_argument(
        "--ws-requests-per-conn", type=int, default=300, help="WS searches per connection (multi)"
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the server with py-spy during the one-connection WS runs (raw stacks "
        "and a summary in DIR; needs py-spy on PATH or in this venv)",
    )
    p.add_argument("--server-log", type=Path, default=None, help="keep the server's log here")
    return p.parse_args(argv)


class PySpy:
    """``py-spy record`` of the server while a part runs (raw collapsed stacks)."""

    def __init__(self, pid: int, out: Path, name: str) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / f"{name}.txt"
        command = [exe, "record", "--pid", str(pid), "--rate", "250", "--threads"]
        command += ["--format", "raw", "--output", str(self.path), "--nonblocking"]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached

    def stop(self) -> Path:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.path


def spy_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """From py-spy's raw stacks: the share of the samples of each thread, and per function
    its own ("self") and inclusive ("total") share of the busy samples. Samples in a blocking
    wait (``epoll``, a lock, a condition: py-spy counts some of them as running) are idle and
    left out of the shares."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = idle = 0
    waits = ("Condition.wait (threading.py", "EpollSelector.select (", "Event.wait (threading.py")
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, *frames = stack.split(";")
        n = int(count)
        if frames and frames[-1].startswith(waits):
            idle += n
            continue
        samples += n
        threads[head.partition(": ")[2] or head] += n
        if frames:
            own[frames[-1]] += n
            for f in set(frames):
                total[f] += n
    if not samples:
        return {"samples": 0, "idle_samples": idle, "threads": [], "self": [], "total": []}
    return {
        "samples": samples,
        "idle_samples": idle,
        "threads": [(t, c / samples) for t, c in threads.most_common()],
        "self": [(f, c / samples) for f, c in own.most_common(top)],
        # inclusive shares of arrwDB's own functions (the entry points left out)
        "total": [
            (f, c / samples)
            for f, c in total.most_common()
            if "arrwdb/" in f and "arrwdb/cli.py" not in f and "arrwdb/server.py" not in f
        ][:top],
    }


# -- data --------------------------------------------------------------------------------------


def documents(vectors: F32, per_doc: int, *, as_lists: bool) -> list[dict[str, Any]]:
    """Documents ``d<j>`` of ``per_doc`` chunks with their embeddings (lists for JSON, numpy
    rows in process)."""
    docs = []
    for j, start in enumerate(range(0, len(vectors), per_doc)):
        rows = range(start, min(start + per_doc, len(vectors)))
        docs.append(
            {
                "id": f"d{j}",
                "title": f"document {j}",
                "metadata": {"group": j % 10},
                "chunks": [
                    {
                        "text": f"chunk {r}",
                        "embedding": vectors[r].tolist() if as_lists else vectors[r],
                    }
                    for r in rows
                ],
            }
        )
    return docs


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in seconds]
    return {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
        "n": len(ms),
    }


# -- NDJSON ingest ---------------------------------------------------------------------------


def create_library(client: httpx.Client, name: str, dim: int) -> str:
    r = client.post(
        "/v1/libraries",
        json={"name": name, "dimension": dim, "metric": "cosine", "index": "hnsw"},
    )
    r.raise_for_status()
    library_id: str = r.json()["id"]
    return library_id


def ndjson_ingest(client: httpx.Client, library_id: str, body: bytes, lines: int) -> float:
    """Seconds to stream ``body`` and read every answer up to the summary; checks them all."""

    def pieces() -> Iterator[bytes]:
        view = memoryview(body)
        for s in range(0, len(body), 256 * 1024):
            yield bytes(view[s : s + 256 * 1024])

    ok = 0
    summary: dict[str, Any] | None = None
    start = time.perf_counter()
    with client.stream(
        "POST",
        f"/v1/libraries/{library_id}/documents/stream",
        content=pieces(),
        headers={"content-type": "application/x-ndjson"},
        timeout=600.0,
    ) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            answer = msgspec.json.decode(line)
            if "summary" in answer:
                summary = answer["summary"]
            elif answer.get("success"):
                ok += 1
            else:
                raise RuntimeError(f"NDJSON line failed: {answer}")
    seconds = time.perf_counter() - start
    if summary is None or summary["added"] != lines or ok != lines:
        raise RuntimeError(f"NDJSON ingest incomplete: {ok} ok, summary {summary}")
    return seconds


def inprocess_ingest(lib: Any, docs: list[dict[str, Any]], batch: int) -> float:
    spent = 0.0
    for s in range(0, len(docs), batch):
        part = docs[s : s + batch]
        start = time.perf_counter()
        lib.add_documents(part)
        spent += time.perf_counter() - start
    return spent


# -- REST latency ----------------------------------------------------------------------------


def rest_latencies(
    client: httpx.Client, path: str, bodies: list[bytes], count: int, k: int
) -> tuple[list[float], list[float]]:
    """Round-trip seconds of ``count`` sequential searches (bodies cycled), and the server's
    ``took_ms`` of each."""
    headers = {"content-type": "application/json"}
    seconds: list[float] = []
    took: list[float] = []
    post = client.post
    for i in range(count):
        body = bodies[i % len(bodies)]
        start = time.perf_counter()
        r = post(path, content=body, headers=headers)
        content = r.content
        seconds.append(time.perf_counter() - start)
        if r.status_code != 200:
            raise RuntimeError(f"search failed: {r.status_code} {content[:300]!r}")
        answer = msgspec.json.decode(content)
        if len(answer["results"]) != k:
            raise RuntimeError(f"expected {k} results, got {len(answer['results'])}")
        took.append(answer["took_ms"])
    return seconds, took


def get_latencies(client: httpx.Client, path: str, count: int) -> list[float]:
    seconds: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        r = client.get(path)
        _ = r.content
        seconds.append(time.perf_counter() - start)
        r.raise_for_status()
    return seconds


def inprocess_latencies(lib: Any, queries: F32, count: int, k: int) -> list[float]:
    seconds: list[float] = []
    for i in range(count):
        q = queries[i % len(queries)]
        start = time.perf_counter()
        lib.search(q, k=k)
        seconds.append(time.perf_counter() - start)
    return seconds


# -- WebSocket pipelining (client in its own process) ----------------------------------------


def ws_client_main(
    url: str, queries: F32, k: int, plan: list[tuple[int, int]], server_pid: int, results: Any
) -> None:
    """Entry point of the client process: ``plan`` is ``[(connections, requests per
    connection), ...]``, each run timed separately; one result dict per run is put on
    ``results`` (or an ``{"error": ...}``)."""
    try:
        out = asyncio.run(_ws_runs(url, queries, k, plan, server_pid))
        for item in out:
            results.put(item)
    except BaseException as exc:  # report it to the parent, which raises
        results.put({"error": f"{type(exc).__name__}: {exc}"})


async def _ws_runs(
    url: str, queries: F32, k: int, plan: list[tuple[int, int]], server_pid: int
) -> list[dict[str, Any]]:
    # frames are encoded before the clock starts: the client's own cost stays out of the way
    encode = msgspec.json.Encoder().encode
    payloads = [encode({"query_vector": q.tolist(), "k": k}) for q in queries]
    out = []
    for connections, per_conn in plan:
        out.append(await _ws_run(url, payloads, k, connections, per_conn, server_pid))
    return out


async def _ws_run(
    url: str, payloads: list[bytes], k: int, connections: int, per_conn: int, server_pid: int
) -> dict[str, Any]:
    import websockets

    decode = msgspec.json.Decoder().decode
    sockets = []
    try:
        for _ in range(connections):
            ws = await websockets.connect(
                url, max_size=None, compression=None, max_queue=None, open_timeout=30
            )
            welcome = decode(await ws.recv())
            if welcome.get("type") != "system":
                raise RuntimeError(f"no welcome: {welcome}")
            sockets.append(ws)
        frames: list[list[str]] = []
        for c in range(connections):
            conn_frames = []
            for i in range(per_conn):
                payload = payloads[(c * per_conn + i) % len(payloads)].decode()
                # {"type": "request", "action": "search", "request_id": i, "data": {...}}
                conn_frames.append(
                    f'{{"type":"request","action":"search","request_id":{i},"data":{payload}}}'
                )
            frames.append(conn_frames)
        sent_at: list[list[float]] = [[0.0] * per_conn for _ in range(connections)]
        latencies: list[float] = []
        failures: list[str] = []
        events = 0

        async def send_all(c: int) -> None:
            ws, mine, stamps = sockets[c], frames[c], sent_at[c]
            clock = time.perf_counter
            for i, frame in enumerate(mine):
                stamps[i] = clock()
                await ws.send(frame)

        async def read_all(c: int) -> None:
            nonlocal events
            ws, stamps = sockets[c], sent_at[c]
            pending = set(range(per_conn))
            clock = time.perf_counter
            while pending:
                message = decode(await ws.recv())
                now = clock()
                if message.get("type") == "event":
                    events += 1
                    continue
                rid = message.get("request_id")
                if (
                    message.get("type") != "response"
                    or message.get("success") is not True
                    or rid not in pending
                    or len(message["data"]["results"]) != k
                ):
                    failures.append(str(message)[:300])
                    if rid in pending:
                        pending.discard(rid)
                    continue
                pending.discard(rid)
                latencies.append(now - stamps[rid])

        server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
        start = time.perf_counter()
        await asyncio.gather(
            *(send_all(c) for c in range(connections)),
            *(read_all(c) for c in range(connections)),
        )
        seconds = time.perf_counter() - start
        server_cpu = cpu_seconds(server_pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
    finally:
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
    total = connections * per_conn
    return {
        "connections": connections,
        "requests": total,
        "responses_ok": len(latencies),
        "failures": len(failures),
        "failure_samples": failures[:3],
        "events": events,
        "seconds": seconds,
        "rps": total / seconds,
        # CPU seconds per wall second (1.0 = one core busy all along), and per request: the
        # server's CPU per request holds better than req/s when other work takes the cores
        "server_cores": server_cpu / seconds,
        "client_cores": client_cpu / seconds,
        "server_cpu_us_per_request": server_cpu / total * 1e6,
        "latency": latency_stats(latencies) if latencies else None,
    }


def run_ws(
    url: str, queries: F32, k: int, plan: list[tuple[int, int]], server_pid: int
) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(
        target=ws_client_main, args=(url, queries, k, plan, server_pid, results), daemon=True
    )
    proc.start()
    out = []
    try:
        for _ in plan:
            item = results.get(timeout=600)
            if "error" in item:
                raise RuntimeError(f"WS client: {item['error']}")
            out.append(item)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return out


# -- the benchmark ---------------------------------------------------------------------------


def run(args: Any) -> dict[str, Any]:
    k, dim, per_doc = args.k, args.dim, args.chunks_per_doc
    log(f"data: {args.n:,} x {dim} clustered, {args.queries:,} queries (seed {args.seed})")
    ds = clustered(
        args.n, dim, args.queries, clusters=args.clusters, intrinsic=args.intrinsic, seed=args.seed
    )
    vectors, queries = ds.vectors, ds.queries
    n_docs = (len(vectors) + per_doc - 1) // per_doc
    body = b"".join(
        msgspec.json.encode(d) + b"\n" for d in documents(vectors, per_doc, as_lists=True)
    )
    search_bodies = [msgspec.json.encode({"query_vector": q.tolist(), "k": k}) for q in queries]
    params = {
        key: getattr(args, key)
        for key in (
            "n",
            "dim",
            "k",
            "queries",
            "clusters",
            "intrinsic",
            "chunks_per_doc",
            "ndjson_batch",
            "rest_requests",
            "warmup",
            "ws_requests",
            "ws_connections",
            "ws_requests_per_conn",
            "seed",
            "repeats",
        )
    }
    result: dict[str, Any] = {"params": params | {"ndjson_body_bytes": len(body)}}
    db = arrwdb.open()
    server = ServerProcess(
        env={"ARRWDB_NDJSON_BATCH": str(args.ndjson_batch)}, log_path=args.server_log
    )
    try:
        ready_s = server.wait_ready()
        log(f"server pid {server.pid} ready on port {server.port} in {ready_s:.1f} s")
        result["server"] = {"pid": server.pid, "ready_seconds": ready_s}
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            lib_id, local = run_ingest(args, client, db, vectors, body, n_docs, result)
            run_rest(args, client, server.pid, lib_id, local, queries, search_bodies, result)
            result["server"]["rss_mib_after_rest"] = server.rss_mib()
        run_ws_parts(args, server, lib_id, local, queries, result)
        result["server"]["rss_mib_end"] = server.rss_mib()
    finally:
        server.stop()
        db.close()
    result["summary"] = summarise(result)
    return result


def run_ingest(
    args: Any,
    client: httpx.Client,
    db: Any,
    vectors: F32,
    body: bytes,
    n_docs: int,
    result: dict[str, Any],
) -> tuple[str, Any]:
    """NDJSON into the server and ``add_documents`` in process, interleaved ``--repeats``
    times into fresh libraries; the last of each is kept for the searches."""
    n = len(vectors)
    docs = documents(vectors, args.chunks_per_doc, as_lists=False)
    server_s: list[float] = []
    local_s: list[float] = []
    lib_id: str | None = None
    local: Any = None
    for r in range(max(1, args.repeats)):
        for which in ("server", "local") if r % 2 == 0 else ("local", "server"):
            gc.collect()
            if which == "server":
                if lib_id is not None:
                    client.delete(f"/v1/libraries/{lib_id}").raise_for_status()
                lib_id = create_library(client, f"bench-{r}", args.dim)
                seconds = ndjson_ingest(client, lib_id, body, n_docs)
                server_s.append(seconds)
                log(f"NDJSON ingest {r + 1}: {seconds:.2f} s ({n / seconds:,.0f} chunks/s)")
            else:
                if local is not None:
                    db.delete_library(local.id)
                local = db.create_library(
                    f"bench-{r}", dimension=args.dim, metric="cosine", index="hnsw"
                )
                seconds = inprocess_ingest(local, docs, args.ndjson_batch)
                local_s.append(seconds)
                log(f"add_documents {r + 1}: {seconds:.2f} s ({n / seconds:,.0f} chunks/s)")
    assert lib_id is not None
    assert local is not None
    info = client.get(f"/v1/libraries/{lib_id}").json()
    if info["chunk_count"] != n or local.chunk_count != n:
        raise RuntimeError(f"chunk counts: server {info['chunk_count']}, local {local.chunk_count}")
    result["ndjson_ingest"] = {
        "chunks": n,
        "documents": n_docs,
        "body_mib": len(body) / 2**20,
        "ndjson_chunks_per_s": n / min(server_s),
        "add_documents_chunks_per_s": n / min(local_s),
        "ndjson_seconds": server_s,
        "add_documents_seconds": local_s,
        "ratio": min(local_s) / min(server_s),
    }
    return lib_id, local


def run_rest(
    args: Any,
    client: httpx.Client,
    server_pid: int,
    lib_id: str,
    local: Any,
    queries: F32,
    bodies: list[bytes],
    result: dict[str, Any],
) -> None:
    path = f"/v1/libraries/{lib_id}/search"
    k = args.k
    log(f"REST: {args.warmup} warm-up, then {args.rest_requests:,} sequential searches")
    rest_latencies(client, path, bodies, args.warmup, k)
    inprocess_latencies(local, queries, args.warmup, k)
    get_latencies(client, "/v1/health", args.warmup)
    # the three interleaved in slices, so that a change of load hits them alike
    rest_s: list[float] = []
    took: list[float] = []
    local_s: list[float] = []
    health_s: list[float] = []
    slices = max(1, args.repeats) * 4
    per = max(1, args.rest_requests // slices)
    server_cpu = client_cpu = 0.0
    gc.collect()
    for _ in range(slices):
        server_before, client_before = cpu_seconds(server_pid), time.process_time()
        s, t = rest_latencies(client, path, bodies, per, k)
        server_cpu += cpu_seconds(server_pid) - server_before
        client_cpu += time.process_time() - client_before
        rest_s += s
        took += t
        local_s += inprocess_latencies(local, queries, per, k)
        health_s += get_latencies(client, "/v1/health", max(1, per // 4))
    rest = latency_stats(rest_s)
    inproc = latency_stats(local_s)
    health = latency_stats(health_s)
    result["rest_search"] = rest | {
        "server_took_ms_p50": percentile(took, 50),
        "server_took_ms_p99": percentile(took, 99),
        "server_cpu_us_per_request": server_cpu / len(rest_s) * 1e6,
        "client_cpu_us_per_request": client_cpu / len(rest_s) * 1e6,
    }
    result["inprocess_search"] = inproc | {"qps": 1000.0 / inproc["mean_ms"]}
    result["rest_health"] = health
    log(
        f"  REST p50 {rest['p50_ms']:.3f} ms, p99 {rest['p99_ms']:.3f} ms; in-process p50 "
        f"{inproc['p50_ms']:.3f} ms, p99 {inproc['p99_ms']:.3f} ms; GET /v1/health p50 "
        f"{health['p50_ms']:.3f} ms"
    )


def run_ws_parts(
    args: Any,
    server: ServerProcess,
    lib_id: str,
    local: Any,
    queries: F32,
    result: dict[str, Any],
) -> None:
    url = f"{server.ws_url}/v1/libraries/{lib_id}/ws"
    k = args.k
    repeats = max(1, args.repeats)
    log(f"WS warm-up ({args.warmup} pipelined requests)")
    run_ws(url, queries, k, [(1, max(1, args.warmup))], server.pid)
    log(f"WS pipelined, 1 connection: {args.ws_requests:,} requests x {repeats}")
    spy = PySpy(server.pid, args.py_spy, "ws-1-connection") if args.py_spy else None
    try:
        one = run_ws(url, queries, k, [(1, args.ws_requests)] * repeats, server.pid)
    finally:
        if spy is not None:
            path = spy.stop()
            result["py_spy"] = {"raw": str(path), **spy_summary(path)}
    conns, per = args.ws_connections, args.ws_requests_per_conn
    log(f"WS pipelined, {conns} connections: {conns} x {per:,} requests x {repeats}")
    many = run_ws(url, queries, k, [(conns, per)] * repeats, server.pid)
    for name, runs in (("ws_one_connection", one), (f"ws_{conns}_connections", many)):
        for run_ in runs:
            if run_["failures"] or run_["responses_ok"] != run_["requests"]:
                raise RuntimeError(f"{name}: {run_['failures']} failures, e.g. {run_}")
        best = max(runs, key=lambda x: x["rps"])
        result[name] = {
            "rps_best": best["rps"],
            "rps_all": [x["rps"] for x in runs],
            "best_run": best,
        }
        lat = best["latency"]
        all_rps = ", ".join(f"{x['rps']:,.0f}" for x in runs)
        log(
            f"  {name}: {best['rps']:,.0f} req/s (runs: {all_rps}); in-flight latency p50 "
            f"{lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms"
        )
    result["ws_multi_key"] = f"ws_{conns}_connections"


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    rest, inproc = result["rest_search"], result["inprocess_search"]
    one = result["ws_one_connection"]
    multi_key = result["ws_multi_key"]
    many = result[multi_key]
    ingest = result["ndjson_ingest"]
    conns = many["best_run"]["connections"]
    return [
        {
            "measure": "REST search latency p50 (ms), one keep-alive client, sequential",
            "arrwdb": rest["p50_ms"],
            "reference": f"target <= {TARGETS['rest_p50_ms']:g} ms; in-process lib.search "
            f"{inproc['p50_ms']:.3f} ms",
            "met": rest["p50_ms"] <= TARGETS["rest_p50_ms"],
        },
        {
            "measure": "REST search latency p99 (ms)",
            "arrwdb": rest["p99_ms"],
            "reference": f"target <= {TARGETS['rest_p99_ms']:g} ms; in-process lib.search "
            f"{inproc['p99_ms']:.3f} ms",
            "met": rest["p99_ms"] <= TARGETS["rest_p99_ms"],
        },
        {
            "measure": "WS pipelined search, 1 connection (req/s)",
            "arrwdb": one["rps_best"],
            "reference": f"target >= {TARGETS['ws_one_rps']:,.0f}; in-process lib.search "
            f"{inproc['qps']:,.0f}/s (sequential)",
            "met": one["rps_best"] >= TARGETS["ws_one_rps"],
        },
        {
            "measure": f"WS pipelined search, {conns} connections (req/s, total)",
            "arrwdb": many["rps_best"],
            "reference": f"no target; in-process lib.search {inproc['qps']:,.0f}/s",
            "met": None,
        },
        {
            "measure": "NDJSON ingest, embeddings given (chunks/s)",
            "arrwdb": ingest["ndjson_chunks_per_s"],
            "reference": f"no target; in-process add_documents "
            f"{ingest['add_documents_chunks_per_s']:,.0f} (ratio {ingest['ratio']:.2f})",
            "met": None,
        },
    ]


def ws_rows(ws: dict[str, Any]) -> list[list[str]]:
    best = ws["best_run"]
    name = f"WS {best['connections']} conn."
    return [
        [f"{name}: req/s of each run", ", ".join(f"{x:,.0f}" for x in ws["rps_all"])],
        [
            f"{name}, best run: server CPU (cores; µs per request), client CPU (cores)",
            f"{best['server_cores']:.2f}; {best['server_cpu_us_per_request']:.0f} µs; "
            f"{best['client_cores']:.2f}",
        ],
        [
            f"{name}, best run: send to response p50 / p99 (ms; mostly queueing)",
            f"{best['latency']['p50_ms']:.0f} / {best['latency']['p99_ms']:.0f}",
        ],
    ]


def report(result: dict[str, Any]) -> str:
    p = result["params"]
    rest, health = result["rest_search"], result["rest_health"]
    one, many = result["ws_one_connection"], result[result["ws_multi_key"]]
    parts = [
        f"### Server benchmark: {p['n']:,} x {p['dim']} (clustered, seed {p['seed']}), k={p['k']}, "
        f"default HNSW, loopback, best of {p['repeats']}",
        "",
        markdown_table(
            ["measure", "arrwDB", "baseline/target", "met"],
            [[s["measure"], s["arrwdb"], s["reference"], s["met"]] for s in result["summary"]],
        ),
        "",
        "Diagnostics:",
        "",
        markdown_table(
            ["measure", "value"],
            [
                ["REST search p90 / mean (ms)", f"{rest['p90_ms']:.3f} / {rest['mean_ms']:.3f}"],
                [
                    "REST search: server's took_ms p50 / p99 (ms)",
                    f"{rest['server_took_ms_p50']:.3f} / {rest['server_took_ms_p99']:.3f}",
                ],
                [
                    "REST search: CPU per request, server / client (µs)",
                    f"{rest['server_cpu_us_per_request']:.0f} / "
                    f"{rest['client_cpu_us_per_request']:.0f}",
                ],
                [
                    "GET /v1/health p50 / p99 (ms): the HTTP round-trip floor",
                    f"{health['p50_ms']:.3f} / {health['p99_ms']:.3f}",
                ],
                *(row for ws in (one, many) for row in ws_rows(ws)),
                [
                    "NDJSON body (MiB), seconds (NDJSON / add_documents, each run)",
                    f"{result['ndjson_ingest']['body_mib']:.1f}; "
                    + ", ".join(f"{x:.2f}" for x in result["ndjson_ingest"]["ndjson_seconds"])
                    + " / "
                    + ", ".join(
                        f"{x:.2f}" for x in result["ndjson_ingest"]["add_documents_seconds"]
                    ),
                ],
                ["server RSS at the end (MiB)", result["server"].get("rss_mib_end")],
            ],
        ),
    ]
    if "py_spy" in result:
        spy = result["py_spy"]
        threads = ", ".join(f"{t} {share:.0%}" for t, share in spy["threads"][:4])
        parts += [
            "",
            f"py-spy of the server during the WS 1-connection runs: {spy['samples']:,} busy "
            f"samples ({threads}), {spy['idle_samples']:,} idle left out; raw stacks in "
            f"{spy['raw']}:",
            "",
            markdown_table(
                ["self", "function", "total", "arrwDB function"],
                [
                    [f"{a:.1%}", fa, f"{b:.1%}", fb]
                    for (fa, a), (fb, b) in zip(spy["self"][:15], spy["total"][:15], strict=False)
                ],
            ),
        ]
    m = machine()
    parts += [
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}; load average "
        f"{result.get('loadavg_before', 0):.2f} before, {m['loadavg_1min']:.2f} after",
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report("server", lambda: run(args), report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
