"""The domain model of the spec: libraries, documents, chunks, search hits.

Entities are immutable value objects; the service produces new versions with
:func:`dataclasses.replace`. Embeddings are float32 numpy vectors.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Metric = Literal["cosine", "l2", "ip"]
IndexKind = Literal["flat", "hnsw"]
METRICS: tuple[Metric, ...] = ("cosine", "l2", "ip")
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "hnsw")

#: A scalar or a list of scalars: what metadata values may be.
MetadataValue = str | int | float | bool | None | list[str | int | float | bool | None]
Metadata = Mapping[str, Any]

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float32]


def new_id() -> str:
    """A fresh UUID4 string: the server's choice of id for a library, document or chunk."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_timestamp(ts: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z`` suffix."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class IndexParams:
    """HNSW parameters. Ignored by the flat (exact) index."""

    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64

    def as_dict(self) -> dict[str, int]:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}


@dataclass(frozen=True, slots=True)
class Library:
    id: str
    name: str
    description: str = ""
    metadata: Metadata = field(default_factory=dict)
    dimension: int | None = None
    metric: Metric = "cosine"
    index: IndexKind = "hnsw"
    index_params: IndexParams = field(default_factory=IndexParams)
    #: the embedder of its text (``None``: vectors only)
    embedder: str | None = "hashing"
    document_count: int = 0
    chunk_count: int = 0
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str
    document_id: str
    position: int
    text: str
    metadata: Metadata = field(default_factory=dict)
    embedding: Vector | None = None


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    library_id: str
    title: str
    metadata: Metadata = field(default_factory=dict)
    num_chunks: int = 0
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    #: Present when read "with chunks" (``get_document``); empty in listings.
    chunks: tuple[Chunk, ...] = ()


@dataclass(frozen=True, slots=True)
class NewChunk:
    """A chunk as given by a caller: text, and optionally its embedding and metadata."""

    text: str
    embedding: Sequence[float] | Vector | None = None
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewDocument:
    """A document as given by a caller: either ``text`` (split by the chunker) or ``chunks``."""

    title: str = ""
    text: str | None = None
    chunks: Sequence[NewChunk] | None = None
    metadata: Metadata = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A chunk found by a search. ``text`` and ``metadata`` (the document's merged with the
    chunk's, chunk wins) are ``None`` when the search's ``include`` leaves them out;
    ``embedding`` is there when it names ``embedding``."""

    chunk_id: str
    document_id: str
    document_title: str
    text: str | None
    score: float
    metadata: Metadata | None
    position: int = 0
    embedding: Vector | None = None


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The hits of a search, best first (``results``; the result itself is a sequence of
    them too), and how long it took. ``results`` is a read-only sequence: a list over the
    client; in process, hits built when first read (``len``, indexing, slicing, iteration and
    ``==`` with a list behave as a list's)."""

    results: Sequence[SearchHit]
    took_ms: float

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> SearchHit:
        return self.results[i]

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.results)


#: What a search hit may carry besides its ids, title, score and position.
INCLUDABLE: tuple[str, ...] = ("text", "metadata", "embedding")
#: What ``SearchQuery.group_by`` may be.
GROUP_BY: tuple[str, ...] = ("document",)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A search: exactly one of ``text`` and ``vector``. ``include``: any of ``INCLUDABLE``
    (``None``: text and metadata; ``embedding`` as ``include_embedding``); ``group_by``
    ``"document"``: the best chunk of each of the ``k`` best documents."""

    text: str | None = None
    vector: Sequence[float] | Vector | None = None
    k: int = 10
    filter: Mapping[str, Any] | None = None
    ef: int | None = None
    include_embedding: bool = False
    include: Sequence[str] | None = None
    group_by: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of documents (a listing, a query); ``next_cursor`` is ``None`` on the last
    page. Iterating a page, its ``len`` and indexing go over ``documents``."""

    documents: list[Document]
    next_cursor: str | None

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, i: int) -> Document:
        return self.documents[i]

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)


AccessLevel = Literal["read", "write"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as kept: its secret only as a SHA-256 digest."""

    id: str
    name: str
    libraries: tuple[str, ...]
    access: AccessLevel
    created_at: datetime
    digest: str
