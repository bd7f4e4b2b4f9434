"""Memory per misbehaving client is bounded: clients that ask for large answers and never read
them make the server hold little (its peak resident memory grows by under 64 MiB), and are cut.
Every cut is counted (``arrwdb_slow_consumers_cut``); a WebSocket subscriber that stops reading
is closed with 4008 and the last event id it was sent, to resume from.

The server runs in its own process so that its memory is its own; each answer is ~3 MB of
JSON (k=1000 hits with 256-d embeddings), and 100 of them are asked for at once.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from processes import ServerProcess
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import metric_samples

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


def _cuts(server: ServerProcess, transport: str) -> float:
    """``arrwdb_slow_consumers_cut`` of ``transport``, scraped."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return metric_samples(text).get(
        f'arrwdb_slow_consumers_cut_total{{transport="{transport}"}}', 0
    )


def test_an_ndjson_search_stream_that_is_not_read(loaded: tuple[ServerProcess, str]) -> None:
    server, library_id = loaded
    cuts_before = _cuts(server, "ndjson")
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
    assert _cuts(server, "ndjson") == cuts_before + 1  # the cut is counted


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
    assert "last event id none" in (ws.close_reason or "")  # it was sent no event


def _read_all(ws: ClientConnection) -> None:
    while True:
        ws.recv(timeout=10)


def _until_closed(ws: ClientConnection) -> list[str | bytes]:
    """Every message left, until the server closes the socket."""
    messages: list[str | bytes] = []
    try:
        while True:
            messages.append(ws.recv(timeout=10))
    except ConnectionClosed:
        return messages


@pytest.fixture(scope="module")
def events_server() -> Iterator[ServerProcess]:
    """A server whose WebSockets queue few frames (16) and wait 2 s for a client to read."""
    server = ServerProcess(
        ["--storage", "memory"],
        env={"ARRWDB_WS_SEND_TIMEOUT": "2", "ARRWDB_WS_SEND_QUEUE": "16"},
    )
    server.start()
    yield server
    server.stop()


def test_a_subscriber_that_stops_reading_is_cut_with_the_last_event_id_it_was_sent(
    events_server: ServerProcess,
) -> None:
    """It reads a few events, then stops while ~10 MB of events are published: the server
    closes it with 4008 naming the last event id it sent, and counts the cut. The client then
    reads what was in flight: its last event is the one named, and a subscription from that id
    goes on with the next event, nothing missed, nothing twice."""
    server = events_server
    cuts_before = _cuts(server, "websocket")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = {"name": uuid.uuid4().hex, "dimension": 2, "index": "flat"}
        library_id = http.post("/v1/libraries", json=body).json()["id"]
        docs = f"/v1/libraries/{library_id}/documents"
        url = f"ws://127.0.0.1:{server.port}/v1/libraries/{library_id}/ws"
        # a tiny TCP receive window, and a client library that stops reading at one frame
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        with connect(url, sock=sock, max_size=None, max_queue=1) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "system"
            chunk = {"text": "t", "embedding": [1.0, 0.0]}
            for i in range(3):
                assert http.post(docs, json={"title": f"read {i}", "chunks": [chunk]}).is_success
            read = [json.loads(ws.recv(timeout=10))["id"] for _ in range(3)]
            title = "t" * 16_000  # every event carries ~16 kB
            lines = b"".join(
                json.dumps({"title": f"{i}-{title}", "chunks": [chunk]}).encode() + b"\n"
                for i in range(600)
            )
            ingest = http.post(
                f"{docs}/stream", content=lines, headers={"content-type": "application/x-ndjson"}
            )
            published = int(json.loads(ingest.text.splitlines()[-2])["event_id"])
            # not reading: cut once the queue has been full for the send timeout (2 s)
            deadline = time.monotonic() + 10
            while _cuts(server, "websocket") == cuts_before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _cuts(server, "websocket") == cuts_before + 1
            # reading again within the close timeout: what was in flight, then the close
            received = [json.loads(m)["id"] for m in _until_closed(ws)]
        assert ws.close_code == 4008, ws.close_reason
        named = re.fullmatch(r"slow consumer: not reading; last event id (\d+)", ws.close_reason)
        assert named, ws.close_reason
        ids = [int(i) for i in read + received]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # in order, none missed
        assert named.group(1) == received[-1]  # the last event it was sent
        assert int(received[-1]) < published  # cut before the end
        with connect(url) as again:  # resume from the id of the close reason
            assert json.loads(again.recv(timeout=10))["type"] == "system"
            since = {"since": named.group(1)}
            message = {"type": "request", "action": "subscribe", "request_id": "r", "data": since}
            again.send(json.dumps(message))
            while (answer := json.loads(again.recv(timeout=10)))["type"] != "response":
                pass
            assert answer["success"] is True, answer
            nxt = json.loads(again.recv(timeout=10))
            assert (nxt["type"], nxt["id"]) == ("event", str(int(named.group(1)) + 1))
