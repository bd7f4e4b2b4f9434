"""Stream envelopes: the arrwDB WebSocket protocol, NDJSON lines and the SSE event data.

WebSocket requests are a tagged union on ``action``; one decoder (built once) turns a message
into the right request Struct or a ``msgspec.ValidationError`` naming the field
(``... - at `$.data.k```). A message that fails is answered by :func:`protocol_error`, which
recovers the ``request_id`` (when there is one) so that the client can correlate the error.
A value that fails to decode, on any transport, is reported as the domain error of the same
mistake (:func:`domain_error`), so its code does not depend on the way in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from arrwdb.domain.errors import (
    InvalidArgumentError,
    InvalidFilterError,
    InvalidVectorError,
    ValidationError,
)
from arrwdb.transports.messages import (
    DocumentGet,
    DocumentId,
    DocumentsIn,
    SearchHitOut,
    SearchIn,
    WatchId,
    WatchSpec,
)

#: A client's correlation id: echoed back verbatim.
RequestId = str | int | None


class SubscribeIn(Struct, kw_only=True):
    """``subscribe`` data (extension): replay after ``since`` (an event id or ``"earliest"``),
    only ``types``. Both left out: keep the current subscription."""

    since: str | int | None = None
    types: list[str] | None = None


class Empty(Struct, kw_only=True):
    """No arguments."""


class _Request(Struct, kw_only=True, tag_field="action"):
    type: Literal["request"] = "request"
    request_id: RequestId = None
    #: a write's idempotency key (extension): a repeat answers as the first one did
    idempotency_key: str | None = None


class SearchRequest(_Request, tag="search"):
    data: SearchIn


class AddRequest(_Request, tag="add"):
    data: DocumentsIn


class DeleteRequest(_Request, tag="delete"):
    data: DocumentId


class GetRequest(_Request, tag="get"):
    data: DocumentGet


class SubscribeRequest(_Request, tag="subscribe"):
    data: SubscribeIn = msgspec.field(default_factory=SubscribeIn)


class UnsubscribeRequest(_Request, tag="unsubscribe"):
    data: Empty = msgspec.field(default_factory=Empty)


class WatchRequest(_Request, tag="watch"):
    data: WatchSpec


class UnwatchRequest(_Request, tag="unwatch"):
    data: WatchId


WSRequest = (
    SearchRequest
    | AddRequest
    | DeleteRequest
    | GetRequest
    | SubscribeRequest
    | UnsubscribeRequest
    | WatchRequest
    | UnwatchRequest
)
#: Request Struct of each WebSocket action.
WS_ACTIONS: dict[str, type[_Request]] = {
    "search": SearchRequest,
    "add": AddRequest,
    "delete": DeleteRequest,
    "get": GetRequest,
    "subscribe": SubscribeRequest,
    "unsubscribe": UnsubscribeRequest,
    "watch": WatchRequest,
    "unwatch": UnwatchRequest,
}
ws_request_decoder: msgspec.json.Decoder[WSRequest] = msgspec.json.Decoder(WSRequest)


class WSResponse(Struct, kw_only=True):
    """``{"type": "response", "request_id", "success", "data"}`` or, on failure,
    ``{"type": "response", "request_id", "success": false, "error", "code"}``."""

    type: Literal["response"] = "response"
    request_id: RequestId
    success: bool
    data: Any | UnsetType = UNSET
    error: str | UnsetType = UNSET
    code: str | UnsetType = UNSET
    field: str | UnsetType = UNSET
    #: a write's last event (extension): a read elsewhere may wait for it (``min_event_id``)
    event_id: str | UnsetType = UNSET


class SubscriptionState(Struct, kw_only=True):
    """``subscribe`` -> ``{"subscribed": true, "library_id"}``; ``unsubscribe`` ->
    ``{"subscribed": false}``."""

    subscribed: bool
    library_id: str | UnsetType = UNSET


class WSEvent(Struct, kw_only=True):
    """A change event as the WebSocket sends it (``id``/``timestamp`` are extensions)."""

    type: Literal["event"] = "event"
    event_type: str
    library_id: str | None
    data: dict[str, Any]
    id: str
    timestamp: str


class WatchStarted(Struct, kw_only=True):
    """``watch`` -> ``{"watch_id"}``."""

    watch_id: str


class Unwatched(Struct, kw_only=True):
    """``unwatch`` -> ``{"watch_id", "unwatched": true}``."""

    watch_id: str
    unwatched: bool = True


class WSWatchEvent(Struct, kw_only=True):
    """A watch event as the WebSocket sends it: a change event's framing plus ``watch_id``
    (``event_type`` ``watch.*``, or ``stream.reset`` / ``stream.closed`` of the watch)."""

    type: Literal["event"] = "event"
    event_type: str
    library_id: str
    watch_id: str
    data: dict[str, Any]
    id: str
    timestamp: str


class WSSystem(Struct, kw_only=True):
    """``{"type": "system", "message": "Connected to library <id>", "connection_id"}``."""

    type: Literal["system"] = "system"
    message: str
    connection_id: str
    #: the last event this server had applied (extension)
    event_id: str | UnsetType = UNSET


class EventEnvelope(Struct, kw_only=True):
    """The spec's event envelope: the ``data:`` of an SSE event, an item of the change
    stream. ``type`` is an event type or ``stream.reset``."""

    id: str
    type: str
    library_id: str | None
    timestamp: str
    data: dict[str, Any]


class IngestLine(Struct, kw_only=True):
    """One NDJSON ingest answer: ``document_id`` on success, ``error``/``code`` (and ``field``
    when known) otherwise."""

    line: int
    success: bool
    document_id: str | UnsetType = UNSET
    #: the id of the event of the commit that added it
    event_id: str | UnsetType = UNSET
    error: str | UnsetType = UNSET
    code: str | UnsetType = UNSET
    field: str | UnsetType = UNSET


class IngestSummary(Struct, kw_only=True):
    received: int
    added: int
    failed: int
    took_ms: float


class IngestSummaryLine(Struct, kw_only=True):
    summary: IngestSummary


class SearchLine(Struct, kw_only=True):
    """One NDJSON batch-search answer: a search response with its input ``line``, or
    ``error``/``code`` (and ``field`` when known)."""

    line: int
    success: bool
    results: list[SearchHitOut] | UnsetType = UNSET
    took_ms: float | UnsetType = UNSET
    error: str | UnsetType = UNSET
    code: str | UnsetType = UNSET
    field: str | UnsetType = UNSET


WIRE_TYPES: tuple[type[Struct], ...] = (
    SubscribeIn,
    Empty,
    SearchRequest,
    AddRequest,
    DeleteRequest,
    GetRequest,
    SubscribeRequest,
    UnsubscribeRequest,
    WSResponse,
    SubscriptionState,
    WatchRequest,
    UnwatchRequest,
    WatchStarted,
    Unwatched,
    WSEvent,
    WSWatchEvent,
    WSSystem,
    EventEnvelope,
    IngestLine,
    IngestSummary,
    IngestSummaryLine,
    SearchLine,
)


# -- failures -------------------------------------------------------------------------------


class _Loose(Struct):
    """Just enough of an envelope to answer a message that failed to decode."""

    type: Any = None
    action: Any = None
    request_id: Any = None


_loose_decoder = msgspec.json.Decoder(_Loose)
_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`")
_INDEX = re.compile(r"\[.*$")
_ENVELOPE_FIELDS = frozenset({"type", "action", "request_id"})
#: The domain error of a value that fails to decode, by the last name of its field: what
#: ``arrwdb.domain.validation`` raises for the same input in process. Anything else (a wrong
#: type, a bound, an unknown enum value, a missing field) is an ``InvalidArgumentError``.
_DOMAIN_ERRORS: dict[str, type[ValidationError]] = {
    "query_vector": InvalidVectorError,
    "embedding": InvalidVectorError,
    "filter": InvalidFilterError,
}


@dataclass(frozen=True, slots=True)
class ProtocolFault:
    """Why a WebSocket message is not a valid request."""

    request_id: RequestId
    code: str  # bad_request | unknown_action | limit_exceeded | the code of domain_error()
    message: str
    field: str | None = None


def error_path(exc: msgspec.ValidationError) -> str | None:
    """The field a msgspec error names (``"data.k"``, ``"chunks[0].text"``), if any."""
    message = str(exc)
    match = _PATH.search(message)
    path = match.group("path") if match else ""
    missing = _MISSING.match(message)
    if missing:
        name = missing.group("name")
        path = f"{path}.{name}" if path else name
    return path or None


def domain_error(exc: msgspec.ValidationError) -> ValidationError:
    """The domain error of the mistake ``exc`` reports (valid JSON that the wire types refuse),
    with msgspec's message and the field it names: ``{"k": 0}`` is an ``InvalidArgumentError``
    (``invalid_argument``, field ``k``) as ``check_k(0)`` is."""
    field = error_path(exc)
    name = _INDEX.sub("", field.rpartition(".")[2]) if field else ""
    return _DOMAIN_ERRORS.get(name, InvalidArgumentError)(str(exc), field=field)


def protocol_error(raw: str | bytes, exc: msgspec.DecodeError) -> ProtocolFault:
    """Explain why ``raw`` failed to decode as a request, with its ``request_id`` if any."""
    try:
        loose = _loose_decoder.decode(raw)
    except RecursionError:
        return ProtocolFault(None, "limit_exceeded", "the JSON nests deeper than this server reads")
    except msgspec.ValidationError:
        return ProtocolFault(None, "bad_request", "message is not a request: expected an object")
    except msgspec.DecodeError as bad:
        return ProtocolFault(None, "bad_request", f"message is not valid JSON: {bad}")
    rid = loose.request_id
    request_id: RequestId = (
        rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None
    )
    if loose.type is not None and loose.type != "request":
        return ProtocolFault(
            request_id, "bad_request", f"message is not a request: type is {loose.type!r}"
        )
    if isinstance(loose.action, str) and loose.action not in WS_ACTIONS:
        known = ", ".join(WS_ACTIONS)
        return ProtocolFault(
            request_id, "unknown_action", f"unknown action {loose.action!r}; known: {known}"
        )
    if not isinstance(exc, msgspec.ValidationError):
        return ProtocolFault(request_id, "bad_request", f"message is not a request: {exc}")
    field = error_path(exc)
    if field is None or field in _ENVELOPE_FIELDS:
        return ProtocolFault(request_id, "bad_request", f"message is not a request: {exc}", field)
    return ProtocolFault(request_id, domain_error(exc).code, str(exc), field)
