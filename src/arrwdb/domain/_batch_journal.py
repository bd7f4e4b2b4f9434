"""What one batch did to a watched library's chunks, change by change.

A live query's events are exact per change: after the events caused by change ``N``, a watch
holds what an exact search returns on the library as it was after ``N``, also when ``N`` is one
of many changes in one batch (a bulk write, or several writers' changes committed together).
The watches follow a batch once the library has applied all of it, so the library's state is
the one after the *last* change; the journal is how they see it as it was after an earlier one.

The library's state keeps one while a batch is applied to a watched library: for every chunk
label the batch creates, refreshes (same chunks, new title or metadata) or removes, the step
(the library's document changes in the batch, counted from 0) and the chunk's reference just
before it; for a removed chunk, its vector. Then, after step ``i``, a chunk the batch touches
later is as its first later touch found it (``None``: not there yet), and every other chunk is
as it is now.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

import numpy as np

from arrwdb.domain.models import Matrix
from arrwdb.domain.ports import Labels

if TYPE_CHECKING:
    from arrwdb.domain._hits import ChunkRef


class BatchJournal:
    """The chunk-level record of one batch of one library (see the module's docstring).

    The labels the batch creates are the library's next ones, in order: their steps are kept
    in arrays. A refresh or a removal is kept per label."""

    def __init__(self, first_label: int) -> None:
        self._first = first_label  # the first label the batch may create
        self._creations: list[Labels] = []  # the step of each label created, in label order
        self._created: Labels | None = None  # (the same, as one array)
        #: label -> the steps that refreshed or removed it, ascending, and its reference
        #: before each
        self._steps: dict[int, list[int]] = {}
        self._before: dict[int, list[ChunkRef | None]] = {}
        #: (labels, the step of each) of every save: the chunks a document has after it
        self.saves: list[tuple[Labels, Labels]] = []
        self._removed_vectors: dict[int, Matrix] = {}  # label -> its vector (a row)
        self.step = 0  # the next document change's step

    def _touch(self, label: int, step: int, before: ChunkRef | None) -> None:
        steps = self._steps.get(label)
        if steps is None:
            self._steps[label] = [step]
            self._before[label] = [before]
        else:
            steps.append(step)
            self._before[label].append(before)

    def created(self, labels: Labels, steps: Labels) -> None:
        """``labels`` (the library's next ones) were created, ``labels[j]`` at ``steps[j]``."""
        self._creations.append(steps)
        self._created = None
        self.saves.append((labels, steps))

    def refreshed(self, step: int, labels: Labels, before: list[ChunkRef | None]) -> None:
        for label, ref in zip(labels.tolist(), before, strict=True):
            self._touch(label, step, ref)
        self.saves.append((labels, np.full(len(labels), step, dtype=np.int64)))

    def removed(
        self, step: int, labels: Labels, before: list[ChunkRef | None], vectors: Matrix
    ) -> None:
        for row, (label, ref) in enumerate(zip(labels.tolist(), before, strict=True)):
            self._touch(label, step, ref)
            self._removed_vectors[label] = vectors[row]

    # -- reads (by the watches, after the batch) ----------------------------------------------

    def _creation_steps(self) -> Labels:
        created = self._created
        if created is None:
            created = self._created = (
                np.concatenate(self._creations) if self._creations else np.empty(0, np.int64)
            )
        return created

    def touched_after(self, label: int, step: int) -> bool:
        """Whether a change after ``step`` creates, refreshes or removes ``label``."""
        at = label - self._first
        if at >= 0:
            created = self._creation_steps()
            if at < len(created) and created[at] > step:
                return True
        steps = self._steps.get(label)
        return steps is not None and steps[-1] > step

    def changed(self) -> list[int]:
        """The labels the batch refreshed or removed (the ones whose state before a later
        change differs from now: a created one that is not is found as it is now)."""
        return list(self._steps)

    def ref_at(self, label: int, step: int, now: ChunkRef | None) -> ChunkRef | None:
        """The chunk of ``label`` as it was after ``step`` (``now``: as it is after the
        batch; ``None``: not there)."""
        at = label - self._first
        if at >= 0:
            created = self._creation_steps()
            if at < len(created) and created[at] > step:
                return None  # made later
        steps = self._steps.get(label)
        if steps is None or steps[-1] <= step:
            return now
        return self._before[label][bisect.bisect_right(steps, step)]

    def removed_vector(self, label: int) -> Matrix | None:
        return self._removed_vectors.get(label)
