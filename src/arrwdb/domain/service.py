"""The application service: every use case of arrwDB, for every way in.

``import arrwdb`` and every transport (REST, NDJSON, SSE, WebSocket) call this one class, so the
rules live here once. It is synchronous and thread-safe; async callers run it in a worker thread.

Write path (``_pipeline`` has the details):
    validate + chunk + embed (no lock held)  ->  under the commit lock: check against the state
    every ordered write will leave, assign event ids, hand the change to the repository (a
    durable store logs change and events as one record)  ->  without the lock: wait until it is
    durable (concurrent writers share one fsync)  ->  in commit order: index under the
    library's write lock, publish the events  ->  return.
A write that raises has changed nothing: validation happens before anything is stored, and a
store failure leaves the index and the event stream untouched.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from arrwdb.domain import validation as v
from arrwdb.domain._documents import (
    DocumentBuilder,
    PreparedBatch,
    as_new_chunk,
    as_new_document,
)
from arrwdb.domain._library_state import LibraryState
from arrwdb.domain._pipeline import CommitPipeline
from arrwdb.domain._search import Searcher
from arrwdb.domain.chunking import Chunker
from arrwdb.domain.errors import (
    AlreadyExistsError,
    DocumentNotFoundError,
    InvalidArgumentError,
    LibraryNotFoundError,
)
from arrwdb.domain.events import Event, StartPoint, check_event_types
from arrwdb.domain.models import (
    Document,
    Library,
    Matrix,
    NewChunk,
    NewDocument,
    Page,
    SearchQuery,
    SearchResult,
    new_id,
    utcnow,
)
from arrwdb.domain.ports import (
    Backup,
    Commit,
    Embedder,
    EventBus,
    IndexFactory,
    IndexStore,
    Repository,
    Subscription,
)

MAX_PAGE = 1000

logger = logging.getLogger("arrwdb.service")


class VectorDBService:
    """The use cases. Every method raises the ``ArrwdbError`` subclasses its docstring names."""

    def __init__(
        self,
        repository: Repository,
        bus: EventBus,
        index_factory: IndexFactory,
        embedders: Mapping[str, Embedder],
        chunker: Chunker | None = None,
        *,
        default_embedder: str = "hashing",
        history_size: int = 10_000,
        index_store: IndexStore | None = None,
    ) -> None:
        if default_embedder not in embedders:
            raise InvalidArgumentError(f"default embedder {default_embedder!r} is not configured")
        self._repo = repository
        self._bus = bus
        self._make_index = index_factory
        self._index_store = index_store
        self._embedders = dict(embedders)
        self._default_embedder = default_embedder
        self._builder = DocumentBuilder(chunker or Chunker(), self._embedders)
        self._searcher = Searcher(self._builder, repository)
        self._history_size = history_size
        self._commit = threading.RLock()
        self._saving = threading.Lock()  # one save_indexes at a time
        self._stop_autosave = threading.Event()
        self._autosaver: threading.Thread | None = None
        self._states: dict[str, LibraryState] = {}
        self._names: dict[str, str] = {}
        self._last_event = 0  # the last event published
        self._ordered_event = 0  # the last event id given to an ordered write
        self._pipeline = CommitPipeline()
        self._loaded = False

    # -- lifecycle ----------------------------------------------------------------------------

    def load(self) -> None:
        """Open every library's index (the saved one brought up to date, or built from the
        repository) and restore the event history."""
        with self._commit:
            if self._loaded:
                return
            store = self._index_store
            libraries = self._repo.list_libraries()
            if store is not None:
                store.retain([library.id for library in libraries])
            for library in libraries:
                state = LibraryState(library, self._make_index)
                docs = list(self._repo.iter_documents(library.id))
                saved = store.load(library) if store is not None else None
                with state.lock.write():
                    if saved is not None:
                        changed = state.restore(docs, saved, self._builder.stack_embeddings)
                        logger.info(
                            "library %s: saved index loaded, %d label(s) brought up to date",
                            library.id,
                            changed,
                        )
                    elif docs:
                        state.apply_documents(docs, self._builder.stack_embeddings(docs))
                state.order_documents(docs)
                self._states[library.id] = state
                self._names[library.name] = library.id
            events = self._repo.recent_events(self._history_size)
            if events:
                self._bus.restore(events)
            self._last_event = self._ordered_event = self._bus.last_id
            self._loaded = True

    def save_indexes(self) -> int:
        """Save every index changed since it was last saved or loaded (a no-op without an
        index store), so that the next open need not rebuild it. A library's writes wait
        while its index is written; searches do not. Returns how many were saved; raises
        ``StorageError`` (after trying the others) if one could not be."""
        store = self._index_store
        if store is None:
            return 0
        saved = 0
        failure: Exception | None = None
        with self._saving:
            for state in list(self._states.values()):
                with state.lock.read():
                    if not state.unsaved or state.index is None:
                        continue
                    if state.library.id not in self._states:  # deleted meanwhile
                        continue
                    try:
                        store.save(state.library, state.index, state.chunk_ids())
                    except Exception as exc:  # keep saving the others
                        failure = exc
                        continue
                    state.unsaved = 0
                    saved += 1
        if failure is not None:
            raise failure
        return saved

    def autosave_indexes(self, every: float) -> None:
        """Call ``save_indexes`` every ``every`` seconds in a background thread until
        ``close`` (a failure is logged and retried next time), so that an open after a crash
        only re-indexes what changed since the last save."""
        if self._index_store is None or every <= 0 or self._autosaver is not None:
            return

        def run() -> None:
            while not self._stop_autosave.wait(every):
                try:
                    self.save_indexes()
                except Exception:
                    logger.exception("periodic index save failed; retrying in %ss", every)

        self._autosaver = threading.Thread(target=run, name="arrwdb-index-saver", daemon=True)
        self._autosaver.start()

    def close(self) -> None:
        """Save changed indexes (a failure is logged: they are rebuilt on the next open), then
        close the event stream and the repository."""
        self._stop_autosave.set()
        if self._autosaver is not None:
            self._autosaver.join()
        try:
            self.save_indexes()
        except Exception:
            logger.exception("could not save the indexes: they will be rebuilt on next open")
        finally:
            self._bus.close()
            self._repo.close()

    def check_ready(self) -> None:
        """Raise ``StorageError`` when the store cannot serve."""
        self._repo.check()

    def backup(self, destination: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of the store into the empty or new directory
        ``destination``, while reads and writes go on; it opens as a store on its own (its
        HNSW indexes are rebuilt on its first open). Returns the directory. Raises
        ``InvalidArgumentError`` for an in-memory store, ``StorageError``."""
        repo = self._repo
        if not isinstance(repo, Backup):
            raise InvalidArgumentError(
                "this store is in memory: there is nothing on disk to back up",
                field="destination",
            )
        return repo.snapshot_to(destination).parent

    # -- libraries ----------------------------------------------------------------------------

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
        embedder: str | None = None,
    ) -> Library:
        """Raises ``AlreadyExistsError`` for a taken name, ``ValidationError`` for bad fields."""
        embedder_name = embedder or self._default_embedder
        if embedder_name not in self._embedders:
            raise InvalidArgumentError(
                f"unknown embedder {embedder_name!r}; configured: "
                f"{', '.join(sorted(self._embedders))}",
                field="embedder",
            )
        fixed = self._embedders[embedder_name].dimension
        dim = v.check_dimension(dimension)
        library = Library(
            id=new_id(),
            name=v.check_name(name),
            description=v.check_text(description or "", "description"),
            metadata=v.check_metadata(metadata),
            dimension=dim if dim is not None else fixed,
            metric=v.check_metric(metric),
            index=v.check_index_kind(index),  # type: ignore[arg-type]
            index_params=v.check_index_params(index_params),
            embedder=embedder_name,
        )
        state = LibraryState(library, self._make_index)
        with self._commit:
            if library.name in self._names:
                raise AlreadyExistsError(
                    f"a library named {library.name!r} already exists", name=library.name
                )
            event = self._event("library.created", library.id, _library_data(library))
            commit = self._repo.save_library(library, event)
            turn = self._ordered([event])
            self._names[library.name] = library.id

        def apply() -> None:
            self._states[library.id] = state
            self._publish([event])

        self._pipeline.finish(turn, commit, apply)
        return library

    def get_library(self, library_id: str) -> Library:
        return self._state(library_id).library

    def find_library(self, name: str) -> Library:
        """The library named ``name``; raises ``LibraryNotFoundError``."""
        library_id = self._names.get(name)
        state = None if library_id is None else self._states.get(library_id)
        if state is None:
            raise LibraryNotFoundError(name)
        return state.library

    def list_libraries(self) -> list[Library]:
        return [state.library for state in list(self._states.values())]

    def update_library(
        self,
        library_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Library:
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = v.check_name(name)
        if description is not None:
            changes["description"] = v.check_text(description, "description")
        if metadata is not None:
            changes["metadata"] = v.check_metadata(metadata)
        with self._commit:
            state = self._writable(library_id)
            old = state.head
            new_name = changes.get("name", old.name)
            if new_name != old.name and new_name in self._names:
                raise AlreadyExistsError(
                    f"a library named {new_name!r} already exists", name=new_name
                )
            library = replace(old, **changes, updated_at=utcnow())
            data = {**_library_data(library), "changed": sorted(changes)}
            event = self._event("library.updated", library.id, data)
            commit = self._repo.save_library(library, event)
            turn = self._ordered([event])
            state.head = library
            if new_name != old.name:
                del self._names[old.name]
                self._names[new_name] = library.id

        def apply() -> None:
            state.library = library
            self._publish([event])

        self._pipeline.finish(turn, commit, apply)
        return library

    def delete_library(self, library_id: str) -> None:
        """Delete a library with all of its documents; raises ``LibraryNotFoundError``."""
        with self._commit:
            state = self._writable(library_id)
            event = self._event("library.deleted", library_id, {"name": state.head.name})
            commit = self._repo.delete_library(library_id, event)
            turn = self._ordered([event])
            state.deleted = True
            del self._names[state.head.name]

        def apply() -> None:
            with state.lock.write():
                del self._states[library_id]
                state.unsaved = 0
            self._publish([event])

        self._pipeline.finish(turn, commit, apply)
        if self._index_store is not None:
            self._index_store.discard(library_id)

    # -- documents ----------------------------------------------------------------------------

    def add_documents(
        self, library_id: str, documents: Iterable[NewDocument | Mapping[str, Any]]
    ) -> list[Document]:
        """Add documents in one commit (all or none): the fast path for bulk loads.

        Raises ``LibraryNotFoundError``, ``AlreadyExistsError`` (a given id is taken) and
        ``ValidationError`` (naming the document and chunk) before anything is stored.
        """
        state = self._writable(library_id)
        batch = self._builder.prepare(state.head, [as_new_document(d) for d in documents])
        with self._commit:
            state = self._writable(library_id)
            batch = self._builder.revalidate(state.head, batch)
            taken = [d.id for d in batch.documents if d.id in state.documents]
            if taken or len({d.id for d in batch.documents}) != len(batch.documents):
                raise AlreadyExistsError(f"document id {taken[0] if taken else ''} is taken")
            turn, commit, apply = self._order_documents(state, batch, "document.added")
        self._pipeline.finish(turn, commit, apply)
        return [replace(d, chunks=()) for d in batch.documents]

    def add_document(self, library_id: str, document: NewDocument | Mapping[str, Any]) -> Document:
        return self.add_documents(library_id, [document])[0]

    def get_document(
        self, library_id: str, document_id: str, *, include_embedding: bool = True
    ) -> Document:
        """A document with its chunks; raises ``NotFoundError``."""
        self._state(library_id)
        doc = self._repo.get_document(library_id, document_id)
        if doc is None:
            raise DocumentNotFoundError(document_id, library_id)
        if not include_embedding:
            doc = replace(doc, chunks=tuple(replace(c, embedding=None) for c in doc.chunks))
        return doc

    def list_documents(
        self, library_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidArgumentError(f"limit must be from 1 to {MAX_PAGE}", field="limit")
        self._state(library_id)
        return self._repo.list_documents(library_id, limit, cursor)

    def update_document(
        self,
        library_id: str,
        document_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        chunks: Sequence[NewChunk | Mapping[str, Any]] | None = None,
    ) -> Document:
        """Change a document's title/metadata, or replace its content (``text`` or ``chunks``:
        re-chunked and re-embedded). Raises ``NotFoundError``, ``ValidationError``."""
        state = self._writable(library_id)
        old = self.get_document(library_id, document_id)
        new_title = None if title is None else v.check_text(title, "title")
        new_meta = None if metadata is None else v.check_metadata(metadata)
        if text is None and chunks is None:
            with self._commit:
                state = self._writable(library_id)
                # the fields change applies to the chunks every ordered write has left: wait
                # for those to be applied, then read the document again
                self._pipeline.drain()
                current = self._repo.get_document(library_id, document_id)
                if current is None or document_id not in state.documents:
                    raise DocumentNotFoundError(document_id, library_id)
                doc = replace(
                    current,
                    title=current.title if new_title is None else new_title,
                    metadata=current.metadata if new_meta is None else new_meta,
                    updated_at=utcnow(),
                )
                library = replace(state.head, updated_at=doc.updated_at)
                event = self._event("document.updated", library_id, _document_data(doc))
                commit = self._repo.save_documents(library, [doc], [event])
                turn = self._ordered([event])
                state.head = library
                state.order_documents([doc])

            def apply() -> None:
                with state.lock.write():
                    state.update_document_fields(doc)
                    state.library = library
                self._publish([event])

            self._pipeline.finish(turn, commit, apply)
            return replace(doc, chunks=())
        new = NewDocument(
            id=document_id,
            title=old.title if new_title is None else new_title,
            metadata=old.metadata if new_meta is None else new_meta,
            text=text,
            chunks=None if chunks is None else [as_new_chunk(c) for c in chunks],
        )
        batch = self._builder.prepare(state.head, [new], created_at=old.created_at)
        with self._commit:
            state = self._writable(library_id)
            if document_id not in state.documents:
                raise DocumentNotFoundError(document_id, library_id)
            batch = self._builder.revalidate(state.head, batch)
            turn, commit, apply = self._order_documents(state, batch, "document.updated")
        self._pipeline.finish(turn, commit, apply)
        return replace(batch.documents[0], chunks=())

    def delete_document(self, library_id: str, document_id: str) -> None:
        """Raises ``NotFoundError``."""
        with self._commit:
            state = self._writable(library_id)
            title = state.title_of(document_id)
            if title is None:
                raise DocumentNotFoundError(document_id, library_id)
            old = state.head
            library = replace(
                old,
                document_count=old.document_count - 1,
                chunk_count=old.chunk_count - state.chunks_of(document_id),
                updated_at=utcnow(),
            )
            data = {"document_id": document_id, "title": title}
            event = self._event("document.deleted", library_id, data)
            commit = self._repo.delete_document(library, document_id, event)
            turn = self._ordered([event])
            state.head = library
            del state.documents[document_id]

        def apply() -> None:
            with state.lock.write():
                state.remove_document(document_id)
                state.library = library
            self._publish([event])

        self._pipeline.finish(turn, commit, apply)

    def _order_documents(
        self, state: LibraryState, batch: PreparedBatch, event_type: str
    ) -> tuple[int, Commit, Callable[[], None]]:
        """Order a batch of new or replacing documents (the caller holds the commit lock and
        has validated it): its turn, commit and what applies it (see ``_pipeline``)."""
        old = state.head
        replaced = sum(state.chunks_of(d.id) for d in batch.documents)
        added = sum(1 for d in batch.documents if d.id not in state.documents)
        library = replace(
            old,
            dimension=old.dimension or batch.dimension,
            document_count=old.document_count + added,
            chunk_count=old.chunk_count + batch.vectors.shape[0] - replaced,
            updated_at=utcnow(),
        )
        events = [
            self._event(event_type, old.id, _document_data(d), offset=i)
            for i, d in enumerate(batch.documents)
        ]
        commit = self._repo.save_documents(library, batch.documents, events)
        turn = self._ordered(events)
        state.head = library
        state.order_documents(batch.documents)

        def apply() -> None:
            with state.lock.write():
                state.library = library
                state.apply_documents(batch.documents, batch.vectors)
            self._publish(events)

        return turn, commit, apply

    # -- search -------------------------------------------------------------------------------

    def search(self, library_id: str, query: SearchQuery) -> SearchResult:
        """The ``k`` best chunks (matching ``filter``), best first. Raises ``NotFoundError``,
        ``ValidationError`` (k, ef, filter, vector)."""
        return self._searcher.search_many(library_id, self._state(library_id), [query])[0]

    def search_many(self, library_id: str, queries: Sequence[SearchQuery]) -> list[SearchResult]:
        """Several searches of one library, each as ``search`` gives it (see
        ``Searcher.search_many``)."""
        return self._searcher.search_many(library_id, self._state(library_id), queries)

    def search_vectors(
        self,
        library_id: str,
        vectors: Matrix,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include_embedding: bool = False,
    ) -> list[SearchResult]:
        """``search_many`` of one query per row of ``vectors`` (a 2-D array), all with the
        same ``k``, ``filter`` and ``ef`` (see ``Searcher.search_vectors``)."""
        return self._searcher.search_vectors(
            library_id,
            self._state(library_id),
            vectors,
            k=k,
            filter=filter,
            ef=ef,
            include_embedding=include_embedding,
        )

    # -- events -------------------------------------------------------------------------------

    def subscribe(
        self,
        library_id: str | None = None,
        *,
        since: str | int | None = None,
        types: Iterable[str] | str | None = None,
        buffer: int | None = None,
    ) -> Subscription:
        """Subscribe to one library's changes (``None``: all), from ``since`` (an event id,
        ``"earliest"``, or ``None`` for live only). Raises ``NotFoundError``, ``ValidationError``.
        """
        if library_id is not None:
            self._state(library_id)
        start = StartPoint.parse(since)
        wanted = check_event_types(list(types) if types and not isinstance(types, str) else types)
        if buffer is not None and (isinstance(buffer, bool) or not isinstance(buffer, int)):
            raise InvalidArgumentError("buffer must be a positive integer", field="buffer")
        if buffer is not None and buffer < 1:
            raise InvalidArgumentError("buffer must be a positive integer", field="buffer")
        return self._bus.subscribe(library_id, start, wanted, buffer)

    @property
    def last_event_id(self) -> int:
        return self._last_event

    # -- internals ----------------------------------------------------------------------------

    def _state(self, library_id: str) -> LibraryState:
        """A library as readers see it; raises ``LibraryNotFoundError``."""
        state = self._states.get(library_id) if isinstance(library_id, str) else None
        if state is None:
            raise LibraryNotFoundError(str(library_id))
        return state

    def _writable(self, library_id: str) -> LibraryState:
        """A library that writes may still be ordered to (not being deleted)."""
        state = self._state(library_id)
        if state.deleted:
            raise LibraryNotFoundError(library_id)
        return state

    def _event(
        self, event_type: str, library_id: str, data: Mapping[str, Any], offset: int = 0
    ) -> Event:
        # ids are taken only once the repository has the write (``_ordered``): a write that
        # fails before consumes none
        return Event(
            id=str(self._ordered_event + 1 + offset),
            type=event_type,
            library_id=library_id,
            data=data,
        )

    def _ordered(self, events: Sequence[Event]) -> int:
        """The repository has the write with ``events``: take their ids and the write's turn."""
        self._ordered_event += len(events)
        return self._pipeline.order()

    def _publish(self, events: Sequence[Event]) -> None:
        for event in events:
            self._bus.publish(event)
            self._last_event = event.seq


def _library_data(library: Library) -> dict[str, Any]:
    return {
        "name": library.name,
        "dimension": library.dimension,
        "metric": library.metric,
        "index": library.index,
    }


def _document_data(doc: Document) -> dict[str, Any]:
    return {"document_id": doc.id, "title": doc.title, "num_chunks": doc.num_chunks}
