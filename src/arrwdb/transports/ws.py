"""The WebSocket transport: ``WS /v1/libraries/{library_id}/ws``, the arrwDB WebSocket protocol.

On connect the server subscribes the connection to the library's events (registered before the
welcome is sent), accepts, and sends ``{"type": "system", "message": "Connected to library <id>",
"connection_id"}``. An unknown library is closed with 4404.

Each connection runs, in one task group:

* a **reader** that decodes each message (``envelopes.ws_request_decoder``) and starts one
  worker per request, at most ``settings.ws_max_inflight`` at a time (pipelining; beyond that
  the reader waits, which pushes back on the client). A message that is not JSON, not a
  request, names an unknown action or fails validation is answered with an error response and
  the socket stays open;
* a **pump** that moves events from the subscription to the outbound queue, encoded once per
  event for all subscribers (``runtime.frames``): not a task of its own, but ``pump()``, called
  after each publish by one task for every connection (``runtime.fanout``);
* a **writer** that sends the outbound queue (bounded: ``settings.ws_send_queue`` frames and
  ``settings.ws_send_buffer_bytes`` bytes).

Events are moved to the queue only while it has room, so a burst (one bulk commit) never piles
up in memory: the subscription simply falls behind, and reads on from the hub's history and then
the store's log. A client that keeps reading is therefore never cut off. One that does not read
is: when the queue stays full for ``settings.ws_send_timeout`` seconds, or when the events it
still has to read are no longer kept, the connection is closed with 4008 and a reason naming
the last event id it was sent (resume with ``subscribe {since}``). Publishers never wait for a
subscriber, and other connections are not slowed. At server shutdown, requests in flight are
answered, then the socket is closed with 1001.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup
from litestar import Request, Router, WebSocket, get, websocket
from litestar.params import FromPath
from msgspec import UNSET, UnsetType

from arrwdb.domain.access import ANYONE, Caller, Need
from arrwdb.domain.errors import (
    NotFoundError,
    RateLimitedError,
    SlowConsumerError,
    SubscriptionClosedError,
)
from arrwdb.domain.ports import Subscription
from arrwdb.domain.validation import utf8_length
from arrwdb.transports._ws_watches import Frame, SocketWatches
from arrwdb.transports.convert import wants_embedding
from arrwdb.transports.dispatch import ACTIONS
from arrwdb.transports.envelopes import (
    RequestId,
    SubscribeRequest,
    SubscriptionState,
    UnsubscribeRequest,
    UnwatchRequest,
    WatchRequest,
    WSRequest,
    WSResponse,
    WSSystem,
    protocol_error,
    ws_request_decoder,
)
from arrwdb.transports.errors import classify
from arrwdb.transports.guard import (
    CLOSE_FORBIDDEN,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    caller_of,
    client_of,
)
from arrwdb.transports.messages import DocumentGet, SearchIn, WebSocketStats, encoder, too_deep
from arrwdb.transports.runtime import Outbox, Runtime, RuntimeDep

logger = logging.getLogger("arrwdb.ws")

CLOSE_GOING_AWAY = 1001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_NOT_FOUND = 4404
_CLOSE_TIMEOUT = 5.0


def _frame(message: Any) -> str:
    return encoder.encode(message).decode()


def _reason(text: str) -> str:
    """A close reason: at most 123 bytes of UTF-8 (RFC 6455)."""
    return text.encode()[:120].decode(errors="ignore")


#: What the outbound queue holds: a frame, the id of the change event it carries (None for
#: responses, the welcome and watch events), and whether it is a watch event.
_Frame = Frame


def _weigh(item: _Frame) -> int:
    return len(item[0])


def _error(
    request_id: RequestId,
    code: str,
    message: str,
    field: str | None = None,
    data: dict[str, Any] | None = None,
) -> str:
    return _frame(
        WSResponse(
            request_id=request_id,
            success=False,
            error=message,
            code=code,
            field=UNSET if field is None else field,
            data=UNSET if data is None else data,
        )
    )


class _Connection:
    """One WebSocket connection (implements ``runtime.Connection``)."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        runtime: Runtime,
        library_id: str,
        caller: Caller = ANYONE,
        client: str = "",
    ):
        settings = runtime.settings
        self.caller = caller
        self.client = client
        self.connection_id = str(uuid.uuid4())
        self.library_id = library_id
        self._socket = socket
        self._runtime = runtime
        self._max_message = settings.max_ws_message_bytes
        self._send_timeout = settings.ws_send_timeout
        # one bounded FIFO to the writer (events and responses, with the id of an event's
        # frame), read without a checkpoint
        self._out: Outbox[_Frame] = Outbox(
            settings.ws_send_queue, settings.ws_send_buffer_bytes, _weigh
        )
        self._last_sent: str | None = None  # the id of the last event frame sent
        self._slots = anyio.Semaphore(settings.ws_max_inflight)
        # what the answers being computed may weigh (estimated before they are): a client
        # that pipelines large searches and reads nothing makes the server hold about this
        # much, plus its outbox
        self._budget = settings.ws_inflight_bytes
        self._inflight = 0
        self._room = anyio.Event()
        self._dimension: int | None = None
        self._sub: Subscription | None = None
        self._pump_scope: anyio.CancelScope | None = None
        self._read_scope = anyio.CancelScope()
        self._close: tuple[int, str] | None = None
        self._disconnected = False
        self._writer_done = anyio.Event()
        self._finished = anyio.Event()
        self._tg: TaskGroup | None = None
        #: the socket's watches (live queries), drained by the pump before change events
        self._watches = SocketWatches(self, runtime)

    @property
    def subscribed(self) -> bool:
        return self._sub is not None

    async def shutdown(self) -> None:
        self._request_close(CLOSE_GOING_AWAY, "server shutting down")
        await self._finished.wait()

    async def run(self, sub: Subscription) -> None:
        """Serve the connection until the client leaves or it is closed."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                welcome = WSSystem(
                    message=f"Connected to library {self.library_id}",
                    connection_id=self.connection_id,
                    event_id=str(self._runtime.service.last_event_id),
                )
                # the first frame, before any event
                self._out.send_nowait((_frame(welcome), None, False))
                tg.start_soon(self._write_loop)
                await self._start_pump(sub)
                async with anyio.create_task_group() as workers:
                    with self._read_scope:
                        await self._read_loop(workers)
                    if self._disconnected or self._close_code() != CLOSE_GOING_AWAY:
                        workers.cancel_scope.cancel()
                if not self._disconnected and self._close_code() == CLOSE_GOING_AWAY:
                    self._stop_pump()
                    self._out.close()  # the writer sends what is queued, then stops
                    with anyio.move_on_after(_CLOSE_TIMEOUT):
                        await self._writer_done.wait()
                tg.cancel_scope.cancel()
        except Exception:
            logger.exception("WebSocket %s failed", self.connection_id)
            self._close = self._close or (1011, "internal error")
        finally:
            self._stop_pump()
            with anyio.CancelScope(shield=True):
                await self._watches.close()
        try:
            if not self._disconnected:
                code, reason = self._close or (1000, "")
                with anyio.move_on_after(_CLOSE_TIMEOUT):
                    await self._socket.close(code=code, reason=_reason(reason))
        except Exception:  # the client dropped the connection meanwhile
            logger.debug("closing %s failed", self.connection_id, exc_info=True)
        finally:
            self._finished.set()

    @property
    def close_code(self) -> int | None:
        """The code the server closed with (None: the client left first, or still open)."""
        return self._close_code()

    def _close_code(self) -> int | None:
        return self._close[0] if self._close else None

    def request_close(self, code: int, reason: str) -> None:
        """Close the connection (from the event loop): its reader stops, requests in flight
        are cancelled."""
        self._request_close(code, reason)

    def _request_close(self, code: int, reason: str) -> None:
        if self._close is None and not self._disconnected:
            self._close = (code, reason)
            if code == CLOSE_SLOW_CONSUMER:
                self._runtime.counters.slow_consumers["websocket"] += 1
            logger.info("WebSocket %s closing: %d %s", self.connection_id, code, reason)
        self._read_scope.cancel()

    # -- reading ------------------------------------------------------------------------------

    async def _read_loop(self, workers: TaskGroup) -> None:
        while True:
            message = await self._socket.receive()
            if message["type"] != "websocket.receive":
                self._disconnected = True
                return
            text = message.get("text")
            await self._handle(text if text is not None else message.get("bytes") or b"", workers)

    async def _handle(self, data: str | bytes, workers: TaskGroup) -> None:
        try:
            self._runtime.limiter.check(self.client)
        except RateLimitedError as exc:
            self._runtime.counters.rate_limited["websocket"] += 1
            await self._send(
                _error(None, exc.code, exc.message, data={"retry_after": exc.retry_after})
            )
            return
        if len(data) > self._max_message or (
            isinstance(data, str)
            and len(data) * 4 > self._max_message
            and utf8_length(data) > self._max_message
        ):
            limit = self._max_message
            await self._send(_error(None, "payload_too_large", f"message exceeds {limit} bytes"))
            return
        try:
            request = ws_request_decoder.decode(data)
        except msgspec.DecodeError as exc:
            fault = protocol_error(data, exc)
            await self._send(_error(fault.request_id, fault.code, fault.message, fault.field))
            return
        except RecursionError:
            deep = too_deep()
            await self._send(_error(None, deep.code, deep.message))
            return
        if isinstance(request, SubscribeRequest):
            await self._subscribe(request)
        elif isinstance(request, UnsubscribeRequest):
            await self._unsubscribe(request)
        elif isinstance(request, WatchRequest | UnwatchRequest):
            await self._slots.acquire()
            workers.start_soon(self._serve_watch, request)
        else:
            await self._slots.acquire()
            weight = await self._reserve(self._estimate(request))
            workers.start_soon(self._serve, request, weight)

    def _estimate(self, request: WSRequest) -> int:
        """About how many bytes the answer to ``request`` will take (before it is computed)."""
        data = request.data
        if isinstance(data, SearchIn):
            per_hit = 512
            if wants_embedding(data):
                if self._dimension is None:
                    with contextlib.suppress(Exception):
                        dimension = self._runtime.service.get_library(self.library_id).dimension
                        self._dimension = dimension
                per_hit += 24 * (self._dimension or 1024)
            return data.k * per_hit
        if isinstance(data, DocumentGet):
            return 64 * 1024
        return 1024

    async def _reserve(self, weight: int) -> int:
        """Wait until ``weight`` more bytes of answers fit in the budget (one answer always
        fits when none is being computed); returns what was reserved."""
        while self._inflight and self._inflight + weight > self._budget:
            self._room = anyio.Event()
            await self._room.wait()
        self._inflight += weight
        return weight

    def _release(self, weight: int) -> None:
        self._inflight -= weight
        self._room.set()

    async def _serve(self, request: WSRequest, weight: int) -> None:
        try:
            action = type(request).__struct_config__.tag
            rid = request.request_id

            def encode(data: Any, event_id: str | UnsetType = UNSET) -> str:  # off the loop
                return _frame(
                    WSResponse(request_id=rid, success=True, data=data, event_id=event_id)
                )

            dispatcher = self._runtime.dispatcher
            try:
                if ACTIONS[str(action)].write:
                    written = await dispatcher.write(
                        str(action),
                        self.library_id,
                        request.data,
                        caller=self.caller,
                        then=encode,
                        idempotency_key=request.idempotency_key,
                    )
                    frame: str = written.result
                else:
                    frame = await dispatcher.execute(
                        str(action), self.library_id, request.data, caller=self.caller, then=encode
                    )
            except Exception as exc:
                fault = classify(exc)
                frame = _error(request.request_id, fault.code, fault.message, fault.field)
            await self._answer(frame)
        finally:
            self._release(weight)
            self._slots.release()

    async def _serve_watch(self, request: WatchRequest | UnwatchRequest) -> None:
        try:
            await self._watches.serve(request)
        finally:
            self._slots.release()

    def start_soon(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``task`` with the connection (cancelled when it ends)."""
        assert self._tg is not None
        self._tg.start_soon(task)

    async def answer(self, frame: str) -> None:
        await self._answer(frame)

    async def _answer(self, frame: str) -> None:
        """Queue a response, waiting for room at most ``ws_send_timeout`` seconds: a client
        that sends requests and does not read the answers is closed (4008)."""
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            with anyio.move_on_after(self._send_timeout):
                await self._out.send((frame, None, False))
                return
            self._runtime.fanout.discard(self)
            self._request_close(
                CLOSE_SLOW_CONSUMER,
                f"slow consumer: not reading answers; last event id {self._last_sent or 'none'}",
            )

    # -- events -------------------------------------------------------------------------------

    async def _subscribe(self, request: SubscribeRequest) -> None:
        rid, since, types = request.request_id, request.data.since, request.data.types
        state = SubscriptionState(subscribed=True, library_id=self.library_id)
        if since is None and types is None and self._sub is not None:
            await self._send(_frame(WSResponse(request_id=rid, success=True, data=state)))
            return
        try:
            sub = self._runtime.service.subscribe(self.library_id, since=since, types=types)
        except Exception as exc:
            fault = classify(exc)
            await self._send(_error(rid, fault.code, fault.message, fault.field))
            return
        self._stop_pump()
        if sub.reset is not None:
            message = (
                f"events after {since!r} are no longer retained; subscribed to live events "
                f"after {sub.reset.id}: resynchronise"
            )
            data = dict(sub.reset.data)
            await self._send(_error(rid, "history_lost", message, "since", data))
        else:
            await self._send(_frame(WSResponse(request_id=rid, success=True, data=state)))
        await self._start_pump(sub)

    async def _unsubscribe(self, request: UnsubscribeRequest) -> None:
        self._stop_pump()
        state = SubscriptionState(subscribed=False)
        await self._send(
            _frame(WSResponse(request_id=request.request_id, success=True, data=state))
        )
        self.pump()  # the watches' events go on

    async def _start_pump(self, sub: Subscription) -> None:
        assert self._tg is not None
        self._sub = sub
        self._runtime.fanout.add(self)  # pumped after each publish from now on
        self.pump()  # and now, for what the subscription already holds (a replay)

    def _stop_pump(self) -> None:
        self._runtime.fanout.discard(self)
        if self._pump_scope is not None:
            self._pump_scope.cancel()
            self._pump_scope = None
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def pump(self) -> None:
        """Move the events the subscription holds in memory to the outbound queue, without
        waiting: called by ``runtime.fanout`` after each publish (one task for every
        connection), each event's frame encoded once for all subscribers (``runtime.frames``).
        Before each change event, the watch events held are queued (``_ws_watches``: a client
        that sees change ``N`` has every watch event it caused). When the queue is full, or
        the next events must be read from the store's log, a task of the connection takes
        over (``_pump_slowly``) and hands back once caught up; meanwhile the fan-out skips
        this connection."""
        if self._pump_scope is not None:
            return  # the slow path is running
        out, watches, frames = self._out, self._watches, self._runtime.frames
        try:
            if not watches.drain_nowait(out.send_nowait):
                self._slow_path(None)
                return
            sub = self._sub
            while sub is not None and not watches.registering:
                event = sub.poll()
                if event is None:
                    if sub.behind:
                        self._slow_path(None)
                    return
                frame = (frames.ws(event), event.id, False)
                # the watch events this change caused are in their feeds: they go first
                if not watches.drain_nowait(out.send_nowait):
                    self._slow_path(frame)
                    return
                try:
                    out.send_nowait(frame)
                except anyio.WouldBlock:
                    self._slow_path(frame)
                    return
        except SubscriptionClosedError as exc:
            self._stream_ended(exc)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError):
            # the queue or the task group is closed: the connection is ending
            self._runtime.fanout.discard(self)

    def _slow_path(self, frame: _Frame | None) -> None:
        assert self._tg is not None
        scope = self._pump_scope = anyio.CancelScope()
        self._tg.start_soon(self._pump_slowly, frame, scope)

    async def _pump_slowly(self, frame: _Frame | None, scope: anyio.CancelScope) -> None:
        """Wait for room (the watch events held, then ``frame``), read the log where the
        subscription must, then hand back to the fan-out."""
        sub = self._sub
        frames, watches = self._runtime.frames, self._watches
        with scope:
            try:
                if not await watches.drain(self._put):
                    return
                if frame is not None and not await self._put(frame):
                    return
                while sub is not None and not watches.registering:
                    event = await sub.aget(timeout=0)  # what is kept, the log included
                    if event is None:
                        break
                    if not await watches.drain(self._put):
                        return
                    if not await self._put((frames.ws(event), event.id, False)):
                        return
            except SubscriptionClosedError as exc:
                self._stream_ended(exc)
                return
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._runtime.fanout.discard(self)
                return
            if self._pump_scope is scope:
                self._pump_scope = None
                self.pump()  # the rest, then back to the fan-out

    async def _put(self, frame: _Frame) -> bool:
        """Queue ``frame``, waiting for room at most ``ws_send_timeout`` seconds; False (and
        the connection closing) if the client did not make room."""
        with anyio.move_on_after(self._send_timeout):
            await self._out.send(frame)
            return True
        self._runtime.fanout.discard(self)
        self._request_close(
            CLOSE_SLOW_CONSUMER,
            f"slow consumer: not reading; last event id {self._last_sent or 'none'}",
        )
        return False

    def _stream_ended(self, exc: SubscriptionClosedError) -> None:
        self._runtime.fanout.discard(self)
        if isinstance(exc, SlowConsumerError):
            self._request_close(
                CLOSE_SLOW_CONSUMER,
                f"slow consumer: events no longer kept; last event id {self._last_sent or 'none'}",
            )
        elif self._runtime.closing:
            self._request_close(CLOSE_GOING_AWAY, "server shutting down")

    # -- writing ------------------------------------------------------------------------------

    async def _send(self, frame: str) -> None:
        # closing: the answer has nowhere to go
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._out.send((frame, None, False))

    async def _write_loop(self) -> None:
        try:
            async with self._out:
                delivered = self._runtime.counters.delivered
                watch_delivered = self._runtime.counters.watch_delivered
                async for frame, event_id, watch in self._out:
                    await self._socket.send_data(frame)
                    if event_id is not None:
                        self._last_sent = event_id
                        delivered["websocket"] += 1
                    elif watch:
                        watch_delivered["websocket"] += 1
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:  # the client went away mid-send
            self._disconnected = True
            self._read_scope.cancel()
        finally:
            self._writer_done.set()


@websocket("/v1/libraries/{library_id:str}/ws")
async def library_socket(
    socket: WebSocket[Any, Any, Any], library_id: FromPath[str], runtime: RuntimeDep
) -> None:
    """The arrwDB WebSocket protocol (see docs/protocol.md)."""
    if runtime.closing:
        await socket.accept()
        await socket.close(code=CLOSE_GOING_AWAY, reason="server shutting down")
        return
    caller = caller_of(socket.scope)
    if not caller.allows(Need.READ, library_id):
        await socket.accept()
        reason = _reason(f"forbidden: this key may not read library {library_id!r}")
        await socket.close(code=CLOSE_FORBIDDEN, reason=reason)
        logger.info("WebSocket refused: 4403 forbidden (key %s)", caller.key_id)
        return
    try:
        # registered before the welcome: no event after it can be missed
        sub = runtime.service.subscribe(library_id)
    except NotFoundError:
        await socket.accept()
        reason = _reason(f"library {library_id!r} not found")
        await socket.close(code=CLOSE_NOT_FOUND, reason=reason)
        logger.info("WebSocket refused: %s", reason)
        return
    client = client_of(socket.scope)
    try:
        runtime.open_streams.open(client)
    except RateLimitedError as exc:
        runtime.counters.rate_limited["websocket"] += 1
        sub.close()
        await socket.accept()
        await socket.close(code=CLOSE_TRY_AGAIN_LATER, reason=_reason(f"{exc.code}: {exc}"))
        return
    conn = _Connection(socket, runtime, library_id, caller, client)
    try:
        await socket.accept()
    except Exception:
        sub.close()
        runtime.open_streams.close(client)
        return
    forget = runtime.opened_with(
        caller.key_id, lambda: conn.request_close(CLOSE_UNAUTHORIZED, "unauthorized: key revoked")
    )
    total = runtime.connections.add(conn)
    opened = time.monotonic()
    logger.info(
        "WebSocket connected: %s (library: %s, key: %s), total connections: %d",
        conn.connection_id,
        library_id,
        caller.key_id or "none",
        total,
    )
    try:
        await conn.run(sub)
    finally:
        forget()
        runtime.open_streams.close(client)
        remaining = runtime.connections.remove(conn)
        logger.info(
            "WebSocket disconnected: %s, close code %s, after %.1f s, remaining connections: %d",
            conn.connection_id,
            conn.close_code if conn.close_code is not None else "none (client left)",
            time.monotonic() - opened,
            remaining,
        )


@get("/v1/websockets/stats", tags=["websockets"])
async def websocket_stats(runtime: RuntimeDep, request: Request[Any, Any, Any]) -> WebSocketStats:
    """Open WebSocket connections, and subscriptions per library; with an API key, of the
    libraries it may read. Also the open SSE streams (``sse_streams``)."""
    caller = caller_of(request.scope)
    return runtime.stats(caller.may_read)


def router() -> Router:
    """The WebSocket transport (and its statistics)."""
    return Router(path="/", route_handlers=[library_socket, websocket_stats])
