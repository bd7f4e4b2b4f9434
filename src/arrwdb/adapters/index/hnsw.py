"""The approximate (``hnsw``) index, on hnswlib.

What it promises, beyond the ``VectorIndex`` port:

* Scores use the port's larger-is-better scale: ``cosine`` similarity (hnswlib's ``1 - d``),
  inner product (``1 - d``) and ``-sqrt(d)`` for ``l2`` (hnswlib reports squared distances).
* The graph grows as vectors arrive (capacity doubles before an ``add`` that would overflow).
  ``remove`` marks labels deleted: they stay in the graph as waypoints but are never returned,
  until a label the graph has never held is added: it takes over a deleted slot (hnswlib's
  ``replace_deleted``), so churn (documents replaced again and again) does not grow the graph
  past its peak live size. A removed label may be added again (its old slot is reused while
  it still has one); re-adding a live label replaces its vector.
* Beside the graph it keeps the live vectors in an :class:`ExactIndex` (unit-normalised for
  ``cosine``; ``get_vectors`` returns them so). That costs a second copy of the vectors, but
  hnswlib's own ``get_items`` goes through Python lists of floats (~10 us per 128-d vector),
  far too slow for the exact scans below.
* Filtered search is planned by selectivity. When few labels are allowed (at most
  ``max(2000, 2% of the live count)``), it is an exact brute-force scan of those vectors, so the
  result is the true ``k`` best among them. When many are (a filter that keeps a fraction ``f``
  with ``2 k / f <= 400``), it is an unfiltered graph search for ``2 k / f`` results (at least
  that ``ef``) of which the best allowed ``k`` are kept: no Python call per candidate. In
  between, it is a graph search that only admits allowed labels (hnswlib's ``filter``, with a
  doubled ``ef``). A row either cannot fill falls back: the widened one to the filtered graph
  search, that one to the exact scan. An unfiltered search that hnswlib cannot fill (a graph cut
  apart by deletions) falls back to an exact scan of every live vector.
* A read-only ``allowed`` array (a library hands every search with one filter the same one
  until a write) is kept, for the last few filters, in the forms the searches use: sorted, a
  lookup table the widened search tests its candidates with, and the set hnswlib's filter calls.
  A writeable array is read afresh every search (it could change under the same id).
* ``ef`` is global to an hnswlib index, but hnswlib searches with ``max(its ef, k)``. So the
  graph's own ``ef`` is kept at 1 and every search asks for ``max(ef, k)`` results (never more
  than are live) and keeps the best ``k``: the same search as ``set_ef(ef)``, touching no shared
  state and taking no lock, so all searches (filtered or not, any ``ef``) run in parallel
  (hnswlib releases the GIL).
* ``add(..., link=False)`` stores the vectors at once (exact scans, ``get_vectors`` and ``len``
  see them) and leaves the graph insertion for ``link()`` (also done first by ``search``,
  ``remove``, ``save`` and the next ``add``): the projector scores a batch for live queries in
  between, under the library's write lock.
* Labels must be non-negative (hnswlib labels are unsigned).
* ``save(directory)`` writes the graph (hnswlib's own format, deleted marks included) and the
  exact copy (``.npy``); ``load`` reads them back into the same index, with no rebuild.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt

from arrwdb.adapters.index.exact import ExactIndex, initial_rows, padded
from arrwdb.domain._newest import Newest
from arrwdb.domain.models import IndexParams, Matrix, Metric
from arrwdb.domain.ports import Labels, Scores

__all__ = ["HnswIndex"]

_SPACES: dict[Metric, str] = {"cosine": "cosine", "ip": "ip", "l2": "l2"}
#: A filtered search scans the allowed vectors exactly when there are at most
#: ``max(_BRUTE_FORCE_MAX, _BRUTE_FORCE_FRACTION * len(index))`` of them. Measured on 2 cores
#: (50k-100k vectors, 128-384 d): the scan costs ~0.5 ms per 1,000 allowed vectors; the
#: filtered graph search ~7 ms at 1,000 allowed, ~3 ms at 2,000, under 1 ms past 5,000.
_BRUTE_FORCE_MAX = 2000
_BRUTE_FORCE_FRACTION = 0.02
#: A filtered graph search uses ``ef = _FILTER_EF_FACTOR * max(ef, k)``: the allowed part of
#: the graph is sparser. Measured (20k clustered 128-d, only far clusters allowed): recall@10
#: 0.92 at ef 64, 0.97 at 128, for ~35% more time.
_FILTER_EF_FACTOR = 2
#: A filter that keeps a large part of the index is applied after an unfiltered graph search
#: for ``_POST_FILTER_WIDTH * k / kept fraction`` results (searched with at least that ef):
#: the allowed best ``k`` are among them (a row that finds fewer falls back to the filtered
#: graph search). Not past ``_POST_FILTER_MAX`` results: a narrower filter is searched in the
#: graph (hnswlib calls Python per candidate there) or scanned.
_POST_FILTER_WIDTH = 2.0
_POST_FILTER_MAX = 400
#: How many filters' allowed labels an index keeps in their search forms (``_Allowed``).
_ALLOWED_KEPT = 8
#: The files of a saved index, in its directory.
GRAPH_FILE = "graph.hnsw"
LABELS_FILE = "labels.npy"
VECTORS_FILE = "vectors.npy"


def _ascending(labels: Labels) -> bool:
    return len(labels) < 2 or bool((labels[1:] > labels[:-1]).all())


class _Allowed:
    """A filter's allowed labels in the forms the graph searches use: sorted, a lookup table
    (for the candidates of a post-filtered search) and a set (for hnswlib's filter callable),
    the last two made when first needed. Kept for the next searches given the same read-only
    array: a library hands every search with one filter the same array until a write."""

    __slots__ = ("_set", "_table", "given", "labels")

    def __init__(self, given: Labels) -> None:
        self.given = given  # (held: its id is the cache key)
        self.labels: Labels = given if _ascending(given) else np.unique(given)
        self.labels.flags.writeable = given.flags.writeable  # (kept read-only: see ExactIndex)
        self._table: npt.NDArray[np.bool_] | None = None
        self._set: set[int] | None = None

    def admitted(self, found: Labels) -> npt.NDArray[np.bool_]:
        """Which of ``found`` (non-negative labels, any shape) are allowed."""
        table = self._table
        if table is None:  # one entry per label up to the largest allowed, then one False
            table = np.zeros(int(self.labels[-1]) + 2, dtype=np.bool_)
            table[self.labels] = True
            self._table = table
        return table[np.minimum(found, len(table) - 1)]

    def contains(self) -> Callable[[int], bool]:
        if self._set is None:
            self._set = set(self.labels.tolist())
        return self._set.__contains__


class HnswIndex:
    """An HNSW graph index over hnswlib (see the module doc for its promises)."""

    def __init__(
        self,
        dimension: int,
        metric: Metric,
        params: IndexParams | None = None,
        *,
        initial_capacity: int | None = None,
        add_threads: int = -1,
        seed: int = 100,
    ) -> None:
        params = params or IndexParams()
        if initial_capacity is None:  # as the exact copy: bounded in bytes, not only in rows
            initial_capacity = initial_rows(dimension)
        self._dimension = dimension
        self._metric: Metric = metric
        self._params = params
        self._add_threads = add_threads
        self._graph = hnswlib.Index(space=_SPACES[metric], dim=dimension)
        self._graph.init_index(
            max_elements=max(1, initial_capacity),
            M=params.m,
            ef_construction=params.ef_construction,
            random_seed=seed,
            allow_replace_deleted=True,
        )
        # Searches ask for max(ef, k) results instead (see _graph_search): no shared state.
        self._graph.set_ef(1)
        # The live vectors, for exact scans and get_vectors (hnswlib's get_items builds Python
        # lists of floats: ~10 us per 128-d vector). It also is the record of live labels.
        self._vectors = ExactIndex(dimension, metric, initial_capacity=initial_capacity)
        # labels removed from the graph (marked deleted) that may still hold a slot in it: a
        # label in neither this nor the live set is new to the graph and may take a free slot
        self._removed: set[int] = set()
        #: an add whose graph work waits for link(): (labels, vectors, known positions)
        self._unlinked: tuple[Labels, Matrix, list[int]] | None = None
        self._linking = threading.Lock()
        #: id of a read-only allowed array -> its search forms (the newest _ALLOWED_KEPT)
        self._allowed: Newest[int, _Allowed] = Newest(_ALLOWED_KEPT)

    @classmethod
    def load(
        cls,
        directory: Path,
        dimension: int,
        metric: Metric,
        params: IndexParams,
        *,
        add_threads: int = -1,
    ) -> HnswIndex:
        """The index ``save`` wrote into ``directory``. Raises ``OSError`` or ``ValueError``
        when the files are missing, unreadable or do not agree with each other."""
        labels = np.load(directory / LABELS_FILE, allow_pickle=False)
        vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
        if labels.dtype != np.int64 or labels.ndim != 1 or vectors.dtype != np.float32:
            raise ValueError(f"{directory}: labels or vectors of the wrong type")
        index = cls(dimension, metric, params, initial_capacity=1, add_threads=add_threads)
        graph = hnswlib.Index(space=_SPACES[metric], dim=dimension)
        graph.load_index(str(directory / GRAPH_FILE), 0, True)
        in_graph = np.asarray(graph.get_ids_list(), dtype=np.int64)
        if graph.dim != dimension or params.m != graph.M or not np.isin(labels, in_graph).all():
            raise ValueError(f"{directory}: the graph does not match the index it was saved for")
        graph.set_ef(1)
        index._graph = graph
        index._removed = set(in_graph.tolist()) - set(labels.tolist())
        # np.load's arrays are this call's alone: the exact copy takes them over as they are
        index._vectors = ExactIndex.restore(dimension, metric, labels, vectors, adopt=True)
        return index

    def save(self, directory: Path) -> list[Path]:
        """Write the index into the existing ``directory`` (see ``load``); return the files
        written. The caller makes them durable and guarantees no concurrent ``add``/``remove``."""
        self.link()
        labels, vectors = self._vectors.export()
        files = [directory / GRAPH_FILE, directory / LABELS_FILE, directory / VECTORS_FILE]
        self._graph.save_index(str(files[0]))
        np.save(files[1], labels, allow_pickle=False)
        np.save(files[2], vectors, allow_pickle=False)
        return files

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def metric(self) -> Metric:
        return self._metric

    @property
    def params(self) -> IndexParams:
        return self._params

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, label: object) -> bool:
        return label in self._vectors

    def __repr__(self) -> str:
        return (
            f"HnswIndex(dimension={self._dimension}, metric={self._metric!r}, "
            f"len={len(self)}, params={self._params!r})"
        )

    def add(self, labels: Labels, vectors: Matrix, *, link: bool = True) -> None:
        if len(labels) == 0:
            return
        vectors = np.atleast_2d(vectors)
        labels = np.asarray(labels)
        self.link()  # an add waiting for its graph work goes first
        keys = labels.tolist()
        removed = self._removed
        known = [i for i, label in enumerate(keys) if label in self._vectors or label in removed]
        if link:
            self._link(labels, vectors, known)
            self._vectors.add(labels, vectors)
        else:  # the vectors now (exact scans see them), the graph at link()
            self._vectors.add(labels, vectors)
            self._unlinked = (labels, vectors, known)

    def link(self) -> None:
        """Put the vectors of an ``add(..., link=False)`` in the graph."""
        if self._unlinked is None:
            return
        with self._linking:  # (searches link too, as a guard: one of them does it)
            waiting, self._unlinked = self._unlinked, None
            if waiting is not None:
                self._link(*waiting)

    def _link(self, labels: Labels, vectors: Matrix, known: list[int]) -> None:
        """The graph's part of an add; ``known``: the positions of labels the index held or
        removed before it."""
        # An upper bound: labels that reuse a slot need none, but counting them is harmless.
        needed = self._graph.element_count + len(labels)
        capacity = self._graph.max_elements
        if needed > capacity:
            self._graph.resize_index(max(needed, 2 * capacity))
        removed = self._removed
        if not known:  # the usual case: new labels, which take deleted slots first
            self._graph.add_items(vectors, labels, self._add_threads, True)
            return
        # replace_deleted must not be given a label the graph still holds, and hnswlib
        # updates a deleted label only once it is unmarked
        keys = labels.tolist()
        fresh = np.ones(len(keys), dtype=np.bool_)
        for i in known:
            label = keys[i]
            if label in removed:
                removed.discard(label)
                try:
                    self._graph.unmark_deleted(label)
                except RuntimeError:  # its slot went to another label: new again
                    continue
            fresh[i] = False
        held = ~fresh
        if held.any():
            self._graph.add_items(vectors[held], labels[held], self._add_threads, False)
        if fresh.any():
            self._graph.add_items(vectors[fresh], labels[fresh], self._add_threads, True)

    def remove(self, labels: Labels) -> None:
        self.link()
        live = [label for label in labels.tolist() if label in self._vectors]
        for label in live:
            self._graph.mark_deleted(label)
        self._vectors.remove(np.asarray(live, dtype=np.int64))
        self._removed.update(live)
        if len(self._removed) > max(1024, 2 * self._graph.element_count):
            self._forget_replaced()

    def _forget_replaced(self) -> None:
        """Keep in ``_removed`` only the labels the graph still holds (the others lost their
        slot to a new label), so that it stays no larger than the graph."""
        in_graph = set(self._graph.get_ids_list())
        self._removed.intersection_update(in_graph)

    def search(
        self,
        queries: Matrix,
        k: int,
        *,
        allowed: Labels | None = None,
        ef: int | None = None,
    ) -> tuple[Labels, Scores]:
        self.link()
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        wanted_ef = self._params.ef_search if ef is None else ef
        live = len(self._vectors)
        if allowed is None:
            kk = min(k, live)
            if kk <= 0:
                return padded(len(q), k)
            try:
                return self._graph_search(q, k, kk, wanted_ef, live, None)
            except RuntimeError:  # hnswlib found fewer than asked for: scan instead
                return self._vectors.search(q, k)
        # (labels that are not in the index are never found: no need to look them up here)
        forms = self._forms(allowed)
        candidates = forms.labels
        kk = min(k, len(candidates))
        if kk <= 0:
            return padded(len(q), k)
        if len(candidates) <= max(_BRUTE_FORCE_MAX, _BRUTE_FORCE_FRACTION * live):
            return self._vectors.search(q, k, allowed=candidates)
        width = math.ceil(_POST_FILTER_WIDTH * kk * live / len(candidates))
        if width <= _POST_FILTER_MAX:
            return self._post_filtered(q, k, kk, max(wanted_ef, width), width, forms)
        return self._filtered(q, k, kk, wanted_ef, forms)

    def _forms(self, allowed: Labels) -> _Allowed:
        """``allowed`` in its search forms: kept for a read-only array (a caller's mutable
        one could change under the same id)."""
        if allowed.flags.writeable:
            return _Allowed(allowed)
        forms = self._allowed.get(id(allowed))
        if forms is None or forms.given is not allowed:
            forms = _Allowed(allowed)
            self._allowed.put(id(allowed), forms)
        return forms

    def _filtered(
        self, q: Matrix, k: int, kk: int, ef: int, allowed: _Allowed
    ) -> tuple[Labels, Scores]:
        """A graph search that admits only the allowed labels (live, sorted)."""
        widened = _FILTER_EF_FACTOR * max(ef, kk)
        candidates = allowed.labels
        try:
            return self._graph_search(q, k, kk, widened, len(candidates), allowed.contains())
        except RuntimeError:
            return self._vectors.search(q, k, allowed=candidates)

    def _post_filtered(
        self, q: Matrix, k: int, kk: int, ef: int, width: int, candidates: _Allowed
    ) -> tuple[Labels, Scores]:
        """An unfiltered graph search for ``width`` results, of which the best ``kk`` allowed
        are kept; a row with fewer is searched again with the filter in the graph."""
        try:
            found, scores = self._graph_search(q, width, width, ef, len(self._vectors), None)
        except RuntimeError:
            return self._filtered(q, k, kk, ef, candidates)
        allowed = candidates.admitted(found)
        if len(q) == 1 and kk == k:  # the usual single query: no padding to fill
            keep = np.flatnonzero(allowed[0])[:kk]
            if len(keep) == kk:
                return found[:, keep], scores[:, keep]
        labels, out = padded(len(q), k)
        short: list[int] = []
        for row in range(len(q)):
            keep = np.flatnonzero(allowed[row])[:kk]
            if len(keep) < kk:
                short.append(row)
                continue
            labels[row, :kk] = found[row, keep]
            out[row, :kk] = scores[row, keep]
        if short:
            again_labels, again_scores = self._filtered(q[short], k, kk, ef, candidates)
            labels[short], out[short] = again_labels, again_scores
        return labels, out

    def search_exact(
        self, queries: Matrix, k: int, *, allowed: Labels | None = None
    ) -> tuple[Labels, Scores]:
        """A scan of the vectors the graph is built from (not the graph): exact."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return self._vectors.search(q if q.ndim == 2 else q[None, :], k, allowed=allowed)

    def get_vectors(self, labels: Labels) -> Matrix:
        """The stored vectors; raises ``KeyError`` for a label that is not live."""
        return self._vectors.get_vectors(labels)

    def _graph_search(
        self,
        q: Matrix,
        k: int,
        kk: int,
        ef: int,
        available: int,
        admit: Callable[[int], bool] | None,
    ) -> tuple[Labels, Scores]:
        """hnswlib's ``knn_query`` for ``kk <= k`` results (of ``available``), padded to ``k``.

        hnswlib searches with ``max(its ef, k)``, and the graph's own ``ef`` is 1: asking for
        ``max(ef, kk)`` results (never more than are ``available``) and keeping the best ``kk``
        is the search ``set_ef(ef)`` would give, without touching shared state.
        A Python ``admit`` filter is called per candidate under the GIL, so threads would only
        contend for it: filtered searches run on one thread.
        """
        threads = 1 if len(q) == 1 or admit is not None else -1
        width = min(max(ef, kk), available)
        # positional: (data, k, num_threads, filter); pybind11 matches keywords slowly
        found, dists = self._graph.knn_query(q, width, threads, admit)
        if width != kk:
            found, dists = found[:, :kk], dists[:, :kk]
        found_labels: Labels = found.astype(np.int64)
        found_scores = self._scores(dists)
        if kk == k:
            return found_labels, found_scores
        labels, scores = padded(len(q), k)
        labels[:, :kk] = found_labels
        scores[:, :kk] = found_scores
        return labels, scores

    def _scores(self, dists: npt.NDArray[np.float32]) -> Scores:
        """hnswlib's distances as scores, in place (the array is ours: knn_query made it)."""
        d: Scores = np.asarray(dists, dtype=np.float32)
        if self._metric == "l2":
            np.maximum(d, 0.0, out=d)
            np.sqrt(d, out=d)
            np.negative(d, out=d)
        else:
            np.subtract(1.0, d, out=d)
            if self._metric == "cosine":
                np.minimum(d, 1.0, out=d)  # rounding can push a self-match past 1
        return d
