"""Live queries (watches): a search that stays open and tells its listeners how its results change.

A **top-k watch** (``k`` given, optional ``threshold`` floor) keeps the set an exact search for its
query (among chunks passing its filter and floor) would return; it starts with ``watch.ready`` (the
results and the change event id they are consistent at), then sends ``watch.entered`` and
``watch.left`` as changes move chunks in and out. A **match watch** (only ``threshold``) sends a
``watch.match`` for every chunk added or updated whose score reaches the threshold and that passes
the filter. Every event names the change event that caused it (``event_id``); the engine that keeps
the sets is ``_watch_engine``, fed by the projector with every committed batch.

Watch event ids are ``"<change event id>.<n>"`` (the n-th event that change caused for the watch),
and a ``watch.ready``'s id is the change event id it is consistent at: ids increase within a watch,
are the same on every server that follows the same log, and a listener resumes after any of them.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import numpy as np

from arrwdb.domain import validation as v
from arrwdb.domain._doorbell import Waiters, ring, wake
from arrwdb.domain.errors import InvalidArgumentError, SubscriptionClosedError
from arrwdb.domain.events import HISTORY_LOST, STREAM_CLOSED, STREAM_RESET
from arrwdb.domain.models import Vector, format_timestamp, utcnow

WATCH_READY: Final = "watch.ready"
WATCH_ENTERED: Final = "watch.entered"
WATCH_LEFT: Final = "watch.left"
WATCH_MATCH: Final = "watch.match"
WATCH_EVENT_TYPES: Final = (WATCH_READY, WATCH_ENTERED, WATCH_LEFT, WATCH_MATCH)
#: Why a chunk left a top-k watch's results.
LEFT_REASONS: Final = ("deleted", "updated", "outranked", "filtered")
#: Why a watch's stream ended (``stream.closed``'s ``reason``).
CLOSED_DELETED: Final = "watch_deleted"
CLOSED_LIBRARY_DELETED: Final = "library_deleted"
CLOSED_EXPIRED: Final = "watch_expired"
CLOSED_SHUTDOWN: Final = "shutdown"

#: Watch events a watch keeps for listeners that resume (per watch, by default).
DEFAULT_WATCH_HISTORY: Final = 1_000

#: A position in a watch's stream: ``(change event id, n)``; a ``watch.ready`` at change ``N``
#: is ``(N, READY)``: after every event change ``N`` caused.
Key = tuple[int, int]
READY: Final = 2**62


@dataclass(frozen=True, slots=True)
class Watch:
    """A watch's registration: what ``POST .../watches`` answers (``info``) and what is stored.
    ``vector`` is the query as the library searches it (text is embedded once, at
    registration)."""

    id: str
    library_id: str
    k: int | None
    threshold: float | None
    filter: Mapping[str, Any] | None
    created_at: datetime
    vector: Vector = field(compare=False, repr=False)
    query_text: str | None = None

    @property
    def kind(self) -> str:
        return "match" if self.k is None else "top_k"

    def info(self) -> dict[str, Any]:
        """The spec's JSON shape of a watch."""
        return {
            "id": self.id,
            "library_id": self.library_id,
            "k": self.k,
            "threshold": self.threshold,
            "filter": None if self.filter is None else dict(self.filter),
            "created_at": format_timestamp(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch. ``data`` is JSON-ready; ``key`` orders it in its watch's stream."""

    id: str
    type: str
    library_id: str
    watch_id: str
    data: Mapping[str, Any]
    timestamp: datetime = field(default_factory=utcnow)

    @property
    def key(self) -> Key:
        return parse_watch_event_id(self.id)

    def envelope(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "library_id": self.library_id,
            "watch_id": self.watch_id,
            "timestamp": format_timestamp(self.timestamp),
            "data": dict(self.data),
        }


def watch_event_id(key: Key) -> str:
    position, n = key
    return str(position) if n == READY else f"{position}.{n}"


def parse_watch_event_id(value: object, field: str = "since") -> Key:
    """A watch event id a client echoes back (``"42"`` or ``"42.3"``) as a ``Key``. Raises
    ``InvalidArgumentError`` naming ``field``."""
    if isinstance(value, str):
        head, dot, tail = value.strip().partition(".")
        if _digits(head) and (not dot or _digits(tail)):
            return (int(head), int(tail) if dot else READY)
    raise InvalidArgumentError(
        f"{field} must be a watch event id ('42' or '42.3'), not {str(value)[:40]!r}",
        field=field,
    )


def _digits(text: str) -> bool:
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


def check_watch(k: object, threshold: object) -> tuple[int | None, float | None]:
    """A watch's ``k`` (1..1000, or ``None`` for a match watch) and ``threshold`` (a finite
    number, required without ``k``). Raises ``InvalidArgumentError`` naming the field."""
    checked_k = None if k is None else v.check_k(k)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise InvalidArgumentError("threshold must be a number", field="threshold")
        if not math.isfinite(float(threshold)):
            raise InvalidArgumentError("threshold must be finite", field="threshold")
        threshold = float(threshold)
    elif checked_k is None:
        raise InvalidArgumentError(
            "a watch needs k (a top-k watch) or threshold (a match watch)", field="k"
        )
    return checked_k, threshold


class WatchFeed:
    """A watch's events for its listeners: a bounded history (``history`` events) and the
    listeners' wake-ups. The engine appends (``append``) and serves ``watch.ready`` snapshots
    (``ready``) under ``lock``; listeners read with a cursor, so a feed costs no memory per
    listener beyond its position."""

    def __init__(self, history: int, start: Key) -> None:
        self.lock = threading.Condition(threading.Lock())
        self._cap = max(1, history)
        self._events: deque[WatchEvent] = deque()
        self._keys: deque[Key] = deque()
        #: the absolute number of the first event held (events before it were dropped)
        self._offset = 0
        #: every event after this key is held (the key of the last one dropped, at first the
        #: watch's start)
        self.floor: Key = start
        self._async: Waiters = {}
        self.closed: str | None = None  # the reason, once closed
        self.listeners = 0
        self.idle_since = time.monotonic()

    # -- the engine's side (caller holds ``lock``) --------------------------------------------

    def append(self, events: list[WatchEvent], keys: list[Key] | None = None) -> None:
        """Add events (``keys``: their keys, if the caller has them: not parsed again)."""
        self._events.extend(events)
        self._keys.extend([event.key for event in events] if keys is None else keys)
        excess = len(self._events) - self._cap
        for _ in range(max(0, excess)):
            self._events.popleft()
            self.floor = self._keys.popleft()
            self._offset += 1
        if events:
            self._wake_locked()

    def close(self, reason: str) -> None:
        with self.lock:
            if self.closed is None:
                self.closed = reason
                self._wake_locked()

    def _wake_locked(self) -> None:
        self.lock.notify_all()
        waiters, self._async = self._async, {}
        wake(waiters)

    # -- the listeners' side ------------------------------------------------------------------

    @property
    def end(self) -> int:
        """The absolute number the next event appended gets."""
        return self._offset + len(self._events)

    def index_after(self, key: Key) -> int | None:
        """The absolute number of the first event after ``key``, or ``None`` when events after
        ``key`` were dropped (caller holds ``lock``)."""
        if key < self.floor:
            return None
        keys = self._keys
        lo, hi = 0, len(keys)
        while lo < hi:  # bisect over the deque (at most ``history`` keys)
            mid = (lo + hi) // 2
            if keys[mid] <= key:
                lo = mid + 1
            else:
                hi = mid
        return self._offset + lo

    def at(self, index: int) -> WatchEvent | None:
        """Event number ``index`` if still held (caller holds ``lock``)."""
        i = index - self._offset
        return self._events[i] if 0 <= i < len(self._events) else None

    @property
    def oldest(self) -> Key:
        return self._keys[0] if self._keys else self.floor

    def register_async(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = loop.create_future()
        self._async.setdefault(loop, set()).add(fut)
        return fut

    def drop_async(self, fut: asyncio.Future[None]) -> None:
        with self.lock:
            for futures in self._async.values():
                futures.discard(fut)


def reset_event(
    library_id: str, watch_id: str, requested: str, earliest: Key, resume_from: Key
) -> WatchEvent:
    """The ``stream.reset`` of a watch listener whose start point is no longer held: a fresh
    ``watch.ready`` (at ``resume_from``) follows it."""
    return WatchEvent(
        id=watch_event_id(resume_from),
        type=STREAM_RESET,
        library_id=library_id,
        watch_id=watch_id,
        data={
            "reason": HISTORY_LOST,
            "requested": requested,
            "earliest": watch_event_id(earliest),
            "resume_from": watch_event_id(resume_from),
        },
    )


def closed_event(library_id: str, watch_id: str, reason: str, last_id: str | None) -> WatchEvent:
    """The last event of a watch's stream when the watch ends (deleted, expired, its library
    deleted, the server stopping)."""
    return WatchEvent(
        id=last_id or "0",
        type=STREAM_CLOSED,
        library_id=library_id,
        watch_id=watch_id,
        data={"reason": reason, "last_id": last_id},
    )


class WatchListener:
    """One reader of a watch's events: a ``watch.ready`` (or a ``stream.reset`` and a fresh
    ``watch.ready`` when its resume point is no longer held), then the events after it, in
    order. ``get``/``aget`` raise ``SubscriptionClosedError`` once the watch has ended (its
    reason in ``closed_reason``) and every held event was read, or once the listener was
    closed and the events held at that moment were read (a later one is for the reader that
    resumes from ``last_id``)."""

    def __init__(self, source: WatchSource, since: str | None) -> None:
        self._source = source
        self._feed = source.feed
        self._pending: deque[WatchEvent] = deque()
        self._next = 0
        self._closed = False
        self._stop_at: int | None = None  # the feed's end when this listener was closed
        self.last_id: str | None = None
        with self._feed.lock:
            self._feed.listeners += 1
            self._start_locked(since)

    @property
    def watch_id(self) -> str:
        return self._source.watch.id

    @property
    def closed_reason(self) -> str | None:
        return self._feed.closed

    def _start_locked(self, since: str | None) -> None:
        feed = self._feed
        if since is not None:
            key = parse_watch_event_id(since)
            index = feed.index_after(key)
            if index is not None:
                self._next = index
                return
            ready = self._source.ready_locked()
            self._pending.append(
                reset_event(
                    self._source.watch.library_id,
                    self.watch_id,
                    since,
                    feed.oldest,
                    ready.key,
                )
            )
        else:
            ready = self._source.ready_locked()
        self._pending.append(ready)
        self._next = feed.end

    def _take_locked(self) -> WatchEvent | None:
        if self._pending:
            return self._pending.popleft()
        feed = self._feed
        end = feed.end if self._stop_at is None else min(feed.end, self._stop_at)
        if self._next < end:
            event = feed.at(self._next)
            if event is None:  # dropped before it was read: start over with a fresh ready
                self._start_locked(self.last_id or watch_event_id(feed.floor))
                return self._pending.popleft() if self._pending else None
            self._next += 1
            return event
        if feed.closed is not None or self._closed:
            raise SubscriptionClosedError(f"the watch has ended ({feed.closed or 'closed'})")
        return None

    def _delivered(self, event: WatchEvent | None) -> WatchEvent | None:
        if event is not None:
            self.last_id = event.id
        return event

    def poll(self) -> WatchEvent | None:
        with self._feed.lock:
            return self._delivered(self._take_locked())

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        feed = self._feed
        with feed.lock:
            while True:
                event = self._take_locked()
                if event is not None:
                    return self._delivered(event)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                feed.lock.wait(remaining)

    async def aget(self, timeout: float | None = None) -> WatchEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        feed = self._feed
        loop = asyncio.get_running_loop()
        while True:
            with feed.lock:
                event = self._take_locked()
                if event is not None:
                    return self._delivered(event)
                fut = feed.register_async(loop)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                feed.drop_async(fut)
                return None
            try:
                await ring(fut, remaining)
            finally:
                feed.drop_async(fut)

    def close(self) -> None:
        with self._feed.lock:
            if not self._closed:
                self._closed = True
                self._stop_at = self._feed.end  # what is appended later is not this reader's
                self._feed.listeners -= 1
                if not self._feed.listeners:
                    self._feed.idle_since = time.monotonic()
                # wake this listener's readers, threads and coroutines (an ``aget`` waiting
                # on another task's loop ends now, not at its timeout)
                self._feed._wake_locked()


class WatchSource(Protocol):
    """What a listener reads: a watch's feed and its ``watch.ready`` snapshots (the engine's
    ``LiveWatch`` implements it)."""

    @property
    def watch(self) -> Watch: ...

    @property
    def feed(self) -> WatchFeed: ...

    def ready_locked(self) -> WatchEvent:
        """The ``watch.ready`` of the results now (caller holds ``feed.lock``)."""
        ...


def prepared_query(vector: Vector, metric: str) -> Vector:
    """A query vector as the indexes score it: unit length under cosine."""
    q = np.ascontiguousarray(vector, dtype=np.float32)
    if metric == "cosine":
        norm = float(np.sqrt(np.dot(q.astype(np.float64), q.astype(np.float64))))
        if norm > 0:
            q = (q / np.float32(norm)).astype(np.float32)
    return q
