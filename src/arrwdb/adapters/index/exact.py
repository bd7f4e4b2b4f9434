"""The exact (``flat``) index: brute-force search with numpy.

What it promises, beyond the ``VectorIndex`` port:

* ``search`` is exact: the result is the true ``k`` best (ties in any order), with scores computed
  in float32 (for ``l2`` the returned distances are recomputed directly as ``||q - x||``, so a
  vector's distance to itself is ``0``, not the rounding noise of the dot-product expansion).
* Vectors live in one contiguous float32 matrix that doubles when full (amortised O(1) ``add``)
  and halves when three quarters empty; ``remove`` moves the last row into the hole (O(1) per
  label), so row order is not insertion order.
* ``cosine`` vectors are stored unit-normalised (a zero vector stays zero and scores 0 against
  everything); ``get_vectors`` returns them as stored.
* Adding a label that is already present replaces its vector; a removed label may be added again.
* ``search`` allocates its own working memory (score matrices of at most ``max_score_bytes``,
  64 MiB by default, per chunk of queries): concurrent searches share no mutable state but one
  cache: the rows a filtered search gathers for a read-only ``allowed`` array (a library hands
  every search with one filter the same one until a write) are kept for the next searches
  with it, within ``max(_KEPT_BYTES, _KEPT_FRACTION of the vectors' bytes)``, until the next
  ``add`` or ``remove``. A writeable array is gathered afresh (it could change under its id).

The HNSW adapter keeps an ``ExactIndex`` beside its graph for exact filtered scans.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from arrwdb.domain.models import Matrix, Metric
from arrwdb.domain.ports import Labels, Scores

__all__ = ["ExactIndex", "initial_rows", "padded"]

#: The rows an empty index reserves: 1024, or fewer where that would take more than
#: ``_INITIAL_BYTES`` (a 65,536-d library would otherwise reserve 256 MiB before its first
#: vector).
_INITIAL_CAPACITY = 1024
_INITIAL_BYTES = 4 * 2**20
_SCORE_BUDGET_BYTES = 64 * 2**20
#: Below this fraction of the rows, a filtered search gathers the allowed rows and scores only
#: them; above it, it scores every row and masks out the others.
_GATHER_FRACTION = 0.3
#: What the gathered rows of read-only ``allowed`` arrays may keep: at most _KEPT_ARRAYS of
#: them, in at most max(_KEPT_BYTES, _KEPT_FRACTION x the stored vectors' bytes).
_KEPT_ARRAYS = 8
_KEPT_BYTES = 16 * 2**20
_KEPT_FRACTION = 0.05

_Norms = npt.NDArray[np.float32]
_Rows = npt.NDArray[np.intp]
_Mask = npt.NDArray[np.bool_]


def _prepare_vectors(vectors: Matrix, metric: Metric) -> Matrix:
    """Vectors as the index stores them: unit-normalised for ``cosine``, unchanged otherwise."""
    if metric != "cosine":
        return vectors
    # one pass for the squared norms (einsum: ~4x faster than linalg.norm), then a product
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
    # A zero vector stays zero (hnswlib does the same) instead of becoming NaN.
    inverse = np.zeros_like(norms)
    np.divide(1.0, norms, out=inverse, where=norms > 0)
    normalised: Matrix = vectors * inverse
    return normalised


def _prepare_queries(queries: Matrix, metric: Metric) -> Matrix:
    """Query rows as ``(n, d)`` float32, normalised for ``cosine``."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    return _prepare_vectors(q, metric)


def padded(n_queries: int, k: int) -> tuple[Labels, Scores]:
    """``(n_queries, k)`` results with no hit: labels ``-1``, scores ``-inf``."""
    labels: Labels = np.full((n_queries, max(k, 0)), -1, dtype=np.int64)
    scores: Scores = np.full((n_queries, max(k, 0)), -np.inf, dtype=np.float32)
    return labels, scores


def _exact_search(
    vectors: Matrix,
    labels: Labels,
    queries: Matrix,
    k: int,
    metric: Metric,
    *,
    sq_norms: _Norms | None = None,
    mask: _Mask | None = None,
    budget_bytes: int = _SCORE_BUDGET_BYTES,
) -> tuple[Labels, Scores]:
    """The exact ``k`` best of ``vectors`` (rows labelled ``labels``) for each query row.

    ``vectors`` and ``queries`` must already be prepared (:func:`_prepare_vectors`,
    :func:`_prepare_queries`). ``sq_norms`` are the rows' squared norms (``l2`` only; computed
    when missing). ``mask``, when given, selects the rows that may be returned. Results are
    ``(len(queries), k)``, best first, padded with ``-1`` / ``-inf``.
    """
    n_queries, n_rows = queries.shape[0], vectors.shape[0]
    out_labels, out_scores = padded(n_queries, k)
    candidates = n_rows if mask is None else int(np.count_nonzero(mask))
    kk = min(k, candidates)
    if kk <= 0 or n_queries == 0:
        return out_labels, out_scores
    if metric == "l2" and sq_norms is None:
        sq_norms = np.einsum("ij,ij->i", vectors, vectors)
    excluded = None if mask is None else ~mask
    step = max(1, budget_bytes // max(1, 4 * n_rows))
    for start in range(0, n_queries, step):
        q = queries[start : start + step]
        scores = _score_block(q, vectors, metric, sq_norms)
        if excluded is not None:
            scores[:, excluded] = -np.inf
        rows = _top_rows(scores, kk)
        if metric == "l2":
            top = _exact_l2(q, vectors, rows, budget_bytes)
        else:
            top = np.take_along_axis(scores, rows, axis=1)
            if metric == "cosine":
                np.minimum(top, 1.0, out=top)  # rounding can push a self-match past 1
        order = np.argsort(-top, axis=1, kind="stable")
        rows = np.take_along_axis(rows, order, axis=1)
        top = np.take_along_axis(top, order, axis=1)
        out_labels[start : start + step, :kk] = labels[rows]
        out_scores[start : start + step, :kk] = top
    return out_labels, out_scores


def _score_block(
    q: Matrix, vectors: Matrix, metric: Metric, sq_norms: _Norms | None
) -> npt.NDArray[np.float32]:
    """Scores of every (query, row) pair, larger is better; a fresh matrix."""
    scores: npt.NDArray[np.float32] = q @ vectors.T
    if metric != "l2":
        return scores
    assert sq_norms is not None
    # -||q - x|| = -sqrt(||q||^2 - 2 q.x + ||x||^2), in place; rounding can make it negative.
    scores *= -2.0
    scores += sq_norms[None, :]
    scores += np.einsum("ij,ij->i", q, q)[:, None]
    np.maximum(scores, 0.0, out=scores)
    np.sqrt(scores, out=scores)
    np.negative(scores, out=scores)
    return scores


def _top_rows(scores: npt.NDArray[np.float32], kk: int) -> _Rows:
    """Column indices of the ``kk`` largest scores per row, in no particular order."""
    n = scores.shape[1]
    if kk < n:
        rows: _Rows = np.argpartition(scores, n - kk, axis=1)[:, n - kk :]
        return rows
    return np.broadcast_to(np.arange(n, dtype=np.intp), scores.shape).copy()


def _exact_l2(q: Matrix, vectors: Matrix, rows: _Rows, budget_bytes: int) -> Scores:
    """``-||q_i - x_rows[i, j]||`` computed directly (no cancellation) for the chosen rows."""
    n_q, kk = rows.shape
    out: Scores = np.empty((n_q, kk), dtype=np.float32)
    step = max(1, budget_bytes // max(1, 4 * kk * vectors.shape[1]))
    for s in range(0, n_q, step):
        diff = vectors[rows[s : s + step]] - q[s : s + step, None, :]
        out[s : s + step] = -np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    return out


def _adoptable(
    array: npt.NDArray[np.generic], dtype: type[np.generic], given: bool = False
) -> bool:
    """An array an index may keep as its own storage: writeable, C-ordered, and its own
    memory (or ``given`` away by its caller: ``np.load``'s arrays are views of a buffer only
    they hold)."""
    flags = array.flags
    return bool(
        array.dtype == dtype and flags.c_contiguous and flags.writeable and (flags.owndata or given)
    )


def _strictly_increasing(labels: Labels) -> bool:
    """Sorted and unique, as the port promises ``allowed`` is (checked in O(n), not trusted)."""
    return bool(np.all(labels[1:] > labels[:-1]))


def initial_rows(dimension: int) -> int:
    """How many vectors of ``dimension`` an empty index makes room for."""
    return max(16, min(_INITIAL_CAPACITY, _INITIAL_BYTES // (4 * max(1, dimension))))


class ExactIndex:
    """Exact nearest-neighbour search over a growable float32 matrix (see the module doc)."""

    def __init__(
        self,
        dimension: int,
        metric: Metric,
        *,
        initial_capacity: int | None = None,
        max_score_bytes: int = _SCORE_BUDGET_BYTES,
    ) -> None:
        self._dimension = dimension
        self._metric: Metric = metric
        if initial_capacity is None:
            initial_capacity = initial_rows(dimension)
        self._min_capacity = max(1, initial_capacity)
        self._budget = max_score_bytes
        self._data: Matrix = np.empty((self._min_capacity, dimension), dtype=np.float32)
        self._sq_norms: _Norms = np.empty(self._min_capacity, dtype=np.float32)
        self._row_labels: Labels = np.empty(self._min_capacity, dtype=np.int64)
        self._rows: dict[int, int] = {}
        self._n = 0
        # (labels sorted, their rows): vectorised label -> row lookup for filtered searches.
        # Built lazily by search, dropped by add/remove (which never run during a search).
        self._lookup: tuple[Labels, _Rows] | None = None
        #: id of a read-only allowed array -> (that array, its rows' vectors, labels, squared
        #: norms), dropped by add/remove like _lookup
        self._kept: dict[int, tuple[Labels, Matrix, Labels, _Norms]] = {}
        self._kept_lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def metric(self) -> Metric:
        return self._metric

    def __len__(self) -> int:
        return self._n

    def __contains__(self, label: object) -> bool:
        return label in self._rows

    def __repr__(self) -> str:
        return f"ExactIndex(dimension={self._dimension}, metric={self._metric!r}, len={self._n})"

    def add(self, labels: Labels, vectors: Matrix, *, link: bool = True) -> None:
        del link  # (no graph: every add is whole at once)
        if len(labels) == 0:
            return
        prepared = _prepare_vectors(np.atleast_2d(vectors), self._metric)
        self._reserve(self._n + len(labels))
        n = self._n
        keys = labels.tolist()
        if self._rows.keys().isdisjoint(keys) and len(set(keys)) == len(keys):
            # all new (the usual case): append, with no Python loop
            self._rows.update(zip(keys, range(n, n + len(keys)), strict=True))
            rows: _Rows | slice = slice(n, n + len(keys))
            n += len(keys)
        else:
            rows = np.empty(len(labels), dtype=np.intp)
            for i, label in enumerate(keys):
                row = self._rows.get(label)
                if row is None:
                    row = self._rows[label] = n
                    n += 1
                rows[i] = row
        self._data[rows] = prepared
        self._sq_norms[rows] = np.einsum("ij,ij->i", prepared, prepared)
        self._row_labels[rows] = labels
        self._n = n
        self._lookup = None
        self._kept = {}

    def link(self) -> None:
        """Nothing to do: an exact index has no graph."""

    def remove(self, labels: Labels) -> None:
        data, sq_norms, row_labels = self._data, self._sq_norms, self._row_labels
        for label in labels.tolist():
            row = self._rows.pop(label, None)
            if row is None:
                continue
            last = self._n - 1
            if row != last:
                data[row] = data[last]
                sq_norms[row] = sq_norms[last]
                moved = int(row_labels[last])
                row_labels[row] = moved
                self._rows[moved] = row
            self._n = last
        self._lookup = None
        self._kept = {}
        if self._n <= len(self._data) // 4 and len(self._data) > self._min_capacity:
            self._resize(max(self._min_capacity, len(self._data) // 2))

    def search(
        self,
        queries: Matrix,
        k: int,
        *,
        allowed: Labels | None = None,
        ef: int | None = None,
    ) -> tuple[Labels, Scores]:
        del ef  # exact: nothing to widen
        q = _prepare_queries(queries, self._metric)
        n = self._n
        data, sq_norms, row_labels = self._data[:n], self._sq_norms[:n], self._row_labels[:n]
        if allowed is None:
            return _exact_search(
                data, row_labels, q, k, self._metric, sq_norms=sq_norms, budget_bytes=self._budget
            )
        kept = None if allowed.flags.writeable else self._kept.get(id(allowed))
        if kept is None or kept[0] is not allowed:
            rows = self._rows_of(allowed)
            if len(rows) >= _GATHER_FRACTION * n:
                return self._masked_search(q, k, rows)
            if not _strictly_increasing(allowed):
                rows = np.unique(rows)  # a repeated label must not be returned twice
            kept = (allowed, data[rows], row_labels[rows], sq_norms[rows])
            if not allowed.flags.writeable:
                self._keep(kept)
        _, vectors, labels, norms = kept
        return _exact_search(
            vectors, labels, q, k, self._metric, sq_norms=norms, budget_bytes=self._budget
        )

    def _keep(self, gathered: tuple[Labels, Matrix, Labels, _Norms]) -> None:
        """Keep the gathered rows of a read-only allowed array for the next searches."""
        size = gathered[1].nbytes
        budget = max(_KEPT_BYTES, _KEPT_FRACTION * self._n * self._dimension * 4)
        if size > budget:
            return
        with self._kept_lock:  # (searches run in parallel)
            kept = self._kept
            while kept and (
                len(kept) >= _KEPT_ARRAYS or size + sum(g[1].nbytes for g in kept.values()) > budget
            ):
                kept.pop(next(iter(kept)))
            kept[id(gathered[0])] = gathered

    def _masked_search(self, q: Matrix, k: int, rows: _Rows) -> tuple[Labels, Scores]:
        """A search of every row with those not in ``rows`` masked out."""
        n = self._n
        data, sq_norms, row_labels = self._data[:n], self._sq_norms[:n], self._row_labels[:n]
        mask = np.zeros(n, dtype=np.bool_)
        mask[rows] = True
        return _exact_search(
            data,
            row_labels,
            q,
            k,
            self._metric,
            sq_norms=sq_norms,
            mask=mask,
            budget_bytes=self._budget,
        )

    def search_exact(
        self, queries: Matrix, k: int, *, allowed: Labels | None = None
    ) -> tuple[Labels, Scores]:
        return self.search(queries, k, allowed=allowed)

    def export(self) -> tuple[Labels, Matrix]:
        """Every live label and its vector as stored (normalised under ``cosine``), in row
        order: read-only views, valid until the next ``add`` or ``remove``."""
        labels, data = self._row_labels[: self._n], self._data[: self._n]
        labels.flags.writeable = data.flags.writeable = False
        return labels, data

    @classmethod
    def restore(
        cls,
        dimension: int,
        metric: Metric,
        labels: Labels,
        stored: Matrix,
        *,
        adopt: bool = False,
    ) -> ExactIndex:
        """An index holding ``stored[i]`` under ``labels[i]``, vectors as ``export`` gave them
        (already normalised: not prepared again, so they come back bit for bit). ``adopt``:
        the arrays are the caller's to give away (as ``np.load`` returns them, whose memory
        no one else holds), kept without a copy when their type and layout allow."""
        if stored.shape != (len(labels), dimension) or len(set(labels.tolist())) != len(labels):
            raise ValueError("labels and vectors do not match, or a label repeats")
        n = len(labels)
        index = cls(dimension, metric, initial_capacity=1)
        # take over arrays that are ours to change (as np.load returns them): no copy of
        # what may be hundreds of MiB; anything else is copied
        if _adoptable(stored, np.float32, adopt) and _adoptable(labels, np.int64, adopt):
            index._data, index._row_labels = stored, labels
        else:
            index._data = np.array(stored, dtype=np.float32, order="C")
            index._row_labels = np.array(labels, dtype=np.int64)
        index._sq_norms = np.einsum("ij,ij->i", index._data, index._data)
        index._rows = dict(zip(labels.tolist(), range(n), strict=True))
        index._n = n
        index._min_capacity = initial_rows(dimension)
        return index

    def get_vectors(self, labels: Labels) -> Matrix:
        """The stored vectors; raises ``KeyError`` for a label that is not in the index."""
        rows = [self._rows[label] for label in labels.tolist()]
        out: Matrix = self._data[np.asarray(rows, dtype=np.intp)]
        return out.reshape(len(rows), self._dimension)

    def present(self, labels: Labels) -> Labels:
        """The labels among ``labels`` that are in the index, sorted and unique."""
        found: Labels = self._row_labels[self._rows_of(labels)]
        return found if _strictly_increasing(found) else np.unique(found)

    def _rows_of(self, labels: Labels) -> _Rows:
        """Rows of the labels that are in the index (others are skipped)."""
        lookup = self._lookup
        if lookup is None:
            order = np.argsort(self._row_labels[: self._n], kind="stable")
            lookup = self._lookup = (self._row_labels[order], order)
        sorted_labels, sorted_rows = lookup
        if len(sorted_labels) == 0 or len(labels) == 0:
            return np.empty(0, dtype=np.intp)
        labels = np.asarray(labels, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_labels, labels), len(sorted_labels) - 1)
        found = sorted_labels[pos] == labels
        rows: _Rows = sorted_rows[pos[found]]
        return rows

    def _reserve(self, needed: int) -> None:
        capacity = len(self._data)
        if needed > capacity:
            self._resize(max(needed, 2 * capacity))

    def _resize(self, capacity: int) -> None:
        n = self._n
        data = np.empty((capacity, self._dimension), dtype=np.float32)
        data[:n] = self._data[:n]
        sq_norms = np.empty(capacity, dtype=np.float32)
        sq_norms[:n] = self._sq_norms[:n]
        row_labels = np.empty(capacity, dtype=np.int64)
        row_labels[:n] = self._row_labels[:n]
        self._data, self._sq_norms, self._row_labels = data, sq_norms, row_labels
