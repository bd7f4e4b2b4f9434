"""The in-memory store: the default for ``arrwdb.open()``; nothing survives the process.

A write is ordered, checked, applied to the tables and made readable under one lock (a write is
"durable" as soon as it is in memory), so its commit is complete when ``write`` returns. Reads
take the same lock only for dictionary copies, so a reader sees a write entirely or not at all.
Documents are kept as the immutable values the service hands in (embeddings are not copied).

The log keeps the batches of about the last ``history_size`` changes (the projector reads them,
and so does a replay); older ones are dropped, so ``read`` from before them raises
``HistoryLostError``. It keeps no event history of its own: the hub's ring is all there is
(``EventHistory`` is not implemented).
"""

from __future__ import annotations

import threading
from collections import deque

from arrwdb.adapters.storage._tables import CatalogReads
from arrwdb.domain.catalog import Catalog
from arrwdb.domain.changes import Batch, WriteKey
from arrwdb.domain.errors import HistoryLostError, IdempotencyMismatchError
from arrwdb.domain.ports import Build


class Done:
    """The ``Commit`` of a write that is complete when ``write`` returns."""

    __slots__ = ("_batch",)

    def __init__(self, batch: Batch) -> None:
        self._batch = batch

    def wait(self) -> Batch:
        return self._batch


class InMemoryStore(CatalogReads):
    """Implements ``arrwdb.domain.ports.Store``."""

    def __init__(self, history_size: int = 10_000) -> None:
        self._history_size = max(1, history_size)
        self._state = threading.Condition(threading.Lock())
        self._visible = Catalog()  # the tables (``CatalogReads`` serves them)
        self._batches: deque[Batch] = deque()
        self._kept = 0  # changes in _batches

    # -- the change log -----------------------------------------------------------------------

    def write(self, build: Build, key: WriteKey | None = None) -> Done:
        with self._state:
            if key is not None:
                receipt = self._visible.receipt(key.key)
                if receipt is not None:
                    if receipt.fingerprint != key.fingerprint:
                        raise IdempotencyMismatchError(key.key)
                    return Done(receipt.batch)
            batch = Batch(self._visible.position + 1, tuple(build(self._visible)), key)
            if batch.changes:
                self._visible.apply(batch)
                self._batches.append(batch)
                self._kept += len(batch)
                while self._kept - len(self._batches[0]) >= self._history_size:
                    self._kept -= len(self._batches.popleft())
                self._state.notify_all()
        return Done(batch)

    def read(self, after: int, limit: int) -> list[Batch]:
        with self._state:
            batches = self._batches
            if after >= self._visible.position:
                return []
            earliest = batches[0].first if batches else self._visible.position + 1
            if after + 1 < earliest:
                raise HistoryLostError(after, earliest)
            # batches are consecutive: find the one holding after + 1 from the end (the
            # projector reads the newest)
            index = len(batches) - 1
            while batches[index].first > after + 1:
                index -= 1
            out: list[Batch] = []
            count = 0
            for i in range(index, len(batches)):
                if out and count + len(batches[i]) > limit:
                    break
                out.append(batches[i])
                count += len(batches[i])
            return out

    @property
    def head(self) -> int:
        return self._visible.position

    def wait_for(self, after: int, timeout: float | None = None) -> int:
        with self._state:
            self._state.wait_for(lambda: self._visible.position > after, timeout)
            return self._visible.position

    # -- lifecycle ----------------------------------------------------------------------------

    def check(self) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None
