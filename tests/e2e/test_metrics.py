"""``/metrics``: Prometheus text whose counters move under load, guarded like the rest (or on
a port of its own), and every metric it serves is listed in the docs."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse

from conftest import recv, request

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"
pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample of an exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def total(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


async def test_metrics_move_under_load_and_are_documented(make_server: Any, tmp_path: Path) -> None:
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
        # every metric served is in the docs
        names = {
            re.sub(r"(_total|_count|_sum|_bucket|_created)$", "", k.split("{")[0]) for k in during
        }
        documented = DOCS.read_text()
        missing = sorted(n for n in names if f"`{n}" not in documented)
        assert not missing, f"metrics not in docs/operations.md: {missing}"


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
