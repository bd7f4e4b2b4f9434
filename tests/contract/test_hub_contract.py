"""The ``EventHub`` contract: one suite, run against every way a hub is set up.

``ring`` is the local hub alone (what the in-memory store gives it: nothing beyond its own
history); ``log`` is the local hub with a store's log behind its ring (``fakes.ListHistory``:
everything published, as the disk store's write-ahead log keeps it). Adding a hub adapter, or a
history, means adding an entry to ``SETUPS``. What differs between them is stated where it
does: with a log, a reader is never cut for falling behind the ring; without one, it is cut only
when events of its own were evicted unread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrwdb.adapters.hub.local import LocalEventHub
from arrwdb.domain.errors import SlowConsumerError, SubscriptionClosedError
from arrwdb.domain.events import Event, StartPoint
from arrwdb.domain.ports import EventHub, Subscription
from fakes import ListHistory


@dataclass
class Hub:
    """A started hub and, when it has one, the log behind it."""

    hub: LocalEventHub
    history: ListHistory | None

    def publish(
        self, count: int, library: str = "lib-a", kind: str = "document.added"
    ) -> list[Event]:
        events = [_event(self.hub.last_id + 1 + i, library, kind) for i in range(count)]
        self.publish_events(events)
        return events

    def publish_events(self, events: list[Event]) -> None:
        if self.history is not None:
            self.history.record(events)  # durable first, then published (as the projector does)
        self.hub.publish(events)


def _ring(**options: object) -> Hub:
    hub = LocalEventHub(**options)  # type: ignore[arg-type]
    hub.start(0, None)
    return Hub(hub, None)


def _log(**options: object) -> Hub:
    history = ListHistory()
    hub = LocalEventHub(**options)  # type: ignore[arg-type]
    hub.start(0, history)
    return Hub(hub, history)


SETUPS: dict[str, Callable[..., Hub]] = {"ring": _ring, "log": _log}


@pytest.fixture(params=list(SETUPS))
def make(request: pytest.FixtureRequest) -> Callable[..., Hub]:
    return SETUPS[request.param]


def _event(seq: int, library: str = "lib-a", kind: str = "document.added") -> Event:
    return Event(id=str(seq), type=kind, library_id=library, data={"n": seq})


def _drain(sub: Subscription) -> list[Event]:
    """Everything the subscription has now, the log included (``get`` reads it)."""
    out = []
    while (event := sub.get(timeout=0)) is not None:
        out.append(event)
    return out


def _ids(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def test_the_local_hub_implements_the_port() -> None:
    hub: EventHub = LocalEventHub()
    assert hub.last_id == 0


def test_ids_must_follow_each_other(make: Callable[..., Hub]) -> None:
    setup = make()
    setup.publish(1)
    with pytest.raises(ValueError, match="does not follow"):
        setup.hub.publish([_event(1)])
    with pytest.raises(ValueError, match="does not follow"):
        setup.hub.publish([_event(3)])


def test_start_continues_after_the_stores_head() -> None:
    hub = LocalEventHub(history_size=10)
    hub.start(45, None)
    assert hub.last_id == 45
    sub = hub.subscribe(None, StartPoint(None))
    hub.publish([_event(46)])
    assert _ids(_drain(sub)) == [46]
    with pytest.raises(ValueError, match="does not follow"):
        hub.publish([_event(48)])


@given(total=st.integers(1, 60), ring=st.integers(1, 40), data=st.data())
@pytest.mark.parametrize("setup", list(SETUPS))
def test_replay_from_any_kept_id_gives_exactly_the_later_events(
    setup: str, total: int, ring: int, data: st.DataObject
) -> None:
    hub = SETUPS[setup](history_size=ring)
    events = hub.publish(total)
    first_kept = 1 if hub.history is not None else max(1, total - ring + 1)
    since = data.draw(st.integers(first_kept - 1, total), label="since")
    sub = hub.hub.subscribe(None, StartPoint(since) if since else StartPoint(0))
    assert sub.reset is None
    assert _drain(sub) == events[since:]
    for _ in range(3):  # then live ones, exactly once
        live = hub.publish(1)
        assert _drain(sub) == live


def test_a_lost_start_point_is_one_reset_event_never_a_gap(make: Callable[..., Hub]) -> None:
    setup = make(history_size=4)
    setup.publish(20)
    if setup.history is not None:
        setup.history.trim(15)  # the log keeps 15.. only
    sub = setup.hub.subscribe("lib-a", StartPoint(3))
    reset = sub.reset
    assert reset is not None
    earliest = 15 if setup.history is not None else 17
    assert (reset.id, reset.type, reset.library_id) == ("20", "stream.reset", "lib-a")
    assert dict(reset.data) == {
        "reason": "history_lost",
        "requested": "3",
        "earliest": str(earliest),
        "resume_from": "20",
    }
    assert _drain(sub) == []  # the stream goes on live, after the reset's id
    live = setup.publish(2)
    assert _drain(sub) == live
    again = setup.hub.subscribe("lib-a", StartPoint(int(reset.id)))  # resuming from the reset
    assert again.reset is None
    assert _drain(again) == live  # replays nothing before it


def test_a_start_point_from_the_future_is_a_reset(make: Callable[..., Hub]) -> None:
    setup = make()
    setup.publish(3)
    sub = setup.hub.subscribe(None, StartPoint(500))
    assert sub.reset is not None
    assert sub.reset.data["requested"] == "500"
    assert sub.reset.id == "3"
    assert _drain(sub) == []


def test_earliest_replays_everything_kept(make: Callable[..., Hub]) -> None:
    setup = make(history_size=5)
    events = setup.publish(8)
    sub = setup.hub.subscribe(None, StartPoint.parse("earliest"))
    assert sub.reset is None
    assert _drain(sub) == (events if setup.history is not None else events[-5:])


def test_a_live_start_sees_only_later_events(make: Callable[..., Hub]) -> None:
    setup = make()
    setup.publish(4)
    sub = setup.hub.subscribe(None, StartPoint(None))
    later = setup.publish(2)
    assert _drain(sub) == later
    assert sub.resume_from == "6"


def test_library_and_type_filters(make: Callable[..., Hub]) -> None:
    setup = make()
    sub = setup.hub.subscribe("lib-b", StartPoint(None), types=frozenset({"document.deleted"}))
    setup.publish_events(
        [
            _event(1, "lib-b", "document.added"),
            _event(2, "lib-a", "document.deleted"),
            _event(3, "lib-b", "document.deleted"),
        ]
    )
    assert _ids(_drain(sub)) == [3]


def test_a_burst_to_another_library_never_cuts_a_reader(make: Callable[..., Hub]) -> None:
    """However large a commit to library B, a subscriber of A has lost nothing of its own:
    it is not cut, and reads on."""
    setup = make(history_size=100)
    reader = setup.hub.subscribe("lib-a", StartPoint(None))
    typed = setup.hub.subscribe(None, StartPoint(None), types=frozenset({"document.deleted"}))
    mine = setup.publish(3, "lib-a")
    assert _drain(reader) == mine
    setup.publish(5_000, "lib-b")  # one commit, 50x the ring
    setup.publish(1_000, "lib-b")
    more = setup.publish(2, "lib-a")
    assert _drain(reader) == more
    deleted = setup.publish(1, "lib-b", "document.deleted")
    assert _drain(typed) == deleted


def test_a_reader_that_keeps_reading_through_its_own_burst(make: Callable[..., Hub]) -> None:
    """A commit of its own events larger than the ring: with a log, every one of them, in
    order; with the ring alone, an explicit cut (never a gap), naming the last id given."""
    setup = make(history_size=100)
    sub = setup.hub.subscribe("lib-a", StartPoint(None))
    first = setup.publish(10, "lib-a")
    assert _drain(sub) == first
    burst = setup.publish(2_000, "lib-a")
    if setup.history is not None:
        assert _drain(sub) == burst
        assert setup.history.reads >= 2  # paged from the log
    else:
        with pytest.raises(SlowConsumerError) as info:
            _drain(sub)
        assert info.value.code == "slow_consumer"
        assert info.value.details["last_event_id"] == "10"


def test_a_buffer_cuts_only_for_the_readers_own_unread_events(make: Callable[..., Hub]) -> None:
    setup = make(history_size=1_000)
    stalled = setup.hub.subscribe("lib-a", StartPoint(None), buffer=10)
    healthy = setup.hub.subscribe("lib-a", StartPoint(None), buffer=10)
    for _ in range(30):  # the healthy reader reads each one as it comes; stalled never reads
        event = setup.publish(1, "lib-a")
        assert _drain(healthy) == event
    setup.publish(500, "lib-b")  # another library's burst never counts against a buffer
    more = setup.publish(1, "lib-a")
    assert _drain(healthy) == more
    with pytest.raises(SlowConsumerError) as info:
        stalled.get(timeout=0)
    assert "buffer 10" in str(info.value)
    with pytest.raises(SlowConsumerError):  # stays closed
        stalled.poll()
    assert setup.hub.statistics().subscribers == 1


def test_replayed_history_does_not_count_against_the_buffer(make: Callable[..., Hub]) -> None:
    setup = make(history_size=100)
    events = setup.publish(50)
    sub = setup.hub.subscribe(None, StartPoint(0), buffer=5)
    assert _drain(sub) == events


def test_a_blocking_get_is_woken_by_a_publish_from_another_thread(
    make: Callable[..., Hub],
) -> None:
    setup = make()
    sub = setup.hub.subscribe(None, StartPoint(None))
    timer = threading.Timer(0.05, lambda: setup.publish(1))
    timer.start()
    started = time.monotonic()
    event = sub.get(timeout=5)
    assert event is not None
    assert event.id == "1"
    assert time.monotonic() - started < 2
    assert sub.get(timeout=0.01) is None


def test_an_async_get_is_woken_from_a_worker_thread_and_times_out(
    make: Callable[..., Hub],
) -> None:
    setup = make(history_size=10)

    async def main() -> None:
        sub = setup.hub.subscribe(None, StartPoint(None))
        assert await sub.aget(timeout=0.02) is None
        await anyio.to_thread.run_sync(lambda: setup.publish(1))
        event = await sub.aget(timeout=1)
        assert event is not None
        assert event.id == "1"
        await anyio.to_thread.run_sync(lambda: setup.publish(50))  # past the ring
        if setup.history is not None:
            got = [await sub.aget(timeout=1) for _ in range(50)]
            assert [e.seq for e in got if e is not None] == list(range(2, 52))
        else:
            with pytest.raises(SlowConsumerError):
                await sub.aget(timeout=1)

    anyio.run(main)


def test_many_async_subscribers_on_one_loop_all_receive(make: Callable[..., Hub]) -> None:
    setup = make()

    async def main() -> None:
        subs = [setup.hub.subscribe(None, StartPoint(None)) for _ in range(200)]
        got: list[str] = []

        async def consume(sub: Subscription) -> None:
            event = await sub.aget(timeout=5)
            assert event is not None
            got.append(event.id)

        async with anyio.create_task_group() as tg:
            for sub in subs:
                tg.start_soon(consume, sub)
            await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(lambda: setup.publish(1))
        assert got == ["1"] * 200

    anyio.run(main)


def test_wait_beyond_rings_once_per_burst_and_ends_at_stop(make: Callable[..., Hub]) -> None:
    setup = make()

    async def main() -> None:
        assert await setup.hub.wait_beyond(0, timeout=0.02) == 0
        await anyio.to_thread.run_sync(lambda: setup.publish(3))
        assert await setup.hub.wait_beyond(0) == 3
        setup.hub.stop()
        with pytest.raises(SubscriptionClosedError):
            await setup.hub.wait_beyond(3)

    anyio.run(main)


def test_age_retention_drops_old_events_from_the_ring() -> None:
    setup = _ring(history_size=100, history_max_age=0.05)
    setup.publish(3)
    time.sleep(0.1)
    later = setup.publish(1)
    sub = setup.hub.subscribe(None, StartPoint(0))
    assert _drain(sub) == later
    assert setup.hub.subscribe(None, StartPoint(1)).reset is not None


def test_stop_ends_every_subscription_after_its_backlog(make: Callable[..., Hub]) -> None:
    setup = make()
    sub = setup.hub.subscribe(None, StartPoint(None))
    events = setup.publish(2)
    setup.hub.stop()
    assert sub.poll() == events[0]
    assert sub.get(timeout=1) == events[1]
    with pytest.raises(SubscriptionClosedError):
        sub.get(timeout=1)
    with pytest.raises(SubscriptionClosedError):
        setup.hub.subscribe(None, StartPoint(None))


def test_closing_a_subscription_unregisters_it(make: Callable[..., Hub]) -> None:
    setup = make()
    sub = setup.hub.subscribe(None, StartPoint(None))
    assert setup.hub.statistics().subscribers == 1
    sub.close()
    assert setup.hub.statistics().subscribers == 0
    with pytest.raises(SubscriptionClosedError):
        sub.get(timeout=0)


# -- the stream invariant, on random interleavings ---------------------------------------------

LIBRARIES = ("a", "b", "c")
KINDS = ("document.added", "document.deleted")

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("publish"),
            st.sampled_from(LIBRARIES),
            st.sampled_from(KINDS),
            st.integers(1, 40),  # one commit; the ring holds 16
        ),
        st.tuples(st.just("read"), st.integers(0, 3), st.integers(1, 30), st.just("")),
    ),
    max_size=40,
)
readers = st.lists(
    st.tuples(
        st.sampled_from((None, *LIBRARIES)),
        st.sampled_from((None, frozenset({"document.deleted"}))),
    ),
    min_size=4,
    max_size=4,
)


@settings(max_examples=150)
@given(plan=steps, filters=readers)
@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_reader_gets_exactly_its_events_in_order_or_an_explicit_cut(
    setup: str,
    plan: list[tuple[str, object, object, object]],
    filters: list[tuple[str | None, frozenset[str] | None]],
) -> None:
    """Whatever the interleaving of commits (of any size) and reads: each subscriber receives
    exactly the events of its library and types, once, in id order. With the store's log behind
    the ring it is never cut; with the ring alone it is cut (``slow_consumer``) only when an
    event of its own was evicted before it read it, and never delivers past a gap."""
    hub = SETUPS[setup](history_size=16)
    published: list[Event] = []
    subs = [
        hub.hub.subscribe(None if lib is None else f"lib-{lib}", StartPoint(None), kinds)
        for lib, kinds in filters
    ]
    got: list[list[Event]] = [[] for _ in subs]
    cut = [False] * len(subs)
    kept_from = [0] * len(subs)  # the oldest id the ring held when a reader was cut
    for step in plan:
        if step[0] == "publish":
            _, library, kind, count = step
            published += hub.publish(int(count), f"lib-{library}", str(kind))  # type: ignore[arg-type]
            continue
        _, which, count, _ = step
        index = int(which)  # type: ignore[call-overload]
        if cut[index]:
            continue
        try:
            for _ in range(int(count)):  # type: ignore[call-overload]
                event = subs[index].get(timeout=0)
                if event is None:
                    break
                got[index].append(event)
        except SlowConsumerError:
            cut[index], kept_from[index] = True, hub.hub.statistics().first_id
    for index, sub in enumerate(subs):
        if not cut[index]:
            try:
                got[index] += _drain(sub)
            except SlowConsumerError:
                cut[index], kept_from[index] = True, hub.hub.statistics().first_id
        library, kinds = filters[index]
        wanted = [
            e
            for e in published
            if (library is None or e.library_id == f"lib-{library}")
            and (kinds is None or e.type in kinds)
        ]
        assert got[index] == wanted[: len(got[index])], "a gap, a duplicate or a stray event"
        if hub.history is not None:
            assert not cut[index]
        if cut[index]:  # only for an event of its own that the ring no longer held
            assert wanted[len(got[index])].seq < kept_from[index]
        else:
            assert got[index] == wanted
