"""The data calls over REST (and NDJSON upsert) against the plain-Python model of
``data_calls_model``, on a real server: a smaller run than the in-process one. The events of
each write are read from the library's SSE stream, up to the write's ``Arrwdb-Event-Id``."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from httpx_sse import connect_sse
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from arrwdb.server import BackgroundServer
from data_calls_model import DIM, DataCallsMachine, Metadata, Seen, embedding

Events = list[tuple[str, str]]


class OverRest:
    def __init__(self, server: BackgroundServer) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=10)
        body = {"name": uuid.uuid4().hex, "dimension": DIM, "index": "flat", "embedder": None}
        made = self.http.post("/v1/libraries", json=body)
        assert made.status_code == 201, made.text
        self.base = f"/v1/libraries/{made.json()['id']}/documents"
        self.seen = int(made.headers["arrwdb-event-id"])  # the last event read
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._sse = httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=None))
        url = f"/v1/libraries/{made.json()['id']}/events"
        opened = threading.Event()
        threading.Thread(target=self._listen, args=(url, opened), daemon=True).start()
        assert opened.wait(10)

    def _listen(self, url: str, opened: threading.Event) -> None:
        try:
            with connect_sse(self._sse, "GET", url, params={"since": str(self.seen)}) as source:
                opened.set()
                for event in source.iter_sse():
                    self.events.put(json.loads(event.data))
        except (httpx.HTTPError, RuntimeError):
            return  # closed at teardown

    def _events_through(self, response: httpx.Response) -> Events:
        last = int(response.headers["arrwdb-event-id"])
        out: Events = []
        while self.seen < last:
            event = self.events.get(timeout=10)
            self.seen = int(event["id"])
            out.append((event["type"], event["data"]["document_id"]))
        return out

    @staticmethod
    def _body(doc: Mapping[str, Any]) -> dict[str, Any]:
        text = f"{doc['id']} {doc['title']}"
        chunks = [{"text": text, "embedding": embedding(text)}]
        return {"title": doc["title"], "metadata": doc["metadata"], "chunks": chunks}

    def upsert(self, doc: Mapping[str, Any]) -> tuple[bool, Events]:
        r = self.http.put(f"{self.base}/{doc['id']}", json=self._body(doc) | {"id": doc["id"]})
        assert r.status_code in (200, 201), r.text
        assert (r.json()["id"], r.json()["metadata"]) == (doc["id"], doc["metadata"])
        return r.status_code == 201, self._events_through(r)

    def upsert_many(self, docs: list[Mapping[str, Any]]) -> Events:
        lines = "".join(json.dumps(self._body(d) | {"id": d["id"]}) + "\n" for d in docs)
        r = self.http.post(
            f"{self.base}/stream",
            params={"upsert": "true"},
            content=lines,
            headers={"content-type": "application/x-ndjson"},
        )
        answers = [json.loads(line) for line in r.text.splitlines()]
        assert answers.pop()["summary"]["failed"] == 0, answers
        assert [a["document_id"] for a in answers] == [d["id"] for d in docs]
        last = httpx.Response(200, headers={"arrwdb-event-id": answers[-1]["event_id"]})
        return self._events_through(last)

    def _seen_of(self, r: httpx.Response) -> list[Seen]:
        assert r.status_code == 200, r.text
        docs = r.json()["documents"]
        assert all("chunks" not in d for d in docs)
        return [(d["id"], d["title"], d["metadata"]) for d in docs]

    def get(self, ids: list[str]) -> list[Seen]:
        r = self.http.post(f"{self.base}/query", json={"ids": ids})
        assert r.json()["next_cursor"] is None
        return self._seen_of(r)

    def query(self, filter: Mapping[str, Any], limit: int) -> list[list[Seen]]:
        pages: list[list[Seen]] = []
        body: dict[str, Any] = {"filter": filter, "limit": limit}
        while True:
            r = self.http.post(f"{self.base}/query", json=body)
            pages.append(self._seen_of(r))
            if r.json()["next_cursor"] is None:
                return pages
            body["cursor"] = r.json()["next_cursor"]

    def count(self, filter: Mapping[str, Any] | None) -> int:
        r = self.http.post(f"{self.base}/count", json={} if filter is None else {"filter": filter})
        assert r.status_code == 200, r.text
        count: int = r.json()["count"]
        return count

    def delete(self, ids: list[str] | None, filter: Mapping[str, Any] | None) -> tuple[int, Events]:
        body = {"ids": ids} if ids is not None else {"filter": filter}
        r = self.http.post(f"{self.base}/delete", json=body)
        assert r.status_code == 200, r.text
        return r.json()["deleted"], self._events_through(r)

    def patch(self, document_id: str, patch: Mapping[str, Any]) -> tuple[Metadata | None, Events]:
        r = self.http.patch(f"{self.base}/{document_id}", json={"metadata": patch})
        if r.status_code == 404:
            return None, []
        assert r.status_code == 200, r.text
        return r.json()["metadata"], self._events_through(r)

    def close(self) -> None:
        self.http.close()
        self._sse.close()


def test_rest_data_calls_follow_the_model(make_server: Callable[..., BackgroundServer]) -> None:
    server = make_server(rate_limit=0)

    class RestMachine(DataCallsMachine):
        def make_driver(self) -> OverRest:
            return OverRest(server)

        def teardown(self) -> None:
            assert isinstance(self.driver, OverRest)
            self.driver.close()

    run_state_machine_as_test(
        RestMachine,
        settings=settings(
            max_examples=12,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
