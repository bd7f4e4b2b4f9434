"""The batch side of the watch engine: one library's changes in a batch as the watches read them
(``Step``, ``BatchView``), and the library's watches scored against them (``LibraryWatches``).

The cost a batch adds to a write, per watched library: the steps (one per document change, in
position order), the labels of the chunks the batch saved, and **one matrix product** of every
watch's query with those chunks, computed in blocks of rows so that each block's row maxima are
taken while it is in cache and only the rows of the watches that may change are kept. A watch
may change if one of the new chunks reaches its bar (its k-th score, or its threshold) or if the
batch changed a document it holds. The bars are kept in an array, updated for the watches that
walked a batch (the only ones whose results, hence bars, can have moved): a batch costs the
product plus work in proportion to the watches it touches, not a Python loop over all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from arrwdb.domain._batch_journal import BatchJournal
from arrwdb.domain._hits import ChunkRef
from arrwdb.domain._library_state import LibraryState, chunk_refs
from arrwdb.domain.changes import Batch, DocumentDeleted, DocumentSaved, LibraryDeleted
from arrwdb.domain.models import Document, Matrix
from arrwdb.domain.ports import Labels

if TYPE_CHECKING:
    from arrwdb.domain._watch_engine import LiveWatch

#: Cells (watches x chunks) of one block of the batch's score matrix: 4 MiB of float32, so a
#: block's product, maxima and kept rows stay in cache and memory stays bounded. (A block's
#: scores can differ from those of one product of every row in the last bit, as BLAS kernels
#: differ with the shape: as one product's do when a watch is added.)
BLOCK_CELLS = 1 << 20

Bars = npt.NDArray[np.float64]


class Step:
    """One document change of a library in a batch, in position order."""

    __slots__ = ("_document", "_refs", "deleted", "document_id", "position", "start", "stop")

    def __init__(
        self,
        position: int,
        document_id: str,
        deleted: bool,
        refs: dict[str, ChunkRef] | None = None,
        *,
        document: Document | None = None,
    ) -> None:
        self.position = position
        self.document_id = document_id
        self.deleted = deleted
        self._refs = refs
        self._document = document
        #: the columns of the batch's score matrix that hold this change's chunks: those of a
        #: save that is still there after the batch (``start == stop``: none)
        self.start = 0
        self.stop = 0

    @property
    def refs(self) -> dict[str, ChunkRef]:
        """A save: its chunks' refs by chunk id (the version this change saved). Built when
        first read: only the steps a watch visits need them."""
        refs = self._refs
        if refs is None:
            doc = self._document
            refs = self._refs = {} if doc is None else {ref[0]: ref for ref in chunk_refs(doc)}
        return refs


class BatchView:
    """One library's document changes in a batch, as the watches read them: the steps, the
    labels of the chunks each save left (the score matrix's columns, a save's own after each
    other in step order), which steps touch which document, where each step's columns start,
    and the journal that tells what a chunk was after any step."""

    def __init__(self, steps: list[Step], state: LibraryState) -> None:
        self.steps = steps
        journal = state.journal
        assert journal is not None, "a watched library keeps a journal of its batch"
        self.journal = journal
        self.labels, with_columns, starts = _place_columns(steps, journal)
        self._with_columns = np.asarray(with_columns, dtype=np.int64)
        self._starts = np.asarray(starts, dtype=np.int64)
        #: every column its own step (one chunk per saved document): a row is its own maxima
        self._one_each = len(starts) == len(self.labels)
        self._changed: dict[int, list[tuple[float, int]]] = {}  # id(watch) -> changed_scores

    #: document id -> the steps that change it (built when first read: ``__getattr__``)
    steps_of: dict[str, list[int]]

    def __getattr__(self, name: str) -> dict[str, list[int]]:
        if name != "steps_of":
            raise AttributeError(name)
        steps_of: dict[str, list[int]] = {}
        for i, step in enumerate(self.steps):
            steps_of.setdefault(step.document_id, []).append(i)
        self.steps_of = steps_of  # an attribute from now on: read without a call
        return steps_of

    def vectors(self, state: LibraryState) -> Matrix:
        """The columns' vectors (see ``vectors_of``)."""
        return self.vectors_of(self.labels, state)

    def changed_scores(self, live: LiveWatch, state: LibraryState) -> list[tuple[float, int]]:
        """``(score, label)`` of every chunk the batch refreshed or removed, for ``live``'s
        query, best first (scored once per watch and batch)."""
        cached = self._changed.get(id(live))
        if cached is None:
            labels = np.asarray(self.journal.changed(), dtype=np.int64)
            scores = self.scores_of(labels, live.query, state) if len(labels) else labels
            order = np.argsort(-scores, kind="stable")
            cached = list(zip(scores[order].tolist(), labels[order].tolist(), strict=True))
            self._changed[id(live)] = cached
        return cached

    def scores_of(self, labels: Labels, query: Matrix, state: LibraryState) -> Matrix:
        """The exact scores of ``labels`` for ``query`` (prepared for the metric), on the
        indexes' scale."""
        vectors = self.vectors_of(labels, state)
        metric = state.library.metric
        if metric == "l2":
            diff = vectors - query[None, :]
            distances: Matrix = -np.sqrt(np.einsum("ij,ij->i", diff, diff))
            return distances
        scores: Matrix = vectors @ query
        if metric == "cosine":
            np.minimum(scores, 1.0, out=scores)
        return scores

    def vectors_of(self, labels: Labels, state: LibraryState) -> Matrix:
        """The vectors of ``labels``: from the index, or as they were removed (chunks a later
        change of the batch took away)."""
        index = state.index
        assert index is not None
        refs = state.refs
        alive = np.fromiter((refs[label] is not None for label in labels.tolist()), np.bool_)
        if alive.all():
            return index.get_vectors(labels)
        out = np.empty((len(labels), index.dimension), dtype=np.float32)
        if alive.any():
            out[alive] = index.get_vectors(labels[alive])
        for row in np.flatnonzero(~alive).tolist():
            vector = self.journal.removed_vector(int(labels[row]))
            assert vector is not None, "a chunk a batch removed has its vector in the journal"
            out[row] = vector
        return out

    def ref_at(self, label: int, i: int, now: ChunkRef | None) -> ChunkRef | None:
        """The chunk of ``label`` as it was after step ``i`` (``now``: as it is)."""
        return self.journal.ref_at(label, i, now)

    def steps_reaching(self, scores: Matrix, bar: float, after: int) -> list[int]:
        """The steps after step ``after`` with a chunk whose score reaches ``bar``."""
        if not len(self._starts):
            return []
        best = scores if self._one_each else np.maximum.reduceat(scores, self._starts)
        found = self._with_columns[best >= bar]
        return [i for i in found.tolist() if i > after]


class LibraryWatches:
    """The live watches of one library, with their queries stacked for the batch product and
    their bars (``LiveWatch.bar``) in an array of the same rows.

    A watch's bar moves only when its results do: when it is added (its first exact search)
    and when it walks a batch. ``touched`` reads the array; whoever walks a watch calls
    ``walked`` after it (``WatchBook._follow``)."""

    def __init__(self) -> None:
        self.watches: dict[str, LiveWatch] = {}
        #: document id -> the watches holding one of its chunks
        self.holders: dict[str, set[LiveWatch]] = {}
        self._order: list[LiveWatch] = []
        self._row_of: dict[int, int] = {}  # id(watch) -> its row
        self._queries: Matrix | None = None
        self._sq: Matrix | None = None
        self._bars: Bars = np.empty(0, dtype=np.float64)

    def add(self, live: LiveWatch) -> None:
        self.watches[live.watch.id] = live
        self._queries = None

    def remove(self, watch_id: str) -> LiveWatch | None:
        live = self.watches.pop(watch_id, None)
        if live is not None:
            live.release()
            self._queries = None
        return live

    def stacked(self, dimension: int) -> tuple[list[LiveWatch], Matrix]:
        """The watches whose query has the library's dimension, and their queries as rows."""
        if self._queries is None or self._queries.shape[1] != dimension:
            self._order = [w for w in self.watches.values() if len(w.query) == dimension]
            self._row_of = {id(w): i for i, w in enumerate(self._order)}
            self._queries = (
                np.stack([w.query for w in self._order]).astype(np.float32, copy=False)
                if self._order
                else np.empty((0, dimension), dtype=np.float32)
            )
            self._sq = np.einsum("ij,ij->i", self._queries, self._queries)
            self._bars = np.fromiter(
                (w.bar() for w in self._order), dtype=np.float64, count=len(self._order)
            )
        return self._order, self._queries

    def walked(self, row: int, live: LiveWatch) -> None:
        """``live`` (at ``row``) followed a batch: its bar may have moved."""
        self._bars[row] = live.bar()

    def touched(
        self, view: BatchView, state: LibraryState
    ) -> tuple[list[tuple[int, LiveWatch]], Matrix]:
        """The watches (row, watch) the batch may change, in row order, and their rows of the
        batch's score matrix (watches x the batch's new chunks, on the indexes' scale)."""
        index, dimension = state.index, state.library.dimension
        if index is None or dimension is None:
            return [], np.empty((0, 0), dtype=np.float32)
        order, queries = self.stacked(dimension)
        labels = view.labels
        held: set[int] = set()
        if self.holders:
            row_of, holders = self._row_of, self.holders
            for step in view.steps:
                for live in holders.get(step.document_id, ()):
                    row = row_of.get(id(live))
                    if row is not None:
                        held.add(row)
        if not order or not len(labels):
            only = sorted(held)
            return [(r, order[r]) for r in only], np.empty((len(only), 0), dtype=np.float32)
        vectors = view.vectors(state)
        metric = state.library.metric
        vv = np.einsum("ij,ij->i", vectors, vectors) if metric == "l2" else None
        held_rows = np.asarray(sorted(held), dtype=np.int64)
        height = max(64, BLOCK_CELLS // len(labels) // 64 * 64)
        found: list[npt.NDArray[np.int64]] = []
        kept: list[Matrix] = []
        for s in range(0, len(order), height):
            block = self._scores(queries[s : s + height], vectors, metric, s, vv)
            best = block.max(axis=1)
            if metric == "cosine":  # max(min(p, 1)) is min(max(p), 1): clip what is kept
                np.minimum(best, 1.0, out=best)
            reach = best >= self._bars[s : s + len(block)]
            if len(held_rows):
                mine = held_rows[(held_rows >= s) & (held_rows < s + len(block))]
                reach[mine - s] = True
            rows = np.flatnonzero(reach)
            if len(rows):
                chosen = block[rows]
                if metric == "cosine":
                    np.minimum(chosen, 1.0, out=chosen)
                found.append(rows + s)
                kept.append(chosen)
        if not found:
            return [], np.empty((0, len(labels)), dtype=np.float32)
        all_rows = np.concatenate(found).tolist()
        scores = kept[0] if len(kept) == 1 else np.concatenate(kept)
        return [(r, order[r]) for r in all_rows], scores

    def _scores(
        self, queries: Matrix, vectors: Matrix, metric: str, first: int, vv: Matrix | None
    ) -> Matrix:
        """Rows ``first...`` of the (watch, chunk) scores, on the indexes' scale (larger is
        better); under cosine not yet clipped at 1 (``touched`` clips what it keeps)."""
        product: Matrix = queries @ vectors.T
        if metric == "l2":
            assert self._sq is not None
            assert vv is not None
            product *= -2.0
            product += self._sq[first : first + len(queries), None]
            product += vv[None, :]
            np.maximum(product, 0.0, out=product)
            np.sqrt(product, out=product)
            np.negative(product, out=product)
        return product


def steps_by_library(
    batch: Batch, watched: dict[str, LibraryWatches]
) -> dict[str, list[Step] | None]:
    """The document changes of every watched library in ``batch``, in position order
    (``None``: the library was deleted)."""
    out: dict[str, list[Step] | None] = {}
    last_id, last_steps = "", None  # the library of the change before, and its steps
    for position, change in enumerate(batch.changes, batch.first):
        if isinstance(change, DocumentSaved):
            doc = change.document
            step = Step(position, doc.id, False, document=doc)
            library_id = doc.library_id
        elif isinstance(change, DocumentDeleted):
            step = Step(position, change.document_id, True)
            library_id = change.library_id
        else:
            library_id = change.library_id
            if isinstance(change, LibraryDeleted) and library_id in watched:
                out[library_id] = None
                if library_id == last_id:
                    last_steps = None
            continue
        if library_id != last_id:
            if library_id not in watched:
                continue
            last_id = library_id
            last_steps = out.setdefault(library_id, [])
        if last_steps is not None:
            last_steps.append(step)
    return out


def _place_columns(steps: list[Step], journal: BatchJournal) -> tuple[Labels, list[int], list[int]]:
    """Give each save its columns (the chunks the document has after it, whatever later
    changes do); return the labels of those columns (in step order), and the steps with
    columns and their starts."""
    for step in steps:
        step.start = step.stop = 0
    saves = journal.saves
    if not saves:
        return np.empty(0, dtype=np.int64), [], []
    if len(saves) == 1:
        labels, at = saves[0]
    else:
        labels = np.concatenate([save[0] for save in saves])
        at = np.concatenate([save[1] for save in saves])
        order = np.argsort(at, kind="stable")  # (creations are recorded late)
        labels, at = labels[order], at[order]
    if not len(at):
        return labels, [], []
    edges = np.flatnonzero(at[1:] != at[:-1]) + 1
    starts = np.concatenate([[0], edges]).tolist()
    stops = [*starts[1:], len(at)]
    with_columns = at[starts].tolist()
    for i, start, stop in zip(with_columns, starts, stops, strict=True):
        step = steps[i]
        step.start, step.stop = start, stop
    return labels, with_columns, starts
