"""What the REST routes share: their paths, the ``Idempotency-Key`` and ``min_event_id``
parameters, the ``Arrwdb-Event-Id`` header, and the answer of a write action."""

from __future__ import annotations

from typing import Annotated, Any

from litestar.datastructures import ResponseHeader
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Response

from arrwdb.domain.access import Caller
from arrwdb.transports.runtime import RuntimeDep

LIBRARY = "/v1/libraries/{library_id:str}"
DOCUMENT = LIBRARY + "/documents/{document_id:str}"
#: ``?min_event_id=``: answer once this server has applied that event (or 503 ``lagging``).
MinEventId = Annotated[
    str | None,
    QueryParameter(
        description="Answer once this event is applied here: a write made through another "
        "server (its `Arrwdb-Event-Id`). 503 `lagging` after the consistency timeout."
    ),
]
EVENT_ID_HEADER = "Arrwdb-Event-Id"
#: ``Idempotency-Key:``: a repeat of the write answers as the first one did, writing nothing.
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        description="Up to 200 characters: the same write sent again with it (within 24 h, "
        "to any server) writes nothing and gets the first answer; with another body, 422 "
        "`idempotency_mismatch`.",
    ),
]
EVENT_ID = [
    ResponseHeader(
        name=EVENT_ID_HEADER,
        description="The id of the write's last event.",
        documentation_only=True,
    )
]


async def write(
    runtime: RuntimeDep,
    name: str,
    library_id: str | None,
    data: Any = None,
    status: int = 200,
    key: str | None = None,
    *,
    caller: Caller,
) -> Response[Any]:
    """A write action's response, with the id of its last event in ``Arrwdb-Event-Id``."""
    written = await runtime.dispatcher.write(
        name, library_id, data, caller=caller, idempotency_key=key
    )
    content = None if status == 204 else written.result
    return Response(content, status_code=status, headers={EVENT_ID_HEADER: written.event_id})
