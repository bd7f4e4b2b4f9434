"""The bodies of the REST API: what goes over the wire, as msgspec Structs.

These Structs are the one validator of every transport: REST decodes request bodies into them,
the WebSocket envelopes (``arrwdb.transports.envelopes``) carry them as ``data``, NDJSON lines
are decoded into them. Schema evolution (msgspec's rules): a field added later gets a default,
so messages written for an older version still decode; unknown fields are ignored.

Bounds (``k`` in 1..1000, ...) are declared once, in ``arrwdb.domain.limits``, and the
constrained types below are built from them (``Meta(ge=..., le=...)``; ``min_length``/
``max_length`` for a name). msgspec enforces them on decode, Litestar shows them in the OpenAPI
document, and a value that fails is reported with the code and field the domain gives the same
mistake (``invalid_argument``, field ``k``: ``envelopes.domain_error``); the domain checks them
again, as the only check of the in-process API. Why the wire enforces rather than only
documents: Litestar 2 builds a Struct's schema from the constraints msgspec enforces and takes
only ``title``, ``description`` and ``examples`` from ``Meta(extra_json_schema=...)``, so a
documentation-only ``{"minimum": ..., "maximum": ...}`` would be missing from
``/schema/openapi.json``. What still differs by way in is the message: msgspec's on the wire
(``Expected `int` >= 1 - at `$.k```), the domain's in process. Every other rule is the domain's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from arrwdb.domain import limits
from arrwdb.domain.errors import LimitExceededError

Metadata = dict[str, Any]
Metric = Literal["cosine", "l2", "ip"]
IndexKind = Literal["flat", "hnsw"]

K = Annotated[
    int,
    Meta(ge=limits.K.low, le=limits.K.high, description=f"How many results, {limits.K}."),
]
Ef = Annotated[
    int,
    Meta(
        ge=limits.EF.low,
        le=limits.EF.high,
        description=f"HNSW search breadth for this query, {limits.EF}.",
    ),
]
Dimension = Annotated[int, Meta(ge=limits.DIMENSION.low, le=limits.DIMENSION.high)]
PageLimit = Annotated[int, Meta(ge=limits.PAGE_LIMIT.low, le=limits.PAGE_LIMIT.high)]
#: A library's name or a client-chosen document id (the domain also refuses a blank one).
Name = Annotated[str, Meta(min_length=limits.NAME_LENGTH.low, max_length=limits.NAME_LENGTH.high)]
HnswM = Annotated[int, Meta(ge=limits.HNSW_M.low, le=limits.HNSW_M.high)]
EfConstruction = Annotated[int, Meta(ge=limits.EF_CONSTRUCTION.low, le=limits.EF_CONSTRUCTION.high)]
EfSearch = Annotated[int, Meta(ge=limits.EF_SEARCH.low, le=limits.EF_SEARCH.high)]


# -- libraries ------------------------------------------------------------------------------


class IndexParams(Struct, kw_only=True):
    """HNSW parameters (ignored by the exact ``flat`` index)."""

    m: HnswM = 16
    ef_construction: EfConstruction = 200
    ef_search: EfSearch = 64


class LibraryCreate(Struct, kw_only=True):
    """``POST /v1/libraries``."""

    name: Name
    description: str = ""
    metadata: Metadata = {}
    dimension: Dimension | None = None
    metric: Metric = "cosine"
    index: IndexKind = "hnsw"
    index_params: IndexParams | None = None
    #: left out: the server's default; ``null``: none (the library takes vectors only)
    embedder: str | UnsetType | None = UNSET


class LibraryUpdate(Struct, kw_only=True):
    """``PATCH /v1/libraries/{id}``: a field left out (or ``null``) is unchanged."""

    name: Name | None = None
    description: str | None = None
    metadata: Metadata | None = None


class LibraryOut(Struct, kw_only=True):
    id: str
    name: str
    description: str
    metadata: Metadata
    dimension: int | None
    metric: str
    index: str
    index_params: IndexParams
    embedder: str | None
    document_count: int
    chunk_count: int
    created_at: str
    updated_at: str


class LibraryList(Struct, kw_only=True):
    libraries: list[LibraryOut]


# -- documents ------------------------------------------------------------------------------


class ChunkIn(Struct, kw_only=True):
    """A chunk given by the client; without ``embedding`` the server embeds ``text``."""

    text: str
    embedding: list[float] | None = None
    metadata: Metadata = {}


class DocumentIn(Struct, kw_only=True):
    """A new document: exactly one of ``text`` (split and embedded by the server) and
    ``chunks``. ``id`` may be chosen by the client."""

    title: str = ""
    text: str | None = None
    chunks: list[ChunkIn] | None = None
    metadata: Metadata = {}
    id: Name | None = None


#: ``POST .../documents`` and the WS ``add`` action take one document or a list (bulk).
DocumentsIn = DocumentIn | list[DocumentIn]


class DocumentPatch(Struct, kw_only=True):
    """``PATCH .../documents/{id}``: ``title`` and ``metadata`` change in place (``metadata``
    merged as a JSON Merge Patch: a key set to ``null`` is removed); ``text`` or ``chunks``
    replace the content (re-chunked and re-embedded)."""

    title: str | None = None
    metadata: Metadata | None = None
    text: str | None = None
    chunks: list[ChunkIn] | None = None


class DocumentId(Struct, kw_only=True):
    """Names one document (WS ``delete``)."""

    document_id: str


class DocumentGet(Struct, kw_only=True):
    """Reads one document with its chunks (WS ``get``)."""

    document_id: str
    include_embedding: bool = False
    #: answer once this event is applied here (a write made through another server)
    min_event_id: str | int | None = None


class DocumentUpdate(Struct, kw_only=True):
    document_id: str
    patch: DocumentPatch


class DocumentList(Struct, kw_only=True):
    """A page request: ``cursor`` is the ``next_cursor`` of the previous page."""

    limit: PageLimit = 100
    cursor: str | None = None


class ChunkOut(Struct, kw_only=True, omit_defaults=True):
    id: str
    document_id: str
    position: int
    text: str
    metadata: Metadata
    embedding: list[float] | None = None


class DocumentOut(Struct, kw_only=True, omit_defaults=True):
    """A document; ``chunks`` only when read one by one."""

    id: str
    library_id: str
    title: str
    metadata: Metadata
    num_chunks: int
    created_at: str
    updated_at: str
    chunks: list[ChunkOut] | None = None


class DocumentPage(Struct, kw_only=True):
    documents: list[DocumentOut]
    next_cursor: str | None


class DocumentDeleted(Struct, kw_only=True):
    document_id: str
    deleted: bool = True


class DocumentPut(Struct, kw_only=True):
    """``PUT .../documents/{document_id}``: the document written to that id (``document.id``,
    if given, must be it)."""

    document_id: str
    document: DocumentIn


class DocumentQuery(Struct, kw_only=True):
    """``POST .../documents/query``: the documents among ``ids`` (in that order) and matching
    ``filter`` (on document metadata); without ``ids``, in insertion order, ``limit`` (100) a
    page; with ``ids``, every one found unless ``limit`` is given."""

    ids: Annotated[list[str], Meta(max_length=limits.PAGE_LIMIT.high)] | None = None
    filter: dict[str, Any] | None = None
    limit: PageLimit | None = None
    cursor: str | None = None
    #: answer once this event is applied here (a write made through another server)
    min_event_id: str | int | None = None


class DocumentCount(Struct, kw_only=True):
    """``POST .../documents/count``: how many documents (whose metadata matches ``filter``)."""

    filter: dict[str, Any] | None = None
    min_event_id: str | int | None = None


class DocumentsDelete(Struct, kw_only=True):
    """``POST .../documents/delete``: exactly one of ``ids`` and ``filter`` (on document
    metadata; ``{}`` matches every document)."""

    ids: list[str] | None = None
    filter: dict[str, Any] | None = None


class CountOut(Struct, kw_only=True):
    count: int


class DeletedOut(Struct, kw_only=True):
    deleted: int


# -- search ---------------------------------------------------------------------------------


class SearchIn(Struct, kw_only=True):
    """A search: exactly one of ``query_text`` and ``query_vector``."""

    query_text: str | None = None
    query_vector: list[float] | None = None
    k: K = 10
    filter: dict[str, Any] | None = None
    ef: Ef | None = None
    include_embedding: bool = False
    #: what each hit carries besides its ids, title, score and position (default text and
    #: metadata; ``embedding`` as ``include_embedding``)
    include: list[Literal["text", "metadata", "embedding"]] | None = None
    #: ``"document"``: the best chunk of each of the ``k`` best documents
    group_by: Literal["document"] | None = None
    #: answer once this event is applied here (a write made through another server)
    min_event_id: str | int | None = None


class SearchHitOut(Struct, kw_only=True, omit_defaults=True):
    """A hit; ``text`` and ``metadata`` are left out when the search's ``include`` does not
    name them."""

    chunk_id: str
    document_id: str
    document_title: str
    text: str | UnsetType = UNSET
    score: float
    metadata: Metadata | UnsetType = UNSET
    position: int
    embedding: list[float] | None = None


class SearchOut(Struct, kw_only=True):
    results: list[SearchHitOut]
    took_ms: float


# -- watches --------------------------------------------------------------------------------


class WatchIn(Struct, kw_only=True):
    """A watch (``POST .../watches``, the WS ``watch`` action): exactly one of ``query_text``
    and ``query_vector``; ``k`` (a top-k watch, optional ``threshold`` floor) or only
    ``threshold`` (a match watch)."""

    query_text: str | None = None
    query_vector: list[float] | None = None
    k: K | None = None
    threshold: float | None = None
    filter: dict[str, Any] | None = None


class WatchSpec(WatchIn, kw_only=True):
    """The WebSocket ``watch`` action's data: a new watch (as ``WatchIn``), or ``watch_id``
    (and ``since``, a watch event id) to follow a watch made over REST."""

    watch_id: str | None = None
    since: str | int | None = None


class WatchOut(Struct, kw_only=True):
    id: str
    library_id: str
    k: int | None
    threshold: float | None
    filter: dict[str, Any] | None
    created_at: str


class WatchList(Struct, kw_only=True):
    watches: list[WatchOut]


class WatchId(Struct, kw_only=True):
    """Names one watch (``GET``/``DELETE .../watches/{watch_id}``, WS ``unwatch``)."""

    watch_id: str


# -- operations -----------------------------------------------------------------------------


class Health(Struct, kw_only=True):
    status: str
    version: str
    #: the last event this server has applied
    event_id: str


class Readiness(Struct, kw_only=True):
    status: str


class BackupIn(Struct, kw_only=True):
    """``POST /v1/backups``: the backup's folder name under the server's backup directory
    (default: ``backup-<UTC time>``)."""

    name: str | None = None


class BackupOut(Struct, kw_only=True):
    name: str
    path: str
    created_at: str


class KeyIn(Struct, kw_only=True):
    """``POST /v1/keys``: a key giving ``access`` to ``libraries`` (ids, or ``["*"]``)."""

    name: str
    libraries: list[str]
    access: Literal["read", "write"]


class KeyOut(Struct, kw_only=True, omit_defaults=True):
    """An API key; ``key`` (the secret) only in the answer that made it."""

    id: str
    name: str
    libraries: list[str]
    access: str
    created_at: str
    key: str | None = None


class KeyList(Struct, kw_only=True):
    keys: list[KeyOut]


class WebSocketStats(Struct, kw_only=True):
    """``GET /v1/websockets/stats``, in the WebSocket protocol's exact shape."""

    total_connections: int
    libraries_with_subscribers: int
    subscriptions_by_library: dict[str, int]
    #: extensions: the open Server-Sent Events streams, in all and per library (``*``: the
    #: stream of every library)
    sse_streams: int = 0
    sse_streams_by_library: dict[str, int] = {}


class Problem(Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details; ``code`` is the stable machine-readable error code and
    ``field`` (when known) names the offending input."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    field: str | None = None


#: Every Struct of this module that crosses the wire (property tests round-trip each).
WIRE_TYPES: tuple[type[Struct], ...] = (
    IndexParams,
    LibraryCreate,
    LibraryUpdate,
    LibraryOut,
    LibraryList,
    ChunkIn,
    DocumentIn,
    DocumentPatch,
    DocumentId,
    DocumentGet,
    DocumentUpdate,
    DocumentList,
    ChunkOut,
    DocumentOut,
    DocumentPage,
    DocumentDeleted,
    DocumentPut,
    DocumentQuery,
    DocumentCount,
    DocumentsDelete,
    CountOut,
    DeletedOut,
    SearchIn,
    SearchHitOut,
    SearchOut,
    WatchIn,
    WatchSpec,
    WatchOut,
    WatchList,
    WatchId,
    Health,
    Readiness,
    BackupIn,
    BackupOut,
    KeyIn,
    KeyOut,
    KeyList,
    WebSocketStats,
    Problem,
)

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decoder_for(tp: Any) -> msgspec.json.Decoder[Any]:
    """The JSON decoder of ``tp``, built once and reused."""
    decoder = _decoders.get(tp)
    if decoder is None:
        decoder = _decoders[tp] = msgspec.json.Decoder(tp)
    return decoder


_any_decoder = msgspec.json.Decoder()


def decode(tp: Any, raw: bytes | str) -> Any:
    """Decode JSON ``raw`` into ``tp``. msgspec type-checks while it parses, so a malformed
    document can fail with a type error first: such a failure is re-raised as the
    ``msgspec.DecodeError`` (400) it really is, and ``ValidationError`` (422) means valid JSON
    that breaks a rule."""
    try:
        return decoder_for(tp).decode(raw)
    except msgspec.ValidationError as exc:
        try:
            _any_decoder.decode(raw)  # raises DecodeError if it is not JSON at all
        except msgspec.ValidationError:
            # JSON with a number beyond a float (``1e999``): the untyped decoder refuses it
            # too, but only the typed error names the field (``$.threshold``)
            raise exc from None
        raise
    except RecursionError:
        raise too_deep() from None


def too_deep() -> LimitExceededError:
    """What JSON nested deeper than the decoder follows is."""
    return LimitExceededError(
        "the JSON nests deeper than this server reads (no input needs more than a few levels)",
        limit="JSON depth",
    )


#: The one JSON encoder of the transports (reused: building encoders is not free).
encoder = msgspec.json.Encoder()
