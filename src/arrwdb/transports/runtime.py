"""What the transports share while the server runs: the service, the dispatcher, the encoded
event cache, the open WebSocket connections and SSE streams, and the graceful drain.

One :class:`Runtime` per app, made by the app factory and handed to handlers with
``Provide``. The service is attached in the app's lifespan (``start``); ``drain`` runs first
at shutdown: it refuses new writes, ends SSE streams, closes WebSockets with 1001 (after their
in-flight requests are answered) and waits for writes in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeAlias, TypeVar

import anyio
from litestar.di import NamedDependency

from arrwdb.config import Settings
from arrwdb.domain.access import KeyRing
from arrwdb.domain.errors import SubscriptionClosedError
from arrwdb.domain.events import Event
from arrwdb.domain.models import format_timestamp
from arrwdb.domain.service import VectorDBService
from arrwdb.transports._watches import WatchOwners
from arrwdb.transports.dispatch import Dispatcher, WriteGate
from arrwdb.transports.envelopes import EventEnvelope, WSEvent
from arrwdb.transports.limits import RateLimiter, StreamCounter
from arrwdb.transports.messages import WebSocketStats, encoder

logger = logging.getLogger("arrwdb.transports")


T = TypeVar("T")


class EventFrames:
    """Encodes each event once, whatever the number of subscribers: a small cache of the
    WebSocket frame, of the SSE ``data`` (the envelope) and of the whole SSE message by event
    id. Subscribers read events at about the same time, so the last thousand ids cover them."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._ws: dict[str, str] = {}
        self._sse: dict[str, str] = {}
        self._sse_messages: dict[str, bytes] = {}

    def sse_message(self, event: Event) -> bytes:
        """The SSE message of ``event`` (``id``, ``event`` and ``data`` lines), encoded once."""
        message = self._sse_messages.get(event.id)
        if message is None:
            message = sse_message(event.id, event.type, self.sse(event))
            if len(self._sse_messages) >= self._size:
                for old in list(self._sse_messages)[: self._size // 4]:
                    del self._sse_messages[old]
            self._sse_messages[event.id] = message
        return message

    def ws(self, event: Event) -> str:
        frame = self._ws.get(event.id)
        if frame is None:
            frame = self._put(self._ws, event.id, encoder.encode(ws_event(event)).decode())
        return frame

    def sse(self, event: Event) -> str:
        data = self._sse.get(event.id)
        if data is None:
            data = self._put(self._sse, event.id, encoder.encode(envelope(event)).decode())
        return data

    def _put(self, cache: dict[str, str], key: str, value: str) -> str:
        if len(cache) >= self._size:
            # dicts keep insertion order: drop the oldest quarter in one go
            for old in list(cache)[: self._size // 4]:
                del cache[old]
        cache[key] = value
        return value


def envelope(event: Event) -> EventEnvelope:
    """The spec's event envelope of ``event`` (also of ``stream.reset`` and ``stream.closed``)."""
    return EventEnvelope(
        id=event.id,
        type=event.type,
        library_id=event.library_id,
        timestamp=format_timestamp(event.timestamp),
        data=dict(event.data),
    )


def ws_event(event: Event) -> WSEvent:
    return WSEvent(
        event_type=event.type,
        library_id=event.library_id,
        data=dict(event.data),
        id=event.id,
        timestamp=format_timestamp(event.timestamp),
    )


def sse_message(event_id: str | None, event_type: str | None, data: str) -> bytes:
    """One Server-Sent Events message; lines end in ``\n`` (``data`` is one line of JSON)."""
    head = "" if event_id is None else f"id: {event_id}\n"
    if event_type is not None:
        head += f"event: {event_type}\n"
    return f"{head}data: {data}\n\n".encode()


class Outbox(Generic[T]):
    """A bounded FIFO from any number of senders to one receiver, on one asyncio loop: what a
    WebSocket connection queues for its writer (events and responses).

    Bounded in items and in bytes (``weigh(item)``): a send that would pass either bound waits
    (or, ``send_nowait``, raises ``anyio.WouldBlock``), except that an empty box always takes
    one item, however large. It has the interface of an anyio memory object stream (``send``
    waiting for room, ``close`` to end it after what is queued, ``ClosedResourceError`` /
    ``BrokenResourceError``; the receiver iterates it in ``async with``) at a fraction of the
    cost: fan-out pushes one frame per event per subscriber, and a frame that is there is taken
    without suspending (no checkpoint) and a wait is one bare future."""

    def __init__(
        self, size: int, max_bytes: int | None = None, weigh: Callable[[T], int] | None = None
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._size = size
        self._max_bytes = max_bytes
        self._weigh = weigh
        self._bytes = 0
        self._items: deque[T] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False  # no more sends (the receiver gets what is queued, then ends)
        self._broken = False  # the receiver is gone

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """What the queued items weigh (0 without ``weigh``)."""
        return self._bytes

    def send_nowait(self, item: T) -> None:
        if self._broken:
            raise anyio.BrokenResourceError
        if self._closed:
            raise anyio.ClosedResourceError
        items = self._items
        weight = 0 if self._weigh is None else self._weigh(item)
        if items and (
            len(items) >= self._size
            or (self._max_bytes is not None and self._bytes + weight > self._max_bytes)
        ):
            raise anyio.WouldBlock
        items.append(item)
        self._bytes += weight
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def send(self, item: T) -> None:
        while True:
            try:
                self.send_nowait(item)
                return
            except anyio.WouldBlock:
                pass
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            finally:
                if not fut.done() or fut.cancelled():
                    with contextlib.suppress(ValueError):
                        self._putters.remove(fut)

    def close(self) -> None:
        """No more sends; the receiver takes what is queued, then its iteration ends."""
        self._closed = True
        self._wake_all()

    async def __aenter__(self) -> Outbox[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """The receiver is gone: senders get ``BrokenResourceError`` from now on."""
        self._broken = True
        self._items.clear()
        self._bytes = 0
        self._wake_all()

    def __aiter__(self) -> Outbox[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed or self._broken:
                raise StopAsyncIteration
            fut = self._getter = asyncio.get_running_loop().create_future()
            try:
                await fut
            finally:
                self._getter = None
        item = self._items.popleft()
        if self._weigh is not None:
            self._bytes -= self._weigh(item)
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
                break
        return item

    def _wake_all(self) -> None:
        for fut in (self._getter, *self._putters):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._putters.clear()


class Pumped(Protocol):
    """A WebSocket connection as the fan-out sees it."""

    def pump(self) -> None:
        """Move the events its subscription holds to its outbound queue, without waiting (and
        without raising)."""
        ...


class FanOut:
    """Moves events to the WebSocket connections' outbound queues, for all of them at once.

    One task per event loop waits on the hub (a doorbell: ``service.wait_beyond``): each time
    it wakes, it calls ``pump`` on every registered connection, which drains that connection's
    own subscription (so each connection still gets exactly its events, once and in order,
    with its own filters and its own slow-consumer limit). Compared with one waiting task per
    connection, an event costs one wake-up of this task plus one of each connection's writer,
    instead of a future, a wake-up and a subscription read in every connection's task before
    its writer runs."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._members: dict[Pumped, None] = {}  # in the order they joined
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: Pumped) -> None:
        """Pump ``member`` after each publish from now on (call its ``pump`` once yourself
        for what its subscription already holds)."""
        self._members[member] = None
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._task = loop.create_task(self._run(), name="arrwdb-ws-fanout")

    def discard(self, member: Pumped) -> None:
        self._members.pop(member, None)

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def _run(self) -> None:
        service = self._runtime.service
        seen = 0  # a first round at once: whatever was published before this task ran
        while not self._runtime.closing:
            try:
                seen = await service.wait_beyond(seen)  # one wake-up for a burst of events
            except SubscriptionClosedError:
                return
            try:
                self._pump_all()
            except Exception:
                logger.exception("the WebSocket fan-out failed; going on")

    def _pump_all(self) -> None:
        for member in list(self._members):
            try:
                member.pump()
            except Exception:
                logger.exception("pumping events to a WebSocket connection failed")
                self.discard(member)


class Closable(Protocol):
    """What an open SSE stream reads (a subscription, a watch listener): closed at drain."""

    def close(self) -> None: ...


class LineStream(Protocol):
    """An NDJSON stream as the drain sees it."""

    def stop_reading(self) -> None: ...


class Connection(Protocol):
    """What the registry needs of a WebSocket connection."""

    @property
    def connection_id(self) -> str: ...

    @property
    def library_id(self) -> str: ...

    @property
    def subscribed(self) -> bool: ...

    async def shutdown(self) -> None:
        """Answer requests in flight, then close with 1001."""
        ...


class ConnectionRegistry:
    """The open WebSocket connections (``GET /v1/websockets/stats``)."""

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}

    def add(self, conn: Connection) -> int:
        self._connections[conn.connection_id] = conn
        return len(self._connections)

    def remove(self, conn: Connection) -> int:
        self._connections.pop(conn.connection_id, None)
        return len(self._connections)

    def all(self) -> list[Connection]:
        return list(self._connections.values())

    def stats(self, visible: Callable[[str], bool] | None = None) -> WebSocketStats:
        """The statistics of the connections to libraries ``visible`` (default: all)."""
        connections = [
            c for c in self._connections.values() if visible is None or visible(c.library_id)
        ]
        by_library = Counter(c.library_id for c in connections if c.subscribed)
        return WebSocketStats(
            total_connections=len(connections),
            libraries_with_subscribers=len(by_library),
            subscriptions_by_library=dict(by_library),
        )


class Counters:
    """Plain counters the transports bump on their hot paths (read by ``/metrics``)."""

    def __init__(self) -> None:
        self.delivered: Counter[str] = Counter()
        self.watch_delivered: Counter[str] = Counter()
        self.slow_consumers: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def families(self) -> list[tuple[str, str, str, dict[str, int]]]:
        """(name, help, label, counts by label value) of each counter."""
        return [
            (
                "arrwdb_events_delivered",
                "Events sent to clients, by transport.",
                "transport",
                self.delivered,
            ),
            (
                "arrwdb_watch_events_delivered",
                "Watch events (live queries) sent to clients, by transport.",
                "transport",
                self.watch_delivered,
            ),
            (
                "arrwdb_slow_consumers_cut",
                "Streams closed because their client did not read, by transport.",
                "transport",
                self.slow_consumers,
            ),
            (
                "arrwdb_rate_limited",
                "Requests and streams refused for a per-client limit, by transport.",
                "transport",
                self.rate_limited,
            ),
            (
                "arrwdb_auth_refused",
                "Requests refused by the guard (no or a bad key, a foreign origin or host).",
                "code",
                self.refused,
            ),
        ]


#: How often a server sharing its store with others reads the API keys again (revocations
#: made elsewhere close this server's streams within about this long).
KEY_REFRESH_INTERVAL = 0.5


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gate = WriteGate()
        self.dispatcher = Dispatcher(
            lambda: self.service, self.gate, consistency_timeout=settings.consistency_timeout
        )
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.open_streams = StreamCounter(settings.max_streams_per_client)
        self.counters = Counters()
        #: the watches each key has made (``max_watches_per_key``)
        self.watch_owners = WatchOwners(settings.max_watches_per_key)
        #: the Prometheus text of this app's metrics (set by the app factory)
        self.metrics_exposition: Callable[[], bytes] | None = None
        self.frames = EventFrames()
        self.fanout = FanOut(self)
        self.connections = ConnectionRegistry()
        #: what the open SSE streams read (change subscriptions, watch listeners), and the
        #: library of each (None: every library)
        self.streams: dict[Closable, str | None] = {}
        #: the NDJSON streams being answered (told to stop reading at shutdown)
        self.line_streams: set[LineStream] = set()
        self.closing = False
        self._service: VectorDBService | None = None
        self._keys: KeyRing | None = None
        self._drained = False
        #: key id -> what closes each stream and socket opened with it
        self._closers: dict[str, dict[int, Callable[[], None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresher: asyncio.Task[None] | None = None

    @property
    def service(self) -> VectorDBService:
        if self._service is None:
            raise RuntimeError("the app has not started: its lifespan has not run")
        return self._service

    @property
    def keys(self) -> KeyRing:
        if self._keys is None:
            raise RuntimeError("the app has not started: its lifespan has not run")
        return self._keys

    def start(self, service: VectorDBService, keys: KeyRing) -> None:
        self._service = service
        self._keys = keys
        self._loop = asyncio.get_running_loop()
        keys.on_revoke(self._revoked)
        if keys.enabled and keys.shared:
            self._refresher = self._loop.create_task(self._refresh_keys(), name="arrwdb-keys")

    def stats(self, visible: Callable[[str], bool] | None = None) -> WebSocketStats:
        """``GET /v1/websockets/stats``: WebSocket connections and SSE streams (of the
        libraries ``visible``, default all)."""
        stats = self.connections.stats(visible)
        by_library = Counter(
            library_id or "*"
            for library_id in self.streams.values()
            if visible is None or library_id is None or visible(library_id)
        )
        stats.sse_streams = sum(by_library.values())
        stats.sse_streams_by_library = dict(by_library)
        return stats

    def opened_with(self, key_id: str | None, close: Callable[[], None]) -> Callable[[], None]:
        """Register ``close`` (called on the event loop) for a stream or socket opened with
        ``key_id``, to be called when that key is revoked; returns what unregisters it."""
        if key_id is None:
            return _nothing
        closers = self._closers.setdefault(key_id, {})
        token = id(close)
        closers[token] = close

        def forget() -> None:
            mine = self._closers.get(key_id)
            if mine is not None:
                mine.pop(token, None)
                if not mine:
                    del self._closers[key_id]

        return forget

    def _revoked(self, key_id: str) -> None:  # from any thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._close_streams_of, key_id)

    def _close_streams_of(self, key_id: str) -> None:
        closers = self._closers.pop(key_id, {})
        if closers:
            logger.info("API key %s revoked: closing %d stream(s)", key_id, len(closers))
        for close in closers.values():
            try:
                close()
            except Exception:
                logger.exception("closing a stream of a revoked key failed")

    async def _refresh_keys(self) -> None:
        keys = self.keys
        while not self.closing:
            await anyio.sleep(KEY_REFRESH_INTERVAL)
            try:
                await anyio.to_thread.run_sync(keys.refresh)
            except Exception as exc:  # the store is away: keep the keys known so far
                logger.warning("reading the API keys failed: %s", exc)

    async def drain(self, timeout: float) -> None:
        """Begin a graceful shutdown (idempotent): see the module docstring."""
        if self._drained:
            return
        self._drained = True
        self.closing = True
        self.gate.close()
        streams, connections = list(self.streams), self.connections.all()
        logger.info(
            "draining: %d WebSocket connection(s), %d SSE stream(s), %d write(s) in flight",
            len(connections),
            len(streams),
            self.gate.in_flight,
        )
        for sub in streams:
            sub.close()  # the SSE generator sees the end of its stream and returns
        for line_stream in list(self.line_streams):
            line_stream.stop_reading()  # answers what it has read, then its summary
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                for conn in connections:
                    tg.start_soon(conn.shutdown)
            await self.gate.wait_idle()
        self.fanout.close()
        if self._refresher is not None:
            self._refresher.cancel()
        if scope.cancelled_caught:
            logger.warning("drain timed out after %.1f s", timeout)


def _nothing() -> None:
    pass


#: How handlers receive the runtime (``Provide``d by the app factory as ``runtime``).
RuntimeDep: TypeAlias = NamedDependency[Runtime]
