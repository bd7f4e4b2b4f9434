"""The watch engine: every live watch's results, kept by following the committed batches.

One more projection of the log. The projector hands each batch to ``WatchBook.after_batch`` once
the libraries' states have applied it and before its change events are published, so a watch
event always exists before the change event that caused it is visible, and before the write that
made it is answered.

Per library and batch, every watch is scored against the batch's new chunks in **one matrix
product** (watches x chunks). A watch is touched only if one of them reaches its bar (its k-th
score, or its threshold) or if the batch changed a document it holds; the others cost nothing
more. A touched watch walks the batch's changes in position order, so each event names the change
that caused it:

* a member whose document is deleted leaves (``deleted``), one whose document got other chunks
  leaves (``updated``), one whose new metadata fails the filter leaves (``filtered``);
* a member that leaves is replaced by an **exact** search of the library (an HNSW library scans
  its vectors for it), so the results are exact whatever the index;
* a new chunk that beats the k-th enters, and pushes the last one out (``outranked``).

After the batch, a top-k watch holds exactly what an exact search for its query (filter and floor
applied) returns on the state after the batch. Results are ordered by score, then chunk id.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from arrwdb.domain._hits import ChunkRef
from arrwdb.domain._library_state import METADATA, LibraryState
from arrwdb.domain._watch_batch import BatchView, LibraryWatches, Step, steps_by_library
from arrwdb.domain.changes import Batch
from arrwdb.domain.filters import Predicate
from arrwdb.domain.models import Matrix
from arrwdb.domain.watches import (
    CLOSED_LIBRARY_DELETED,
    READY,
    WATCH_ENTERED,
    WATCH_LEFT,
    WATCH_MATCH,
    WATCH_READY,
    Watch,
    WatchEvent,
    WatchFeed,
    prepared_query,
    watch_event_id,
)

#: ``(score, label, ref)`` of a chunk a top-k watch holds.
Member = tuple[float, int, ChunkRef]
#: An event being built: ``(position, type, data)``.
_Pending = tuple[int, str, dict[str, Any]]


class LiveWatch:
    """One watch's results and feed. Changed only by the book (under the projector's order and
    ``feed.lock``); read by listeners through ``ready_locked``."""

    def __init__(
        self,
        watch: Watch,
        metric: str,
        predicate: Predicate | None,
        history: int,
        position: int,
        holders: dict[str, set[LiveWatch]],
        book_position: Callable[[], int],
    ) -> None:
        self._watch = watch
        self.query = prepared_query(watch.vector, metric)
        self.metric = metric
        self.predicate = predicate
        self.k = watch.k
        self.floor = -math.inf if watch.threshold is None else watch.threshold
        self._feed = WatchFeed(history, (position, READY))
        self.position = position
        self._keys: list[tuple[float, str]] = []  # (-score, chunk_id), best first
        self._members: dict[str, Member] = {}
        self._by_doc: dict[str, set[str]] = {}
        self._holders = holders  # the library's document id -> the watches holding its chunks
        self._book_position = book_position

    @property
    def watch(self) -> Watch:
        return self._watch

    @property
    def feed(self) -> WatchFeed:
        return self._feed

    # -- reads (caller holds feed.lock) -------------------------------------------------------

    def ready_locked(self) -> WatchEvent:
        position = max(self.position, self._book_position())
        results = [_hit(*self._members[chunk_id]) for _, chunk_id in self._keys]
        return WatchEvent(
            id=watch_event_id((position, READY)),
            type=WATCH_READY,
            library_id=self._watch.library_id,
            watch_id=self._watch.id,
            data={"results": results, "event_id": str(position)},
        )

    def chunk_ids(self) -> list[str]:
        """The results' chunk ids, best first (caller holds feed.lock)."""
        return [chunk_id for _, chunk_id in self._keys]

    def bar(self) -> float:
        """The least score a new chunk needs to be considered (ties are decided by chunk id)."""
        if self.k is None or len(self._keys) < self.k:
            return self.floor
        return max(self.floor, self._members[self._keys[-1][1]][0])

    # -- changes (caller holds feed.lock) -----------------------------------------------------

    def fill(self, state: LibraryState, view: BatchView | None = None, i: int = -1) -> list[Member]:
        """The best chunks of the library not held yet, as many as the results lack: an
        exact search. With ``view``: of the library as it was after step ``i`` of that batch:
        a chunk a later change touches is not taken as it is now but as it was then (from the
        chunks the batch refreshed or removed, scored once per batch, best first)."""
        assert self.k is not None
        need = self.k - len(self._keys)
        index = state.index
        if need <= 0 or index is None or index.dimension != len(self.query):
            return []
        if view is None:
            return self._search_now(state, need, None) if len(index) else []
        journal = view.journal
        found = []  # (an index empty now may not have been after step i)
        if len(index):
            found = self._search_now(state, need, lambda label: journal.touched_after(label, i))
        then = self._as_they_were(state, view, i, need)
        if then:
            found = sorted(found + then, key=lambda member: (-member[0], member[2][0]))[:need]
        return found

    def _search_now(
        self, state: LibraryState, need: int, skip: Callable[[int], bool] | None
    ) -> list[Member]:
        """The best ``need`` chunks of the library as it is, but for those held and those
        ``skip`` names (asking for more while they take places)."""
        index = state.index
        assert index is not None
        allowed = None
        if self.predicate is not None:
            allowed = state.allowed_labels(self.predicate)
            if not len(allowed):
                return []
        refs, size = state.refs, len(index)
        wanted = min(need + len(self._keys) + (0 if skip is None else 16), size)
        while True:
            labels, scores = index.search_exact(self.query[None, :], wanted, allowed=allowed)
            found: list[Member] = []
            for label, score in zip(labels[0].tolist(), scores[0].tolist(), strict=True):
                if label < 0 or score < self.floor:
                    return found  # there is no more
                ref = refs[label]
                if ref is None or ref[0] in self._members or (skip is not None and skip(label)):
                    continue
                found.append((score, label, ref))
                if len(found) == need:
                    return found
            if wanted >= size:
                return found
            wanted = min(4 * wanted, size)

    def _as_they_were(
        self, state: LibraryState, view: BatchView, i: int, need: int
    ) -> list[Member]:
        """The best ``need`` of the chunks the batch refreshed or removed after step ``i``
        that were there after ``i`` and then passed the filter and the floor, as they were."""
        refs, members, predicate = state.refs, self._members, self.predicate
        journal = view.journal
        found: list[Member] = []
        for score, label in view.changed_scores(self, state):
            if score < self.floor:
                break
            if not journal.touched_after(label, i):
                continue  # as it is now (or gone): the search of the library covers it
            ref = view.ref_at(label, i, refs[label])
            if ref is None or ref[0] in members:
                continue
            if predicate is not None and not predicate(ref[METADATA]):
                continue
            found.append((score, label, ref))
            if len(found) == need:
                break
        return found

    def _rank(self, chunk_id: str) -> int:
        score = self._members[chunk_id][0]
        return bisect.bisect_left(self._keys, (-score, chunk_id))

    def _insert(self, member: Member) -> int:
        score, _, ref = member
        chunk_id, document_id = ref[0], ref[1]
        key = (-score, chunk_id)
        rank = bisect.bisect_left(self._keys, key)
        self._keys.insert(rank, key)
        self._members[chunk_id] = member
        self._by_doc.setdefault(document_id, set()).add(chunk_id)
        self._holders.setdefault(document_id, set()).add(self)
        return rank

    def _remove(self, chunk_id: str) -> int:
        rank = self._rank(chunk_id)
        del self._keys[rank]
        _, _, ref = self._members.pop(chunk_id)
        document_id = ref[1]
        held = self._by_doc[document_id]
        held.discard(chunk_id)
        if not held:
            del self._by_doc[document_id]
            holders = self._holders.get(document_id)
            if holders is not None:
                holders.discard(self)
                if not holders:
                    del self._holders[document_id]
        return rank

    def enter(self, members: Iterable[Member], position: int, out: list[_Pending]) -> None:
        for member in members:
            rank = self._insert(member)
            score, _, ref = member
            out.append((position, WATCH_ENTERED, _entered(ref, rank, score, position)))

    def leave(self, chunk_id: str, reason: str, position: int, out: list[_Pending]) -> None:
        document_id = self._members[chunk_id][2][1]
        rank = self._remove(chunk_id)
        out.append(
            (
                position,
                WATCH_LEFT,
                {
                    "chunk_id": chunk_id,
                    "document_id": document_id,
                    "rank": rank,
                    "reason": reason,
                    "event_id": str(position),
                },
            )
        )

    def offer(self, member: Member, position: int, out: list[_Pending]) -> bool:
        """A chunk that may belong in the results (it passes the filter and the floor);
        whether it entered."""
        assert self.k is not None
        score, _, ref = member
        if len(self._keys) >= self.k:
            if (-score, ref[0]) >= self._keys[-1]:
                return False
            self.leave(self._keys[-1][1], "outranked", position, out)
        self.enter((member,), position, out)
        return True

    def walk(
        self, batch: BatchView, scores: Matrix, state: LibraryState, out: list[_Pending]
    ) -> None:
        """Follow one batch's changes of the library (``scores``: this watch's row of the
        batch's score matrix). Only the steps that can change the results are visited: those
        of documents it holds, and those with a chunk that reaches its bar (looked up again
        when the bar falls); skipping the others is what walking them would do."""
        if self.k is None:  # a match watch: every chunk of a save that reaches the threshold
            for i in batch.steps_reaching(scores, self.floor, -1):
                self._matches(i, batch, scores, state.refs, out)
            return
        todo: set[int] = set(batch.steps_reaching(scores, self.bar(), -1))
        for document_id in self._by_doc:
            todo.update(batch.steps_of.get(document_id, ()))
        queue = sorted(todo)
        heapq.heapify(queue)
        seen = -1
        while queue:
            i = heapq.heappop(queue)
            if i <= seen:
                continue
            seen = i
            before = self.bar()
            entered = self._step(batch, i, scores, state, out)
            for document_id in entered:
                for j in batch.steps_of.get(document_id, ()):
                    if j > i:
                        heapq.heappush(queue, j)
            if self.bar() < before:
                for j in batch.steps_reaching(scores, self.bar(), i):
                    heapq.heappush(queue, j)

    def _step(
        self, batch: BatchView, i: int, scores: Matrix, state: LibraryState, out: list[_Pending]
    ) -> set[str]:
        """One change of a top-k watch's library; returns the documents of chunks that
        entered."""
        assert self.k is not None
        step = batch.steps[i]
        predicate, refs, labels = self.predicate, state.refs, batch.labels
        entered: set[str] = set()
        removed = False
        held = self._by_doc.get(step.document_id)
        for chunk_id in sorted(held or (), key=self._rank):
            ref = step.refs.get(chunk_id)
            if step.deleted:
                self.leave(chunk_id, "deleted", step.position, out)
            elif ref is None:
                self.leave(chunk_id, "updated", step.position, out)
            elif predicate is not None and not predicate(ref[METADATA]):
                self.leave(chunk_id, "filtered", step.position, out)
            else:  # the same chunk with a new title or metadata: it stays
                score, label, _ = self._members[chunk_id]
                self._members[chunk_id] = (score, label, ref)
                continue
            removed = True
        if removed and len(self._keys) < self.k:
            # first the best of what is there (this change's own chunks included), then the
            # offers: a new chunk takes a free place only if it beats what was left out
            refill = self.fill(state, batch, i)
            self.enter(refill, step.position, out)
            entered.update(ref[1] for _, _, ref in refill)
        if step.start < step.stop:
            row = scores[step.start : step.stop]
            for col in np.argsort(-row, kind="stable").tolist():
                score = float(row[col])
                if score < self.bar():
                    break
                label = int(labels[step.start + col])
                ref = batch.ref_at(label, i, refs[label])
                if ref is None or ref[0] in self._members:
                    continue
                if predicate is not None and not predicate(ref[METADATA]):
                    continue
                if self.offer((score, label, ref), step.position, out):
                    entered.add(ref[1])
        return entered

    def _matches(
        self,
        i: int,
        batch: BatchView,
        scores: Matrix,
        refs: list[ChunkRef | None],
        out: list[_Pending],
    ) -> None:
        step = batch.steps[i]
        row = scores[step.start : step.stop]
        for col in np.flatnonzero(row >= self.floor).tolist():
            label = int(batch.labels[step.start + col])
            ref = batch.ref_at(label, i, refs[label])
            if ref is None:
                continue
            if self.predicate is not None and not self.predicate(ref[METADATA]):
                continue
            out.append(
                (
                    step.position,
                    WATCH_MATCH,
                    {
                        "chunk_id": ref[0],
                        "document_id": ref[1],
                        "score": float(row[col]),
                        "event_id": str(step.position),
                    },
                )
            )

    def publish(self, pending: list[_Pending]) -> None:
        """Hand the events built for one batch to the feed, with their ids (caller holds
        feed.lock)."""
        if not pending:
            return
        events: list[WatchEvent] = []
        keys: list[tuple[int, int]] = []
        position, n = -1, 0
        watch = self._watch
        for at, kind, data in pending:
            n = n + 1 if at == position else 0
            position = at
            keys.append((at, n))
            events.append(
                WatchEvent(
                    id=f"{at}.{n}",  # watch_event_id((at, n)): n is never READY here
                    type=kind,
                    library_id=watch.library_id,
                    watch_id=watch.id,
                    data=data,
                )
            )
        self._feed.append(events, keys)

    def release(self) -> None:
        """Forget the documents it holds (the watch is going away)."""
        for document_id in list(self._by_doc):
            holders = self._holders.get(document_id)
            if holders is not None:
                holders.discard(self)
                if not holders:
                    del self._holders[document_id]
        self._by_doc.clear()


def _hit(score: float, label: int, ref: ChunkRef) -> dict[str, Any]:
    del label
    chunk_id, document_id, title, text, metadata, position = ref
    return {
        "chunk_id": chunk_id,
        "document_id": document_id,
        "document_title": title,
        "text": text,
        "score": score,
        "metadata": dict(metadata),
        "position": position,
    }


def _entered(ref: ChunkRef, rank: int, score: float, position: int) -> dict[str, Any]:
    return {
        "chunk_id": ref[0],
        "document_id": ref[1],
        "rank": rank,
        "score": score,
        "event_id": str(position),
    }


class WatchBook:
    """Every live watch in this process, by library. The projector calls ``after_batch``;
    registration and removal run under the projector's lock too, so a watch sees every batch
    after the position its results were taken at, exactly once."""

    def __init__(self) -> None:
        self._libraries: dict[str, LibraryWatches] = {}
        self._by_id: dict[str, LiveWatch] = {}
        self.position = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def count(self, library_id: str) -> int:
        group = self._libraries.get(library_id)
        return 0 if group is None else len(group.watches)

    def get(self, watch_id: str) -> LiveWatch | None:
        return self._by_id.get(watch_id)

    def of_library(self, library_id: str) -> list[LiveWatch]:
        group = self._libraries.get(library_id)
        return [] if group is None else list(group.watches.values())

    def add(
        self,
        watch: Watch,
        state: LibraryState,
        predicate: Predicate | None,
        history: int,
        position: int,
    ) -> LiveWatch:
        """Start a watch at ``position`` (what ``state`` reflects): its results are an exact
        search now. Caller holds the projector's lock."""
        group = self._libraries.setdefault(watch.library_id, LibraryWatches())
        live = LiveWatch(
            watch,
            state.library.metric,
            predicate,
            history,
            position,
            group.holders,
            self._position,
        )
        if watch.k is not None:
            with live.feed.lock:
                live.enter(live.fill(state), position, [])
        group.add(live)
        self._by_id[watch.id] = live
        return live

    def _position(self) -> int:
        return self.position

    def remove(self, watch_id: str, reason: str) -> LiveWatch | None:
        """Stop a watch; its listeners get ``reason``. Caller holds the projector's lock."""
        live = self._by_id.pop(watch_id, None)
        if live is None:
            return None
        group = self._libraries.get(live.watch.library_id)
        if group is not None:
            group.remove(watch_id)
            if not group.watches:
                del self._libraries[live.watch.library_id]
        live.feed.close(reason)
        return live

    def close_all(self, reason: str) -> None:
        for watch_id in list(self._by_id):
            self.remove(watch_id, reason)

    def after_batch(self, batch: Batch, states: dict[str, LibraryState]) -> None:
        """Bring every watch of the libraries ``batch`` changed up to its last position (the
        states have applied it)."""
        if self._libraries:
            for library_id, steps in steps_by_library(batch, self._libraries).items():
                if steps is None:  # the library was deleted
                    for live in self.of_library(library_id):
                        self.remove(live.watch.id, CLOSED_LIBRARY_DELETED)
                    continue
                state = states.get(library_id)
                if state is not None:
                    self._follow(self._libraries[library_id], steps, state, batch.last)
        self.position = batch.last

    def _follow(
        self, group: LibraryWatches, steps: list[Step], state: LibraryState, last: int
    ) -> None:
        view = BatchView(steps, state)
        touched, scores = group.touched(view, state)
        for n, (row, live) in enumerate(touched):
            pending: list[_Pending] = []
            with live.feed.lock:
                live.walk(view, scores[n], state, pending)
                live.publish(pending)
                live.position = last
            group.walked(row, live)
