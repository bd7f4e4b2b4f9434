"""The seed's WebSocket protocol and the spec's extensions, against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets

from arrwdb.server import BackgroundServer
from conftest import (
    acreate_library,
    alibrary_id,
    connect,
    create_library,
    recv,
    recv_type,
    request,
    ws_url,
)

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "websocket"


# -- the seed -------------------------------------------------------------------------------


def test_seed_python_example_runs_unchanged(server: BackgroundServer) -> None:
    """The seed's Python client, verbatim but for a real library id and our port."""
    with httpx.Client(base_url=server.url) as http:
        lib = create_library(http)["id"]
        http.post(f"/v1/libraries/{lib}/documents", json={"title": "AI", "text": "AI is here."})
        code = (EXAMPLES / "seed_client.py").read_text()
        code = code.replace("{library_id}", lib).replace(
            "localhost:8000", f"127.0.0.1:{server.port}"
        )
        proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            welcome = proc.stdout.readline()
            assert "'type': 'system'" in welcome
            assert f"Connected to library {lib}" in welcome
            response = proc.stdout.readline()
            assert "'type': 'response'" in response
            assert "'request_id': '123'" in response
            assert "'success': True" in response
            assert "'results'" in response
            http.post(
                f"/v1/libraries/{lib}/documents", json={"title": "Test Document", "text": "x"}
            )
            assert proc.stdout.readline().strip() == "Event: document.added"
        finally:
            proc.kill()
            proc.wait()


async def test_welcome_then_search_as_in_the_seed(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        lib = (await acreate_library(http))["id"]
        await http.post(f"/v1/libraries/{lib}/documents", json={"title": "AI", "text": "AI here."})
    async with websockets.connect(ws_url(server, lib)) as ws:
        welcome = await recv(ws)
        assert welcome["type"] == "system"
        assert welcome["message"] == f"Connected to library {lib}"
        uuid.UUID(welcome["connection_id"])
        await ws.send(request("search", "123", {"query_text": "AI", "k": 5}))
        response = await recv(ws)
        assert response["type"] == "response"
        assert response["request_id"] == "123"
        assert response["success"] is True
        assert response["data"]["results"][0]["document_title"] == "AI"
        assert isinstance(response["data"]["took_ms"], float)


@pytest.mark.parametrize("library_id", ["no-such-library", "%C3%A9" * 100])
async def test_unknown_library_closes_with_4404(server: BackgroundServer, library_id: str) -> None:
    async with websockets.connect(ws_url(server, library_id)) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
    assert ws.close_code == 4404
    assert ws.close_reason


# -- events ---------------------------------------------------------------------------------


async def test_rest_write_is_seen_as_an_event_on_two_sockets(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        lib = (await acreate_library(http))["id"]
        first, _ = await connect(server, lib)
        second, _ = await connect(server, lib)
        async with first, second:
            body = {"title": "Test Document", "text": "x"}
            doc = (await http.post(f"/v1/libraries/{lib}/documents", json=body)).json()
            for ws in (first, second):
                event = await recv(ws)
                assert event["type"] == "event"
                assert event["event_type"] == "document.added"
                assert event["library_id"] == lib
                assert event["data"] == {
                    "document_id": doc["id"],
                    "title": "Test Document",
                    "num_chunks": 1,
                }
                assert event["id"].isdigit()
                assert event["timestamp"].endswith("Z")


async def test_ws_add_is_answered_and_seen_by_every_subscriber(server: BackgroundServer) -> None:
    lib = await alibrary_id(server)
    writer, _ = await connect(server, lib)
    others = [(await connect(server, lib))[0] for _ in range(2)]
    async with writer, others[0], others[1]:
        await writer.send(request("add", "a1", {"title": "Doc", "text": "Some words here."}))
        messages = [await recv(writer), await recv(writer)]
        response = next(m for m in messages if m["type"] == "response")
        event = next(m for m in messages if m["type"] == "event")
        assert response["request_id"] == "a1"
        assert response["success"] is True
        doc = response["data"]
        assert doc["title"] == "Doc"
        assert doc["num_chunks"] == 1
        assert event["event_type"] == "document.added"
        assert event["data"]["document_id"] == doc["id"]
        for ws in others:
            seen = await recv(ws)
            assert seen == event


async def test_get_and_delete(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        lib = (await acreate_library(http))["id"]
        body = {"title": "T", "text": "One. Two."}
        doc = (await http.post(f"/v1/libraries/{lib}/documents", json=body)).json()
    async with websockets.connect(ws_url(server, lib)) as ws:
        await recv(ws)
        await ws.send(request("get", "g", {"document_id": doc["id"]}))
        got = await recv_type(ws, "response")
        assert got["data"]["id"] == doc["id"]
        assert got["data"]["chunks"][0]["text"]
        await ws.send(request("delete", "d", {"document_id": doc["id"]}))
        deleted = await recv_type(ws, "response")
        assert deleted["data"] == {"document_id": doc["id"], "deleted": True}
        await ws.send(request("get", "g2", {"document_id": doc["id"]}))
        missing = await recv_type(ws, "response")
        assert missing["success"] is False
        assert missing["code"] == "not_found"
        assert missing["request_id"] == "g2"
        assert isinstance(missing["error"], str)


async def test_pipelined_requests_are_all_answered(server: BackgroundServer) -> None:
    lib = await alibrary_id(server)
    async with websockets.connect(ws_url(server, lib)) as ws:
        await recv(ws)
        sent = {}
        for i in range(60):
            rid = f"r{i}"
            if i % 3 == 0:
                sent[rid] = request("add", rid, {"title": f"d{i}", "text": f"text number {i}"})
            elif i % 3 == 1:
                sent[rid] = request("search", rid, {"query_text": "text", "k": 3})
            else:
                sent[rid] = request("get", rid, {"document_id": "missing"})
        for message in sent.values():
            await ws.send(message)
        answers: dict[str, dict[str, Any]] = {}
        events = 0
        with anyio.fail_after(20):
            while len(answers) < len(sent):
                message = json.loads(await ws.recv())
                if message["type"] == "event":
                    events += 1
                else:
                    answers[message["request_id"]] = message
        assert set(answers) == set(sent)
        for rid, answer in answers.items():
            i = int(rid[1:])
            assert answer["success"] is (i % 3 != 2), answer
        while events < 20:
            assert (await recv(ws))["type"] == "event"
            events += 1


# -- bad messages and limits ----------------------------------------------------------------


async def test_bad_messages_get_error_responses_and_the_socket_stays_open(
    server: BackgroundServer,
) -> None:
    lib = await alibrary_id(server)
    cases: list[tuple[str | bytes, Any, str]] = [
        ("not json at all", None, "bad_request"),
        (
            '{"type": "request", "action": "search", "request_id": "t1", "data": {"k"',
            None,
            "bad_request",
        ),
        ("[1, 2, 3]", None, "bad_request"),
        ('"just a string"', None, "bad_request"),
        ('{"hello": "world"}', None, "bad_request"),
        ('{"type": "response", "action": "search", "request_id": "t2"}', "t2", "bad_request"),
        (request("explode", "t3", {}), "t3", "unknown_action"),
        (request("search", "t4", {"query_text": "x", "k": 0}), "t4", "invalid_argument"),
        (request("search", "t5", {"query_text": "x", "k": "ten"}), "t5", "invalid_argument"),
        (request("search", "t6", None), "t6", "invalid_argument"),
        (request("search", 7, {"query_text": "x", "query_vector": [1.0]}), 7, "invalid_argument"),
        (request("add", "t8", {"title": "no content"}), "t8", "invalid_argument"),
        (request("delete", "t9", {}), "t9", "invalid_argument"),
        (b"\x00\xff\xfe binary", None, "bad_request"),
        (
            b'{"type": "request", "action": "get", "request_id": "t10", "data": {}}',
            "t10",
            "invalid_argument",
        ),
    ]
    async with websockets.connect(ws_url(server, lib)) as ws:
        await recv(ws)
        for message, request_id, code in cases:
            await ws.send(message)
            answer = await recv(ws)
            assert answer["type"] == "response", message
            assert answer["success"] is False, message
            assert answer["request_id"] == request_id, message
            assert answer["code"] == code, (message, answer)
            assert isinstance(answer["error"], str), message
            assert answer["error"]
        await ws.send(request("search", "ok", {"query_text": "x"}))
        assert (await recv(ws))["success"] is True
    async with websockets.connect(ws_url(server, lib)) as ws:
        await recv(ws)
        await ws.send(request("search", "f", {"query_text": "x", "k": "ten"}))
        assert (await recv(ws))["field"] == "data.k"


async def test_oversize_messages(make_server: Any) -> None:
    live = make_server(max_ws_message_bytes=1024)
    lib = await alibrary_id(live)
    async with websockets.connect(ws_url(live, lib)) as ws:
        await recv(ws)
        await ws.send(request("search", "big", {"query_text": "x" * 1500}))
        answer = await recv(ws)
        assert (answer["success"], answer["code"]) == (False, "payload_too_large")
        await ws.send(request("search", "ok", {"query_text": "x"}))
        assert (await recv(ws))["success"] is True
        await ws.send("y" * 5000)  # beyond the protocol limit: the server closes with 1009
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1009
