"""Memory per misbehaving client is bounded: clients that ask for large answers and never read
them make the server hold little (its peak resident memory grows by under 64 MiB), and are cut.

The server runs in its own process so that its memory is its own; each answer is ~3 MB of
JSON (k=1000 hits with 256-d embeddings), and 100 of them are asked for at once.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from processes import ServerProcess
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

DIM = 256
MIB = 1024 * 1024
BOUND = 64 * MIB
SEARCH = {"query_vector": [1.0] * DIM, "k": 1000, "include_embedding": True}


@pytest.fixture(scope="module")
def loaded() -> Iterator[tuple[ServerProcess, str]]:
    server = ServerProcess(
        ["--storage", "memory"],
        env={"ARRWDB_NDJSON_SEND_TIMEOUT": "2", "ARRWDB_WS_SEND_TIMEOUT": "2"},
    )
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            body = {"name": "big", "dimension": DIM, "index": "flat"}
            library_id = http.post("/v1/libraries", json=body).json()["id"]
            rng = np.random.default_rng(7)
            for start in range(0, 1000, 250):
                docs = [
                    {
                        "title": f"d{start + i}",
                        "chunks": [{"text": "t", "embedding": rng.random(DIM).tolist()}],
                    }
                    for i in range(250)
                ]
                r = http.post(f"/v1/libraries/{library_id}/documents", json=docs)
                assert r.status_code == 201, r.text
            for _ in range(3):  # warm up: the peak of answering one such search, read
                r = http.post(f"/v1/libraries/{library_id}/search", json=SEARCH)
                assert len(r.json()["results"]) == 1000
        yield server, library_id
    finally:
        server.stop()


def _growth_while(server: ServerProcess, seconds: float) -> int:
    before = server.peak_rss()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
    return server.peak_rss() - before


def test_an_ndjson_search_stream_that_is_not_read(loaded: tuple[ServerProcess, str]) -> None:
    server, library_id = loaded
    lines = (json.dumps(SEARCH) + "\n") * 100
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    head = (
        f"POST /v1/libraries/{library_id}/search/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/x-ndjson\r\nContent-Length: {len(lines)}\r\n\r\n"
    )
    sock.sendall(head.encode() + lines.encode())
    try:
        growth = _growth_while(server, 4.0)
        print(f"NDJSON: the server's peak grew by {growth / MIB:.1f} MiB")
        assert growth < BOUND, f"the server grew by {growth / MIB:.0f} MiB"
        # the client is dropped after the send timeout (2 s): reading now ends
        sock.settimeout(10)
        received = 0
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        assert received < 50 * 3 * MIB  # it got some answers, not all of them
    finally:
        sock.close()


def test_websocket_searches_whose_answers_are_not_read(loaded: tuple[ServerProcess, str]) -> None:
    server, library_id = loaded
    url = f"ws://127.0.0.1:{server.port}/v1/libraries/{library_id}/ws"
    # the client library stops reading the socket once one frame waits in its queue
    with connect(url, max_size=None, max_queue=1) as ws:
        welcome = json.loads(ws.recv())
        assert welcome["type"] == "system"
        for n in range(100):
            ws.send(
                json.dumps(
                    {"type": "request", "action": "search", "request_id": str(n), "data": SEARCH}
                )
            )
        growth = _growth_while(server, 4.0)
        print(f"WebSocket: the server's peak grew by {growth / MIB:.1f} MiB")
        assert growth < BOUND, f"the server grew by {growth / MIB:.0f} MiB"
        with pytest.raises(ConnectionClosed):
            _read_all(ws)
    assert ws.close_code == 4008, ws.close_reason
    assert "slow consumer" in (ws.close_reason or "")


def _read_all(ws: ClientConnection) -> None:
    while True:
        ws.recv(timeout=10)
