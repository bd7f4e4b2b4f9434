"""The live state of one library: its record, its index, the label of every chunk, and what
search returns. One part of the projection (``projection``): the projector applies changes to
it, under its write lock, in position order; every search holds the read lock, so a search sees
a committed batch all or none.

Index labels are small integers local to the library, handed out in order and never reused;
``refs[label]`` is the chunk a label stands for (``None`` once removed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from arrwdb.domain._batch_journal import BatchJournal
from arrwdb.domain._columns import MetadataColumns
from arrwdb.domain._hits import ChunkRef, Hits
from arrwdb.domain._newest import Newest
from arrwdb.domain._rwlock import RWLock
from arrwdb.domain.changes import (
    DocumentDeleted,
    DocumentSaved,
    LibraryUpdated,
    Tally,
    library_after,
)
from arrwdb.domain.filters import Predicate, plan_of
from arrwdb.domain.models import Document, Library, Matrix, SearchHit
from arrwdb.domain.ports import IndexFactory, Labels, SavedIndex, Scores, VectorIndex

METADATA: Final = 4  # where a ChunkRef holds the metadata
#: How many filters' allowed labels a library keeps between changes.
ALLOWED_KEPT: Final = 8
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
        #: the chunks' metadata in columns, for filters (made when a filter first reads them)
        self.columns = MetadataColumns()
        #: the allowed labels of the last filters searched (a plan's repr -> labels), until
        #: the next change: a filter searched again costs nothing to evaluate
        self._allowed: Newest[str, Labels] = Newest(ALLOWED_KEPT)
        #: while the projector applies a batch to a watched library: what it does to the
        #: chunks, change by change (for the watches)
        self.journal: BatchJournal | None = None
        #: index changes (labels added or removed) since the index was last saved or loaded
        self.unsaved = 0
        if library.dimension is not None:
            self._create_index(library.dimension)

    def _create_index(self, dimension: int) -> VectorIndex:
        lib = self.library
        self.index = self._make_index(lib.index, dimension, lib.metric, lib.index_params)
        return self.index

    # -- changes (the projector holds the write lock) -----------------------------------------

    def apply(
        self, changes: Sequence[LibraryChange], vectors: Matrix | None = None, *, link: bool = True
    ) -> None:
        """Apply changes of this library, in position order. ``vectors``, when given, holds
        the embeddings of every chunk the ``DocumentSaved`` changes carry, in order (what the
        writer had stacked): it spares stacking them again when they all go to the index.
        ``link=False``: an approximate index may leave its graph work for ``link``."""
        pending: list[Document] = []  # saved documents whose chunks go to the index together
        steps: list[int] = []  # (their steps, for the journal)
        in_pending: set[str] = set()
        stacked = vectors is not None
        tally = Tally(self.library.dimension)
        journal = self.journal
        for change in changes:
            if isinstance(change, LibraryUpdated):
                self.library = library_after(tally.applied_to(self.library), change, None)
                tally = Tally(self.library.dimension)
                continue
            step = -1
            if journal is not None:
                step = journal.step
                journal.step += 1
            doc_id = change.document.id if isinstance(change, DocumentSaved) else change.document_id
            if doc_id in in_pending:  # the same document twice: index what came before first
                self.add_documents(pending, steps=steps)
                pending, steps, stacked = [], [], False
                in_pending.clear()
            labels = self.doc_labels.get(doc_id)
            tally.add(change, None if labels is None else len(labels))
            if isinstance(change, DocumentDeleted):
                self.remove_document(doc_id, step)
            elif labels is not None and self._same_chunks(labels, change.document):
                self._refresh(labels, change.document, step)
                stacked = False
            else:
                self.remove_document(doc_id, step)
                pending.append(change.document)
                steps.append(step)
                in_pending.add(doc_id)
        self.library = tally.applied_to(self.library)
        if stacked and vectors is not None and len(vectors) == sum(len(d.chunks) for d in pending):
            self.add_documents(pending, vectors, link=link, steps=steps)
        else:
            self.add_documents(pending, link=link, steps=steps)

    def start_journal(self) -> None:
        """Keep a journal of the next batch's changes to the chunks (for the watches)."""
        self.journal = BatchJournal(self._next_label)

    def link(self) -> None:
        """Finish the index's graph work an ``apply(..., link=False)`` left."""
        if self.index is not None:
            self.index.link()

    def add_documents(
        self,
        documents: Sequence[Document],
        vectors: Matrix | None = None,
        *,
        link: bool = True,
        steps: Sequence[int] = (),
    ) -> None:
        """Index ``documents`` (none of them indexed yet); ``vectors`` holds their chunks'
        embeddings in order (``None``: stacked from the chunks); ``steps``: the journal's
        step of each."""
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
            index.add(labels, vectors, link=link)
        self._allowed.clear()
        refs = self.refs
        first = len(refs)
        assert first == self._next_label - n  # the new labels continue the list
        start = 0
        for doc in documents:
            count = len(doc.chunks)
            self.doc_labels[doc.id] = labels[start : start + count]
            refs.extend(chunk_refs(doc))
            start += count
        if self.journal is not None and steps:
            counts = [len(doc.chunks) for doc in documents]
            self.journal.created(labels, np.repeat(np.asarray(steps, dtype=np.int64), counts))
        self.columns.extend(first, (ref[METADATA] for ref in refs[first:] if ref is not None))

    def _same_chunks(self, labels: Labels, doc: Document) -> bool:
        refs = self.refs
        if len(labels) != len(doc.chunks):
            return False
        for label, chunk in zip(labels.tolist(), doc.chunks, strict=True):
            ref = refs[label]
            if ref is None or ref[0] != chunk.id:
                return False
        return True

    def _refresh(self, labels: Labels, doc: Document, step: int = -1) -> None:
        """A new title or metadata on the same chunks: refresh their refs."""
        self._allowed.clear()
        refs = self.refs
        if self.journal is not None and step >= 0:
            self.journal.refreshed(step, labels, [refs[label] for label in labels.tolist()])
        new = chunk_refs(doc)
        for label, ref in zip(labels.tolist(), new, strict=True):
            refs[label] = ref
        self.columns.refresh(labels.tolist(), (ref[METADATA] for ref in new))

    def remove_document(self, document_id: str, step: int = -1) -> None:
        labels = self.doc_labels.pop(document_id, None)
        if labels is None:
            return
        self._allowed.clear()
        refs = self.refs
        if self.journal is not None and step >= 0 and self.index is not None and len(labels):
            before = [refs[label] for label in labels.tolist()]
            self.journal.removed(step, labels, before, self.index.get_vectors(labels))
        for label in labels.tolist():
            refs[label] = None
        self.columns.remove(labels)
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
            for label, ref in zip(found, chunk_refs(doc), strict=True):
                assert label is not None
                refs[label] = ref
                kept.add(label)
        self.refs = refs
        self.columns.reset()
        self._allowed.clear()
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

    def _metadata_of(self, label: int) -> Mapping[str, Any] | None:
        ref = self.refs[label]
        return None if ref is None else ref[METADATA]

    def allowed_labels(self, predicate: Predicate) -> Labels:
        """The live labels whose chunk passes the filter, ascending: evaluated over the
        metadata columns when the filter has a plan, else chunk by chunk."""
        plan = plan_of(predicate)
        if plan is not None:
            key = repr(plan)  # (typed: 1, 1.0 and True are three filters)
            allowed = self._allowed.get(key)
            if allowed is None:
                mask = self.columns.mask(plan, predicate, len(self.refs), self._metadata_of)
                allowed = np.flatnonzero(mask).astype(np.int64, copy=False)
                allowed.flags.writeable = False
                self._allowed.put(key, allowed)
            return allowed
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
    ) -> list[Sequence[SearchHit]]:
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

    def hits(self, labels: Labels, scores: Scores) -> list[Sequence[SearchHit]]:
        """The hits of an index result (one row per query; ``-1`` labels are padding): the
        chunks found, taken now (the caller holds the read lock), their objects built when
        read (``Hits``)."""
        refs = self.refs
        out: list[Sequence[SearchHit]] = []
        for row_labels, row_scores in zip(labels.tolist(), scores.tolist(), strict=True):
            if row_labels and row_labels[-1] < 0:  # padded: fewer than k found
                kept = [i for i, label in enumerate(row_labels) if label >= 0]
                row_labels = [row_labels[i] for i in kept]
                row_scores = [row_scores[i] for i in kept]
            # (the index returns only live labels: no ref is None)
            found: list[ChunkRef] = [refs[label] for label in row_labels]
            out.append(Hits(found, row_scores))
        return out


def stack_embeddings(documents: Sequence[Document]) -> Matrix:
    """Every chunk's embedding of ``documents``, in order, as one float32 matrix."""
    rows = [c.embedding for d in documents for c in d.chunks if c.embedding is not None]
    if not rows:
        return np.empty((0, 0), dtype=np.float32)
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def chunk_refs(doc: Document) -> list[ChunkRef]:
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
