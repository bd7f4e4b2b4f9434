"""The database API, as ``typing.Protocol``s: what ``arrwdb.open()`` (in process) and
``arrwdb.connect(url)`` (a client of a server) both give, and their async twins.

Code written against these types runs unchanged on either: the same methods, arguments,
results (the models of ``arrwdb``: ``Library``, ``Document``, ``SearchResult``, ``Page``,
``Event``, ``WatchEvent``) and exceptions (``arrwdb.NotFoundError`` and the rest, with the same
``code``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import EllipsisType
from typing import Any, Protocol

import numpy as np

from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library, NewChunk, NewDocument, Page, SearchResult
from arrwdb.domain.watches import Watch, WatchEvent

#: A search query: text, or a vector (a list of floats or a 1-D numpy array).
Query = str | Sequence[float] | np.ndarray
#: A new document: a ``NewDocument`` or a mapping of its fields (``title``, ``text`` or
#: ``chunks``, ``metadata``, ``id``).
DocumentLike = NewDocument | Mapping[str, Any]


class Events(Protocol):
    """A change stream: iterate it (``for`` / ``async for``); ``close()`` ends it."""

    @property
    def last_id(self) -> str | None:
        """The id of the last event handed out: resume from it with ``since=``."""
        ...

    def __iter__(self) -> Iterator[Event]: ...

    def __next__(self) -> Event: ...

    def close(self) -> None: ...


class AsyncEvents(Protocol):
    """A change stream for ``async for``."""

    @property
    def last_id(self) -> str | None: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def close(self) -> None: ...


class WatchStream(Protocol):
    """The events of a live query (``w.events()``): ``watch.ready`` first, then
    ``watch.entered``/``watch.left`` (a top-k watch) or ``watch.match`` (a match watch), in
    order; a ``stream.closed`` last when the watch ends (deleted, expired, its library
    deleted). Iteration stops after the ``timeout`` without an event."""

    @property
    def last_id(self) -> str | None:
        """The id of the last event handed out: resume from it with ``w.events(since=...)``."""
        ...

    def poll(self) -> WatchEvent | None:
        """The next event if there is one now, without waiting."""
        ...

    def __iter__(self) -> Iterator[WatchEvent]: ...

    def __next__(self) -> WatchEvent: ...

    def close(self) -> None: ...


class AsyncWatchStream(Protocol):
    """The events of a live query for ``async for``."""

    @property
    def last_id(self) -> str | None: ...

    def poll(self) -> WatchEvent | None: ...

    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    def close(self) -> None: ...


class WatchAPI(Protocol):
    """A live query (``lib.watch(...)``): it lives until ``close()`` (or the end of a
    ``with`` block)."""

    @property
    def id(self) -> str: ...

    @property
    def info(self) -> Watch:
        """The registration: ``k``, ``threshold``, ``filter``, ``created_at``..."""
        ...

    def events(self, since: str | None = None, *, timeout: float | None = None) -> WatchStream:
        """Its events, from a fresh ``watch.ready`` or after ``since`` (a watch event id).
        Raises ``WatchNotFoundError`` once the watch is closed."""
        ...

    def close(self) -> None:
        """Remove the watch (idempotent)."""
        ...

    def __enter__(self) -> WatchAPI: ...

    def __exit__(self, *exc: object) -> None: ...


class AsyncWatchAPI(Protocol):
    """``WatchAPI`` for coroutines: ``await w.close()``, ``async with``."""

    @property
    def id(self) -> str: ...

    @property
    def info(self) -> Watch: ...

    def events(
        self, since: str | None = None, *, timeout: float | None = None
    ) -> AsyncWatchStream: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> AsyncWatchAPI: ...

    async def __aexit__(self, *exc: object) -> None: ...


class LibraryAPI(Protocol):
    """Operations on one library (``db.create_library(...)``, ``db.get_library(...)``)."""

    id: str

    @property
    def info(self) -> Library:
        """The library as it is now (its counts, dimension, ...)."""
        ...

    def add_document(
        self,
        title: str = "",
        text: str | None = None,
        *,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
    ) -> Document: ...

    def add_documents(self, documents: Iterable[DocumentLike]) -> list[Document]: ...

    def upsert_document(
        self,
        id: str,
        title: str = "",
        text: str | None = None,
        *,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Document: ...

    def upsert_documents(self, documents: Iterable[DocumentLike]) -> list[Document]: ...

    def search(
        self,
        query: Query,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include_embedding: bool = False,
        include: Sequence[str] | None = None,
        group_by: str | None = None,
    ) -> SearchResult: ...

    def search_many(
        self,
        queries: Iterable[Query] | np.ndarray,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include_embedding: bool = False,
        include: Sequence[str] | None = None,
        group_by: str | None = None,
    ) -> list[SearchResult]: ...

    def get_document(self, document_id: str, *, include_embedding: bool = False) -> Document: ...

    def get_documents(self, ids: Sequence[str]) -> Page: ...

    def query_documents(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> Page: ...

    def count(self, filter: Mapping[str, Any] | None = None) -> int: ...

    def list_documents(self, *, limit: int = 100, cursor: str | None = None) -> Page: ...

    def update_document(
        self,
        document_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
    ) -> Document: ...

    def delete_document(self, document_id: str) -> None: ...

    def delete_documents(
        self, ids: Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None
    ) -> int: ...

    def update(self, **changes: Any) -> Library: ...

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> Events: ...

    def watch(
        self,
        query: Query,
        k: int | None = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        threshold: float | None = None,
    ) -> WatchAPI:
        """A live query: a top-k watch (``k``, optional ``threshold`` floor) or a match watch
        (``k=None`` and a ``threshold``). Raises ``NotFoundError``, ``ValidationError`` (as
        ``search``), ``LimitExceededError``."""
        ...


class DatabaseAPI(Protocol):
    """A database: ``arrwdb.open(...)`` or ``arrwdb.connect(url)``."""

    def create_library(
        self,
        name: str,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
        dimension: int | None = None,
        metric: str = "cosine",
        index: str = "hnsw",
        index_params: Mapping[str, int] | None = None,
        embedder: str | EllipsisType | None = ...,
    ) -> LibraryAPI: ...

    def get_or_create_library(self, name: str, **options: Any) -> LibraryAPI: ...

    def get_library(self, name_or_id: str) -> LibraryAPI: ...

    def list_libraries(self) -> list[Library]: ...

    def delete_library(self, name_or_id: str) -> None: ...

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> Events: ...

    def close(self) -> None: ...


class AsyncLibraryAPI(Protocol):
    """``LibraryAPI`` for coroutines: the same calls, awaited (``events`` is iterated with
    ``async for``)."""

    id: str

    async def get_info(self) -> Library:
        """The library as it is now (its counts, dimension, ...)."""
        ...

    async def add_document(
        self, title: str = "", text: str | None = None, **kw: Any
    ) -> Document: ...

    async def add_documents(self, documents: Iterable[Any]) -> list[Document]: ...

    async def search(self, query: Query, k: int = 10, **kw: Any) -> SearchResult: ...

    async def search_many(self, queries: Any, k: int = 10, **kw: Any) -> list[SearchResult]: ...

    async def upsert_document(
        self,
        id: str,
        title: str = "",
        text: str | None = None,
        *,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Document: ...

    async def upsert_documents(self, documents: Iterable[Any]) -> list[Document]: ...

    async def get_document(
        self, document_id: str, *, include_embedding: bool = False
    ) -> Document: ...

    async def get_documents(self, ids: Sequence[str]) -> Page: ...

    async def query_documents(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> Page: ...

    async def count(self, filter: Mapping[str, Any] | None = None) -> int: ...

    async def list_documents(self, *, limit: int = 100, cursor: str | None = None) -> Page: ...

    async def update_document(self, document_id: str, **changes: Any) -> Document: ...

    async def delete_document(self, document_id: str) -> None: ...

    async def delete_documents(
        self, ids: Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None
    ) -> int: ...

    async def update(self, **changes: Any) -> Library: ...

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncEvents: ...

    async def watch(self, query: Query, k: int | None = 10, **options: Any) -> AsyncWatchAPI:
        """``LibraryAPI.watch`` (``filter=``, ``threshold=``)."""
        ...


class AsyncDatabaseAPI(Protocol):
    """``DatabaseAPI`` for coroutines: ``arrwdb.open_async(...)`` or
    ``arrwdb.connect_async(url)``."""

    async def create_library(self, name: str, **options: Any) -> AsyncLibraryAPI: ...

    async def get_or_create_library(self, name: str, **options: Any) -> AsyncLibraryAPI: ...

    async def get_library(self, name_or_id: str) -> AsyncLibraryAPI: ...

    async def list_libraries(self) -> list[Library]: ...

    async def delete_library(self, name_or_id: str) -> None: ...

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncEvents: ...

    async def close(self) -> None: ...
