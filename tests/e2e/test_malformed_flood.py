"""10,000 generated malformed WebSocket messages: 0 closed sockets, 0 server errors, and every
reply a well-formed error response carrying the request_id when there was one."""

from __future__ import annotations

import json
import random
import string
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest
import websockets

from arrwdb.server import BackgroundServer
from conftest import ErrorLog, acreate_library

pytestmark = pytest.mark.anyio

SOCKETS = 8
PER_SOCKET = 1250
CODES = {
    "bad_request",
    "unknown_action",
    "invalid_argument",
    "invalid_vector",
    "invalid_filter",
    "not_found",
}


def _garbage(rng: random.Random) -> str:
    text = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
    return "@" + text  # never JSON


def malformed(rng: random.Random, n: int) -> tuple[str | bytes, str | None]:
    """A malformed message, and the request_id its answer must carry."""
    rid = f"m-{n}"
    kind = rng.randrange(12)
    if kind == 0:
        return _garbage(rng), None
    if kind == 1:
        value = rng.choice([1, -3.5, "text", None, True, [1, 2], [], [{"type": "request"}]])
        return json.dumps(value), None
    if kind == 2:
        return json.dumps({"hello": rng.random(), "request_id": rid}), rid
    if kind == 3:
        kind_of = rng.choice(["response", "event", "system", 5, None, ""])
        message = {"type": kind_of, "action": "search", "request_id": rid, "data": {}}
        return json.dumps(message), rid
    if kind == 4:
        action = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 12)))
        if action in {"search", "add", "delete", "get", "subscribe", "unsubscribe"}:
            action += "x"
        return json.dumps({"type": "request", "action": action, "request_id": rid}), rid
    if kind == 5:
        action, data = rng.choice(
            [
                ("search", {"query_text": "x", "k": rng.choice([0, -1, 1001, "5", 2.5, None])}),
                ("search", {"query_text": 5}),
                ("search", {"query_vector": "abc"}),
                ("add", {"title": 5, "text": "x"}),
                ("add", {"chunks": {"text": "x"}}),
                ("get", {"document_id": 123}),
                ("delete", {}),
                ("subscribe", {"since": {"id": 1}}),
                ("subscribe", {"types": "document.added"}),
            ]
        )
        if data.get("k", 0) is None:
            data["k"] = "null"
        return json.dumps(
            {"type": "request", "action": action, "request_id": rid, "data": data}
        ), rid
    if kind == 6:
        action = rng.choice(["search", "add", "delete", "get"])
        return json.dumps({"type": "request", "action": action, "request_id": rid}), rid
    if kind == 7:
        action, data = rng.choice(
            [
                ("get", {"document_id": f"missing-{n}"}),
                ("delete", {"document_id": f"missing-{n}"}),
                ("search", {"query_text": "x", "query_vector": [1.0, 2.0]}),
                ("search", {"query_text": "x", "filter": {"f": {"$unknown": 1}}}),
                ("search", {}),
                ("add", {"title": "no content"}),
            ]
        )
        return json.dumps(
            {"type": "request", "action": action, "request_id": rid, "data": data}
        ), rid
    if kind == 8:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))), None
    if kind == 9:
        weird = rng.choice([[1], {"a": 1}, 1.5, True])
        message = {"type": "request", "action": "search", "request_id": weird, "data": {}}
        return json.dumps(message), None
    if kind == 10:
        message = {"type": "request", "action": "search", "request_id": rid, "data": {"k": 3}}
        full = json.dumps(message)
        return full[: rng.randint(1, len(full) - 1)], None
    return json.dumps({"type": "request", "request_id": rid, "data": {}}), rid  # no action


def check_reply(reply: dict[str, Any]) -> None:
    assert reply["type"] == "response", reply
    assert reply["success"] is False, reply
    assert isinstance(reply["error"], str), reply
    assert reply["error"], reply
    assert reply["code"] in CODES, reply


async def test_ten_thousand_malformed_messages(
    server: BackgroundServer, error_log: ErrorLog
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        lib = (await acreate_library(http))["id"]
        await http.post(f"/v1/libraries/{lib}/documents", json={"title": "t", "text": "some text"})
    rng = random.Random(20251026)
    batches = [
        [malformed(rng, s * PER_SOCKET + i) for i in range(PER_SOCKET)] for s in range(SOCKETS)
    ]
    replies: list[list[dict[str, Any]]] = [[] for _ in range(SOCKETS)]
    url = f"{server.ws_url}/v1/libraries/{lib}/ws"

    async def drive(index: int) -> None:
        async with websockets.connect(url, max_queue=None) as ws:
            json.loads(await ws.recv())  # welcome

            async def send_all() -> None:
                for message, _ in batches[index]:
                    await ws.send(message)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all)
                while len(replies[index]) < PER_SOCKET:
                    replies[index].append(json.loads(await ws.recv()))
            # still open and still serving
            await ws.send(
                json.dumps(
                    {
                        "type": "request",
                        "action": "search",
                        "request_id": "ok",
                        "data": {"query_text": "text"},
                    }
                )
            )
            final = json.loads(await ws.recv())
            assert (final["request_id"], final["success"]) == ("ok", True)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for index in range(SOCKETS):
                tg.start_soon(drive, index)

    total = 0
    for index in range(SOCKETS):
        for reply in replies[index]:
            check_reply(reply)
        expected = Counter(rid for _, rid in batches[index])
        assert Counter(r["request_id"] for r in replies[index]) == expected
        total += len(replies[index])
    assert total == SOCKETS * PER_SOCKET == 10_000
    assert not error_log.records, [r.getMessage() for r in error_log.records[:5]]
