"""What the transports share while the server runs: the service, the dispatcher, the encoded
event cache, the open WebSocket connections and SSE streams, and the graceful drain.

One :class:`Runtime` per app, made by the app factory and handed to handlers with
``Provide``. The service is attached in the app's lifespan (``start``); ``drain`` runs first
at shutdown: it refuses new writes, ends SSE streams, closes WebSockets with 1001 (after their
in-flight requests are answered) and waits for writes in flight.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol, TypeAlias

import anyio
from litestar.di import NamedDependency

from arrwdb.config import Settings
from arrwdb.domain.events import Event
from arrwdb.domain.models import format_timestamp
from arrwdb.domain.ports import Subscription
from arrwdb.domain.service import VectorDBService
from arrwdb.transports.dispatch import Dispatcher, WriteGate
from arrwdb.transports.envelopes import EventEnvelope, WSEvent
from arrwdb.transports.messages import WebSocketStats, encoder

logger = logging.getLogger("arrwdb.transports")


class EventFrames:
    """Encodes each event once, whatever the number of subscribers: a small cache of the
    WebSocket frame and of the SSE ``data`` (the envelope) by event id. Subscribers read
    events at about the same time, so the last few thousand ids cover them."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._ws: dict[str, str] = {}
        self._sse: dict[str, str] = {}

    def ws(self, event: Event) -> str:
        frame = self._ws.get(event.id)
        if frame is None:
            msg = WSEvent(
                event_type=event.type,
                library_id=event.library_id,
                data=dict(event.data),
                id=event.id,
                timestamp=format_timestamp(event.timestamp),
            )
            frame = self._put(self._ws, event.id, encoder.encode(msg).decode())
        return frame

    def sse(self, event: Event) -> str:
        data = self._sse.get(event.id)
        if data is None:
            msg = EventEnvelope(
                id=event.id,
                type=event.type,
                library_id=event.library_id,
                timestamp=format_timestamp(event.timestamp),
                data=dict(event.data),
            )
            data = self._put(self._sse, event.id, encoder.encode(msg).decode())
        return data

    def _put(self, cache: dict[str, str], key: str, value: str) -> str:
        if len(cache) >= self._size:
            # dicts keep insertion order: drop the oldest quarter in one go
            for old in list(cache)[: self._size // 4]:
                del cache[old]
        cache[key] = value
        return value


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

    def stats(self) -> WebSocketStats:
        by_library = Counter(c.library_id for c in self._connections.values() if c.subscribed)
        return WebSocketStats(
            total_connections=len(self._connections),
            libraries_with_subscribers=len(by_library),
            subscriptions_by_library=dict(by_library),
        )


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gate = WriteGate()
        self.dispatcher = Dispatcher(lambda: self.service, self.gate)
        self.frames = EventFrames()
        self.connections = ConnectionRegistry()
        self.streams: set[Subscription] = set()
        self.closing = False
        self._service: VectorDBService | None = None
        self._drained = False

    @property
    def service(self) -> VectorDBService:
        if self._service is None:
            raise RuntimeError("the app has not started: its lifespan has not run")
        return self._service

    def start(self, service: VectorDBService) -> None:
        self._service = service

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
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                for conn in connections:
                    tg.start_soon(conn.shutdown)
            await self.gate.wait_idle()
        if scope.cancelled_caught:
            logger.warning("drain timed out after %.1f s", timeout)


#: How handlers receive the runtime (``Provide``d by the app factory as ``runtime``).
RuntimeDep: TypeAlias = NamedDependency[Runtime]
