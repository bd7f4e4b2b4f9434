"""The application service: every use case of arrwDB, for every way in.

``import arrwdb`` and every transport (REST, NDJSON, SSE, WebSocket) call this one class, so the
rules live here once. It is synchronous and thread-safe; async callers run it in a worker thread.

Who may change what:
- the **store** changes its own tables and log, in ``ChangeLog.write`` (ordering, checks) and as
  commits become durable;
- the **projector** (``projection.Projector``) changes everything in memory: library states,
  indexes, chunk references, the local event hub; nothing else does;
- this service changes nothing itself: each use case validates its input, prepares what is slow
  (chunks, embeddings), and makes one write through ``_write``.

The one write path (``_write``)::

    prepare (no lock: validate, chunk, embed)
      -> store.write(rule): under the store's ordering, the rule (``_rules``) checks the write
         against the state every ordered write leaves and builds its changes; the store gives
         them their positions (= event ids) and appends them
      -> commit.wait(): durable (concurrent writers share one fsync)
      -> projector.catch_up(last position): applied in memory in position order, events
         published
      -> return (the write can be read back, and its events have been delivered to the hub)

A write that raises has changed nothing: validation and the rule's checks happen before
anything is appended, and a store failure leaves the projection and the event stream untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import EllipsisType
from typing import Any

from arrwdb.domain import _queries as queries
from arrwdb.domain import _rules as rules
from arrwdb.domain import validation as v
from arrwdb.domain._documents import (
    DocumentBuilder,
    as_new_chunk,
    as_new_document,
    require_ids,
    with_id,
)
from arrwdb.domain._search import Searcher
from arrwdb.domain._watch_keeper import DEFAULT_WATCH_TTL
from arrwdb.domain._watching import Watching
from arrwdb.domain.changes import (
    Batch,
    DocumentDeleted,
    DocumentSaved,
    LibraryCreated,
    LibraryUpdated,
    WriteKey,
)
from arrwdb.domain.chunking import Chunker
from arrwdb.domain.errors import (
    DocumentNotFoundError,
    HistoryLostError,
    InvalidArgumentError,
    LaggingError,
    LimitExceededError,
    NotFoundError,
    StorageError,
)
from arrwdb.domain.events import StartPoint, check_event_types
from arrwdb.domain.limits import Limits
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
)
from arrwdb.domain.ports import (
    Backup,
    Build,
    Embedder,
    EventHub,
    IndexFactory,
    IndexStore,
    Measured,
    Measurement,
    SerialCompute,
    SharedLog,
    Store,
    Subscription,
    WatchStore,
)
from arrwdb.domain.projection import Follower, Projection, Projector
from arrwdb.domain.watches import DEFAULT_WATCH_HISTORY

logger = logging.getLogger("arrwdb.service")


class VectorDBService:
    """The use cases. Every method raises the ``ArrwdbError`` subclasses its docstring names."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        index_factory: IndexFactory,
        embedders: Mapping[str, Embedder],
        chunker: Chunker | None = None,
        *,
        default_embedder: str = "hashing",
        index_store: IndexStore | None = None,
        limits: Limits | None = None,
        watch_history: int = DEFAULT_WATCH_HISTORY,
        watch_store: WatchStore | None = None,
        watch_ttl: float = DEFAULT_WATCH_TTL,
        serial: SerialCompute | None = None,
    ) -> None:
        if default_embedder not in embedders:
            raise InvalidArgumentError(
                f"default embedder {default_embedder!r} is not configured; configured: "
                f"{', '.join(sorted(embedders))}",
                field="default_embedder",
            )
        self._store = store
        self._hub = hub
        self._index_store = index_store
        self._embedders = dict(embedders)
        self._default_embedder = default_embedder
        self._limits = limits or Limits()
        self._builder = DocumentBuilder(chunker or Chunker(), self._embedders, self._limits)
        self._searcher = Searcher(self._builder, store)
        self._projection = Projection(index_factory)
        self._projector = Projector(self._projection, store, hub, index_store, serial)
        #: the live queries (``lib.watch``, the watch routes and WebSocket actions); the REST
        #: ones kept in ``watch_store``, expiring after ``watch_ttl`` seconds without a listener
        self.watching = Watching(
            self._projection,
            self._projector,
            self._builder,
            self._limits,
            watch_history,
            watch_store,
            watch_ttl,
        )
        self._loading = threading.Lock()
        self._saving = threading.Lock()  # one save_indexes at a time
        self._stop_autosave = threading.Event()
        self._autosaver: threading.Thread | None = None
        self._follower: Follower | None = None
        self._written = threading.local()  # the position of each thread's last write
        self._keys = threading.local()  # the idempotency key of each thread's writes
        self._loaded = False

    # -- lifecycle ----------------------------------------------------------------------------

    def load(self) -> None:
        """Build the projection from the store (started, as the hub is): every library's index
        is the saved one brought up to date, or built from the store's documents; then the
        stored watches are started again."""
        with self._loading:
            if self._loaded:
                return
            self._projection.load(self._store, self._store.head, self._index_store)
            self.watching.restore()
            self._loaded = True

    @property
    def projection(self) -> Projection:
        """What the service reads from memory (for diagnostics and benchmarks: read only)."""
        return self._projection

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
            states = self._projection.states
            for state in list(states.values()):
                with state.lock.read():
                    if not state.unsaved or state.index is None:
                        continue
                    if state.library.id not in states:  # deleted meanwhile
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

    def follow(self) -> None:
        """When the store's log is shared with other processes (``ports.SharedLog``), apply
        their changes as they commit, in a background thread, until ``close``."""
        if isinstance(self._store, SharedLog) and self._follower is None:
            self._follower = Follower(self._store, self._projector)
            self._follower.start()

    def close(self) -> None:
        """Stop following and the periodic saves, and save the changed indexes (a failure is
        logged: they are rebuilt on the next open). The store and the hub are closed by their
        owner."""
        if self._follower is not None:
            self._follower.stop()
        self.watching.close()
        self._stop_autosave.set()
        if self._autosaver is not None:
            self._autosaver.join()
        try:
            self.save_indexes()
        except Exception:
            logger.exception("could not save the indexes: they will be rebuilt on next open")

    def check_ready(self) -> None:
        """Raise ``StorageError`` when the store cannot serve, or when this process can no
        longer follow a shared log."""
        self._store.check()
        follower = self._follower
        if follower is not None and isinstance(follower.error, HistoryLostError):
            raise StorageError(f"this server cannot catch up with the change log: {follower.error}")

    def backup(self, destination: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of the store into the empty or new directory
        ``destination``, while reads and writes go on; it opens as a store on its own (its
        HNSW indexes are rebuilt on its first open). Returns the directory. Raises
        ``InvalidArgumentError`` for an in-memory store, ``StorageError``."""
        repo = self._store
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
        embedder: str | EllipsisType | None = ...,
    ) -> Library:
        """``embedder``: a configured embedder's name; left out, the default one; ``None``, no
        embedder (the library takes vectors only). Raises ``AlreadyExistsError`` for a taken
        name, ``ValidationError`` for bad fields."""
        library = self._new_library(
            name, description, metadata, dimension, metric, index, index_params, embedder
        )
        created = self._write(rules.create_library(library, self._limits.libraries)).changes[0]
        assert isinstance(created, LibraryCreated)
        return created.library  # (a repeated keyed write: the first one's)

    def get_or_create_library(
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
    ) -> tuple[Library, bool]:
        """The library named ``name`` if there is one with the same ``dimension`` (when given),
        ``metric`` and ``index`` (nothing is written), else a new one as ``create_library``
        makes it; and whether it was created. Raises ``AlreadyExistsError`` when the library of
        that name differs, ``ValidationError`` for bad fields."""
        library = self._new_library(
            name, description, metadata, dimension, metric, index, index_params, embedder
        )
        found: list[Library] = []
        rule = rules.get_or_create_library(
            library, self._limits.libraries, compare_dimension=dimension is not None, found=found
        )
        batch = self._write(rule)
        if batch.changes:
            created = batch.changes[0]
            assert isinstance(created, LibraryCreated)
            return created.library, True
        existing = found[0]
        try:  # with its counts, as applied here
            return self._projection.state(existing.id).library, False
        except NotFoundError:  # not applied here yet (written through another server)
            return existing, False

    def _new_library(
        self,
        name: str,
        description: str,
        metadata: Mapping[str, Any] | None,
        dimension: int | None,
        metric: str,
        index: str,
        index_params: Mapping[str, int] | None,
        embedder: str | EllipsisType | None,
    ) -> Library:
        """A library to create, its fields checked."""
        embedder_name = self._default_embedder if embedder is ... else embedder
        if embedder_name is not None and embedder_name not in self._embedders:
            raise InvalidArgumentError(
                f"unknown embedder {embedder_name!r}; configured: "
                f"{', '.join(sorted(self._embedders))}",
                field="embedder",
            )
        # (an embedder made on first use is made here: one that cannot run is refused now)
        fixed = None if embedder_name is None else self._embedders[embedder_name].dimension
        dim = v.check_dimension(dimension)
        if dim is not None and fixed is not None and dim != fixed:
            raise InvalidArgumentError(
                f"dimension {dim} differs from the {fixed} dimensions of embedder "
                f"{embedder_name!r}: leave dimension out, or give {fixed}",
                field="dimension",
            )
        limits = self._limits
        if dim is not None and dim > limits.dimension:
            raise LimitExceededError(
                f"dimension {dim} is more than the limit of {limits.dimension} (max_dimension)",
                limit="max_dimension",
                field="dimension",
            )
        return Library(
            id=new_id(),
            name=v.check_name(name),
            description=v.check_text(description or "", "description"),
            metadata=v.check_metadata(metadata, max_bytes=limits.metadata_bytes),
            dimension=dim if dim is not None else fixed,
            metric=v.check_metric(metric),
            index=v.check_index_kind(index),  # type: ignore[arg-type]
            index_params=v.check_index_params(index_params),
            embedder=embedder_name,
        )

    def get_library(self, library_id: str) -> Library:
        return self._projection.state(library_id).library

    def find_library(self, name: str) -> Library:
        """The library named ``name``; raises ``LibraryNotFoundError``."""
        return self._projection.named(name).library

    def list_libraries(self) -> list[Library]:
        return self._projection.libraries()

    def update_library(
        self,
        library_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Library:
        """Change the name, description or metadata (``None``: unchanged). Raises
        ``NotFoundError``, ``AlreadyExistsError`` (a taken name), ``ValidationError``."""
        fields: dict[str, Any] = {}
        if name is not None:
            fields["name"] = v.check_name(name)
        if description is not None:
            fields["description"] = v.check_text(description, "description")
        if metadata is not None:
            fields["metadata"] = v.check_metadata(metadata, max_bytes=self._limits.metadata_bytes)
        self._known(library_id)
        changes = self._write(rules.update_library(library_id, fields)).changes
        if not changes:  # it changed nothing
            return self.get_library(library_id)
        updated = changes[0]
        assert isinstance(updated, LibraryUpdated)
        return updated.library  # the record at the update's position

    def delete_library(self, library_id: str) -> None:
        """Delete a library with all of its documents; raises ``LibraryNotFoundError``."""
        self._known(library_id)
        self._write(rules.delete_library(library_id))
        self.watching.library_deleted(library_id)

    # -- documents ----------------------------------------------------------------------------

    def add_documents(
        self, library_id: str, documents: Iterable[NewDocument | Mapping[str, Any]]
    ) -> list[Document]:
        """Add documents in one commit (all or none): the fast path for bulk loads.

        Raises ``LibraryNotFoundError``, ``AlreadyExistsError`` (a given id is taken) and
        ``ValidationError`` (naming the document and chunk) before anything is stored.
        """
        library = self.get_library(library_id)
        batch = self._builder.prepare(library, [as_new_document(d) for d in documents])
        saved = self._write(rules.add_documents(library_id, batch), batch.vectors).changes
        return [replace(c.document, chunks=()) for c in saved if isinstance(c, DocumentSaved)]

    def add_document(self, library_id: str, document: NewDocument | Mapping[str, Any]) -> Document:
        return self.add_documents(library_id, [document])[0]

    def upsert_documents(
        self,
        library_id: str,
        documents: Iterable[NewDocument | Mapping[str, Any]],
        *,
        add_without_id: bool = False,
    ) -> list[tuple[Document, bool]]:
        """Add each document, or replace the one of its ``id`` (content, title and metadata),
        in one commit (all or none); which of the two is decided under the write's ordering
        (``document.added`` or ``document.updated``). Every document needs its ``id`` (with
        ``add_without_id``, one without is added). Returns each document (without chunks)
        and whether it was created. Raises ``LibraryNotFoundError``, ``ValidationError``."""
        library = self.get_library(library_id)
        docs = [as_new_document(d) for d in documents]
        if not add_without_id:
            require_ids(docs)
        batch = self._builder.prepare(library, docs)
        saved = self._write(rules.upsert_documents(library_id, batch), batch.vectors).changes
        return [
            (replace(c.document, chunks=()), not c.replaced)
            for c in saved
            if isinstance(c, DocumentSaved)
        ]

    def upsert_document(
        self, library_id: str, document_id: str, document: NewDocument | Mapping[str, Any]
    ) -> tuple[Document, bool]:
        """``upsert_documents`` of one document, whose id is ``document_id`` (an ``id`` it
        carries must be the same: ``InvalidArgumentError`` naming ``id`` otherwise)."""
        doc = with_id(as_new_document(document), document_id)
        return self.upsert_documents(library_id, [doc])[0]

    def get_document(
        self, library_id: str, document_id: str, *, include_embedding: bool = False
    ) -> Document:
        """A document with its chunks (their embeddings with ``include_embedding``); raises
        ``NotFoundError``."""
        self._projection.state(library_id)
        doc = self._store.get_document(library_id, document_id)
        if doc is None:
            raise DocumentNotFoundError(document_id, library_id)
        if not include_embedding:
            doc = replace(doc, chunks=tuple(replace(c, embedding=None) for c in doc.chunks))
        return doc

    def get_documents(self, library_id: str, ids: Sequence[str]) -> Page:
        """The documents of ``ids`` (at most 1,000) in the order asked, each once, without
        chunks; unknown ids are left out. Raises ``LibraryNotFoundError``,
        ``ValidationError``."""
        return self.query_documents(library_id, ids=ids)

    def query_documents(
        self,
        library_id: str,
        *,
        ids: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """The documents among ``ids`` and matching ``filter`` (on document metadata), a page
        at a time (see ``_queries.query_documents``). Raises ``LibraryNotFoundError``,
        ``ValidationError``."""
        self._projection.state(library_id)
        return queries.query_documents(
            self._store, library_id, ids=ids, filter=filter, limit=limit, cursor=cursor
        )

    def count_documents(self, library_id: str, filter: Mapping[str, Any] | None = None) -> int:
        """How many documents the library holds (whose metadata matches ``filter``)."""
        library = self._projection.state(library_id).library
        return queries.count_documents(self._store, library, filter)

    def list_documents(
        self, library_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        limit = v.check_page_limit(limit)
        self._projection.state(library_id)
        return self._store.list_documents(library_id, limit, cursor)

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
        re-chunked and re-embedded; the title stays unless given). ``metadata`` is a JSON
        Merge Patch of the document's: a key set to ``None`` is removed, the others are set,
        the rest stays (``max_metadata_bytes`` applies to the result). What is not given is
        taken from the version the write replaces, read under the write's ordering, so
        concurrent updates of one document never undo each other. Raises ``NotFoundError``,
        ``ValidationError``."""
        library = self.get_library(library_id)
        new_title = None if title is None else v.check_text(title, "title")
        patch = None if metadata is None else v.check_metadata(metadata)
        max_bytes = self._limits.metadata_bytes
        if text is None and chunks is None:
            rule = rules.update_fields(library_id, document_id, new_title, patch, max_bytes)
            vectors = None
        else:
            if self._store.get_document(library_id, document_id) is None:  # spare the embedding
                raise DocumentNotFoundError(document_id, library_id)
            new = NewDocument(
                id=document_id,
                title=new_title or "",
                text=text,
                chunks=None if chunks is None else [as_new_chunk(c) for c in chunks],
            )
            prepared = self._builder.prepare(library, [new])
            rule = rules.replace_content(
                library_id, document_id, prepared, new_title, patch, max_bytes
            )
            vectors = prepared.vectors
        changes = self._write(rule, vectors).changes
        if not changes:  # it changed nothing
            return replace(self.get_document(library_id, document_id), chunks=())
        saved = changes[0]
        assert isinstance(saved, DocumentSaved)
        return replace(saved.document, chunks=())

    def delete_document(self, library_id: str, document_id: str) -> None:
        """Raises ``NotFoundError``."""
        self._known(library_id)
        self._write(rules.delete_document(library_id, document_id))

    def delete_documents(
        self,
        library_id: str,
        *,
        ids: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> int:
        """Delete the documents of ``ids`` (unknown ones are skipped) or those whose document
        metadata matches ``filter`` (exactly one of the two), in one commit with one
        ``document.deleted`` event each; returns how many. Which documents match is decided
        under the write's ordering. Raises ``LibraryNotFoundError``, ``ValidationError``."""
        chosen, where = queries.deletion(ids, filter)
        self._known(library_id)
        changes = self._write(rules.delete_documents(library_id, chosen, where)).changes
        return sum(1 for c in changes if isinstance(c, DocumentDeleted))

    def _known(self, library_id: str) -> None:
        """Raise ``LibraryNotFoundError`` early (the write's rule checks it again, under its
        ordering), unless the write carries an idempotency key: a retry answers as the first
        write did, even once the library is gone."""
        if getattr(self._keys, "value", None) is None:
            self._projection.state(library_id)

    @contextlib.contextmanager
    def idempotent(self, key: WriteKey | None) -> Iterator[None]:
        """Within the block, the calling thread's write carries the idempotency ``key``: made
        again with the same key (and fingerprint), it writes nothing and answers as the first
        one did (its result, its event id); with another fingerprint it raises
        ``IdempotencyMismatchError``. Keys are remembered for ``changes.KEY_LIFETIME``."""
        previous = getattr(self._keys, "value", None)
        self._keys.value = key
        try:
            yield
        finally:
            self._keys.value = previous

    def _write(self, rule: Build, vectors: Matrix | None = None) -> Batch:
        """The one write path (see the module docstring): order, commit, project. ``vectors``:
        the embeddings of every chunk the write saves, in order, as prepared."""
        key: WriteKey | None = getattr(self._keys, "value", None)
        batch = self._store.write(rule, key).wait()
        if batch.changes:
            # a repeated keyed write gets the first one's receipt (no key of its own): it is
            # not this write's changes, so not this write's vectors either
            repeated = key is not None and batch.key is None
            hint = None if vectors is None or repeated else (batch.first, vectors)
            self._projector.catch_up(batch.last, vectors=hint)
            self._written.position = batch.last
        else:
            self._written.position = self._projection.applied
        return batch

    def written_position(self) -> int | None:
        """The id of the last event of the calling thread's last write (for a write that
        changed nothing, the last event applied then), once: what a write's response reports,
        so that a read elsewhere can ask for its effect (``await_applied``). ``None`` when
        the thread wrote nothing since it last asked."""
        position: int | None = getattr(self._written, "position", None)
        self._written.position = None
        return position

    # -- search -------------------------------------------------------------------------------

    def search(self, library_id: str, query: SearchQuery) -> SearchResult:
        """The ``k`` best chunks (matching ``filter``, on each chunk's metadata merged over its
        document's), best first; with ``group_by="document"``, the best chunk of each of the
        ``k`` best documents. Raises ``NotFoundError``, ``ValidationError`` (k, ef, filter,
        vector, include, group_by)."""
        return self._searcher.search_many(library_id, self._projection.state(library_id), [query])[
            0
        ]

    def search_many(self, library_id: str, queries: Sequence[SearchQuery]) -> list[SearchResult]:
        """Several searches of one library, each as ``search`` gives it (see
        ``Searcher.search_many``)."""
        return self._searcher.search_many(library_id, self._projection.state(library_id), queries)

    def search_vectors(
        self,
        library_id: str,
        vectors: Matrix,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include_embedding: bool = False,
        include: Sequence[str] | None = None,
        group_by: str | None = None,
    ) -> list[SearchResult]:
        """``search_many`` of one query per row of ``vectors`` (a 2-D array), all with the
        same ``k``, ``filter``, ``ef``, ``include`` and ``group_by`` (see
        ``Searcher.search_vectors``)."""
        return self._searcher.search_vectors(
            library_id,
            self._projection.state(library_id),
            vectors,
            k=k,
            filter=filter,
            ef=ef,
            include_embedding=include_embedding,
            include=include,
            group_by=group_by,
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
        ``"earliest"``, or ``None`` for live only). ``buffer``: cut the subscription
        (``SlowConsumerError``) when more than that many of its own events wait unread
        (``None``: never; it reads on from the history and the log). Raises
        ``NotFoundError``, ``ValidationError``."""
        if library_id is not None:
            self._projection.state(library_id)
        start = StartPoint.parse(since)
        wanted = check_event_types(list(types) if types and not isinstance(types, str) else types)
        if buffer is not None and (
            isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1
        ):
            raise InvalidArgumentError("buffer must be a positive integer", field="buffer")
        return self._hub.subscribe(library_id, start, wanted, buffer)

    async def wait_beyond(self, after: int, timeout: float | None = None) -> int:
        """On an event loop: the last event id once it passes ``after`` (or after ``timeout``
        seconds). Raises ``SubscriptionClosedError`` once the stream is closed."""
        return await self._hub.wait_beyond(after, timeout)

    async def await_applied(self, position: int, timeout: float) -> None:
        """On an event loop: return once the change at ``position`` is applied here (a read
        that must see a write made through another server). Raises ``LaggingError`` after
        ``timeout`` seconds."""
        if self._projection.applied >= position:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LaggingError(self._projection.applied, position, timeout)
            if await self._hub.wait_beyond(position - 1, remaining) >= position:
                return  # published: its changes are applied

    @property
    def last_event_id(self) -> int:
        """The position of the last change applied here (the id of the last event)."""
        return self._projection.applied

    def measurements(self) -> list[Measurement]:
        """What ``/metrics`` shows of the core: the last event applied, the vectors in each
        library's index, and what the store measures of itself (``Measured``)."""
        out = [
            Measurement(
                "arrwdb_events_applied",
                "Position of the last change applied here (the id of the last event).",
                "counter",
                self._projection.applied,
            )
        ]
        for library in self._projection.libraries():
            index = self._projection.state(library.id).index
            out.append(
                Measurement(
                    "arrwdb_index_vectors",
                    "Vectors in a library's index.",
                    "gauge",
                    0 if index is None else len(index),
                    labels=(("library_id", library.id),),
                )
            )
        if isinstance(self._store, Measured):
            out.extend(self._store.measurements())
        return out
