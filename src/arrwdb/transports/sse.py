"""The SSE transport: ``GET /v1/libraries/{id}/events`` and ``GET /v1/events``.

Each event is ``id: <id>`` / ``event: <type>`` / ``data: <envelope JSON>``. The start point is
the ``Last-Event-ID`` header (a reconnecting ``EventSource``), else ``?since=`` (an id or
``earliest``), else live. The subscription is registered in the handler, before the response
headers are sent, so nothing written after the client sees the stream open is missed; an
unknown library, a bad ``since`` or ``types`` are answered (404/422) before the stream starts.

When the start point is no longer retained, the stream begins with a ``stream.reset`` event
whose ``id`` is the point the live stream starts after. A comment line is sent every
``settings.sse_keepalive`` seconds without events. The stream ends when the client goes away,
when it falls too far behind (it reconnects with ``Last-Event-ID``) and at server shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Annotated

from litestar import Router, get
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from arrwdb.domain.errors import SlowConsumerError, SubscriptionClosedError
from arrwdb.domain.events import STREAM_RESET
from arrwdb.domain.models import format_timestamp
from arrwdb.domain.ports import Subscription
from arrwdb.transports.envelopes import EventEnvelope
from arrwdb.transports.errors import ShuttingDown
from arrwdb.transports.messages import encoder
from arrwdb.transports.runtime import Runtime, RuntimeDep

logger = logging.getLogger("arrwdb.sse")

Since = Annotated[
    str | None, QueryParameter(description="Resume after this event id, or `earliest`.")
]
Types = Annotated[str | None, QueryParameter(description="Comma-separated event types to receive.")]
LastEventId = Annotated[
    str | None,
    HeaderParameter(name="last-event-id", description="Set by a reconnecting EventSource."),
]


@get("/v1/libraries/{library_id:str}/events", tags=["events"])
async def library_events(
    runtime: RuntimeDep,
    library_id: FromPath[str],
    since: Since = None,
    types: Types = None,
    last_event_id: LastEventId = None,
) -> ServerSentEvent:
    """Server-Sent Events: the change stream of one library (`text/event-stream`)."""
    return _open(runtime, library_id, last_event_id or since, types)


@get("/v1/events", tags=["events"])
async def all_events(
    runtime: RuntimeDep,
    since: Since = None,
    types: Types = None,
    last_event_id: LastEventId = None,
) -> ServerSentEvent:
    """Server-Sent Events: the change stream of every library (`text/event-stream`)."""
    return _open(runtime, None, last_event_id or since, types)


def _open(
    runtime: Runtime, library_id: str | None, since: str | None, types: str | None
) -> ServerSentEvent:
    if runtime.closing:
        raise ShuttingDown("the server is shutting down")
    before = runtime.service.last_event_id  # read first: a reset id never skips an event
    sub = runtime.service.subscribe(library_id, since=since or None, types=types or None)
    runtime.streams.add(sub)
    logger.info("SSE stream opened (library: %s, since: %s)", library_id or "*", since)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return ServerSentEvent(_stream(runtime, sub, library_id, since, before), headers=headers)


async def _stream(
    runtime: Runtime,
    sub: Subscription,
    library_id: str | None,
    since: str | None,
    before: int,
) -> AsyncGenerator[ServerSentEventMessage, None]:
    keepalive = runtime.settings.sse_keepalive
    reason = "client went away"
    try:
        if sub.reset:
            yield _reset(library_id, since, before)
        while True:
            try:
                event = await sub.aget(timeout=keepalive)
            except SlowConsumerError as exc:
                reason = "slow consumer"
                yield ServerSentEventMessage(comment=f"closed: {exc}", data=None)
                return
            except SubscriptionClosedError:
                reason = "server shutting down"
                return
            if event is None:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
                continue
            yield runtime.frames.sse_message(event)  # encoded once for every stream
    finally:
        runtime.streams.discard(sub)
        sub.close()
        logger.info("SSE stream closed (library: %s): %s", library_id or "*", reason)


def _reset(library_id: str | None, since: str | None, before: int) -> ServerSentEventMessage:
    envelope = EventEnvelope(
        id=str(before),
        type=STREAM_RESET,
        library_id=library_id,
        timestamp=format_timestamp(datetime.now(UTC)),
        data={
            "requested_since": since,
            "resume_from": str(before),
            "reason": "the requested events are no longer retained; resynchronise, then "
            "follow this stream",
        },
    )
    return ServerSentEventMessage(
        data=encoder.encode(envelope).decode(), id=envelope.id, event=STREAM_RESET
    )


def router() -> Router:
    """The SSE transport."""
    return Router(path="/", route_handlers=[library_events, all_events])
