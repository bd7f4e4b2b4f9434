"""The watches of one WebSocket connection: the ``watch`` and ``unwatch`` actions, and the
watch events on the socket.

A socket's watch events go through its one bounded outbox, as its change events do, and are
moved there by the same pump (``ws._Connection.pump``), which keeps one order on the socket:
before it queues change event ``N`` it drains every watch listener of the socket (the engine
appends a change's watch events before that change is published), so a client that sees change
``N`` has already received every watch event caused by the changes up to ``N``. While a watch
is being registered the pump queues no further change events (the new listener is not there
yet to be drained); they wait in the subscription. A listener that falls behind its watch's
history starts again by itself (``stream.reset`` and a fresh ``watch.ready``).

Watch events that no change event announces (a ``watch.ready``, the end of a watch deleted
over REST) are noticed by one task per socket with watches, woken by the watches' feeds.

A watch made on the socket lives with it (removed when the socket closes or ``unwatch``); a
watch made over REST and followed here (``watch`` with ``watch_id``) is only detached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from msgspec import UNSET

from arrwdb.domain.access import Caller
from arrwdb.domain.errors import (
    AlreadyExistsError,
    SubscriptionClosedError,
    WatchNotFoundError,
)
from arrwdb.domain.models import format_timestamp
from arrwdb.domain.watches import (
    CLOSED_DELETED,
    CLOSED_SHUTDOWN,
    WatchEvent,
    WatchFeed,
    closed_event,
)
from arrwdb.transports._watches import Followed, is_live
from arrwdb.transports.envelopes import (
    Unwatched,
    UnwatchRequest,
    WatchRequest,
    WatchStarted,
    WSResponse,
    WSWatchEvent,
)
from arrwdb.transports.errors import classify
from arrwdb.transports.messages import WatchId, encoder

if TYPE_CHECKING:
    from arrwdb.transports.runtime import Runtime

logger = logging.getLogger("arrwdb.ws")
FIRST = asyncio.FIRST_COMPLETED

#: What a socket's outbox holds: a frame, the id of the change event it carries (None for
#: the rest), and whether it is a watch event.
Frame = tuple[str, str | None, bool]
Put = Callable[[Frame], Awaitable[bool]]


class Socket(Protocol):
    """What the watches need of their connection."""

    @property
    def library_id(self) -> str: ...

    @property
    def caller(self) -> Caller: ...

    @property
    def client(self) -> str: ...

    def pump(self) -> None: ...

    def start_soon(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None: ...

    async def answer(self, frame: str) -> None: ...


def watch_frame(event: WatchEvent) -> Frame:
    message = WSWatchEvent(
        event_type=event.type,
        library_id=event.library_id,
        watch_id=event.watch_id,
        data=dict(event.data),
        id=event.id,
        timestamp=format_timestamp(event.timestamp),
    )
    return encoder.encode(message).decode(), None, True


def _response(request_id: Any, data: Any) -> str:
    return encoder.encode(WSResponse(request_id=request_id, success=True, data=data)).decode()


def _failure(request_id: Any, exc: BaseException) -> str:
    fault = classify(exc)
    response = WSResponse(
        request_id=request_id,
        success=False,
        error=fault.message,
        code=fault.code,
        field=UNSET if fault.field is None else fault.field,
    )
    return encoder.encode(response).decode()


class SocketWatches:
    """The listeners of one socket's watches, drained in order by the socket's pump."""

    def __init__(self, socket: Socket, runtime: Runtime) -> None:
        self._socket = socket
        self._runtime = runtime
        self._followed: dict[str, Followed] = {}
        #: a watch frame taken from its listener that the outbox had no room for yet
        self._held: Frame | None = None
        #: watch requests being registered: no change event is queued meanwhile
        self.registering = 0
        self._poke: asyncio.Future[None] | None = None
        self._waking = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._followed)

    # -- draining (called by the pump) --------------------------------------------------------

    def _frames(self) -> Iterator[Frame]:
        """The watch events the listeners hold now, one frame at a time (read lazily: what
        is not taken stays in the listeners). An ended watch gives its ``stream.closed`` and
        is forgotten."""
        for watch_id, followed in list(self._followed.items()):
            listener = followed.listener
            while watch_id in self._followed:
                try:
                    event = listener.poll()
                except SubscriptionClosedError:
                    self._drop(watch_id)
                    reason = listener.closed_reason or CLOSED_SHUTDOWN
                    library_id = followed.watch.library_id
                    yield watch_frame(closed_event(library_id, watch_id, reason, listener.last_id))
                    break
                if event is None:
                    break
                yield watch_frame(event)

    def drain_nowait(self, send_nowait: Callable[[Frame], None]) -> bool:
        """Queue the watch events held, without waiting; False if the outbox is full (the
        frame that did not fit is kept, and goes first next time)."""
        try:
            if self._held is not None:
                send_nowait(self._held)
                self._held = None
            for frame in self._frames():
                self._held = frame
                send_nowait(frame)
                self._held = None
        except anyio.WouldBlock:
            return False
        return True

    async def drain(self, put: Put) -> bool:
        """Queue the watch events held, waiting for room; False if the socket is closing
        (``put`` gave up on a client that does not read)."""
        if self._held is not None:
            if not await put(self._held):
                return False
            self._held = None
        for frame in self._frames():
            self._held = frame
            if not await put(frame):
                return False
            self._held = None
        return True

    # -- the actions --------------------------------------------------------------------------

    async def serve(self, request: WatchRequest | UnwatchRequest) -> None:
        if isinstance(request, WatchRequest):
            frame = await self._watch(request)
        else:
            frame = await self._unwatch(request)
        if frame is not None:
            await self._socket.answer(frame)

    async def _watch(self, request: WatchRequest) -> str | None:
        socket, runtime, data = self._socket, self._runtime, request.data
        rid = request.request_id
        self.registering += 1
        try:
            try:
                if data.watch_id is not None and data.watch_id in self._followed:
                    raise AlreadyExistsError(
                        f"this socket follows watch {data.watch_id!r} already",
                        field="watch_id",
                    )
                owners = runtime.watch_owners
                alive = partial(is_live, runtime.service)
                making = (
                    owners.making(socket.client, alive)
                    if data.watch_id is None
                    else contextlib.nullcontext(_nothing)
                )
                with making as made, anyio.CancelScope(shield=True):
                    # shielded: a watch registered is always owned (else it would outlive us)
                    followed: Followed = await runtime.dispatcher.execute(
                        "watch", socket.library_id, data, caller=socket.caller
                    )
                    if followed.owned:
                        made(followed.watch.id)
            except Exception as exc:
                return _failure(rid, exc)
            try:
                # the answer first, then the watch's events (the first is its watch.ready)
                await socket.answer(_response(rid, WatchStarted(watch_id=followed.watch.id)))
            finally:
                if self._closed:  # the socket ended meanwhile
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._stop_all, [followed])
                else:
                    self._add(followed)
            return None
        finally:
            self.registering -= 1
            if not self.registering:
                socket.pump()  # the change events held back meanwhile, and the new events

    async def _unwatch(self, request: UnwatchRequest) -> str:
        rid, watch_id = request.request_id, request.data.watch_id
        followed = self._followed.get(watch_id)
        if followed is None:
            return _failure(rid, WatchNotFoundError(watch_id, self._socket.library_id))
        self._drop(watch_id)
        followed.listener.close()
        if followed.owned:
            try:
                with anyio.CancelScope(shield=True):
                    await self._runtime.dispatcher.execute(
                        "delete_watch",
                        self._socket.library_id,
                        WatchId(watch_id=watch_id),
                        caller=self._socket.caller,
                    )
            except WatchNotFoundError:
                pass  # it ended meanwhile (deleted over REST)
            except Exception as exc:
                return _failure(rid, exc)
            self._runtime.watch_owners.forget(self._socket.client, watch_id)
        return _response(rid, Unwatched(watch_id=watch_id))

    # -- the set of watches -------------------------------------------------------------------

    def _add(self, followed: Followed) -> None:
        self._followed[followed.watch.id] = followed
        if not self._waking:
            self._waking = True
            self._socket.start_soon(self._wake_loop)
        self._wake()

    def _drop(self, watch_id: str) -> None:
        if self._followed.pop(watch_id, None) is not None:
            self._wake()

    def _wake(self) -> None:
        poke = self._poke
        if poke is not None and not poke.done():
            poke.set_result(None)

    async def _wake_loop(self) -> None:
        """Pump the socket whenever one of its watches' feeds has news (or the set of
        watches changed): the events no change event announces get out too."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            poke = self._poke = loop.create_future()
            waits: list[tuple[WatchFeed, asyncio.Future[None]]] = []
            for followed in self._followed.values():
                feed = followed.feed
                with feed.lock:
                    waits.append((feed, feed.register_async(loop)))
            self._socket.pump()  # after registering: news from now on wakes us
            try:
                await asyncio.wait([poke, *(fut for _, fut in waits)], return_when=FIRST)
            finally:
                for feed, fut in waits:
                    if not fut.done():
                        feed.drop_async(fut)

    async def close(self) -> None:
        """The socket ended: detach from every watch, and remove the ones it made."""
        self._closed = True
        self._wake()
        followed, self._followed = list(self._followed.values()), {}
        self._held = None
        if followed:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._stop_all, followed)

    def _stop_all(self, followed: list[Followed]) -> None:
        watching = self._runtime.service.watching
        for item in followed:
            item.listener.close()
            if item.owned:
                with contextlib.suppress(WatchNotFoundError):
                    watching.stop(item.watch.id, item.watch.library_id, CLOSED_DELETED)
                self._runtime.watch_owners.forget(self._socket.client, item.watch.id)


def _nothing(_: str) -> None:
    pass
