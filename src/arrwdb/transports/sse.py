"""The SSE transport: ``GET /v1/libraries/{id}/events`` and ``GET /v1/events``.

Each event is ``id: <id>`` / ``event: <type>`` / ``data: <envelope JSON>`` (lines end in
``\\n``). The start point is the ``Last-Event-ID`` header (a reconnecting ``EventSource``), else
``?since=`` (an id or ``earliest``), else live. The subscription is registered in the handler,
before the response headers are sent, so nothing written after the client sees the stream open
is missed; an unknown library, a bad ``since`` or ``types`` are answered (404/422) before the
stream starts. The ``Arrwdb-Event-Id`` response header is where the stream starts: resuming
from it (``Last-Event-ID``) gets every event the stream would have sent.

When the start point is no longer retained, the stream begins with a ``stream.reset`` event
(``data``: ``reason``, ``requested``, ``earliest``, ``resume_from``) whose ``id`` is the point
the stream goes on after. A comment line is sent every ``settings.sse_keepalive`` seconds
without events.

A reader that keeps reading is never cut off: when it falls behind the server's memory, its
events are read back from the store's log. The stream is ended with a last ``stream.closed``
event (``data``: ``reason``, ``last_id``: the last event sent, to resume from) when the client
stops reading (a send waits ``settings.sse_send_timeout`` seconds with the connection's buffer
full: the backlog it holds is that buffer), or when the events it still has to read are no
longer kept; it ends without one when the client goes away and at server shutdown.

The response is a small ASGI app (as the NDJSON streams are) rather than Litestar's
``ServerSentEvent``: it owns the sends, so that a send to a client that does not read can be
given up on, and a disconnect is noticed while waiting for events.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio
from litestar import Request, Router, get
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.types import ASGIApp, Receive, Scope, Send

from arrwdb.domain.access import Caller, Need
from arrwdb.domain.errors import RateLimitedError, SlowConsumerError, SubscriptionClosedError
from arrwdb.domain.events import STREAM_CLOSED, Event
from arrwdb.domain.ports import Subscription
from arrwdb.transports.errors import ShuttingDown
from arrwdb.transports.guard import caller_of, client_of
from arrwdb.transports.messages import encoder
from arrwdb.transports.runtime import Closable, Runtime, RuntimeDep, envelope, sse_message

logger = logging.getLogger("arrwdb.sse")

EVENT_STREAM = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"
#: How long the last ``stream.closed`` event may take to send before the stream ends anyway.
_LAST_SEND_TIMEOUT = 1.0

Since = Annotated[
    str | None, QueryParameter(description="Resume after this event id, or `earliest`.")
]
Types = Annotated[str | None, QueryParameter(description="Comma-separated event types to receive.")]
LastEventId = Annotated[
    str | None,
    HeaderParameter(name="last-event-id", description="Set by a reconnecting EventSource."),
]


@get(
    "/v1/libraries/{library_id:str}/events",
    tags=["events"],
    media_type=EVENT_STREAM,
    status_code=200,
)
async def library_events(
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    library_id: FromPath[str],
    since: Since = None,
    types: Types = None,
    last_event_id: LastEventId = None,
) -> ASGIApp:
    """Server-Sent Events: the change stream of one library (`text/event-stream`)."""
    caller = caller_of(request.scope)
    return _open(
        runtime, client_of(request.scope), caller, library_id, last_event_id or since, types
    )


@get("/v1/events", tags=["events"], media_type=EVENT_STREAM, status_code=200)
async def all_events(
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    since: Since = None,
    types: Types = None,
    last_event_id: LastEventId = None,
) -> ASGIApp:
    """Server-Sent Events: the change stream of every library (`text/event-stream`); with
    an API key, of the libraries it may read."""
    caller = caller_of(request.scope)
    return _open(runtime, client_of(request.scope), caller, None, last_event_id or since, types)


def _open(
    runtime: Runtime,
    client: str,
    caller: Caller,
    library_id: str | None,
    since: str | None,
    types: str | None,
) -> _EventStream:
    if library_id is not None:
        caller.require(Need.READ, library_id)
    if runtime.closing:
        raise ShuttingDown("the server is shutting down")
    try:
        runtime.open_streams.open(client)  # RateLimitedError beyond the client's streams
    except RateLimitedError:
        runtime.counters.rate_limited["sse"] += 1
        raise
    try:
        sub = runtime.service.subscribe(library_id, since=since or None, types=types or None)
    except BaseException:
        runtime.open_streams.close(client)
        raise
    logger.info("SSE stream opened (library: %s, since: %s)", library_id or "*", since)
    return _EventStream(runtime, sub, library_id, caller, client)


class SseStream:
    """The sending side of one SSE response, shared by the change streams and the watch
    streams (``rest_watches``): the headers, keep-alives, the send timeout (a client that does
    not read is cut with a last ``stream.closed``), the client's disconnect noticed while
    waiting, the stream counted in ``runtime.streams`` (closed at drain) and closed when its
    API key is revoked. ``source`` is what the stream reads (closed when the stream ends);
    a subclass sends its events in ``_pump`` and says what its last event is
    (``_closed_message``)."""

    def __init__(
        self,
        runtime: Runtime,
        source: Closable,
        library_id: str | None,
        caller: Caller,
        client: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._client = client
        self._runtime = runtime
        self._source = source
        self._library_id = library_id
        self._caller = caller
        self._headers = headers or []
        self._revoked = False
        runtime.streams[source] = library_id
        self._forget = runtime.opened_with(caller.key_id, self._revoke)
        self._reason = "client went away"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", EVENT_STREAM.encode()),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                        *self._headers,
                    ],
                }
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                if await self._pump(send):
                    with anyio.move_on_after(_LAST_SEND_TIMEOUT):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            self._release()
            logger.info(
                "SSE stream closed (library: %s): %s", self._library_id or "*", self._reason
            )

    def _release(self) -> None:  # once, when the response ends
        self._runtime.streams.pop(self._source, None)
        self._runtime.open_streams.close(self._client)
        self._forget()
        self._source.close()

    def _revoke(self) -> None:
        self._revoked = True
        self._source.close()

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _pump(self, send: Send) -> bool:
        """Send events until the stream ends; False if the client stopped reading (then the
        response cannot be finished: the connection is dropped)."""
        raise NotImplementedError

    def _closed_message(self, reason: str) -> bytes:
        """The last event, ``stream.closed`` with ``reason``."""
        raise NotImplementedError

    async def _send(self, send: Send, body: bytes) -> bool:
        with anyio.move_on_after(self._runtime.settings.sse_send_timeout):
            await send({"type": "http.response.body", "body": body, "more_body": True})
            return True
        self._reason = "slow consumer: not reading"
        logger.info("SSE stream (library: %s): the client is not reading", self._library_id or "*")
        await self._close(send, "slow_consumer", timeout=_LAST_SEND_TIMEOUT)
        return False

    async def _close(self, send: Send, reason: str, timeout: float | None = None) -> bool:
        """Send the last event, ``stream.closed``; True if it went out."""
        if reason == "slow_consumer":
            self._runtime.counters.slow_consumers["sse"] += 1
        body = self._closed_message(reason)
        with anyio.move_on_after(timeout or self._runtime.settings.sse_send_timeout):
            await send({"type": "http.response.body", "body": body, "more_body": True})
            return True
        return False


class _EventStream(SseStream):
    """The response of a change stream: sends the subscription's events until it ends."""

    def __init__(
        self,
        runtime: Runtime,
        sub: Subscription,
        library_id: str | None,
        caller: Caller,
        client: str,
    ) -> None:
        # where the stream starts: resuming from it misses nothing (a client that loses the
        # stream before its first event resumes from here)
        start = [(b"arrwdb-event-id", sub.resume_from.encode())]
        super().__init__(runtime, sub, library_id, caller, client, start)
        self._sub = sub
        #: every event of its library, or only those of libraries the caller may read
        self._everything = library_id is not None or caller.libraries is None
        #: the id to resume from to get every event not sent yet
        self._last_sent = sub.resume_from

    async def _pump(self, send: Send) -> bool:
        sub = self._sub
        keepalive = self._runtime.settings.sse_keepalive
        frames = self._runtime.frames
        delivered = self._runtime.counters.delivered
        if sub.reset is not None:
            if not await self._send(send, _message(sub.reset)):
                return False
            self._last_sent = sub.reset.id
        while True:
            try:
                event = await sub.aget(timeout=keepalive)
            except SlowConsumerError:
                self._reason = "its events are no longer kept"
                return await self._close(send, "slow_consumer")
            except SubscriptionClosedError:
                if self._revoked:
                    self._reason = "its API key was revoked"
                    return await self._close(send, "unauthorized", timeout=_LAST_SEND_TIMEOUT)
                self._reason = "server shutting down"
                return True
            if event is None:
                if not await self._send(send, KEEPALIVE):
                    return False
                continue
            if not self._everything and not self._caller.may_read(event.library_id):
                continue
            if not await self._send(send, frames.sse_message(event)):  # encoded once for all
                return False
            self._last_sent = event.id
            delivered["sse"] += 1

    def _closed_message(self, reason: str) -> bytes:
        closed = Event(
            id=self._last_sent,
            type=STREAM_CLOSED,
            library_id=self._library_id,
            data={"reason": reason, "last_id": self._last_sent},
        )
        return _message(closed)


def _message(event: Event) -> bytes:
    return sse_message(event.id, event.type, encoder.encode(envelope(event)).decode())


def router() -> Router:
    """The SSE transport."""
    return Router(path="/", route_handlers=[library_events, all_events])
