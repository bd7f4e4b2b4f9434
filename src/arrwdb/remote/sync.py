"""``arrwdb.connect(url)``: the in-process API, over HTTP to an arrwDB server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import EllipsisType, TracebackType
from typing import Any

import numpy as np

from arrwdb.api import DocumentLike, Query
from arrwdb.domain.errors import InvalidArgumentError, LibraryNotFoundError
from arrwdb.domain.models import Document, Library, NewChunk, Page, SearchResult
from arrwdb.remote import _calls
from arrwdb.remote._events import RemoteEventStream
from arrwdb.remote._http import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Http
from arrwdb.remote._ingest import Ingest
from arrwdb.remote._watches import RemoteWatch


class RemoteDatabase:
    """A database served by arrwDB at ``url``: the methods of ``arrwdb.open()``'s database."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self._http = Http(url, api_key, timeout, retries)

    @property
    def url(self) -> str:
        return self._http.url

    def __repr__(self) -> str:
        return f"<RemoteDatabase {self.url}>"

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
    ) -> RemoteLibrary:
        fields = {
            "description": description,
            "metadata": metadata,
            "dimension": dimension,
            "metric": metric,
            "index": index,
            "index_params": index_params,
            "embedder": embedder,
        }
        return RemoteLibrary(self._http, self._http.run(_calls.create_library(name, fields)).id)

    def get_or_create_library(self, name: str, **options: Any) -> RemoteLibrary:
        call = _calls.create_library(name, options, exist_ok=True)
        return RemoteLibrary(self._http, self._http.run(call).id)

    def get_library(self, name_or_id: str) -> RemoteLibrary:
        """By id or by name; raises ``LibraryNotFoundError``."""
        return RemoteLibrary(self._http, self._resolve(name_or_id))

    def list_libraries(self) -> list[Library]:
        return self._http.run(_calls.list_libraries())

    def delete_library(self, name_or_id: str) -> None:
        self._http.run(_calls.delete_library(self._resolve(name_or_id)))

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> RemoteEventStream:
        """Every library's change events (those the API key may read)."""
        return RemoteEventStream(self._http, "/v1/events", since, types, timeout)

    def _resolve(self, name_or_id: str) -> str:
        if _calls.is_uuid(name_or_id):
            try:
                return self._http.run(_calls.get_library(name_or_id)).id
            except LibraryNotFoundError:
                pass
        for lib in self.list_libraries():
            if lib.name == name_or_id:
                return lib.id
        raise LibraryNotFoundError(name_or_id)

    def close(self) -> None:
        """Close the client; the watches made through it and still open are removed."""
        for watch in list(self._http.watches):
            watch._abandon()
        self._http.close()

    def __enter__(self) -> RemoteDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RemoteLibrary:
    """Operations on one library of a server. Attribute reads (``lib.name``,
    ``lib.chunk_count``...) ask the server for the library's current state."""

    def __init__(self, http: Http, library_id: str) -> None:
        self._http = http
        self.id = library_id

    @property
    def info(self) -> Library:
        return self._http.run(_calls.get_library(self.id))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.info, name)

    def __repr__(self) -> str:
        return f"<RemoteLibrary {self.id}>"

    def add_document(
        self,
        title: str = "",
        text: str | None = None,
        *,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
    ) -> Document:
        """Add one document from ``text`` (chunked and embedded by the server) or ``chunks``."""
        doc = {"title": title, "text": text, "chunks": chunks, "metadata": metadata, "id": id}
        return self._http.run(_calls.add_document(self.id, doc))

    def add_documents(self, documents: Iterable[DocumentLike]) -> list[Document]:
        """Add many documents: sent in requests of up to 4 MiB of JSON, each one commit."""
        added: list[Document] = []
        for call in _calls.add_documents(self.id, documents):
            batch: list[Document] = self._http.run(call)
            added += batch
        return added

    def ingest(self, documents: Iterable[DocumentLike], *, upsert: bool = False) -> Ingest:
        """Stream ``documents`` to the server as NDJSON (one commit per batch the server
        reads) and iterate one ``IngestResult`` per document as the server answers it; a bad
        document fails its line only. ``upsert``: documents with an ``id`` replace the one of
        that id. ``.summary`` once the iteration has ended."""
        http = self._http
        path = f"/v1/libraries/{self.id}/documents/stream"
        return Ingest(http.url, http.api_key, path, documents, upsert=upsert, timeout=http.timeout)

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
        ``text``, ``metadata``, ``embedding``; ``group_by="document"``: the best chunk of each
        of the ``k`` best documents."""
        extra = {"include": include, "group_by": group_by}
        opts = _calls.search_options(filter, ef, include_embedding, extra)
        return self._http.run(_calls.search(self.id, query, k, opts))

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
        """Several searches in one request (NDJSON), one result per query in order."""
        if isinstance(queries, str) or (isinstance(queries, np.ndarray) and queries.ndim != 2):
            raise InvalidArgumentError(
                "queries must be a list of queries or a 2-D array", field="queries"
            )
        extra = {"include": include, "group_by": group_by}
        opts = _calls.search_options(filter, ef, include_embedding, extra)
        content = _calls.search_many_lines(queries, k, opts)
        response = self._http.send(
            "POST",
            f"/v1/libraries/{self.id}/search/stream",
            content=content,
            content_type="application/x-ndjson",
        )
        return _calls.search_many_results(response.text)

    def get_document(self, document_id: str, *, include_embedding: bool = False) -> Document:
        return self._http.run(_calls.get_document(self.id, document_id, include_embedding))

    def list_documents(self, *, limit: int = 100, cursor: str | None = None) -> Page:
        return self._http.run(_calls.list_documents(self.id, limit, cursor))

    def get_documents(self, ids: Sequence[str]) -> Page:
        """The documents of ``ids`` in the order asked, without chunks; unknown ids are left
        out."""
        return self._http.run(_calls.query_documents(self.id, {"ids": list(ids)}))

    def query_documents(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> Page:
        """The documents whose metadata matches ``filter`` (and among ``ids``), a page at a
        time; follow ``next_cursor``."""
        fields = {"filter": filter, "limit": limit, "cursor": cursor, "ids": ids}
        return self._http.run(_calls.query_documents(self.id, fields))

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """How many documents (whose metadata matches ``filter``)."""
        return self._http.run(_calls.count(self.id, filter))

    def upsert_document(
        self,
        id: str,
        title: str = "",
        text: str | None = None,
        *,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Document:
        """Write the document of id ``id``: added, or replacing the one of that id."""
        doc = {"title": title, "text": text, "chunks": chunks, "metadata": metadata}
        return self._http.run(_calls.upsert_document(self.id, id, doc))

    def upsert_documents(self, documents: Iterable[DocumentLike]) -> list[Document]:
        """``upsert_document`` for many documents (each with its ``id``), streamed as NDJSON
        (the server commits them in batches; a refused document is raised, after the ones
        before it were written)."""
        ids = _calls.upserted(self.id, self.ingest(documents, upsert=True))
        found: dict[str, Document] = {}
        for start in range(0, len(ids), 1000):
            found.update((d.id, d) for d in self.get_documents(ids[start : start + 1000]).documents)
        return [found[i] for i in ids if i in found]

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
        changes = {"title": title, "metadata": metadata, "text": text, "chunks": chunks}
        changes = {k: v for k, v in changes.items() if v is not None}
        return self._http.run(_calls.update_document(self.id, document_id, changes))

    def delete_documents(
        self, ids: Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None
    ) -> int:
        """Delete the documents of ``ids`` or those whose metadata matches ``filter`` (exactly
        one of the two), in one commit; how many were deleted."""
        return self._http.run(_calls.delete_documents(self.id, ids, filter))

    def delete_document(self, document_id: str) -> None:
        self._http.run(_calls.delete_document(self.id, document_id))

    def update(self, **changes: Any) -> Library:
        """Change ``name``, ``description`` or ``metadata``."""
        return self._http.run(_calls.update_library(self.id, changes))

    def events(
        self,
        since: str | int | None = None,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> RemoteEventStream:
        """This library's change events, over Server-Sent Events, as the in-process
        ``events``: open when this returns; after a lost connection it reconnects by itself
        (backing off, with jitter) and resumes after the last event, so no event is missed or
        given twice; a start point no longer retained gives a ``stream.reset`` event first."""
        return RemoteEventStream(
            self._http, f"/v1/libraries/{self.id}/events", since, types, timeout
        )

    def watch(
        self,
        query: Query,
        k: int | None = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        threshold: float | None = None,
    ) -> RemoteWatch:
        """A live query, as in process: ``k`` given (default 10), the results of an exact
        search for ``query`` (a text or a vector; ``filter`` and the ``threshold`` floor
        applied), kept as every change commits; ``k=None`` and a ``threshold``, a
        ``watch.match`` for every chunk added or updated that reaches it. Read with
        ``w.events(timeout=...)`` (Server-Sent Events, resumed by themselves after a lost
        connection); the watch lives on the server until ``w.close()``. Raises
        ``NotFoundError``, ``ValidationError`` (as ``search``), ``LimitExceededError``
        (``max_watches_per_library``, ``max_watches_per_key``)."""
        call = _calls.create_watch(self.id, query, k, filter=filter, threshold=threshold)
        return RemoteWatch(self._http, self._http.run(call))
