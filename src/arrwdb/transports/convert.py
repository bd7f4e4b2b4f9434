"""Conversions between the domain's models and the wire's msgspec Structs, for every transport."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from msgspec import UNSET

from arrwdb.domain.models import (
    Chunk,
    Document,
    Library,
    NewChunk,
    NewDocument,
    Page,
    SearchQuery,
    SearchResult,
    format_timestamp,
)
from arrwdb.transports.messages import (
    ChunkIn,
    ChunkOut,
    DocumentIn,
    DocumentOut,
    DocumentPage,
    IndexParams,
    LibraryOut,
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


def search_out(result: SearchResult, include: Sequence[str] | None = None) -> SearchOut:
    """The wire answer; ``include`` (default text and metadata) names what hits carry."""
    text = include is None or "text" in include
    metadata = include is None or "metadata" in include
    return SearchOut(
        results=[
            SearchHitOut(
                chunk_id=h.chunk_id,
                document_id=h.document_id,
                document_title=h.document_title,
                text=h.text if text and h.text is not None else UNSET,
                score=float(h.score),
                metadata=dict(h.metadata) if metadata and h.metadata is not None else UNSET,
                position=h.position,
                embedding=None if h.embedding is None else h.embedding.tolist(),
            )
            for h in result.results
        ],
        took_ms=result.took_ms,
    )


@dataclass(frozen=True, slots=True)
class Searched:
    """A search's result and what its hits are to carry (the search action's result)."""

    result: SearchResult
    include: Sequence[str] | None

    def out(self) -> SearchOut:
        return search_out(self.result, self.include)


# -- wire -> domain -------------------------------------------------------------------------


def new_chunks(chunks: list[ChunkIn] | None) -> list[NewChunk] | None:
    if chunks is None:
        return None
    return [NewChunk(text=c.text, embedding=c.embedding, metadata=c.metadata) for c in chunks]


def document_page(page: Page) -> DocumentPage:
    return DocumentPage(
        documents=[document_out(d) for d in page.documents], next_cursor=page.next_cursor
    )


def new_document(doc: DocumentIn) -> NewDocument:
    return NewDocument(
        title=doc.title,
        text=doc.text,
        chunks=new_chunks(doc.chunks),
        metadata=doc.metadata,
        id=doc.id,
    )


def wants_embedding(q: SearchIn) -> bool:
    """Whether a search's hits carry their embeddings (``include_embedding`` or ``include``)."""
    return q.include_embedding or (q.include is not None and "embedding" in q.include)


def search_query(q: SearchIn) -> SearchQuery:
    return SearchQuery(
        text=q.query_text,
        vector=q.query_vector,
        k=q.k,
        filter=q.filter,
        ef=q.ef,
        include_embedding=wants_embedding(q),
        include=q.include,
        group_by=q.group_by,
    )
