"""In-process event bus: one shared, bounded history that every subscriber reads with a cursor.

Design (why it is shaped like this):

* **One copy of each event.** Published events go into a ring of ``history_size`` slots, indexed
  by id. A subscriber is only a cursor (the next id it wants) plus its filters, so fan-out to a
  thousand subscribers costs no per-subscriber memory and ``publish`` is O(1) plus one wake-up
  per waiting thread/event loop. Memory is bounded by the history, whatever subscribers do.
* **Resume = start the cursor further back.** ``subscribe`` registers the cursor under the same
  lock as ``publish``, so nothing published after it returns is missed and nothing is delivered
  twice. A start point that the ring no longer holds (or an id from the future, e.g. from before
  an in-memory server restarted) gives ``reset=True`` and a live start: never a silent gap.
* **Slow consumers are cut off, not waited for.** A subscriber that lets more than ``buffer``
  live events pile up unread, or whose next event was evicted from the ring, is closed with
  ``SlowConsumerError`` on its next read (it can resume with ``since=last_id``). Publishers never
  block on subscribers.
* **Sync and async consumers.** Threads wait on a condition variable; coroutines wait on a
  future of their own event loop, woken with ``call_soon_threadsafe`` when the publisher runs in
  another thread (the service runs CPU work off the loop). Async waiting uses asyncio (the
  backend Litestar and uvicorn run on), timeouts a timer of the loop: no cancel scope on
  the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from arrwdb.domain.errors import SlowConsumerError, SubscriptionClosedError
from arrwdb.domain.events import Event, StartPoint

DEFAULT_HISTORY = 10_000
DEFAULT_BUFFER = 1_000


@dataclass(frozen=True, slots=True)
class BusStatistics:
    subscribers: int
    first_id: int
    last_id: int
    retained: int
    history_size: int


class InProcessEventBus:
    """Implements ``arrwdb.domain.ports.EventBus`` within one process."""

    def __init__(
        self,
        history_size: int = DEFAULT_HISTORY,
        history_max_age: float | None = None,
        default_buffer: int = DEFAULT_BUFFER,
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be >= 1")
        if default_buffer < 1:
            raise ValueError("default_buffer must be >= 1")
        self._cap = history_size
        self._max_age = history_max_age
        self._default_buffer = default_buffer
        self._ring: list[Event | None] = [None] * history_size
        self._stamps: list[float] = [0.0] * history_size  # monotonic publish times, for age
        self._first = 1  # id of the oldest retained event (== _last + 1 when empty)
        self._last = 0
        self._cond = threading.Condition(threading.Lock())
        self._subs: set[InProcessSubscription] = set()
        self._async_waiters: dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]] = {}
        self._closed = False

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        seq = event.seq
        with self._cond:
            if self._closed:
                return
            if seq != self._last + 1:
                raise ValueError(f"event id {seq} does not follow {self._last}")
            slot = seq % self._cap
            self._ring[slot] = event
            now = time.monotonic()
            self._stamps[slot] = now
            self._last = seq
            if seq - self._first >= self._cap:
                self._first = seq - self._cap + 1
            self._evict_aged(now)
            waiters = self._take_async_waiters()
            self._cond.notify_all()
        _wake(waiters)

    def restore(self, events: Sequence[Event]) -> None:
        with self._cond:
            if self._last:
                raise RuntimeError("restore() must come before any publish")
            kept = list(events)[-self._cap :]
            now = time.monotonic()
            for ev in kept:
                self._ring[ev.seq % self._cap] = ev
                self._stamps[ev.seq % self._cap] = now
            if kept:
                self._first, self._last = kept[0].seq, kept[-1].seq
                if self._last - self._first + 1 != len(kept):
                    raise ValueError("restored events must have consecutive ids")

    def _evict_aged(self, now: float) -> None:
        if self._max_age is None:
            return
        horizon = now - self._max_age
        while self._first <= self._last and self._stamps[self._first % self._cap] < horizon:
            self._ring[self._first % self._cap] = None
            self._first += 1

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
    ) -> InProcessSubscription:
        with self._cond:
            if self._closed:
                raise SubscriptionClosedError("the event bus is closed")
            self._evict_aged(time.monotonic())
            reset = False
            if start.after is None:
                next_id = self._last + 1
            elif start.after == 0:
                next_id = self._first
            elif start.after > self._last or start.after + 1 < self._first:
                reset, next_id = True, self._last + 1
            else:
                next_id = start.after + 1
            sub = InProcessSubscription(
                self, library_id, types, next_id, self._last, buffer or self._default_buffer, reset
            )
            self._subs.add(sub)
            return sub

    @property
    def last_id(self) -> int:
        return self._last

    def statistics(self) -> BusStatistics:
        with self._cond:
            return BusStatistics(
                subscribers=len(self._subs),
                first_id=self._first,
                last_id=self._last,
                retained=self._last - self._first + 1,
                history_size=self._cap,
            )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiters = self._take_async_waiters()
            self._cond.notify_all()
        _wake(waiters)

    # -- reading (called by subscriptions, under self._cond) ----------------------------------

    def _next_locked(self, sub: InProcessSubscription) -> Event | None:
        if sub._error is not None:
            raise sub._error
        if sub._next < self._first:
            sub._fail(
                SlowConsumerError(
                    f"subscriber fell behind: events after {sub.last_id or 0} are no longer "
                    "retained; resynchronise",
                    last_event_id=sub.last_id,
                )
            )
        backlog = self._last - max(sub._next - 1, sub._registered_at)
        if backlog > sub._buffer:
            sub._fail(
                SlowConsumerError(
                    f"subscriber fell {backlog} events behind (buffer {sub._buffer}); "
                    f"resume with since={sub.last_id or 'earliest'}",
                    last_event_id=sub.last_id,
                )
            )
        while sub._next <= self._last:
            event = self._ring[sub._next % self._cap]
            sub._next += 1
            if event is not None and sub._matches(event):
                sub._last_id = event.id
                return event
        if self._closed or sub._closed:
            sub._fail(SubscriptionClosedError("the change stream was closed"))
        return None

    def _register_async_waiter(self, sub: InProcessSubscription) -> asyncio.Future[None] | Event:
        loop = asyncio.get_running_loop()
        with self._cond:
            event = self._next_locked(sub)
            if event is not None:
                return event
            fut: asyncio.Future[None] = loop.create_future()
            self._async_waiters.setdefault(loop, set()).add(fut)
            return fut

    def _drop_async_waiter(self, fut: asyncio.Future[None]) -> None:
        fut.cancel()
        with self._cond:
            for futures in self._async_waiters.values():
                futures.discard(fut)

    def _unsubscribe(self, sub: InProcessSubscription) -> None:
        with self._cond:
            self._subs.discard(sub)
            sub._closed = True
            waiters = self._take_async_waiters()
            self._cond.notify_all()
        _wake(waiters)


class InProcessSubscription:
    """Implements ``arrwdb.domain.ports.Subscription``; made by ``InProcessEventBus.subscribe``."""

    def __init__(
        self,
        bus: InProcessEventBus,
        library_id: str | None,
        types: frozenset[str] | None,
        next_id: int,
        registered_at: int,
        buffer: int,
        reset: bool,
    ) -> None:
        self._bus = bus
        self._library_id = library_id
        self._types = types
        self._next = next_id
        self._registered_at = registered_at
        self._buffer = buffer
        self._reset = reset
        self._last_id: str | None = None
        self._closed = False
        self._error: SubscriptionClosedError | None = None

    @property
    def reset(self) -> bool:
        return self._reset

    @property
    def last_id(self) -> str | None:
        return self._last_id

    def _matches(self, event: Event) -> bool:
        if self._library_id is not None and event.library_id != self._library_id:
            return False
        return self._types is None or event.type in self._types

    def _fail(self, error: SubscriptionClosedError) -> None:
        self._error = error
        self._bus._subs.discard(self)
        raise error

    def poll(self) -> Event | None:
        bus = self._bus
        # Caught up and open: nothing to read, without taking the lock (fan-out polls every
        # subscriber after each publish). A publish racing with this check wakes the
        # waiters after it has advanced ``_last``, so the event is read on that wake-up.
        caught_up = self._next > bus._last
        if caught_up and self._error is None and not self._closed and not bus._closed:
            return None
        with bus._cond:
            return bus._next_locked(self)

    def get(self, timeout: float | None = None) -> Event | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        cond = self._bus._cond
        with cond:
            while True:
                event = self._bus._next_locked(self)
                if event is not None:
                    return event
                if deadline is None:
                    cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                cond.wait(remaining)

    async def aget(self, timeout: float | None = None) -> Event | None:
        # The hot path of fan-out (one call per event per subscriber): an event that is
        # already there is returned without suspending, and a wait is one bare future (plus
        # one timer with a timeout), without a cancel scope.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waited = self._bus._register_async_waiter(self)
            if isinstance(waited, Event):
                return waited
            if deadline is None:
                try:
                    await waited
                finally:
                    if not waited.done() or waited.cancelled():
                        self._bus._drop_async_waiter(waited)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._bus._drop_async_waiter(waited)
                return self.poll()
            timer = asyncio.get_running_loop().call_later(remaining, _resolve, (waited,))
            try:
                await waited
            finally:
                timer.cancel()
                # woken by the timer or cancelled: still registered (a no-op otherwise)
                self._bus._drop_async_waiter(waited)
            if time.monotonic() >= deadline:
                return self.poll()

    def close(self) -> None:
        if not self._closed:
            self._bus._unsubscribe(self)


def _wake(waiters: dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]]) -> None:
    if not waiters:
        return
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, futures in waiters.items():
        if loop is current:
            _resolve(futures)
        else:
            # a closed loop raises RuntimeError: its waiters are gone with it
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, futures)


def _resolve(futures: Iterable[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)
