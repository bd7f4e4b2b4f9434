"""Inputs that once crashed a request or a connection: JSON nested past what the decoder follows,
filters nested past their limit, metadata integers no store can keep. Each is a 422 naming the
limit or the field on every way in, the connection stays open, and one bad NDJSON line fails
alone. The largest input allowed is served while liveness keeps answering."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client as ws_client
from processes import ServerProcess

from arrwdb.config import Settings
from arrwdb.domain.errors import InvalidArgumentError, LimitExceededError
from arrwdb.domain.limits import FILTER_DEPTH
from arrwdb.server import BackgroundServer
from conftest import assert_problem, create_library

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


@pytest.fixture(params=["memory", "disk"])
def stored(request: pytest.FixtureRequest, make_server: Any, tmp_path: Path) -> BackgroundServer:
    """A server of its own on each kind of local store."""
    live: BackgroundServer = make_server(storage=request.param, data_dir=str(tmp_path / "data"))
    return live


def _doc(**fields: Any) -> dict[str, Any]:
    return {"title": "t", "chunks": [{"text": "a", "embedding": [1, 0]}], **fields}


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, 2**70]])
def test_metadata_integers_beyond_64_bits_are_refused(
    stored: BackgroundServer, value: object
) -> None:
    """Every way metadata comes in over REST, on every local store: a 422 naming the field
    and the bounds, and nothing written."""
    with httpx.Client(base_url=stored.url) as http:
        lib = create_library(http, dimension=2)["id"]
        docs = f"/v1/libraries/{lib}/documents"
        kept = http.post(docs, json=_doc(metadata={"n": 1})).json()["id"]
        chunk = {"text": "a", "embedding": [1, 0], "metadata": {"n": value}}
        calls: list[tuple[str, str, dict[str, Any], str]] = [
            ("POST", "/v1/libraries", {"name": uuid.uuid4().hex, "metadata": {"n": value}}, ""),
            ("PATCH", f"/v1/libraries/{lib}", {"metadata": {"n": value}}, ""),
            ("POST", docs, _doc(metadata={"n": value}), ""),
            ("POST", docs, _doc(chunks=[chunk]), "chunks[0]."),
            ("PUT", f"{docs}/new", _doc(metadata={"n": value}), ""),
            ("PUT", f"{docs}/{kept}", _doc(metadata={"n": value}), ""),
            ("PATCH", f"{docs}/{kept}", {"metadata": {"n": value}}, ""),
        ]
        for method, path, body, prefix in calls:
            problem = assert_problem(http.request(method, path, json=body), 422, "invalid_argument")
            assert problem["field"] == f"{prefix}metadata.n", (method, path, problem)
            assert f"{prefix}metadata.n" in problem["detail"]
            assert "-2**63 to 2**64 - 1" in problem["detail"]
        assert len(http.get("/v1/libraries").json()["libraries"]) == 1
        assert http.get(f"/v1/libraries/{lib}").json()["metadata"] == {}
        assert [(d["id"], d["metadata"]) for d in http.get(docs).json()["documents"]] == [
            (kept, {"n": 1})
        ]


def test_the_largest_64_bit_integers_are_kept(stored: BackgroundServer, make_server: Any) -> None:
    metadata = {"low": -(2**63), "high": 2**64 - 1, "both": [-(2**63), 2**64 - 1]}
    with httpx.Client(base_url=stored.url) as http:
        lib = create_library(http, dimension=2)["id"]
        response = http.post(f"/v1/libraries/{lib}/documents", json=_doc(metadata=metadata))
        assert response.status_code == 201, response.text
        assert response.json()["metadata"] == metadata
        doc = f"/v1/libraries/{lib}/documents/{response.json()['id']}"
        assert http.get(doc).json()["metadata"] == metadata
    if stored.settings.storage == "disk":  # and read back from the disk after a restart
        stored.stop()
        again = make_server(storage="disk", data_dir=stored.settings.data_dir)
        with httpx.Client(base_url=again.url) as http:
            assert http.get(doc).json()["metadata"] == metadata


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


def test_one_bad_ndjson_line_fails_alone(stored: BackgroundServer) -> None:
    """Lines of one body (one batch): a line too deep and lines with integers beyond 64 bits
    (in the document's metadata, in a chunk's) fail alone; the others around them are added."""
    lines = [
        json.dumps(_doc(title="ok1")),
        '{"title": "deep", "text": "a", "metadata": {"a": ' + DEEP_JSON + "}}",
        json.dumps(_doc(title="big", metadata={"n": 2**70})),
        json.dumps(_doc(title="ok2")),
        json.dumps(
            _doc(
                title="small",
                chunks=[{"text": "b", "embedding": [0, 1], "metadata": {"m": -(2**64)}}],
            )
        ),
        json.dumps(_doc(title="ok3", metadata={"n": 2**64 - 1})),
    ]
    with httpx.Client(base_url=stored.url) as http:
        lib = create_library(http, dimension=2)["id"]
        response = http.post(
            f"/v1/libraries/{lib}/documents/stream",
            content=("\n".join(lines) + "\n").encode(),
            headers={"content-type": "application/x-ndjson"},
        )
        answers = [json.loads(line) for line in response.text.splitlines()]
        assert [a.get("success") for a in answers[:6]] == [True, False, False, True, False, True]
        assert answers[1]["code"] == "limit_exceeded"
        assert (answers[2]["code"], answers[2]["field"]) == ("invalid_argument", "metadata.n")
        assert (answers[4]["code"], answers[4]["field"]) == (
            "invalid_argument",
            "chunks[0].metadata.m",
        )
        assert answers[6]["summary"]["added"] == 3
        listed = http.get(f"/v1/libraries/{lib}/documents").json()["documents"]
        assert sorted(d["title"] for d in listed) == ["ok1", "ok2", "ok3"]
        added = {a["document_id"] for a in answers[:6] if a.get("success")}
        assert {d["id"] for d in listed} == added


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


def test_health_answers_while_the_largest_text_document_is_added() -> None:
    """One client adds a document of the largest text allowed (``max_text_bytes``: chunked,
    embedded and indexed on the server) while another asks ``/v1/health`` (liveness) again and
    again: every answer comes within 2 s (a loose bound; the figures are printed). The server
    runs in its own process, so the client's timing is not the server's."""
    limit = Settings().max_text_bytes  # what the server below runs with
    words = " ".join(f"w{i % 5000}x{i % 7}" for i in range(limit // 4))
    text = words.encode()[:limit].decode()
    assert len(text.encode()) == limit
    server = ServerProcess(["--storage", "memory"])
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            lib = create_library(http)["id"]
            docs = f"/v1/libraries/{lib}/documents"
            too_big = http.post(docs, json={"title": "t", "text": text + "x"})
            assert (too_big.status_code, too_big.json()["field"]) == (413, "text")
            outcome: dict[str, Any] = {}

            def add() -> None:
                started = time.perf_counter()
                with httpx.Client(base_url=server.url, timeout=120) as writer:
                    outcome["answer"] = writer.post(docs, json={"title": "big", "text": text})
                outcome["seconds"] = time.perf_counter() - started

            adding = threading.Thread(target=add)
            adding.start()
            latencies = []
            while adding.is_alive():
                started = time.perf_counter()
                assert http.get("/v1/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)
            adding.join()
        answer = outcome["answer"]
        assert answer.status_code == 201, answer.text
        assert answer.json()["num_chunks"] > 1000
    finally:
        server.stop()
    latencies.sort()
    print(
        f"adding {limit} bytes of text took {outcome['seconds']:.1f} s; /v1/health answered "
        f"{len(latencies)} times, median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"slowest {latencies[-1] * 1000:.1f} ms"
    )
    assert len(latencies) >= 10  # asked throughout the work
    assert latencies[-1] < 2.0
