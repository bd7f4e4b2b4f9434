"""The reads of a store whose committed state is a ``Catalog`` kept in memory (every store:
the tables its log leaves, as far as it is durable)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from arrwdb.domain.catalog import Catalog, count_of, page_of
from arrwdb.domain.changes import Batch
from arrwdb.domain.filters import Predicate
from arrwdb.domain.models import Document, Library, Page


class CatalogReads:
    """``ports.Repository``'s reads, served from ``_visible`` under the lock ``_state`` (both
    set by the store). A reader sees a write entirely or not at all."""

    _state: threading.Condition
    _visible: Catalog

    def list_libraries(self) -> list[Library]:
        with self._state:
            return self._visible.libraries()

    def get_document(self, library_id: str, document_id: str) -> Document | None:
        with self._state:
            return self._visible.document(library_id, document_id)

    def list_documents(
        self, library_id: str, limit: int, cursor: str | None, where: Predicate | None = None
    ) -> Page:
        with self._state:
            if where is None:
                return self._visible.page(library_id, limit, cursor)
            entries = self._visible.entries(library_id)
        return page_of(entries, limit, cursor, where)  # the filter runs without the lock

    def count_documents(self, library_id: str, where: Predicate) -> int:
        with self._state:
            entries = self._visible.entries(library_id)
        return count_of(entries, where)

    def iter_documents(self, library_id: str) -> Iterator[Document]:
        with self._state:
            entries = self._visible.entries(library_id)
        for _, doc in entries:
            yield doc


def tail_batches(tail: Mapping[int, Batch], after: int, head: int, limit: int) -> list[Batch]:
    """The consecutive batches after ``after`` (up to ``head``) that ``tail`` (recent batches
    by first position, read without a lock: single dict reads) still holds: whole batches,
    about ``limit`` changes (at least one)."""
    out: list[Batch] = []
    count = 0
    while after < head:
        batch = tail.get(after + 1)
        if batch is None or (out and count + len(batch) > limit):
            break
        out.append(batch)
        count += len(batch)
        after = batch.last
    return out
