"""The data calls over REST, NDJSON and WebSocket against a real server: status codes (201/200
on PUT, 404, 422 naming the field, 400), the events each write leaves (read back from the SSE
stream with ``since``), idempotent retries, NDJSON upsert, merge-patched metadata under the
metadata limit, and searches grouped by document."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
import websockets
from httpx_sse import connect_sse

from arrwdb.server import BackgroundServer
from conftest import assert_problem, create_library, recv, request, ws_url

NDJSON = {"content-type": "application/x-ndjson"}


def vec(*values: float) -> list[float]:
    return [*values] + [0.0] * (4 - len(values))


def doc(title: str = "t", *, embedding: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    return {"title": title, "chunks": [{"text": title, "embedding": embedding or vec(1)}], **extra}


def last_event(http: httpx.Client) -> int:
    return int(http.get("/v1/health").json()["event_id"])


def events_after(http: httpx.Client, lib: str, since: int, through: int) -> list[tuple[str, str]]:
    """The ``(type, document_id)`` of the library's events after ``since`` up to ``through``."""
    out: list[tuple[str, str]] = []
    if through <= since:
        return out
    url = f"/v1/libraries/{lib}/events"
    with connect_sse(http, "GET", url, params={"since": str(since)}) as source:
        for event in source.iter_sse():
            body = json.loads(event.data)
            out.append((body["type"], body["data"].get("document_id", "")))
            if int(body["id"]) >= through:
                return out
    raise AssertionError("the stream ended early")


def event_id(response: httpx.Response) -> int:
    return int(response.headers["arrwdb-event-id"])


@pytest.fixture
def lib(http: httpx.Client) -> str:
    return str(create_library(http, dimension=4, index="flat")["id"])


def test_put_adds_then_replaces_with_its_events(http: httpx.Client, lib: str) -> None:
    base = f"/v1/libraries/{lib}/documents"
    before = last_event(http)
    made = http.put(f"{base}/paper-1", json=doc("first", metadata={"year": 2017}))
    assert made.status_code == 201, made.text
    assert (made.json()["id"], made.json()["title"]) == ("paper-1", "first")
    replaced = http.put(f"{base}/paper-1", json=doc("second", id="paper-1", embedding=vec(0, 1)))
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["metadata"] == {}  # replaced, not merged
    assert replaced.json()["created_at"] == made.json()["created_at"]
    assert event_id(replaced) == event_id(made) + 1
    assert events_after(http, lib, before, event_id(replaced)) == [
        ("document.added", "paper-1"),
        ("document.updated", "paper-1"),
    ]
    got = http.get(f"{base}/paper-1").json()
    assert (got["title"], got["chunks"][0]["text"]) == ("second", "second")
    assert "embedding" not in got["chunks"][0]  # no embeddings unless asked for
    listed = http.get(base).json()
    assert [d["id"] for d in listed["documents"]] == ["paper-1"]


def test_put_errors(http: httpx.Client, lib: str) -> None:
    base = f"/v1/libraries/{lib}/documents"
    problem = assert_problem(http.put(f"{base}/a", json=doc(id="b")), 422, "invalid_argument")
    assert problem["field"] == "id"
    assert_problem(http.put("/v1/libraries/nope/documents/a", json=doc()), 404, "not_found")
    problem = assert_problem(http.put(f"{base}/a", json={"title": "x"}), 422, "invalid_argument")
    assert problem["field"] == "text"
    long_id = "x" * 300
    problem = assert_problem(http.put(f"{base}/{long_id}", json=doc()), 422, "invalid_argument")
    assert problem["field"] == "id"
    bad = http.put(f"{base}/a", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(bad, 400, "bad_request")
    reserved = http.post(base, json=doc(id="query"))
    assert assert_problem(reserved, 422, "invalid_argument")["field"] == "id"


def test_put_is_idempotent_with_a_key(http: httpx.Client, lib: str) -> None:
    url = f"/v1/libraries/{lib}/documents/k1"
    key = {"Idempotency-Key": "put-k1"}
    first = http.put(url, json=doc("one"), headers=key)
    again = http.put(url, json=doc("one"), headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert event_id(again) == event_id(first)
    assert last_event(http) == event_id(first)  # nothing written
    other = http.put(url, json=doc("two"), headers=key)
    assert assert_problem(other, 422, "idempotency_mismatch")["field"] == "Idempotency-Key"


def test_query_by_ids_and_by_filter(http: httpx.Client, lib: str) -> None:
    base = f"/v1/libraries/{lib}/documents"
    for i in range(7):
        assert http.put(f"{base}/d{i}", json=doc(f"t{i}", metadata={"n": i})).status_code == 201
    by_ids = http.post(f"{base}/query", json={"ids": ["d3", "nope", "d1", "d3"]}).json()
    assert [d["id"] for d in by_ids["documents"]] == ["d3", "d1"]
    assert by_ids["next_cursor"] is None
    assert all("chunks" not in d for d in by_ids["documents"])
    both = http.post(f"{base}/query", json={"ids": ["d5", "d1", "d6"], "filter": {"n": {"$gt": 2}}})
    assert [d["id"] for d in both.json()["documents"]] == ["d5", "d6"]
    seen: list[str] = []
    body: dict[str, Any] = {"filter": {"n": {"$gte": 2}}, "limit": 2}
    while True:
        page = http.post(f"{base}/query", json=body).json()
        assert len(page["documents"]) <= 2
        seen += [d["id"] for d in page["documents"]]
        if page["next_cursor"] is None:
            break
        body["cursor"] = page["next_cursor"]
    assert seen == ["d2", "d3", "d4", "d5", "d6"]
    everything = http.post(f"{base}/query", json={}).json()
    assert len(everything["documents"]) == 7
    assert http.post(f"{base}/count", json={}).json() == {"count": 7}
    assert http.post(f"{base}/count", json={"filter": {"n": {"$lt": 3}}}).json() == {"count": 3}


def test_query_and_count_errors(http: httpx.Client, lib: str) -> None:
    base = f"/v1/libraries/{lib}/documents"
    cases: list[tuple[str, dict[str, Any], int, str, str | None]] = [
        ("query", {"ids": "d1"}, 422, "invalid_argument", "ids"),
        ("query", {"ids": [str(i) for i in range(1001)]}, 422, "invalid_argument", "ids"),
        ("query", {"limit": 0}, 422, "invalid_argument", "limit"),
        ("query", {"cursor": "nonsense"}, 422, "invalid_argument", "cursor"),
        ("query", {"ids": ["a"], "cursor": "12"}, 422, "invalid_argument", "cursor"),
        ("query", {"filter": {"n": {"$near": 1}}}, 422, "invalid_filter", "n"),
        ("count", {"filter": []}, 422, "invalid_filter", "filter"),
        ("delete", {}, 422, "invalid_argument", "ids"),
        ("delete", {"ids": ["a"], "filter": {}}, 422, "invalid_argument", "filter"),
        ("delete", {"filter": {"$bad": 1}}, 422, "invalid_filter", None),
    ]
    for route, body, status, code, field in cases:
        problem = assert_problem(http.post(f"{base}/{route}", json=body), status, code)
        assert problem.get("field") == field, (route, body, problem)
    for route in ("query", "count", "delete"):
        assert_problem(
            http.post(f"/v1/libraries/nope/documents/{route}", json={"ids": []}), 404, "not_found"
        )
        bad = http.post(
            f"{base}/{route}", content=b"[", headers={"content-type": "application/json"}
        )
        assert_problem(bad, 400, "bad_request")


def test_delete_by_ids_and_by_filter(http: httpx.Client, lib: str) -> None:
    base = f"/v1/libraries/{lib}/documents"
    for i in range(6):
        http.put(f"{base}/d{i}", json=doc(metadata={"even": i % 2 == 0}))
    before = last_event(http)
    gone = http.post(f"{base}/delete", json={"filter": {"even": True}})
    assert gone.status_code == 200
    assert gone.json() == {"deleted": 3}
    assert event_id(gone) == before + 3  # one commit, one event each
    assert events_after(http, lib, before, event_id(gone)) == [
        ("document.deleted", "d0"),
        ("document.deleted", "d2"),
        ("document.deleted", "d4"),
    ]
    by_ids = http.post(f"{base}/delete", json={"ids": ["d1", "d1", "d2", "nope"]})
    assert by_ids.json() == {"deleted": 1}
    assert event_id(by_ids) == event_id(gone) + 1
    nothing = http.post(f"{base}/delete", json={"ids": ["nope"]})
    assert nothing.json() == {"deleted": 0}
    assert event_id(nothing) == event_id(by_ids)  # nothing written
    assert http.post(f"{base}/count", json={}).json() == {"count": 2}
    assert http.post(f"{base}/delete", json={"filter": {}}).json() == {"deleted": 2}


def test_patch_merges_metadata_within_the_limit(
    make_server: Callable[..., BackgroundServer],
) -> None:
    live = make_server(max_metadata_bytes=100)
    with httpx.Client(base_url=live.url) as http:
        lib = create_library(http, dimension=4)["id"]
        url = f"/v1/libraries/{lib}/documents/m"
        http.put(url, json=doc(metadata={"a": 1, "b": "x", "c": [1, 2]}))
        merged = http.patch(url, json={"metadata": {"a": None, "b": "y", "d": True}})
        assert merged.status_code == 200
        assert merged.json()["metadata"] == {"b": "y", "c": [1, 2], "d": True}
        assert http.get(url).json()["metadata"] == {"b": "y", "c": [1, 2], "d": True}
        unchanged = http.patch(url, json={"metadata": {"b": "y"}})
        assert event_id(unchanged) == event_id(merged)  # the same: nothing written
        too_big = http.patch(url, json={"metadata": {"e": "z" * 95}})
        problem = assert_problem(too_big, 413, "payload_too_large")
        assert problem["field"] == "metadata"
        # what the patch removes makes room: the result is what is measured
        fits = http.patch(url, json={"metadata": {"b": None, "c": None, "d": None, "e": "z" * 90}})
        assert fits.status_code == 200, fits.text
        assert fits.json()["metadata"] == {"e": "z" * 90}
        assert_problem(
            http.patch(f"/v1/libraries/{lib}/documents/nope", json={"metadata": {}}),
            404,
            "not_found",
        )


def test_ndjson_upsert_can_run_again(http: httpx.Client, lib: str) -> None:
    lines = [json.dumps(doc(f"t{i}", id=f"n{i}")) for i in range(3)] + [json.dumps(doc("anon"))]
    body = ("\n".join(lines) + "\n").encode()
    url = f"/v1/libraries/{lib}/documents/stream"

    def upsert() -> list[dict[str, Any]]:
        answer = http.post(url, params={"upsert": "true"}, content=body, headers=NDJSON)
        assert answer.status_code == 200, answer.text
        return [json.loads(x) for x in answer.text.splitlines()]

    before = last_event(http)
    first = upsert()
    assert first.pop()["summary"]["failed"] == 0
    assert [a["success"] for a in first] == [True] * 4
    middle = int(first[-1]["event_id"])
    again = upsert()
    summary = again.pop()["summary"]
    assert (summary["received"], summary["failed"]) == (4, 0)
    assert [a["document_id"] for a in again[:3]] == ["n0", "n1", "n2"]
    events = events_after(http, lib, before, int(again[-1]["event_id"]))
    assert [t for t, _ in events] == ["document.added"] * 4 + ["document.updated"] * 3 + [
        "document.added"  # the line without an id: a new document each time
    ]
    assert int(again[0]["event_id"]) == middle + 1
    plain = http.post(url, content=body, headers=NDJSON).text.splitlines()  # without upsert
    assert [json.loads(x).get("code") for x in plain[:3]] == ["already_exists"] * 3
    assert http.post(f"/v1/libraries/{lib}/documents/count", json={}).json() == {"count": 6}


# -- search grouped by document -----------------------------------------------------------------


def _long_and_short(http: httpx.Client, index: str) -> str:
    lib = str(create_library(http, dimension=4, index=index)["id"])
    long = {
        "title": "long",
        "metadata": {"kind": "book"},
        "chunks": [{"text": f"c{i}", "embedding": vec(1, 0.001 * i)} for i in range(300)],
    }
    assert http.put(f"/v1/libraries/{lib}/documents/long", json=long).status_code == 201
    for i in range(5):
        short = doc(f"s{i}", embedding=vec(1, 0.5 + i * 0.1), metadata={"kind": "note", "i": i})
        assert http.put(f"/v1/libraries/{lib}/documents/s{i}", json=short).status_code == 201
    return lib


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_group_by_document(http: httpx.Client, index: str) -> None:
    lib = _long_and_short(http, index)
    url = f"/v1/libraries/{lib}/search"
    plain = http.post(url, json={"query_vector": vec(1), "k": 4}).json()["results"]
    assert {h["document_id"] for h in plain} == {"long"}  # its chunks fill the top 4
    grouped = http.post(url, json={"query_vector": vec(1), "k": 4, "group_by": "document"})
    hits = grouped.json()["results"]
    assert [h["document_id"] for h in hits] == ["long", "s0", "s1", "s2"]
    assert hits[0]["chunk_id"] == plain[0]["chunk_id"]  # the document's best chunk
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    filtered = http.post(
        url,
        json={
            "query_vector": vec(1),
            "k": 10,
            "group_by": "document",
            "filter": {"kind": "note"},
            "include": ["metadata"],
        },
    ).json()["results"]
    assert [h["document_id"] for h in filtered] == [f"s{i}" for i in range(5)]
    assert all("text" not in h and h["metadata"]["kind"] == "note" for h in filtered)
    bad = http.post(url, json={"query_vector": vec(1), "group_by": "chunk"})
    assert assert_problem(bad, 422, "invalid_argument")["field"] == "group_by"


def test_group_by_over_ndjson_and_websocket(http: httpx.Client, server: BackgroundServer) -> None:
    lib = _long_and_short(http, "hnsw")
    line = json.dumps({"query_vector": vec(1), "k": 3, "group_by": "document"}) + "\n"
    answer = http.post(f"/v1/libraries/{lib}/search/stream", content=line, headers=NDJSON)
    hits = json.loads(answer.text.splitlines()[0])["results"]
    assert [h["document_id"] for h in hits] == ["long", "s0", "s1"]

    async def over_ws() -> list[str]:
        async with websockets.connect(ws_url(server, lib)) as ws:
            await recv(ws)  # the welcome
            data = {"query_vector": vec(1), "k": 3, "group_by": "document"}
            await ws.send(request("search", "g", data))
            while True:
                message = await recv(ws)
                if message.get("request_id") == "g":
                    assert message["success"], message
                    return [h["document_id"] for h in message["data"]["results"]]

    assert anyio.run(over_ws) == ["long", "s0", "s1"]
