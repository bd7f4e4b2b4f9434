"""The REST transport: every JSON route of the spec's table, each one call to the dispatcher.

Bodies are msgspec Structs decoded by ``_body.WireBody``; errors are problem details
(``errors.handle_exception``). Health (liveness and readiness) is served whatever transports
are enabled: see :func:`health_router`.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import anyio
from litestar import Request, Router, delete, get, patch, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIResponse
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Response

from arrwdb.domain.access import Need
from arrwdb.domain.errors import AlreadyExistsError, InvalidArgumentError, LimitExceededError
from arrwdb.domain.limits import PAGE_LIMIT
from arrwdb.transports import rest_documents, rest_watches
from arrwdb.transports._body import WireBody
from arrwdb.transports._rest_common import (
    DOCUMENT,
    EVENT_ID,
    EVENT_ID_HEADER,
    LIBRARY,
    IdempotencyKey,
    MinEventId,
    write,
)
from arrwdb.transports.errors import PROBLEM_JSON, ShuttingDown
from arrwdb.transports.guard import caller_of
from arrwdb.transports.messages import (
    BackupIn,
    BackupOut,
    DocumentGet,
    DocumentId,
    DocumentList,
    DocumentOut,
    DocumentPage,
    DocumentPatch,
    DocumentsIn,
    DocumentUpdate,
    Health,
    LibraryCreate,
    LibraryList,
    LibraryOut,
    LibraryUpdate,
    Problem,
    Readiness,
    SearchIn,
    SearchOut,
)
from arrwdb.transports.runtime import RuntimeDep

#: ``?limit=``: its bound is shown in the OpenAPI document (``schema_extra``) but checked by
#: the domain, so a page size out of range gets the domain's message as it does in process.
_PAGE_LIMIT = QueryParameter(
    description=f"Page size, {PAGE_LIMIT}.",
    schema_extra={"minimum": PAGE_LIMIT.low, "maximum": PAGE_LIMIT.high},
)


def _version() -> str:
    try:
        return metadata.version("arrwdb")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


VERSION = _version()


# -- libraries ------------------------------------------------------------------------------


@post("/v1/libraries", status_code=201, tags=["libraries"], response_headers=EVENT_ID)
async def create_library(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    data: JSONBody[LibraryCreate],
    idempotency_key: IdempotencyKey = None,
    exist_ok: Annotated[
        bool,
        QueryParameter(
            description="A library of that name with the same dimension, metric and index is "
            "the answer (200, nothing written); one that differs is a 409."
        ),
    ] = False,
) -> Response[LibraryOut]:
    """Create a library (201). A taken name is a 409, unless ``exist_ok``."""
    caller = caller_of(request.scope)
    if not exist_ok:
        return await write(
            runtime, "create_library", None, data, 201, idempotency_key, caller=caller
        )
    written = await runtime.dispatcher.write(
        "get_or_create_library", None, data, caller=caller, idempotency_key=idempotency_key
    )
    library, created = written.result
    return Response(
        library, status_code=201 if created else 200, headers={EVENT_ID_HEADER: written.event_id}
    )


@get("/v1/libraries", tags=["libraries"])
async def list_libraries(
    runtime: RuntimeDep, request: Request[Any, Any, Any], min_event_id: MinEventId = None
) -> LibraryList:
    """Every library, in creation order."""
    caller = caller_of(request.scope)
    out: LibraryList = await runtime.dispatcher.execute(
        "list_libraries", None, caller=caller, min_event_id=min_event_id
    )
    return out


@get(LIBRARY, tags=["libraries"])
async def get_library(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    min_event_id: MinEventId = None,
) -> LibraryOut:
    caller = caller_of(request.scope)
    out: LibraryOut = await runtime.dispatcher.execute(
        "get_library", library_id, caller=caller, min_event_id=min_event_id
    )
    return out


@patch(LIBRARY, tags=["libraries"], response_headers=EVENT_ID)
async def update_library(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    data: JSONBody[LibraryUpdate],
    idempotency_key: IdempotencyKey = None,
) -> Response[LibraryOut]:
    """Change the name, description or metadata; fields left out stay as they are."""
    caller = caller_of(request.scope)
    return await write(
        runtime, "update_library", library_id, data, key=idempotency_key, caller=caller
    )


@delete(
    LIBRARY,
    status_code=204,
    tags=["libraries"],
    response_headers=EVENT_ID,
)
async def delete_library(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    idempotency_key: IdempotencyKey = None,
) -> Response[None]:
    """Delete a library with all of its documents (204)."""
    caller = caller_of(request.scope)
    return await write(
        runtime, "delete_library", library_id, status=204, key=idempotency_key, caller=caller
    )


# -- documents ------------------------------------------------------------------------------


@post(LIBRARY + "/documents", status_code=201, tags=["documents"], response_headers=EVENT_ID)
async def add_documents(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    data: JSONBody[DocumentsIn],
    idempotency_key: IdempotencyKey = None,
) -> Response[DocumentOut | list[DocumentOut]]:
    """Add a document (``text`` or ``chunks``), or a list of them in one commit (201)."""
    caller = caller_of(request.scope)
    return await write(runtime, "add", library_id, data, 201, idempotency_key, caller=caller)


@get(LIBRARY + "/documents", tags=["documents"])
async def list_documents(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    limit: Annotated[int, _PAGE_LIMIT] = 100,
    cursor: Annotated[str | None, QueryParameter(description="`next_cursor` of a page.")] = None,
    min_event_id: MinEventId = None,
) -> DocumentPage:
    """Documents in insertion order, without chunks; follow ``next_cursor`` for more."""
    caller = caller_of(request.scope)
    out: DocumentPage = await runtime.dispatcher.execute(
        "list_documents",
        library_id,
        DocumentList(limit=limit, cursor=cursor),
        caller=caller,
        min_event_id=min_event_id,
    )
    return out


@get(DOCUMENT, tags=["documents"])
async def get_document(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    document_id: FromPath[str],
    include_embedding: Annotated[bool, QueryParameter(description="With embeddings.")] = False,
    min_event_id: MinEventId = None,
) -> DocumentOut:
    """A document with its chunks."""
    caller = caller_of(request.scope)
    wanted = DocumentGet(
        document_id=document_id, include_embedding=include_embedding, min_event_id=min_event_id
    )
    out: DocumentOut = await runtime.dispatcher.execute("get", library_id, wanted, caller=caller)
    return out


@patch(DOCUMENT, tags=["documents"], response_headers=EVENT_ID)
async def update_document(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    document_id: FromPath[str],
    data: JSONBody[DocumentPatch],
    idempotency_key: IdempotencyKey = None,
) -> Response[DocumentOut]:
    """Change the title, merge ``metadata`` (a JSON Merge Patch: ``null`` removes a key), or
    replace the content with ``text`` or ``chunks``."""
    caller = caller_of(request.scope)
    update = DocumentUpdate(document_id=document_id, patch=data)
    return await write(
        runtime, "update_document", library_id, update, key=idempotency_key, caller=caller
    )


@delete(
    DOCUMENT,
    status_code=204,
    tags=["documents"],
    response_headers=EVENT_ID,
)
async def delete_document(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    document_id: FromPath[str],
    idempotency_key: IdempotencyKey = None,
) -> Response[None]:
    """Delete a document (204)."""
    caller = caller_of(request.scope)
    target = DocumentId(document_id=document_id)
    return await write(runtime, "delete", library_id, target, 204, idempotency_key, caller=caller)


# -- search ---------------------------------------------------------------------------------


@post(LIBRARY + "/search", status_code=200, tags=["search"])
async def search(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    data: JSONBody[SearchIn],
) -> SearchOut:
    """The ``k`` best chunks (matching ``filter``), best first; with ``group_by: "document"``
    the best chunk of each of the ``k`` best documents."""
    caller = caller_of(request.scope)
    out: SearchOut = await runtime.dispatcher.execute("search", library_id, data, caller=caller)
    return out


# -- backups --------------------------------------------------------------------------------

_BACKUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def backup_dir(runtime: RuntimeDep) -> Path | None:
    """Where ``POST /v1/backups`` writes: ``backup_dir``, else ``<data_dir>/backups``."""
    settings = runtime.settings
    if settings.backup_dir:
        return Path(settings.backup_dir)
    return Path(settings.data_dir) / "backups" if settings.data_dir else None


@post("/v1/backups", status_code=201, tags=["backups"])
async def create_backup(
    runtime: RuntimeDep, request: Request[Any, Any, Any], data: JSONBody[BackupIn]
) -> BackupOut:
    """Write a consistent copy of the durable store into a new folder of the server's backup
    directory while it keeps serving (``arrwdb serve --data-dir <path>`` opens it); the admin
    key only. 422 for an in-memory store, a bad name or ``max_backups`` backups already there,
    409 for a name already used."""
    caller = caller_of(request.scope)
    caller.require(Need.ADMIN)
    now = datetime.now(UTC)
    name = data.name or now.strftime("backup-%Y%m%dT%H%M%S%fZ")
    if not _BACKUP_NAME.fullmatch(name):
        raise InvalidArgumentError(
            "a backup name is 1-128 letters, digits, '.', '_' or '-', not starting with "
            "'.', '_' or '-'",
            field="name",
        )
    home = backup_dir(runtime)
    if home is None:
        raise InvalidArgumentError(
            "this server keeps its data in memory: there is nothing on disk to back up",
            field="name",
        )
    destination = home / name
    if destination.exists():
        raise AlreadyExistsError(f"a backup named {name!r} already exists", name=name)
    limit = runtime.settings.max_backups
    if home.is_dir() and sum(1 for p in home.iterdir() if p.is_dir()) >= limit:
        raise LimitExceededError(
            f"the backup directory holds {limit} backups, the limit (max_backups): delete "
            "old ones first",
            limit="max_backups",
            field="name",
        )
    gate = runtime.dispatcher.gate
    gate.enter()  # refused once the server shuts down
    try:
        path = await anyio.to_thread.run_sync(runtime.service.backup, destination)
    finally:
        gate.exit()
    return BackupOut(name=name, path=_shown(path, runtime), created_at=now.isoformat())


def _shown(path: Path, runtime: RuntimeDep) -> str:
    """Where a backup is, as the answer says it: relative to the data directory when it is in
    it (``backups/nightly``), else its name in the backup directory (the server's own paths
    are not its clients' business)."""
    data_dir = runtime.settings.data_dir
    if data_dir:
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(Path(data_dir).resolve()))
    return path.name


# -- health ---------------------------------------------------------------------------------


@get("/v1/health", tags=["health"])
async def health(runtime: RuntimeDep) -> Health:
    """Liveness: the process serves requests; ``event_id``: the last event it has applied."""
    return Health(status="ok", version=VERSION, event_id=str(runtime.service.last_event_id))


@get(
    "/v1/health/ready",
    tags=["health"],
    responses={
        503: ResponseSpec(
            Problem,
            generate_examples=False,
            description="Not ready: the store cannot serve (`storage_error`), or the server is "
            "shutting down (`shutting_down`).",
            media_type=PROBLEM_JSON,
        )
    },
)
async def ready(runtime: RuntimeDep, request: Request[Any, Any, Any]) -> Readiness:
    """Readiness: the adapters can serve (503 with problem details otherwise)."""
    caller = caller_of(request.scope)
    if runtime.closing:
        raise ShuttingDown("the server is shutting down")
    await runtime.dispatcher.execute("ready", None, caller=caller)
    return Readiness(status="ready")


def without_bodies_on_204(document: OpenAPI) -> None:
    """A 204 answer has no body: Litestar documents a JSON ``null`` for a ``Response[None]``
    (which a write returns to carry ``Arrwdb-Event-Id``); take it out of the document."""
    for item in (document.paths or {}).values():
        for operation in (item.get, item.put, item.post, item.patch, item.delete):
            responses = getattr(operation, "responses", None) or {}
            answer = responses.get("204")
            if isinstance(answer, OpenAPIResponse):
                answer.content = None


def router() -> Router:
    """The REST transport (libraries, documents, search)."""
    return Router(
        path="/",
        route_handlers=[
            create_library,
            list_libraries,
            get_library,
            update_library,
            delete_library,
            add_documents,
            list_documents,
            get_document,
            update_document,
            delete_document,
            search,
            *rest_documents.HANDLERS,
            *rest_watches.HANDLERS,
            create_backup,
        ],
        dto=WireBody,
        return_dto=None,
    )


def health_router() -> Router:
    """Liveness and readiness: always served."""
    return Router(path="/", route_handlers=[health, ready])
