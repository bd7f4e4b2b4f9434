"""The one dispatch table shared by every transport.

An action is declared once: its request Struct, the service call, and the builder of its
response Struct. REST handlers and WebSocket actions (and the NDJSON streams) all run actions
through :class:`Dispatcher`, so the two can never drift apart. Service calls run in a worker
thread (``anyio.to_thread``): embedding, index search and bulk adds are CPU work and the commit
lock may be held by another writer, so none of it may stall the event loop.

Writes pass the :class:`WriteGate`: at shutdown it refuses new writes and lets the server wait
for the ones in flight.

Reads share their worker-thread hops (:class:`_ReadHops`): a read that arrives while
``read_lanes`` hops are already running waits for the next hop and goes with every read
queued meanwhile. Each read still runs on its own (its result or its exception is its own),
but pipelined WebSocket requests and concurrent REST calls no longer pay a thread hop each,
nor have dozens of threads fight over the GIL with the event loop.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from arrwdb.domain.models import (
    Chunk,
    Document,
    Library,
    NewChunk,
    NewDocument,
    SearchQuery,
    SearchResult,
    format_timestamp,
)
from arrwdb.domain.service import VectorDBService
from arrwdb.transports.errors import ShuttingDown
from arrwdb.transports.messages import (
    ChunkIn,
    ChunkOut,
    DocumentDeleted,
    DocumentGet,
    DocumentId,
    DocumentIn,
    DocumentList,
    DocumentOut,
    DocumentPage,
    DocumentsIn,
    DocumentUpdate,
    IndexParams,
    LibraryCreate,
    LibraryList,
    LibraryOut,
    LibraryUpdate,
    SearchHitOut,
    SearchIn,
    SearchOut,
)

# -- domain -> wire -------------------------------------------------------------------------


def library_out(lib: Library) -> LibraryOut:
    p = lib.index_params
    return LibraryOut(
        id=lib.id,
        name=lib.name,
        description=lib.description,
        metadata=dict(lib.metadata),
        dimension=lib.dimension,
        metric=lib.metric,
        index=lib.index,
        index_params=IndexParams(m=p.m, ef_construction=p.ef_construction, ef_search=p.ef_search),
        embedder=lib.embedder,
        document_count=lib.document_count,
        chunk_count=lib.chunk_count,
        created_at=format_timestamp(lib.created_at),
        updated_at=format_timestamp(lib.updated_at),
    )


def _chunk_out(chunk: Chunk) -> ChunkOut:
    return ChunkOut(
        id=chunk.id,
        document_id=chunk.document_id,
        position=chunk.position,
        text=chunk.text,
        metadata=dict(chunk.metadata),
        embedding=None if chunk.embedding is None else chunk.embedding.tolist(),
    )


def document_out(doc: Document, *, with_chunks: bool = False) -> DocumentOut:
    return DocumentOut(
        id=doc.id,
        library_id=doc.library_id,
        title=doc.title,
        metadata=dict(doc.metadata),
        num_chunks=doc.num_chunks,
        created_at=format_timestamp(doc.created_at),
        updated_at=format_timestamp(doc.updated_at),
        chunks=[_chunk_out(c) for c in doc.chunks] if with_chunks else None,
    )


def search_out(result: SearchResult) -> SearchOut:
    return SearchOut(
        results=[
            SearchHitOut(
                chunk_id=h.chunk_id,
                document_id=h.document_id,
                document_title=h.document_title,
                text=h.text,
                score=float(h.score),
                metadata=dict(h.metadata),
                position=h.position,
                embedding=None if h.embedding is None else h.embedding.tolist(),
            )
            for h in result.results
        ],
        took_ms=result.took_ms,
    )


# -- wire -> domain -------------------------------------------------------------------------


def _new_chunks(chunks: list[ChunkIn] | None) -> list[NewChunk] | None:
    if chunks is None:
        return None
    return [NewChunk(text=c.text, embedding=c.embedding, metadata=c.metadata) for c in chunks]


def new_document(doc: DocumentIn) -> NewDocument:
    return NewDocument(
        title=doc.title,
        text=doc.text,
        chunks=_new_chunks(doc.chunks),
        metadata=doc.metadata,
        id=doc.id,
    )


def search_query(q: SearchIn) -> SearchQuery:
    return SearchQuery(
        text=q.query_text,
        vector=q.query_vector,
        k=q.k,
        filter=q.filter,
        ef=q.ef,
        include_embedding=q.include_embedding,
    )


# -- the actions ----------------------------------------------------------------------------


def _create_library(s: VectorDBService, _: str | None, r: LibraryCreate) -> Library:
    params = None
    if r.index_params is not None:
        p = r.index_params
        params = {"m": p.m, "ef_construction": p.ef_construction, "ef_search": p.ef_search}
    return s.create_library(
        r.name,
        description=r.description,
        metadata=r.metadata,
        dimension=r.dimension,
        metric=r.metric,
        index=r.index,
        index_params=params,
        embedder=r.embedder,
    )


def _update_library(s: VectorDBService, lib: str | None, r: LibraryUpdate) -> Library:
    return s.update_library(_lib(lib), name=r.name, description=r.description, metadata=r.metadata)


def _add(s: VectorDBService, lib: str | None, r: DocumentsIn) -> list[Document] | Document:
    if isinstance(r, list):
        return s.add_documents(_lib(lib), [new_document(d) for d in r])
    return s.add_document(_lib(lib), new_document(r))


def _add_out(result: list[Document] | Document) -> list[DocumentOut] | DocumentOut:
    if isinstance(result, list):
        return [document_out(d) for d in result]
    return document_out(result)


def _update_document(s: VectorDBService, lib: str | None, r: DocumentUpdate) -> Document:
    p = r.patch
    return s.update_document(
        _lib(lib),
        r.document_id,
        title=p.title,
        metadata=p.metadata,
        text=p.text,
        chunks=_new_chunks(p.chunks),
    )


def _delete_document(s: VectorDBService, lib: str | None, r: DocumentId) -> str:
    s.delete_document(_lib(lib), r.document_id)
    return r.document_id


def _lib(library_id: str | None) -> str:
    assert library_id is not None, "this action needs a library id"
    return library_id


@dataclass(frozen=True, slots=True)
class Action:
    """One operation: ``request`` Struct (``None``: no body), ``call`` on the service with the
    library id (``None`` for library-less actions), ``build`` of the response Struct."""

    name: str
    request: Any
    call: Callable[[VectorDBService, str | None, Any], Any]
    build: Callable[[Any], Any]
    write: bool = False

    def perform(self, service: VectorDBService, library_id: str | None, request: Any) -> Any:
        return self.build(self.call(service, library_id, request))


def _same(x: Any) -> Any:
    return x


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("create_library", LibraryCreate, _create_library, library_out, write=True),
        Action(
            "list_libraries",
            None,
            lambda s, _, __: s.list_libraries(),
            lambda libs: LibraryList(libraries=[library_out(x) for x in libs]),
        ),
        Action("get_library", None, lambda s, lib, _: s.get_library(_lib(lib)), library_out),
        Action("update_library", LibraryUpdate, _update_library, library_out, write=True),
        Action(
            "delete_library",
            None,
            lambda s, lib, _: s.delete_library(_lib(lib)),
            _same,
            write=True,
        ),
        Action("add", DocumentsIn, _add, _add_out, write=True),
        Action(
            "list_documents",
            DocumentList,
            lambda s, lib, r: s.list_documents(_lib(lib), limit=r.limit, cursor=r.cursor),
            lambda page: DocumentPage(
                documents=[document_out(d) for d in page.items], next_cursor=page.next_cursor
            ),
        ),
        Action(
            "get",
            DocumentGet,
            lambda s, lib, r: s.get_document(
                _lib(lib), r.document_id, include_embedding=r.include_embedding
            ),
            lambda doc: document_out(doc, with_chunks=True),
        ),
        Action("update_document", DocumentUpdate, _update_document, document_out, write=True),
        Action(
            "delete",
            DocumentId,
            _delete_document,
            lambda doc_id: DocumentDeleted(document_id=doc_id),
            write=True,
        ),
        Action(
            "search",
            SearchIn,
            lambda s, lib, r: s.search(_lib(lib), search_query(r)),
            search_out,
        ),
        Action("ready", None, lambda s, _, __: s.check_ready(), _same),
    )
}


class WriteGate:
    """Counts writes in flight. ``close()`` (at shutdown) refuses new ones; ``wait_idle()``
    returns once the ones in flight have finished. Used from the event loop only."""

    def __init__(self) -> None:
        self._count = 0
        self._closed = False
        self._idle: anyio.Event | None = None

    @property
    def in_flight(self) -> int:
        return self._count

    def enter(self) -> None:
        if self._closed:
            raise ShuttingDown("the server is shutting down; retry on another instance")
        self._count += 1

    def exit(self) -> None:
        self._count -= 1
        if self._count == 0 and self._idle is not None:
            self._idle.set()

    def close(self) -> None:
        self._closed = True

    async def wait_idle(self) -> None:
        while self._count:
            self._idle = anyio.Event()
            await self._idle.wait()


_NOT_RUN = RuntimeError("the read was not run")  # a marker, never raised


class _Read:
    """One read waiting for (or riding in) a worker-thread hop."""

    __slots__ = (
        "action",
        "done",
        "error",
        "lead",
        "library_id",
        "request",
        "result",
        "service",
        "then",
    )

    def __init__(
        self,
        action: Action,
        service: VectorDBService,
        library_id: str | None,
        request: Any,
        then: Callable[[Any], Any] | None,
    ) -> None:
        self.action = action
        self.service = service
        self.library_id = library_id
        self.request = request
        self.then = then
        self.done = anyio.Event()
        self.lead = False  # woken to run the next hop (rather than with a result)
        self.result: Any = None
        self.error: BaseException | None = _NOT_RUN

    def run(self) -> None:  # in the worker thread
        try:
            self.finish(self.action.perform(self.service, self.library_id, self.request))
        except Exception as exc:  # raised to its own caller only
            self.error = exc

    def finish(self, result: Any) -> None:  # in the worker thread
        self.result = result if self.then is None else self.then(result)
        self.error = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def _run_reads(batch: list[_Read]) -> None:
    """Run a hop's reads (all of one library). Its searches of an HNSW library go through
    ``search_many`` together (one batched index call; ``took_ms`` is then each one's share of
    it): the same hits; and if any of them is refused, each one runs on its own, to get its
    own error."""
    searches: list[_Read] = []
    for read in batch:
        if read.action.name == "search":
            searches.append(read)
        else:
            read.run()
    if len(searches) > 1 and _batchable(searches[0]):
        first = searches[0]
        try:
            assert isinstance(first.library_id, str)
            results = first.service.search_many(
                first.library_id, [search_query(read.request) for read in searches]
            )
        except Exception:  # someone's error: each one gets its own, as on its own
            pass
        else:
            for read, result in zip(searches, results, strict=True):
                try:
                    read.finish(search_out(result))
                except Exception as exc:
                    read.error = exc
            return
    for read in searches:
        read.run()


def _batchable(read: _Read) -> bool:
    """Whether searches of this library may be batched: HNSW only, where a batched search
    gives exactly the scores of single ones (the exact index may differ in the last bit)."""
    try:
        return isinstance(read.library_id, str) and (
            read.service.get_library(read.library_id).index == "hnsw"
        )
    except Exception:  # e.g. not found: each search reports it
        return False


class _ReadHops:
    """Read actions in worker threads, at most ``lanes`` hops at a time; reads that arrive
    while every lane is busy queue up and go together (up to ``max_batch``) in the next hop.

    No task of its own: the caller that finds a free lane runs the hop (its own read first,
    then the queued ones) and, when it ends, hands the lane to the oldest queued read, whose
    caller runs the next hop. Used from the event loop only."""

    def __init__(self, lanes: int, max_batch: int) -> None:
        self._lanes = max(1, lanes)
        self._max_batch = max(1, max_batch)
        self._busy = 0
        self._queue: deque[_Read] = deque()

    async def run(self, read: _Read) -> Any:
        if self._busy < self._lanes:
            self._busy += 1
            return await self._hop(read)
        self._queue.append(read)
        try:
            await read.done.wait()
        except BaseException:  # cancelled: leave the queue, or pass the lane on
            if read.lead:
                self._release()
            elif not read.done.is_set():
                with contextlib.suppress(ValueError):
                    self._queue.remove(read)
            raise
        if read.lead:
            return await self._hop(read)
        return read.outcome()

    async def _hop(self, first: _Read) -> Any:
        batch = [first]
        while self._queue and len(batch) < self._max_batch:
            batch.append(self._queue.popleft())
        try:
            # cancellable until the thread starts (then shielded until it is done)
            await anyio.to_thread.run_sync(_run_reads, batch)
        finally:
            # the reads of others that did not run (this caller was cancelled before the
            # thread started) go back to the head of the queue, for the next hop
            unrun = [read for read in batch[1:] if read.error is _NOT_RUN]
            self._queue.extendleft(reversed(unrun))
            for read in batch[1:]:
                if read.error is not _NOT_RUN:
                    read.done.set()
            self._release()
        return first.outcome()

    @property
    def idle(self) -> bool:
        return not self._busy and not self._queue

    def _release(self) -> None:
        if self._queue:
            nxt = self._queue.popleft()
            nxt.lead = True
            nxt.done.set()
        else:
            self._busy -= 1


class Dispatcher:
    """Runs actions of :data:`ACTIONS` against the service, off the event loop."""

    def __init__(
        self,
        service: Callable[[], VectorDBService],
        gate: WriteGate,
        *,
        read_lanes: int = 1,
        read_batch: int = 32,
    ) -> None:
        self._service = service
        self.gate = gate
        self._read_lanes = read_lanes
        self._read_batch = read_batch
        #: library id (None: library-less reads) -> its hops, while it has reads in flight
        self._reads: dict[str | None, _ReadHops] = {}

    async def execute(
        self,
        name: str,
        library_id: str | None,
        request: Any = None,
        *,
        then: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Run one action; raises what the service raises (mapped by ``errors.classify``).
        ``then`` (e.g. encoding the response) is applied to the response Struct in the worker
        thread, off the event loop, and its result is returned instead."""
        action = ACTIONS[name]
        service = self._service()
        if not action.write:
            return await self._read(_Read(action, service, library_id, request, then))
        self.gate.enter()
        try:
            if then is None:
                return await anyio.to_thread.run_sync(action.perform, service, library_id, request)
            return await anyio.to_thread.run_sync(
                lambda: then(action.perform(service, library_id, request))
            )
        finally:
            self.gate.exit()

    async def _read(self, read: _Read) -> Any:
        # each library has its own hops: a read waiting for a library's lock (a big commit)
        # never holds up the reads of another library, nor the readiness check
        key = read.library_id
        hops = self._reads.get(key)
        if hops is None:
            hops = self._reads[key] = _ReadHops(self._read_lanes, self._read_batch)
        try:
            return await hops.run(read)
        finally:
            if hops.idle and self._reads.get(key) is hops:
                del self._reads[key]

    async def execute_each(
        self, name: str, library_id: str | None, requests: Sequence[Any]
    ) -> list[Any]:
        """Run one action per request in a single worker-thread hop; each item of the result
        is the response Struct or the exception that request raised."""
        action = ACTIONS[name]
        service = self._service()

        def run_all() -> list[Any]:
            out: list[Any] = []
            for request in requests:
                try:
                    out.append(action.perform(service, library_id, request))
                except Exception as exc:  # reported per item by the caller
                    out.append(exc)
            return out

        if not action.write:
            return await anyio.to_thread.run_sync(run_all)
        self.gate.enter()
        try:
            return await anyio.to_thread.run_sync(run_all)
        finally:
            self.gate.exit()
