"""Several servers over one PostgreSQL schema: one change stream everywhere, resume on any
server, reads that wait for a write made elsewhere, rules that hold across servers, followers
that converge without notifications and after a lost connection.

Each server is a whole arrwDB (its own container: store, projection, hub, transports) on its
own loopback port, in this process."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import httpx
import websockets.sync.client as ws_client
from httpx_sse import connect_sse

import pg
from conftest import Node

DIM = 4


def vector(i: int) -> list[float]:
    return [float(i % 7) + 1.0, float(i % 5), float(i % 3), 1.0]


def document(title: str, i: int) -> dict[str, Any]:
    return {"title": title, "chunks": [{"text": title, "embedding": vector(i)}]}


def create_library(node: Node, name: str | None = None) -> tuple[str, str]:
    """A library (flat index), and the id of its creation event."""
    with node.http() as http:
        body = {"name": name or f"lib-{uuid.uuid4().hex[:8]}", "dimension": DIM, "index": "flat"}
        response = http.post("/v1/libraries", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"], response.headers["arrwdb-event-id"]


class SSEReader(threading.Thread):
    """Reads a library's SSE stream (from ``since``) until it has ``want`` events."""

    def __init__(self, url: str, want: int, since: str | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.want, self.since = url, want, since
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        headers = {"Last-Event-ID": self.since} if self.since else {}
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10, read=60)) as http,
                connect_sse(http, "GET", self.url, headers=headers) as source,
            ):
                self.ready.set()
                for sse in source.iter_sse():
                    if not sse.data:
                        continue
                    self.events.append(json.loads(sse.data))
                    if len(self.events) >= self.want:
                        return
        except Exception as exc:
            self.error = repr(exc)
        finally:
            self.ready.set()


def test_every_server_streams_the_same_events_for_writers_on_all_of_them(cluster) -> None:  # type: ignore[no-untyped-def]
    nodes = [cluster() for _ in range(3)]
    library_id, created = create_library(nodes[0])
    per_writer = 15
    # writes: 15 REST adds, 3 NDJSON requests of 5 lines, 15 WS adds, 15 REST patches
    expected = 4 * per_writer
    readers = [
        SSEReader(f"{n.url}/v1/libraries/{library_id}/events", expected, since=created)
        for n in nodes
    ]
    for reader in readers:
        reader.start()
        assert reader.ready.wait(10)
    acked: dict[str, list[str]] = {"rest": [], "ndjson": [], "ws": [], "patch": []}
    with nodes[0].http() as http:  # the patches' documents
        ids = [
            http.post(f"/v1/libraries/{library_id}/documents", json=document(f"p{i}", i)).json()[
                "id"
            ]
            for i in range(per_writer)
        ]
    expected += per_writer
    for reader in readers:
        reader.want = expected

    def rest() -> None:
        with nodes[0].http() as http:
            for i in range(per_writer):
                r = http.post(f"/v1/libraries/{library_id}/documents", json=document(f"r{i}", i))
                assert r.status_code == 201, r.text
                acked["rest"].append(r.headers["arrwdb-event-id"])

    def ndjson() -> None:
        with nodes[1].http() as http:
            for b in range(3):
                lines = "".join(json.dumps(document(f"n{b}-{i}", i)) + "\n" for i in range(5))
                r = http.post(
                    f"/v1/libraries/{library_id}/documents/stream",
                    content=lines.encode(),
                    headers={"content-type": "application/x-ndjson"},
                )
                for line in r.text.splitlines():
                    answer = json.loads(line)
                    if answer.get("success"):
                        acked["ndjson"].append(answer["event_id"])

    def ws() -> None:
        url = f"{nodes[2].server.ws_url}/v1/libraries/{library_id}/ws"
        with ws_client.connect(url) as socket:
            welcome = json.loads(socket.recv(timeout=10))
            assert welcome["type"] == "system"
            assert int(welcome["event_id"]) >= int(created)
            for i in range(per_writer):
                request = {
                    "type": "request",
                    "action": "add",
                    "request_id": i,
                    "data": document(f"w{i}", i),
                }
                socket.send(json.dumps(request))
                while True:
                    answer = json.loads(socket.recv(timeout=30))
                    if answer.get("type") == "response":
                        break
                assert answer["success"], answer
                acked["ws"].append(answer["event_id"])

    def patch() -> None:
        for i, doc_id in enumerate(ids):
            with nodes[i % 3].http() as http:
                r = http.patch(
                    f"/v1/libraries/{library_id}/documents/{doc_id}", json={"title": f"q{i}"}
                )
                assert r.status_code == 200, r.text
                acked["patch"].append(r.headers["arrwdb-event-id"])

    writers = [threading.Thread(target=f) for f in (rest, ndjson, ws, patch)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    for reader in readers:
        reader.join(timeout=60)
        assert reader.error is None, reader.error
    streams = [[(e["id"], e["type"]) for e in reader.events] for reader in readers]
    assert len(streams[0]) == expected
    assert streams[0] == streams[1] == streams[2]
    ids_seen = [int(event_id) for event_id, _ in streams[0]]
    assert ids_seen == list(range(int(created) + 1, int(created) + 1 + expected))  # no gaps
    every_ack = [int(e) for kind in acked.values() for e in kind]
    assert len(every_ack) == 4 * per_writer
    assert len(set(every_ack)) == len(every_ack)  # one event per acknowledged write
    assert set(every_ack) <= set(ids_seen)
    patched = [t for event_id, t in streams[0] if event_id in set(acked["patch"])]
    assert patched == ["document.updated"] * per_writer


def test_a_stream_resumes_on_another_server(cluster) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster(), cluster()
    library_id, created = create_library(a)
    with a.http() as http:
        for i in range(5):
            http.post(f"/v1/libraries/{library_id}/documents", json=document(f"a{i}", i))
    first = SSEReader(f"{a.url}/v1/libraries/{library_id}/events", 3, since=created)
    first.start()
    first.join(timeout=30)
    last = first.events[-1]["id"]
    with b.http() as http:
        for i in range(3):
            r = http.post(f"/v1/libraries/{library_id}/documents", json=document(f"b{i}", i))
        final = r.headers["arrwdb-event-id"]
    want = int(final) - int(last)
    resumed = SSEReader(f"{b.url}/v1/libraries/{library_id}/events", want, since=last)
    resumed.start()
    resumed.join(timeout=30)
    assert [int(e["id"]) for e in resumed.events] == list(range(int(last) + 1, int(final) + 1))
    # the same over WebSocket, on the first server
    with ws_client.connect(f"{a.server.ws_url}/v1/libraries/{library_id}/ws") as socket:
        socket.recv(timeout=10)  # welcome
        socket.send(
            json.dumps(
                {"type": "request", "action": "subscribe", "request_id": 1, "data": {"since": last}}
            )
        )
        got: list[int] = []
        while len(got) < want:
            message = json.loads(socket.recv(timeout=30))
            if message.get("type") == "event":
                got.append(int(message["id"]))
        assert got == list(range(int(last) + 1, int(final) + 1))


def test_a_pruned_start_point_is_a_reset_on_any_server(cluster) -> None:  # type: ignore[no-untyped-def]
    a = cluster(history_size=20)
    library_id, _ = create_library(a)
    with a.http() as http:
        for i in range(40):
            http.post(f"/v1/libraries/{library_id}/documents", json=document(f"d{i}", i))
    a.container.store().prune()
    b = cluster(history_size=20)  # a fresh server: its memory holds nothing of the old events
    reader = SSEReader(f"{b.url}/v1/libraries/{library_id}/events", 1, since="3")
    reader.start()
    reader.join(timeout=30)
    assert reader.events[0]["type"] == "stream.reset"
    assert reader.events[0]["data"]["reason"] == "history_lost"
    assert reader.events[0]["data"]["requested"] == "3"


def test_a_read_on_another_server_waits_for_the_write_it_names(cluster) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster(), cluster()
    library_id, created = create_library(a)
    found = 0
    with a.http() as on_a, b.http() as on_b:
        assert on_b.get(f"/v1/libraries/{library_id}", params={"min_event_id": created}).is_success
        for i in range(100):
            added = on_a.post(
                f"/v1/libraries/{library_id}/documents", json=document(f"x{i}", i + 1000)
            )
            event_id = added.headers["arrwdb-event-id"]
            search = on_b.post(
                f"/v1/libraries/{library_id}/search",
                json={"query_vector": vector(i + 1000), "k": 200, "min_event_id": event_id},
            )
            assert search.status_code == 200, search.text
            if added.json()["id"] in {hit["document_id"] for hit in search.json()["results"]}:
                found += 1
        assert found == 100
        health = on_b.get("/v1/health").json()
        assert int(health["event_id"]) >= int(event_id)
        lagging = on_b.get(
            f"/v1/libraries/{library_id}", params={"min_event_id": str(int(event_id) + 1000)}
        )
    assert lagging.status_code == 503
    assert lagging.json()["code"] == "lagging"
    assert lagging.headers["retry-after"] == "1"


def test_rules_hold_across_servers(cluster) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster(), cluster()
    statuses: list[int] = []
    barrier = threading.Barrier(2)

    def create(node: Node) -> None:
        with node.http() as http:
            barrier.wait()
            r = http.post("/v1/libraries", json={"name": "taken", "dimension": DIM})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(statuses) == [201, 409]
    # concurrent PATCHes of one document on two servers: both acknowledged writes stand
    library_id, _ = create_library(a)
    for trial in range(20):
        _patch_race(a, b, library_id, trial)


def _patch_race(a: Node, b: Node, library_id: str, trial: int) -> None:
    """PATCH title on ``a`` and PATCH text on ``b`` at once: the document reflects both."""
    with a.http() as on_a:
        doc_id = on_a.post(
            f"/v1/libraries/{library_id}/documents", json=document("old", trial)
        ).json()["id"]
    barrier = threading.Barrier(2)
    events: list[str] = []
    url = f"/v1/libraries/{library_id}/documents/{doc_id}"

    def patch(node: Node, body: dict[str, Any]) -> None:
        with node.http() as http:
            barrier.wait()
            r = http.patch(url, json=body)
            assert r.status_code == 200
            events.append(r.headers["arrwdb-event-id"])

    text = {"chunks": [{"text": "new", "embedding": vector(3)}]}
    threads = [
        threading.Thread(target=patch, args=(a, {"title": f"t{trial}"})),
        threading.Thread(target=patch, args=(b, text)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(events) == 2
    with b.http() as on_b:
        doc = on_b.get(url, params={"min_event_id": max(events, key=int)}).json()
    assert doc["title"] == f"t{trial}"
    assert [c["text"] for c in doc["chunks"]] == ["new"]


def test_followers_converge_by_polling_and_after_a_lost_connection(cluster) -> None:  # type: ignore[no-untyped-def]
    a = cluster(postgres_notify=False)
    b = cluster(postgres_notify=False)
    library_id, _ = create_library(a)
    with a.http() as http:
        r = http.post(f"/v1/libraries/{library_id}/documents", json=document("polled", 1))
        event_id = r.headers["arrwdb-event-id"]
    deadline = time.monotonic() + 10
    while int(b.server.runtime.service.last_event_id) < int(event_id):
        assert time.monotonic() < deadline, "b never caught up by polling"
        time.sleep(0.05)
    # cut b's connections to the database for 5 s while a writes
    name = b.container.store().application_name
    stop = threading.Event()

    def cut() -> None:
        with pg.connect() as admin:
            while not stop.is_set():
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (name,),
                )
                time.sleep(0.05)

    cutter = threading.Thread(target=cut)
    cutter.start()
    try:
        with a.http() as http:
            for i in range(10):
                r = http.post(f"/v1/libraries/{library_id}/documents", json=document(f"c{i}", i))
                assert r.status_code == 201
                event_id = r.headers["arrwdb-event-id"]
                time.sleep(0.5)
    finally:
        stop.set()
        cutter.join()
    with b.http() as http:
        r = http.get(
            f"/v1/libraries/{library_id}/documents",
            params={"min_event_id": event_id, "limit": 100},
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["documents"]) == 11
        assert http.get("/v1/health/ready").status_code == 200


def test_a_server_behind_the_database_by_more_than_max_lag_is_not_ready(cluster) -> None:  # type: ignore[no-untyped-def]
    a = cluster()
    b = cluster(postgres_notify=False, postgres_poll_interval=60, max_lag=3)
    library_id, _ = create_library(a)
    time.sleep(0.3)  # b's first read of the log is behind it: it reads again in 60 s
    with a.http() as on_a, b.http() as on_b:
        for i in range(2):
            on_a.post(f"/v1/libraries/{library_id}/documents", json=document(f"d{i}", i))
        assert on_b.get("/v1/health/ready").status_code == 200  # 3 behind: not more than 3
        on_a.post(f"/v1/libraries/{library_id}/documents", json=document("d2", 2))
        ready = on_b.get("/v1/health/ready")
    assert ready.status_code == 503
    assert "behind" in ready.json()["detail"]


def test_a_retried_write_answers_as_the_first_on_any_server(cluster) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster(), cluster()
    library_id, _ = create_library(a)
    url = f"/v1/libraries/{library_id}/documents"
    body = document("once", 1)
    with a.http() as on_a, b.http() as on_b:
        first = on_a.post(url, json=body, headers={"Idempotency-Key": "add-once"})
        again = on_b.post(url, json=body, headers={"Idempotency-Key": "add-once"})  # lost answer
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["arrwdb-event-id"] == first.headers["arrwdb-event-id"]
        listed = on_b.get(
            url, params={"min_event_id": first.headers["arrwdb-event-id"], "limit": 10}
        )
        assert [d["title"] for d in listed.json()["documents"]] == ["once"]  # written once
        other = on_b.post(
            url, json=document("different", 2), headers={"Idempotency-Key": "add-once"}
        )
        assert other.status_code == 422
        assert other.json()["code"] == "idempotency_mismatch"
    # the same over WebSocket (``idempotency_key`` in the request envelope)
    answers = []
    for node in (a, b):
        with ws_client.connect(f"{node.server.ws_url}/v1/libraries/{library_id}/ws") as socket:
            socket.recv(timeout=10)  # welcome
            request = {
                "type": "request",
                "action": "add",
                "request_id": "r",
                "idempotency_key": "ws-once",
                "data": document("by ws", 3),
            }
            socket.send(json.dumps(request))
            while True:
                answer = json.loads(socket.recv(timeout=30))
                if answer.get("type") == "response":
                    break
            answers.append(answer)
    assert answers[0]["success"], answers[0]
    assert answers[1] == answers[0]


def test_keys_are_shared_and_a_revocation_closes_streams_on_every_server(cluster) -> None:  # type: ignore[no-untyped-def]
    admin_key = "admin-" + uuid.uuid4().hex
    a, b = cluster(api_key=admin_key), cluster(api_key=admin_key)
    admin = {"Authorization": f"Bearer {admin_key}"}
    with a.http() as http:
        body = {"name": "shared", "dimension": DIM, "index": "flat"}
        library_id = http.post("/v1/libraries", json=body, headers=admin).json()["id"]
        made = http.post(
            "/v1/keys",
            json={"name": "k", "libraries": [library_id], "access": "read"},
            headers=admin,
        ).json()
    key = {"Authorization": f"Bearer {made['key']}"}
    with b.http() as http:  # made on a, known to b at once
        assert http.get(f"/v1/libraries/{library_id}", headers=key).status_code == 200
        with connect_sse(http, "GET", f"/v1/libraries/{library_id}/events", headers=key) as source:
            assert source.response.status_code == 200
            started = time.monotonic()
            with a.http() as other:
                assert other.delete(f"/v1/keys/{made['id']}", headers=admin).status_code == 204
            events = [json.loads(e.data) for e in source.iter_sse() if e.data]
            took = time.monotonic() - started
        assert events[-1]["type"] == "stream.closed"
        assert took < 1.0, f"the stream on the other server was closed after {took:.2f} s"
        assert http.get(f"/v1/libraries/{library_id}", headers=key).status_code == 401
