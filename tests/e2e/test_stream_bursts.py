"""A reader that keeps reading is never cut off, whatever the burst: over SSE and WebSocket,
against a real server on a durable store."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets.sync.client as ws_client
from httpx_sse import connect_sse

from conftest import create_library, start_server

DIM = 4


def documents(count: int, tag: str) -> list[dict[str, Any]]:
    vectors = np.random.default_rng(count).standard_normal((count, DIM)).round(4).tolist()
    return [
        {"title": f"{tag}{i}", "chunks": [{"text": tag, "embedding": vectors[i]}]}
        for i in range(count)
    ]


class Collector(threading.Thread):
    """Reads a stream until it has ``want`` events of its library, or it ends."""

    def __init__(self, want: int) -> None:
        super().__init__(daemon=True)
        self.want = want
        self.events: list[dict[str, Any]] = []
        self.ended: str | None = None  # why the stream ended early
        self.ready = threading.Event()


class SSECollector(Collector):
    def __init__(self, url: str, want: int) -> None:
        super().__init__(want)
        self.url = url

    def run(self) -> None:
        timeout = httpx.Timeout(10, read=60)
        try:
            with (
                httpx.Client(timeout=timeout) as http,
                connect_sse(http, "GET", self.url) as source,
            ):
                self.ready.set()
                for sse in source.iter_sse():
                    envelope = json.loads(sse.data)
                    if sse.event == "stream.closed":
                        self.ended = f"stream.closed {envelope['data']}"
                        return
                    self.events.append(envelope)
                    if len(self.events) == self.want:
                        return
            self.ended = "the stream ended"
        except Exception as exc:  # reported by the test
            self.ended = repr(exc)
        finally:
            self.ready.set()


class WSCollector(Collector):
    def __init__(self, url: str, want: int) -> None:
        super().__init__(want)
        self.url = url

    def run(self) -> None:
        try:
            with ws_client.connect(self.url, max_size=None) as socket:
                assert json.loads(socket.recv(timeout=10))["type"] == "system"
                self.ready.set()
                while len(self.events) < self.want:
                    message = json.loads(socket.recv(timeout=60))
                    if message["type"] == "event":
                        self.events.append(message)
        except Exception as exc:  # a close (4008) or a timeout: reported by the test
            self.ended = repr(exc)
        finally:
            self.ready.set()


def test_readers_of_one_library_read_through_bulk_writes_to_it_and_to_another(
    tmp_path: Path,
) -> None:
    """History of 10,000 events, disk store: 50,000 documents to B in one call, then 20,000 to
    A in one call. An SSE and a WebSocket subscriber of A are never cut, and each receives
    exactly A's 20,000 events, in order, by id."""
    server = start_server(storage="disk", data_dir=str(tmp_path / "data"), history_size=10_000)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            a = create_library(http, index="flat", dimension=DIM)["id"]
            b = create_library(http, index="flat", dimension=DIM)["id"]
            sse = SSECollector(f"{server.url}/v1/libraries/{a}/events", 20_000)
            ws = WSCollector(f"{server.ws_url}/v1/libraries/{a}/ws", 20_000)
            for reader in (sse, ws):
                reader.start()
                assert reader.ready.wait(10)
            burst = http.post(f"/v1/libraries/{b}/documents", json=documents(50_000, "b"))
            assert burst.status_code == 201, burst.text
            added = http.post(f"/v1/libraries/{a}/documents", json=documents(20_000, "a"))
            assert added.status_code == 201, added.text
        expected = [doc["id"] for doc in added.json()]
        for reader, name in ((sse, "SSE"), (ws, "WebSocket")):
            reader.join(timeout=120)
            assert not reader.is_alive(), f"{name}: still reading"
            assert reader.ended is None, f"{name}: {reader.ended}"
            assert [e["data"]["document_id"] for e in reader.events] == expected, name
            ids = [int(e["id"]) for e in reader.events]
            assert ids == list(range(ids[0], ids[0] + 20_000)), name
            assert {e["library_id"] for e in reader.events} == {a}, name
    finally:
        server.stop()
