"""The in-process API: ``arrwdb.open()`` and ``arrwdb.open_async()``.

Same operations, semantics and errors as the server (exceptions carry the same ``code``s as
HTTP problems and WebSocket errors). The sync API is thread-safe; the async twin runs each call
in a worker thread so it never blocks the event loop.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

import anyio
import numpy as np

from arrwdb.adapters.embedders.registry import EmbedderLike
from arrwdb.config import Settings
from arrwdb.container import Container, build_container
from arrwdb.domain.errors import (
    InvalidArgumentError,
    LibraryNotFoundError,
    SubscriptionClosedError,
)
from arrwdb.domain.events import Event
from arrwdb.domain.models import (
    Document,
    Library,
    NewChunk,
    NewDocument,
    Page,
    SearchQuery,
    SearchResult,
)
from arrwdb.domain.ports import Subscription
from arrwdb.domain.service import VectorDBService
from arrwdb.live import AsyncWatchHandle, WatchHandle

Query = str | Sequence[float] | np.ndarray


def open(
    path: str | None = None,
    *,
    embedders: Mapping[str, EmbedderLike] | None = None,
    **options: Any,
) -> Database:
    """Open a database: in memory (``path=None``) or durable in directory ``path``.

    ``options`` are ``Settings`` fields (``history_size=...``, ``default_embedder=...``);
    anything not given comes from ``ARRWDB_*`` environment variables, then the defaults.
    ``embedders`` adds embedders of your own by name, for libraries to name at creation: a
    function ``fn(list[str]) -> array of shape (n, d)`` or an ``Embedder`` object (they join
    ``hashing``, ``minilm`` and the ``arrwdb.embedders`` entry points, and replace one of
    the same name). A library made with one needs it again whenever the database is opened.
    """
    return Database(_start(path, options, embedders))


def open_async(
    path: str | None = None,
    *,
    embedders: Mapping[str, EmbedderLike] | None = None,
    **options: Any,
) -> AsyncDatabase:
    """The async twin of :func:`open` (opening itself is quick and does not block)."""
    return AsyncDatabase(Database(_start(path, options, embedders)))


def _start(
    path: str | None,
    options: dict[str, Any],
    embedders: Mapping[str, EmbedderLike] | None = None,
) -> Container:
    if path is not None:
        options = {"storage": "disk", "data_dir": str(path), **options}
    container = build_container(Settings.from_env(**options), embedders=embedders)
    container.embedders()  # a bad embedder, or a default one that cannot run, fails here
    container.init_resources()
    return container


class Database:
    """A handle on an open database. Close it (or use ``with``) to release the store; one
    left open is closed when it is garbage-collected, or at the latest at interpreter exit
    (saving its indexes, as ``close`` does)."""

    def __init__(self, container: Container) -> None:
        self._container = container
        self.service: VectorDBService = container.service()
        # at exit, while the interpreter still works (a generator finalised later, during
        # shutdown, finds builtins gone and cannot write the saved indexes)
        self._finalizer = weakref.finalize(self, container.shutdown_resources)

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
    ) -> LibraryHandle:
        """``embedder`` left out: the default one; ``None``: a vectors-only library (text to
        embed is ``EmbedderRequiredError``)."""
        lib = self.service.create_library(
            name,
            description=description,
            metadata=metadata,
            dimension=dimension,
            metric=metric,
            index=index,
            index_params=index_params,
            embedder=embedder,
        )
        return LibraryHandle(self.service, lib.id, self)

    def get_or_create_library(self, name: str, **options: Any) -> LibraryHandle:
        """The library ``name`` if it exists with the same ``dimension`` (when given),
        ``metric`` and ``index``, else a new one (``options`` as for ``create_library``);
        raises ``AlreadyExistsError`` when the one of that name differs."""
        lib, _ = self.service.get_or_create_library(name, **options)
        return LibraryHandle(self.service, lib.id, self)

    def get_library(self, name_or_id: str) -> LibraryHandle:
        """By id or by name; raises ``LibraryNotFoundError``."""
        return LibraryHandle(self.service, self._resolve(name_or_id), self)

    def list_libraries(self) -> list[Library]:
        return self.service.list_libraries()

    def delete_library(self, name_or_id: str) -> None:
        self.service.delete_library(self._resolve(name_or_id))

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> EventStream:
        """Every library's change events (see ``LibraryHandle.events``)."""
        return EventStream(self.service.subscribe(None, since=since, types=types), timeout)

    def _resolve(self, name_or_id: str) -> str:
        try:
            return self.service.get_library(name_or_id).id
        except LibraryNotFoundError:
            return self.service.find_library(name_or_id).id

    def backup(self, destination: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of a durable store into the empty or new directory
        ``destination`` while it keeps serving; ``arrwdb.open(destination)`` opens the copy."""
        return self.service.backup(destination)

    def close(self) -> None:
        """Save changed indexes and release the store (idempotent)."""
        self._finalizer()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LibraryHandle:
    """Operations on one library. Attribute reads (``lib.name``, ``lib.chunk_count``...) give
    the library's current state."""

    def __init__(
        self, service: VectorDBService, library_id: str, database: Database | None = None
    ) -> None:
        self._service = service
        self.id = library_id
        self._database = database  # keeps the database open while a handle is in use

    @property
    def info(self) -> Library:
        return self._service.get_library(self.id)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.info, name)

    def __repr__(self) -> str:
        return f"<LibraryHandle {self.id}>"

    def add_document(
        self,
        title: str = "",
        text: str | None = None,
        *,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
    ) -> Document:
        """Add one document from ``text`` (chunked and embedded here) or ``chunks``."""
        doc = NewDocument(
            title=title,
            text=text,
            chunks=None if chunks is None else list(chunks),  # type: ignore[arg-type]
            metadata=metadata or {},
            id=id,
        )
        return self._service.add_document(self.id, doc)

    def add_documents(self, documents: Iterable[NewDocument | Mapping[str, Any]]) -> list[Document]:
        """Add many documents in one commit: the fast path for bulk loads."""
        return self._service.add_documents(self.id, documents)

    def upsert_document(
        self,
        id: str,
        title: str = "",
        text: str | None = None,
        *,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Document:
        """Write the document of id ``id``: added (``document.added``), or replacing the one
        of that id, its content, title and metadata (``document.updated``)."""
        doc = NewDocument(
            title=title,
            text=text,
            chunks=None if chunks is None else list(chunks),  # type: ignore[arg-type]
            metadata=metadata or {},
            id=id,
        )
        return self._service.upsert_document(self.id, id, doc)[0]

    def upsert_documents(
        self, documents: Iterable[NewDocument | Mapping[str, Any]]
    ) -> list[Document]:
        """``upsert_document`` for many documents (each with its ``id``), in one commit."""
        return [doc for doc, _ in self._service.upsert_documents(self.id, documents)]

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
    ) -> SearchResult:
        """Search by text (``str``) or by vector (list or numpy array). ``include``: any of
        ``text``, ``metadata``, ``embedding`` (default text and metadata; what is left out is
        ``None`` on the hits); ``group_by="document"``: the best chunk of each of the ``k``
        best documents."""
        text = query if isinstance(query, str) else None
        vector = None if isinstance(query, str) else query
        q = SearchQuery(
            text=text,
            vector=vector,
            k=k,
            filter=filter,
            ef=ef,
            include_embedding=include_embedding,
            include=include,
            group_by=group_by,
        )
        return self._service.search(self.id, q)

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
    ) -> list[SearchResult]:
        """Several searches in one call, one result per query in order, each as ``search``
        gives it. ``queries``: texts, vectors, or a 2-D numpy array (one query per row).
        Vector queries are searched as one batch (the index's batched path)."""
        if isinstance(queries, np.ndarray) and queries.ndim == 2:
            return self._service.search_vectors(
                self.id,
                queries,
                k=k,
                filter=filter,
                ef=ef,
                include_embedding=include_embedding,
                include=include,
                group_by=group_by,
            )
        if isinstance(queries, str | np.ndarray):
            raise InvalidArgumentError(
                "queries must be a list of queries or a 2-D array", field="queries"
            )
        batch = [
            SearchQuery(
                text=q if isinstance(q, str) else None,
                vector=None if isinstance(q, str) else q,
                k=k,
                filter=filter,
                ef=ef,
                include_embedding=include_embedding,
                include=include,
                group_by=group_by,
            )
            for q in queries
        ]
        return self._service.search_many(self.id, batch)

    def get_document(self, document_id: str, *, include_embedding: bool = False) -> Document:
        """A document with its chunks (their embeddings with ``include_embedding``)."""
        return self._service.get_document(self.id, document_id, include_embedding=include_embedding)

    def get_documents(self, ids: Sequence[str]) -> Page:
        """The documents of ``ids`` (at most 1,000) in the order asked, without chunks;
        unknown ids are left out (``next_cursor`` is ``None``)."""
        return self._service.get_documents(self.id, ids)

    def query_documents(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> Page:
        """The documents whose metadata matches ``filter`` (and among ``ids``, if given), in
        insertion order (with ``ids``: theirs), without chunks, ``limit`` (100) a page; follow
        ``next_cursor``."""
        return self._service.query_documents(
            self.id, ids=ids, filter=filter, limit=limit, cursor=cursor
        )

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """How many documents (whose metadata matches ``filter``)."""
        return self._service.count_documents(self.id, filter)

    def list_documents(self, *, limit: int = 100, cursor: str | None = None) -> Page:
        return self._service.list_documents(self.id, limit=limit, cursor=cursor)

    def update_document(
        self,
        document_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
    ) -> Document:
        """Change ``title``, merge ``metadata`` (a JSON Merge Patch: a key set to ``None`` is
        removed), or replace the content with ``text``/``chunks``."""
        return self._service.update_document(
            self.id, document_id, title=title, metadata=metadata, text=text, chunks=chunks
        )

    def delete_document(self, document_id: str) -> None:
        self._service.delete_document(self.id, document_id)

    def delete_documents(
        self, ids: Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None
    ) -> int:
        """Delete the documents of ``ids`` (unknown ones skipped) or those whose metadata
        matches ``filter`` (exactly one of the two), in one commit; how many were deleted."""
        return self._service.delete_documents(self.id, ids=ids, filter=filter)

    def update(self, **changes: Any) -> Library:
        """Change ``name``, ``description`` or ``metadata``."""
        return self._service.update_library(self.id, **changes)

    def watch(
        self,
        query: Query,
        k: int | None = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        threshold: float | None = None,
    ) -> WatchHandle:
        """A live query: ``k`` given (default 10), the results of an exact search for
        ``query`` (a text or a vector; ``filter`` and the ``threshold`` floor applied), kept
        as every change commits; ``k=None`` and a ``threshold``, a ``watch.match`` for every
        chunk added or updated that reaches it. Read with ``w.events(timeout=...)``; the
        watch lives until ``w.close()``. Raises ``NotFoundError``, ``ValidationError`` (as
        ``search``), ``LimitExceededError`` (``max_watches_per_library``)."""
        watching = self._service.watching
        spec = watching.prepare(self.id, query, k=k, threshold=threshold, filter=filter)
        watching.start(spec)
        return WatchHandle(watching, spec)

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> EventStream:
        """This library's change events: from ``since`` (an event id, or ``"earliest"`` for all
        that is retained; ``None``: only live ones), then live ones as they are committed.

        The subscription is registered when this method returns. Iteration stops after
        ``timeout`` seconds without an event (``None``: never). If ``since`` is no longer
        retained, the first event is a ``stream.reset`` (``data``: ``reason``,
        ``requested``, ``earliest``, ``resume_from``; its ``id`` is ``resume_from``) and the
        stream continues live after it. A consumer that keeps reading is never cut off; one
        whose unread events are no longer kept gets ``SlowConsumerError`` (resume from its
        ``last_event_id``).
        """
        return EventStream(self._service.subscribe(self.id, since=since, types=types), timeout)


class EventStream:
    """An iterator over a subscription; iterate sync (``for``) or async (``async for``)."""

    def __init__(self, subscription: Subscription, timeout: float | None) -> None:
        self._sub = subscription
        self._timeout = timeout
        self._pending_reset: Event | None = subscription.reset
        self._closed = False

    @property
    def last_id(self) -> str | None:
        return self._sub.last_id

    def _reset_event(self) -> Event | None:
        reset, self._pending_reset = self._pending_reset, None
        return reset

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        reset = self._reset_event()
        if reset is not None:
            return reset
        try:
            event = self._sub.get(self._timeout)
        except SubscriptionClosedError:
            if self._closed:
                raise StopIteration from None
            raise
        if event is None:
            self.close()
            raise StopIteration
        return event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._agen()

    async def _agen(self) -> AsyncIterator[Event]:
        try:
            reset = self._reset_event()
            if reset is not None:
                yield reset
            while True:
                try:
                    event = await self._sub.aget(self._timeout)
                except SubscriptionClosedError:
                    if self._closed:
                        return
                    raise
                if event is None:
                    return
                yield event
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._sub.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDatabase:
    """``Database`` for coroutines: every call runs in a worker thread."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.service = db.service

    async def create_library(self, name: str, **options: Any) -> AsyncLibraryHandle:
        handle = await anyio.to_thread.run_sync(lambda: self._db.create_library(name, **options))
        return AsyncLibraryHandle(handle)

    async def get_or_create_library(self, name: str, **options: Any) -> AsyncLibraryHandle:
        handle = await anyio.to_thread.run_sync(
            lambda: self._db.get_or_create_library(name, **options)
        )
        return AsyncLibraryHandle(handle)

    async def get_library(self, name_or_id: str) -> AsyncLibraryHandle:
        handle = await anyio.to_thread.run_sync(self._db.get_library, name_or_id)
        return AsyncLibraryHandle(handle)

    async def list_libraries(self) -> list[Library]:
        return await anyio.to_thread.run_sync(self._db.list_libraries)

    async def delete_library(self, name_or_id: str) -> None:
        await anyio.to_thread.run_sync(self._db.delete_library, name_or_id)

    def events(self, since: str | int | None = None, **options: Any) -> EventStream:
        return self._db.events(since, **options)

    async def backup(self, destination: str | os.PathLike[str]) -> Path:
        return await anyio.to_thread.run_sync(self._db.backup, destination)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._db.close)

    async def __aenter__(self) -> AsyncDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncLibraryHandle:
    """``LibraryHandle`` for coroutines."""

    def __init__(self, handle: LibraryHandle) -> None:
        self._h = handle
        self.id = handle.id

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._h.info, name)

    async def get_info(self) -> Library:
        """The library as it is now (its counts, dimension, ...)."""
        return await anyio.to_thread.run_sync(lambda: self._h.info)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def add_document(self, title: str = "", text: str | None = None, **kw: Any) -> Document:
        result: Document = await self._run(self._h.add_document, title, text, **kw)
        return result

    async def add_documents(self, documents: Iterable[Any]) -> list[Document]:
        result: list[Document] = await self._run(self._h.add_documents, list(documents))
        return result

    async def upsert_document(
        self,
        id: str,
        title: str = "",
        text: str | None = None,
        *,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Document:
        result: Document = await self._run(
            self._h.upsert_document, id, title, text, chunks=chunks, metadata=metadata
        )
        return result

    async def upsert_documents(
        self, documents: Iterable[NewDocument | Mapping[str, Any]]
    ) -> list[Document]:
        result: list[Document] = await self._run(self._h.upsert_documents, list(documents))
        return result

    async def search(self, query: Query, k: int = 10, **kw: Any) -> SearchResult:
        result: SearchResult = await self._run(self._h.search, query, k, **kw)
        return result

    async def search_many(self, queries: Any, k: int = 10, **kw: Any) -> list[SearchResult]:
        result: list[SearchResult] = await self._run(self._h.search_many, queries, k, **kw)
        return result

    async def get_document(self, document_id: str, **kw: Any) -> Document:
        result: Document = await self._run(self._h.get_document, document_id, **kw)
        return result

    async def get_documents(self, ids: Sequence[str]) -> Page:
        result: Page = await self._run(self._h.get_documents, ids)
        return result

    async def query_documents(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> Page:
        result: Page = await self._run(
            self._h.query_documents, filter=filter, limit=limit, cursor=cursor, ids=ids
        )
        return result

    async def count(self, filter: Mapping[str, Any] | None = None) -> int:
        result: int = await self._run(self._h.count, filter)
        return result

    async def list_documents(self, **kw: Any) -> Page:
        result: Page = await self._run(self._h.list_documents, **kw)
        return result

    async def update_document(self, document_id: str, **changes: Any) -> Document:
        result: Document = await self._run(self._h.update_document, document_id, **changes)
        return result

    async def delete_document(self, document_id: str) -> None:
        await self._run(self._h.delete_document, document_id)

    async def delete_documents(
        self, ids: Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None
    ) -> int:
        result: int = await self._run(self._h.delete_documents, ids, filter=filter)
        return result

    async def update(self, **changes: Any) -> Library:
        result: Library = await self._run(self._h.update, **changes)
        return result

    def events(self, since: str | int | None = None, **options: Any) -> EventStream:
        """Use with ``async for``; registered when this returns."""
        return self._h.events(since, **options)

    async def watch(self, query: Query, k: int | None = 10, **options: Any) -> AsyncWatchHandle:
        """``LibraryHandle.watch``; read with ``async for event in w.events()``."""
        handle: WatchHandle = await self._run(self._h.watch, query, k, **options)
        return AsyncWatchHandle(handle)


__all__ = [
    "AsyncDatabase",
    "AsyncLibraryHandle",
    "Database",
    "EventStream",
    "LibraryHandle",
    "open",
    "open_async",
]
