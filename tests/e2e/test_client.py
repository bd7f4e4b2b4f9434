"""``arrwdb.connect(url)`` against real servers: change streams that survive server restarts
(every event once, in order), retried writes applied once, keys, and resets surfaced."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import arrwdb
from arrwdb.config import Settings
from arrwdb.domain.events import Event
from arrwdb.server import BackgroundServer

pytestmark = [pytest.mark.timeout(180), pytest.mark.anyio]


def chunk(i: int) -> list[dict[str, Any]]:
    return [{"text": f"t{i}", "embedding": [1.0, float(i)]}]


def test_events_resume_across_two_server_restarts(tmp_path: Path) -> None:
    """A reader of ``lib.events()`` while the server is restarted twice under a writer: every
    event exactly once, in order, and every acknowledged write is in the stream."""
    settings = Settings(storage="disk", data_dir=str(tmp_path / "data"))
    live = BackgroundServer(settings, log_level="warning").start()
    port = live.port
    db = arrwdb.connect(live.url, retries=8)
    lib = db.create_library("restarts", dimension=2, index="flat")
    stream = lib.events(timeout=30.0)
    received: list[Event] = []
    done = threading.Event()
    per_round, rounds = 40, 3

    def read() -> None:
        for event in stream:
            received.append(event)
            if len(received) == per_round * rounds:
                break
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    written: list[str] = []
    try:
        for round_ in range(rounds):
            for i in range(per_round):
                written.append(lib.add_document(title=f"{round_}-{i}", chunks=chunk(i)).id)
            if round_ < rounds - 1:
                live.stop()
                time.sleep(0.3)  # the reader's connection is gone: it backs off and retries
                live = BackgroundServer(settings, port=port, log_level="warning").start()
        assert done.wait(60), f"received {len(received)} of {per_round * rounds} events"
    finally:
        stream.close()
        db.close()
        live.stop()
    assert stream.reconnects >= 2
    assert [e.type for e in received] == ["document.added"] * (per_round * rounds)
    assert [e.data["document_id"] for e in received] == written
    ids = [int(e.id) for e in received]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive: no gap, no repeat


async def test_async_events_resume_across_a_restart(tmp_path: Path) -> None:
    settings = Settings(storage="disk", data_dir=str(tmp_path / "data"))
    live = BackgroundServer(settings, log_level="warning").start()
    port = live.port
    db = arrwdb.connect_async(live.url, retries=8)
    try:
        lib = await db.create_library("restarts", dimension=2, index="flat")
        stream = lib.events(timeout=30.0)
        first = [(await lib.add_document(title=f"a{i}", chunks=chunk(i))).id for i in range(5)]
        live.stop()
        live = BackgroundServer(settings, port=port, log_level="warning").start()
        second = [(await lib.add_document(title=f"b{i}", chunks=chunk(i))).id for i in range(5)]
        got: list[str] = []
        async for event in stream:
            got.append(event.data["document_id"])
            if len(got) == 10:
                break
        stream.close()
        assert stream.reconnects >= 1
        assert got == first + second
    finally:
        await db.close()
        live.stop()


def test_a_start_point_no_longer_kept_is_a_reset_event(make_server: Any) -> None:
    live = make_server(history_size=5)
    with arrwdb.connect(live.url) as db:
        lib = db.create_library("reset", dimension=2, index="flat")
        for i in range(12):
            lib.add_document(title=str(i), chunks=chunk(i))
        events = list(lib.events(since="1", timeout=1.0))
    reset = events[0]
    assert reset.type == "stream.reset"
    assert reset.data["reason"] == "history_lost"
    assert reset.data["requested"] == "1"
    assert reset.id == reset.data["resume_from"]
    assert [e.type for e in events[1:]] == ["document.added"] * (len(events) - 1)
    assert [int(e.id) for e in events[1:]] == list(range(int(reset.id) + 1, 14))


def test_keys_and_refusals(make_server: Any) -> None:
    live = make_server(api_key="admin-secret-key-0123456789")
    with arrwdb.connect(live.url) as anonymous, pytest.raises(arrwdb.ArrwdbError) as refused:
        anonymous.list_libraries()
    assert refused.value.code == "unauthorized"
    with arrwdb.connect(live.url, api_key="admin-secret-key-0123456789") as admin:
        lib = admin.create_library("keyed", dimension=2, index="flat")
        made = httpx.post(
            f"{live.url}/v1/keys",
            json={"name": "reader", "libraries": [lib.id], "access": "read"},
            headers={"Authorization": "Bearer admin-secret-key-0123456789"},
        ).json()
        with arrwdb.connect(live.url, api_key=made["key"]) as reader:
            assert reader.get_library(lib.id).info.name == "keyed"
            with pytest.raises(arrwdb.ArrwdbError) as forbidden:
                reader.get_library(lib.id).add_document(title="x", chunks=chunk(1))
            assert forbidden.value.code == "forbidden"
            stream = reader.get_library(lib.id).events(timeout=10.0)
            httpx.delete(
                f"{live.url}/v1/keys/{made['id']}",
                headers={"Authorization": "Bearer admin-secret-key-0123456789"},
            )
            with pytest.raises(arrwdb.ArrwdbError) as revoked:
                next(stream)
            assert revoked.value.code == "unauthorized"


def test_an_unreachable_server_is_a_clear_error() -> None:
    db = arrwdb.connect("http://127.0.0.1:9", retries=1, timeout=2.0)
    with pytest.raises(arrwdb.ServerUnavailableError) as down:
        db.list_libraries()
    assert "127.0.0.1:9" in str(down.value)
    assert down.value.code == "unavailable"


def test_ingest_answers_each_line_while_the_body_is_still_being_sent(make_server: Any) -> None:
    live = make_server()
    produced: list[float] = []

    def documents() -> Any:
        for i in range(20):
            produced.append(time.monotonic())
            time.sleep(0.02)
            bad = i == 7
            yield {
                "title": f"d{i}",
                "chunks": [{"text": "t", "embedding": [1.0] if bad else [1.0, i]}],
            }

    with arrwdb.connect(live.url) as db:
        lib = db.create_library("ingest", dimension=2, index="flat")
        ingest = lib.ingest(documents())
        answered: list[tuple[float, arrwdb.IngestResult]] = [(time.monotonic(), r) for r in ingest]
        assert answered[0][0] < produced[-1]  # the first answer came before the last line left
        results = [r for _, r in answered]
        assert [r.line for r in results] == list(range(1, 21))
        failed = [r for r in results if not r.success]
        assert [(r.line, r.code) for r in failed] == [(8, "dimension_mismatch")]
        assert all(r.document_id and r.event_id for r in results if r.success)
        assert ingest.summary is not None
        assert (ingest.summary["received"], ingest.summary["failed"]) == (20, 1)
        assert lib.info.document_count == 19
        gone = db.get_library(lib.id)
        db.delete_library(lib.id)
        with pytest.raises(arrwdb.LibraryNotFoundError):
            list(gone.ingest([{"title": "x"}]))


async def test_async_ingest(make_server: Any) -> None:
    live = make_server(api_key="admin-secret-key-0123456789")
    async with arrwdb.connect_async(live.url, api_key="admin-secret-key-0123456789") as db:
        lib = await db.create_library("ingest", dimension=2, index="flat")
        docs = (
            {"title": f"d{i}", "chunks": [{"text": "t", "embedding": [1.0, i]}]} for i in range(500)
        )
        ingest = lib.ingest(docs)
        lines = [r.line async for r in ingest if r.success]
        assert lines == list(range(1, 501))
        assert ingest.summary is not None
        assert ingest.summary["added"] == 500
        async with httpx.AsyncClient(base_url=live.url) as http:
            made = (
                await http.post(
                    "/v1/keys",
                    json={"name": "reader", "libraries": [lib.id], "access": "read"},
                    headers={"Authorization": "Bearer admin-secret-key-0123456789"},
                )
            ).json()
    async with arrwdb.connect_async(live.url, api_key=made["key"]) as reader:
        readable = await reader.get_library(lib.id)
        with pytest.raises(arrwdb.ArrwdbError) as refused:
            async for _ in readable.ingest([{"title": "x"}]):
                pass
        assert refused.value.code == "forbidden"
