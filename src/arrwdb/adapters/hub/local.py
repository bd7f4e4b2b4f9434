"""The local event hub: one shared, bounded history of recent events that every subscriber reads
with a cursor, and the store's log behind it.

Design (why it is shaped like this):

* **One copy of each event.** Published events go into a ring of ``history_size`` slots,
  indexed by id. A subscriber is a cursor (the next id it wants) plus its filters, so fan-out
  to a thousand subscribers costs no per-subscriber memory, and ``publish`` is O(events) plus
  one wake-up per waiting thread/event loop. Memory is bounded by the ring, whatever
  subscribers do.
* **A reader is cut only for its own backlog.** A subscriber whose next position left the ring
  has lost nothing if none of *its* events (its library, its types) was evicted meanwhile: the
  ring remembers, per library and type, the last position it evicted, and the cursor jumps
  ahead. Otherwise it reads on from the store's log (``EventHistory``: the disk store's
  write-ahead log), a page at a time (``fetch``, off the event loop), exactly as a resume
  would. Only when those events are gone (the in-memory store keeps nothing beyond the ring,
  a log keeps a bounded history) is it closed with ``SlowConsumerError``, naming the last id it
  was given, so it can resume. With ``buffer`` it is also closed once more than ``buffer`` of its
  own events wait unread. Publishers never wait for subscribers.
* **Resume = start the cursor further back.** ``subscribe`` registers the cursor under the same
  lock as ``publish``, so nothing published after it returns is missed and nothing is
  delivered twice. A start point that is no longer kept (or an id from the future, e.g. from
  before an in-memory server restarted) gives the subscription a ``stream.reset`` event
  (``events.stream_reset``) and a live start: never a silent gap.
* **Sync and async consumers.** Threads wait on a condition variable; coroutines wait on a
  future of their own event loop, woken with ``call_soon_threadsafe`` when the publisher runs
  in another thread (the service runs CPU work off the loop).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from arrwdb.adapters.hub._subscription import LocalSubscription
from arrwdb.domain._doorbell import ring, wake
from arrwdb.domain.errors import HistoryLostError, SlowConsumerError, SubscriptionClosedError
from arrwdb.domain.events import Event, StartPoint, stream_reset
from arrwdb.domain.ports import EventHistory

DEFAULT_HISTORY = 10_000
#: Events read from the log per page (what a subscriber behind the ring holds at most).
PAGE_EVENTS = 1_000

_Key = tuple[str | None, str | None]  # (library id, event type); None: any


@dataclass(frozen=True, slots=True)
class HubStatistics:
    subscribers: int
    first_id: int
    last_id: int
    retained: int
    history_size: int


class LocalEventHub:
    """Implements ``arrwdb.domain.ports.EventHub`` within one process."""

    def __init__(
        self,
        history_size: int = DEFAULT_HISTORY,
        history_max_age: float | None = None,
        default_buffer: int | None = None,
        page_events: int = PAGE_EVENTS,
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be >= 1")
        if default_buffer is not None and default_buffer < 1:
            raise ValueError("default_buffer must be >= 1")
        self._cap = history_size
        self._max_age = history_max_age
        self._default_buffer = default_buffer
        self._page_events = max(1, page_events)
        self._ring: list[Event | None] = [None] * history_size
        self._stamps: list[float] = [0.0] * history_size  # monotonic publish times, for age
        self._first = 1  # id of the oldest event in the ring (== _last + 1 when empty)
        self._last = 0
        #: the last position evicted from the ring, per (library, type), (library, None),
        #: (None, type) and (None, None)
        self._evicted: dict[_Key, int] = {}
        self._began = 1  # the first id this hub was given: what came before, it never held
        self._history: EventHistory | None = None
        self._cond = threading.Condition(threading.Lock())
        self._subs: set[LocalSubscription] = set()
        self._async_waiters: dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]] = {}
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, last_id: int = 0, history: EventHistory | None = None) -> None:
        with self._cond:
            if self._last or self._subs:
                raise RuntimeError("start() comes before any publish or subscribe")
            self._first, self._last = last_id + 1, last_id
            self._began = last_id + 1
            self._history = history

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            waiters = self._take_async_waiters()
            self._cond.notify_all()
        wake(waiters)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        first = events[0].seq
        last = first + len(events) - 1
        with self._cond:
            if self._closed:
                return
            if first != self._last + 1:
                raise ValueError(f"event id {first} does not follow {self._last}")
            cap, ring, stamps = self._cap, self._ring, self._stamps
            keep_from = max(self._first, last - cap + 1)  # the ring holds the last cap ids
            self._evict_through(keep_from - 1)
            skip = max(0, len(events) - cap)
            for event in events[:skip]:  # a batch larger than the ring: only its tail enters
                self._note_evicted(event)
            now = time.monotonic()
            for event in events[skip:]:
                slot = event.seq % cap
                ring[slot] = event
                stamps[slot] = now
            self._first, self._last = keep_from, last
            self._evict_aged(now)
            waiters = self._take_async_waiters()
            self._cond.notify_all()
        wake(waiters)

    def _evict_through(self, seq: int) -> None:
        """Drop the ring's events up to ``seq`` (caller holds the lock)."""
        ring, cap = self._ring, self._cap
        while self._first <= min(seq, self._last):
            slot = self._first % cap
            event = ring[slot]
            if event is not None:
                self._note_evicted(event)
                ring[slot] = None
            self._first += 1

    def _note_evicted(self, event: Event) -> None:
        seq, library, kind = event.seq, event.library_id, event.type
        evicted = self._evicted
        evicted[(library, kind)] = seq
        evicted[(library, None)] = seq
        evicted[(None, kind)] = seq
        evicted[(None, None)] = seq

    def _evict_aged(self, now: float) -> None:
        if self._max_age is None:
            return
        horizon = now - self._max_age
        while self._first <= self._last and self._stamps[self._first % self._cap] < horizon:
            self._evict_through(self._first)

    def _take_async_waiters(
        self,
    ) -> dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]]:
        waiters, self._async_waiters = self._async_waiters, {}
        return waiters

    # -- subscribing --------------------------------------------------------------------------

    def subscribe(
        self,
        library_id: str | None,
        start: StartPoint,
        types: frozenset[str] | None = None,
        buffer: int | None = None,
    ) -> LocalSubscription:
        history = self._history
        # outside the lock: a log may read its index under a lock of its own
        history_earliest = None if history is None else history.earliest
        with self._cond:
            if self._closed:
                raise SubscriptionClosedError("the change stream is closed")
            self._evict_aged(time.monotonic())
            last = self._last
            earliest = (
                self._first if history_earliest is None else min(self._first, history_earliest)
            )
            earliest = min(earliest, last + 1)
            reset = None
            after = start.after
            if after is None:
                next_id = last + 1
            elif after == 0:
                next_id = earliest
            elif after > last:
                next_id, reset = last + 1, stream_reset(library_id, after, earliest, last)
            elif after + 1 >= earliest or (
                history is None and not self._evicted_since(library_id, types, after)
            ):
                next_id = after + 1
            else:
                next_id, reset = last + 1, stream_reset(library_id, after, earliest, last)
            sub = LocalSubscription(
                self, library_id, types, next_id, buffer or self._default_buffer, reset, last
            )
            self._subs.add(sub)
            return sub

    def _evicted_since(
        self, library_id: str | None, types: frozenset[str] | None, after: int
    ) -> bool:
        """Whether the ring evicted an event of this library and these types after ``after``,
        or may never have held one (caller holds the lock)."""
        if after + 1 < self._began:
            return True
        evicted = self._evicted
        if types is None:
            return evicted.get((library_id, None), 0) > after
        return any(evicted.get((library_id, kind), 0) > after for kind in types)

    @property
    def last_id(self) -> int:
        return self._last

    async def wait_beyond(self, after: int, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._closed:
                    raise SubscriptionClosedError("the change stream is closed")
                if self._last > after:
                    return self._last
                fut: asyncio.Future[None] = loop.create_future()
                self._async_waiters.setdefault(loop, set()).add(fut)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._drop_async_waiter(fut)
                return self._last
            try:
                await ring(fut, remaining)
            finally:
                self._drop_async_waiter(fut)

    def statistics(self) -> HubStatistics:
        with self._cond:
            return HubStatistics(
                subscribers=len(self._subs),
                first_id=self._first,
                last_id=self._last,
                retained=self._last - self._first + 1,
                history_size=self._cap,
            )

    # -- reading (called by subscriptions) ----------------------------------------------------

    def _next_locked(self, sub: LocalSubscription) -> Event | None:
        """The subscriber's next event from its page or the ring (caller holds the lock);
        ``None`` when there is none yet, or when it must first fetch from the log."""
        if sub._error is not None:
            raise sub._error
        if sub._page:
            return sub._deliver(sub._page.popleft())
        if sub._next < self._first:
            if not self._evicted_since(sub._library_id, sub._types, sub._next - 1):
                sub._next = self._first  # nothing of its own was evicted meanwhile
            elif self._history is not None:
                sub._behind = True
                return None
            else:
                sub._fail(
                    SlowConsumerError(
                        f"subscriber fell behind: its events after {sub.last_id or 0} are no "
                        f"longer retained; resume with since={sub.last_id or 0}",
                        last_event_id=sub.last_id,
                    )
                )
        sub._behind = False
        if sub._buffer is not None:
            self._check_backlog(sub)
        ring, cap, last = self._ring, self._cap, self._last
        while sub._next <= last:
            event = ring[sub._next % cap]
            sub._next += 1
            if event is not None and sub._matches(event):
                return sub._deliver(event)
        if self._closed or sub._closed:
            sub._fail(SubscriptionClosedError("the change stream was closed"))
        return None

    def _check_backlog(self, sub: LocalSubscription) -> None:
        """Count the subscriber's own unread events in the ring (each once) and cut it when
        they exceed its buffer."""
        assert sub._buffer is not None
        start = max(sub._counted_to + 1, sub._next, self._first)
        ring, cap = self._ring, self._cap
        for seq in range(start, self._last + 1):
            event = ring[seq % cap]
            if event is not None and sub._matches(event):
                sub._pending += 1
        sub._counted_to = max(sub._counted_to, self._last)
        if sub._pending > sub._buffer:
            sub._fail(
                SlowConsumerError(
                    f"subscriber has {sub._pending} unread events (buffer {sub._buffer}); "
                    f"resume with since={sub.last_id or 'earliest'}",
                    last_event_id=sub.last_id,
                )
            )

    def _fetch(self, sub: LocalSubscription) -> None:
        """Read the subscriber's next page from the log (no lock held while reading)."""
        history = self._history
        with self._cond:
            if not sub._behind or sub._page or sub._error is not None or history is None:
                return
            after, until = sub._next - 1, self._last
        try:
            events, through = history.events_after(after, self._page_events, sub._library_id, until)
        except HistoryLostError:
            with self._cond:
                sub._fail_quietly(
                    SlowConsumerError(
                        f"subscriber fell behind: its events after {sub.last_id or 0} are no "
                        f"longer kept; resume with since={sub.last_id or 0}",
                        last_event_id=sub.last_id,
                    )
                )
            return
        with self._cond:
            if sub._next - 1 != after or sub._error is not None:
                return
            if through <= after:  # the log has nothing it should have: never spin on it
                sub._fail_quietly(
                    SlowConsumerError(
                        f"the log holds no events after {after}; resume with "
                        f"since={sub.last_id or 0}",
                        last_event_id=sub.last_id,
                    )
                )
                return
            sub._page.extend(e for e in events if sub._matches(e))
            sub._next = through + 1
            sub._behind = False
            waiters = self._take_async_waiters()
            self._cond.notify_all()
        wake(waiters)

    def _register_async_waiter(self, sub: LocalSubscription) -> asyncio.Future[None] | Event | None:
        """The next event, ``None`` if the subscriber must fetch first, or a future to wait on."""
        loop = asyncio.get_running_loop()
        with self._cond:
            event = self._next_locked(sub)
            if event is not None or sub._behind:
                return event
            fut: asyncio.Future[None] = loop.create_future()
            self._async_waiters.setdefault(loop, set()).add(fut)
            return fut

    def _drop_async_waiter(self, fut: asyncio.Future[None]) -> None:
        fut.cancel()
        with self._cond:
            for futures in self._async_waiters.values():
                futures.discard(fut)

    def _unsubscribe(self, sub: LocalSubscription) -> None:
        with self._cond:
            self._subs.discard(sub)
            sub._closed = True
            waiters = self._take_async_waiters()
            self._cond.notify_all()
        wake(waiters)
