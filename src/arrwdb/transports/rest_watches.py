"""The REST routes of live queries (watches), registered by ``rest.router``:

* ``POST /v1/libraries/{id}/watches`` makes a watch (201), checked as a search is;
* ``GET`` lists them, ``GET``/``DELETE .../watches/{watch_id}`` reads or removes one (204);
* ``GET .../watches/{watch_id}/events``: Server-Sent Events of its events (``id: <watch event
  id>``, ``event: <type>``, ``data: <envelope>``), resumed with ``Last-Event-ID`` or
  ``?since=``; the stream ends with a ``stream.closed`` event (``reason``, ``last_id``) when
  the watch ends (deleted, its library deleted, the server stopping), its API key is revoked,
  or the client does not read (``slow_consumer``).

Each is a read of the library: a key that reads it may watch it. A watch made here is stored
(it outlives its listeners); the number a key may have is ``max_watches_per_key``, the number
a library may have ``max_watches_per_library`` (422 ``limit_exceeded``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from litestar import Request, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Response
from litestar.types import ASGIApp, Send

from arrwdb.domain.access import Caller, Need
from arrwdb.domain.errors import RateLimitedError, SubscriptionClosedError
from arrwdb.domain.events import STREAM_CLOSED
from arrwdb.domain.watches import CLOSED_SHUTDOWN, WatchEvent, WatchListener, closed_event
from arrwdb.transports._rest_common import LIBRARY
from arrwdb.transports._watches import is_live
from arrwdb.transports.errors import ShuttingDown
from arrwdb.transports.guard import caller_of, client_of
from arrwdb.transports.messages import WatchId, WatchIn, WatchList, WatchOut, encoder
from arrwdb.transports.runtime import Runtime, RuntimeDep, sse_message
from arrwdb.transports.sse import (
    _LAST_SEND_TIMEOUT,
    EVENT_STREAM,
    KEEPALIVE,
    LastEventId,
    Since,
    SseStream,
)

logger = logging.getLogger("arrwdb.sse")

WATCHES = LIBRARY + "/watches"
WATCH = WATCHES + "/{watch_id:str}"


@post(WATCHES, status_code=201, tags=["watches"])
async def create_watch(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    data: JSONBody[WatchIn],
) -> WatchOut:
    """Make a live query: `k` (1..1000, optional `threshold` floor) keeps the top-k of the
    query (`watch.ready`, then `watch.entered`/`watch.left`); only `threshold`, a match watch
    (`watch.match` for each chunk added or updated that reaches it). 201 with the watch."""
    caller = caller_of(request.scope)
    caller.require(Need.READ, library_id)
    alive = partial(is_live, runtime.service)
    with runtime.watch_owners.making(client_of(request.scope), alive) as made:
        out: WatchOut = await runtime.dispatcher.execute(
            "create_watch", library_id, data, caller=caller
        )
        made(out.id)
    return out


@get(WATCHES, tags=["watches"])
async def list_watches(
    runtime: RuntimeDep, request: Request[Any, Any, Any], library_id: FromPath[str]
) -> WatchList:
    """The library's live watches."""
    caller = caller_of(request.scope)
    out: WatchList = await runtime.dispatcher.execute("list_watches", library_id, caller=caller)
    return out


@get(WATCH, tags=["watches"])
async def get_watch(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    watch_id: FromPath[str],
) -> WatchOut:
    caller = caller_of(request.scope)
    out: WatchOut = await runtime.dispatcher.execute(
        "get_watch", library_id, WatchId(watch_id=watch_id), caller=caller
    )
    return out


@delete(WATCH, status_code=204, tags=["watches"])
async def delete_watch(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    watch_id: FromPath[str],
) -> Response[None]:
    """Remove a watch (204): its event streams end with `stream.closed` (`watch_deleted`)."""
    caller = caller_of(request.scope)
    await runtime.dispatcher.execute(
        "delete_watch", library_id, WatchId(watch_id=watch_id), caller=caller
    )
    runtime.watch_owners.forget(client_of(request.scope), watch_id)
    return Response(None, status_code=204)


@get(WATCH + "/events", tags=["watches"], media_type=EVENT_STREAM, status_code=200)
async def watch_events(
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    library_id: FromPath[str],
    watch_id: FromPath[str],
    since: Since = None,
    last_event_id: LastEventId = None,
) -> ASGIApp:
    """Server-Sent Events of a watch (`text/event-stream`): `watch.ready` (or, resuming with
    `Last-Event-ID`/`?since=` a watch event id, the events after it), then its changes."""
    caller = caller_of(request.scope)
    caller.require(Need.READ, library_id)
    if runtime.closing:
        raise ShuttingDown("the server is shutting down")
    service = runtime.service
    service.get_library(library_id)  # 404 naming the library, before the watch
    client = client_of(request.scope)
    try:
        runtime.open_streams.open(client)  # RateLimitedError beyond the client's streams
    except RateLimitedError:
        runtime.counters.rate_limited["sse"] += 1
        raise
    try:
        # registered before the headers: every event after the first is the stream's
        listener = service.watching.listen(watch_id, last_event_id or since or None, library_id)
    except BaseException:
        runtime.open_streams.close(client)
        raise
    logger.info("SSE watch stream opened (watch: %s, since: %s)", watch_id, since)
    return WatchStream(runtime, listener, library_id, caller, client)


class WatchStream(SseStream):
    """The response of a watch's event stream."""

    def __init__(
        self,
        runtime: Runtime,
        listener: WatchListener,
        library_id: str,
        caller: Caller,
        client: str,
    ) -> None:
        super().__init__(runtime, listener, library_id, caller, client)
        self._listener = listener

    async def _pump(self, send: Send) -> bool:
        listener = self._listener
        keepalive = self._runtime.settings.sse_keepalive
        delivered = self._runtime.counters.watch_delivered
        while True:
            try:
                event = await listener.aget(timeout=keepalive)
            except SubscriptionClosedError:
                ended = listener.closed_reason  # the watch's end (None: this stream's)
                if self._revoked:
                    self._reason = "its API key was revoked"
                    return await self._close(send, "unauthorized", timeout=_LAST_SEND_TIMEOUT)
                if ended is None and not self._runtime.closing:
                    return True  # (closed by the stream's own end)
                self._reason = f"the watch ended ({ended or CLOSED_SHUTDOWN})"
                return await self._close(send, ended or CLOSED_SHUTDOWN, timeout=_LAST_SEND_TIMEOUT)
            if event is None:
                if not await self._send(send, KEEPALIVE):
                    return False
                continue
            if not await self._send(send, watch_message(event)):
                return False
            delivered["sse"] += 1

    def _closed_message(self, reason: str) -> bytes:
        listener = self._listener
        closed = closed_event(self._library_id or "", listener.watch_id, reason, listener.last_id)
        data = encoder.encode(closed.envelope()).decode()
        return sse_message(listener.last_id, STREAM_CLOSED, data)


def watch_message(event: WatchEvent) -> bytes:
    """One watch event as Server-Sent Events: ``id``, ``event`` and ``data`` (its envelope)."""
    return sse_message(event.id, event.type, encoder.encode(event.envelope()).decode())


HANDLERS = [create_watch, list_watches, get_watch, delete_watch, watch_events]
