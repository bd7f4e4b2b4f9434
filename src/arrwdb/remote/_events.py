"""The sync client's streams: Server-Sent Events read by a background thread into a bounded
buffer, reconnecting and resuming by itself (``SseReader``); the change stream is one."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Generic

import httpx

from arrwdb.domain.events import Event
from arrwdb.remote import _wire
from arrwdb.remote._http import Http, error_of, headers_of, unavailable
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


class SseReader(Generic[E]):
    """A stream over SSE from ``path``, read by a background thread into a bounded buffer.
    The connection is open when this returns (a refusal is raised here); after a lost one it
    reconnects from ``position`` (backing off, with jitter), so nothing is given twice or
    missed. Iterating stops after ``timeout`` seconds without an event."""

    def __init__(self, http: Http, path: str, position: Position[E], timeout: float | None) -> None:
        self._path = path
        self._timeout = timeout
        self._position = position
        self._last_id: str | None = None
        #: how many times the stream has reconnected (after a lost connection)
        self.reconnects = 0
        self._items: queue.Queue[E | BaseException] = queue.Queue(maxsize=BUFFER)
        self._closed = threading.Event()
        self._client = httpx.Client(
            base_url=http.url,
            headers=headers_of(http.api_key) | {"Accept": "text/event-stream"},
            timeout=httpx.Timeout(http.timeout, read=SILENCE),
        )
        self._response: httpx.Response | None = None
        try:
            self._response = self._open(http.retries)
        except BaseException:
            self._client.close()
            raise
        self._thread = threading.Thread(target=self._read, name="arrwdb-events", daemon=True)
        self._thread.start()

    @property
    def last_id(self) -> str | None:
        """The id of the last event handed out."""
        return self._last_id

    def _open(self, retries: int = 0) -> httpx.Response:
        backoff = Backoff()
        for attempt in range(retries + 1):
            try:
                request = self._client.build_request(
                    "GET", self._path, params=self._position.params()
                )
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise unavailable(str(self._client.base_url), exc) from None
                time.sleep(backoff.next())
                continue
            if response.is_success:
                self._position.started(response.headers.get("arrwdb-event-id"))
                return response
            response.read()
            response.close()
            raise self._position.refused(error_of(response))
        raise AssertionError("unreachable")

    def _read(self) -> None:
        backoff = Backoff()
        response = self._response
        position = self._position
        while not self._closed.is_set():
            if response is None:
                self.reconnects += 1
                try:
                    response = self._response = self._open()
                except Exception as exc:
                    if is_final(exc):
                        self._put(exc)
                        return
                    self._closed.wait(backoff.next())
                    continue
            parser = Parser()
            try:
                for line in response.iter_lines():
                    backoff.reset()
                    envelope = parser.feed(line)
                    item = None if envelope is None else position.take(envelope)
                    if item is None:
                        continue
                    if not self._put(item) or isinstance(item, BaseException):
                        return
                    if position.final(item):
                        return
            except (httpx.HTTPError, ValueError, RuntimeError):
                pass  # a lost connection (or one closed by ``close``): reconnect
            finally:
                response.close()
                response = None
            if not self._closed.is_set():
                self._closed.wait(backoff.next())

    def _put(self, item: E | BaseException) -> bool:
        while not self._closed.is_set():
            try:
                self._items.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _given(self, item: E | BaseException) -> E:
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._last_id = item.id
        if self._position.final(item):
            self.close()  # the last event: the iteration ends after it
        return item

    def __iter__(self) -> Iterator[E]:
        return self

    def __next__(self) -> E:
        if self._closed.is_set() and self._items.empty():
            raise StopIteration
        try:
            item = self._items.get(timeout=self._timeout)
        except queue.Empty:
            self.close()
            raise StopIteration from None
        return self._given(item)

    def _poll(self) -> E | None:
        try:
            item = self._items.get_nowait()
        except queue.Empty:
            return None
        return self._given(item)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
        self._client.close()


class RemoteEventStream(SseReader[Event]):
    """A change stream over SSE, read by a background thread into a bounded buffer."""

    def __init__(
        self,
        http: Http,
        path: str,
        since: str | int | None,
        types: Iterable[str] | None,
        timeout: float | None,
    ) -> None:
        position = ChangePosition(since=None if since is None else str(since))
        position.types = _wire.types_param(types)
        super().__init__(http, path, position, timeout)

    def __enter__(self) -> RemoteEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
