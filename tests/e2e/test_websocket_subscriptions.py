"""WebSocket subscriptions (the spec's extensions) and connection statistics."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
import websockets

from arrwdb.server import BackgroundServer
from conftest import acreate_library, connect, recv, request, ws_url

pytestmark = pytest.mark.anyio


# -- subscribe / unsubscribe ----------------------------------------------------------------


async def test_subscribe_since_replays_exactly_the_missed_events(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        lib = (await acreate_library(http))["id"]
        docs_url = f"/v1/libraries/{lib}/documents"
        async with websockets.connect(ws_url(server, lib)) as ws:
            await recv(ws)
            ids = []
            for i in range(3):
                await http.post(docs_url, json={"title": f"t{i}", "text": "x"})
                ids.append((await recv(ws))["id"])
        docs = [
            (await http.post(docs_url, json={"title": f"late{i}", "text": "y"})).json()
            for i in range(2)
        ]
        await http.delete(f"{docs_url}/{docs[0]['id']}")
        async with websockets.connect(ws_url(server, lib)) as ws:
            await recv(ws)
            await ws.send(request("subscribe", "s1", {"since": ids[-1]}))
            answer = await recv(ws)
            assert answer == {
                "type": "response",
                "request_id": "s1",
                "success": True,
                "data": {"subscribed": True, "library_id": lib},
            }
            replayed = [await recv(ws) for _ in range(3)]
            assert [e["event_type"] for e in replayed] == [
                "document.added",
                "document.added",
                "document.deleted",
            ]
            assert [int(e["id"]) for e in replayed] == sorted(int(e["id"]) for e in replayed)
            assert int(replayed[0]["id"]) == int(ids[-1]) + 1

            await ws.send(
                request("subscribe", "s2", {"since": ids[0], "types": ["document.deleted"]})
            )
            assert (await recv(ws))["success"] is True
            only = await recv(ws)
            assert only["event_type"] == "document.deleted"
            await http.post(docs_url, json={"title": "filtered", "text": "z"})
            await http.delete(f"{docs_url}/{docs[1]['id']}")
            assert (await recv(ws))["data"]["document_id"] == docs[1]["id"]

            await ws.send(request("subscribe", "bad", {"types": ["document.exploded"]}))
            bad = await recv(ws)
            assert (bad["success"], bad["code"], bad["request_id"]) == (
                False,
                "invalid_argument",
                "bad",
            )


async def test_subscribe_to_lost_history_errors_and_stays_live(make_server: Any) -> None:
    live = make_server(history_size=5)
    async with httpx.AsyncClient(base_url=live.url) as http:
        lib = (await acreate_library(http))["id"]
        for i in range(8):
            await http.post(f"/v1/libraries/{lib}/documents", json={"title": f"t{i}", "text": "x"})
        async with websockets.connect(ws_url(live, lib)) as ws:
            await recv(ws)
            await ws.send(request("subscribe", "old", {"since": "1"}))
            answer = await recv(ws)
            assert answer["success"] is False
            assert answer["code"] == "history_lost"
            assert answer["request_id"] == "old"
            await http.post(f"/v1/libraries/{lib}/documents", json={"title": "after", "text": "x"})
            event = await recv(ws)
            assert event["type"] == "event"
            assert event["data"]["title"] == "after"


async def test_unsubscribe_stops_events(make_server: Any) -> None:
    live = make_server()
    async with httpx.AsyncClient(base_url=live.url) as http:
        lib = (await acreate_library(http))["id"]
        async with websockets.connect(ws_url(live, lib)) as ws:
            await recv(ws)
            await ws.send(request("unsubscribe", "u", {}))
            assert (await recv(ws))["data"] == {"subscribed": False}
            stats = seed_shape((await http.get("/v1/websockets/stats")).json())
            assert stats == {
                "total_connections": 1,
                "libraries_with_subscribers": 0,
                "subscriptions_by_library": {},
            }
            await http.post(f"/v1/libraries/{lib}/documents", json={"title": "unseen", "text": "x"})
            await ws.send(request("search", "q", {"query_text": "x"}))
            answer = await recv(ws)  # the response comes first: no event was queued
            assert answer["type"] == "response"
            await ws.send(request("subscribe", "s", None))
            assert (await recv(ws))["data"] == {"subscribed": True, "library_id": lib}
            await http.post(f"/v1/libraries/{lib}/documents", json={"title": "seen", "text": "x"})
            assert (await recv(ws))["data"]["title"] == "seen"


# -- stats ----------------------------------------------------------------------------------


SEED_STATS = ("total_connections", "libraries_with_subscribers", "subscriptions_by_library")


def seed_shape(stats: dict[str, Any]) -> dict[str, Any]:
    """The fields of the arrwDB WebSocket protocol's statistics (the SSE counts are extra)."""
    return {name: stats[name] for name in SEED_STATS}


async def wait_for_stats(
    http: httpx.AsyncClient, expected: dict[str, Any], timeout: float = 5.0
) -> None:
    stats = None
    for _ in range(int(timeout / 0.02)):
        stats = seed_shape((await http.get("/v1/websockets/stats")).json())
        if stats == expected:
            return
        await anyio.sleep(0.02)
    assert stats == expected


async def test_stats_follow_connections_as_they_open_and_close(make_server: Any) -> None:
    live = make_server()
    async with httpx.AsyncClient(base_url=live.url) as http:
        a, b = (await acreate_library(http))["id"], (await acreate_library(http))["id"]
        await wait_for_stats(
            http,
            {
                "total_connections": 0,
                "libraries_with_subscribers": 0,
                "subscriptions_by_library": {},
            },
        )
        a1, _ = await connect(live, a)
        a2, _ = await connect(live, a)
        b1, _ = await connect(live, b)
        await wait_for_stats(
            http,
            {
                "total_connections": 3,
                "libraries_with_subscribers": 2,
                "subscriptions_by_library": {a: 2, b: 1},
            },
        )
        await b1.close()
        await wait_for_stats(
            http,
            {
                "total_connections": 2,
                "libraries_with_subscribers": 1,
                "subscriptions_by_library": {a: 2},
            },
        )
        await a1.close()
        await a2.close()
        await wait_for_stats(
            http,
            {
                "total_connections": 0,
                "libraries_with_subscribers": 0,
                "subscriptions_by_library": {},
            },
        )
