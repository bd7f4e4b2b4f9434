"""Arbitrary text and bytes sent to a live WebSocket always get a well-formed response, and the
socket stays open (a real server, a real client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from arrwdb.config import Settings
from arrwdb.server import BackgroundServer

KEYS = st.sampled_from(["type", "action", "request_id", "data"]) | st.text(max_size=6)
SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12)
VALUES = st.recursive(
    SCALARS | st.sampled_from(["request", "search", "add", "get", "delete", "subscribe"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)
ENVELOPE_LIKE = st.dictionaries(KEYS, VALUES, max_size=5).map(json.dumps)
MESSAGES = st.text(max_size=300) | st.binary(max_size=300) | ENVELOPE_LIKE


@pytest.fixture(scope="module")
def socket() -> Iterator[ClientConnection]:
    with BackgroundServer(Settings(), log_level="warning") as server:
        library = httpx.post(f"{server.url}/v1/libraries", json={"name": "fuzz"}).json()["id"]
        with connect(f"{server.ws_url}/v1/libraries/{library}/ws") as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "system"
            yield ws


def next_response(ws: ClientConnection) -> dict[str, Any]:
    while True:  # a message that happened to be a valid "add" also produces an event
        message: dict[str, Any] = json.loads(ws.recv(timeout=5))
        if message["type"] == "response":
            return message
        assert message["type"] == "event"


@settings(max_examples=400)
@given(message=MESSAGES)
def test_anything_gets_a_well_formed_response(
    socket: ClientConnection, message: str | bytes
) -> None:
    socket.send(message)
    reply = next_response(socket)
    assert set(reply) >= {"type", "request_id", "success"}
    request_id = reply["request_id"]
    assert request_id is None or isinstance(request_id, str | int)
    if reply["success"]:  # it happened to be a valid request
        assert "data" in reply
    else:
        assert isinstance(reply["error"], str)
        assert reply["error"]
        assert isinstance(reply["code"], str)
        assert reply["code"] != "internal_error"


def test_the_socket_is_still_open_and_serving(socket: ClientConnection) -> None:
    request = {
        "type": "request",
        "action": "search",
        "request_id": "end",
        "data": {"query_text": "x"},
    }
    socket.send(json.dumps(request))
    reply = next_response(socket)
    assert (reply["request_id"], reply["success"]) == ("end", True)
