"""The live state of one library: its record, its index, the label of every chunk, and what
search returns. One part of the projection (``projection``): the projector applies changes to
it, under its write lock, in position order; every search holds the read lock, so a search sees
a committed batch all or none.

Index labels are small integers local to the library, handed out in order and never reused;
``refs[label]`` is the chunk a label stands for (``None`` once removed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any, Final

import numpy as np

from arrwdb.domain._rwlock import RWLock
from arrwdb.domain.changes import (
    DocumentDeleted,
    DocumentSaved,
    LibraryUpdated,
    Tally,
    library_after,
)
from arrwdb.domain.filters import Predicate
from arrwdb.domain.models import Document, Library, Matrix, SearchHit
from arrwdb.domain.ports import IndexFactory, Labels, SavedIndex, Scores, VectorIndex

#: What a search hit needs of a chunk, kept beside the index: ``(chunk_id, document_id,
#: document title, text, metadata, position)``, the metadata being the document's merged with
#: the chunk's (chunk wins). A plain tuple, not a dataclass: a search unpacks one per hit in a
#: single step (~20% less time per hit than six attribute reads).
ChunkRef = tuple[str, str, str, str, Mapping[str, Any], int]
METADATA: Final = 4  # where a ChunkRef holds the metadata
#: The changes a library's state applies itself (creation and deletion are the projection's).
LibraryChange = LibraryUpdated | DocumentSaved | DocumentDeleted


class LibraryState:
    def __init__(self, library: Library, make_index: IndexFactory) -> None:
        self.library = library
        self.lock = RWLock()
        self._make_index = make_index
        self.index: VectorIndex | None = None
        self._next_label = 0
        # a list, not a dict: labels are dense, and a search reads one ref per hit (one memory
        # access fewer per hit than a dict lookup, which shows at 10^5 chunks)
        self.refs: list[ChunkRef | None] = []
        self.doc_labels: dict[str, Labels] = {}
        #: index changes (labels added or removed) since the index was last saved or loaded
        self.unsaved = 0
        if library.dimension is not None:
            self._create_index(library.dimension)

    def _create_index(self, dimension: int) -> VectorIndex:
        lib = self.library
        self.index = self._make_index(lib.index, dimension, lib.metric, lib.index_params)
        return self.index

    # -- changes (the projector holds the write lock) -----------------------------------------

    def apply(self, changes: Sequence[LibraryChange], vectors: Matrix | None = None) -> None:
        """Apply changes of this library, in position order. ``vectors``, when given, holds
        the embeddings of every chunk the ``DocumentSaved`` changes carry, in order (what the
        writer had stacked): it spares stacking them again when they all go to the index."""
        pending: list[Document] = []  # saved documents whose chunks go to the index together
        in_pending: set[str] = set()
        stacked = vectors is not None
        tally = Tally(self.library.dimension)
        for change in changes:
            if isinstance(change, LibraryUpdated):
                self.library = library_after(tally.applied_to(self.library), change, None)
                tally = Tally(self.library.dimension)
                continue
            doc_id = change.document.id if isinstance(change, DocumentSaved) else change.document_id
            if doc_id in in_pending:  # the same document twice: index what came before first
                self.add_documents(pending)
                pending, stacked = [], False
                in_pending.clear()
            labels = self.doc_labels.get(doc_id)
            tally.add(change, None if labels is None else len(labels))
            if isinstance(change, DocumentDeleted):
                self.remove_document(doc_id)
            elif labels is not None and self._same_chunks(labels, change.document):
                self._refresh(labels, change.document)
                stacked = False
            else:
                self.remove_document(doc_id)
                pending.append(change.document)
                in_pending.add(doc_id)
        self.library = tally.applied_to(self.library)
        if stacked and vectors is not None and len(vectors) == sum(len(d.chunks) for d in pending):
            self.add_documents(pending, vectors)
        else:
            self.add_documents(pending)

    def add_documents(self, documents: Sequence[Document], vectors: Matrix | None = None) -> None:
        """Index ``documents`` (none of them indexed yet); ``vectors`` holds their chunks'
        embeddings in order (``None``: stacked from the chunks)."""
        if not documents:
            return
        if vectors is None:
            vectors = stack_embeddings(documents)
        n = vectors.shape[0]
        labels = np.arange(self._next_label, self._next_label + n, dtype=np.int64)
        self._next_label += n
        self.unsaved += n
        if n:
            index = self.index or self._create_index(int(vectors.shape[1]))
            index.add(labels, vectors)
        refs = self.refs
        assert len(refs) == self._next_label - n  # the new labels continue the list
        start = 0
        for doc in documents:
            count = len(doc.chunks)
            self.doc_labels[doc.id] = labels[start : start + count]
            refs.extend(_chunk_refs(doc))
            start += count

    def _same_chunks(self, labels: Labels, doc: Document) -> bool:
        refs = self.refs
        if len(labels) != len(doc.chunks):
            return False
        for label, chunk in zip(labels.tolist(), doc.chunks, strict=True):
            ref = refs[label]
            if ref is None or ref[0] != chunk.id:
                return False
        return True

    def _refresh(self, labels: Labels, doc: Document) -> None:
        """A new title or metadata on the same chunks: refresh their refs."""
        refs = self.refs
        for label, ref in zip(labels.tolist(), _chunk_refs(doc), strict=True):
            refs[label] = ref

    def remove_document(self, document_id: str) -> None:
        labels = self.doc_labels.pop(document_id, None)
        if labels is None:
            return
        refs = self.refs
        for label in labels.tolist():
            refs[label] = None
        if self.index is not None and len(labels):
            self.index.remove(labels)
            self.unsaved += len(labels)

    def restore(self, documents: Sequence[Document], saved: SavedIndex) -> int:
        """Take a saved index (on open, before any other change) and bring it in line with
        ``documents``, the stored truth: a document whose chunks all have a label in it keeps
        them; the others are indexed anew, and labels
        of chunks that are gone are removed. Returns the number of labels added or removed."""
        assert self._next_label == 0, "restore comes before any other change"
        label_of = {chunk_id: label for label, chunk_id in enumerate(saved.chunk_ids) if chunk_id}
        self.index = saved.index
        self._next_label = len(saved.chunk_ids)
        refs: list[ChunkRef | None] = [None] * self._next_label
        kept: set[int] = set()
        missing: list[Document] = []
        for doc in documents:
            found = [label_of.get(chunk.id) for chunk in doc.chunks]
            if not doc.chunks or None in found:
                missing.append(doc)
                continue
            labels = np.asarray(found, dtype=np.int64)
            self.doc_labels[doc.id] = labels
            for label, ref in zip(found, _chunk_refs(doc), strict=True):
                assert label is not None
                refs[label] = ref
                kept.add(label)
        self.refs = refs
        stale = np.asarray(sorted(set(label_of.values()) - kept), dtype=np.int64)
        if len(stale):
            self.index.remove(stale)
        self.add_documents(missing)
        self.unsaved = len(stale) + sum(len(doc.chunks) for doc in missing)
        return self.unsaved

    def chunk_ids(self) -> list[str | None]:
        """The chunk id of every label handed out (``None`` once removed), for saving."""
        return [None if ref is None else ref[0] for ref in self.refs]

    # -- reads (caller holds the read lock) ---------------------------------------------------

    def allowed_labels(self, predicate: Predicate) -> Labels:
        matching = [
            label
            for label, ref in enumerate(self.refs)
            if ref is not None and predicate(ref[METADATA])
        ]
        return np.asarray(matching, dtype=np.int64)  # sorted: labels ascend

    def search(
        self,
        queries: Matrix,
        k: int,
        predicate: Predicate | None,
        ef: int | None,
    ) -> list[list[SearchHit]]:
        index = self.index
        if index is None:  # (an empty index pads every row: no hits either)
            return [[] for _ in range(len(queries))]
        allowed = None
        if predicate is not None:
            allowed = self.allowed_labels(predicate)
            if not len(allowed):
                return [[] for _ in range(len(queries))]
        labels, scores = index.search(queries, k, allowed=allowed, ef=ef)
        return self.hits(labels, scores)

    def hits(self, labels: Labels, scores: Scores) -> list[list[SearchHit]]:
        """The hits of an index result (one row per query; ``-1`` labels are padding)."""
        refs = self.refs
        new = _new_hit
        set_chunk, set_doc, set_title, set_text, set_score, set_meta, set_pos, set_emb = _SETTERS
        out: list[list[SearchHit]] = []
        for row_labels, row_scores in zip(labels.tolist(), scores.tolist(), strict=True):
            hits = []
            for label, score in zip(row_labels, row_scores, strict=True):
                if label < 0:
                    continue
                ref = refs[label]
                assert ref is not None  # the index returns only live labels
                chunk_id, document_id, title, text, metadata, position = ref
                # SearchHit(...) field by field (see _SETTERS): the same object, ~2x faster
                hit = new(SearchHit)
                set_chunk(hit, chunk_id)
                set_doc(hit, document_id)
                set_title(hit, title)
                set_text(hit, text)
                set_score(hit, score)
                set_meta(hit, metadata)
                set_pos(hit, position)
                set_emb(hit, None)
                hits.append(hit)
            out.append(hits)
        return out


def stack_embeddings(documents: Sequence[Document]) -> Matrix:
    """Every chunk's embedding of ``documents``, in order, as one float32 matrix."""
    rows = [c.embedding for d in documents for c in d.chunks if c.embedding is not None]
    if not rows:
        return np.empty((0, 0), dtype=np.float32)
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def _chunk_refs(doc: Document) -> list[ChunkRef]:
    title, base = doc.title, doc.metadata
    return [
        (
            chunk.id,
            doc.id,
            title,
            chunk.text,
            {**base, **chunk.metadata} if chunk.metadata else base,
            chunk.position,
        )
        for chunk in doc.chunks
    ]


def _hit_setters() -> tuple[Callable[[SearchHit, Any], None], ...]:
    """Setters of ``SearchHit``'s slots, in the order ``hits`` uses them.

    ``SearchHit`` is a frozen slotted dataclass: its generated ``__init__`` sets each field with
    ``object.__setattr__``, which costs about twice as much as calling the slot's own setter.
    Building hits is most of the Python time of a search (k per query), so ``hits`` sets the
    slots directly. That gives the very object ``SearchHit(...)`` would, as long as the class has
    exactly these fields and no ``__post_init__``: if that ever changes, importing this module
    fails (so every test does) until ``hits`` is brought in line.
    """
    names = tuple(f.name for f in fields(SearchHit))
    slots = getattr(SearchHit, "__slots__", ())
    if names != _HIT_FIELDS or tuple(slots) != _HIT_FIELDS or hasattr(SearchHit, "__post_init__"):
        raise AssertionError(f"SearchHit has changed ({names}): update LibraryState.hits")
    return tuple(getattr(SearchHit, name).__set__ for name in _HIT_FIELDS)


_HIT_FIELDS = (
    "chunk_id",
    "document_id",
    "document_title",
    "text",
    "score",
    "metadata",
    "position",
    "embedding",
)
_SETTERS = _hit_setters()
_new_hit = object.__new__
