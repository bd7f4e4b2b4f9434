"""``/metrics``: Prometheus text whose counters move under load (requests, events, refusals for
the rate, slow consumers cut), guarded like the rest (or on a port of its own), and exactly the
metrics ``docs/operations.md`` lists, on every storage."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
import websockets.sync.client as ws_sync
from httpx_sse import aconnect_sse

from arrwdb.server import BackgroundServer
from conftest import metric_samples as samples
from conftest import recv, request, start_server

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"
pytestmark = pytest.mark.anyio


def total(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


async def test_metrics_move_under_load(make_server: Any, tmp_path: Path) -> None:
    live = make_server(storage="disk", data_dir=str(tmp_path))
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        before = samples((await http.get("/metrics")).text)
        body = {"name": uuid.uuid4().hex, "dimension": 2, "index": "flat"}
        lib = (await http.post("/v1/libraries", json=body)).json()["id"]
        async with (
            websockets.connect(f"{live.ws_url}/v1/libraries/{lib}/ws") as ws,
            aconnect_sse(http, "GET", f"/v1/libraries/{lib}/events") as source,
        ):
            assert (await recv(ws))["type"] == "system"
            for i in range(20):
                doc = {"title": f"d{i}", "chunks": [{"text": "t", "embedding": [1.0, float(i)]}]}
                assert (
                    await http.post(f"/v1/libraries/{lib}/documents", json=doc)
                ).status_code == 201
            await ws.send(request("search", "q", {"query_vector": [1.0, 0.0], "k": 3}))
            seen = 0
            with anyio.fail_after(5):
                # One iterator, kept: leaving an ``async for`` over it would close the stream.
                events = source.aiter_sse()
                while seen < 20:
                    await anext(events)
                    seen += 1
                while seen < 40:
                    message = await recv(ws)
                    seen += message["type"] == "event"
            during = samples((await http.get("/metrics")).text)
        assert during["arrwdb_websocket_connections"] == 1
        assert during["arrwdb_sse_streams"] == 1
        route = 'route="/v1/libraries/{library_id}/documents"'
        adds = [
            v
            for k, v in during.items()
            if k.startswith("arrwdb_http_requests_total{") and route in k and 'status="201"' in k
        ]
        assert adds == [20.0]
        assert total(during, "arrwdb_http_request_duration_seconds_count") > total(
            before, "arrwdb_http_request_duration_seconds_count"
        )
        assert during['arrwdb_events_delivered_total{transport="sse"}'] >= 20
        assert during['arrwdb_events_delivered_total{transport="websocket"}'] >= 20
        assert during["arrwdb_events_applied_total"] >= 21
        assert during[f'arrwdb_index_vectors{{library_id="{lib}"}}'] == 20
        assert during["arrwdb_wal_fsync_seconds_count"] > before.get(
            "arrwdb_wal_fsync_seconds_count", 0
        )


async def test_metrics_need_a_key_for_every_library(make_server: Any) -> None:
    admin = {"Authorization": "Bearer the-admin"}
    live = make_server(api_key="the-admin")
    async with httpx.AsyncClient(base_url=live.url) as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=admin)).status_code == 200
        lib = (await http.post("/v1/libraries", json={"name": "m"}, headers=admin)).json()["id"]
        made = await http.post(
            "/v1/keys", json={"name": "k", "libraries": [lib], "access": "write"}, headers=admin
        )
        one = {"Authorization": f"Bearer {made.json()['key']}"}
        assert (await http.get("/metrics", headers=one)).status_code == 403
        refused = samples((await http.get("/metrics", headers=admin)).text)
        assert refused['arrwdb_auth_refused_total{code="unauthorized"}'] >= 1


def test_metrics_on_a_port_of_their_own(make_server: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    live = make_server(api_key="the-admin", metrics_port=port)
    with httpx.Client() as http:
        scraped = http.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200
        assert "arrwdb_http_requests" in scraped.text
        api = http.get(f"{live.url}/metrics", headers={"Authorization": "Bearer the-admin"})
        assert api.status_code == 404  # not on the API's port then


def documented_metrics() -> dict[str, tuple[str, str | None]]:
    """The table of ``docs/operations.md``: metric -> (type, the storage it is served with, if
    only one)."""
    section = DOCS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (.*) \|$", section, re.MULTILINE)
    table = {}
    for name, kind, what in rows:
        assert name not in table, f"{name} is listed twice"
        only = re.search(r"\(`(memory|disk|postgres)`\)$", what)
        table[name] = (kind, only.group(1) if only else None)
    assert len(table) > 20, "the table was found"
    return table


def served_metrics(exposition: str) -> set[tuple[str, str]]:
    """(name, type) of every ``# TYPE`` line; a counter by its name without ``_total``."""
    served = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            served.add((name.removesuffix("_total") if kind == "counter" else name, kind))
    return served


@pytest.fixture(params=["memory", "disk", "postgres"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackgroundServer]:
    options: dict[str, Any] = {"storage": request.param}
    if request.param == "disk":
        options["data_dir"] = str(tmp_path)
    if request.param == "postgres":
        import pg

        # set up before the server, so dropped after it stopped
        options |= {
            "postgres_url": pg.url(),
            "postgres_schema": request.getfixturevalue("pg_schema"),
        }
    live = start_server(**options)
    yield live
    live.stop()


def test_the_docs_list_exactly_the_metrics_served(stored: BackgroundServer) -> None:
    """Every ``# TYPE`` line a live server shows is in the docs' table with its type, and every
    row of the table (for this storage) is shown: none undocumented, none documented that
    does not exist."""
    storage = stored.settings.storage
    with httpx.Client(base_url=stored.url, timeout=10) as http:
        # a library with a vector and a watch, a request answered: every family has a series
        lib = http.post("/v1/libraries", json={"name": uuid.uuid4().hex, "dimension": 2})
        lib_id = lib.json()["id"]
        doc = {"title": "t", "chunks": [{"text": "a", "embedding": [1.0, 0.0]}]}
        assert http.post(f"/v1/libraries/{lib_id}/documents", json=doc).status_code == 201
        watch = {"query_vector": [1.0, 0.0], "k": 1}
        assert http.post(f"/v1/libraries/{lib_id}/watches", json=watch).status_code == 201
        served = served_metrics(http.get("/metrics").text)
    documented = {
        (name, kind)
        for name, (kind, only) in documented_metrics().items()
        if only in (None, storage)
    }
    assert not served - documented, f"served but not in docs/operations.md: {served - documented}"
    assert not documented - served, f"in docs/operations.md, not served: {documented - served}"


def test_refusals_for_the_rate_and_slow_consumers_are_counted(make_server: Any) -> None:
    """A client beyond its rate moves ``arrwdb_rate_limited``, a WebSocket client that stops
    reading is cut and moves ``arrwdb_slow_consumers_cut`` (scraped on a port of their own,
    which the rate does not limit)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    live = make_server(
        rate_limit=5, rate_burst=5, ws_send_queue=4, ws_send_timeout=0.5, metrics_port=port
    )

    def scrape() -> dict[str, float]:
        return samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)

    limited = 'arrwdb_rate_limited_total{transport="http"}'
    cut = 'arrwdb_slow_consumers_cut_total{transport="websocket"}'
    before = scrape()
    with httpx.Client(base_url=live.url, timeout=30) as http:
        lib = http.post("/v1/libraries", json={"name": uuid.uuid4().hex}).json()["id"]
        # a subscriber with a tiny TCP window that never reads after its welcome
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", live.port))
        with ws_sync.connect(
            f"{live.ws_url}/v1/libraries/{lib}/ws", sock=sock, max_queue=1
        ) as stalled:
            assert json.loads(stalled.recv(timeout=10))["type"] == "system"
            title = "t" * 16_000  # ~6 MB of events: more than the connection buffers
            lines = b"".join(
                json.dumps({"title": f"{i}-{title}", "text": "x"}).encode() + b"\n"
                for i in range(400)
            )
            ingest = http.post(
                f"/v1/libraries/{lib}/documents/stream",
                content=lines,
                headers={"content-type": "application/x-ndjson"},
            )
            assert ingest.status_code == 200
            deadline = time.monotonic() + 10
            while scrape().get(cut, 0) == before.get(cut, 0) and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(1.0)  # the allowance comes back
        statuses = [http.get("/v1/libraries").status_code for _ in range(8)]
    after = scrape()
    assert statuses.count(429) >= 1, statuses
    assert after.get(limited, 0) - before.get(limited, 0) == statuses.count(429)
    assert after.get(cut, 0) - before.get(cut, 0) == 1
