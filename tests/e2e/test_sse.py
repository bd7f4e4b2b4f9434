"""Server-Sent Events: framing, resume, filters, reset, keep-alives, against a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from httpx_sse import ServerSentEvent, aconnect_sse

from arrwdb.server import BackgroundServer
from conftest import acreate_library

pytestmark = pytest.mark.anyio


class Events:
    """An SSE stream read by a background task, so that waiting with a timeout never cancels
    (and thereby ends) the stream's iterator."""

    def __init__(self, receive: MemoryObjectReceiveStream[ServerSentEvent]) -> None:
        self._receive = receive

    async def next(self, timeout: float = 5.0) -> ServerSentEvent:
        with anyio.fail_after(timeout):
            return await self._receive.receive()

    async def none(self, wait: float = 0.3) -> None:
        with anyio.move_on_after(wait):
            event = await self._receive.receive()
            raise AssertionError(f"unexpected event {event.event} {event.data}")


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, **kwargs: Any
) -> AsyncIterator[tuple[Events, httpx.Response]]:
    send, receive = anyio.create_memory_object_stream[ServerSentEvent](1000)
    async with aconnect_sse(client, "GET", url, **kwargs) as source:

        async def pump() -> None:
            async with send:
                async for event in source.aiter_sse():
                    await send.send(event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            yield Events(receive), source.response
            tg.cancel_scope.cancel()


async def add(http: httpx.AsyncClient, lib: str, title: str) -> dict[str, Any]:
    response = await http.post(
        f"/v1/libraries/{lib}/documents", json={"title": title, "text": title}
    )
    assert response.status_code == 201
    doc: dict[str, Any] = response.json()
    return doc


async def test_framing_and_resume_after_a_disconnect(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        lib = (await acreate_library(http))["id"]
        url = f"{server.url}/v1/libraries/{lib}/events"
        async with sse(http, url) as (events, response):
            assert response.headers["content-type"].startswith("text/event-stream")
            # registered before the headers: a write right now is not missed
            first = await add(http, lib, "first")
            seen = [await events.next()]
            await add(http, lib, "second")
            seen.append(await events.next())
        envelope = json.loads(seen[0].data)
        assert seen[0].event == "document.added"
        assert seen[0].id == envelope["id"]
        assert envelope["type"] == "document.added"
        assert envelope["library_id"] == lib
        assert envelope["data"] == {"document_id": first["id"], "title": "first", "num_chunks": 1}
        assert envelope["timestamp"].endswith("Z")
        last_id = seen[-1].id

        for how in ("header", "query"):
            # written while the client is disconnected
            missed = [await add(http, lib, f"missed-{how}-{i}") for i in range(3)]
            await http.delete(f"/v1/libraries/{lib}/documents/{missed[0]['id']}")
            expected = ["document.added"] * 3 + ["document.deleted"]
            headers = {"Last-Event-ID": last_id} if how == "header" else {}
            params = {"since": last_id} if how == "query" else {}
            async with sse(http, url, headers=headers, params=params) as (events, _):
                replayed = [await events.next() for _ in range(4)]
                assert [e.event for e in replayed] == expected
                ids = [int(e.id) for e in replayed]
                assert ids == list(range(int(last_id) + 1, int(last_id) + 5))
                assert json.loads(replayed[0].data)["data"]["title"] == f"missed-{how}-0"
                await events.none()  # exactly the missed ones
                await add(http, lib, f"live-{how}")
                live = await events.next()
                assert json.loads(live.data)["data"]["title"] == f"live-{how}"
            last_id = live.id
    # every stream ended with its client: the server holds no subscription for them
    for _ in range(200):
        if not server.runtime.streams:
            break
        await anyio.sleep(0.01)
    assert not server.runtime.streams


async def test_types_filter(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        lib = (await acreate_library(http))["id"]
        url = f"{server.url}/v1/libraries/{lib}/events"
        params = {"types": "document.deleted,document.updated"}
        async with sse(http, url, params=params) as (events, _):
            doc = await add(http, lib, "a")
            await http.patch(f"/v1/libraries/{lib}/documents/{doc['id']}", json={"title": "b"})
            await http.delete(f"/v1/libraries/{lib}/documents/{doc['id']}")
            got = [await events.next(), await events.next()]
            assert [e.event for e in got] == ["document.updated", "document.deleted"]
            await events.none()


async def test_global_stream_sees_every_library(server: BackgroundServer) -> None:
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        sse(http, f"{server.url}/v1/events") as (events, _),
    ):
        a = (await acreate_library(http))["id"]
        b = (await acreate_library(http))["id"]
        await add(http, b, "in b")
        wanted = {("library.created", a), ("library.created", b), ("document.added", b)}
        seen: set[tuple[str, str]] = set()
        with anyio.fail_after(5):
            while not wanted <= seen:
                event = await events.next()
                seen.add((event.event, json.loads(event.data)["library_id"]))


async def test_lost_history_starts_with_a_reset_event(make_server: Any) -> None:
    live = make_server(history_size=3)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        lib = (await acreate_library(http))["id"]
        for i in range(6):
            await add(http, lib, f"t{i}")
        url = f"{live.url}/v1/libraries/{lib}/events"
        async with sse(http, url, headers={"Last-Event-ID": "1"}) as (events, _):
            reset = await events.next()
            assert reset.event == "stream.reset"
            envelope = json.loads(reset.data)
            assert envelope["type"] == "stream.reset"
            assert envelope["library_id"] == lib
            assert reset.id == envelope["id"] == "7"  # resume point: after the last event
            await add(http, lib, "after")
            after = await events.next()
            assert after.event == "document.added"
            assert int(after.id) == 8


async def test_errors_come_before_the_stream(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        missing = await client.get("/v1/libraries/no-such-library/events")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert missing.json()["code"] == "not_found"
        bad_types = await client.get("/v1/events", params={"types": "document.exploded"})
        assert bad_types.status_code == 422
        assert bad_types.json()["code"] == "invalid_argument"
        bad_since = await client.get("/v1/events", params={"since": "yesterday"})
        assert bad_since.status_code == 422


async def test_keep_alive_comments(make_server: Any) -> None:
    live = make_server(sse_keepalive=0.1)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        lib = (await acreate_library(http))["id"]
        lines: list[str] = []
        async with http.stream("GET", f"/v1/libraries/{lib}/events") as response:
            with anyio.fail_after(5):
                async for line in response.aiter_lines():
                    lines.append(line)
                    if sum(1 for x in lines if x.startswith(":")) >= 3:
                        break
        assert all(x.startswith(": keep-alive") or x == "" for x in lines), lines
