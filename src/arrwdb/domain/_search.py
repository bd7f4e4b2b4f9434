"""Search: validate queries, group them, run the index under the library's read lock, and turn
labels into hits. The service hands each call the library's live state (``LibraryState``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from arrwdb.domain import validation as v
from arrwdb.domain._documents import DocumentBuilder
from arrwdb.domain._grouping import best_per_document
from arrwdb.domain._library_state import LibraryState
from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.filters import MATCH_ALL, Predicate, compile_filter
from arrwdb.domain.limits import EF, K
from arrwdb.domain.models import (
    Document,
    Library,
    Matrix,
    SearchHit,
    SearchQuery,
    SearchResult,
    Vector,
)
from arrwdb.domain.ports import Labels, Repository, Scores

#: ``search_many`` searches at most this many queries in one index call...
SEARCH_BLOCK = 256
#: ...and up to this many blocks under one read lock hold (so a write waits for at most ~1,000
#: queries, not for the whole batch), overlapping each block's index search with the previous
#: block's hits. Measured on 2 cores (100k x 384, HNSW): 256 x 4 beat 128 x 8 and 64 x 16.
PIPELINE_BLOCKS = 4


class Searcher:
    """The search use cases over one repository (for embeddings) and one document builder (for
    query vectors)."""

    def __init__(self, builder: DocumentBuilder, repository: Repository) -> None:
        self._builder = builder
        self._repo = repository

    def search_many(
        self, library_id: str, state: LibraryState, queries: Sequence[SearchQuery]
    ) -> list[SearchResult]:
        """Several searches of one library; each result is as a search of one query gives it.

        Queries that share ``k``, ``ef`` and ``filter`` (the same object) are searched together
        (see ``_search_group``); ``took_ms`` is then each query's share of the whole call.
        Errors are those of searching one query after the other: if any query is invalid, the
        first invalid one (in order) raises. The hits are those of ``search``; on the exact
        index a score may differ in its last bit (float32 rounding of a batched product).
        """
        if len(queries) <= 1 or any(query.group_by is not None for query in queries):
            return [self._search_one(library_id, state, query) for query in queries]
        started = time.perf_counter()
        library = state.library
        try:
            plan = self._plan(library, queries)
        except Exception:
            # raise exactly what searching them one by one would (the first bad query's error)
            return [self._search_one(library_id, state, query) for query in queries]
        hits: list[Sequence[SearchHit]] = [[] for _ in queries]
        for (k, ef, predicate), members in plan.items():
            positions = [i for i, _ in members]
            matrix = np.stack([vector for _, vector in members])
            self._search_group(state, positions, matrix, k, ef, predicate, hits)
        for i, query in enumerate(queries):
            hits[i] = self._carrying(library_id, hits[i], query)
        took = (time.perf_counter() - started) * 1000.0 / len(queries)
        return [SearchResult(results=row, took_ms=took) for row in hits]

    def search_vectors(
        self,
        library_id: str,
        state: LibraryState,
        vectors: Matrix,
        *,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include_embedding: bool = False,
        include: Sequence[str] | None = None,
        group_by: str | None = None,
    ) -> list[SearchResult]:
        """``search_many`` of one query per row of ``vectors`` (a 2-D array), all with the
        same ``k``, ``filter``, ``ef``, ``include`` and ``group_by``: the same results and
        errors, without building a ``SearchQuery`` per row or checking the rows one by one."""
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
            raise InvalidArgumentError("vectors must be a 2-D array", field="vectors")
        started = time.perf_counter()
        library = state.library
        matrix = vectors
        count = len(matrix)
        if (
            count < 2
            or include is not None
            or group_by is not None
            or matrix.dtype != np.float32
            or matrix.shape[1] != library.dimension
            or not _all_finite_and_nonzero(matrix)
        ):
            queries = [
                SearchQuery(
                    vector=row,
                    k=k,
                    filter=filter,
                    ef=ef,
                    include_embedding=include_embedding,
                    include=include,
                    group_by=group_by,
                )
                for row in matrix
            ]
            return self.search_many(library_id, state, queries)
        # each query would check k, ef and the filter before its vector: so does this
        k = v.check_k(k)
        ef = v.check_ef(ef)
        predicate = None if filter is None else compile_filter(filter)
        hits: list[Sequence[SearchHit]] = [[] for _ in range(count)]
        self._search_group(
            state,
            range(count),
            np.ascontiguousarray(matrix),
            k,
            ef,
            None if predicate is MATCH_ALL else predicate,
            hits,
        )
        if include_embedding:
            hits = [self._with_embeddings(library_id, row) for row in hits]
        took = (time.perf_counter() - started) * 1000.0 / count
        return [SearchResult(results=row, took_ms=took) for row in hits]

    def _search_group(
        self,
        state: LibraryState,
        positions: Sequence[int],
        matrix: Matrix,
        k: int,
        ef: int | None,
        predicate: Predicate | None,
        hits: list[Sequence[SearchHit]],
    ) -> None:
        """Search the queries of one group (row ``j`` of ``matrix`` is the query at position
        ``positions[j]``), writing each one's hits at its position.

        Up to ``PIPELINE_BLOCKS`` blocks of ``SEARCH_BLOCK`` rows share one read lock hold (and
        one evaluation of the filter). Their index searches run back to back on a helper
        thread (the indexes release the GIL) while this thread turns the previous block's
        results into hits, so the Python work overlaps the search instead of following it.
        """
        per_hold = SEARCH_BLOCK * PIPELINE_BLOCKS
        for start in range(0, len(positions), per_hold):
            stop = min(start + per_hold, len(positions))
            bounds = [(at, min(at + SEARCH_BLOCK, stop)) for at in range(start, stop, SEARCH_BLOCK)]
            with state.lock.read():
                index = state.index
                if index is None:  # no vector yet: no hits
                    continue
                allowed: Labels | None = None
                if predicate is not None:
                    allowed = state.allowed_labels(predicate)
                    if not len(allowed):
                        continue
                searches = _InOrder(
                    partial(index.search, k=k, allowed=allowed, ef=ef),
                    [matrix[a:b] for a, b in bounds],
                )
                try:
                    for j, (a, b) in enumerate(bounds):
                        labels, scores = searches.result(j)
                        for i, row in zip(positions[a:b], state.hits(labels, scores), strict=True):
                            hits[i] = row
                finally:
                    searches.close()  # the helper never outlives the read lock

    def _search_one(self, library_id: str, state: LibraryState, query: SearchQuery) -> SearchResult:
        started = time.perf_counter()
        # the checks of validation.check_k / check_ef, inlined for the usual values
        k = query.k
        if type(k) is not int or not K.low <= k <= K.high:
            k = v.check_k(k)
        ef = query.ef
        if ef is not None and (type(ef) is not int or not EF.low <= ef <= EF.high):
            ef = v.check_ef(ef)
        predicate = None if query.filter is None else compile_filter(query.filter)
        if query.include is not None:
            v.check_include(query.include)
        grouped = v.check_group_by(query.group_by) is not None
        library = state.library
        vector = self._builder.query_vector(library, query)
        hits: Sequence[SearchHit]
        if not len(vector):
            hits = []
        elif grouped:
            hits = _grouped(state, vector[None, :], k, predicate, ef)[0]
        else:
            with state.lock.read():
                hits = state.search(
                    vector[None, :], k, None if predicate is MATCH_ALL else predicate, ef
                )[0]
        hits = self._carrying(library_id, hits, query)
        took = (time.perf_counter() - started) * 1000.0
        return SearchResult(results=hits, took_ms=took)

    def _plan(
        self, library: Library, queries: Sequence[SearchQuery]
    ) -> dict[tuple[int, int | None, Predicate | None], list[tuple[int, Vector]]]:
        """Validate every query and group the ones with a vector by what their index call
        shares: ``(k, ef, predicate)`` -> ``(position, vector)``. A query without a vector (the
        library has no dimension yet) has no hits. Raises on any doubt: the caller then searches
        the queries one by one, which raises the right error."""
        compiled: dict[int, Predicate] = {}
        plan: dict[tuple[int, int | None, Predicate | None], list[tuple[int, Vector]]] = {}
        dimension = library.dimension
        # float32 vectors of the right length are checked together below, in two numpy calls
        batchable: list[tuple[int, tuple[int, int | None, Predicate | None], Vector]] = []
        # text queries are embedded together below, in one call of the embedder
        texts: list[tuple[int, tuple[int, int | None, Predicate | None], str]] = []
        for i, query in enumerate(queries):
            k = v.check_k(query.k)
            ef = v.check_ef(query.ef)
            if query.include is not None:
                v.check_include(query.include)
            spec = query.filter
            if spec is None:
                predicate: Predicate | None = None
            else:
                compiled_predicate = compiled.get(id(spec))
                if compiled_predicate is None:
                    compiled_predicate = compiled[id(spec)] = compile_filter(spec)
                predicate = None if compiled_predicate is MATCH_ALL else compiled_predicate
            key = (k, ef, predicate)
            given = query.vector
            if (
                query.text is None
                and type(given) is np.ndarray
                and given.dtype == np.float32
                and given.shape == (dimension,)
            ):
                batchable.append((i, key, given))
                continue
            if query.text is not None and given is None:
                texts.append((i, key, query.text))
                continue
            vector = self._builder.query_vector(library, query)
            if len(vector):
                plan.setdefault(key, []).append((i, vector))
        if batchable:
            matrix = np.stack([given for _, _, given in batchable])
            if not _all_finite_and_nonzero(matrix):
                raise InvalidArgumentError("a query vector needs the full checks")
            for (i, key, _), row in zip(batchable, matrix, strict=True):
                plan.setdefault(key, []).append((i, row))
        if texts:
            embedded = self._builder.text_query_vectors(library, [text for _, _, text in texts])
            for (i, key, _), row in zip(texts, () if embedded is None else embedded, strict=False):
                plan.setdefault(key, []).append((i, row))
        return plan

    def _carrying(
        self, library_id: str, hits: Sequence[SearchHit], query: SearchQuery
    ) -> Sequence[SearchHit]:
        """``hits`` with what the query's ``include`` names: embeddings added, text or
        metadata left out (``None``)."""
        include = query.include
        if query.include_embedding or (include is not None and "embedding" in include):
            hits = self._with_embeddings(library_id, hits)
        if include is None:
            return hits
        text, metadata = "text" in include, "metadata" in include
        if text and metadata:
            return hits
        return [
            replace(
                hit,
                text=hit.text if text else None,
                metadata=hit.metadata if metadata else None,
            )
            for hit in hits
        ]

    def _with_embeddings(self, library_id: str, hits: Sequence[SearchHit]) -> list[SearchHit]:
        docs: dict[str, Document | None] = {}
        out = []
        for hit in hits:
            if hit.document_id not in docs:
                docs[hit.document_id] = self._repo.get_document(library_id, hit.document_id)
            doc = docs[hit.document_id]
            chunk = next((c for c in doc.chunks if c.id == hit.chunk_id), None) if doc else None
            out.append(replace(hit, embedding=chunk.embedding if chunk else None))
        return out


def _grouped(
    state: LibraryState, queries: Matrix, k: int, predicate: Predicate | None, ef: int | None
) -> list[Sequence[SearchHit]]:
    """The best chunk of each of the ``k`` best documents, per query row
    (``_grouping.best_per_document``), under the library's read lock."""
    with state.lock.read():
        index = state.index
        if index is None:
            return [[] for _ in range(len(queries))]
        allowed: Labels | None = None
        if predicate is not None and predicate is not MATCH_ALL:
            allowed = state.allowed_labels(predicate)
            if not len(allowed):
                return [[] for _ in range(len(queries))]
        return best_per_document(state, index, queries, k, allowed, ef)


def _all_finite_and_nonzero(matrix: Matrix) -> bool:
    """Every row finite and not zero: its squared norm, in float64 (no overflow), is in
    ``(0, inf)`` (as in ``validation.as_vector``)."""
    wide = matrix.astype(np.float64)
    squared = np.einsum("ij,ij->i", wide, wide)
    return bool(((squared > 0.0) & (squared < np.inf)).all())


class _InOrder:
    """``fn(item)`` for each of ``items``, computed in order on a helper thread (when there is
    more than one) while the caller consumes the results in order with ``result(j)``.
    ``close()`` stops the helper after its current item and waits for it."""

    def __init__(self, fn: Callable[[Matrix], tuple[Labels, Scores]], items: list[Matrix]) -> None:
        self._fn = fn
        self._items = items
        self._results: list[tuple[Labels, Scores] | None] = [None] * len(items)
        self._errors: list[BaseException | None] = [None] * len(items)
        self._ready = [threading.Event() for _ in items]
        self._stop = False
        self._thread: threading.Thread | None = None
        if len(items) > 1:
            self._thread = threading.Thread(target=self._run, name="arrwdb-search", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        for j, item in enumerate(self._items):
            if self._stop:
                break
            try:
                self._results[j] = self._fn(item)
            except BaseException as exc:  # handed to the caller by result()
                self._errors[j] = exc
            finally:
                self._ready[j].set()

    def result(self, j: int) -> tuple[Labels, Scores]:
        if self._thread is None:
            return self._fn(self._items[j])
        self._ready[j].wait()
        error = self._errors[j]
        if error is not None:
            raise error
        found = self._results[j]
        self._results[j] = None
        assert found is not None
        return found

    def close(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join()
