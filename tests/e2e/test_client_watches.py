"""``lib.watch(...)`` of ``arrwdb.connect(url)`` against real servers: a watch's events resume
by themselves after lost connections and a server restart (nothing missed, nothing twice, the
set rebuilt from them equal to an exact search), and the watches a program made are removed
when it closes them, drops them, or closes its client."""

from __future__ import annotations

import gc
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from watch_helpers import DIM, KEEP, QUERY, K, Rebuilt, assert_no_loss_or_repeat, same_results

import arrwdb
from arrwdb.config import Settings
from arrwdb.domain.watches import WatchListener
from arrwdb.server import BackgroundServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.anyio]


class Writes:
    """Random writes through the client: adds, filter flips, new content, deletes. The
    ``sentinel`` is a document equal to the query: once its ``watch.entered`` is read, so is
    every event before it."""

    def __init__(self, lib: Any, seed: int) -> None:
        self.lib, self.rng, self.docs = lib, random.Random(seed), list[str]()

    def vector(self) -> list[float]:
        return [self.rng.gauss(0.0, 1.0) for _ in range(DIM)]

    def run(self, steps: int) -> None:
        rng, lib = self.rng, self.lib
        for _ in range(steps):
            roll = rng.random()
            if roll < 0.5 or len(self.docs) < 3:
                chunks = [
                    {"text": "t", "embedding": self.vector()} for _ in range(rng.randint(1, 2))
                ]
                metadata = {"keep": rng.random() < 0.8}
                self.docs.append(lib.add_document(title="d", chunks=chunks, metadata=metadata).id)
                continue
            doc_id = rng.choice(self.docs)
            if roll < 0.7:
                lib.update_document(doc_id, metadata={"keep": rng.random() < 0.5})
            elif roll < 0.8:
                lib.update_document(doc_id, chunks=[{"text": "u", "embedding": self.vector()}])
            else:
                self.docs.remove(doc_id)
                lib.delete_document(doc_id)

    def sentinel(self) -> str:
        doc = self.lib.add_document(
            title="s", chunks=[{"text": "s", "embedding": QUERY}], metadata={"keep": True}
        )
        self.docs.append(doc.id)
        return str(self.lib.get_document(doc.id).chunks[0].id)


def read(events: Any, rebuilt: Rebuilt, count: int | None = None, until: str = "") -> list[str]:
    """Apply ``count`` events (or up to the one that puts chunk ``until`` in the results: its
    ``watch.entered``, or a fresh ``watch.ready`` that holds it); their types."""
    types = []
    for event in events:
        rebuilt.apply(event.type, dict(event.data), event.id)
        types.append(event.type)
        if len(types) == count or (until and until in rebuilt.members):
            return types
    raise AssertionError(f"the stream ended after {types}")


def exact(lib: Any) -> list[tuple[str, float]]:
    return [(h.chunk_id, h.score) for h in lib.search(QUERY, k=K, filter=KEEP)]


def eventually(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        time.sleep(0.01)


def cut(server: BackgroundServer, watch_id: str, cut_before: set[WatchListener]) -> None:
    """End the server's side of the watch's stream (as a proxy or a load balancer dropping
    the connection would), once the client has connected again since the last cut. (The
    listeners cut are kept, not their ``id()``: a new one may take a freed one's address.)"""

    def listeners() -> list[WatchListener]:
        return [
            source
            for source in list(server.runtime.streams)
            if isinstance(source, WatchListener)
            and source.watch_id == watch_id
            and source not in cut_before
        ]

    eventually(lambda: bool(listeners()), "the client's reconnection")
    for listener in listeners():
        cut_before.add(listener)
        listener.close()


def new_library(db: Any) -> Any:
    return db.create_library(
        f"w-{uuid.uuid4().hex[:10]}", dimension=DIM, index="flat", embedder=None
    )


def test_a_watch_resumes_after_lost_connections_without_a_gap_or_a_repeat(
    server: BackgroundServer,
) -> None:
    with arrwdb.connect(server.url) as db:
        lib = new_library(db)
        writes = Writes(lib, seed=3)
        writes.run(15)
        w = lib.watch(QUERY, k=K, filter=KEEP)
        events = w.events(timeout=10.0)
        rebuilt, types, done = Rebuilt(), [], set[WatchListener]()
        types += read(events, rebuilt, count=1)
        for _ in range(3):
            writes.run(15)
            cut(server, w.id, done)  # mid-stream: the events of the writes are on their way
            types += read(events, rebuilt, until=writes.sentinel())
        assert events.reconnects >= 3
        assert "stream.reset" not in types
        assert types.count("watch.ready") == 1
        assert_no_loss_or_repeat(rebuilt.ids)
        assert same_results(rebuilt.members, exact(lib)), rebuilt.ids
        w.close()
        assert [e.type for e in events] == ["stream.closed"]


def test_a_watch_outlives_a_server_restart(tmp_path: Path) -> None:
    settings = Settings(storage="disk", data_dir=str(tmp_path / "data"))
    live = BackgroundServer(settings, log_level="warning").start()
    port = live.port
    db = arrwdb.connect(live.url, retries=8)
    try:
        lib = new_library(db)
        writes = Writes(lib, seed=5)
        writes.run(10)
        w = lib.watch(QUERY, k=K, filter=KEEP)
        events = w.events(timeout=30.0)
        rebuilt = Rebuilt()
        read(events, rebuilt, count=1)
        writes.run(10)
        live.stop()
        live = BackgroundServer(settings, port=port, log_level="warning").start()
        writes.run(10)
        types = read(events, rebuilt, until=writes.sentinel())
        assert events.reconnects >= 1
        for i, kind in enumerate(types):  # a resume point the restarted server lost
            assert kind != "stream.reset" or types[i + 1] == "watch.ready", types
        assert_no_loss_or_repeat(rebuilt.ids)
        assert same_results(rebuilt.members, exact(lib))
        w.close()
        with pytest.raises(arrwdb.WatchNotFoundError):
            w.events()
    finally:
        db.close()
        live.stop()


async def test_an_async_watch_resumes_after_a_lost_connection(server: BackgroundServer) -> None:
    async with arrwdb.connect_async(server.url) as db:
        lib = await db.create_library(
            f"w-{uuid.uuid4().hex[:10]}", dimension=DIM, index="flat", embedder=None
        )
        w = await lib.watch(QUERY, k=2)
        events = w.events(timeout=10.0)
        rng = random.Random(1)
        added = []
        for i in range(6):
            noise = [rng.uniform(-0.1, 0.1) for _ in range(DIM - 1)]
            vector = [1.0] + (noise if i < 5 else [0.0] * (DIM - 1))  # the last is the best
            doc = await lib.add_document(title=str(i), chunks=[{"text": "t", "embedding": vector}])
            added.append(doc.id)
            if i == 2:  # the events of the first three are on their way
                cut(server, w.id, set())
        ids: list[str] = []
        async for event in events:
            ids.append(event.id)
            if event.type == "watch.entered" and event.data["document_id"] == added[-1]:
                break
        assert events.reconnects >= 1
        assert_no_loss_or_repeat(ids)
        await w.close()


def test_a_watch_is_removed_with_its_handle_or_its_client(server: BackgroundServer) -> None:
    http = httpx.Client(base_url=server.url, timeout=10.0)

    def listed(library_id: str) -> set[str]:
        return {w["id"] for w in http.get(f"/v1/libraries/{library_id}/watches").json()["watches"]}

    db = arrwdb.connect(server.url)
    lib = new_library(db)
    kept, dropped, closed = (lib.watch(QUERY, k=1) for _ in range(3))
    assert listed(lib.id) == {kept.id, dropped.id, closed.id}
    closed.close()
    dropped_id = dropped.id
    del dropped
    gc.collect()
    assert listed(lib.id) == {kept.id}
    assert dropped_id not in listed(lib.id)
    db.close()
    assert listed(lib.id) == set()
    kept.close()  # after the client's close: nothing left to do
    http.close()


def test_a_revoked_key_ends_a_watch_stream_with_unauthorized(make_server: Any) -> None:
    admin_key = "admin-" + uuid.uuid4().hex
    live = make_server(api_key=admin_key)
    with arrwdb.connect(live.url, api_key=admin_key) as admin:
        lib = new_library(admin)
        made = httpx.post(
            f"{live.url}/v1/keys",
            json={"name": "reader", "libraries": [lib.id], "access": "read"},
            headers={"Authorization": f"Bearer {admin_key}"},
        ).json()
        with arrwdb.connect(live.url, api_key=made["key"]) as reader:
            w = reader.get_library(lib.id).watch(QUERY, k=1)
            events = w.events(timeout=10.0)
            assert next(events).type == "watch.ready"
            httpx.delete(
                f"{live.url}/v1/keys/{made['id']}", headers={"Authorization": f"Bearer {admin_key}"}
            )
            with pytest.raises(arrwdb.ArrwdbError) as revoked:
                next(events)
            assert revoked.value.code == "unauthorized"
