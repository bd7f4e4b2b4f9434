"""Flow control and shutdown: a stalled subscriber is cut off without slowing the others;
a graceful shutdown answers requests in flight, closes WebSockets with 1001 and ends SSE."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse
from websockets.asyncio.client import ClientConnection

from arrwdb.server import BackgroundServer
from conftest import acreate_library

pytestmark = pytest.mark.anyio


async def read_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message left on the socket, until the server closes it."""
    messages: list[dict[str, Any]] = []
    while True:
        try:
            messages.append(json.loads(await ws.recv()))
        except websockets.ConnectionClosed:
            return messages


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await anyio.sleep(0.005)
    raise AssertionError("condition never met")


async def ingest_while(
    http: httpx.AsyncClient, lib: str, body: bytes, reader: Callable[[], Awaitable[None]]
) -> None:
    """NDJSON-ingest ``body`` while ``reader`` runs; both done within 20 s."""
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            response = await http.post(
                f"/v1/libraries/{lib}/documents/stream",
                content=body,
                headers={"content-type": "application/x-ndjson"},
            )
            assert response.status_code == 200


async def test_stalled_subscriber_is_closed_and_does_not_delay_others(make_server: Any) -> None:
    live: BackgroundServer = make_server(ws_send_queue=16, ws_send_timeout=2.0)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        lib = (await acreate_library(http))["id"]
        url = f"{live.ws_url}/v1/libraries/{lib}/ws"

        # the stalled client: a tiny TCP receive window, and it never reads after the welcome
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", live.port))
        stalled = await websockets.connect(url, sock=sock, max_queue=1)
        json.loads(await stalled.recv())
        healthy = await websockets.connect(url)
        json.loads(await healthy.recv())

        count = 300
        title = "t" * 16_000  # every event carries ~16 kB
        body = b"".join(
            json.dumps({"title": f"{i}-{title}", "text": f"doc {i}"}).encode() + b"\n"
            for i in range(count)
        )
        received: list[int] = []

        async def read_healthy() -> None:
            while len(received) < count:
                message = json.loads(await healthy.recv())
                assert message["type"] == "event"
                received.append(int(message["id"]))

        started = time.monotonic()
        await ingest_while(http, lib, body, read_healthy)
        elapsed = time.monotonic() - started
        assert received == list(range(received[0], received[0] + count))  # all, in order
        assert elapsed < 10, elapsed

        # still not reading after ws_send_timeout: it is cut off; once it reads again it gets
        # what was already in flight, then the close frame
        await anyio.sleep(3.0)
        with anyio.fail_after(10):
            await read_until_closed(stalled)
        assert stalled.close_code == 4008
        assert "slow consumer" in (stalled.close_reason or "")
        stats = (await http.get("/v1/websockets/stats")).json()
        assert stats["total_connections"] == 1
        await healthy.close()


async def test_graceful_shutdown_finishes_writes_then_closes(make_server: Any) -> None:
    live: BackgroundServer = make_server()
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        lib = (await acreate_library(http))["id"]
        lib_url = f"/v1/libraries/{lib}"
        ws = await websockets.connect(f"{live.ws_url}{lib_url}/ws")
        json.loads(await ws.recv())
        async with aconnect_sse(http, "GET", f"{lib_url}/events") as source:
            # a write big enough to still be running when the shutdown begins
            chunks = [{"text": f"chunk number {i} of a big document"} for i in range(4000)]
            data = {"title": "big", "chunks": chunks}
            message = {"type": "request", "action": "add", "request_id": "big", "data": data}
            await ws.send(json.dumps(message))
            await wait_until(lambda: live.runtime.gate.in_flight > 0)
            stopper = threading.Thread(target=live.stop)
            stopper.start()

            with anyio.fail_after(20):
                messages = await read_until_closed(ws)
            response = next(m for m in messages if m["type"] == "response")
            assert response["request_id"] == "big"
            assert response["success"] is True
            assert response["data"]["num_chunks"] == 4000
            assert ws.close_code == 1001

            with anyio.fail_after(10):
                async for _ in source.aiter_sse():  # the stream ends by itself
                    pass
    await anyio.to_thread.run_sync(stopper.join, 30)
    assert not live.thread.is_alive()


async def test_a_stalled_sse_client_is_cut_and_the_others_read_on(make_server: Any) -> None:
    """An SSE client that does not read holds what the connection buffers, no more: after
    ``sse_send_timeout`` with its sends blocked the stream is ended; a reading client of the
    same library gets every event."""
    live: BackgroundServer = make_server(sse_send_timeout=1.0)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        lib = (await acreate_library(http))["id"]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", live.port))
        sock.sendall(f"GET /v1/libraries/{lib}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await wait_until(lambda: len(live.runtime.streams) == 1)
        count = 200
        title = "t" * 16_000  # ~16 kB an event: 3 MB in all
        body = b"".join(
            json.dumps({"title": f"{i}-{title}", "text": f"doc {i}"}).encode() + b"\n"
            for i in range(count)
        )
        received: list[int] = []
        async with aconnect_sse(http, "GET", f"/v1/libraries/{lib}/events") as source:
            await wait_until(lambda: len(live.runtime.streams) == 2)

            async def read() -> None:
                async for event in source.aiter_sse():
                    received.append(int(json.loads(event.data)["id"]))
                    if len(received) == count:
                        return

            await ingest_while(http, lib, body, read)
            assert received == list(range(received[0], received[0] + count))
            await wait_until(lambda: len(live.runtime.streams) == 1, timeout=10)  # cut
        sock.close()


async def test_over_the_memory_store_a_reader_whose_own_events_are_gone_is_told(
    make_server: Any,
) -> None:
    """With the in-memory store nothing is kept beyond the history: a commit of more of a
    library's events than it holds cuts that library's readers explicitly, SSE with a last
    ``stream.closed`` event naming the last id sent, WebSocket with 4008 and that id."""
    live: BackgroundServer = make_server(history_size=50)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        lib = (await acreate_library(http, index="flat", dimension=2))["id"]
        first = await http.post(
            f"/v1/libraries/{lib}/documents",
            json={"title": "a", "chunks": [{"text": "a", "embedding": [1, 0]}]},
        )
        assert first.status_code == 201
        ws = await websockets.connect(f"{live.ws_url}/v1/libraries/{lib}/ws")
        json.loads(await ws.recv())
        since = {"since": "earliest"}
        await ws.send(json.dumps({"action": "subscribe", "request_id": "s", "data": since}))
        messages = [json.loads(await ws.recv()) for _ in range(3)]  # response + 2 events
        assert [m["type"] for m in messages] == ["response", "event", "event"]
        last = messages[-1]["id"]
        events: list[Any] = []
        async with aconnect_sse(
            http, "GET", f"/v1/libraries/{lib}/events", params={"since": "earliest"}
        ) as source:
            stream = source.aiter_sse()
            events += [await stream.__anext__(), await stream.__anext__()]
            bulk = [
                {"title": str(i), "chunks": [{"text": "b", "embedding": [0, 1]}]}
                for i in range(300)
            ]
            assert (await http.post(f"/v1/libraries/{lib}/documents", json=bulk)).status_code == 201
            with anyio.fail_after(10):
                async for event in stream:
                    events.append(event)
        assert events[-1].event == "stream.closed"
        closed = json.loads(events[-1].data)
        assert closed["data"] == {"reason": "slow_consumer", "last_id": events[-2].id}
        assert events[-1].id == events[-2].id
        with anyio.fail_after(10):
            await read_until_closed(ws)
        assert ws.close_code == 4008
        assert f"last event id {last}" in (ws.close_reason or "")
