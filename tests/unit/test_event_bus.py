"""The change stream's promises, on the in-process bus (acceptance 5 of issue 2)."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arrwdb.adapters.bus.inprocess import InProcessEventBus
from arrwdb.domain.errors import SlowConsumerError, SubscriptionClosedError
from arrwdb.domain.events import Event, StartPoint


def _event(seq: int, library: str = "lib-a", kind: str = "document.added") -> Event:
    return Event(id=str(seq), type=kind, library_id=library, data={"n": seq})


def _publish(bus: InProcessEventBus, count: int, library: str = "lib-a") -> list[Event]:
    events = [_event(bus.last_id + 1 + i, library) for i in range(count)]
    for event in events:
        bus.publish(event)
    return events


def _drain(sub) -> list[Event]:  # type: ignore[no-untyped-def]
    out = []
    while (event := sub.poll()) is not None:
        out.append(event)
    return out


def test_ids_must_follow_each_other() -> None:
    bus = InProcessEventBus()
    bus.publish(_event(1))
    with pytest.raises(ValueError, match="does not follow"):
        bus.publish(_event(1))
    with pytest.raises(ValueError, match="does not follow"):
        bus.publish(_event(3))


@given(total=st.integers(1, 60), history=st.integers(1, 40), data=st.data())
def test_replay_from_any_retained_id_gives_exactly_the_later_events(
    total: int, history: int, data: st.DataObject
) -> None:
    bus = InProcessEventBus(history_size=history, default_buffer=10_000)
    events = _publish(bus, total)
    first_retained = max(1, total - history + 1)
    since = data.draw(st.integers(first_retained - 1, total), label="since")
    sub = bus.subscribe(None, StartPoint(since) if since else StartPoint(0))
    assert not sub.reset
    got = _drain(sub)
    assert [e.id for e in got] == [e.id for e in events[since:]]
    # then live ones, exactly once (read as they come: the ring may hold only one)
    for _ in range(3):
        live = _publish(bus, 1)
        assert _drain(sub) == live


@given(total=st.integers(5, 50), history=st.integers(1, 4))
def test_a_since_older_than_the_history_is_a_reset_never_a_gap(total: int, history: int) -> None:
    bus = InProcessEventBus(history_size=history)
    _publish(bus, total)
    oldest_missing = total - history - 1  # the event after it was evicted
    sub = bus.subscribe(None, StartPoint(max(oldest_missing, 1)))
    if oldest_missing >= 1:
        assert sub.reset
        assert _drain(sub) == []  # starts live
        for _ in range(2):
            live = _publish(bus, 1)
            assert _drain(sub) == live


def test_a_since_from_the_future_is_a_reset() -> None:
    bus = InProcessEventBus()
    _publish(bus, 3)
    sub = bus.subscribe(None, StartPoint(500))
    assert sub.reset
    assert _drain(sub) == []


def test_earliest_replays_everything_retained() -> None:
    bus = InProcessEventBus(history_size=5)
    events = _publish(bus, 8)
    sub = bus.subscribe(None, StartPoint.parse("earliest"))
    assert not sub.reset
    assert _drain(sub) == events[-5:]


def test_live_start_sees_only_later_events() -> None:
    bus = InProcessEventBus()
    _publish(bus, 4)
    sub = bus.subscribe(None, StartPoint(None))
    later = _publish(bus, 2)
    assert _drain(sub) == later


def test_library_and_type_filters() -> None:
    bus = InProcessEventBus()
    sub = bus.subscribe("lib-b", StartPoint(None), types=frozenset({"document.deleted"}))
    bus.publish(_event(1, "lib-b", "document.added"))
    bus.publish(_event(2, "lib-a", "document.deleted"))
    bus.publish(_event(3, "lib-b", "document.deleted"))
    assert [e.id for e in _drain(sub)] == ["3"]


def test_a_stalled_subscriber_is_cut_off_while_another_keeps_receiving() -> None:
    bus = InProcessEventBus(history_size=1000)
    stalled = bus.subscribe(None, StartPoint(None), buffer=10)
    healthy = bus.subscribe(None, StartPoint(None), buffer=10)
    received: list[Event] = []
    for _ in range(50):  # healthy keeps reading as events come; stalled never reads
        received.extend(_publish(bus, 1))
        assert healthy.poll() == received[-1]
    with pytest.raises(SlowConsumerError) as info:
        stalled.get(timeout=0)
    assert info.value.code == "slow_consumer"
    assert "buffer 10" in str(info.value)
    with pytest.raises(SlowConsumerError):  # stays closed
        stalled.poll()
    assert bus.statistics().subscribers == 1


def test_a_subscriber_whose_next_event_was_evicted_is_cut_off() -> None:
    bus = InProcessEventBus(history_size=5, default_buffer=100)
    sub = bus.subscribe(None, StartPoint(None))
    _publish(bus, 10)
    with pytest.raises(SlowConsumerError, match="no longer retained"):
        sub.poll()


def test_replayed_history_does_not_count_against_the_buffer() -> None:
    bus = InProcessEventBus(history_size=100)
    events = _publish(bus, 50)
    sub = bus.subscribe(None, StartPoint(0), buffer=5)
    assert _drain(sub) == events


def test_blocking_get_is_woken_by_a_publish_from_another_thread() -> None:
    bus = InProcessEventBus()
    sub = bus.subscribe(None, StartPoint(None))
    timer = threading.Timer(0.05, lambda: bus.publish(_event(1)))
    timer.start()
    started = time.monotonic()
    event = sub.get(timeout=5)
    assert event is not None
    assert event.id == "1"
    assert time.monotonic() - started < 2
    assert sub.get(timeout=0.01) is None


def test_async_get_is_woken_from_a_worker_thread_and_times_out() -> None:
    bus = InProcessEventBus()

    async def main() -> None:
        sub = bus.subscribe(None, StartPoint(None))
        assert await sub.aget(timeout=0.02) is None
        await anyio.to_thread.run_sync(lambda: bus.publish(_event(1)))
        event = await sub.aget(timeout=1)
        assert event is not None
        assert event.id == "1"

        async def publish_later() -> None:
            await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(lambda: bus.publish(_event(2)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_later)
            event = await sub.aget(timeout=5)
        assert event is not None
        assert event.id == "2"

    anyio.run(main)


def test_many_async_subscribers_on_one_loop_all_receive() -> None:
    bus = InProcessEventBus()

    async def main() -> None:
        subs = [bus.subscribe(None, StartPoint(None)) for _ in range(200)]
        got: list[str] = []

        async def consume(sub) -> None:  # type: ignore[no-untyped-def]
            event = await sub.aget(timeout=5)
            got.append(event.id)

        async with anyio.create_task_group() as tg:
            for sub in subs:
                tg.start_soon(consume, sub)
            await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(lambda: bus.publish(_event(1)))
        assert got == ["1"] * 200

    anyio.run(main)


def test_age_retention_drops_old_events() -> None:
    bus = InProcessEventBus(history_size=100, history_max_age=0.05)
    _publish(bus, 3)
    time.sleep(0.1)
    later = _publish(bus, 1)
    sub = bus.subscribe(None, StartPoint(0))
    assert _drain(sub) == later
    assert bus.subscribe(None, StartPoint(1)).reset


def test_restore_continues_ids() -> None:
    bus = InProcessEventBus(history_size=10)
    bus.restore([_event(i) for i in range(41, 46)])
    assert bus.last_id == 45
    sub = bus.subscribe(None, StartPoint(43))
    assert [e.id for e in _drain(sub)] == ["44", "45"]
    bus.publish(_event(46))
    assert [e.id for e in _drain(sub)] == ["46"]


def test_close_ends_every_subscription_after_its_backlog() -> None:
    bus = InProcessEventBus()
    sub = bus.subscribe(None, StartPoint(None))
    events = _publish(bus, 2)
    bus.close()
    assert sub.poll() == events[0]
    assert sub.get(timeout=1) == events[1]
    with pytest.raises(SubscriptionClosedError):
        sub.get(timeout=1)
    with pytest.raises(SubscriptionClosedError):
        bus.subscribe(None, StartPoint(None))


def test_closing_a_subscription_unregisters_it() -> None:
    bus = InProcessEventBus()
    sub = bus.subscribe(None, StartPoint(None))
    assert bus.statistics().subscribers == 1
    sub.close()
    assert bus.statistics().subscribers == 0
    with pytest.raises(SubscriptionClosedError):
        sub.get(timeout=0)
