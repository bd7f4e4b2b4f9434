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
from collections.abc import Iterator

from arrwdb.domain.catalog import Catalog
from arrwdb.domain.changes import Batch, WriteKey
from arrwdb.domain.errors import HistoryLostError, IdempotencyMismatchError
from arrwdb.domain.models import Document, Library, Page
from arrwdb.domain.ports import Build


class Done:
    """The ``Commit`` of a write that is complete when ``write`` returns."""

    __slots__ = ("_batch",)

    def __init__(self, batch: Batch) -> None:
        self._batch = batch

    def wait(self) -> Batch:
        return self._batch


class InMemoryStore:
    """Implements ``arrwdb.domain.ports.Store``."""

    def __init__(self, history_size: int = 10_000) -> None:
        self._history_size = max(1, history_size)
        self._cond = threading.Condition(threading.Lock())
        self._tables = Catalog()
        self._batches: deque[Batch] = deque()
        self._kept = 0  # changes in _batches

    # -- the change log -----------------------------------------------------------------------

    def write(self, build: Build, key: WriteKey | None = None) -> Done:
        with self._cond:
            if key is not None:
                receipt = self._tables.receipt(key.key)
                if receipt is not None:
                    if receipt.fingerprint != key.fingerprint:
                        raise IdempotencyMismatchError(key.key)
                    return Done(receipt.batch)
            batch = Batch(self._tables.position + 1, tuple(build(self._tables)), key)
            if batch.changes:
                self._tables.apply(batch)
                self._batches.append(batch)
                self._kept += len(batch)
                while self._kept - len(self._batches[0]) >= self._history_size:
                    self._kept -= len(self._batches.popleft())
                self._cond.notify_all()
        return Done(batch)

    def read(self, after: int, limit: int) -> list[Batch]:
        with self._cond:
            batches = self._batches
            if after >= self._tables.position:
                return []
            earliest = batches[0].first if batches else self._tables.position + 1
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
        return self._tables.position

    def wait_for(self, after: int, timeout: float | None = None) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._tables.position > after, timeout)
            return self._tables.position

    # -- the tables ---------------------------------------------------------------------------

    def list_libraries(self) -> list[Library]:
        with self._cond:
            return self._tables.libraries()

    def get_document(self, library_id: str, document_id: str) -> Document | None:
        with self._cond:
            return self._tables.document(library_id, document_id)

    def list_documents(self, library_id: str, limit: int, cursor: str | None) -> Page:
        with self._cond:
            return self._tables.page(library_id, limit, cursor)

    def iter_documents(self, library_id: str) -> Iterator[Document]:
        with self._cond:
            entries = self._tables.entries(library_id)
        for _, doc in entries:
            yield doc

    # -- lifecycle ----------------------------------------------------------------------------

    def check(self) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None
