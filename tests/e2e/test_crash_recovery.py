"""kill -9 a durable server while clients ingest over NDJSON; nothing acknowledged may be lost.

Each trial: start ``arrwdb serve --storage disk`` on the same data directory, let several
clients ingest concurrently (each request a few NDJSON lines), while an SSE client follows the
library's change stream; SIGKILL the server at a random moment; restart it and check that
- every document whose success line a client received is present and searchable,
- the SSE stream resumed with the last id seen before the kill delivers exactly the missed
  events (consecutive ids, no duplicates, covering every acknowledged document not yet seen),
- event ids go on increasing after the restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from processes import ServerProcess, ingest_until_stopped, key_vector

TRIALS = int(os.environ.get("ARRWDB_CRASH_TRIALS", "20"))
CLIENTS = 4
DIM = 16

pytestmark = pytest.mark.slow


class Server(ServerProcess):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(["--storage", "disk", "--data-dir", str(data_dir)])
        self.data_dir = data_dir


def _vector(key: str) -> list[float]:
    return key_vector(key, DIM)


def _ingest(
    url: str, library_id: str, client: int, trial: int, acked: dict[str, str], stop: threading.Event
) -> None:
    ingest_until_stopped(url, library_id, f"t{trial}-c{client}", DIM, acked, stop)


def _follow(
    url: str, library_id: str, since: str | None, seen: list[dict[str, Any]], ready: threading.Event
) -> None:
    headers = {"Last-Event-ID": since} if since else {}
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=None)) as http,
            connect_sse(
                http, "GET", f"{url}/v1/libraries/{library_id}/events", headers=headers
            ) as source,
        ):
            ready.set()
            for sse in source.iter_sse():
                if sse.event and sse.data:
                    seen.append(json.loads(sse.data))
    except (httpx.TransportError, httpx.RemoteProtocolError):
        return
    finally:
        ready.set()


def test_no_acknowledged_write_is_lost_across_kill_9(tmp_path: Path) -> None:
    rng = random.Random(1234)
    data_dir = tmp_path / "data"
    acked: dict[str, str] = {}
    last_seen_id: str | None = None
    resume_threads: list[threading.Thread] = []
    server = Server(data_dir)
    server.start()
    try:
        library_id = httpx.post(
            f"{server.url}/v1/libraries", json={"name": "crash", "dimension": DIM, "index": "flat"}
        ).json()["id"]
        for trial in range(TRIALS):
            # -- ingest while an SSE client follows, then kill -9 -----------------------------
            seen: list[dict[str, Any]] = []
            ready = threading.Event()
            follower = threading.Thread(
                target=_follow, args=(server.url, library_id, last_seen_id, seen, ready)
            )
            follower.start()
            assert ready.wait(10)
            stop = threading.Event()
            trial_acked: dict[str, str] = {}
            clients = [
                threading.Thread(
                    target=_ingest, args=(server.url, library_id, c, trial, trial_acked, stop)
                )
                for c in range(CLIENTS)
            ]
            for t in clients:
                t.start()
            time.sleep(rng.uniform(0.2, 1.0))
            server.kill()
            stop.set()
            for t in [*clients, follower]:
                t.join(timeout=30)
            acked.update(trial_acked)
            ids = [int(e["id"]) for e in seen]
            assert ids == sorted(set(ids)), "events out of order or duplicated"
            if last_seen_id is not None and ids:
                assert ids[0] == int(last_seen_id) + 1
            seen_docs = {e["data"]["document_id"] for e in seen if e["type"] == "document.added"}
            if ids:
                last_seen_id = str(ids[-1])

            # -- restart: everything acknowledged is there, and the stream resumes -----------
            server = Server(data_dir)
            server.start()
            with httpx.Client(base_url=server.url, timeout=30) as http:
                lib = http.get(f"/v1/libraries/{library_id}").json()
                assert lib["document_count"] >= len(acked)
                for key, doc_id in acked.items():
                    response = http.get(f"/v1/libraries/{library_id}/documents/{doc_id}")
                    assert response.status_code == 200, f"lost acknowledged {key}"
                for key, doc_id in list(trial_acked.items())[:20]:
                    hits = http.post(
                        f"/v1/libraries/{library_id}/search",
                        json={"query_vector": _vector(key), "k": 1, "filter": {"key": key}},
                    ).json()["results"]
                    assert [h["document_id"] for h in hits] == [doc_id]
            missed: list[dict[str, Any]] = []
            ready = threading.Event()
            resume = threading.Thread(
                target=_follow, args=(server.url, library_id, last_seen_id, missed, ready)
            )
            resume.start()
            assert ready.wait(10)
            # a marker write after the restart: the resumed stream ends with its event
            marker = httpx.post(
                f"{server.url}/v1/libraries/{library_id}/documents",
                json={
                    "title": f"marker-{trial}",
                    "chunks": [{"text": "m", "embedding": _vector("m")}],
                },
            )
            assert marker.status_code == 201, marker.text
            marker = marker.json()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                e["data"].get("document_id") == marker["id"] for e in missed
            ):
                time.sleep(0.02)
            missed_ids = [int(e["id"]) for e in missed]
            assert missed_ids, "resumed stream delivered nothing"
            start = int(last_seen_id) + 1 if last_seen_id else 1
            assert missed_ids == list(range(start, start + len(missed_ids))), "gap or duplicate"
            assert missed[-1]["data"]["document_id"] == marker["id"]
            resumed_docs = {e["data"]["document_id"] for e in missed}
            for doc_id in trial_acked.values():
                assert doc_id in seen_docs or doc_id in resumed_docs, "acknowledged event missing"
            last_seen_id = str(missed_ids[-1])
            # the follower thread ends when the server is killed at the next trial
            resume_threads.append(resume)
        # the trials did write: many acknowledged documents, some kills mid-ingest
        assert len(acked) >= TRIALS * 20, len(acked)
        print(f"{TRIALS} kill -9 trials, {len(acked)} acknowledged documents, none lost")
    finally:
        server.stop()
        for t in resume_threads:
            t.join(timeout=10)


def test_websocket_resume_and_saved_index_across_a_clean_stop_and_a_kill_9(
    tmp_path: Path,
) -> None:
    """An HNSW library over three server lives: a WebSocket client that saw events up to X
    resumes (``subscribe`` with ``since: X``) after a clean stop (which saves the index), more
    writes, a kill -9 (the saved index is now stale) and a restart, and gets exactly the events
    after X, then live ones; every live document is still its own best match."""
    import websockets.sync.client as ws_client

    data_dir = tmp_path / "data"
    vectors: dict[str, list[float]] = {}

    def add(http: httpx.Client, library_id: str, key: str) -> str:
        vectors[key] = _vector(key)
        response = http.post(
            f"/v1/libraries/{library_id}/documents",
            json={"title": key, "chunks": [{"text": key, "embedding": vectors[key]}]},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    @contextlib.contextmanager
    def ws(url: str, library_id: str) -> Iterator[Any]:
        address = url.replace("http", "ws") + f"/v1/libraries/{library_id}/ws"
        with ws_client.connect(address) as socket:
            assert json.loads(socket.recv(timeout=10))["type"] == "system"
            yield socket

    server = Server(data_dir)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            library_id = http.post(
                "/v1/libraries", json={"name": "resume", "dimension": DIM, "index": "hnsw"}
            ).json()["id"]
            docs = {}
            with ws(server.url, library_id) as socket:
                for i in range(10):
                    docs[f"seen-{i}"] = add(http, library_id, f"seen-{i}")
                events = [json.loads(socket.recv(timeout=10)) for _ in range(10)]
            last_seen = int(events[-1]["id"])
            for i in range(5):  # missed: made while the client was away
                docs[f"before-stop-{i}"] = add(http, library_id, f"before-stop-{i}")
        server.stop()  # clean: the index is saved
        assert any((data_dir / "indexes" / library_id).iterdir())

        server = Server(data_dir)
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(5):
                docs[f"after-stop-{i}"] = add(http, library_id, f"after-stop-{i}")
            gone = docs.pop("seen-3")
            assert http.delete(f"/v1/libraries/{library_id}/documents/{gone}").status_code == 204
        server.kill()  # the saved index misses the last six writes

        server = Server(data_dir)
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http, ws(server.url, library_id) as s:
            since = {"since": str(last_seen)}
            s.send(json.dumps({"action": "subscribe", "request_id": "r", "data": since}))
            assert json.loads(s.recv(timeout=10))["success"] is True
            missed = [json.loads(s.recv(timeout=10)) for _ in range(11)]
            assert [int(e["id"]) for e in missed] == list(range(last_seen + 1, last_seen + 12))
            assert [e["event_type"] for e in missed] == ["document.added"] * 10 + [
                "document.deleted"
            ]
            marker = add(http, library_id, "marker")
            live = json.loads(s.recv(timeout=10))
            assert int(live["id"]) == last_seen + 12
            assert live["data"]["document_id"] == marker
            docs["marker"] = marker
            for key, doc_id in docs.items():
                hits = http.post(
                    f"/v1/libraries/{library_id}/search",
                    json={"query_vector": vectors[key], "k": 3},
                ).json()["results"]
                assert hits[0]["document_id"] == doc_id, key
                assert gone not in {h["document_id"] for h in hits}
    finally:
        server.stop()
