"""The async client's streams: Server-Sent Events read by a task into a bounded buffer,
reconnecting and resuming by itself (``AsyncSseReader``); the change stream is one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Generic

import httpx

from arrwdb.domain.events import Event
from arrwdb.remote import _wire
from arrwdb.remote._http import AsyncHttp, error_of, headers_of, unavailable
from arrwdb.remote._sse import (
    BUFFER,
    SILENCE,
    Backoff,
    ChangePosition,
    E,
    Parser,
    Position,
    is_final,
)


class AsyncSseReader(Generic[E]):
    """A stream over SSE from ``path``, read by a task into a bounded buffer. It is being
    opened when this returns: every later request of the client waits until it is registered
    (a refusal is raised by the first iteration). After a lost connection it reconnects from
    ``position`` (backing off, with jitter). Iterating stops after ``timeout`` seconds without
    an event."""

    def __init__(
        self, http: AsyncHttp, path: str, position: Position[E], timeout: float | None
    ) -> None:
        self._http = http
        self._path = path
        self._timeout = timeout
        self._position = position
        self._last_id: str | None = None
        #: how many times the stream has reconnected (after a lost connection)
        self.reconnects = 0
        self._items: asyncio.Queue[E | BaseException] = asyncio.Queue(maxsize=BUFFER)
        self._closed = False
        loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None] = loop.create_future()
        http.opening.add(self._opened)
        self._opened.add_done_callback(http.opening.discard)
        self._task = loop.create_task(self._read(), name="arrwdb-events")

    @property
    def last_id(self) -> str | None:
        return self._last_id

    async def _open(self, client: httpx.AsyncClient, retries: int) -> httpx.Response:
        backoff = Backoff()
        for attempt in range(retries + 1):
            try:
                request = client.build_request("GET", self._path, params=self._position.params())
                response = await client.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise unavailable(self._http.url, exc) from None
                await asyncio.sleep(backoff.next())
                continue
            if response.is_success:
                self._position.started(response.headers.get("arrwdb-event-id"))
                return response
            await response.aread()
            await response.aclose()
            raise self._position.refused(error_of(response))
        raise AssertionError("unreachable")

    async def _read(self) -> None:
        http = self._http
        position = self._position
        backoff = Backoff()
        async with httpx.AsyncClient(
            base_url=http.url,
            headers=headers_of(http.api_key) | {"Accept": "text/event-stream"},
            timeout=httpx.Timeout(http.timeout, read=SILENCE),
        ) as client:
            first = True
            while True:
                self.reconnects += not first
                try:
                    response = await self._open(client, http.retries if first else 0)
                except Exception as exc:
                    if first or is_final(exc):
                        await self._items.put(exc)
                        return
                    await asyncio.sleep(backoff.next())
                    continue
                finally:
                    if first and not self._opened.done():
                        self._opened.set_result(None)
                    first = False
                parser = Parser()
                try:
                    async for line in response.aiter_lines():
                        backoff.reset()
                        envelope = parser.feed(line)
                        item = None if envelope is None else position.take(envelope)
                        if item is None:
                            continue
                        await self._items.put(item)
                        if isinstance(item, BaseException) or position.final(item):
                            return
                except (httpx.HTTPError, ValueError):
                    pass  # a lost connection: reconnect
                finally:
                    await response.aclose()
                await asyncio.sleep(backoff.next())

    def _given(self, item: E | BaseException) -> E:
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._last_id = item.id
        if self._position.final(item):
            self.close()  # the last event: the iteration ends after it
        return item

    def __aiter__(self) -> AsyncIterator[E]:
        return self

    async def __anext__(self) -> E:
        if self._closed and self._items.empty():
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._items.get(), self._timeout)
        except TimeoutError:
            self.close()
            raise StopAsyncIteration from None
        return self._given(item)

    def _poll(self) -> E | None:
        try:
            item = self._items.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return self._given(item)

    def close(self) -> None:
        """Stop reading (the connection is closed by the reading task as it ends)."""
        self._closed = True
        self._task.cancel()
        if not self._opened.done():
            self._opened.set_result(None)

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class AsyncRemoteEventStream(AsyncSseReader[Event]):
    """A change stream over SSE, read by a task into a bounded buffer."""

    def __init__(
        self,
        http: AsyncHttp,
        path: str,
        since: str | int | None,
        types: Iterable[str] | None,
        timeout: float | None,
    ) -> None:
        position = ChangePosition(since=None if since is None else str(since))
        position.types = _wire.types_param(types)
        super().__init__(http, path, position, timeout)

    async def __aenter__(self) -> AsyncRemoteEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
