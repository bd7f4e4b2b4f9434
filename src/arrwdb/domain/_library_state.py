"""The live state of one library: its index, the label of every chunk, and what search returns.

The service owns one ``LibraryState`` per library. Every change happens under the state's write
lock and every search under its read lock, so a search sees a document's chunks all or none.
Index labels are small integers local to the library; ``refs`` maps them back to chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from arrwdb.domain._rwlock import RWLock
from arrwdb.domain.models import Document, Library, Matrix, SearchHit
from arrwdb.domain.ports import IndexFactory, Labels, VectorIndex

Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """What a search hit needs of a chunk, kept beside the index."""

    chunk_id: str
    document_id: str
    position: int
    text: str
    metadata: Mapping[str, Any]  # document metadata merged with chunk metadata (chunk wins)


class LibraryState:
    def __init__(self, library: Library, make_index: IndexFactory) -> None:
        self.library = library
        self.lock = RWLock()
        self._make_index = make_index
        self.index: VectorIndex | None = None
        self._next_label = 0
        self.refs: dict[int, ChunkRef] = {}
        self.doc_labels: dict[str, Labels] = {}
        self.titles: dict[str, str] = {}
        if library.dimension is not None:
            self._create_index(library.dimension)

    def _create_index(self, dimension: int) -> VectorIndex:
        lib = self.library
        self.index = self._make_index(lib.index, dimension, lib.metric, lib.index_params)
        return self.index

    # -- writes (caller holds the write lock) -------------------------------------------------

    def apply_documents(self, documents: Sequence[Document], vectors: Matrix) -> None:
        """Index ``documents`` (new, or replacing earlier versions); ``vectors`` holds their
        chunks' embeddings in order."""
        for doc in documents:
            if doc.id in self.doc_labels:
                self.remove_document(doc.id)
        n = vectors.shape[0]
        labels = np.arange(self._next_label, self._next_label + n, dtype=np.int64)
        self._next_label += n
        if n:
            index = self.index or self._create_index(int(vectors.shape[1]))
            index.add(labels, vectors)
        refs = self.refs
        start = 0
        for doc in documents:
            count = len(doc.chunks)
            doc_labels = labels[start : start + count]
            self.doc_labels[doc.id] = doc_labels
            self.titles[doc.id] = doc.title
            base = doc.metadata
            for label, chunk in zip(doc_labels.tolist(), doc.chunks, strict=True):
                merged = {**base, **chunk.metadata} if chunk.metadata else base
                refs[label] = ChunkRef(chunk.id, doc.id, chunk.position, chunk.text, merged)
            start += count

    def update_document_fields(self, doc: Document) -> None:
        """A new title or metadata on the same chunks (``doc.chunks`` given): refresh refs."""
        self.titles[doc.id] = doc.title
        labels = self.doc_labels.get(doc.id, np.empty(0, np.int64)).tolist()
        for label, chunk in zip(labels, doc.chunks, strict=True):
            merged = {**doc.metadata, **chunk.metadata} if chunk.metadata else doc.metadata
            self.refs[label] = replace(self.refs[label], metadata=merged)

    def remove_document(self, document_id: str) -> None:
        labels = self.doc_labels.pop(document_id, None)
        self.titles.pop(document_id, None)
        if labels is None:
            return
        for label in labels.tolist():
            self.refs.pop(label, None)
        if self.index is not None and len(labels):
            self.index.remove(labels)

    # -- reads (caller holds the read lock) ---------------------------------------------------

    def allowed_labels(self, predicate: Predicate) -> Labels:
        matching = [label for label, ref in self.refs.items() if predicate(ref.metadata)]
        matching.sort()
        return np.asarray(matching, dtype=np.int64)

    def search(
        self,
        queries: Matrix,
        k: int,
        predicate: Predicate | None,
        ef: int | None,
    ) -> list[list[SearchHit]]:
        index = self.index
        if index is None or len(index) == 0:
            return [[] for _ in range(len(queries))]
        allowed = None
        if predicate is not None:
            allowed = self.allowed_labels(predicate)
            if not len(allowed):
                return [[] for _ in range(len(queries))]
        labels, scores = index.search(queries, k, allowed=allowed, ef=ef)
        out: list[list[SearchHit]] = []
        for row_labels, row_scores in zip(labels, scores, strict=True):
            keep = row_labels >= 0
            row_labels, row_scores = row_labels[keep], row_scores[keep]
            hits = []
            for label, score in zip(row_labels.tolist(), row_scores.tolist(), strict=True):
                ref = self.refs[label]
                hits.append(
                    SearchHit(
                        chunk_id=ref.chunk_id,
                        document_id=ref.document_id,
                        document_title=self.titles.get(ref.document_id, ""),
                        text=ref.text,
                        score=float(score),
                        metadata=ref.metadata,
                        position=ref.position,
                    )
                )
            out.append(hits)
        return out
