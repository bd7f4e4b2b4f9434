"""What the watch tests share: a library of random vectors, a random sequence of writes over
REST, the client-side set of a top-k watch rebuilt from its events, the exact search it must
equal, an SSE reader that can wait with a timeout without ending the stream, and a WebSocket
that keeps every message it got."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import anyio
import httpx
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from httpx_sse import ServerSentEvent, aconnect_sse
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from arrwdb.server import BackgroundServer
from conftest import request, ws_url

DIM = 8
K = 5
#: the filter of the watches under test: documents whose ``keep`` is true
KEEP = {"keep": True}
QUERY = [1.0] + [0.0] * (DIM - 1)


def random_vector(rng: random.Random) -> list[float]:
    return [rng.gauss(0.0, 1.0) for _ in range(DIM)]


async def new_library(http: httpx.AsyncClient) -> str:
    body = {
        "name": f"watch-{random.getrandbits(48):x}",
        "dimension": DIM,
        "index": "flat",  # exact searches: what a watch's results must equal
        "embedder": None,
    }
    r = await http.post("/v1/libraries", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def add(
    http: httpx.AsyncClient, lib: str, vectors: list[list[float]], keep: bool = True
) -> dict[str, Any]:
    body = {
        "title": "d",
        "chunks": [{"text": "t", "embedding": v} for v in vectors],
        "metadata": {"keep": keep},
    }
    r = await http.post(f"/v1/libraries/{lib}/documents", json=body)
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


class Save(NamedTuple):
    """A write that saved a document (an add or a patch that changed it): its change event id,
    the document, its chunks' vectors and its ``keep`` as saved."""

    event_id: int
    document_id: str
    vectors: list[list[float]]
    keep: bool


class Workload:
    """Random writes over REST: adds (one or two chunks), metadata patches that make the
    filter fail or pass, content replacements and deletes. ``sentinel`` adds a document
    equal to the query (it enters every top-k watch of the query): once its
    ``watch.entered`` is read, every earlier event has been read too.

    Each write goes to ``http``, or to the client a call names (another server of the same
    dataset). What the writes did is kept: ``model`` (each document's vectors and ``keep``),
    ``saves`` (every save, in order), ``writes`` (every change's event id, in order) and
    ``last`` (the last one), on the understanding that the workload alone writes its
    documents."""

    def __init__(self, http: httpx.AsyncClient, lib: str, seed: int) -> None:
        self.http, self.lib, self.rng = http, lib, random.Random(seed)
        self.docs: list[str] = []
        self.model: dict[str, tuple[list[list[float]], bool]] = {}
        self.saves: list[Save] = []
        self.writes: list[int] = []  # every change's event id, in order
        self.last = 0

    def _wrote(
        self, r: httpx.Response, doc_id: str, saved: tuple[list[list[float]], bool] | None
    ) -> None:
        assert r.status_code in (200, 201, 204), r.text
        event_id = int(r.headers["arrwdb-event-id"])
        self.writes.append(event_id)
        self.last = max(self.last, event_id)
        if saved is None:
            del self.model[doc_id]
        else:
            self.model[doc_id] = saved
            self.saves.append(Save(event_id, doc_id, *saved))

    async def put(
        self, vectors: list[list[float]], keep: bool = True, http: httpx.AsyncClient | None = None
    ) -> str:
        """Add a document of ``vectors``; its id."""
        body = {
            "title": "d",
            "chunks": [{"text": "t", "embedding": v} for v in vectors],
            "metadata": {"keep": keep},
        }
        r = await (http or self.http).post(f"/v1/libraries/{self.lib}/documents", json=body)
        assert r.status_code == 201, r.text
        doc_id = str(r.json()["id"])
        self._wrote(r, doc_id, (vectors, keep))
        self.docs.append(doc_id)
        return doc_id

    async def run(self, steps: int, http: httpx.AsyncClient | None = None) -> None:
        rng, base = self.rng, f"/v1/libraries/{self.lib}/documents"
        http = http or self.http
        for _ in range(steps):
            roll = rng.random()
            if roll < 0.5 or len(self.docs) < 3:
                vectors = [random_vector(rng) for _ in range(rng.randint(1, 2))]
                await self.put(vectors, keep=rng.random() < 0.8, http=http)
                continue
            doc_id = rng.choice(self.docs)
            vectors, keep = self.model[doc_id]
            if roll < 0.7:
                new_keep = rng.random() < 0.5
                r = await http.patch(f"{base}/{doc_id}", json={"metadata": {"keep": new_keep}})
                if new_keep == keep:  # a patch that changes nothing makes no event
                    assert r.status_code == 200, r.text
                    continue
                self._wrote(r, doc_id, (vectors, new_keep))
            elif roll < 0.8:
                vectors = [random_vector(rng)]
                chunks = [{"text": "u", "embedding": vectors[0]}]
                r = await http.patch(f"{base}/{doc_id}", json={"chunks": chunks})
                self._wrote(r, doc_id, (vectors, keep))
            else:
                self.docs.remove(doc_id)
                r = await http.delete(f"{base}/{doc_id}")
                self._wrote(r, doc_id, None)

    async def sentinel(self, http: httpx.AsyncClient | None = None) -> str:
        """Add the sentinel; its chunk id."""
        http = http or self.http
        doc_id = await self.put([QUERY], keep=True, http=http)
        r = await http.get(f"/v1/libraries/{self.lib}/documents/{doc_id}")
        return str(r.json()["chunks"][0]["id"])


def score(vector: list[float]) -> float:
    """The cosine score of ``vector`` for ``QUERY``."""
    return vector[0] / math.sqrt(sum(x * x for x in vector))


async def exact_top_k(
    http: httpx.AsyncClient, lib: str, k: int = K, flt: Any = KEEP, after: int | None = None
) -> list[tuple[str, float]]:
    """An exact search for the query (``after``: once the server has applied that event)."""
    body: dict[str, Any] = {"query_vector": QUERY, "k": k, "filter": flt}
    if after is not None:
        body["min_event_id"] = str(after)
    r = await http.post(f"/v1/libraries/{lib}/search", json=body)
    assert r.status_code == 200, r.text
    return [(h["chunk_id"], h["score"]) for h in r.json()["results"]]


def same_results(held: set[str], exact: list[tuple[str, float]]) -> bool:
    """Whether the set a client holds is the exact top-k (ties at the k-th score aside)."""
    ids = {c for c, _ in exact}
    if held == ids:
        return True
    if len(held) != len(ids) or not exact:
        return False
    last = exact[-1][1]
    return all(abs(s - last) < 1e-6 for c, s in exact if c not in held)


class Rebuilt:
    """The results of a top-k watch as a client rebuilds them from its events."""

    def __init__(self) -> None:
        self.members: set[str] = set()
        self.ids: list[str] = []  # every watch event id, in order
        self.events: list[tuple[str, str, dict[str, Any]]] = []  # (id, type, data), in order

    def apply(self, kind: str, data: dict[str, Any], event_id: str) -> None:
        self.events.append((event_id, kind, data))
        if kind == "watch.ready":
            self.members = {h["chunk_id"] for h in data["results"]}
        elif kind == "watch.entered":
            assert data["chunk_id"] not in self.members, data
            self.members.add(data["chunk_id"])
        elif kind == "watch.left":
            assert data["chunk_id"] in self.members, data
            self.members.remove(data["chunk_id"])
        if kind != "stream.reset":
            self.ids.append(event_id)


def _without_scores(event: tuple[str, str, dict[str, Any]]) -> tuple[Any, ...]:
    event_id, kind, data = event
    data = {name: value for name, value in data.items() if name != "score"}
    if "results" in data:
        data["results"] = [{n: v for n, v in h.items() if n != "score"} for h in data["results"]]
    return event_id, kind, data


def _scores(events: list[tuple[str, str, dict[str, Any]]]) -> list[float]:
    out = []
    for _, _, data in events:
        out.append(data.get("score", 0.0))
        out.extend(h["score"] for h in data.get("results", ()))
    return out


def assert_as_uninterrupted(client: Rebuilt, control: Rebuilt) -> None:
    """A client that was cut off and resumed (``client``) got exactly what a listener that
    stayed connected from the same ``watch.ready`` on got (``control``): one ``watch.ready`` and
    no reset (the resume lost nothing), then the same events, none missing, none repeated.
    Scores are compared to float precision: the two may come from different servers."""
    kinds = [kind for _, kind, _ in client.events]
    assert kinds[:1] == ["watch.ready"], kinds
    assert kinds.count("watch.ready") == 1, kinds
    assert "stream.reset" not in kinds, kinds
    assert [_without_scores(e) for e in client.events] == [
        _without_scores(e) for e in control.events
    ]
    assert _scores(client.events) == pytest.approx(_scores(control.events), abs=1e-5)
    assert_no_loss_or_repeat(client.ids)


def key(event_id: str) -> tuple[int, int]:
    head, _, tail = event_id.partition(".")
    return int(head), int(tail) if tail else 2**62


def assert_no_loss_or_repeat(ids: list[str]) -> None:
    """Watch event ids strictly increase, and the events of one change are numbered 0, 1, ...
    without a gap (a ``watch.ready``'s id has no ``.n``)."""
    keys = [key(i) for i in ids]
    assert keys == sorted(set(keys)), ids
    for (a, n), (b, m) in itertools.pairwise(keys):
        if m != 2**62 and a == b:
            assert m == n + 1, (ids, a, n, m)
        elif m != 2**62:
            assert m == 0, (ids, b, m)


class Events:
    """An SSE stream read by a background task (waiting with a timeout never ends it)."""

    def __init__(self, receive: MemoryObjectReceiveStream[ServerSentEvent]) -> None:
        self._receive = receive

    async def next(self, timeout: float = 5.0) -> ServerSentEvent:
        with anyio.fail_after(timeout):
            return await self._receive.receive()

    async def until(self, rebuilt: Rebuilt, chunk_id: str, timeout: float = 10.0) -> None:
        """Apply events until ``chunk_id`` enters."""
        with anyio.fail_after(timeout):
            while True:
                event = await self.next()
                data = json.loads(event.data)["data"]
                rebuilt.apply(event.event, data, event.id)
                if event.event == "watch.entered" and data["chunk_id"] == chunk_id:
                    return


class Socket:
    """A connected socket whose messages are all kept, in the order they arrived."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._seen = 0
        self._n = 0

    async def send(self, action: str, data: Any = None) -> str:
        self._n += 1
        rid = f"r{self._n}"
        await self.ws.send(request(action, rid, data))
        return rid

    async def wait(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first message (from the start) matching ``match``, reading more as needed."""
        with anyio.fail_after(timeout):
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                self.messages.append(json.loads(await self.ws.recv()))

    async def answer(self, action: str, data: Any = None) -> dict[str, Any]:
        rid = await self.send(action, data)
        return await self.wait(lambda m: m["type"] == "response" and m["request_id"] == rid)

    def watch_events(self, watch_id: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("watch_id") == watch_id]


def entered(watch_id: str, chunk_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m.get("watch_id") == watch_id
        and m["event_type"] == "watch.entered"
        and m["data"]["chunk_id"] == chunk_id
    )


def rebuild(events: list[dict[str, Any]], rebuilt: Rebuilt | None = None) -> Rebuilt:
    rebuilt = rebuilt or Rebuilt()
    for m in events:
        rebuilt.apply(m["event_type"], m["data"], m["id"])
    return rebuilt


async def open_socket(server: BackgroundServer, lib: str) -> Socket:
    socket = Socket(await ws_connect(ws_url(server, lib)))
    assert (await socket.wait(lambda m: m["type"] == "system"))["type"] == "system"
    return socket


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, **kwargs: Any
) -> AsyncIterator[tuple[Events, httpx.Response]]:
    send, receive = anyio.create_memory_object_stream[ServerSentEvent](10_000)
    async with aconnect_sse(client, "GET", url, **kwargs) as source:

        async def pump() -> None:
            async with send:
                async for event in source.aiter_sse():
                    await send.send(event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            yield Events(receive), source.response
            tg.cancel_scope.cancel()
