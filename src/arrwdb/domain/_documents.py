"""Turning what callers send into validated documents: chunk, embed, check every vector.

Runs before the write is put in order (embedding is the slow part); the write's rule
(``_rules``) re-checks the dimension cheaply, in case a concurrent write fixed it meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from arrwdb.domain import validation as v
from arrwdb.domain.chunking import Chunker
from arrwdb.domain.errors import (
    DimensionMismatchError,
    EmbedderRequiredError,
    InvalidArgumentError,
    InvalidVectorError,
    LimitExceededError,
)
from arrwdb.domain.limits import Limits
from arrwdb.domain.models import (
    Chunk,
    Document,
    Library,
    Matrix,
    NewChunk,
    NewDocument,
    SearchQuery,
    Vector,
    new_id,
    utcnow,
)
from arrwdb.domain.ports import Embedder


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    documents: list[Document]  # with chunks and their embeddings
    vectors: Matrix  # every chunk's embedding, in document and chunk order
    dimension: int


class DocumentBuilder:
    def __init__(
        self, chunker: Chunker, embedders: Mapping[str, Embedder], limits: Limits | None = None
    ) -> None:
        self._chunker = chunker
        self._embedders = embedders
        self._limits = limits or Limits()

    def prepare(
        self,
        library: Library,
        documents: Sequence[NewDocument],
        *,
        created_at: datetime | None = None,
    ) -> PreparedBatch:
        """Validate, chunk and embed. Raises ``ValidationError`` naming the field."""
        if not documents:
            raise InvalidArgumentError("no documents given", field="documents")
        one = len(documents) == 1
        texts: list[str] = []
        chunk_meta: list[dict[str, object]] = []
        explicit: dict[int, object] = {}  # chunk row -> given embedding
        fields: dict[int, str] = {}  # chunk row -> "documents[i].chunks[j]" (formatted lazily)
        shapes: list[tuple[str, str, dict[str, object], str | None, int]] = []
        check_text, check_metadata = v.check_text, v.check_metadata
        max_meta, max_text = self._limits.metadata_bytes, self._limits.text_bytes
        for i, doc in enumerate(documents):
            where = "" if one else f"documents[{i}]."
            title = check_text(doc.title if doc.title is not None else "", f"{where}title")
            metadata = check_metadata(doc.metadata, f"{where}metadata", max_meta)
            doc_id = None if doc.id is None else v.check_document_id(doc.id, f"{where}id")
            if (doc.text is None) == (doc.chunks is None):
                raise InvalidArgumentError(
                    f"{where or 'a document '}needs exactly one of text and chunks".strip(),
                    field=f"{where}text",
                )
            first = len(texts)
            if doc.text is not None:
                if library.embedder is None:
                    raise EmbedderRequiredError(library.name, f"{where}text")
                text = check_text(doc.text, f"{where}text")
                if len(text) * 4 > max_text:  # (UTF-8 takes at most 4 bytes a character)
                    v.check_text_size(v.utf8_length(text), max_text, f"{where}text")
                pieces = self._chunker.split(text)
                if not pieces:
                    raise InvalidArgumentError(f"{where}text is empty", field=f"{where}text")
                texts.extend(pieces)
                chunk_meta.extend({} for _ in pieces)
            else:
                assert doc.chunks is not None
                if not isinstance(doc.chunks, Sequence) or not doc.chunks:
                    raise InvalidArgumentError(
                        f"{where}chunks must be a non-empty list", field=f"{where}chunks"
                    )
                # the per-chunk loop of a bulk load: field names are formatted only for errors
                size = 0
                for j, chunk in enumerate(doc.chunks):
                    text = chunk.text
                    if type(text) is not str:
                        text = check_text(text, f"{where}chunks[{j}].text")
                    size += len(text)
                    meta = chunk.metadata
                    texts.append(text)
                    chunk_meta.append(
                        {}
                        if type(meta) is dict and not meta
                        else check_metadata(meta, f"{where}chunks[{j}].metadata", max_meta)
                    )
                    if chunk.embedding is not None:
                        row = len(texts) - 1
                        explicit[row] = chunk.embedding
                        fields[row] = f"{where}chunks[{j}]"
                    elif library.embedder is None:
                        raise EmbedderRequiredError(library.name, f"{where}chunks[{j}].embedding")
                if size * 4 > max_text:
                    size = sum(v.utf8_length(t) for t in texts[first:])
                    v.check_text_size(size, max_text, f"{where}chunks")
            shapes.append((title, where, metadata, doc_id, len(texts) - first))

        vectors = self._vectors(library, texts, explicit, fields)
        if library.dimension is None and vectors.shape[1] > self._limits.dimension:
            raise LimitExceededError(
                f"vectors of {vectors.shape[1]} dimensions are longer than the limit of "
                f"{self._limits.dimension} (max_dimension)",
                limit="max_dimension",
                field="dimension",
            )
        rows = list(vectors)  # one view per chunk
        chunk_ids = new_ids(len(texts))
        now = utcnow()
        docs: list[Document] = []
        row = 0
        for title, _, metadata, doc_id, count in shapes:
            did = doc_id or new_id()
            chunks = tuple(
                Chunk(chunk_ids[r], did, r - row, texts[r], chunk_meta[r], rows[r])
                for r in range(row, row + count)
            )
            row += count
            docs.append(
                Document(
                    id=did,
                    library_id=library.id,
                    title=title,
                    metadata=metadata,
                    num_chunks=count,
                    created_at=created_at or now,
                    updated_at=now,
                    chunks=chunks,
                )
            )
        return PreparedBatch(docs, vectors, int(vectors.shape[1]))

    def _vectors(
        self,
        library: Library,
        texts: list[str],
        explicit: dict[int, object],
        fields: dict[int, str],
    ) -> Matrix:
        dim = library.dimension
        metric = library.metric
        given: Matrix | None = None
        if explicit:
            rows = list(explicit.values())
            try:
                given = v.as_matrix(rows, dim, metric)  # type: ignore[arg-type]
            except (InvalidVectorError, DimensionMismatchError):
                # find the first offending chunk, to name it
                for row, value in explicit.items():
                    dim = dim or _length(value)
                    field = f"{fields[row]}.embedding"
                    v.as_vector(value, dim, metric, field)  # type: ignore[arg-type]
                raise
            dim = int(given.shape[1])
        missing = [row for row in range(len(texts)) if row not in explicit]
        embedded: Matrix | None = None
        if missing:
            embedder = self._embedder(library)
            embedded = embedder.embed([texts[r] for r in missing], dim)
            if embedded.ndim != 2 or embedded.shape[0] != len(missing):
                raise InvalidVectorError(f"embedder {embedder.name!r} returned a bad shape")
            if dim is not None and embedded.shape[1] != dim:
                raise DimensionMismatchError(dim, int(embedded.shape[1]), what="text embedding")
            dim = int(embedded.shape[1])
        assert dim is not None
        if given is not None and embedded is None:
            return given
        if embedded is not None and given is None:
            return np.ascontiguousarray(embedded, dtype=np.float32)
        out = np.empty((len(texts), dim), dtype=np.float32)
        out[list(explicit)] = given
        out[missing] = embedded
        return out

    def _embedder(self, library: Library) -> Embedder:
        """The library's embedder; ``InvalidArgumentError`` if it is not configured here (a
        library made with an embedder of the caller's own, opened without it)."""
        assert library.embedder is not None, "checked by the callers"
        embedder = self._embedders.get(library.embedder)
        if embedder is None:
            raise InvalidArgumentError(
                f"library {library.name!r} embeds its text with {library.embedder!r}, which is "
                f"not configured here; configured: {', '.join(sorted(self._embedders))}",
                field="embedder",
            )
        return embedder

    def query_vector(self, library: Library, query: SearchQuery) -> Vector:
        """The query as a vector; empty when the library has no dimension yet (no results)."""
        if (query.text is None) == (query.vector is None):
            raise InvalidArgumentError(
                "give exactly one of query_text and query_vector", field="query_text"
            )
        if query.text is not None:
            vectors = self.text_query_vectors(library, [query.text])
            return np.empty(0, dtype=np.float32) if vectors is None else vectors[0]
        assert query.vector is not None
        vector = v.as_vector(query.vector, library.dimension, library.metric, "query_vector")
        return vector if library.dimension is not None else np.empty(0, dtype=np.float32)

    def text_query_vectors(self, library: Library, texts: Sequence[str]) -> Matrix | None:
        """Text queries as vectors, embedded in one call (a model embeds a batch much faster
        than its texts one by one); ``None`` when the library has no dimension yet (no
        results)."""
        checked = [v.check_text(text, "query_text") for text in texts]
        if library.embedder is None:
            raise EmbedderRequiredError(library.name, "query_text")
        if library.dimension is None:
            return None
        return self._embedder(library).embed(checked, library.dimension)


def new_ids(count: int) -> list[str]:
    """``count`` fresh UUID4 strings, as ``new_id()`` makes them (random version-4 UUIDs in
    canonical form), from one ``os.urandom`` call: ~15x cheaper per id than ``uuid.uuid4()``."""
    if count <= 0:
        return []
    raw = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    nibbles = np.empty((count, 32), dtype=np.uint8)
    nibbles[:, 0::2] = _HEX_DIGITS[raw >> 4]
    nibbles[:, 1::2] = _HEX_DIGITS[raw & 0x0F]
    text = np.full((count, 36), ord("-"), dtype=np.uint8)  # 8-4-4-4-12 hex digits
    for dashes, (start, stop) in enumerate(((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))):
        text[:, start + dashes : stop + dashes] = nibbles[:, start:stop]
    joined = text.tobytes().decode("ascii")
    return [joined[o : o + 36] for o in range(0, 36 * count, 36)]


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _length(value: object) -> int | None:
    try:
        return len(value)  # type: ignore[arg-type]
    except TypeError:
        return None


# -- what callers hand in, as plain mappings or as models ------------------------------------

_DOCUMENT_FIELDS = frozenset({"title", "text", "chunks", "metadata", "id"})
_CHUNK_FIELDS = frozenset({"text", "embedding", "metadata"})


def as_new_document(doc: NewDocument | Mapping[str, Any]) -> NewDocument:
    if isinstance(doc, NewDocument):
        chunks = doc.chunks
        if chunks is None or all(type(c) is NewChunk for c in chunks):
            return doc
        if not isinstance(chunks, list | tuple):
            raise InvalidArgumentError("chunks must be a list", field="chunks")
        return replace(doc, chunks=[as_new_chunk(c) for c in chunks])
    if type(doc) is not dict and not isinstance(doc, Mapping):
        raise InvalidArgumentError("a document must be an object", field="documents")
    if not doc.keys() <= _DOCUMENT_FIELDS:
        unknown = set(doc) - _DOCUMENT_FIELDS
        raise InvalidArgumentError(
            f"unknown document field(s) {', '.join(sorted(map(str, unknown)))}", field="documents"
        )
    chunks = doc.get("chunks")
    if chunks is not None and not isinstance(chunks, list | tuple):
        raise InvalidArgumentError("chunks must be a list", field="chunks")
    return NewDocument(
        title=doc.get("title", ""),
        text=doc.get("text"),
        chunks=None if chunks is None else [as_new_chunk(c) for c in chunks],
        metadata=doc.get("metadata") or {},
        id=doc.get("id"),
    )


def require_ids(documents: Sequence[NewDocument]) -> None:
    """Every document names its id (an upsert's)."""
    for i, doc in enumerate(documents):
        if doc.id is None:
            field = "id" if len(documents) == 1 else f"documents[{i}].id"
            raise InvalidArgumentError(
                f"an upsert needs each document's id ({field} is missing)", field=field
            )


def with_id(document: NewDocument, document_id: str) -> NewDocument:
    """``document`` with the id ``document_id`` (an id it carries must be that one)."""
    if document.id is not None and document.id != document_id:
        raise InvalidArgumentError(
            f"the document's id {document.id!r} is not the id it is written to ({document_id!r})",
            field="id",
        )
    return replace(document, id=document_id)


def as_new_chunk(chunk: NewChunk | Mapping[str, Any]) -> NewChunk:
    if type(chunk) is dict:  # the bulk-load case, checked with the fewest calls
        if chunk.keys() <= _CHUNK_FIELDS:
            return NewChunk(
                chunk.get("text", ""), chunk.get("embedding"), chunk.get("metadata") or {}
            )
    elif isinstance(chunk, NewChunk):
        return chunk
    elif not isinstance(chunk, Mapping):
        raise InvalidArgumentError("a chunk must be an object", field="chunks")
    unknown = set(chunk) - _CHUNK_FIELDS
    if unknown:
        raise InvalidArgumentError(
            f"unknown chunk field(s) {', '.join(sorted(map(str, unknown)))}", field="chunks"
        )
    return NewChunk(
        text=chunk.get("text", ""),
        embedding=chunk.get("embedding"),
        metadata=chunk.get("metadata") or {},
    )
