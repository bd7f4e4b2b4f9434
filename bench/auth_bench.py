"""What API keys cost: REST latency of the same searches and reads against two servers, one
with an admin key (every request authenticated with a scoped key) and one open.

    python bench/auth_bench.py              # 5k x 384, k=10, 4,000 requests per server
    python bench/auth_bench.py --n 1000     # a quick look

Both servers (``arrwdb serve --storage memory`` in child processes, the same build) get the
same library; the key server is asked with a key made by its admin key for that one library
(``read``), so each request goes through the whole guard: Host check, key lookup, the
library scope in the dispatcher. Requests alternate between the servers in slices, so that a
change of machine load hits both alike; the table gives p50/p99 and the ratio keyed/open
(target: p50 within 10%).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, clustered, log, machine, markdown_table, run_and_report
from _server import ServerProcess
from server_bench import get_latencies, latency_stats, rest_latencies

ADMIN_KEY = "bench-admin-key-0123456789abcdef"


def parse_args(argv: Sequence[str] | None = None) -> Any:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "auth bench")
    p.add_argument("--n", type=int, default=5_000, help="vectors in the library")
    p.add_argument("--dim", type=int, default=384, help="dimension")
    p.add_argument("--k", type=int, default=10, help="neighbours per query")
    p.add_argument("--requests", type=int, default=4_000, help="timed searches per server")
    p.add_argument("--warmup", type=int, default=300, help="untimed requests per server")
    return p.parse_args(argv)


def load(client: httpx.Client, vectors: Any, headers: dict[str, str]) -> str:
    body = {"name": "bench", "dimension": int(vectors.shape[1]), "index": "hnsw"}
    r = client.post("/v1/libraries", json=body, headers=headers)
    r.raise_for_status()
    library_id = str(r.json()["id"])
    for start in range(0, len(vectors), 500):
        docs = [
            {"title": f"d{start + i}", "chunks": [{"text": "c", "embedding": v.tolist()}]}
            for i, v in enumerate(vectors[start : start + 500])
        ]
        client.post(f"/v1/libraries/{library_id}/documents", json=docs, headers=headers)
    return library_id


def run(args: Any) -> dict[str, Any]:
    ds = clustered(args.n, args.dim, 500, seed=args.seed)
    bodies = [msgspec.json.encode({"query_vector": q.tolist(), "k": args.k}) for q in ds.queries]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    keyed_server = ServerProcess(env={"ARRWDB_API_KEY": ADMIN_KEY, "ARRWDB_RATE_LIMIT": "0"})
    open_server = ServerProcess(env={"ARRWDB_RATE_LIMIT": "0"})
    result: dict[str, Any] = {"params": vars(args) | {"out": None}, "machine": machine()}
    try:
        keyed_server.wait_ready(headers=admin)
        open_server.wait_ready()
        with (
            httpx.Client(base_url=keyed_server.url, timeout=60) as keyed_admin,
            httpx.Client(base_url=open_server.url, timeout=60) as opened,
        ):
            keyed_lib = load(keyed_admin, ds.vectors, admin)
            open_lib = load(opened, ds.vectors, {})
            made = keyed_admin.post(
                "/v1/keys",
                json={"name": "bench", "libraries": [keyed_lib], "access": "read"},
                headers=admin,
            ).json()
        key = {"Authorization": f"Bearer {made['key']}"}
        with (
            httpx.Client(base_url=keyed_server.url, timeout=60, headers=key) as keyed,
            httpx.Client(base_url=open_server.url, timeout=60) as opened,
        ):
            sides = {
                "with a key": (keyed, f"/v1/libraries/{keyed_lib}"),
                "open": (opened, f"/v1/libraries/{open_lib}"),
            }
            for client, path in sides.values():
                rest_latencies(client, path + "/search", bodies, args.warmup, args.k)
                get_latencies(client, path, args.warmup)
            searches: dict[str, list[float]] = {name: [] for name in sides}
            reads: dict[str, list[float]] = {name: [] for name in sides}
            slices = 8 * max(1, args.repeats)
            per = max(1, args.requests // slices)
            log(f"{slices} slices of {per} searches and {per} reads per server, alternating")
            for _ in range(slices):
                for name, (client, path) in sides.items():
                    searches[name] += rest_latencies(client, path + "/search", bodies, per, args.k)[
                        0
                    ]
                    reads[name] += get_latencies(client, path, per)
    finally:
        keyed_server.stop()
        open_server.stop()
    result["search"] = {name: latency_stats(s) for name, s in searches.items()}
    result["get_library"] = {name: latency_stats(s) for name, s in reads.items()}
    return result


def report(result: dict[str, Any]) -> str:
    rows = []
    for part in ("search", "get_library"):
        keyed, opened = result[part]["with a key"], result[part]["open"]
        rows.append(
            [
                f"REST {part.replace('_', ' ')}",
                opened["p50_ms"],
                keyed["p50_ms"],
                keyed["p50_ms"] / opened["p50_ms"],
                opened["p99_ms"],
                keyed["p99_ms"],
            ]
        )
    headers = ["request", "open p50 ms", "keyed p50 ms", "keyed/open p50", "open p99", "keyed p99"]
    return "## API keys: REST latency, keyed vs open (target p50 ratio <= 1.10)\n\n" + (
        markdown_table(headers, rows)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_report("auth_bench", lambda: run(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
