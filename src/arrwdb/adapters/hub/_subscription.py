"""A subscriber of the local hub: a cursor into its ring, a page read from the log, filters.

Kept apart from the hub (``local``) so that each reads on its own; the two share the hub's lock
and its reading methods (``_next_locked``, ``_fetch``), which only they call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from arrwdb.domain._doorbell import resolve
from arrwdb.domain.errors import SubscriptionClosedError
from arrwdb.domain.events import Event

if TYPE_CHECKING:
    from arrwdb.adapters.hub.local import LocalEventHub


class LocalSubscription:
    """Implements ``arrwdb.domain.ports.Subscription``; made by ``LocalEventHub.subscribe``."""

    def __init__(
        self,
        hub: LocalEventHub,
        library_id: str | None,
        types: frozenset[str] | None,
        next_id: int,
        buffer: int | None,
        reset: Event | None,
        registered_at: int,
    ) -> None:
        self._hub = hub
        self._library_id = library_id
        self._types = types
        self._next = next_id
        self._buffer = buffer
        self._reset = reset
        self._page: deque[Event] = deque()  # events read from the log, all matching
        self._behind = False
        # with a buffer: its own events are counted up to here (what was published before it
        # subscribed, a replay, never counts against the buffer)
        self._counted_to = max(next_id - 1, registered_at)
        self._pending = 0  # of which not yet delivered
        self._last_id: str | None = None
        self._closed = False
        self._error: SubscriptionClosedError | None = None

    @property
    def reset(self) -> Event | None:
        return self._reset

    @property
    def last_id(self) -> str | None:
        return self._last_id

    @property
    def resume_from(self) -> str:
        # every event before the page (or, without one, the cursor) was delivered or was not
        # its own
        return str(self._page[0].seq - 1 if self._page else self._next - 1)

    @property
    def behind(self) -> bool:
        return self._behind

    def _matches(self, event: Event) -> bool:
        if self._library_id is not None and event.library_id != self._library_id:
            return False
        return self._types is None or event.type in self._types

    def _deliver(self, event: Event) -> Event:
        self._last_id = event.id
        if self._buffer is not None and event.seq <= self._counted_to and self._pending:
            self._pending -= 1
        return event

    def _fail(self, error: SubscriptionClosedError) -> None:
        self._fail_quietly(error)
        raise error

    def _fail_quietly(self, error: SubscriptionClosedError) -> None:
        self._error = error
        self._behind = False
        self._hub._subs.discard(self)
        self._hub._cond.notify_all()

    def poll(self) -> Event | None:
        hub = self._hub
        # Caught up and open: nothing to read, without taking the lock (fan-out polls every
        # subscriber after each publish). A publish racing with this check wakes the
        # waiters after it has advanced ``_last``, so the event is read on that wake-up.
        if (
            self._next > hub._last
            and not self._page
            and self._error is None
            and not self._closed
            and not hub._closed
        ):
            return None
        with hub._cond:
            return hub._next_locked(self)

    def get(self, timeout: float | None = None) -> Event | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        hub = self._hub
        cond = hub._cond
        while True:
            with cond:
                event = hub._next_locked(self)
                if event is not None:
                    return event
                if not self._behind:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    cond.wait(remaining)
                    if not self._behind:
                        continue
            hub._fetch(self)

    async def aget(self, timeout: float | None = None) -> Event | None:
        # The hot path of fan-out (one call per event per subscriber): an event that is
        # already there is returned without suspending, and a wait is one bare future (plus
        # one timer with a timeout), without a cancel scope.
        deadline = None if timeout is None else time.monotonic() + timeout
        hub = self._hub
        while True:
            waited = hub._register_async_waiter(self)
            if isinstance(waited, Event):
                return waited
            if waited is None:  # behind the ring: read the log in a worker thread
                await asyncio.to_thread(hub._fetch, self)
                continue
            if deadline is None:
                try:
                    await waited
                finally:
                    if not waited.done() or waited.cancelled():
                        hub._drop_async_waiter(waited)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                hub._drop_async_waiter(waited)
                return self.poll()
            timer = asyncio.get_running_loop().call_later(remaining, resolve, (waited,))
            try:
                await waited
            finally:
                timer.cancel()
                # woken by the timer or cancelled: still registered (a no-op otherwise)
                hub._drop_async_waiter(waited)
            if time.monotonic() >= deadline:
                return self.poll()

    def close(self) -> None:
        if not self._closed:
            self._hub._unsubscribe(self)
