"""The sync client's change stream: Server-Sent Events read by a background thread into a
bounded buffer, reconnecting and resuming by itself."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable, Iterator

import httpx

from arrwdb.domain.events import Event
from arrwdb.remote import _wire
from arrwdb.remote._http import Http, error_of, headers_of, unavailable
from arrwdb.remote._sse import BUFFER, SILENCE, Backoff, Parser, Position, is_final


class RemoteEventStream:
    """A change stream over SSE, read by a background thread into a bounded buffer."""

    def __init__(
        self,
        http: Http,
        path: str,
        since: str | int | None,
        types: Iterable[str] | None,
        timeout: float | None,
    ) -> None:
        self._path = path
        self._timeout = timeout
        self._position = Position(since=None if since is None else str(since))
        self._position.types = _wire.types_param(types)
        self._last_id: str | None = None
        #: how many times the stream has reconnected (after a lost connection)
        self.reconnects = 0
        self._items: queue.Queue[Event | BaseException] = queue.Queue(maxsize=BUFFER)
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
            raise error_of(response)
        raise AssertionError("unreachable")

    def _read(self) -> None:
        backoff = Backoff()
        response = self._response
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
                    item = None if envelope is None else self._position.take(envelope)
                    if item is not None and not self._put(item):
                        return
                    if isinstance(item, BaseException):
                        return
            except (httpx.HTTPError, ValueError, RuntimeError):
                pass  # a lost connection (or one closed by ``close``): reconnect
            finally:
                response.close()
                response = None
            if not self._closed.is_set():
                self._closed.wait(backoff.next())

    def _put(self, item: Event | BaseException) -> bool:
        while not self._closed.is_set():
            try:
                self._items.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._closed.is_set() and self._items.empty():
            raise StopIteration
        try:
            item = self._items.get(timeout=self._timeout)
        except queue.Empty:
            self.close()
            raise StopIteration from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._last_id = item.id
        return item

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
        self._client.close()

    def __enter__(self) -> RemoteEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
