"""``arrwdb.connect_async(url)``: the async in-process API, over HTTP to an arrwDB server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from arrwdb.api import Query
from arrwdb.domain.errors import InvalidArgumentError, LibraryNotFoundError
from arrwdb.domain.models import Document, Library, Page, SearchResult
from arrwdb.remote import _calls
from arrwdb.remote._aevents import AsyncRemoteEventStream
from arrwdb.remote._http import DEFAULT_RETRIES, DEFAULT_TIMEOUT, AsyncHttp
from arrwdb.remote._ingest import AsyncIngest
from arrwdb.remote._watches import AsyncRemoteWatch


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
        """Close the client; the watches made through it and still open are removed."""
        await asyncio.gather(*(watch._abandon() for watch in list(self._http.watches)))
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

    async def watch(self, query: Query, k: int | None = 10, **options: Any) -> AsyncRemoteWatch:
        """``RemoteLibrary.watch``; read with ``async for event in w.events()``."""
        call = _calls.create_watch(self.id, query, k, **options)
        return AsyncRemoteWatch(self._http, await self._http.run(call))
