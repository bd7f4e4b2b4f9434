"""``arrwdb.connect_async(url)``: the async in-process API, over HTTP to an arrwDB server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from arrwdb.api import Query
from arrwdb.domain.errors import InvalidArgumentError, LibraryNotFoundError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library, Page, SearchResult
from arrwdb.remote import _calls, _wire
from arrwdb.remote._calls import Call
from arrwdb.remote._http import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    error_of,
    headers_of,
    retry_delay,
    unavailable,
)
from arrwdb.remote._ingest import AsyncIngest
from arrwdb.remote._sse import BUFFER, SILENCE, Backoff, Parser, Position, is_final

T = TypeVar("T")


class AsyncHttp:
    """``Http`` for coroutines. Every request first waits for the change streams this client
    has just opened to be registered, so that a write made after ``lib.events()`` returned is
    in the stream (as it is in process)."""

    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.client = httpx.AsyncClient(
            base_url=self.url, headers=headers_of(api_key), timeout=timeout
        )
        self.opening: set[asyncio.Future[None]] = set()

    async def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        write: bool = False,
        content_type: str = "application/json",
    ) -> httpx.Response:
        if self.opening:
            await asyncio.wait(list(self.opening))
        headers = {"Content-Type": content_type} if content is not None else {}
        if write:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        backoff = Backoff()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self.client.request(
                    method, path, content=content, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if last:
                    raise unavailable(self.url, exc) from None
                await asyncio.sleep(backoff.next())
                continue
            if response.is_success:
                return response
            delay = None if last else retry_delay(response, backoff)
            if delay is None:
                raise error_of(response)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def run(self, call: Call[T]) -> T:
        content = None if call.body is None else _calls.body_bytes(call.body)
        response = await self.send(
            call.method, call.path, content=content, params=call.params, write=call.write
        )
        return call.decode(response.json() if response.content else None)

    async def close(self) -> None:
        await self.client.aclose()


class AsyncRemoteDatabase:
    """``RemoteDatabase`` for coroutines: the methods of ``arrwdb.open_async()``'s database."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self._http = AsyncHttp(url, api_key, timeout, retries)

    @property
    def url(self) -> str:
        return self._http.url

    def __repr__(self) -> str:
        return f"<AsyncRemoteDatabase {self.url}>"

    async def create_library(self, name: str, **options: Any) -> AsyncRemoteLibrary:
        call = _calls.create_library(name, {"embedder": ..., **options})
        return AsyncRemoteLibrary(self._http, (await self._http.run(call)).id)

    async def get_or_create_library(self, name: str, **options: Any) -> AsyncRemoteLibrary:
        call = _calls.create_library(name, {"embedder": ..., **options}, exist_ok=True)
        return AsyncRemoteLibrary(self._http, (await self._http.run(call)).id)

    async def get_library(self, name_or_id: str) -> AsyncRemoteLibrary:
        return AsyncRemoteLibrary(self._http, await self._resolve(name_or_id))

    async def list_libraries(self) -> list[Library]:
        return await self._http.run(_calls.list_libraries())

    async def delete_library(self, name_or_id: str) -> None:
        await self._http.run(_calls.delete_library(await self._resolve(name_or_id)))

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncRemoteEventStream:
        return AsyncRemoteEventStream(self._http, "/v1/events", since, types, timeout)

    async def _resolve(self, name_or_id: str) -> str:
        if _calls.is_uuid(name_or_id):
            try:
                return (await self._http.run(_calls.get_library(name_or_id))).id
            except LibraryNotFoundError:
                pass
        for lib in await self.list_libraries():
            if lib.name == name_or_id:
                return lib.id
        raise LibraryNotFoundError(name_or_id)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> AsyncRemoteDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRemoteLibrary:
    """``RemoteLibrary`` for coroutines. ``await lib.info`` is not needed: ``lib.id`` is
    known, and ``await lib.get_info()`` reads the library's current state."""

    def __init__(self, http: AsyncHttp, library_id: str) -> None:
        self._http = http
        self.id = library_id

    def __repr__(self) -> str:
        return f"<AsyncRemoteLibrary {self.id}>"

    async def get_info(self) -> Library:
        return await self._http.run(_calls.get_library(self.id))

    async def add_document(self, title: str = "", text: str | None = None, **kw: Any) -> Document:
        doc = {"title": title, "text": text, **kw}
        return await self._http.run(_calls.add_document(self.id, doc))

    async def add_documents(self, documents: Iterable[Any]) -> list[Document]:
        added: list[Document] = []
        for call in _calls.add_documents(self.id, documents):
            batch: list[Document] = await self._http.run(call)
            added += batch
        return added

    def ingest(self, documents: Iterable[Any], *, upsert: bool = False) -> AsyncIngest:
        """``RemoteLibrary.ingest`` for ``async for``."""
        http = self._http
        path = f"/v1/libraries/{self.id}/documents/stream"
        return AsyncIngest(
            http.url, http.api_key, path, documents, upsert=upsert, timeout=http.timeout
        )

    async def search(self, query: Query, k: int = 10, **kw: Any) -> SearchResult:
        opts = _calls.search_options(
            kw.pop("filter", None), kw.pop("ef", None), kw.pop("include_embedding", False), kw
        )
        return await self._http.run(_calls.search(self.id, query, k, opts))

    async def search_many(self, queries: Any, k: int = 10, **kw: Any) -> list[SearchResult]:
        if isinstance(queries, str) or getattr(queries, "ndim", 2) != 2:
            raise InvalidArgumentError(
                "queries must be a list of queries or a 2-D array", field="queries"
            )
        opts = _calls.search_options(
            kw.pop("filter", None), kw.pop("ef", None), kw.pop("include_embedding", False), kw
        )
        response = await self._http.send(
            "POST",
            f"/v1/libraries/{self.id}/search/stream",
            content=_calls.search_many_lines(queries, k, opts),
            content_type="application/x-ndjson",
        )
        return _calls.search_many_results(response.text)

    async def get_document(self, document_id: str, *, include_embedding: bool = False) -> Document:
        return await self._http.run(_calls.get_document(self.id, document_id, include_embedding))

    async def list_documents(self, *, limit: int = 100, cursor: str | None = None) -> Page:
        return await self._http.run(_calls.list_documents(self.id, limit, cursor))

    async def get_documents(self, ids: Sequence[str]) -> Page:
        return await self._http.run(_calls.query_documents(self.id, {"ids": list(ids)}))

    async def query_documents(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> Page:
        fields = {"filter": filter, "limit": limit, "cursor": cursor, "ids": ids}
        return await self._http.run(_calls.query_documents(self.id, fields))

    async def count(self, filter: Mapping[str, Any] | None = None) -> int:
        return await self._http.run(_calls.count(self.id, filter))

    async def upsert_document(
        self, id: str, title: str = "", text: str | None = None, **kw: Any
    ) -> Document:
        doc = {"title": title, "text": text, **kw}
        return await self._http.run(_calls.upsert_document(self.id, id, doc))

    async def upsert_documents(self, documents: Iterable[Any]) -> list[Document]:
        results = [r async for r in self.ingest(documents, upsert=True)]
        ids = _calls.upserted(self.id, results)
        found: dict[str, Document] = {}
        for start in range(0, len(ids), 1000):
            page = await self.get_documents(ids[start : start + 1000])
            found.update((d.id, d) for d in page.documents)
        return [found[i] for i in ids if i in found]

    async def update_document(self, document_id: str, **changes: Any) -> Document:
        changes = {k: v for k, v in changes.items() if v is not None}
        return await self._http.run(_calls.update_document(self.id, document_id, changes))

    async def delete_documents(
        self, ids: Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None
    ) -> int:
        return await self._http.run(_calls.delete_documents(self.id, ids, filter))

    async def delete_document(self, document_id: str) -> None:
        await self._http.run(_calls.delete_document(self.id, document_id))

    async def update(self, **changes: Any) -> Library:
        return await self._http.run(_calls.update_library(self.id, changes))

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncRemoteEventStream:
        """Use with ``async for``; see ``RemoteLibrary.events``. The stream is being opened
        when this returns: every later request of this client waits until it is registered."""
        path = f"/v1/libraries/{self.id}/events"
        return AsyncRemoteEventStream(self._http, path, since, types, timeout)


class AsyncRemoteEventStream:
    """A change stream over SSE, read by a task into a bounded buffer."""

    def __init__(
        self,
        http: AsyncHttp,
        path: str,
        since: str | int | None,
        types: Iterable[str] | None,
        timeout: float | None,
    ) -> None:
        self._http = http
        self._path = path
        self._timeout = timeout
        self._position = Position(since=None if since is None else str(since))
        self._position.types = _wire.types_param(types)
        self._last_id: str | None = None
        #: how many times the stream has reconnected (after a lost connection)
        self.reconnects = 0
        self._items: asyncio.Queue[Event | BaseException] = asyncio.Queue(maxsize=BUFFER)
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
            raise error_of(response)
        raise AssertionError("unreachable")

    async def _read(self) -> None:
        http = self._http
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
                        item = None if envelope is None else self._position.take(envelope)
                        if item is not None:
                            await self._items.put(item)
                        if isinstance(item, BaseException):
                            return
                except (httpx.HTTPError, ValueError):
                    pass  # a lost connection: reconnect
                finally:
                    await response.aclose()
                await asyncio.sleep(backoff.next())

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._closed and self._items.empty():
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._items.get(), self._timeout)
        except TimeoutError:
            self.close()
            raise StopAsyncIteration from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._last_id = item.id
        return item

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

    async def __aenter__(self) -> AsyncRemoteEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
