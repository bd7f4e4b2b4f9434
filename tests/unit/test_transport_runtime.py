"""The shared state of the transports: encoded event cache, connection registry, write gate."""

from __future__ import annotations

import json
from dataclasses import dataclass

import anyio
import pytest

from arrwdb.domain.events import Event
from arrwdb.transports.dispatch import WriteGate
from arrwdb.transports.errors import ShuttingDown
from arrwdb.transports.runtime import ConnectionRegistry, EventFrames


def event(n: int, library: str = "lib") -> Event:
    return Event(id=str(n), type="document.added", library_id=library, data={"document_id": "d"})


def test_each_event_is_encoded_once() -> None:
    frames = EventFrames(size=8)
    first = frames.ws(event(1))
    assert frames.ws(event(1)) is first  # the same string for every subscriber
    assert json.loads(first) == {
        "type": "event",
        "event_type": "document.added",
        "library_id": "lib",
        "data": {"document_id": "d"},
        "id": "1",
        "timestamp": json.loads(first)["timestamp"],
    }
    envelope = json.loads(frames.sse(event(1)))
    assert set(envelope) == {"id", "type", "library_id", "timestamp", "data"}
    assert frames.sse(event(1)) is frames.sse(event(1))


def test_the_cache_is_bounded() -> None:
    frames = EventFrames(size=8)
    for n in range(100):
        frames.ws(event(n))
        frames.sse(event(n))
    assert len(frames._ws) <= 8
    assert len(frames._sse) <= 8


@dataclass
class FakeConnection:
    connection_id: str
    library_id: str
    subscribed: bool = True

    async def shutdown(self) -> None:
        return None


def test_stats_have_the_seed_shape() -> None:
    registry = ConnectionRegistry()
    # the protocol's fields first, then the extensions (SSE streams)
    assert registry.stats().__struct_fields__[:3] == (
        "total_connections",
        "libraries_with_subscribers",
        "subscriptions_by_library",
    )
    registry.add(FakeConnection("1", "a"))
    registry.add(FakeConnection("2", "a"))
    registry.add(FakeConnection("3", "b"))
    registry.add(FakeConnection("4", "c", subscribed=False))
    stats = registry.stats()
    assert (stats.total_connections, stats.libraries_with_subscribers) == (4, 2)
    assert stats.subscriptions_by_library == {"a": 2, "b": 1}
    registry.remove(FakeConnection("3", "b"))
    assert registry.stats().subscriptions_by_library == {"a": 2}
    only_b = registry.stats(lambda library_id: library_id == "c")  # what a key may read
    assert (only_b.total_connections, only_b.subscriptions_by_library) == (1, {})


@pytest.mark.anyio
async def test_write_gate_drains_then_refuses() -> None:
    gate = WriteGate()
    gate.enter()
    gate.enter()
    done = anyio.Event()

    async def drain() -> None:
        await gate.wait_idle()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        gate.close()
        with pytest.raises(ShuttingDown):
            gate.enter()
        await anyio.sleep(0.01)
        assert not done.is_set()
        gate.exit()
        gate.exit()
    assert done.is_set()
    assert gate.in_flight == 0
