"""arrwDB: a vector database you import or serve, with real-time change streams.

>>> import arrwdb
>>> db = arrwdb.open()                      # in memory; arrwdb.open("./data") is durable
>>> lib = db.create_library("papers")

``arrwdb.connect("http://127.0.0.1:8000")`` gives the same API as a client of a server;
``lib.watch(query, k=10)`` is a live query on either.
"""

from arrwdb.client import (
    AsyncDatabase,
    AsyncLibraryHandle,
    Database,
    EventStream,
    LibraryHandle,
    open,
    open_async,
)
from arrwdb.config import Settings
from arrwdb.domain.errors import (
    AlreadyExistsError,
    ArrwdbError,
    DimensionMismatchError,
    DocumentNotFoundError,
    InternalError,
    InvalidArgumentError,
    InvalidFilterError,
    InvalidVectorError,
    LibraryNotFoundError,
    LimitExceededError,
    NotFoundError,
    SlowConsumerError,
    StorageError,
    SubscriptionClosedError,
    ValidationError,
    WatchNotFoundError,
)
from arrwdb.domain.events import Event
from arrwdb.domain.models import (
    Chunk,
    Document,
    IndexParams,
    Library,
    NewChunk,
    NewDocument,
    Page,
    SearchHit,
    SearchQuery,
    SearchResult,
)
from arrwdb.domain.watches import Watch, WatchEvent
from arrwdb.remote import (
    AsyncRemoteDatabase,
    IngestResult,
    RemoteDatabase,
    ServerUnavailableError,
    connect,
    connect_async,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "ArrwdbError",
    "AsyncDatabase",
    "AsyncLibraryHandle",
    "AsyncRemoteDatabase",
    "Chunk",
    "Database",
    "DimensionMismatchError",
    "Document",
    "DocumentNotFoundError",
    "Event",
    "EventStream",
    "IndexParams",
    "IngestResult",
    "InternalError",
    "InvalidArgumentError",
    "InvalidFilterError",
    "InvalidVectorError",
    "Library",
    "LibraryHandle",
    "LibraryNotFoundError",
    "LimitExceededError",
    "NewChunk",
    "NewDocument",
    "NotFoundError",
    "Page",
    "RemoteDatabase",
    "SearchHit",
    "SearchQuery",
    "SearchResult",
    "ServerUnavailableError",
    "Settings",
    "SlowConsumerError",
    "StorageError",
    "SubscriptionClosedError",
    "ValidationError",
    "Watch",
    "WatchEvent",
    "WatchNotFoundError",
    "__version__",
    "connect",
    "connect_async",
    "open",
    "open_async",
]
