"""Inputs that once crashed a request or a connection: JSON nested past what the decoder follows,
filters nested past their limit, metadata integers no store can keep. Each is a 422 naming the
limit or the field on every way in, the connection stays open, and one bad NDJSON line fails
alone."""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

import httpx
import pytest
import websockets.sync.client as ws_client

from arrwdb.domain.errors import InvalidArgumentError, LimitExceededError
from arrwdb.domain.limits import FILTER_DEPTH
from arrwdb.server import BackgroundServer
from conftest import create_library

DEEP_JSON = "[" * 5000 + "]" * 5000


def nested_not(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"a": 1}
    for _ in range(depth):
        spec = {"$not": spec}
    return spec


def test_json_nested_too_deep_is_a_422_on_rest(http: httpx.Client, library: dict[str, Any]) -> None:
    body = '{"title": "t", "text": "a", "metadata": {"a": ' + DEEP_JSON + "}}"
    response = http.post(
        f"/v1/libraries/{library['id']}/documents",
        content=body.encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "limit_exceeded"
    assert "JSON" in response.json()["detail"]


@pytest.mark.parametrize("depth", [FILTER_DEPTH + 1, 600])
def test_a_filter_nested_past_its_limit_is_a_422(
    http: httpx.Client, library: dict[str, Any], depth: int
) -> None:
    response = http.post(
        f"/v1/libraries/{library['id']}/search",
        json={"query_vector": [1.0, 0.0], "k": 1, "filter": nested_not(depth)},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "limit_exceeded"
    assert response.json()["field"] == "filter"


def test_a_filter_at_its_limit_is_answered(http: httpx.Client) -> None:
    lib = create_library(http, dimension=2, index="flat")
    response = http.post(
        f"/v1/libraries/{lib['id']}/search",
        json={"query_vector": [1.0, 0.0], "k": 1, "filter": nested_not(FILTER_DEPTH)},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, 2**70]])
def test_metadata_integers_beyond_64_bits_are_refused(http: httpx.Client, value: object) -> None:
    lib = create_library(http, dimension=2)
    response = http.post(
        f"/v1/libraries/{lib['id']}/documents",
        json={
            "title": "t",
            "chunks": [{"text": "a", "embedding": [1, 0]}],
            "metadata": {"n": value},
        },
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_argument"
    assert response.json()["field"] == "metadata.n"


def test_the_largest_64_bit_integers_are_kept(http: httpx.Client) -> None:
    lib = create_library(http, dimension=2)
    metadata = {"low": -(2**63), "high": 2**64 - 1}
    response = http.post(
        f"/v1/libraries/{lib['id']}/documents",
        json={"title": "t", "chunks": [{"text": "a", "embedding": [1, 0]}], "metadata": metadata},
    )
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == metadata


def test_deep_input_on_a_websocket_is_an_error_response_and_the_socket_stays_open(
    server: Any, library: dict[str, Any]
) -> None:
    with ws_client.connect(f"{server.ws_url}/v1/libraries/{library['id']}/ws") as socket:
        socket.recv(timeout=10)
        socket.send(
            '{"type": "request", "action": "add", "request_id": 1, "data": ' + DEEP_JSON + "}"
        )
        answer = json.loads(socket.recv(timeout=10))
        assert answer["success"] is False
        assert answer["code"] == "limit_exceeded"
        deep_filter = {
            "type": "request",
            "action": "search",
            "request_id": 2,
            "data": {"query_vector": [1.0, 0.0], "k": 1, "filter": nested_not(600)},
        }
        socket.send(json.dumps(deep_filter))
        answer = json.loads(socket.recv(timeout=10))
        assert (answer["request_id"], answer["code"]) == (2, "limit_exceeded")
        socket.send(
            json.dumps(
                {"type": "request", "action": "get", "request_id": 3, "data": {"document_id": "x"}}
            )
        )
        assert json.loads(socket.recv(timeout=10))["request_id"] == 3  # still open


def test_one_bad_ndjson_line_fails_alone(http: httpx.Client) -> None:
    lib = create_library(http, dimension=2)
    lines = [
        json.dumps({"title": "ok1", "chunks": [{"text": "a", "embedding": [1, 0]}]}),
        '{"title": "deep", "text": "a", "metadata": {"a": ' + DEEP_JSON + "}}",
        json.dumps(
            {
                "title": "big",
                "chunks": [{"text": "a", "embedding": [1, 0]}],
                "metadata": {"n": 2**70},
            }
        ),
        json.dumps({"title": "ok2", "chunks": [{"text": "b", "embedding": [0, 1]}]}),
    ]
    response = http.post(
        f"/v1/libraries/{lib['id']}/documents/stream",
        content=("\n".join(lines) + "\n").encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    answers = [json.loads(line) for line in response.text.splitlines()]
    assert [a.get("success") for a in answers[:4]] == [True, False, False, True]
    assert answers[1]["code"] == "limit_exceeded"
    assert (answers[2]["code"], answers[2]["field"]) == ("invalid_argument", "metadata.n")
    assert answers[4]["summary"]["added"] == 2


def test_in_process_the_same_inputs_raise_the_same_errors() -> None:
    import arrwdb

    with arrwdb.open() as db:
        lib = db.create_library("hard", dimension=2, index="flat")
        with pytest.raises(InvalidArgumentError) as info:
            lib.add_document(
                title="t", chunks=[{"text": "a", "embedding": [1, 0]}], metadata={"n": 2**64}
            )
        assert info.value.details["field"] == "metadata.n"
        with pytest.raises(LimitExceededError) as deep:
            lib.search([1.0, 0.0], k=1, filter=nested_not(FILTER_DEPTH + 1))
        assert deep.value.code == "limit_exceeded"


@pytest.mark.parametrize("bad", ["a/b", "tab\there", "new\nline"])
def test_a_document_id_a_url_cannot_carry_is_refused(http: httpx.Client, bad: str) -> None:
    lib = create_library(http, dimension=2)
    response = http.post(
        f"/v1/libraries/{lib['id']}/documents",
        json={"id": bad, "title": "t", "chunks": [{"text": "a", "embedding": [1, 0]}]},
    )
    assert response.status_code == 422
    assert (response.json()["code"], response.json()["field"]) == ("invalid_argument", "id")


def test_sse_requests_reset_before_the_stream_starts_leave_nothing_behind(
    server: BackgroundServer, library: dict[str, Any]
) -> None:
    """Clients that ask for a stream and reset the connection at once: every subscription
    made for them is let go, and the statistics count SSE streams."""
    before = len(server.runtime.streams)
    request = (
        f"GET /v1/libraries/{library['id']}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    ).encode()
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(request)
        sock.close()  # RST at once
    with httpx.Client(base_url=server.url) as http:
        # The server may still be taking some of those connections when the first look comes:
        # wait until nothing is left open for a whole second, both inside and in the statistics.
        deadline, quiet_since = time.monotonic() + 20, time.monotonic()
        while time.monotonic() < deadline:
            stats = http.get("/v1/websockets/stats").json()
            if len(server.runtime.streams) > before or stats["sse_streams"] > before:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 1.0:
                break
            time.sleep(0.05)
        assert len(server.runtime.streams) == before
        assert stats["sse_streams"] == before
        with http.stream("GET", f"/v1/libraries/{library['id']}/events") as stream:
            assert stream.status_code == 200
            opened = http.get("/v1/websockets/stats").json()
            assert opened["sse_streams"] == before + 1
            assert opened["sse_streams_by_library"][library["id"]] >= 1


def test_stored_sizes_and_counts_are_limited(make_server: Any) -> None:
    live = make_server(
        max_metadata_bytes=1000, max_text_bytes=5000, max_dimension=8, max_libraries=3
    )
    with httpx.Client(base_url=live.url) as http:
        lib = create_library(http, dimension=4)["id"]
        docs = f"/v1/libraries/{lib}/documents"
        big_meta = {"title": "t", "text": "a", "metadata": {"blob": "x" * 2000}}
        problem = http.post(docs, json=big_meta).json()
        assert (problem["status"], problem["code"], problem["field"]) == (
            413,
            "payload_too_large",
            "metadata",
        )
        assert "max_metadata_bytes" in problem["detail"]
        chunk_meta = {
            "title": "t",
            "chunks": [{"text": "a", "embedding": [1, 0, 0, 0], "metadata": {"b": "y" * 2000}}],
        }
        assert http.post(docs, json=chunk_meta).status_code == 413
        big_text = http.post(docs, json={"title": "t", "text": "word " * 2000}).json()
        assert (big_text["status"], big_text["field"]) == (413, "text")
        assert "max_text_bytes" in big_text["detail"]
        chunks = [{"text": "z" * 3000, "embedding": [1, 0, 0, 0]} for _ in range(2)]
        assert http.post(docs, json={"title": "t", "chunks": chunks}).status_code == 413
        assert (
            http.post(docs, json={"title": "ok", "text": "small", "metadata": {"a": 1}}).status_code
            == 201
        )
        patched = http.get(docs).json()["documents"][0]["id"]
        r = http.patch(f"{docs}/{patched}", json={"metadata": {"blob": "x" * 2000}})
        assert r.status_code == 413
        wide = http.post("/v1/libraries", json={"name": "wide", "dimension": 9}).json()
        assert (wide["status"], wide["code"], wide["field"]) == (422, "limit_exceeded", "dimension")
        unfixed = create_library(http)["id"]
        r = http.post(
            f"/v1/libraries/{unfixed}/documents",
            json={"title": "t", "chunks": [{"text": "a", "embedding": [1.0] * 9}]},
        )
        assert (r.status_code, r.json()["code"]) == (422, "limit_exceeded")
        create_library(http)
        full = http.post("/v1/libraries", json={"name": "one-too-many"}).json()
        assert (full["status"], full["code"]) == (422, "limit_exceeded")
        assert "max_libraries" in full["detail"]
        # one such NDJSON line fails alone; on a WebSocket the answer is an error response
        lines = [
            json.dumps({"title": "a", "text": "a"}),
            json.dumps(big_meta),
            json.dumps({"title": "b", "text": "b"}),
        ]
        r = http.post(
            f"{docs}/stream",
            content="\n".join(lines) + "\n",
            headers={"content-type": "application/x-ndjson"},
        )
        answers = [json.loads(line) for line in r.text.splitlines()]
        assert [a.get("success") for a in answers[:3]] == [True, False, True]
        assert answers[1]["code"] == "payload_too_large"
    with ws_client.connect(f"{live.ws_url}/v1/libraries/{lib}/ws") as ws:
        json.loads(ws.recv())
        ws.send(json.dumps({"type": "request", "action": "add", "request_id": 1, "data": big_meta}))
        answer = json.loads(ws.recv())
        assert (answer["success"], answer["code"]) == (False, "payload_too_large")


def test_hits_carry_only_what_include_names(http: httpx.Client) -> None:
    lib = create_library(http, dimension=2)["id"]
    doc = {"title": "t", "metadata": {"m": 1}, "chunks": [{"text": "hello", "embedding": [1, 0]}]}
    assert http.post(f"/v1/libraries/{lib}/documents", json=doc).status_code == 201
    url = f"/v1/libraries/{lib}/search"
    query = {"query_vector": [1, 0], "k": 1}
    full = http.post(url, json=query).json()["results"][0]
    assert (full["text"], full["metadata"]) == ("hello", {"m": 1})
    assert "embedding" not in full
    bare = http.post(url, json=query | {"include": []}).json()["results"][0]
    assert "text" not in bare
    assert "metadata" not in bare
    assert bare["chunk_id"] == full["chunk_id"]
    vectors = http.post(url, json=query | {"include": ["embedding"]}).json()["results"][0]
    assert vectors["embedding"] == [1.0, 0.0]
    assert "text" not in vectors
    bad = http.post(url, json=query | {"include": ["everything"]}).json()
    assert (bad["status"], bad["field"]) == (422, "include[0]")


def test_the_websocket_size_limit_counts_bytes(make_server: Any) -> None:
    """A message of 3-byte characters under the limit in characters but over it in bytes."""
    live = make_server(max_ws_message_bytes=3000)
    with httpx.Client(base_url=live.url) as http:
        lib = create_library(http)["id"]
    with ws_client.connect(f"{live.ws_url}/v1/libraries/{lib}/ws") as ws:
        json.loads(ws.recv())
        text = "€" * 1500  # 1,500 characters, 4,500 bytes
        ws.send(
            json.dumps(
                {
                    "type": "request",
                    "action": "search",
                    "request_id": 1,
                    "data": {"query_text": text},
                },
                ensure_ascii=False,
            )
        )
        answer = json.loads(ws.recv())
        assert answer["code"] == "payload_too_large"
        ws.send(
            json.dumps(
                {
                    "type": "request",
                    "action": "search",
                    "request_id": 2,
                    "data": {"query_text": "€"},
                },
                ensure_ascii=False,
            )
        )
        assert json.loads(ws.recv())["success"] is True  # the socket stays open


def test_messages_name_what_is_wrong(http: httpx.Client, library: dict[str, Any]) -> None:
    empty = http.post("/v1/libraries", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 400
    assert "empty" in empty.json()["detail"]
    doc = {"id": "same", "title": "t", "chunks": [{"text": "a", "embedding": [1.0, 0.0]}]}
    twice = http.post(f"/v1/libraries/{library['id']}/documents", json=[doc, doc]).json()
    assert twice["status"] == 409
    assert "'same' is given twice" in twice["detail"]


def test_a_client_sending_headers_slowly_is_cut(make_server: Any) -> None:
    live = make_server(header_timeout=1.0)
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no end of headers
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 3
    with httpx.Client(base_url=live.url) as http:  # whole requests are served as before
        assert http.get("/v1/health").status_code == 200


@pytest.mark.parametrize("bad", ["١٢٣", "9" * 5000, "-1", "1.5", "²"])
def test_event_ids_and_cursors_that_are_not_numbers_are_422(
    http: httpx.Client, library: dict[str, Any], bad: str
) -> None:
    lib = library["id"]
    assert http.get(f"/v1/libraries/{lib}/events", params={"since": bad}).status_code == 422
    resumed = http.get(f"/v1/libraries/{lib}/events", headers=[(b"Last-Event-ID", bad.encode())])
    assert resumed.status_code == 422
    assert http.get(f"/v1/libraries/{lib}/documents", params={"cursor": bad}).status_code == 422
    assert http.get(f"/v1/libraries/{lib}", params={"min_event_id": bad}).status_code == 422


def test_connections_beyond_the_cap_are_503(make_server: Any) -> None:
    live = make_server(max_connections=3)
    held = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        with httpx.Client(base_url=live.url) as http:
            assert http.get("/v1/health").status_code == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with httpx.Client(base_url=live.url) as http:
        assert http.get("/v1/health").status_code == 200
