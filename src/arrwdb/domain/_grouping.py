"""Search grouped by document (``group_by="document"``): the best chunk of each of the ``k``
best documents, a document ranking by its best chunk.

The index is asked for more chunks than ``k`` (``WIDEN`` times as many) and the answer is
walked best first, keeping the first chunk of each document. When that gives fewer than ``k``
documents and the index had more to give, the search is widened (``WIDEN`` times again, up to
``WIDEN_UP_TO`` chunks); beyond that (one long document whose chunks fill the top of the
ranking) the next search leaves out every chunk of the documents found so far, so that each
search finds at least one more document. An exact index scans every vector whatever it is
asked for: it goes straight to leaving found documents out after its first search.

Runs under the library's read lock (the caller holds it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from arrwdb.domain._library_state import LibraryState
from arrwdb.domain.models import Matrix, SearchHit
from arrwdb.domain.ports import Labels, VectorIndex

#: How many chunks per document wanted the index is first asked for, and by how much a
#: search is widened.
WIDEN: Final = 4
#: The fewest chunks the first search asks for.
FIRST_WIDTH: Final = 64
#: The widest search by widening; then found documents are left out instead.
WIDEN_UP_TO: Final = 4096


def best_per_document(
    state: LibraryState,
    index: VectorIndex,
    queries: Matrix,
    k: int,
    allowed: Labels | None,
    ef: int | None,
) -> list[Sequence[SearchHit]]:
    """For each query row, the best chunk of each of the ``k`` best documents (among the
    ``allowed`` labels, when given), best first."""
    out: list[Sequence[SearchHit]] = []
    for row in range(len(queries)):
        labels, scores = _one(state, index, queries[row : row + 1], k, allowed, ef)
        found = np.asarray([labels], dtype=np.int64).reshape(1, len(labels))
        out.append(
            state.hits(found, np.asarray([scores], dtype=np.float32).reshape(found.shape))[0]
        )
    return out


def _one(
    state: LibraryState,
    index: VectorIndex,
    query: Matrix,
    k: int,
    allowed: Labels | None,
    ef: int | None,
) -> tuple[list[int], list[float]]:
    refs = state.refs
    available = len(index) if allowed is None else len(allowed)
    exact = state.library.index == "flat"
    width = min(available, max(WIDEN * k, FIRST_WIDTH))
    searched = allowed  # what this round may return
    documents: dict[str, None] = {}  # the documents found, in order
    labels_out: list[int] = []
    scores_out: list[float] = []
    while width > 0:
        labels, scores = index.search(query, width, allowed=searched, ef=ef)
        row_labels = labels[0].tolist()
        for label, score in zip(row_labels, scores[0].tolist(), strict=True):
            if label < 0:
                break
            ref = refs[label]
            assert ref is not None  # the index returns only live labels
            document_id = ref[1]
            if document_id in documents:
                continue
            documents[document_id] = None
            labels_out.append(label)
            scores_out.append(score)
            if len(labels_out) == k:
                return labels_out, scores_out
        if not row_labels or row_labels[-1] < 0 or width >= available:
            break  # the index gave all it had
        if not exact and width < WIDEN_UP_TO:
            width = min(available, width * WIDEN)
            continue
        searched = _without(state, allowed, documents)
        available = len(searched)
        width = min(available, max(WIDEN * (k - len(labels_out)), FIRST_WIDTH))
    return labels_out, scores_out


def _without(state: LibraryState, allowed: Labels | None, documents: dict[str, None]) -> Labels:
    """The labels of ``allowed`` (``None``: every live one) that are not of ``documents``."""
    doc_labels = state.doc_labels
    if allowed is None:
        parts = [labels for doc, labels in doc_labels.items() if doc not in documents]
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.sort(np.concatenate(parts))
    found = [doc_labels[doc] for doc in documents if doc in doc_labels]
    if not found:
        return allowed
    left: Labels = np.setdiff1d(allowed, np.concatenate(found), assume_unique=True)
    return left
