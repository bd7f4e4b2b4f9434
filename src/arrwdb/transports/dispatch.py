"""The one dispatch table shared by every transport.

An action is declared once: its request Struct, the service call, and the builder of its
response Struct. REST handlers and WebSocket actions (and the NDJSON streams) all run actions
through :class:`Dispatcher`, so the two can never drift apart. Service calls run in a worker
thread (``anyio.to_thread``): embedding, index search and bulk adds are CPU work and the commit
lock may be held by another writer, so none of it may stall the event loop.

Who may change what: an action only calls the service. A write action (``write=True``) makes
one service write, which the store orders and checks and the projector applies (see
``arrwdb.domain.service``); no action, and no transport, changes any state itself or reaches
past the service to an adapter. Writes pass the :class:`WriteGate`: at shutdown it refuses new
writes and lets the server wait for the ones in flight.

Reads share their worker-thread hops (:class:`ReadHops`): a read that arrives while
``read_lanes`` hops are already running waits for the next hop and goes with every read
queued meanwhile. Each read still runs on its own (its result or its exception is its own),
but pipelined WebSocket requests and concurrent REST calls no longer pay a thread hop each,
nor have dozens of threads fight over the GIL with the event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from msgspec import UNSET

from arrwdb.domain.access import Caller, Need
from arrwdb.domain.changes import WriteKey
from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.events import parse_event_id
from arrwdb.domain.models import Document, Library, Page
from arrwdb.domain.service import VectorDBService
from arrwdb.transports import _watches
from arrwdb.transports._read_hops import Read, ReadHops
from arrwdb.transports.convert import (
    Searched,
    document_out,
    document_page,
    library_out,
    new_chunks,
    new_document,
    search_query,
)
from arrwdb.transports.errors import ShuttingDown
from arrwdb.transports.messages import (
    CountOut,
    DeletedOut,
    DocumentCount,
    DocumentDeleted,
    DocumentGet,
    DocumentId,
    DocumentList,
    DocumentOut,
    DocumentPut,
    DocumentQuery,
    DocumentsDelete,
    DocumentsIn,
    DocumentUpdate,
    LibraryCreate,
    LibraryList,
    LibraryUpdate,
    SearchIn,
    WatchId,
    WatchIn,
    WatchSpec,
    encoder,
)

# -- the actions ----------------------------------------------------------------------------


def _library_fields(r: LibraryCreate) -> dict[str, Any]:
    params = None
    if r.index_params is not None:
        p = r.index_params
        params = {"m": p.m, "ef_construction": p.ef_construction, "ef_search": p.ef_search}
    return {
        "description": r.description,
        "metadata": r.metadata,
        "dimension": r.dimension,
        "metric": r.metric,
        "index": r.index,
        "index_params": params,
        "embedder": ... if r.embedder is UNSET else r.embedder,
    }


def _create_library(s: VectorDBService, _: str | None, r: LibraryCreate) -> Library:
    return s.create_library(r.name, **_library_fields(r))


def _get_or_create_library(
    s: VectorDBService, _: str | None, r: LibraryCreate
) -> tuple[Library, bool]:
    return s.get_or_create_library(r.name, **_library_fields(r))


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


def _upsert(s: VectorDBService, lib: str | None, r: DocumentPut) -> tuple[Document, bool]:
    return s.upsert_document(_lib(lib), r.document_id, new_document(r.document))


def _upsert_many(s: VectorDBService, lib: str | None, r: DocumentsIn) -> list[Document] | Document:
    """Upsert a list of documents (or one), adding those without an id (NDJSON ingest)."""
    many = isinstance(r, list)
    docs = [new_document(d) for d in r] if isinstance(r, list) else [new_document(r)]
    done = [doc for doc, _ in s.upsert_documents(_lib(lib), docs, add_without_id=True)]
    return done if many else done[0]


def _query(s: VectorDBService, lib: str | None, r: DocumentQuery) -> Page:
    return s.query_documents(_lib(lib), ids=r.ids, filter=r.filter, limit=r.limit, cursor=r.cursor)


def _update_document(s: VectorDBService, lib: str | None, r: DocumentUpdate) -> Document:
    p = r.patch
    return s.update_document(
        _lib(lib),
        r.document_id,
        title=p.title,
        metadata=p.metadata,
        text=p.text,
        chunks=new_chunks(p.chunks),
    )


def _delete_document(s: VectorDBService, lib: str | None, r: DocumentId) -> str:
    s.delete_document(_lib(lib), r.document_id)
    return r.document_id


def _follow(s: VectorDBService, lib: str | None, r: WatchSpec) -> _watches.Followed:
    since = None if r.since is None else str(r.since)
    return _watches.follow(s, lib, r, r.watch_id, since)


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
    #: what the caller's key must give (``access.Need``); a write defaults to ``WRITE``
    need: Need | None = None
    #: leaves out of the result what the caller may not see (lists)
    narrow: Callable[[Caller, Any], Any] | None = None

    @property
    def needs(self) -> Need:
        if self.need is not None:
            return self.need
        return Need.WRITE if self.write else Need.READ

    def perform(
        self, service: VectorDBService, library_id: str | None, request: Any, caller: Caller
    ) -> Any:
        result = self.call(service, library_id, request)
        if self.narrow is not None:
            result = self.narrow(caller, result)
        return self.build(result)


def _same(x: Any) -> Any:
    return x


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            "create_library",
            LibraryCreate,
            _create_library,
            library_out,
            write=True,
            need=Need.MANAGE,
        ),
        Action(
            "get_or_create_library",
            LibraryCreate,
            _get_or_create_library,
            lambda found: (library_out(found[0]), found[1]),
            write=True,
            need=Need.MANAGE,
        ),
        Action(
            "list_libraries",
            None,
            lambda s, _, __: s.list_libraries(),
            lambda libs: LibraryList(libraries=[library_out(x) for x in libs]),
            need=Need.ANY,
            narrow=lambda caller, libs: [x for x in libs if caller.may_read(x.id)],
        ),
        Action("get_library", None, lambda s, lib, _: s.get_library(_lib(lib)), library_out),
        Action("update_library", LibraryUpdate, _update_library, library_out, write=True),
        Action(
            "delete_library",
            None,
            lambda s, lib, _: s.delete_library(_lib(lib)),
            _same,
            write=True,
            need=Need.MANAGE,
        ),
        Action("add", DocumentsIn, _add, _add_out, write=True),
        Action(
            "list_documents",
            DocumentList,
            lambda s, lib, r: s.list_documents(_lib(lib), limit=r.limit, cursor=r.cursor),
            document_page,
        ),
        Action("query_documents", DocumentQuery, _query, document_page),
        Action(
            "count_documents",
            DocumentCount,
            lambda s, lib, r: s.count_documents(_lib(lib), r.filter),
            lambda n: CountOut(count=n),
        ),
        Action(
            "upsert",
            DocumentPut,
            _upsert,
            lambda done: (document_out(done[0]), done[1]),
            write=True,
        ),
        Action("upsert_many", DocumentsIn, _upsert_many, _add_out, write=True),
        Action(
            "delete_documents",
            DocumentsDelete,
            lambda s, lib, r: s.delete_documents(_lib(lib), ids=r.ids, filter=r.filter),
            lambda n: DeletedOut(deleted=n),
            write=True,
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
            lambda s, lib, r: Searched(s.search(_lib(lib), search_query(r)), r.include),
            Searched.out,
        ),
        Action("ready", None, lambda s, _, __: s.check_ready(), _same, need=Need.ANY),
        # watches (live queries) are reads: a key that reads a library may watch it
        Action("create_watch", WatchIn, _watches.create, _watches.watch_out),
        Action("list_watches", None, _watches.listed, _same),
        Action("get_watch", WatchId, _watches.found, _watches.watch_out),
        Action("delete_watch", WatchId, _watches.stop, _same),
        Action("watch", WatchSpec, _follow, _same),  # WebSocket: a ``_watches.Followed``
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


@dataclass(frozen=True, slots=True)
class Written:
    """A write's response and the id of its last event (``Arrwdb-Event-Id``)."""

    result: Any
    event_id: str


class Dispatcher:
    """Runs actions of :data:`ACTIONS` against the service, off the event loop."""

    def __init__(
        self,
        service: Callable[[], VectorDBService],
        gate: WriteGate,
        *,
        read_lanes: int = 1,
        read_batch: int = 32,
        consistency_timeout: float = 5.0,
    ) -> None:
        self._service = service
        self.gate = gate
        self._read_lanes = read_lanes
        self._read_batch = read_batch
        self._consistency_timeout = consistency_timeout
        #: library id (None: library-less reads) -> its hops, while it has reads in flight
        self._reads: dict[str | None, ReadHops] = {}

    async def execute(
        self,
        name: str,
        library_id: str | None,
        request: Any = None,
        *,
        caller: Caller,
        then: Callable[[Any], Any] | None = None,
        min_event_id: object = None,
    ) -> Any:
        """Run one action; raises what the service raises (mapped by ``errors.classify``).
        ``then`` (e.g. encoding the response) is applied to the response Struct in the worker
        thread, off the event loop, and its result is returned instead. A read waits first
        until the event ``min_event_id`` (the argument, or the request's field) is applied
        here (``LaggingError`` after the consistency timeout). ``ForbiddenError`` if the
        ``caller`` may not do it."""
        action = ACTIONS[name]
        if action.write:
            written = await self.write(
                name,
                library_id,
                request,
                caller=caller,
                then=None if then is None else lambda r, _: then(r),
            )
            return written.result
        caller.require(action.needs, library_id)
        service = self._service()
        wanted = min_event_id if min_event_id is not None else _min_event_id(request)
        if wanted is not None:
            position = parse_event_id(wanted, "min_event_id")
            await service.await_applied(position, self._consistency_timeout)
        return await self._read(Read(action, service, library_id, request, caller, then))

    async def write(
        self,
        name: str,
        library_id: str | None,
        request: Any = None,
        *,
        caller: Caller,
        then: Callable[[Any, str], Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Written:
        """Run one write action; its response (``then(response, event_id)`` if given, in the
        worker thread) and the id of its last event. With an ``idempotency_key``, a repeat of
        the same request answers as the first one did and writes nothing (any server, 24 h);
        the key with another request is ``IdempotencyMismatchError``."""
        action = ACTIONS[name]
        assert action.write, f"{name} is not a write"
        caller.require(action.needs, library_id)
        service = self._service()
        key = (
            None
            if idempotency_key is None
            else write_key(idempotency_key, name, library_id, request)
        )

        def run() -> Written:
            with service.idempotent(key):
                response = action.perform(service, library_id, request, caller)
            event_id = _event_id(service)
            return Written(response if then is None else then(response, event_id), event_id)

        self.gate.enter()
        try:
            return await anyio.to_thread.run_sync(run)
        finally:
            self.gate.exit()

    async def _read(self, read: Read) -> Any:
        # each library has its own hops: a read waiting for a library's lock (a big commit)
        # never holds up the reads of another library, nor the readiness check
        key = read.library_id
        hops = self._reads.get(key)
        if hops is None:
            hops = self._reads[key] = ReadHops(self._read_lanes, self._read_batch)
        try:
            return await hops.run(read)
        finally:
            if hops.idle and self._reads.get(key) is hops:
                del self._reads[key]

    async def execute_each(
        self,
        name: str,
        library_id: str | None,
        requests: Sequence[Any],
        *,
        caller: Caller,
        then: Callable[[int, Any], bytes] | None = None,
        budget: int | None = None,
    ) -> list[Any]:
        """Run one action per request in a single worker-thread hop; each item of the result
        is the response Struct (a write's: ``Written``), or ``then(i, response)`` (encoded
        there), or the exception that request raised. With a ``budget``, the hop stops once
        the encoded answers reach that many bytes: the result is then shorter than
        ``requests`` (at least one). ``ForbiddenError`` if the ``caller`` may not do it."""
        action = ACTIONS[name]
        caller.require(action.needs, library_id)
        service = self._service()

        def run_all() -> list[Any]:
            out: list[Any] = []
            size = 0
            for i, request in enumerate(requests):
                try:
                    response = action.perform(service, library_id, request, caller)
                    if action.write:
                        response = Written(response, _event_id(service))
                    if then is not None:
                        response = then(i, response)
                        size += len(response)
                    out.append(response)
                except Exception as exc:  # reported per item by the caller
                    out.append(exc)
                if budget is not None and size >= budget:
                    break
            return out

        if not action.write:
            return await anyio.to_thread.run_sync(run_all)
        self.gate.enter()
        try:
            return await anyio.to_thread.run_sync(run_all)
        finally:
            self.gate.exit()


def _event_id(service: VectorDBService) -> str:
    position = service.written_position()
    return str(service.last_event_id if position is None else position)


def _min_event_id(request: Any) -> object:
    return getattr(request, "min_event_id", None)


#: The longest idempotency key.
MAX_KEY_LENGTH = 200


def write_key(key: str, name: str, library_id: str | None, request: Any) -> WriteKey:
    """An idempotency key with the fingerprint of the request it came with: the action, its
    library and its body (as decoded: the same request by any way in has the same one).
    Raises ``InvalidArgumentError`` for a key that is empty or too long."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidArgumentError(
            f"an idempotency key is 1 to {MAX_KEY_LENGTH} printable characters",
            field="Idempotency-Key",
        )
    digest = hashlib.sha256(f"{name}\0{library_id or ''}\0".encode())
    digest.update(encoder.encode(request))
    return WriteKey(key, digest.hexdigest())
