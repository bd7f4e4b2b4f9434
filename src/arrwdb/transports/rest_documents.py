"""The REST routes of the data calls on documents: upsert (``PUT``), query by ids or filter,
count, and delete by ids or filter. Registered by ``rest.router`` beside the other routes,
each one call to the dispatcher.

A filter here is on document metadata (not the chunks'): see ``arrwdb.domain._queries``.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, post, put
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Response

from arrwdb.transports._rest_common import (
    DOCUMENT,
    EVENT_ID,
    EVENT_ID_HEADER,
    LIBRARY,
    IdempotencyKey,
    write,
)
from arrwdb.transports.guard import caller_of
from arrwdb.transports.messages import (
    CountOut,
    DeletedOut,
    DocumentCount,
    DocumentIn,
    DocumentOut,
    DocumentPage,
    DocumentPut,
    DocumentQuery,
    DocumentsDelete,
)
from arrwdb.transports.runtime import RuntimeDep

DOCUMENTS = LIBRARY + "/documents"


@put(
    DOCUMENT,
    status_code=201,
    tags=["documents"],
    response_headers=EVENT_ID,
    responses={200: ResponseSpec(DocumentOut, description="The document of that id was replaced.")},
)
async def upsert_document(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    document_id: FromPath[str],
    data: JSONBody[DocumentIn],
    idempotency_key: IdempotencyKey = None,
) -> Response[DocumentOut]:
    """Write the document of this id: added (201, `document.added`), or replacing the one of
    that id, its content, title and metadata (200, `document.updated`). A body `id` must be
    the path's (422 otherwise)."""
    caller = caller_of(request.scope)
    put_in = DocumentPut(document_id=document_id, document=data)
    written = await runtime.dispatcher.write(
        "upsert", library_id, put_in, caller=caller, idempotency_key=idempotency_key
    )
    document, created = written.result
    return Response(
        document, status_code=201 if created else 200, headers={EVENT_ID_HEADER: written.event_id}
    )


@post(DOCUMENTS + "/query", status_code=200, tags=["documents"])
async def query_documents(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    data: JSONBody[DocumentQuery],
) -> DocumentPage:
    """Documents by `ids` (in the order asked; unknown ones left out) and/or `filter` (on
    document metadata), without chunks; follow `next_cursor` for more."""
    caller = caller_of(request.scope)
    out: DocumentPage = await runtime.dispatcher.execute(
        "query_documents", library_id, data, caller=caller
    )
    return out


@post(DOCUMENTS + "/count", status_code=200, tags=["documents"])
async def count_documents(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    data: JSONBody[DocumentCount],
) -> CountOut:
    """How many documents (whose metadata matches `filter`)."""
    caller = caller_of(request.scope)
    out: CountOut = await runtime.dispatcher.execute(
        "count_documents", library_id, data, caller=caller
    )
    return out


@post(DOCUMENTS + "/delete", status_code=200, tags=["documents"], response_headers=EVENT_ID)
async def delete_documents(
    runtime: RuntimeDep,
    request: Request[Any, Any, Any],
    library_id: FromPath[str],
    data: JSONBody[DocumentsDelete],
    idempotency_key: IdempotencyKey = None,
) -> Response[DeletedOut]:
    """Delete the documents of `ids` (unknown ones skipped) or matching `filter` (exactly one
    of the two), in one commit with one `document.deleted` event each."""
    caller = caller_of(request.scope)
    return await write(
        runtime, "delete_documents", library_id, data, key=idempotency_key, caller=caller
    )


HANDLERS = [upsert_document, query_documents, count_documents, delete_documents]
